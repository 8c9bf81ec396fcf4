//! Backend link addresses from the kernel's routing and neighbour tables, over rtnetlink.
//!
//! In DSR mode the XDP program rewrites only the Ethernet header, so for every backend the
//! controller needs the egress interface, that interface's MAC and the MAC of the next hop
//! (the backend itself when it is on-link, else the gateway of its route). All of it comes
//! from the kernel, the same way `ip route get` and `ip neigh` would get it, never from
//! parsing command output:
//!
//! - [`Resolver::route`]: `RTM_GETROUTE` for the backend address (a real FIB lookup, not a
//!   dump) gives the egress ifindex and the gateway, if any.
//! - [`Resolver::link`]: `RTM_GETLINK` gives the interface name and MAC.
//! - [`Resolver::neighbour`]: `RTM_GETNEIGH` for exactly (next hop, ifindex) gives the
//!   neighbour entry; only usable states with a non-zero Ethernet address count.
//! - [`Resolver::trigger`]: makes the kernel resolve a missing neighbour.
//! - [`Resolver::resolve`]: all of it for one backend, as a [`Resolution`] the daemon can
//!   act on and report. Only [`Resolution::Resolved`] carries a [`Link`]: a backend whose
//!   neighbour is unknown is kept out of the table instead of being sent to a zero MAC.
//! - [`subscribe_neighbours`]: a stream of neighbour changes (`RTNLGRP_NEIGH`), so the
//!   daemon notices a resolved, changed or failed neighbour without waiting for its poll.
//!
//! Network namespaces: every socket here (the netlink connections and the UDP sockets
//! used by [`Resolver::trigger`]) is created in [`Resolver::new`] / [`subscribe_neighbours`],
//! on the calling thread, and therefore belongs to that thread's network namespace for its
//! whole life, whichever runtime thread later polls it. A caller that `setns()`es into a
//! namespace before creating the resolver gets answers about that namespace only.

use std::{
    fmt, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket},
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use futures::{Stream, StreamExt, TryStreamExt, channel::mpsc::UnboundedReceiver};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::{LinkAttribute, LinkLayerType},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage},
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteType, RouteVia},
};
use rtnetlink::{
    Handle, MulticastGroup,
    packet_core::{NLM_F_REQUEST, NetlinkMessage, NetlinkPayload},
    sys::AsyncSocket,
};

use crate::model::Link;

// Neighbour states (include/uapi/linux/neighbour.h). `NeighbourState` is an enum of single
// states, while the kernel field is a bit set, so tests are done on the raw bits.
const NUD_INCOMPLETE: u16 = 0x01;
const NUD_REACHABLE: u16 = 0x02;
const NUD_STALE: u16 = 0x04;
const NUD_DELAY: u16 = 0x08;
const NUD_PROBE: u16 = 0x10;
const NUD_FAILED: u16 = 0x20;
const NUD_NOARP: u16 = 0x40;
const NUD_PERMANENT: u16 = 0x80;
/// The kernel's `NUD_VALID`: the entry has a link-layer address that may be used.
const NUD_VALID: u16 =
    NUD_PERMANENT | NUD_NOARP | NUD_REACHABLE | NUD_PROBE | NUD_STALE | NUD_DELAY;

/// The UDP discard port: what [`Resolver::trigger`] sends to.
const DISCARD_PORT: u16 = 9;
/// Upper bound for one netlink request; the kernel answers these at once, so hitting it
/// means the connection is broken.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Receive buffer asked for the multicast socket, so that a burst of neighbour changes
/// (a whole subnet flapping) does not overrun it.
const EVENT_RCVBUF: libc::c_int = 1 << 20;

/// Why a netlink query failed. Each message names the address or interface concerned.
#[derive(Debug, thiserror::Error)]
pub enum NeighError {
    #[error("the neighbour resolver needs a tokio runtime (create it inside one)")]
    NoRuntime,
    #[error("cannot open a netlink route socket: {0}")]
    Socket(#[source] io::Error),
    #[error("route lookup for {addr} failed: {source}")]
    Route {
        addr: IpAddr,
        #[source]
        source: io::Error,
    },
    #[error("{addr} has a {kind} route, not a unicast one{hint}")]
    NotUnicast {
        addr: IpAddr,
        kind: String,
        hint: &'static str,
    },
    #[error("the route to {addr} has no output interface")]
    NoOutputInterface { addr: IpAddr },
    #[error("reading interface {ifindex} failed: {source}")]
    Link {
        ifindex: u32,
        #[source]
        source: io::Error,
    },
    #[error("interface {name} (index {ifindex}) is not Ethernet ({detail})")]
    NotEthernet {
        ifindex: u32,
        name: String,
        detail: String,
    },
    #[error("reading the neighbour entry of {addr} on interface {ifindex} failed: {source}")]
    Neighbour {
        addr: IpAddr,
        ifindex: u32,
        #[source]
        source: io::Error,
    },
}

/// Where the kernel sends packets for an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// Egress interface.
    pub ifindex: u32,
    /// The gateway when the route has one, else the address itself: whose MAC to use.
    pub next_hop: IpAddr,
}

/// An egress interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub ifindex: u32,
    pub name: String,
    /// Its own (source) MAC.
    pub mac: [u8; 6],
}

/// A neighbour table entry as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeighbourEntry {
    /// `NUD_*` bits.
    pub state: u16,
    /// The link-layer address attribute, when the entry has one (any length).
    pub lladdr: Option<Vec<u8>>,
}

impl NeighbourEntry {
    /// The MAC to forward to: only for a usable state and a non-zero 6-byte address.
    pub fn usable_mac(&self) -> Option<[u8; 6]> {
        usable_mac(self.state, self.lladdr.as_deref())
    }

    /// The state as `ip neigh` spells it (`REACHABLE`, `INCOMPLETE|...`).
    pub fn state_name(&self) -> String {
        state_name(self.state)
    }
}

/// The outcome of resolving one backend, for the table and for `xlb status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Everything the XDP program needs.
    Resolved {
        link: Link,
        ifname: String,
        next_hop: IpAddr,
    },
    /// The route is known but the next hop's MAC is not (yet): keep the backend out of
    /// the table. Resolution has been triggered.
    Unresolved {
        ifindex: u32,
        /// Empty when the interface itself could not be read (`reason` says why).
        ifname: String,
        next_hop: IpAddr,
        reason: String,
        /// The kernel gave up resolving it (`NUD_FAILED`): not a transient. (A missing or
        /// INCOMPLETE entry is one: the kernel is still asking.)
        failed: bool,
    },
    /// No usable route (unreachable, local address, a netlink failure...).
    NoRoute { reason: String },
}

impl Resolution {
    /// The link when resolved.
    pub fn link(&self) -> Option<Link> {
        match self {
            Resolution::Resolved { link, .. } => Some(*link),
            _ => None,
        }
    }

    /// The gateway of the route to `addr` when it is resolved through one (`None`:
    /// on-link, or not resolved).
    pub fn gateway(&self, addr: IpAddr) -> Option<IpAddr> {
        match self {
            Resolution::Resolved { next_hop, .. } if *next_hop != addr => Some(*next_hop),
            _ => None,
        }
    }

    pub fn is_resolved(&self) -> bool {
        matches!(self, Resolution::Resolved { .. })
    }
}

impl fmt::Display for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resolution::Resolved {
                link,
                ifname,
                next_hop,
            } => write!(
                f,
                "via {next_hop} dev {ifname} lladdr {} (from {})",
                format_mac(&link.mac),
                format_mac(&link.src_mac)
            ),
            Resolution::Unresolved {
                ifindex,
                ifname,
                next_hop,
                reason,
                ..
            } => {
                if ifname.is_empty() {
                    write!(f, "unresolved: via {next_hop} ifindex {ifindex}: {reason}")
                } else {
                    write!(f, "unresolved: via {next_hop} dev {ifname}: {reason}")
                }
            }
            Resolution::NoRoute { reason } => write!(f, "no route: {reason}"),
        }
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, g] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
}

/// Routing, link and neighbour queries on one netlink connection, plus the sockets that
/// trigger resolution. Not `Clone`: share it behind an `Arc`. Dropping it closes the
/// connection.
pub struct Resolver {
    handle: Handle,
    connection: tokio::task::JoinHandle<()>,
    udp4: Option<UdpSocket>,
    udp6: Option<UdpSocket>,
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl Resolver {
    /// Opens the netlink connection and spawns it on the current tokio runtime. All sockets
    /// are created here, in the calling thread's network namespace.
    pub fn new() -> Result<Self, NeighError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NeighError::NoRuntime)?;
        let (connection, handle, _unsolicited) =
            rtnetlink::new_connection().map_err(NeighError::Socket)?;
        // An unconnected UDP socket per family, bound to nothing in particular; a family
        // the namespace lacks (IPv6 disabled) only loses triggering for that family.
        let udp4 = trigger_socket(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
        let udp6 = trigger_socket(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)));
        let connection = runtime.spawn(connection);
        Ok(Self {
            handle,
            connection,
            udp4,
            udp6,
        })
    }

    /// The netlink handle (for the other rtnetlink queries of the crate: egress.rs).
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Route lookup for `addr` (`RTM_GETROUTE`, like `ip route get ADDR`): the egress
    /// interface and the next hop (the gateway if the route has one, else `addr`). Only
    /// unicast routes qualify: a local, broadcast or multicast address is an error, as is
    /// an unreachable one (the kernel's error is in the message).
    pub async fn route(&self, addr: IpAddr) -> Result<Route, NeighError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family(addr);
        msg.header.destination_prefix_length = if addr.is_ipv4() { 32 } else { 128 };
        msg.attributes
            .push(RouteAttribute::Destination(addr.into()));
        // With a destination attribute rtnetlink sends a plain request, not a dump: the
        // kernel answers with the single route it would use.
        let reply = first(self.handle.route().get(msg).execute())
            .await
            .map_err(|source| NeighError::Route { addr, source })?
            .ok_or_else(|| NeighError::Route {
                addr,
                source: io::Error::other("the kernel sent no route"),
            })?;
        if reply.header.kind != RouteType::Unicast {
            let hint = match reply.header.kind {
                RouteType::Local => " (it is an address of this host)",
                _ => "",
            };
            return Err(NeighError::NotUnicast {
                addr,
                kind: format!("{:?}", reply.header.kind).to_lowercase(),
                hint,
            });
        }
        let mut ifindex = None;
        let mut next_hop = addr;
        for attr in &reply.attributes {
            match attr {
                RouteAttribute::Oif(i) => ifindex = Some(*i),
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => next_hop = IpAddr::V4(*g),
                RouteAttribute::Gateway(RouteAddress::Inet6(g)) => next_hop = IpAddr::V6(*g),
                // An IPv4 route with an IPv6 next hop (RFC 5549): the MAC is in the ND table.
                RouteAttribute::Via(RouteVia::Inet6(g)) => next_hop = IpAddr::V6(*g),
                RouteAttribute::Via(RouteVia::Inet(g)) => next_hop = IpAddr::V4(*g),
                _ => {}
            }
        }
        let ifindex = ifindex.ok_or(NeighError::NoOutputInterface { addr })?;
        Ok(Route { ifindex, next_hop })
    }

    /// The interface's name and own MAC (`RTM_GETLINK`, `IFLA_ADDRESS`). An interface
    /// without a non-zero 6-byte address cannot carry rewritten Ethernet frames: error.
    pub async fn link(&self, ifindex: u32) -> Result<LinkInfo, NeighError> {
        let reply = first(self.handle.link().get().match_index(ifindex).execute())
            .await
            .map_err(|source| NeighError::Link { ifindex, source })?
            .ok_or_else(|| NeighError::Link {
                ifindex,
                source: io::Error::other("the kernel sent no link"),
            })?;
        let mut name = String::new();
        let mut address = None;
        for attr in &reply.attributes {
            match attr {
                LinkAttribute::IfName(n) => name = n.clone(),
                LinkAttribute::Address(a) => address = Some(a.clone()),
                _ => {}
            }
        }
        let kind = reply.header.link_layer_type;
        let not_ethernet = |detail: String| NeighError::NotEthernet {
            ifindex,
            name: name.clone(),
            detail,
        };
        if kind != LinkLayerType::Ether {
            return Err(not_ethernet(format!("link type {kind}")));
        }
        let mac = match address.as_deref().map(<[u8; 6]>::try_from) {
            Some(Ok(mac)) if mac != [0; 6] => mac,
            Some(Ok(_)) => return Err(not_ethernet("its MAC is all zeros".into())),
            Some(Err(_)) => {
                return Err(not_ethernet(format!(
                    "its address has {} bytes",
                    address.map_or(0, |a| a.len())
                )));
            }
            None => return Err(not_ethernet("it has no link-layer address".into())),
        };
        Ok(LinkInfo { ifindex, name, mac })
    }

    /// The MAC of `next_hop` on `ifindex` when its neighbour entry is usable (REACHABLE,
    /// STALE, DELAY, PROBE, PERMANENT or NOARP, with a non-zero Ethernet address); `None`
    /// when there is no entry, it is INCOMPLETE or FAILED, or its address is all zeros.
    pub async fn neighbour(
        &self,
        next_hop: IpAddr,
        ifindex: u32,
    ) -> Result<Option<[u8; 6]>, NeighError> {
        Ok(self
            .neighbour_entry(next_hop, ifindex)
            .await?
            .and_then(|e| e.usable_mac()))
    }

    /// The raw neighbour entry for (`next_hop`, `ifindex`), `None` when there is none.
    ///
    /// Asks for that one entry (`RTM_GETNEIGH` with `NDA_DST`, kernel ≥ 4.20) rather than
    /// dumping the table, which on a busy host has thousands of entries and is polled per
    /// backend every second. Falls back to a filtered dump if the kernel refuses.
    pub async fn neighbour_entry(
        &self,
        next_hop: IpAddr,
        ifindex: u32,
    ) -> Result<Option<NeighbourEntry>, NeighError> {
        let err = |source| NeighError::Neighbour {
            addr: next_hop,
            ifindex,
            source,
        };
        match self.neighbour_get(next_hop, ifindex).await {
            Ok(found) => Ok(found),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) => {
                log::debug!("RTM_GETNEIGH for {next_hop} refused ({e}); dumping the table");
                self.neighbour_dump(next_hop, ifindex).await.map_err(err)
            }
            Err(e) => Err(err(e)),
        }
    }

    async fn neighbour_get(
        &self,
        next_hop: IpAddr,
        ifindex: u32,
    ) -> io::Result<Option<NeighbourEntry>> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family(next_hop);
        msg.header.ifindex = ifindex;
        msg.attributes
            .push(NeighbourAttribute::Destination(neighbour_address(next_hop)));
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNeighbour(msg));
        req.header.flags = NLM_F_REQUEST;
        let responses = self.handle.clone().request(req).map_err(io_error)?;
        let replies = responses.map(|reply| {
            let (header, payload) = reply.into_parts();
            match payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(m)) => Ok(m),
                NetlinkPayload::Error(e) => Err(rtnetlink::Error::NetlinkError(e)),
                other => Err(rtnetlink::Error::UnexpectedMessage(NetlinkMessage::new(
                    header, other,
                ))),
            }
        });
        Ok(first(replies)
            .await?
            .map(|m| entry_of(&m))
            .filter(|(_, addr, _)| *addr == Some(next_hop))
            .map(|(_, _, entry)| entry))
    }

    async fn neighbour_dump(
        &self,
        next_hop: IpAddr,
        ifindex: u32,
    ) -> io::Result<Option<NeighbourEntry>> {
        let dump = self
            .handle
            .neighbours()
            .get()
            .set_address_family(family(next_hop))
            .execute()
            .map_err(io_error)
            .try_collect::<Vec<_>>();
        let all = tokio::time::timeout(REQUEST_TIMEOUT, dump)
            .await
            .map_err(|_| timed_out())??;
        Ok(all.iter().find_map(|m| {
            let (index, addr, entry) = entry_of(m);
            (index == ifindex && addr == Some(next_hop)).then_some(entry)
        }))
    }

    /// Makes the kernel resolve `next_hop` (start ARP or neighbour discovery) by sending
    /// it one empty UDP datagram to the discard port (9). For a link-local IPv6 next hop
    /// use [`Resolver::trigger_via`], which can say which interface it is on.
    ///
    /// Why a datagram: the neighbour subsystem resolves on demand, when a packet needs the
    /// entry. A datagram sent through the normal output path uses the same route and the
    /// same (next hop, interface) entry the kernel would, moves a missing or FAILED entry
    /// to INCOMPLETE and broadcasts a request (a STALE one goes to DELAY/PROBE and is
    /// re-confirmed by unicast), and needs no privilege. XDP-forwarded traffic never does
    /// this: it bypasses the stack, so the kernel would otherwise never learn or refresh
    /// a backend's MAC. (Alternatives: `RTM_NEWNEIGH` with `NTF_USE` does the same without
    /// a packet but needs CAP_NET_ADMIN and creates the entry itself; `NTF_MANAGED`
    /// entries, kernel ≥ 5.16, are kept resolved by the kernel but must be removed by us.)
    /// The datagram itself is queued until the neighbour answers, then reaches the next
    /// hop's port 9, where it is discarded or answered with an ICMP error, both harmless.
    ///
    /// Never blocks (non-blocking socket); failures are logged, not returned.
    pub async fn trigger(&self, next_hop: IpAddr) {
        self.trigger_via(next_hop, 0).await
    }

    /// [`Resolver::trigger`], with the interface the next hop is on (used as the scope of
    /// a link-local IPv6 address; `0` = let the routing table decide).
    pub async fn trigger_via(&self, next_hop: IpAddr, ifindex: u32) {
        let (socket, dest) = match next_hop {
            IpAddr::V4(a) => (
                self.udp4.as_ref(),
                SocketAddr::V4(SocketAddrV4::new(a, DISCARD_PORT)),
            ),
            IpAddr::V6(a) => {
                let link_local = a.segments()[0] & 0xffc0 == 0xfe80;
                let scope = if link_local { ifindex } else { 0 };
                (
                    self.udp6.as_ref(),
                    SocketAddr::V6(SocketAddrV6::new(a, DISCARD_PORT, 0, scope)),
                )
            }
        };
        let Some(socket) = socket else {
            log::warn!(
                "cannot trigger neighbour resolution of {next_hop}: no socket for its family"
            );
            return;
        };
        match socket.send_to(&[], dest) {
            Ok(_) => log::debug!("triggered neighbour resolution of {next_hop}"),
            Err(e) => log::warn!("triggering neighbour resolution of {next_hop} failed: {e}"),
        }
    }

    /// Route, link and neighbour for a backend. When the neighbour is not usable the
    /// resolution is triggered and [`Resolution::Unresolved`] says why; the caller polls
    /// again (or follows [`subscribe_neighbours`]). A usable but STALE entry is also
    /// refreshed (the kernel re-confirms it by unicast), because forwarded traffic never
    /// confirms it: without this a backend whose MAC changed would keep the old one.
    pub async fn resolve(&self, backend: IpAddr) -> Resolution {
        let route = match self.route(backend).await {
            Ok(r) => r,
            Err(e) => {
                return Resolution::NoRoute {
                    reason: e.to_string(),
                };
            }
        };
        let Route { ifindex, next_hop } = route;
        let link = match self.link(ifindex).await {
            Ok(l) => l,
            Err(e) => {
                let ifname = match &e {
                    NeighError::NotEthernet { name, .. } => name.clone(),
                    _ => String::new(),
                };
                return Resolution::Unresolved {
                    ifindex,
                    ifname,
                    next_hop,
                    reason: e.to_string(),
                    failed: false,
                };
            }
        };
        let unresolved = |reason: String, failed: bool| Resolution::Unresolved {
            ifindex,
            ifname: link.name.clone(),
            next_hop,
            reason,
            failed,
        };
        let entry = match self.neighbour_entry(next_hop, ifindex).await {
            Ok(e) => e,
            Err(e) => return unresolved(e.to_string(), false),
        };
        match entry
            .as_ref()
            .and_then(|e| e.usable_mac().map(|mac| (e, mac)))
        {
            Some((e, mac)) => {
                if e.state & NUD_STALE != 0 {
                    self.trigger_via(next_hop, ifindex).await;
                }
                Resolution::Resolved {
                    link: Link {
                        mac,
                        src_mac: link.mac,
                        ifindex,
                    },
                    ifname: link.name.clone(),
                    next_hop,
                }
            }
            None => {
                let reason = unresolved_reason(next_hop, entry.as_ref());
                let failed = entry.as_ref().is_some_and(|e| e.state & NUD_FAILED != 0);
                // A NOARP or PERMANENT entry with a zero or non-MAC address never
                // changes through traffic (only an admin fixes it): no datagram for it.
                // Missing, INCOMPLETE and FAILED entries are (re)resolved by one.
                if entry
                    .as_ref()
                    .is_none_or(|e| e.state & (NUD_NOARP | NUD_PERMANENT) == 0)
                {
                    self.trigger_via(next_hop, ifindex).await;
                }
                unresolved(reason, failed)
            }
        }
    }
}

/// A change in the kernel's neighbour table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeighEvent {
    pub ifindex: u32,
    pub addr: IpAddr,
    /// The usable MAC, or `None` when the entry was deleted or became unusable
    /// (INCOMPLETE, FAILED, zero address).
    pub mac: Option<[u8; 6]>,
}

/// Follows neighbour changes: a separate netlink connection bound to the `RTNLGRP_NEIGH`
/// multicast group (rtnetlink's `new_multicast_connection`), spawned on the current tokio
/// runtime, in the calling thread's network namespace. Only IPv4/IPv6 entries are
/// reported (bridge FDB and proxy entries use the same group and are skipped).
///
/// Events can be lost if the socket overruns (logged as a warning): the daemon's periodic
/// poll is what makes the state right again; the stream only makes it quick. The stream
/// ends if the socket fails; subscribe again. Dropping the stream closes the connection.
pub fn subscribe_neighbours() -> Result<NeighbourEvents, NeighError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| NeighError::NoRuntime)?;
    let (mut connection, _handle, messages) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Neigh])
            .map_err(NeighError::Socket)?;
    if let Err(e) = connection
        .socket_mut()
        .socket_mut()
        .set_rx_buf_sz(EVENT_RCVBUF)
    {
        log::debug!("enlarging the neighbour event socket buffer failed: {e}");
    }
    // `_handle` is dropped: the connection then only forwards multicast messages, and
    // ends when they can no longer be delivered (or is aborted when the stream drops).
    let task = runtime.spawn(connection);
    Ok(NeighbourEvents { messages, task })
}

/// The stream returned by [`subscribe_neighbours`].
pub struct NeighbourEvents {
    messages: UnboundedReceiver<(
        NetlinkMessage<RouteNetlinkMessage>,
        rtnetlink::sys::SocketAddr,
    )>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for NeighbourEvents {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stream for NeighbourEvents {
    type Item = NeighEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<NeighEvent>> {
        loop {
            match self.messages.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some((msg, _))) => {
                    if let Some(event) = event_of(msg) {
                        return Poll::Ready(Some(event));
                    }
                }
            }
        }
    }
}

fn event_of(msg: NetlinkMessage<RouteNetlinkMessage>) -> Option<NeighEvent> {
    let (m, deleted) = match msg.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(m)) => (m, false),
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelNeighbour(m)) => (m, true),
        NetlinkPayload::Overrun(_) => {
            log::warn!("neighbour event socket overrun: changes were lost until the next poll");
            return None;
        }
        _ => return None,
    };
    if !matches!(m.header.family, AddressFamily::Inet | AddressFamily::Inet6)
        || m.header.flags.contains(NeighbourFlags::Proxy)
    {
        return None;
    }
    let (ifindex, addr, entry) = entry_of(&m);
    Some(NeighEvent {
        ifindex,
        addr: addr?,
        mac: if deleted { None } else { entry.usable_mac() },
    })
}

/// A dedicated UDP socket for [`Resolver::trigger`], created now so that it lives in the
/// creator's network namespace.
fn trigger_socket(bind: SocketAddr) -> Option<UdpSocket> {
    let socket = UdpSocket::bind(bind).and_then(|s| s.set_nonblocking(true).map(|()| s));
    match socket {
        Ok(s) => Some(s),
        Err(e) => {
            log::debug!("no UDP socket on {bind} for neighbour triggering: {e}");
            None
        }
    }
}

fn family(addr: IpAddr) -> AddressFamily {
    match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn neighbour_address(addr: IpAddr) -> NeighbourAddress {
    match addr {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    }
}

/// (ifindex, destination, entry) of a neighbour message.
fn entry_of(m: &NeighbourMessage) -> (u32, Option<IpAddr>, NeighbourEntry) {
    let mut addr = None;
    let mut lladdr = None;
    for attr in &m.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                addr = Some(IpAddr::V4(*a))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                addr = Some(IpAddr::V6(*a))
            }
            NeighbourAttribute::LinkLayerAddress(l) => lladdr = Some(l.clone()),
            _ => {}
        }
    }
    let entry = NeighbourEntry {
        state: m.header.state.into(),
        lladdr,
    };
    (m.header.ifindex, addr, entry)
}

fn usable_mac(state: u16, lladdr: Option<&[u8]>) -> Option<[u8; 6]> {
    if state & NUD_VALID == 0 {
        return None;
    }
    let mac = <[u8; 6]>::try_from(lladdr?).ok()?;
    (mac != [0; 6]).then_some(mac)
}

fn state_name(state: u16) -> String {
    const NAMES: [(u16, &str); 8] = [
        (NUD_INCOMPLETE, "INCOMPLETE"),
        (NUD_REACHABLE, "REACHABLE"),
        (NUD_STALE, "STALE"),
        (NUD_DELAY, "DELAY"),
        (NUD_PROBE, "PROBE"),
        (NUD_FAILED, "FAILED"),
        (NUD_NOARP, "NOARP"),
        (NUD_PERMANENT, "PERMANENT"),
    ];
    let names: Vec<&str> = NAMES
        .iter()
        .filter(|(bit, _)| state & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    if names.is_empty() {
        if state == 0 {
            "NONE".into()
        } else {
            format!("{state:#x}")
        }
    } else {
        names.join("|")
    }
}

/// Why a neighbour entry gives no MAC, in words for `xlb status`.
fn unresolved_reason(next_hop: IpAddr, entry: Option<&NeighbourEntry>) -> String {
    let proto = if next_hop.is_ipv4() {
        "ARP"
    } else {
        "neighbour discovery"
    };
    let Some(e) = entry else {
        return format!("no neighbour entry for {next_hop}; {proto} started");
    };
    let state = e.state_name();
    if e.state & NUD_INCOMPLETE != 0 {
        format!("no {proto} reply from {next_hop} yet ({state})")
    } else if e.state & NUD_FAILED != 0 {
        format!("{next_hop} did not answer {proto} ({state}); retrying")
    } else if e.state & NUD_VALID != 0 {
        match &e.lladdr {
            None => {
                format!("the neighbour entry of {next_hop} has no link-layer address ({state})")
            }
            Some(l) if l.len() != 6 => format!(
                "the neighbour entry of {next_hop} has a {}-byte address, not a MAC ({state})",
                l.len()
            ),
            Some(_) => format!("the neighbour entry of {next_hop} has an all-zero MAC ({state})"),
        }
    } else {
        format!("the neighbour entry of {next_hop} is not usable ({state}); {proto} started")
    }
}

/// The first item of a netlink reply stream, within [`REQUEST_TIMEOUT`].
pub(crate) async fn first<T>(
    stream: impl Stream<Item = Result<T, rtnetlink::Error>>,
) -> io::Result<Option<T>> {
    let mut stream = std::pin::pin!(stream);
    match tokio::time::timeout(REQUEST_TIMEOUT, stream.next()).await {
        Err(_) => Err(timed_out()),
        Ok(None) => Ok(None),
        Ok(Some(r)) => r.map(Some).map_err(io_error),
    }
}

pub(crate) fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "no netlink answer within 5 s")
}

/// A kernel error as the errno it is (so `ENOENT` reads "No such file or directory" and
/// can be matched), anything else as text.
pub(crate) fn io_error(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) if m.code.is_some() => m.to_io(),
        rtnetlink::Error::RequestFailed => {
            io::Error::other("the netlink connection is closed (request failed)")
        }
        other => io::Error::other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_valid_states_with_a_real_mac_are_usable() {
        let mac = [2, 0, 0, 0, 0, 1];
        for state in [
            NUD_REACHABLE,
            NUD_STALE,
            NUD_DELAY,
            NUD_PROBE,
            NUD_PERMANENT,
            NUD_NOARP,
        ] {
            assert_eq!(
                usable_mac(state, Some(&mac)),
                Some(mac),
                "{}",
                state_name(state)
            );
            assert_eq!(usable_mac(state, Some(&[0; 6])), None);
            assert_eq!(usable_mac(state, None), None);
            assert_eq!(usable_mac(state, Some(&mac[..4])), None);
        }
        for state in [0, NUD_INCOMPLETE, NUD_FAILED] {
            assert_eq!(usable_mac(state, Some(&mac)), None, "{}", state_name(state));
        }
    }

    #[test]
    fn names_and_reasons() {
        assert_eq!(
            format_mac(&[0x02, 0xab, 0, 1, 0x10, 0xff]),
            "02:ab:00:01:10:ff"
        );
        assert_eq!(state_name(NUD_STALE), "STALE");
        assert_eq!(state_name(NUD_PROBE | NUD_STALE), "STALE|PROBE");
        assert_eq!(state_name(0), "NONE");
        let hop: IpAddr = "10.0.0.2".parse().unwrap();
        let incomplete = NeighbourEntry {
            state: NUD_INCOMPLETE,
            lladdr: None,
        };
        assert_eq!(
            unresolved_reason(hop, Some(&incomplete)),
            "no ARP reply from 10.0.0.2 yet (INCOMPLETE)"
        );
        let zero = NeighbourEntry {
            state: NUD_NOARP,
            lladdr: Some(vec![0; 6]),
        };
        assert!(unresolved_reason(hop, Some(&zero)).contains("all-zero MAC"));
        assert!(unresolved_reason(hop, None).contains("ARP started"));
    }

    #[test]
    fn events_from_kernel_messages() {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.ifindex = 7;
        m.header.state = netlink_packet_route::neighbour::NeighbourState::Reachable;
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                Ipv4Addr::new(10, 0, 0, 2),
            )));
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(vec![2, 0, 0, 0, 0, 2]));
        let new = NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(m.clone()));
        assert_eq!(
            event_of(new),
            Some(NeighEvent {
                ifindex: 7,
                addr: "10.0.0.2".parse().unwrap(),
                mac: Some([2, 0, 0, 0, 0, 2]),
            })
        );
        let del = NetlinkMessage::from(RouteNetlinkMessage::DelNeighbour(m.clone()));
        assert_eq!(event_of(del).unwrap().mac, None);
        m.header.family = AddressFamily::Bridge;
        let fdb = NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(m));
        assert_eq!(event_of(fdb), None);
    }

    /// The daemon spawns these on a multi-thread runtime: they must be `Send`.
    #[allow(dead_code)]
    fn futures_are_send(r: &Resolver, addr: IpAddr) {
        fn send<T: Send>(_: &T) {}
        send(&r.resolve(addr));
        send(&r.route(addr));
        send(&r.link(1));
        send(&r.neighbour(addr, 1));
        send(&r.trigger(addr));
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Resolver>();
        send_sync::<NeighbourEvents>();
    }

    #[test]
    fn new_needs_a_runtime() {
        assert!(matches!(Resolver::new(), Err(NeighError::NoRuntime)));
        assert!(matches!(subscribe_neighbours(), Err(NeighError::NoRuntime)));
    }

    /// Root only. Run with
    /// `cargo test -p lb-userspace --lib neigh -- --ignored --nocapture`.
    ///
    /// A test thread unshares its own network namespace (A) and a helper thread unshares
    /// another (B); veth `a` (A, 10.77.0.1, fd77::1) is paired with `b` (moved into B,
    /// 10.77.0.2, fd77::2). Both namespaces are anonymous: they and the veth pair vanish
    /// when the threads end, even after a panic or a kill, so nothing is left behind.
    #[test]
    #[ignore = "needs root: creates network namespaces and veths"]
    fn resolves_through_the_kernel() {
        let t = std::thread::spawn(netns::in_namespaces);
        if let Err(panic) = t.join() {
            std::panic::resume_unwind(panic);
        }
    }

    mod netns {
        use std::{
            net::IpAddr,
            process::Command,
            sync::mpsc,
            time::{Duration, Instant},
        };

        use futures::StreamExt;

        use crate::neigh::*;

        const MAC_A: [u8; 6] = [0x02, 0x77, 0, 0, 0, 0x01];
        const MAC_B: [u8; 6] = [0x02, 0x77, 0, 0, 0, 0x02];

        fn unshare_net() {
            // SAFETY: plain syscall; affects only the calling thread.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "unshare(CLONE_NEWNET): {}",
                std::io::Error::last_os_error()
            );
        }

        fn ip_try(args: &str) -> Result<(), String> {
            let out = Command::new("ip")
                .args(args.split_whitespace())
                .output()
                .map_err(|e| format!("ip {args}: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "ip {args}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        }

        fn ip(args: &str) {
            ip_try(args).unwrap();
        }

        /// An `ip` command line and where to send its outcome.
        type Job = (String, mpsc::Sender<Result<(), String>>);

        /// A thread living in its own network namespace, running `ip` commands there. The
        /// namespace dies with the thread, when this is dropped.
        struct NsThread {
            tid: i32,
            jobs: Option<mpsc::Sender<Job>>,
            thread: Option<std::thread::JoinHandle<()>>,
        }

        impl NsThread {
            fn spawn() -> Self {
                let (tid_tx, tid_rx) = mpsc::channel();
                let (jobs, rx) = mpsc::channel::<Job>();
                let thread = std::thread::spawn(move || {
                    unshare_net();
                    // SAFETY: no arguments, cannot fail.
                    tid_tx.send(unsafe { libc::gettid() }).unwrap();
                    for (args, reply) in rx {
                        let _ = reply.send(ip_try(&args));
                    }
                });
                Self {
                    tid: tid_rx.recv().expect("namespace thread started"),
                    jobs: Some(jobs),
                    thread: Some(thread),
                }
            }

            fn ip(&self, args: &str) {
                let (tx, rx) = mpsc::channel();
                self.jobs.as_ref().unwrap().send((args.into(), tx)).unwrap();
                rx.recv().unwrap().unwrap();
            }
        }

        impl Drop for NsThread {
            fn drop(&mut self) {
                drop(self.jobs.take());
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
            }
        }

        fn ifindex(name: &str) -> u32 {
            let c = std::ffi::CString::new(name).unwrap();
            // SAFETY: valid NUL-terminated string.
            let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
            assert_ne!(i, 0, "no interface {name}");
            i
        }

        pub(super) fn in_namespaces() {
            unshare_net();
            let b = NsThread::spawn();
            ip("link set dev lo up");
            ip(&format!(
                "link add name a address {} type veth peer name b address {}",
                format_mac(&MAC_A),
                format_mac(&MAC_B)
            ));
            ip(&format!("link set dev b netns {}", b.tid));
            b.ip("link set dev lo up");
            b.ip("addr add 10.77.0.2/24 dev b");
            b.ip("addr add fd77::2/64 dev b nodad");
            b.ip("link set dev b up");
            ip("addr add 10.77.0.1/24 dev a");
            ip("addr add fd77::1/64 dev a nodad");
            ip("link set dev a up");
            ip("route add 10.88.0.0/24 via 10.77.0.2");
            let a = ifindex("a");

            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(checks(a));
            drop(rt);
            drop(b);
        }

        async fn wait_for_mac(r: &Resolver, hop: IpAddr, a: u32) -> [u8; 6] {
            let start = Instant::now();
            loop {
                if let Some(mac) = r.neighbour(hop, a).await.unwrap() {
                    eprintln!("{hop} resolved in {:?}", start.elapsed());
                    return mac;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(2),
                    "{hop} not resolved"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        async fn wait_event(
            events: &mut NeighbourEvents,
            want: impl Fn(&NeighEvent) -> bool,
        ) -> NeighEvent {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            loop {
                let ev = tokio::time::timeout_at(deadline, events.next())
                    .await
                    .expect("event in time")
                    .expect("stream open");
                eprintln!("event: {ev:?}");
                if want(&ev) {
                    return ev;
                }
            }
        }

        async fn checks(a: u32) {
            let r = Resolver::new().unwrap();
            let mut events = subscribe_neighbours().unwrap();
            let v4: IpAddr = "10.77.0.2".parse().unwrap();
            let v6: IpAddr = "fd77::2".parse().unwrap();

            // Route and link.
            assert_eq!(
                r.route(v4).await.unwrap(),
                Route {
                    ifindex: a,
                    next_hop: v4
                }
            );
            let link = r.link(a).await.unwrap();
            assert_eq!(
                link,
                LinkInfo {
                    ifindex: a,
                    name: "a".into(),
                    mac: MAC_A
                }
            );

            // Nothing known before traffic; trigger() resolves it, the feed reports it.
            assert_eq!(r.neighbour(v4, a).await.unwrap(), None);
            r.trigger(v4).await;
            assert_eq!(wait_for_mac(&r, v4, a).await, MAC_B);
            let ev = wait_event(&mut events, |e| e.addr == v4 && e.mac.is_some()).await;
            assert_eq!(
                ev,
                NeighEvent {
                    ifindex: a,
                    addr: v4,
                    mac: Some(MAC_B)
                }
            );

            // The targeted RTM_GETNEIGH really is what answers (no silent fallback), a
            // missing entry is ENOENT, and the dump fallback agrees.
            let got = r.neighbour_get(v4, a).await.unwrap().unwrap();
            assert_eq!(got.usable_mac(), Some(MAC_B), "{}", got.state_name());
            let dumped = r.neighbour_dump(v4, a).await.unwrap().unwrap();
            assert_eq!(dumped.usable_mac(), Some(MAC_B));
            let missing: IpAddr = "10.77.0.200".parse().unwrap();
            let e = r.neighbour_get(missing, a).await.unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");
            assert_eq!(r.neighbour_dump(missing, a).await.unwrap(), None);

            let resolved = Resolution::Resolved {
                link: Link {
                    mac: MAC_B,
                    src_mac: MAC_A,
                    ifindex: a,
                },
                ifname: "a".into(),
                next_hop: v4,
            };
            let got = r.resolve(v4).await;
            eprintln!("resolve({v4}): {got}");
            assert_eq!(got, resolved);

            // Behind a gateway: the gateway's MAC.
            let far: IpAddr = "10.88.0.5".parse().unwrap();
            assert_eq!(
                r.route(far).await.unwrap(),
                Route {
                    ifindex: a,
                    next_hop: v4
                }
            );
            assert_eq!(r.resolve(far).await, resolved);

            // A local address and an unreachable one: no route, with the reason.
            let local: IpAddr = "10.77.0.1".parse().unwrap();
            let e = r.route(local).await.unwrap_err();
            eprintln!("route({local}): {e}");
            assert!(matches!(e, NeighError::NotUnicast { .. }), "{e}");
            assert!(matches!(r.resolve(local).await, Resolution::NoRoute { .. }));
            let nowhere: IpAddr = "10.99.0.1".parse().unwrap();
            let e = r.route(nowhere).await.unwrap_err();
            eprintln!("route({nowhere}): {e}");
            assert!(matches!(
                r.resolve(nowhere).await,
                Resolution::NoRoute { .. }
            ));

            // Nobody answers: unresolved (never a zero MAC), INCOMPLETE once triggered.
            let ghost: IpAddr = "10.77.0.9".parse().unwrap();
            let first = r.resolve(ghost).await;
            eprintln!("resolve({ghost}): {first}");
            assert!(
                matches!(&first, Resolution::Unresolved { ifindex, ifname, next_hop, .. }
                    if *ifindex == a && ifname == "a" && *next_hop == ghost),
                "{first:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            let second = r.resolve(ghost).await;
            eprintln!("resolve({ghost}): {second}");
            match second {
                Resolution::Unresolved { reason, .. } => assert!(reason.contains("INCOMPLETE")),
                other => panic!("{other:?}"),
            }
            assert_eq!(r.neighbour(ghost, a).await.unwrap(), None);

            // IPv6: neighbour discovery.
            assert_eq!(
                r.route(v6).await.unwrap(),
                Route {
                    ifindex: a,
                    next_hop: v6
                }
            );
            assert_eq!(r.neighbour(v6, a).await.unwrap(), None);
            let got = r.resolve(v6).await;
            assert!(!got.is_resolved(), "{got:?}");
            assert_eq!(wait_for_mac(&r, v6, a).await, MAC_B);
            assert_eq!(r.resolve(v6).await.link().unwrap().mac, MAC_B);

            // A deleted entry is reported as gone.
            ip(&format!("neigh del {v4} dev a"));
            let ev = wait_event(&mut events, |e| e.addr == v4 && e.mac.is_none()).await;
            assert_eq!(ev.ifindex, a);
            assert_eq!(r.neighbour(v4, a).await.unwrap(), None);
        }
    }
}
