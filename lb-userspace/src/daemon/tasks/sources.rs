//! Sampled sources: a task drains the data plane's ring of sampled packets
//! (`XLB_SAMPLES`, lb_common::sample) every [`TICK`] and sends them to the owner, which
//! folds them into its [`LoadBook`](crate::load::LoadBook) and, once a second, sets each
//! service's sampling period from its rate ([`periods`]).
//!
//! The daemon measures all the time, not only while `xlb top` runs: `top`, the load
//! shares and the heavy-source warning read the last completed seconds.
//!
//! Owns: the ring's reading end and how often it is read; the period rule. Must not
//! touch: the daemon's state (it only reports), the maps' other contents.

use std::{collections::HashMap, time::Duration};

use lb_common::sample::{TARGET_SAMPLES_PER_S, period_for};
use tokio::sync::mpsc::UnboundedSender;

use super::Task;
use crate::{daemon::command::Observation, dataplane::maps::SampleRing};

/// How often the ring is drained (its size holds many times this much at the target).
const TICK: Duration = Duration::from_millis(100);
/// Most samples read per tick: a bound on one tick's work whatever the ring holds.
const MAX_PER_TICK: usize = 100_000;
/// Samples per second over all services the periods aim for at most.
pub const TOTAL_SAMPLES_PER_S: u64 = 100_000;

/// Drains `ring` every [`TICK`].
pub fn spawn(mut ring: SampleRing, tx: UnboundedSender<Observation>) -> Task {
    Task::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let samples = ring.drain(MAX_PER_TICK);
            if !samples.is_empty() && tx.send(Observation::Samples(samples)).is_err() {
                return;
            }
        }
    })
}

/// Each service's period from its packets/s (by service id): every packet below the
/// per-service target, and the target shrinks when many services are busy so that the
/// whole stays under [`TOTAL_SAMPLES_PER_S`].
pub fn periods(rates: &HashMap<u32, f64>) -> HashMap<u32, u32> {
    let busy = rates
        .values()
        .filter(|r| **r > TARGET_SAMPLES_PER_S as f64)
        .count() as u64;
    let target = if busy * TARGET_SAMPLES_PER_S > TOTAL_SAMPLES_PER_S {
        (TOTAL_SAMPLES_PER_S / busy).max(1_000)
    } else {
        TARGET_SAMPLES_PER_S
    };
    rates
        .iter()
        .map(|(id, pps)| (*id, period_for(*pps, target)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_count_every_packet_at_low_rates_and_share_the_budget() {
        let p = periods(&HashMap::from([(1, 5_000.0), (2, 100_000.0)]));
        assert_eq!((p[&1], p[&2]), (1, 5));
        let many: HashMap<u32, f64> = (0..10).map(|i| (i, 100_000.0)).collect();
        assert!(periods(&many).values().all(|n| *n == 10));
    }
}
