//! The soak's continuous checks over the clients' answers, against the [`Timeline`]:
//!
//! - **sticky**: a client whose backend stayed healthy and in its service never changes
//!   backend. A change from A to B between two answers is excused only if A was removed,
//!   had its server stopped, or was seen unhealthy / changing health somewhere between the
//!   two answers' receive times;
//! - **late**: no request reaches a backend later than [`LATE_NS`] after the
//!   `xlb backend remove` of it returned (nor, after that, a backend never added);
//! - **cross-service**: no request reaches a backend of another service, or another VIP.
//!
//! Answers are processed in batches once older than a lag (so every operation and health
//! observation around them is in the log), per client in sequence order. Pure: no I/O.

use std::net::IpAddr;

use super::events::{BackendIx, Cause, Ns, Timeline};

/// A request may still reach a removed backend this long after the remove returned.
pub const LATE_NS: Ns = 20_000_000;

/// At most this many violations are kept (the counts go on).
const KEEP: usize = 1_000_000;

/// One answered request, as the receiver decoded it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Obs {
    pub client: u32,
    pub seq: u32,
    pub send_ns: Ns,
    /// The backend kernel's receive time.
    pub rx_ns: Ns,
    pub backend: BackendIx,
    /// The address the request reached (the VIP).
    pub dst: IpAddr,
}

/// Who is who: fixed for a soak.
#[derive(Clone, Debug)]
pub struct Topology {
    /// Service names; a service's index is its number.
    pub services: Vec<String>,
    /// Per service, its VIP.
    pub vips: Vec<IpAddr>,
    /// Per backend host: the service whose pool it belongs to (it is only ever added there).
    pub backend_service: Vec<usize>,
    /// Per backend host: its name (`be3`) and address.
    pub backend_names: Vec<String>,
    pub backend_addrs: Vec<IpAddr>,
    /// Per client: source address and service.
    pub client_addrs: Vec<IpAddr>,
    pub client_service: Vec<usize>,
}

impl Topology {
    pub fn backend(&self, b: BackendIx) -> String {
        format!("{} ({})", self.backend_names[b], self.backend_addrs[b])
    }

    pub fn client(&self, c: u32) -> String {
        let c = c as usize;
        format!(
            "client {c} ({}, {})",
            self.client_addrs[c], self.services[self.client_service[c]]
        )
    }
}

/// A broken promise, with what is needed to explain it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// A client changed backend although the old one stayed healthy and in its service.
    Unexcused {
        client: u32,
        from: BackendIx,
        from_seq: u32,
        from_rx: Ns,
        to: BackendIx,
        to_seq: u32,
        to_rx: Ns,
    },
    /// A request reached a backend more than [`LATE_NS`] after its removal returned.
    Late {
        client: u32,
        seq: u32,
        backend: BackendIx,
        rx: Ns,
        removed: Ns,
    },
    /// A request reached a backend of another service, or another VIP.
    CrossService {
        client: u32,
        seq: u32,
        backend: BackendIx,
        rx: Ns,
        dst: IpAddr,
    },
}

impl Violation {
    /// The time span to show operations around.
    pub fn span(&self) -> (Ns, Ns) {
        match *self {
            Violation::Unexcused { from_rx, to_rx, .. } => (from_rx, to_rx),
            Violation::Late { removed, rx, .. } => (removed, rx),
            Violation::CrossService { rx, .. } => (rx, rx),
        }
    }

    /// The backends whose health observations matter for it.
    pub fn backends(&self) -> Vec<BackendIx> {
        match *self {
            Violation::Unexcused { from, to, .. } => vec![from, to],
            Violation::Late { backend, .. } | Violation::CrossService { backend, .. } => {
                vec![backend]
            }
        }
    }
}

/// The counters the soak prints.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub answers: u64,
    /// Changes of backend, excused by each cause.
    pub excused_removed: u64,
    pub excused_server: u64,
    pub excused_health: u64,
    pub unexcused: u64,
    pub late: u64,
    pub cross_service: u64,
    /// Answers processed after a later answer of the same client (their batch had passed).
    pub stragglers: u64,
    /// The largest gap between a remove returning and a request still reaching that
    /// backend within [`LATE_NS`] (ns): how close the allowance came to being used up.
    pub max_in_flight_after_remove: Ns,
}

impl Counts {
    pub fn excused(&self) -> u64 {
        self.excused_removed + self.excused_server + self.excused_health
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Last {
    backend: BackendIx,
    seq: u32,
    rx: Ns,
}

/// The streaming checker.
pub struct Checker {
    topo: Topology,
    last: Vec<Option<Last>>,
    pending: Vec<Obs>,
    pub counts: Counts,
    /// The violations in the order found (the first [`KEEP`]).
    pub kept: Vec<Violation>,
}

impl Checker {
    pub fn new(topo: Topology) -> Self {
        let n = topo.client_addrs.len();
        Self {
            topo,
            last: vec![None; n],
            pending: Vec::new(),
            counts: Counts::default(),
            kept: Vec::new(),
        }
    }

    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    pub fn feed(&mut self, batch: impl IntoIterator<Item = Obs>) {
        self.pending.extend(batch);
    }

    /// Checks every pending answer sent before `watermark` (all of them with `Ns::MAX`).
    pub fn process(&mut self, watermark: Ns, timeline: &Timeline) {
        let (mut ready, rest): (Vec<Obs>, Vec<Obs>) =
            self.pending.drain(..).partition(|o| o.send_ns < watermark);
        self.pending = rest;
        ready.sort_unstable_by_key(|o| (o.client, o.seq));
        for o in ready {
            self.check(o, timeline);
        }
    }

    fn check(&mut self, o: Obs, timeline: &Timeline) {
        self.counts.answers += 1;
        let Some(&service) = self.topo.client_service.get(o.client as usize) else {
            return;
        };
        if self.topo.backend_service[o.backend] != service || o.dst != self.topo.vips[service] {
            self.counts.cross_service += 1;
            self.keep(Violation::CrossService {
                client: o.client,
                seq: o.seq,
                backend: o.backend,
                rx: o.rx_ns,
                dst: o.dst,
            });
        }
        if let Some(removed) = timeline.removed_at(o.backend, o.rx_ns) {
            if o.rx_ns > removed + LATE_NS {
                self.counts.late += 1;
                self.keep(Violation::Late {
                    client: o.client,
                    seq: o.seq,
                    backend: o.backend,
                    rx: o.rx_ns,
                    removed,
                });
            } else {
                let gap = o.rx_ns - removed;
                self.counts.max_in_flight_after_remove =
                    self.counts.max_in_flight_after_remove.max(gap);
            }
        }
        self.sticky(o, timeline);
    }

    fn sticky(&mut self, o: Obs, timeline: &Timeline) {
        let slot = &mut self.last[o.client as usize];
        let now = Last {
            backend: o.backend,
            seq: o.seq,
            rx: o.rx_ns,
        };
        let Some(prev) = *slot else {
            *slot = Some(now);
            return;
        };
        if o.seq < prev.seq {
            self.counts.stragglers += 1;
            return;
        }
        *slot = Some(now);
        if prev.backend == o.backend {
            return;
        }
        match timeline.excuse(prev.backend, prev.rx.min(o.rx_ns), prev.rx.max(o.rx_ns)) {
            Some(Cause::Removed) => self.counts.excused_removed += 1,
            Some(Cause::ServerStopped) => self.counts.excused_server += 1,
            Some(Cause::HealthChange) => self.counts.excused_health += 1,
            None => {
                self.counts.unexcused += 1;
                self.keep(Violation::Unexcused {
                    client: o.client,
                    from: prev.backend,
                    from_seq: prev.seq,
                    from_rx: prev.rx,
                    to: o.backend,
                    to_seq: o.seq,
                    to_rx: o.rx_ns,
                });
            }
        }
    }

    fn keep(&mut self, v: Violation) {
        if self.kept.len() < KEEP {
            self.kept.push(v);
        }
    }
}
