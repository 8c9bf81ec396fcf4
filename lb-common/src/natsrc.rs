//! `nat_sources`: client prefixes (NAT gateways, proxies) whose clients are keyed on
//! their whole address and source port, each connection balanced alone (issue 12).
//!
//! Two maps, both written by the controller only:
//! - `XLB_NAT_SRC`, an LPM trie: ([`NatSourceData`] = service id, family, address)
//!   under a prefix of [`SCOPE_BITS`] + the listed prefix's length → that length (`u32`);
//! - `XLB_NAT_FILTER`, an array of `u64` words, the pre-filter in front of it so that a
//!   client outside every list pays one array word, never a trie walk: IPv4 sources are
//!   looked up by their /16 (one bit each, [`V4_WORDS`] words; a listed prefix shorter
//!   than /16 sets every /16 it covers), IPv6 sources by a fold of their first 32 bits
//!   ([`V6_WORDS`] words after the IPv4 ones; a listed prefix shorter than /32 sets bit 0
//!   of the last word, [`ANY_V6_WORD`]: every IPv6 source of such a service then walks
//!   the trie).
//!
//! A service with a list carries `SVC_F_NAT_SOURCES`; one without pays one flag test.
//! Must not touch: maps (the program and the controller own them).

use crate::{Addr, FAMILY_V6};

/// Bits of the trie key before the address: the service id and the family, which every
/// stored prefix matches whole.
pub const SCOPE_BITS: u32 = 64;
/// Prefix length of a lookup key (the whole data).
pub const LOOKUP_BITS: u32 = SCOPE_BITS + 128;
/// Listed prefixes over all services.
pub const MAX_NAT_SOURCES: u32 = 16_384;
/// Listed prefixes per service.
pub const MAX_NAT_SOURCES_PER_SERVICE: usize = 1024;
/// Filter words for IPv4 (one bit per /16).
pub const V4_WORDS: u32 = 1024;
/// Filter words for IPv6 (one bit per fold of the first 32 bits).
pub const V6_WORDS: u32 = 1024;
/// The word whose bit 0 sends every IPv6 source to the trie.
pub const ANY_V6_WORD: u32 = V4_WORDS + V6_WORDS;
/// Words of `XLB_NAT_FILTER`.
pub const NAT_FILTER_WORDS: u32 = ANY_V6_WORD + 1;
/// `BPF_F_NO_PREALLOC`: the kernel requires it of LPM tries.
pub const BPF_F_NO_PREALLOC: u32 = 1;

/// The data of a trie key (the `data` of a BPF LPM key; the prefix length comes first).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct NatSourceData {
    /// Service id (host order; matched whole).
    pub service_id: u32,
    /// `FAMILY_V4` or `FAMILY_V6` (matched whole).
    pub family: u32,
    /// Client address, network order ([`Addr`]).
    pub addr: Addr,
}
const _: () = assert!(core::mem::size_of::<NatSourceData>() == 24);

/// The trie data of a client (or of a listed prefix's first address).
#[inline(always)]
pub fn data(service_id: u32, family: u8, addr: &Addr) -> NatSourceData {
    NatSourceData {
        service_id,
        family: family as u32,
        addr: *addr,
    }
}

/// The filter word and bit of a source address.
#[inline(always)]
pub fn filter_bit(addr: &Addr, family: u8) -> (u32, u64) {
    // addr[0] holds the first four wire bytes in native (little-endian) order.
    let w = addr[0];
    let idx = if family == FAMILY_V6 {
        let f = (w ^ (w >> 16)) & 0xffff;
        V4_WORDS * 64 + f
    } else {
        ((w & 0xff) << 8) | ((w >> 8) & 0xff)
    };
    (idx >> 6, 1u64 << (idx & 63))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FAMILY_V4, addr_from_bytes};

    fn v4(b: [u8; 4]) -> Addr {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&b);
        addr_from_bytes(&a)
    }

    #[test]
    fn v4_sources_fall_on_their_slash_16() {
        let (w, b) = filter_bit(&v4([203, 0, 113, 7]), FAMILY_V4);
        let idx = 203u32 << 8; // 203.0 as the /16 index
        assert_eq!((w, b), (idx >> 6, 1 << (idx & 63)));
        assert_eq!(filter_bit(&v4([203, 0, 200, 1]), FAMILY_V4), (w, b));
        assert_ne!(filter_bit(&v4([203, 1, 113, 7]), FAMILY_V4), (w, b));
        assert!(w < V4_WORDS);
    }

    #[test]
    fn v6_sources_use_their_own_words() {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        let (w, _) = filter_bit(&addr_from_bytes(&a), FAMILY_V6);
        assert!((V4_WORDS..ANY_V6_WORD).contains(&w));
    }
}
