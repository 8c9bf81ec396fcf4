//! Tunnel mode in reconcile: what `XLB_TUN_SRC` holds for a service, which `XLB_EGRESS`
//! entries the tunnel backends need, and when a tunnel backend cannot be used although
//! it is healthy and its next hop resolved (no egress facts, or no address of its family
//! for the default outer source).
//!
//! Owns: those three rules (reconcile, `xlb status` and `xlb explain` share them). Must
//! not touch: the maps (apply.rs), where the egress facts come from (the daemon reads
//! them from the kernel: crate::egress).

use std::{collections::BTreeMap, net::IpAddr};

use lb_common::{
    FAMILY_V4, FAMILY_V6, prefix_mask,
    tunnel::{EGRESS_F_V4, EGRESS_F_V6, Egress, TunnelSource},
};

use crate::model::{Forwarding, Link, Prefix, Service, addr_words};

/// The `XLB_TUN_SRC` entry of `svc`: its `tunnel_source`, or all zeros (`family` 0)
/// without one, and for a service that is not in tunnel mode.
pub fn tunnel_source_value(svc: &Service) -> TunnelSource {
    match (svc.forwarding, svc.tunnel_source) {
        (Forwarding::Tunnel, Some(p)) => source_of(p),
        _ => TunnelSource::default(),
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

/// Why a backend of tunnel service `svc` reached through `link` cannot take traffic
/// although it may be healthy; `None` when it can (and for every non-tunnel service).
/// The data plane would drop its packets (`drop_no_egress`) otherwise.
pub fn blocker(
    svc: &Service,
    backend: IpAddr,
    link: Option<&Link>,
    egress: &BTreeMap<u32, Egress>,
) -> Option<String> {
    if svc.forwarding != Forwarding::Tunnel {
        return None;
    }
    let link = link?;
    let Some(e) = egress.get(&link.ifindex) else {
        return Some(format!(
            "the MTU and addresses of its egress interface (index {}) are not known yet",
            link.ifindex
        ));
    };
    if svc.tunnel_source.is_some() {
        return None;
    }
    let (flag, family) = if backend.is_ipv4() {
        (EGRESS_F_V4, "IPv4")
    } else {
        (EGRESS_F_V6, "IPv6")
    };
    (e.flags & flag == 0).then(|| {
        format!(
            "its egress interface (index {}) has no global {family} address to be the outer \
             source of the tunnel: add one, or set the service's tunnel_source",
            link.ifindex
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
        assert_eq!(blocker(&svc, b, Some(&link), &egress), None);
        svc.forwarding = Forwarding::Tunnel;
        assert!(
            blocker(&svc, b, Some(&link), &egress)
                .unwrap()
                .contains("not known yet")
        );
        egress.insert(
            7,
            egress_value(1500, Some("192.0.2.1".parse().unwrap()), None),
        );
        let why = blocker(&svc, b, Some(&link), &egress).unwrap();
        assert!(why.contains("no global IPv6 address"), "{why}");
        assert_eq!(
            outer_source(&svc, b, "198.18.0.1".parse().unwrap(), egress.get(&7)),
            None
        );
        egress.insert(
            7,
            egress_value(1500, None, Some("2001:db8:1::1".parse().unwrap())),
        );
        assert_eq!(blocker(&svc, b, Some(&link), &egress), None);
        assert_eq!(
            outer_source(&svc, b, "198.18.0.1".parse().unwrap(), egress.get(&7)),
            Some("2001:db8:1::1".parse().unwrap())
        );
        // A tunnel_source needs no egress address, only the entry (its MTU).
        svc.tunnel_source = Some("2001:db8:99::/120".parse().unwrap());
        egress.insert(7, egress_value(1500, None, None));
        assert_eq!(blocker(&svc, b, Some(&link), &egress), None);
        let o = outer_source(&svc, b, "198.18.0.1".parse().unwrap(), egress.get(&7)).unwrap();
        assert!(svc.tunnel_source.unwrap().contains(o), "{o}");
    }
}
