//! The announce task: makes the BGP daemon announce exactly the VIPs this node can serve
//! (`crate::announce`: the policy and the announcers).
//!
//! The owner publishes the facts the policy needs (attached, drained, usable backends per
//! service, from what is programmed) and the config's `[announce]` on a watch channel
//! after every change; this task decides and syncs the announcer on every change and every
//! [`ANNOUNCE_SYNC_PERIOD`] (a restarted BIRD is put right within it), and sends the
//! outcome back to the owner for `xlb status`. It acts only once the owner has published
//! facts: at a restart those come from the adopted state (backends keep their last known
//! health), so a restart withdraws nothing. When the daemon stops or dies, nothing is
//! withdrawn: the data plane keeps forwarding, and BIRD keeps the announcement.
//!
//! Owns: the announcer and its last outcome. Must not touch: the state the facts come
//! from (the owner's), the data plane.

use std::time::Instant;

use log::{debug, info, warn};
use tokio::sync::{mpsc::UnboundedSender, watch};

use super::Task;
use crate::{
    announce::{Announcer, NodeFacts, ServiceFacts, VipAnnouncement, decide},
    daemon::{command::Observation, owner::State},
    model::{
        Announce, AnnounceKind,
        limits::{ANNOUNCE_SYNC_PERIOD, ANNOUNCE_TIMEOUT},
    },
};

/// What the owner keeps: the announcer's last outcome per VIP, and when it came.
#[derive(Debug, Default)]
pub struct AnnounceBook {
    pub outcomes: Vec<VipAnnouncement>,
    pub synced: Option<Instant>,
}

impl AnnounceBook {
    pub fn record(&mut self, outcomes: Vec<VipAnnouncement>) {
        self.outcomes = outcomes;
        self.synced = Some(Instant::now());
    }
}

/// What the owner publishes: the config's `[announce]` and the facts (none until the
/// owner runs).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AnnounceInput {
    pub announce: Announce,
    pub facts: Option<NodeFacts>,
}

/// The facts of the owner's state: usable backends per service as programmed (the
/// data plane's HEALTHY bit: adopted at a restart as it was), drained, attached.
pub fn facts(st: &State) -> NodeFacts {
    let services = st
        .ctl
        .desired
        .services()
        .map(|svc| ServiceFacts {
            name: svc.name.clone(),
            vip: svc.vip,
            usable: st
                .ctl
                .programmed
                .service(&svc.name)
                .map_or(0, |p| p.backends.iter().filter(|b| b.usable()).count()),
            backends: svc.backends.len(),
        })
        .collect();
    let ifaces = st.ifaces.statuses();
    NodeFacts {
        attached: !ifaces.is_empty() && ifaces.iter().all(|i| i.attached),
        drained: st.ctl.desired.node_drained(),
        services,
    }
}

pub fn spawn(input: watch::Receiver<AnnounceInput>, tx: UnboundedSender<Observation>) -> Task {
    Task::spawn(run(input, tx))
}

async fn run(mut input: watch::Receiver<AnnounceInput>, tx: UnboundedSender<Observation>) {
    let mut config = input.borrow().announce.clone();
    let mut announcer = Announcer::new(&config, ANNOUNCE_TIMEOUT);
    let mut last: Vec<VipAnnouncement> = Vec::new();
    let mut tick = tokio::time::interval(ANNOUNCE_SYNC_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let AnnounceInput { announce, facts } = input.borrow_and_update().clone();
        if let Some(facts) = facts {
            if announce != config {
                // A reload changed [announce]: the old announcer withdraws what it had.
                let vips: Vec<_> = last
                    .iter()
                    .filter(|o| o.announced == Some(true))
                    .map(|o| o.vip)
                    .collect();
                for e in announcer.withdraw_all(&vips).await {
                    warn!("announce: withdrawing through the previous announcer: {e}");
                }
                announcer = Announcer::new(&announce, ANNOUNCE_TIMEOUT);
                config = announce;
                last.clear();
            }
            let outcomes = announcer.sync(&decide(&facts)).await;
            log_changes(announcer.kind(), &last, &outcomes);
            last = outcomes.clone();
            if tx.send(Observation::Announced(outcomes)).is_err() {
                return;
            }
        }
        tokio::select! {
            r = input.changed() => if r.is_err() { return },
            _ = tick.tick() => {}
        }
    }
}

/// One log line per VIP whose outcome or error changed.
fn log_changes(kind: AnnounceKind, before: &[VipAnnouncement], now: &[VipAnnouncement]) {
    for o in now {
        let prev = before.iter().find(|p| p.vip == o.vip);
        if prev.map(|p| p.want) != Some(o.want) {
            let verb = if o.want { "announced" } else { "withdrawn" };
            if kind == AnnounceKind::None {
                debug!(
                    "VIP {} would be {verb} ({}; no [announce])",
                    o.vip, o.reason
                );
            } else {
                info!("VIP {} {verb} ({kind}): {}", o.vip, o.reason);
            }
        }
        match (prev.and_then(|p| p.error.as_ref()), &o.error) {
            (p, Some(e)) if p != Some(e) => warn!("VIP {}: {e}", o.vip),
            (Some(_), None) => info!("VIP {}: the announcer follows again", o.vip),
            _ => {}
        }
    }
}
