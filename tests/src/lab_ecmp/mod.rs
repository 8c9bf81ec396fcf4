//! The ECMP lab: several xlb nodes behind a router that spreads the VIPs over them with
//! ECMP, each node announcing the VIPs over BGP from its own BIRD.
//!
//! ```text
//!   client (10.101.x.y, fd00:101::1:x) ── rt (router: BIRD, ECMP) ──┐
//!                                                                    │ br0 (switch namespace)
//!   n0..n2 (10.100.0.2.., xlb + BIRD, XDP on eth0) ─────────────────┤ 10.100.0.0/16
//!   be0..  (10.100.0.11.., VIPs on lo, real servers) ───────────────┘ fd00:100::/64
//! ```
//! The router's BIRD learns each VIP from every node that announces it and installs one
//! multipath route (`merge paths on`); its kernel picks a node per packet with the hash
//! settings of the guide (IPv4 policy 0: addresses; IPv6 policy 3 with fields 0x0003:
//! addresses, no flow label), so one client stays on one node. The node's XDP program
//! sends the frame to a backend on the same segment (DSR); the backend, holding the VIPs
//! on lo, answers the client straight through the router.
//!
//! Built from lab.rs's blocks (namespaces, processes, clients' requests, service blocks);
//! everything is uniquely named per lab and removed on drop, also when a test panics:
//! processes first, then every node's pinned state (`xlb down`), then the namespaces.

pub mod bird;
pub mod scenarios;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{Xdp, xdp::XdpMode},
};
use socket2::{Domain, Socket, Type};
use xlb::dataplane::loader::BENCH_OBJECT;

use crate::lab::{
    BackendHost, HTTP_PORT, Netns, Proc, UDP_PORT, VIPS_PER_FAMILY, run, testsrv_bin, xlb_bin,
};

/// The router's address on the node segment and on the client link.
pub const ROUTER4: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 1);
pub const ROUTER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 1);
pub const ROUTER_CL4: Ipv4Addr = Ipv4Addr::new(10, 101, 0, 1);
pub const ROUTER_CL6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x101, 0, 0, 0, 0, 0, 1);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Shape of an ECMP lab.
pub struct EcmpOptions {
    pub nodes: usize,
    pub backends: usize,
    pub clients_v4: usize,
    pub clients_v6: usize,
    /// The VIPs every node's BIRD has a static protocol for (disabled; the node's xlb
    /// enables each while it can serve it).
    pub vips: Vec<IpAddr>,
}

impl Default for EcmpOptions {
    fn default() -> Self {
        Self {
            nodes: 3,
            backends: 4,
            clients_v4: 300,
            clients_v6: 150,
            vips: vec![vip4(1), vip6(1), vip4(2)],
        }
    }
}

/// VIP number `n` (1..=8) of each family; the backends hold all of them on lo.
pub fn vip4(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 200, 0, n))
}

pub fn vip6(n: u8) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, n as u16))
}

/// One balancer node: its namespace, the xlb daemon and its BIRD.
pub struct Node {
    /// "n0", "n1", …
    pub name: String,
    pub index: usize,
    pub ns: Netns,
    pub addr4: Ipv4Addr,
    pub addr6: Ipv6Addr,
    pub pin_dir: PathBuf,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub state_file: PathBuf,
    pub bird_config: PathBuf,
    pub bird_socket: PathBuf,
    pub daemon: Option<Proc>,
    pub bird: Option<Proc>,
    /// The switch side of the node's veth: taking it down makes the node silent (the
    /// router's own interface stays up, so only BFD can notice).
    pub switch_port: String,
    dir: PathBuf,
}

/// The lab. Fields are dropped in declaration order: processes (in `nodes`, `backends`,
/// `router_bird`) before namespaces; the switch last.
pub struct EcmpLab {
    pub id: String,
    pub dir: PathBuf,
    pub vips: Vec<IpAddr>,
    pub router_bird: Option<Proc>,
    pub nodes: Vec<Node>,
    pub backends: Vec<BackendHost>,
    pub clients4: Vec<IpAddr>,
    pub clients6: Vec<IpAddr>,
    pub client: Netns,
    pub router: Netns,
    /// XDP_PASS on the switch side of every node's veth: a frame a node sends with XDP_TX
    /// is delivered only to a peer with an XDP program (DESIGN.md).
    peer_xdp: Vec<Ebpf>,
    sw: Netns,
}

impl EcmpLab {
    /// Builds the namespaces, links, addresses and routes; starts nothing yet.
    pub fn new(opts: EcmpOptions) -> Self {
        crate::require_root();
        let id = format!(
            "e{:x}{:x}",
            std::process::id() % 0xfff,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(format!("xlb-ecmp-{id}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("lab dir");
        let sw = Netns::new(format!("{id}-sw"));
        sw.ip("link add br0 type bridge");
        sw.ip("link set br0 up");
        let mut lab = EcmpLab {
            client: Netns::new(format!("{id}-cl")),
            router: Netns::new(format!("{id}-rt")),
            vips: opts.vips.clone(),
            router_bird: None,
            nodes: Vec::new(),
            backends: Vec::new(),
            clients4: Vec::new(),
            clients6: Vec::new(),
            peer_xdp: Vec::new(),
            sw,
            dir,
            id,
        };
        lab.build_router();
        for i in 0..opts.nodes {
            lab.add_node(i);
        }
        for i in 0..opts.backends {
            lab.add_backend(i);
        }
        lab.build_client(opts.clients_v4, opts.clients_v6);
        let nodes: Vec<_> = lab
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.addr4.into(), n.addr6.into()))
            .collect();
        fs::write(
            lab.dir.join("router-bird.conf"),
            bird::router_config(ROUTER4.into(), "eth1", &nodes),
        )
        .expect("router BIRD config");
        lab
    }

    /// Veth `{id}{tag}a` into `ns` as `inner`, its peer `{id}{tag}b` into the switch's
    /// bridge; returns the switch-side name.
    fn plug(&self, ns: &Netns, tag: &str, inner: &str) -> String {
        let (a, b) = (format!("{}{tag}a", self.id), format!("{}{tag}b", self.id));
        ip(&format!("link add {a} type veth peer name {b}"));
        ip(&format!("link set {a} netns {}", ns.name));
        ip(&format!("link set {b} netns {}", self.sw.name));
        ns.ip(&format!("link set {a} name {inner}"));
        ns.ip(&format!("link set {inner} up"));
        self.sw.ip(&format!("link set {b} master br0"));
        self.sw.ip(&format!("link set {b} up"));
        // Locally generated traffic keeps a partial checksum that XDP rewriting loses.
        run(ns.cmd("ethtool").args(["-K", inner, "tx", "off"]));
        b
    }

    fn build_router(&mut self) {
        let rt = &self.router;
        self.plug(rt, "rt", "eth1");
        rt.ip(&format!("addr add {ROUTER4}/16 dev eth1"));
        rt.ip(&format!("addr add {ROUTER6}/64 dev eth1 nodad"));
        for (k, v) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
            // The guide's hash settings: addresses only, so one client stays on one node.
            ("net.ipv4.fib_multipath_hash_policy", "0"),
            ("net.ipv6.fib_multipath_hash_policy", "3"),
            ("net.ipv6.fib_multipath_hash_fields", "0x0003"),
        ] {
            rt.sysctl(k, v);
        }
        // The router's own record of which next hop each client's packets took (the
        // ground truth: `ip route get` does not predict the IPv6 hash here).
        let nft = self.dir.join("router.nft");
        fs::write(
            &nft,
            "table inet xlblab {\n\
             set carried4 { type ipv4_addr . ipv4_addr; flags dynamic; size 65536; }\n\
             set carried6 { type ipv6_addr . ipv6_addr; flags dynamic; size 65536; }\n\
             chain carry { type filter hook forward priority 0; policy accept;\n\
             ip daddr 10.200.0.0/24 add @carried4 { ip saddr . rt ip nexthop }\n\
             ip6 daddr fd00:200::/64 add @carried6 { ip6 saddr . rt ip6 nexthop }\n\
             }\n}\n",
        )
        .expect("router nft");
        run(rt.cmd("nft").arg("-f").arg(&nft));
    }

    /// Forgets which node carried which client (see [`EcmpLab::carried`]).
    pub fn reset_carried(&self) {
        for set in ["carried4", "carried6"] {
            run(self
                .router
                .cmd("nft")
                .args(["flush", "set", "inet", "xlblab", set]));
        }
    }

    /// The nodes the router forwarded each client's packets to since the last
    /// [`EcmpLab::reset_carried`], read from the router's nftables sets.
    pub fn carried(&self) -> BTreeMap<IpAddr, BTreeSet<usize>> {
        let mut out: BTreeMap<IpAddr, BTreeSet<usize>> = BTreeMap::new();
        for set in ["carried4", "carried6"] {
            let text = run(self
                .router
                .cmd("nft")
                .args(["-j", "list", "set", "inet", "xlblab", set]));
            let v: serde_json::Value = serde_json::from_str(&text).expect("nft json");
            let elems = v["nftables"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|o| o["set"]["elem"].as_array())
                .flatten();
            for e in elems {
                // {"concat": [client, next hop]}, or {"elem": {"val": {"concat": …}}}
                let concat = if e["concat"].is_array() {
                    &e["concat"]
                } else {
                    &e["elem"]["val"]["concat"]
                };
                let (Some(c), Some(g)) = (concat[0].as_str(), concat[1].as_str()) else {
                    continue;
                };
                if let (Ok(c), Some(n)) = (c.parse::<IpAddr>(), self.node_of_gateway(g)) {
                    out.entry(c).or_default().insert(n);
                }
            }
        }
        out
    }

    fn add_node(&mut self, i: usize) {
        let name = format!("n{i}");
        let ns = Netns::new(format!("{}-{name}", self.id));
        let switch_port = self.plug(&ns, &name, "eth0");
        let addr4 = Ipv4Addr::new(10, 100, 0, 2 + i as u8);
        let addr6 = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 2 + i as u16);
        ns.ip(&format!("addr add {addr4}/16 dev eth0"));
        ns.ip(&format!("addr add {addr6}/64 dev eth0 nodad"));
        self.peer_xdp.push(attach_xdp_pass(&self.sw, &switch_port));
        let dir = self.dir.clone();
        let node = Node {
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/xlb-{}-{name}", self.id)),
            socket: dir.join(format!("{name}.sock")),
            config: dir.join(format!("{name}.toml")),
            state_file: dir.join(format!("{name}-state.json")),
            bird_config: dir.join(format!("{name}-bird.conf")),
            bird_socket: dir.join(format!("{name}-bird.ctl")),
            daemon: None,
            bird: None,
            switch_port,
            index: i,
            name,
            ns,
            addr4,
            addr6,
            dir,
        };
        fs::write(
            &node.bird_config,
            bird::node_config(
                addr4.into(),
                "eth0",
                (ROUTER4.into(), ROUTER6.into()),
                &self.vips,
            ),
        )
        .expect("node BIRD config");
        self.nodes.push(node);
    }

    fn add_backend(&mut self, i: usize) {
        let name = format!("be{i}");
        let ns = Netns::new(format!("{}-{name}", self.id));
        self.plug(&ns, &name, "eth0");
        let addr4 = Ipv4Addr::new(10, 100, 0, 11 + i as u8);
        let addr6 = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 0x11 + i as u16);
        for (k, v) in [
            ("net.ipv4.conf.all.arp_ignore", "1"),
            ("net.ipv4.conf.all.arp_announce", "2"),
            ("net.ipv4.conf.eth0.arp_ignore", "1"),
            ("net.ipv4.conf.eth0.arp_announce", "2"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.eth0.rp_filter", "0"),
        ] {
            ns.sysctl(k, v);
        }
        ns.ip(&format!("addr add {addr4}/16 dev eth0"));
        ns.ip(&format!("addr add {addr6}/64 dev eth0 nodad"));
        for v in 1..=VIPS_PER_FAMILY {
            ns.ip(&format!("addr add 10.200.0.{v}/32 dev lo"));
            ns.ip(&format!("addr add fd00:200::{v}/128 dev lo nodad"));
        }
        // DSR: answers go from the VIP straight to the client, through the router.
        ns.ip(&format!("route add default via {ROUTER4}"));
        ns.ip(&format!("-6 route add default via {ROUTER6}"));
        self.backends.push(BackendHost {
            name,
            ns,
            addr4,
            addr6,
            server: None,
        });
    }

    fn build_client(&mut self, v4: usize, v6: usize) {
        let (a, b) = (format!("{}cla", self.id), format!("{}clb", self.id));
        ip(&format!("link add {a} type veth peer name {b}"));
        ip(&format!("link set {a} netns {}", self.client.name));
        ip(&format!("link set {b} netns {}", self.router.name));
        self.client.ip(&format!("link set {a} name eth0"));
        self.router.ip(&format!("link set {b} name eth0"));
        for ns in [&self.client, &self.router] {
            ns.ip("link set eth0 up");
        }
        run(self.client.cmd("ethtool").args(["-K", "eth0", "tx", "off"]));
        self.router
            .ip(&format!("addr add {ROUTER_CL4}/16 dev eth0"));
        self.router
            .ip(&format!("addr add {ROUTER_CL6}/64 dev eth0 nodad"));
        self.clients4 = (0..v4)
            .map(|i| {
                IpAddr::V4(Ipv4Addr::new(
                    10,
                    101,
                    1 + (i / 250) as u8,
                    1 + (i % 250) as u8,
                ))
            })
            .collect();
        self.clients6 = (0..v6)
            .map(|i| IpAddr::V6(Ipv6Addr::new(0xfd00, 0x101, 0, 0, 0, 0, 1, 1 + i as u16)))
            .collect();
        let mut batch = String::new();
        for a in &self.clients4 {
            batch.push_str(&format!("addr add {a}/16 dev eth0\n"));
        }
        for a in &self.clients6 {
            batch.push_str(&format!("addr add {a}/64 dev eth0 nodad\n"));
        }
        batch.push_str(&format!("route add default via {ROUTER_CL4}\n"));
        batch.push_str(&format!("route add default via {ROUTER_CL6}\n"));
        let file = self.dir.join("client.batch");
        fs::write(&file, batch).expect("client batch");
        run(Command::new("ip")
            .args(["-n", &self.client.name, "-batch"])
            .arg(&file));
    }

    /// Starts every backend's test server (HTTP and UDP, answering its name).
    pub fn start_servers(&mut self) {
        for i in 0..self.backends.len() {
            self.start_server(i);
        }
    }

    pub fn start_server(&mut self, i: usize) {
        let b = &mut self.backends[i];
        let mut binds = vec![b.addr4.to_string(), b.addr6.to_string()];
        for v in 1..=VIPS_PER_FAMILY {
            binds.push(format!("10.200.0.{v}"));
            binds.push(format!("fd00:200::{v}"));
        }
        let log = fs::File::create(self.dir.join(format!("{}.log", b.name))).expect("log");
        let child =
            b.ns.cmd(testsrv_bin())
                .args(["--name", &b.name, "--http-port", &HTTP_PORT.to_string()])
                .args([
                    "--udp-port",
                    &UDP_PORT.to_string(),
                    "--udp-bind",
                    &binds.join(","),
                ])
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("starting the test server: {e}"));
        b.server = Some(Proc { child });
        let addr = SocketAddr::new(IpAddr::V4(b.addr4), HTTP_PORT);
        let deadline = Instant::now() + Duration::from_secs(5);
        while b.ns.run(|| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err()
        }) {
            assert!(Instant::now() < deadline, "test server {i} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills one backend's server (its host stays: health checks see refused connections).
    pub fn stop_server(&mut self, i: usize) {
        if let Some(mut p) = self.backends[i].server.take() {
            p.kill();
        }
    }

    /// The backend answering with `name` ("be0", …).
    pub fn backend_by_name(&self, name: &str) -> &BackendHost {
        self.backends
            .iter()
            .find(|b| b.name == name)
            .unwrap_or_else(|| panic!("no backend {name}"))
    }

    /// The backend's name for one of its addresses.
    pub fn backend_name(&self, addr: IpAddr) -> String {
        self.backends
            .iter()
            .find(|b| IpAddr::V4(b.addr4) == addr || IpAddr::V6(b.addr6) == addr)
            .map_or_else(|| addr.to_string(), |b| b.name.clone())
    }

    /// Writes every node's config: the same `[[service]]` blocks (and extra top-level
    /// tables, e.g. `[announce]`) on all of them.
    pub fn write_configs(&self, services: &str) {
        for n in &self.nodes {
            n.write_config(services);
        }
    }

    /// Starts the router's BIRD.
    pub fn start_router_bird(&mut self) {
        let conf = self.dir.join("router-bird.conf");
        let sock = self.router_bird_socket();
        self.router_bird = Some(start_bird(
            &self.router,
            &conf,
            &sock,
            &self.dir.join("router-bird.log"),
        ));
    }

    pub fn router_bird_socket(&self) -> PathBuf {
        self.dir.join("router-bird.ctl")
    }

    /// Starts everything: servers, the router's and every node's BIRD, every node's
    /// daemon; waits until every BGP session is established.
    pub fn start_all(&mut self) {
        self.start_servers();
        self.start_router_bird();
        for n in &mut self.nodes {
            n.start_bird();
        }
        for n in &mut self.nodes {
            n.start_daemon();
        }
        self.wait_sessions(Duration::from_secs(15));
    }

    /// Waits until the router has every BGP session to every node established.
    pub fn wait_sessions(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let out =
                bird::command(&self.router_bird_socket(), "show protocols").unwrap_or_default();
            let up = out
                .lines()
                .filter(|l| l.contains(" BGP ") && l.contains("Established"))
                .count();
            if up == 2 * self.nodes.len() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "BGP sessions not established within {timeout:?}:\n{out}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The nodes the router's kernel sends `vip` to now (its route's next hops, by node
    /// index; empty when the VIP has no route).
    pub fn next_hops(&self, vip: IpAddr) -> Vec<usize> {
        let fam = if vip.is_ipv4() { "-4" } else { "-6" };
        let out = self.router.ip(&format!("{fam} -j route show {vip}"));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or(serde_json::Value::Null);
        let mut gws = Vec::new();
        for r in v.as_array().into_iter().flatten() {
            if let Some(g) = r["gateway"].as_str() {
                gws.push(g.to_string());
            }
            for nh in r["nexthops"].as_array().into_iter().flatten() {
                if let Some(g) = nh["gateway"].as_str() {
                    gws.push(g.to_string());
                }
            }
        }
        let mut nodes: Vec<usize> = gws.iter().filter_map(|g| self.node_of_gateway(g)).collect();
        nodes.sort_unstable();
        nodes
    }

    fn node_of_gateway(&self, gw: &str) -> Option<usize> {
        let a: IpAddr = gw.parse().ok()?;
        self.nodes
            .iter()
            .position(|n| IpAddr::V4(n.addr4) == a || IpAddr::V6(n.addr6) == a)
    }

    /// Waits until the router sends every one of `vips` to exactly `nodes`; returns how
    /// long it took.
    pub fn wait_next_hops(&self, vips: &[IpAddr], nodes: &[usize], timeout: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            if vips.iter().all(|v| self.next_hops(*v) == nodes) {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < timeout,
                "the router did not converge on {nodes:?} for {vips:?} within {timeout:?}: {:?}",
                vips.iter()
                    .map(|v| (v, self.next_hops(*v)))
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Which node the router sends each client's packets for `vip` to, without traffic
    /// (`ip route get VIP from CLIENT iif eth0`, one batch).
    pub fn predicted_nodes(
        &self,
        clients: &[IpAddr],
        vip: IpAddr,
    ) -> BTreeMap<IpAddr, Option<usize>> {
        let batch: String = clients
            .iter()
            .map(|c| format!("route get {vip} from {c} iif eth0\n"))
            .collect();
        let file = self.dir.join("route-get.batch");
        fs::write(&file, batch).expect("batch");
        let out = run(Command::new("ip")
            .args(["-n", &self.router.name, "-batch"])
            .arg(&file));
        let mut res = BTreeMap::new();
        for line in out.lines().filter(|l| l.contains(" from ")) {
            let words: Vec<&str> = line.split_whitespace().collect();
            let field = |k: &str| {
                words
                    .iter()
                    .position(|w| *w == k)
                    .and_then(|i| words.get(i + 1))
            };
            let Some(src) = field("from").and_then(|s| s.parse::<IpAddr>().ok()) else {
                continue;
            };
            res.insert(src, field("via").and_then(|g| self.node_of_gateway(g)));
        }
        res
    }

    /// One request per client to `vip` (HTTP or UDP), from the client namespace:
    /// `(client, backend name or error)`.
    pub fn round(
        &self,
        clients: &[IpAddr],
        vip: IpAddr,
        udp: bool,
        timeout: Duration,
    ) -> Vec<(IpAddr, Result<String, String>)> {
        self.client.round(clients, vip, udp, timeout)
    }

    /// Opens one TCP connection to the web VIP of its family from each of `clients` and
    /// sends nothing yet: the handshake has passed through whichever node carries the
    /// client now; [`finish_requests`] completes them later.
    pub fn open_connections(&self, clients: &[IpAddr]) -> Vec<(IpAddr, Result<TcpStream, String>)> {
        self.client.run(|| {
            clients
                .iter()
                .map(|c| {
                    let vip = if c.is_ipv4() { vip4(1) } else { vip6(1) };
                    (*c, connect_from(*c, SocketAddr::new(vip, HTTP_PORT)))
                })
                .collect()
        })
    }

    /// The logs of every process, for a failure message.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        let mut names: Vec<PathBuf> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        names.sort();
        for p in names {
            let text = fs::read_to_string(&p).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            s.push_str(&format!("--- {} (last lines) ---\n", p.display()));
            for l in tail.iter().rev() {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }
}

impl Drop for EcmpLab {
    fn drop(&mut self) {
        self.router_bird.take();
        for b in &mut self.backends {
            b.server.take();
        }
        for n in &mut self.nodes {
            n.bird.take();
            n.kill_daemon();
            n.down();
        }
        self.peer_xdp.clear();
        if std::env::var_os("XLB_KEEP_LAB").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

impl Node {
    /// Writes this node's config: its own `[daemon]` table and `[announce]` (its BIRD),
    /// then `rest` (the services), the same on every node.
    pub fn write_config(&self, rest: &str) {
        let text = format!(
            "[daemon]\ninterfaces = [\"eth0\"]\nxdp_mode = \"native\"\npin_dir = \"{}\"\n\
             socket = \"{}\"\nmetrics = \"127.0.0.1:9310\"\nstate_file = \"{}\"\n\
             affinity_capacity = 65536\n\n[announce]\nkind = \"bird\"\nsocket = \"{}\"\n\n{rest}",
            self.pin_dir.display(),
            self.socket.display(),
            self.state_file.display(),
            self.bird_socket.display(),
        );
        fs::write(&self.config, text).expect("write node config");
    }

    /// Starts the daemon (network namespace only: bpffs stays shared) and waits until it
    /// answers `status` with every backend resolved.
    pub fn start_daemon(&mut self) {
        assert!(
            self.daemon.is_none(),
            "{}: daemon already running",
            self.name
        );
        let log = fs::File::options()
            .create(true)
            .append(true)
            .open(self.daemon_log_path())
            .expect("daemon log");
        let child = self
            .ns
            .cmd(xlb_bin())
            .args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting xlb: {e}"));
        self.daemon = Some(Proc { child });
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(d) = &mut self.daemon
                && !d.alive()
            {
                panic!("{}: xlb exited at start:\n{}", self.name, self.daemon_log());
            }
            if let Ok(v) = self.try_xlb_json(&["status"])
                && v["services"].as_array().is_some_and(|s| {
                    s.iter().all(|svc| {
                        svc["backends"]
                            .as_array()
                            .is_some_and(|b| b.iter().all(|b| b["resolved"] == true))
                    })
                })
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: xlb did not become ready within 10 s:\n{}",
                self.name,
                self.daemon_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn daemon_log_path(&self) -> PathBuf {
        self.dir.join(format!("{}-xlb.log", self.name))
    }

    pub fn daemon_log(&self) -> String {
        fs::read_to_string(self.daemon_log_path()).unwrap_or_default()
    }

    /// SIGKILL: the data plane keeps forwarding on its pinned state.
    pub fn kill_daemon(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.kill();
        }
    }

    /// Waits (up to `timeout`) until the daemon's announcer has synced once since it
    /// started: from then on, whatever it decided at start is in BIRD.
    pub fn wait_announce_synced(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.xlb_json(&["status"])["announce"]["synced_age_s"].is_null() {
            assert!(
                Instant::now() < deadline,
                "{}: the announcer did not sync within {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, as a service manager stops it, and waits (up to 10 s) until it has
    /// exited; panics if it has not.
    pub fn stop_daemon(&mut self) {
        let Some(mut d) = self.daemon.take() else {
            return;
        };
        d.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while d.alive() {
            assert!(
                Instant::now() < deadline,
                "{}: xlb did not exit within 10 s of SIGTERM:\n{}",
                self.name,
                self.daemon_log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Removes the pinned state (`xlb down`); the daemon must not run.
    pub fn down(&self) {
        if self.pin_dir.exists() {
            let _ = Command::new(xlb_bin())
                .args(["down", "--pin-dir"])
                .arg(&self.pin_dir)
                .output();
        }
    }

    /// A reboot: BIRD and the daemon die, bpffs is emptied (the XDP program goes with
    /// it); the config and the state file with the runtime changes stay. Then BIRD (its
    /// VIP protocols disabled, as configured) and the daemon start again.
    pub fn reboot(&mut self) {
        self.kill_bird();
        self.kill_daemon();
        let _ = fs::remove_dir_all(&self.pin_dir);
        self.start_bird();
        self.start_daemon();
    }

    fn bird_log_path(&self) -> PathBuf {
        self.dir.join(format!("{}-bird.log", self.name))
    }

    /// How many times this node's BIRD has enabled and disabled one of xlb's VIP
    /// protocols so far: (enables, disables), from its log (`Enabling protocol xlb_…`;
    /// BIRD logs only real state changes, not a command that changes nothing). Exact where
    /// watching the router's routes could miss a withdrawal undone within milliseconds.
    pub fn bird_vip_changes(&self) -> (usize, usize) {
        let log = fs::read_to_string(self.bird_log_path()).unwrap_or_default();
        let count = |what: &str| {
            log.lines()
                .filter(|l| l.contains(&format!("{what} protocol xlb_")))
                .count()
        };
        (count("Enabling"), count("Disabling"))
    }

    pub fn start_bird(&mut self) {
        assert!(self.bird.is_none(), "{}: BIRD already running", self.name);
        let log = self.bird_log_path();
        self.bird = Some(start_bird(
            &self.ns,
            &self.bird_config,
            &self.bird_socket,
            &log,
        ));
    }

    /// SIGKILL to this node's BIRD.
    pub fn kill_bird(&mut self) {
        if let Some(mut b) = self.bird.take() {
            b.kill();
        }
    }

    /// One command to this node's BIRD (`enable xlb_10_200_0_1`, `show protocols`).
    pub fn birdc(&self, cmd: &str) -> String {
        bird::command(&self.bird_socket, cmd)
            .unwrap_or_else(|e| panic!("{}: BIRD `{cmd}`: {e}", self.name))
    }

    /// `xlb ARGS` against this node's daemon (run in its namespace).
    pub fn try_xlb(&self, args: &[&str]) -> Result<String, (i32, String)> {
        let out = self
            .ns
            .cmd(xlb_bin())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running xlb");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err((
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ))
        }
    }

    pub fn xlb(&self, args: &[&str]) -> String {
        self.try_xlb(args)
            .unwrap_or_else(|(c, e)| panic!("{}: xlb {args:?} failed ({c}): {e}", self.name))
    }

    fn try_xlb_json(&self, args: &[&str]) -> Result<serde_json::Value, String> {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.try_xlb(&a).map_err(|(_, e)| e)?;
        serde_json::from_str(&out).map_err(|e| e.to_string())
    }

    pub fn xlb_json(&self, args: &[&str]) -> serde_json::Value {
        self.try_xlb_json(args)
            .unwrap_or_else(|e| panic!("{}: xlb --json {args:?}: {e}", self.name))
    }

    /// One request on the control socket (what `xlb … --json` sends), for loops over
    /// hundreds of clients where a process per call would dominate.
    pub fn api(&self, request: &xlb::api::Request) -> serde_json::Value {
        let r = xlb::api::call(&self.socket, request)
            .unwrap_or_else(|e| panic!("{}: {request:?}: {e}", self.name));
        assert!(r.ok, "{}: {request:?}: {:?}", self.name, r.error);
        r.result
    }

    /// The backend `xlb explain` names for each client (`None` when no backend).
    pub fn explain(
        &self,
        service: &str,
        clients: &[IpAddr],
    ) -> BTreeMap<IpAddr, (String, Option<IpAddr>)> {
        clients
            .iter()
            .map(|c| {
                let v = self.api(&xlb::api::Request::Explain {
                    service: service.to_string(),
                    client: *c,
                    port: 0,
                });
                let e: xlb::api::Explain = serde_json::from_value(v).expect("explain shape");
                (*c, (e.decision, e.backend))
            })
            .collect()
    }

    /// Every service's Maglev table as this node's data plane holds it, slot by slot, as
    /// backend addresses (read from the pinned maps, like any tool would): (VIP, port,
    /// protocol) → slots.
    pub fn maglev_tables(&self) -> BTreeMap<(IpAddr, u16, u8), Vec<Option<IpAddr>>> {
        use lb_common::{
            Backend, MAP_BACKENDS, MAP_MAGLEV, MAP_SERVICES, ServiceKey, ServiceValue,
        };
        let open = |name: &str| {
            let path = self.pin_dir.join("maps").join(name);
            aya::maps::MapData::from_pin(&path)
                .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
        };
        let services: aya::maps::HashMap<_, ServiceKey, ServiceValue> =
            aya::maps::HashMap::try_from(aya::maps::Map::HashMap(open(MAP_SERVICES)))
                .expect("hash");
        let backends: aya::maps::Array<_, Backend> =
            aya::maps::Array::try_from(aya::maps::Map::Array(open(MAP_BACKENDS))).expect("array");
        let maglev: aya::maps::Array<_, u32> =
            aya::maps::Array::try_from(aya::maps::Map::Array(open(MAP_MAGLEV))).expect("array");
        let mut out = BTreeMap::new();
        for (k, v) in services.iter().filter_map(|r| r.ok()) {
            if v.flags & lb_common::SVC_F_VIP_MARKER != 0 {
                continue;
            }
            let slots = (v.table_offset..v.table_offset + v.table_size)
                .map(|i| {
                    let id = maglev.get(&i, 0).expect("slot");
                    (id != lb_common::NO_BACKEND).then(|| {
                        let b = backends.get(&id, 0).expect("backend");
                        xlb::model::addr_from_words(&b.addr, b.family)
                    })
                })
                .collect();
            let vip = xlb::model::addr_from_words(&k.addr, k.family);
            out.insert((vip, u16::from_be(k.port_be), k.proto), slots);
        }
        out
    }

    /// The live pins of `service` in this node's affinity table: client → backend.
    pub fn pins(&self, service: &str) -> BTreeMap<IpAddr, IpAddr> {
        let v = self.api(&xlb::api::Request::AffinityList {
            service: Some(service.to_string()),
            limit: 1 << 20,
        });
        let list: xlb::api::AffinityList = serde_json::from_value(v).expect("affinity shape");
        list.entries
            .into_iter()
            .filter(|e| !e.expired)
            .filter_map(|e| Some((e.client.split('/').next()?.parse().ok()?, e.backend?)))
            .collect()
    }

    /// Makes the node silent: its link goes down on the switch side (the router's own
    /// interface stays up, so only BFD notices), or comes back.
    pub fn set_silent(&self, sw: &Netns, silent: bool) {
        let state = if silent { "down" } else { "up" };
        sw.ip(&format!("link set {} {state}", self.switch_port));
    }
}

impl EcmpLab {
    /// `xlb node drain` on node `i`: every VIP withdrawn, the node keeps forwarding
    /// whatever still arrives.
    pub fn drain(&self, i: usize) {
        self.nodes[i].xlb(&["node", "drain"]);
    }

    /// `xlb node undrain` on node `i`.
    pub fn undrain(&self, i: usize) {
        self.nodes[i].xlb(&["node", "undrain"]);
    }

    /// [`Node::set_silent`] for node `i`.
    pub fn set_silent(&self, i: usize, silent: bool) {
        self.nodes[i].set_silent(&self.sw, silent);
    }
}

fn connect_from(src: IpAddr, dst: SocketAddr) -> Result<TcpStream, String> {
    let domain = if dst.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::STREAM, None).map_err(|e| e.to_string())?;
    s.bind(&SocketAddr::new(src, 0).into())
        .map_err(|e| format!("bind {src}: {e}"))?;
    s.connect_timeout(&dst.into(), Duration::from_secs(1))
        .map_err(|e| format!("connect {dst} from {src}: {e}"))?;
    Ok(s.into())
}

/// Sends one HTTP request on each open connection and reads the answer (the backend's
/// name): a connection whose packets now reach another node still reaches its backend
/// when that node picks the same one.
pub fn finish_requests(
    conns: Vec<(IpAddr, Result<TcpStream, String>)>,
) -> BTreeMap<IpAddr, Result<String, String>> {
    conns
        .into_iter()
        .map(|(c, s)| (c, s.and_then(|s| request_on(s, c))))
        .collect()
}

fn request_on(mut s: TcpStream, c: IpAddr) -> Result<String, String> {
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: xlb\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("{c}: write: {e}"))?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)
        .map_err(|e| format!("{c}: read: {e}"))?;
    resp.split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_string())
        .ok_or_else(|| format!("{c}: malformed response {resp:?}"))
}

fn ip(args: &str) -> String {
    run(Command::new("ip").args(args.split_whitespace()))
}

/// Starts `bird -f -c CONF -s SOCK` in `ns` and waits until its control socket answers.
fn start_bird(ns: &Netns, conf: &Path, sock: &Path, log: &Path) -> Proc {
    let _ = fs::remove_file(sock);
    // Appended to across restarts: counts read from it never go back.
    let log = fs::File::options()
        .create(true)
        .append(true)
        .open(log)
        .expect("bird log");
    let child = ns
        .cmd("bird")
        .arg("-f")
        .arg("-c")
        .arg(conf)
        .arg("-s")
        .arg(sock)
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("starting bird (run `cargo xtask setup`): {e}"));
    let mut p = Proc { child };
    let deadline = Instant::now() + Duration::from_secs(5);
    while bird::command(sock, "show status").is_err() {
        assert!(
            p.alive(),
            "bird exited at start (config {})",
            conf.display()
        );
        assert!(
            Instant::now() < deadline,
            "bird did not answer on {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    p
}

/// XDP_PASS on `ifname` in `ns`, held while the returned object lives.
fn attach_xdp_pass(ns: &Netns, ifname: &str) -> Ebpf {
    let ifname = ifname.to_string();
    ns.run(move || {
        let mut ebpf = EbpfLoader::new()
            .load(BENCH_OBJECT)
            .expect("load bench object");
        let p: &mut Xdp = ebpf
            .program_mut("xdp_pass")
            .expect("xdp_pass")
            .try_into()
            .expect("XDP");
        p.load().expect("verifier");
        p.attach(&ifname, XdpMode::Driver)
            .unwrap_or_else(|e| panic!("attach xdp_pass to {ifname}: {e}"));
        ebpf
    })
}
