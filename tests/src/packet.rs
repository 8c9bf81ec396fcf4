//! Builders for the frames the fixtures feed to the XDP program. Checksums are correct
//! (IPv4 header, TCP/UDP pseudo-header) so the frames are what a real host would send.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0xc0, 0, 0, 0, 0x01];
pub const LB_MAC: [u8; 6] = [0x02, 0x1b, 0, 0, 0, 0x01];

pub const ETH_IPV4: u16 = 0x0800;
pub const ETH_IPV6: u16 = 0x86dd;
pub const ETH_ARP: u16 = 0x0806;
pub const ETH_LLDP: u16 = 0x88cc;
pub const ETH_8021Q: u16 = 0x8100;
pub const ETH_8021AD: u16 = 0x88a8;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [b] = chunks.remainder() {
        sum += (*b as u32) << 8;
    }
    sum
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A layer-4 segment: header and payload, checksum filled in by [`ip`].
#[derive(Clone, Debug)]
pub struct L4 {
    pub proto: u8,
    pub bytes: Vec<u8>,
    /// Offset of the checksum field, if any.
    csum_at: Option<usize>,
}

pub fn tcp(sport: u16, dport: u16, payload: &[u8]) -> L4 {
    let mut b = Vec::with_capacity(20 + payload.len());
    b.extend_from_slice(&sport.to_be_bytes());
    b.extend_from_slice(&dport.to_be_bytes());
    b.extend_from_slice(&1u32.to_be_bytes()); // seq
    b.extend_from_slice(&0u32.to_be_bytes()); // ack
    b.push(5 << 4); // data offset
    b.push(0x02); // SYN
    b.extend_from_slice(&64240u16.to_be_bytes());
    b.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
    b.extend_from_slice(payload);
    L4 {
        proto: IPPROTO_TCP,
        bytes: b,
        csum_at: Some(16),
    }
}

pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> L4 {
    let mut b = Vec::with_capacity(8 + payload.len());
    b.extend_from_slice(&sport.to_be_bytes());
    b.extend_from_slice(&dport.to_be_bytes());
    b.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(payload);
    L4 {
        proto: IPPROTO_UDP,
        bytes: b,
        csum_at: Some(6),
    }
}

/// An ICMP (IPv4) or ICMPv6 message: type, code, the four bytes after the checksum
/// (`rest`: an echo's id and sequence, an error's unused word or MTU) and the body; the
/// checksum is filled in by [`ip`] (ICMPv6 with the pseudo-header, ICMPv4 without).
pub fn icmp(v6: bool, ty: u8, code: u8, rest: [u8; 4], body: &[u8]) -> L4 {
    let mut b = vec![ty, code, 0, 0];
    b.extend_from_slice(&rest);
    b.extend_from_slice(body);
    L4 {
        proto: if v6 { IPPROTO_ICMPV6 } else { IPPROTO_ICMP },
        bytes: b,
        csum_at: Some(2),
    }
}

/// An echo request (id 1, sequence 1) with a few bytes of payload.
pub fn icmp_echo(v6: bool) -> L4 {
    icmp(v6, if v6 { 128 } else { 8 }, 0, [0, 1, 0, 1], b"xlb-ping")
}

/// The echo reply to [`icmp_echo`].
pub fn icmp_echo_reply(v6: bool) -> L4 {
    icmp(v6, if v6 { 129 } else { 0 }, 0, [0, 1, 0, 1], b"xlb-ping")
}

/// Raw bytes after the IP header with an arbitrary protocol number (extension headers).
pub fn raw(proto: u8, bytes: &[u8]) -> L4 {
    L4 {
        proto,
        bytes: bytes.to_vec(),
        csum_at: None,
    }
}

/// IPv4 header knobs.
#[derive(Clone, Debug, Default)]
pub struct V4Opts {
    /// Option bytes (a multiple of 4).
    pub options: Vec<u8>,
    /// Flags + fragment offset field (host order), e.g. 0x2000 = MF.
    pub frag: u16,
    /// Identification; `None`: 0x1234.
    pub id: Option<u16>,
}

/// An IP packet (no Ethernet) carrying `l4`; the family follows the addresses.
pub fn ip(src: IpAddr, dst: IpAddr, l4: &L4, v4: &V4Opts) -> (u16, Vec<u8>) {
    let mut seg = l4.bytes.clone();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            if let Some(at) = l4.csum_at {
                // ICMPv4's checksum covers the message alone.
                let mut sum = 0;
                if l4.proto != IPPROTO_ICMP {
                    sum = csum_add(sum, &s.octets());
                    sum = csum_add(sum, &d.octets());
                    sum += l4.proto as u32 + seg.len() as u32;
                }
                sum = csum_add(sum, &seg);
                seg[at..at + 2].copy_from_slice(&csum_fold(sum).to_be_bytes());
            }
            let ihl = 20 + v4.options.len();
            assert!(
                ihl.is_multiple_of(4) && ihl <= 60,
                "bad IPv4 options length"
            );
            let mut h = Vec::with_capacity(ihl + seg.len());
            h.push(0x40 | (ihl / 4) as u8);
            h.push(0);
            h.extend_from_slice(&((ihl + seg.len()) as u16).to_be_bytes());
            h.extend_from_slice(&v4.id.unwrap_or(0x1234).to_be_bytes());
            h.extend_from_slice(&v4.frag.to_be_bytes());
            h.push(64);
            h.push(l4.proto);
            h.extend_from_slice(&[0, 0]);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            h.extend_from_slice(&v4.options);
            let c = csum_fold(csum_add(0, &h));
            h[10..12].copy_from_slice(&c.to_be_bytes());
            h.extend_from_slice(&seg);
            (ETH_IPV4, h)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            if let Some(at) = l4.csum_at {
                let mut sum = csum_add(0, &s.octets());
                sum = csum_add(sum, &d.octets());
                sum += seg.len() as u32 + l4.proto as u32;
                sum = csum_add(sum, &seg);
                seg[at..at + 2].copy_from_slice(&csum_fold(sum).to_be_bytes());
            }
            let mut h = Vec::with_capacity(40 + seg.len());
            h.extend_from_slice(&[0x60, 0, 0, 0]);
            h.extend_from_slice(&(seg.len() as u16).to_be_bytes());
            h.push(l4.proto);
            h.push(64);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            h.extend_from_slice(&seg);
            (ETH_IPV6, h)
        }
        _ => panic!("mixed address families: {src} → {dst}"),
    }
}

/// An IPv6 extension header for [`v6_chain`].
#[derive(Clone, Copy, Debug)]
pub enum Ext {
    /// Hop-by-hop (0), routing (43), destination options (60), or any header of that
    /// shape (AH 51 is counted in 4-byte units by the RFC, but xlb drops it unread): the
    /// kind and the length field (the header is (len + 1) × 8 bytes, padded with zeros).
    Opt(u8, u8),
    /// A fragment header: offset in 8-byte units, the M flag, the identification.
    Frag { offset: u16, more: bool, id: u32 },
}

/// An IPv6 frame from `src` to `dst` with these extension headers before `l4` (its
/// checksum as without them: xlb does not read it).
pub fn v6_chain(src: IpAddr, dst: IpAddr, exts: &[Ext], l4: &L4) -> Vec<u8> {
    let (_, plain) = ip(src, dst, l4, &V4Opts::default());
    let seg = &plain[40..];
    let kind = |e: &Ext| match e {
        Ext::Opt(k, _) => *k,
        Ext::Frag { .. } => 44,
    };
    let mut body = Vec::new();
    for (i, e) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map_or(l4.proto, kind);
        match *e {
            Ext::Opt(_, len) => {
                let mut h = vec![0u8; (usize::from(len) + 1) * 8];
                h[0] = next;
                h[1] = len;
                // A PadN option filling the rest (RFC 8200 §4.2).
                h[2] = 1;
                h[3] = (h.len() - 4).min(255) as u8;
                body.extend_from_slice(&h);
            }
            Ext::Frag { offset, more, id } => {
                body.extend_from_slice(&[next, 0]);
                body.extend_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
                body.extend_from_slice(&id.to_be_bytes());
            }
        }
    }
    body.extend_from_slice(seg);
    let first = exts.first().map_or(l4.proto, kind);
    frame(src, dst, &raw(first, &body))
}

/// An Ethernet frame from the client to the balancer, with optional VLAN tags
/// (outermost first: (TPID, VLAN id)).
pub fn eth(ethertype: u16, payload: &[u8], tags: &[(u16, u16)]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + 4 * tags.len() + payload.len());
    f.extend_from_slice(&LB_MAC);
    f.extend_from_slice(&CLIENT_MAC);
    for (tpid, vid) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A complete frame: client `src` → `dst` carrying `l4`.
pub fn frame(src: IpAddr, dst: IpAddr, l4: &L4) -> Vec<u8> {
    let (et, p) = ip(src, dst, l4, &V4Opts::default());
    eth(et, &p, &[])
}

pub fn tcp_frame(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Vec<u8> {
    frame(src, dst, &tcp(sport, dport, b""))
}

pub fn udp_frame(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Vec<u8> {
    frame(src, dst, &udp(sport, dport, b"xlb"))
}

/// The outer header a tunnel adds (README, "Tunnel forwarding"), for [`encapsulate`].
#[derive(Clone, Copy, Debug)]
pub struct Outer {
    /// Outer source and destination (the backend); their family is the outer header's.
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IPv6 outer flow label (20 bits).
    pub flow_label: u32,
}

/// `frame` (IPv4 or IPv6, at most one VLAN tag) as the balancer sends it in a tunnel:
/// MACs `dst_mac`/`src_mac`, the tag kept, the EtherType of the outer family, the outer
/// header from the inner one by the RFC 2003 / RFC 2473 / RFC 6040 rules as the README
/// states them (TTL / hop limit, DSCP and ECN copied; IPv4: the identification and DF
/// copied, DF set over an IPv6 packet; IPv6: `flow_label`), then the inner packet
/// unchanged. Written from the RFCs, not from the program.
pub fn encapsulate(frame: &[u8], dst_mac: [u8; 6], src_mac: [u8; 6], outer: &Outer) -> Vec<u8> {
    let l = layout(frame).expect("an IP frame");
    let ip = &frame[l.l3..];
    let (len, tos, ttl, df, id, proto) = if l.v6 {
        let plen = u16::from_be_bytes([ip[4], ip[5]]) as usize;
        let tc = (ip[0] << 4) | (ip[1] >> 4);
        (40 + plen, tc, ip[7], true, [0, 0], 41u8)
    } else {
        let tl = u16::from_be_bytes([ip[2], ip[3]]) as usize;
        (tl, ip[1], ip[8], ip[6] & 0x40 != 0, [ip[4], ip[5]], 4u8)
    };
    let hdr = match (outer.src, outer.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut h = vec![0x45, tos];
            h.extend_from_slice(&((20 + len) as u16).to_be_bytes());
            h.extend_from_slice(&id);
            h.extend_from_slice(&[if df { 0x40 } else { 0 }, 0, ttl, proto, 0, 0]);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            let c = csum_fold(csum_add(0, &h));
            h[10..12].copy_from_slice(&c.to_be_bytes());
            h
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let fl = outer.flow_label & 0xf_ffff;
            let w0 = (6u32 << 28) | ((tos as u32) << 20) | fl;
            let mut h = w0.to_be_bytes().to_vec();
            h.extend_from_slice(&(len as u16).to_be_bytes());
            h.extend_from_slice(&[if l.v6 { 41 } else { 4 }, ttl]);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            h
        }
        _ => panic!("mixed outer families"),
    };
    let mut out = Vec::with_capacity(frame.len() + hdr.len());
    out.extend_from_slice(&dst_mac);
    out.extend_from_slice(&src_mac);
    out.extend_from_slice(&frame[12..l.ethertype_at]);
    let et = if outer.dst.is_ipv6() {
        ETH_IPV6
    } else {
        ETH_IPV4
    };
    out.extend_from_slice(&et.to_be_bytes());
    out.extend_from_slice(&hdr);
    out.extend_from_slice(&frame[l.l3..]);
    out
}

/// Whether the IPv4 header at the start of `h` (its IHL) has a valid checksum.
pub fn ipv4_header_checksum_ok(h: &[u8]) -> bool {
    let ihl = usize::from(h[0] & 0x0f) * 4;
    csum_fold(csum_add(0, &h[..ihl])) == 0
}

/// Bytes of the offending packet the balancer's too-big answer quotes (README, "Tunnel
/// forwarding"): 512, or 64 of a shorter packet.
pub fn too_big_quote(ip_len: usize) -> usize {
    if ip_len >= 512 { 512 } else { 64 }
}

/// The answer to `frame` (from a client, too big for the tunnel): ICMP fragmentation
/// needed (IPv4) / ICMPv6 packet too big carrying `mtu`, from the packet's destination
/// to its source, TTL / hop limit 64, TOS 0, identification 0, no DF, quoting the packet's
/// first [`too_big_quote`] bytes; MACs swapped, the VLAN tag kept.
pub fn too_big_reply(frame: &[u8], mtu: u32) -> Vec<u8> {
    let l = layout(frame).expect("an IP frame");
    let pkt = &frame[l.l3..];
    let (src, dst, len): (IpAddr, IpAddr, usize) = if l.v6 {
        let s: [u8; 16] = pkt[8..24].try_into().expect("16");
        let d: [u8; 16] = pkt[24..40].try_into().expect("16");
        let plen = u16::from_be_bytes([pkt[4], pkt[5]]) as usize;
        (
            Ipv6Addr::from(s).into(),
            Ipv6Addr::from(d).into(),
            40 + plen,
        )
    } else {
        let s: [u8; 4] = pkt[12..16].try_into().expect("4");
        let d: [u8; 4] = pkt[16..20].try_into().expect("4");
        let tl = u16::from_be_bytes([pkt[2], pkt[3]]) as usize;
        (Ipv4Addr::from(s).into(), Ipv4Addr::from(d).into(), tl)
    };
    let quote = &pkt[..too_big_quote(len)];
    let msg = if l.v6 {
        icmp(true, 2, 0, mtu.to_be_bytes(), quote)
    } else {
        let m = (mtu as u16).to_be_bytes();
        icmp(false, 3, 4, [0, 0, m[0], m[1]], quote)
    };
    let opts = V4Opts {
        id: Some(0),
        ..Default::default()
    };
    let (et, p) = ip(dst, src, &msg, &opts);
    let mut f = Vec::new();
    f.extend_from_slice(&frame[6..12]);
    f.extend_from_slice(&frame[..6]);
    f.extend_from_slice(&frame[12..l.ethertype_at]);
    f.extend_from_slice(&et.to_be_bytes());
    f.extend_from_slice(&p);
    f
}

/// An ARP request for `target` from `sender`.
pub fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0, 1, 8, 0, 6, 4, 0, 1];
    p.extend_from_slice(&CLIENT_MAC);
    p.extend_from_slice(&sender.octets());
    p.extend_from_slice(&[0; 6]);
    p.extend_from_slice(&target.octets());
    let mut f = eth(ETH_ARP, &p, &[]);
    f[..6].copy_from_slice(&[0xff; 6]);
    f
}

/// Where the headers of a frame sit, found leniently (a cut frame still has a layout as
/// far as its bytes go): for mutating and normalising frames, never for judging them —
/// the fuzzer's oracle reads frames with its own parser.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Offset of the EtherType naming the network layer: 12, or 16 after one VLAN tag.
    pub ethertype_at: usize,
    /// Offset of the IP header.
    pub l3: usize,
    /// IPv6 (by EtherType); otherwise IPv4.
    pub v6: bool,
    /// Offset of the layer-4 header, when the frame holds the byte that says where.
    pub l4: Option<usize>,
    /// IPv4 protocol or IPv6 next header, when present.
    pub proto: Option<u8>,
}

/// The layout of an IPv4 or IPv6 frame with at most one VLAN tag; `None` for anything
/// else or a frame cut before its EtherType.
pub fn layout(f: &[u8]) -> Option<Layout> {
    let at = |i: usize| f.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let mut ethertype_at = 12;
    let mut et = at(12)?;
    if et == ETH_8021Q || et == ETH_8021AD {
        ethertype_at = 16;
        et = at(16)?;
    }
    let l3 = ethertype_at + 2;
    let (v6, l4, proto) = match et {
        ETH_IPV4 => (
            false,
            f.get(l3).map(|b| l3 + usize::from(b & 0x0f) * 4),
            f.get(l3 + 9).copied(),
        ),
        ETH_IPV6 => (true, Some(l3 + 40), f.get(l3 + 6).copied()),
        _ => return None,
    };
    Some(Layout {
        ethertype_at,
        l3,
        v6,
        l4,
        proto,
    })
}

pub fn v4(s: &str) -> IpAddr {
    IpAddr::V4(s.parse::<Ipv4Addr>().expect("IPv4 literal"))
}

pub fn v6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse::<Ipv6Addr>().expect("IPv6 literal"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checksum_verifies() {
        let (_, p) = ip(
            v4("10.0.0.1"),
            v4("10.0.0.2"),
            &tcp(1, 2, b""),
            &V4Opts::default(),
        );
        assert_eq!(csum_fold(csum_add(0, &p[..20])), 0);
    }
}
