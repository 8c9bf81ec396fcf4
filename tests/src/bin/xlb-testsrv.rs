//! The lab's backend server: answers every HTTP request and every UDP datagram with its
//! name, so a client can tell which backend it reached.
//!
//! `xlb-testsrv --name be0 --http-port 80 --udp-port 53 --udp-bind 10.200.0.1,10.100.0.11,...`
//!
//! UDP sockets are bound per address (not the wildcard) so that each reply leaves from the
//! address the datagram was sent to — the VIP for balanced traffic (DSR), the backend's own
//! address for health checks.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket},
    time::Duration,
};

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
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            loop {
                if let Ok((_, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(name.as_bytes(), from);
                }
            }
        });
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
        std::thread::spawn(move || {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            // Read the request head (health checks and clients send small ones).
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
                if req.len() > 16 * 1024 {
                    return;
                }
            }
            let body = format!("{name}\n");
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes());
        });
    }
}
