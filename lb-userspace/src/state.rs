//! The state file: runtime changes made through the CLI, persisted so that they survive a
//! restart, and bound to the deployment (`pin_dir`) that made them.
//!
//! The config file is the base; the state file holds the *difference* between it and
//! what the daemon runs, as a list of [`Edit`]s in normal form (`Desired::diff`). On start
//! the edits are replayed on the config. Storing a difference (not a copy) means an
//! operator who edits the config for one service does not lose runtime changes made to
//! another, and the file stays small.
//!
//! Format 2: `{"format": 2, "pin_dir": "/sys/fs/bpf/xlb", "edits": [...]}`. A daemon
//! whose `pin_dir` differs refuses the file (it neither applies nor overwrites it).
//! Format 1 (`{"format": 1, "ops": [...]}`, before state files were bound) is still read
//! and converted, losing nothing; it names no `pin_dir`, so it is accepted by the daemon
//! configured to read it: explicitly through `state_file`, or at the default path, which
//! only the default `pin_dir` derives (other deployments derive their own path and never
//! see it). The next save rewrites it as format 2.
//!
//! Writes are atomic: a temporary file in the same directory is written, flushed to disk,
//! and renamed over the old one (then the directory is synced), so a crash at any point
//! leaves either the old or the new file, never half of one.
//!
//! Owns: the file's format, binding and atomic writes. Must not touch: what the edits
//! mean (`model::Desired`).

use std::{
    fs,
    io::{self, Write as _},
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    config::normalize,
    model::{Desired, Edit, Service},
};

/// The format this build writes.
pub const FORMAT: u32 = 2;

/// What the file holds (format 2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    pub format: u32,
    /// The deployment the edits belong to.
    pub pin_dir: PathBuf,
    pub edits: Vec<Edit>,
}

/// A format-1 operation (read only, for upgrades).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum LegacyOp {
    /// Added a service, or replaced the config's service of that name.
    ServiceAdd {
        service: Box<Service>,
    },
    ServiceRemove {
        name: String,
    },
    /// Added a backend, or changed its weight when it existed.
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

#[derive(Deserialize)]
struct LegacyFile {
    ops: Vec<LegacyOp>,
}

/// What was found on disk.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Saved {
    /// The format read (0: no file).
    pub format: u32,
    pub content: Content,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Content {
    Edits(Vec<Edit>),
    Legacy(Vec<LegacyOp>),
}

impl Default for Content {
    fn default() -> Self {
        Content::Edits(Vec::new())
    }
}

impl Saved {
    /// How many changes the file holds.
    pub fn len(&self) -> usize {
        match &self.content {
            Content::Edits(e) => e.len(),
            Content::Legacy(o) => o.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The config's services with the saved changes applied; warnings for those skipped.
    pub fn replay(&self, base: &[Service]) -> (Desired, Vec<String>) {
        match &self.content {
            Content::Edits(edits) => Desired::replay(base, edits),
            Content::Legacy(ops) => {
                // Each op is converted on the state its predecessors made (format 1's
                // semantics: a service add replaced, a backend add re-weighted).
                let mut d = Desired::from_services(base);
                let mut warnings = Vec::new();
                for op in ops {
                    for edit in op.to_edits(&d) {
                        d.apply_or_warn(&edit, &mut warnings);
                    }
                }
                (d, warnings)
            }
        }
    }
}

impl LegacyOp {
    /// The format-2 edits that do what this op did on `now`.
    fn to_edits(&self, now: &Desired) -> Vec<Edit> {
        match self.clone() {
            LegacyOp::ServiceAdd { service } => {
                let mut out = Vec::new();
                if now.service(&service.name).is_some() {
                    out.push(Edit::ServiceRemove {
                        name: service.name.clone(),
                    });
                }
                out.push(Edit::ServiceAdd { service });
                out
            }
            LegacyOp::ServiceRemove { name } => vec![Edit::ServiceRemove { name }],
            LegacyOp::BackendAdd {
                service,
                address,
                weight,
            } => {
                let exists = now
                    .service(&service)
                    .is_some_and(|s| s.backend(address).is_some());
                vec![if exists {
                    Edit::BackendWeight {
                        service,
                        address,
                        weight,
                    }
                } else {
                    Edit::BackendAdd {
                        service,
                        address,
                        weight,
                    }
                }]
            }
            LegacyOp::BackendRemove { service, address } => {
                vec![Edit::BackendRemove { service, address }]
            }
            LegacyOp::Drain { service, address } => {
                vec![Edit::BackendDrain { service, address }]
            }
        }
    }
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
    #[error("state file {path} has format {found}, this xlb reads formats 1 and {FORMAT}")]
    Format { path: PathBuf, found: u32 },
    #[error(
        "state file {path} belongs to the deployment with pin_dir {owner}, not to this one \
         (pin_dir {pin_dir}); it is neither applied nor overwritten. Set daemon.state_file to \
         another path for this deployment (or remove the line to use its own default)"
    )]
    OtherDeployment {
        path: PathBuf,
        owner: PathBuf,
        pin_dir: PathBuf,
    },
    #[error("writing state file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Loads the state file of the deployment `pin_dir`; a missing file is an empty state.
pub fn load(path: &Path, pin_dir: &Path) -> Result<Saved, StateError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Saved::default()),
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let parse_err = |source| StateError::Parse {
        path: path.to_path_buf(),
        source,
    };
    #[derive(Deserialize)]
    struct Head {
        format: u32,
    }
    let head: Head = serde_json::from_str(&text).map_err(parse_err)?;
    match head.format {
        1 => {
            let legacy: LegacyFile = serde_json::from_str(&text).map_err(parse_err)?;
            Ok(Saved {
                format: 1,
                content: Content::Legacy(legacy.ops),
            })
        }
        FORMAT => {
            let file: StateFile = serde_json::from_str(&text).map_err(parse_err)?;
            check_owner(path, &file.pin_dir, pin_dir)?;
            Ok(Saved {
                format: FORMAT,
                content: Content::Edits(file.edits),
            })
        }
        found => Err(StateError::Format {
            path: path.to_path_buf(),
            found,
        }),
    }
}

/// The file at `path` may be used by the deployment `pin_dir`.
fn check_owner(path: &Path, owner: &Path, pin_dir: &Path) -> Result<(), StateError> {
    if normalize(owner) == normalize(pin_dir) {
        return Ok(());
    }
    Err(StateError::OtherDeployment {
        path: path.to_path_buf(),
        owner: owner.to_path_buf(),
        pin_dir: pin_dir.to_path_buf(),
    })
}

/// Writes the edits of deployment `pin_dir` atomically (write, fsync, rename, fsync the
/// directory).
pub fn save(path: &Path, pin_dir: &Path, edits: &[Edit]) -> Result<(), StateError> {
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
    let file = StateFile {
        format: FORMAT,
        pin_dir: pin_dir.to_path_buf(),
        edits: edits.to_vec(),
    };
    let text = serde_json::to_string_pretty(&file).expect("state serializes");
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

/// What [`move_aside`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum MovedAside {
    /// There was no state file.
    Nothing,
    /// Moved to this path (replacing an older one there).
    To(PathBuf),
    /// The file belongs to another deployment: left where it is.
    NotOurs { owner: PathBuf },
}

/// `xlb down`: moves the deployment's state file to `FILE.bak`, so the next fresh start
/// begins from the config alone (the runtime changes stay readable there).
pub fn move_aside(path: &Path, pin_dir: &Path) -> Result<MovedAside, StateError> {
    match load(path, pin_dir) {
        Ok(s) if s.format == 0 => return Ok(MovedAside::Nothing),
        Err(StateError::OtherDeployment { owner, .. }) => {
            return Ok(MovedAside::NotOurs { owner });
        }
        // Unreadable or ours: move it out of the way either way.
        Ok(_) | Err(_) => {}
    }
    let mut bak = path.as_os_str().to_owned();
    bak.push(".bak");
    let bak = PathBuf::from(bak);
    fs::rename(path, &bak).map_err(|source| StateError::Write {
        path: bak.clone(),
        source,
    })?;
    Ok(MovedAside::To(bak))
}

#[cfg(test)]
mod tests;
