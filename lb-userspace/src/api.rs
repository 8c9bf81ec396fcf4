//! The control API: one JSON request per line on the daemon's Unix socket (mode 0600,
//! root only), one JSON response per line back. There is no TCP control port.
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
}

/// Decodes one request line. A rejection names the key path that is wrong
/// (`edit.backend_add.weight: invalid type: ...`), so a bad client is told what to fix.
pub fn decode_request(line: &str) -> Result<Request, String> {
    let mut de = serde_json::Deserializer::from_str(line);
    let request: Request = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        }
    })?;
    de.end().map_err(|e| e.to_string())?;
    Ok(request)
}

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
    /// Seconds since the pinned-client counts were taken (they come from a scan of the
    /// affinity table, repeated in the background).
    pub pinned_counts_age_s: f64,
    pub services: Vec<ServiceStatus>,
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
    pub backends: Vec<BackendStatus>,
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
    /// Live affinity entries pointing to it.
    pub pinned_clients: u64,
    /// Health state changes seen by this daemon.
    pub health_transitions: u64,
    /// Duration of the last health check, when one ran.
    pub last_check_ms: Option<f64>,
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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AffinityList {
    pub total: usize,
    pub entries: Vec<AffinityEntry>,
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
