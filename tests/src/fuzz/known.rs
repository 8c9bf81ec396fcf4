//! Data-plane faults the fuzzer found, reported to the data plane's owner and not fixed
//! yet. The oracle stays strict: these frames still fail, `cargo xtask fuzz` lists them
//! under their own heading and exits 1. Only the fuzz tier's short run tolerates them, and
//! it fails as soon as one stops reproducing, so the entry goes away with the fix.
//!
//! Each entry matches narrowly (the exact wrong outcome for the exact input class), so a
//! different fault in the same area still counts as a new failure.

use lb_common::Stat;

use super::oracle::{Expect, Parsed, parse};
use crate::harness::XdpAction;

/// One reported fault.
pub struct KnownFault {
    /// Short name, used as the report's key.
    pub name: &'static str,
    /// Expected vs actual, in words.
    pub description: &'static str,
    matches: fn(frame: &[u8], expect: &Expect, action: u32, counted: Option<Stat>) -> bool,
}

impl KnownFault {
    /// Whether a rejected run is this fault.
    pub fn matches(
        &self,
        frame: &[u8],
        expect: &Expect,
        action: u32,
        counted: Option<Stat>,
    ) -> bool {
        (self.matches)(frame, expect, action, counted)
    }
}

pub const KNOWN: &[KnownFault] = &[KnownFault {
    name: "ipv6-experimental-ext-headers",
    description: "IPv6 to a VIP whose next header is 253 or 254 (the experimental extension \
                  headers of IANA's registry, RFC 3692/4727/7045): want XDP_DROP with \
                  drop_ipv6_ext_header like every other extension header; the program \
                  passes it with pass_not_service (lb-ebpf IPV6_EXT_HEADERS lacks 253, 254)",
    matches: |frame, expect, action, counted| {
        *expect == Expect::Drop(Stat::DropIpv6ExtHeader)
            && matches!(parse(frame), Parsed::Ip(ip) if ip.proto == 253 || ip.proto == 254)
            && action == XdpAction::Pass as u32
            && counted == Some(Stat::PassNotService)
    },
}];

/// The known fault a rejected run is, if any.
pub fn find(
    frame: &[u8],
    expect: &Expect,
    action: u32,
    counted: Option<Stat>,
) -> Option<&'static KnownFault> {
    KNOWN
        .iter()
        .find(|k| k.matches(frame, expect, action, counted))
}
