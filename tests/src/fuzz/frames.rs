//! The fuzzer's frames: first a systematic pass over every fixture frame (truncated at
//! every length, every single bit flipped, every header field set to each of its
//! extremes), then a seeded random mix of mutated fixtures, random bytes and random
//! well-formed frames addressed to VIPs and their look-alikes.
//!
//! Deterministic for a seed: frame N of a run is the same on every machine and build.
//! Knows the topology only for addresses and ports to aim at; never judges a frame.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{oracle::Topology, rng::Rng};
use crate::{
    fixtures,
    packet::{
        ETH_8021AD, ETH_8021Q, ETH_IPV4, ETH_IPV6, L4, V4Opts, eth, ip, layout, raw, tcp, udp,
    },
};

/// The largest frame generated: BPF_PROG_TEST_RUN takes up to a page minus XDP headroom
/// and tailroom (3,520 bytes on x86-64) without multi-buffer support.
pub const MAX_FRAME: usize = 3_500;
/// The smallest: BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header.
pub const MIN_FRAME: usize = 14;

/// Where a frame came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Origin {
    /// A fixture frame cut to one length (systematic).
    Truncated,
    /// A fixture frame with one bit flipped (systematic).
    BitFlip,
    /// A fixture frame with one header field set to an extreme (systematic).
    Extreme,
    /// A fixture frame with 1–4 random mutations.
    Mutated,
    /// Random bytes.
    Random,
    /// Random bytes behind an IPv4/IPv6/VLAN EtherType.
    RandomIp,
    /// A well-formed random frame to a VIP, a look-alike or another address.
    ToVip,
}

impl Origin {
    pub const ALL: [Origin; 7] = [
        Origin::Truncated,
        Origin::BitFlip,
        Origin::Extreme,
        Origin::Mutated,
        Origin::Random,
        Origin::RandomIp,
        Origin::ToVip,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Origin::Truncated => "fixture truncated",
            Origin::BitFlip => "fixture bit flip",
            Origin::Extreme => "fixture field extreme",
            Origin::Mutated => "fixture mutated",
            Origin::Random => "random bytes",
            Origin::RandomIp => "random behind IP EtherType",
            Origin::ToVip => "random frame to a VIP",
        }
    }
}

/// One frame to run.
#[derive(Clone, Debug)]
pub struct Case {
    pub frame: Vec<u8>,
    pub ingress: u32,
    pub origin: Origin,
    /// What was done, for messages (e.g. "fixture 'v4 IHL 6': IHL = 0").
    pub detail: String,
}

/// One edit of a frame's header.
#[derive(Clone, Debug)]
enum Edit {
    /// Overwrite bytes at an offset.
    Set {
        what: String,
        at: usize,
        bytes: Vec<u8>,
    },
    /// Insert a VLAN tag after the MACs.
    InsertTag(u16, u16),
    /// Remove the outer VLAN tag.
    RemoveTag,
}

impl Edit {
    fn describe(&self) -> String {
        match self {
            Edit::Set { what, .. } => what.clone(),
            Edit::InsertTag(tpid, vid) => format!("VLAN tag {tpid:#06x}/{vid} inserted"),
            Edit::RemoveTag => "outer VLAN tag removed".into(),
        }
    }

    fn apply(&self, f: &[u8]) -> Vec<u8> {
        match self {
            Edit::Set { at, bytes, .. } => {
                let mut g = f.to_vec();
                g[*at..*at + bytes.len()].copy_from_slice(bytes);
                g
            }
            Edit::InsertTag(tpid, vid) => {
                let mut g = f[..12].to_vec();
                g.extend_from_slice(&tpid.to_be_bytes());
                g.extend_from_slice(&vid.to_be_bytes());
                g.extend_from_slice(&f[12..]);
                g
            }
            Edit::RemoveTag => [&f[..12], &f[16..]].concat(),
        }
    }
}

/// Every extreme edit that fits `f`: EtherType, VLAN tags, IPv4 version/IHL/total
/// length/fragment bits/protocol/addresses, IPv6 version/payload length/next header/
/// addresses, ports, TCP data offset and flags, UDP length.
fn extremes(f: &[u8]) -> Vec<Edit> {
    let mut e = Vec::new();
    let mut set = |what: String, at: usize, bytes: &[u8]| {
        if at + bytes.len() <= f.len() {
            e.push(Edit::Set {
                what,
                at,
                bytes: bytes.to_vec(),
            });
        }
    };
    let l = layout(f);
    let et_at = l.map_or(12, |l| l.ethertype_at);
    for v in [
        0u16, 0x05dc, ETH_IPV4, ETH_IPV6, ETH_8021Q, ETH_8021AD, 0x9100, 0xffff,
    ] {
        set(format!("EtherType {v:#06x}"), et_at, &v.to_be_bytes());
    }
    if let Some(l) = l {
        if l.v6 {
            v6_extremes(f, l.l3, &mut set);
        } else {
            v4_extremes(f, l.l3, &mut set);
        }
        if let Some(l4) = l.l4 {
            l4_extremes(l4, l.proto, &mut set);
        }
    }
    for (tpid, vid) in [(ETH_8021Q, 0), (ETH_8021Q, 4095), (ETH_8021AD, 1)] {
        e.push(Edit::InsertTag(tpid, vid));
    }
    if f.len() >= MIN_FRAME + 4 && matches!(layout(f), Some(l) if l.ethertype_at == 16) {
        e.push(Edit::RemoveTag);
    }
    e
}

fn v4_extremes(f: &[u8], l3: usize, set: &mut impl FnMut(String, usize, &[u8])) {
    let Some(&vihl) = f.get(l3) else { return };
    for ihl in [0u8, 1, 4, 5, 6, 15] {
        set(format!("IHL {ihl}"), l3, &[(vihl & 0xf0) | ihl]);
    }
    for version in [0u8, 6, 15] {
        set(
            format!("IP version {version}"),
            l3,
            &[(version << 4) | (vihl & 0x0f)],
        );
    }
    for len in [0u16, 1, 19, 20, 0xffff] {
        set(format!("total length {len}"), l3 + 2, &len.to_be_bytes());
    }
    for frag in [0x2000u16, 0x4000, 0x8000, 1, 0x1fff, 0x3fff, 0xffff] {
        set(
            format!("flags+offset {frag:#06x}"),
            l3 + 6,
            &frag.to_be_bytes(),
        );
    }
    for proto in [0u8, 1, 6, 17, 41, 44, 58, 255] {
        set(format!("protocol {proto}"), l3 + 9, &[proto]);
    }
    for (name, at) in [("source", l3 + 12), ("destination", l3 + 16)] {
        set(format!("{name} 0.0.0.0"), at, &[0; 4]);
        set(format!("{name} 255.255.255.255"), at, &[0xff; 4]);
    }
}

fn v6_extremes(f: &[u8], l3: usize, set: &mut impl FnMut(String, usize, &[u8])) {
    let Some(&b0) = f.get(l3) else { return };
    for version in [0u8, 4, 15] {
        set(
            format!("IP version {version}"),
            l3,
            &[(version << 4) | (b0 & 0x0f)],
        );
    }
    for len in [0u16, 1, 0xffff] {
        set(format!("payload length {len}"), l3 + 4, &len.to_be_bytes());
    }
    let next = [
        0u8, 6, 17, 43, 44, 50, 51, 58, 59, 60, 135, 139, 140, 253, 254, 255,
    ];
    for n in next {
        set(format!("next header {n}"), l3 + 6, &[n]);
    }
    for (name, at) in [("source", l3 + 8), ("destination", l3 + 24)] {
        set(format!("{name} ::"), at, &[0; 16]);
        set(format!("{name} ffff:…:ffff"), at, &[0xff; 16]);
    }
}

fn l4_extremes(l4: usize, proto: Option<u8>, set: &mut impl FnMut(String, usize, &[u8])) {
    for port in [0u16, 65535] {
        set(format!("source port {port}"), l4, &port.to_be_bytes());
        set(
            format!("destination port {port}"),
            l4 + 2,
            &port.to_be_bytes(),
        );
    }
    match proto {
        Some(6) => {
            for off in [0u8, 1, 4, 5, 15] {
                set(format!("TCP data offset {off}"), l4 + 12, &[off << 4]);
            }
            for flags in [0u8, 0xff] {
                set(format!("TCP flags {flags:#04x}"), l4 + 13, &[flags]);
            }
        }
        Some(17) => {
            for len in [0u16, 7, 8, 0xffff] {
                set(format!("UDP length {len}"), l4 + 4, &len.to_be_bytes());
            }
        }
        _ => {}
    }
}

/// The systematic cases of one fixture frame.
fn systematic_of(seed: &fixtures::Named, ingress: u32, out: &mut Vec<Case>) {
    let f = &seed.frame;
    let case = |frame, origin, detail: String| Case {
        frame,
        ingress,
        origin,
        detail: format!("fixture '{}': {detail}", seed.name),
    };
    for len in MIN_FRAME..f.len() {
        out.push(case(
            f[..len].to_vec(),
            Origin::Truncated,
            format!("cut at {len}"),
        ));
    }
    for bit in 0..f.len() * 8 {
        let mut g = f.clone();
        g[bit / 8] ^= 0x80 >> (bit % 8);
        out.push(case(g, Origin::BitFlip, format!("bit {bit} flipped")));
    }
    for e in extremes(f) {
        out.push(case(e.apply(f), Origin::Extreme, e.describe()));
    }
}

/// Produces the frames of one run.
pub struct Generator {
    rng: Rng,
    seeds: Vec<fixtures::Named>,
    systematic: Vec<Case>,
    next_systematic: usize,
    ingresses: Vec<u32>,
    /// Destinations worth aiming at: VIPs, look-alikes.
    vips: Vec<IpAddr>,
    look_alikes: Vec<IpAddr>,
    /// (VIP, protocol, port) of every service.
    ports: Vec<(IpAddr, u8, u16)>,
}

impl Generator {
    pub fn new(seed: u64, top: &Topology) -> Self {
        let seeds = fixtures::all();
        let first = top.ingresses[0].0;
        let mut systematic = Vec::new();
        for s in &seeds {
            systematic_of(s, first, &mut systematic);
        }
        let mut vips: Vec<IpAddr> = top.services.iter().map(|s| s.vip).collect();
        vips.dedup();
        let look_alikes = vips.iter().flat_map(|v| look_alikes(*v)).collect();
        Self {
            rng: Rng::new(seed),
            seeds,
            systematic,
            next_systematic: 0,
            ingresses: top.ingresses.iter().map(|(i, _)| *i).collect(),
            vips,
            look_alikes,
            ports: top
                .services
                .iter()
                .map(|s| (s.vip, s.proto, s.port))
                .collect(),
        }
    }

    /// How many systematic cases come first.
    pub fn systematic_len(&self) -> usize {
        self.systematic.len()
    }

    pub fn next_case(&mut self) -> Case {
        if let Some(c) = self.systematic.get(self.next_systematic) {
            self.next_systematic += 1;
            return c.clone();
        }
        let ingress = self.ingress();
        let roll = self.rng.below(100);
        let (mut frame, origin, detail) = if roll < 35 {
            self.mutated()
        } else if roll < 40 {
            self.random(false)
        } else if roll < 45 {
            self.random(true)
        } else {
            self.aimed()
        };
        // An inserted VLAN tag may push a frame past the largest one.
        frame.truncate(MAX_FRAME);
        Case {
            frame,
            ingress,
            origin,
            detail,
        }
    }

    /// The first ingress 70% of the time, the others evenly.
    fn ingress(&mut self) -> u32 {
        let others = &self.ingresses[1..];
        if others.is_empty() || self.rng.chance(70) {
            self.ingresses[0]
        } else {
            *self.rng.pick(others)
        }
    }

    fn mutated(&mut self) -> (Vec<u8>, Origin, String) {
        let seed = self.rng.below(self.seeds.len());
        let mut f = self.seeds[seed].frame.clone();
        let mut done = Vec::new();
        for _ in 0..self.rng.range(1, 4) {
            done.push(self.mutate(&mut f));
        }
        let detail = format!("fixture '{}': {}", self.seeds[seed].name, done.join(", "));
        (f, Origin::Mutated, detail)
    }

    /// One random mutation of `f`; returns what it did.
    fn mutate(&mut self, f: &mut Vec<u8>) -> String {
        let r = &mut self.rng;
        match r.below(7) {
            0 => {
                let n = r.range(1, 8);
                for _ in 0..n {
                    let bit = r.below(f.len() * 8);
                    f[bit / 8] ^= 0x80 >> (bit % 8);
                }
                format!("{n} bits flipped")
            }
            1 => {
                let at = r.below(f.len());
                let random = r.u8();
                f[at] = *r.pick(&[0, 0xff, random]);
                format!("byte {at} set")
            }
            2 if f.len() > MIN_FRAME => {
                let len = r.range(MIN_FRAME, f.len() - 1);
                f.truncate(len);
                format!("cut at {len}")
            }
            3 if f.len() < MAX_FRAME => {
                let len = r.range(f.len(), MAX_FRAME);
                let from = f.len();
                f.resize(len, 0);
                r.fill(&mut f[from..]);
                format!("extended to {len}")
            }
            4 => {
                let at = r.below(f.len());
                let end = r.range(at + 1, f.len());
                r.fill(&mut f[at..end]);
                format!("bytes {at}..{end} randomised")
            }
            _ => {
                let edits = extremes(f);
                let e = &edits[r.below(edits.len())];
                *f = e.apply(f);
                e.describe()
            }
        }
    }

    fn random(&mut self, ip_ethertype: bool) -> (Vec<u8>, Origin, String) {
        let r = &mut self.rng;
        let len = if r.chance(80) {
            r.range(MIN_FRAME, 200)
        } else {
            r.range(MIN_FRAME, MAX_FRAME)
        };
        let mut f = vec![0u8; len];
        r.fill(&mut f);
        if !ip_ethertype {
            return (f, Origin::Random, format!("{len} random bytes"));
        }
        let et = *r.pick(&[ETH_IPV4, ETH_IPV6, ETH_8021Q, ETH_8021AD]);
        f[12..14].copy_from_slice(&et.to_be_bytes());
        if len > 14 && r.chance(50) {
            let version = if et == ETH_IPV6 { 6 } else { 4 };
            f[14] = (version << 4) | (f[14] & 0x0f);
        }
        let detail = format!("{len} random bytes, EtherType {et:#06x}");
        (f, Origin::RandomIp, detail)
    }
}

/// Addresses that collide with `vip` in the data plane's shortcuts without being it: the
/// IPv6 address whose first word is an IPv4 VIP (same key words, other family), and an
/// IPv6 address whose 32-bit words fold (XOR) to the VIP's fold.
fn look_alikes(vip: IpAddr) -> Vec<IpAddr> {
    match vip {
        IpAddr::V4(a) => {
            let o = a.octets();
            let mut w = [0u8; 16];
            w[..4].copy_from_slice(&o);
            let same_words = Ipv6Addr::from(w);
            w[4..8].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
            w[8..12].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
            vec![IpAddr::V6(same_words), IpAddr::V6(Ipv6Addr::from(w))]
        }
        IpAddr::V6(a) => {
            let mut o = a.octets();
            for i in 0..4 {
                o[i] ^= 0x5a;
                o[4 + i] ^= 0x5a;
            }
            let words = a.octets();
            let v4 = Ipv4Addr::new(
                words[0] ^ words[4] ^ words[8] ^ words[12],
                words[1] ^ words[5] ^ words[9] ^ words[13],
                words[2] ^ words[6] ^ words[10] ^ words[14],
                words[3] ^ words[7] ^ words[11] ^ words[15],
            );
            vec![IpAddr::V6(Ipv6Addr::from(o)), IpAddr::V4(v4)]
        }
    }
}

impl Generator {
    /// A destination: a VIP (60%), a look-alike (10%), a VIP with one bit flipped (15%),
    /// a random address (15%).
    fn destination(&mut self) -> IpAddr {
        let r = &mut self.rng;
        let vip = *r.pick(&self.vips);
        match r.below(100) {
            0..60 => vip,
            60..70 => *r.pick(&self.look_alikes),
            70..85 => flip_bit(vip, r),
            _ if r.chance(50) => IpAddr::V4(Ipv4Addr::from(r.u64() as u32)),
            _ => IpAddr::V6(Ipv6Addr::from(
                (u128::from(r.u64()) << 64) | u128::from(r.u64()),
            )),
        }
    }

    /// A client from a small pool (1,024 per family, four /24s), so affinity keys repeat.
    fn source(&mut self, v6: bool) -> IpAddr {
        let n = self.rng.below(1024) as u16;
        if v6 {
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, n))
        } else {
            IpAddr::V4(Ipv4Addr::new(198, 51, 100 + (n >> 8) as u8, n as u8))
        }
    }

    fn port(&mut self, dst: IpAddr, proto: u8) -> u16 {
        let r = &mut self.rng;
        let own: Vec<u16> = self
            .ports
            .iter()
            .filter(|(v, p, port)| *v == dst && *p == proto && *port != 0)
            .map(|(_, _, port)| *port)
            .collect();
        match r.below(100) {
            0..50 if !own.is_empty() => *r.pick(&own),
            0..15 => 0,
            15..25 => 65535,
            25..40 => *r.pick(&[80, 53, 443]),
            _ => r.u16(),
        }
    }

    fn aimed(&mut self) -> (Vec<u8>, Origin, String) {
        let dst = self.destination();
        let src = self.source(dst.is_ipv6());
        let r = &mut self.rng;
        let proto = match r.below(100) {
            0..45 => 6,
            45..90 => 17,
            _ => *r.pick(&[0u8, 1, 47, 50, 58, 132, 255]),
        };
        let sport = match r.below(100) {
            0..70 => 1024 + r.below(256) as u16,
            70..80 => 0,
            80..90 => 65535,
            _ => r.u16(),
        };
        let payload_len = match r.below(100) {
            0..70 => r.below(64),
            70..95 => r.range(64, 1400),
            _ => r.range(1400, MAX_FRAME - 200),
        };
        let mut payload = vec![0u8; payload_len];
        r.fill(&mut payload);
        let dport = self.port(dst, proto);
        let l4: L4 = match proto {
            6 => tcp(sport, dport, &payload),
            17 => udp(sport, dport, &payload),
            p => raw(p, &payload),
        };
        let r = &mut self.rng;
        let mut opts = V4Opts::default();
        if dst.is_ipv4() && r.chance(15) {
            opts.options = vec![0u8; 4 * r.range(1, 10)];
            r.fill(&mut opts.options);
        }
        if r.chance(5) {
            opts.frag = r.u16();
        }
        let tags: Vec<(u16, u16)> = match r.below(100) {
            0..15 => vec![(*r.pick(&[ETH_8021Q, ETH_8021AD]), r.u16() & 0x0fff)],
            15..18 => vec![(ETH_8021AD, 1), (ETH_8021Q, 2)],
            _ => vec![],
        };
        let (et, p) = ip(src, dst, &l4, &opts);
        let mut f = eth(et, &p, &tags);
        f.truncate(MAX_FRAME);
        let mut detail = format!("{src} → {dst} proto {proto} ports {sport}→{dport}");
        if self.rng.chance(20) {
            detail = format!("{detail}, {}", self.mutate(&mut f));
        }
        (f, Origin::ToVip, detail)
    }
}

fn flip_bit(a: IpAddr, r: &mut Rng) -> IpAddr {
    match a {
        IpAddr::V4(v) => IpAddr::V4(Ipv4Addr::from(u32::from(v) ^ (1 << r.below(32)))),
        IpAddr::V6(v) => IpAddr::V6(Ipv6Addr::from(u128::from(v) ^ (1 << r.below(128)))),
    }
}
