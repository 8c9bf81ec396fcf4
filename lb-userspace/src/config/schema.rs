//! The config file's top-level shape, its `[daemon]` and `[announce]` tables, as written. A
//! `[[service]]` table's shape is `model::encode::RawService` (shared with the control
//! API and the state file).
//!
//! Owns: the raw structs. Must not touch: defaults or rules (parse.rs, the validator).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::DaemonConfig;
use crate::model::{Announce, Named, encode::RawService};

#[derive(Serialize)]
pub struct RawTop {
    pub daemon: RawDaemon,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub announce: Option<RawAnnounce>,
    pub service: Vec<RawService>,
}

/// Integers are `i64` so that an out-of-range number gets a message naming the allowed
/// range rather than serde's type name.
#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawDaemon {
    pub interfaces: Option<Vec<String>>,
    pub xdp_mode: Option<String>,
    pub pin_dir: Option<String>,
    pub socket: Option<String>,
    pub metrics: Option<String>,
    pub affinity_capacity: Option<i64>,
    pub socket_group: Option<String>,
    pub state_file: Option<String>,
    pub icmp_echo: Option<String>,
}

impl From<&DaemonConfig> for RawDaemon {
    fn from(d: &DaemonConfig) -> Self {
        let path = |p: &Path| Some(p.to_string_lossy().into_owned());
        Self {
            interfaces: Some(d.interfaces.clone()),
            xdp_mode: Some(d.xdp_mode.name().into()),
            pin_dir: path(&d.pin_dir),
            socket: path(&d.socket),
            // "" rather than absent: absent means the default address.
            metrics: Some(d.metrics.map_or_else(String::new, |a| a.to_string())),
            affinity_capacity: Some(d.affinity_capacity.into()),
            socket_group: d.socket_group.as_ref().map(|g| g.name.clone()),
            state_file: path(&d.state_file),
            icmp_echo: Some(d.icmp_echo.name().into()),
        }
    }
}

/// `[announce]`: `kind` and the keys of that kind.
#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawAnnounce {
    pub kind: Option<String>,
    /// bird
    pub socket: Option<String>,
    /// command
    pub announce: Option<Vec<String>>,
    pub withdraw: Option<Vec<String>>,
}

impl RawAnnounce {
    /// The table for the effective config; none when nothing is announced.
    pub fn from_model(a: &Announce) -> Option<Self> {
        let kind = Some(a.kind().name().to_string());
        match a {
            Announce::None => None,
            Announce::Bird { socket } => Some(Self {
                kind,
                socket: Some(socket.to_string_lossy().into_owned()),
                ..Self::default()
            }),
            Announce::Command { announce, withdraw } => Some(Self {
                kind,
                announce: Some(announce.clone()),
                withdraw: Some(withdraw.clone()),
                ..Self::default()
            }),
        }
    }
}
