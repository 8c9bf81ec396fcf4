//! The boundary of `xlb decap`, the tunnel decapsulation program for backends: its map
//! names, key layouts and counters. The program (lb-ebpf/src/bin/decap.rs) and `xlb decap`
//! (lb-userspace/src/decap/) both use these, nothing else.
//!
//! The program strips the outer header of IPIP (IPv4 in IPv4), IP6IP6 (IPv6 in IPv6) and
//! 4in6 (IPv4 in IPv6) packets whose outer destination is one of the host's addresses
//! (`XLB_DC_LOCAL`) and whose outer source is in the allowed prefixes (`XLB_DC_FROM4`,
//! `XLB_DC_FROM6`), and passes the inner packet to the stack; anything else passes
//! untouched. Every packet moves exactly one counter of `XLB_DC_STATS`.

/// LPM_TRIE: [`Prefix4`] → `u32` (1): allowed outer IPv4 sources.
pub const MAP_DECAP_FROM4: &str = "XLB_DC_FROM4";
/// LPM_TRIE: [`Prefix6`] → `u32` (1): allowed outer IPv6 sources.
pub const MAP_DECAP_FROM6: &str = "XLB_DC_FROM6";
/// HASH: [`LocalKey`] → `u32` (1): the host's addresses, the only outer destinations
/// decapsulated.
pub const MAP_DECAP_LOCAL: &str = "XLB_DC_LOCAL";
/// PERCPU_ARRAY: [`DecapStat`] index → `u64` packets.
pub const MAP_DECAP_STATS: &str = "XLB_DC_STATS";
/// The program's name in its object.
pub const PROG_DECAP: &str = "xlb_decap";

/// Allowed prefixes per family, at most.
pub const MAX_DECAP_PREFIXES: u32 = 1024;
/// Local addresses, at most.
pub const MAX_DECAP_LOCAL: u32 = 1024;

/// Key of `XLB_DC_FROM4` (the kernel's `bpf_lpm_trie_key` layout).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Prefix4 {
    /// Prefix length in bits, host order.
    pub len: u32,
    /// Address, network order.
    pub addr: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<Prefix4>() == 8);

/// Key of `XLB_DC_FROM6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Prefix6 {
    /// Prefix length in bits, host order.
    pub len: u32,
    /// Address, network order.
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<Prefix6>() == 20);

/// Key of `XLB_DC_LOCAL`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct LocalKey {
    /// Network order ([`crate::Addr`]: IPv4 in word 0, the rest zero).
    pub addr: crate::Addr,
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u32,
}
const _: () = assert!(core::mem::size_of::<LocalKey>() == 20);

/// The counters of `XLB_DC_STATS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecapStat {
    /// IPv4 in IPv4 (protocol 4) decapsulated and passed.
    Ipip = 0,
    /// IPv6 in IPv6 (next header 41) decapsulated and passed.
    Ip6ip6 = 1,
    /// IPv4 in IPv6 (next header 4) decapsulated and passed.
    FourIn6 = 2,
    /// No tunnel packet (any other protocol, VLAN-tagged, cut before the IP header):
    /// passed untouched.
    PassNotTunnel = 3,
    /// A tunnel packet whose outer destination is not one of the host's addresses:
    /// passed untouched.
    PassNotLocal = 4,
    /// A tunnel packet to the host from a source outside the allowed prefixes: passed
    /// untouched (the stack has no tunnel device for it and drops it).
    PassSourceNotAllowed = 5,
    /// A tunnel packet whose inner header is missing or of the wrong version, or an
    /// outer IPv4 fragment (XDP cannot reassemble): passed untouched.
    PassMalformed = 6,
}

impl DecapStat {
    pub const COUNT: u32 = 7;
    pub const ALL: [DecapStat; Self::COUNT as usize] = [
        DecapStat::Ipip,
        DecapStat::Ip6ip6,
        DecapStat::FourIn6,
        DecapStat::PassNotTunnel,
        DecapStat::PassNotLocal,
        DecapStat::PassSourceNotAllowed,
        DecapStat::PassMalformed,
    ];

    /// Stable snake_case name (CLI output, JSON).
    pub const fn name(self) -> &'static str {
        match self {
            DecapStat::Ipip => "decap_ipip",
            DecapStat::Ip6ip6 => "decap_ip6ip6",
            DecapStat::FourIn6 => "decap_4in6",
            DecapStat::PassNotTunnel => "pass_not_tunnel",
            DecapStat::PassNotLocal => "pass_not_local",
            DecapStat::PassSourceNotAllowed => "pass_source_not_allowed",
            DecapStat::PassMalformed => "pass_malformed",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], integers only, no implicit padding (size asserts above).
    unsafe impl aya::Pod for super::Prefix4 {}
    unsafe impl aya::Pod for super::Prefix6 {}
    unsafe impl aya::Pod for super::LocalKey {}
}
