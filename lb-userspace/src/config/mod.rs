//! The config file (TOML, see DESIGN.md "Control plane"): parsing, defaults, validation,
//! and the effective config printed by `xlb check-config`.
//!
//! How it works:
//! 1. The text is parsed once into toml's spanned document tree: every key and value
//!    keeps its byte span, which gives each error its line and column (locate.rs).
//! 2. The `[daemon]` table and each `[[service]]` table are deserialized separately into
//!    plain raw structs (`deny_unknown_fields`; schema.rs and `model::encode`), so one bad
//!    service does not hide the errors of the others. serde errors (unknown key, wrong
//!    type) carry a span; the key path is recovered by finding that span in the tree.
//! 3. Raw values become typed values (defaults filled in, strings parsed; parse.rs), then
//!    the one validator (`model::validate`) checks ranges and cross-field rules. Both
//!    steps report field errors named by key path (`backend[2].weight`); the path is
//!    looked up in the document tree for the line (an absent key points at its table's
//!    header).
//!
//! Owns: [`Config`], [`DaemonConfig`] and their errors. Must not touch: the rules of a
//! service (the validator's), the daemon's state.

mod locate;
mod parse;
mod schema;
#[cfg(test)]
mod tests;

use std::{
    fmt,
    net::SocketAddr,
    path::{Component, Path, PathBuf},
};

pub use crate::model::{
    FieldError, format_duration,
    limits::{DEFAULT_AFFINITY_CAPACITY, DEFAULT_METRICS, DEFAULT_PIN_DIR, DEFAULT_SOCKET},
    parse_duration,
};
use crate::{
    model::{Announce, Service, limits},
    named_enum,
};

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file it came from (for messages).
    pub path: PathBuf,
    pub daemon: DaemonConfig,
    /// `[announce]`: how this node announces its VIPs (none when the table is absent).
    pub announce: Announce,
    pub services: Vec<Service>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonConfig {
    /// XDP attach points; non-empty, no duplicates, each exists when the config is loaded
    /// with [`HostChecks::Run`].
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    /// bpffs directory for pinned maps and the XDP link; absolute. It names the
    /// deployment: the state file belongs to it.
    pub pin_dir: PathBuf,
    /// Control API Unix socket; absolute.
    pub socket: PathBuf,
    /// Prometheus endpoint, loopback only; `None` when the config says `metrics = ""`.
    pub metrics: Option<SocketAddr>,
    /// Entries of the affinity LRU, shared by all services.
    pub affinity_capacity: u32,
    /// The group whose members may use the control socket besides root: the socket is
    /// then mode 0660 with this group (else 0600), and every peer is checked.
    pub socket_group: Option<SocketGroup>,
    /// Where the daemon persists runtime changes (JSON, see `state.rs`); absolute. By
    /// default derived from `pin_dir` ([`default_state_file`]), so two deployments never
    /// share one unless configured to.
    pub state_file: PathBuf,
    /// What happens to ICMP/ICMPv6 echo requests addressed to a VIP (one setting for
    /// the daemon: services share VIPs).
    pub icmp_echo: IcmpEcho,
}

impl DaemonConfig {
    /// The defaults of every key but `interfaces`.
    pub fn new(interfaces: Vec<String>) -> Self {
        Self {
            interfaces,
            xdp_mode: XdpMode::Native,
            pin_dir: DEFAULT_PIN_DIR.into(),
            socket: DEFAULT_SOCKET.into(),
            metrics: DEFAULT_METRICS.parse().ok(),
            affinity_capacity: DEFAULT_AFFINITY_CAPACITY,
            socket_group: None,
            state_file: default_state_file(Path::new(DEFAULT_PIN_DIR)),
            icmp_echo: IcmpEcho::Reply,
        }
    }
}

/// `daemon.socket_group`: a group as named in the config and its id on this host
/// (resolved when the config is loaded: a group that does not exist is an error of the
/// host checks, so `gid` is `None` only in a config read with [`HostChecks::Skip`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketGroup {
    pub name: String,
    pub gid: Option<u32>,
}

named_enum! {
    /// `daemon.icmp_echo`: echo requests to a VIP.
    #[derive(Default)]
    pub enum IcmpEcho {
        /// Answered by the XDP program (XDP_TX), whatever the host's stack would do.
        #[default]
        Reply = "reply",
        /// Passed to the local stack (which answers if the VIP is one of its addresses).
        Pass = "pass",
    }
}

named_enum! {
    /// How the XDP program is attached.
    #[derive(Default)]
    pub enum XdpMode {
        /// In the driver (fast; the NIC's driver must support XDP).
        #[default]
        Native = "native",
        /// In the kernel's generic path (any interface, slower).
        Generic = "generic",
    }
}

/// `pin_dir` without `.`, `..` resolution or trailing slashes: two spellings of one
/// directory compare equal.
pub fn normalize(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

/// The state file of a deployment that does not configure one: the default `pin_dir`
/// keeps the historical `/var/lib/xlb/state.json` (so upgrades find their changes), any
/// other `pin_dir` P gets `/var/lib/xlb/deployments/P/state.json` (one per deployment).
pub fn default_state_file(pin_dir: &Path) -> PathBuf {
    let pin_dir = normalize(pin_dir);
    if pin_dir == Path::new(DEFAULT_PIN_DIR) {
        return limits::DEFAULT_STATE_FILE.into();
    }
    let relative: PathBuf = pin_dir
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    Path::new(limits::STATE_DIR)
        .join(relative)
        .join("state.json")
}

/// A problem at a place in the file. `key` is the full dotted path
/// (`service[0].backend[1].weight`). Display is `{line}:{column}: {key}: {message}`;
/// [`ConfigError`] puts the file name in front.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{column}: {key}: {message}")]
pub struct LocatedError {
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    pub key: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Every error found, in file order, one per line: `{file}:{line}:{column}: {key}: {message}`.
    #[error("{}", InvalidDisplay(path, errors))]
    Invalid {
        path: PathBuf,
        errors: Vec<LocatedError>,
    },
}

struct InvalidDisplay<'a>(&'a Path, &'a [LocatedError]);

impl fmt::Display for InvalidDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.1.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{e}", self.0.display())?;
        }
        Ok(())
    }
}

/// Whether a config is also checked against the machine it is read on (the interfaces
/// and `socket_group` exist). Everything else is judged alike on every machine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HostChecks {
    /// The daemon's and `check-config`'s default.
    #[default]
    Run,
    /// `check-config --offline`: a config written for another host.
    Skip,
}

/// Reads, parses and validates the config file, host checks included.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_with(path, HostChecks::Run)
}

/// [`load`] with the host checks on or off.
pub fn load_with(path: &Path, host: HostChecks) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_with(path, &text, host)
}

/// Parses and validates config text, host checks included; `path_for_messages` only
/// names the file in errors.
pub fn parse(path_for_messages: &Path, text: &str) -> Result<Config, ConfigError> {
    parse_with(path_for_messages, text, HostChecks::Run)
}

/// [`parse`] with the host checks on or off.
pub fn parse_with(
    path_for_messages: &Path,
    text: &str,
    host: HostChecks,
) -> Result<Config, ConfigError> {
    parse::parse(path_for_messages, text, host).map_err(|mut errors| {
        errors.sort_by_key(|e| (e.line, e.column));
        ConfigError::Invalid {
            path: path_for_messages.to_owned(),
            errors,
        }
    })
}

impl Config {
    /// The effective config, every default spelled out, as TOML that [`parse`] accepts
    /// and turns into an equal `Config`.
    pub fn to_toml(&self) -> String {
        let top = schema::RawTop {
            daemon: schema::RawDaemon::from(&self.daemon),
            announce: schema::RawAnnounce::from_model(&self.announce),
            service: self.services.iter().map(Into::into).collect(),
        };
        // Plain strings, integers, tables and arrays: serialization cannot fail.
        let body = toml::to_string(&top).expect("config serializes to TOML");
        format!(
            "# effective config of {}\n{body}{}",
            self.path.display(),
            self.bird_protocols()
        )
    }

    /// With `kind = "bird"`: the static protocols BIRD's config needs for this config's
    /// VIPs, as TOML comments (empty otherwise).
    fn bird_protocols(&self) -> String {
        if !matches!(self.announce, Announce::Bird { .. }) {
            return String::new();
        }
        let mut vips: Vec<std::net::IpAddr> = self.services.iter().map(|s| s.vip).collect();
        vips.sort_unstable();
        vips.dedup();
        let mut out =
            String::from("\n# [announce] kind = \"bird\": BIRD's config needs, for these VIPs:\n");
        for v in vips {
            out.push_str(&format!(
                "# {}\n",
                crate::model::announce::bird_protocol_config(v)
            ));
        }
        out
    }
}
