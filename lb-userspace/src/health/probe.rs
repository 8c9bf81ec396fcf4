//! One probe of any kind, bounded by the check's timeout, and the short failure reasons.
//!
//! Owns: dispatch by kind, the deadline, the tcp check. Must not touch: hysteresis
//! (tracker.rs).

use std::{
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use tokio::{net::TcpStream, time::Instant};

use super::{http, linger::Linger, udp};
use crate::model::HealthKind;

/// Outcome of one probe.
#[derive(Clone, Debug, PartialEq)]
pub struct Probe {
    pub ok: bool,
    /// From the start of the probe to its result (about `timeout` for a timeout).
    pub latency: Duration,
    /// "ok" on success, else why it failed.
    pub reason: String,
}

/// The reason of a probe the balancer could not send: no route to the backend.
pub const NO_ROUTE: &str = "network unreachable";

impl Probe {
    /// The balancer itself could not send the probe (it has no route: its interface is
    /// gone or being re-created). That says nothing about the backend, so the tracker
    /// does not count it; a backend that stays unroutable is taken out by the neighbour
    /// rule (no route for longer than its grace). A tunnel probe without a source
    /// address is NOT one: it fails like any check (the backend cannot be checked, so it
    /// must not stay "healthy" on an old result).
    pub fn is_local_failure(&self) -> bool {
        !self.ok && self.reason == NO_ROUTE
    }
}

/// Where a probe goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// To the backend's own address (DSR backends).
    Direct(IpAddr),
    /// Through the tunnel, as traffic goes (tunnel backends): to the VIP, from `source`
    /// (the balancer's address of the VIP's family on the backend's egress interface,
    /// else another global one of the host; `None`: there is none, the probe fails),
    /// with `SO_MARK = mark`
    /// (`lb_common::tunnel::probe_mark`). The mark routes the probe into `lo`
    /// (crate::dataplane::probe's policy rule), where the `xlb_probe` TC program
    /// encapsulates it towards the backend; the backend answers from the VIP directly.
    Tunnel {
        vip: IpAddr,
        source: Option<IpAddr>,
        mark: u32,
    },
}

impl Target {
    /// The address probes connect to.
    pub fn address(&self) -> IpAddr {
        match self {
            Target::Direct(a) => *a,
            Target::Tunnel { vip, .. } => *vip,
        }
    }
}

/// Runs one probe of `kind` against `addr` with `timeout` as a hard bound for the whole
/// probe (connect + request + response). `HealthKind::None` is ok immediately.
pub async fn probe(kind: &HealthKind, addr: IpAddr, timeout: Duration) -> Probe {
    probe_to(kind, &Target::Direct(addr), timeout).await
}

/// [`probe`] along `target`'s path.
pub async fn probe_to(kind: &HealthKind, target: &Target, timeout: Duration) -> Probe {
    let start = Instant::now();
    let via = *target;
    let addr = target.address();
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
            tokio::time::timeout_at(deadline, tcp_probe(&via, target, deadline)).await
        }
        HealthKind::Http {
            port,
            path,
            host,
            expect_status,
            body,
        } => {
            let target = SocketAddr::new(addr, *port);
            let req = http::HttpCheck {
                path,
                host: host.as_deref(),
                expect_status: *expect_status,
                body: body.as_deref(),
            };
            tokio::time::timeout_at(deadline, http::http_probe(&via, target, &req, deadline)).await
        }
        HealthKind::Udp { port, send, expect } => {
            let target = SocketAddr::new(addr, *port);
            let check = udp::udp_probe(&via, target, send.as_bytes(), expect.as_deref(), deadline);
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
pub(super) async fn step<T>(
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
pub(super) fn io_reason(e: &io::Error) -> String {
    use io::ErrorKind as K;
    let s = match e.kind() {
        K::ConnectionRefused => "connection refused",
        K::HostUnreachable => "host unreachable",
        K::NetworkUnreachable => NO_ROUTE,
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

async fn tcp_probe(via: &Target, target: SocketAddr, deadline: Instant) -> Result<(), String> {
    let (stream, linger) = step(deadline, "", connect(via, target)).await?;
    drop(stream);
    drop(linger);
    Ok(())
}

/// The reason of a tunnel probe to `vip` that cannot be sent: the balancer has no
/// address of the VIP's family to send it from (neither on the egress interface nor
/// elsewhere). It counts as a failed check.
pub fn no_source(vip: IpAddr) -> String {
    let family = if vip.is_ipv4() { "IPv4" } else { "IPv6" };
    format!("cannot probe through the tunnel: no {family} address on this host")
}

/// A TCP connection to `target` along `via`, and for a tunnel probe the [`Linger`] that
/// ends the socket once the backend is done with it (hold it as long as the stream; it is
/// taken before the connect, so a connect cut short by the deadline lingers too).
pub(super) async fn connect(
    via: &Target,
    target: SocketAddr,
) -> io::Result<(TcpStream, Option<Linger>)> {
    let Target::Tunnel { source, mark, .. } = via else {
        return Ok((TcpStream::connect(target).await?, None));
    };
    let source = source.ok_or_else(|| io::Error::other(no_source(target.ip())))?;
    let socket = if target.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    set_mark(&socket, *mark)?;
    set_probe_mss(&socket)?;
    socket.bind(SocketAddr::new(source, 0))?;
    let linger = Linger::tcp(&socket)?;
    Ok((socket.connect(target).await?, Some(linger)))
}

/// The MSS a tunnel probe offers (bytes): the IPv6 minimum MTU (1280, RFC 8200 §5) less
/// the IPv6 and TCP headers. A probe leaves through `lo`, whose 64 KiB MTU would
/// otherwise be offered, and the backend's answer — not tunnelled — would be sized for
/// the backend's link and could meet a smaller one on the way back (the balancer's own),
/// leaving a check to path-MTU discovery and its timeout. Probes are small: any path
/// carries 1220-byte segments.
pub const TUNNEL_PROBE_MSS: u32 = 1280 - 40 - 20;

/// `TCP_MAXSEG` = [`TUNNEL_PROBE_MSS`] before the connect (the SYN offers it).
fn set_probe_mss(socket: &impl std::os::fd::AsRawFd) -> io::Result<()> {
    let mss = TUNNEL_PROBE_MSS;
    // SAFETY: a valid fd and a u32 option value of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            (&mss as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `SO_MARK` (needs CAP_NET_ADMIN): the policy rule routes marked probes into `lo`.
pub(super) fn set_mark(socket: &impl std::os::fd::AsRawFd, mark: u32) -> io::Result<()> {
    // SAFETY: a valid fd and a u32 option value of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&mark as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
