//! The HTTP check: `GET path` over hyper's HTTP/1.1 client connection, the status range
//! and the body substring, with failure reasons that say how far the backend got.
//!
//! Owns: the request, the response checks. Must not touch: the deadline's origin (the
//! caller's), hysteresis.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
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
    net::TcpStream,
    time::Instant,
};

use super::{
    MAX_READ, contains,
    probe::{io_reason, step},
};

/// What an HTTP check asks and expects.
pub(super) struct HttpCheck<'a> {
    pub path: &'a str,
    pub host: Option<&'a str>,
    pub expect_status: (u16, u16),
    pub body: Option<&'a str>,
}

/// The `Host` header value: the configured host, or the backend address (IPv6 in
/// brackets); with `:port` unless the configured host already names a port.
pub(super) fn host_header(host: Option<&str>, target: SocketAddr) -> String {
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
    /// Ends a tunnel probe's socket after the stream is gone (declared after it: dropped
    /// after it).
    _linger: Option<super::linger::Linger>,
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
pub(super) async fn http_probe(
    via: &super::probe::Target,
    target: SocketAddr,
    check: &HttpCheck<'_>,
    deadline: Instant,
) -> Result<(), String> {
    let (mut sender, conn, progress) = handshake(via, target, deadline).await?;
    let req = http_request(check, target, &progress)?;
    let exchange = async {
        let response = response_head(&mut sender, req, &progress, deadline).await?;
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

type Sender = http1::SendRequest<Empty<Bytes>>;
type Connection = http1::Connection<TokioIo<Counted>, Empty<Bytes>>;

/// Connects (bounded by `deadline`) and sets up the HTTP/1.1 client connection over a
/// stream that counts what it reads.
async fn handshake(
    via: &super::probe::Target,
    target: SocketAddr,
    deadline: Instant,
) -> Result<(Sender, Connection, Arc<Progress>), String> {
    let (stream, linger) = step(deadline, " (connect)", super::probe::connect(via, target)).await?;
    let progress = Arc::new(Progress::default());
    let io = TokioIo::new(Counted {
        stream,
        progress: progress.clone(),
        _linger: linger,
    });
    let (sender, conn) = http1::Builder::new()
        // Sent as `Host`, `User-Agent`, ... (some servers match header names exactly).
        .title_case_headers(true)
        .max_header_size(MAX_READ)
        .handshake(io)
        .await
        .map_err(|e| head_error(&e, &progress))?;
    Ok((sender, conn, progress))
}

/// Sends the request and waits for the final response head; a timeout says whether
/// anything had arrived.
async fn response_head(
    sender: &mut Sender,
    req: Request<Empty<Bytes>>,
    progress: &Progress,
    deadline: Instant,
) -> Result<Response<Incoming>, String> {
    match tokio::time::timeout_at(deadline, sender.send_request(req)).await {
        Ok(r) => r.map_err(|e| head_error(&e, progress)),
        Err(_) if progress.received.load(Ordering::Relaxed) == 0 => {
            Err("timeout (no response)".to_string())
        }
        Err(_) => Err("timeout (reading headers)".to_string()),
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
