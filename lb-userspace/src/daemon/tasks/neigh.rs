//! Backend neighbours: the resolution task (every backend once a second, and at once when
//! the kernel's neighbour table changes for one of them), and the owner's judgement of
//! what it found ([`NeighBook`]).
//!
//! A transient never moves a pinned client (issue 10, fault 5). When a backend's
//! neighbour entry disappears or is being re-resolved (deleted, INCOMPLETE, a route or
//! interface briefly gone), the data plane keeps the last known MAC: ARP/ND usually
//! answers within milliseconds, and XDP does not need the kernel's entry to forward. The
//! backend is taken out for neighbour reasons only when resolution has really failed:
//! the kernel marks the entry FAILED (it asked and got no answer), or it stays
//! unresolved for [`NEIGH_GRACE`] — three polls a second apart, the kernel's own number
//! of ARP attempts — like `fall` for health checks. A changed MAC is applied at once.
//!
//! Owns: which backend addresses are resolved, and the rule above. Must not touch: the
//! controller (the owner records the link), the netlink queries themselves (neigh.rs).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use log::{debug, warn};
use tokio::sync::{Notify, mpsc::UnboundedSender, watch};

use super::{Task, links::Interfaces};
use crate::{
    daemon::command::Observation,
    model::Link,
    neigh::{Resolution, Resolver},
};

/// How long a backend with a known MAC may stay unresolved before it is taken out.
pub const NEIGH_GRACE: Duration = Duration::from_secs(3);
/// How often every backend is resolved (also refreshes STALE entries).
const POLL: Duration = Duration::from_secs(1);

/// How a backend's neighbour stands, for `xlb status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NeighNote {
    pub interface: Option<String>,
    /// Why it is not resolved (or is being re-resolved).
    pub problem: Option<String>,
}

#[derive(Clone, Debug, Default)]
struct Entry {
    note: NeighNote,
    /// The last link that resolved (what the data plane uses while re-resolving).
    known: Option<Link>,
    /// Unresolved since (while a known link is kept).
    failing_since: Option<Instant>,
}

/// The owner's neighbour state of every backend address.
#[derive(Debug, Default)]
pub struct NeighBook {
    entries: HashMap<IpAddr, Entry>,
}

/// A resolution judged against the configured interfaces.
enum Judged {
    Usable(Link, String),
    /// Not usable now; `failed`: for good (the kernel gave up), else maybe a transient.
    NotNow {
        interface: Option<String>,
        problem: String,
        failed: bool,
    },
}

fn judge(ifaces: &Interfaces, r: &Resolution) -> Judged {
    match r {
        Resolution::Resolved { link, ifname, .. } => {
            if ifaces.attached_index(ifname) == Some(link.ifindex) {
                return Judged::Usable(*link, ifname.clone());
            }
            let problem = if ifaces.is_configured(ifname) {
                format!("reached through {ifname}, which xlb is not attached to now")
            } else {
                format!("reached through {ifname}, which is not in daemon.interfaces")
            };
            Judged::NotNow {
                interface: Some(ifname.clone()),
                problem,
                failed: false,
            }
        }
        Resolution::Unresolved {
            ifname,
            reason,
            failed,
            ..
        } => Judged::NotNow {
            interface: (!ifname.is_empty()).then(|| ifname.clone()),
            problem: reason.clone(),
            failed: *failed,
        },
        Resolution::NoRoute { reason } => Judged::NotNow {
            interface: None,
            problem: reason.clone(),
            failed: false,
        },
    }
}

impl NeighBook {
    /// Records a link known from elsewhere (adopted from the maps at start-up), so a
    /// transient right after a restart is judged like any other.
    pub fn seed(&mut self, address: IpAddr, link: Link) {
        self.entries.entry(address).or_default().known = Some(link);
    }

    /// Judges a resolution of `address` at `now`; returns the link the data plane
    /// should use (`None`: keep the backend out).
    pub fn observe(
        &mut self,
        address: IpAddr,
        r: &Resolution,
        ifaces: &Interfaces,
        now: Instant,
    ) -> Option<Link> {
        let e = self.entries.entry(address).or_default();
        let (interface, problem, failed) = match judge(ifaces, r) {
            Judged::Usable(link, ifname) => {
                *e = Entry {
                    note: NeighNote {
                        interface: Some(ifname),
                        problem: None,
                    },
                    known: Some(link),
                    failing_since: None,
                };
                return Some(link);
            }
            Judged::NotNow {
                interface,
                problem,
                failed,
            } => (interface, problem, failed),
        };
        let since = *e.failing_since.get_or_insert(now);
        let keep = !failed && now.duration_since(since) < NEIGH_GRACE;
        let kept = e.known.filter(|_| keep);
        e.note = NeighNote {
            interface: interface.or_else(|| e.note.interface.clone()),
            problem: Some(match kept {
                Some(_) => format!(
                    "{problem}; re-resolving, the last known MAC is kept for up to {}s",
                    NEIGH_GRACE.as_secs()
                ),
                None => problem,
            }),
        };
        if kept.is_none() {
            e.known = None;
        }
        kept
    }

    pub fn note(&self, address: IpAddr) -> Option<&NeighNote> {
        self.entries.get(&address).map(|e| &e.note)
    }

    /// Forgets addresses no backend has any more.
    pub fn retain(&mut self, addresses: &HashSet<IpAddr>) {
        self.entries.retain(|a, _| addresses.contains(a));
    }
}

/// The backend addresses to resolve, published by the owner whenever they change.
pub type Targets = watch::Receiver<Arc<Vec<IpAddr>>>;

/// Resolves every target every [`POLL`], and at once when `now` is notified; each result
/// goes to the owner, then the facts of the resolved backends' egress interfaces (MTU,
/// addresses: crate::egress) in one observation.
pub fn spawn_resolver(
    resolver: Arc<Resolver>,
    targets: Targets,
    now: Arc<Notify>,
    tx: UnboundedSender<Observation>,
) -> Task {
    Task::spawn(async move {
        loop {
            let addrs = targets.borrow().clone();
            let mut egress = BTreeMap::new();
            for &address in addrs.iter() {
                let resolution = resolver.resolve(address).await;
                if let Some(l) = resolution.link() {
                    egress.insert(l.ifindex, None);
                }
                if tx
                    .send(Observation::Neighbour {
                        address,
                        resolution,
                    })
                    .is_err()
                {
                    return;
                }
            }
            for (ifindex, facts) in egress.iter_mut() {
                match crate::egress::read(&resolver, *ifindex).await {
                    Ok(f) => *facts = Some(f),
                    Err(e) => debug!("egress interface {ifindex}: {e}"),
                }
            }
            let egress = egress
                .into_iter()
                .filter_map(|(i, f)| Some((i, f?)))
                .collect();
            // The probes' policy rule is shared by the namespace's daemons: put it back
            // when another one's stop or `xlb down` removed it.
            match crate::dataplane::probe::ensure_rule(resolver.handle()).await {
                Ok(true) => log::info!("the tunnel probes' policy rule was gone: installed again"),
                Ok(false) => {}
                Err(e) => debug!("checking the tunnel probes' policy rule: {e}"),
            }
            let host = match crate::egress::host_addresses(&resolver).await {
                Ok(h) => Some(h),
                Err(e) => {
                    debug!("the host's addresses: {e}");
                    None
                }
            };
            if tx
                .send(Observation::Egress {
                    facts: egress,
                    host,
                })
                .is_err()
            {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = now.notified() => {}
            }
        }
    })
}

/// Follows the kernel's neighbour changes (RTNLGRP_NEIGH): a change for a target wakes
/// the resolver at once instead of at its next poll. (A gateway in front of routed
/// backends is picked up by the poll.)
pub fn spawn_events(targets: Targets, now: Arc<Notify>) -> Task {
    Task::spawn(async move {
        loop {
            match crate::neigh::subscribe_neighbours() {
                Ok(mut events) => {
                    while let Some(ev) = events.next().await {
                        if targets.borrow().contains(&ev.addr) {
                            debug!("neighbour event for backend {}: {:?}", ev.addr, ev.mac);
                            now.notify_one();
                        }
                    }
                    warn!("the neighbour event stream ended; subscribing again");
                }
                Err(e) => warn!("following neighbour changes: {e}; relying on the 1 s poll"),
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    })
}

#[cfg(test)]
mod tests;
