//! Active health checks: one probe ([`probe`]), rise/fall hysteresis ([`Tracker`]), probe
//! spreading ([`initial_jitter`]) and the per-backend probing loop ([`run_checks`]).
//!
//! Rooms: `probe.rs` (the probe of any kind, its deadline, tcp, the short failure
//! reasons), `http.rs` (the HTTP check over hyper), `udp.rs` (the UDP check),
//! `linger.rs` (the graceful end of tunnel probe sockets: every packet of theirs marked),
//! `tracker.rs` (hysteresis, jitter, the probing loop, transition messages).
//!
//!
//! How it is meant to be used: the daemon spawns one [`run_checks`] task per (service,
//! backend) and aborts it when the backend or service goes away or its health config
//! changes. Each task owns its [`Tracker`], so a slow or hanging backend costs only its
//! own task: every probe is bounded by the check's `timeout` (connect, request and
//! response together), and tasks never wait for each other.
//!
//! Probes go from the balancer host to the backend's own address (not the VIP) on the
//! check's port:
//! - `tcp`: a connect succeeds; the connection is closed at once (normal FIN; a tunnel
//!   probe's socket is ended by linger.rs once the backend is done with it).
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
//!
//! Owns: probing one backend and judging the results. Must not touch: the maps, the
//! daemon's state (the daemon feeds results into its controller).

mod http;
mod linger;
mod probe;
#[cfg(test)]
mod tests;
mod tracker;
mod udp;

pub use probe::{Probe, Target, probe, probe_to};
pub use tracker::{Tracker, initial_jitter, log_transition, run_checks, transition_message};

/// The most of an HTTP response head, of an HTTP body, or of a UDP reply that is read.
const MAX_READ: usize = 64 * 1024;

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}
