//! Is a client in its service's `nat_sources` (lb_common::natsrc)? Such a client is
//! keyed on its whole address and source port (each connection balanced alone).
//!
//! Cost for everyone else: a service without a list tests one flag; a service with one
//! reads one word of the `XLB_NAT_FILTER` pre-filter (the source's IPv4 /16, or a fold of
//! its IPv6 /32); only a hit there walks the `XLB_NAT_SRC` trie.
//!
//! Reads `XLB_NAT_FILTER` and `XLB_NAT_SRC` only; must not touch the packet or decide a
//! backend.

use aya_ebpf::maps::lpm_trie::Key;
use lb_common::{
    FAMILY_V6, SVC_F_NAT_SOURCES, ServiceValue,
    natsrc::{self, ANY_V6_WORD, LOOKUP_BITS},
};

use super::{
    maps::{NAT_FILTER, NAT_SRC},
    parse::Flow,
};

/// The client of `flow` is listed in `svc`'s `nat_sources`.
#[inline(always)]
pub fn listed(svc: &ServiceValue, flow: &Flow) -> bool {
    if svc.flags & SVC_F_NAT_SOURCES == 0 {
        return false;
    }
    let (word, bit) = natsrc::filter_bit(&flow.saddr, flow.family);
    let hit = NAT_FILTER.get(word).is_some_and(|w| *w & bit != 0)
        || (flow.family == FAMILY_V6 && NAT_FILTER.get(ANY_V6_WORD).is_some_and(|w| *w & 1 != 0));
    if !hit {
        return false;
    }
    let key = Key::new(LOOKUP_BITS, natsrc::data(svc.id, flow.family, &flow.saddr));
    NAT_SRC.get(&key).is_some()
}
