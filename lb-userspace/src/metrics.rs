//! Prometheus metrics: the OpenMetrics text exposition of a [`Snapshot`] and a tiny
//! HTTP/1.1 server for it (the daemon binds it to the configured loopback address).
//!
//! The daemon builds a [`Snapshot`] from its maps and model on every scrape; this module
//! only turns it into text and serves it.
//!
//! # Why a custom `Collector`
//!
//! Every counter comes from the data plane as an absolute value, and the set of services
//! and backends changes at run time. Keeping long-lived `Family<_, Counter>` objects in
//! step would mean turning absolute values into increments and deleting stale label sets
//! by hand. Instead each scrape registers one [`Collector`] that owns the snapshot and
//! writes it with `ConstCounter` / `ConstGauge` (the crate's documented pattern for
//! externally owned values). This also gives a deterministic order (a `Family` is a
//! `HashMap`), lets a sample be left out (no health check yet → no latency sample), and
//! needs no shared mutable state. A `Registry` is still built per scrape because the text
//! encoder only accepts a `&Registry`; it is just a `Vec` holding the collector.
//!
//! # Metric names
//!
//! All samples of a family are written together, as OpenMetrics requires. Counters end in
//! `_total` (the encoder appends it to the family name); `bytes` and `seconds` families
//! carry an OpenMetrics `# UNIT` line.
//!
//! | sample | type | labels |
//! |---|---|---|
//! | `xlb_info` = 1 | info | `version`, `program_id`, `attach_mode`, `interfaces` |
//! | `xlb_packets_total` | counter | `reason` |
//! | `xlb_service_packets_total`, `xlb_service_bytes_total`, `xlb_service_affinity_hits_total`, `xlb_service_affinity_misses_total`, `xlb_service_repins_total`, `xlb_service_expiries_total`, `xlb_service_no_backend_total` | counter | `service` |
//! | `xlb_service_pinned_clients` | gauge | `service` |
//! | `xlb_backend_packets_total`, `xlb_backend_bytes_total`, `xlb_backend_pins_total`, `xlb_backend_health_transitions_total` | counter | `service`, `backend` |
//! | `xlb_backend_pinned_clients`, `xlb_backend_table_share` (0..1), `xlb_backend_weight`, `xlb_backend_healthy`, `xlb_backend_draining`, `xlb_backend_resolved` (0/1), `xlb_backend_last_check_latency_seconds` (absent until a check ran) | gauge | `service`, `backend` |
//!
//! Service names are expected to be unique (the model enforces it), so label sets are.

use std::{fmt, io, sync::Arc, time::Duration};

use log::debug;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, text},
    metrics::{MetricType, TypedMetric, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    time::timeout,
};

/// Everything a scrape shows; the daemon fills it from its maps and model.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub version: String,
    pub program_id: u32,
    pub attach_mode: String,
    pub interfaces: Vec<String>,
    /// Global per-packet verdict/reason counters, e.g. ("drop_fragment", 3), ("tx", 100):
    /// the `reason` label.
    pub packets: Vec<(String, u64)>,
    pub services: Vec<ServiceSnapshot>,
}

/// One service's counters and gauges (absolute values).
#[derive(Clone, Debug, Default)]
pub struct ServiceSnapshot {
    pub name: String,
    pub vip: String,
    pub port: u16,
    pub protocol: String,
    pub packets: u64,
    pub bytes: u64,
    pub hits: u64,
    pub misses: u64,
    pub repins: u64,
    pub expiries: u64,
    pub no_backend: u64,
    pub pinned_clients: u64,
    pub backends: Vec<BackendSnapshot>,
}

/// One backend of a service (absolute values).
#[derive(Clone, Debug, Default)]
pub struct BackendSnapshot {
    pub address: String,
    pub weight: u32,
    pub packets: u64,
    pub bytes: u64,
    pub pins: u64,
    pub pinned_clients: u64,
    /// Share of the Maglev table's slots, 0..1.
    pub table_share: f64,
    pub healthy: bool,
    pub draining: bool,
    pub resolved: bool,
    pub health_transitions: u64,
    /// `None` until the first health check finished: the sample is then left out.
    pub last_check_latency_seconds: Option<f64>,
}

/// The `Content-Type` of what [`encode`] produces (OpenMetrics text 1.0.0).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Encodes a snapshot as OpenMetrics text (ends with `# EOF`).
pub fn encode(s: &Snapshot) -> String {
    render(s.clone())
}

/// Like [`encode`], taking the snapshot by value (the collector must own it: a
/// `Registry` only holds `'static` collectors).
fn render(s: Snapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector(s)));
    let mut out = String::new();
    // Writing into a String cannot fail, and the collector fails only on write errors.
    if let Err(e) = text::encode(&mut out, &registry) {
        debug!("metrics: encoding failed: {e}");
    }
    out
}

#[derive(Debug)]
struct SnapshotCollector(Snapshot);

type ServiceLabels<'a> = [(&'static str, &'a str); 1];
type BackendLabels<'a> = [(&'static str, &'a str); 2];

/// Writes one metric family: its descriptor, then one sample per label set.
///
/// `name` is the full family name; when `unit` is given it must end in `_<unit>` (the
/// encoder re-appends the unit and writes a `# UNIT` line).
fn family<L, M>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    samples: impl IntoIterator<Item = (L, M)>,
) -> fmt::Result
where
    L: EncodeLabelSet,
    M: EncodeMetric + TypedMetric,
{
    let base = match &unit {
        Some(u) => name
            .strip_suffix(u.as_str())
            .and_then(|n| n.strip_suffix('_'))
            .unwrap_or(name),
        None => name,
    };
    let mut metric = enc.encode_descriptor(base, help, unit.as_ref(), M::TYPE)?;
    for (labels, value) in samples {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn per_service<'a, M>(
    s: &'a Snapshot,
    f: impl Fn(&ServiceSnapshot) -> M + 'a,
) -> impl Iterator<Item = (ServiceLabels<'a>, M)> + 'a {
    s.services
        .iter()
        .map(move |svc| ([("service", svc.name.as_str())], f(svc)))
}

/// One sample per backend for which `f` returns a value.
fn per_backend<'a, M>(
    s: &'a Snapshot,
    f: impl Fn(&BackendSnapshot) -> Option<M> + 'a,
) -> impl Iterator<Item = (BackendLabels<'a>, M)> + 'a {
    s.services
        .iter()
        .flat_map(|svc| svc.backends.iter().map(move |b| (svc, b)))
        .filter_map(move |(svc, b)| {
            let labels = [
                ("service", svc.name.as_str()),
                ("backend", b.address.as_str()),
            ];
            f(b).map(|v| (labels, v))
        })
}

fn counter(v: u64) -> ConstCounter<u64> {
    ConstCounter::new(v)
}

fn flag(v: bool) -> ConstGauge<u32> {
    ConstGauge::new(u32::from(v))
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let s = &self.0;
        let enc = &mut enc;

        // Info: family `xlb`, sample `xlb_info{...} 1`.
        let program_id = s.program_id.to_string();
        let interfaces = s.interfaces.join(",");
        let info = [
            ("version", s.version.as_str()),
            ("program_id", program_id.as_str()),
            ("attach_mode", s.attach_mode.as_str()),
            ("interfaces", interfaces.as_str()),
        ];
        enc.encode_descriptor(
            "xlb",
            "xlb daemon: version, XDP program id, attach mode and interfaces.",
            None,
            MetricType::Info,
        )?
        .encode_info(&info)?;

        family(
            enc,
            "xlb_packets",
            "Packets seen by the XDP program, by verdict or drop reason.",
            None,
            s.packets
                .iter()
                .map(|(reason, v)| ([("reason", reason.as_str())], counter(*v))),
        )?;

        // Per service.
        family(
            enc,
            "xlb_service_packets",
            "Packets forwarded for the service.",
            None,
            per_service(s, |x| counter(x.packets)),
        )?;
        family(
            enc,
            "xlb_service_bytes",
            "Bytes forwarded for the service.",
            Some(Unit::Bytes),
            per_service(s, |x| counter(x.bytes)),
        )?;
        family(
            enc,
            "xlb_service_affinity_hits",
            "Packets whose client was already pinned to a usable backend.",
            None,
            per_service(s, |x| counter(x.hits)),
        )?;
        family(
            enc,
            "xlb_service_affinity_misses",
            "Packets of clients without a pin (a backend was chosen by consistent hashing).",
            None,
            per_service(s, |x| counter(x.misses)),
        )?;
        family(
            enc,
            "xlb_service_repins",
            "Clients moved off a pinned backend that became unusable.",
            None,
            per_service(s, |x| counter(x.repins)),
        )?;
        family(
            enc,
            "xlb_service_expiries",
            "Affinity pins that expired after the idle timeout.",
            None,
            per_service(s, |x| counter(x.expiries)),
        )?;
        family(
            enc,
            "xlb_service_no_backend",
            "Packets that found no usable backend.",
            None,
            per_service(s, |x| counter(x.no_backend)),
        )?;
        family(
            enc,
            "xlb_service_pinned_clients",
            "Clients currently pinned in the affinity table.",
            None,
            per_service(s, |x| ConstGauge::new(x.pinned_clients)),
        )?;

        // Per backend.
        family(
            enc,
            "xlb_backend_packets",
            "Packets forwarded to the backend.",
            None,
            per_backend(s, |b| Some(counter(b.packets))),
        )?;
        family(
            enc,
            "xlb_backend_bytes",
            "Bytes forwarded to the backend.",
            Some(Unit::Bytes),
            per_backend(s, |b| Some(counter(b.bytes))),
        )?;
        family(
            enc,
            "xlb_backend_pins",
            "Clients pinned to the backend (new pins and re-pins).",
            None,
            per_backend(s, |b| Some(counter(b.pins))),
        )?;
        family(
            enc,
            "xlb_backend_pinned_clients",
            "Clients currently pinned to the backend.",
            None,
            per_backend(s, |b| Some(ConstGauge::new(b.pinned_clients))),
        )?;
        family(
            enc,
            "xlb_backend_table_share",
            "Share of the service's consistent-hash table held by the backend (0..1).",
            None,
            per_backend(s, |b| Some(ConstGauge::new(b.table_share))),
        )?;
        family(
            enc,
            "xlb_backend_weight",
            "Configured weight of the backend.",
            None,
            per_backend(s, |b| Some(ConstGauge::new(b.weight))),
        )?;
        family(
            enc,
            "xlb_backend_healthy",
            "1 if the backend passes its health checks.",
            None,
            per_backend(s, |b| Some(flag(b.healthy))),
        )?;
        family(
            enc,
            "xlb_backend_draining",
            "1 if the backend is draining (keeps its pins, takes no new clients).",
            None,
            per_backend(s, |b| Some(flag(b.draining))),
        )?;
        family(
            enc,
            "xlb_backend_resolved",
            "1 if the backend's link (MAC, egress interface) is resolved.",
            None,
            per_backend(s, |b| Some(flag(b.resolved))),
        )?;
        family(
            enc,
            "xlb_backend_health_transitions",
            "Health state changes of the backend (healthy <-> unhealthy).",
            None,
            per_backend(s, |b| Some(counter(b.health_transitions))),
        )?;
        family(
            enc,
            "xlb_backend_last_check_latency_seconds",
            "Duration of the backend's last health check.",
            Some(Unit::Seconds),
            per_backend(s, |b| b.last_check_latency_seconds.map(ConstGauge::new)),
        )?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// HTTP server
// ---------------------------------------------------------------------------------------

/// Time a client has to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Time to take a snapshot (the source reads BPF maps on a blocking thread).
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to take the response.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// After the response, how long unread request bytes are drained so that closing the
/// socket does not send a RST that could destroy the response in flight.
const LINGER: Duration = Duration::from_secs(1);
const MAX_HEAD: usize = 8 * 1024;
/// Connections served at once; further ones wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;

/// Serves `GET /metrics` on `listener` until the task is dropped; `source` is called
/// (on a blocking thread) once per scrape.
///
/// Each connection carries one request and is then closed. Errors of single connections
/// are logged at debug level and never end the server.
pub async fn serve(
    listener: TcpListener,
    source: Arc<dyn Fn() -> Snapshot + Send + Sync>,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return Ok(()); // never: the semaphore is not closed
        };
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // E.g. EMFILE or ECONNABORTED: back off briefly rather than spin.
                debug!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let source = source.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, source).await {
                debug!("metrics: {peer}: {e}");
            }
            drop(slot);
        });
    }
}

/// A parsed request head (only what routing needs).
#[derive(Debug, PartialEq, Eq)]
enum Head {
    Request {
        method: String,
        path: String,
    },
    Malformed(&'static str),
    /// HTTP/2 or another major version.
    UnsupportedVersion,
}

struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    allow: bool,
    body: Vec<u8>,
    head_only: bool,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: &str) -> Self {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            allow: false,
            body: body.as_bytes().to_vec(),
            head_only: false,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        if self.allow {
            out.push_str("Allow: GET, HEAD\r\n");
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        if !self.head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

async fn connection(
    mut stream: TcpStream,
    source: Arc<dyn Fn() -> Snapshot + Send + Sync>,
) -> io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let response = match timeout(HEAD_TIMEOUT, read_head(&mut stream, &mut buf)).await {
        Ok(Ok(Some(head))) => respond(head, source).await,
        Ok(Ok(None)) => return Ok(()), // closed before sending anything
        Ok(Err(e)) => return Err(e),
        Err(_) if buf.is_empty() => {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "idle connection"));
        }
        Err(_) => Response::text(408, "Request Timeout", "request timeout\n"),
    };
    if response.status >= 400 {
        debug!("metrics: answered {} {}", response.status, response.reason);
    }
    let bytes = response.bytes();
    let sent = timeout(WRITE_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await;
    match sent {
        Ok(r) => r?,
        Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "response write")),
    }
    // Lingering close: read (and drop) what the client still sends, until it closes.
    let _ = timeout(LINGER, async {
        let mut sink = [0u8; 1024];
        let mut left = 64 * 1024usize;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
    Ok(())
}

/// Reads until the request head is complete (or clearly malformed). `None`: the client
/// closed the connection without sending a byte.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<Head>> {
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(head) = parse_head(buf) {
            return Ok(Some(head));
        }
        if buf.len() >= MAX_HEAD {
            return Ok(Some(Head::Malformed("request head too large")));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(if buf.is_empty() {
                None
            } else {
                Some(Head::Malformed("connection closed inside the request head"))
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Parses a request head; `None` while more bytes are needed. Rejects early what cannot
/// become a valid request line (e.g. a TLS handshake), so garbage gets a quick 400.
fn parse_head(buf: &[u8]) -> Option<Head> {
    let Some(line_end) = buf.iter().position(|&b| b == b'\n') else {
        // Only a method (uppercase letters) may precede the first space.
        let method_end = buf.iter().position(|&b| b == b' ').unwrap_or(buf.len());
        if method_end > 16 || !buf[..method_end].iter().all(u8::is_ascii_uppercase) {
            return Some(Head::Malformed("bad request line"));
        }
        return None;
    };
    let line = &buf[..line_end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let request = match parse_request_line(line) {
        Ok(r) => r,
        Err(head) => return Some(head),
    };
    // The head ends with an empty line; header lines must look like `name: value`.
    let mut rest = &buf[line_end + 1..];
    loop {
        let end = rest.iter().position(|&b| b == b'\n')?;
        let header = &rest[..end];
        let header = header.strip_suffix(b"\r").unwrap_or(header);
        if header.is_empty() {
            return Some(request);
        }
        let colon = header.iter().position(|&b| b == b':');
        if matches!(colon, None | Some(0))
            || header[0].is_ascii_whitespace()
            || header.iter().any(|&b| b.is_ascii_control() && b != b'\t')
        {
            return Some(Head::Malformed("bad header line"));
        }
        rest = &rest[end + 1..];
    }
}

fn parse_request_line(line: &[u8]) -> Result<Head, Head> {
    const BAD: Head = Head::Malformed("bad request line");
    let line = std::str::from_utf8(line).map_err(|_| BAD)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BAD);
    };
    if method.is_empty() || method.len() > 16 || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(BAD);
    }
    if !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(BAD);
    }
    match version {
        "HTTP/1.0" | "HTTP/1.1" => {}
        v if v.starts_with("HTTP/") && v.len() > 5 => return Err(Head::UnsupportedVersion),
        _ => return Err(BAD),
    }
    // Origin form `/path?query`, or absolute form `http://host/path?query`.
    let path = if target.starts_with('/') {
        target
    } else if let Some(after) = ["http://", "https://"].iter().find_map(|scheme| {
        target
            .get(..scheme.len())
            .filter(|p| p.eq_ignore_ascii_case(scheme))
            .map(|_| &target[scheme.len()..])
    }) {
        after.find('/').map_or("/", |i| &after[i..])
    } else {
        return Err(BAD);
    };
    let path = path.split(['?', '#']).next().unwrap_or(path);
    Ok(Head::Request {
        method: method.to_owned(),
        path: path.to_owned(),
    })
}

async fn respond(head: Head, source: Arc<dyn Fn() -> Snapshot + Send + Sync>) -> Response {
    let (method, path) = match head {
        Head::Request { method, path } => (method, path),
        Head::Malformed(why) => return Response::text(400, "Bad Request", &format!("{why}\n")),
        Head::UnsupportedVersion => {
            return Response::text(505, "HTTP Version Not Supported", "HTTP/1.x only\n");
        }
    };
    let known = matches!(path.as_str(), "/" | "/metrics");
    let head_only = method == "HEAD";
    if !known {
        return Response::text(404, "Not Found", "not found; metrics are at /metrics\n");
    }
    if method != "GET" && !head_only {
        let mut r = Response::text(405, "Method Not Allowed", "method not allowed\n");
        r.allow = true;
        return r;
    }
    let mut response = if path == "/" {
        Response::text(200, "OK", "xlb metrics exporter: scrape /metrics\n")
    } else {
        let job = tokio::task::spawn_blocking(move || render(source()));
        match timeout(SNAPSHOT_TIMEOUT, job).await {
            Ok(Ok(body)) => Response {
                status: 200,
                reason: "OK",
                content_type: CONTENT_TYPE,
                allow: false,
                body: body.into_bytes(),
                head_only: false,
            },
            Ok(Err(e)) => {
                debug!("metrics: snapshot failed: {e}");
                Response::text(500, "Internal Server Error", "snapshot failed\n")
            }
            Err(_) => {
                debug!("metrics: snapshot timed out");
                Response::text(503, "Service Unavailable", "snapshot timed out\n")
            }
        }
    };
    response.head_only = head_only;
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn sample() -> Snapshot {
        Snapshot {
            version: "0.1.0".into(),
            program_id: 42,
            attach_mode: "driver".into(),
            interfaces: vec!["eth0".into(), "eth1".into()],
            packets: vec![("tx".into(), 100), ("drop_fragment".into(), 3)],
            services: vec![
                ServiceSnapshot {
                    name: "web".into(),
                    vip: "10.0.0.10".into(),
                    port: 80,
                    protocol: "tcp".into(),
                    packets: 10,
                    bytes: 1500,
                    hits: 7,
                    misses: 3,
                    repins: 1,
                    expiries: 2,
                    no_backend: 0,
                    pinned_clients: 5,
                    backends: vec![
                        BackendSnapshot {
                            address: "10.0.1.1:80".into(),
                            weight: 1,
                            packets: 6,
                            bytes: 900,
                            pins: 3,
                            pinned_clients: 3,
                            table_share: 0.5,
                            healthy: true,
                            draining: false,
                            resolved: true,
                            health_transitions: 1,
                            last_check_latency_seconds: Some(0.25),
                        },
                        BackendSnapshot {
                            address: "10.0.1.2:80".into(),
                            weight: 2,
                            draining: true,
                            last_check_latency_seconds: None,
                            ..Default::default()
                        },
                    ],
                },
                ServiceSnapshot {
                    name: "a\"b\\c\nd".into(),
                    packets: 1,
                    ..Default::default()
                },
            ],
        }
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    #[test]
    fn metrics_encode_exact_lines() {
        let text = encode(&sample());
        let l = lines(&text);
        for want in [
            "# HELP xlb xlb daemon: version, XDP program id, attach mode and interfaces.",
            "# TYPE xlb info",
            r#"xlb_info{version="0.1.0",program_id="42",attach_mode="driver",interfaces="eth0,eth1"} 1"#,
            "# TYPE xlb_packets counter",
            r#"xlb_packets_total{reason="tx"} 100"#,
            r#"xlb_packets_total{reason="drop_fragment"} 3"#,
            "# TYPE xlb_service_packets counter",
            r#"xlb_service_packets_total{service="web"} 10"#,
            "# TYPE xlb_service_bytes counter",
            "# UNIT xlb_service_bytes bytes",
            r#"xlb_service_bytes_total{service="web"} 1500"#,
            r#"xlb_service_affinity_hits_total{service="web"} 7"#,
            r#"xlb_service_affinity_misses_total{service="web"} 3"#,
            r#"xlb_service_repins_total{service="web"} 1"#,
            r#"xlb_service_expiries_total{service="web"} 2"#,
            r#"xlb_service_no_backend_total{service="web"} 0"#,
            "# TYPE xlb_service_pinned_clients gauge",
            r#"xlb_service_pinned_clients{service="web"} 5"#,
            r#"xlb_backend_packets_total{service="web",backend="10.0.1.1:80"} 6"#,
            r#"xlb_backend_bytes_total{service="web",backend="10.0.1.1:80"} 900"#,
            r#"xlb_backend_pins_total{service="web",backend="10.0.1.1:80"} 3"#,
            r#"xlb_backend_pinned_clients{service="web",backend="10.0.1.1:80"} 3"#,
            r#"xlb_backend_table_share{service="web",backend="10.0.1.1:80"} 0.5"#,
            r#"xlb_backend_table_share{service="web",backend="10.0.1.2:80"} 0.0"#,
            r#"xlb_backend_weight{service="web",backend="10.0.1.2:80"} 2"#,
            r#"xlb_backend_healthy{service="web",backend="10.0.1.1:80"} 1"#,
            r#"xlb_backend_healthy{service="web",backend="10.0.1.2:80"} 0"#,
            r#"xlb_backend_draining{service="web",backend="10.0.1.2:80"} 1"#,
            r#"xlb_backend_resolved{service="web",backend="10.0.1.1:80"} 1"#,
            "# TYPE xlb_backend_health_transitions counter",
            r#"xlb_backend_health_transitions_total{service="web",backend="10.0.1.1:80"} 1"#,
            "# TYPE xlb_backend_last_check_latency_seconds gauge",
            "# UNIT xlb_backend_last_check_latency_seconds seconds",
            r#"xlb_backend_last_check_latency_seconds{service="web",backend="10.0.1.1:80"} 0.25"#,
            // The crate escapes `"`, `\` and newlines in label values.
            r#"xlb_service_packets_total{service="a\"b\\c\nd"} 1"#,
        ] {
            assert!(l.contains(&want), "missing line {want:?} in:\n{text}");
        }
        // No latency sample for a backend that was never checked.
        assert!(!text.contains(
            r#"xlb_backend_last_check_latency_seconds{service="web",backend="10.0.1.2:80"}"#
        ));
        assert!(text.ends_with("\n# EOF\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1);
    }

    /// Every sample name of the contract appears, each family is declared once, and its
    /// samples follow its descriptor without interleaving.
    #[test]
    fn metrics_names_and_grouping() {
        let text = encode(&sample());
        let expected = [
            "xlb_info",
            "xlb_packets_total",
            "xlb_service_packets_total",
            "xlb_service_bytes_total",
            "xlb_service_affinity_hits_total",
            "xlb_service_affinity_misses_total",
            "xlb_service_repins_total",
            "xlb_service_expiries_total",
            "xlb_service_no_backend_total",
            "xlb_service_pinned_clients",
            "xlb_backend_packets_total",
            "xlb_backend_bytes_total",
            "xlb_backend_pins_total",
            "xlb_backend_pinned_clients",
            "xlb_backend_table_share",
            "xlb_backend_weight",
            "xlb_backend_healthy",
            "xlb_backend_draining",
            "xlb_backend_resolved",
            "xlb_backend_health_transitions_total",
            "xlb_backend_last_check_latency_seconds",
        ];
        let mut seen_families = Vec::new();
        let mut current = String::new();
        let mut sample_names = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap().to_owned();
                assert!(
                    !seen_families.contains(&name),
                    "family {name} declared twice"
                );
                seen_families.push(name.clone());
                current = name;
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(
                    name.starts_with(&current),
                    "{name} outside family {current}"
                );
                if !sample_names.contains(&name) {
                    sample_names.push(name);
                }
            }
        }
        assert_eq!(sample_names, expected);
    }

    #[test]
    fn metrics_empty_snapshot_is_valid() {
        let text = encode(&Snapshot::default());
        assert!(
            text.contains(r#"xlb_info{version="",program_id="0",attach_mode="",interfaces=""} 1"#)
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn metrics_parse_head() {
        let req = |m: &str, p: &str| {
            Some(Head::Request {
                method: m.into(),
                path: p.into(),
            })
        };
        assert_eq!(
            parse_head(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            req("GET", "/metrics")
        );
        assert_eq!(
            parse_head(b"GET /metrics?a=b HTTP/1.0\n\n"),
            req("GET", "/metrics")
        );
        assert_eq!(
            parse_head(b"GET http://h:1/metrics HTTP/1.1\r\n\r\n"),
            req("GET", "/metrics")
        );
        assert_eq!(
            parse_head(b"GET http://h:1 HTTP/1.1\r\n\r\n"),
            req("GET", "/")
        );
        assert_eq!(parse_head(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(parse_head(b"GE"), None);
        assert_eq!(parse_head(b""), None);
        assert_eq!(
            parse_head(b"PRI * HTTP/2.0\r\n\r\n"),
            Some(Head::UnsupportedVersion)
        );
        for bad in [
            &b"\x16\x03\x01\x02\x00"[..],
            b"garbage\r\n\r\n",
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics FTP/1.1\r\n\r\n",
            b"get /metrics HTTP/1.1\r\n\r\n",
            b"GET /m\xffx HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\n folded: x\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\n: empty\r\n\r\n",
        ] {
            assert!(
                matches!(parse_head(bad), Some(Head::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    async fn start() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, Arc::new(sample)));
        addr
    }

    /// Sends `request`, returns (status line, headers lowercased, body).
    async fn fetch(addr: SocketAddr, request: &[u8]) -> (String, Vec<String>, Vec<u8>) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut raw = Vec::new();
        timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
            .await
            .expect("response in time")
            .unwrap();
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("complete response head");
        let head = String::from_utf8(raw[..split].to_vec()).unwrap();
        let mut head_lines = head.split("\r\n");
        let status = head_lines.next().unwrap().to_owned();
        let headers = head_lines.map(str::to_ascii_lowercase).collect();
        (status, headers, raw[split + 4..].to_vec())
    }

    #[tokio::test]
    async fn metrics_serve_metrics() {
        let addr = start().await;
        let (status, headers, body) =
            fetch(addr, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        let body = String::from_utf8(body).unwrap();
        assert_eq!(body, encode(&sample()));
        assert!(headers.contains(&format!("content-type: {CONTENT_TYPE}")));
        assert!(headers.contains(&format!("content-length: {}", body.len())));
        assert!(headers.contains(&"connection: close".to_owned()));

        let (status, headers, body) = fetch(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(body.is_empty());
        assert!(
            headers
                .iter()
                .any(|h| h.starts_with("content-length: ") && h != "content-length: 0")
        );

        let (status, _, body) = fetch(addr, b"GET / HTTP/1.0\r\n\r\n").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(String::from_utf8(body).unwrap().contains("/metrics"));
    }

    #[tokio::test]
    async fn metrics_serve_errors() {
        let addr = start().await;
        let (status, _, _) = fetch(addr, b"GET /x HTTP/1.1\r\n\r\n").await;
        assert_eq!(status, "HTTP/1.1 404 Not Found");
        let (status, _, _) = fetch(addr, b"garbage\r\n\r\n").await;
        assert_eq!(status, "HTTP/1.1 400 Bad Request");
        // Binary garbage without a newline is rejected at once, not after a timeout.
        let (status, _, _) = fetch(addr, b"\x16\x03\x01\x00\xa5\x01\x00").await;
        assert_eq!(status, "HTTP/1.1 400 Bad Request");
        let (status, headers, _) = fetch(addr, b"POST /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
        assert!(headers.contains(&"allow: get, head".to_owned()));
        let big = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_HEAD));
        let (status, _, _) = fetch(addr, big.as_bytes()).await;
        assert_eq!(status, "HTTP/1.1 400 Bad Request");
        // A client that closes early does not disturb the server.
        drop(TcpStream::connect(addr).await.unwrap());
        let mut half = TcpStream::connect(addr).await.unwrap();
        half.write_all(b"GET /met").await.unwrap();
        drop(half);
        let (status, _, _) = fetch(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
    }

    #[tokio::test]
    async fn metrics_serve_source_panic_is_500() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(
            listener,
            Arc::new(|| -> Snapshot { panic!("map read failed") }),
        ));
        let (status, _, _) = fetch(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!(status, "HTTP/1.1 500 Internal Server Error");
        let (status, _, _) = fetch(addr, b"GET / HTTP/1.1\r\n\r\n").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
    }
}
