//! [`Desired`]: the only statement of intent — the config's services with the runtime
//! edits applied. Everything the data plane holds is derived from it by `reconcile`.
//!
//! Owns: applying an [`Edit`] (validated by the one validator), replaying saved edits on
//! a config, and the difference between a config and a desired state as a list of edits
//! in normal form (what the state file stores).
//! Must not touch: observations (health, neighbours), ids, maps, files.

use std::{collections::BTreeMap, net::IpAddr};

use super::{
    Backend, Edit, Service,
    validate::{FieldError, validate_service},
};

/// The services xlb should run, by name, and whether the node is in maintenance. Each
/// service's backends are kept in address order (the Maglev table does not depend on
/// order, and a normal form makes `replay(diff)` give back exactly what was saved).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    services: BTreeMap<String, Service>,
    /// `xlb node drain`: every VIP withdrawn, whatever the services can serve.
    node_drained: bool,
}

impl Desired {
    /// The config's services as they are (the config was validated as a whole).
    pub fn from_services(services: &[Service]) -> Self {
        Self {
            services: services
                .iter()
                .map(|s| (s.name.clone(), normalized(s)))
                .collect(),
            node_drained: false,
        }
    }

    /// The node is in maintenance (`xlb node drain`).
    pub fn node_drained(&self) -> bool {
        self.node_drained
    }

    /// In name order.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.get(name)
    }

    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// Validates `edit` against everything else and applies it; on error nothing changed.
    /// Every error names its field: an edit's own (`service`, `address`, `weight`, `name`)
    /// or, for a new service, a path inside it (`backend[1].weight`).
    pub fn apply(&mut self, edit: &Edit) -> Result<(), Vec<FieldError>> {
        let field_errors = edit.check_fields();
        if !field_errors.is_empty() {
            return Err(field_errors);
        }
        match edit {
            Edit::ServiceAdd { service } => self.add_service(service),
            Edit::ServiceRemove { name } => self
                .services
                .remove(name)
                .map(drop)
                .ok_or_else(|| vec![FieldError::new("name", format!("no service {name:?}"))]),
            Edit::BackendAdd {
                service,
                address,
                weight,
            } => self.change_service(service, Some(*address), |s| {
                if s.backend(*address).is_some() {
                    return Err(FieldError::new(
                        "address",
                        format!("service {:?} already has backend {address}", s.name),
                    ));
                }
                s.backends.push(Backend::with_weight(*address, *weight));
                Ok(())
            }),
            Edit::BackendRemove { service, address } => {
                self.change_backend(service, *address, |s, a| {
                    s.backends.retain(|b| b.address != a)
                })
            }
            Edit::BackendDrain { service, address } => {
                self.change_backend(service, *address, |s, a| set(s, a, |b| b.draining = true))
            }
            Edit::BackendUndrain { service, address } => {
                self.change_backend(service, *address, |s, a| set(s, a, |b| b.draining = false))
            }
            Edit::BackendWeight {
                service,
                address,
                weight,
            } => self.change_backend(service, *address, |s, a| set(s, a, |b| b.weight = *weight)),
            Edit::ServiceSet {
                service,
                nat_sources,
                balance_factor,
                tunnel_source,
            } => self.change_service(service, None, |s| {
                if let Some(l) = nat_sources {
                    s.nat_sources = l.clone();
                }
                if let Some(f) = balance_factor {
                    s.balance_factor = (f.0 != 0).then_some(*f);
                }
                if let Some(t) = tunnel_source {
                    s.tunnel_source = t.0;
                }
                Ok(())
            }),
            // Idempotent, like draining a backend twice.
            Edit::NodeDrain => {
                self.node_drained = true;
                Ok(())
            }
            Edit::NodeUndrain => {
                self.node_drained = false;
                Ok(())
            }
        }
    }

    fn add_service(&mut self, service: &Service) -> Result<(), Vec<FieldError>> {
        let others: Vec<&Service> = self.services.values().collect();
        validate_service(service, &others)?;
        self.services
            .insert(service.name.clone(), normalized(service));
        Ok(())
    }

    /// Changes a copy of one backend of `service` and validates the result.
    fn change_backend(
        &mut self,
        service: &str,
        address: IpAddr,
        f: impl FnOnce(&mut Service, IpAddr),
    ) -> Result<(), Vec<FieldError>> {
        self.change_service(service, Some(address), |s| {
            if s.backend(address).is_none() {
                return Err(FieldError::new(
                    "address",
                    format!("service {:?} has no backend {address}", s.name),
                ));
            }
            f(s, address);
            Ok(())
        })
    }

    /// Changes a copy of `service`, validates it against the others and keeps it. The
    /// validator's `backend[i].x` of the edited backend (`address`) is reported as the
    /// edit's own field `x`.
    fn change_service(
        &mut self,
        service: &str,
        address: Option<IpAddr>,
        f: impl FnOnce(&mut Service) -> Result<(), FieldError>,
    ) -> Result<(), Vec<FieldError>> {
        let Some(current) = self.services.get(service) else {
            return Err(vec![FieldError::new(
                "service",
                format!("no service {service:?}"),
            )]);
        };
        let mut candidate = current.clone();
        f(&mut candidate).map_err(|e| vec![e])?;
        let others: Vec<&Service> = self
            .services
            .values()
            .filter(|s| s.name != service)
            .collect();
        validate_service(&candidate, &others).map_err(|errors| {
            let index =
                address.and_then(|a| candidate.backends.iter().position(|b| b.address == a));
            errors
                .into_iter()
                .map(|e| edit_field(e, index))
                .collect::<Vec<_>>()
        })?;
        self.services
            .insert(service.to_string(), normalized(&candidate));
        Ok(())
    }

    /// `base` with `edits` applied in order. An edit that no longer fits (the config
    /// changed under it) is skipped; the returned warnings say which and why.
    pub fn replay(base: &[Service], edits: &[Edit]) -> (Desired, Vec<String>) {
        let mut d = Desired::from_services(base);
        let mut warnings = Vec::new();
        for edit in edits {
            d.apply_or_warn(edit, &mut warnings);
        }
        (d, warnings)
    }

    /// [`Desired::apply`], or a warning saying which saved change was skipped and why.
    pub fn apply_or_warn(&mut self, edit: &Edit, warnings: &mut Vec<String>) {
        if let Err(errors) = self.apply(edit) {
            warnings.push(format!(
                "saved change skipped ({}): {}",
                edit.describe(),
                super::validate::join(&errors)
            ));
        }
    }

    /// The edits that turn the config's `base` into `self`, in normal form: removals of
    /// config services, then per service either backend edits (same settings) or a
    /// replacement (remove + add), then the node's maintenance. `replay(base,
    /// &diff(base))` gives `self` back.
    pub fn diff(&self, base: &[Service]) -> Vec<Edit> {
        let base: BTreeMap<&str, Service> = base
            .iter()
            .map(|s| (s.name.as_str(), normalized(s)))
            .collect();
        let mut edits: Vec<Edit> = base
            .keys()
            .filter(|n| !self.services.contains_key(**n))
            .map(|n| Edit::ServiceRemove {
                name: (*n).to_string(),
            })
            .collect();
        for (name, now) in &self.services {
            match base.get(name.as_str()) {
                Some(b) if b == now => {}
                Some(b) if b.same_settings(now) => backend_edits(b, now, &mut edits),
                Some(b) if b.same_but_spread(now) => {
                    edits.push(Edit::ServiceSet {
                        service: name.clone(),
                        nat_sources: (b.nat_sources != now.nat_sources)
                            .then(|| now.nat_sources.clone()),
                        balance_factor: (b.balance_factor != now.balance_factor)
                            .then(|| now.balance_factor.unwrap_or(super::Millionths(0))),
                        tunnel_source: (b.tunnel_source != now.tunnel_source)
                            .then_some(super::edit::TunnelSourceSet(now.tunnel_source)),
                    });
                    backend_edits(b, now, &mut edits);
                }
                Some(_) => {
                    edits.push(Edit::ServiceRemove { name: name.clone() });
                    edits.push(Edit::ServiceAdd {
                        service: Box::new(now.clone()),
                    });
                }
                None => edits.push(Edit::ServiceAdd {
                    service: Box::new(now.clone()),
                }),
            }
        }
        if self.node_drained {
            edits.push(Edit::NodeDrain);
        }
        edits
    }
}

/// `s` with its backends in address order.
fn normalized(s: &Service) -> Service {
    let mut s = s.clone();
    s.backends.sort_by_key(|b| b.address);
    s
}

fn set(s: &mut Service, a: IpAddr, f: impl FnOnce(&mut Backend)) {
    if let Some(b) = s.backend_mut(a) {
        f(b);
    }
}

/// `backend[i].x` → `x` for the backend the edit names.
fn edit_field(e: FieldError, index: Option<usize>) -> FieldError {
    let own = index.map(|i| format!("backend[{i}]."));
    match own.and_then(|p| e.field.strip_prefix(&p).map(str::to_string)) {
        Some(field) => FieldError::new(field, e.message),
        None => e,
    }
}

/// Backend edits from `old` to `new` (same service settings).
fn backend_edits(old: &Service, new: &Service, out: &mut Vec<Edit>) {
    let name = || new.name.clone();
    for b in &old.backends {
        if new.backend(b.address).is_none() {
            out.push(Edit::BackendRemove {
                service: name(),
                address: b.address,
            });
        }
    }
    for b in &new.backends {
        let before = old.backend(b.address);
        match before {
            None => out.push(Edit::BackendAdd {
                service: name(),
                address: b.address,
                weight: b.weight,
            }),
            Some(o) if o.weight != b.weight => out.push(Edit::BackendWeight {
                service: name(),
                address: b.address,
                weight: b.weight,
            }),
            Some(_) => {}
        }
        let was_draining = before.is_some_and(|o| o.draining);
        if b.draining != was_draining {
            out.push(if b.draining {
                Edit::BackendDrain {
                    service: name(),
                    address: b.address,
                }
            } else {
                Edit::BackendUndrain {
                    service: name(),
                    address: b.address,
                }
            });
        }
    }
}
