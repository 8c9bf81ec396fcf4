//! Prometheus metrics: the OpenMetrics text exposition of a [`Snapshot`] and the HTTP/1.1
//! server for it, on hyper (the daemon binds it to the configured loopback address).
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
//! | `xlb_interface_attached` (0/1) | gauge | `interface` |
//! | `xlb_vip_serving` (0/1: the node can serve it and is not drained), `xlb_vip_announced` (0/1, as the announcer has it; absent when unknown or nothing announces) | gauge | `vip` |
//! | `xlb_service_packets_total`, `xlb_service_bytes_total`, `xlb_service_affinity_hits_total`, `xlb_service_affinity_misses_total`, `xlb_service_repins_total`, `xlb_service_expiries_total`, `xlb_service_no_backend_total`, `xlb_service_icmp_errors_total` | counter | `service` |
//! | `xlb_service_pinned_clients`, `xlb_service_load_imbalance` (absent without packets), `xlb_service_top_source_share` (0..1), `xlb_service_heavy_source` (0/1) | gauge | `service` |
//! | `xlb_backend_packets_total`, `xlb_backend_bytes_total`, `xlb_backend_pins_total`, `xlb_backend_health_transitions_total` | counter | `service`, `backend` |
//! | `xlb_backend_pinned_clients`, `xlb_backend_table_share` (0..1), `xlb_backend_load_share` (0..1), `xlb_backend_over_bound` (0/1), `xlb_backend_weight`, `xlb_backend_healthy`, `xlb_backend_draining`, `xlb_backend_resolved` (0/1), `xlb_backend_last_check_latency_seconds` (absent until a check ran) | gauge | `service`, `backend` |
//!
//! Service names are expected to be unique (the model enforces it), so label sets are.

use std::{convert::Infallible, fmt, io, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use log::debug;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, text},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};
use tokio::{
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
    /// Per configured interface: whether the program is attached to it now.
    pub attachments: Vec<(String, bool)>,
    /// Per VIP: the announce policy wants it announced, and whether the announcer has it
    /// announced (`None`: unknown, or nothing announces).
    pub vips: Vec<(String, bool, Option<bool>)>,
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
    pub icmp_errors: u64,
    pub pinned_clients: u64,
    /// Largest packet share ÷ weight share of a backend; `None` without packets.
    pub load_imbalance: Option<f64>,
    /// Share of the service's packets of its heaviest source or /24 (/64) prefix (0..1).
    pub top_source_share: f64,
    /// The heavy-source warning is on (a source or prefix above `nat_warn_share`).
    pub heavy_source: bool,
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
    /// Share of the service's packets over the last load interval, 0..1.
    pub load_share: f64,
    /// Over the service's load bound (balance_factor) now.
    pub over_bound: bool,
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

/// The units xlb's families use (a `prometheus_client::registry::Unit` has a destructor,
/// which a constant table cannot hold).
#[derive(Clone, Copy)]
enum Units {
    Bytes,
    Seconds,
}

impl Units {
    fn unit(self) -> Unit {
        match self {
            Units::Bytes => Unit::Bytes,
            Units::Seconds => Unit::Seconds,
        }
    }
}

/// One sample's value: counters and integer gauges print as integers.
#[derive(Clone, Copy)]
enum Num {
    Int(u64),
    Float(f64),
}

/// A family of one sample per service or per backend: name (with the unit suffix when
/// `unit` is set; counters without `_total`), help, type, and the value of one item
/// (`None` leaves its sample out).
struct Family<T> {
    name: &'static str,
    help: &'static str,
    unit: Option<Units>,
    kind: MetricType,
    get: fn(&T) -> Option<Num>,
}

const fn counter<T>(
    name: &'static str,
    help: &'static str,
    get: fn(&T) -> Option<Num>,
) -> Family<T> {
    Family {
        name,
        help,
        unit: None,
        kind: MetricType::Counter,
        get,
    }
}

const fn gauge<T>(name: &'static str, help: &'static str, get: fn(&T) -> Option<Num>) -> Family<T> {
    Family {
        name,
        help,
        unit: None,
        kind: MetricType::Gauge,
        get,
    }
}

fn int(v: u64) -> Option<Num> {
    Some(Num::Int(v))
}

fn flag(v: bool) -> Option<Num> {
    int(u64::from(v))
}

const SERVICE_FAMILIES: &[Family<ServiceSnapshot>] = &[
    counter(
        "xlb_service_packets",
        "Packets forwarded for the service.",
        |x| int(x.packets),
    ),
    Family {
        unit: Some(Units::Bytes),
        ..counter(
            "xlb_service_bytes",
            "Bytes forwarded for the service.",
            |x| int(x.bytes),
        )
    },
    counter(
        "xlb_service_affinity_hits",
        "Packets whose client was already pinned to a usable backend.",
        |x| int(x.hits),
    ),
    counter(
        "xlb_service_affinity_misses",
        "Packets of clients without a pin (a backend was chosen by consistent hashing).",
        |x| int(x.misses),
    ),
    counter(
        "xlb_service_repins",
        "Clients moved off a pinned backend that became unusable.",
        |x| int(x.repins),
    ),
    counter(
        "xlb_service_expiries",
        "Affinity pins that expired after the idle timeout.",
        |x| int(x.expiries),
    ),
    counter(
        "xlb_service_no_backend",
        "Packets that found no usable backend.",
        |x| int(x.no_backend),
    ),
    counter(
        "xlb_service_icmp_errors",
        "ICMP errors about the service's packets (e.g. fragmentation needed) sent on to the client's backend.",
        |x| int(x.icmp_errors),
    ),
    gauge(
        "xlb_service_pinned_clients",
        "Clients whose live affinity entry decides their next packet (stale entries of unusable backends are not counted).",
        |x| int(x.pinned_clients),
    ),
    gauge(
        "xlb_service_load_imbalance",
        "Largest backend packet share divided by its weight share over the last load interval (1 = even; absent without packets).",
        |x| x.load_imbalance.map(Num::Float),
    ),
    gauge(
        "xlb_service_top_source_share",
        "Share of the service's packets carried by its heaviest source or /24 (/64) prefix over the last load interval (0..1).",
        |x| Some(Num::Float(x.top_source_share)),
    ),
    gauge(
        "xlb_service_heavy_source",
        "1 while one source or prefix carries more than nat_warn_share of the service's packets and it has at least 3 healthy backends.",
        |x| flag(x.heavy_source),
    ),
];

const BACKEND_FAMILIES: &[Family<BackendSnapshot>] = &[
    counter(
        "xlb_backend_packets",
        "Packets forwarded to the backend.",
        |b| int(b.packets),
    ),
    Family {
        unit: Some(Units::Bytes),
        ..counter(
            "xlb_backend_bytes",
            "Bytes forwarded to the backend.",
            |b| int(b.bytes),
        )
    },
    counter(
        "xlb_backend_pins",
        "Clients pinned to the backend (new pins and re-pins).",
        |b| int(b.pins),
    ),
    gauge(
        "xlb_backend_pinned_clients",
        "Clients whose live affinity entry points to the backend (0 while it is unusable).",
        |b| int(b.pinned_clients),
    ),
    gauge(
        "xlb_backend_table_share",
        "Share of the service's consistent-hash table held by the backend (0..1).",
        |b| Some(Num::Float(b.table_share)),
    ),
    gauge(
        "xlb_backend_load_share",
        "Share of the service's packets the backend received over the last load interval (0..1).",
        |b| Some(Num::Float(b.load_share)),
    ),
    gauge(
        "xlb_backend_over_bound",
        "1 while the backend carries more than balance_factor times its fair share (new clients avoid it).",
        |b| flag(b.over_bound),
    ),
    gauge(
        "xlb_backend_weight",
        "Configured weight of the backend.",
        |b| int(b.weight.into()),
    ),
    gauge(
        "xlb_backend_healthy",
        "1 if the backend passes its health checks.",
        |b| flag(b.healthy),
    ),
    gauge(
        "xlb_backend_draining",
        "1 if the backend is draining (keeps its pins, takes no new clients).",
        |b| flag(b.draining),
    ),
    gauge(
        "xlb_backend_resolved",
        "1 if the backend's link (MAC, egress interface) is resolved.",
        |b| flag(b.resolved),
    ),
    counter(
        "xlb_backend_health_transitions",
        "Health state changes of the backend (healthy <-> unhealthy).",
        |b| int(b.health_transitions),
    ),
    Family {
        unit: Some(Units::Seconds),
        ..gauge(
            "xlb_backend_last_check_latency_seconds",
            "Duration of the backend's last health check.",
            |b| b.last_check_latency_seconds.map(Num::Float),
        )
    },
];

/// Writes one family: its descriptor, then one sample per (labels, value).
///
/// With a unit, `name` must end in `_<unit>` (the encoder re-appends the unit and writes
/// a `# UNIT` line).
fn write_family<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    samples: impl IntoIterator<Item = (L, Num)>,
) -> fmt::Result {
    let base = match unit {
        Some(u) => name
            .strip_suffix(u.as_str())
            .and_then(|n| n.strip_suffix('_'))
            .unwrap_or(name),
        None => name,
    };
    let mut metric = enc.encode_descriptor(base, help, unit, kind)?;
    for (labels, value) in samples {
        let e = metric.encode_family(&labels)?;
        match (kind, value) {
            (MetricType::Counter, Num::Int(v)) => ConstCounter::new(v).encode(e)?,
            (MetricType::Counter, Num::Float(v)) => ConstCounter::new(v).encode(e)?,
            (_, Num::Int(v)) => ConstGauge::new(v).encode(e)?,
            (_, Num::Float(v)) => ConstGauge::new(v).encode(e)?,
        }
    }
    Ok(())
}

impl SnapshotCollector {
    fn info(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let s = &self.0;
        let program_id = s.program_id.to_string();
        let interfaces = s.interfaces.join(",");
        let info = [
            ("version", s.version.as_str()),
            ("program_id", program_id.as_str()),
            ("attach_mode", s.attach_mode.as_str()),
            ("interfaces", interfaces.as_str()),
        ];
        // Family `xlb`, sample `xlb_info{...} 1`.
        enc.encode_descriptor(
            "xlb",
            "xlb daemon: version, XDP program id, attach mode and interfaces.",
            None,
            MetricType::Info,
        )?
        .encode_info(&info)
    }

    fn globals(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let s = &self.0;
        write_family(
            enc,
            "xlb_packets",
            "Packets seen by the XDP program, by verdict or drop reason.",
            None,
            MetricType::Counter,
            s.packets
                .iter()
                .map(|(reason, v)| ([("reason", reason.as_str())], Num::Int(*v))),
        )?;
        write_family(
            enc,
            "xlb_interface_attached",
            "1 if the XDP program is attached to the configured interface.",
            None,
            MetricType::Gauge,
            s.attachments
                .iter()
                .map(|(name, up)| ([("interface", name.as_str())], Num::Int(u64::from(*up)))),
        )?;
        write_family(
            enc,
            "xlb_vip_serving",
            "1 if this node can serve the VIP (one of its services has a usable backend, the node is not drained, the program is attached).",
            None,
            MetricType::Gauge,
            s.vips
                .iter()
                .map(|(vip, want, _)| ([("vip", vip.as_str())], Num::Int(u64::from(*want)))),
        )?;
        write_family(
            enc,
            "xlb_vip_announced",
            "1 if the announcer ([announce]) announces the VIP, as of its last sync.",
            None,
            MetricType::Gauge,
            s.vips.iter().filter_map(|(vip, _, announced)| {
                announced.map(|a| ([("vip", vip.as_str())], Num::Int(u64::from(a))))
            }),
        )
    }

    fn per_service(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        for f in SERVICE_FAMILIES {
            let samples = self
                .0
                .services
                .iter()
                .filter_map(|svc| (f.get)(svc).map(|v| ([("service", svc.name.as_str())], v)));
            let unit = f.unit.map(Units::unit);
            write_family(enc, f.name, f.help, unit.as_ref(), f.kind, samples)?;
        }
        Ok(())
    }

    fn per_backend(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        for f in BACKEND_FAMILIES {
            let samples = self
                .0
                .services
                .iter()
                .flat_map(|svc| svc.backends.iter().map(move |b| (svc, b)))
                .filter_map(|(svc, b)| {
                    let labels = [
                        ("service", svc.name.as_str()),
                        ("backend", b.address.as_str()),
                    ];
                    (f.get)(b).map(|v| (labels, v))
                });
            let unit = f.unit.map(Units::unit);
            write_family(enc, f.name, f.help, unit.as_ref(), f.kind, samples)?;
        }
        Ok(())
    }
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        self.info(&mut enc)?;
        self.globals(&mut enc)?;
        self.per_service(&mut enc)?;
        self.per_backend(&mut enc)
    }
}

// ---------------------------------------------------------------------------------------
// HTTP server
// ---------------------------------------------------------------------------------------

/// How long a connection may take at each stage; [`Limits::DEFAULT`] in the daemon.
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// Time a client has to send its whole request head, from the connection's start.
    head: Duration,
    /// Time to take a snapshot (the source reads BPF maps on a blocking thread).
    snapshot: Duration,
    /// Time for the whole connection, request to last byte of the response: bounds a
    /// client that reads its response slowly (or not at all).
    connection: Duration,
}

impl Limits {
    const DEFAULT: Limits = Limits {
        head: Duration::from_secs(5),
        snapshot: Duration::from_secs(10),
        connection: Duration::from_secs(25),
    };
}

/// The largest request head accepted (request line and headers); a larger one gets
/// 431 Request Header Fields Too Large.
const MAX_HEAD: usize = 8 * 1024;
/// Connections served at once; further ones wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;

/// Where each scrape's [`Snapshot`] comes from; called on a blocking thread.
pub type Source = Arc<dyn Fn() -> Snapshot + Send + Sync>;

/// Serves `GET /metrics` (and `HEAD`) over HTTP/1.1 on `listener` until the task is
/// dropped; `source` is called (on a blocking thread) once per scrape.
///
/// Each connection carries one request and is then closed (`Connection: close`).
/// Errors of single connections are logged at debug level and never end the server.
pub async fn serve(listener: TcpListener, source: Source) -> io::Result<()> {
    serve_with(listener, source, Limits::DEFAULT).await
}

async fn serve_with(listener: TcpListener, source: Source, limits: Limits) -> io::Result<()> {
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
            match timeout(limits.connection, connection(stream, source, limits)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!("metrics: {peer}: {e}"),
                Err(_) => debug!("metrics: {peer}: connection timed out"),
            }
            drop(slot);
        });
    }
}

/// One connection, through hyper's HTTP/1.1 server: it parses the request (bad ones get
/// its automatic 400 / 431), enforces the head timeout and the size limit, and leaves
/// out the body of `HEAD` responses.
async fn connection(stream: TcpStream, source: Source, limits: Limits) -> hyper::Result<()> {
    let service = service_fn(move |req: Request<Incoming>| {
        let source = source.clone();
        async move { Ok::<_, Infallible>(respond(&req, source, limits.snapshot).await) }
    });
    http1::Builder::new()
        .keep_alive(false)
        .timer(TokioTimer::new())
        .header_read_timeout(limits.head)
        .max_header_size(MAX_HEAD)
        .serve_connection(TokioIo::new(stream), service)
        .await
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    reply(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(body.as_bytes()),
    )
}

fn reply(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Routes one request: `/` says where the metrics are, `/metrics` takes a snapshot;
/// other paths are 404, other methods 405, a target that is no path 400.
async fn respond(
    req: &Request<Incoming>,
    source: Source,
    snapshot_timeout: Duration,
) -> Response<Full<Bytes>> {
    let uri = req.uri();
    // Origin form `/path?query`, or absolute form `http://host[/path]`.
    let path = match uri.path() {
        "" if uri.scheme().is_some() => "/",
        p => p,
    };
    let response = if !path.starts_with('/') {
        text(StatusCode::BAD_REQUEST, "bad request target\n")
    } else if !matches!(path, "/" | "/metrics") {
        text(
            StatusCode::NOT_FOUND,
            "not found; metrics are at /metrics\n",
        )
    } else if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        r
    } else if path == "/metrics" {
        scrape(source, snapshot_timeout).await
    } else {
        text(StatusCode::OK, "xlb metrics exporter: scrape /metrics\n")
    };
    if response.status().as_u16() >= 400 {
        debug!(
            "metrics: answered {} to {} {path}",
            response.status(),
            req.method()
        );
    }
    response
}

/// Takes a snapshot on a blocking thread (it reads BPF maps) and encodes it.
async fn scrape(source: Source, limit: Duration) -> Response<Full<Bytes>> {
    let job = tokio::task::spawn_blocking(move || render(source()));
    match timeout(limit, job).await {
        Ok(Ok(body)) => reply(StatusCode::OK, CONTENT_TYPE, Bytes::from(body)),
        Ok(Err(e)) => {
            debug!("metrics: snapshot failed: {e}");
            text(StatusCode::INTERNAL_SERVER_ERROR, "snapshot failed\n")
        }
        Err(_) => {
            debug!("metrics: snapshot timed out");
            text(StatusCode::SERVICE_UNAVAILABLE, "snapshot timed out\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpSocket,
        time::Instant,
    };

    fn sample() -> Snapshot {
        Snapshot {
            version: "0.1.0".into(),
            program_id: 42,
            attach_mode: "driver".into(),
            interfaces: vec!["eth0".into(), "eth1".into()],
            attachments: vec![("eth0".into(), true), ("eth1".into(), false)],
            vips: vec![
                ("10.0.0.10".into(), true, Some(true)),
                ("10.0.0.11".into(), false, None),
            ],
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
                    icmp_errors: 4,
                    pinned_clients: 5,
                    load_imbalance: Some(1.5),
                    top_source_share: 0.4,
                    heavy_source: true,
                    backends: vec![
                        BackendSnapshot {
                            address: "10.0.1.1:80".into(),
                            weight: 1,
                            packets: 6,
                            bytes: 900,
                            pins: 3,
                            pinned_clients: 3,
                            table_share: 0.5,
                            load_share: 0.75,
                            over_bound: true,
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
            "# TYPE xlb_interface_attached gauge",
            r#"xlb_interface_attached{interface="eth0"} 1"#,
            r#"xlb_interface_attached{interface="eth1"} 0"#,
            "# TYPE xlb_vip_serving gauge",
            r#"xlb_vip_serving{vip="10.0.0.10"} 1"#,
            r#"xlb_vip_serving{vip="10.0.0.11"} 0"#,
            "# TYPE xlb_vip_announced gauge",
            r#"xlb_vip_announced{vip="10.0.0.10"} 1"#,
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
            r#"xlb_service_icmp_errors_total{service="web"} 4"#,
            "# TYPE xlb_service_pinned_clients gauge",
            r#"xlb_service_pinned_clients{service="web"} 5"#,
            r#"xlb_backend_packets_total{service="web",backend="10.0.1.1:80"} 6"#,
            r#"xlb_backend_bytes_total{service="web",backend="10.0.1.1:80"} 900"#,
            r#"xlb_backend_pins_total{service="web",backend="10.0.1.1:80"} 3"#,
            r#"xlb_backend_pinned_clients{service="web",backend="10.0.1.1:80"} 3"#,
            r#"xlb_backend_table_share{service="web",backend="10.0.1.1:80"} 0.5"#,
            r#"xlb_backend_table_share{service="web",backend="10.0.1.2:80"} 0.0"#,
            r#"xlb_service_load_imbalance{service="web"} 1.5"#,
            r#"xlb_service_top_source_share{service="web"} 0.4"#,
            r#"xlb_service_heavy_source{service="web"} 1"#,
            r#"xlb_backend_load_share{service="web",backend="10.0.1.1:80"} 0.75"#,
            r#"xlb_backend_over_bound{service="web",backend="10.0.1.1:80"} 1"#,
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
        // No announced sample for a VIP whose announcement is unknown.
        assert!(!text.contains(r#"xlb_vip_announced{vip="10.0.0.11"}"#));
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
            "xlb_interface_attached",
            "xlb_vip_serving",
            "xlb_vip_announced",
            "xlb_service_packets_total",
            "xlb_service_bytes_total",
            "xlb_service_affinity_hits_total",
            "xlb_service_affinity_misses_total",
            "xlb_service_repins_total",
            "xlb_service_expiries_total",
            "xlb_service_no_backend_total",
            "xlb_service_icmp_errors_total",
            "xlb_service_pinned_clients",
            "xlb_service_load_imbalance",
            "xlb_service_top_source_share",
            "xlb_service_heavy_source",
            "xlb_backend_packets_total",
            "xlb_backend_bytes_total",
            "xlb_backend_pins_total",
            "xlb_backend_pinned_clients",
            "xlb_backend_table_share",
            "xlb_backend_load_share",
            "xlb_backend_over_bound",
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

    /// Request forms the server answers, and heads it refuses (hyper's parser answers
    /// 400 before routing; a method it does not serve is 405 whatever its spelling).
    #[tokio::test]
    async fn metrics_serve_request_forms() {
        let addr = start().await;
        let metrics = encode(&sample());
        let index = "xlb metrics exporter: scrape /metrics\n";
        let good: [(&[u8], &str); 5] = [
            (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", &metrics),
            (b"GET /metrics?a=b HTTP/1.1\n\n", &metrics),
            (b"GET http://h:1/metrics HTTP/1.1\r\n\r\n", &metrics),
            (b"GET http://h:1 HTTP/1.1\r\n\r\n", index),
            (b"GET /?x HTTP/1.1\r\n\r\n", index),
        ];
        for (req, body) in good {
            let (status, _, got) = fetch(addr, req).await;
            let what = String::from_utf8_lossy(req);
            assert_eq!(status, "HTTP/1.1 200 OK", "{what:?}");
            assert_eq!(String::from_utf8(got).unwrap(), body, "{what:?}");
        }
        let bad: [(&[u8], &str); 13] = [
            (b"\x16\x03\x01\x02\x00", "400 Bad Request"),
            (b"garbage\r\n\r\n", "400 Bad Request"),
            (b"GET  /metrics HTTP/1.1\r\n\r\n", "400 Bad Request"),
            (b"GET /metrics\r\n\r\n", "400 Bad Request"),
            (b"GET /metrics FTP/1.1\r\n\r\n", "400 Bad Request"),
            (b"GET /m\xffx HTTP/1.1\r\n\r\n", "400 Bad Request"),
            (
                b"GET /metrics HTTP/1.1\r\nno colon\r\n\r\n",
                "400 Bad Request",
            ),
            (
                b"GET /metrics HTTP/1.1\r\n folded: x\r\n\r\n",
                "400 Bad Request",
            ),
            (
                b"GET /metrics HTTP/1.1\r\n: empty\r\n\r\n",
                "400 Bad Request",
            ),
            (b"PRI * HTTP/2.0\r\n\r\n", "400 Bad Request"),
            (b"GET metrics HTTP/1.1\r\n\r\n", "400 Bad Request"),
            (b"OPTIONS * HTTP/1.1\r\n\r\n", "400 Bad Request"),
            (b"get /metrics HTTP/1.1\r\n\r\n", "405 Method Not Allowed"),
        ];
        for (req, want) in bad {
            let (status, _, _) = fetch(addr, req).await;
            let what = String::from_utf8_lossy(req);
            assert_eq!(status, format!("HTTP/1.1 {want}"), "{what:?}");
        }
    }

    fn short_limits() -> Limits {
        Limits {
            head: Duration::from_millis(300),
            snapshot: Duration::from_secs(2),
            connection: Duration::from_millis(1500),
        }
    }

    async fn start_with(limits: Limits, source: Source) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_with(listener, source, limits));
        addr
    }

    /// Reads until the server closes (or fails, or `limit` passes): (bytes read, when).
    async fn read_until_closed(
        s: &mut (impl AsyncReadExt + Unpin),
        limit: Duration,
    ) -> (usize, Duration) {
        let start = Instant::now();
        let mut n = 0;
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(Ok(got @ 1..)) = timeout(limit, s.read(&mut buf)).await {
            n += got;
        }
        (n, start.elapsed())
    }

    /// A client that connects and sends nothing, and one that sends its head a byte
    /// at a time without ever finishing it, are both closed at the head timeout.
    #[tokio::test]
    async fn metrics_slow_clients_are_cut_off_at_the_head_timeout() {
        let limits = short_limits();
        let addr = start_with(limits, Arc::new(sample)).await;
        let mut idle = TcpStream::connect(addr).await.unwrap();
        let (read, after) = read_until_closed(&mut idle, Duration::from_secs(3)).await;
        assert_eq!(read, 0);
        assert!(
            after >= limits.head && after < limits.head + Duration::from_millis(300),
            "{after:?}"
        );

        let (mut rx, mut tx) = TcpStream::connect(addr).await.unwrap().into_split();
        let drip = tokio::spawn(async move {
            for b in b"GET /metrics HTTP/1.1\r\nX-Slow: "
                .iter()
                .chain([b'a'; 100].iter())
            {
                if tx.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let (read, after) = read_until_closed(&mut rx, Duration::from_secs(3)).await;
        drip.abort();
        assert_eq!(read, 0, "no response to an unfinished head");
        assert!(
            after >= limits.head && after < limits.head + Duration::from_millis(300),
            "{after:?}"
        );
    }

    /// More idle connections than the server serves at once delay a scrape by at most
    /// two head timeouts (the held ones are cut, then the queued ones).
    #[tokio::test]
    async fn metrics_idle_connections_do_not_starve_a_scrape() {
        let limits = short_limits();
        let addr = start_with(limits, Arc::new(sample)).await;
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS + 10 {
            held.push(TcpStream::connect(addr).await.unwrap());
        }
        let start = Instant::now();
        let (status, _, body) = fetch(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        let took = start.elapsed();
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(String::from_utf8(body).unwrap(), encode(&sample()));
        assert!(
            took < 2 * limits.head + Duration::from_millis(500),
            "{took:?}"
        );
        eprintln!("scrape behind {} idle connections: {took:?}", held.len());
    }

    /// A client that requests a large response and never reads it is disconnected when
    /// the connection's time is up, freeing its slot.
    #[tokio::test]
    async fn metrics_a_client_that_does_not_read_is_cut_off() {
        let limits = short_limits();
        let big = Snapshot {
            services: vec![ServiceSnapshot {
                name: "web".into(),
                backends: (0..20_000)
                    .map(|i| BackendSnapshot {
                        address: format!("10.{}.{}.{}:80", i >> 16, (i >> 8) & 255, i & 255),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let size = encode(&big).len();
        let addr = start_with(limits, Arc::new(move || big.clone())).await;
        let sock = TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let mut stalled = sock.connect(addr).await.unwrap();
        stalled
            .write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(limits.connection + Duration::from_millis(300)).await;
        let (read, _) = read_until_closed(&mut stalled, Duration::from_secs(3)).await;
        assert!(
            read < size,
            "read {read} of a {size}-byte body: not cut off"
        );
        eprintln!("stalled client got {read} of {size} bytes");
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

        // hyper answers an HTTP/1.0 client in HTTP/1.0.
        let (status, _, body) = fetch(addr, b"GET / HTTP/1.0\r\n\r\n").await;
        assert_eq!(status, "HTTP/1.0 200 OK");
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
        // A request body the server does not read does not destroy the response.
        let post = format!(
            "POST /metrics HTTP/1.1\r\nContent-Length: 300000\r\n\r\n{}",
            "x".repeat(300_000)
        );
        let (status, _, _) = fetch(addr, post.as_bytes()).await;
        assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
        let big = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_HEAD));
        let (status, _, _) = fetch(addr, big.as_bytes()).await;
        assert_eq!(status, "HTTP/1.1 431 Request Header Fields Too Large");
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        let (status, _, _) = fetch(addr, big.as_bytes()).await;
        assert_eq!(status, "HTTP/1.1 431 Request Header Fields Too Large");
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
