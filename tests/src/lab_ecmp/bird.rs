//! BIRD 2 for the ECMP lab: the router's and the nodes' configuration text, and a tiny
//! client of BIRD's control socket (`birdc` without the binary).
//!
//! Owns: what BIRD is told (protocols, timers, hash-independent ECMP settings). Must not
//! touch: namespaces and processes (the lab's), what xlb announces (the daemon's).
//!
//! Timers are the measured ones (DESIGN.md): BFD 100 ms × 3 detects a silent peer in
//! ≈0.3 s; `error wait time 1, 5` brings a recovered peer back within seconds instead of a
//! minute; graceful restart is off so a dead node's routes are not kept as stale.

use xlb::model::announce::bird_protocol_config;

use std::{
    io::{BufReader, Write as _},
    net::IpAddr,
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

/// The router's AS and the nodes' AS (all nodes share one: equal AS paths make the
/// router's routes mergeable into one ECMP route).
pub const ROUTER_AS: u32 = 65000;
pub const NODE_AS: u32 = 65001;

/// BGP session options shared by both ends.
const SESSION: &str = "bfd on; graceful restart off; error wait time 1, 5; \
     connect delay time 1; connect retry time 1; hold time 3; keepalive time 1;";

/// The router: one kernel protocol per family with `merge paths on` (one ECMP route over
/// every node announcing a VIP), BFD on the node-facing interface, and two BGP sessions
/// (IPv4, IPv6) per node. `nodes` are (name, IPv4, IPv6) of each node.
pub fn router_config(router_id: IpAddr, iface: &str, nodes: &[(String, IpAddr, IpAddr)]) -> String {
    let mut s = format!(
        "log stderr all;\nrouter id {router_id};\n\
         protocol device {{ scan time 10; }}\n\
         protocol kernel k4 {{ ipv4 {{ import none; export all; }}; merge paths on; }}\n\
         protocol kernel k6 {{ ipv6 {{ import none; export all; }}; merge paths on; }}\n\
         protocol bfd {{ interface \"{iface}\" {{ interval 100 ms; multiplier 3; }}; }}\n\
         template bgp xlbnode {{ local as {ROUTER_AS}; {SESSION} }}\n"
    );
    for (name, a4, a6) in nodes {
        s.push_str(&format!(
            "protocol bgp {name}_v4 from xlbnode {{ neighbor {a4} as {NODE_AS}; \
             ipv4 {{ import all; export none; }}; }}\n\
             protocol bgp {name}_v6 from xlbnode {{ neighbor {a6} as {NODE_AS}; \
             ipv6 {{ import all; export none; }}; }}\n"
        ));
    }
    s
}

/// A node: one static protocol per VIP, as xlb's README gives it (disabled: the node's
/// xlb enables it while it can serve the VIP; a blackhole route BIRD never installs here —
/// the node runs no kernel protocol — exported to the router over BGP with the node as
/// next hop), BFD, and an IPv4 and an IPv6 session to the router.
pub fn node_config(
    router_id: IpAddr,
    iface: &str,
    router: (IpAddr, IpAddr),
    vips: &[IpAddr],
) -> String {
    let mut s = format!(
        "log stderr all;\nrouter id {router_id};\n\
         protocol device {{ scan time 10; }}\n\
         protocol bfd {{ interface \"{iface}\" {{ interval 100 ms; multiplier 3; }}; }}\n"
    );
    for vip in vips {
        s.push_str(&bird_protocol_config(*vip));
        s.push('\n');
    }
    let (r4, r6) = router;
    s.push_str(&format!(
        "template bgp upstream {{ local as {NODE_AS}; {SESSION} }}\n\
         protocol bgp rt_v4 from upstream {{ neighbor {r4} as {ROUTER_AS}; \
         ipv4 {{ import none; export where source = RTS_STATIC; }}; }}\n\
         protocol bgp rt_v6 from upstream {{ neighbor {r6} as {ROUTER_AS}; \
         ipv6 {{ import none; export where source = RTS_STATIC; }}; }}\n"
    ));
    s
}

/// One command on BIRD's control socket; returns the reply's text (codes stripped).
/// Replies are lines `NNNN-text` (more follow), ` text` (continuation) and `NNNN text`
/// (the last); codes 8xxx and 9xxx are errors.
pub fn command(socket: &Path, cmd: &str) -> Result<String, String> {
    let stream = UnixStream::connect(socket)
        .map_err(|e| format!("connect to BIRD at {}: {e}", socket.display()))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    read_reply(&mut reader)?; // the greeting, "0001 BIRD x.y.z ready."
    (&stream)
        .write_all(format!("{cmd}\n").as_bytes())
        .map_err(|e| format!("write to BIRD: {e}"))?;
    read_reply(&mut reader)
}

fn read_reply(reader: &mut impl std::io::BufRead) -> Result<String, String> {
    let mut text = String::new();
    loop {
        let mut line = String::new();
        if reader
            .read_line(&mut line)
            .map_err(|e| format!("read from BIRD: {e}"))?
            == 0
        {
            return Err(format!("BIRD closed the socket; got so far: {text}"));
        }
        let line = line.trim_end_matches('\n');
        let (code, last, body) = match line.as_bytes() {
            [a, b, c, d, sep, ..] if [a, b, c, d].iter().all(|x| x.is_ascii_digit()) => {
                (Some(&line[..4]), *sep == b' ', &line[5..])
            }
            _ => (None, false, line.strip_prefix(' ').unwrap_or(line)),
        };
        text.push_str(body);
        text.push('\n');
        if last {
            return match code {
                Some(c) if c.starts_with('8') || c.starts_with('9') => Err(text),
                _ => Ok(text),
            };
        }
    }
}
