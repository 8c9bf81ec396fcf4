//! `reconcile`: from the intent ([`Desired`]), what the daemon has learnt ([`Observed`])
//! and what the maps hold ([`Programmed`]), compute what the maps must hold next and the
//! ordered [`Plan`] of map writes that gets them there. Pure: no maps, no I/O; the plan
//! is executed by [`apply::apply`]. Start-up adoption, runtime edits, health and
//! neighbour observations (and, later, config reload) all run this one function.
//!
//! Rules (the data plane relies on them):
//! - A backend is *up* when its health is Up, or Unknown and its service's check says
//!   unknown backends may take clients (`health.initial = "up"`, or kind `none`). A new
//!   backend of a checked service is Unknown until the daemon observes its first check.
//! - *Usable* (the HEALTHY bit: keeps its pinned clients) = up and its link (MAC, egress
//!   interface) known. *In the Maglev table* (takes new clients) = usable and not
//!   draining. Nothing is ever forwarded to a zero MAC.
//! - Write order: the durable generation counter first; a usable backend is written
//!   before any slot points to it; slots change before the service value; a backend is
//!   made unusable or cleared only after the slots stopped pointing to it. A packet in
//!   flight never meets a slot whose backend is gone.
//! - Generations come only from the [`Alloc`]ator, so an affinity entry of a removed
//!   backend is never inherited by a new backend with the same id.
//! - Ids and table regions of the current plan's removals are not reused in the same
//!   plan (the removal's writes come later than the new owner's).
//! - Adoption: services and backends found in the maps keep their ids, generations,
//!   table region, last known health and link, so a restart moves no client.
//!
//! Owns: matching desired to programmed, allocation of service ids, backend ids and table
//! regions, the Maglev build, write ordering. Must not touch: the maps (apply.rs does),
//! the validity of the intent (the validator's).

pub mod adopt;
pub mod apply;
pub mod control;
pub mod inspect;
#[cfg(test)]
mod tests;
pub mod tunnel;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
};

use lb_common::{
    Addr, BE_F_DRAINING, BE_F_HEALTHY, Backend as BackendValue, MODE_DSR, MODE_TUNNEL,
    SVC_F_AFFINITY_NONE, SVC_F_BOUNDED, SVC_F_NAT_SOURCES, SVC_F_PASS_NO_BACKEND,
    SVC_F_TUNNEL_SOURCE, ServiceKey, ServiceValue,
    maglev::{self, MaglevBackend, MaglevError},
    prefix_mask,
    tunnel::{Egress, TunnelSource},
};

pub use crate::dataplane::maps::NatSource;
pub use crate::dataplane::maps::Vip;
use crate::model::{
    Affinity, Desired, Failback, Forwarding, NoBackend, Protocol, Service, addr_bytes, addr_words,
    limits::{MAX_BACKENDS, MAX_SERVICES},
};
pub use crate::model::{Health, Link};

/// What the daemon has learnt. A missing entry means "nothing new learnt": the last
/// programmed state stands (that is how a restart keeps what the maps said).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// Health per (service, backend address).
    pub health: HashMap<(String, IpAddr), Health>,
    /// Link per backend address: `Some` resolved, `None` known to be unreachable (not
    /// resolvable, or behind an interface xlb is not attached to). (ARCH.md sketched
    /// `Link` values only; `Option` keeps "lost" apart from "not looked up yet".)
    pub links: HashMap<IpAddr, Option<Link>>,
    /// The gateway of the route to a backend address, for the resolved backends whose
    /// route has one (absent: on-link, or not known). A DSR backend behind a gateway is
    /// not usable ([`tunnel::Blocker::DsrViaGateway`]).
    pub gateways: HashMap<IpAddr, IpAddr>,
    /// Egress interfaces as last read from the kernel (MTU, first global addresses), by
    /// ifindex: what tunnel backends need (`XLB_EGRESS`). A missing entry: not read yet
    /// (the programmed entry stands).
    pub egress: BTreeMap<u32, Egress>,
}

impl Observed {
    /// Records (or forgets) the gateway of backend `addr`'s route; whether it changed.
    pub fn set_gateway(&mut self, addr: IpAddr, gateway: Option<IpAddr>) -> bool {
        let old = match gateway {
            Some(g) => self.gateways.insert(addr, g),
            None => self.gateways.remove(&addr),
        };
        old != gateway
    }
}

/// What the maps hold, as the controller last wrote (or adopted) it.
#[derive(Clone, Debug, PartialEq)]
pub struct Programmed {
    pub services: Vec<ProgrammedService>,
    /// Backend ids live in the backends map that no service owns (left by a crash).
    pub orphans: Vec<u32>,
    /// The VIP set last written; `None` when unknown (adopted).
    pub vips: Option<Vec<Vip>>,
    /// The `nat_sources` entries last written (service id, prefix); `None` when unknown
    /// (adopted: the first reconcile rewrites them).
    pub nat_sources: Option<Vec<NatSource>>,
    /// The `XLB_EGRESS` entries last written (adopted: read from the map).
    pub egress: BTreeMap<u32, Egress>,
    /// Slots of the Maglev array (all services' tables side by side).
    pub maglev_capacity: u32,
}

/// One service as programmed.
#[derive(Clone, Debug, PartialEq)]
pub struct ProgrammedService {
    /// `None` when adopted from the maps and not matched to a desired service yet (the
    /// maps hold no names).
    pub name: Option<String>,
    pub id: u32,
    pub key: ServiceKey,
    pub value: ServiceValue,
    /// The Maglev table as written.
    pub table: Vec<u32>,
    /// The table before the last change that altered it (for `explain`).
    pub previous_table: Vec<u32>,
    /// The members `table` was built from (in address order), so a reconcile that
    /// leaves them alone reuses the table instead of rebuilding it (≈1.3 ms per service
    /// at M = 65,537, on every health or link change of any service). `None` when
    /// unknown (adopted from the maps, which hold no weights).
    pub members: Option<Vec<MaglevBackend>>,
    /// Its `XLB_TUN_SRC` entry as written (zeros for a service without a tunnel_source).
    pub tunnel_source: TunnelSource,
    /// In address order.
    pub backends: Vec<ProgrammedBackend>,
}

/// One backend as programmed.
#[derive(Clone, Debug, PartialEq)]
pub struct ProgrammedBackend {
    pub id: u32,
    pub address: IpAddr,
    /// As desired (0 when adopted and not reconciled yet: the maps hold no weight).
    pub weight: u32,
    pub generation: u32,
    /// The health the entry was written with.
    pub health: Health,
    pub link: Option<Link>,
    pub draining: bool,
    /// The backends-map value as written.
    pub value: BackendValue,
}

impl ProgrammedBackend {
    /// Keeps its pinned clients (the data plane's HEALTHY bit).
    pub fn usable(&self) -> bool {
        self.value.flags & BE_F_HEALTHY != 0
    }
}

impl ProgrammedService {
    pub fn table_offset(&self) -> u32 {
        self.value.table_offset
    }

    pub fn table_size(&self) -> u32 {
        self.value.table_size
    }

    pub fn backend(&self, address: IpAddr) -> Option<&ProgrammedBackend> {
        self.backends.iter().find(|b| b.address == address)
    }

    pub fn backend_by_id(&self, id: u32) -> Option<&ProgrammedBackend> {
        self.backends.iter().find(|b| b.id == id)
    }

    /// Share of the Maglev table held by backend `id`, 0..1.
    pub fn table_share(&self, id: u32) -> f64 {
        if self.table.is_empty() {
            return 0.0;
        }
        self.table.iter().filter(|&&t| t == id).count() as f64 / self.table.len() as f64
    }
}

impl Programmed {
    /// Nothing programmed yet (fresh maps).
    pub fn empty(maglev_capacity: u32) -> Self {
        Self {
            services: Vec::new(),
            orphans: Vec::new(),
            vips: None,
            nat_sources: None,
            egress: BTreeMap::new(),
            maglev_capacity,
        }
    }

    /// The programmed service named `name`.
    pub fn service(&self, name: &str) -> Option<&ProgrammedService> {
        self.services
            .iter()
            .find(|s| s.name.as_deref() == Some(name))
    }

    pub fn service_by_id(&self, id: u32) -> Option<&ProgrammedService> {
        self.services.iter().find(|s| s.id == id)
    }

    /// The highest generation any backend holds.
    pub fn max_generation(&self) -> u32 {
        self.services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| b.generation))
            .max()
            .unwrap_or(0)
    }
}

/// One map write (or a step that reads and writes the affinity table).
#[derive(Clone, Debug, PartialEq)]
pub enum MapOp {
    /// Persist the generation counter: every generation below it may be in use.
    NextGeneration(u32),
    ResetBackendStats(u32),
    ResetServiceStats(u32),
    Backend {
        id: u32,
        value: BackendValue,
    },
    /// Write `table` at `offset`, skipping slots equal in `old` (`None`: write all).
    /// (Whole tables rather than ARCH.md's changed pairs: the maps API writes batched
    /// ranges, and `old` lets it skip the unchanged slots itself.)
    Slots {
        offset: u32,
        table: Vec<u32>,
        old: Option<Vec<u32>>,
    },
    Service {
        key: ServiceKey,
        value: ServiceValue,
    },
    RemoveService {
        key: ServiceKey,
    },
    Vips(Vec<Vip>),
    /// Service `service_id`'s `XLB_TUN_SRC` entry.
    TunnelSource {
        service_id: u32,
        value: TunnelSource,
    },
    /// An `XLB_EGRESS` entry written (`Some`) or removed (`None`).
    Egress {
        ifindex: u32,
        value: Option<Egress>,
    },
    /// Every service's `nat_sources` (the whole set: the trie and its pre-filter).
    NatSources(Vec<NatSource>),
    FlushAffinity {
        service_id: u32,
    },
    /// `failback = "rebalance"`: unpin the clients of `service_id` whose slot in `table`
    /// is `backend_id` (it just recovered) but are pinned elsewhere.
    Rebalance {
        service_id: u32,
        backend_id: u32,
        table: Vec<u32>,
    },
}

/// Map writes in the order the data plane needs them (module docs).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan(pub Vec<MapOp>);

/// Where generations come from: never one issued twice while the pinned state lives.
pub trait Alloc {
    /// A fresh generation (never 0); `None` when the counter is exhausted.
    fn generation(&mut self) -> Option<u32>;
    /// The first generation not issued yet (what [`MapOp::NextGeneration`] persists).
    fn next_generation(&self) -> u32;
}

/// A counter of generations, started from the durable counter in the pinned meta map
/// (`XLB_META.next_generation`, see `Controller`). Reconcile issues from it in memory;
/// the plan persists the new counter (`MapOp::NextGeneration`) before any backend entry
/// carries one of them, so a crash never loses an issued generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generations {
    next: u32,
}

impl Generations {
    /// Issues `next`, `next + 1`, … (skipping 0).
    pub fn starting_at(next: u32) -> Self {
        Self { next: next.max(1) }
    }
}

impl Alloc for Generations {
    fn generation(&mut self) -> Option<u32> {
        let g = self.next;
        self.next = self.next.checked_add(1)?;
        Some(g)
    }

    fn next_generation(&self) -> u32 {
        self.next
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("all {MAX_SERVICES} service ids are in use")]
    NoServiceId,
    #[error("all {MAX_BACKENDS} backend ids are in use")]
    NoBackendId,
    #[error("the generation counter is exhausted; `xlb down` and a fresh start reset it")]
    NoGeneration,
    #[error(
        "no room for a Maglev table of {needed} slots (the Maglev map has {capacity} slots in all)"
    )]
    MaglevSpace { needed: u32, capacity: u32 },
    #[error("service {service:?}: {source}")]
    Maglev {
        service: String,
        #[source]
        source: MaglevError,
    },
}

type Result<T> = std::result::Result<T, ReconcileError>;

/// What the maps must hold for `desired` given `observed`, and the ordered writes from
/// `programmed` to there.
pub fn reconcile(
    desired: &Desired,
    observed: &Observed,
    programmed: &Programmed,
    alloc: &mut dyn Alloc,
) -> Result<(Programmed, Plan)> {
    let before = alloc.next_generation();
    let matched = match_services(desired, programmed);
    let mut ids = IdPool::new(programmed);
    let mut services = Vec::new();
    let mut service_ops = Vec::new();
    let egress = tunnel::known_egress(&observed.egress, &programmed.egress);
    let ctx = Ctx {
        obs: observed,
        egress: &egress,
    };
    for (svc, prev) in desired.services().zip(&matched) {
        let prev = prev.map(|i| &programmed.services[i]);
        let (ps, ops) = reconcile_service(svc, prev, &ctx, &mut ids, alloc)?;
        services.push(ps);
        service_ops.extend(ops);
    }
    let mut ops = Vec::new();
    if alloc.next_generation() != before {
        ops.push(MapOp::NextGeneration(alloc.next_generation()));
    }
    let kept: HashSet<usize> = matched.iter().flatten().copied().collect();
    for (i, old) in programmed.services.iter().enumerate() {
        if !kept.contains(&i) {
            removal_ops(old, &mut ops);
        }
    }
    for id in &programmed.orphans {
        ops.push(clear_backend(*id));
    }
    // The lists before the services' flags: a flag never points at a list still empty
    // for long, and a removed list's entries go only once no flag needs them (both
    // orders only make a listed client unlisted for an instant).
    let nat = nat_set(desired, &services);
    if programmed.nat_sources.as_ref() != Some(&nat) {
        ops.push(MapOp::NatSources(nat.clone()));
    }
    // Egress entries before any backend that leaves by them is usable; unused ones go
    // after every backend stopped using them.
    let egress_set = egress_set(desired, &services, &egress);
    for (ifindex, value) in &egress_set {
        if programmed.egress.get(ifindex) != Some(value) {
            ops.push(MapOp::Egress {
                ifindex: *ifindex,
                value: Some(*value),
            });
        }
    }
    ops.extend(service_ops);
    let vips = vip_set(desired);
    if programmed.vips.as_ref() != Some(&vips) {
        ops.push(MapOp::Vips(vips.clone()));
    }
    for ifindex in programmed.egress.keys() {
        if !egress_set.contains_key(ifindex) {
            ops.push(MapOp::Egress {
                ifindex: *ifindex,
                value: None,
            });
        }
    }
    let next = Programmed {
        services,
        orphans: Vec::new(),
        vips: Some(vips),
        nat_sources: Some(nat),
        egress: egress_set,
        maglev_capacity: programmed.maglev_capacity,
    };
    Ok((next, Plan(ops)))
}

/// For each desired service (name order), the index of the programmed service it
/// continues: same name, or adopted (unnamed); in both cases the same key and table size
/// (another table size is another region: the service starts afresh).
fn match_services(desired: &Desired, programmed: &Programmed) -> Vec<Option<usize>> {
    let mut taken = HashSet::new();
    desired
        .services()
        .map(|svc| {
            let key = service_key(svc);
            let fits = |p: &ProgrammedService| p.key == key && p.table_size() == svc.table_size;
            let found = programmed
                .services
                .iter()
                .position(|p| p.name.as_deref() == Some(&svc.name) && fits(p))
                .or_else(|| {
                    (0..programmed.services.len()).find(|&i| {
                        let p = &programmed.services[i];
                        p.name.is_none() && fits(p) && !taken.contains(&i)
                    })
                })
                .filter(|i| !taken.contains(i));
            if let Some(i) = found {
                taken.insert(i);
            }
            found
        })
        .collect()
}

fn removal_ops(old: &ProgrammedService, ops: &mut Vec<MapOp>) {
    ops.push(MapOp::RemoveService { key: old.key });
    for b in &old.backends {
        ops.push(clear_backend(b.id));
    }
    ops.push(MapOp::FlushAffinity { service_id: old.id });
    if old.tunnel_source != TunnelSource::default() {
        ops.push(MapOp::TunnelSource {
            service_id: old.id,
            value: TunnelSource::default(),
        });
    }
}

/// The egress interfaces of the tunnel backends that have a link, with their known
/// facts (an interface not read yet has no entry: its backends are not usable).
fn egress_set(
    desired: &Desired,
    services: &[ProgrammedService],
    egress: &BTreeMap<u32, Egress>,
) -> BTreeMap<u32, Egress> {
    desired
        .services()
        .zip(services)
        .filter(|(s, _)| s.forwarding == Forwarding::Tunnel)
        .flat_map(|(_, ps)| ps.backends.iter().filter_map(|b| b.link))
        .filter_map(|l| egress.get(&l.ifindex).map(|e| (l.ifindex, *e)))
        .collect()
}

fn clear_backend(id: u32) -> MapOp {
    MapOp::Backend {
        id,
        value: BackendValue::default(),
    }
}

/// Ids and table regions in use: everything programmed (also what this plan removes)
/// and everything allocated so far in this plan.
struct IdPool {
    services: HashSet<u32>,
    backends: HashSet<u32>,
    regions: Vec<(u32, u32)>,
    capacity: u32,
}

impl IdPool {
    fn new(p: &Programmed) -> Self {
        Self {
            services: p.services.iter().map(|s| s.id).collect(),
            backends: p
                .services
                .iter()
                .flat_map(|s| s.backends.iter().map(|b| b.id))
                .chain(p.orphans.iter().copied())
                .collect(),
            regions: p
                .services
                .iter()
                .map(|s| (s.table_offset(), s.table_size()))
                .collect(),
            capacity: p.maglev_capacity,
        }
    }

    fn service_id(&mut self) -> Result<u32> {
        let id = (0..MAX_SERVICES)
            .find(|id| !self.services.contains(id))
            .ok_or(ReconcileError::NoServiceId)?;
        self.services.insert(id);
        Ok(id)
    }

    fn backend_id(&mut self) -> Result<u32> {
        let id = (0..MAX_BACKENDS)
            .find(|id| !self.backends.contains(id))
            .ok_or(ReconcileError::NoBackendId)?;
        self.backends.insert(id);
        Ok(id)
    }

    /// First fit in the Maglev array.
    fn region(&mut self, size: u32) -> Result<u32> {
        self.regions.sort_unstable();
        let mut start = 0u32;
        for &(off, len) in &self.regions {
            if off >= start && off - start >= size {
                break;
            }
            start = start.max(off.saturating_add(len));
        }
        if self.capacity < start || self.capacity - start < size {
            return Err(ReconcileError::MaglevSpace {
                needed: size,
                capacity: self.capacity,
            });
        }
        self.regions.push((start, size));
        Ok(start)
    }
}

/// The service's key in the services map.
pub fn service_key(svc: &Service) -> ServiceKey {
    let (addr, family) = addr_words(svc.vip);
    ServiceKey {
        addr,
        port_be: svc.port.to_be(),
        proto: svc.protocol.number(),
        family,
    }
}

/// The service's value in the services map.
pub fn service_value(svc: &Service, id: u32, table_offset: u32) -> ServiceValue {
    let (_, family) = addr_bytes(svc.vip);
    let mut flags = 0;
    if svc.affinity == Affinity::None {
        flags |= SVC_F_AFFINITY_NONE;
    }
    if svc.no_backend == NoBackend::Pass {
        flags |= SVC_F_PASS_NO_BACKEND;
    }
    if !svc.nat_sources.is_empty() {
        flags |= SVC_F_NAT_SOURCES;
    }
    if svc.balance_factor.is_some() {
        flags |= SVC_F_BOUNDED;
    }
    let mode = match svc.forwarding {
        Forwarding::Dsr => MODE_DSR,
        Forwarding::Tunnel => MODE_TUNNEL,
    };
    if mode == MODE_TUNNEL && svc.tunnel_source.is_some() {
        flags |= SVC_F_TUNNEL_SOURCE;
    }
    let idle_timeout_ns = u64::try_from(svc.idle_timeout.as_nanos()).unwrap_or(u64::MAX);
    ServiceValue {
        id,
        flags,
        table_offset,
        table_size: svc.table_size,
        idle_timeout_ns,
        src_mask: prefix_mask(svc.prefix_len(), family),
        prefix_len: svc.prefix_len(),
        mode,
        _pad: [0; 2],
        // Every accepted idle_timeout gets a refresh period well within it (fault 3).
        refresh_ns: lb_common::affinity::refresh_period_ns(idle_timeout_ns),
    }
}

/// A backend as reconcile decided it.
struct Decided {
    pb: ProgrammedBackend,
    in_table: bool,
    recovered: bool,
}

/// What reconcile judges backends with besides the intent.
struct Ctx<'a> {
    obs: &'a Observed,
    /// Observed egress facts over the programmed ones ([`tunnel::known_egress`]).
    egress: &'a BTreeMap<u32, Egress>,
}

fn reconcile_service(
    svc: &Service,
    prev: Option<&ProgrammedService>,
    ctx: &Ctx<'_>,
    ids: &mut IdPool,
    alloc: &mut dyn Alloc,
) -> Result<(ProgrammedService, Vec<MapOp>)> {
    let mut ops = Vec::new();
    let (id, offset) = match prev {
        Some(p) => (p.id, p.table_offset()),
        None => {
            let id = ids.service_id()?;
            ops.push(MapOp::ResetServiceStats(id));
            (id, ids.region(svc.table_size)?)
        }
    };
    let mut decided = Vec::new();
    for b in &svc.backends {
        let old = prev.and_then(|p| p.backend(b.address));
        let (bid, generation) = match old {
            Some(o) => (o.id, o.generation),
            None => {
                let bid = ids.backend_id()?;
                ops.push(MapOp::ResetBackendStats(bid));
                (bid, alloc.generation().ok_or(ReconcileError::NoGeneration)?)
            }
        };
        decided.push(decide(svc, b, id, bid, generation, old, ctx));
    }
    let members = table_members(&decided);
    let table = match prev {
        Some(p) if p.members.as_ref() == Some(&members) && p.table_size() == svc.table_size => {
            p.table.clone()
        }
        _ => build_table(svc, &members)?,
    };
    let value = service_value(svc, id, offset);
    let key = service_key(svc);
    let tunnel_source = tunnel::tunnel_source_value(svc);
    let (src_before, src_after) =
        tunnel::source_ops(prev.map(|p| p.tunnel_source), id, tunnel_source);
    ops.extend(src_before);
    write_ops(prev, &decided, &mut ops, |ops| {
        let old_table = prev.map(|p| p.table.clone());
        if old_table.as_ref() != Some(&table) {
            ops.push(MapOp::Slots {
                offset,
                table: table.clone(),
                old: old_table,
            });
        }
        if prev.is_none_or(|p| p.key != key || p.value != value) {
            ops.push(MapOp::Service { key, value });
        }
    });
    ops.extend(src_after);
    if svc.failback == Failback::Rebalance {
        for d in decided.iter().filter(|d| d.recovered && d.in_table) {
            ops.push(MapOp::Rebalance {
                service_id: id,
                backend_id: d.pb.id,
                table: table.clone(),
            });
        }
    }
    let previous_table = match prev {
        Some(p) if p.table == table => p.previous_table.clone(),
        Some(p) => p.table.clone(),
        None => Vec::new(),
    };
    let ps = ProgrammedService {
        name: Some(svc.name.clone()),
        id,
        key,
        value,
        table,
        previous_table,
        members: Some(members),
        tunnel_source,
        backends: decided.into_iter().map(|d| d.pb).collect(),
    };
    Ok((ps, ops))
}

/// Usable backends, then `middle` (slots, service), then unusable and removed backends;
/// only entries that changed are written.
fn write_ops(
    prev: Option<&ProgrammedService>,
    decided: &[Decided],
    ops: &mut Vec<MapOp>,
    middle: impl FnOnce(&mut Vec<MapOp>),
) {
    let changed = |d: &Decided| {
        prev.and_then(|p| p.backend(d.pb.address))
            .is_none_or(|o| o.value != d.pb.value || o.id != d.pb.id)
    };
    let write = |d: &Decided| MapOp::Backend {
        id: d.pb.id,
        value: d.pb.value,
    };
    for d in decided.iter().filter(|d| d.pb.usable() && changed(d)) {
        ops.push(write(d));
    }
    middle(ops);
    for d in decided.iter().filter(|d| !d.pb.usable() && changed(d)) {
        ops.push(write(d));
    }
    if let Some(p) = prev {
        for old in &p.backends {
            if decided.iter().all(|d| d.pb.address != old.address) {
                ops.push(clear_backend(old.id));
            }
        }
    }
}

/// Health, link and the resulting flags of one backend.
fn decide(
    svc: &Service,
    b: &crate::model::Backend,
    service_id: u32,
    id: u32,
    generation: u32,
    old: Option<&ProgrammedBackend>,
    ctx: &Ctx<'_>,
) -> Decided {
    let obs = ctx.obs;
    let health = match obs.health.get(&(svc.name.clone(), b.address)) {
        Some(h) if *h != Health::Unknown => *h,
        _ => old.map_or(Health::Unknown, |o| o.health),
    };
    let link = match obs.links.get(&b.address) {
        Some(l) => *l,
        None => old.and_then(|o| o.link),
    };
    let up = match health {
        Health::Up => true,
        Health::Down => false,
        Health::Unknown => svc.health.unknown_is_up(),
    };
    let usable = up
        && link.is_some()
        && tunnel::blocker(
            svc,
            b.address,
            link.as_ref(),
            obs.gateways.get(&b.address).copied(),
            ctx.egress,
        )
        .is_none();
    let (addr, family) = addr_words(b.address);
    let l = link.unwrap_or(Link {
        mac: [0; 6],
        src_mac: [0; 6],
        ifindex: 0,
    });
    let mut flags = 0;
    if usable {
        flags |= BE_F_HEALTHY;
    }
    if b.draining {
        flags |= BE_F_DRAINING;
    }
    let value = BackendValue {
        addr,
        mac: l.mac,
        src_mac: l.src_mac,
        port_be: 0,
        family,
        flags,
        ifindex: l.ifindex,
        service_id,
        generation,
        _pad: [0; 4],
    };
    Decided {
        recovered: old.is_some_and(|o| o.health == Health::Down) && health == Health::Up,
        in_table: usable && !b.draining,
        pb: ProgrammedBackend {
            id,
            address: b.address,
            weight: b.weight,
            generation,
            health,
            link,
            draining: b.draining,
            value,
        },
    }
}

/// The backends in the Maglev table (usable, not draining), as the builder sees them.
fn table_members(decided: &[Decided]) -> Vec<MaglevBackend> {
    decided
        .iter()
        .filter(|d| d.in_table)
        .map(|d| MaglevBackend {
            id: d.pb.id,
            addr: addr_bytes(d.pb.address).0,
            weight: d.pb.weight,
        })
        .collect()
}

#[cfg(test)]
thread_local! {
    /// Tables built on this thread (tests check that unchanged members reuse theirs).
    pub static TABLES_BUILT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn build_table(svc: &Service, members: &[MaglevBackend]) -> Result<Vec<u32>> {
    #[cfg(test)]
    TABLES_BUILT.with(|n| n.set(n.get() + 1));
    maglev::build(members, svc.table_size).map_err(|source| ReconcileError::Maglev {
        service: svc.name.clone(),
        source,
    })
}

/// Every listed prefix with its service's id, sorted.
fn nat_set(desired: &Desired, services: &[ProgrammedService]) -> Vec<NatSource> {
    let mut out: Vec<NatSource> = desired
        .services()
        .zip(services)
        .flat_map(|(s, ps)| {
            s.nat_sources.iter().map(|p| {
                let (addr, family) = addr_words(p.addr);
                NatSource {
                    service_id: ps.id,
                    family,
                    addr,
                    len: p.len,
                }
            })
        })
        .collect();
    out.sort_unstable();
    out
}

/// Distinct VIPs of the desired services, sorted, each with its only TCP and UDP
/// service when it has exactly one that routes by source address alone.
fn vip_set(desired: &Desired) -> Vec<Vip> {
    let mut vips: Vec<(Addr, u8)> = desired.services().map(|s| addr_words(s.vip)).collect();
    vips.sort_unstable();
    vips.dedup();
    let sole = |addr: Addr, family: u8, proto: Protocol| {
        let mut of = desired
            .services()
            .filter(|s| s.protocol == proto && addr_words(s.vip) == (addr, family));
        match (of.next(), of.next()) {
            (Some(s), None) if s.affinity != Affinity::None => Some(s.port.to_be()),
            _ => None,
        }
    };
    vips.into_iter()
        .map(|(addr, family)| Vip {
            addr,
            family,
            sole_tcp: sole(addr, family, Protocol::Tcp),
            sole_udp: sole(addr, family, Protocol::Udp),
        })
        .collect()
}
