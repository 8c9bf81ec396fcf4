//! The network-namespace lab: a switch (bridge), a client host with many source
//! addresses, the balancer host running the real `xlb` daemon, and backend hosts running
//! real servers that answer with their name. Used by the end-to-end tests and the demo.
//!
//! ```text
//!   client (10.100.1.x, fd00:100::1:x) ──┐
//!   lb     (10.100.0.2, fd00:100::2)  ───┤ br0 (switch namespace)
//!   be0..  (10.100.0.11.., VIPs on lo) ──┘
//! ```
//! The client routes the VIPs (10.200.0.0/24, fd00:200::/64) through the balancer; the
//! balancer rewrites MACs and sends the frame back out (XDP_TX) to the backend, which
//! holds the VIPs on lo (arp_ignore=1, arp_announce=2) and answers the client directly.
//!
//! Everything is uniquely named per lab and removed on drop, also when a test panics:
//! processes are killed first, then `xlb down` removes the pinned state, then the
//! namespaces go (taking their interfaces with them).

use std::{
    collections::BTreeMap,
    fs,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{Xdp, xdp::XdpMode},
};
use socket2::{Domain, Protocol, Socket, Type};
use xlb::dataplane::loader::BENCH_OBJECT;

pub const VIP4: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 1);
pub const LB4: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 2);
pub const LB6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 2);
/// Every VIP a lab's backends hold on lo: 10.200.0.1..=8 and fd00:200::1..=8.
pub const VIPS_PER_FAMILY: u8 = 8;
pub const HTTP_PORT: u16 = 80;
pub const UDP_PORT: u16 = 53;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs a command, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(args: &str) -> String {
    run(Command::new("ip").args(args.split_whitespace()))
}

/// A named network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// One request per client to `vip` (HTTP, or UDP), all from one thread in this
    /// namespace: `(client, backend name or error)`.
    pub fn round(
        &self,
        clients: &[IpAddr],
        vip: IpAddr,
        udp: bool,
        timeout: Duration,
    ) -> Vec<(IpAddr, Result<String, String>)> {
        self.run(|| {
            clients
                .iter()
                .map(|c| {
                    let r = if udp {
                        udp_request(*c, SocketAddr::new(vip, UDP_PORT), timeout)
                    } else {
                        http_request(*c, SocketAddr::new(vip, HTTP_PORT), "/", timeout)
                    };
                    (*c, r)
                })
                .collect()
        })
    }
}

impl Netns {
    pub fn new(name: String) -> Self {
        ip(&format!("netns add {name}"));
        let ns = Self { name };
        ns.ip("link set lo up");
        // No duplicate address detection: a tentative link-local address delays the
        // first neighbour discovery of a fresh interface by a second.
        ns.sysctl("net.ipv6.conf.all.accept_dad", "0");
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0");
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// `ip -n NAME ...`
    pub fn ip(&self, args: &str) -> String {
        ip(&format!("-n {} {args}", self.name))
    }

    /// A command run in this namespace. Only the network namespace is entered (not the
    /// mount namespace as `ip netns exec` does), so /sys/fs/bpf stays shared.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        c
    }

    pub fn sysctl(&self, key: &str, value: &str) {
        run(self.cmd("sysctl").args(["-qw", &format!("{key}={value}")]));
    }

    /// Runs `f` on a thread inside this namespace (sockets it opens live here).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = self.path();
        std::thread::scope(|s| {
            s.spawn(move || {
                enter(&path);
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter(path: &Path) {
    let f = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    use std::os::fd::AsRawFd as _;
    // SAFETY: a valid namespace fd; setns only affects this thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        panic!(
            "setns {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct BackendHost {
    pub name: String,
    pub ns: Netns,
    pub addr4: Ipv4Addr,
    pub addr6: Ipv6Addr,
    pub server: Option<Proc>,
}

/// Where the binaries are: `xlb` from lb-userspace (built by `cargo xtask test`), the test
/// server from this crate.
pub fn xlb_bin() -> PathBuf {
    let p = std::env::var_os("XLB_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/xlb"));
    assert!(
        p.is_file(),
        "the xlb binary is not at {} (run `cargo xtask build`, or set XLB_BIN)",
        p.display()
    );
    p
}

pub fn testsrv_bin() -> PathBuf {
    let p = std::env::var_os("XLB_TESTSRV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/xlb-testsrv")
        });
    assert!(
        p.is_file(),
        "the test server is not at {} (cargo build --release -p xlb-tests --bins)",
        p.display()
    );
    p
}

pub struct LabOptions {
    pub backends: usize,
    pub clients_v4: usize,
    pub clients_v6: usize,
}

impl Default for LabOptions {
    fn default() -> Self {
        Self {
            backends: 3,
            clients_v4: 200,
            clients_v6: 200,
        }
    }
}

pub struct Lab {
    pub id: String,
    pub dir: PathBuf,
    pub pin_dir: PathBuf,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub metrics: SocketAddr,
    /// `daemon.affinity_capacity` written by [`Lab::write_config`].
    pub affinity_capacity: u32,
    pub client: Netns,
    pub lb: Netns,
    pub backends: Vec<BackendHost>,
    pub clients4: Vec<IpAddr>,
    pub clients6: Vec<IpAddr>,
    pub daemon: Option<Proc>,
    /// The `xlb` binary the daemon and the CLI calls run ([`xlb_bin`] unless a test points
    /// it elsewhere, e.g. at a package's /usr/bin/xlb).
    pub xlb: PathBuf,
    /// A command the daemon is started through, e.g. `setpriv` with a capability set
    /// (empty: started directly).
    pub daemon_wrapper: Vec<String>,
    /// An office behind a NAT router ([`Lab::add_office`]).
    pub office: Option<Office>,
    /// The daemon's `RUST_LOG` (`XLB_LAB_LOG`, else `info`).
    pub log_filter: String,
    /// XDP_PASS on the switch side of the balancer's veth: a frame sent with XDP_TX into a
    /// veth is only delivered when the peer has an XDP program (DESIGN.md).
    _peer_xdp: Option<Ebpf>,
    /// The router of [`Lab::with_router`].
    pub router: Option<Netns>,
    // Dropped last: the switch owns the bridge.
    pub(crate) sw: Netns,
}

/// The client network of a lab built with [`Lab::with_router`]: clients sit behind a
/// router namespace, two L3 hops from the backends' return path.
pub const ROUTED_CLIENTS4: &str = "10.150.0.0/16";
pub const ROUTED_CLIENTS6: &str = "fd00:150::/64";
/// The router's address on the switch, the next hop of the backends' replies.
pub const ROUTER4: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 254);
pub const ROUTER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 0xfe);

impl Lab {
    pub fn new(opts: LabOptions) -> Self {
        Self::build(opts, None)
    }

    /// A lab whose client sits behind a router namespace: the client's link to the router
    /// has MTU `mtu` on both ends, while the client advertises the TCP MSS of a 1500-byte
    /// path (route `advmss`), as a client behind a smaller link further away would. The
    /// backends' replies to the clients go through the router (not the balancer), so a
    /// reply larger than `mtu` with DF set makes the router send "fragmentation needed" /
    /// "packet too big" to the reply's source: the VIP, which routes to the balancer.
    ///
    /// ```text
    ///   client (10.150.1.x) ── mtu ── router (10.150.0.1 | 10.100.0.254) ── br0 ── lb, backends
    /// ```
    pub fn with_router(opts: LabOptions, mtu: u32) -> Self {
        Self::build(opts, Some(mtu))
    }

    fn build(opts: LabOptions, router_mtu: Option<u32>) -> Self {
        crate::require_root();
        let id = format!(
            "x{:x}{:x}",
            std::process::id() % 0xfff,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(format!("xlb-lab-{id}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("lab dir");
        let sw = Netns::new(format!("{id}-sw"));
        sw.ip("link add br0 type bridge");
        sw.ip("link set br0 up");
        let client = Netns::new(format!("{id}-cl"));
        let lb = Netns::new(format!("{id}-lb"));

        let mut lab = Lab {
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/xlb-{id}")),
            socket: dir.join("xlb.sock"),
            config: dir.join("xlb.toml"),
            metrics: "127.0.0.1:9310".parse().expect("addr"),
            affinity_capacity: 65536,
            dir,
            client,
            lb,
            backends: Vec::new(),
            clients4: Vec::new(),
            clients6: Vec::new(),
            daemon: None,
            xlb: xlb_bin(),
            daemon_wrapper: Vec::new(),
            office: None,
            log_filter: std::env::var("XLB_LAB_LOG").unwrap_or_else(|_| "info".into()),
            _peer_xdp: None,
            router: None,
            sw,
            id,
        };
        lab.plug(HostRole::Lb);
        if let Some(mtu) = router_mtu {
            lab.add_router(mtu);
        } else {
            lab.plug(HostRole::Client);
        }
        for i in 0..opts.backends {
            lab.add_backend_host(i);
        }

        // Balancer.
        lab.lb.ip(&format!("addr add {LB4}/16 dev eth0"));
        lab.lb.ip(&format!("addr add {LB6}/64 dev eth0 nodad"));

        // Client: many source addresses, VIPs routed through the balancer.
        // Behind the router the clients are in 10.150/16 and fd00:150::/64.
        let (net4, net6) = if router_mtu.is_some() {
            (150, 0x150)
        } else {
            (100, 0x100)
        };
        for i in 0..opts.clients_v4 {
            let a = Ipv4Addr::new(10, net4, 1 + (i / 250) as u8, 1 + (i % 250) as u8);
            lab.clients4.push(IpAddr::V4(a));
        }
        for i in 0..opts.clients_v6 {
            let a = Ipv6Addr::new(0xfd00, net6, 0, 0, 0, 0, 1, 1 + i as u16);
            lab.clients6.push(IpAddr::V6(a));
        }
        let mut batch = String::new();
        for a in &lab.clients4 {
            batch.push_str(&format!("addr add {a}/16 dev eth0\n"));
        }
        for a in &lab.clients6 {
            batch.push_str(&format!("addr add {a}/64 dev eth0 nodad\n"));
        }
        let batch_file = lab.dir.join("client-addrs.batch");
        fs::write(&batch_file, batch).expect("write batch");
        run(Command::new("ip").args([
            "-n",
            &lab.client.name,
            "-batch",
            batch_file.to_str().expect("utf-8 path"),
        ]));
        if router_mtu.is_some() {
            // The MSS of a 1500-byte path: the replies are larger than this link.
            lab.client
                .ip("route add 10.200.0.0/24 via 10.150.0.1 dev eth0 advmss 1460");
            lab.client
                .ip("route add fd00:200::/64 via fd00:150::1 dev eth0 advmss 1440");
        } else {
            lab.client
                .ip(&format!("route add 10.200.0.0/24 via {LB4} dev eth0"));
            lab.client
                .ip(&format!("route add fd00:200::/64 via {LB6} dev eth0"));
        }

        lab.attach_peer_xdp();
        lab.write_config(&lab.default_services());
        lab
    }

    /// An office of `clients` hosts (10.150.0.10, .11, …) behind a router that
    /// masquerades them to one address on the switch, [`OFFICE_PUBLIC`] (nftables
    /// masquerade, real conntrack), and routes the VIPs through the balancer. Backends
    /// answer the router directly (DSR); its conntrack maps the answers back.
    pub fn add_office(&mut self, clients: usize) {
        let router = Netns::new(format!("{}-rt", self.id));
        let office = Netns::new(format!("{}-of", self.id));
        self.plug(HostRole::Router(&router));
        router.ip(&format!("addr add {OFFICE_PUBLIC}/16 dev eth0"));
        let (a, b) = (format!("{}ofa", self.id), format!("{}ofb", self.id));
        ip(&format!("link add {a} type veth peer name {b}"));
        ip(&format!("link set {a} netns {}", office.name));
        ip(&format!("link set {b} netns {}", router.name));
        office.ip(&format!("link set {a} name eth0"));
        router.ip(&format!("link set {b} name eth1"));
        for (ns, dev) in [(&office, "eth0"), (&router, "eth1")] {
            ns.ip(&format!("link set {dev} up"));
            run(ns.cmd("ethtool").args(["-K", dev, "tx", "off"]));
        }
        router.ip("addr add 10.150.0.1/24 dev eth1");
        router.sysctl("net.ipv4.ip_forward", "1");
        router.ip(&format!("route add 10.200.0.0/24 via {LB4} dev eth0"));
        for rule in [
            "add table ip nat",
            "add chain ip nat post { type nat hook postrouting priority 100 ; }",
            "add rule ip nat post oifname \"eth0\" masquerade",
        ] {
            run(router.cmd("nft").arg(rule));
        }
        let mut addrs = Vec::new();
        let mut batch = String::new();
        for i in 0..clients {
            let a = Ipv4Addr::new(10, 150, 0, 10 + i as u8);
            batch.push_str(&format!("addr add {a}/24 dev eth0\n"));
            addrs.push(IpAddr::V4(a));
        }
        let batch_file = self.dir.join("office-addrs.batch");
        fs::write(&batch_file, batch).expect("write batch");
        run(Command::new("ip").args([
            "-n",
            &office.name,
            "-batch",
            batch_file.to_str().expect("utf-8 path"),
        ]));
        office.ip("route add default via 10.150.0.1 dev eth0");
        self.office = Some(Office {
            clients: addrs,
            ns: office,
            router,
        });
    }

    fn plug(&self, role: HostRole) -> String {
        let (ns, tag) = match role {
            HostRole::Lb => (&self.lb, "lb".to_string()),
            HostRole::Client => (&self.client, "cl".to_string()),
            HostRole::Router(ns) => (ns, "rt".to_string()),
            HostRole::Backend(i) => (&self.backends[i].ns, format!("b{i}")),
        };
        let (a, b) = (format!("{}{tag}a", self.id), format!("{}{tag}b", self.id));
        ip(&format!("link add {a} type veth peer name {b}"));
        ip(&format!("link set {a} netns {}", ns.name));
        ip(&format!("link set {b} netns {}", self.sw.name));
        ns.ip(&format!("link set {a} name eth0"));
        ns.ip("link set eth0 up");
        self.sw.ip(&format!("link set {b} master br0"));
        self.sw.ip(&format!("link set {b} up"));
        // Locally generated traffic keeps a partial checksum that XDP rewriting loses.
        run(ns.cmd("ethtool").args(["-K", "eth0", "tx", "off"]));
        b
    }

    /// The router between the client and the switch (see [`Lab::with_router`]).
    fn add_router(&mut self, mtu: u32) {
        let rt = Netns::new(format!("{}-rt", self.id));
        for (k, v) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
        ] {
            rt.sysctl(k, v);
        }
        let (a, b) = (format!("{}rta", self.id), format!("{}rtb", self.id));
        ip(&format!("link add {a} type veth peer name {b}"));
        ip(&format!("link set {a} netns {}", rt.name));
        ip(&format!("link set {b} netns {}", self.sw.name));
        rt.ip(&format!("link set {a} name eth0"));
        rt.ip("link set eth0 up");
        self.sw.ip(&format!("link set {b} master br0"));
        self.sw.ip(&format!("link set {b} up"));
        let (c, d) = (format!("{}rtc", self.id), format!("{}rtd", self.id));
        ip(&format!("link add {c} type veth peer name {d}"));
        ip(&format!("link set {c} netns {}", rt.name));
        ip(&format!("link set {d} netns {}", self.client.name));
        rt.ip(&format!("link set {c} name eth1"));
        rt.ip(&format!("link set eth1 mtu {mtu} up"));
        self.client.ip(&format!("link set {d} name eth0"));
        self.client.ip(&format!("link set eth0 mtu {mtu} up"));
        run(self.client.cmd("ethtool").args(["-K", "eth0", "tx", "off"]));
        rt.ip(&format!("addr add {ROUTER4}/16 dev eth0"));
        rt.ip(&format!("addr add {ROUTER6}/64 dev eth0 nodad"));
        rt.ip("addr add 10.150.0.1/16 dev eth1");
        rt.ip("addr add fd00:150::1/64 dev eth1 nodad");
        rt.ip(&format!("route add 10.200.0.0/24 via {LB4} dev eth0"));
        rt.ip(&format!("route add fd00:200::/64 via {LB6} dev eth0"));
        self.router = Some(rt);
    }

    fn add_backend_host(&mut self, i: usize) {
        let name = format!("be{i}");
        let ns = Netns::new(format!("{}-{name}", self.id));
        let addr4 = Ipv4Addr::new(10, 100, 0, 11 + i as u8);
        let addr6 = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 0x11 + i as u16);
        self.backends.push(BackendHost {
            name,
            ns,
            addr4,
            addr6,
            server: None,
        });
        self.plug(HostRole::Backend(i));
        let b = &mut self.backends[i];
        for (k, v) in [
            ("net.ipv4.conf.all.arp_ignore", "1"),
            ("net.ipv4.conf.all.arp_announce", "2"),
            ("net.ipv4.conf.eth0.arp_ignore", "1"),
            ("net.ipv4.conf.eth0.arp_announce", "2"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.eth0.rp_filter", "0"),
        ] {
            b.ns.sysctl(k, v);
        }
        b.ns.ip(&format!("addr add {addr4}/16 dev eth0"));
        b.ns.ip(&format!("addr add {addr6}/64 dev eth0 nodad"));
        // Replies to routed clients (Lab::with_router) go through the router.
        b.ns.ip(&format!(
            "route add {ROUTED_CLIENTS4} via {ROUTER4} dev eth0"
        ));
        b.ns.ip(&format!(
            "route add {ROUTED_CLIENTS6} via {ROUTER6} dev eth0"
        ));
        for v in 1..=VIPS_PER_FAMILY {
            b.ns.ip(&format!("addr add 10.200.0.{v}/32 dev lo"));
            b.ns.ip(&format!("addr add fd00:200::{v}/128 dev lo nodad"));
        }
    }

    fn attach_peer_xdp(&mut self) {
        let peer = format!("{}lbb", self.id);
        let ebpf = self.sw.run(|| {
            let mut ebpf = EbpfLoader::new()
                .load(BENCH_OBJECT)
                .expect("load bench object");
            let p: &mut Xdp = ebpf
                .program_mut("xdp_pass")
                .expect("xdp_pass")
                .try_into()
                .expect("XDP");
            p.load().expect("verifier");
            p.attach(&peer, XdpMode::Driver)
                .unwrap_or_else(|e| panic!("attach xdp_pass to {peer}: {e}"));
            ebpf
        });
        self._peer_xdp = Some(ebpf);
    }

    /// VIP number `n` (1..=8) of each family.
    pub fn vip4(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 200, 0, n))
    }

    pub fn vip6(n: u8) -> IpAddr {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, n as u16))
    }

    /// Four services on the backends: web4/dns4 on VIP4, web6/dns6 on VIP6; HTTP checks
    /// for the web services, UDP checks for the dns ones (interval 200 ms, fall 2, rise 2).
    pub fn default_services(&self) -> String {
        let http = format!(
            "health = {{ kind = \"http\", port = {HTTP_PORT}, path = \"/\", interval = \"200ms\", timeout = \"100ms\", rise = 2, fall = 2 }}\n"
        );
        let udp = format!(
            "health = {{ kind = \"udp\", port = {UDP_PORT}, send = \"ping\", interval = \"200ms\", timeout = \"100ms\", rise = 2, fall = 2 }}\n"
        );
        let mut s = String::new();
        for (name, vip, port, proto, fam, health) in [
            ("web4", VIP4.to_string(), HTTP_PORT, "tcp", 4, &http),
            ("dns4", VIP4.to_string(), UDP_PORT, "udp", 4, &udp),
            ("web6", VIP6.to_string(), HTTP_PORT, "tcp", 6, &http),
            ("dns6", VIP6.to_string(), UDP_PORT, "udp", 6, &udp),
        ] {
            s.push_str(&self.service_toml(name, &vip, port, proto, fam, health));
        }
        s
    }

    /// A `[[service]]` block with every backend of family `fam`.
    pub fn service_toml(
        &self,
        name: &str,
        vip: &str,
        port: u16,
        proto: &str,
        fam: u8,
        extra: &str,
    ) -> String {
        let backends: Vec<(IpAddr, u32)> = self
            .backends
            .iter()
            .map(|b| {
                let a: IpAddr = if fam == 4 {
                    b.addr4.into()
                } else {
                    b.addr6.into()
                };
                (a, 1)
            })
            .collect();
        service_block(name, vip, port, proto, extra, &backends)
    }

    /// Writes the daemon config with these `[[service]]` blocks.
    pub fn write_config(&self, services: &str) {
        let text = format!(
            "[daemon]\ninterfaces = [\"eth0\"]\nxdp_mode = \"native\"\npin_dir = \"{}\"\nsocket = \"{}\"\nmetrics = \"{}\"\nstate_file = \"{}\"\naffinity_capacity = {}\n\n{services}",
            self.pin_dir.display(),
            self.socket.display(),
            self.metrics,
            self.state_file().display(),
            self.affinity_capacity
        );
        fs::write(&self.config, text).expect("write config");
    }

    /// The runtime state file the config names.
    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// Deletes the balancer's interface and creates it again with the same name and
    /// addresses (a new ifindex and MAC), as an operator re-creating a veth would; the
    /// switch side gets its XDP_PASS program again, and every host forgets the old MAC.
    pub fn recreate_lb_interface(&mut self) {
        self.delete_lb_interface();
        self.create_lb_interface();
    }

    /// Deletes the balancer's interface (what an operator removing a veth does).
    pub fn delete_lb_interface(&mut self) {
        self.lb.ip("link del eth0");
        self._peer_xdp.take();
    }

    /// Creates the balancer's interface again after [`Lab::delete_lb_interface`]: same
    /// name and addresses, a new ifindex and MAC; every host forgets the old MAC.
    pub fn create_lb_interface(&mut self) {
        self.plug(HostRole::Lb);
        self.lb.ip(&format!("addr add {LB4}/16 dev eth0"));
        self.lb.ip(&format!("addr add {LB6}/64 dev eth0 nodad"));
        self.attach_peer_xdp();
        self.client.ip("neigh flush dev eth0");
        for b in &self.backends {
            b.ns.ip("neigh flush dev eth0");
        }
    }

    /// Ifindex of the balancer's eth0 now.
    pub fn lb_ifindex(&self) -> u32 {
        let out = self.lb.ip("-j link show eth0");
        let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j json");
        v[0]["ifindex"].as_u64().expect("ifindex") as u32
    }

    /// Every live entry of the pinned backends array: (id, backend).
    pub fn pinned_backends(&self) -> Vec<(u32, lb_common::Backend)> {
        let path = self.pin_dir.join("maps").join(lb_common::MAP_BACKENDS);
        let map = aya::maps::MapData::from_pin(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let map: aya::maps::Array<_, lb_common::Backend> =
            aya::maps::Array::try_from(aya::maps::Map::Array(map)).expect("array");
        map.iter()
            .enumerate()
            .filter_map(|(i, b)| b.ok().map(|b| (i as u32, b)))
            .filter(|(_, b)| b.generation != 0)
            .collect()
    }

    /// Sends `sig` to the running daemon.
    pub fn signal_daemon(&self, sig: i32) {
        self.daemon.as_ref().expect("daemon running").signal(sig);
    }

    /// Kernel ids of every pinned object (maps and links) under the pin dir, by path:
    /// equal before and after means nothing was replaced.
    pub fn pinned_ids(&self) -> BTreeMap<String, u32> {
        let mut out = BTreeMap::new();
        let maps = self.pin_dir.join("maps");
        for e in fs::read_dir(&maps).into_iter().flatten().flatten() {
            let m = aya::maps::MapData::from_pin(e.path()).expect("pinned map");
            out.insert(
                format!("maps/{}", e.file_name().to_string_lossy()),
                m.info().expect("map info").id(),
            );
        }
        for e in fs::read_dir(&self.pin_dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("link_") {
                let l = aya::programs::links::PinnedLink::from_pin(e.path()).expect("link");
                let fd: aya::programs::links::FdLink = l.into();
                out.insert(name, fd.info().expect("link info").id());
            }
        }
        out
    }

    /// Starts the test server of every backend (HTTP and UDP, answering its name).
    pub fn start_servers(&mut self) {
        for i in 0..self.backends.len() {
            self.start_server(i);
        }
    }

    pub fn start_server(&mut self, i: usize) {
        let srv = testsrv_bin();
        let b = &mut self.backends[i];
        let mut binds = vec![b.addr4.to_string(), b.addr6.to_string()];
        for v in 1..=VIPS_PER_FAMILY {
            binds.push(format!("10.200.0.{v}"));
            binds.push(format!("fd00:200::{v}"));
        }
        let log = fs::File::create(self.dir.join(format!("{}.log", b.name))).expect("log");
        let child =
            b.ns.cmd(&srv)
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
        // Ready when it answers on its own address.
        let addr = SocketAddr::new(IpAddr::V4(self.backends[i].addr4), HTTP_PORT);
        let ns = &self.backends[i].ns;
        let deadline = Instant::now() + Duration::from_secs(5);
        while ns.run(|| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err()
        }) {
            assert!(Instant::now() < deadline, "test server {i} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills one backend's server (the host stays: health checks see refused connections).
    pub fn stop_server(&mut self, i: usize) {
        if let Some(mut p) = self.backends[i].server.take() {
            p.kill();
        }
    }

    /// Starts the daemon and waits until it answers `status` and every backend is resolved.
    pub fn start_daemon(&mut self) {
        assert!(self.daemon.is_none(), "daemon already running");
        let log = fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))
            .expect("daemon log");
        let mut cmd = match self.daemon_wrapper.split_first() {
            Some((program, args)) => {
                let mut c = self.lb.cmd(program);
                c.args(args).arg(&self.xlb);
                c
            }
            None => self.lb.cmd(&self.xlb),
        };
        let child = cmd
            .args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", &self.log_filter)
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
                panic!("xlb exited at start:\n{}", self.daemon_log());
            }
            if let Ok(out) = self.try_xlb(&["--json", "status"])
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&out)
            {
                let all = v["services"].as_array().is_some_and(|s| {
                    s.iter().all(|svc| {
                        svc["backends"]
                            .as_array()
                            .is_some_and(|b| b.iter().all(|b| b["resolved"] == true))
                    })
                });
                if all {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "xlb did not become ready within 10 s:\n{}",
                self.daemon_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn daemon_log(&self) -> String {
        fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// SIGKILL: the data plane must keep running on its pinned state.
    pub fn kill_daemon(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.kill();
        }
    }

    /// SIGTERM and wait.
    pub fn stop_daemon(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.signal(libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while d.alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Runs `xlb ARGS` in the balancer namespace against this lab's socket.
    pub fn try_xlb(&self, args: &[&str]) -> Result<String, (i32, String)> {
        let out = self
            .lb
            .cmd(&self.xlb)
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
            .unwrap_or_else(|(code, err)| panic!("xlb {args:?} failed ({code}): {err}"))
    }

    pub fn xlb_json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.xlb(&a)).expect("xlb --json output")
    }

    /// Which backend answers an HTTP request from `src` to `vip`.
    pub fn http(&self, src: IpAddr, vip: IpAddr) -> Result<String, String> {
        self.client
            .run(|| http_get(src, SocketAddr::new(vip, HTTP_PORT)))
    }

    /// Which backend answers a UDP datagram from `src` to `vip`.
    pub fn udp(&self, src: IpAddr, vip: IpAddr) -> Result<String, String> {
        self.client
            .run(|| udp_ask(src, SocketAddr::new(vip, UDP_PORT)))
    }

    /// A UDP datagram from `client` to `vip`'s UDP port, sent already encapsulated: from
    /// `sender` (a namespace of the lab) to `to` as IP protocol `proto` (4 or 41) by a raw
    /// socket, as a balancer would. The answer the client gets within `wait` (the name of
    /// the backend that stripped the tunnel), `None` when none came.
    pub fn tunneled_datagram(
        &self,
        sender: &Netns,
        (client, vip): (IpAddr, IpAddr),
        (to, proto): (IpAddr, i32),
        wait: Duration,
    ) -> Option<String> {
        // The client waits for the answer on the inner packet's source address and port.
        let sock = self.client.run(|| {
            let s = std::net::UdpSocket::bind(SocketAddr::new(client, 0)).expect("bind");
            s.connect(SocketAddr::new(vip, UDP_PORT)).expect("connect");
            s.set_read_timeout(Some(wait)).expect("timeout");
            s
        });
        let port = sock.local_addr().expect("port").port();
        let (_, inner) = crate::packet::ip(
            client,
            vip,
            &crate::packet::udp(port, UDP_PORT, b"who"),
            &crate::packet::V4Opts::default(),
        );
        sender.run(|| {
            let domain = if to.is_ipv4() {
                Domain::IPV4
            } else {
                Domain::IPV6
            };
            let s = Socket::new(domain, Type::RAW, Some(Protocol::from(proto))).expect("raw");
            s.send_to(&inner, &SocketAddr::new(to, 0).into())
                .expect("send the tunnel packet");
        });
        let mut buf = [0u8; 256];
        sock.recv(&mut buf)
            .ok()
            .map(|n| String::from_utf8_lossy(&buf[..n]).trim().to_string())
    }

    /// One request per client, all from one thread in the client namespace: `(client, answer)`.
    pub fn round(
        &self,
        clients: &[IpAddr],
        vip: IpAddr,
        udp: bool,
    ) -> Vec<(IpAddr, Result<String, String>)> {
        self.round_timeout(clients, vip, udp, IO_TIMEOUT)
    }

    /// [`Lab::round`] with a per-request timeout (short ones for polling during a failover,
    /// where a request to a dead backend must not hold up the poll).
    pub fn round_timeout(
        &self,
        clients: &[IpAddr],
        vip: IpAddr,
        udp: bool,
        timeout: Duration,
    ) -> Vec<(IpAddr, Result<String, String>)> {
        self.client.round(clients, vip, udp, timeout)
    }

    /// [`Lab::round`] where every client must be answered: client → backend name; panics
    /// naming the client, the VIP, the error and the daemon's log otherwise.
    pub fn answers(&self, clients: &[IpAddr], vip: IpAddr, udp: bool) -> BTreeMap<IpAddr, String> {
        self.round(clients, vip, udp)
            .into_iter()
            .map(|(c, r)| {
                let b = r.unwrap_or_else(|e| panic!("{c} → {vip}: {e}\n{}", self.daemon_log()));
                (c, b)
            })
            .collect()
    }

    /// The affinity table as pinned (read through its own handle, like any tool would).
    pub fn pinned_affinity(&self) -> Vec<(lb_common::AffinityKey, lb_common::AffinityValue)> {
        let mut out = xlb::dataplane::maps::pinned_affinity_entries(&self.pin_dir)
            .unwrap_or_else(|e| panic!("reading the pinned affinity table: {e}"));
        out.sort_by_key(|(k, _)| (k.service_id, k.addr, k.port_be));
        out
    }

    /// Every service's Maglev table as the data plane holds it: per (VIP, port, protocol),
    /// the share of slots of each backend address.
    pub fn pinned_tables(&self) -> BTreeMap<(IpAddr, u16, u8), BTreeMap<IpAddr, f64>> {
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
            let vip = xlb::model::addr_from_words(&k.addr, k.family);
            let mut counts: BTreeMap<IpAddr, u32> = BTreeMap::new();
            for i in v.table_offset..v.table_offset + v.table_size {
                let id = maglev.get(&i, 0).expect("slot");
                if id == lb_common::NO_BACKEND {
                    continue;
                }
                let b = backends.get(&id, 0).expect("backend");
                *counts
                    .entry(xlb::model::addr_from_words(&b.addr, b.family))
                    .or_default() += 1;
            }
            let shares = counts
                .into_iter()
                .map(|(a, n)| (a, n as f64 / v.table_size as f64))
                .collect();
            out.insert((vip, u16::from_be(k.port_be), k.proto), shares);
        }
        out
    }

    /// Id of the XDP program attached to the balancer's eth0, if any.
    pub fn attached_prog_id(&self) -> Option<u64> {
        let out = self.lb.ip("-j -d link show eth0");
        let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j json");
        v[0]["xdp"]["prog"]["id"].as_u64()
    }

    pub fn backend_index(&self, name: &str) -> usize {
        self.backends
            .iter()
            .position(|b| b.name == name)
            .unwrap_or_else(|| panic!("no backend {name}"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for b in &mut self.backends {
            b.server.take();
        }
        if let Some(mut d) = self.daemon.take() {
            d.kill();
        }
        // The pinned state outlives the daemon by design: remove it.
        if self.pin_dir.exists()
            && let Ok(bin) = std::panic::catch_unwind(xlb_bin)
        {
            let _ = Command::new(bin)
                .args(["--socket"])
                .arg(&self.socket)
                .args(["down", "--pin-dir"])
                .arg(&self.pin_dir)
                .output();
        }
        self._peer_xdp.take();
        // `xlb decap` state of the lab's backends (`/sys/fs/bpf/xlb-decap-ID*`): removing
        // the pins releases the links.
        let decap = format!("xlb-decap-{}", self.id);
        for e in fs::read_dir("/sys/fs/bpf").into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == decap || name.starts_with(&format!("{decap}-")) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
        if std::env::var_os("XLB_KEEP_LAB").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A `[[service]]` block with these (address, weight) backends.
pub fn service_block(
    name: &str,
    vip: &str,
    port: u16,
    proto: &str,
    extra: &str,
    backends: &[(IpAddr, u32)],
) -> String {
    let mut s = format!(
        "[[service]]\nname = \"{name}\"\nvip = \"{vip}\"\nport = {port}\nprotocol = \"{proto}\"\n{extra}\n"
    );
    for (a, w) in backends {
        s.push_str(&format!(
            "[[service.backend]]\naddress = \"{a}\"\nweight = {w}\n\n"
        ));
    }
    s
}

enum HostRole<'a> {
    Lb,
    Client,
    Router(&'a Netns),
    Backend(usize),
}

/// The address an office's clients share on the switch (the router's).
pub const OFFICE_PUBLIC: Ipv4Addr = Ipv4Addr::new(10, 100, 9, 1);

/// Clients behind a NAT router ([`Lab::add_office`]).
pub struct Office {
    /// The office hosts' own addresses (10.150.0.x), all seen as [`OFFICE_PUBLIC`].
    pub clients: Vec<IpAddr>,
    /// The office hosts.
    pub ns: Netns,
    /// The router (dropped after the office).
    pub router: Netns,
}

const IO_TIMEOUT: Duration = Duration::from_millis(1500);

/// `GET /` from source address `src`; returns the body (the backend's name).
pub fn http_get(src: IpAddr, dst: SocketAddr) -> Result<String, String> {
    http_request(src, dst, "/", IO_TIMEOUT)
}

/// `GET path` from source address `src`; returns the body.
pub fn http_get_path(src: IpAddr, dst: SocketAddr, path: &str) -> Result<String, String> {
    http_request(src, dst, path, IO_TIMEOUT)
}

/// `GET path` from `src` with a timeout for connecting and for reading.
pub fn http_request(
    src: IpAddr,
    dst: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<String, String> {
    let domain = if dst.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::STREAM, None).map_err(|e| e.to_string())?;
    s.set_reuse_address(true).map_err(|e| e.to_string())?;
    s.bind(&SocketAddr::new(src, 0).into())
        .map_err(|e| format!("bind {src}: {e}"))?;
    s.connect_timeout(&dst.into(), timeout)
        .map_err(|e| format!("connect {dst} from {src}: {e}"))?;
    let mut t: std::net::TcpStream = s.into();
    t.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    t.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: xlb\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    let mut resp = String::new();
    t.read_to_string(&mut resp)
        .map_err(|e| format!("read from {dst} (client {src}): {e}"))?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_string())
        .ok_or_else(|| format!("malformed response {resp:?}"))?;
    Ok(body)
}

/// `POST /upload` of `size` bytes from `src`, waiting at most `timeout` for each step; the
/// answer is `RECEIVED NAME` (the bytes the backend read, its name).
pub fn http_upload(
    src: IpAddr,
    dst: SocketAddr,
    size: usize,
    timeout: Duration,
) -> Result<String, String> {
    let domain = if dst.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::STREAM, None).map_err(|e| e.to_string())?;
    s.bind(&SocketAddr::new(src, 0).into())
        .map_err(|e| format!("bind {src}: {e}"))?;
    s.connect_timeout(&dst.into(), timeout)
        .map_err(|e| format!("connect {dst} from {src}: {e}"))?;
    let mut t: std::net::TcpStream = s.into();
    t.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    t.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: xlb\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
    );
    t.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    t.write_all(&vec![b'u'; size])
        .map_err(|e| format!("upload to {dst} (client {src}): {e}"))?;
    let mut resp = String::new();
    t.read_to_string(&mut resp)
        .map_err(|e| format!("read from {dst} (client {src}): {e}"))?;
    resp.split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_string())
        .ok_or_else(|| format!("malformed response {resp:?}"))
}

/// One datagram from `src`; returns the reply (the backend's name).
pub fn udp_ask(src: IpAddr, dst: SocketAddr) -> Result<String, String> {
    udp_request(src, dst, IO_TIMEOUT)
}

/// A datagram of `size` bytes from `src` (larger than the path's MTU: the client's
/// kernel fragments it), waiting `timeout` for the reply (the backend's name).
pub fn udp_request_sized(
    src: IpAddr,
    dst: SocketAddr,
    size: usize,
    timeout: Duration,
) -> Result<String, String> {
    let s = std::net::UdpSocket::bind(SocketAddr::new(src, 0))
        .map_err(|e| format!("bind {src}: {e}"))?;
    s.connect(dst).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut payload = b"who".to_vec();
    payload.resize(size, b'.');
    s.send(&payload).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 256];
    let n = s
        .recv(&mut buf)
        .map_err(|e| format!("no UDP reply from {dst} (client {src}): {e}"))?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
}

/// One datagram from `src`, waiting `timeout` for the reply.
pub fn udp_request(src: IpAddr, dst: SocketAddr, timeout: Duration) -> Result<String, String> {
    let s = std::net::UdpSocket::bind(SocketAddr::new(src, 0))
        .map_err(|e| format!("bind {src}: {e}"))?;
    s.connect(dst).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.send(b"who").map_err(|e| e.to_string())?;
    let mut buf = [0u8; 256];
    let n = s
        .recv(&mut buf)
        .map_err(|e| format!("no UDP reply from {dst} (client {src}): {e}"))?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
}
