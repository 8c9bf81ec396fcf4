//! The controller's model of services and backends, and how it is written to the maps.
//!
//! Invariants the data plane relies on:
//! - A Maglev table holds only backends that are healthy, not draining and whose link
//!   (MAC, egress interface) is resolved: nothing is ever forwarded to a zero MAC.
//! - Order of writes: a backend is made usable (its entry written) *before* any slot
//!   points to it, and slots stop pointing to it *before* it is made unusable. A packet
//!   in flight therefore never meets a slot whose backend is gone.
//! - Every backend entry carries a generation that is never reused, so an affinity entry
//!   of a removed backend can never be inherited by a new backend with the same id.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use lb_common::{
    AffinityKey, BE_F_DRAINING, BE_F_HEALTHY, Backend, MAX_BACKENDS, MAX_SERVICES, MODE_DSR,
    NO_BACKEND, SVC_F_AFFINITY_NONE, SVC_F_PASS_NO_BACKEND, ServiceKey, ServiceValue,
    affinity::{self, Verdict},
    flow_hash,
    maglev::{self, MaglevBackend, MaglevError},
    maglev_slot, prefix_mask,
};

pub use crate::dataplane::maps::ktime_coarse_ns;
use crate::{
    dataplane::maps::{DataPlane, MapsError},
    model::{
        Affinity, BackendSpec, Link, NoBackend, ServiceSpec, addr_bytes, addr_from_words,
        addr_words,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum BalancerError {
    #[error("service {0:?} does not exist")]
    UnknownService(String),
    #[error("service {0:?} already exists")]
    DuplicateService(String),
    #[error("service {existing:?} already uses {vip} port {port}/{protocol}")]
    DuplicateListener {
        existing: String,
        vip: IpAddr,
        port: u16,
        protocol: &'static str,
    },
    #[error("service {service:?} has no backend {address}")]
    UnknownBackend { service: String, address: IpAddr },
    #[error("service {service:?} already has backend {address}")]
    DuplicateBackend { service: String, address: IpAddr },
    #[error("all {MAX_SERVICES} service ids are in use")]
    NoServiceId,
    #[error("all {MAX_BACKENDS} backend ids are in use")]
    NoBackendId,
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
    #[error("client {client} is not of the address family of service {service:?}")]
    FamilyMismatch { service: String, client: IpAddr },
    #[error(transparent)]
    Maps(#[from] MapsError),
}

type Result<T> = std::result::Result<T, BalancerError>;

#[derive(Clone, Debug)]
pub struct BackendState {
    pub id: u32,
    pub spec: BackendSpec,
    pub generation: u32,
    pub healthy: bool,
    pub draining: bool,
    pub link: Option<Link>,
}

impl BackendState {
    /// Takes new clients: in the Maglev table.
    pub fn in_table(&self) -> bool {
        self.healthy && !self.draining && self.link.is_some()
    }

    /// Keeps its pinned clients: the data plane's healthy bit.
    fn usable(&self) -> bool {
        self.healthy && self.link.is_some()
    }

    fn entry(&self, service_id: u32) -> Backend {
        let (addr, family) = addr_words(self.spec.address);
        let link = self.link.unwrap_or(Link {
            mac: [0; 6],
            src_mac: [0; 6],
            ifindex: 0,
        });
        let mut flags = 0;
        if self.usable() {
            flags |= BE_F_HEALTHY;
        }
        if self.draining {
            flags |= BE_F_DRAINING;
        }
        Backend {
            addr,
            mac: link.mac,
            src_mac: link.src_mac,
            port_be: 0,
            family,
            flags,
            ifindex: link.ifindex,
            service_id,
            generation: self.generation,
            _pad: [0; 4],
        }
    }
}

#[derive(Clone, Debug)]
pub struct ServiceState {
    pub id: u32,
    pub spec: ServiceSpec,
    pub table_offset: u32,
    /// The Maglev table as last written.
    pub table: Vec<u32>,
    /// The table before the last change that altered it (for `explain`).
    pub previous_table: Vec<u32>,
    pub backends: Vec<BackendState>,
}

impl ServiceState {
    pub fn key(&self) -> ServiceKey {
        let (addr, family) = addr_words(self.spec.vip);
        ServiceKey {
            addr,
            port_be: self.spec.port.to_be(),
            proto: self.spec.protocol.number(),
            family,
        }
    }

    pub fn value(&self) -> ServiceValue {
        let (_, family) = addr_bytes(self.spec.vip);
        let mut flags = 0;
        if self.spec.affinity == Affinity::None {
            flags |= SVC_F_AFFINITY_NONE;
        }
        if self.spec.no_backend == NoBackend::Pass {
            flags |= SVC_F_PASS_NO_BACKEND;
        }
        let idle_timeout_ns = self.spec.idle_timeout.as_nanos().min(u64::MAX as u128) as u64;
        ServiceValue {
            id: self.id,
            flags,
            table_offset: self.table_offset,
            table_size: self.spec.table_size,
            idle_timeout_ns,
            src_mask: prefix_mask(self.spec.prefix_len(), family),
            prefix_len: self.spec.prefix_len(),
            mode: MODE_DSR,
            _pad: [0; 2],
            refresh_ns: affinity::refresh_period_ns(idle_timeout_ns),
        }
    }

    pub fn backend(&self, address: IpAddr) -> Option<&BackendState> {
        self.backends.iter().find(|b| b.spec.address == address)
    }

    fn backend_by_id(&self, id: u32) -> Option<&BackendState> {
        self.backends.iter().find(|b| b.id == id)
    }

    /// The affinity key of a client (and source port, used only with `affinity = "none"`).
    pub fn affinity_key(&self, client: IpAddr, port: u16) -> Result<AffinityKey> {
        let (words, family) = addr_words(client);
        if family != addr_bytes(self.spec.vip).1 {
            return Err(BalancerError::FamilyMismatch {
                service: self.spec.name.clone(),
                client,
            });
        }
        Ok(affinity::key(&self.value(), &words, port.to_be(), family))
    }

    /// Share of the Maglev table held by each backend id.
    pub fn table_share(&self, backend_id: u32) -> f64 {
        if self.table.is_empty() {
            return 0.0;
        }
        self.table.iter().filter(|&&id| id == backend_id).count() as f64 / self.table.len() as f64
    }
}

/// A service as the daemon wants it: its spec and backends with their drain state.
#[derive(Clone, Debug)]
pub struct DesiredService {
    pub spec: ServiceSpec,
    pub backends: Vec<(BackendSpec, bool)>,
}

/// What [`Balancer::adopt`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdoptReport {
    pub services_adopted: usize,
    pub backends_adopted: usize,
    pub services_new: usize,
    pub services_removed: usize,
    pub backends_removed: usize,
}

/// Why `explain` expects the next packet to go where it says.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// A live affinity entry decides.
    Pinned { age: Duration, idle: Duration },
    /// The Maglev slot decides (no entry, or the entry is idle/expired or its backend is
    /// no longer usable).
    Hashed { reason: HashReason },
    /// The table is empty: no healthy backend.
    NoBackend,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashReason {
    NoEntry,
    Expired,
    BackendUnusable,
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
}

pub struct Balancer {
    pub dp: DataPlane,
    services: BTreeMap<String, ServiceState>,
}

impl Balancer {
    pub fn new(dp: DataPlane) -> Self {
        Self {
            dp,
            services: BTreeMap::new(),
        }
    }

    /// Gives the maps back (a test restarting the controller on the same maps).
    pub fn into_dataplane(self) -> DataPlane {
        self.dp
    }

    pub fn services(&self) -> impl Iterator<Item = &ServiceState> {
        self.services.values()
    }

    pub fn service(&self, name: &str) -> Result<&ServiceState> {
        self.services
            .get(name)
            .ok_or_else(|| BalancerError::UnknownService(name.to_string()))
    }

    /// A generation never issued before while the pinned state lives: reserved durably
    /// in `XLB_META` before any backend entry carries it.
    fn generation(&mut self) -> Result<u32> {
        Ok(self.dp.reserve_generations(1)?.start)
    }

    fn free_service_id(&self) -> Result<u32> {
        (0..MAX_SERVICES)
            .find(|id| self.services.values().all(|s| s.id != *id))
            .ok_or(BalancerError::NoServiceId)
    }

    /// `n` backend ids used by no service and not in `taken` (ids still in the maps).
    fn free_backend_ids(&self, n: usize, taken: &[(u32, Backend)]) -> Result<Vec<u32>> {
        let used: std::collections::HashSet<u32> = self
            .services
            .values()
            .flat_map(|s| s.backends.iter().map(|b| b.id))
            .chain(taken.iter().map(|(id, _)| *id))
            .collect();
        let ids: Vec<u32> = (0..MAX_BACKENDS)
            .filter(|id| !used.contains(id))
            .take(n)
            .collect();
        if ids.len() < n {
            return Err(BalancerError::NoBackendId);
        }
        Ok(ids)
    }

    /// First fit in the Maglev array.
    fn free_table_offset(&self, size: u32) -> Result<u32> {
        let capacity = self.dp.maglev_capacity();
        let mut used: Vec<(u32, u32)> = self
            .services
            .values()
            .map(|s| (s.table_offset, s.spec.table_size))
            .collect();
        used.sort_unstable();
        let mut start = 0u32;
        for (off, len) in used {
            if off >= start && off - start >= size {
                return Ok(start);
            }
            start = start.max(off + len);
        }
        if capacity >= start && capacity - start >= size {
            Ok(start)
        } else {
            Err(BalancerError::MaglevSpace {
                needed: size,
                capacity,
            })
        }
    }

    /// Builds the model for `desired` on maps that may already hold state from an earlier
    /// daemon (pinned maps): services and backends found there keep their ids, generations,
    /// table region, health and link, so every affinity entry stays valid and a restart
    /// moves no client. Whatever the maps hold that is not desired is removed.
    pub fn adopt(dp: DataPlane, desired: &[DesiredService]) -> Result<(Self, AdoptReport)> {
        let mut lb = Balancer::new(dp);
        let mut report = AdoptReport::default();
        let old_services = lb.dp.service_entries()?;
        let old_backends = lb.dp.backend_entries()?;

        // 1. Services found in the maps with the same table size keep id and region.
        let mut fresh = Vec::new();
        for d in desired {
            let probe = ServiceState {
                id: 0,
                spec: d.spec.clone(),
                table_offset: 0,
                table: Vec::new(),
                previous_table: Vec::new(),
                backends: Vec::new(),
            };
            let key = probe.key();
            let Some((_, v)) = old_services
                .iter()
                .find(|(k, v)| *k == key && v.table_size == d.spec.table_size)
            else {
                fresh.push(d);
                continue;
            };
            let table = lb.dp.read_maglev(v.table_offset, v.table_size)?;
            let mut backends = Vec::new();
            for (spec, draining) in &d.backends {
                let (addr, family) = addr_words(spec.address);
                let old = old_backends
                    .iter()
                    .find(|(_, b)| b.service_id == v.id && b.addr == addr && b.family == family);
                match old {
                    Some((id, b)) => {
                        let resolved = b.mac != [0; 6];
                        backends.push(BackendState {
                            id: *id,
                            spec: spec.clone(),
                            generation: b.generation,
                            // An unresolved backend has its healthy bit clear too;
                            // only a resolved one tells us its health.
                            healthy: !resolved || b.flags & BE_F_HEALTHY != 0,
                            draining: *draining,
                            link: resolved.then_some(Link {
                                mac: b.mac,
                                src_mac: b.src_mac,
                                ifindex: b.ifindex,
                            }),
                        });
                        report.backends_adopted += 1;
                    }
                    None => backends.push(BackendState {
                        id: u32::MAX, // allocated below
                        spec: spec.clone(),
                        generation: 0,
                        healthy: true,
                        draining: *draining,
                        link: None,
                    }),
                }
            }
            lb.services.insert(
                d.spec.name.clone(),
                ServiceState {
                    id: v.id,
                    spec: d.spec.clone(),
                    table_offset: v.table_offset,
                    previous_table: table.clone(),
                    table,
                    backends,
                },
            );
            report.services_adopted += 1;
        }
        // 2. New backends of adopted services get ids not used by anything adopted.
        let names: Vec<String> = lb.services.keys().cloned().collect();
        for name in &names {
            let missing = lb.services[name]
                .backends
                .iter()
                .filter(|b| b.id == u32::MAX)
                .count();
            if missing == 0 {
                continue;
            }
            let ids = lb.free_backend_ids(missing, &old_backends)?;
            let mut ids = ids.into_iter();
            for i in 0..lb.services[name].backends.len() {
                if lb.services[name].backends[i].id == u32::MAX {
                    let id = ids.next().expect("allocated enough ids");
                    let generation = lb.generation()?;
                    lb.dp.reset_backend_stats(id)?;
                    let b = &mut lb.services.get_mut(name).expect("present").backends[i];
                    b.id = id;
                    b.generation = generation;
                }
            }
        }
        // 3. Remove the services the maps hold and are no longer desired.
        for (k, v) in &old_services {
            if !lb.services.values().any(|s| s.id == v.id && s.key() == *k) {
                lb.dp.remove_service(k)?;
                lb.dp.affinity_flush(Some(v.id))?;
                report.services_removed += 1;
            }
        }
        // 4. Write the adopted services (only differences reach the maps), then clear the
        //    backends no table points to any more.
        for name in &names {
            lb.commit(name, &[])?;
        }
        for (id, _) in &old_backends {
            let live = lb
                .services
                .values()
                .any(|s| s.backends.iter().any(|b| b.id == *id));
            if !live {
                lb.dp.set_backend(*id, &Backend::default())?;
                report.backends_removed += 1;
            }
        }
        lb.sync_vips()?;
        // 5. Services not found in the maps are added as new.
        for d in fresh {
            let backends: Vec<(BackendSpec, Option<Link>)> =
                d.backends.iter().map(|(b, _)| (b.clone(), None)).collect();
            lb.add_service(d.spec.clone(), &backends)?;
            for (b, draining) in &d.backends {
                if *draining {
                    lb.set_draining(&d.spec.name, b.address, true)?;
                }
            }
            report.services_new += 1;
        }
        Ok((lb, report))
    }

    /// Adds a service with its backends. Backends start healthy (health checks, when
    /// configured, take them out) and take traffic as soon as their link is known.
    pub fn add_service(
        &mut self,
        spec: ServiceSpec,
        backends: &[(BackendSpec, Option<Link>)],
    ) -> Result<()> {
        if self.services.contains_key(&spec.name) {
            return Err(BalancerError::DuplicateService(spec.name));
        }
        if let Some(s) = self.services.values().find(|s| {
            s.spec.vip == spec.vip && s.spec.port == spec.port && s.spec.protocol == spec.protocol
        }) {
            return Err(BalancerError::DuplicateListener {
                existing: s.spec.name.clone(),
                vip: spec.vip,
                port: spec.port,
                protocol: if spec.protocol.number() == lb_common::PROTO_TCP {
                    "tcp"
                } else {
                    "udp"
                },
            });
        }
        let id = self.free_service_id()?;
        let table_offset = self.free_table_offset(spec.table_size)?;
        let ids = self.free_backend_ids(backends.len(), &[])?;
        let mut states = Vec::with_capacity(backends.len());
        for ((b, link), id) in backends.iter().zip(ids) {
            if states
                .iter()
                .any(|s: &BackendState| s.spec.address == b.address)
            {
                return Err(BalancerError::DuplicateBackend {
                    service: spec.name.clone(),
                    address: b.address,
                });
            }
            states.push(BackendState {
                id,
                spec: b.clone(),
                generation: self.generation()?,
                healthy: true,
                draining: false,
                link: *link,
            });
        }
        let state = ServiceState {
            id,
            table: Vec::new(),
            previous_table: Vec::new(),
            table_offset,
            spec,
            backends: states,
        };
        let name = state.spec.name.clone();
        // Validate the table before anything is written.
        build_table(&state)?;
        // Counters start from zero even if the ids served others before.
        self.dp.reset_service_stats(state.id)?;
        for b in &state.backends {
            self.dp.reset_backend_stats(b.id)?;
        }
        self.services.insert(name.clone(), state);
        self.commit(&name, &[])?;
        self.sync_vips()
    }

    pub fn remove_service(&mut self, name: &str) -> Result<()> {
        let svc = self
            .services
            .remove(name)
            .ok_or_else(|| BalancerError::UnknownService(name.to_string()))?;
        self.dp.remove_service(&svc.key())?;
        for b in &svc.backends {
            self.dp.set_backend(b.id, &Backend::default())?;
        }
        self.sync_vips()?;
        self.dp.affinity_flush(Some(svc.id))?;
        Ok(())
    }

    fn sync_vips(&mut self) -> Result<()> {
        let mut vips: Vec<(lb_common::Addr, u8)> = self
            .services
            .values()
            .map(|s| addr_words(s.spec.vip))
            .collect();
        vips.sort_unstable();
        vips.dedup();
        self.dp.set_vips(&vips)?;
        Ok(())
    }

    pub fn add_backend(
        &mut self,
        service: &str,
        spec: BackendSpec,
        link: Option<Link>,
    ) -> Result<()> {
        let id = self.free_backend_ids(1, &[])?[0];
        let generation = self.generation()?;
        self.dp.reset_backend_stats(id)?;
        let svc = self.service_mut(service)?;
        if svc.backend(spec.address).is_some() {
            return Err(BalancerError::DuplicateBackend {
                service: service.to_string(),
                address: spec.address,
            });
        }
        svc.backends.push(BackendState {
            id,
            spec,
            generation,
            healthy: true,
            draining: false,
            link,
        });
        if let Err(e) = build_table(svc) {
            svc.backends.pop();
            return Err(e);
        }
        self.commit(service, &[])
    }

    pub fn remove_backend(&mut self, service: &str, address: IpAddr) -> Result<()> {
        let svc = self.service_mut(service)?;
        let pos = svc
            .backends
            .iter()
            .position(|b| b.spec.address == address)
            .ok_or_else(|| BalancerError::UnknownBackend {
                service: service.to_string(),
                address,
            })?;
        let removed = svc.backends.remove(pos);
        self.commit(service, &[removed.id])
    }

    /// Applies `f` to one backend and writes the result.
    pub fn update_backend(
        &mut self,
        service: &str,
        address: IpAddr,
        f: impl FnOnce(&mut BackendState),
    ) -> Result<()> {
        let svc = self.service_mut(service)?;
        let b = svc
            .backends
            .iter_mut()
            .find(|b| b.spec.address == address)
            .ok_or_else(|| BalancerError::UnknownBackend {
                service: service.to_string(),
                address,
            })?;
        let before = b.clone();
        f(b);
        if let Err(e) = build_table(svc) {
            if let Some(b) = svc.backends.iter_mut().find(|b| b.spec.address == address) {
                *b = before;
            }
            return Err(e);
        }
        self.commit(service, &[])
    }

    pub fn set_healthy(&mut self, service: &str, address: IpAddr, healthy: bool) -> Result<()> {
        self.update_backend(service, address, |b| b.healthy = healthy)
    }

    pub fn set_draining(&mut self, service: &str, address: IpAddr, draining: bool) -> Result<()> {
        self.update_backend(service, address, |b| b.draining = draining)
    }

    pub fn set_link(&mut self, service: &str, address: IpAddr, link: Option<Link>) -> Result<()> {
        self.update_backend(service, address, |b| b.link = link)
    }

    pub fn set_weight(&mut self, service: &str, address: IpAddr, weight: u32) -> Result<()> {
        self.update_backend(service, address, |b| b.spec.weight = weight)
    }

    fn service_mut(&mut self, name: &str) -> Result<&mut ServiceState> {
        self.services
            .get_mut(name)
            .ok_or_else(|| BalancerError::UnknownService(name.to_string()))
    }

    /// Writes a service's state in the order the data plane needs (module docs).
    fn commit(&mut self, name: &str, removed_ids: &[u32]) -> Result<()> {
        let svc = self
            .services
            .get(name)
            .ok_or_else(|| BalancerError::UnknownService(name.to_string()))?;
        let table = build_table(svc)?;
        let (id, offset) = (svc.id, svc.table_offset);
        let first = svc.table.is_empty();
        // 1. Usable backends first, so new slots never point to an unusable entry.
        for b in svc.backends.iter().filter(|b| b.usable()) {
            self.dp.set_backend(b.id, &b.entry(id))?;
        }
        // 2. The table: only the slots that changed.
        let old = if first {
            None
        } else {
            Some(svc.table.as_slice())
        };
        self.dp.write_maglev(offset, &table, old)?;
        // 3. The service value (new services become visible only now).
        self.dp.set_service(&svc.key(), &svc.value())?;
        // 4. Unusable and removed backends last.
        for b in svc.backends.iter().filter(|b| !b.usable()) {
            self.dp.set_backend(b.id, &b.entry(id))?;
        }
        for rid in removed_ids {
            self.dp.set_backend(*rid, &Backend::default())?;
        }
        let svc = self.services.get_mut(name).expect("checked above");
        if svc.table != table {
            svc.previous_table = std::mem::replace(&mut svc.table, table);
        }
        Ok(())
    }

    /// `failback = "rebalance"`: the clients whose Maglev slot belongs to `address` (it
    /// just recovered) but are pinned elsewhere are unpinned, so their next packet goes
    /// back to it. Returns how many entries were removed.
    pub fn rebalance_to(&mut self, service: &str, address: IpAddr) -> Result<usize> {
        let svc = self.service(service)?;
        let id = svc
            .backend(address)
            .ok_or_else(|| BalancerError::UnknownBackend {
                service: service.to_string(),
                address,
            })?
            .id;
        let moved: Vec<AffinityKey> = self
            .dp
            .affinity_entries(Some(svc.id))?
            .into_iter()
            .filter(|(k, v)| {
                let slot = maglev_slot(flow_hash(k), svc.spec.table_size) as usize;
                v.backend_id != id && svc.table.get(slot) == Some(&id)
            })
            .map(|(k, _)| k)
            .collect();
        for k in &moved {
            self.dp.affinity_remove(k)?;
        }
        Ok(moved.len())
    }

    /// Which backend the next packet from `client` (source port `port`) goes to, and why:
    /// the same rules, the same hash and the same maps as the XDP program.
    pub fn explain(&self, service: &str, client: IpAddr, port: u16) -> Result<Explanation> {
        let svc = self.service(service)?;
        let key = svc.affinity_key(client, port)?;
        let slot = maglev_slot(flow_hash(&key), svc.spec.table_size);
        let addr_of = |id: u32| svc.backend_by_id(id).map(|b| b.spec.address);
        let slot_id = svc.table.get(slot as usize).copied().unwrap_or(NO_BACKEND);
        let prev_id = svc.previous_table.get(slot as usize).copied();
        let slot_backend = addr_of(slot_id);
        let previous_slot_backend = prev_id
            .filter(|p| *p != slot_id && *p != NO_BACKEND)
            .and_then(|p| {
                // The previous holder may be gone: report the address it had if known.
                addr_of(p)
            });
        let hashed = |reason| {
            if slot_id == NO_BACKEND {
                (Decision::NoBackend, None)
            } else {
                (Decision::Hashed { reason }, slot_backend)
            }
        };
        // The XDP program's own rules (lb_common::affinity) on the maps' own values.
        let now = ktime_coarse_ns();
        let (decision, backend) = match self.dp.judge(&svc.value(), &key, now)? {
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
        })
    }
}

fn build_table(svc: &ServiceState) -> Result<Vec<u32>> {
    let members: Vec<MaglevBackend> = svc
        .backends
        .iter()
        .filter(|b| b.in_table())
        .map(|b| MaglevBackend {
            id: b.id,
            addr: addr_bytes(b.spec.address).0,
            weight: b.spec.weight,
        })
        .collect();
    maglev::build(&members, svc.spec.table_size).map_err(|source| BalancerError::Maglev {
        service: svc.spec.name.clone(),
        source,
    })
}
