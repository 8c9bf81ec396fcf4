//! [`Controller`]: the controller's state in one place — intent ([`Desired`]),
//! observations ([`Observed`]), what the maps hold ([`Programmed`]) and the maps
//! ([`DataPlane`]) — and the one way to change it: update intent or observations, then
//! `reconcile` and `apply`. The daemon owns one; the packet tests drive one directly, so
//! what they exercise is what the daemon does.
//!
//! Owns: keeping the four consistent (a failed write re-reads the maps). Must not touch:
//! persistence, sockets, health probing (the daemon's).

use std::net::IpAddr;

use super::{
    Alloc, Generations, Observed, Programmed, ProgrammedService, ReconcileError,
    adopt::adopt,
    apply::{Applied, apply},
    inspect::{self, Explanation, InspectError},
    reconcile,
};
use crate::{
    dataplane::maps::{DataPlane, MapsError},
    model::{Desired, Edit, FieldError},
};

/// Why a change was not made.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The change is invalid: nothing changed (a usage error).
    #[error("{}", crate::model::validate::join(.0))]
    Invalid(Vec<FieldError>),
    #[error("service {0:?} does not exist")]
    UnknownService(String),
    /// The change does not fit the data plane (ids, Maglev space): nothing changed.
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
    #[error(transparent)]
    Inspect(#[from] InspectError),
    /// Writing the maps failed: they were re-read, the intent is unchanged.
    #[error(transparent)]
    Maps(#[from] MapsError),
}

impl ControlError {
    /// The caller's mistake (exit 2) rather than a failure (exit 1).
    pub fn is_usage(&self) -> bool {
        !matches!(
            self,
            ControlError::Maps(_) | ControlError::Inspect(InspectError::Maps(_))
        )
    }
}

pub struct Controller {
    pub desired: Desired,
    pub observed: Observed,
    pub programmed: Programmed,
    pub dp: DataPlane,
    alloc: Generations,
}

impl Controller {
    /// Adopts whatever the maps hold (nothing, on fresh maps) with an empty intent; the
    /// first [`Controller::set_desired`] decides what stays.
    pub fn new(dp: DataPlane) -> Result<Self, MapsError> {
        let programmed = adopt(&dp)?;
        Ok(Self {
            alloc: durable_generations(&dp, &programmed)?,
            desired: Desired::default(),
            observed: Observed::default(),
            programmed,
            dp,
        })
    }

    /// What a new daemon on these maps starts from: the maps re-read, the durable
    /// generation counter, no observations; the intent stays (a restart keeps it).
    pub fn restart(&mut self) -> Result<(), MapsError> {
        self.programmed = adopt(&self.dp)?;
        self.alloc = durable_generations(&self.dp, &self.programmed)?;
        self.observed = Observed::default();
        Ok(())
    }

    /// Validates and applies one edit; on any error nothing changed.
    pub fn edit(&mut self, edit: &Edit) -> Result<Applied, ControlError> {
        let mut next = self.desired.clone();
        next.apply(edit).map_err(ControlError::Invalid)?;
        self.set_desired(next)
    }

    /// Makes `next` the intent and the maps follow it.
    pub fn set_desired(&mut self, next: Desired) -> Result<Applied, ControlError> {
        let (programmed, plan) =
            reconcile(&next, &self.observed, &self.programmed, &mut self.alloc)?;
        let applied = self.run(programmed, plan)?;
        // A backend that leaves forgets its health: added again later, it is new (Unknown
        // until checked), not what it was before.
        self.observed.health.retain(|(service, address), _| {
            next.service(service)
                .is_some_and(|s| s.backend(*address).is_some())
        });
        self.desired = next;
        Ok(applied)
    }

    /// Records observations and lets the maps follow.
    pub fn observe(&mut self, f: impl FnOnce(&mut Observed)) -> Result<Applied, ControlError> {
        f(&mut self.observed);
        self.sync()
    }

    /// Reconciles the current intent and observations.
    pub fn sync(&mut self) -> Result<Applied, ControlError> {
        let (programmed, plan) = reconcile(
            &self.desired,
            &self.observed,
            &self.programmed,
            &mut self.alloc,
        )?;
        self.run(programmed, plan)
    }

    fn run(&mut self, programmed: Programmed, plan: super::Plan) -> Result<Applied, ControlError> {
        match apply(&plan, &mut self.dp) {
            Ok(applied) => {
                self.programmed = programmed;
                Ok(applied)
            }
            Err(e) => {
                // Part of the plan may be in the maps: read back what is there so the next
                // reconcile writes what is missing.
                if let Ok(mut p) = adopt(&self.dp) {
                    for s in &mut p.services {
                        s.name = self
                            .programmed
                            .services
                            .iter()
                            .find(|o| o.id == s.id && o.key == s.key)
                            .and_then(|o| o.name.clone());
                    }
                    self.programmed = p;
                }
                Err(e.into())
            }
        }
    }

    /// The next generation the allocator would issue.
    pub fn next_generation(&self) -> u32 {
        self.alloc.next_generation()
    }

    /// The programmed service named `name`.
    pub fn service(&self, name: &str) -> Result<&ProgrammedService, ControlError> {
        self.programmed
            .service(name)
            .ok_or_else(|| ControlError::UnknownService(name.to_string()))
    }

    /// `xlb explain`.
    pub fn explain(
        &self,
        service: &str,
        client: IpAddr,
        port: u16,
    ) -> Result<Explanation, ControlError> {
        Ok(inspect::explain(
            self.service(service)?,
            &self.dp,
            client,
            port,
        )?)
    }
}

/// The allocator from the durable counter (and never below what the maps hold, should
/// the counter be behind: state written before the counter existed).
fn durable_generations(dp: &DataPlane, p: &Programmed) -> Result<Generations, MapsError> {
    let durable = dp.meta()?.next_generation;
    Ok(Generations::starting_at(
        durable.max(p.max_generation().saturating_add(1)),
    ))
}
