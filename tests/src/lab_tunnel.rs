//! The tunnel lab: [`Lab`] with its backends two L3 hops from the balancer, in a subnet
//! of their own behind a router, for `forwarding = "tunnel"` (issue 13). The clients and
//! the balancer stay on the switch as in [`Lab::new`]; the backends run `xlb decap` on
//! their interface and hold the VIPs on lo as in DSR, answering the clients directly
//! through the router.
//!
//! ```text
//!   client (10.100.1.x)  ──┐
//!   lb     (10.100.0.2)  ──┤ br0 ── router (10.100.0.253 | 10.101.0.1) ── br1 ── be0.. (10.101.0.11.., VIPs on lo)
//! ```
//! The balancer reaches the backends through the route `10.101.0.0/24 via 10.100.0.253`
//! (and `fd00:101::/64 via fd00:100::fd`): it encapsulates and sends the frame back out
//! of eth0 (XDP_TX) to the router's MAC, the router forwards the outer packet, the
//! backend strips it and answers the inner client from the VIP by its default route.
//! The links the tunnel crosses (balancer and router on the switch, router to backends)
//! have MTU [`PATH_MTU`] (room for the outer header) unless a test asks for less; the
//! client's link keeps 1500.
//!
//! Owns only the router and the backends it builds, and the backends' `xlb decap`
//! state (removed by [`Lab`]'s drop); must not change how [`Lab::new`] builds its hosts.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    process::Command,
};

use crate::lab::{BackendHost, HTTP_PORT, Lab, LabOptions, Netns, UDP_PORT, VIPS_PER_FAMILY};

/// MTU of the links the tunnel crosses: 1500-byte client packets plus the outer header.
pub const PATH_MTU: u32 = 1600;
/// The router's addresses on the switch (the balancer's next hop to the backends).
pub const GW4: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 253);
pub const GW6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 0xfd);
/// The backends' subnet and the router's address in it (their default gateway).
pub const BACKENDS4: &str = "10.101.0.0/24";
pub const BACKENDS6: &str = "fd00:101::/64";
pub const RT_BE4: Ipv4Addr = Ipv4Addr::new(10, 101, 0, 1);
pub const RT_BE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x101, 0, 0, 0, 0, 0, 1);
/// `tunnel_source` prefixes the tests use (routed nowhere: only outer sources).
pub const TUNNEL_SOURCE4: &str = "10.102.0.0/24";
pub const TUNNEL_SOURCE6: &str = "fd00:102::/120";
/// The 4in6 VIP: an IPv4 VIP whose services have the IPv6 backends.
pub const VIP46: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);

impl Lab {
    /// A lab whose `opts.backends` backends sit behind a router (see the module doc), the
    /// balancer's and the router's switch links at `lb_mtu` (the router-to-backend links
    /// always [`PATH_MTU`]). The config holds [`Lab::tunnel_services`]; no backend runs
    /// `xlb decap` yet ([`Lab::decap_attach`]).
    pub fn tunneled(opts: LabOptions, lb_mtu: u32) -> Self {
        let backends = opts.backends;
        let mut lab = Lab::new(LabOptions {
            backends: 0,
            ..opts
        });
        lab.set_mtu(&lab.lb, "eth0", &format!("{}lbb", lab.id), lb_mtu);
        lab.add_backend_router(lb_mtu);
        for i in 0..backends {
            lab.add_routed_backend(i);
        }
        lab.lb
            .ip(&format!("route add {BACKENDS4} via {GW4} dev eth0"));
        lab.lb
            .ip(&format!("route add {BACKENDS6} via {GW6} dev eth0"));
        lab.write_config(&lab.tunnel_services(""));
        lab
    }

    /// Sets the MTU of `dev` in `ns` and of its peer `peer` on the switch.
    fn set_mtu(&self, ns: &Netns, dev: &str, peer: &str, mtu: u32) {
        ns.ip(&format!("link set {dev} mtu {mtu}"));
        self.sw.ip(&format!("link set {peer} mtu {mtu}"));
    }

    /// The router: eth0 on the switch, a bridge `br1` for the backends.
    fn add_backend_router(&mut self, lb_mtu: u32) {
        let rt = Netns::new(format!("{}-tr", self.id));
        for (k, v) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
        ] {
            rt.sysctl(k, v);
        }
        let (a, b) = (format!("{}tra", self.id), format!("{}trb", self.id));
        veth(&a, &rt, &b, &self.sw);
        rt.ip(&format!("link set {a} name eth0"));
        rt.ip("link set eth0 up");
        self.sw.ip(&format!("link set {b} master br0"));
        self.sw.ip(&format!("link set {b} up"));
        self.set_mtu(&rt, "eth0", &b, lb_mtu);
        rt.ip(&format!("addr add {GW4}/16 dev eth0"));
        rt.ip(&format!("addr add {GW6}/64 dev eth0 nodad"));
        rt.ip("link add br1 type bridge");
        rt.ip("link set br1 up");
        rt.ip(&format!("addr add {RT_BE4}/24 dev br1"));
        rt.ip(&format!("addr add {RT_BE6}/64 dev br1 nodad"));
        self.router = Some(rt);
    }

    /// Backend `i` (`be{i}`, 10.101.0.{11+i}, fd00:101::{11+i}) on the router's bridge.
    fn add_routed_backend(&mut self, i: usize) {
        let name = format!("be{i}");
        let ns = Netns::new(format!("{}-{name}", self.id));
        let addr4 = Ipv4Addr::new(10, 101, 0, 11 + i as u8);
        let addr6 = Ipv6Addr::new(0xfd00, 0x101, 0, 0, 0, 0, 0, 0x11 + i as u16);
        let rt = self.router.as_ref().expect("router");
        let (a, b) = (format!("{}t{i}a", self.id), format!("{}t{i}b", self.id));
        veth(&a, &ns, &b, rt);
        ns.ip(&format!("link set {a} name eth0"));
        ns.ip(&format!("link set eth0 mtu {PATH_MTU} up"));
        rt.ip(&format!("link set {b} mtu {PATH_MTU} master br1 up"));
        // The servers' replies carry partial checksums like any locally sent packet;
        // nothing rewrites them here, but keep the senders as in the switch lab.
        crate::lab::run(ns.cmd("ethtool").args(["-K", "eth0", "tx", "off"]));
        for (k, v) in [
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.eth0.rp_filter", "0"),
            ("net.ipv4.conf.lo.rp_filter", "0"),
        ] {
            ns.sysctl(k, v);
        }
        ns.ip(&format!("addr add {addr4}/24 dev eth0"));
        ns.ip(&format!("addr add {addr6}/64 dev eth0 nodad"));
        ns.ip(&format!("route add default via {RT_BE4} dev eth0"));
        ns.ip(&format!("route add default via {RT_BE6} dev eth0"));
        for v in 1..=VIPS_PER_FAMILY {
            ns.ip(&format!("addr add 10.200.0.{v}/32 dev lo"));
            ns.ip(&format!("addr add fd00:200::{v}/128 dev lo nodad"));
        }
        self.backends.push(BackendHost {
            name,
            ns,
            addr4,
            addr6,
            server: None,
        });
    }

    /// Tunnel services on the routed backends, each with `extra` (e.g. a
    /// `tunnel_source`): web4/dns4 on VIP4 (IPIP), web6/dns6 on VIP6 (IP6IP6), web46/dns46
    /// on [`VIP46`] with the IPv6 backends (4in6). HTTP checks for the web services, UDP
    /// checks for the dns ones, as in [`Lab::default_services`].
    pub fn tunnel_services(&self, extra: &str) -> String {
        self.tunnel_services_with(extra, &|_| String::new())
    }

    /// [`Lab::tunnel_services`] where `extra_for(family)` adds lines per backend family
    /// (4 or 6), e.g. the `tunnel_source` prefix of that family.
    pub fn tunnel_services_with(&self, extra: &str, extra_for: &dyn Fn(u8) -> String) -> String {
        let health = |kind: &str, port: u16| {
            let send = if kind == "udp" {
                ", send = \"ping\""
            } else {
                ""
            };
            let path = if kind == "http" { ", path = \"/\"" } else { "" };
            format!(
                "health = {{ kind = \"{kind}\", port = {port}{path}{send}, interval = \"200ms\", timeout = \"100ms\", rise = 2, fall = 2 }}\n"
            )
        };
        let vip4 = crate::lab::VIP4.to_string();
        let vip6 = crate::lab::VIP6.to_string();
        let vip46 = VIP46.to_string();
        let mut s = String::new();
        for (name, vip, port, proto, fam) in [
            ("web4", &vip4, HTTP_PORT, "tcp", 4),
            ("dns4", &vip4, UDP_PORT, "udp", 4),
            ("web6", &vip6, HTTP_PORT, "tcp", 6),
            ("dns6", &vip6, UDP_PORT, "udp", 6),
            ("web46", &vip46, HTTP_PORT, "tcp", 6),
            ("dns46", &vip46, UDP_PORT, "udp", 6),
        ] {
            let kind = if proto == "tcp" { "http" } else { "udp" };
            let lines = format!(
                "forwarding = \"tunnel\"\n{}{extra}\n{}",
                health(kind, port),
                extra_for(fam)
            );
            s.push_str(&self.service_toml(name, vip, port, proto, fam, &lines));
        }
        s
    }

    /// Where backend `i`'s `xlb decap` pins its state (removed when the lab drops).
    pub fn decap_pin_dir(&self, i: usize) -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/xlb-decap-{}-be{i}", self.id))
    }

    /// `xlb decap ARGS --pin-dir DIR` on backend `i`, panicking with its output on failure.
    pub fn decap(&self, i: usize, args: &[&str]) -> String {
        let dir = self.decap_pin_dir(i);
        crate::lab::run(
            self.backends[i]
                .ns
                .cmd(&self.xlb)
                .arg("decap")
                .args(args)
                .arg("--pin-dir")
                .arg(&dir),
        )
    }

    /// `xlb decap attach eth0 --from PREFIX...` on backend `i`.
    pub fn decap_attach(&self, i: usize, from: &[&str]) {
        let mut args = vec!["attach", "eth0"];
        for f in from {
            args.extend_from_slice(&["--from", f]);
        }
        self.decap(i, &args);
    }

    /// Backend `i` accepts tunnels from the balancer's own addresses (the default outer
    /// sources), every backend: [`Lab::decap_attach`] with LB4/32 and LB6/128.
    pub fn decap_attach_all(&self) {
        let (v4, v6) = (
            format!("{}/32", crate::lab::LB4),
            format!("{}/128", crate::lab::LB6),
        );
        for i in 0..self.backends.len() {
            self.decap_attach(i, &[&v4, &v6]);
        }
    }

    /// `xlb decap stats eth0 --json` of backend `i`.
    pub fn decap_stats(&self, i: usize) -> serde_json::Value {
        serde_json::from_str(&self.decap(i, &["stats", "eth0", "--json"]))
            .expect("decap stats json")
    }

    /// The backend address of family `fam` (4 or 6) of backend `name`.
    pub fn backend_addr(&self, name: &str, fam: u8) -> IpAddr {
        let b = &self.backends[self.backend_index(name)];
        if fam == 4 {
            b.addr4.into()
        } else {
            b.addr6.into()
        }
    }
}

/// A veth pair `a` (moved into `ns_a`) and `b` (into `ns_b`).
fn veth(a: &str, ns_a: &Netns, b: &str, ns_b: &Netns) {
    for args in [
        format!("link add {a} type veth peer name {b}"),
        format!("link set {a} netns {}", ns_a.name),
        format!("link set {b} netns {}", ns_b.name),
    ] {
        crate::lab::run(Command::new("ip").args(args.split_whitespace()));
    }
}
