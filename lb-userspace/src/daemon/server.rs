//! The control socket: accept, check the peer, read one request line at a time, decode,
//! forward to the owner as a [`Command`], encode its answer. And the metrics server's
//! task (metrics.rs serves; this starts and moves it).
//!
//! Who may talk: root, the daemon's own user, and — when `daemon.socket_group` is set —
//! members of that group. The socket file is 0600 (0660 with the group), and the peer's
//! credentials (`SO_PEERCRED`, `SO_PEERGROUPS`) are checked on every connection as well:
//! a socket whose mode was loosened by hand still refuses strangers.
//!
//! Bounds, so that no client can hold the daemon (each one ends in an error line or a
//! closed connection):
//! - a request line is at most [`MAX_LINE`] bytes (a longer one: an error, then close);
//! - a request line must be complete within [`REQUEST_TIMEOUT`] of the connection or of
//!   the previous answer (a half-sent request or an idle client: closed);
//! - an answer must be taken within [`WRITE_TIMEOUT`] (a client that does not read);
//! - at most [`MAX_CONNECTIONS`] connections at once; more get an error line and are
//!   closed at once;
//! - a line that is not a request (bad JSON, not UTF-8): an error, then close.
//!
//! Owns: the socket file, its mode and group, the wire handling. Must not touch: what a
//! request does (the owner's), the state.

use std::{
    io,
    net::SocketAddr,
    os::{fd::AsRawFd as _, unix::fs::PermissionsExt as _},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};
use log::{debug, info, warn};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream, unix::OwnedWriteHalf},
    sync::{mpsc, oneshot, watch},
    time::timeout,
};

use super::{command::Command, tasks::Task};
use crate::{
    api::{self, ErrorKind, Request, Response},
    config::DaemonConfig,
    metrics,
};

/// The longest request line (a `service add` with thousands of backends fits).
pub const MAX_LINE: usize = 1 << 20;
/// Time to send a complete request line.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Time to take an answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time the owner has to answer (an edit's first look takes up to about a second).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 1024;

/// Who may use the socket besides root and the daemon's own user.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Access {
    /// `daemon.socket_group`: (name, gid).
    pub group: Option<(String, u32)>,
}

impl Access {
    pub fn of(d: &DaemonConfig) -> Self {
        Self {
            group: d
                .socket_group
                .as_ref()
                .and_then(|g| Some((g.name.clone(), g.gid?))),
        }
    }

    /// The socket file's mode.
    pub fn mode(&self) -> u32 {
        if self.group.is_some() { 0o660 } else { 0o600 }
    }

    /// Whether a peer with these credentials may talk.
    pub fn allows(&self, uid: u32, gid: u32, groups: &[u32]) -> bool {
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        uid == 0
            || uid == me
            || self
                .group
                .as_ref()
                .is_some_and(|(_, g)| gid == *g || groups.contains(g))
    }

    pub fn describe(&self) -> String {
        match &self.group {
            Some((name, _)) => format!("mode 0660, root and group {name}"),
            None => "mode 0600, root only".into(),
        }
    }
}

/// Binds the control socket with its mode from the start (umask), replacing a stale
/// socket file. (Another daemon of this deployment holds the pin-dir lock, checked
/// first; a live socket here belongs to another deployment configured with this path.)
pub fn bind(path: &Path, access: &Access) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another xlb daemon is listening on {}; stop it first",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    // SAFETY: umask only changes this process's file-creation mask.
    let old = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = listener.with_context(|| format!("binding {}", path.display()))?;
    set_mode(path, access)?;
    Ok(listener)
}

/// Gives the socket file its group (when set) and mode.
pub fn set_mode(path: &Path, access: &Access) -> anyhow::Result<()> {
    let gid = access.group.as_ref().map(|(_, g)| *g);
    std::os::unix::fs::chown(path, None, gid)
        .with_context(|| format!("chgrp {} {}", gid.unwrap_or(0), path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(access.mode()))
        .with_context(|| format!("chmod {:o} {}", access.mode(), path.display()))
}

/// Accepts connections until the task is dropped; each is served in a task of its own.
pub fn spawn(
    listener: UnixListener,
    access: watch::Receiver<Access>,
    owner: mpsc::Sender<Command>,
) -> Task {
    Task::spawn(async move {
        let open = Arc::new(AtomicUsize::new(0));
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    // E.g. EMFILE: back off rather than spin.
                    warn!("control socket accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let slot = Slot::take(&open);
            let access = access.borrow().clone();
            let owner = owner.clone();
            tokio::spawn(async move {
                if let Err(e) = connection(stream, slot, &access, &owner).await {
                    debug!("control connection: {e}");
                }
            });
        }
    })
}

/// One of the [`MAX_CONNECTIONS`] places; `None` when all are taken.
struct Slot(Option<Arc<AtomicUsize>>);

impl Slot {
    fn take(open: &Arc<AtomicUsize>) -> Self {
        let n = open.fetch_add(1, Ordering::AcqRel);
        if n >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::AcqRel);
            return Self(None);
        }
        Self(Some(open.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(open) = &self.0 {
            open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
    Response::error(kind, message)
}

async fn connection(
    stream: UnixStream,
    slot: Slot,
    access: &Access,
    owner: &mpsc::Sender<Command>,
) -> io::Result<()> {
    if slot.0.is_none() {
        let (_, mut write) = stream.into_split();
        let why = format!("too many connections ({MAX_CONNECTIONS}); try again");
        return send(&mut write, &error(ErrorKind::Runtime, why)).await;
    }
    let refusal = peer_refusal(&stream, access);
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    if let Some(why) = refusal {
        // Its request is read (bounded like any) so that it hears why, not a broken pipe.
        let _ = read_line(&mut reader).await;
        return send(&mut write, &error(ErrorKind::Runtime, why)).await;
    }
    loop {
        let line = match read_line(&mut reader).await {
            Line::Request(line) => line,
            Line::Closed => return Ok(()),
            Line::Bad(why) => return send(&mut write, &error(ErrorKind::Usage, why)).await,
        };
        let response = match api::decode_request(&line) {
            Ok(req) => forward(owner, req).await,
            Err(e) => {
                let r = error(ErrorKind::Usage, format!("malformed request: {e}"));
                return send(&mut write, &r).await;
            }
        };
        send(&mut write, &response).await?;
    }
}

/// Why the peer may not talk, if it may not.
fn peer_refusal(stream: &UnixStream, access: &Access) -> Option<String> {
    let cred = match stream.peer_cred() {
        Ok(c) => c,
        Err(e) => return Some(format!("cannot read the peer's credentials: {e}")),
    };
    let groups = peer_groups(stream).unwrap_or_default();
    if access.allows(cred.uid(), cred.gid(), &groups) {
        return None;
    }
    info!(
        "control socket: refused uid {} gid {} (pid {:?}): {}",
        cred.uid(),
        cred.gid(),
        cred.pid(),
        access.describe()
    );
    Some(format!(
        "permission denied: uid {} may not use the xlb control socket ({})",
        cred.uid(),
        access.describe()
    ))
}

/// The peer's supplementary groups (`SO_PEERGROUPS`, Linux 4.13).
fn peer_groups(stream: &UnixStream) -> io::Result<Vec<u32>> {
    let mut groups = vec![0 as libc::gid_t; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: `groups` is valid for `len` bytes; the kernel writes at most that and
        // sets `len` to what it wrote (or needs, with ERANGE).
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(n);
            return Ok(groups);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) || n <= groups.len() {
            return Err(e);
        }
        groups.resize(n, 0);
    }
}

enum Line {
    Request(String),
    /// The client closed (possibly half-way through a line), or took too long.
    Closed,
    Bad(String),
}

/// One request line, bounded in size and time.
async fn read_line(reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>) -> Line {
    let mut buf = Vec::new();
    let mut limited = (&mut *reader).take(MAX_LINE as u64 + 1);
    match timeout(REQUEST_TIMEOUT, limited.read_until(b'\n', &mut buf)).await {
        Err(_) => return Line::Closed,
        Ok(Err(_)) | Ok(Ok(0)) => return Line::Closed,
        Ok(Ok(_)) => {}
    }
    if buf.last() != Some(&b'\n') {
        return if buf.len() > MAX_LINE {
            Line::Bad(format!("request line over {MAX_LINE} bytes"))
        } else {
            Line::Closed
        };
    }
    buf.pop();
    match String::from_utf8(buf) {
        Ok(line) => Line::Request(line),
        Err(_) => Line::Bad("malformed request: not UTF-8".into()),
    }
}

/// Sends the request to the owner and waits for its answer.
async fn forward(owner: &mpsc::Sender<Command>, req: Request) -> Response {
    let (reply, answer) = oneshot::channel();
    let command = match req {
        Request::Edit(edit) => Command::Edit { edit, reply },
        Request::Status => Command::Status(reply),
        Request::Stats => Command::Stats(reply),
        Request::Explain {
            service,
            client,
            port,
        } => Command::Explain {
            service,
            client,
            port,
            reply,
        },
        Request::AffinityList { service, limit } => Command::AffinityList {
            service,
            limit,
            reply,
        },
        Request::AffinityFlush { service } => Command::AffinityFlush { service, reply },
        Request::Reload => Command::Reload(reply),
        Request::Top(query) => Command::Top { query, reply },
        Request::DrainStatus { service, address } => Command::DrainStatus {
            service,
            address,
            reply,
        },
    };
    if owner.send(command).await.is_err() {
        return error(ErrorKind::Runtime, "the daemon is stopping");
    }
    match timeout(ANSWER_TIMEOUT, answer).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => error(ErrorKind::Runtime, "the daemon dropped the request"),
        Err(_) => error(ErrorKind::Runtime, "the daemon did not answer in time"),
    }
}

async fn send(write: &mut OwnedWriteHalf, r: &Response) -> io::Result<()> {
    let mut out = serde_json::to_string(r).expect("responses serialize");
    out.push('\n');
    match timeout(WRITE_TIMEOUT, write.write_all(out.as_bytes())).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "client not reading",
        )),
    }
}

// --- metrics -----------------------------------------------------------------------------

/// Binds the metrics listener (`None`: disabled).
pub fn bind_metrics(addr: Option<SocketAddr>) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let bind = || -> io::Result<tokio::net::TcpListener> {
        let l = std::net::TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(l)
    };
    let l = bind()
        .with_context(|| format!("binding the metrics listener on {addr} (daemon.metrics)"))?;
    Ok(Some(l))
}

/// The metrics server's task; each scrape asks the owner for a snapshot.
pub struct MetricsServer {
    task: Option<Task>,
    owner: mpsc::Sender<Command>,
}

impl MetricsServer {
    pub fn new(owner: mpsc::Sender<Command>) -> Self {
        Self { task: None, owner }
    }

    /// Serves on `listener` (stopping the server before); `None` stops it.
    pub fn start(&mut self, listener: Option<tokio::net::TcpListener>) {
        self.task = None;
        let Some(listener) = listener else {
            info!("metrics disabled");
            return;
        };
        if let Ok(a) = listener.local_addr() {
            info!("metrics on http://{a}/metrics");
        }
        let owner = self.owner.clone();
        // Called on a blocking thread (metrics.rs): a blocking round trip to the owner.
        let source: metrics::Source = Arc::new(move || {
            let (tx, rx) = oneshot::channel();
            if owner.blocking_send(Command::Metrics(tx)).is_err() {
                return metrics::Snapshot::default();
            }
            rx.blocking_recv().unwrap_or_default()
        });
        self.task = Some(Task::spawn(async move {
            if let Err(e) = metrics::serve(listener, source).await {
                warn!("metrics server stopped: {e}");
            }
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_group_members_may_talk_strangers_not() {
        let closed = Access::default();
        assert_eq!(closed.mode(), 0o600);
        assert!(closed.allows(0, 0, &[]));
        assert!(!closed.allows(65534, 65534, &[65534]));
        let group = Access {
            group: Some(("xlbadmin".into(), 4242)),
        };
        assert_eq!(group.mode(), 0o660);
        assert!(group.allows(1000, 4242, &[]), "primary group");
        assert!(group.allows(1000, 100, &[27, 4242]), "supplementary group");
        assert!(!group.allows(1000, 100, &[27]));
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        assert!(closed.allows(me, 12345, &[]), "the daemon's own user");
    }

    /// A line over the limit, a half-sent one, one that is not UTF-8, and two lines sent
    /// at once, through a real socket pair.
    #[tokio::test]
    async fn request_lines_are_bounded() {
        async fn lines(input: Vec<u8>) -> Vec<String> {
            let (a, mut b) = UnixStream::pair().unwrap();
            tokio::spawn(async move {
                let _ = b.write_all(&input).await;
                let _ = b.shutdown().await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            });
            let (read, _w) = a.into_split();
            let mut reader = BufReader::new(read);
            let mut out = Vec::new();
            loop {
                match read_line(&mut reader).await {
                    Line::Request(l) => out.push(format!("ok {l}")),
                    Line::Bad(why) => return [out, vec![format!("bad {why}")]].concat(),
                    Line::Closed => return [out, vec!["closed".into()]].concat(),
                }
            }
        }
        assert_eq!(
            lines(b"\"status\"\n\"stats\"\n".to_vec()).await,
            ["ok \"status\"", "ok \"stats\"", "closed"]
        );
        assert_eq!(lines(b"{\"edit\":".to_vec()).await, ["closed"]);
        assert_eq!(
            lines(vec![0xff, 0xfe, b'\n']).await,
            ["bad malformed request: not UTF-8"]
        );
        let mut big = vec![b'a'; MAX_LINE + 10];
        big.push(b'\n');
        assert_eq!(
            lines(big).await,
            [format!("bad request line over {MAX_LINE} bytes")]
        );
        let mut fits = vec![b'a'; MAX_LINE];
        fits.push(b'\n');
        assert_eq!(lines(fits).await.len(), 2, "exactly MAX_LINE is fine");
    }
}
