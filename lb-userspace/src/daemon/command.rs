//! The messages of the daemon. [`Command`]s come from the control socket, signals and the
//! metrics server, each with a oneshot responder; [`Observation`]s come from the
//! background tasks. Both go to the one task that owns the daemon's state (owner.rs),
//! which handles them one at a time: no shared mutex, no polling.
//!
//! Owns: the message types only. Must not touch: what a message does (owner.rs and the
//! room of each concern), sockets, maps.

use std::{net::IpAddr, time::Instant};

use tokio::sync::oneshot;

use crate::{
    api,
    config::Config,
    dataplane::maps::LivePins,
    health::Probe,
    metrics,
    model::{Desired, Edit, Health},
    neigh::Resolution,
};

/// Where the answer to a control request goes.
pub type Reply = oneshot::Sender<api::Response>;

/// A request to the owner. Every variant carries its responder; the owner answers each
/// exactly once (dropping it unanswered only if the daemon stops).
#[derive(Debug)]
pub enum Command {
    Status(Reply),
    Stats(Reply),
    Explain {
        service: String,
        client: IpAddr,
        port: u16,
        reply: Reply,
    },
    /// `xlb top`.
    Top {
        query: api::TopQuery,
        reply: Reply,
    },
    AffinityList {
        service: Option<String>,
        limit: usize,
        reply: Reply,
    },
    AffinityFlush {
        service: Option<String>,
        reply: Reply,
    },
    /// A draining backend's remaining live pins (one poll of `backend drain --wait`).
    DrainStatus {
        service: String,
        address: IpAddr,
        reply: Reply,
    },
    /// A runtime change: first look at the backends it adds, validate, reconcile, save.
    Edit {
        edit: Edit,
        reply: Reply,
    },
    /// Re-read the config file (`xlb reload`, SIGHUP).
    Reload(Reply),
    /// A scrape of the metrics server.
    Metrics(oneshot::Sender<metrics::Snapshot>),
}

/// What a background task learnt, for the owner to record (and reconcile on).
#[derive(Debug)]
pub enum Observation {
    /// One health probe of one backend.
    Probe(ProbeReport),
    /// A neighbour resolution of one backend address.
    Neighbour {
        address: IpAddr,
        resolution: Resolution,
    },
    /// The egress interfaces of the resolved backends as the kernel has them now, by
    /// ifindex (an interface that could not be read is left out).
    Egress {
        facts: std::collections::BTreeMap<u32, crate::egress::EgressFacts>,
        /// The host's global addresses (`None`: reading them failed).
        host: Option<Vec<IpAddr>>,
    },
    /// A configured interface as the kernel has it now (`None`: it does not exist).
    Interface { name: String, ifindex: Option<u32> },
    /// The kernel deleted the interface with this index (RTNLGRP_LINK).
    InterfaceGone { ifindex: u32 },
    /// A count of the affinity table's live pins.
    Pins(PinReport),
    /// Time to sample the counters for rates (once a second).
    RatesTick,
    /// Sampled packets drained from the data plane's ring.
    Samples(Vec<lb_common::sample::SourceSample>),
    /// A first look (neighbours, one probe) finished; the change it was for goes on.
    Looked(Box<Looked>),
    /// Status requests waiting for fresh pin counts have waited long enough.
    CountsDeadline,
    /// The announcer synced: the outcome per VIP.
    Announced(Vec<crate::announce::VipAnnouncement>),
}

/// One probe result of the health task of (`service`, `address`).
#[derive(Debug)]
pub struct ProbeReport {
    pub service: String,
    pub address: IpAddr,
    /// Which task sent it: results of a task since replaced are ignored.
    pub task: u64,
    pub probe: Probe,
    /// The new state when this probe flipped it.
    pub transition: Option<Health>,
    /// State changes the task has seen.
    pub transitions: u64,
}

/// Live pins per service and backend, as counted by the scan task.
#[derive(Debug)]
pub struct PinReport {
    pub counts: LivePins,
    pub taken: Instant,
    /// The scan was cheap enough to run on demand (a small table).
    pub cheap: bool,
}

/// What a first look found.
#[derive(Debug, Default)]
pub struct Looks {
    /// Resolution per backend address.
    pub links: Vec<(IpAddr, Resolution)>,
    /// (service, backend) whose first probe passed.
    pub passed: Vec<(String, IpAddr)>,
}

/// A first look and the change waiting for it.
#[derive(Debug)]
pub struct Looked {
    pub looks: Looks,
    pub then: Pending,
}

/// A change that waits for its first look.
#[derive(Debug)]
pub enum Pending {
    Edit { edit: Edit, reply: Reply },
    Reload { reload: Box<Reload>, reply: Reply },
}

/// A config re-read and judged, ready to apply (reload.rs makes it).
#[derive(Debug)]
pub struct Reload {
    /// The new config (daemon settings checked: every change in them can be applied).
    pub cfg: Config,
    /// The new config's services with the runtime edits replayed on top, as judged
    /// (what the first look is for; applying replays the edits again, as they are then).
    pub desired: Desired,
    /// A listener already bound for a changed `daemon.metrics` (`Some(None)`: disabled).
    pub metrics: Option<Option<tokio::net::TcpListener>>,
}
