//! Runtime changes made through the CLI, persisted so that they survive a restart.
//!
//! The config file is the base; the state file holds the *difference* between it and
//! what the daemon runs now, as a list of operations. On start the operations are applied
//! to the config. Storing a difference (not a copy) means an operator who edits the config
//! for one service does not lose runtime changes made to another, and the file stays small.
//!
//! Writes are atomic: a temporary file in the same directory is written, flushed to disk,
//! and renamed over the old one (then the directory is synced), so a crash at any point
//! leaves either the old or the new file, never half of one.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{self, Write as _},
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{config::ServiceConfig, model::BackendSpec};

/// Version of the state file format.
const FORMAT: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// A service that is not in the config (or replaces the config's version).
    ServiceAdd {
        service: Box<ServiceConfig>,
    },
    /// A config service removed at runtime.
    ServiceRemove {
        name: String,
    },
    BackendAdd {
        service: String,
        address: IpAddr,
        weight: u32,
    },
    BackendRemove {
        service: String,
        address: IpAddr,
    },
    Drain {
        service: String,
        address: IpAddr,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RuntimeState {
    pub format: u32,
    pub ops: Vec<Op>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading state file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "state file {path} is not valid ({source}); move it away to start from the config alone"
    )]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("state file {path} has format {found}, this xlb reads format {FORMAT}")]
    Format { path: PathBuf, found: u32 },
    #[error("writing state file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What the daemon runs: services with their drained backends.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    pub services: Vec<ServiceConfig>,
    /// (service, backend) pairs that are draining.
    pub drained: BTreeSet<(String, IpAddr)>,
}

impl Desired {
    pub fn is_drained(&self, service: &str, address: IpAddr) -> bool {
        self.drained.contains(&(service.to_string(), address))
    }
}

/// Loads the state file; a missing file is an empty state.
pub fn load(path: &Path) -> Result<RuntimeState, StateError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(RuntimeState::default()),
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let state: RuntimeState = serde_json::from_str(&text).map_err(|source| StateError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    if state.format != FORMAT {
        return Err(StateError::Format {
            path: path.to_path_buf(),
            found: state.format,
        });
    }
    Ok(state)
}

/// Writes the state file atomically (write, fsync, rename, fsync the directory).
pub fn save(path: &Path, state: &RuntimeState) -> Result<(), StateError> {
    let err = |source| StateError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(err)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state")
    ));
    let mut state = state.clone();
    state.format = FORMAT;
    let text = serde_json::to_string_pretty(&state).expect("state serializes");
    {
        let mut f = fs::File::create(&tmp).map_err(err)?;
        f.write_all(text.as_bytes()).map_err(err)?;
        f.write_all(b"\n").map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    fs::rename(&tmp, path).map_err(err)?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err)?;
    Ok(())
}

/// Applies `ops` to the config's services. Operations that no longer fit (the config
/// changed under them) are skipped and described in the returned warnings.
pub fn apply(base: &[ServiceConfig], ops: &[Op]) -> (Desired, Vec<String>) {
    let mut services: BTreeMap<String, ServiceConfig> = base
        .iter()
        .map(|s| (s.spec.name.clone(), s.clone()))
        .collect();
    let mut drained = BTreeSet::new();
    let mut warnings = Vec::new();
    for op in ops {
        match op {
            Op::ServiceAdd { service } => {
                drained.retain(|(s, _): &(String, IpAddr)| *s != service.spec.name);
                services.insert(service.spec.name.clone(), (**service).clone());
            }
            Op::ServiceRemove { name } => {
                if services.remove(name).is_none() {
                    warnings.push(format!(
                        "runtime removal of service {name:?}: not in the config any more"
                    ));
                }
                drained.retain(|(s, _)| s != name);
            }
            Op::BackendAdd {
                service,
                address,
                weight,
            } => match services.get_mut(service) {
                Some(s) if s.backends.iter().all(|b| b.address != *address) => {
                    s.backends.push(BackendSpec {
                        address: *address,
                        weight: *weight,
                    });
                }
                Some(s) => {
                    if let Some(b) = s.backends.iter_mut().find(|b| b.address == *address) {
                        b.weight = *weight;
                    }
                }
                None => warnings.push(format!(
                    "runtime backend {address} of service {service:?}: the service does not exist"
                )),
            },
            Op::BackendRemove { service, address } => {
                match services.get_mut(service) {
                    Some(s) if s.backends.iter().any(|b| b.address == *address) => {
                        s.backends.retain(|b| b.address != *address);
                    }
                    _ => warnings.push(format!(
                        "runtime removal of backend {address} of service {service:?}: not in the config any more"
                    )),
                }
                drained.remove(&(service.clone(), *address));
            }
            Op::Drain { service, address } => {
                if services
                    .get(service)
                    .is_some_and(|s| s.backends.iter().any(|b| b.address == *address))
                {
                    drained.insert((service.clone(), *address));
                } else {
                    warnings.push(format!(
                        "runtime drain of backend {address} of service {service:?}: no such backend"
                    ));
                }
            }
        }
    }
    (
        Desired {
            services: services.into_values().collect(),
            drained,
        },
        warnings,
    )
}

/// The operations that turn the config's services into `now`: what the state file stores.
pub fn diff(base: &[ServiceConfig], now: &Desired) -> RuntimeState {
    let mut ops = Vec::new();
    let base_map: BTreeMap<&str, &ServiceConfig> =
        base.iter().map(|s| (s.spec.name.as_str(), s)).collect();
    let now_map: BTreeMap<&str, &ServiceConfig> = now
        .services
        .iter()
        .map(|s| (s.spec.name.as_str(), s))
        .collect();
    for (name, _) in base_map.iter().filter(|(n, _)| !now_map.contains_key(*n)) {
        ops.push(Op::ServiceRemove {
            name: (*name).to_string(),
        });
    }
    for (name, svc) in &now_map {
        match base_map.get(name) {
            // Same service settings: express the change as backend operations.
            Some(b)
                if b.spec == svc.spec
                    && b.health == svc.health
                    && b.forwarding == svc.forwarding =>
            {
                for old in &b.backends {
                    match svc.backends.iter().find(|n| n.address == old.address) {
                        None => ops.push(Op::BackendRemove {
                            service: (*name).to_string(),
                            address: old.address,
                        }),
                        Some(n) if n.weight != old.weight => ops.push(Op::BackendAdd {
                            service: (*name).to_string(),
                            address: n.address,
                            weight: n.weight,
                        }),
                        Some(_) => {}
                    }
                }
                for n in svc
                    .backends
                    .iter()
                    .filter(|n| b.backends.iter().all(|o| o.address != n.address))
                {
                    ops.push(Op::BackendAdd {
                        service: (*name).to_string(),
                        address: n.address,
                        weight: n.weight,
                    });
                }
            }
            Some(_) | None => ops.push(Op::ServiceAdd {
                service: Box::new((*svc).clone()),
            }),
        }
    }
    for (service, address) in &now.drained {
        ops.push(Op::Drain {
            service: service.clone(),
            address: *address,
        });
    }
    RuntimeState {
        format: FORMAT,
        ops,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Protocol, ServiceSpec};

    fn svc(name: &str, vip: &str, backends: &[&str]) -> ServiceConfig {
        let mut s = ServiceConfig::new(ServiceSpec::new(
            name,
            vip.parse().unwrap(),
            80,
            Protocol::Tcp,
        ));
        s.backends = backends
            .iter()
            .map(|a| BackendSpec {
                address: a.parse().unwrap(),
                weight: 1,
            })
            .collect();
        s
    }

    fn base() -> Vec<ServiceConfig> {
        vec![
            svc("a", "10.0.0.1", &["10.1.0.1", "10.1.0.2"]),
            svc("b", "10.0.0.2", &["10.1.0.3"]),
        ]
    }

    /// Whatever runtime changes are made, storing their difference and applying it to the
    /// config gives back exactly what the daemon ran.
    #[test]
    fn diff_then_apply_round_trips() {
        let base = base();
        let (mut now, w) = apply(&base, &[]);
        assert!(w.is_empty());
        now.services[0].backends.push(BackendSpec {
            address: "10.1.0.9".parse().unwrap(),
            weight: 3,
        });
        now.services[0]
            .backends
            .retain(|b| b.address.to_string() != "10.1.0.1");
        now.services.retain(|s| s.spec.name != "b");
        now.services.push(svc("c", "10.0.0.3", &["10.1.0.4"]));
        now.drained
            .insert(("a".into(), "10.1.0.2".parse().unwrap()));
        let state = diff(&base, &now);
        let (again, w) = apply(&base, &state.ops);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(again, now);
        // Nothing changed: nothing stored.
        let (same, _) = apply(&base, &[]);
        assert!(diff(&base, &same).ops.is_empty());
    }

    #[test]
    fn ops_that_no_longer_fit_the_config_are_skipped_with_a_warning() {
        let ops = vec![
            Op::BackendRemove {
                service: "a".into(),
                address: "10.9.9.9".parse().unwrap(),
            },
            Op::Drain {
                service: "zz".into(),
                address: "10.1.0.1".parse().unwrap(),
            },
            Op::ServiceRemove {
                name: "gone".into(),
            },
        ];
        let (d, w) = apply(&base(), &ops);
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[0].contains("10.9.9.9") && w[1].contains("zz") && w[2].contains("gone"));
        assert_eq!(d.services, base());
    }

    #[test]
    fn save_is_atomic_and_load_reports_bad_files() {
        let dir = std::env::temp_dir().join(format!("xlb-state-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("sub/state.json");
        assert_eq!(
            load(&path).unwrap(),
            RuntimeState::default(),
            "missing = empty"
        );
        let (mut now, _) = apply(&base(), &[]);
        now.drained
            .insert(("a".into(), "10.1.0.1".parse().unwrap()));
        let state = diff(&base(), &now);
        save(&path, &state).unwrap();
        assert_eq!(load(&path).unwrap(), state);
        // No temporary file is left next to it.
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
        fs::write(&path, "{ half").unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("state.json") && e.contains("not valid"), "{e}");
        fs::write(&path, r#"{"format": 7, "ops": []}"#).unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("format 7"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
