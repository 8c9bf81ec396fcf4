//! Tunnel mode in reconcile: what `XLB_TUN_SRC` holds for a service, which `XLB_EGRESS`
//! entries the tunnel backends need, and when a tunnel backend cannot be used although
//! it is healthy and its next hop resolved (no egress facts, or no address of its family
//! for the default outer source) — and the one rule of the same kind for DSR backends
//! (not behind a gateway).
//!
//! Owns: those three rules (reconcile, `xlb status` and `xlb explain` share them). Must
//! not touch: the maps (apply.rs), where the egress facts come from (the daemon reads
//! them from the kernel: crate::egress).

use std::{collections::BTreeMap, net::IpAddr};

use lb_common::{
    FAMILY_V4, FAMILY_V6, prefix_mask,
    tunnel::{EGRESS_F_V4, EGRESS_F_V6, Egress, TunnelSource},
};

use super::MapOp;
use crate::model::{Forwarding, Link, Prefix, Service, addr_words};

/// The `XLB_TUN_SRC` entry of `svc`: its `tunnel_source`, or all zeros (`family` 0)
/// without one, and for a service that is not in tunnel mode.
pub fn tunnel_source_value(svc: &Service) -> TunnelSource {
    match (svc.forwarding, svc.tunnel_source) {
        (Forwarding::Tunnel, Some(p)) => source_of(p),
        _ => TunnelSource::default(),
    }
}

/// The write of service `id`'s `XLB_TUN_SRC` entry when it changes from `old` (`None`:
/// unknown) to `new`, placed before the service's writes (a prefix: it must be there
/// when the service value's `SVC_F_TUNNEL_SOURCE` flag is; zeros for a service that had
/// no prefix: the probe program reads the entry of every tunnel backend's service) or,
/// when a prefix is dropped, after them (zeros only once the flag is gone).
pub fn source_ops(
    old: Option<TunnelSource>,
    id: u32,
    new: TunnelSource,
) -> (Option<MapOp>, Option<MapOp>) {
    if old == Some(new) {
        return (None, None);
    }
    let op = MapOp::TunnelSource {
        service_id: id,
        value: new,
    };
    let dropped = new.family == 0 && old.is_some_and(|o| o.family != 0);
    if dropped {
        (None, Some(op))
    } else {
        (Some(op), None)
    }
}

/// The map form of a prefix: its network address and its host bits.
pub fn source_of(p: Prefix) -> TunnelSource {
    let (base, family) = addr_words(p.addr);
    let net = prefix_mask(p.len, family);
    let width = if family == FAMILY_V6 { 128 } else { 32 };
    let full = prefix_mask(width, family);
    TunnelSource {
        base,
        host_mask: [0, 1, 2, 3].map(|i| !net[i] & full[i]),
        family,
        prefix_len: p.len,
        _pad: [0; 2],
    }
}

/// The egress facts reconcile judges with: what the daemon observed, else what is
/// programmed (a restarted daemon keeps using what the maps say until it looked).
pub fn known_egress(
    observed: &BTreeMap<u32, Egress>,
    programmed: &BTreeMap<u32, Egress>,
) -> BTreeMap<u32, Egress> {
    let mut all = programmed.clone();
    all.extend(observed.iter().map(|(k, v)| (*k, *v)));
    all
}

/// Why a healthy, resolved backend cannot take traffic ([`blocker`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocker {
    /// Tunnel: its egress interface's MTU and addresses are not read yet.
    EgressUnknown { ifindex: u32 },
    /// Tunnel without `tunnel_source`: the egress interface has no global address of the
    /// backend's family to be the outer source.
    NoOuterSource { ifindex: u32, v6: bool },
    /// DSR: the route to the backend has a gateway. A frame rewritten to the gateway's
    /// MAC reaches a router that sends it back to the balancer (the VIP routes there):
    /// it loops until its TTL runs out.
    DsrViaGateway { gateway: IpAddr, ifindex: u32 },
}

impl Blocker {
    /// The reason for `xlb status` / `xlb explain`, interfaces named by `name_of`.
    pub fn describe(&self, name_of: impl Fn(u32) -> String) -> String {
        match *self {
            Blocker::EgressUnknown { ifindex } => format!(
                "the MTU and addresses of its egress interface ({}) are not known yet",
                name_of(ifindex)
            ),
            Blocker::NoOuterSource { ifindex, v6 } => format!(
                "its egress interface ({}) has no global {} address to be the outer source \
                 of the tunnel: add one, or set the service's tunnel_source",
                name_of(ifindex),
                if v6 { "IPv6" } else { "IPv4" }
            ),
            Blocker::DsrViaGateway { gateway, ifindex } => format!(
                "DSR needs the backend on a directly connected network (route via {gateway} \
                 on {}); use forwarding = \"tunnel\"",
                name_of(ifindex)
            ),
        }
    }
}

/// Why backend `backend` of `svc`, reached through `link` (`gateway`: the gateway of its
/// route, `None` when it is on-link or not known), cannot take traffic although it may
/// be healthy; `None` when it can. Tunnel: no egress facts or no outer source (the data
/// plane would drop its packets, `drop_no_egress`). DSR: a gateway (the packets would
/// loop). Tunnel backends may sit behind a gateway.
pub fn blocker(
    svc: &Service,
    backend: IpAddr,
    link: Option<&Link>,
    gateway: Option<IpAddr>,
    egress: &BTreeMap<u32, Egress>,
) -> Option<Blocker> {
    let link = link?;
    if svc.forwarding == Forwarding::Dsr {
        return gateway.map(|gateway| Blocker::DsrViaGateway {
            gateway,
            ifindex: link.ifindex,
        });
    }
    let ifindex = link.ifindex;
    let Some(e) = egress.get(&ifindex) else {
        return Some(Blocker::EgressUnknown { ifindex });
    };
    if svc.tunnel_source.is_some() {
        return None;
    }
    let flag = if backend.is_ipv4() {
        EGRESS_F_V4
    } else {
        EGRESS_F_V6
    };
    (e.flags & flag == 0).then_some(Blocker::NoOuterSource {
        ifindex,
        v6: backend.is_ipv6(),
    })
}

/// IPv6's minimum link MTU (RFC 8200 §5): every IPv6 path carries 1280-byte packets, and
/// a host ignores a "packet too big" below it (RFC 8201 §4: it keeps sending 1280).
pub const IPV6_MIN_MTU: u32 = 1280;

/// The smallest egress MTU an IPv6 VIP's tunnel needs: 1280 bytes inside the IP6IP6
/// outer header (40 bytes), i.e. 1320.
pub const IPV6_VIP_MIN_EGRESS_MTU: u32 = IPV6_MIN_MTU + lb_common::tunnel::OUTER_V6_LEN;

/// Why the tunnel to a backend of IPv6 service `svc` through `link` cannot carry every
/// packet an IPv6 client may send: its egress MTU (bytes, from `egress`) leaves less than
/// 1280 bytes for the inner packet. The data plane answers such packets with a "packet
/// too big" below 1280, which clients ignore (they keep sending 1280-byte packets), so
/// packets of 1241..=1280 bytes are dropped for good. xlb does not fragment the outer
/// packet (XDP cannot; RFC 2473 §7 leaves it to the tunnel entry point's stack). `None`
/// when the MTU suffices, is not known, or the service is not an IPv6 tunnel service.
pub fn ipv6_mtu_warning(
    svc: &Service,
    link: Option<&Link>,
    egress: &BTreeMap<u32, Egress>,
) -> Option<String> {
    if svc.forwarding != Forwarding::Tunnel || !svc.vip.is_ipv6() {
        return None;
    }
    let ifindex = link?.ifindex;
    let mtu = egress.get(&ifindex)?.mtu;
    (mtu > 0 && mtu < IPV6_VIP_MIN_EGRESS_MTU).then(|| {
        format!(
            "its egress interface (index {ifindex}) has MTU {mtu}: below \
             {IPV6_VIP_MIN_EGRESS_MTU} (IPv6's minimum of {IPV6_MIN_MTU} plus the 40-byte \
             outer header), so clients' packets of {}..={IPV6_MIN_MTU} bytes are dropped \
             (the packet too big they get is below {IPV6_MIN_MTU}, which IPv6 hosts \
             ignore): raise the MTU of the path to the backend to at least \
             {IPV6_VIP_MIN_EGRESS_MTU}",
            mtu.saturating_sub(lb_common::tunnel::OUTER_V6_LEN) + 1
        )
    })
}

/// The `Egress` value of an interface with MTU `mtu` and these first global addresses.
pub fn egress_value(
    mtu: u32,
    v4: Option<std::net::Ipv4Addr>,
    v6: Option<std::net::Ipv6Addr>,
) -> Egress {
    let mut e = Egress {
        mtu,
        ..Egress::default()
    };
    if let Some(a) = v4 {
        e.flags |= EGRESS_F_V4;
        e.v4 = addr_words(IpAddr::V4(a)).0[0];
    }
    if let Some(a) = v6 {
        e.flags |= EGRESS_F_V6;
        e.v6 = addr_words(IpAddr::V6(a)).0;
    }
    e
}

/// The outer source a client gets from `svc` through a backend on `egress` (`None`:
/// none can be chosen; the data plane drops). lb_common's rule, for `xlb explain`.
pub fn outer_source(
    svc: &Service,
    backend: IpAddr,
    client: IpAddr,
    egress: Option<&Egress>,
) -> Option<IpAddr> {
    if svc.forwarding != Forwarding::Tunnel {
        return None;
    }
    let family = if backend.is_ipv4() {
        FAMILY_V4
    } else {
        FAMILY_V6
    };
    let words = match svc.tunnel_source {
        Some(p) => {
            let src = source_of(p);
            let h = lb_common::tunnel::client_hash(&addr_words(client).0);
            lb_common::tunnel::outer_source(&src, h)
        }
        None => {
            let e = egress?;
            match family {
                FAMILY_V4 if e.flags & EGRESS_F_V4 != 0 => [e.v4, 0, 0, 0],
                FAMILY_V6 if e.flags & EGRESS_F_V6 != 0 => e.v6,
                _ => return None,
            }
        }
    };
    Some(crate::model::addr_from_words(&words, family))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;

    #[test]
    fn sources_are_the_prefix_with_host_bits() {
        let s = source_of("10.99.0.0/24".parse().unwrap());
        assert_eq!(s.family, FAMILY_V4);
        assert_eq!(lb_common::addr_to_bytes(&s.host_mask)[..4], [0, 0, 0, 255]);
        let s6 = source_of("2001:db8:99::/64".parse().unwrap());
        assert_eq!(s6.family, FAMILY_V6);
        assert_eq!(s6.host_mask[..2], [0, 0]);
        assert_eq!(s6.host_mask[2..], [u32::MAX, u32::MAX]);
    }

    #[test]
    fn a_tunnel_backend_needs_an_egress_address_of_its_family() {
        let mut svc = Service::new("t", "203.0.113.10".parse().unwrap(), 80, Protocol::Tcp);
        let b: IpAddr = "2001:db8:2::11".parse().unwrap();
        let link = Link {
            mac: [2, 0, 0, 0, 0, 1],
            src_mac: [2, 0, 0, 0, 0, 2],
            ifindex: 7,
        };
        let mut egress = BTreeMap::new();
        // DSR: never blocked here.
        assert_eq!(blocker(&svc, b, Some(&link), None, &egress), None);
        svc.forwarding = Forwarding::Tunnel;
        assert!(
            blocker(&svc, b, Some(&link), None, &egress)
                .unwrap()
                .describe(|i| format!("if{i}"))
                .contains("(if7) are not known yet")
        );
        egress.insert(
            7,
            egress_value(1500, Some("192.0.2.1".parse().unwrap()), None),
        );
        let why = blocker(&svc, b, Some(&link), None, &egress)
            .unwrap()
            .describe(|i| format!("if{i}"));
        assert!(why.contains("no global IPv6 address"), "{why}");
        assert_eq!(
            outer_source(&svc, b, "198.18.0.1".parse().unwrap(), egress.get(&7)),
            None
        );
        egress.insert(
            7,
            egress_value(1500, None, Some("2001:db8:1::1".parse().unwrap())),
        );
        assert_eq!(blocker(&svc, b, Some(&link), None, &egress), None);
        assert_eq!(
            outer_source(&svc, b, "198.18.0.1".parse().unwrap(), egress.get(&7)),
            Some("2001:db8:1::1".parse().unwrap())
        );
        // A tunnel_source needs no egress address, only the entry (its MTU).
        svc.tunnel_source = Some("2001:db8:99::/120".parse().unwrap());
        egress.insert(7, egress_value(1500, None, None));
        assert_eq!(blocker(&svc, b, Some(&link), None, &egress), None);
        let o = outer_source(&svc, b, "198.18.0.1".parse().unwrap(), egress.get(&7)).unwrap();
        assert!(svc.tunnel_source.unwrap().contains(o), "{o}");
    }

    #[test]
    fn a_dsr_backend_behind_a_gateway_is_blocked_a_tunnel_one_is_not() {
        let mut svc = Service::new("d", "203.0.113.10".parse().unwrap(), 80, Protocol::Tcp);
        let b: IpAddr = "10.71.3.11".parse().unwrap();
        let gw: IpAddr = "10.71.2.1".parse().unwrap();
        let link = Link {
            mac: [2, 0, 0, 0, 0, 1],
            src_mac: [2, 0, 0, 0, 0, 2],
            ifindex: 3,
        };
        let egress = BTreeMap::from([(
            3,
            egress_value(1500, Some("10.71.2.2".parse().unwrap()), None),
        )]);
        assert_eq!(blocker(&svc, b, Some(&link), None, &egress), None);
        let why = blocker(&svc, b, Some(&link), Some(gw), &egress).unwrap();
        assert_eq!(
            why.describe(|_| "lbr".into()),
            "DSR needs the backend on a directly connected network (route via 10.71.2.1 on \
             lbr); use forwarding = \"tunnel\""
        );
        svc.forwarding = Forwarding::Tunnel;
        assert_eq!(blocker(&svc, b, Some(&link), Some(gw), &egress), None);
    }

    #[test]
    fn an_ipv6_tunnel_below_1320_bytes_of_egress_mtu_is_warned_about() {
        let mut svc = Service::new("t6", "2001:db8::10".parse().unwrap(), 80, Protocol::Tcp);
        let link = Link {
            mac: [2, 0, 0, 0, 0, 1],
            src_mac: [2, 0, 0, 0, 0, 2],
            ifindex: 7,
        };
        let v6 = Some("2001:db8:1::1".parse().unwrap());
        let at = |mtu| BTreeMap::from([(7, egress_value(mtu, None, v6))]);
        // DSR: the backend answers; xlb adds no header.
        assert_eq!(ipv6_mtu_warning(&svc, Some(&link), &at(1280)), None);
        svc.forwarding = Forwarding::Tunnel;
        let why = ipv6_mtu_warning(&svc, Some(&link), &at(1280)).expect("1280 < 1320");
        assert!(
            why.contains("MTU 1280") && why.contains("1241..=1280"),
            "{why}"
        );
        assert!(ipv6_mtu_warning(&svc, Some(&link), &at(1319)).is_some());
        assert_eq!(ipv6_mtu_warning(&svc, Some(&link), &at(1320)), None);
        assert_eq!(ipv6_mtu_warning(&svc, Some(&link), &at(1500)), None);
        // Not known (no link, no facts, MTU 0): nothing to say yet.
        assert_eq!(ipv6_mtu_warning(&svc, None, &at(1280)), None);
        assert_eq!(ipv6_mtu_warning(&svc, Some(&link), &BTreeMap::new()), None);
        assert_eq!(ipv6_mtu_warning(&svc, Some(&link), &at(0)), None);
        // An IPv4 VIP (IPIP or 4in6): IPv4's minimum is 68; a frag-needed of any size works.
        let mut v4 = Service::new("t4", "203.0.113.10".parse().unwrap(), 80, Protocol::Tcp);
        v4.forwarding = Forwarding::Tunnel;
        assert_eq!(ipv6_mtu_warning(&v4, Some(&link), &at(1280)), None);
    }
}
