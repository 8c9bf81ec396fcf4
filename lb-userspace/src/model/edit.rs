//! [`Edit`]: the one value for a runtime change. The control API carries it
//! (`Request::Edit`), the state file stores a list of them, and [`Desired::apply`]
//! validates and applies it.
//!
//! Wire shape: externally tagged, `{"backend_add": {"service": "web", "address":
//! "10.0.0.1", "weight": 1}}`. (ARCH.md sketched an internally tagged form; serde buffers
//! internally tagged content, which loses the key path of an error, and every rejected
//! edit must name its key — see `api::decode_request`.)
//!
//! Owns: the edit type and its field-local checks. Must not touch: the state it applies
//! to (desired.rs) or how it reaches the maps (reconcile).
//!
//! [`Desired::apply`]: super::Desired::apply

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{
    Service,
    limits::DEFAULT_WEIGHT,
    validate::{FieldError, check_backend_address, check_weight},
};

fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

/// One runtime change of the desired state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Edit {
    /// A new service with its backends (a name not in use).
    ServiceAdd {
        service: Box<Service>,
    },
    ServiceRemove {
        name: String,
    },
    BackendAdd {
        service: String,
        address: IpAddr,
        #[serde(default = "default_weight")]
        weight: u32,
    },
    BackendRemove {
        service: String,
        address: IpAddr,
    },
    /// Keep its pinned clients, send it no new ones.
    BackendDrain {
        service: String,
        address: IpAddr,
    },
    BackendUndrain {
        service: String,
        address: IpAddr,
    },
    BackendWeight {
        service: String,
        address: IpAddr,
        weight: u32,
    },
    /// Maintenance: withdraw every VIP of this node (the data plane keeps forwarding
    /// what still arrives).
    NodeDrain,
    /// Back in service: announce the VIPs this node can serve.
    NodeUndrain,
}

impl Edit {
    /// The service the edit changes (none for the node's own edits).
    pub fn service_name(&self) -> Option<&str> {
        match self {
            Edit::ServiceAdd { service } => Some(&service.name),
            Edit::ServiceRemove { name } => Some(name),
            Edit::BackendAdd { service, .. }
            | Edit::BackendRemove { service, .. }
            | Edit::BackendDrain { service, .. }
            | Edit::BackendUndrain { service, .. }
            | Edit::BackendWeight { service, .. } => Some(service),
            Edit::NodeDrain | Edit::NodeUndrain => None,
        }
    }

    /// The rules that need nothing but the edit itself (a weight's range, an address
    /// that can never be a backend), so the CLI can refuse them without the daemon.
    /// [`Desired::apply`](super::Desired::apply) checks them again with everything else.
    pub fn check_fields(&self) -> Vec<FieldError> {
        let mut out = Vec::new();
        match self {
            Edit::BackendAdd {
                address, weight, ..
            } => {
                if let Some(why) = check_backend_address(*address) {
                    out.push(FieldError::new("address", why));
                }
                if let Some(why) = check_weight(*weight) {
                    out.push(FieldError::new("weight", why));
                }
            }
            Edit::BackendWeight { weight, .. } => {
                if let Some(why) = check_weight(*weight) {
                    out.push(FieldError::new("weight", why));
                }
            }
            _ => {}
        }
        out
    }

    /// What the edit does, for logs and the API's `done` answer.
    pub fn describe(&self) -> String {
        match self {
            Edit::ServiceAdd { service } => format!(
                "service {} added ({} backends)",
                service.name,
                service.backends.len()
            ),
            Edit::ServiceRemove { name } => format!("service {name} removed"),
            Edit::BackendAdd {
                service,
                address,
                weight,
            } => format!("backend {address} added to service {service} (weight {weight})"),
            Edit::BackendRemove { service, address } => {
                format!("backend {address} removed from service {service}")
            }
            Edit::BackendDrain { service, address } => {
                format!("backend {address} of service {service} draining")
            }
            Edit::BackendUndrain { service, address } => {
                format!("backend {address} of service {service} undrained")
            }
            Edit::BackendWeight {
                service,
                address,
                weight,
            } => format!("backend {address} of service {service}: weight {weight}"),
            Edit::NodeDrain => "node drained: every VIP withdrawn".into(),
            Edit::NodeUndrain => "node undrained: VIPs announced while they can be served".into(),
        }
    }
}
