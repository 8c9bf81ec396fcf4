//! What the daemon shows: `xlb status`, `xlb stats` and the metrics all come from ONE
//! walk over the state ([`walk`]): every desired service with what is programmed for it,
//! its counters when asked for, rates, pin counts, health-check and neighbour notes. The
//! three are projections of that walk, so they never disagree. `xlb explain` and
//! `xlb affinity list` read the affinity table with the data plane's own rules.
//!
//! Pinned clients are live pins only: a backend that is not usable (unhealthy,
//! unresolved) shows 0 whatever the last count said — its entries are stale and move on
//! their next packet — and a service's count is the sum of its backends' (issue 10,
//! fault 11).
//!
//! Owns: the shapes of status, stats, metrics, explain and affinity list. Must not touch:
//! any state (read only).

use std::{collections::HashMap, net::IpAddr};

use lb_common::{BackendStats, ServiceStats, Stat, affinity::Verdict};

use super::{
    owner::{State, control_error, runtime, usage},
    tasks::{health::Check, neigh::NeighNote, rates::RateKey},
};
use crate::{
    api::{self, Response},
    dataplane::maps::{MapsError, ktime_coarse_ns},
    load::{BackendShares, DEFAULT_INTERVAL_S},
    metrics,
    model::{Health, Named, Service, addr_from_words, format_duration},
    reconcile::{ProgrammedBackend, ProgrammedService, inspect::Decision, tunnel},
};

/// One service in the walk.
pub struct ServiceView<'a> {
    pub svc: &'a Service,
    pub ps: &'a ProgrammedService,
    /// Zero unless the walk read counters.
    pub counters: ServiceStats,
    /// (packets/s, bits/s).
    pub rate: (f64, f64),
    pub pinned: u64,
    pub backends: Vec<BackendView<'a>>,
}

/// One backend in the walk.
pub struct BackendView<'a> {
    pub b: &'a ProgrammedBackend,
    pub counters: BackendStats,
    pub rate: (f64, f64),
    /// Live pins (0 while unusable).
    pub pinned: u64,
    pub check: Option<&'a Check>,
    pub neigh: Option<&'a NeighNote>,
    /// Its health lets it take clients (the table also needs its link).
    pub up: bool,
    /// "unknown" until this daemon's first check of it (the data plane keeps the last
    /// known state meanwhile).
    pub shown_health: Health,
}

/// The walk: every desired service that is programmed, in name order.
pub struct View<'a> {
    pub services: Vec<ServiceView<'a>>,
    /// Global counters (zero unless read).
    pub global: [u64; Stat::COUNT as usize],
}

/// Which counters a walk reads from the data plane.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Counters {
    /// None (status).
    Nothing,
    /// Per service and backend (rates).
    Services,
    /// Those and the global verdict counters (stats, metrics).
    All,
}

/// Walks the state once, reading the data plane's `read` counters.
pub fn walk(st: &State, read: Counters) -> Result<View<'_>, MapsError> {
    let dp = &st.ctl.dp;
    let global = if read == Counters::All {
        dp.stats()?
    } else {
        [0; Stat::COUNT as usize]
    };
    let counters = read != Counters::Nothing;
    let mut services = Vec::new();
    for svc in st.ctl.desired.services() {
        let Some(ps) = st.ctl.programmed.service(&svc.name) else {
            continue;
        };
        let mut backends = Vec::new();
        for b in &ps.backends {
            backends.push(backend_view(st, svc, b, counters)?);
        }
        services.push(ServiceView {
            svc,
            ps,
            counters: if counters {
                dp.service_stats(ps.id)?
            } else {
                ServiceStats::default()
            },
            rate: st.rates.get(&svc.name, None),
            pinned: backends.iter().map(|b| b.pinned).sum(),
            backends,
        });
    }
    Ok(View { services, global })
}

fn backend_view<'a>(
    st: &'a State,
    svc: &Service,
    b: &'a ProgrammedBackend,
    counters: bool,
) -> Result<BackendView<'a>, MapsError> {
    let check = st.checks.get(&svc.name, b.address);
    let up = match b.health {
        Health::Up => true,
        Health::Down => false,
        Health::Unknown => svc.health.unknown_is_up(),
    };
    Ok(BackendView {
        b,
        counters: if counters {
            st.ctl.dp.backend_stats(b.id)?
        } else {
            BackendStats::default()
        },
        rate: st.rates.get(&svc.name, Some(b.address)),
        pinned: if b.usable() {
            st.pinned.backend(b.id)
        } else {
            0
        },
        check,
        neigh: st.neigh.note(b.address),
        up,
        shown_health: if check.is_some_and(|c| c.checked) {
            b.health
        } else {
            Health::Unknown
        },
    })
}

/// `xlb status` (no counters read).
pub fn status(st: &State) -> api::Status {
    let view = walk(st, Counters::Nothing).expect("a walk without counters reads no map");
    api::Status {
        version: env!("CARGO_PKG_VERSION").into(),
        program_id: st.program_id,
        attach_mode: st.cfg.daemon.xdp_mode.name().into(),
        interfaces: st.ifaces.names(),
        attachments: st.ifaces.statuses(),
        pinned_counts_age_s: st
            .pinned
            .taken
            .map_or(f64::NAN, |t| t.elapsed().as_secs_f64()),
        services: view
            .services
            .iter()
            .map(|s| service_status(st, s))
            .collect(),
        announce: announce_status(st),
    }
}

/// The policy's decision now (fresh right after a change), with what the announcer did
/// at its last sync.
fn announce_status(st: &State) -> api::AnnounceStatus {
    use crate::model::Announce;
    let book = &st.announced;
    let kind = st.cfg.announce.kind();
    let vips = crate::announce::decide(&super::tasks::announce::facts(st))
        .into_iter()
        .map(|d| {
            let last = book.outcomes.iter().find(|o| o.vip == d.vip);
            let state = match (kind, last.and_then(|o| o.announced)) {
                (crate::model::AnnounceKind::None, _) => "none",
                (_, Some(true)) => "announced",
                (_, Some(false)) => "withdrawn",
                (_, None) => "unknown",
            };
            api::VipStatus {
                vip: d.vip,
                state: state.into(),
                want: d.announce,
                why: d.reason.code().into(),
                reason: d.reason.to_string(),
                error: last.and_then(|o| o.error.clone()),
            }
        })
        .collect();
    api::AnnounceStatus {
        kind: kind.name().into(),
        target: match &st.cfg.announce {
            Announce::None => None,
            Announce::Bird { socket } => Some(socket.display().to_string()),
            Announce::Command { announce, .. } => Some(announce.join(" ")),
        },
        node_drained: st.ctl.desired.node_drained(),
        synced_age_s: book.synced.map(|t| t.elapsed().as_secs_f64()),
        vips,
    }
}

/// (load share, weight share) of backend `id`.
fn share_of(s: &BackendShares, id: u32) -> (f64, f64) {
    s.backends
        .iter()
        .find(|(b, _, _)| *b == id)
        .map_or((0.0, 0.0), |(_, l, f)| (*l, *f))
}

fn service_status(st: &State, v: &ServiceView<'_>) -> api::ServiceStatus {
    let s = v.svc;
    let shares = super::load::shares(st, v);
    let egress = known_egress(st);
    api::ServiceStatus {
        name: s.name.clone(),
        vip: s.vip,
        port: s.port,
        protocol: s.protocol.name().into(),
        affinity: s.affinity.name().into(),
        prefix: s.prefix_len(),
        idle_timeout: format_duration(s.idle_timeout),
        failback: s.failback.name().into(),
        table_size: s.table_size,
        health: s.health.kind.tag().name().into(),
        pinned_clients: v.pinned,
        forwarding: s.forwarding.name().into(),
        tunnel_source: s.tunnel_source.map(|p| p.to_string()),
        nat_sources: s.nat_sources.iter().map(|p| p.to_string()).collect(),
        balance_factor: s.balance_factor.map(|f| f.get()),
        nat_warn_share: s.nat_warn_share.get(),
        load_imbalance: shares.imbalance,
        load_interval_s: DEFAULT_INTERVAL_S as u32,
        heavy_source: st.load.heavy(&s.name).cloned(),
        backends: v
            .backends
            .iter()
            .map(|b| {
                let (load, fair) = share_of(&shares, b.b.id);
                let mut status = backend_status(st, v.ps, b);
                // A backend healthy and resolved may still be unusable (a tunnel one
                // without an outer source, a DSR one behind a gateway).
                if let Some(why) = blocked(st, s, b.b, &egress) {
                    status.note = Some(why);
                }
                // An IPv6 tunnel whose egress MTU is below 1320 loses some packet sizes.
                if status.note.is_none() {
                    status.note = tunnel::ipv6_mtu_warning(s, b.b.link.as_ref(), &egress);
                }
                api::BackendStatus {
                    load_share: load,
                    weight_share: fair,
                    over_bound: st.load.over_bound(b.b.id),
                    ..status
                }
            })
            .collect(),
    }
}

/// Why backend `b` of `s` cannot take traffic although healthy and resolved
/// ([`tunnel::blocker`]), interfaces named.
fn blocked(
    st: &State,
    s: &crate::model::Service,
    b: &crate::reconcile::ProgrammedBackend,
    egress: &std::collections::BTreeMap<u32, lb_common::tunnel::Egress>,
) -> Option<String> {
    let gateway = st.ctl.observed.gateways.get(&b.address).copied();
    tunnel::blocker(s, b.address, b.link.as_ref(), gateway, egress)
        .map(|why| why.describe(|i| interface_name(st, i)))
}

/// An interface's name (its index when xlb does not know it).
fn interface_name(st: &State, ifindex: u32) -> String {
    st.ifaces
        .name_of(ifindex)
        .map_or_else(|| format!("index {ifindex}"), str::to_string)
}

fn backend_status(st: &State, ps: &ProgrammedService, v: &BackendView<'_>) -> api::BackendStatus {
    let b = v.b;
    let problem = v.neigh.and_then(|n| n.problem.clone());
    api::BackendStatus {
        address: b.address,
        weight: b.weight,
        health: v.shown_health.name().into(),
        healthy: v.up,
        draining: b.draining,
        resolved: b.link.is_some(),
        mac: b.link.map(|l| crate::neigh::format_mac(&l.mac)),
        interface: b
            .link
            .and_then(|l| st.ifaces.name_of(l.ifindex).map(str::to_string))
            .or_else(|| v.neigh.and_then(|n| n.interface.clone())),
        note: if b.link.is_none() {
            problem.or_else(|| Some("neighbour not resolved yet".into()))
        } else if !v.up {
            v.check.and_then(|c| c.last_failure.clone())
        } else {
            problem
        },
        table_share: ps.table_share(b.id),
        pinned_clients: v.pinned,
        health_transitions: v.check.map_or(0, |c| c.transitions),
        last_check_ms: v.check.and_then(|c| c.last_latency).map(|l| l * 1e3),
        load_share: 0.0,
        weight_share: 0.0,
        over_bound: false,
    }
}

/// `xlb stats`.
pub fn stats(st: &State) -> Response {
    let view = match walk(st, Counters::All) {
        Ok(v) => v,
        Err(e) => return runtime(e),
    };
    let services = view
        .services
        .iter()
        .map(|s| api::ServiceStats {
            name: s.svc.name.clone(),
            packets: s.counters.packets,
            bytes: s.counters.bytes,
            packets_per_s: s.rate.0,
            bits_per_s: s.rate.1,
            hits: s.counters.hits,
            misses: s.counters.misses,
            repins: s.counters.repins,
            expiries: s.counters.expiries,
            no_backend: s.counters.no_backend,
            icmp_errors: s.counters.icmp_errors,
            backends: s
                .backends
                .iter()
                .map(|b| api::BackendStats {
                    address: b.b.address,
                    packets: b.counters.packets,
                    bytes: b.counters.bytes,
                    packets_per_s: b.rate.0,
                    bits_per_s: b.rate.1,
                    pins: b.counters.pins,
                })
                .collect(),
        })
        .collect();
    Response::ok(api::Stats {
        packets: packets(&view.global),
        services,
        rate_interval_s: st.rates.interval_s,
    })
}

fn packets(global: &[u64; Stat::COUNT as usize]) -> Vec<(String, u64)> {
    Stat::ALL
        .iter()
        .map(|s| (s.name().to_string(), global[*s as usize]))
        .collect()
}

/// A metrics scrape. A failed counter read is logged and the scrape carries zeros
/// rather than failing (a scraper would lose every other value).
pub fn snapshot(st: &State) -> metrics::Snapshot {
    let view = walk(st, Counters::All).unwrap_or_else(|e| {
        log::debug!("metrics: reading counters: {e}");
        walk(st, Counters::Nothing).expect("a walk without counters reads no map")
    });
    let services = view
        .services
        .iter()
        .map(|s| service_snapshot(st, s))
        .collect();
    metrics::Snapshot {
        version: env!("CARGO_PKG_VERSION").into(),
        program_id: st.program_id,
        attach_mode: st.cfg.daemon.xdp_mode.name().into(),
        interfaces: st.ifaces.names(),
        attachments: st
            .ifaces
            .statuses()
            .into_iter()
            .map(|i| (i.name, i.attached))
            .collect(),
        vips: announce_status(st)
            .vips
            .into_iter()
            .map(|v| {
                let announced = match v.state.as_str() {
                    "announced" => Some(true),
                    "withdrawn" => Some(false),
                    _ => None,
                };
                (v.vip.to_string(), v.want, announced)
            })
            .collect(),
        packets: packets(&view.global),
        services,
    }
}

fn service_snapshot(st: &State, s: &ServiceView<'_>) -> metrics::ServiceSnapshot {
    let c = &s.counters;
    let shares = super::load::shares(st, s);
    metrics::ServiceSnapshot {
        name: s.svc.name.clone(),
        vip: s.svc.vip.to_string(),
        port: s.svc.port,
        protocol: s.svc.protocol.name().into(),
        packets: c.packets,
        bytes: c.bytes,
        hits: c.hits,
        misses: c.misses,
        repins: c.repins,
        expiries: c.expiries,
        no_backend: c.no_backend,
        icmp_errors: c.icmp_errors,
        pinned_clients: s.pinned,
        load_imbalance: shares.imbalance,
        top_source_share: st.load.top_share(&s.svc.name),
        heavy_source: st.load.heavy(&s.svc.name).is_some(),
        backends: s
            .backends
            .iter()
            .map(|b| metrics::BackendSnapshot {
                address: b.b.address.to_string(),
                weight: b.b.weight,
                packets: b.counters.packets,
                bytes: b.counters.bytes,
                pins: b.counters.pins,
                pinned_clients: b.pinned,
                table_share: s.ps.table_share(b.b.id),
                load_share: share_of(&shares, b.b.id).0,
                over_bound: st.load.over_bound(b.b.id),
                healthy: b.up,
                draining: b.b.draining,
                resolved: b.b.link.is_some(),
                health_transitions: b.check.map_or(0, |c| c.transitions),
                last_check_latency_seconds: b.check.and_then(|c| c.last_latency),
            })
            .collect(),
    }
}

/// (packets, bytes) per service and backend, for the rates.
pub fn rate_samples(st: &State) -> HashMap<RateKey, (u64, u64)> {
    let Ok(view) = walk(st, Counters::Services) else {
        return HashMap::new();
    };
    let mut out = HashMap::new();
    for s in &view.services {
        let name = &s.svc.name;
        out.insert((name.clone(), None), (s.counters.packets, s.counters.bytes));
        for b in &s.backends {
            let c = &b.counters;
            out.insert((name.clone(), Some(b.b.address)), (c.packets, c.bytes));
        }
    }
    out
}

/// `xlb explain`.
pub fn explain(st: &State, service: &str, client: IpAddr, port: u16) -> Response {
    let e = match st.ctl.explain(service, client, port) {
        Ok(e) => e,
        Err(e) => return control_error(e),
    };
    let Ok(ps) = st.ctl.service(service) else {
        return usage(format!("service {service:?} does not exist"));
    };
    let svc = st.ctl.desired.service(service);
    let key_addr = addr_from_words(&e.key.addr, e.key.family);
    let nat_source = e
        .nat_source
        .map(|len| crate::model::Prefix::masked(client, len))
        .zip(e.nat_source)
        .map(|(a, len)| format!("{a}/{len}"));
    let key = match e.nat_source {
        Some(_) => format!("{key_addr} port {}", u16::from_be(e.key.port_be)),
        None => format!("{key_addr}/{}", ps.value.prefix_len),
    };
    let (reason, age, idle) = match &e.decision {
        Decision::Pinned { age, idle } => (None, Some(age.as_secs_f64()), Some(idle.as_secs_f64())),
        Decision::Hashed { reason } => (Some(reason.name().to_string()), None, None),
        Decision::NoBackend => (None, None, None),
    };
    Response::ok(api::Explain {
        service: service.to_string(),
        client,
        key,
        decision: e.decision.name().into(),
        reason,
        backend: e.backend,
        pinned_age_s: age,
        idle_s: idle,
        slot: e.slot,
        slot_backend: e.slot_backend,
        previous_slot_backend: e.previous_slot_backend,
        nat_source,
        over_bound_backend: e.bound.map(|(b, _)| b),
        forwarding: svc.map_or_else(String::new, |s| s.forwarding.name().into()),
        outer_source: svc.zip(e.backend).and_then(|(s, b)| {
            let link = ps.backend(b)?.link?;
            tunnel::outer_source(s, b, client, known_egress(st).get(&link.ifindex))
        }),
        unusable: svc.map_or_else(Vec::new, |s| healthy_unusable(st, s, ps)),
    })
}

/// The backends of `s` that are up (or unknown and counted up) but not usable, with why.
fn healthy_unusable(st: &State, s: &Service, ps: &ProgrammedService) -> Vec<String> {
    let egress = known_egress(st);
    ps.backends
        .iter()
        .filter(|b| match b.health {
            Health::Up => true,
            Health::Down => false,
            Health::Unknown => s.health.unknown_is_up(),
        })
        .filter_map(|b| {
            let why = match b.link {
                None => Some(
                    st.neigh
                        .note(b.address)
                        .and_then(|n| n.problem.clone())
                        .unwrap_or_else(|| "its next hop is not resolved".into()),
                ),
                Some(_) => blocked(st, s, b, &egress),
            }?;
            Some(format!("{}: {why}", b.address))
        })
        .collect()
}

/// The egress facts reconcile judges with (observed over programmed).
fn known_egress(st: &State) -> std::collections::BTreeMap<u32, lb_common::tunnel::Egress> {
    tunnel::known_egress(&st.ctl.observed.egress, &st.ctl.programmed.egress)
}

/// One poll of `xlb backend drain --wait`: the backend's live pins at the last count and
/// whether that count can speak for the drain (see daemon/tasks/scan.rs). An unusable
/// backend counts no pin, as in status: its clients move on their next packet anyway.
pub fn drain_status(
    st: &State,
    service: &str,
    address: IpAddr,
) -> Result<api::DrainStatus, Response> {
    let ps = st.ctl.service(service).map_err(control_error)?;
    let Some(b) = ps.backend(address) else {
        return Err(usage(format!(
            "service {service:?} has no backend {address}"
        )));
    };
    let idle = st
        .ctl
        .desired
        .service(service)
        .map_or_else(String::new, |s| format_duration(s.idle_timeout));
    let p = &st.pinned;
    let since = st.drained_at.get(&(service.to_string(), address));
    let counted_since_drain =
        b.draining && since.is_some_and(|t| p.taken.is_some_and(|at| at >= *t));
    let (pinned, seen) = if b.usable() {
        (p.backend(b.id), p.backend_seen(b.id))
    } else {
        (0, None)
    };
    let now = ktime_coarse_ns();
    let ago = |ns: u64| now.saturating_sub(ns) as f64 / 1e9;
    Ok(api::DrainStatus {
        service: service.to_string(),
        address,
        draining: b.draining,
        pinned_clients: pinned,
        counted_since_drain,
        counted_age_s: p.taken.map(|t| t.elapsed().as_secs_f64()),
        newest_seen_s: seen.map(|s| ago(s.newest_ns)),
        oldest_seen_s: seen.map(|s| ago(s.oldest_ns)),
        idle_timeout: idle,
        drained: counted_since_drain && pinned == 0,
    })
}

/// `xlb affinity list`: entries judged like the XDP program judges them
/// (lb_common::affinity), most recently active first.
pub fn affinity_list(st: &State, service: Option<&str>, limit: usize) -> Response {
    let id = match service.map(|s| st.ctl.service(s)) {
        Some(Ok(s)) => Some(s.id),
        Some(Err(e)) => return control_error(e),
        None => None,
    };
    let now = ktime_coarse_ns();
    let entries = match st.ctl.dp.judged_entries(id, now) {
        Ok(e) => e,
        Err(e) => return runtime(e),
    };
    let total = entries.len();
    let mut out: Vec<api::AffinityEntry> = entries
        .into_iter()
        .filter_map(|p| {
            let (k, v) = (p.key, p.value);
            let ps = st.ctl.programmed.service_by_id(k.service_id)?;
            let backend = p
                .backend
                .filter(|_| p.backend_is_its_own())
                .map(|b| addr_from_words(&b.addr, b.family));
            Some(api::AffinityEntry {
                service: ps.name.clone().unwrap_or_default(),
                client: format!(
                    "{}/{}",
                    addr_from_words(&k.addr, k.family),
                    ps.value.prefix_len
                ),
                port: u16::from_be(k.port_be),
                backend,
                age_s: now.saturating_sub(v.pinned_ns) as f64 / 1e9,
                idle_s: now.saturating_sub(v.last_seen_ns) as f64 / 1e9,
                expired: p.verdict == Verdict::Expired,
            })
        })
        .collect();
    out.sort_by(|a, b| a.idle_s.total_cmp(&b.idle_s));
    out.truncate(limit);
    Response::ok(api::AffinityList {
        total,
        entries: out,
    })
}
