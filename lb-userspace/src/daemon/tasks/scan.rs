//! Pinned-client counts: a task counts the affinity table's live pins (the XDP
//! program's own rules, `lb_common::affinity`, on the maps' own services and backends)
//! through its own map handles, and the owner keeps the last count ([`PinnedCounts`]).
//!
//! Only live pins count: an entry that decides its client's next packet. Entries of an
//! unusable backend (unhealthy, unresolved) are stale — the client moves on its next
//! packet — and are never shown as pinned clients (issue 10, fault 11): the scan leaves
//! them out, and between scans a backend that became unusable shows 0 at once.
//!
//! Owns: when the table is scanned. Must not touch: the table's contents, the judging
//! rules (lb_common::affinity through dataplane::maps).

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
    dataplane::maps::{self, ktime_coarse_ns},
};

/// A scan this quick runs whenever a status asks for fresh counts.
const CHEAP: Duration = Duration::from_millis(50);
/// Scans run at least this far apart (longer for large tables: ten times a scan).
const PERIOD: Duration = Duration::from_secs(2);

/// The last count the owner received.
#[derive(Clone, Debug, Default)]
pub struct PinnedCounts {
    pub taken: Option<Instant>,
    /// Scans are cheap: a status may ask for a fresh one.
    pub cheap: bool,
    per_backend: HashMap<u32, u64>,
}

impl PinnedCounts {
    pub fn update(&mut self, r: PinReport) {
        *self = Self {
            taken: Some(r.taken),
            cheap: r.cheap,
            per_backend: r.counts.per_backend,
        };
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

/// Scans every [`PERIOD`] (or ten times the last scan's duration), and at once when
/// `now` is notified and scans are cheap.
pub fn spawn(pin_dir: PathBuf, now: Arc<Notify>, tx: UnboundedSender<Observation>) -> Task {
    Task::spawn(async move {
        loop {
            let started = Instant::now();
            let dir = pin_dir.clone();
            let scan = tokio::task::spawn_blocking(move || {
                maps::live_pins_pinned(&dir, ktime_coarse_ns())
            })
            .await;
            let took = started.elapsed();
            match scan {
                Ok(Ok(counts)) => {
                    // Stamped with the scan's start: a change after it may be missing.
                    let report = PinReport {
                        counts,
                        taken: started,
                        cheap: took < CHEAP,
                    };
                    if tx.send(Observation::Pins(report)).is_err() {
                        return;
                    }
                }
                Ok(Err(e)) => warn!("scanning the affinity table: {e:#}"),
                Err(e) => warn!("affinity scan task: {e}"),
            }
            tokio::select! {
                _ = tokio::time::sleep((took * 10).max(PERIOD)) => {}
                _ = now.notified(), if took < CHEAP => {}
            }
        }
    })
}
