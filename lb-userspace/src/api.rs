//! The control API: one JSON request per line on the daemon's Unix socket (root only, or
//! root and `daemon.socket_group`; the daemon checks every peer), one JSON response per
//! line back. There is no TCP control port.
//!
//! Owns: the wire types ([`Request`] = an [`Edit`] or a query; [`Response`] and the result
//! shapes) and the client call. Must not touch: what a request does (the daemon's).
//!
//! The response shapes are what `--json` prints, so they are a stable contract: fields
//! may be added, never renamed or removed without a format change.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::IpAddr,
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::model::Edit;

/// One request. Externally tagged: `"status"`, `{"edit": {"backend_add": {...}}}`,
/// `{"explain": {"service": "web", "client": "198.51.100.7", "port": 0}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// A runtime change (the same value the state file stores).
    Edit(Edit),
    Status,
    Stats,
    Explain {
        service: String,
        client: IpAddr,
        #[serde(default)]
        port: u16,
    },
    AffinityList {
        #[serde(default)]
        service: Option<String>,
        limit: usize,
    },
    AffinityFlush {
        #[serde(default)]
        service: Option<String>,
    },
    /// Re-read the config file; the runtime edits stay on top (`xlb reload`, SIGHUP).
    Reload,
    /// The heaviest sources of one service or all (`xlb top`).
    Top(TopQuery),
    /// How far a drained backend is from holding no live pinned client (what
    /// `xlb backend drain --wait` polls).
    DrainStatus {
        service: String,
        address: IpAddr,
    },
}

/// What `xlb top` asks for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopQuery {
    #[serde(default)]
    pub service: Option<String>,
    /// "source" (each address) or "prefix" (IPv4 /24, IPv6 /64).
    #[serde(default = "TopQuery::default_by")]
    pub by: String,
    /// Whole seconds, 1..=10 (the daemon keeps 10).
    #[serde(default = "TopQuery::default_interval")]
    pub interval_s: u32,
    /// Rows per service (sources with 5% or more are listed whatever the limit).
    #[serde(default = "TopQuery::default_limit")]
    pub limit: usize,
}

impl TopQuery {
    fn default_by() -> String {
        "source".into()
    }
    fn default_interval() -> u32 {
        crate::load::DEFAULT_INTERVAL_S as u32
    }
    fn default_limit() -> usize {
        20
    }
}

/// Decodes one request line. A rejection names the key path that is wrong
/// (`edit.backend_add.weight: invalid type: ...`), so a bad client is told what to fix;
/// a request without exactly one command (or an edit without exactly one kind) lists the
/// accepted ones and the keys it found.
pub fn decode_request(line: &str) -> Result<Request, String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("request: {e}"))?;
    one_key(&v, "request", variants::<Request>)?;
    if let Some(edit) = v.get("edit") {
        one_key(edit, "edit", variants::<Edit>)?;
    }
    serde_path_to_error::deserialize(&v).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { "request".into() } else { path };
        format!("{path}: {}", e.into_inner())
    })
}

/// An externally tagged value is an object of one key (or a bare name).
fn one_key(
    v: &serde_json::Value,
    what: &str,
    choices: fn() -> Option<String>,
) -> Result<(), String> {
    match v {
        serde_json::Value::Object(m) if m.len() != 1 => {
            let found: Vec<String> = m.keys().map(|k| format!("`{k}`")).collect();
            Err(format!(
                "{what}: exactly one of {} expected, found {{{}}}",
                choices().unwrap_or_default(),
                found.join(", ")
            ))
        }
        _ => Ok(()),
    }
}

/// The variant names serde knows for `T` (from its own "unknown variant" message, so the
/// names are not written twice).
fn variants<T: serde::de::DeserializeOwned>() -> Option<String> {
    let e = serde_json::from_str::<T>("\"?\"").err()?.to_string();
    let list = e.split("expected one of ").nth(1)?;
    Some(list.split(" at line").next().unwrap_or(list).to_string())
}

/// An error that is the caller's: bad arguments, a bad config or request. Exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Why a request failed: decides the CLI's exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request names something that does not exist or is invalid: exit 2, nothing changed.
    Usage,
    /// The request was fine but applying it failed: exit 1.
    Runtime,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
    #[serde(default)]
    pub result: serde_json::Value,
}

impl Response {
    pub fn ok(result: impl Serialize) -> Self {
        Self {
            ok: true,
            error: None,
            result: serde_json::to_value(result).expect("API results serialize"),
        }
    }

    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(ApiError {
                kind,
                message: message.into(),
            }),
            result: serde_json::Value::Null,
        }
    }
}

// ---- result shapes (`--json`) ---------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub program_id: u32,
    pub attach_mode: String,
    pub interfaces: Vec<String>,
    /// Per configured interface: attached or not, and why not.
    #[serde(default)]
    pub attachments: Vec<InterfaceStatus>,
    /// Seconds since the pinned-client counts were taken (they come from a scan of the
    /// affinity table, repeated in the background).
    pub pinned_counts_age_s: f64,
    pub services: Vec<ServiceStatus>,
    /// How this node announces its VIPs (`[announce]`) and each VIP's state.
    #[serde(default)]
    pub announce: AnnounceStatus,
}

/// `[announce]` in `xlb status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AnnounceStatus {
    /// "none", "bird" or "command".
    pub kind: String,
    /// BIRD's control socket, or the announce command line (none for kind none).
    pub target: Option<String>,
    /// `xlb node drain` is in force: every VIP withdrawn.
    pub node_drained: bool,
    /// Seconds since the announcer last synced (none before its first sync).
    pub synced_age_s: Option<f64>,
    /// Every VIP of the node's services, in address order.
    pub vips: Vec<VipStatus>,
}

/// One VIP's announcement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VipStatus {
    pub vip: IpAddr,
    /// "announced" or "withdrawn" (as the announcer has it at its last sync), "unknown"
    /// (the announcer could not be asked), or "none" (kind none: xlb announces nothing).
    pub state: String,
    /// What the policy wants now: announce (true) or withdraw.
    pub want: bool,
    /// Why: "serving", "drained", "not_attached" or "no_usable_backend".
    pub why: String,
    /// The same in words, with the services: `served by web, dns`, `no service has a
    /// healthy backend (web 0/3)`.
    pub reason: String,
    /// Why the announcer does not do what the policy wants (BIRD unreachable, its
    /// protocol missing, a failed command).
    pub error: Option<String>,
}

/// One configured XDP interface as the daemon sees it now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InterfaceStatus {
    pub name: String,
    /// The interface's index while it exists.
    pub ifindex: Option<u32>,
    /// The program is attached to it (through its pinned link).
    pub attached: bool,
    /// Why not attached (interface deleted, attach failed: the error).
    pub note: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: String,
    pub affinity: String,
    pub prefix: u8,
    pub idle_timeout: String,
    pub failback: String,
    pub table_size: u32,
    pub health: String,
    pub pinned_clients: u64,
    /// "dsr" or "tunnel".
    #[serde(default)]
    pub forwarding: String,
    /// Tunnel mode: the prefix outer sources come from (absent: each egress interface's
    /// address).
    #[serde(default)]
    pub tunnel_source: Option<String>,
    /// Prefixes whose clients are balanced per connection.
    #[serde(default)]
    pub nat_sources: Vec<String>,
    /// Bounded-load factor for new clients; absent: off.
    #[serde(default)]
    pub balance_factor: Option<f64>,
    /// `nat_warn_share` (0..1).
    #[serde(default)]
    pub nat_warn_share: f64,
    /// Largest (packet share ÷ weight share) of its backends over the last
    /// `load_interval_s`; absent without packets.
    #[serde(default)]
    pub load_imbalance: Option<f64>,
    /// Seconds the load shares cover.
    #[serde(default)]
    pub load_interval_s: u32,
    /// The heaviest source or prefix when it carries more than `nat_warn_share`, and
    /// what to do about it.
    #[serde(default)]
    pub heavy_source: Option<HeavySource>,
    pub backends: Vec<BackendStatus>,
}

/// One source (or /24, /64 prefix) carrying more than `nat_warn_share` of a service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeavySource {
    /// The address, or the prefix (`203.0.113.0/24`).
    pub source: String,
    /// Its share of the service's packets (0..1).
    pub share: f64,
    /// The note: what carries how much, and the settings that spread it.
    pub note: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub address: IpAddr,
    pub weight: u32,
    /// "healthy", "unhealthy" (or "unknown" before the first check result).
    pub health: String,
    pub healthy: bool,
    pub draining: bool,
    /// The neighbour (MAC) is known; an unresolved backend takes no traffic.
    pub resolved: bool,
    pub mac: Option<String>,
    pub interface: Option<String>,
    /// Why it is unresolved, or the last health check failure.
    pub note: Option<String>,
    /// Share of the Maglev table (new clients), 0..1.
    pub table_share: f64,
    /// Live affinity entries pointing to it: entries that decide their client's next
    /// packet. 0 while the backend is unusable (unhealthy or unresolved): its entries are
    /// stale then — each client moves on its next packet — and are not counted.
    pub pinned_clients: u64,
    /// Health state changes seen by this daemon.
    pub health_transitions: u64,
    /// Duration of the last health check, when one ran.
    pub last_check_ms: Option<f64>,
    /// Share of the service's packets it received over the last `load_interval_s` (0..1).
    #[serde(default)]
    pub load_share: f64,
    /// Its weight over the weights of the backends that take traffic (0 when it takes
    /// none): the share it would carry if load followed the weights.
    #[serde(default)]
    pub weight_share: f64,
    /// Over the service's load bound (`balance_factor`) in the last second: new clients
    /// avoid it.
    #[serde(default)]
    pub over_bound: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Global counters: one per verdict and reason; every packet counts once.
    pub packets: Vec<(String, u64)>,
    pub services: Vec<ServiceStats>,
    /// Seconds the rates are averaged over.
    pub rate_interval_s: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceStats {
    pub name: String,
    pub packets: u64,
    pub bytes: u64,
    pub packets_per_s: f64,
    pub bits_per_s: f64,
    pub hits: u64,
    pub misses: u64,
    pub repins: u64,
    pub expiries: u64,
    pub no_backend: u64,
    /// ICMP errors about the service's packets sent on to the clients' backends.
    #[serde(default)]
    pub icmp_errors: u64,
    pub backends: Vec<BackendStats>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendStats {
    pub address: IpAddr,
    pub packets: u64,
    pub bytes: u64,
    pub packets_per_s: f64,
    pub bits_per_s: f64,
    /// Affinity entries written pointing to it (new clients, re-pins, expiries).
    pub pins: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Explain {
    pub service: String,
    pub client: IpAddr,
    /// The masked client address that forms the affinity key.
    pub key: String,
    /// "pinned", "hashed" or "no_backend".
    pub decision: String,
    /// For "hashed": "no_entry", "expired" or "backend_unusable".
    pub reason: Option<String>,
    pub backend: Option<IpAddr>,
    pub pinned_age_s: Option<f64>,
    pub idle_s: Option<f64>,
    pub slot: u32,
    pub slot_backend: Option<IpAddr>,
    pub previous_slot_backend: Option<IpAddr>,
    /// The `nat_sources` prefix that lists the client (its key is then its address and
    /// source port: each connection decided alone).
    #[serde(default)]
    pub nat_source: Option<String>,
    /// For a new client of a service with `balance_factor`: the Maglev backend it would
    /// have had, over the load bound right now (`backend` is the next one not over it).
    #[serde(default)]
    pub over_bound_backend: Option<IpAddr>,
    /// "dsr" or "tunnel".
    #[serde(default)]
    pub forwarding: String,
    /// Tunnel mode: the outer source address of this client's packets to `backend`
    /// (absent: no backend, or none can be chosen: the data plane drops).
    #[serde(default)]
    pub outer_source: Option<IpAddr>,
    /// The backends that pass their checks but cannot take traffic, each as
    /// "ADDRESS: why" (no route or next hop, no outer source, DSR behind a gateway):
    /// why a service "has no backend" although its backends are healthy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unusable: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AffinityEntry {
    pub service: String,
    pub client: String,
    pub port: u16,
    pub backend: Option<IpAddr>,
    pub age_s: f64,
    pub idle_s: f64,
    /// Idle longer than the service's idle_timeout: the next packet re-decides.
    pub expired: bool,
}

/// A draining backend's remaining live pins (`drain_status`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DrainStatus {
    pub service: String,
    pub address: IpAddr,
    /// The backend is draining (takes no new client).
    pub draining: bool,
    /// Live pinned clients at the last count of the affinity table.
    pub pinned_clients: u64,
    /// That count comes from a scan that started after the backend was drained: only
    /// such a count can say that no pin is left.
    pub counted_since_drain: bool,
    /// Seconds since that count's scan started (`None`: no count yet).
    pub counted_age_s: Option<f64>,
    /// Seconds since the most recently active of the pinned clients was last seen, and
    /// the least recently active (`None` without pins). Each stamp lags its client's last
    /// packet by up to the refresh period (a quarter of idle_timeout, at most 1 s).
    pub newest_seen_s: Option<f64>,
    pub oldest_seen_s: Option<f64>,
    /// The service's idle_timeout: a pin lives until its client is silent that long.
    pub idle_timeout: String,
    /// Draining, counted since the drain, and no live pin left: safe to remove or stop.
    pub drained: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AffinityList {
    pub total: usize,
    pub entries: Vec<AffinityEntry>,
}

/// `xlb top`: per service, its heaviest sources over the interval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Top {
    /// "source" or "prefix".
    pub by: String,
    pub services: Vec<TopService>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopService {
    pub name: String,
    /// Whole seconds the figures cover (the last completed ones).
    pub interval_s: u32,
    pub packets_per_s: f64,
    pub bits_per_s: f64,
    /// Samples the shares rest on, and the sampling period now (1 = every packet).
    pub samples: u64,
    pub sample_period: u32,
    pub sources: Vec<TopSource>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopSource {
    /// Address, or /24 (/64) prefix.
    pub source: String,
    pub packets_per_s: f64,
    pub bits_per_s: f64,
    /// Share of the service's packets (0..1).
    pub share: f64,
    /// The backend most of its packets went to.
    pub backend: Option<IpAddr>,
    /// How many backends its packets reached.
    pub backends: usize,
}

// ---- client ---------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "the xlb daemon is not running (nothing listens on {socket}): start it with \
         `xlb run --config FILE`, or pass --socket / XLB_SOCKET if it uses another socket"
    )]
    NotRunning { socket: String },
    #[error("talking to the xlb daemon on {socket}: {source}")]
    Io {
        socket: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the xlb daemon sent an invalid response: {0}")]
    Protocol(#[from] serde_json::Error),
}

/// Sends one request and waits for its response.
pub fn call(socket: &Path, request: &Request) -> Result<Response, ClientError> {
    let name = socket.display().to_string();
    let io = |source| ClientError::Io {
        socket: name.clone(),
        source,
    };
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ClientError::NotRunning { socket: name });
        }
        Err(e) => return Err(io(e)),
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io)?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io)?;
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    reader.read_line(&mut answer).map_err(io)?;
    Ok(serde_json::from_str(&answer)?)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::model::{Protocol, Service};

    fn samples() -> Vec<Value> {
        let mut svc = Service::new("web", "203.0.113.10".parse().unwrap(), 80, Protocol::Tcp);
        svc.backends
            .push(crate::model::Backend::new("192.0.2.1".parse().unwrap()));
        let reqs = [
            Request::Edit(Edit::BackendAdd {
                service: "web".into(),
                address: "192.0.2.11".parse().unwrap(),
                weight: 2,
            }),
            Request::Edit(Edit::BackendWeight {
                service: "web".into(),
                address: "192.0.2.11".parse().unwrap(),
                weight: 2,
            }),
            Request::Edit(Edit::BackendDrain {
                service: "web".into(),
                address: "192.0.2.11".parse().unwrap(),
            }),
            Request::Edit(Edit::ServiceRemove { name: "web".into() }),
            Request::Edit(Edit::ServiceAdd {
                service: Box::new(svc),
            }),
            Request::Explain {
                service: "web".into(),
                client: "198.51.100.7".parse().unwrap(),
                port: 9,
            },
            Request::AffinityList {
                service: Some("web".into()),
                limit: 10,
            },
            Request::AffinityFlush { service: None },
            Request::DrainStatus {
                service: "web".into(),
                address: "192.0.2.11".parse().unwrap(),
            },
        ];
        reqs.iter()
            .map(|r| serde_json::to_value(r).unwrap())
            .collect()
    }

    #[test]
    fn requests_round_trip_through_the_decoder() {
        for v in samples() {
            let r = decode_request(&v.to_string()).unwrap();
            assert_eq!(serde_json::to_value(&r).unwrap(), v);
        }
        assert_eq!(decode_request("\"status\"").unwrap(), Request::Status);
        assert_eq!(decode_request("\"reload\"").unwrap(), Request::Reload);
        let e = decode_request(r#"{"edit":{"backend_add":{"service":"web","address":"x"}}}"#)
            .unwrap_err();
        assert!(e.starts_with("edit.backend_add.address: "), "{e}");
        let e = decode_request(
            r#"{"edit":{"backend_add":{"service":"web","address":"10.0.0.1","wieght":1}}}"#,
        )
        .unwrap_err();
        assert!(e.contains("wieght"), "{e}");
        let e = decode_request(r#"{"edit":{"service_add":{"service":{"name":"w","vip":"10.0.0.1","port":80,"protocol":"tcp","prefix_v4":33}}}}"#)
            .unwrap_err();
        assert!(e.contains("prefix_v4: 33 is out of range"), "{e}");
    }

    /// Every object key path inside `v`, with the key's name.
    fn key_paths(v: &Value, here: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        if let Value::Object(m) = v {
            for (k, child) in m {
                here.push(k.clone());
                out.push(here.clone());
                key_paths(child, here, out);
                here.pop();
            }
        }
    }

    fn at<'a>(v: &'a mut Value, path: &[String]) -> &'a mut Value {
        path.iter().fold(v, |v, k| &mut v[k.as_str()])
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|n| json!(n)),
            ".{0,10}".prop_map(Value::String),
            prop::sample::select(vec!["10.0.0.1", "fe80::1", "tcp", "0s", "web"])
                .prop_map(|s| Value::String(s.into())),
        ];
        leaf.prop_recursive(2, 6, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,5}", inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

        #[test]
        fn any_line_is_decoded_or_rejected_without_panic(line in ".{0,300}") {
            let _ = decode_request(&line);
        }

        /// A request with one key changed (a random value, removed, or a stranger added
        /// beside it): decoded, or rejected naming that key.
        #[test]
        fn a_rejected_request_names_its_key(
            which in any::<prop::sample::Index>(),
            key in any::<prop::sample::Index>(),
            how in 0..3u8,
            value in json_value(),
        ) {
            let samples = samples();
            let mut v = samples[which.index(samples.len())].clone();
            let mut paths = Vec::new();
            key_paths(&v, &mut Vec::new(), &mut paths);
            prop_assume!(!paths.is_empty());
            let path = paths[key.index(paths.len())].clone();
            let name = path.last().unwrap().clone();
            let (parent, last) = path.split_at(path.len() - 1);
            let expect = match how {
                0 => { *at(&mut v, &path) = value; name }
                1 => { at(&mut v, parent).as_object_mut().unwrap().remove(&last[0]); name }
                _ => {
                    at(&mut v, parent).as_object_mut().unwrap().insert("zzstranger".into(), value);
                    "zzstranger".into()
                }
            };
            if let Err(e) = decode_request(&v.to_string()) {
                let related = expect == "interval" && e.contains("timeout")
                    || expect == "port" && e.contains("health.port");
                prop_assert!(e.contains(&expect) || related, "{} not named in {:?} for {}", expect, e, v);
            }
        }
    }
}
