//! Who carries a service's load: the sampled sources (lb_common::sample) folded into
//! one record per second, scaled by the services' exact counters, and the questions
//! `xlb top`, the load shares and the heavy-source warning ask of them.
//!
//! How a figure is made: over the last k whole seconds, a source's share is the weight
//! of its samples over the weight of all the service's samples (each sample weighs the
//! period it stood for), and its packets/s are that share of the service's exact packet
//! count over those seconds (bits/s likewise with the sampled lengths and exact bytes).
//! Lost samples (a full ring) therefore cost precision, never bias the totals. At low
//! rates the period is 1: every packet is a sample, and the shares are exact.
//!
//! Owns: the per-second records (at most [`HISTORY`] seconds) and their arithmetic.
//! Must not touch: maps, sockets, the daemon's state (the owner feeds it and asks it);
//! nothing here does I/O.

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use lb_common::sample::SourceSample;

use crate::model::addr_from_words;

/// Seconds of history kept: the longest `xlb top --interval`.
pub const HISTORY: usize = 10;
/// The interval status, metrics and the warning use (and `xlb top`'s default), seconds.
pub const DEFAULT_INTERVAL_S: usize = 2;
/// Distinct sources kept per service and second; samples of further sources count in
/// the totals only (a flood of one-packet spoofed sources cannot grow the daemon).
pub const MAX_SOURCES_PER_SECOND: usize = 50_000;
/// A service with fewer packets in the interval raises no heavy-source warning (its
/// shares say little, and one idle client would "carry 100%").
pub const WARN_MIN_PACKETS: u64 = 200;

/// How sources are grouped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum By {
    /// Each address.
    #[default]
    Source,
    /// IPv4 /24, IPv6 /64.
    Prefix,
}

/// Sampled weight of one source in one second.
#[derive(Clone, Debug, Default)]
struct Agg {
    /// Packets the samples stand for.
    weight: u64,
    /// Bytes the samples stand for.
    bytes: u64,
    /// Weight per backend id (a listed NAT source may reach several).
    backends: Vec<(u32, u64)>,
}

impl Agg {
    fn add(&mut self, backend: u32, weight: u64, bytes: u64) {
        self.weight += weight;
        self.bytes += bytes;
        match self.backends.iter_mut().find(|(b, _)| *b == backend) {
            Some((_, w)) => *w += weight,
            None => self.backends.push((backend, weight)),
        }
    }

    fn merge(&mut self, o: &Agg) {
        for (b, w) in &o.backends {
            self.add(*b, *w, 0);
        }
        self.bytes += o.bytes;
    }
}

/// One service in one second.
#[derive(Clone, Debug, Default)]
struct ServiceSecond {
    sources: HashMap<IpAddr, Agg>,
    /// Weight and bytes of every sample (kept sources or not).
    weight: u64,
    bytes: u64,
    /// Samples received.
    samples: u64,
    /// Exact packets and bytes forwarded (the counters' difference).
    packets: u64,
    exact_bytes: u64,
    /// Exact packets per backend id.
    backend_packets: HashMap<u32, u64>,
}

/// Cumulative counters of one service, as read from the data plane at a second's end.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    /// Packets per backend id.
    pub backends: HashMap<u32, u64>,
}

/// The per-second records.
#[derive(Debug, Default)]
pub struct LoadBook {
    current: HashMap<u32, ServiceSecond>,
    /// Closed seconds, newest last.
    seconds: VecDeque<HashMap<u32, ServiceSecond>>,
    prev: HashMap<u32, Counters>,
}

/// One row of `xlb top`.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceLoad {
    /// The address, or the /24 or /64 prefix with `By::Prefix`.
    pub source: String,
    pub packets_per_s: f64,
    pub bits_per_s: f64,
    /// Share of the service's packets, 0..=1.
    pub share: f64,
    /// The backend id most of its packets went to.
    pub backend: Option<u32>,
    /// Backends it reached.
    pub backends: usize,
}

/// A service's load over an interval.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceLoad {
    /// Whole seconds the figures cover (fewer than asked right after a start).
    pub seconds: usize,
    pub packets_per_s: f64,
    pub bits_per_s: f64,
    /// Samples the figures rest on (their number, not their weight).
    pub samples: u64,
    /// Heaviest first.
    pub sources: Vec<SourceLoad>,
}

impl LoadBook {
    /// Folds samples into the current second.
    pub fn add(&mut self, samples: &[SourceSample]) {
        for s in samples {
            let w = s.weight.max(1) as u64;
            let bytes = w * s.len as u64;
            let ss = self.current.entry(s.service_id).or_default();
            ss.weight += w;
            ss.bytes += bytes;
            ss.samples += 1;
            let addr = addr_from_words(&s.addr, s.family);
            let room = ss.sources.len() < MAX_SOURCES_PER_SECOND;
            if let Some(a) = ss.sources.get_mut(&addr) {
                a.add(s.backend_id, w, bytes);
            } else if room {
                let mut a = Agg::default();
                a.add(s.backend_id, w, bytes);
                ss.sources.insert(addr, a);
            }
        }
    }

    /// Ends the current second with each service's cumulative `counters` (by service
    /// id): the exact totals the samples are scaled by. A service whose counters went
    /// backwards (its id was reused) counts from zero; one seen for the first time (a
    /// new service, a daemon start on counters that ran before it) only sets the
    /// baseline: its whole history is not one second's load.
    pub fn close_second(&mut self, counters: HashMap<u32, Counters>) {
        let mut closed = std::mem::take(&mut self.current);
        for (id, c) in &counters {
            let ss = closed.entry(*id).or_default();
            let Some(prev) = self.prev.get(id) else {
                continue;
            };
            let prev = Some(prev);
            ss.packets = c.packets.saturating_sub(prev.map_or(0, |p| p.packets));
            ss.exact_bytes = c.bytes.saturating_sub(prev.map_or(0, |p| p.bytes));
            ss.backend_packets = c
                .backends
                .iter()
                .map(|(b, n)| {
                    let before = prev.and_then(|p| p.backends.get(b)).copied().unwrap_or(0);
                    (*b, n.saturating_sub(before))
                })
                .collect();
        }
        // Services that are gone keep no records.
        closed.retain(|id, _| counters.contains_key(id));
        self.prev = counters;
        self.seconds.push_back(closed);
        while self.seconds.len() > HISTORY {
            self.seconds.pop_front();
        }
    }

    /// The last `seconds` closed seconds of service `id` (fewer if there are fewer).
    fn last(&self, id: u32, seconds: usize) -> impl Iterator<Item = &ServiceSecond> {
        let n = seconds.clamp(1, HISTORY).min(self.seconds.len());
        self.seconds
            .iter()
            .skip(self.seconds.len() - n)
            .filter_map(move |s| s.get(&id))
    }

    fn covered(&self, seconds: usize) -> usize {
        seconds.clamp(1, HISTORY).min(self.seconds.len())
    }

    /// Service `id`'s heaviest sources over the last `seconds`, at most `limit` of them
    /// plus every source with a share of at least `always` (so that no heavy source is
    /// cut off by the limit).
    pub fn top(&self, id: u32, seconds: usize, by: By, limit: usize, always: f64) -> ServiceLoad {
        let secs = self.covered(seconds);
        let mut groups: HashMap<IpAddr, Agg> = HashMap::new();
        let (mut weight, mut bytes, mut packets, mut exact_bytes, mut samples) = (0, 0, 0, 0, 0);
        for ss in self.last(id, seconds) {
            weight += ss.weight;
            bytes += ss.bytes;
            packets += ss.packets;
            exact_bytes += ss.exact_bytes;
            samples += ss.samples;
            for (addr, a) in &ss.sources {
                let g = groups.entry(group_of(*addr, by)).or_default();
                g.merge(a);
            }
        }
        let pps = packets as f64 / secs.max(1) as f64;
        let bps = exact_bytes as f64 * 8.0 / secs.max(1) as f64;
        let mut sources: Vec<SourceLoad> = groups
            .into_iter()
            .map(|(addr, g)| {
                let share = ratio(g.weight, weight);
                let top = g.backends.iter().max_by_key(|(_, w)| *w).map(|(b, _)| *b);
                SourceLoad {
                    source: label(addr, by),
                    packets_per_s: share * pps,
                    bits_per_s: ratio(g.bytes, bytes) * bps,
                    share,
                    backend: top,
                    backends: g.backends.len(),
                }
            })
            .collect();
        sources.sort_by(|a, b| b.share.total_cmp(&a.share).then(a.source.cmp(&b.source)));
        let keep = sources
            .iter()
            .take_while(|s| s.share >= always)
            .count()
            .max(limit);
        sources.truncate(keep);
        ServiceLoad {
            seconds: secs,
            packets_per_s: pps,
            bits_per_s: bps,
            samples,
            sources,
        }
    }

    /// Exact packets of service `id` and per backend id over the last `seconds`.
    pub fn backend_packets(&self, id: u32, seconds: usize) -> (u64, HashMap<u32, u64>) {
        let mut total = 0;
        let mut per = HashMap::new();
        for ss in self.last(id, seconds) {
            total += ss.packets;
            for (b, n) in &ss.backend_packets {
                *per.entry(*b).or_insert(0) += n;
            }
        }
        (total, per)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// The address itself, or its /24 (IPv4) or /64 (IPv6).
fn group_of(addr: IpAddr, by: By) -> IpAddr {
    match (by, addr) {
        (By::Source, a) => a,
        (By::Prefix, IpAddr::V4(a)) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & 0xffff_ff00)),
        (By::Prefix, IpAddr::V6(a)) => {
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & !((1u128 << 64) - 1)))
        }
    }
}

fn label(addr: IpAddr, by: By) -> String {
    match (by, addr) {
        (By::Source, a) => a.to_string(),
        (By::Prefix, a @ IpAddr::V4(_)) => format!("{a}/24"),
        (By::Prefix, a @ IpAddr::V6(_)) => format!("{a}/64"),
    }
}

/// A service's load per backend over an interval, for status and metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendShares {
    /// (backend id, share of the service's packets 0..=1, share of the weight 0..=1).
    pub backends: Vec<(u32, f64, f64)>,
    /// Largest (load share ÷ weight share) over the backends with a weight share;
    /// `None` without packets in the interval.
    pub imbalance: Option<f64>,
}

/// Load and weight shares of `backends` — (id, weight, takes traffic) — from the exact
/// per-backend packets over an interval (`total` packets of the service).
pub fn shares(backends: &[(u32, u32, bool)], total: u64, per: &HashMap<u32, u64>) -> BackendShares {
    let weights: u64 = backends
        .iter()
        .filter(|(_, _, up)| *up)
        .map(|(_, w, _)| *w as u64)
        .sum();
    let mut out = Vec::new();
    let mut worst: Option<f64> = None;
    for (id, w, up) in backends {
        let load = ratio(per.get(id).copied().unwrap_or(0), total);
        let fair = if *up { ratio(*w as u64, weights) } else { 0.0 };
        if total > 0 && fair > 0.0 {
            let r = load / fair;
            worst = Some(worst.map_or(r, |x: f64| x.max(r)));
        }
        out.push((*id, load, fair));
    }
    BackendShares {
        backends: out,
        imbalance: worst,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::FAMILY_V4;

    fn sample(addr: [u8; 4], backend: u32, weight: u32) -> SourceSample {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&addr);
        SourceSample {
            addr: lb_common::addr_from_bytes(&b),
            service_id: 1,
            backend_id: backend,
            weight,
            len: 100,
            family: FAMILY_V4,
            ..Default::default()
        }
    }

    fn counters(packets: u64, bytes: u64, backends: &[(u32, u64)]) -> HashMap<u32, Counters> {
        HashMap::from([(
            1,
            Counters {
                packets,
                bytes,
                backends: backends.iter().copied().collect(),
            },
        )])
    }

    #[test]
    fn shares_are_sample_weights_scaled_by_exact_counters() {
        let mut b = LoadBook::default();
        b.close_second(counters(0, 0, &[]));
        // 3 samples of 4 packets from one source, 1 from another: 75% / 25%.
        b.add(&[
            sample([203, 0, 113, 1], 7, 4),
            sample([203, 0, 113, 1], 7, 4),
            sample([203, 0, 113, 1], 7, 4),
            sample([198, 51, 100, 9], 8, 4),
        ]);
        b.close_second(counters(1600, 160_000, &[(7, 1200), (8, 400)]));
        let t = b.top(1, 2, By::Source, 10, 0.05);
        assert_eq!(t.seconds, 2);
        assert_eq!(t.packets_per_s, 800.0);
        assert_eq!(t.sources[0].source, "203.0.113.1");
        assert!((t.sources[0].share - 0.75).abs() < 1e-9);
        assert!((t.sources[0].packets_per_s - 600.0).abs() < 1e-9);
        assert_eq!(t.sources[0].backend, Some(7));
        let p = b.top(1, 1, By::Prefix, 10, 0.05);
        assert_eq!(p.sources[0].source, "203.0.113.0/24");
        assert_eq!(p.sources[1].source, "198.51.100.0/24");
        let (total, per) = b.backend_packets(1, 2);
        assert_eq!((total, per[&7], per[&8]), (1600, 1200, 400));
    }

    #[test]
    fn imbalance_is_the_worst_load_over_weight_share() {
        let per = HashMap::from([(1, 600), (2, 200), (3, 200)]);
        let s = shares(&[(1, 1, true), (2, 1, true), (3, 1, true)], 1000, &per);
        assert!((s.imbalance.unwrap() - 1.8).abs() < 1e-9);
        assert_eq!(shares(&[(1, 1, true)], 0, &HashMap::new()).imbalance, None);
    }

    /// A daemon starting on counters that ran before it: the first second is a
    /// baseline, not a second carrying the whole history.
    #[test]
    fn the_first_second_of_a_service_is_a_baseline() {
        let mut b = LoadBook::default();
        b.close_second(counters(1_000_000, 9, &[(7, 1_000_000)]));
        assert_eq!(b.backend_packets(1, 1), (0, HashMap::from([])));
        b.close_second(counters(1_000_100, 9, &[(7, 1_000_100)]));
        assert_eq!(b.backend_packets(1, 1).0, 100);
    }

    #[test]
    fn history_is_bounded_and_limit_keeps_heavy_sources() {
        let mut b = LoadBook::default();
        for _ in 0..HISTORY + 5 {
            b.close_second(counters(0, 0, &[]));
        }
        assert_eq!(b.seconds.len(), HISTORY);
        let mut samples = vec![];
        for i in 0..10u8 {
            samples.push(sample([10, 0, 0, i], 1, 1));
        }
        b.add(&samples);
        b.close_second(counters(10, 1000, &[]));
        // Each holds 10%: with limit 3, all ten (≥ 5%) are listed anyway.
        assert_eq!(b.top(1, 1, By::Source, 3, 0.05).sources.len(), 10);
        assert_eq!(b.top(1, 1, By::Source, 3, 0.5).sources.len(), 3);
    }
}
