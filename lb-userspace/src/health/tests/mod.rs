//! Tests of the health checks: probes against loopback servers, hysteresis, the loop.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream, UdpSocket},
    sync::mpsc,
    time::Instant,
};

use super::{
    MAX_READ, Probe, Tracker, find, http::host_header, initial_jitter, probe, probe::io_reason,
    run_checks, transition_message,
};
use crate::model::{Health, HealthCheck, HealthKind};

mod http;
mod tracker;
mod udp;

pub(super) const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

pub(super) fn tcp(port: u16) -> HealthKind {
    HealthKind::Tcp { port }
}

pub(super) fn http(port: u16, expect: (u16, u16), body: Option<&str>) -> HealthKind {
    HealthKind::Http {
        port,
        path: "/healthz".into(),
        host: None,
        expect_status: expect,
        body: body.map(Into::into),
    }
}

pub(super) fn udp(port: u16, send: &str, expect: Option<&str>) -> HealthKind {
    HealthKind::Udp {
        port,
        send: send.into(),
        expect: expect.map(Into::into),
    }
}

pub(super) fn probe_result(ok: bool) -> Probe {
    Probe {
        ok,
        latency: Duration::from_millis(1),
        reason: if ok { "ok" } else { "timeout" }.into(),
    }
}

/// A port with nothing listening (bound, then released).
pub(super) async fn closed_tcp_port() -> u16 {
    let l = TcpListener::bind((LO, 0)).await.unwrap();
    l.local_addr().unwrap().port()
}

/// Reads a request head; `None` if the client closed first.
pub(super) async fn read_request(s: &mut TcpStream) -> Option<String> {
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
pub(super) async fn http_server(response: &'static [u8]) -> (u16, mpsc::UnboundedReceiver<String>) {
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
pub(super) async fn hanging_server() -> u16 {
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

pub(super) async fn probe_http(
    resp: &'static [u8],
    expect: (u16, u16),
    body: Option<&str>,
) -> Probe {
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
        match tokio::time::timeout(Duration::from_millis(100), TcpStream::connect(target)).await {
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
