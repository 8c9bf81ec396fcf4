//! The owner's load room: sampled sources in, once a second the books closed (exact
//! counters), the sampling periods set from the rates, and the heavy-source warning
//! judged; and the answers to `xlb top` and the load shares of status and metrics.
//!
//! The warning (issue 12): when one source, or one /24 (/64) prefix, carries more than
//! the service's `nat_warn_share` of its packets over the last
//! [`DEFAULT_INTERVAL_S`] seconds while it has at least 3 healthy backends (and at least
//! [`WARN_MIN_PACKETS`] packets in that interval), status carries a note, the metrics a
//! flag, and the log one line per service and source per hour.
//!
//! Owns: [`LoadState`]. Must not touch: the maps but the sampling periods, the rules of
//! the figures (crate::load).

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use log::warn;

use super::{
    owner::{State, usage},
    views::{self, Counters},
};
use crate::{
    api::{self, HeavySource, Response},
    load::{self, BackendShares, By, DEFAULT_INTERVAL_S, HISTORY, LoadBook, WARN_MIN_PACKETS},
    model::{Service, addr_from_words},
};

/// One log line per service and source this often at most.
const WARN_EVERY: Duration = Duration::from_secs(3600);
/// Sources with at least this share are listed by `top` whatever its limit.
const ALWAYS_LISTED: f64 = 0.05;
/// Fewer packets in a second than this flag no backend (the shares say little).
pub const BOUND_MIN_PACKETS: u64 = 50;
/// Healthy backends a service needs before a heavy source is worth a warning (with
/// fewer, spreading would not help much).
const WARN_MIN_BACKENDS: usize = 3;

/// What the owner keeps about load.
#[derive(Debug, Default)]
pub struct LoadState {
    pub book: LoadBook,
    /// Sampling period per service id, as last written.
    periods: HashMap<u32, u32>,
    /// When each (service, source) was last logged.
    logged: HashMap<(String, String), Instant>,
    /// The warning in force per service.
    heavy: HashMap<String, HeavySource>,
    /// The heaviest source's or prefix's share per service (0..1).
    top_share: HashMap<String, f64>,
    /// Backends flagged over their service's load bound (`XLB_BE_LOAD`), by id.
    over: HashSet<u32>,
    /// The flags a previous daemon left in the pinned map were cleared.
    swept: bool,
}

impl LoadState {
    /// The warning in force for `service`.
    pub fn heavy(&self, service: &str) -> Option<&HeavySource> {
        self.heavy.get(service)
    }

    /// Backend `id` is over its service's load bound right now.
    pub fn over_bound(&self, id: u32) -> bool {
        self.over.contains(&id)
    }

    /// The heaviest source's or prefix's share of `service`.
    pub fn top_share(&self, service: &str) -> f64 {
        self.top_share.get(service).copied().unwrap_or(0.0)
    }
}

/// Once a second, after the rates: closes the second, sets periods, judges warnings.
pub fn tick(st: &mut State) {
    let Ok(view) = views::walk(st, Counters::Services) else {
        return;
    };
    let mut counters = HashMap::new();
    let mut rates = HashMap::new();
    let mut healthy = HashMap::new();
    let mut bounded = Vec::new();
    for s in &view.services {
        if let Some(f) = s.svc.balance_factor {
            let members: Vec<(u32, u32, bool)> = s
                .backends
                .iter()
                .map(|b| (b.b.id, b.b.weight, in_table(b)))
                .collect();
            bounded.push((s.ps.id, f.get(), members));
        }
        let c = load::Counters {
            packets: s.counters.packets,
            bytes: s.counters.bytes,
            backends: s
                .backends
                .iter()
                .map(|b| (b.b.id, b.counters.packets))
                .collect(),
        };
        counters.insert(s.ps.id, c);
        rates.insert(s.ps.id, s.rate.0);
        let up = s.backends.iter().filter(|b| b.up && b.b.usable()).count();
        healthy.insert(s.svc.name.clone(), (s.ps.id, up, s.svc.clone()));
    }
    drop(view);
    st.load.book.close_second(counters);
    set_periods(st, &rates);
    set_bounds(st, &bounded);
    for (name, (id, up, svc)) in healthy {
        judge(&mut st.load, &name, id, up, &svc);
    }
}

/// A service with a balance factor: (service id, factor, its backends as (id, weight,
/// takes new clients)).
type Bounded = (u32, f64, Vec<(u32, u32, bool)>);

/// Takes new clients (what the fair share is shared among).
fn in_table(b: &views::BackendView<'_>) -> bool {
    b.up && b.b.usable() && !b.b.draining
}

/// The backends over their service's bound over the last second: load share above
/// factor × weight share, with at least [`BOUND_MIN_PACKETS`] packets in that second.
pub fn over_bound(
    book: &LoadBook,
    service_id: u32,
    factor: f64,
    members: &[(u32, u32, bool)],
) -> Vec<u32> {
    let (total, per) = book.backend_packets(service_id, 1);
    if total < BOUND_MIN_PACKETS {
        return Vec::new();
    }
    load::shares(members, total, &per)
        .backends
        .into_iter()
        .filter(|(_, load, fair)| *fair > 0.0 && *load > factor * fair)
        .map(|(id, _, _)| id)
        .collect()
}

/// Writes the flags that changed.
fn set_bounds(st: &mut State, bounded: &[Bounded]) {
    let now: HashSet<u32> = bounded
        .iter()
        .flat_map(|(id, f, m)| over_bound(&st.load.book, *id, *f, m))
        .collect();
    sweep_stale(st, &now);
    let changed: Vec<(u32, bool)> = now
        .difference(&st.load.over)
        .map(|id| (*id, true))
        .chain(st.load.over.difference(&now).map(|id| (*id, false)))
        .collect();
    for (id, over) in changed {
        match st.ctl.dp.set_over_bound(id, over) {
            Ok(()) if over => {
                st.load.over.insert(id);
            }
            Ok(()) => {
                st.load.over.remove(&id);
            }
            Err(e) => warn!("load bound of backend id {id}: {e}"),
        }
    }
}

/// The flags survive the daemon in the pinned map, but `over` starts empty: once, clear
/// every flag that is set and not wanted now (else a backend flagged by the previous
/// daemon would stay avoided by new clients for good).
fn sweep_stale(st: &mut State, now: &HashSet<u32>) {
    if st.load.swept {
        return;
    }
    st.load.swept = true;
    for id in 0..lb_common::MAX_BACKENDS {
        if now.contains(&id) || !st.ctl.dp.over_bound(id).unwrap_or(false) {
            continue;
        }
        if let Err(e) = st.ctl.dp.set_over_bound(id, false) {
            warn!("clearing the load bound of backend id {id}: {e}");
        }
    }
}

fn set_periods(st: &mut State, rates: &HashMap<u32, f64>) {
    for (id, n) in super::tasks::sources::periods(rates) {
        if st.load.periods.get(&id) == Some(&n) {
            continue;
        }
        match st.ctl.dp.set_sample_period(id, n) {
            Ok(()) => {
                st.load.periods.insert(id, n);
            }
            Err(e) => log::debug!("sampling period of service id {id}: {e}"),
        }
    }
    st.load.periods.retain(|id, _| rates.contains_key(id));
}

/// The heavy-source rule for one service.
fn judge(ls: &mut LoadState, name: &str, id: u32, healthy: usize, svc: &Service) {
    let by_source = ls.book.top(id, DEFAULT_INTERVAL_S, By::Source, 1, 1.0);
    let by_prefix = ls.book.top(id, DEFAULT_INTERVAL_S, By::Prefix, 1, 1.0);
    let packets = by_source.packets_per_s * by_source.seconds as f64;
    let first = |l: &load::ServiceLoad| l.sources.first().cloned();
    // The source itself when it is over the line, else its prefix.
    let limit = svc.nat_warn_share.get();
    let heaviest = [first(&by_source), first(&by_prefix)]
        .into_iter()
        .flatten()
        .max_by(|a, b| a.share.total_cmp(&b.share));
    ls.top_share
        .insert(name.to_string(), heaviest.as_ref().map_or(0.0, |s| s.share));
    let over = [first(&by_source), first(&by_prefix)]
        .into_iter()
        .flatten()
        .find(|s| s.share > limit);
    let Some(src) =
        over.filter(|_| healthy >= WARN_MIN_BACKENDS && packets >= WARN_MIN_PACKETS as f64)
    else {
        ls.heavy.remove(name);
        return;
    };
    let note = format!(
        "{} carries {:.0}% of the packets (nat_warn_share {}): if it is a NAT or proxy, \
         list its prefix in nat_sources so each of its connections is balanced alone; or \
         set balance_factor so new clients avoid an overloaded backend",
        src.source,
        src.share * 100.0,
        svc.nat_warn_share
    );
    let key = (name.to_string(), src.source.clone());
    let due = ls
        .logged
        .get(&key)
        .is_none_or(|t| t.elapsed() >= WARN_EVERY);
    if due {
        warn!("service {name}: {note}");
        ls.logged.insert(key, Instant::now());
    }
    ls.logged.retain(|_, t| t.elapsed() < WARN_EVERY);
    ls.heavy.insert(
        name.to_string(),
        HeavySource {
            source: src.source,
            share: src.share,
            note,
        },
    );
}

/// Load and weight shares of a service's backends over the default interval.
pub fn shares(st: &State, v: &views::ServiceView<'_>) -> BackendShares {
    let (total, per) = st.load.book.backend_packets(v.ps.id, DEFAULT_INTERVAL_S);
    let backends: Vec<(u32, u32, bool)> = v
        .backends
        .iter()
        .map(|b| (b.b.id, b.b.weight, b.up && b.b.usable() && !b.b.draining))
        .collect();
    load::shares(&backends, total, &per)
}

/// `xlb top`.
pub fn top(st: &State, q: &api::TopQuery) -> Response {
    let by = match q.by.as_str() {
        "source" => By::Source,
        "prefix" => By::Prefix,
        other => return usage(format!("--by {other:?}: expected source or prefix")),
    };
    if q.interval_s == 0 || q.interval_s as usize > HISTORY {
        return usage(format!(
            "--interval {}s: the daemon keeps 1 to {HISTORY} seconds",
            q.interval_s
        ));
    }
    if let Some(name) = &q.service
        && st.ctl.programmed.service(name).is_none()
    {
        return usage(format!("service {name:?} does not exist"));
    }
    let mut services = Vec::new();
    for svc in st.ctl.desired.services() {
        if q.service.as_ref().is_some_and(|n| *n != svc.name) {
            continue;
        }
        let Some(ps) = st.ctl.programmed.service(&svc.name) else {
            continue;
        };
        let l = st
            .load
            .book
            .top(ps.id, q.interval_s as usize, by, q.limit, ALWAYS_LISTED);
        let backend_addr = |id: u32| {
            ps.backends
                .iter()
                .find(|b| b.id == id)
                .map(|b| b.address)
                .or_else(|| {
                    let be = st.ctl.dp.backend(id).ok()?;
                    Some(addr_from_words(&be.addr, be.family))
                })
        };
        services.push(api::TopService {
            name: svc.name.clone(),
            interval_s: l.seconds as u32,
            packets_per_s: l.packets_per_s,
            bits_per_s: l.bits_per_s,
            samples: l.samples,
            sample_period: st.load.periods.get(&ps.id).copied().unwrap_or(1),
            sources: l
                .sources
                .into_iter()
                .map(|s| api::TopSource {
                    source: s.source,
                    packets_per_s: s.packets_per_s,
                    bits_per_s: s.bits_per_s,
                    share: s.share,
                    backend: s.backend.and_then(backend_addr),
                    backends: s.backends,
                })
                .collect(),
        });
    }
    Response::ok(api::Top {
        by: q.by.clone(),
        services,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn second(book: &mut LoadBook, cum: &mut [u64; 3], add: [u64; 3]) {
        for i in 0..3 {
            cum[i] += add[i];
        }
        let c = load::Counters {
            packets: cum.iter().sum(),
            bytes: 0,
            backends: (0..3).map(|i| (i as u32, cum[i])).collect(),
        };
        book.close_second(HashMap::from([(1, c)]));
    }

    /// The office on backend 0 (half the packets, three equal backends): over 1.25 ×
    /// its third; once the office goes idle, no longer; too few packets flag nothing.
    #[test]
    fn the_bound_follows_the_last_second() {
        let members = [(0, 1, true), (1, 1, true), (2, 1, true)];
        let mut book = LoadBook::default();
        let mut cum = [0u64; 3];
        second(&mut book, &mut cum, [0, 0, 0]);
        second(&mut book, &mut cum, [1000, 500, 500]);
        assert_eq!(over_bound(&book, 1, 1.25, &members), vec![0]);
        assert!(over_bound(&book, 1, 1.6, &members).is_empty());
        second(&mut book, &mut cum, [500, 500, 500]);
        assert!(over_bound(&book, 1, 1.25, &members).is_empty());
        second(&mut book, &mut cum, [30, 5, 5]);
        assert!(
            over_bound(&book, 1, 1.25, &members).is_empty(),
            "too few packets"
        );
        // A backend that takes no new clients has no fair share and is never flagged.
        second(&mut book, &mut cum, [1000, 500, 500]);
        let drained = [(0, 1, false), (1, 1, true), (2, 1, true)];
        assert!(over_bound(&book, 1, 1.25, &drained).is_empty());
    }
}
