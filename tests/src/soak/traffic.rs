//! The soak's clients: thousands of source addresses in the client namespace, each sending
//! one request per interval to its service's VIP, from ONE wildcard UDP socket (the source
//! address of each datagram is set with IP_PKTINFO, so 2,000 clients need neither 2,000
//! sockets nor 2,000 threads). Answers come back to that socket (DSR: straight from the
//! backend) and are decoded into [`Obs`] for the checker.
//!
//! A share of the clients is intermittent: they sleep for seconds at a time (seeded), so
//! some pins sit idle across removals and daemon restarts — where stale pinned state
//! shows (identity reuse, fault 1 of issue 10).
//!
//! Owns only its socket and threads; touches no lab state.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd as _,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::check::Obs;
use super::rng::Rng;
use super::wire::{self, Answer, Request};

/// The clients' UDP port (every client uses it: affinity is by source address).
pub const CLIENT_PORT: u16 = 40053;

/// When an intermittent client sleeps: `sleep_s` seconds out of every `period_s`, shifted
/// by `phase_s`.
#[derive(Clone, Copy, Debug)]
pub struct Sleepy {
    pub period_s: u64,
    pub sleep_s: u64,
    pub phase_s: u64,
}

impl Sleepy {
    /// A seeded pattern: sleeps of 2–8 s, awake 3–7 s between them.
    pub fn draw(rng: &mut Rng) -> Self {
        let sleep_s = rng.range(2, 8);
        let period_s = sleep_s + rng.range(3, 7);
        Self {
            period_s,
            sleep_s,
            phase_s: rng.below(period_s),
        }
    }

    fn asleep(&self, elapsed: Duration) -> bool {
        (elapsed.as_secs() + self.phase_s) % self.period_s < self.sleep_s
    }
}

/// One client: its source address, its service's VIP, and its sleep pattern if any.
#[derive(Clone, Debug)]
pub struct Client {
    pub addr: Ipv4Addr,
    pub vip: Ipv4Addr,
    pub sleepy: Option<Sleepy>,
}

/// Counters of the traffic threads.
#[derive(Debug, Default)]
pub struct TrafficCounts {
    pub sent: AtomicU64,
    pub send_errors: AtomicU64,
    pub answers: AtomicU64,
    pub foreign: AtomicU64,
    pub user_stamps: AtomicU64,
}

/// The running sender and receiver.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    pub counts: Arc<TrafficCounts>,
    threads: Vec<JoinHandle<()>>,
}

impl Traffic {
    /// Starts sending from `clients` (socket created in the network namespace at
    /// `client_netns`); decoded answers are appended to `sink`. `backend_ix` maps a backend
    /// name from an answer to its index.
    pub fn start(
        client_netns: &Path,
        clients: Vec<Client>,
        interval: Duration,
        sink: Arc<Mutex<Vec<Obs>>>,
        backend_ix: impl Fn(&str) -> Option<usize> + Send + 'static,
    ) -> Self {
        let path = client_netns.to_path_buf();
        let sock = std::thread::spawn(move || {
            crate::lab::enter(&path);
            client_socket()
        })
        .join()
        .expect("client socket thread");
        let rx = sock.try_clone().expect("clone the client socket");
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(TrafficCounts::default());
        let sender = {
            let (stop, counts) = (stop.clone(), counts.clone());
            std::thread::spawn(move || send_loop(&sock, &clients, interval, &stop, &counts))
        };
        let receiver = {
            let (stop, counts) = (stop.clone(), counts.clone());
            std::thread::spawn(move || receive_loop(&rx, &sink, &backend_ix, &stop, &counts))
        };
        Self {
            stop,
            counts,
            threads: vec![sender, receiver],
        }
    }

    /// Stops sending, gives the last answers `grace` to arrive, stops receiving.
    pub fn stop(mut self, grace: Duration) {
        self.stop.store(true, Ordering::SeqCst);
        std::thread::sleep(grace);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn client_socket() -> UdpSocket {
    let s = UdpSocket::bind(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        CLIENT_PORT,
    ))
    .expect("bind the clients' socket");
    let size: libc::c_int = 32 << 20;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
        // SAFETY: a valid socket and option value; failure leaves the default size.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("receive timeout");
    s
}

/// Rounds of one request per awake client, each round spread over `interval` in slices.
fn send_loop(
    sock: &UdpSocket,
    clients: &[Client],
    interval: Duration,
    stop: &AtomicBool,
    counts: &TrafficCounts,
) {
    const SLICES: usize = 20;
    let t0 = Instant::now();
    let mut seq = vec![0u32; clients.len()];
    let per_slice = clients.len().div_ceil(SLICES);
    for round in 0u32.. {
        for slice in 0..SLICES {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let at = t0 + interval * round + interval * slice as u32 / SLICES as u32;
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let elapsed = t0.elapsed();
            let lo = slice * per_slice;
            for c in lo..(lo + per_slice).min(clients.len()) {
                let client = &clients[c];
                if client.sleepy.is_some_and(|s| s.asleep(elapsed)) {
                    continue;
                }
                let req = Request {
                    client: c as u32,
                    seq: seq[c],
                    send_ns: wire::now_ns(),
                };
                seq[c] += 1;
                let dst = SocketAddrV4::new(client.vip, super::SERVICE_PORT);
                match send_from(sock, client.addr, dst, &req.encode()) {
                    Ok(()) => counts.sent.fetch_add(1, Ordering::Relaxed),
                    Err(_) => counts.send_errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }
    }
}

/// `sendmsg` with IP_PKTINFO: the datagram leaves from `src` (a local address).
fn send_from(
    sock: &UdpSocket,
    src: Ipv4Addr,
    dst: SocketAddrV4,
    payload: &[u8],
) -> std::io::Result<()> {
    // SAFETY: zeroed C structs are valid; every pointer refers to locals that outlive the
    // call; the control buffer is sized with CMSG_SPACE and aligned (u64 array).
    unsafe {
        let mut to: libc::sockaddr_in = std::mem::zeroed();
        to.sin_family = libc::AF_INET as libc::sa_family_t;
        to.sin_port = dst.port().to_be();
        to.sin_addr.s_addr = u32::from(*dst.ip()).to_be();
        let mut iov = libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: payload.len(),
        };
        let mut control = [0u64; 8];
        let space = libc::CMSG_SPACE(std::mem::size_of::<libc::in_pktinfo>() as u32) as usize;
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = (&mut to as *mut libc::sockaddr_in).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::IPPROTO_IP;
        (*c).cmsg_type = libc::IP_PKTINFO;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::in_pktinfo>() as u32) as usize;
        let info = libc::in_pktinfo {
            ipi_ifindex: 0,
            ipi_spec_dst: libc::in_addr {
                s_addr: u32::from(src).to_be(),
            },
            ipi_addr: libc::in_addr { s_addr: 0 },
        };
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast(), info);
        if libc::sendmsg(sock.as_raw_fd(), &msg, 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn receive_loop(
    sock: &UdpSocket,
    sink: &Mutex<Vec<Obs>>,
    backend_ix: &dyn Fn(&str) -> Option<usize>,
    stop: &AtomicBool,
    counts: &TrafficCounts,
) {
    let mut buf = [0u8; 512];
    let mut batch = Vec::with_capacity(4096);
    let mut flushed = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if let Ok(n) = sock.recv(&mut buf) {
            match Answer::decode(&buf[..n]).and_then(|a| Some((backend_ix(&a.backend)?, a))) {
                Some((backend, a)) => {
                    counts.answers.fetch_add(1, Ordering::Relaxed);
                    if !a.kernel_stamp {
                        counts.user_stamps.fetch_add(1, Ordering::Relaxed);
                    }
                    batch.push(Obs {
                        client: a.request.client,
                        seq: a.request.seq,
                        send_ns: a.request.send_ns,
                        rx_ns: a.rx_ns,
                        backend,
                        dst: a.dst,
                    });
                }
                None => {
                    counts.foreign.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if batch.len() >= 4096 || flushed.elapsed() > Duration::from_millis(50) {
            sink.lock().expect("answer sink").append(&mut batch);
            flushed = Instant::now();
        }
    }
    sink.lock().expect("answer sink").append(&mut batch);
}
