//! Pinned-client counts: a task counts the affinity table's live pins (the XDP
//! program's own rules, `lb_common::affinity`, on the maps' own services and backends)
//! through its own map handles, and the owner keeps the last count ([`PinnedCounts`]).
//!
//! Only live pins count: an entry that decides its client's next packet. Entries of an
//! unusable backend (unhealthy, unresolved) are stale — the client moves on its next
//! packet — and are never shown as pinned clients (issue 10, fault 11): the scan leaves
//! them out, and between scans a backend that became unusable shows 0 at once.
//!
//! The table is never walked whole on a timer (issue 11): a pass advances a bounded
//! slice per tick ([`BUDGET`] of scanning every [`TICK`]), so a full 1M-client table costs
//! the daemon well under 1% of a core; counts are published when a pass ends, stamped
//! with the time the pass started (it judged against the services and backends of that
//! moment). The passes also remove entries expired for an hour, because the table's time
//! wraps after 52 days.
//!
//! `xlb backend drain --wait` is answered from these passes too, at no extra walk. A
//! backend's entries are spread over the whole table by the hash (there is no per-backend
//! index to walk instead), so any count of one backend's pins costs a whole pass whether
//! it is asked for or not; the passes already make one, and also record when each
//! backend's live pins were last seen ([`Seen`]). A drain poll is then a lookup in the
//! last count (O(1)), and the waiting costs the daemon nothing beyond the usual upkeep.
//! What makes such a count valid for a drain: it must come from a pass that *started*
//! after the drain was programmed (the owner keeps when, per backend). Once a backend is
//! draining it takes no new client, and a pin that expired or was re-decided never comes
//! back to it, so its live pins only fall; a pass started after the drain that finds none
//! proves there are none. (With a small table passes are cheap and a poll asks for one
//! at once, as status does; with a full 1M-entry table a pass takes a few seconds of
//! wall time at its bounded pace — small next to any idle_timeout a drain waits for.)
//!
//! Owns: when and how fast the table is counted. Must not touch: the judging rules
//! (lb_common::affinity through dataplane), the daemon's state (it only reports).

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use log::warn;
use tokio::sync::{Notify, mpsc::UnboundedSender};

use super::Task;
use crate::{
    daemon::command::{Observation, PinReport},
    dataplane::{
        affinity::{PinCounter, Seen},
        maps::{self, ktime_coarse_ns},
    },
};

/// A pass this quick runs whole whenever a status asks for fresh counts.
const CHEAP: Duration = Duration::from_millis(20);
/// One slice of a pass every this long.
const TICK: Duration = Duration::from_millis(250);
/// Scanning time of one slice.
const BUDGET: Duration = Duration::from_millis(1);
/// Entries expired for longer than this are removed by the passes.
const SWEEP_AFTER: Duration = Duration::from_secs(3600);

/// The last count the owner received.
#[derive(Clone, Debug, Default)]
pub struct PinnedCounts {
    pub taken: Option<Instant>,
    /// Passes are cheap: a status may ask for a fresh one.
    pub cheap: bool,
    per_backend: HashMap<u32, u64>,
    seen: HashMap<u32, Seen>,
}

impl PinnedCounts {
    pub fn update(&mut self, r: PinReport) {
        *self = Self {
            taken: Some(r.taken),
            cheap: r.cheap,
            per_backend: r.counts.per_backend,
            seen: r.counts.seen,
        };
    }

    /// When backend `id`'s live pins were last seen, at the last count (`None`: it had
    /// none).
    pub fn backend_seen(&self, id: u32) -> Option<Seen> {
        self.seen.get(&id).copied()
    }

    /// Live pins of backend `id` at the last count.
    pub fn backend(&self, id: u32) -> u64 {
        self.per_backend.get(&id).copied().unwrap_or(0)
    }

    /// Taken after `t` and no older than `max_age`.
    pub fn fresh(&self, t: Instant, max_age: Duration) -> bool {
        self.taken
            .is_some_and(|at| at >= t && at.elapsed() <= max_age)
    }
}

/// Counts a slice every [`TICK`]; a whole pass at once when `now` is notified and passes
/// are cheap (and the first pass after a start, so counts exist right away).
pub fn spawn(pin_dir: PathBuf, now: Arc<Notify>, tx: UnboundedSender<Observation>) -> Task {
    Task::spawn(async move {
        let mut counter: Option<PinCounter> = None;
        let mut pass_started = Instant::now();
        let mut budget = Duration::MAX;
        loop {
            let dir = pin_dir.clone();
            let c = counter.take();
            // Stamped before the step can read the maps: a pass is never dated later than
            // the services and backends it judges against (drain --wait relies on it).
            let begun = Instant::now();
            let step = tokio::task::spawn_blocking(move || {
                let mut c = match c {
                    Some(c) => c,
                    None => maps::pin_counter_pinned(&dir)?.sweeping(SWEEP_AFTER),
                };
                let starts = c.at_pass_start();
                let counts = c.step(ktime_coarse_ns(), budget, || maps::pinned_lookup(&dir))?;
                Ok::<_, maps::MapsError>((c, starts, counts))
            });
            match step.await {
                Ok(Ok((c, starts, counts))) => {
                    if starts {
                        pass_started = begun;
                    }
                    let cheap = c.last_pass.is_some_and(|d| d < CHEAP);
                    counter = Some(c);
                    if let Some(counts) = counts {
                        let report = PinReport {
                            counts,
                            taken: pass_started,
                            cheap,
                        };
                        if tx.send(Observation::Pins(report)).is_err() {
                            return;
                        }
                    }
                }
                Ok(Err(e)) => warn!("counting the affinity table's pins: {e:#}"),
                Err(e) => warn!("affinity count task: {e}"),
            }
            let cheap = counter
                .as_ref()
                .and_then(|c| c.last_pass)
                .is_some_and(|d| d < CHEAP);
            budget = BUDGET;
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = now.notified(), if cheap => budget = Duration::MAX,
            }
        }
    })
}
