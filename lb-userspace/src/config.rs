//! The config file (TOML, see DESIGN.md "Control plane"): parsing, defaults, validation,
//! and the effective config printed by `xlb check-config`.
//!
//! How it works:
//! 1. The text is parsed once into toml's spanned document tree ([`DeTable`]): every key
//!    and value keeps its byte span, which gives each error its line and column.
//! 2. The `[daemon]` table and each `[[service]]` table are deserialized separately into
//!    plain `Raw*` structs (`deny_unknown_fields`), so one bad service does not hide the
//!    errors of the others. serde errors (unknown key, wrong type) carry a span; the key
//!    path is recovered by finding that span in the document tree.
//! 3. Raw values become typed values (defaults filled in, strings parsed), then
//!    [`validate_service`] checks ranges and cross-field rules. Both steps report
//!    [`FieldError`]s named by key path (`backend[2].weight`); the path is looked up in the
//!    document tree for the line (an absent key points at its table's header).
//!
//! The raw structs, rather than `toml::Spanned` fields, are also the JSON form of a
//! [`ServiceConfig`] (runtime changes persisted in `state_file`): `Spanned` only
//! deserializes from toml, and one schema for both keeps the state file readable and
//! checked by the same code.

use std::{
    collections::HashSet,
    ffi::CString,
    fmt,
    net::{IpAddr, SocketAddr},
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use lb_common::{
    MAX_BACKENDS, MAX_SERVICES,
    maglev::{is_prime, next_prime},
};
use serde::{Deserialize, Serialize};
use toml::{
    Spanned,
    de::{DeTable, DeValue, ValueDeserializer},
};

use crate::model::{Affinity, BackendSpec, Failback, NoBackend, Protocol, ServiceSpec};

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/xlb";
pub const DEFAULT_SOCKET: &str = "/run/xlb/xlb.sock";
pub const DEFAULT_METRICS: &str = "127.0.0.1:9310";
pub const DEFAULT_STATE_FILE: &str = "/var/lib/xlb/state.json";
pub const DEFAULT_AFFINITY_CAPACITY: u32 = lb_common::DEFAULT_AFFINITY_CAPACITY;
/// The affinity LRU is preallocated by the kernel; 2^26 entries is already gigabytes.
pub const MAX_AFFINITY_CAPACITY: u32 = 1 << 26;
/// Maglev needs a table well above the backend count for even shares (see
/// `lb_common::maglev::build`): 100 slots per backend keeps shares within about 1%.
pub const SLOTS_PER_BACKEND: u32 = 100;
pub const MIN_TABLE_SIZE: u32 = 100;
/// All services' tables share one Maglev array; one service must not take all of it.
pub const MAX_TABLE_SIZE: u32 = 1 << 24;
pub const MAX_WEIGHT: u32 = 65535;
pub const MAX_RISE_FALL: u32 = 100;

// ---------------------------------------------------------------------------------------
// The typed config.
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file it came from (for messages).
    pub path: PathBuf,
    pub daemon: DaemonConfig,
    pub services: Vec<ServiceConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonConfig {
    /// XDP attach points; non-empty, no duplicates, each exists when the config is loaded.
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpModeConfig,
    /// bpffs directory for pinned maps and the XDP link; absolute.
    pub pin_dir: PathBuf,
    /// Control API Unix socket; absolute.
    pub socket: PathBuf,
    /// Prometheus endpoint, loopback only; `None` when the config says `metrics = ""`.
    pub metrics: Option<SocketAddr>,
    /// Entries of the affinity LRU, shared by all services.
    pub affinity_capacity: u32,
    /// Key `state_file` (not in the DESIGN.md example): where the daemon persists services
    /// and backends changed at runtime through the CLI, so they survive a restart
    /// (JSON; [`ServiceConfig`] serializes for it). Absolute.
    pub state_file: PathBuf,
}

impl DaemonConfig {
    /// The defaults of every key but `interfaces`.
    pub fn new(interfaces: Vec<String>) -> Self {
        Self {
            interfaces,
            xdp_mode: XdpModeConfig::Native,
            pin_dir: DEFAULT_PIN_DIR.into(),
            socket: DEFAULT_SOCKET.into(),
            metrics: DEFAULT_METRICS.parse().ok(),
            affinity_capacity: DEFAULT_AFFINITY_CAPACITY,
            state_file: DEFAULT_STATE_FILE.into(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpModeConfig {
    #[default]
    Native,
    Generic,
}

/// One service with everything it needs. Serializes (serde) in the same shape as a
/// `[[service]]` table, every default spelled out; deserializing applies the defaults and
/// the checks of [`validate_service`] that need no other service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "RawService", try_from = "RawService")]
pub struct ServiceConfig {
    pub spec: ServiceSpec,
    pub forwarding: Forwarding,
    pub health: HealthConfig,
    pub backends: Vec<BackendSpec>,
}

impl ServiceConfig {
    /// A service with the config file's defaults: DSR, TCP health check on the service
    /// port, no backends.
    pub fn new(spec: ServiceSpec) -> Self {
        let port = spec.port;
        Self {
            spec,
            forwarding: Forwarding::Dsr,
            health: HealthConfig::tcp(port),
            backends: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarding {
    /// Rewrite L2 only; backends own the VIP and answer clients directly.
    Dsr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    pub kind: HealthKind,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that make a backend healthy.
    pub rise: u32,
    /// Consecutive failures that make it unhealthy.
    pub fall: u32,
}

impl HealthConfig {
    /// The default check: TCP connect to `port`, every 1s, timeout 500ms, rise 2, fall 3.
    pub fn tcp(port: u16) -> Self {
        Self {
            kind: HealthKind::Tcp { port },
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            rise: 2,
            fall: 3,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthKind {
    /// Backends are always healthy.
    None,
    /// A TCP connect succeeds.
    Tcp { port: u16 },
    /// `GET path` answers with a status in `expect_status` (inclusive) and, if `body` is
    /// set, a body containing it.
    Http {
        port: u16,
        path: String,
        host: Option<String>,
        expect_status: (u16, u16),
        body: Option<String>,
    },
    /// `send` (as bytes of the string) gets a reply; containing `expect` if set.
    Udp {
        port: u16,
        send: String,
        expect: Option<String>,
    },
}

impl HealthKind {
    /// The port probed, for the kinds that probe one.
    pub fn port(&self) -> Option<u16> {
        match self {
            HealthKind::None => None,
            HealthKind::Tcp { port }
            | HealthKind::Http { port, .. }
            | HealthKind::Udp { port, .. } => Some(*port),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Errors.
// ---------------------------------------------------------------------------------------

/// A problem with one key, named relative to its service (`prefix_v4`,
/// `backend[2].weight`, `health.timeout`) or to `[daemon]` (`interfaces[1]`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
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

/// Collects the field errors of one table, so that all of them get reported.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    fn finish<T>(self, value: T) -> Result<T, Vec<FieldError>> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self.0)
        }
    }
}

// ---------------------------------------------------------------------------------------
// Entry points.
// ---------------------------------------------------------------------------------------

/// Reads, parses and validates the config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

/// Parses and validates config text; `path_for_messages` only names the file in errors.
pub fn parse(path_for_messages: &Path, text: &str) -> Result<Config, ConfigError> {
    let invalid = |mut errors: Vec<LocatedError>| {
        errors.sort_by_key(|e| (e.line, e.column));
        ConfigError::Invalid {
            path: path_for_messages.to_owned(),
            errors,
        }
    };
    let (table, syntax_errors) = DeTable::parse_recoverable(text);
    let doc = Doc {
        text,
        root: Spanned::new(table.span(), DeValue::Table(table.into_inner())),
    };
    if !syntax_errors.is_empty() {
        return Err(invalid(
            syntax_errors.iter().map(|e| doc.toml_error(e)).collect(),
        ));
    }

    let mut errors = Vec::new();
    // An absent [daemon] is all defaults (and then fails on the required interfaces).
    let mut raw_daemon = Some(RawDaemon::default());
    let mut raw_services = Vec::new();
    if let DeValue::Table(top) = doc.root.get_ref() {
        for (key, value) in top.iter() {
            match key.get_ref().as_ref() {
                "daemon" => raw_daemon = doc.deserialize(value, &mut errors),
                "service" => match value.get_ref() {
                    DeValue::Array(items) => {
                        for (i, item) in items.iter().enumerate() {
                            raw_services
                                .push((i, doc.deserialize::<RawService>(item, &mut errors)));
                        }
                    }
                    _ => errors.push(doc.error(
                        value.span(),
                        "service",
                        "must be an array of tables ([[service]])",
                    )),
                },
                other => errors.push(doc.error(
                    key.span(),
                    other,
                    "unknown key (expected [daemon] or [[service]])",
                )),
            }
        }
    }

    let daemon = raw_daemon.and_then(|raw| match daemon_from_raw(raw) {
        Ok(d) => Some(d),
        Err(fe) => {
            errors.extend(fe.into_iter().map(|e| doc.field_error("daemon", e)));
            None
        }
    });
    let mut services: Vec<ServiceConfig> = Vec::new();
    for (i, raw) in raw_services {
        let prefix = format!("service[{i}]");
        let Some(raw) = raw else { continue };
        let svc = match service_from_raw(raw) {
            Ok(svc) => svc,
            Err(fe) => {
                errors.extend(fe.into_iter().map(|e| doc.field_error(&prefix, e)));
                continue;
            }
        };
        if let Err(fe) = validate_service(&svc, &services) {
            errors.extend(fe.into_iter().map(|e| doc.field_error(&prefix, e)));
        }
        if services.len() == MAX_SERVICES as usize {
            errors.push(doc.field_error(
                &prefix,
                FieldError {
                    field: "name".into(),
                    message: format!("too many services: at most {MAX_SERVICES}"),
                },
            ));
        }
        // Kept even when invalid, so later duplicates of it are still reported.
        services.push(svc);
    }

    match daemon {
        Some(daemon) if errors.is_empty() => Ok(Config {
            path: path_for_messages.to_owned(),
            daemon,
            services,
        }),
        _ => Err(invalid(errors)),
    }
}

impl Config {
    /// The effective config, every default spelled out, as TOML that [`parse`] accepts
    /// and turns into an equal `Config`.
    pub fn to_toml(&self) -> String {
        let top = RawTop {
            daemon: RawDaemon::from(&self.daemon),
            service: self.services.iter().map(RawService::from).collect(),
        };
        // Plain strings, integers, tables and arrays: serialization cannot fail.
        let body = toml::to_string(&top).expect("config serializes to TOML");
        format!("# effective config of {}\n{body}", self.path.display())
    }
}

// ---------------------------------------------------------------------------------------
// The file's shape. Optional fields are those with defaults, integers are i64 so that an
// out-of-range number gets a message naming the allowed range rather than serde's type
// name, and enums are strings so that all bad values of a table are reported together.
// ---------------------------------------------------------------------------------------

#[derive(Serialize)]
struct RawTop {
    daemon: RawDaemon,
    service: Vec<RawService>,
}

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawDaemon {
    interfaces: Option<Vec<String>>,
    xdp_mode: Option<String>,
    pin_dir: Option<String>,
    socket: Option<String>,
    metrics: Option<String>,
    affinity_capacity: Option<i64>,
    state_file: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawService {
    name: Option<String>,
    vip: Option<String>,
    port: Option<i64>,
    protocol: Option<String>,
    forwarding: Option<String>,
    affinity: Option<String>,
    prefix_v4: Option<i64>,
    prefix_v6: Option<i64>,
    idle_timeout: Option<String>,
    failback: Option<String>,
    table_size: Option<i64>,
    no_backend: Option<String>,
    health: Option<RawHealth>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    backend: Vec<RawBackend>,
}

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawHealth {
    kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<i64>,
    interval: Option<String>,
    timeout: Option<String>,
    rise: Option<i64>,
    fall: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expect: Option<RawExpect>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    send: Option<String>,
}

/// `expect` is a status (`200`), a status range (`"200-399"`) for http, text for udp.
#[derive(Serialize, Deserialize)]
#[serde(
    untagged,
    expecting = "an HTTP status (200), a status range (\"200-399\") or a string"
)]
enum RawExpect {
    Status(i64),
    Text(String),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawBackend {
    address: Option<String>,
    weight: Option<i64>,
}

const XDP_MODES: &[(&str, XdpModeConfig)] = &[
    ("native", XdpModeConfig::Native),
    ("generic", XdpModeConfig::Generic),
];
const PROTOCOLS: &[(&str, Protocol)] = &[("tcp", Protocol::Tcp), ("udp", Protocol::Udp)];
const AFFINITIES: &[(&str, Affinity)] =
    &[("source-ip", Affinity::SourceIp), ("none", Affinity::None)];
const FAILBACKS: &[(&str, Failback)] = &[
    ("sticky", Failback::Sticky),
    ("rebalance", Failback::Rebalance),
];
const NO_BACKENDS: &[(&str, NoBackend)] = &[("drop", NoBackend::Drop), ("pass", NoBackend::Pass)];

// ---------------------------------------------------------------------------------------
// Raw → typed: defaults and parsing of strings. A service's range rules live in
// `validate_service` (which also sees services built by the CLI), so here a service's
// number is only rejected when it does not fit its type. The daemon is checked here.
// ---------------------------------------------------------------------------------------

fn daemon_from_raw(raw: RawDaemon) -> Result<DaemonConfig, Vec<FieldError>> {
    let mut e = Errors::default();
    let mut d = DaemonConfig::new(Vec::new());
    match raw.interfaces {
        None => e.push(
            "interfaces",
            "is required (the interfaces to attach XDP to, e.g. [\"eth0\"])",
        ),
        Some(list) if list.is_empty() => e.push("interfaces", "must name at least one interface"),
        Some(list) => {
            let mut seen = HashSet::new();
            for (i, name) in list.iter().enumerate() {
                let field = format!("interfaces[{i}]");
                if !seen.insert(name) {
                    e.push(field, format!("interface {name:?} is listed twice"));
                } else if !interface_exists(name) {
                    e.push(field, format!("interface {name:?} does not exist"));
                }
            }
            d.interfaces = list;
        }
    }
    d.xdp_mode = choice(&mut e, "xdp_mode", raw.xdp_mode, d.xdp_mode, XDP_MODES);
    for (field, value, target) in [
        ("pin_dir", raw.pin_dir, &mut d.pin_dir),
        ("socket", raw.socket, &mut d.socket),
        ("state_file", raw.state_file, &mut d.state_file),
    ] {
        if let Some(value) = value {
            if Path::new(&value).is_absolute() {
                *target = value.into();
            } else {
                e.push(field, format!("{value:?} must be an absolute path"));
            }
        }
    }
    match raw.metrics.as_deref() {
        None => {}
        Some("") => d.metrics = None,
        Some(s) => match s.parse::<SocketAddr>() {
            Ok(addr) if addr.ip().is_loopback() => d.metrics = Some(addr),
            // The endpoint has no authentication: it is only served on loopback.
            Ok(_) => e.push(
                "metrics",
                format!("{s:?} is not a loopback address (metrics are served on loopback only)"),
            ),
            Err(_) => e.push(
                "metrics",
                format!("{s:?} is not an address:port such as \"127.0.0.1:9310\" (\"\" disables metrics)"),
            ),
        },
    }
    if let Some(n) = raw.affinity_capacity {
        match u32::try_from(n) {
            Ok(n) if (1..=MAX_AFFINITY_CAPACITY).contains(&n) => d.affinity_capacity = n,
            _ => e.push(
                "affinity_capacity",
                out_of_range(n, 1, MAX_AFFINITY_CAPACITY.into()),
            ),
        }
    }
    e.finish(d)
}

fn interface_exists(name: &str) -> bool {
    let Ok(c_name) = CString::new(name) else {
        return false;
    };
    // SAFETY: `c_name` is a valid NUL-terminated string that outlives the call.
    unsafe { libc::if_nametoindex(c_name.as_ptr()) != 0 }
}

fn service_from_raw(raw: RawService) -> Result<ServiceConfig, Vec<FieldError>> {
    let mut e = Errors::default();
    let name = required(&mut e, "name", raw.name).unwrap_or_default();
    let vip = required(&mut e, "vip", raw.vip)
        .and_then(|s| parse_ip(&mut e, "vip", &s))
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let port = required(&mut e, "port", raw.port).map_or(0, |p| int(&mut e, "port", p, 0, 65535));
    let protocol = match required(&mut e, "protocol", raw.protocol) {
        Some(p) => choice(&mut e, "protocol", Some(p), Protocol::Tcp, PROTOCOLS),
        None => Protocol::Tcp,
    };
    let mut spec = ServiceSpec::new(&name, vip, port, protocol);
    spec.affinity = choice(&mut e, "affinity", raw.affinity, spec.affinity, AFFINITIES);
    spec.failback = choice(&mut e, "failback", raw.failback, spec.failback, FAILBACKS);
    spec.no_backend = choice(
        &mut e,
        "no_backend",
        raw.no_backend,
        spec.no_backend,
        NO_BACKENDS,
    );
    if let Some(p) = raw.prefix_v4 {
        spec.prefix_v4 = int(&mut e, "prefix_v4", p, 0, 32);
    }
    if let Some(p) = raw.prefix_v6 {
        spec.prefix_v6 = int(&mut e, "prefix_v6", p, 0, 128);
    }
    if let Some(s) = raw.idle_timeout {
        spec.idle_timeout = duration(&mut e, "idle_timeout", &s);
    }
    if let Some(m) = raw.table_size {
        spec.table_size = int(
            &mut e,
            "table_size",
            m,
            MIN_TABLE_SIZE.into(),
            MAX_TABLE_SIZE.into(),
        );
    }
    let forwarding = match raw.forwarding.as_deref() {
        None | Some("dsr") => Forwarding::Dsr,
        Some(mode @ ("nat" | "tunnel")) => {
            e.push(
                "forwarding",
                format!("{mode:?} is not supported yet (only \"dsr\")"),
            );
            Forwarding::Dsr
        }
        Some(other) => {
            e.push(
                "forwarding",
                format!("unknown value {other:?} (expected \"dsr\")"),
            );
            Forwarding::Dsr
        }
    };
    let health = health_from_raw(&mut e, raw.health.unwrap_or_default(), port);
    let backends = raw
        .backend
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            let field = |key: &str| format!("backend[{i}].{key}");
            let address = required(&mut e, field("address"), b.address)
                .and_then(|s| parse_ip(&mut e, field("address"), &s))
                .unwrap_or(IpAddr::from([0, 0, 0, 0]));
            let weight = b
                .weight
                .map_or(1, |w| int(&mut e, field("weight"), w, 1, MAX_WEIGHT.into()));
            BackendSpec { address, weight }
        })
        .collect();
    e.finish(ServiceConfig {
        spec,
        forwarding,
        health,
        backends,
    })
}

fn health_from_raw(e: &mut Errors, raw: RawHealth, service_port: u16) -> HealthConfig {
    let mut h = HealthConfig::tcp(service_port);
    let kind = raw.kind.as_deref().unwrap_or("tcp");
    // Keys of one kind given for another are mistakes (a typo in `kind`, or a forgotten
    // one), not something to ignore silently.
    let applies: &[&str] = match kind {
        "none" => &[],
        "tcp" => &["port"],
        "http" => &["port", "path", "host", "expect", "body"],
        "udp" => &["port", "send", "expect"],
        _ => &["port", "path", "host", "expect", "body", "send"],
    };
    for (key, given) in [
        ("port", raw.port.is_some()),
        ("path", raw.path.is_some()),
        ("host", raw.host.is_some()),
        ("expect", raw.expect.is_some()),
        ("body", raw.body.is_some()),
        ("send", raw.send.is_some()),
    ] {
        if given && !applies.contains(&key) {
            e.push(
                format!("health.{key}"),
                format!("does not apply to health kind {kind:?}"),
            );
        }
    }
    let port = match raw.port {
        Some(p) => int(e, "health.port", p, 1, 65535),
        None if service_port != 0 || kind == "none" => service_port,
        None => {
            e.push(
                "health.port",
                "is required: the service listens on every port (port = 0)",
            );
            0
        }
    };
    h.kind = match kind {
        "none" => HealthKind::None,
        "tcp" => HealthKind::Tcp { port },
        "http" => HealthKind::Http {
            port,
            path: raw.path.unwrap_or_else(|| "/".into()),
            host: raw.host,
            expect_status: match raw.expect {
                None => (200, 399),
                Some(RawExpect::Status(n)) => {
                    let n = int(e, "health.expect", n, 100, 599);
                    (n, n)
                }
                Some(RawExpect::Text(s)) => parse_status_range(&s).unwrap_or_else(|| {
                    e.push(
                        "health.expect",
                        format!("{s:?} is not an HTTP status (200) or range (\"200-399\")"),
                    );
                    (200, 399)
                }),
            },
            body: raw.body,
        },
        "udp" => HealthKind::Udp {
            port,
            send: raw.send.unwrap_or_else(|| {
                e.push(
                    "health.send",
                    "is required for kind \"udp\" (the probe payload)",
                );
                String::new()
            }),
            expect: match raw.expect {
                None => None,
                Some(RawExpect::Text(s)) => Some(s),
                Some(RawExpect::Status(_)) => {
                    e.push("health.expect", "must be a string for kind \"udp\"");
                    None
                }
            },
        },
        other => {
            e.push(
                "health.kind",
                format!(
                    "unknown value {other:?} (expected one of \"tcp\", \"http\", \"udp\", \"none\")"
                ),
            );
            HealthKind::None
        }
    };
    if let Some(s) = raw.interval {
        h.interval = duration(e, "health.interval", &s);
    }
    if let Some(s) = raw.timeout {
        h.timeout = duration(e, "health.timeout", &s);
    }
    let max = MAX_RISE_FALL.into();
    if let Some(n) = raw.rise {
        h.rise = int(e, "health.rise", n, 1, max);
    }
    if let Some(n) = raw.fall {
        h.fall = int(e, "health.fall", n, 1, max);
    }
    h
}

/// `"200"` or `"200-399"`, the inverse of [`parse_status_range`].
fn status_range(lo: u16, hi: u16) -> String {
    if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}-{hi}")
    }
}

/// `"200"` or `"200-399"`; the range is checked by the validator.
fn parse_status_range(s: &str) -> Option<(u16, u16)> {
    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
    Some((lo.trim().parse().ok()?, hi.trim().parse().ok()?))
}

fn required<T>(e: &mut Errors, field: impl Into<String>, value: Option<T>) -> Option<T> {
    if value.is_none() {
        e.push(field, "is required");
    }
    value
}

fn parse_ip(e: &mut Errors, field: impl Into<String>, s: &str) -> Option<IpAddr> {
    let ip = s.parse().ok();
    if ip.is_none() {
        e.push(field, format!("{s:?} is not an IPv4 or IPv6 address"));
    }
    ip
}

/// `value` as a `T`; `lo..=hi` is the allowed range, named in the message (and checked
/// by the validator, which also sees values built without a config file).
fn int<T: TryFrom<i64> + Default>(
    e: &mut Errors,
    field: impl Into<String>,
    value: i64,
    lo: i64,
    hi: i64,
) -> T {
    T::try_from(value).unwrap_or_else(|_| {
        e.push(field, out_of_range(value, lo, hi));
        T::default()
    })
}

fn out_of_range(value: impl fmt::Display, lo: i64, hi: i64) -> String {
    format!("{value} is out of range ({lo}..={hi})")
}

fn duration(e: &mut Errors, field: &str, s: &str) -> Duration {
    parse_duration(s).unwrap_or_else(|message| {
        e.push(field, message);
        Duration::ZERO
    })
}

/// One of the `options` names; `default` when absent.
fn choice<T: Copy>(
    e: &mut Errors,
    field: &str,
    value: Option<String>,
    default: T,
    options: &[(&str, T)],
) -> T {
    let Some(value) = value else { return default };
    match options.iter().find(|(name, _)| *name == value) {
        Some((_, v)) => *v,
        None => {
            let names: Vec<String> = options.iter().map(|(n, _)| format!("{n:?}")).collect();
            e.push(
                field,
                format!(
                    "unknown value {value:?} (expected one of {})",
                    names.join(", ")
                ),
            );
            default
        }
    }
}

/// The config name of an enum value (the tables above cover every variant).
fn name_of<T: Copy + PartialEq>(options: &[(&'static str, T)], value: T) -> &'static str {
    options
        .iter()
        .find(|(_, v)| *v == value)
        .map_or("", |(name, _)| name)
}

// ---------------------------------------------------------------------------------------
// Validation.
// ---------------------------------------------------------------------------------------

/// Checks one service against the rules of the config file and against `others` (the
/// services it must coexist with, not including itself): name and listener
/// (VIP, port, protocol) must be unique. Field names are relative to the service.
pub fn validate_service(
    svc: &ServiceConfig,
    others: &[ServiceConfig],
) -> Result<(), Vec<FieldError>> {
    let mut e = Errors::default();
    let s = &svc.spec;

    // The name is a metrics label and a CLI argument.
    let name_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if s.name.is_empty() {
        e.push("name", "must not be empty");
    } else if s.name.len() > 64 || !s.name.chars().all(name_ok) {
        e.push(
            "name",
            format!(
                "{:?} must be 1 to 64 characters of A-Z, a-z, 0-9, '_', '.', '-'",
                s.name
            ),
        );
    } else if others.iter().any(|o| o.spec.name == s.name) {
        e.push("name", format!("duplicate service name {:?}", s.name));
    }

    if s.vip.is_unspecified() || s.vip.is_multicast() {
        e.push(
            "vip",
            format!("{} cannot be a VIP (unspecified or multicast)", s.vip),
        );
    }
    // A port-0 service and a port-80 service on one VIP coexist (the specific one wins).
    if let Some(o) = others
        .iter()
        .find(|o| o.spec.vip == s.vip && o.spec.port == s.port && o.spec.protocol == s.protocol)
    {
        e.push(
            "port",
            format!(
                "{}/{} is already used by service {:?}",
                SocketAddr::new(s.vip, s.port),
                name_of(PROTOCOLS, s.protocol),
                o.spec.name
            ),
        );
    }

    if s.prefix_v4 > 32 {
        e.push("prefix_v4", out_of_range(s.prefix_v4, 0, 32));
    }
    if s.prefix_v6 > 128 {
        e.push("prefix_v6", out_of_range(s.prefix_v6, 0, 128));
    }
    if s.idle_timeout.is_zero() {
        e.push("idle_timeout", "must be greater than 0");
    } else if s.idle_timeout.as_nanos() < lb_common::MIN_IDLE_TIMEOUT_NS as u128 {
        e.push(
            "idle_timeout",
            format!(
                "must be at least {}: idleness is measured with the kernel's coarse clock,                  which steps once per scheduler tick (up to 10 ms); a shorter timeout                  would not mean what it says",
                format_duration(Duration::from_nanos(lb_common::MIN_IDLE_TIMEOUT_NS))
            ),
        );
    } else if u64::try_from(s.idle_timeout.as_nanos()).is_err() {
        // The data plane keeps it in nanoseconds in a u64.
        e.push("idle_timeout", "is too long (at most about 584 years)");
    }

    let n = svc.backends.len();
    if n > MAX_BACKENDS as usize {
        e.push("backend", format!("{n} backends: at most {MAX_BACKENDS}"));
    }
    let m = s.table_size;
    let min = (n as u64 * u64::from(SLOTS_PER_BACKEND)).max(MIN_TABLE_SIZE.into());
    if m > MAX_TABLE_SIZE {
        e.push(
            "table_size",
            out_of_range(m, MIN_TABLE_SIZE.into(), MAX_TABLE_SIZE.into()),
        );
    } else if min > u64::from(MAX_TABLE_SIZE) {
        // Only reachable with more backends than MAX_BACKENDS, reported above.
    } else if !is_prime(m) {
        // Maglev's permutations need a prime M; suggest one that also fits the backends.
        let suggestion = next_prime(m.max(min as u32));
        e.push(
            "table_size",
            format!("{m} is not prime (next prime: {suggestion})"),
        );
    } else if u64::from(m) < min {
        e.push(
            "table_size",
            format!(
                "{m} is too small for {n} backend(s): at least {min} ({SLOTS_PER_BACKEND} slots per \
                 backend, {MIN_TABLE_SIZE} at least); next prime: {}",
                next_prime(min as u32)
            ),
        );
    }

    let mut seen = HashSet::new();
    for (i, b) in svc.backends.iter().enumerate() {
        let field = |key: &str| format!("backend[{i}].{key}");
        let a = b.address;
        if a.is_unspecified() || a.is_multicast() || a.is_loopback() {
            e.push(
                field("address"),
                format!("{a} cannot be a backend (unspecified, multicast or loopback)"),
            );
        } else if !seen.insert(a) {
            e.push(field("address"), format!("duplicate backend {a}"));
        } else if svc.forwarding == Forwarding::Dsr && a.is_ipv4() != s.vip.is_ipv4() {
            // DSR rewrites only the MAC: the packet still carries the VIP's family.
            e.push(
                field("address"),
                format!(
                    "backend {a} and VIP {} differ in address family (not possible in dsr mode)",
                    s.vip
                ),
            );
        }
        if b.weight == 0 {
            e.push(
                field("weight"),
                "0 is not allowed (remove or drain the backend instead)",
            );
        } else if b.weight > MAX_WEIGHT {
            e.push(
                field("weight"),
                out_of_range(b.weight, 1, MAX_WEIGHT.into()),
            );
        }
    }

    validate_health(&mut e, &svc.health);
    e.finish(())
}

fn validate_health(e: &mut Errors, h: &HealthConfig) {
    if h.kind.port() == Some(0) {
        e.push("health.port", out_of_range(0, 1, 65535));
    }
    if let HealthKind::Http {
        path,
        host,
        expect_status: (lo, hi),
        ..
    } = &h.kind
    {
        // Both go into the request line and headers verbatim.
        let clean = |s: &str| !s.chars().any(|c| c.is_whitespace() || c.is_control());
        if !path.starts_with('/') || !clean(path) {
            e.push(
                "health.path",
                format!("{path:?} must start with '/' and contain no spaces or control characters"),
            );
        }
        if let Some(host) = host.as_deref().filter(|h| h.is_empty() || !clean(h)) {
            e.push(
                "health.host",
                format!("{host:?} must be non-empty, without spaces or control characters"),
            );
        }
        if !(100..=599).contains(lo) || !(100..=599).contains(hi) || lo > hi {
            e.push(
                "health.expect",
                format!(
                    "{:?} is not a status or status range within 100..=599",
                    status_range(*lo, *hi)
                ),
            );
        }
    }
    if h.interval.is_zero() {
        e.push("health.interval", "must be greater than 0");
    }
    if h.timeout.is_zero() {
        e.push("health.timeout", "must be greater than 0");
    } else if h.timeout > h.interval && !h.interval.is_zero() {
        e.push(
            "health.timeout",
            format!(
                "{} is longer than the interval {}",
                format_duration(h.timeout),
                format_duration(h.interval)
            ),
        );
    }
    for (field, n) in [("health.rise", h.rise), ("health.fall", h.fall)] {
        if !(1..=MAX_RISE_FALL).contains(&n) {
            e.push(field, out_of_range(n, 1, MAX_RISE_FALL.into()));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Locating errors in the text.
// ---------------------------------------------------------------------------------------

/// The parsed document, for turning spans and key paths into lines.
struct Doc<'a> {
    text: &'a str,
    root: Spanned<DeValue<'a>>,
}

impl Doc<'_> {
    fn error(&self, span: Range<usize>, key: &str, message: impl Into<String>) -> LocatedError {
        let (line, column) = line_col(self.text, span.start);
        LocatedError {
            line,
            column,
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// A field error of the table at `prefix` (`daemon`, `service[3]`): located at the
    /// key's value, or at the nearest enclosing table when the key is absent.
    fn field_error(&self, prefix: &str, e: FieldError) -> LocatedError {
        let key = format!("{prefix}.{}", e.field);
        self.error(span_of_path(&self.root, &key), &key, e.message)
    }

    /// A syntax or serde error from toml: the key is the path of the deepest key or
    /// value holding the error's span.
    fn toml_error(&self, e: &toml::de::Error) -> LocatedError {
        let span = e.span().unwrap_or(0..0);
        let key = path_at(&self.root, &span, "").unwrap_or_else(|| {
            // Not in the tree: e.g. the second of two equal keys, whose span is the key.
            let text = self.text.get(span.clone()).unwrap_or("").trim();
            if text.is_empty() || text.contains('\n') {
                "(syntax)".to_string()
            } else {
                text.to_string()
            }
        });
        self.error(span, &key, e.message())
    }

    /// Deserializes one table of the document, recording a failure in `errors`.
    fn deserialize<'de, T: Deserialize<'de>>(
        &self,
        value: &Spanned<DeValue<'de>>,
        errors: &mut Vec<LocatedError>,
    ) -> Option<T> {
        T::deserialize(ValueDeserializer::from(value.clone()))
            .map_err(|e| errors.push(self.toml_error(&e)))
            .ok()
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

/// The dotted path (`service[0].backend[1].weight`) of the deepest key or value under
/// `node` (at path `here`) whose span holds `span`. Searches the whole tree: a table
/// made by a `[header]` has the header as its span, not its keys.
fn path_at(node: &Spanned<DeValue<'_>>, span: &Range<usize>, here: &str) -> Option<String> {
    match node.get_ref() {
        DeValue::Table(table) => {
            for (key, value) in table.iter() {
                let key_name: &str = key.get_ref().as_ref();
                let path = if here.is_empty() {
                    key_name.to_string()
                } else {
                    format!("{here}.{key_name}")
                };
                if let Some(found) = path_at(value, span, &path) {
                    return Some(found);
                }
                if contains(&key.span(), span) {
                    return Some(path);
                }
            }
        }
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                if let Some(found) = path_at(item, span, &format!("{here}[{i}]")) {
                    return Some(found);
                }
            }
        }
        _ => {}
    }
    (!here.is_empty() && contains(&node.span(), span)).then(|| here.to_string())
}

/// The span of the value at a dotted path, or of its deepest existing ancestor.
fn span_of_path(root: &Spanned<DeValue<'_>>, path: &str) -> Range<usize> {
    let mut node = root;
    for part in path.split('.') {
        // `backend[1]` is key `backend`, then index 1.
        let mut pieces = part.split('[');
        let key = pieces.next().unwrap_or("");
        let indices = pieces.map(|p| p.trim_end_matches(']').parse::<usize>().ok());
        let next = match node.get_ref() {
            DeValue::Table(t) => t.get(key),
            _ => None,
        };
        let Some(mut next) = next else { break };
        for index in indices {
            let item = match (next.get_ref(), index) {
                (DeValue::Array(items), Some(i)) => items.get(i),
                _ => None,
            };
            match item {
                Some(item) => next = item,
                None => return next.span(),
            }
        }
        node = next;
    }
    node.span()
}

// ---------------------------------------------------------------------------------------
// Durations.
// ---------------------------------------------------------------------------------------

const NANOS_PER: [(&str, u128); 6] = [
    ("h", 3_600_000_000_000),
    ("m", 60_000_000_000),
    ("s", 1_000_000_000),
    ("ms", 1_000_000),
    ("us", 1_000),
    ("ns", 1),
];

/// Parses `"500ms"`, `"10m"`, `"1h"`, `"2m30s"`, `"250us"`: integers with units
/// h, m, s, ms, us, ns, largest first, each unit at most once.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = |why: &str| {
        format!(
            "invalid duration {s:?}: {why} (e.g. \"500ms\", \"10m\", \"1m30s\"; units h, m, s, ms, us, ns)"
        )
    };
    if s.is_empty() {
        return Err(bad("empty"));
    }
    let mut rest = s;
    let mut total: u128 = 0;
    let mut last_unit = None;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad("expected a number"));
        }
        let (number, after) = rest.split_at(digits);
        let letters = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(letters);
        if unit.is_empty() {
            return Err(bad(&format!("missing unit after {number}")));
        }
        let Some(index) = NANOS_PER.iter().position(|(u, _)| *u == unit) else {
            return Err(bad(&format!("unknown unit {unit:?}")));
        };
        if last_unit.is_some_and(|last| index <= last) {
            return Err(bad("units must go from largest to smallest, each once"));
        }
        last_unit = Some(index);
        total = number
            .parse::<u128>()
            .ok()
            .and_then(|n| n.checked_mul(NANOS_PER[index].1))
            .and_then(|n| n.checked_add(total))
            .ok_or_else(|| bad("too large"))?;
        rest = after;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| bad("too large"))?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// The inverse of [`parse_duration`]: `"500ms"`, `"10m"`, `"1m30s"`, `"0s"`.
pub fn format_duration(d: Duration) -> String {
    let mut rest = d.as_nanos();
    if rest == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, nanos) in NANOS_PER {
        let n = rest / nanos;
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
            rest %= nanos;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Typed → raw: the effective config, and the JSON form of a service.
// ---------------------------------------------------------------------------------------

impl From<&DaemonConfig> for RawDaemon {
    fn from(d: &DaemonConfig) -> Self {
        let path = |p: &Path| Some(p.to_string_lossy().into_owned());
        Self {
            interfaces: Some(d.interfaces.clone()),
            xdp_mode: Some(name_of(XDP_MODES, d.xdp_mode).into()),
            pin_dir: path(&d.pin_dir),
            socket: path(&d.socket),
            // "" rather than absent: absent means the default address.
            metrics: Some(d.metrics.map_or_else(String::new, |a| a.to_string())),
            affinity_capacity: Some(d.affinity_capacity.into()),
            state_file: path(&d.state_file),
        }
    }
}

impl From<&ServiceConfig> for RawService {
    fn from(svc: &ServiceConfig) -> Self {
        let s = &svc.spec;
        Self {
            name: Some(s.name.clone()),
            vip: Some(s.vip.to_string()),
            port: Some(s.port.into()),
            protocol: Some(name_of(PROTOCOLS, s.protocol).into()),
            forwarding: Some(
                match svc.forwarding {
                    Forwarding::Dsr => "dsr",
                }
                .into(),
            ),
            affinity: Some(name_of(AFFINITIES, s.affinity).into()),
            prefix_v4: Some(s.prefix_v4.into()),
            prefix_v6: Some(s.prefix_v6.into()),
            idle_timeout: Some(format_duration(s.idle_timeout)),
            failback: Some(name_of(FAILBACKS, s.failback).into()),
            table_size: Some(s.table_size.into()),
            no_backend: Some(name_of(NO_BACKENDS, s.no_backend).into()),
            health: Some(RawHealth::from(&svc.health)),
            backend: svc
                .backends
                .iter()
                .map(|b| RawBackend {
                    address: Some(b.address.to_string()),
                    weight: Some(b.weight.into()),
                })
                .collect(),
        }
    }
}

impl From<&HealthConfig> for RawHealth {
    fn from(h: &HealthConfig) -> Self {
        let mut raw = RawHealth {
            interval: Some(format_duration(h.interval)),
            timeout: Some(format_duration(h.timeout)),
            rise: Some(h.rise.into()),
            fall: Some(h.fall.into()),
            port: h.kind.port().map(i64::from),
            ..Default::default()
        };
        let kind = match &h.kind {
            HealthKind::None => "none",
            HealthKind::Tcp { .. } => "tcp",
            HealthKind::Http {
                path,
                host,
                expect_status: (lo, hi),
                body,
                ..
            } => {
                raw.path = Some(path.clone());
                raw.host = host.clone();
                raw.body = body.clone();
                raw.expect = Some(RawExpect::Text(status_range(*lo, *hi)));
                "http"
            }
            HealthKind::Udp { send, expect, .. } => {
                raw.send = Some(send.clone());
                raw.expect = expect.clone().map(RawExpect::Text);
                "udp"
            }
        };
        raw.kind = Some(kind.into());
        raw
    }
}

impl From<ServiceConfig> for RawService {
    fn from(svc: ServiceConfig) -> Self {
        RawService::from(&svc)
    }
}

impl TryFrom<RawService> for ServiceConfig {
    type Error = String;

    fn try_from(raw: RawService) -> Result<Self, String> {
        let join = |errors: Vec<FieldError>| {
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        };
        let svc = service_from_raw(raw).map_err(join)?;
        validate_service(&svc, &[]).map_err(join)?;
        Ok(svc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "/etc/xlb/test.toml";

    /// The DESIGN.md example, on an interface that exists everywhere.
    const DESIGN_EXAMPLE: &str = r#"
[daemon]
interfaces = ["lo"]              # XDP attach points
xdp_mode = "native"              # native | generic
pin_dir = "/sys/fs/bpf/xlb"
socket = "/run/xlb/xlb.sock"
metrics = "127.0.0.1:9310"       # "" disables
affinity_capacity = 1048576      # LRU entries, shared by all services

[[service]]
name = "web"
vip = "203.0.113.10"             # IPv4 or IPv6
port = 80                        # 0 = every port
protocol = "tcp"                 # tcp | udp
forwarding = "dsr"
affinity = "source-ip"           # source-ip | none
prefix_v4 = 32
prefix_v6 = 128
idle_timeout = "10m"
failback = "sticky"              # sticky | rebalance
table_size = 65537               # Maglev M, prime
health = { kind = "tcp", port = 80, interval = "1s", timeout = "500ms", rise = 2, fall = 3 }
# health kinds: tcp | http (path, expect) | udp (send, expect) | none

[[service.backend]]
address = "192.0.2.11"
weight = 1
"#;

    /// `[daemon]` on lo, then a `[[service]]` header on line 4 followed by `body`.
    fn service(body: &str) -> String {
        format!("[daemon]\ninterfaces = [\"lo\"]\n\n[[service]]\n{body}")
    }

    /// A minimal valid service "web" (lines 4-8); `extra` starts on line 9.
    fn web(extra: &str) -> String {
        service(&format!(
            "name = \"web\"\nvip = \"203.0.113.10\"\nport = 80\nprotocol = \"tcp\"\n{extra}"
        ))
    }

    fn parse_str(text: &str) -> Result<Config, ConfigError> {
        parse(Path::new(FILE), text)
    }

    fn errors_of(text: &str) -> Vec<LocatedError> {
        match parse_str(text) {
            Ok(c) => panic!("accepted:\n{text}\n{c:#?}"),
            Err(ConfigError::Invalid { errors, .. }) => errors,
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    #[test]
    fn bad_inputs_are_rejected_naming_file_line_and_key() {
        let two = |a: &str, b: &str| {
            format!("[daemon]\ninterfaces = [\"lo\"]\n\n[[service]]\n{a}\n[[service]]\n{b}")
        };
        let v6 = |extra: &str| {
            service(&format!(
                "name = \"v6\"\nvip = \"2001:db8::10\"\nport = 80\nprotocol = \"tcp\"\n{extra}"
            ))
        };
        let be = |addr: &str| format!("[[service.backend]]\naddress = \"{addr}\"\n");
        // (what, text, key substring, message substring, line)
        #[rustfmt::skip]
        let cases: Vec<(&str, String, &str, &str, usize)> = vec![
            ("unknown top-level key", "foo = 1\n[daemon]\ninterfaces = [\"lo\"]\n".into(), "foo", "unknown key", 1),
            ("unknown daemon key", "[daemon]\ninterfaces = [\"lo\"]\nintefaces = 1\n".into(), "daemon.intefaces", "unknown field", 3),
            ("unknown service key", web("colour = \"red\"\n"), "service[0].colour", "unknown field", 9),
            ("unknown health key", web("health = { kind = \"tcp\", retries = 3 }\n"), "service[0].health.retries", "unknown field", 9),
            ("unknown backend key", web("[[service.backend]]\naddress = \"192.0.2.1\"\nwieght = 2\n"), "service[0].backend[0].wieght", "unknown field", 11),
            ("port is a string", service("name = \"web\"\nvip = \"203.0.113.10\"\nport = \"80\"\n"), "service[0].port", "invalid type", 7),
            ("interfaces is a string", "[daemon]\ninterfaces = \"lo\"\n".into(), "daemon.interfaces", "invalid type", 2),
            ("interface is a number", "[daemon]\ninterfaces = [\"lo\",\n  5]\n".into(), "daemon.interfaces[1]", "invalid type", 3),
            ("daemon is not a table", "daemon = 5\n".into(), "daemon", "expected a table", 1),
            ("service is not an array", "[daemon]\ninterfaces = [\"lo\"]\n[service]\nname = \"a\"\n".into(), "service", "array of tables", 3),
            ("TOML syntax", "[daemon]\ninterfaces = [\"lo\"]\nxdp_mode = native\n".into(), "daemon.xdp_mode", "invalid", 3),
            ("duplicate TOML key", "[daemon]\ninterfaces = [\"lo\"]\ninterfaces = [\"lo\"]\n".into(), "interfaces", "duplicate key", 3),
            ("no daemon table", web("").replace("[daemon]\ninterfaces = [\"lo\"]\n", ""), "daemon.interfaces", "required", 1),
            ("interfaces empty", "[daemon]\ninterfaces = []\n".into(), "daemon.interfaces", "at least one", 2),
            ("interface listed twice", "[daemon]\ninterfaces = [\"lo\", \"lo\"]\n".into(), "daemon.interfaces[1]", "twice", 2),
            ("interface does not exist", "[daemon]\ninterfaces = [\"lo\",\n \"xlb-nonexistent0\"]\n".into(), "daemon.interfaces[1]", "interface \"xlb-nonexistent0\" does not exist", 3),
            ("xdp_mode offload", "[daemon]\ninterfaces = [\"lo\"]\nxdp_mode = \"offload\"\n".into(), "daemon.xdp_mode", "\"native\", \"generic\"", 3),
            ("pin_dir relative", "[daemon]\ninterfaces = [\"lo\"]\npin_dir = \"bpf/xlb\"\n".into(), "daemon.pin_dir", "absolute", 3),
            ("socket relative", "[daemon]\ninterfaces = [\"lo\"]\nsocket = \"xlb.sock\"\n".into(), "daemon.socket", "absolute", 3),
            ("state_file relative", "[daemon]\ninterfaces = [\"lo\"]\nstate_file = \"\"\n".into(), "daemon.state_file", "absolute", 3),
            ("metrics not loopback", "[daemon]\ninterfaces = [\"lo\"]\nmetrics = \"0.0.0.0:9310\"\n".into(), "daemon.metrics", "loopback", 3),
            ("metrics unparsable", "[daemon]\ninterfaces = [\"lo\"]\nmetrics = \"localhost\"\n".into(), "daemon.metrics", "address:port", 3),
            ("affinity_capacity 0", "[daemon]\ninterfaces = [\"lo\"]\naffinity_capacity = 0\n".into(), "daemon.affinity_capacity", "out of range", 3),
            ("affinity_capacity too large", "[daemon]\ninterfaces = [\"lo\"]\naffinity_capacity = 134217728\n".into(), "daemon.affinity_capacity", "67108864", 3),
            ("name empty", service("name = \"\"\nvip = \"203.0.113.10\"\nport = 80\nprotocol = \"tcp\"\n"), "service[0].name", "empty", 5),
            ("name with a space", service("name = \"web app\"\nvip = \"203.0.113.10\"\nport = 80\nprotocol = \"tcp\"\n"), "service[0].name", "A-Z", 5),
            ("name duplicate", two("name = \"a\"\nvip = \"203.0.113.10\"\nport = 80\nprotocol = \"tcp\"", "name = \"a\"\nvip = \"203.0.113.11\"\nport = 80\nprotocol = \"tcp\""), "service[1].name", "duplicate service name", 10),
            ("vip missing", service("name = \"web\"\nport = 80\nprotocol = \"tcp\"\n"), "service[0].vip", "required", 4),
            ("vip unparsable", service("name = \"web\"\nvip = \"203.0.113\"\nport = 80\nprotocol = \"tcp\"\n"), "service[0].vip", "not an IPv4 or IPv6", 6),
            ("vip multicast", service("name = \"web\"\nvip = \"224.0.0.1\"\nport = 80\nprotocol = \"tcp\"\n"), "service[0].vip", "multicast", 6),
            ("port too large", service("name = \"web\"\nvip = \"203.0.113.10\"\nport = 70000\nprotocol = \"tcp\"\n"), "service[0].port", "0..=65535", 7),
            ("protocol sctp", service("name = \"web\"\nvip = \"203.0.113.10\"\nport = 80\nprotocol = \"sctp\"\n"), "service[0].protocol", "\"tcp\", \"udp\"", 8),
            ("forwarding nat", web("forwarding = \"nat\"\n"), "service[0].forwarding", "not supported yet", 9),
            ("forwarding tunnel", web("forwarding = \"tunnel\"\n"), "service[0].forwarding", "not supported yet", 9),
            ("affinity cookie", web("affinity = \"cookie\"\n"), "service[0].affinity", "source-ip", 9),
            ("prefix_v4 33", web("prefix_v4 = 33\n"), "service[0].prefix_v4", "0..=32", 9),
            ("prefix_v4 300", web("prefix_v4 = 300\n"), "service[0].prefix_v4", "0..=32", 9),
            ("prefix_v6 129", web("prefix_v6 = 129\n"), "service[0].prefix_v6", "0..=128", 9),
            ("idle_timeout 0", web("idle_timeout = \"0s\"\n"), "service[0].idle_timeout", "greater than 0", 9),
            ("idle_timeout below the minimum", web("idle_timeout = \"99ms\"\n"), "service[0].idle_timeout", "at least 100ms", 9),
            ("idle_timeout without unit", web("idle_timeout = \"10\"\n"), "service[0].idle_timeout", "missing unit", 9),
            ("idle_timeout negative", web("idle_timeout = \"-1s\"\n"), "service[0].idle_timeout", "invalid duration", 9),
            ("idle_timeout overflow", web("idle_timeout = \"99999999999999999999h\"\n"), "service[0].idle_timeout", "too large", 9),
            ("idle_timeout is a number", web("idle_timeout = 600\n"), "service[0].idle_timeout", "invalid type", 9),
            ("failback never", web("failback = \"never\"\n"), "service[0].failback", "rebalance", 9),
            ("no_backend reject", web("no_backend = \"reject\"\n"), "service[0].no_backend", "\"drop\", \"pass\"", 9),
            ("table_size not prime", web("table_size = 65536\n"), "service[0].table_size", "next prime: 65537", 9),
            ("table_size below 100 x backends", web(&format!("table_size = 101\n{}{}", be("192.0.2.1"), be("192.0.2.2"))), "service[0].table_size", "at least 200", 9),
            ("table_size below 100", web("table_size = 97\n"), "service[0].table_size", "at least 100", 9),
            ("table_size too large", web("table_size = 16777259\n"), "service[0].table_size", "16777216", 9),
            ("duplicate vip:port/proto", two("name = \"a\"\nvip = \"203.0.113.10\"\nport = 80\nprotocol = \"tcp\"", "name = \"b\"\nvip = \"203.0.113.10\"\nport = 80\nprotocol = \"tcp\""), "service[1].port", "already used by service \"a\"", 12),
            ("weight 0", web("[[service.backend]]\naddress = \"192.0.2.1\"\nweight = 0\n"), "service[0].backend[0].weight", "0 is not allowed", 11),
            ("weight too large", web("[[service.backend]]\naddress = \"192.0.2.1\"\nweight = 70000\n"), "service[0].backend[0].weight", "1..=65535", 11),
            ("duplicate backend", web(&format!("{}{}", be("192.0.2.1"), be("192.0.2.1"))), "service[0].backend[1].address", "duplicate backend", 12),
            ("IPv6 VIP, IPv4 backend, dsr", v6(&be("192.0.2.1")), "service[0].backend[0].address", "dsr", 10),
            ("backend loopback", web(&be("127.0.0.1")), "service[0].backend[0].address", "loopback", 10),
            ("backend multicast", web(&be("ff02::1")), "service[0].backend[0].address", "multicast", 10),
            ("backend unspecified", web(&be("0.0.0.0")), "service[0].backend[0].address", "unspecified", 10),
            ("backend unparsable", web(&be("192.0.2.300")), "service[0].backend[0].address", "not an IPv4", 10),
            ("backend without address", web("[[service.backend]]\nweight = 2\n"), "service[0].backend[0].address", "required", 9),
            ("health kind icmp", web("health = { kind = \"icmp\" }\n"), "service[0].health.kind", "unknown value \"icmp\"", 9),
            ("health interval 0", web("health = { interval = \"0s\" }\n"), "service[0].health.interval", "greater than 0", 9),
            ("health timeout 0", web("health = { timeout = \"0ms\" }\n"), "service[0].health.timeout", "greater than 0", 9),
            ("health timeout > interval", web("health = { interval = \"1s\", timeout = \"2s\" }\n"), "service[0].health.timeout", "longer than the interval 1s", 9),
            ("health interval bad unit", web("health = { interval = \"1x\" }\n"), "service[0].health.interval", "unknown unit \"x\"", 9),
            ("health rise 0", web("health = { rise = 0 }\n"), "service[0].health.rise", "1..=100", 9),
            ("health fall 101", web("[service.health]\nfall = 101\n"), "service[0].health.fall", "1..=100", 10),
            ("http expect 600", web("health = { kind = \"http\", expect = \"200-600\" }\n"), "service[0].health.expect", "100..=599", 9),
            ("http expect text", web("health = { kind = \"http\", expect = \"ok\" }\n"), "service[0].health.expect", "not an HTTP status", 9),
            ("http path relative", web("health = { kind = \"http\", path = \"health\" }\n"), "service[0].health.path", "must start with '/'", 9),
            ("udp without send", web("health = { kind = \"udp\", port = 53 }\n"), "service[0].health.send", "required", 9),
            ("udp expect number", web("health = { kind = \"udp\", send = \"ping\", expect = 200 }\n"), "service[0].health.expect", "must be a string", 9),
            ("key of another kind", web("health = { kind = \"tcp\", path = \"/\" }\n"), "service[0].health.path", "does not apply", 9),
            ("port 0 without health.port", service("name = \"all\"\nvip = \"203.0.113.10\"\nport = 0\nprotocol = \"tcp\"\n"), "service[0].health.port", "required", 4),
            ("health port 0", web("health = { port = 0 }\n"), "service[0].health.port", "1..=65535", 9),
        ];
        assert!(cases.len() >= 30);
        let mut seen = HashSet::new();
        for (what, text, key, message, line) in &cases {
            assert!(
                seen.insert(text.clone()),
                "{what}: same input as another case"
            );
            let errors = errors_of(text);
            let hit = errors
                .iter()
                .find(|e| e.key.contains(key) && e.message.contains(message));
            let Some(hit) = hit else {
                panic!(
                    "{what}: no error with key {key:?} and message {message:?} in {errors:#?}\n{text}"
                );
            };
            assert_eq!(hit.line, *line, "{what}: {hit}\n{text}");
            // The rendered message names file, line and key.
            let shown = ConfigError::Invalid {
                path: FILE.into(),
                errors: errors.clone(),
            }
            .to_string();
            assert!(
                shown.contains(&format!("{FILE}:{line}:{}: {}: ", hit.column, hit.key)),
                "{what}: {shown}"
            );
        }
    }

    #[test]
    fn all_errors_are_reported_in_file_order() {
        let text = web("prefix_v4 = 40\nidle_timeout = \"0s\"\n[[service.backend]]\naddress = \"192.0.2.1\"\nweight = 0\n")
            .replace("[\"lo\"]", "[\"xlb-nonexistent0\"]");
        let errors = errors_of(&text);
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "daemon.interfaces[0]",
                "service[0].prefix_v4",
                "service[0].idle_timeout",
                "service[0].backend[0].weight"
            ],
            "{errors:#?}"
        );
        // Columns point at the value.
        assert_eq!((errors[1].line, errors[1].column), (9, 13));
    }

    #[test]
    fn errors_in_one_service_do_not_hide_another() {
        let text = format!(
            "{}[[service]]\nname = \"b\"\nvip = \"203.0.113.11\"\nport = 80\nprotocol = \"tcp\"\nbogus = 1\n",
            web("prefix_v6 = 200\n")
        );
        let keys: Vec<String> = errors_of(&text).into_iter().map(|e| e.key).collect();
        assert_eq!(keys, ["service[0].prefix_v6", "service[1].bogus"]);
    }

    #[test]
    fn design_example_parses_with_defaults() {
        let c = parse_str(DESIGN_EXAMPLE).unwrap();
        assert_eq!(c.path, Path::new(FILE));
        assert_eq!(c.daemon, DaemonConfig::new(vec!["lo".into()]));
        assert_eq!(c.daemon.state_file, Path::new("/var/lib/xlb/state.json"));
        assert_eq!(c.services.len(), 1);
        let svc = &c.services[0];
        let mut spec = ServiceSpec::new("web", "203.0.113.10".parse().unwrap(), 80, Protocol::Tcp);
        assert_eq!(svc.spec, spec);
        assert_eq!(svc.health, HealthConfig::tcp(80));
        assert_eq!(
            svc.backends,
            [BackendSpec {
                address: "192.0.2.11".parse().unwrap(),
                weight: 1
            }]
        );

        // The minimal form gets the same defaults.
        let c = parse_str(&web("[[service.backend]]\naddress = \"192.0.2.11\"\n")).unwrap();
        assert_eq!(c.services[0].spec, spec);
        assert_eq!(
            c.services[0],
            parse_str(DESIGN_EXAMPLE).unwrap().services[0]
        );
        assert_eq!(c.services[0].forwarding, Forwarding::Dsr);

        // Non-defaults land where they belong.
        let c = parse_str(&web(
            "affinity = \"none\"\nprefix_v4 = 24\nprefix_v6 = 64\nidle_timeout = \"1h30m\"\n\
             failback = \"rebalance\"\ntable_size = 1009\nno_backend = \"pass\"\n",
        ))
        .unwrap();
        spec.affinity = Affinity::None;
        spec.prefix_v4 = 24;
        spec.prefix_v6 = 64;
        spec.idle_timeout = Duration::from_secs(5400);
        spec.failback = Failback::Rebalance;
        spec.table_size = 1009;
        spec.no_backend = NoBackend::Pass;
        assert_eq!(c.services[0].spec, spec);
    }

    #[test]
    fn valid_variants() {
        // Zero backends, a port-0 service beside a port-80 one on the same VIP, health
        // kinds, metrics disabled, generic mode.
        let text = r#"
[daemon]
interfaces = ["lo"]
xdp_mode = "generic"
metrics = ""
state_file = "/tmp/xlb-state.json"

[[service]]
name = "all"
vip = "203.0.113.10"
port = 0
protocol = "tcp"
health = { kind = "http", port = 8080, expect = 204, host = "example.org", body = "ok" }

[[service]]
name = "web"
vip = "203.0.113.10"
port = 80
protocol = "tcp"

[[service]]
name = "dns"
vip = "2001:db8::53"
port = 53
protocol = "udp"
[service.health]
kind = "udp"
send = "ping"
expect = "pong"
[[service.backend]]
address = "2001:db8::1"
weight = 3

[[service]]
name = "web-udp"
vip = "203.0.113.10"
port = 80
protocol = "udp"
health = { kind = "none" }
"#;
        let c = parse_str(text).unwrap();
        assert_eq!(c.daemon.xdp_mode, XdpModeConfig::Generic);
        assert_eq!(c.daemon.metrics, None);
        assert_eq!(
            c.services[0].health.kind,
            HealthKind::Http {
                port: 8080,
                path: "/".into(),
                host: Some("example.org".into()),
                expect_status: (204, 204),
                body: Some("ok".into())
            }
        );
        assert!(c.services[1].backends.is_empty());
        assert_eq!(
            c.services[2].health.kind,
            HealthKind::Udp {
                port: 53,
                send: "ping".into(),
                expect: Some("pong".into())
            }
        );
        assert_eq!(c.services[3].health.kind, HealthKind::None);
    }

    #[test]
    fn to_toml_round_trips() {
        for text in [
            DESIGN_EXAMPLE.to_string(),
            web(""),
            web("health = { kind = \"http\", path = \"/healthz\", expect = \"200-299\" }\n")
                .replace(
                    "[\"lo\"]",
                    "[\"lo\"]\nmetrics = \"\"\nxdp_mode = \"generic\"",
                ),
            service(
                "name = \"dns\"\nvip = \"2001:db8::53\"\nport = 0\nprotocol = \"udp\"\n\
                 idle_timeout = \"1m30s\"\nhealth = { kind = \"udp\", port = 53, send = \"q\\\"\\n\" }\n\
                 [[service.backend]]\naddress = \"2001:db8::1\"\nweight = 5\n",
            ),
        ] {
            let c = parse_str(&text).unwrap();
            let out = c.to_toml();
            let again = parse_str(&out).unwrap_or_else(|e| panic!("{e}\n{out}"));
            assert_eq!(again, c, "{out}");
            assert_eq!(again.to_toml(), out);
        }
    }

    #[test]
    fn service_config_json_round_trips_and_is_checked() {
        let c = parse_str(DESIGN_EXAMPLE).unwrap();
        let json = serde_json::to_string(&c.services[0]).unwrap();
        let back: ServiceConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c.services[0]);

        // Minimal JSON gets the defaults; bad values are named.
        let min: ServiceConfig = serde_json::from_str(
            r#"{"name":"web","vip":"203.0.113.10","port":80,"protocol":"tcp","backend":[{"address":"192.0.2.11"}]}"#,
        )
        .unwrap();
        assert_eq!(min, c.services[0]);
        let err = serde_json::from_str::<ServiceConfig>(
            r#"{"name":"web","vip":"203.0.113.10","port":80,"protocol":"tcp","prefix_v4":33}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("prefix_v4"), "{err}");
    }

    #[test]
    fn validate_service_directly() {
        let vip = "203.0.113.10".parse().unwrap();
        let mut svc = ServiceConfig::new(ServiceSpec::new("web", vip, 80, Protocol::Tcp));
        svc.backends = (1..=3)
            .map(|i| BackendSpec {
                address: IpAddr::from([192, 0, 2, i]),
                weight: 1,
            })
            .collect();
        assert_eq!(validate_service(&svc, &[]), Ok(()));

        let fields = |svc: &ServiceConfig, others: &[ServiceConfig]| -> Vec<String> {
            validate_service(svc, others)
                .unwrap_err()
                .into_iter()
                .map(|e| e.field)
                .collect()
        };
        let mut bad = svc.clone();
        bad.spec.prefix_v4 = 33;
        bad.spec.table_size = 65536;
        bad.backends[2].weight = 0;
        bad.health.rise = 0;
        assert_eq!(
            fields(&bad, &[]),
            [
                "prefix_v4",
                "table_size",
                "backend[2].weight",
                "health.rise"
            ]
        );

        // Same name and listener as another service.
        assert_eq!(fields(&svc, std::slice::from_ref(&svc)), ["name", "port"]);
        // Other port or protocol: fine.
        let mut other = svc.clone();
        other.spec.name = "web2".into();
        other.spec.port = 0;
        assert_eq!(validate_service(&other, std::slice::from_ref(&svc)), Ok(()));
        other.spec.port = 80;
        other.spec.protocol = Protocol::Udp;
        assert_eq!(validate_service(&other, std::slice::from_ref(&svc)), Ok(()));

        let mut too_small = svc.clone();
        too_small.spec.table_size = 307;
        too_small.backends = (1..=3u8)
            .map(|i| BackendSpec {
                address: IpAddr::from([192, 0, 2, i]),
                weight: 1,
            })
            .collect();
        assert_eq!(validate_service(&too_small, &[]), Ok(()));
        too_small.backends.push(BackendSpec {
            address: IpAddr::from([192, 0, 2, 9]),
            weight: 1,
        });
        let errors = validate_service(&too_small, &[]).unwrap_err();
        assert!(errors[0].message.contains("at least 400"), "{errors:?}");
        assert!(errors[0].message.contains("next prime: 401"), "{errors:?}");
    }

    #[test]
    fn durations() {
        let ok = [
            ("500ms", Duration::from_millis(500)),
            ("10m", Duration::from_secs(600)),
            ("1s", Duration::from_secs(1)),
            ("1h", Duration::from_secs(3600)),
            ("2m30s", Duration::from_secs(150)),
            ("1h30m", Duration::from_secs(5400)),
            ("250us", Duration::from_micros(250)),
            ("1s500ms", Duration::from_millis(1500)),
            ("7ns", Duration::from_nanos(7)),
            ("0s", Duration::ZERO),
            ("90s", Duration::from_secs(90)),
        ];
        for (s, d) in ok {
            assert_eq!(parse_duration(s), Ok(d), "{s}");
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{s}");
        }
        for (d, s) in [
            (Duration::from_millis(500), "500ms"),
            (Duration::from_secs(600), "10m"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(3600 * 48), "48h"),
            (Duration::new(1, 1), "1s1ns"),
            (Duration::ZERO, "0s"),
            (Duration::MAX, "5124095576030431h15s999ms999us999ns"),
        ] {
            assert_eq!(format_duration(d), s);
            assert_eq!(parse_duration(s), Ok(d));
        }
        for (s, why) in [
            ("", "empty"),
            ("10", "missing unit"),
            ("-1s", "expected a number"),
            ("1x", "unknown unit \"x\""),
            ("1.5s", "missing unit"),
            ("s", "expected a number"),
            ("1s1m", "largest to smallest"),
            ("1s1s", "largest to smallest"),
            ("1 s", "missing unit"),
            ("5124095576030431h16s", "too large"),
            ("999999999999999999999999999999999999999999h", "too large"),
        ] {
            let err = parse_duration(s).unwrap_err();
            assert!(err.contains(why), "{s:?}: {err}");
        }
    }

    #[test]
    fn load_reads_files_and_names_them() {
        let dir = std::env::temp_dir().join(format!("xlb-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.toml");
        std::fs::write(&good, DESIGN_EXAMPLE).unwrap();
        assert_eq!(load(&good).unwrap().path, good);

        let bad = dir.join("bad.toml");
        std::fs::write(&bad, web("prefix_v4 = 33\n")).unwrap();
        let shown = load(&bad).unwrap_err().to_string();
        assert_eq!(
            shown,
            format!(
                "{}:9:13: service[0].prefix_v4: 33 is out of range (0..=32)",
                bad.display()
            )
        );

        let missing = dir.join("missing.toml");
        let err = load(&missing).unwrap_err();
        assert!(matches!(err, ConfigError::Io { .. }));
        assert!(err.to_string().contains("missing.toml"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
