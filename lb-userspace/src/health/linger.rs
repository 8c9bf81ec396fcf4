//! The end of a tunnel probe's socket: it is closed only once the backend is done with
//! it, so every packet the balancer sends for it carries the probe mark.
//!
//! Why: a tunnel probe's packets reach `lo` (and the `xlb_probe` encapsulation) only by
//! their `SO_MARK`. The kernel's own answers to segments that find no socket — the RST to
//! the rest of an HTTP body after the probe closed with it unread, to a SYN-ACK after a
//! connect timed out, the ICMP port unreachable to a late UDP reply — carry no mark (no
//! socket, and `fwmark_reflect` would reflect the backend's mark: 0). They took the
//! normal route to the VIP, came back through the router into XDP and were balanced as a
//! client (an affinity entry for the balancer's own address). A socket that still
//! exists answers with its mark, and so does its TIME_WAIT remnant (`tw_mark`). So a
//! probe socket is handed here instead of being dropped: a TCP socket waits for its
//! connect to finish, sends its FIN, reads what the backend still sends up to the
//! backend's FIN, and only then closes (ending in TIME_WAIT or LAST_ACK, both marked); a
//! UDP socket keeps reading for a while, so a late reply finds it. All of it in a task of
//! its own, bounded by [`LINGER`]: the probe's result and latency do not wait.
//!
//! Only a backend that sends for longer than [`LINGER`] after the probe ended (or
//! answers a SYN later than that) can still meet a closed socket.
//!
//! Owns: the end of tunnel probe sockets. Must not touch: the probe's result.

use std::{os::fd::OwnedFd, time::Duration};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How long a tunnel probe's socket may linger after the probe: well above any round
/// trip to a backend, short enough that few sockets linger at once (one per probe at
/// most, and only while its backend still sends).
pub const LINGER: Duration = Duration::from_secs(3);

/// A duplicate of a probe socket's descriptor, taken before the probe uses the socket.
/// Dropping it (on every way out of the probe: result, error, timeout) hands the socket
/// to a lingering task; the probe's own descriptor closes without ending the socket.
#[derive(Debug)]
pub struct Linger {
    fd: Option<OwnedFd>,
    kind: Kind,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Tcp,
    Udp,
}

impl Linger {
    /// Keeps TCP socket `socket` (connected or connecting) until its backend is done.
    pub fn tcp(socket: &impl std::os::fd::AsFd) -> std::io::Result<Self> {
        Self::new(socket, Kind::Tcp)
    }

    /// Keeps UDP socket `socket` open for late replies.
    pub fn udp(socket: &impl std::os::fd::AsFd) -> std::io::Result<Self> {
        Self::new(socket, Kind::Udp)
    }

    fn new(socket: &impl std::os::fd::AsFd, kind: Kind) -> std::io::Result<Self> {
        Ok(Self {
            fd: Some(socket.as_fd().try_clone_to_owned()?),
            kind,
        })
    }
}

impl Drop for Linger {
    fn drop(&mut self) {
        let Some(fd) = self.fd.take() else { return };
        // Outside a runtime (never in the daemon) the socket just closes.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let kind = self.kind;
        rt.spawn(async move {
            let _ = tokio::time::timeout(LINGER, finish(fd, kind)).await;
        });
    }
}

/// Ends the socket gracefully; the caller bounds it by [`LINGER`].
async fn finish(fd: OwnedFd, kind: Kind) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    match kind {
        Kind::Udp => {
            let sock = tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(fd))?;
            // Until LINGER: a late reply is read here, not answered by the kernel.
            loop {
                sock.recv(&mut buf).await?;
            }
        }
        Kind::Tcp => {
            let mut stream = tokio::net::TcpStream::from_std(std::net::TcpStream::from(fd))?;
            // A connect still under way finishes (or fails) first: shutting a SYN_SENT
            // socket down drops it, and a late SYN-ACK would meet no socket.
            stream.writable().await?;
            if stream.take_error()?.is_some() || stream.peer_addr().is_err() {
                return Ok(());
            }
            let _ = stream.shutdown().await;
            // Up to the backend's FIN; then the socket closes with nothing unread (no
            // RST) and its remnant answers anything late with the mark.
            while stream.read(&mut buf).await? > 0 {}
            Ok(())
        }
    }
}
