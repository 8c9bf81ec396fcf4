//! `bench e2e`: delivered packets per second through three network namespaces, xlb
//! against a plain XDP forwarder and the kernel's own ways of balancing, all in one run.
//!
//! ```text
//!   gen-ns                 lb-ns                          sink-ns
//!   gen0  ── veth ──  lb0 [receiver under test] lb1 ── veth ──  sink0 [count_sink]
//! ```
//! - Generator: `trafficgen` (lb-ebpf/src/bin/bench.rs) run with BPF_PROG_TEST_RUN in
//!   live-frames mode on gen0 (the calling thread enters gen-ns: the run's ingress
//!   ifindex is resolved in the caller's namespace). It returns XDP_TX, which a
//!   live-frames run turns into a transmit out of the ingress device, so the frames
//!   arrive on lb0. Every frame is rewritten whole and gets a new source address from
//!   a per-CPU counter: 65,536 clients in turn (or, for the miss variant, 4M/2^32).
//! - Sink: `count_sink` on sink0 counts per CPU and drops. The figure is what it
//!   counted over the run's wall time: delivered, not sent.
//! - Receivers on lb0 (one at a time): `mac_fwd` (baseline), xlb (DSR: it rewrites MACs
//!   and redirects through its DEVMAP to lb1; the backends sit behind sink0), xlb in
//!   tunnel mode (the same, with the outer header added: IPIP / IP6IP6), or
//!   `xdp_pass` plus the kernel stack forwarding with nftables DNAT (stateless or
//!   conntrack) or without NAT.
//! - Everything runs on one CPU: the generating thread is pinned, and veth's NAPI runs
//!   on the CPU that transmits (checked: the sink's per-CPU counter). Variants are
//!   interleaved round by round; medians with min–max are reported.
//!
//! Each protocol/family combination gets its own topology (and so its own conntrack
//! table: nf_conntrack_max is read-only in a child namespace).

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::Stdio,
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, xdp::DevMap},
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp, xdp::XdpMode},
};
use lb_common::{
    PROG_XLB,
    tunnel::{EGRESS_F_V4, EGRESS_F_V6, Egress, OUTER_V4_LEN, OUTER_V6_LEN},
};
use xlb::{
    dataplane::loader::{BENCH_OBJECT, LoadOptions},
    model::{Forwarding, Link, Protocol, Service},
};

use super::{Samples, pin_to_cpu};
use crate::{
    harness::{XlbHarness, run_once},
    ifindex,
    lab::{self, Netns, enter},
};

const ROUNDS: usize = 7;
/// Diagnostic client counts for the hit path, and rounds of that diagnostic.
const DIAG_CLIENTS: [u32; 2] = [256, 4096];
const DIAG_ROUNDS: usize = 3;
/// Wall time of one measured run (one BPF_PROG_TEST_RUN call).
const SAMPLE: Duration = Duration::from_millis(350);
/// Packets of the warm-up run before each sample (pins / conntrack entries, rate guess).
const WARMUP: u32 = 2 * CLIENTS;
/// Live-frames batch: frames per page-pool round before the kernel flushes redirects
/// and runs the pending softirqs (the veth NAPI polls) on this CPU.
const BATCH: u32 = 64;
/// Distinct client addresses of the steady-state pattern.
const CLIENTS: u32 = 65_536;
/// Affinity capacity for the hit variant: room for the 65,536 clients with buckets to
/// spare (at 1/8 of capacity no bucket overflows in practice: every client stays pinned).
const HIT_CAPACITY: u32 = 1 << 19;
/// Affinity capacity for the miss variant: far below the client space.
const MISS_CAPACITY: u32 = 65_536;
/// Client index masks of the miss pattern: 100.64.0.0/10 (4,194,304 sources) and the
/// last 32 bits of an IPv6 /96. A source recurs only after that many miss-pattern
/// packets, long after the table (65,536 clients) has evicted it.
const MISS_MASK_V4: u32 = (1 << 22) - 1;
const MISS_MASK_V6: u32 = u32::MAX;
const BACKENDS: u16 = 4;
const DPORT: u16 = 80;
const SPORT: u16 = 40_000;

const GEN_MAC: [u8; 6] = [0x02, 0xe2, 0, 0, 0, 0x01];
const LB_IN_MAC: [u8; 6] = [0x02, 0xe2, 0, 0, 0x01, 0x00];
const LB_OUT_MAC: [u8; 6] = [0x02, 0xe2, 0, 0, 0x01, 0x01];
const SINK_MAC: [u8; 6] = [0x02, 0xe2, 0, 0, 0x02, 0x00];

const VIP4: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 1);
const SRC4_BASE: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 0);
const SRC6_BASE: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x64, 0, 0, 0, 0, 0, 0);

/// `GenConfig` of lb-ebpf/src/bin/bench.rs, same layout.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct GenConfig {
    frame: [u8; 80],
    ip_csum_partial: u32,
    l4_csum_partial: u32,
    src_base: u32,
    mask: u32,
    v6: u32,
    udp: u32,
    counter: u32,
    _pad: [u32; 3],
}
const _: () = assert!(std::mem::size_of::<GenConfig>() == 120);
// SAFETY: repr(C), plain integers, no padding (120 = 80 + 10 × 4).
unsafe impl aya::Pod for GenConfig {}

/// Client patterns, each numbered by its own generator counter.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pattern {
    /// 65,536 clients in turn.
    Cycle,
    /// A new client on every packet.
    Unique,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    Baseline,
    XlbHit,
    XlbMiss,
    NftStateless,
    NftConntrack,
    KernelForward,
    XlbTunnel,
}

impl Variant {
    const ALL: [Variant; 7] = [
        Variant::Baseline,
        Variant::XlbHit,
        Variant::XlbMiss,
        Variant::NftStateless,
        Variant::NftConntrack,
        Variant::KernelForward,
        Variant::XlbTunnel,
    ];

    fn key(self) -> &'static str {
        match self {
            Variant::Baseline => "baseline",
            Variant::XlbHit => "xlb_hit",
            Variant::XlbMiss => "xlb_miss",
            Variant::NftStateless => "nft_stateless",
            Variant::NftConntrack => "nft_conntrack",
            Variant::KernelForward => "kernel_forward",
            Variant::XlbTunnel => "xlb_tunnel",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Variant::Baseline => "a. baseline: XDP MAC-rewrite fwd",
            Variant::XlbHit => "b. xlb, clients pinned",
            Variant::XlbMiss => "c. xlb, every packet new client",
            Variant::NftStateless => "d. nft stateless jhash DNAT",
            Variant::NftConntrack => "e. nft jhash DNAT + conntrack",
            Variant::KernelForward => "f. kernel forwarding, no NAT",
            Variant::XlbTunnel => "g. xlb tunnel, clients pinned",
        }
    }

    fn pattern(self) -> Pattern {
        if self == Variant::XlbMiss {
            Pattern::Unique
        } else {
            Pattern::Cycle
        }
    }

    /// What runs on lb0.
    fn lb_prog(self) -> LbProg {
        match self {
            Variant::Baseline => LbProg::MacFwd,
            Variant::XlbHit => LbProg::XlbHit,
            Variant::XlbMiss => LbProg::XlbMiss,
            Variant::XlbTunnel => LbProg::XlbTunnel,
            _ => LbProg::Pass,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum LbProg {
    MacFwd,
    XlbHit,
    XlbMiss,
    XlbTunnel,
    Pass,
}

#[derive(Clone, Copy)]
struct Combo {
    v6: bool,
    udp: bool,
}

impl Combo {
    /// JSON key suffix: IPv4 UDP is the headline (no suffix).
    fn suffix(self) -> &'static str {
        match (self.v6, self.udp) {
            (false, true) => "",
            (true, true) => "_v6",
            (false, false) => "_tcp",
            (true, false) => "_v6_tcp",
        }
    }

    fn label(self) -> String {
        format!(
            "{} {}, {}-byte frames",
            if self.v6 { "IPv6" } else { "IPv4" },
            if self.udp { "UDP" } else { "TCP" },
            self.frame_len()
        )
    }

    /// Frame length without FCS: 64 bytes where the headers fit; IPv6 TCP needs 74 and
    /// is padded to 80 (the generator copies in 8-byte words).
    fn frame_len(self) -> usize {
        if self.v6 && !self.udp { 80 } else { 64 }
    }

    fn l4_offset(self) -> usize {
        if self.v6 { 54 } else { 34 }
    }

    fn vip(self) -> IpAddr {
        if self.v6 { VIP6.into() } else { VIP4.into() }
    }

    fn backend(self, i: u16) -> IpAddr {
        if self.v6 {
            Ipv6Addr::new(0xfd00, 0x98, 0, 0, 0, 0, 0, 1 + i).into()
        } else {
            Ipv4Addr::new(10, 98, 0, 1 + i as u8).into()
        }
    }

    fn proto(self) -> Protocol {
        if self.udp {
            Protocol::Udp
        } else {
            Protocol::Tcp
        }
    }
}

// --- frames and checksums -------------------------------------------------------------

fn sum16(data: &[u8]) -> u32 {
    let mut s = 0u32;
    let mut c = data.chunks_exact(2);
    for w in &mut c {
        s += u16::from_be_bytes([w[0], w[1]]) as u32;
    }
    if let [b] = c.remainder() {
        s += (*b as u32) << 8;
    }
    s
}

fn fold16(mut s: u32) -> u32 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s
}

/// The generator's template and the checksum parts it completes per frame.
struct Template {
    combo: Combo,
    frame: Vec<u8>,
    ip_partial: u32,
    l4_partial: u32,
    src_base: u32,
}

impl Template {
    fn new(combo: Combo) -> Self {
        let len = combo.frame_len();
        let l4 = combo.l4_offset();
        let proto = if combo.udp { 17u8 } else { 6 };
        let mut f = vec![0u8; len];
        f[0..6].copy_from_slice(&LB_IN_MAC);
        f[6..12].copy_from_slice(&GEN_MAC);
        if combo.v6 {
            f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
            f[14] = 0x60;
            f[18..20].copy_from_slice(&((len - l4) as u16).to_be_bytes());
            f[20] = proto;
            f[21] = 64;
            f[22..38].copy_from_slice(&SRC6_BASE.octets());
            f[38..54].copy_from_slice(&VIP6.octets());
        } else {
            f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
            f[14] = 0x45;
            f[16..18].copy_from_slice(&((len - 14) as u16).to_be_bytes());
            f[20..22].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
            f[22] = 64;
            f[23] = proto;
            f[26..30].copy_from_slice(&SRC4_BASE.octets());
            f[30..34].copy_from_slice(&VIP4.octets());
        }
        f[l4..l4 + 2].copy_from_slice(&SPORT.to_be_bytes());
        f[l4 + 2..l4 + 4].copy_from_slice(&DPORT.to_be_bytes());
        if combo.udp {
            f[l4 + 4..l4 + 6].copy_from_slice(&((len - l4) as u16).to_be_bytes());
        } else {
            f[l4 + 4..l4 + 8].copy_from_slice(&1u32.to_be_bytes()); // seq
            f[l4 + 8..l4 + 12].copy_from_slice(&1u32.to_be_bytes()); // ack
            f[l4 + 12] = 5 << 4;
            f[l4 + 13] = 0x10; // ACK: a packet of an established connection
            f[l4 + 14..l4 + 16].copy_from_slice(&64240u16.to_be_bytes());
        }
        // Partial sums: the varying source word and the checksum fields as zero.
        let var = Self::src_word_offset(combo);
        let src_base = u32::from_be_bytes(f[var..var + 4].try_into().expect("4 bytes"));
        let mut z = f.clone();
        z[var..var + 4].fill(0);
        let ip_partial = if combo.v6 {
            0
        } else {
            fold16(sum16(&z[14..34]))
        };
        let l4_len = (len - l4) as u32;
        let pseudo = if combo.v6 {
            sum16(&z[22..54]) + l4_len + proto as u32
        } else {
            sum16(&z[26..34]) + l4_len + proto as u32
        };
        let l4_partial = fold16(pseudo + sum16(&z[l4..]));
        let mut t = Template {
            combo,
            frame: f,
            ip_partial,
            l4_partial,
            src_base,
        };
        t.frame = t.frame_for(0);
        t
    }

    fn src_word_offset(combo: Combo) -> usize {
        if combo.v6 { 34 } else { 26 }
    }

    fn l4_csum_offset(&self) -> usize {
        self.combo.l4_offset() + if self.combo.udp { 6 } else { 16 }
    }

    /// The frame the generator must produce for client index `idx`.
    fn frame_for(&self, idx: u32) -> Vec<u8> {
        let mut f = self.frame.clone();
        let src = self.src_base.wrapping_add(idx);
        let var = Self::src_word_offset(self.combo);
        f[var..var + 4].copy_from_slice(&src.to_be_bytes());
        let words = (src >> 16) + (src & 0xffff);
        if !self.combo.v6 {
            let c = !(fold16(self.ip_partial + words) as u16);
            f[24..26].copy_from_slice(&c.to_be_bytes());
        }
        let mut c = !(fold16(self.l4_partial + words) as u16);
        if self.combo.udp && c == 0 {
            c = 0xffff;
        }
        let at = self.l4_csum_offset();
        f[at..at + 2].copy_from_slice(&c.to_be_bytes());
        f
    }

    fn config(&self, pattern: Pattern) -> GenConfig {
        let mut frame = [0u8; 80];
        frame[..self.frame.len()].copy_from_slice(&self.frame);
        GenConfig {
            frame,
            ip_csum_partial: self.ip_partial,
            l4_csum_partial: self.l4_partial,
            src_base: self.src_base,
            mask: match (pattern, self.combo.v6) {
                (Pattern::Cycle, _) => CLIENTS - 1,
                (Pattern::Unique, false) => MISS_MASK_V4,
                (Pattern::Unique, true) => MISS_MASK_V6,
            },
            v6: self.combo.v6 as u32,
            udp: self.combo.udp as u32,
            counter: match pattern {
                Pattern::Cycle => 0,
                Pattern::Unique => 1,
            },
            _pad: [0; 3],
        }
    }
}

/// Checks both checksums of a frame from scratch (independently of the generator's
/// incremental method).
fn checksums_ok(f: &[u8], combo: Combo) -> bool {
    let l4 = combo.l4_offset();
    let proto = if combo.udp { 17 } else { 6 };
    let l4_len = (f.len() - l4) as u32;
    let ip_ok = combo.v6 || fold16(sum16(&f[14..34])) == 0xffff;
    let pseudo = if combo.v6 {
        sum16(&f[22..54])
    } else {
        sum16(&f[26..34])
    } + l4_len
        + proto;
    ip_ok && fold16(pseudo + sum16(&f[l4..])) == 0xffff
}

// --- the topology ---------------------------------------------------------------------

/// `struct xdp_md` for `ctx_in`.
fn xdp_md(len: usize, ingress_ifindex: u32) -> [u8; 24] {
    let mut md = [0u8; 24];
    md[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
    md[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    md
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// One topology with everything loaded. Field order is drop order: programs and maps
/// first, then the namespaces (deleted on drop, also when a panic unwinds).
struct Bench {
    combo: Combo,
    tmpl: Template,
    bench: Ebpf,
    xlb_hit: XlbHarness,
    xlb_miss: XlbHarness,
    xlb_tunnel: XlbHarness,
    gen_cfg: Array<MapData, GenConfig>,
    sink_count: PerCpuArray<MapData, u64>,
    _fwd_ports: DevMap<MapData>,
    attached: Option<(LbProg, aya::programs::xdp::XdpLinkId)>,
    ruleset: Option<Variant>,
    vip_route: bool,
    gen_if: u32,
    lb_in: u32,
    cpu: usize,
    gns: Netns,
    lb: Netns,
    _sink: Netns,
}

/// One measured run.
#[derive(Clone, Copy, Debug, Default)]
struct Run {
    sent: u64,
    delivered: u64,
    secs: f64,
    /// Delivered on the generating CPU / delivered.
    on_cpu: f64,
    hits: u64,
    misses: u64,
}

impl Run {
    fn mpps(&self) -> f64 {
        self.delivered as f64 / self.secs / 1e6
    }
}

impl Bench {
    fn new(combo: Combo, tag: &str, cpu: usize) -> Self {
        let id = format!("xe{}{tag}", std::process::id() % 0xffff);
        // Created one by one so that a panic part-way still deletes the earlier ones.
        let gns = Netns::new(format!("{id}-gen"));
        let lb = Netns::new(format!("{id}-lb"));
        let sink = Netns::new(format!("{id}-sink"));
        gns.ip(&format!(
            "link add gen0 address {} type veth peer name lb0 address {} netns {}",
            mac_str(GEN_MAC),
            mac_str(LB_IN_MAC),
            lb.name
        ));
        lb.ip(&format!(
            "link add lb1 address {} type veth peer name sink0 address {} netns {}",
            mac_str(LB_OUT_MAC),
            mac_str(SINK_MAC),
            sink.name
        ));
        for (ns, ifs) in [
            (&gns, &["gen0"][..]),
            (&lb, &["lb0", "lb1"]),
            (&sink, &["sink0"]),
        ] {
            for i in ifs {
                ns.ip(&format!("link set {i} up"));
            }
        }
        // Quiet ends: no IPv6 chatter counted at the sink.
        for ns in [&gns, &sink] {
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1");
        }
        // The balancer host as a router, for the kernel variants: static neighbours (no
        // ARP/ND), backends routed to the sink, no source validation.
        lb.sysctl("net.ipv4.ip_forward", "1");
        lb.sysctl("net.ipv6.conf.all.forwarding", "1");
        for i in ["all", "default", "lb0", "lb1"] {
            lb.sysctl(&format!("net.ipv4.conf.{i}.rp_filter"), "0");
        }
        lb.ip("addr add 10.97.0.1/24 dev lb0");
        lb.ip("addr add fd00:97::1/64 dev lb0 nodad");
        lb.ip("addr add 10.99.0.1/24 dev lb1");
        lb.ip("addr add fd00:99::1/64 dev lb1 nodad");
        let sink_mac = mac_str(SINK_MAC);
        lb.ip(&format!(
            "neigh replace 10.99.0.2 lladdr {sink_mac} dev lb1 nud permanent"
        ));
        lb.ip(&format!(
            "-6 neigh replace fd00:99::2 lladdr {sink_mac} dev lb1 nud permanent"
        ));
        lb.ip("route add 10.98.0.0/24 via 10.99.0.2 dev lb1");
        lb.ip("-6 route add fd00:98::/64 via fd00:99::2 dev lb1");

        let gen_if = gns.run(|| ifindex("gen0"));
        let (lb_in, lb_out) = lb.run(|| (ifindex("lb0"), ifindex("lb1")));

        let mut bench = EbpfLoader::new()
            .load(BENCH_OBJECT)
            .expect("load bench object");
        for name in ["trafficgen", "mac_fwd", "count_sink", "xdp_pass"] {
            let p: &mut Xdp = bench
                .program_mut(name)
                .expect("bench program")
                .try_into()
                .expect("XDP");
            p.load()
                .unwrap_or_else(|e| panic!("verifier rejected {name}: {e:#?}"));
        }
        let gen_cfg: Array<MapData, GenConfig> =
            Array::try_from(bench.take_map("GEN_CONFIG").expect("GEN_CONFIG")).expect("array");
        let sink_count: PerCpuArray<MapData, u64> =
            PerCpuArray::try_from(bench.take_map("SINK_COUNT").expect("SINK_COUNT"))
                .expect("per-CPU array");
        let mut fwd_macs: Array<MapData, [u32; 3]> =
            Array::try_from(bench.take_map("FWD_MACS").expect("FWD_MACS")).expect("array");
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(&SINK_MAC);
        macs[6..].copy_from_slice(&LB_OUT_MAC);
        let words = [0, 4, 8].map(|i| u32::from_ne_bytes(macs[i..i + 4].try_into().expect("4")));
        fwd_macs.set(0, words, 0).expect("FWD_MACS");
        let mut fwd_ports: DevMap<MapData> =
            DevMap::try_from(bench.take_map("FWD_PORTS").expect("FWD_PORTS")).expect("devmap");
        // DEVMAP entries are resolved in the caller's namespace.
        lb.run(|| fwd_ports.set(0, lb_out, None, 0).expect("FWD_PORTS"));
        // The sink counts whatever reaches sink0.
        sink.run(|| {
            let p: &mut Xdp = bench
                .program_mut("count_sink")
                .expect("count_sink")
                .try_into()
                .expect("XDP");
            // The link stays with the program (detached when `bench` drops).
            p.attach_to_if_index(ifindex("sink0"), XdpMode::Driver)
                .expect("attach count_sink");
        });

        let xlb = |capacity: u32, forwarding: Forwarding| {
            let mut h = XlbHarness::load(&LoadOptions {
                affinity_capacity: capacity,
                maglev_slots: 1 << 17,
            });
            // Tunnel mode: lb1's MTU and addresses, as the daemon reads them.
            h.ctl.observed.egress.insert(lb_out, bench_egress());
            let backends: Vec<(IpAddr, Option<Link>)> = (0..BACKENDS)
                .map(|i| {
                    (
                        combo.backend(i),
                        Some(Link {
                            mac: SINK_MAC,
                            src_mac: LB_OUT_MAC,
                            ifindex: lb_out,
                        }),
                    )
                })
                .collect();
            lb.run(|| h.dp_mut().add_tx_port(lb_out).expect("tx port"));
            let mut svc = Service::new("bench", combo.vip(), DPORT, combo.proto());
            svc.forwarding = forwarding;
            h.add_service(svc, &backends).expect("service");
            h
        };
        let xlb_hit = xlb(HIT_CAPACITY, Forwarding::Dsr);
        let xlb_miss = xlb(MISS_CAPACITY, Forwarding::Dsr);
        let xlb_tunnel = xlb(HIT_CAPACITY, Forwarding::Tunnel);

        Bench {
            combo,
            tmpl: Template::new(combo),
            bench,
            xlb_hit,
            xlb_miss,
            xlb_tunnel,
            gen_cfg,
            sink_count,
            _fwd_ports: fwd_ports,
            attached: None,
            ruleset: None,
            vip_route: false,
            gen_if,
            lb_in,
            cpu,
            gns,
            lb,
            _sink: sink,
        }
    }

    fn xdp(&mut self, which: LbProg) -> &mut Xdp {
        let p = match which {
            LbProg::MacFwd => self.bench.program_mut("mac_fwd"),
            LbProg::Pass => self.bench.program_mut("xdp_pass"),
            LbProg::XlbHit => self.xlb_hit.ebpf.program_mut(PROG_XLB),
            LbProg::XlbMiss => self.xlb_miss.ebpf.program_mut(PROG_XLB),
            LbProg::XlbTunnel => self.xlb_tunnel.ebpf.program_mut(PROG_XLB),
        };
        p.expect("program").try_into().expect("XDP")
    }

    fn gen_prog(&self) -> &Xdp {
        self.bench
            .program("trafficgen")
            .expect("trafficgen")
            .try_into()
            .expect("XDP")
    }

    /// Puts `which` on lb0 (native XDP; the frames the generator sends into lb0 are only
    /// delivered when lb0 has an XDP program).
    fn set_lb_prog(&mut self, which: LbProg) {
        if self.attached.as_ref().map(|(p, _)| *p) == Some(which) {
            return;
        }
        if let Some((p, link)) = self.attached.take() {
            self.xdp(p).detach(link).expect("detach");
        }
        let lb_in = self.lb_in;
        enter(&self.lb.path());
        let link = self
            .xdp(which)
            .attach_to_if_index(lb_in, XdpMode::Driver)
            .unwrap_or_else(|e| panic!("attach {which:?}: {e:#?}"));
        self.attached = Some((which, link));
    }

    fn nft(&self, args: &[&str]) {
        lab::run(self.lb.cmd("nft").args(args));
    }

    fn nft_load(&self, ruleset: &str) {
        let mut child = self
            .lb
            .cmd("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nft");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(ruleset.as_bytes())
            .expect("write ruleset");
        let out = child.wait_with_output().expect("nft");
        assert!(
            out.status.success(),
            "nft -f rejected\n{ruleset}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The nftables rulesets of the issue: source-hash DNAT of the VIP to the backends.
    fn ruleset(&self, v: Variant) -> String {
        let (fam, ip) = if self.combo.v6 {
            ("ip6", "ip6")
        } else {
            ("ip", "ip")
        };
        let map = (0..BACKENDS)
            .map(|i| format!("{i} : {}", self.combo.backend(i)))
            .collect::<Vec<_>>()
            .join(", ");
        let vip = self.combo.vip();
        match v {
            Variant::NftStateless => format!(
                "table {fam} xlbbench {{\n\
                 \tchain prerouting_raw {{\n\t\ttype filter hook prerouting priority raw; policy accept;\n\t\tnotrack\n\t}}\n\
                 \tchain prerouting_dnat {{\n\t\ttype filter hook prerouting priority dstnat; policy accept;\n\
                 \t\t{ip} daddr {vip} {ip} daddr set jhash {ip} saddr mod {BACKENDS} map {{ {map} }}\n\t}}\n\
                 }}\n"
            ),
            Variant::NftConntrack => format!(
                "table {fam} xlbbench {{\n\
                 \tchain prerouting_dnat {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\
                 \t\t{ip} daddr {vip} dnat to jhash {ip} saddr mod {BACKENDS} map {{ {map} }}\n\t}}\n\
                 }}\n"
            ),
            _ => unreachable!(),
        }
    }

    /// Configures lb-ns for `v`: program on lb0, nftables, route to the VIP (only plain
    /// forwarding routes the VIP: a packet the NAT variants leave un-NATed is not
    /// delivered, so the sink counts only translated packets there).
    /// `clients` overrides the pattern's client count (a power of two).
    fn configure(&mut self, v: Variant, clients: Option<u32>) {
        self.set_lb_prog(v.lb_prog());
        let want_rules = matches!(v, Variant::NftStateless | Variant::NftConntrack).then_some(v);
        if self.ruleset != want_rules {
            if self.ruleset.is_some() {
                self.nft(&["flush", "ruleset"]);
            }
            if let Some(r) = want_rules {
                self.nft_load(&self.ruleset(r));
            }
            self.ruleset = want_rules;
        }
        let want_route = v == Variant::KernelForward;
        if self.vip_route != want_route {
            let (fam, vip, via) = if self.combo.v6 {
                ("-6", format!("{VIP6}/128"), "fd00:99::2")
            } else {
                ("-4", format!("{VIP4}/32"), "10.99.0.2")
            };
            let op = if want_route { "add" } else { "del" };
            self.lb
                .ip(&format!("{fam} route {op} {vip} via {via} dev lb1"));
            self.vip_route = want_route;
        }
        let mut cfg = self.tmpl.config(v.pattern());
        if let Some(n) = clients {
            cfg.mask = n - 1;
        }
        self.gen_cfg.set(0, cfg, 0).expect("GEN_CONFIG");
    }

    fn sink_total(&self) -> (u64, u64) {
        let v = self.sink_count.get(&0, 0).expect("SINK_COUNT");
        (v.iter().sum(), v.get(self.cpu).copied().unwrap_or(0))
    }

    fn xlb_stats(&self, v: Variant) -> (u64, u64) {
        let h = match v {
            Variant::XlbHit => &self.xlb_hit,
            Variant::XlbMiss => &self.xlb_miss,
            Variant::XlbTunnel => &self.xlb_tunnel,
            _ => return (0, 0),
        };
        let id = h.service_id("bench");
        let s = h.dp().service_stats(id).expect("stats");
        (s.hits, s.misses)
    }

    /// One live-frames run of `packets` frames from gen0; what reached the sink.
    fn generate(&self, v: Variant, packets: u32) -> Run {
        enter(&self.gns.path());
        let frame = self.tmpl.frame.clone();
        let ctx = xdp_md(frame.len(), self.gen_if);
        let (before, before_cpu) = self.sink_total();
        let (h0, m0) = self.xlb_stats(v);
        let t = Instant::now();
        self.gen_prog()
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                ctx_in: Some(&ctx),
                repeat: packets,
                attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                ..Default::default()
            })
            .unwrap_or_else(|e| panic!("live-frames run failed: {e:#?}"));
        let secs = t.elapsed().as_secs_f64();
        let (after, after_cpu) = self.sink_total();
        let (h1, m1) = self.xlb_stats(v);
        let delivered = after - before;
        Run {
            sent: packets as u64,
            delivered,
            secs,
            on_cpu: (after_cpu - before_cpu) as f64 / delivered.max(1) as f64,
            hits: h1 - h0,
            misses: m1 - m0,
        }
    }

    /// Warm-up (pins clients / creates conntrack entries, estimates the rate), then one
    /// run sized to last about `SAMPLE`.
    fn measure(&mut self, v: Variant, clients: Option<u32>) -> Run {
        self.configure(v, clients);
        let warm = self.generate(v, WARMUP);
        let rate = (warm.sent as f64 / warm.secs).max(1e5);
        let packets = (rate * SAMPLE.as_secs_f64()).clamp(WARMUP as f64, 50e6) as u32;
        self.generate(v, packets)
    }

    /// A non-live run of the generator: the frame it writes is the expected one, with
    /// valid checksums, and its verdict is XDP_TX.
    fn check_generator(&mut self) {
        for pattern in [Pattern::Cycle, Pattern::Unique] {
            let cfg = self.tmpl.config(pattern);
            self.gen_cfg.set(0, cfg, 0).expect("GEN_CONFIG");
            for _ in 0..3 {
                // Stale bytes, as a recycled page would hold: all must be overwritten.
                let junk = vec![0xa5u8; self.tmpl.frame.len()];
                let r = run_once(self.gen_prog(), &junk, self.gen_if);
                assert_eq!(r.action, 3, "trafficgen must return XDP_TX");
                let src_at = Template::src_word_offset(self.combo);
                let src = u32::from_be_bytes(r.output[src_at..src_at + 4].try_into().expect("4"));
                let idx = src.wrapping_sub(self.tmpl.src_base);
                assert!(
                    idx & !cfg.mask == 0,
                    "client index {idx:#x} outside the mask"
                );
                assert_eq!(
                    r.output,
                    self.tmpl.frame_for(idx),
                    "trafficgen wrote an unexpected frame"
                );
                assert!(
                    checksums_ok(&r.output, self.combo),
                    "bad checksums from trafficgen"
                );
            }
        }
    }
}

impl Bench {
    /// One run of the tunnel instance on the template frame: redirected, with the outer
    /// header of the backends' family in front of the unchanged inner packet.
    fn check_tunnel(&self) {
        enter(&self.lb.path());
        let r = self.xlb_tunnel.run(&self.tmpl.frame, self.lb_in);
        assert_eq!(r.action, 4, "xlb tunnel must return XDP_REDIRECT");
        let (outer, ethertype, proto_at, proto) = if self.combo.v6 {
            (OUTER_V6_LEN, 0x86dd, 20, lb_common::tunnel::IPPROTO_IPV6)
        } else {
            (OUTER_V4_LEN, 0x0800, 23, lb_common::tunnel::IPPROTO_IPIP)
        };
        let f = &r.output;
        assert_eq!(
            f.len(),
            self.tmpl.frame.len() + outer as usize,
            "outer length"
        );
        assert_eq!(
            u16::from_be_bytes([f[12], f[13]]),
            ethertype,
            "outer family"
        );
        assert_eq!(f[proto_at], proto, "outer protocol");
        assert_eq!(
            &f[14 + outer as usize..],
            &self.tmpl.frame[14..],
            "inner packet changed"
        );
    }
}

/// lb1 as the daemon would describe it in `XLB_EGRESS`: MTU 1500, its addresses.
fn bench_egress() -> Egress {
    let v6 = xlb::model::addr_words(IpAddr::V6(Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 1))).0;
    Egress {
        mtu: 1500,
        flags: EGRESS_F_V4 | EGRESS_F_V6,
        v4: u32::from_ne_bytes(Ipv4Addr::new(10, 99, 0, 1).octets()),
        v6,
    }
}

/// Results of one combination: samples per variant, and per-run checks.
struct ComboResult {
    combo: Combo,
    samples: BTreeMap<&'static str, Samples>,
    loss: BTreeMap<&'static str, Samples>,
    on_cpu_min: f64,
    hit_ratio: Samples,
    miss_ratio: Samples,
    tunnel_hit_ratio: Samples,
    /// xlb hit rate with fewer clients (cache-resident affinity entries).
    diag: Vec<(u32, Samples)>,
    profile: Vec<Profile>,
}

/// Where the time of one packet goes, from BPF run-time statistics. Each program's
/// figure includes the statistics' own clock reads; the trivial sink shows about how
/// much that is.
#[derive(Clone, Copy, Debug)]
struct Profile {
    variant: Variant,
    clients: Option<u32>,
    /// Per delivered packet during the profiled run (statistics on).
    ns_total_stats: f64,
    ns_gen: f64,
    ns_lb: f64,
    ns_sink: f64,
}

impl Profile {
    fn label(&self) -> String {
        match self.clients {
            None => self.variant.label().to_string(),
            Some(c) => format!("   xlb, {c} clients pinned"),
        }
    }

    fn key(&self) -> String {
        match self.clients {
            None => self.variant.key().to_string(),
            Some(c) => format!("{}_{c}_clients", self.variant.key()),
        }
    }
}

fn prog_stats(p: &Xdp) -> (u64, u64) {
    let i = p.info().expect("program info");
    (i.run_time().as_nanos() as u64, i.run_count())
}

fn run_combo(combo: Combo, tag: &str, cpu: usize) -> ComboResult {
    pin_to_cpu(cpu);
    let mut b = Bench::new(combo, tag, cpu);
    b.check_generator();
    b.check_tunnel();

    let mut samples: BTreeMap<&'static str, Samples> = BTreeMap::new();
    let mut loss: BTreeMap<&'static str, Samples> = BTreeMap::new();
    let mut on_cpu_min = 1.0f64;
    let mut hit_ratio = Samples::default();
    let mut miss_ratio = Samples::default();
    let mut tunnel_hit_ratio = Samples::default();
    let started = Instant::now();
    for round in 0..ROUNDS {
        // Progress: a round of every variant takes tens of seconds.
        println!(
            "e2e {}: round {}/{ROUNDS} ({:.0} s so far)",
            combo.label(),
            round + 1,
            started.elapsed().as_secs_f64()
        );
        // Interleaved, and the order rotated each round.
        for k in 0..Variant::ALL.len() {
            let v = Variant::ALL[(k + round) % Variant::ALL.len()];
            let r = b.measure(v, None);
            assert!(
                r.delivered > r.sent / 2,
                "{} {}: only {} of {} frames reached the sink",
                combo.label(),
                v.key(),
                r.delivered,
                r.sent
            );
            samples.entry(v.key()).or_default().0.push(r.mpps());
            loss.entry(v.key())
                .or_default()
                .0
                .push(1.0 - r.delivered as f64 / r.sent as f64);
            on_cpu_min = on_cpu_min.min(r.on_cpu);
            match v {
                Variant::XlbHit => hit_ratio.0.push(r.hits as f64 / r.sent as f64),
                Variant::XlbMiss => miss_ratio.0.push(r.misses as f64 / r.sent as f64),
                Variant::XlbTunnel => tunnel_hit_ratio.0.push(r.hits as f64 / r.sent as f64),
                _ => {}
            }
        }
    }

    // Diagnostic: the hit path with fewer clients, so that the affinity entries stay
    // in the CPU caches (the steady state's 65,536 do not).
    let mut diag = Vec::new();
    for clients in DIAG_CLIENTS {
        let mut xlb = Samples::default();
        for _ in 0..DIAG_ROUNDS {
            // Interleaved with baseline runs, as in the rounds (their figures are not kept).
            let _ = b.measure(Variant::Baseline, None);
            let r = b.measure(Variant::XlbHit, Some(clients));
            assert_eq!(r.misses, 0, "the diagnostic's clients are pinned already");
            xlb.0.push(r.mpps());
        }
        diag.push((clients, xlb));
    }

    // Profile: BPF run-time statistics (enabled through a BPF_ENABLE_STATS fd, off
    // again when it closes; they add two clock reads per program run, so they are not
    // on during the measured rounds).
    let mut profile = Vec::new();
    {
        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS");
        let cases = Variant::ALL
            .iter()
            .map(|v| (*v, None))
            .chain(DIAG_CLIENTS.iter().map(|c| (Variant::XlbHit, Some(*c))));
        for (v, clients) in cases {
            b.configure(v, clients);
            let _ = b.generate(v, WARMUP);
            let sink = |b: &Bench| {
                prog_stats(
                    b.bench
                        .program("count_sink")
                        .expect("sink")
                        .try_into()
                        .expect("XDP"),
                )
            };
            let lb_prog = v.lb_prog();
            let (g0, l0, s0) = (
                prog_stats(b.gen_prog()),
                prog_stats(b.xdp(lb_prog)),
                sink(&b),
            );
            let r = b.generate(v, (SAMPLE.as_secs_f64() * 1.5e6) as u32);
            let (g1, l1, s1) = (
                prog_stats(b.gen_prog()),
                prog_stats(b.xdp(lb_prog)),
                sink(&b),
            );
            let per = |a: (u64, u64), b: (u64, u64)| (b.0 - a.0) as f64 / (b.1 - a.1).max(1) as f64;
            profile.push(Profile {
                variant: v,
                clients,
                ns_total_stats: r.secs * 1e9 / r.delivered.max(1) as f64,
                ns_gen: per(g0, g1),
                ns_lb: per(l0, l1),
                ns_sink: per(s0, s1),
            });
        }
    }
    ComboResult {
        combo,
        samples,
        loss,
        on_cpu_min,
        hit_ratio,
        miss_ratio,
        tunnel_hit_ratio,
        diag,
        profile,
    }
}

pub fn run() {
    crate::require_root();
    let cpu: usize = std::env::var("XLB_BENCH_CPU")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let combos = [
        Combo {
            v6: false,
            udp: true,
        },
        Combo {
            v6: true,
            udp: true,
        },
        Combo {
            v6: false,
            udp: false,
        },
        Combo {
            v6: true,
            udp: false,
        },
    ];
    let started = Instant::now();
    let load_start = super::load_average();
    println!(
        "CPU: {}; load average {load_start:.2} at the start",
        super::cpu_model()
    );
    let mut results = Vec::new();
    for (i, combo) in combos.into_iter().enumerate() {
        // One thread per topology: the thread moves between its namespaces, and its
        // exit drops the last reference to them.
        let tag = format!("{i}");
        let r = std::thread::scope(|s| {
            s.spawn(|| run_combo(combo, &tag, cpu))
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e))
        });
        print_combo(&r);
        results.push(r);
    }
    report(&results, cpu, started.elapsed());
}

fn ratio(r: &ComboResult, a: &str, b: &str) -> f64 {
    r.samples[a].median() / r.samples[b].median()
}

fn print_combo(r: &ComboResult) {
    println!();
    println!(
        "{}, {} clients; delivered Mpps at the sink, {ROUNDS} interleaved rounds, one CPU",
        r.combo.label(),
        CLIENTS
    );
    println!(
        "{:<34} {:>7} {:>17} {:>10} {:>9}",
        "variant", "median", "min – max", "×baseline", "lost"
    );
    for v in Variant::ALL {
        let s = &r.samples[v.key()];
        println!(
            "{:<34} {:>7.3} {:>7.3} – {:<7.3} {:>10.2} {:>8.2}%",
            v.label(),
            s.median(),
            s.min(),
            s.max(),
            ratio(r, v.key(), "baseline"),
            r.loss[v.key()].median() * 100.0
        );
    }
    println!(
        "checks: xlb hit runs {:.4} hits/packet, miss runs {:.4} misses/packet, tunnel runs \
         {:.4} hits/packet; {:.2}% of deliveries on the generating CPU (worst run)",
        r.hit_ratio.median(),
        r.miss_ratio.median(),
        r.tunnel_hit_ratio.median(),
        r.on_cpu_min * 100.0
    );
    println!(
        "tunnel: xlb tunnel / xlb DSR (both pinned) {:.2}; xlb tunnel / baseline {:.2}",
        ratio(r, "xlb_tunnel", "xlb_hit"),
        ratio(r, "xlb_tunnel", "baseline")
    );
    for (clients, x) in &r.diag {
        println!(
            "diagnostic: xlb hit with {clients} clients (pinned, cache-resident): {:.3} Mpps [{:.3} – {:.3}], {:.2}× baseline",
            x.median(),
            x.min(),
            x.max(),
            x.median() / r.samples["baseline"].median()
        );
    }
    println!(
        "where the time goes, ns per packet. ns/pkt and Δ: from the median rates above (no \
         statistics); gen, lb0, sink: BPF run_time_ns/run_cnt in an extra run with statistics \
         on, each including the statistics' own clock reads (≈ the trivial sink's figure); \
         net = lb0 − sink."
    );
    println!(
        "{:<34} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>9}",
        "variant", "ns/pkt", "Δ base", "gen", "lb0", "sink", "lb0 net", "stats on"
    );
    let base_ns = 1e3 / r.samples["baseline"].median();
    for p in &r.profile {
        let mpps = ns_per_packet_source(r, p);
        let ns = 1e3 / mpps;
        println!(
            "{:<34} {:>7.1} {:>7.1} {:>7.1} {:>7.1} {:>7.1} {:>7.1} {:>9.1}",
            p.label(),
            ns,
            ns - base_ns,
            p.ns_gen,
            p.ns_lb,
            p.ns_sink,
            p.ns_lb - p.ns_sink,
            p.ns_total_stats
        );
    }
}

/// The median rate (no statistics) of the case a profile entry belongs to.
fn ns_per_packet_source(r: &ComboResult, p: &Profile) -> f64 {
    match p.clients {
        None => r.samples[p.variant.key()].median(),
        Some(c) => r
            .diag
            .iter()
            .find(|(n, _)| *n == c)
            .map(|(_, s)| s.median())
            .expect("diagnostic"),
    }
}

fn report(results: &[ComboResult], cpu: usize, elapsed: Duration) {
    let mut json = serde_json::Map::new();
    json.insert("cpu_model".into(), serde_json::json!(super::cpu_model()));
    json.insert("load_end".into(), serde_json::json!(super::load_average()));
    println!(
        "CPU: {}; load average {:.2} at the end",
        super::cpu_model(),
        super::load_average()
    );
    let mut goals = Vec::new();
    println!();
    println!("goals");
    for r in results {
        let sfx = r.combo.suffix();
        for v in Variant::ALL {
            let s = &r.samples[v.key()];
            let k = format!("{}_mpps{sfx}", v.key());
            json.insert(k.clone(), serde_json::json!(s.median()));
            json.insert(format!("{k}_min"), serde_json::json!(s.min()));
            json.insert(format!("{k}_max"), serde_json::json!(s.max()));
            json.insert(format!("{k}_samples"), serde_json::json!(s.0));
            json.insert(
                format!("{}_lost{sfx}", v.key()),
                serde_json::json!(r.loss[v.key()].median()),
            );
        }
        // Issue 11's goals (the pinned/baseline goal is 0.75 on AMD EPYC guests, 0.60 on
        // Intel Xeon ones, where the forwarder's whole path is shorter).
        let hit_goal = if super::cpu_model().contains("AMD") {
            0.75
        } else {
            0.60
        };
        for (name, a, b, want) in [
            ("xlb_miss / xlb_hit", "xlb_miss", "xlb_hit", 0.8),
            ("xlb_hit / nft_stateless", "xlb_hit", "nft_stateless", 4.0),
            ("xlb_hit / baseline", "xlb_hit", "baseline", hit_goal),
            ("xlb_miss / baseline", "xlb_miss", "baseline", 0.0),
            ("xlb_tunnel / xlb_hit", "xlb_tunnel", "xlb_hit", 0.0),
            ("xlb_tunnel / baseline", "xlb_tunnel", "baseline", 0.0),
        ] {
            let got = ratio(r, a, b);
            let met = got >= want;
            if want == 0.0 {
                // Reported, no goal of its own any more.
                json.insert(format!("ratio_{a}_to_{b}{sfx}"), serde_json::json!(got));
                continue;
            }
            println!(
                "{:<16} {name:<26} {got:>6.2}   goal ≥ {want:<4}  {}",
                r.combo.label().split(',').next().unwrap_or(""),
                if met { "met" } else { "MISSED" }
            );
            goals.push(serde_json::json!({
                "combo": r.combo.label(), "ratio": name, "value": got, "goal": want, "met": met,
            }));
            json.insert(format!("ratio_{a}_to_{b}{sfx}"), serde_json::json!(got));
        }
        json.insert(
            format!("xlb_hit_hits_per_packet{sfx}"),
            serde_json::json!(r.hit_ratio.median()),
        );
        json.insert(
            format!("xlb_miss_misses_per_packet{sfx}"),
            serde_json::json!(r.miss_ratio.median()),
        );
        json.insert(
            format!("xlb_tunnel_hits_per_packet{sfx}"),
            serde_json::json!(r.tunnel_hit_ratio.median()),
        );
        let base_ns = 1e3 / r.samples["baseline"].median();
        let prof: serde_json::Map<String, serde_json::Value> = r
            .profile
            .iter()
            .map(|p| {
                let ns = 1e3 / ns_per_packet_source(r, p);
                (
                    p.key(),
                    serde_json::json!({
                        "ns_per_packet": ns, "ns_over_baseline": ns - base_ns,
                        "gen_prog_ns": p.ns_gen, "lb0_prog_ns": p.ns_lb, "sink_prog_ns": p.ns_sink,
                        "lb0_prog_net_ns": p.ns_lb - p.ns_sink,
                        "ns_per_packet_stats_on": p.ns_total_stats,
                    }),
                )
            })
            .collect();
        for (clients, x) in &r.diag {
            json.insert(
                format!("diag_xlb_hit_{clients}_clients_mpps{sfx}"),
                serde_json::json!(x.median()),
            );
        }
        json.insert(format!("profile{sfx}"), serde_json::Value::Object(prof));
    }
    json.insert("goals".into(), serde_json::json!(goals));
    json.insert("rounds".into(), serde_json::json!(ROUNDS));
    json.insert("cpu".into(), serde_json::json!(cpu));
    json.insert("clients".into(), serde_json::json!(CLIENTS));
    json.insert("sample_ms".into(), serde_json::json!(SAMPLE.as_millis()));
    json.insert("elapsed_s".into(), serde_json::json!(elapsed.as_secs_f64()));
    json.insert(
        "method".into(),
        serde_json::json!([
            "gen-ns --veth-- lb-ns --veth-- sink-ns; all on one CPU (generating thread pinned, veth NAPI runs where the frames are sent)",
            "generator: XDP program `trafficgen` in a BPF_PROG_TEST_RUN live-frames run (batch 64) on gen0, XDP_TX out of gen0 into lb0; rewrites the whole frame and both checksums on every packet; one long run per sample",
            "64-byte frames (without FCS) for IPv4 and IPv6 UDP; IPv6 TCP 80 bytes (74 of headers). TCP packets carry ACK (established traffic)",
            "figure: frames counted by an XDP program on sink0 (per-CPU counter, XDP_DROP) / wall time of the run; no key reports sent frames",
            "steady pattern: source = 100.64.0.0 + (n mod 65536) (fd00:64:: + n mod 65536), n a per-CPU counter; each variant first runs 131072 warm-up frames (pins all clients, creates conntrack entries), then a run of ~350 ms",
            "xlb miss: its own xlb instance with affinity capacity 65536 (per-CPU LRU lists: 32768 per CPU) and source = 100.64.0.0 + (m mod 2^22) (IPv6: + m mod 2^32), m a counter used only by this pattern: no source repeats within 4M packets, so every packet misses and inserts into a full LRU (checked: misses per packet)",
            "xlb hit: affinity capacity 524288; checked: hits per packet",
            "baseline: `mac_fwd`, the reflector's parse, both MACs rewritten, bpf_redirect_map through a DEVMAP to lb1",
            "nft: lb0 runs xdp_pass, lb-ns forwards (static neighbour for the sink, no rp_filter); stateless = notrack in raw prerouting + `ip daddr VIP ip daddr set jhash ip saddr mod 4 map {...}` at dstnat priority; conntrack = nat prerouting `ip daddr VIP dnat to jhash ip saddr mod 4 map {...}`; the VIP itself is unrouted there, so only translated packets reach the sink",
            "kernel_forward: same without nftables, a route for the VIP to the sink",
            "xlb tunnel: its own xlb instance like xlb hit, the service in forwarding = tunnel (IPIP for IPv4, IP6IP6 for IPv6; outer source lb1's address, MTU 1500): frames 20 / 40 bytes longer from lb1 on; checked once per topology (verdict, outer header, inner packet unchanged) and per run (hits per packet)",
            "profile: BPF_ENABLE_STATS run_time_ns/run_cnt deltas of each program over an extra run per variant (stats on only then); each figure includes the statistics' clock reads (about the trivial sink's figure)",
            "diagnostic: xlb hit with 256 and 4096 of the pinned clients (affinity entries cache-resident), 3 rounds each, interleaved with baseline runs",
        ]),
    );
    super::write_json("e2e", &serde_json::Value::Object(json));
    println!("e2e benchmark took {:.0} s", elapsed.as_secs_f64());
}
