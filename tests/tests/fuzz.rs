//! The fuzz tier: a short, fixed-seed run of the fuzzer (`cargo xtask fuzz` runs the long
//! one) through the real XDP program, and the checker's own tests — each wrong outcome
//! the fuzzer must catch, shown to be caught.

use lb_common::{BackendStats, ServiceStats, Stat};
use xlb_tests::{
    fixtures::{CLIENT4, OTHER4, VIP4, frag_needed},
    fuzz::{
        self,
        check::{Case, Memory, Observed, judge},
        oracle::{Backend, Expect, Service, Topology, Tunnel, expect},
    },
    harness::XdpAction,
    packet::{CLIENT_MAC, LB_MAC, Outer, encapsulate, frame, icmp_echo, tcp, tcp_frame},
    require_root,
};

/// Frames of the short run: the systematic pass (about 25,000) and the random mix; a few
/// seconds on an idle machine.
const SHORT_RUN_FRAMES: u64 = 300_000;
/// Fixed so CI is deterministic; `XLB_FUZZ_SEED=N cargo xtask test --tier fuzz` tries another.
const SHORT_RUN_SEED: u64 = 1;

#[test]
fn short_run_finds_no_new_fault() {
    require_root();
    let seed = std::env::var("XLB_FUZZ_SEED")
        .ok()
        .map(|s| s.parse().expect("XLB_FUZZ_SEED is a number"))
        .unwrap_or(SHORT_RUN_SEED);
    let report = fuzz::run(&fuzz::Options {
        frames: SHORT_RUN_FRAMES,
        seed,
        progress: false,
    });
    println!("{report}");
    assert_eq!(report.aborted, 0, "XDP_ABORTED (see the report above)");
    assert_eq!(
        report.failures, 0,
        "the fuzzer found {} failing frames (report above)",
        report.failures
    );
    // A run that never reached an outcome tested nothing there.
    // drop_probe is the TC probe program's, never an XDP verdict.
    for s in Stat::ALL.into_iter().filter(|s| *s != Stat::DropProbe) {
        assert!(
            report.outcomes.get(s.name()).copied().unwrap_or(0) > 0,
            "no frame ended as {}: the generator does not reach it",
            s.name()
        );
    }
    assert!(
        report.hits > 0 && report.misses > 0,
        "affinity not exercised"
    );
    assert!(report.icmp_errors > 0, "no ICMP error reached a backend");
    assert!(
        report.later_fragments > 0,
        "no later fragment reached a backend"
    );
}

// --- the checker catches what it must -----------------------------------------------

const LO: u32 = 1;
const OTHER_IF: u32 = 7;

fn topology() -> Topology {
    let backend = |last: u8, ifindex| Backend {
        address: format!("192.0.2.{last}").parse().expect("ip"),
        service: 0,
        id: u32::from(last),
        mac: [0x02, 0xbe, 192, 0, 2, last],
        src_mac: [0x02, 0x1b, 0, 0, 0, 1],
        ifindex,
        outer: format!("192.0.2.{last}").parse().expect("ip"),
        outer_src: "10.0.0.1".parse().expect("ip"),
    };
    Topology {
        services: vec![Service {
            name: "web4",
            id: 0,
            vip: VIP4,
            port: 80,
            proto: 6,
            prefix: 32,
            per_flow: false,
            nat: Vec::new(),
            no_backend: None,
            tunnel: None,
        }],
        backends: vec![backend(11, LO), backend(12, LO), backend(13, OTHER_IF)],
        tx_ports: vec![],
        ingresses: vec![(LO, "lo")],
        echo_reply: true,
    }
}

/// The observation of a correct run of `frame`: `stat` counted, and for a forward to
/// backend `to` its MACs, one miss (or hit) and the packet counted.
struct Fake {
    action: u32,
    output: Vec<u8>,
    stats: [u64; Stat::COUNT as usize],
    services: Vec<ServiceStats>,
    backends: Vec<BackendStats>,
}

impl Fake {
    fn pass(frame: &[u8], stat: Stat) -> Self {
        let mut stats = [0; Stat::COUNT as usize];
        stats[stat as usize] = 1;
        Self {
            action: XdpAction::Pass as u32,
            output: frame.to_vec(),
            stats,
            services: vec![ServiceStats::default()],
            backends: vec![BackendStats::default(); 3],
        }
    }

    fn forward(top: &Topology, frame: &[u8], to: usize, hit: bool) -> Self {
        let mut f = Self::pass(frame, Stat::Tx);
        f.stats = [0; Stat::COUNT as usize];
        f.stats[Stat::Tx as usize] = 1;
        f.action = XdpAction::Tx as u32;
        f.output[..6].copy_from_slice(&top.backends[to].mac);
        f.output[6..12].copy_from_slice(&top.backends[to].src_mac);
        let len = frame.len() as u64;
        f.services[0] = ServiceStats {
            packets: 1,
            bytes: len,
            hits: u64::from(hit),
            misses: u64::from(!hit),
            ..Default::default()
        };
        f.backends[to] = BackendStats {
            packets: 1,
            bytes: len,
            pins: u64::from(!hit),
            _reserved: 0,
        };
        f
    }

    fn judge(&self, top: &Topology, mem: &mut Memory, frame: &[u8]) -> Result<Stat, String> {
        let e = expect(top, frame);
        let case = Case {
            frame,
            ingress: LO,
            expect: &e,
        };
        let obs = Observed {
            action: self.action,
            output: &self.output,
            stats: self.stats,
            services: &self.services,
            backends: &self.backends,
        };
        judge(top, mem, &case, &obs)
    }
}

fn rejects(r: Result<Stat, String>, why: &str) {
    let e = r.expect_err("the checker accepted a wrong outcome");
    assert!(e.contains(why), "rejected for {e:?}, want {why:?}");
}

#[test]
fn checker_accepts_correct_outcomes() {
    let top = topology();
    let mut mem = Memory::new(1000);
    let other = tcp_frame(CLIENT4, OTHER4, 1000, 80);
    assert_eq!(
        Fake::pass(&other, Stat::PassNotService).judge(&top, &mut mem, &other),
        Ok(Stat::PassNotService)
    );
    let f = tcp_frame(CLIENT4, VIP4, 1000, 80);
    assert_eq!(
        Fake::forward(&top, &f, 0, false).judge(&top, &mut mem, &f),
        Ok(Stat::Tx)
    );
    assert_eq!(
        Fake::forward(&top, &f, 0, true).judge(&top, &mut mem, &f),
        Ok(Stat::Tx)
    );
}

#[test]
fn checker_rejects_wrong_verdicts_and_counters() {
    let top = topology();
    let mut mem = Memory::new(1000);
    let other = tcp_frame(CLIENT4, OTHER4, 1000, 80);
    let mut x = Fake::pass(&other, Stat::PassNotService);
    x.action = XdpAction::Aborted as u32;
    rejects(x.judge(&top, &mut mem, &other), "XDP_ABORTED");
    let x = Fake::pass(&other, Stat::PassMalformed);
    rejects(x.judge(&top, &mut mem, &other), "counter pass_malformed");
    let mut x = Fake::pass(&other, Stat::PassNotService);
    x.stats[Stat::PassNonIp as usize] = 1;
    rejects(x.judge(&top, &mut mem, &other), "want exactly one");
    let mut x = Fake::pass(&other, Stat::PassNotService);
    x.stats[Stat::PassNotService as usize] = 2;
    rejects(x.judge(&top, &mut mem, &other), "want exactly one");
    let mut x = Fake::pass(&other, Stat::PassNotService);
    x.services[0].hits = 1;
    rejects(
        x.judge(&top, &mut mem, &other),
        "counters of service web4 moved",
    );
    let mut x = Fake::pass(&other, Stat::PassNotService);
    x.output[30] ^= 1;
    rejects(x.judge(&top, &mut mem, &other), "frame modified");
    let f = tcp_frame(CLIENT4, VIP4, 1000, 80);
    let mut x = Fake::forward(&top, &f, 0, false);
    x.backends[0].bytes += 1;
    rejects(x.judge(&top, &mut mem, &f), "backend 192.0.2.11 counters");
    let mut x = Fake::forward(&top, &f, 0, false);
    x.services[0].repins = 1;
    rejects(x.judge(&top, &mut mem, &f), "re-pin");
}

#[test]
fn checker_rejects_wrong_forwards() {
    let top = topology();
    let mut mem = Memory::new(1000);
    let f = tcp_frame(CLIENT4, VIP4, 1000, 80);
    let mut x = Fake::forward(&top, &f, 0, false);
    x.output[0] ^= 0x40;
    rejects(x.judge(&top, &mut mem, &f), "not a backend of web4");
    let mut x = Fake::forward(&top, &f, 0, false);
    x.output[14 + 8] = 63; // TTL: DSR rewrites only the MACs
    rejects(x.judge(&top, &mut mem, &f), "changed beyond the MACs");
    // Backend .13 sits behind another interface that is not in the redirect map.
    let x = Fake::forward(&top, &f, 2, false);
    rejects(x.judge(&top, &mut mem, &f), "want Drop/drop_no_tx_port");
    // One key, one backend.
    Fake::forward(&top, &f, 0, false)
        .judge(&top, &mut mem, &f)
        .expect("first packet");
    let x = Fake::forward(&top, &f, 1, true);
    rejects(x.judge(&top, &mut mem, &f), "affinity broken");
    // A known key cannot miss while no eviction is possible.
    let x = Fake::forward(&top, &f, 0, false);
    rejects(x.judge(&top, &mut mem, &f), "want one hit");
    // A new key cannot hit.
    let g = tcp_frame("198.51.100.8".parse().expect("ip"), VIP4, 1000, 80);
    let x = Fake::forward(&top, &g, 0, true);
    rejects(x.judge(&top, &mut mem, &g), "want one miss");
}

/// Tunnel mode: a frame forwarded with only its MACs changed, or encapsulated with a
/// field off, is caught; the exact encapsulation passes; a packet over the MTU must be
/// answered (with DF) or dropped (without).
#[test]
fn checker_rejects_wrong_tunnel_outcomes() {
    let mut top = topology();
    top.services[0].tunnel = Some(Tunnel {
        mtu: 1500,
        v6_outer: false,
        no_egress: false,
    });
    let mut mem = Memory::new(1000);
    let f = tcp_frame(CLIENT4, VIP4, 1000, 80);
    let dsr = Fake::forward(&top, &f, 0, false);
    rejects(dsr.judge(&top, &mut mem, &f), "not encapsulated");
    let be = &top.backends[0];
    let outer = Outer {
        src: be.outer_src,
        dst: be.outer,
        flow_label: 0,
    };
    let good = encapsulate(&f, be.mac, be.src_mac, &outer);
    let tunneled = |out: &[u8], hit: bool| {
        let mut x = Fake::forward(&top, &f, 0, hit);
        x.output = out.to_vec();
        x.services[0].bytes = out.len() as u64;
        x.backends[0].bytes = out.len() as u64;
        x
    };
    // The DSR frame was rejected before anything was remembered: still a new key.
    assert_eq!(
        tunneled(&good, false).judge(&top, &mut mem, &f),
        Ok(Stat::Tx)
    );
    let mut ttl = good.clone();
    ttl[14 + 8] = 63;
    rejects(
        tunneled(&ttl, true).judge(&top, &mut mem, &f),
        "not encapsulated",
    );
    let mut src = good.clone();
    src[14 + 15] ^= 1;
    rejects(
        tunneled(&src, true).judge(&top, &mut mem, &f),
        "not encapsulated",
    );

    // 1481 bytes: too big for IPIP at MTU 1500.
    let big = frame(CLIENT4, VIP4, &tcp(1000, 80, &[0; 1441]));
    let mut fwd = Fake::forward(&top, &big, 0, true);
    fwd.output = encapsulate(&big, be.mac, be.src_mac, &outer);
    rejects(fwd.judge(&top, &mut mem, &big), "too big without DF");
    let mut dropped = Fake::pass(&big, Stat::DropTooBig);
    dropped.action = XdpAction::Drop as u32;
    dropped.services[0].hits = 1;
    assert_eq!(dropped.judge(&top, &mut mem, &big), Ok(Stat::DropTooBig));
}

#[test]
fn oracle_follows_the_readme_table_order() {
    let top = topology();
    let f = tcp_frame(CLIENT4, VIP4, 1000, 80);
    let mut cut = f[..14 + 20 + 10].to_vec();
    assert_eq!(expect(&top, &cut), Expect::Drop(Stat::DropMalformed));
    cut[14 + 6] = 0x20; // MF: a first fragment needs its TCP header as any packet
    assert_eq!(expect(&top, &cut), Expect::Drop(Stat::DropMalformed));
    cut[14 + 7] = 1; // an offset: a later fragment has no ports to look at
    assert!(matches!(
        expect(&top, &cut),
        Expect::Later { sole: Some(0), .. }
    ));
    cut[14 + 9] = 1; // ICMP: fragments of neither TCP nor UDP are dropped
    assert_eq!(expect(&top, &cut), Expect::Drop(Stat::DropFragment));
    let mut g = f.clone();
    g[14] = 0x44;
    assert_eq!(expect(&top, &g), Expect::Pass(Stat::PassMalformed));
    g[12] = 0x88;
    g[13] = 0xcc;
    assert_eq!(expect(&top, &g), Expect::Pass(Stat::PassNonIp));
    let to_8080 = tcp_frame(CLIENT4, VIP4, 1000, 8080);
    assert_eq!(expect(&top, &to_8080), Expect::Pass(Stat::PassNotService));
    assert!(matches!(
        expect(&top, &f),
        Expect::Balance { service: 0, .. }
    ));
}

#[test]
fn checker_rejects_wrong_icmp_outcomes() {
    let top = topology();
    let mut mem = Memory::new(1000);
    let f = tcp_frame(CLIENT4, VIP4, 40000, 80);
    Fake::forward(&top, &f, 0, false)
        .judge(&top, &mut mem, &f)
        .expect("the client's first packet pins it to .11");
    let e = frag_needed(VIP4, CLIENT4, 40000);
    assert!(matches!(
        expect(&top, &e),
        Expect::IcmpError { service: 0, .. }
    ));
    let icmp_to = |to: usize| {
        let mut x = Fake::forward(&top, &e, to, false);
        x.services[0].misses = 0;
        x.services[0].icmp_errors = 1;
        x.backends[to].pins = 0;
        x
    };
    assert_eq!(icmp_to(0).judge(&top, &mut mem, &e), Ok(Stat::Tx));
    rejects(icmp_to(1).judge(&top, &mut mem, &e), "pinned to 192.0.2.11");
    let mut x = icmp_to(0);
    x.services[0].misses = 1;
    x.backends[0].pins = 1;
    rejects(x.judge(&top, &mut mem, &e), "moved affinity counters");
    let mut x = icmp_to(0);
    x.services[0].icmp_errors = 0;
    rejects(x.judge(&top, &mut mem, &e), "icmp_errors did not move");

    let ping = frame(CLIENT4, VIP4, &icmp_echo(false));
    let Expect::EchoReply(reply) = expect(&top, &ping) else {
        panic!("an echo request to a VIP is answered");
    };
    assert_eq!(&reply[..12], &[CLIENT_MAC, LB_MAC].concat()[..]);
    let answered = |out: Vec<u8>| {
        let mut x = Fake::pass(&ping, Stat::IcmpEchoReply);
        x.action = XdpAction::Tx as u32;
        x.output = out;
        x
    };
    assert_eq!(
        answered(reply.clone()).judge(&top, &mut mem, &ping),
        Ok(Stat::IcmpEchoReply)
    );
    let mut bad = reply.clone();
    bad[14 + 10] ^= 1; // the IPv4 header checksum
    rejects(
        answered(bad).judge(&top, &mut mem, &ping),
        "echo reply differs",
    );
    let no_echo = Topology {
        echo_reply: false,
        ..topology()
    };
    assert_eq!(expect(&no_echo, &ping), Expect::Pass(Stat::PassNotService));
}

#[test]
fn checker_sends_later_fragments_after_their_first() {
    use xlb_tests::{
        fixtures::{v4_first, v4_later},
        packet::{IPPROTO_TCP, tcp},
    };
    let top = topology();
    let mut mem = Memory::new(1000);
    let first = v4_first(CLIENT4, VIP4, &tcp(40000, 80, &[0; 100]), 7);
    Fake::forward(&top, &first, 0, false)
        .judge(&top, &mut mem, &first)
        .expect("first fragment pins .11");
    let later = v4_later(CLIENT4, VIP4, IPPROTO_TCP, 7);
    assert_eq!(
        Fake::forward(&top, &later, 0, true).judge(&top, &mut mem, &later),
        Ok(Stat::Tx)
    );
    rejects(
        Fake::forward(&top, &later, 1, true).judge(&top, &mut mem, &later),
        "affinity broken",
    );
    // No sole service (web4 with a sibling on the VIP): an untracked later fragment drops.
    let mut two = topology();
    let mut other = two.services[0].clone();
    other.port = 443;
    other.name = "web443";
    two.services.push(other);
    let untracked = v4_later(CLIENT4, VIP4, IPPROTO_TCP, 8);
    assert!(matches!(
        expect(&two, &untracked),
        Expect::Later { sole: None, .. }
    ));
}
