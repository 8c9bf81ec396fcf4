//! Packet and bit rates for `xlb stats`: a task ticks once a second and the owner
//! samples the counters ([`Rates`]); a rate is the difference of two samples.
//!
//! Owns: the samples and the rates. Must not touch: the counters' source (views.rs reads
//! them in its one walk).

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use tokio::sync::mpsc::UnboundedSender;

use super::Task;
use crate::daemon::command::Observation;

/// A service (`None`) or one of its backends.
pub type RateKey = (String, Option<IpAddr>);

/// Counter samples and the rates between the last two.
#[derive(Clone, Debug, Default)]
pub struct Rates {
    at: Option<Instant>,
    /// Seconds between the last two samples.
    pub interval_s: f64,
    prev: HashMap<RateKey, (u64, u64)>,
    rate: HashMap<RateKey, (f64, f64)>,
}

impl Rates {
    /// Records (packets, bytes) per key taken at `now`.
    pub fn sample(&mut self, now: Instant, current: HashMap<RateKey, (u64, u64)>) {
        if let Some(at) = self.at {
            let dt = now.duration_since(at).as_secs_f64().max(1e-3);
            self.rate = current
                .iter()
                .filter_map(|(k, (p, b))| {
                    let (pp, pb) = self.prev.get(k)?;
                    let pps = p.saturating_sub(*pp) as f64 / dt;
                    let bps = b.saturating_sub(*pb) as f64 * 8.0 / dt;
                    Some((k.clone(), (pps, bps)))
                })
                .collect();
            self.interval_s = dt;
        }
        self.prev = current;
        self.at = Some(now);
    }

    /// (packets/s, bits/s) of a service or backend (0 until two samples exist).
    pub fn get(&self, service: &str, backend: Option<IpAddr>) -> (f64, f64) {
        self.rate
            .get(&(service.to_string(), backend))
            .copied()
            .unwrap_or_default()
    }
}

/// Ticks once a second.
pub fn spawn(tx: UnboundedSender<Observation>) -> Task {
    Task::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if tx.send(Observation::RatesTick).is_err() {
                return;
            }
        }
    })
}
