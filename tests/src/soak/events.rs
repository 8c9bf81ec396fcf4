//! What happened during a soak, on one clock (ns since the Unix epoch, CLOCK_REALTIME):
//! the driver's operations with their start and return times, and the health changes the
//! observer saw in `xlb status --json`. From these, per backend, the [`Timeline`] of when it
//! was out of its service (removed) and when it was not "healthy and in its service" — the
//! only things that excuse a pinned client's move under sticky failback.
//!
//! Owns no I/O: the driver and the observer append, the checker reads.

use std::sync::{Arc, Mutex};

/// Nanoseconds since the Unix epoch (CLOCK_REALTIME).
pub type Ns = u64;

/// A backend host's index in the lab (`be3` is 3).
pub type BackendIx = usize;

/// The kinds of operation the driver applies; `--ops` selects a subset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    /// `xlb backend add`
    Add,
    /// `xlb backend remove`
    Remove,
    /// `xlb backend drain`
    Drain,
    /// `xlb backend undrain`
    Undrain,
    /// `xlb backend weight`
    Weight,
    /// A backend's server killed, started again 0.5–3 s later.
    Server,
    /// `ip neigh del` of one backend's entry on the balancer, or `ip neigh flush dev eth0`.
    Neigh,
    /// SIGKILL of the daemon and a restart, on a fixed period (not drawn).
    Kill,
}

impl OpKind {
    pub const ALL: [OpKind; 8] = [
        OpKind::Add,
        OpKind::Remove,
        OpKind::Drain,
        OpKind::Undrain,
        OpKind::Weight,
        OpKind::Server,
        OpKind::Neigh,
        OpKind::Kill,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OpKind::Add => "add",
            OpKind::Remove => "remove",
            OpKind::Drain => "drain",
            OpKind::Undrain => "undrain",
            OpKind::Weight => "weight",
            OpKind::Server => "server",
            OpKind::Neigh => "neigh",
            OpKind::Kill => "kill",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }

    /// Parses `add,remove,kill` (or `all`).
    pub fn parse_list(s: &str) -> Result<Vec<Self>, String> {
        if s.trim() == "all" {
            return Ok(Self::ALL.to_vec());
        }
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let k = Self::parse(part).ok_or_else(|| {
                format!(
                    "unknown operation {part:?}; operations: {} (or all)",
                    Self::ALL.map(Self::name).join(",")
                )
            })?;
            if !out.contains(&k) {
                out.push(k);
            }
        }
        if out.is_empty() {
            return Err("no operation given".into());
        }
        Ok(out)
    }
}

/// What an [`Event`] was, as the timeline needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum What {
    Add(BackendIx),
    Remove(BackendIx),
    Drain(BackendIx),
    Undrain(BackendIx),
    Weight(BackendIx, u32),
    ServerStop(BackendIx),
    ServerStart(BackendIx),
    NeighDel(BackendIx),
    NeighFlush,
    /// SIGKILL of the daemon (start: the signal, end: reaped).
    Kill,
    /// The daemon started again (end: it answered `status` with every backend resolved).
    Restart,
    /// The daemon exited although nobody killed it.
    DaemonDied,
    /// Seen in `xlb status --json`: the backend was unhealthy, or changed health, at some
    /// time in [start, end] (from the previous poll's start to this poll's return).
    Health(BackendIx, String),
}

/// One operation or observation.
#[derive(Clone, Debug)]
pub struct Event {
    /// Operation number (the driver's tick) for operations; `None` for observations.
    pub tick: Option<u64>,
    pub start: Ns,
    pub end: Ns,
    pub what: What,
    /// Human text, e.g. `backend remove svc-a 10.100.0.13 (be2)`.
    pub text: String,
    /// Why the operation failed, if it did.
    pub error: Option<String>,
}

/// The shared, append-only event log.
pub type Log = Arc<Mutex<Vec<Event>>>;

/// Why a backend was not "healthy and in its service" for a while.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cause {
    Removed,
    ServerStopped,
    HealthChange,
}

impl Cause {
    pub fn name(self) -> &'static str {
        match self {
            Cause::Removed => "removed",
            Cause::ServerStopped => "server stopped",
            Cause::HealthChange => "health change",
        }
    }
}

/// Per backend, when it was out of its service and when it was not healthy-and-in-service.
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    /// [start, end] intervals (end = `Ns::MAX` while open) and why.
    bad: Vec<Vec<(Ns, Ns, Cause)>>,
    /// (the remove command returned, a later add command started or `Ns::MAX`).
    out: Vec<Vec<(Ns, Ns)>>,
}

impl Timeline {
    /// `members[b]`: backend `b` was in its service when the soak started at `t0`; the
    /// others count as removed from `t0` on.
    pub fn build(events: &[Event], members: &[bool], t0: Ns) -> Self {
        let n = members.len();
        let mut t = Self {
            bad: vec![Vec::new(); n],
            out: vec![Vec::new(); n],
        };
        for (b, &m) in members.iter().enumerate() {
            if !m {
                t.bad[b].push((t0, Ns::MAX, Cause::Removed));
                t.out[b].push((t0, Ns::MAX));
            }
        }
        for e in events.iter().filter(|e| e.error.is_none()) {
            match e.what {
                What::Remove(b) => {
                    t.bad[b].push((e.start, Ns::MAX, Cause::Removed));
                    t.out[b].push((e.end, Ns::MAX));
                }
                What::Add(b) => {
                    close(&mut t.bad[b], Cause::Removed, e.end);
                    if let Some(last) = t.out[b].last_mut().filter(|o| o.1 == Ns::MAX) {
                        last.1 = e.start;
                    }
                }
                What::ServerStop(b) => t.bad[b].push((e.start, Ns::MAX, Cause::ServerStopped)),
                What::ServerStart(b) => close(&mut t.bad[b], Cause::ServerStopped, e.end),
                What::Health(b, _) => t.bad[b].push((e.start, e.end, Cause::HealthChange)),
                _ => {}
            }
        }
        t
    }

    /// Why backend `b` was not healthy-and-in-service at some time in [from, to], if it was not.
    pub fn excuse(&self, b: BackendIx, from: Ns, to: Ns) -> Option<Cause> {
        self.bad
            .get(b)?
            .iter()
            .filter(|(s, e, _)| *s <= to && *e >= from)
            .map(|(_, _, c)| *c)
            .min()
    }

    /// When the `xlb backend remove` of `b` that still held at `t` returned (or the soak's
    /// start for a backend never added), if `b` was out of its service at `t`.
    pub fn removed_at(&self, b: BackendIx, t: Ns) -> Option<Ns> {
        self.out
            .get(b)?
            .iter()
            .find(|(returned, readd)| *returned <= t && t < *readd)
            .map(|(returned, _)| *returned)
    }
}

fn close(intervals: &mut [(Ns, Ns, Cause)], cause: Cause, at: Ns) {
    for iv in intervals.iter_mut().rev() {
        if iv.2 == cause && iv.1 == Ns::MAX {
            iv.1 = at;
        }
    }
}
