//! The UDP check: one datagram (possibly empty), one reply.
//!
//! Owns: the exchange. Must not touch: hysteresis.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::{net::UdpSocket, time::Instant};

use super::{
    MAX_READ, contains,
    linger::Linger,
    probe::{Target, io_reason, no_source, set_mark, step},
};

/// Sends `payload` and waits for one reply (containing `expect` when set).
pub(super) async fn udp_probe(
    via: &Target,
    target: SocketAddr,
    payload: &[u8],
    expect: Option<&str>,
    deadline: Instant,
) -> Result<(), String> {
    let local: SocketAddr = match (via, target) {
        (Target::Tunnel { source: None, .. }, _) => return Err(no_source(target.ip())),
        (
            Target::Tunnel {
                source: Some(s), ..
            },
            _,
        ) => (*s, 0).into(),
        (Target::Direct(_), SocketAddr::V4(_)) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        (Target::Direct(_), SocketAddr::V6(_)) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let refused = |r: String| {
        if r == "connection refused" {
            "connection refused (ICMP port unreachable)".to_string()
        } else {
            r
        }
    };
    let sock = step(deadline, "", UdpSocket::bind(local)).await?;
    // A tunnel probe's socket outlives the probe a little, so a late reply is not
    // answered by an unmarked ICMP port unreachable (see linger.rs).
    let mut _linger = None;
    if let Target::Tunnel { mark, .. } = via {
        set_mark(&sock, *mark).map_err(|e| io_reason(&e))?;
        _linger = Some(Linger::udp(&sock).map_err(|e| io_reason(&e))?);
    }
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
