//! The HTTP check against loopback servers.

use super::*;

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
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Padding: abcdefgh\r\n\r\nok".to_vec();
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
    let interim = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n";
    let ok: &'static [u8] = format!("{interim}HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nhealthy")
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
