//! The soak's datagrams: what a client sends and what a backend's `xlb-testsrv` answers.
//! Shared by the soak (both ends of the client) and the test server; nothing else.
//!
//! A request carries the client's number and a sequence number, so every answer says who
//! asked, which request it answers, which backend saw it, at which VIP, and when the
//! backend's kernel received it (`SO_TIMESTAMPNS`, CLOCK_REALTIME): the soak compares that
//! time with the return time of `xlb backend remove` measured on the same clock.
//!
//! All integers are little-endian; times are nanoseconds since the Unix epoch.

use std::net::{IpAddr, Ipv6Addr};

/// First bytes of a soak request.
pub const REQUEST_MAGIC: &[u8; 4] = b"XSQ1";
/// First bytes of a soak answer.
pub const ANSWER_MAGIC: &[u8; 4] = b"XSA1";
/// Length of a request: magic, client (u32), seq (u32), reserved (u32), send time (u64).
pub const REQUEST_LEN: usize = 24;
/// Fixed part of an answer before the backend's name.
const ANSWER_FIXED: usize = 4 + 4 + 4 + 1 + 1 + 2 + 8 + 8 + 16 + 1;

/// A client's request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// The client's number (0-based; the soak maps it to a source address and a service).
    pub client: u32,
    /// Per-client sequence number, from 0.
    pub seq: u32,
    /// When the client sent it (ns, CLOCK_REALTIME).
    pub send_ns: u64,
}

impl Request {
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[..4].copy_from_slice(REQUEST_MAGIC);
        b[4..8].copy_from_slice(&self.client.to_le_bytes());
        b[8..12].copy_from_slice(&self.seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.send_ns.to_le_bytes());
        b
    }

    /// `None` unless `b` is a soak request.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != REQUEST_LEN || &b[..4] != REQUEST_MAGIC {
            return None;
        }
        Some(Self {
            client: u32::from_le_bytes(b[4..8].try_into().ok()?),
            seq: u32::from_le_bytes(b[8..12].try_into().ok()?),
            send_ns: u64::from_le_bytes(b[16..24].try_into().ok()?),
        })
    }
}

/// A backend's answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub request: Request,
    /// When the backend's kernel received the request (ns, CLOCK_REALTIME).
    pub rx_ns: u64,
    /// `rx_ns` is the kernel's receive timestamp (false: the server's clock after recvmsg,
    /// when the kernel gave none).
    pub kernel_stamp: bool,
    /// The address the request was sent to (the VIP).
    pub dst: IpAddr,
    /// The backend's name (`be0`, `be1`, ...).
    pub backend: String,
}

impl Answer {
    pub fn encode(&self) -> Vec<u8> {
        let name = self.backend.as_bytes();
        let name = &name[..name.len().min(255)];
        let mut b = Vec::with_capacity(ANSWER_FIXED + name.len());
        b.extend_from_slice(ANSWER_MAGIC);
        b.extend_from_slice(&self.request.client.to_le_bytes());
        b.extend_from_slice(&self.request.seq.to_le_bytes());
        b.push(u8::from(self.kernel_stamp));
        let (family, octets) = match self.dst {
            IpAddr::V4(a) => (4u8, a.to_ipv6_mapped().octets()),
            IpAddr::V6(a) => (6u8, a.octets()),
        };
        b.push(family);
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&self.request.send_ns.to_le_bytes());
        b.extend_from_slice(&self.rx_ns.to_le_bytes());
        b.extend_from_slice(&octets);
        b.push(name.len() as u8);
        b.extend_from_slice(name);
        b
    }

    /// `None` unless `b` is a well-formed soak answer.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < ANSWER_FIXED || &b[..4] != ANSWER_MAGIC {
            return None;
        }
        let u32_at = |i: usize| b[i..i + 4].try_into().ok().map(u32::from_le_bytes);
        let u64_at = |i: usize| b[i..i + 8].try_into().ok().map(u64::from_le_bytes);
        let octets: [u8; 16] = b[32..48].try_into().ok()?;
        let dst = match b[13] {
            4 => IpAddr::V4(Ipv6Addr::from(octets).to_ipv4_mapped()?),
            6 => IpAddr::V6(Ipv6Addr::from(octets)),
            _ => return None,
        };
        let name_len = b[48] as usize;
        let name = b.get(ANSWER_FIXED..ANSWER_FIXED + name_len)?;
        Some(Self {
            request: Request {
                client: u32_at(4)?,
                seq: u32_at(8)?,
                send_ns: u64_at(16)?,
            },
            kernel_stamp: b[12] == 1,
            rx_ns: u64_at(24)?,
            dst,
            backend: String::from_utf8(name.to_vec()).ok()?,
        })
    }
}

/// Now, in ns since the Unix epoch (CLOCK_REALTIME, the clock of kernel receive stamps).
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
