//! The UDP check against loopback servers.

use super::*;

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
