//! The rate limit of the XDP program's diagnostics (aya-log records): every rare event has
//! a gate, the `u64` slot [`gate`] of `XLB_LOG_GATE` holding when it was last reported
//! (`bpf_ktime_get_coarse_ns`). A record goes out only when [`due`] says so and the
//! program wins the compare-and-swap of that slot, so each event is reported at most
//! once per [`INTERVAL_NS`] across all CPUs, whatever the packet rate.
//!
//! Events: each drop reason of [`Stat`] (its own index) and [`INSERT_FAILED`]. A drop
//! for a missing egress port is reported with its backend (the gate of
//! `Stat::DropNoTxPort`).
//!
//! A record's text is `xlb event GATE A B` ([`RECORD_PREFIX`], then three numbers): the
//! gate, and two words whose meaning depends on it — drop reasons other than the two
//! below: none; `DropNoBackend`: the service id; `DropNoTxPort`: the backend id and its
//! egress ifindex; [`INSERT_FAILED`]: the service id and the backend id. The daemon turns
//! it into words ([`Event::parse`] here, the sentence in lb-userspace).
//!
//! Owns the event numbering, the record's shape and the rule; the program owns the map
//! access.

use crate::Stat;

/// At most one record per event per this many nanoseconds.
pub const INTERVAL_NS: u64 = 1_000_000_000;

/// Gate of a new client's pin that could not be written (the bucket or slot was held by
/// another writer): that client is decided by Maglev alone until a later packet pins it.
pub const INSERT_FAILED: u32 = Stat::COUNT;

/// Slots of `XLB_LOG_GATE`.
pub const GATES: u32 = Stat::COUNT + 1;

/// The gate of drop reason `stat`.
pub const fn gate(stat: Stat) -> u32 {
    stat as u32
}

/// The start of every record's text (the program's format string is this literal).
pub const RECORD_PREFIX: &str = "xlb event ";

/// One event as a record carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub gate: u32,
    pub a: u32,
    pub b: u32,
}

impl Event {
    /// The event of a record's text, `None` when it is not one.
    pub fn parse(text: &str) -> Option<Event> {
        let mut words = text.strip_prefix(RECORD_PREFIX)?.split(' ');
        let mut next = || words.next()?.parse::<u32>().ok();
        let e = Event {
            gate: next()?,
            a: next()?,
            b: next()?,
        };
        (e.gate < GATES).then_some(e)
    }

    /// The drop reason it reports (`None`: [`INSERT_FAILED`]).
    pub fn stat(&self) -> Option<Stat> {
        Stat::ALL.iter().copied().find(|s| gate(*s) == self.gate)
    }
}

/// Whether an event last reported at `last_ns` (0: never) is reported again at `now_ns`.
#[inline(always)]
pub const fn due(last_ns: u64, now_ns: u64) -> bool {
    last_ns == 0 || now_ns.wrapping_sub(last_ns) >= INTERVAL_NS
}

/// Takes the gate whose slot is `p` at `now_ns`: true for exactly one caller per
/// interval, however many CPUs try at once.
///
/// # Safety
/// `p` points to a live, 8-aligned slot of `XLB_LOG_GATE` (or any word shared the same way).
#[inline(always)]
pub unsafe fn take(p: *mut u64, now_ns: u64) -> bool {
    // SAFETY: see the function contract.
    let last = unsafe { crate::affinity::table::load(p) };
    // SAFETY: see the function contract.
    due(last, now_ns) && unsafe { claim(p, last, now_ns) }
}

/// The second half of [`take`], for a caller that read `last_ns` from `p` and found the
/// event [`due`] at `now_ns`: true for the one caller whose compare-and-swap wins.
///
/// # Safety
/// As [`take`].
#[inline(always)]
pub unsafe fn claim(p: *mut u64, last_ns: u64, now_ns: u64) -> bool {
    // SAFETY: see the function contract; the compare-and-swap picks one reporter.
    unsafe { crate::affinity::table::cas(p, last_ns, now_ns) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Threads taking one gate at the same instant: exactly one wins; the next interval
    /// has one winner again.
    #[test]
    fn one_taker_among_racing_threads() {
        let slot = std::sync::atomic::AtomicU64::new(0);
        let p = slot.as_ptr();
        let won = |now: u64| {
            let p = p as usize;
            let n: usize = std::thread::scope(|s| {
                let hs: Vec<_> = (0..8)
                    .map(|_| s.spawn(move || usize::from(unsafe { take(p as *mut u64, now) })))
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).sum()
            });
            n
        };
        assert_eq!(won(5), 1);
        assert_eq!(won(5 + INTERVAL_NS / 2), 0);
        assert_eq!(won(5 + INTERVAL_NS), 1);
    }

    #[test]
    fn records_parse() {
        let e = Event::parse("xlb event 8 3 17").expect("an event");
        assert_eq!((e.gate, e.a, e.b), (8, 3, 17));
        assert_eq!(e.stat(), Some(Stat::DropNoTxPort));
        let e = Event::parse(&format!("xlb event {INSERT_FAILED} 1 2")).expect("an event");
        assert_eq!(e.stat(), None);
        for bad in [
            "xlb event 8 3",
            "xlb event 99 0 0",
            "hello",
            "xlb event x 1 2",
        ] {
            assert_eq!(Event::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn one_report_per_interval() {
        assert!(due(0, 5));
        assert!(!due(10, 10));
        assert!(!due(10, 10 + INTERVAL_NS - 1));
        assert!(due(10, 10 + INTERVAL_NS));
    }

    #[test]
    fn every_drop_reason_and_the_insert_have_their_own_gate() {
        let mut gates: Vec<u32> = Stat::ALL
            .iter()
            .filter(|s| s.name().starts_with("drop_"))
            .map(|s| gate(*s))
            .collect();
        gates.push(INSERT_FAILED);
        assert!(gates.iter().all(|g| *g < GATES));
        let n = gates.len();
        gates.sort();
        gates.dedup();
        assert_eq!(gates.len(), n);
    }
}
