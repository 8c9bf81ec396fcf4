//! The lab's backend server: answers every HTTP request and every UDP datagram with its
//! name, so a client can tell which backend it reached.
//!
//! `xlb-testsrv --name be0 --http-port 80 --udp-port 53 --udp-bind 10.200.0.1,10.100.0.11,...`
//!
//! UDP sockets are bound per address (not the wildcard) so that each reply leaves from the
//! address the datagram was sent to — the VIP for balanced traffic (DSR), the backend's own
//! address for health checks.
//!
//! A soak request (`xlb_tests::soak::wire`) gets a structured answer instead: the request's
//! client and sequence number, the VIP it was sent to, the backend's name and the kernel's
//! receive timestamp (SO_TIMESTAMPNS), so the soak learns which backend saw which client,
//! and when, from the answers alone.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket},
    os::fd::AsRawFd as _,
    time::Duration,
};

use xlb_tests::soak::wire;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let name = arg(&args, "--name").expect("--name");
    let http_port: u16 = arg(&args, "--http-port")
        .expect("--http-port")
        .parse()
        .expect("port");
    let udp_port: u16 = arg(&args, "--udp-port")
        .expect("--udp-port")
        .parse()
        .expect("port");
    let binds: Vec<IpAddr> = arg(&args, "--udp-bind")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("--udp-bind address"))
        .collect();

    for addr in binds {
        let sock = UdpSocket::bind(SocketAddr::new(addr, udp_port))
            .unwrap_or_else(|e| panic!("bind udp {addr}:{udp_port}: {e}"));
        let name = name.clone();
        std::thread::spawn(move || serve_udp(&sock, addr, &name));
    }

    // [::] with IPV6_V6ONLY off (the Linux default) takes IPv4 too.
    let listener = TcpListener::bind(SocketAddr::new(
        IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        http_port,
    ))
    .unwrap_or_else(|e| panic!("bind tcp [::]:{http_port}: {e}"));
    println!("{name}: http on :{http_port}, udp on :{udp_port}");
    for stream in listener.incoming() {
        let Ok(mut s) = stream else { continue };
        let name = name.clone();
        std::thread::spawn(move || serve_http(&mut s, &name));
    }
}

/// One HTTP exchange: `GET /bytes/N` gets N bytes then the name (a download larger than
/// any MTU); `POST` with a `Content-Length` body gets `RECEIVED NAME` once the whole body
/// arrived (an upload larger than any MTU); anything else gets the name.
fn serve_http(s: &mut std::net::TcpStream, name: &str) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut req = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    // Read the request head (health checks and clients send small ones).
    let head_end = loop {
        if let Some(i) = req.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
        if req.len() > 64 * 1024 {
            return;
        }
    };
    let head = String::from_utf8_lossy(&req[..head_end]).into_owned();
    let body = if head.starts_with("POST ") {
        let want = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        let mut got = req.len() - head_end;
        while got < want {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n,
            }
        }
        format!("{got} {name}\n")
    } else {
        let size = head
            .strip_prefix("GET /bytes/")
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0)
            .min(64 << 20);
        format!("{}{name}\n", ".".repeat(size))
    };
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(resp.as_bytes());
}

/// Answers every datagram on `sock` (bound to `local`): a soak request with a soak answer,
/// anything else with the name.
fn serve_udp(sock: &UdpSocket, local: IpAddr, name: &str) {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket and option value; failure only loses kernel stamps.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    // A datagram up to the largest UDP payload (clients send fragmented ones).
    let mut buf = vec![0u8; 65536];
    loop {
        let Some((n, from, stamp)) = recv_stamped(sock, &mut buf) else {
            continue;
        };
        let reply = match wire::Request::decode(&buf[..n]) {
            Some(request) => wire::Answer {
                request,
                rx_ns: stamp.unwrap_or_else(wire::now_ns),
                kernel_stamp: stamp.is_some(),
                dst: local,
                backend: name.to_string(),
            }
            .encode(),
            None => name.as_bytes().to_vec(),
        };
        let _ = sock.send_to(&reply, from);
    }
}

/// One datagram with its sender and the kernel's receive time (ns, CLOCK_REALTIME).
fn recv_stamped(sock: &UdpSocket, buf: &mut [u8]) -> Option<(usize, SocketAddr, Option<u64>)> {
    // SAFETY: zeroed sockaddr_storage, iovec and msghdr are valid initial values.
    let mut from: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 16];
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut from as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: msg points at buffers that live for the call.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return None;
    }
    let mut stamp = None;
    // SAFETY: walking the control buffer the kernel filled, with the libc CMSG helpers.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                stamp = Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Some((n as usize, sockaddr_to_std(&from)?, stamp))
}

fn sockaddr_to_std(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this is a sockaddr_in.
            let a: &libc::sockaddr_in = unsafe { &*(s as *const libc::sockaddr_storage).cast() };
            Some(SocketAddr::new(
                IpAddr::from(u32::from_be(a.sin_addr.s_addr).to_be_bytes()),
                u16::from_be(a.sin_port),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this is a sockaddr_in6.
            let a: &libc::sockaddr_in6 = unsafe { &*(s as *const libc::sockaddr_storage).cast() };
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                a.sin6_addr.s6_addr.into(),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}
