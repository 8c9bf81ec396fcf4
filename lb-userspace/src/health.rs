//! Active health checks: one probe ([`probe`]), rise/fall hysteresis ([`Tracker`]), probe
//! spreading ([`initial_jitter`]) and the per-backend probing loop ([`run_checks`]).
//!
//! How it is meant to be used: the daemon spawns one [`run_checks`] task per (service,
//! backend) and aborts it when the backend or service goes away or its health config
//! changes. Each task owns its [`Tracker`], so a slow or hanging backend costs only its
//! own task: every probe is bounded by the check's `timeout` (connect, request and
//! response together), and tasks never wait for each other.
//!
//! Probes go from the balancer host to the backend's own address (not the VIP) on the
//! check's port:
//! - `tcp`: a connect succeeds; the connection is closed at once (normal FIN).
//! - `http`: `GET path HTTP/1.1` with `Host`, `User-Agent: xlb-health/VERSION` and
//!   `Connection: close`, over hyper's HTTP/1.1 client connection (response heads up to
//!   64 KiB); the status must be in the inclusive `expect_status` range and, if `body`
//!   is set, the body (its first 64 KiB after de-chunking; framed by `Transfer-Encoding:
//!   chunked`, `Content-Length`, or the server closing) must contain it. Interim 1xx
//!   responses are skipped.
//! - `udp`: a connected UDP socket sends the payload (`send`; a zero-length datagram when
//!   not set) and waits for one datagram, of any length, which must contain `expect` if
//!   set: any reply passes, silence until the timeout fails. An ICMP port unreachable
//!   surfaces as `ECONNREFUSED` on the connected socket: "connection refused (ICMP port
//!   unreachable)".
//! - `none`: always ok, immediately.
//!
//! Failure reasons are short and specific ("timeout", "connection refused",
//! "status 503 not in 200-399", "body does not contain \"ok\"", "timeout (no reply)",
//! ...). Every timeout reason starts with "timeout", so callers can classify by prefix.

use std::{
    future::Future,
    hash::{DefaultHasher, Hash, Hasher},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use http_body_util::{BodyExt, Empty};
use hyper::{
    Request, Response,
    body::{Bytes, Incoming},
    client::conn::http1,
    header,
};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpStream, UdpSocket},
    time::{Instant, MissedTickBehavior},
};

use crate::model::{Health, HealthCheck, HealthKind};

/// The most of an HTTP response head, of an HTTP body, or of a UDP reply that is read.
const MAX_READ: usize = 64 * 1024;

/// Outcome of one probe.
#[derive(Clone, Debug, PartialEq)]
pub struct Probe {
    pub ok: bool,
    /// From the start of the probe to its result (about `timeout` for a timeout).
    pub latency: Duration,
    /// "ok" on success, else why it failed.
    pub reason: String,
}

/// Runs one probe of `kind` against `addr` with `timeout` as a hard bound for the whole
/// probe (connect + request + response). `HealthKind::None` is ok immediately.
pub async fn probe(kind: &HealthKind, addr: IpAddr, timeout: Duration) -> Probe {
    let start = Instant::now();
    let deadline = start + timeout;
    let checked = match kind {
        HealthKind::None => {
            return Probe {
                ok: true,
                latency: Duration::ZERO,
                reason: "no check configured".into(),
            };
        }
        HealthKind::Tcp { port } => {
            let target = SocketAddr::new(addr, *port);
            tokio::time::timeout_at(deadline, tcp_probe(target, deadline)).await
        }
        HealthKind::Http {
            port,
            path,
            host,
            expect_status,
            body,
        } => {
            let target = SocketAddr::new(addr, *port);
            let req = HttpCheck {
                path,
                host: host.as_deref(),
                expect_status: *expect_status,
                body: body.as_deref(),
            };
            tokio::time::timeout_at(deadline, http_probe(target, &req, deadline)).await
        }
        HealthKind::Udp { port, send, expect } => {
            let target = SocketAddr::new(addr, *port);
            let check = udp_probe(target, send.as_bytes(), expect.as_deref(), deadline);
            tokio::time::timeout_at(deadline, check).await
        }
    };
    // The inner steps have their own, more specific, timeouts at the same deadline;
    // the outer one is only a backstop.
    let result = checked.unwrap_or_else(|_| Err("timeout".into()));
    let latency = start.elapsed();
    match result {
        Ok(()) => Probe {
            ok: true,
            latency,
            reason: "ok".into(),
        },
        Err(reason) => Probe {
            ok: false,
            latency,
            reason,
        },
    }
}

/// One step of a probe, bounded by the probe's deadline; a timeout reads "timeout" plus
/// `what` (e.g. " (no reply)").
async fn step<T>(
    deadline: Instant,
    what: &str,
    f: impl Future<Output = io::Result<T>>,
) -> Result<T, String> {
    match tokio::time::timeout_at(deadline, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(io_reason(&e)),
        Err(_) => Err(format!("timeout{what}")),
    }
}

/// A short reason for an I/O error.
fn io_reason(e: &io::Error) -> String {
    use io::ErrorKind as K;
    let s = match e.kind() {
        K::ConnectionRefused => "connection refused",
        K::HostUnreachable => "host unreachable",
        K::NetworkUnreachable => "network unreachable",
        K::ConnectionReset => "connection reset",
        K::ConnectionAborted => "connection aborted",
        K::BrokenPipe => "connection closed by the backend (broken pipe)",
        K::TimedOut => "timeout",
        K::AddrNotAvailable => "address not available",
        _ => {
            // "Permission denied (os error 13)" → "permission denied".
            let text = e.to_string();
            let text = match text.find(" (os error ") {
                Some(i) => &text[..i],
                None => &text[..],
            };
            let mut chars = text.chars();
            return match chars.next() {
                Some(c) => c.to_lowercase().chain(chars).collect(),
                None => "I/O error".into(),
            };
        }
    };
    s.into()
}

async fn tcp_probe(target: SocketAddr, deadline: Instant) -> Result<(), String> {
    let stream = step(deadline, "", TcpStream::connect(target)).await?;
    drop(stream);
    Ok(())
}

struct HttpCheck<'a> {
    path: &'a str,
    host: Option<&'a str>,
    expect_status: (u16, u16),
    body: Option<&'a str>,
}

/// The `Host` header value: the configured host, or the backend address (IPv6 in
/// brackets); with `:port` unless the configured host already names a port.
fn host_header(host: Option<&str>, target: SocketAddr) -> String {
    match host {
        Some(h) if has_port(h) => h.to_string(),
        Some(h) => format!("{h}:{}", target.port()),
        // SocketAddr's Display brackets IPv6 addresses.
        None => target.to_string(),
    }
}

/// `example.com:8080` or `[::1]:8080` (but not a bare IPv6 address).
fn has_port(h: &str) -> bool {
    let Some((name, port)) = h.rsplit_once(':') else {
        return false;
    };
    let digits = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
    digits && (name.ends_with(']') || !name.contains(':'))
}

/// What the backend has sent so far, for failure reasons that say how far it got.
#[derive(Default)]
struct Progress {
    /// Bytes read from the connection.
    received: AtomicUsize,
    /// An interim 1xx response was seen (and skipped).
    interim: AtomicBool,
}

/// A TCP stream that counts what it reads into a [`Progress`]. hyper reports a closed
/// connection the same way whether nothing or half a head arrived; the count tells
/// "no response" from "truncated headers".
struct Counted {
    stream: TcpStream,
    progress: Arc<Progress>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.progress.received.fetch_add(n, Ordering::Relaxed);
        polled
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The GET request of a check (`Connection: close`: one request per connection).
fn http_request(
    check: &HttpCheck<'_>,
    target: SocketAddr,
    progress: &Arc<Progress>,
) -> Result<Request<Empty<Bytes>>, String> {
    let mut req = Request::get(check.path)
        .header(header::HOST, host_header(check.host, target))
        .header(
            header::USER_AGENT,
            concat!("xlb-health/", env!("CARGO_PKG_VERSION")),
        )
        .header(header::CONNECTION, "close")
        .header(header::ACCEPT, "*/*")
        .body(Empty::new())
        .map_err(|e| format!("invalid request ({e})"))?;
    let progress = progress.clone();
    hyper::ext::on_informational(&mut req, move |_| {
        progress.interim.store(true, Ordering::Relaxed);
    });
    Ok(req)
}

/// One check over hyper's HTTP/1.1 client connection. Every step (connect, response
/// head, each piece of the body) is bounded by `deadline` and names itself in its
/// timeout reason.
async fn http_probe(
    target: SocketAddr,
    check: &HttpCheck<'_>,
    deadline: Instant,
) -> Result<(), String> {
    let stream = step(deadline, " (connect)", TcpStream::connect(target)).await?;
    let progress = Arc::new(Progress::default());
    let io = TokioIo::new(Counted {
        stream,
        progress: progress.clone(),
    });
    let (mut sender, conn) = http1::Builder::new()
        // Sent as `Host`, `User-Agent`, ... (some servers match header names exactly).
        .title_case_headers(true)
        .max_header_size(MAX_READ)
        .handshake(io)
        .await
        .map_err(|e| head_error(&e, &progress))?;
    let req = http_request(check, target, &progress)?;
    let exchange = async {
        let response = match tokio::time::timeout_at(deadline, sender.send_request(req)).await {
            Ok(r) => r.map_err(|e| head_error(&e, &progress))?,
            Err(_) if progress.received.load(Ordering::Relaxed) == 0 => {
                return Err("timeout (no response)".to_string());
            }
            Err(_) => return Err("timeout (reading headers)".to_string()),
        };
        check_response(response, check, deadline).await
    };
    // The connection does the I/O and must be polled alongside the exchange; once it
    // ends (the response is complete, or it failed and the exchange hears why), the
    // exchange alone decides.
    let conn = async {
        let _ = conn.await;
        std::future::pending::<()>().await
    };
    tokio::select! {
        // The exchange first: it queues the request before the connection polls.
        biased;
        result = exchange => result,
        () = conn => unreachable!("pending forever"),
    }
}

/// Status range, then (when configured) the body substring.
async fn check_response(
    response: Response<Incoming>,
    check: &HttpCheck<'_>,
    deadline: Instant,
) -> Result<(), String> {
    let status = response.status().as_u16();
    let (lo, hi) = check.expect_status;
    if !(lo..=hi).contains(&status) {
        return Err(if lo == hi {
            format!("status {status}, expected {lo}")
        } else {
            format!("status {status} not in {lo}-{hi}")
        });
    }
    match check.body {
        Some(needle) => find_in_body(response.into_body(), needle, deadline).await,
        None => Ok(()),
    }
}

/// Searches the (de-chunked) body for `needle` as it arrives, over its first
/// [`MAX_READ`] bytes; done as soon as the needle is seen, without waiting for the end.
async fn find_in_body(mut body: Incoming, needle: &str, deadline: Instant) -> Result<(), String> {
    let mut seen: Vec<u8> = Vec::new();
    while seen.len() < MAX_READ {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err("timeout (reading body)".into()),
            Ok(None) => break,
            // A body cut short by the backend closing is searched as far as it came.
            Ok(Some(Err(e))) if cut_short(&e) => break,
            // Only chunked bodies have framing inside them that can be malformed.
            Ok(Some(Err(e))) if is_malformed(&e) => {
                return Err("malformed HTTP response (bad chunk)".into());
            }
            Ok(Some(Err(e))) => return Err(hyper_reason(&e)),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        // Search only what is new, plus the overlap a match across pieces needs.
        let from = seen.len().saturating_sub(needle.len().saturating_sub(1));
        let room = MAX_READ - seen.len();
        seen.extend_from_slice(&data[..data.len().min(room)]);
        if contains(&seen[from..], needle.as_bytes()) {
            return Ok(());
        }
    }
    Err(format!("body does not contain {needle:?}"))
}

/// The connection closed before the body's end (as its framing defines it).
fn cut_short(e: &hyper::Error) -> bool {
    e.is_incomplete_message()
        || io_source(e).is_some_and(|io| io.kind() == io::ErrorKind::UnexpectedEof)
}

/// A response that is not valid HTTP/1.x (as opposed to an I/O failure).
fn is_malformed(e: &hyper::Error) -> bool {
    use io::ErrorKind as K;
    e.is_parse()
        || io_source(e).is_some_and(|io| matches!(io.kind(), K::InvalidInput | K::InvalidData))
}

fn io_source(e: &hyper::Error) -> Option<&io::Error> {
    std::error::Error::source(e).and_then(|s| s.downcast_ref::<io::Error>())
}

/// A short reason for a failure before the response head was complete.
fn head_error(e: &hyper::Error, progress: &Progress) -> String {
    if e.is_parse_too_large() {
        return format!(
            "malformed HTTP response (headers over {} KiB)",
            MAX_READ / 1024
        );
    }
    if e.is_parse() {
        return "malformed HTTP response".into();
    }
    if e.is_canceled() {
        // hyper drops a queued request when the backend talks first (an SSH or SMTP
        // banner) or hangs up before the request was written.
        return if progress.received.load(Ordering::Relaxed) > 0 {
            "malformed HTTP response (data before the request)".into()
        } else {
            "connection closed before the request was sent".into()
        };
    }
    if e.is_incomplete_message() {
        return if progress.received.load(Ordering::Relaxed) == 0 {
            "connection closed without a response".into()
        } else if progress.interim.load(Ordering::Relaxed) {
            "malformed HTTP response (only an interim 1xx response)".into()
        } else {
            "malformed HTTP response (truncated headers)".into()
        };
    }
    hyper_reason(e)
}

/// A short reason for any other hyper error: the I/O error's when there is one.
fn hyper_reason(e: &hyper::Error) -> String {
    match io_source(e) {
        Some(io) => io_reason(io),
        None => e.to_string(),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

async fn udp_probe(
    target: SocketAddr,
    payload: &[u8],
    expect: Option<&str>,
    deadline: Instant,
) -> Result<(), String> {
    let local: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let refused = |r: String| {
        if r == "connection refused" {
            "connection refused (ICMP port unreachable)".to_string()
        } else {
            r
        }
    };
    let sock = step(deadline, "", UdpSocket::bind(local)).await?;
    step(deadline, "", sock.connect(target)).await?;
    step(deadline, " (sending)", sock.send(payload))
        .await
        .map_err(refused)?;
    let mut buf = vec![0u8; MAX_READ];
    let n = step(deadline, " (no reply)", sock.recv(&mut buf))
        .await
        .map_err(refused)?;
    match expect {
        Some(e) if !contains(&buf[..n], e.as_bytes()) => {
            Err(format!("reply does not contain {e:?}"))
        }
        _ => Ok(()),
    }
}

/// Rise/fall hysteresis for one backend.
#[derive(Clone, Debug)]
pub struct Tracker {
    rise: u32,
    fall: u32,
    state: Health,
    /// Consecutive successes (0 after a failure).
    oks: u32,
    /// Consecutive failures (0 after a success).
    fails: u32,
    transitions: u64,
    last: Option<Probe>,
}

impl Tracker {
    /// `rise` and `fall` of 0 count as 1.
    pub fn new(rise: u32, fall: u32, initially_healthy: bool) -> Self {
        let state = if initially_healthy {
            Health::Up
        } else {
            Health::Down
        };
        Self::starting(rise, fall, state)
    }

    /// A tracker starting in `state`. From Unknown one passed check makes the backend
    /// healthy (issue 10: `health.initial = "checked"` means one pass, not `rise`), and
    /// `fall` failures in a row unhealthy; learning the first state is not counted as a
    /// transition.
    pub fn starting(rise: u32, fall: u32, state: Health) -> Self {
        Self {
            rise: rise.max(1),
            fall: fall.max(1),
            state,
            oks: 0,
            fails: 0,
            transitions: 0,
            last: None,
        }
    }

    /// Feeds a result; returns `Some(new_state)` when the state flips (healthy →
    /// unhealthy after `fall` failures in a row, unhealthy → healthy after `rise`
    /// successes in a row, unknown → either as [`Tracker::starting`] says).
    pub fn record(&mut self, p: &Probe) -> Option<bool> {
        self.last = Some(p.clone());
        if p.ok {
            self.fails = 0;
            self.oks = self.oks.saturating_add(1);
        } else {
            self.oks = 0;
            self.fails = self.fails.saturating_add(1);
        }
        let next = match self.state {
            Health::Up if self.fails >= self.fall => Health::Down,
            Health::Down if self.oks >= self.rise => Health::Up,
            Health::Unknown if p.ok => Health::Up,
            Health::Unknown if self.fails >= self.fall => Health::Down,
            _ => return None,
        };
        if self.state != Health::Unknown {
            self.transitions += 1;
        }
        self.state = next;
        Some(next == Health::Up)
    }

    /// The current state.
    pub fn state(&self) -> Health {
        self.state
    }

    pub fn healthy(&self) -> bool {
        self.state == Health::Up
    }

    /// State changes so far (not counting the initial state).
    pub fn transitions(&self) -> u64 {
        self.transitions
    }

    /// The latest probe result.
    pub fn last(&self) -> Option<&Probe> {
        self.last.as_ref()
    }

    /// At least one probe was recorded.
    pub fn checked(&self) -> bool {
        self.last.is_some()
    }

    /// Current run of identical results: (successes in a row, failures in a row); one
    /// of them is 0.
    pub fn streak(&self) -> (u32, u32) {
        (self.oks, self.fails)
    }

    pub fn rise(&self) -> u32 {
        self.rise
    }

    pub fn fall(&self) -> u32 {
        self.fall
    }
}

/// A per-process seed: the same (service, backend) gets the same offset for the life of
/// the daemon, but two balancer nodes (or restarts) do not probe in lockstep.
fn process_seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let mut h = DefaultHasher::new();
        (nanos, std::process::id()).hash(&mut h);
        h.finish()
    })
}

/// First-probe delay in `[0, interval)`: spreads probes of many backends over the
/// interval, deterministic per (service, backend) with some per-process variation.
pub fn initial_jitter(service: &str, addr: IpAddr, interval: Duration) -> Duration {
    let span = interval.as_nanos();
    if span == 0 {
        return Duration::ZERO;
    }
    let mut h = DefaultHasher::new();
    (process_seed(), service, addr).hash(&mut h);
    let offset = u128::from(h.finish()) % span;
    // offset < interval, which fits a Duration.
    Duration::from_nanos(u64::try_from(offset).unwrap_or(u64::MAX))
}

/// The probing loop for one backend: sleeps the jitter, then every `interval` runs
/// [`probe`] (bounded by `timeout`), feeds the tracker, and calls
/// `on_result(&probe, transition, &tracker)` after every probe. Runs until the returned
/// future is dropped or its task aborted.
///
/// Intervals are measured start to start (`MissedTickBehavior::Delay`): a slow probe
/// delays the next one by at most its own overrun, and later ones keep the period.
///
/// With `HealthKind::None` there is nothing to probe: `on_result` is called once (ok;
/// a transition to healthy unless `initial` was already Up) and the future then
/// stays pending, never calling it again.
pub async fn run_checks(
    service: String,
    addr: IpAddr,
    cfg: HealthCheck,
    initial: Health,
    mut on_result: impl FnMut(&Probe, Option<bool>, &Tracker) + Send,
) {
    if cfg.kind == HealthKind::None {
        let mut tracker = Tracker::starting(1, 1, initial);
        let p = probe(&cfg.kind, addr, cfg.timeout).await;
        let flip = tracker.record(&p);
        on_result(&p, flip, &tracker);
        return std::future::pending().await;
    }
    // tokio's interval panics on a zero period (config validation forbids it anyway).
    let period = cfg.interval.max(Duration::from_millis(1));
    tokio::time::sleep(initial_jitter(&service, addr, period)).await;
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut tracker = Tracker::starting(cfg.rise, cfg.fall, initial);
    loop {
        ticks.tick().await;
        let p = probe(&cfg.kind, addr, cfg.timeout).await;
        let flip = tracker.record(&p);
        on_result(&p, flip, &tracker);
    }
}

/// The one log line for a health transition, e.g.
/// `service web: backend 10.0.1.1 is now unhealthy: timeout (3 failed checks in a row, last took 500ms)`.
pub fn transition_message(service: &str, addr: IpAddr, p: &Probe, t: &Tracker) -> String {
    let (oks, fails) = t.streak();
    let (state, run) = if t.healthy() {
        ("healthy", format!("{oks} passed checks in a row"))
    } else {
        ("unhealthy", format!("{fails} failed checks in a row"))
    };
    format!(
        "service {service}: backend {addr} is now {state}: {} ({run}, last took {:?})",
        p.reason, p.latency
    )
}

/// Logs [`transition_message`]: at `warn` when the backend went down, `info` when up.
pub fn log_transition(service: &str, addr: IpAddr, p: &Probe, t: &Tracker) {
    let msg = transition_message(service, addr, p, t);
    if t.healthy() {
        log::info!("{msg}");
    } else {
        log::warn!("{msg}");
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::Ipv4Addr,
        sync::{Arc, Mutex},
    };

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpSocket},
        sync::mpsc,
    };

    use super::*;

    const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn tcp(port: u16) -> HealthKind {
        HealthKind::Tcp { port }
    }

    fn http(port: u16, expect: (u16, u16), body: Option<&str>) -> HealthKind {
        HealthKind::Http {
            port,
            path: "/healthz".into(),
            host: None,
            expect_status: expect,
            body: body.map(Into::into),
        }
    }

    fn udp(port: u16, send: &str, expect: Option<&str>) -> HealthKind {
        HealthKind::Udp {
            port,
            send: send.into(),
            expect: expect.map(Into::into),
        }
    }

    fn probe_result(ok: bool) -> Probe {
        Probe {
            ok,
            latency: Duration::from_millis(1),
            reason: if ok { "ok" } else { "timeout" }.into(),
        }
    }

    /// A port with nothing listening (bound, then released).
    async fn closed_tcp_port() -> u16 {
        let l = TcpListener::bind((LO, 0)).await.unwrap();
        l.local_addr().unwrap().port()
    }

    /// Reads a request head; `None` if the client closed first.
    async fn read_request(s: &mut TcpStream) -> Option<String> {
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while find(&req, b"\r\n\r\n").is_none() {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => req.extend_from_slice(&buf[..n]),
            }
        }
        Some(String::from_utf8_lossy(&req).into_owned())
    }

    /// An HTTP server answering every request with `response`; sends each request it
    /// read on the returned channel.
    async fn http_server(response: &'static [u8]) -> (u16, mpsc::UnboundedReceiver<String>) {
        let l = TcpListener::bind((LO, 0)).await.unwrap();
        let port = l.local_addr().unwrap().port();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let Some(req) = read_request(&mut s).await else {
                        return;
                    };
                    let _ = tx.send(req);
                    let _ = s.write_all(response).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        (port, rx)
    }

    /// Accepts connections and keeps them open without ever answering.
    async fn hanging_server() -> u16 {
        let l = TcpListener::bind((LO, 0)).await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        port
    }

    async fn probe_http(resp: &'static [u8], expect: (u16, u16), body: Option<&str>) -> Probe {
        let (port, _rx) = http_server(resp).await;
        probe(&http(port, expect, body), LO, Duration::from_secs(2)).await
    }

    #[tokio::test]
    async fn none_is_ok_immediately() {
        let p = probe(&HealthKind::None, LO, Duration::from_secs(1)).await;
        assert_eq!(
            p,
            Probe {
                ok: true,
                latency: Duration::ZERO,
                reason: "no check configured".into()
            }
        );
    }

    #[tokio::test]
    async fn tcp_ok_against_a_listener() {
        let l = TcpListener::bind((LO, 0)).await.unwrap();
        let port = l.local_addr().unwrap().port();
        let p = probe(&tcp(port), LO, Duration::from_secs(1)).await;
        assert!(p.ok, "{p:?}");
        assert_eq!(p.reason, "ok");
        assert!(p.latency < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn tcp_refused_on_a_closed_port() {
        let port = closed_tcp_port().await;
        let p = probe(&tcp(port), LO, Duration::from_secs(1)).await;
        assert!(!p.ok);
        assert_eq!(p.reason, "connection refused");
    }

    /// A listener whose accept queue is full drops SYNs: the connect hangs.
    #[tokio::test]
    async fn tcp_timeout_on_a_full_accept_queue() {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind((LO, 0).into()).unwrap();
        let l = sock.listen(0).unwrap();
        let target = l.local_addr().unwrap();
        // Fill the queue (never accepted) until a connect no longer completes.
        let mut held = Vec::new();
        for _ in 0..16 {
            match tokio::time::timeout(Duration::from_millis(100), TcpStream::connect(target)).await
            {
                Ok(Ok(s)) => held.push(s),
                _ => break,
            }
        }
        let timeout = Duration::from_millis(200);
        let p = probe(&tcp(target.port()), LO, timeout).await;
        assert!(!p.ok, "{p:?} ({} queued)", held.len());
        assert_eq!(p.reason, "timeout");
        assert!(p.latency >= timeout && p.latency < timeout + Duration::from_millis(100));
        eprintln!("tcp timeout: {:?} for timeout {timeout:?}", p.latency);
    }

    #[tokio::test]
    async fn http_200_is_ok_and_the_request_is_well_formed() {
        let (port, mut rx) = http_server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
        let p = probe(&http(port, (200, 399), None), LO, Duration::from_secs(2)).await;
        assert!(p.ok, "{p:?}");
        let req = rx.recv().await.unwrap();
        assert_eq!(
            req,
            format!(
                "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: xlb-health/{}\r\n\
                 Connection: close\r\nAccept: */*\r\n\r\n",
                env!("CARGO_PKG_VERSION")
            )
        );
    }

    #[tokio::test]
    async fn http_configured_host_header() {
        let (port, mut rx) = http_server(b"HTTP/1.0 204 No Content\r\n\r\n").await;
        let kind = HealthKind::Http {
            port,
            path: "/".into(),
            host: Some("web.example".into()),
            expect_status: (200, 299),
            body: None,
        };
        let p = probe(&kind, LO, Duration::from_secs(2)).await;
        assert!(p.ok, "{p:?}");
        let req = rx.recv().await.unwrap();
        assert!(req.starts_with("GET / HTTP/1.1\r\n"), "{req}");
        assert!(
            req.contains(&format!("\r\nHost: web.example:{port}\r\n")),
            "{req}"
        );
    }

    #[tokio::test]
    async fn http_over_ipv6_loopback() {
        let Ok(l) = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).await else {
            eprintln!("no ::1 here; skipped");
            return;
        };
        let port = l.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while find(&req, b"\r\n\r\n").is_none() {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0);
                req.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
            String::from_utf8(req).unwrap()
        });
        let p = probe(
            &http(port, (200, 200), None),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            Duration::from_secs(2),
        )
        .await;
        assert!(p.ok, "{p:?}");
        let req = server.await.unwrap();
        assert!(
            req.contains(&format!("\r\nHost: [::1]:{port}\r\n")),
            "{req}"
        );
    }

    #[tokio::test]
    async fn http_503_is_not_ok() {
        let p = probe_http(
            b"HTTP/1.1 503 Service Unavailable\r\n\r\n",
            (200, 399),
            None,
        )
        .await;
        assert!(!p.ok);
        assert_eq!(p.reason, "status 503 not in 200-399");
    }

    #[tokio::test]
    async fn http_status_range_edges() {
        type Case = (&'static [u8], (u16, u16), bool, &'static str);
        let cases: &[Case] = &[
            (b"HTTP/1.1 200 OK\r\n\r\n", (200, 399), true, "ok"),
            (b"HTTP/1.1 399 X\r\n\r\n", (200, 399), true, "ok"),
            (
                b"HTTP/1.1 400 Bad\r\n\r\n",
                (200, 399),
                false,
                "status 400 not in 200-399",
            ),
            (
                b"HTTP/1.1 600 X\r\n\r\n",
                (200, 399),
                false,
                "status 600 not in 200-399",
            ),
            (
                b"HTTP/1.1 101 Switching\r\n\r\n",
                (200, 399),
                false,
                "status 101 not in 200-399",
            ),
            (
                b"HTTP/1.1 199 X\r\n\r\n",
                (200, 399),
                false,
                "malformed HTTP response (only an interim 1xx response)",
            ),
            (b"HTTP/1.1 200 OK\r\n\r\n", (200, 200), true, "ok"),
            (
                b"HTTP/1.1 204 No\r\n\r\n",
                (200, 200),
                false,
                "status 204, expected 200",
            ),
            (b"HTTP/1.1 404\r\n\r\n", (404, 404), true, "ok"),
            // An interim response is skipped.
            (
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 302 Found\r\n\r\n",
                (200, 399),
                true,
                "ok",
            ),
        ];
        for (resp, expect, ok, reason) in cases {
            let p = probe_http(resp, *expect, None).await;
            assert_eq!(
                (p.ok, p.reason.as_str()),
                (*ok, *reason),
                "{resp:?} {expect:?}"
            );
        }
    }

    #[tokio::test]
    async fn http_body_substring() {
        let cases: &[(&'static [u8], &str, bool)] = &[
            // Content-Length.
            (b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nstatus: ok\r\n", "ok", true),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\nstatus: down\r\n", "ok", false),
            // Bytes beyond Content-Length are not body.
            (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnopeok", "ok", false),
            // Close-delimited.
            (b"HTTP/1.0 200 OK\r\n\r\nall good", "good", true),
            (b"HTTP/1.0 200 OK\r\n\r\nall bad", "good", false),
            // Chunked: the substring spans two chunks; chunk sizes are not body.
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhea\r\n4;x=y\r\nlthy\r\n0\r\n\r\n", "healthy", true),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", "3", false),
            // No body at all.
            (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "ok", false),
        ];
        for (resp, needle, ok) in cases {
            let p = probe_http(resp, (200, 399), Some(needle)).await;
            assert_eq!(p.ok, *ok, "{:?}: {p:?}", String::from_utf8_lossy(resp));
            if !ok {
                assert_eq!(p.reason, format!("body does not contain {needle:?}"));
            }
        }
        // A wrong status is reported before the body.
        let p = probe_http(b"HTTP/1.1 500 X\r\n\r\nok", (200, 399), Some("ok")).await;
        assert_eq!(p.reason, "status 500 not in 200-399");
    }

    /// A body that never ends (Connection: close ignored) is done as soon as the
    /// substring is seen, and otherwise bounded by the timeout.
    #[tokio::test]
    async fn http_body_found_before_the_server_closes() {
        let l = TcpListener::bind((LO, 0)).await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut s, _)) = l.accept().await {
                let _ = read_request(&mut s).await;
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\nready").await;
                held.push(s);
            }
        });
        let timeout = Duration::from_millis(300);
        let p = probe(&http(port, (200, 299), Some("ready")), LO, timeout).await;
        assert!(p.ok, "{p:?}");
        assert!(p.latency < Duration::from_millis(100), "{p:?}");
        let p = probe(&http(port, (200, 299), Some("missing")), LO, timeout).await;
        assert_eq!(p.reason, "timeout (reading body)");
    }

    #[tokio::test]
    async fn http_hanging_backend_times_out() {
        let port = hanging_server().await;
        let timeout = Duration::from_millis(300);
        let p = probe(&http(port, (200, 399), None), LO, timeout).await;
        assert!(!p.ok);
        assert_eq!(p.reason, "timeout (no response)");
        assert!(p.latency >= timeout, "{p:?}");
        assert!(p.latency < timeout + Duration::from_millis(100), "{p:?}");
        eprintln!("http hanging: {:?} for timeout {timeout:?}", p.latency);
    }

    #[tokio::test]
    async fn http_malformed_responses() {
        let cases: &[(&'static [u8], &str)] = &[
            (b"SSH-2.0-OpenSSH_9.2\r\n", "malformed HTTP response"),
            (b"HTTP/2 200\r\n\r\n", "malformed HTTP response"),
            (b"HTTP/1.1 20 OK\r\n\r\n", "malformed HTTP response"),
            (b"HTTP/1.1 200OK\r\n\r\n", "malformed HTTP response"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Le",
                "malformed HTTP response (truncated headers)",
            ),
            (b"", "connection closed without a response"),
        ];
        for (resp, reason) in cases {
            let p = probe_http(resp, (200, 399), None).await;
            assert!(!p.ok);
            assert_eq!(p.reason, *reason, "{resp:?}");
        }
        let p = probe_http(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            (200, 399),
            Some("x"),
        )
        .await;
        assert_eq!(p.reason, "malformed HTTP response (bad chunk)");
    }

    /// Answers every request with `response`, written in `piece`-byte writes `gap` apart.
    async fn trickle_server(response: Vec<u8>, piece: usize, gap: Duration) -> u16 {
        let l = TcpListener::bind((LO, 0)).await.unwrap();
        let port = l.local_addr().unwrap().port();
        let response: Arc<[u8]> = response.into();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let response = response.clone();
                tokio::spawn(async move {
                    read_request(&mut s).await?;
                    for part in response.chunks(piece) {
                        s.write_all(part).await.ok()?;
                        tokio::time::sleep(gap).await;
                    }
                    s.shutdown().await.ok()
                });
            }
        });
        port
    }

    /// A head that arrives slowly is still read, within the timeout; one that is not
    /// complete by the timeout fails as a timeout that says the headers were arriving.
    #[tokio::test]
    async fn http_slow_headers() {
        let head =
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Padding: abcdefgh\r\n\r\nok".to_vec();
        // 61 bytes, 4 at a time, 10 ms apart: the head takes ≈150 ms.
        let port = trickle_server(head.clone(), 4, Duration::from_millis(10)).await;
        let p = probe(
            &http(port, (200, 299), Some("ok")),
            LO,
            Duration::from_secs(2),
        )
        .await;
        assert!(p.ok, "{p:?}");
        assert!(p.latency >= Duration::from_millis(100), "{p:?}");

        // 4 bytes every 100 ms: the head needs ≈1.5 s, the timeout is 300 ms.
        let port = trickle_server(head, 4, Duration::from_millis(100)).await;
        let timeout = Duration::from_millis(300);
        let p = probe(&http(port, (200, 299), None), LO, timeout).await;
        assert_eq!(
            (p.ok, p.reason.as_str()),
            (false, "timeout (reading headers)")
        );
        assert!(p.latency >= timeout && p.latency < timeout + Duration::from_millis(100));
    }

    /// Only the first 64 KiB of a body are searched, however it is framed.
    #[tokio::test]
    async fn http_body_search_stops_at_64_kib() {
        let body = |needle_at: usize| {
            let mut b = vec![b'.'; needle_at];
            b.extend_from_slice(b"READY");
            b.extend_from_slice(&[b'.'; 100]);
            b
        };
        // The body as a response framed by Content-Length, chunks, or the close.
        let frame = |framing: &str, b: Vec<u8>| {
            let mut r = match framing {
                "content-length" => {
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", b.len())
                }
                "chunked" => "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
                _ => "HTTP/1.1 200 OK\r\n\r\n".into(),
            }
            .into_bytes();
            if framing != "chunked" {
                r.extend_from_slice(&b);
                return r;
            }
            for c in b.chunks(1000) {
                r.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                r.extend_from_slice(c);
                r.extend_from_slice(b"\r\n");
            }
            r.extend_from_slice(b"0\r\n\r\n");
            r
        };
        for framing in ["content-length", "chunked", "close"] {
            // The needle ends at byte 64 KiB: found. It starts at 64 KiB: not found.
            for (needle_at, found) in [(MAX_READ - 5, true), (MAX_READ, false), (200_000, false)] {
                let resp: &'static [u8] = frame(framing, body(needle_at)).leak();
                let p = probe_http(resp, (200, 299), Some("READY")).await;
                assert_eq!(p.ok, found, "{framing}, needle at {needle_at}: {p:?}");
                if !found {
                    assert_eq!(p.reason, "body does not contain \"READY\"");
                }
            }
        }
    }

    /// Interim responses (100, 103 with headers) before the final one are skipped; the
    /// final response's status and body decide.
    #[tokio::test]
    async fn http_interim_responses_then_the_final_one() {
        let interim =
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n";
        let ok: &'static [u8] =
            format!("{interim}HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nhealthy")
                .leak()
                .as_bytes();
        let p = probe_http(ok, (200, 200), Some("healthy")).await;
        assert!(p.ok, "{p:?}");
        let down: &'static [u8] =
            format!("{interim}HTTP/1.1 503 Unavailable\r\nContent-Length: 0\r\n\r\n")
                .leak()
                .as_bytes();
        let p = probe_http(down, (200, 399), None).await;
        assert_eq!(p.reason, "status 503 not in 200-399");
        // The status check looks at the final response, not at the interim ones.
        let p = probe_http(ok, (100, 199), None).await;
        assert_eq!(p.reason, "status 200 not in 100-199");
    }

    /// Framing details: header names in any case, bare LF line ends, chunked winning
    /// over Content-Length, and a body cut short searched as far as it came.
    #[tokio::test]
    async fn http_framing_variants() {
        let cases: &[(&'static [u8], &str, bool)] = &[
            (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhelloXX", "hello", true),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhelloXX", "XX", false),
            (b"HTTP/1.1 200 OK\nContent-Length: 4\n\nbody", "body", true),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                "abc",
                true,
            ),
            // Content-Length promises more than arrives, and the server closes.
            (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nhealthy", "healthy", true),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nhealthy", "sick", false),
            // A chunk cut short.
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nheal", "hea", true),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nheal", "healthy", false),
        ];
        for (resp, needle, ok) in cases {
            let p = probe_http(resp, (200, 399), Some(needle)).await;
            assert_eq!(p.ok, *ok, "{:?}: {p:?}", String::from_utf8_lossy(resp));
            if !ok {
                assert_eq!(p.reason, format!("body does not contain {needle:?}"));
            }
        }
    }

    /// A backend that speaks first (an SSH banner: the check points at the wrong port)
    /// is not HTTP.
    #[tokio::test]
    async fn http_banner_before_the_request() {
        let l = TcpListener::bind((LO, 0)).await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut s, _)) = l.accept().await {
                let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await;
                held.push(s);
            }
        });
        let p = probe(&http(port, (200, 399), None), LO, Duration::from_secs(1)).await;
        assert!(!p.ok);
        assert!(p.reason.starts_with("malformed HTTP response"), "{p:?}");
    }

    #[tokio::test]
    async fn http_refused() {
        let port = closed_tcp_port().await;
        let p = probe(&http(port, (200, 399), None), LO, Duration::from_secs(1)).await;
        assert_eq!(p.reason, "connection refused");
    }

    #[test]
    fn http_host_header_rules() {
        let v4: SocketAddr = "10.0.0.1:8080".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:80".parse().unwrap();
        assert_eq!(host_header(None, v4), "10.0.0.1:8080");
        assert_eq!(host_header(None, v6), "[2001:db8::1]:80");
        assert_eq!(host_header(Some("a.example"), v4), "a.example:8080");
        assert_eq!(host_header(Some("a.example:9"), v4), "a.example:9");
        assert_eq!(host_header(Some("[::1]:9"), v4), "[::1]:9");
        assert_eq!(host_header(Some("[::1]"), v4), "[::1]:8080");
    }

    #[test]
    fn io_reasons_are_short() {
        use io::{Error, ErrorKind as K};
        assert_eq!(
            io_reason(&Error::from(K::ConnectionRefused)),
            "connection refused"
        );
        assert_eq!(
            io_reason(&Error::from(K::NetworkUnreachable)),
            "network unreachable"
        );
        assert_eq!(
            io_reason(&Error::from(K::HostUnreachable)),
            "host unreachable"
        );
        assert_eq!(
            io_reason(&Error::from_raw_os_error(libc::EACCES)),
            "permission denied"
        );
    }

    /// Replies to every datagram with `reply` (or echoes it when `None`).
    async fn udp_server(reply: Option<&'static [u8]>) -> u16 {
        let s = UdpSocket::bind((LO, 0)).await.unwrap();
        let port = s.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = s.recv_from(&mut buf).await {
                let _ = s.send_to(reply.unwrap_or(&buf[..n]), from).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn udp_echo_ok() {
        let port = udp_server(None).await;
        let p = probe(&udp(port, "ping", Some("ping")), LO, Duration::from_secs(1)).await;
        assert!(p.ok, "{p:?}");
        let p = probe(&udp(port, "ping", None), LO, Duration::from_secs(1)).await;
        assert!(p.ok, "{p:?}");
    }

    /// Issue 10, fault 9: a UDP check without `send` sends an empty datagram; any reply
    /// passes, an ICMP port unreachable fails.
    #[tokio::test]
    async fn udp_default_empty_payload() {
        let send = match HealthKind::default_for(crate::model::CheckKind::Udp, 1) {
            HealthKind::Udp { send, .. } => send,
            other => panic!("{other:?}"),
        };
        assert_eq!(send, "");
        let port = udp_server(Some(b"anything")).await;
        let p = probe(&udp(port, &send, None), LO, Duration::from_secs(1)).await;
        assert!(p.ok, "{p:?}");
        let closed = {
            let s = UdpSocket::bind((LO, 0)).await.unwrap();
            s.local_addr().unwrap().port()
        };
        let p = probe(&udp(closed, &send, None), LO, Duration::from_secs(1)).await;
        assert!(!p.ok && p.reason.contains("refused"), "{p:?}");
    }

    /// Issue 10, fault 4: from Unknown one passed check is enough ("checked" is one
    /// pass, not `rise`), and learning the first state is no transition.
    #[test]
    fn tracker_from_unknown_needs_one_pass() {
        let mut t = Tracker::starting(3, 2, Health::Unknown);
        assert_eq!(t.record(&probe_result(true)), Some(true));
        assert_eq!((t.state(), t.transitions()), (Health::Up, 0));
        let mut t = Tracker::starting(3, 2, Health::Unknown);
        assert_eq!(t.record(&probe_result(false)), None);
        assert_eq!(t.state(), Health::Unknown);
        assert_eq!(t.record(&probe_result(false)), Some(false));
        assert_eq!(t.state(), Health::Down);
        assert_eq!(
            t.record(&probe_result(true)),
            None,
            "down needs rise passes"
        );
    }

    #[tokio::test]
    async fn udp_expect_mismatch() {
        let port = udp_server(Some(b"PONG nope")).await;
        let p = probe(&udp(port, "ping", Some("pong")), LO, Duration::from_secs(1)).await;
        assert!(!p.ok);
        assert_eq!(p.reason, "reply does not contain \"pong\"");
        let p = probe(&udp(port, "ping", Some("PONG")), LO, Duration::from_secs(1)).await;
        assert!(p.ok, "{p:?}");
    }

    #[tokio::test]
    async fn udp_closed_port_is_refused() {
        let port = {
            let s = UdpSocket::bind((LO, 0)).await.unwrap();
            s.local_addr().unwrap().port()
        };
        let p = probe(&udp(port, "ping", None), LO, Duration::from_secs(1)).await;
        assert!(!p.ok);
        assert_eq!(p.reason, "connection refused (ICMP port unreachable)");
        assert!(p.latency < Duration::from_millis(500), "{p:?}");
    }

    /// An empty `send` (the default for UDP checks, as in keepalived) sends one
    /// zero-length datagram; any reply, even an empty one, passes.
    #[tokio::test]
    async fn udp_empty_payload() {
        let s = UdpSocket::bind((LO, 0)).await.unwrap();
        let port = s.local_addr().unwrap().port();
        let (tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            // Replies "pong" to the first datagram, an empty datagram afterwards.
            let mut reply: &[u8] = b"pong";
            while let Ok((n, from)) = s.recv_from(&mut buf).await {
                let _ = tx.send(n);
                let _ = s.send_to(reply, from).await;
                reply = b"";
            }
        });
        let p = probe(&udp(port, "", None), LO, Duration::from_secs(1)).await;
        assert!(p.ok, "{p:?}");
        assert_eq!(rx.recv().await, Some(0), "a zero-length datagram was sent");
        let p = probe(&udp(port, "", None), LO, Duration::from_secs(1)).await;
        assert!(p.ok, "an empty reply passes too: {p:?}");
        assert_eq!(rx.recv().await, Some(0));

        // A closed port: ICMP port unreachable, at once.
        let closed = {
            let s = UdpSocket::bind((LO, 0)).await.unwrap();
            s.local_addr().unwrap().port()
        };
        let p = probe(&udp(closed, "", None), LO, Duration::from_secs(1)).await;
        assert_eq!(p.reason, "connection refused (ICMP port unreachable)");
        assert!(p.latency < Duration::from_millis(500), "{p:?}");

        // A silent server: a timeout.
        let silent = UdpSocket::bind((LO, 0)).await.unwrap();
        let timeout = Duration::from_millis(200);
        let p = probe(
            &udp(silent.local_addr().unwrap().port(), "", None),
            LO,
            timeout,
        )
        .await;
        assert_eq!(p.reason, "timeout (no reply)");
    }

    #[tokio::test]
    async fn udp_silent_server_times_out() {
        let s = UdpSocket::bind((LO, 0)).await.unwrap();
        let port = s.local_addr().unwrap().port();
        let timeout = Duration::from_millis(200);
        let p = probe(&udp(port, "ping", None), LO, timeout).await;
        drop(s);
        assert!(!p.ok);
        assert_eq!(p.reason, "timeout (no reply)");
        assert!(p.latency >= timeout && p.latency < timeout + Duration::from_millis(100));
        eprintln!("udp silent: {:?} for timeout {timeout:?}", p.latency);
    }

    fn feed(t: &mut Tracker, seq: &[bool]) -> Vec<Option<bool>> {
        seq.iter().map(|&ok| t.record(&probe_result(ok))).collect()
    }

    #[test]
    fn tracker_fall_needs_consecutive_failures() {
        let mut t = Tracker::new(2, 3, true);
        assert!(!t.checked());
        assert!(t.last().is_none());
        let flips = feed(&mut t, &[true, false, false, true, false, false, false]);
        assert_eq!(flips, [None, None, None, None, None, None, Some(false)]);
        assert!(!t.healthy());
        assert_eq!(t.transitions(), 1);
        assert!(t.checked());
        assert_eq!(t.last(), Some(&probe_result(false)));
        // More failures do not flip again.
        assert_eq!(feed(&mut t, &[false, false]), [None, None]);
        assert_eq!(t.transitions(), 1);
    }

    #[test]
    fn tracker_rise_recovers() {
        let mut t = Tracker::new(2, 3, false);
        assert!(!t.healthy());
        let flips = feed(&mut t, &[true, false, true, true, true]);
        assert_eq!(flips, [None, None, None, Some(true), None]);
        assert!(t.healthy());
        assert_eq!(t.transitions(), 1);
        let flips = feed(&mut t, &[false, false, false, true, true]);
        assert_eq!(flips, [None, None, Some(false), None, Some(true)]);
        assert_eq!(t.transitions(), 3);
    }

    #[test]
    fn tracker_initial_state_is_honoured() {
        let mut up = Tracker::new(2, 2, true);
        assert_eq!(up.record(&probe_result(true)), None);
        assert!(up.healthy());
        let mut down = Tracker::new(2, 2, false);
        assert_eq!(down.record(&probe_result(false)), None);
        assert!(!down.healthy());
        // rise = fall = 1 (and 0 counts as 1): every change flips at once.
        let mut t = Tracker::new(0, 1, true);
        assert_eq!(
            feed(&mut t, &[false, true, false]),
            [Some(false), Some(true), Some(false)]
        );
        assert_eq!(t.transitions(), 3);
    }

    #[test]
    fn tracker_flapping_is_damped() {
        for (rise, fall) in [(2, 2), (2, 3), (3, 2), (5, 5)] {
            for start in [true, false] {
                let mut t = Tracker::new(rise, fall, start);
                let seq: Vec<bool> = (0..100).map(|i| i % 2 == 0).collect();
                assert!(feed(&mut t, &seq).iter().all(Option::is_none));
                assert_eq!(t.healthy(), start);
                assert_eq!(t.transitions(), 0);
            }
        }
    }

    #[test]
    fn jitter_is_within_the_interval_and_spread() {
        let interval = Duration::from_secs(1);
        let mut seen = std::collections::HashSet::new();
        for i in 0..50u8 {
            let addr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, i));
            let j = initial_jitter("web", addr, interval);
            assert!(j < interval);
            assert_eq!(j, initial_jitter("web", addr, interval), "deterministic");
            seen.insert(j.as_millis());
        }
        // 50 uniform draws over 1000 ms: a handful of same-millisecond pairs at most.
        assert!(seen.len() >= 40, "{} distinct milliseconds", seen.len());
        let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        assert_ne!(
            initial_jitter("web", a, interval),
            initial_jitter("dns", a, interval)
        );
        assert_eq!(initial_jitter("web", a, Duration::ZERO), Duration::ZERO);
        assert!(initial_jitter("web", a, Duration::from_nanos(1)).is_zero());
    }

    type Log = Arc<Mutex<Vec<(Instant, Probe, Option<bool>, bool, u64)>>>;

    fn recorder(log: &Log) -> impl FnMut(&Probe, Option<bool>, &Tracker) + Send + 'static {
        let log = log.clone();
        move |p, flip, t| {
            log.lock().unwrap().push((
                Instant::now(),
                p.clone(),
                flip,
                t.healthy(),
                t.transitions(),
            ))
        }
    }

    /// Polls `log` until `cond` holds or `limit` passes.
    async fn wait_for(
        log: &Log,
        limit: Duration,
        cond: impl Fn(&[(Instant, Probe, Option<bool>, bool, u64)]) -> bool,
    ) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if cond(&log.lock().unwrap()) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }

    #[tokio::test]
    async fn run_checks_marks_a_stopped_server_down_and_a_restarted_one_up() {
        let l = TcpListener::bind((LO, 0)).await.unwrap();
        let port = l.local_addr().unwrap().port();
        let cfg = HealthCheck {
            kind: tcp(port),
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(40),
            rise: 2,
            fall: 3,
            initial: crate::model::HealthInitial::Checked,
        };
        let log: Log = Arc::default();
        let task = tokio::spawn(run_checks(
            "web".into(),
            LO,
            cfg,
            Health::Up,
            recorder(&log),
        ));

        assert!(wait_for(&log, Duration::from_secs(1), |l| l.len() >= 2).await);
        assert!(
            log.lock()
                .unwrap()
                .iter()
                .all(|e| e.1.ok && e.2.is_none() && e.3)
        );

        let stopped_at = Instant::now();
        drop(l);
        assert!(
            wait_for(&log, Duration::from_secs(1), |l| l
                .iter()
                .any(|e| e.2 == Some(false)))
            .await,
            "no transition to unhealthy"
        );
        let down_after = stopped_at.elapsed();
        {
            let entries = log.lock().unwrap();
            let fails: Vec<_> = entries.iter().filter(|e| !e.1.ok).collect();
            // Exactly `fall` failures: the 3rd one flips.
            assert_eq!(fails.len(), 3, "{fails:?}");
            assert_eq!(fails[0].2, None);
            assert_eq!(fails[1].2, None);
            assert_eq!(fails[2].2, Some(false));
            assert!(fails.iter().all(|e| e.1.reason == "connection refused"));
            assert_eq!((fails[2].3, fails[2].4), (false, 1));
            // Start to start ≈ the interval.
            let gap = fails[2].0 - fails[1].0;
            assert!(
                gap > Duration::from_millis(30) && gap < Duration::from_millis(90),
                "{gap:?}"
            );
        }

        // Back on the same port: healthy after `rise` passes.
        let l = TcpListener::bind((LO, port)).await.unwrap();
        let restarted_at = Instant::now();
        assert!(
            wait_for(&log, Duration::from_secs(1), |l| l
                .last()
                .is_some_and(|e| e.2 == Some(true)))
            .await,
            "no transition back to healthy"
        );
        let up_after = restarted_at.elapsed();
        assert_eq!(log.lock().unwrap().last().unwrap().4, 2);
        task.abort();
        drop(l);
        eprintln!(
            "run_checks (interval 50ms, fall 3, rise 2): down {down_after:?} after stop, up {up_after:?} after restart"
        );
        // fall=3 at 50 ms: the 3rd failing probe is 100..150 ms after the stop.
        assert!(down_after < Duration::from_millis(300), "{down_after:?}");
        assert!(up_after < Duration::from_millis(250), "{up_after:?}");
    }

    #[tokio::test]
    async fn run_checks_none_reports_once_and_stays_pending() {
        let cfg = HealthCheck {
            kind: HealthKind::None,
            interval: Duration::from_millis(10),
            timeout: Duration::from_millis(10),
            rise: 3,
            fall: 3,
            initial: crate::model::HealthInitial::Checked,
        };
        let log: Log = Arc::default();
        let task = tokio::spawn(run_checks(
            "web".into(),
            LO,
            cfg,
            Health::Down,
            recorder(&log),
        ));
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(!task.is_finished());
        task.abort();
        let entries = log.lock().unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!((entries[0].2, entries[0].3), (Some(true), true));
    }

    /// 20 backends, one hanging: every probe of the 19 fast ones completes within the
    /// interval, on schedule, while the hanging one times out in its own task.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hanging_backend_does_not_delay_the_others() {
        let interval = Duration::from_millis(100);
        let timeout = Duration::from_millis(90);
        let hang_port = hanging_server().await;
        let mut ports = vec![hang_port];
        for _ in 0..19 {
            let (port, _rx) = http_server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
            ports.push(port);
        }
        let log: Arc<Mutex<Vec<(usize, Instant, Probe)>>> = Arc::default();
        let started = Instant::now();
        let tasks: Vec<_> = ports
            .iter()
            .enumerate()
            .map(|(i, &port)| {
                let cfg = HealthCheck {
                    kind: http(port, (200, 399), Some("ok")),
                    interval,
                    timeout,
                    rise: 2,
                    fall: 3,
                    initial: crate::model::HealthInitial::Checked,
                };
                let log = log.clone();
                tokio::spawn(run_checks(
                    format!("svc{i}"),
                    LO,
                    cfg,
                    Health::Up,
                    move |p: &Probe, _, _: &Tracker| {
                        log.lock().unwrap().push((i, Instant::now(), p.clone()))
                    },
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(650)).await;
        for t in &tasks {
            t.abort();
        }
        let log = log.lock().unwrap();
        let mut fast_max = Duration::ZERO;
        let mut fast_gap_max = Duration::ZERO;
        let mut first_max = Duration::ZERO;
        for i in 0..ports.len() {
            let mine: Vec<_> = log.iter().filter(|e| e.0 == i).collect();
            if i == 0 {
                assert!(
                    mine.len() >= 4,
                    "hanging backend probed {} times",
                    mine.len()
                );
                for e in &mine {
                    assert!(!e.2.ok);
                    assert_eq!(e.2.reason, "timeout (no response)");
                    assert!(
                        e.2.latency >= timeout && e.2.latency < timeout + Duration::from_millis(60)
                    );
                }
                eprintln!(
                    "hanging backend: {} probes, latencies {:?}",
                    mine.len(),
                    mine.iter().map(|e| e.2.latency).collect::<Vec<_>>()
                );
                continue;
            }
            // The first probe within jitter (< interval) + a fast probe; then one per interval.
            assert!(mine.len() >= 5, "backend {i} probed {} times", mine.len());
            first_max = first_max.max(mine[0].1 - started);
            for e in &mine {
                assert!(e.2.ok, "backend {i}: {:?}", e.2);
                fast_max = fast_max.max(e.2.latency);
            }
            for w in mine.windows(2) {
                fast_gap_max = fast_gap_max.max(w[1].1 - w[0].1);
            }
        }
        eprintln!(
            "19 fast backends: slowest probe {fast_max:?}, first result by {first_max:?}, \
             largest gap between results {fast_gap_max:?} (interval {interval:?})"
        );
        assert!(fast_max < Duration::from_millis(60), "{fast_max:?}");
        assert!(
            first_max < interval + Duration::from_millis(60),
            "{first_max:?}"
        );
        assert!(
            fast_gap_max < interval + Duration::from_millis(60),
            "{fast_gap_max:?}"
        );
    }

    #[test]
    fn transition_message_names_the_reason() {
        let mut t = Tracker::new(2, 3, true);
        let p = Probe {
            ok: false,
            latency: Duration::from_millis(500),
            reason: "timeout".into(),
        };
        for _ in 0..3 {
            t.record(&p);
        }
        assert_eq!(
            transition_message("web", LO, &p, &t),
            "service web: backend 127.0.0.1 is now unhealthy: timeout (3 failed checks in a row, last took 500ms)"
        );
    }
}
