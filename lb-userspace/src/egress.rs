//! Egress interfaces of tunnel backends, as the kernel has them: the MTU (an
//! encapsulated packet longer than it is not sent: the client is told the inner MTU) and
//! the first global IPv4 and IPv6 address (the default outer source of the tunnel, and
//! the address health probes of tunnel backends are sent from), and the host's global
//! addresses (the probes' source when the egress interface has none of the VIP's family).
//!
//! Read over rtnetlink (`RTM_GETLINK` for the MTU, an `RTM_GETADDR` dump filtered to the
//! interface), in the calling thread's network namespace like every query of
//! [`crate::neigh`]; the neighbour task reads the interfaces of the resolved backends
//! once a second, so an MTU or address change reaches `XLB_EGRESS` within a second.
//!
//! Owns: reading those facts. Must not touch: the maps (reconcile decides what of it is
//! programmed), which interfaces matter (the caller's).

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use futures::TryStreamExt as _;
use lb_common::tunnel::Egress;
use netlink_packet_route::{
    address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope},
    link::LinkAttribute,
};

use crate::neigh::{NeighError, Resolver, first, io_error, timed_out};

/// One interface's facts, as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EgressFacts {
    pub mtu: u32,
    /// The first global (scope universe) IPv4 address.
    pub v4: Option<Ipv4Addr>,
    /// The first global IPv6 address that can be used as a source (not tentative,
    /// deprecated or failed duplicate detection).
    pub v6: Option<Ipv6Addr>,
}

impl EgressFacts {
    /// The `XLB_EGRESS` value.
    pub fn value(&self) -> Egress {
        crate::reconcile::tunnel::egress_value(self.mtu, self.v4, self.v6)
    }

    /// The address of `family_of`'s family (the first choice of probe source for a VIP of
    /// that family).
    pub fn address_like(&self, family_of: IpAddr) -> Option<IpAddr> {
        match family_of {
            IpAddr::V4(_) => self.v4.map(IpAddr::V4),
            IpAddr::V6(_) => self.v6.map(IpAddr::V6),
        }
    }
}

/// The MTU and first global addresses of interface `ifindex`.
pub async fn read(resolver: &Resolver, ifindex: u32) -> Result<EgressFacts, NeighError> {
    let err = |source| NeighError::Link { ifindex, source };
    let handle = resolver.handle();
    let link = first(handle.link().get().match_index(ifindex).execute())
        .await
        .map_err(err)?
        .ok_or_else(|| err(io::Error::other("the kernel sent no link")))?;
    let mtu = link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
        .ok_or_else(|| err(io::Error::other("the link has no MTU attribute")))?;
    let dump = handle
        .address()
        .get()
        .set_link_index_filter(ifindex)
        .execute()
        .map_err(io_error)
        .try_collect::<Vec<_>>();
    let addresses = tokio::time::timeout(std::time::Duration::from_secs(5), dump)
        .await
        .map_err(|_| err(timed_out()))?
        .map_err(err)?;
    let usable: Vec<IpAddr> = addresses.iter().filter_map(source_address).collect();
    Ok(EgressFacts {
        mtu,
        v4: usable.iter().find_map(|a| match a {
            IpAddr::V4(a) => Some(*a),
            IpAddr::V6(_) => None,
        }),
        v6: usable.iter().find_map(|a| match a {
            IpAddr::V6(a) => Some(*a),
            IpAddr::V4(_) => None,
        }),
    })
}

/// The global addresses of the host usable as a source (every interface, in the
/// kernel's order: by interface index, so `lo`'s first): where a tunnel probe comes
/// from when its egress interface has no address of the VIP's family.
pub async fn host_addresses(resolver: &Resolver) -> Result<Vec<IpAddr>, NeighError> {
    let dump = resolver
        .handle()
        .address()
        .get()
        .execute()
        .map_err(io_error)
        .try_collect::<Vec<_>>();
    let err = |source| NeighError::Link { ifindex: 0, source };
    let addresses = tokio::time::timeout(std::time::Duration::from_secs(5), dump)
        .await
        .map_err(|_| err(timed_out()))?
        .map_err(err)?;
    Ok(addresses.iter().filter_map(source_address).collect())
}

/// The address of `m` when it is global and usable as a source.
fn source_address(m: &AddressMessage) -> Option<IpAddr> {
    if m.header.scope != AddressScope::Universe {
        return None;
    }
    let mut local = None;
    let mut address = None;
    let mut flags = AddressFlags::empty();
    for a in &m.attributes {
        match a {
            AddressAttribute::Local(a) => local = Some(*a),
            AddressAttribute::Address(a) => address = Some(*a),
            AddressAttribute::Flags(f) => flags = *f,
            _ => {}
        }
    }
    let unusable = AddressFlags::Tentative | AddressFlags::Dadfailed | AddressFlags::Deprecated;
    if flags.intersects(unusable) {
        return None;
    }
    // IPv4 point-to-point: IFA_LOCAL is ours, IFA_ADDRESS the peer's.
    local.or(address)
}
