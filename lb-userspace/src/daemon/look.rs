//! The first look at new backends, before they can matter (issue 10, fault 4): every
//! backend's neighbour gets up to a second to resolve and every backend of unknown
//! health is probed once, all at the same time — at a fresh start before the first
//! Maglev table is built (so early clients spread over every ready backend instead of
//! the first to answer), at `xlb backend add`, `xlb service add` and a reload before
//! the change is applied.
//!
//! Owns: what a first look does. Must not touch: the controller (the owner records the
//! looks as observations and applies the change).

use std::{
    collections::HashSet,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::mpsc::UnboundedSender;

use super::command::{Looked, Looks, Observation, Pending};
use crate::{
    health,
    model::{Backend, CheckKind, Desired, Edit, Health, HealthCheck, Service},
    neigh::{Resolution, Resolver},
    reconcile::{Programmed, service_key},
};

/// How long a new backend's neighbour may take to resolve before the change goes on.
const RESOLVE_WAIT: Duration = Duration::from_secs(1);

/// The health `programmed` (adopted, or as last written) holds for a backend of `svc`.
fn known_health(programmed: &Programmed, svc: &Service, address: IpAddr) -> Health {
    let key = service_key(svc);
    programmed
        .services
        .iter()
        .filter(|p| p.name.as_deref().is_none_or(|n| n == svc.name))
        .find(|p| p.key == key && p.table_size() == svc.table_size)
        .and_then(|p| p.backend(address))
        .map_or(Health::Unknown, |b| b.health)
}

/// Resolves every backend of `desired` (each gets up to [`RESOLVE_WAIT`]) and probes
/// once every backend whose health `programmed` does not know, all concurrently.
pub async fn first_look(resolver: &Resolver, desired: &Desired, programmed: &Programmed) -> Looks {
    let addrs: HashSet<IpAddr> = desired
        .services()
        .flat_map(|s| s.backends.iter().map(|b| b.address))
        .collect();
    let resolving = futures::future::join_all(
        addrs
            .into_iter()
            .map(|a| async move { (a, resolve_soon(resolver, a).await) }),
    );
    // A tunnel service's probes travel the tunnel, which needs the backend's id (given
    // by the change this look is for): its first check is the check task's.
    let probes: Vec<(String, IpAddr, HealthCheck)> = desired
        .services()
        .filter(|s| s.health.kind.tag() != CheckKind::None)
        .filter(|s| s.forwarding != crate::model::Forwarding::Tunnel)
        .flat_map(|s| {
            s.backends
                .iter()
                .filter(|b| known_health(programmed, s, b.address) == Health::Unknown)
                .map(|b| (s.name.clone(), b.address, s.health.clone()))
        })
        .collect();
    let probing = futures::future::join_all(probes.into_iter().map(|(svc, addr, h)| async move {
        let p = health::probe(&h.kind, addr, h.timeout).await;
        (svc, addr, p.ok)
    }));
    let (links, probed) = futures::join!(resolving, probing);
    Looks {
        links,
        passed: probed
            .into_iter()
            .filter(|(_, _, ok)| *ok)
            .map(|(s, a, _)| (s, a))
            .collect(),
    }
}

/// Resolves a backend's neighbour, giving ARP/ND up to [`RESOLVE_WAIT`] to answer: a
/// backend added through the CLI should take traffic when the command returns, not a
/// poll later. (An unresolvable one is added anyway and kept out of the table until it
/// resolves.)
async fn resolve_soon(resolver: &Resolver, address: IpAddr) -> Resolution {
    let deadline = Instant::now() + RESOLVE_WAIT;
    loop {
        let r = resolver.resolve(address).await;
        if !matches!(r, Resolution::Unresolved { .. }) || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The backends `edit` would add to `current`, with their service's settings.
pub fn added_by(current: &Desired, edit: &Edit) -> Desired {
    let services: Vec<Service> = match edit {
        Edit::ServiceAdd { service } => vec![(**service).clone()],
        Edit::BackendAdd {
            service, address, ..
        } => current
            .service(service)
            .map(|s| Service {
                backends: vec![Backend::new(*address)],
                ..s.clone()
            })
            .into_iter()
            .collect(),
        _ => Vec::new(),
    };
    Desired::from_services(&services)
}

/// The backends of `next` that `current` does not have (by service name and address),
/// with their service's settings in `next`.
pub fn added_between(current: &Desired, next: &Desired) -> Desired {
    let services: Vec<Service> = next
        .services()
        .filter_map(|s| {
            let old = current.service(&s.name);
            let backends: Vec<Backend> = s
                .backends
                .iter()
                .filter(|b| old.is_none_or(|o| o.backend(b.address).is_none()))
                .cloned()
                .collect();
            (!backends.is_empty()).then(|| Service {
                backends,
                ..s.clone()
            })
        })
        .collect();
    Desired::from_services(&services)
}

/// Looks at the backends of `added` in a task of its own (the owner keeps serving), then
/// hands `then` back to the owner with what it found.
pub fn spawn(
    resolver: Arc<Resolver>,
    added: Desired,
    then: Pending,
    tx: UnboundedSender<Observation>,
) {
    tokio::spawn(async move {
        let looks = first_look(&resolver, &added, &Programmed::empty(0)).await;
        let _ = tx.send(Observation::Looked(Box::new(Looked { looks, then })));
    });
}
