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
    Millionths, Prefix, Service,
    limits::DEFAULT_WEIGHT,
    validate::{FieldError, check_backend_address, check_weight},
};

fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

/// A `tunnel_source` to set: a prefix, or none. Written as the prefix or `"none"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunnelSourceSet(pub Option<Prefix>);

impl std::str::FromStr for TunnelSourceSet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        // An empty value (an unset shell variable) is refused, not taken for "none":
        // clearing the source is said in words.
        match s.trim() {
            "none" => Ok(Self(None)),
            "" => Err("empty: give a PREFIX, or none for the egress interface's address".into()),
            p => p.parse().map(|p| Self(Some(p))),
        }
    }
}

impl std::fmt::Display for TunnelSourceSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(p) => write!(f, "{p}"),
            None => f.write_str("none"),
        }
    }
}

impl Serialize for TunnelSourceSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TunnelSourceSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
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
    /// Changes the settings that spread a service's load at run time (`xlb service
    /// set`); an absent field is left as it is.
    ServiceSet {
        service: String,
        /// The whole new list (empty: none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nat_sources: Option<Vec<Prefix>>,
        /// The new factor; 0 turns it off.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        balance_factor: Option<Millionths>,
        /// Tunnel mode: the new `tunnel_source` (`"none"`: the egress address).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tunnel_source: Option<TunnelSourceSet>,
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
            | Edit::BackendWeight { service, .. }
            | Edit::ServiceSet { service, .. } => Some(service),
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
            Edit::ServiceSet {
                service,
                nat_sources,
                balance_factor,
                tunnel_source,
            } => {
                let mut parts = Vec::new();
                if let Some(l) = nat_sources {
                    let list: Vec<String> = l.iter().map(|p| p.to_string()).collect();
                    parts.push(format!("nat_sources [{}]", list.join(", ")));
                }
                match balance_factor {
                    Some(Millionths(0)) => parts.push("balance_factor off".into()),
                    Some(f) => parts.push(format!("balance_factor {f}")),
                    None => {}
                }
                if let Some(t) = tunnel_source {
                    parts.push(format!("tunnel_source {t}"));
                }
                format!("service {service}: {}", parts.join(", "))
            }
            Edit::NodeDrain => "node drained: every VIP withdrawn".into(),
            Edit::NodeUndrain => "node undrained: VIPs announced while they can be served".into(),
        }
    }
}
