//! Rise/fall hysteresis ([`Tracker`]), probe spreading ([`initial_jitter`]), the probing
//! loop of one backend ([`run_checks`]) and the transition log line.
//!
//! Owns: when a backend's state flips. Must not touch: how a probe is made (probe.rs).

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    net::IpAddr,
    sync::OnceLock,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::time::MissedTickBehavior;

use super::probe::{Probe, Target, probe_to};
use crate::model::{Health, HealthCheck, HealthKind};

/// Rise/fall hysteresis for one backend.
#[derive(Clone, Debug)]
pub struct Tracker {
    rise: u32,
    fall: u32,
    state: Health,
    /// Consecutive successes (0 after a failure).
    oks: u32,
    /// Consecutive failures (0 after a success).
    fails: u32,
    transitions: u64,
    last: Option<Probe>,
}

impl Tracker {
    /// `rise` and `fall` of 0 count as 1.
    pub fn new(rise: u32, fall: u32, initially_healthy: bool) -> Self {
        let state = if initially_healthy {
            Health::Up
        } else {
            Health::Down
        };
        Self::starting(rise, fall, state)
    }

    /// A tracker starting in `state`. From Unknown one passed check makes the backend
    /// healthy (issue 10: `health.initial = "checked"` means one pass, not `rise`), and
    /// `fall` failures in a row unhealthy; learning the first state is not counted as a
    /// transition.
    pub fn starting(rise: u32, fall: u32, state: Health) -> Self {
        Self {
            rise: rise.max(1),
            fall: fall.max(1),
            state,
            oks: 0,
            fails: 0,
            transitions: 0,
            last: None,
        }
    }

    /// Feeds a result; returns `Some(new_state)` when the state flips (healthy →
    /// unhealthy after `fall` failures in a row, unhealthy → healthy after `rise`
    /// successes in a row, unknown → either as [`Tracker::starting`] says).
    /// A probe the balancer could not send ([`Probe::is_local_failure`]) is recorded as
    /// the last result but counts neither way.
    pub fn record(&mut self, p: &Probe) -> Option<bool> {
        self.last = Some(p.clone());
        if p.is_local_failure() {
            return None;
        }
        if p.ok {
            self.fails = 0;
            self.oks = self.oks.saturating_add(1);
        } else {
            self.oks = 0;
            self.fails = self.fails.saturating_add(1);
        }
        let next = match self.state {
            Health::Up if self.fails >= self.fall => Health::Down,
            Health::Down if self.oks >= self.rise => Health::Up,
            Health::Unknown if p.ok => Health::Up,
            Health::Unknown if self.fails >= self.fall => Health::Down,
            _ => return None,
        };
        if self.state != Health::Unknown {
            self.transitions += 1;
        }
        self.state = next;
        Some(next == Health::Up)
    }

    /// The current state.
    pub fn state(&self) -> Health {
        self.state
    }

    pub fn healthy(&self) -> bool {
        self.state == Health::Up
    }

    /// State changes so far (not counting the initial state).
    pub fn transitions(&self) -> u64 {
        self.transitions
    }

    /// The latest probe result.
    pub fn last(&self) -> Option<&Probe> {
        self.last.as_ref()
    }

    /// At least one probe was recorded.
    pub fn checked(&self) -> bool {
        self.last.is_some()
    }

    /// Current run of identical results: (successes in a row, failures in a row); one
    /// of them is 0.
    pub fn streak(&self) -> (u32, u32) {
        (self.oks, self.fails)
    }

    pub fn rise(&self) -> u32 {
        self.rise
    }

    pub fn fall(&self) -> u32 {
        self.fall
    }
}

/// A per-process seed: the same (service, backend) gets the same offset for the life of
/// the daemon, but two balancer nodes (or restarts) do not probe in lockstep.
fn process_seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let mut h = DefaultHasher::new();
        (nanos, std::process::id()).hash(&mut h);
        h.finish()
    })
}

/// First-probe delay in `[0, interval)`: spreads probes of many backends over the
/// interval, deterministic per (service, backend) with some per-process variation.
pub fn initial_jitter(service: &str, addr: IpAddr, interval: Duration) -> Duration {
    let span = interval.as_nanos();
    if span == 0 {
        return Duration::ZERO;
    }
    let mut h = DefaultHasher::new();
    (process_seed(), service, addr).hash(&mut h);
    let offset = u128::from(h.finish()) % span;
    // offset < interval, which fits a Duration.
    Duration::from_nanos(u64::try_from(offset).unwrap_or(u64::MAX))
}

/// The probing loop for one backend: sleeps the jitter, then every `interval` runs
/// a probe along `target` ([`probe_to`], bounded by `timeout`), feeds the tracker, and calls
/// `on_result(&probe, transition, &tracker)` after every probe. Runs until the returned
/// future is dropped or its task aborted.
///
/// Intervals are measured start to start (`MissedTickBehavior::Delay`): a slow probe
/// delays the next one by at most its own overrun, and later ones keep the period.
///
/// With `HealthKind::None` there is nothing to probe: `on_result` is called once (ok;
/// a transition to healthy unless `initial` was already Up) and the future then
/// stays pending, never calling it again.
pub async fn run_checks(
    service: String,
    addr: IpAddr,
    target: Target,
    cfg: HealthCheck,
    initial: Health,
    mut on_result: impl FnMut(&Probe, Option<bool>, &Tracker) + Send,
) {
    if cfg.kind == HealthKind::None {
        let mut tracker = Tracker::starting(1, 1, initial);
        let p = probe_to(&cfg.kind, &target, cfg.timeout).await;
        let flip = tracker.record(&p);
        on_result(&p, flip, &tracker);
        return std::future::pending().await;
    }
    // tokio's interval panics on a zero period (config validation forbids it anyway).
    let period = cfg.interval.max(Duration::from_millis(1));
    tokio::time::sleep(initial_jitter(&service, addr, period)).await;
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut tracker = Tracker::starting(cfg.rise, cfg.fall, initial);
    loop {
        ticks.tick().await;
        let p = probe_to(&cfg.kind, &target, cfg.timeout).await;
        let flip = tracker.record(&p);
        on_result(&p, flip, &tracker);
    }
}

/// The one log line for a health transition, e.g.
/// `service web: backend 10.0.1.1 is now unhealthy: timeout (3 failed checks in a row, last took 500ms)`.
pub fn transition_message(service: &str, addr: IpAddr, p: &Probe, t: &Tracker) -> String {
    let (oks, fails) = t.streak();
    let (state, run) = if t.healthy() {
        ("healthy", format!("{oks} passed checks in a row"))
    } else {
        ("unhealthy", format!("{fails} failed checks in a row"))
    };
    format!(
        "service {service}: backend {addr} is now {state}: {} ({run}, last took {:?})",
        p.reason, p.latency
    )
}

/// Logs [`transition_message`]: at `warn` when the backend went down, `info` when up.
pub fn log_transition(service: &str, addr: IpAddr, p: &Probe, t: &Tracker) {
    let msg = transition_message(service, addr, p, t);
    if t.healthy() {
        log::info!("{msg}");
    } else {
        log::warn!("{msg}");
    }
}
