//! Reading the affinity table against what is programmed: `xlb explain`, `xlb affinity
//! list`, the pinned counts, and the failback rebalance (the one userspace write of the
//! affinity table besides flushes).
//!
//! The decision rules (is an entry live, expired, its backend unusable or another
//! service's) are `lb_common::affinity`'s, the XDP program's own, through
//! `DataPlane::judge`.
//!
//! Owns: interpretation of affinity entries. Must not touch: backend and service entries
//! (reconcile decides those).

use std::{net::IpAddr, time::Duration};

use lb_common::{
    AffinityKey, NO_BACKEND, SVC_F_BOUNDED, ServiceValue,
    affinity::{self, Verdict},
    bound, flow_hash, maglev_slot,
};

use super::ProgrammedService;
pub use crate::dataplane::maps::ktime_coarse_ns;
use crate::{
    dataplane::maps::{DataPlane, MapsError},
    model::{Service, addr_bytes, addr_from_words, addr_words},
    named_enum,
};

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("client {client} is not of the address family of the service")]
    FamilyMismatch { client: IpAddr },
    #[error(transparent)]
    Maps(#[from] MapsError),
}

named_enum! {
    /// Why the Maglev slot decides rather than an affinity entry.
    pub enum HashReason {
        NoEntry = "no_entry",
        Expired = "expired",
        BackendUnusable = "backend_unusable",
    }
}

/// Why `explain` expects the next packet to go where it says.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// A live affinity entry decides.
    Pinned { age: Duration, idle: Duration },
    /// The Maglev slot decides (no entry, or the entry is idle/expired or its backend is
    /// no longer usable).
    Hashed { reason: HashReason },
    /// The table is empty: no usable backend.
    NoBackend,
}

impl Decision {
    /// The API's spelling: "pinned", "hashed", "no_backend".
    pub fn name(&self) -> &'static str {
        match self {
            Decision::Pinned { .. } => "pinned",
            Decision::Hashed { .. } => "hashed",
            Decision::NoBackend => "no_backend",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Explanation {
    pub decision: Decision,
    pub backend: Option<IpAddr>,
    /// The Maglev slot of this client (what decides whenever the entry does not).
    pub slot: u32,
    pub slot_backend: Option<IpAddr>,
    /// The backend that slot held before the last table change, when different.
    pub previous_slot_backend: Option<IpAddr>,
    pub key: AffinityKey,
    /// The `nat_sources` prefix length that lists the client: its key is its whole
    /// address and source port.
    pub nat_source: Option<u8>,
    /// When the load bound (`balance_factor`) decides for a new client: its Maglev
    /// backend (over the bound) and how many slots on the chosen one was found.
    pub bound: Option<(IpAddr, u32)>,
}

/// The affinity key of a client of the service `(value, family)`: what the XDP program
/// computes from a packet (`lb_common::affinity::key`).
fn key_from(
    value: &ServiceValue,
    family: u8,
    client: IpAddr,
    port: u16,
) -> Result<AffinityKey, InspectError> {
    let (words, f) = addr_words(client);
    if f != family {
        return Err(InspectError::FamilyMismatch { client });
    }
    Ok(affinity::key(value, &words, port.to_be(), family))
}

/// The affinity key of `client` (source `port`, used only with `affinity = "none"`) for
/// a programmed service.
pub fn affinity_key(
    svc: &ProgrammedService,
    client: IpAddr,
    port: u16,
) -> Result<AffinityKey, InspectError> {
    key_from(&svc.value, svc.key.family, client, port)
}

/// The affinity key of `client` for service `svc` under id `id` (no maps needed: the
/// benchmarks predict slots with it).
pub fn affinity_key_for(
    id: u32,
    svc: &Service,
    client: IpAddr,
    port: u16,
) -> Result<AffinityKey, InspectError> {
    let value = super::service_value(svc, id, 0);
    key_from(&value, addr_bytes(svc.vip).1, client, port)
}

/// Which backend the next packet from `client` (source port `port`) goes to, and why:
/// the same rules, the same hash and the same maps as the XDP program.
pub fn explain(
    svc: &ProgrammedService,
    dp: &DataPlane,
    client: IpAddr,
    port: u16,
) -> Result<Explanation, InspectError> {
    // Listed or not: the data plane's own lookup on its own maps.
    let (words, family) = addr_words(client);
    let nat_source = if family == svc.key.family {
        dp.nat_listed(svc.value.id, family, &words)?
    } else {
        None
    };
    let key = match nat_source {
        Some(_) => affinity::key_for(&svc.value, &words, port.to_be(), family, true),
        None => affinity_key(svc, client, port)?,
    };
    let slot = maglev_slot(flow_hash(&key), svc.table_size());
    let addr_of = |id: u32| svc.backend_by_id(id).map(|b| b.address);
    let slot_id = svc.table.get(slot as usize).copied().unwrap_or(NO_BACKEND);
    let slot_backend = addr_of(slot_id);
    let previous_slot_backend = svc
        .previous_table
        .get(slot as usize)
        .copied()
        .filter(|p| *p != slot_id && *p != NO_BACKEND)
        .and_then(addr_of);
    // A new client of a bounded service: the program's probe on the maps' flags.
    let (placed, steps) = if svc.value.flags & SVC_F_BOUNDED != 0 && slot_id != NO_BACKEND {
        let at = |s: u32| match svc.table.get(s as usize) {
            Some(id) if svc.backend_by_id(*id).is_some_and(|b| b.usable()) => *id,
            _ => NO_BACKEND,
        };
        let over = |id: u32| dp.over_bound(id).unwrap_or(false);
        bound::probe(slot, svc.table_size(), slot_id, at, over)
    } else {
        (slot_id, 0)
    };
    let bound = (steps > 0).then_some((slot_backend, steps));
    let hashed = |reason| {
        if slot_id == NO_BACKEND {
            (Decision::NoBackend, None)
        } else {
            (Decision::Hashed { reason }, addr_of(placed))
        }
    };
    // The XDP program's own rules (lb_common::affinity) on the maps' own values.
    let now = ktime_coarse_ns();
    let (decision, backend) = match dp.judge(&svc.value, &key, now)? {
        None => hashed(HashReason::NoEntry),
        Some(p) => match (p.verdict, p.backend) {
            (Verdict::Live { .. }, Some(be)) => (
                Decision::Pinned {
                    age: Duration::from_nanos(now.saturating_sub(p.value.pinned_ns)),
                    idle: Duration::from_nanos(now.saturating_sub(p.value.last_seen_ns)),
                },
                Some(addr_from_words(&be.addr, be.family)),
            ),
            (Verdict::Expired, _) => hashed(HashReason::Expired),
            _ => hashed(HashReason::BackendUnusable),
        },
    };
    Ok(Explanation {
        decision,
        backend,
        slot,
        slot_backend,
        previous_slot_backend,
        key,
        nat_source,
        bound: bound.and_then(|(b, steps)| Some((b?, steps))),
    })
}

/// `failback = "rebalance"`: the clients of `service_id` whose Maglev slot in `table`
/// belongs to `backend_id` (it just recovered) but are pinned elsewhere are unpinned, so
/// their next packet goes back to it. Returns how many entries were removed.
pub fn rebalance(
    dp: &mut DataPlane,
    service_id: u32,
    backend_id: u32,
    table: &[u32],
) -> Result<usize, MapsError> {
    let Ok(m) = u32::try_from(table.len()) else {
        return Ok(0);
    };
    let moved: Vec<AffinityKey> = dp
        .affinity_entries(Some(service_id))?
        .into_iter()
        .filter(|(k, v)| {
            let slot = maglev_slot(flow_hash(k), m) as usize;
            v.backend_id != backend_id && table.get(slot) == Some(&backend_id)
        })
        .map(|(k, _)| k)
        .collect();
    for k in &moved {
        dp.affinity_remove(k)?;
    }
    Ok(moved.len())
}
