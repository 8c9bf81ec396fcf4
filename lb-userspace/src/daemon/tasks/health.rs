//! Health checking of every backend: one task per (service, backend) running
//! [`health::run_checks`], and the owner's book of them ([`Checks`]).
//!
//! A task sends every probe result to the owner ([`ProbeReport`]); it logs a transition
//! itself (one line). Tasks are numbered: a result of a task that was replaced (its
//! check config changed) is ignored.
//!
//! Owns: starting, stopping and numbering check tasks; the per-backend bookkeeping
//! (checked yet, transitions, last latency, last failure). Must not touch: the
//! controller (the owner applies a transition), the maps.

use std::{collections::HashMap, net::IpAddr};

use tokio::sync::mpsc::UnboundedSender;

use super::Task;
use crate::{
    daemon::command::{Observation, ProbeReport},
    health::{self, Probe, Target, Tracker},
    model::{Health, HealthCheck},
};

/// One backend's checking.
#[derive(Debug)]
pub struct Check {
    pub cfg: HealthCheck,
    /// Where its probes go (through the tunnel for a tunnel service).
    pub target: Target,
    serial: u64,
    _task: Task,
    /// This daemon has a result for it.
    pub checked: bool,
    pub transitions: u64,
    /// Seconds the last probe took.
    pub last_latency: Option<f64>,
    /// Why the last failed probe failed.
    pub last_failure: Option<String>,
}

/// Every running check, by (service, backend address).
#[derive(Debug, Default)]
pub struct Checks {
    checks: HashMap<(String, IpAddr), Check>,
    serial: u64,
}

/// A backend that should be checked: its service, address, check, where probes go and
/// the health the data plane holds for it now (the tracker starts there).
pub type Wanted = ((String, IpAddr), HealthCheck, Target, Health);

impl Checks {
    /// Starts a check for every wanted backend without one, stops the checks of backends
    /// that are gone, restarts those whose check config or probe path changed.
    pub fn sync(&mut self, wanted: Vec<Wanted>, tx: &UnboundedSender<Observation>) {
        {
            let configs: HashMap<&(String, IpAddr), (&HealthCheck, &Target)> = wanted
                .iter()
                .map(|(k, cfg, target, _)| (k, (cfg, target)))
                .collect();
            self.checks.retain(|k, c| {
                configs
                    .get(k)
                    .is_some_and(|(cfg, target)| **cfg == c.cfg && **target == c.target)
            });
        }
        for (key, cfg, target, initial) in wanted {
            if self.checks.contains_key(&key) {
                continue;
            }
            self.serial += 1;
            let task = spawn(
                key.clone(),
                (cfg.clone(), target),
                initial,
                self.serial,
                tx.clone(),
            );
            let check = Check {
                cfg,
                target,
                serial: self.serial,
                _task: task,
                checked: false,
                transitions: 0,
                last_latency: None,
                last_failure: None,
            };
            self.checks.insert(key, check);
        }
    }

    /// Records a probe result; `Some(state)` when it flipped the backend's state (and
    /// came from the current task).
    pub fn record(&mut self, r: &ProbeReport) -> Option<Health> {
        let c = self
            .checks
            .get_mut(&(r.service.clone(), r.address))
            .filter(|c| c.serial == r.task)?;
        c.checked = true;
        c.transitions = r.transitions;
        c.last_latency = Some(r.probe.latency.as_secs_f64());
        if !r.probe.ok {
            c.last_failure = Some(r.probe.reason.clone());
        }
        r.transition
    }

    pub fn get(&self, service: &str, address: IpAddr) -> Option<&Check> {
        self.checks.get(&(service.to_string(), address))
    }
}

/// The check task of one backend: every result goes to the owner; a transition is
/// logged here, once.
fn spawn(
    (service, address): (String, IpAddr),
    (cfg, target): (HealthCheck, Target),
    initial: Health,
    serial: u64,
    tx: UnboundedSender<Observation>,
) -> Task {
    let svc = service.clone();
    let report = move |probe: &Probe, flip: Option<bool>, tracker: &Tracker| {
        if flip.is_some() {
            health::log_transition(&svc, address, probe, tracker);
        }
        let _ = tx.send(Observation::Probe(ProbeReport {
            service: svc.clone(),
            address,
            task: serial,
            probe: probe.clone(),
            transition: flip.map(|_| tracker.state()),
            transitions: tracker.transitions(),
        }));
    };
    Task::spawn(health::run_checks(
        service, address, target, cfg, initial, report,
    ))
}
