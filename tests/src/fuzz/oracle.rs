//! The fuzzer's reference model: what the README says must happen to a frame ("Packets
//! xlb does not balance", in its order, and the selection rules), computed from the
//! frame's bytes with a parser of its own — none of the data plane's code.
//!
//! Owns the topology's description ([`Topology`]) and the expectation per frame
//! ([`Expect`]); it never touches the kernel (the runner does) and keeps no state across
//! frames (the checker's `Memory` does).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use lb_common::Stat;

/// Ethernet header length; BPF_PROG_TEST_RUN refuses shorter frames.
pub const ETH_HLEN: usize = 14;

/// IPv6 extension headers xlb walks: hop-by-hop, routing, destination options (the
/// length byte counts 8-byte units after the first 8), and the fragment header (8 bytes).
pub const IPV6_WALKED: [u8; 3] = [0, 43, 60];
/// IPv6 fragment header.
pub const IPV6_FRAGMENT: u8 = 44;
/// IPv6 extension headers xlb drops unread: AH, ESP, mobility, HIP, shim6, and the two
/// experimental values of RFC 4727.
pub const IPV6_DROPPED: [u8; 7] = [51, 50, 135, 139, 140, 253, 254];
/// Extension headers walked, at most (README).
pub const MAX_EXT_HEADERS: usize = 6;

/// Where a packet stands as to fragmentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frag {
    Whole,
    /// The first fragment (offset 0) with this identification (IPv4's 16 bits or the
    /// IPv6 fragment header's 32).
    First(u32),
    /// A later fragment: no ports.
    Later(u32),
}

/// The fixed IP header of a frame, as far as the README's rules read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpHeader {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IPv4 protocol, or the IPv6 next header after the extension headers walked.
    pub proto: u8,
    pub frag: Frag,
    /// A verdict the IP layer already decides for a packet to a VIP: a fragment of
    /// neither TCP nor UDP (`DropFragment`), an extension header cut short
    /// (`DropMalformed`), one not walked or one too many (`DropIpv6ExtHeader`).
    pub verdict: Option<Stat>,
    /// Offset of the IP header.
    pub l3: usize,
    /// Offset of the layer-4 header: IPv4 l3 + IHL × 4, IPv6 after the walked headers.
    pub l4: usize,
}

/// What a frame is, before any service is looked up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The VLAN tag or the fixed IP header (20/40 bytes) is cut short, or the IP header is
    /// invalid (wrong version, IPv4 IHL < 5).
    Malformed,
    /// Not IPv4/IPv6 after at most one VLAN tag (802.1Q or 802.1ad).
    NonIp,
    Ip(IpHeader),
}

fn be16(f: &[u8], at: usize) -> Option<u16> {
    f.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]))
}

/// Reads the Ethernet, VLAN and fixed IP headers. `f` is at least [`ETH_HLEN`] long.
pub fn parse(f: &[u8]) -> Parsed {
    let Some(mut ethertype) = be16(f, 12) else {
        return Parsed::Malformed;
    };
    let mut l3 = ETH_HLEN;
    if ethertype == 0x8100 || ethertype == 0x88a8 {
        let Some(inner) = be16(f, 16) else {
            return Parsed::Malformed;
        };
        ethertype = inner;
        l3 += 4;
    }
    match ethertype {
        0x0800 => parse_v4(f, l3),
        0x86dd => parse_v6(f, l3),
        _ => Parsed::NonIp,
    }
}

fn parse_v4(f: &[u8], l3: usize) -> Parsed {
    let Some(h) = f.get(l3..l3 + 20) else {
        return Parsed::Malformed;
    };
    let ihl = usize::from(h[0] & 0x0f) * 4;
    if h[0] >> 4 != 4 || ihl < 20 {
        return Parsed::Malformed;
    }
    let addr = |i: usize| IpAddr::V4(Ipv4Addr::new(h[i], h[i + 1], h[i + 2], h[i + 3]));
    let bits = u16::from_be_bytes([h[6], h[7]]);
    let id = u32::from(u16::from_be_bytes([h[4], h[5]]));
    let proto = h[9];
    // MF (0x2000) or a fragment offset; DF and the reserved bit do not make a fragment.
    let (frag, verdict) = match (bits & 0x3fff != 0, bits & 0x1fff != 0) {
        (false, _) => (Frag::Whole, None),
        _ if !matches!(proto, 6 | 17) => (Frag::Whole, Some(Stat::DropFragment)),
        (true, false) => (Frag::First(id), None),
        (true, true) => (Frag::Later(id), None),
    };
    Parsed::Ip(IpHeader {
        src: addr(12),
        dst: addr(16),
        proto,
        frag,
        verdict,
        l3,
        l4: l3 + ihl,
    })
}

fn parse_v6(f: &[u8], l3: usize) -> Parsed {
    let Some(h) = f.get(l3..l3 + 40) else {
        return Parsed::Malformed;
    };
    if h[0] >> 4 != 6 {
        return Parsed::Malformed;
    }
    let addr = |i: usize| {
        let o: [u8; 16] = h[i..i + 16].try_into().expect("16 bytes");
        IpAddr::V6(Ipv6Addr::from(o))
    };
    let mut ip = IpHeader {
        src: addr(8),
        dst: addr(24),
        proto: h[6],
        frag: Frag::Whole,
        verdict: None,
        l3,
        l4: l3 + 40,
    };
    walk(f, &mut ip);
    Parsed::Ip(ip)
}

/// The IPv6 extension headers, at most [`MAX_EXT_HEADERS`]: `ip.proto` and `ip.l4` end
/// at the upper layer, or `ip.verdict`/`ip.frag` say why the walk stopped.
fn walk(f: &[u8], ip: &mut IpHeader) {
    for _ in 0..MAX_EXT_HEADERS {
        let at = ip.l4;
        if ip.proto == IPV6_FRAGMENT {
            let Some(h) = f.get(at..at + 8) else {
                ip.verdict = Some(Stat::DropMalformed);
                return;
            };
            ip.proto = h[0];
            ip.l4 += 8;
            if !matches!(ip.proto, 6 | 17) {
                ip.verdict = Some(Stat::DropFragment);
                return;
            }
            let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
            if u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0 {
                ip.frag = Frag::Later(id);
                return;
            }
            ip.frag = Frag::First(id);
        } else if IPV6_WALKED.contains(&ip.proto) {
            let Some(h) = f.get(at..at + 2) else {
                ip.verdict = Some(Stat::DropMalformed);
                return;
            };
            ip.proto = h[0];
            ip.l4 += (usize::from(h[1]) + 1) * 8;
        } else {
            break;
        }
    }
    if ip.proto == IPV6_FRAGMENT
        || IPV6_WALKED.contains(&ip.proto)
        || IPV6_DROPPED.contains(&ip.proto)
    {
        ip.verdict = Some(Stat::DropIpv6ExtHeader);
    }
}

/// A backend as the checker recognises it on the wire.
#[derive(Clone, Debug)]
pub struct Backend {
    pub address: IpAddr,
    /// Index of its service in [`Topology::services`].
    pub service: usize,
    /// Id in the data plane's maps (`XLB_BE_STATS` index).
    pub id: u32,
    /// Destination MAC of frames forwarded to it.
    pub mac: [u8; 6],
    /// Source MAC of those frames (its egress interface's).
    pub src_mac: [u8; 6],
    /// Its egress interface.
    pub ifindex: u32,
    /// Tunnel mode: the outer destination (its address, or the IPv6 address of an IPv4
    /// service's backend: 4in6) and the outer source (its interface's address).
    pub outer: IpAddr,
    pub outer_src: IpAddr,
}

/// A service as configured for the run.
#[derive(Clone, Debug)]
pub struct Service {
    pub name: &'static str,
    /// Id in the data plane's maps (`XLB_SVC_STATS` index).
    pub id: u32,
    pub vip: IpAddr,
    /// 0 = every port.
    pub port: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    /// Client prefix length in the affinity key.
    pub prefix: u8,
    /// `affinity = "none"`: the source port is part of the key.
    pub per_flow: bool,
    /// `nat_sources`: a client inside one is keyed on its whole address and port.
    pub nat: Vec<xlb::model::Prefix>,
    /// `None` when it has healthy backends; otherwise the counter its packets move
    /// (`DropNoBackend` or `PassNoBackend`).
    pub no_backend: Option<Stat>,
    /// `forwarding = "tunnel"`: the egress MTU and the outer family (every backend's).
    pub tunnel: Option<Tunnel>,
}

/// A tunnel-mode service's facts the README's MTU rule reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tunnel {
    /// The backends' interface MTU (bytes of IP packet).
    pub mtu: u32,
    /// The outer header is IPv6 (IP6IP6, 4in6): 40 bytes, else IPv4's 20.
    pub v6_outer: bool,
    /// No backend's interface has an `XLB_EGRESS` entry: every packet is dropped as
    /// `drop_no_egress` once balanced (before the MTU rule).
    pub no_egress: bool,
}

/// What tunnel mode does with a packet too big for the egress MTU once encapsulated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TooBig {
    /// Dropped as `drop_too_big`: IPv4 without DF, an ICMP error, or too short to quote.
    Drop,
    /// Answered with these exact bytes (XDP_TX, `icmp_too_big`).
    Reply(Vec<u8>),
}

impl Tunnel {
    /// The README's MTU rule for frame `f` (its IP header's length, not the frame's);
    /// `None`: it fits. `error`: the frame is an ICMP error (never answered).
    pub fn too_big(&self, f: &[u8], error: bool) -> Option<TooBig> {
        if self.no_egress {
            return None;
        }
        let l = crate::packet::layout(f)?;
        let ip = f.get(l.l3..)?;
        let (len, df) = if l.v6 {
            (40 + usize::from(be16(ip, 4)?), true)
        } else {
            (usize::from(be16(ip, 2)?), ip.get(6)? & 0x40 != 0)
        };
        let overhead = if self.v6_outer { 40 } else { 20 };
        if (len + overhead) as u32 <= self.mtu {
            return None;
        }
        let quote = crate::packet::too_big_quote(len);
        if error || !df || len < 64 || ip.len() < quote {
            return Some(TooBig::Drop);
        }
        let mtu = self.mtu - overhead as u32;
        Some(TooBig::Reply(crate::packet::too_big_reply(f, mtu)))
    }
}

/// The client of a frame to a VIP: its source, or for an ICMP error the destination of
/// the packet it quotes (the outer header's flow label and source follow the client).
pub fn client_of(f: &[u8]) -> Option<IpAddr> {
    let Parsed::Ip(ip) = parse(f) else {
        return None;
    };
    if matches!(ip.proto, 1 | 58) {
        return quoted(f, ip.l4 + 8, ip.dst.is_ipv6()).map(|q| q.dst);
    }
    Some(ip.src)
}

/// Everything the oracle and the checker know of the configuration.
#[derive(Clone, Debug)]
pub struct Topology {
    pub services: Vec<Service>,
    pub backends: Vec<Backend>,
    /// Interfaces in the redirect map (`XLB_TX_PORTS`).
    pub tx_ports: Vec<u32>,
    /// Ingress interfaces the fuzzer sends on, with names for messages.
    pub ingresses: Vec<(u32, &'static str)>,
    /// `daemon.icmp_echo = "reply"`.
    pub echo_reply: bool,
}

/// An affinity key as the selection rules define it: service, client address masked to
/// the service's prefix, and the source port only with `affinity = "none"` — or, for a
/// client inside the service's `nat_sources`, the whole address and the source port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub service: usize,
    pub addr: [u8; 16],
    pub port: u16,
}

impl Topology {
    fn is_vip(&self, dst: IpAddr) -> bool {
        self.services.iter().any(|s| s.vip == dst)
    }

    /// The VIP's only service of `proto`, when it has exactly one and it routes by
    /// source address alone: where a later fragment without a tracked first goes.
    pub fn sole_service(&self, dst: IpAddr, proto: u8) -> Option<usize> {
        let mut of = (0..self.services.len())
            .filter(|&i| self.services[i].vip == dst && self.services[i].proto == proto);
        match (of.next(), of.next()) {
            (Some(i), None) if !self.services[i].per_flow => Some(i),
            _ => None,
        }
    }

    /// The service for (destination, protocol, port): an exact port wins over port 0.
    fn service_for(&self, dst: IpAddr, proto: u8, dport: u16) -> Option<usize> {
        let find = |port: u16| {
            self.services
                .iter()
                .position(|s| s.vip == dst && s.proto == proto && s.port == port)
        };
        find(dport).or_else(|| find(0))
    }

    /// Indexes (into `backends`) of a service's backends.
    pub fn backends_of(&self, service: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.backends.len()).filter(move |&b| self.backends[b].service == service)
    }

    pub fn ingress_name(&self, ifindex: u32) -> &'static str {
        self.ingresses
            .iter()
            .find(|(i, _)| *i == ifindex)
            .map_or("?", |(_, n)| n)
    }

    /// The affinity key of a packet from `src`:`sport` to `service`.
    pub fn key(&self, service: usize, src: IpAddr, sport: u16) -> Key {
        let s = &self.services[service];
        let mut addr = [0u8; 16];
        match src {
            IpAddr::V4(a) => addr[..4].copy_from_slice(&a.octets()),
            IpAddr::V6(a) => addr.copy_from_slice(&a.octets()),
        }
        if s.nat.iter().any(|p| p.contains(src)) {
            return Key {
                service,
                addr,
                port: sport,
            };
        }
        let prefix = usize::from(s.prefix);
        for (i, b) in addr.iter_mut().enumerate() {
            let keep = prefix.saturating_sub(i * 8).min(8);
            *b &= !(0xffu16 >> keep) as u8;
        }
        Key {
            service,
            addr,
            port: if s.per_flow { sport } else { 0 },
        }
    }
}

/// A fragmented packet: source, destination, identification, protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragId {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub id: u32,
    pub proto: u8,
}

/// What must happen to a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// XDP_PASS, the frame unchanged, this counter; no service or backend counter moves.
    Pass(Stat),
    /// XDP_DROP with this counter; no service or backend counter moves.
    Drop(Stat),
    /// The frame reaches `service`'s balancing with this affinity key: forwarded to one of
    /// its backends, or its no-backend verdict, or dropped for a missing redirect port.
    /// A first fragment's ports are remembered under `track` for its later fragments.
    Balance {
        service: usize,
        key: Key,
        track: Option<FragId>,
    },
    /// A later fragment (no ports): balanced as its first fragment was when that is
    /// remembered (the checker's memory), else as a packet from its source to `sole`
    /// (the VIP's only source-address service of its protocol), else dropped as
    /// `drop_fragment`.
    Later { id: FragId, sole: Option<usize> },
    /// An ICMP error about a packet `service` sent to the client of `key`: forwarded like
    /// a packet of that client (to its pinned backend when it has one, else any of the
    /// service's), but no pin is read as a hit or miss, written, or counted; the
    /// service's `icmp_errors` moves.
    IcmpError { service: usize, key: Key },
    /// An echo request to a VIP answered with XDP_TX: exactly these bytes.
    EchoReply(Vec<u8>),
}

/// The README's table, in order, for one frame.
pub fn expect(top: &Topology, f: &[u8]) -> Expect {
    let ip = match parse(f) {
        Parsed::Malformed => return Expect::Pass(Stat::PassMalformed),
        Parsed::NonIp => return Expect::Pass(Stat::PassNonIp),
        Parsed::Ip(ip) => ip,
    };
    if !top.is_vip(ip.dst) {
        return Expect::Pass(Stat::PassNotService);
    }
    if let Some(stat) = ip.verdict {
        return Expect::Drop(stat);
    }
    if let Frag::Later(id) = ip.frag {
        let id = FragId {
            src: ip.src,
            dst: ip.dst,
            id,
            proto: ip.proto,
        };
        return Expect::Later {
            id,
            sole: top.sole_service(ip.dst, ip.proto),
        };
    }
    if (ip.proto == 1 && ip.dst.is_ipv4()) || (ip.proto == 58 && ip.dst.is_ipv6()) {
        return icmp(top, f, &ip);
    }
    let header = match ip.proto {
        6 => 20,
        17 => 8,
        _ => return Expect::Pass(Stat::PassNotService),
    };
    if ip.l4 + header > f.len() {
        return Expect::Drop(Stat::DropMalformed);
    }
    let sport = be16(f, ip.l4).expect("checked above");
    let dport = be16(f, ip.l4 + 2).expect("checked above");
    match top.service_for(ip.dst, ip.proto, dport) {
        Some(service) => Expect::Balance {
            service,
            key: top.key(service, ip.src, sport),
            track: match ip.frag {
                Frag::First(id) => Some(FragId {
                    src: ip.src,
                    dst: ip.dst,
                    id,
                    proto: ip.proto,
                }),
                _ => None,
            },
        },
        None => Expect::Pass(Stat::PassNotService),
    }
}

/// ICMP to a VIP (README, "ICMP"): an echo request is answered (or passed); an error
/// whose quoted packet came from this VIP and a service's port goes to the client's
/// backend; anything else passes.
fn icmp(top: &Topology, f: &[u8], ip: &IpHeader) -> Expect {
    let pass = Expect::Pass(Stat::PassNotService);
    let Some(&ty) = f.get(ip.l4).filter(|_| f.len() >= ip.l4 + 8) else {
        return pass;
    };
    let v6 = ip.dst.is_ipv6();
    match (v6, ty) {
        (false, 8) | (true, 128) if top.echo_reply => Expect::EchoReply(echo_reply(f, ip)),
        (false, 3 | 11) | (true, 1..=3) => icmp_error(top, f, ip).unwrap_or(pass),
        _ => pass,
    }
}

/// The quoted packet of an ICMP error as (service, client's key), if a service sent it.
fn icmp_error(top: &Topology, f: &[u8], ip: &IpHeader) -> Option<Expect> {
    let inner = quoted(f, ip.l4 + 8, ip.dst.is_ipv6())?;
    if inner.src != ip.dst || !matches!(inner.proto, 6 | 17) || f.len() < inner.l4 + 8 {
        return None;
    }
    let sport = be16(f, inner.l4)?;
    let dport = be16(f, inner.l4 + 2)?;
    let service = top.service_for(inner.src, inner.proto, sport)?;
    Some(Expect::IcmpError {
        service,
        key: top.key(service, inner.dst, dport),
    })
}

/// The IP header an ICMP error quotes at `at` (of the same family as the error).
fn quoted(f: &[u8], at: usize, v6: bool) -> Option<IpHeader> {
    match if v6 { parse_v6(f, at) } else { parse_v4(f, at) } {
        Parsed::Ip(h) => Some(h),
        _ => None,
    }
}

/// One's-complement sum of two 16-bit words.
fn ones_add(a: u16, b: u16) -> u16 {
    let s = u32::from(a) + u32::from(b);
    ((s & 0xffff) + (s >> 16)) as u16
}

/// The checksum at `at` after a word it covers went from `old` to `new` (RFC 1624).
fn update_csum(out: &mut [u8], at: usize, old: u16, new: u16) {
    let c = u16::from_be_bytes([out[at], out[at + 1]]);
    let c = !ones_add(ones_add(!c, !old), new);
    out[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// The echo reply to the request `f`: MACs and addresses swapped, TTL / hop limit 64,
/// type echo reply, checksums updated incrementally (a wrong one stays wrong).
fn echo_reply(f: &[u8], ip: &IpHeader) -> Vec<u8> {
    let mut out = f.to_vec();
    out[..6].copy_from_slice(&f[6..12]);
    out[6..12].copy_from_slice(&f[..6]);
    let (l3, l4) = (ip.l3, ip.l4);
    let v6 = ip.dst.is_ipv6();
    if v6 {
        out[l3 + 8..l3 + 24].copy_from_slice(&f[l3 + 24..l3 + 40]);
        out[l3 + 24..l3 + 40].copy_from_slice(&f[l3 + 8..l3 + 24]);
        out[l3 + 7] = 64;
    } else {
        out[l3 + 12..l3 + 16].copy_from_slice(&f[l3 + 16..l3 + 20]);
        out[l3 + 16..l3 + 20].copy_from_slice(&f[l3 + 12..l3 + 16]);
        let old = u16::from_be_bytes([f[l3 + 8], f[l3 + 9]]);
        out[l3 + 8] = 64;
        let new = u16::from_be_bytes([out[l3 + 8], out[l3 + 9]]);
        update_csum(&mut out, l3 + 10, old, new);
    }
    let old = u16::from_be_bytes([f[l4], f[l4 + 1]]);
    out[l4] = if v6 { 129 } else { 0 };
    let new = u16::from_be_bytes([out[l4], out[l4 + 1]]);
    update_csum(&mut out, l4 + 2, old, new);
    out
}

/// `Expect` with the topology's names, for messages.
pub struct Described<'a>(pub &'a Topology, pub &'a Expect);

impl fmt::Display for Described<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            Expect::Pass(s) => write!(f, "XDP_PASS unchanged, counter {}", s.name()),
            Expect::Drop(s) => write!(f, "XDP_DROP, counter {}", s.name()),
            Expect::Later { id, sole } => write!(
                f,
                "later fragment {id:?}: as its first fragment, else to {}",
                sole.map_or("nothing (drop_fragment)", |s| self.0.services[s].name)
            ),
            Expect::Balance { service, key, .. } => {
                let s = &self.0.services[*service];
                match s.no_backend {
                    Some(nb) => write!(
                        f,
                        "service {} without healthy backend: {}",
                        s.name,
                        nb.name()
                    ),
                    None => write!(f, "service {}: forwarded to one of its backends", s.name),
                }?;
                write!(f, " (affinity key {key:?})")
            }
            Expect::IcmpError { service, key } => write!(
                f,
                "ICMP error about service {}: to the backend of affinity key {key:?}, nothing pinned",
                self.0.services[*service].name
            ),
            Expect::EchoReply(_) => write!(f, "echo reply, XDP_TX, counter icmp_echo_reply"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_masks_whole_and_partial_bytes() {
        let svc = |prefix| Service {
            name: "s",
            id: 0,
            vip: "203.0.113.1".parse().expect("ip"),
            port: 80,
            proto: 6,
            prefix,
            per_flow: false,
            nat: Vec::new(),
            no_backend: None,
            tunnel: None,
        };
        let top = |prefix| Topology {
            services: vec![svc(prefix)],
            backends: vec![],
            tx_ports: vec![],
            ingresses: vec![],
            echo_reply: true,
        };
        let src: IpAddr = "198.51.100.255".parse().expect("ip");
        assert_eq!(top(24).key(0, src, 1).addr[..4], [198, 51, 100, 0]);
        assert_eq!(top(20).key(0, src, 1).addr[..4], [198, 51, 96, 0]);
        assert_eq!(top(32).key(0, src, 1).addr[..4], [198, 51, 100, 255]);
        assert_eq!(top(0).key(0, src, 1).addr[..4], [0, 0, 0, 0]);
    }
}
