//! The domain of xlb, defined once: services, backends, health checks and the choices a
//! service makes (protocol, forwarding, affinity, failback, no_backend). The config file,
//! the CLI, the control API, the state file and `xlb status` are encodings of these types.
//!
//! Owns: the types ([`Service`], [`Backend`], [`HealthCheck`], …), their name tables
//! ([`names`]), limits and defaults ([`limits`]), the one validator ([`validate`]), the
//! runtime change ([`edit::Edit`]), the intent ([`desired::Desired`]) and how the node
//! announces its VIPs ([`announce::Announce`]).
//! Must not touch: maps, sockets, files; nothing here does I/O.

pub mod addr;
pub mod announce;
pub mod desired;
pub mod duration;
pub mod edit;
pub mod encode;
pub mod limits;
pub mod names;
pub mod prefix;
pub mod validate;

use std::{net::IpAddr, time::Duration};

pub use addr::{
    Link, addr_bytes, addr_from_bytes, addr_from_words, addr_words, is_ipv6_link_local,
};
pub use announce::{Announce, AnnounceKind};
pub use desired::Desired;
pub use duration::{HumanDuration, format_duration, parse_duration};
pub use edit::Edit;
pub use names::Named;
pub use prefix::Prefix;
pub use validate::FieldError;

use crate::named_enum;
use limits::*;

named_enum! {
    /// The transport protocol a service listens on.
    pub enum Protocol {
        Tcp = "tcp",
        Udp = "udp",
    }
}

impl Protocol {
    /// The IP protocol number (`IPPROTO_*`).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => lb_common::PROTO_TCP,
            Protocol::Udp => lb_common::PROTO_UDP,
        }
    }
}

named_enum! {
    /// How packets reach a backend.
    pub enum Forwarding {
        /// Rewrite L2 only; backends own the VIP and answer clients directly.
        Dsr = "dsr",
        /// Encapsulate (IPIP, IP6IP6, 4in6) towards the backend, which may be several
        /// hops away; backends own the VIP and answer clients directly.
        Tunnel = "tunnel",
    }
}

/// Forwarding modes that are planned but not implemented: the config names them as
/// "not supported yet" rather than unknown.
pub const FUTURE_FORWARDING: &[&str] = &["nat"];

/// The tunnel kinds `forwarding = "tunnel"` supports (VIP family → backend family), as
/// messages and the README name them.
pub const TUNNEL_KINDS: &str = "IPv4 VIP to IPv4 backend (IPIP), IPv6 VIP to IPv6 backend (IP6IP6), IPv4 VIP to IPv6 \
     backend (4in6)";

named_enum! {
    /// What the affinity key is made of.
    pub enum Affinity {
        /// Client source address masked to the service prefix.
        SourceIp = "source-ip",
        /// Source address and port: plain flow hashing, each connection decided alone.
        None = "none",
    }
}

named_enum! {
    /// What a recovered backend gets.
    pub enum Failback {
        /// Only new clients; clients re-pinned away from it stay where they are.
        Sticky = "sticky",
        /// Its former slots return to it, and their clients move back.
        Rebalance = "rebalance",
    }
}

named_enum! {
    /// What happens to packets of a service without a usable backend.
    pub enum NoBackend {
        Drop = "drop",
        /// Pass to the local stack.
        Pass = "pass",
    }
}

named_enum! {
    /// The kind of a health check (the tag of [`HealthKind`]).
    pub enum CheckKind {
        Tcp = "tcp",
        Http = "http",
        Udp = "udp",
        /// Nothing is probed: backends are always up.
        None = "none",
    }
}

named_enum! {
    /// The state of a backend before its health is known (new backend, fresh start).
    pub enum HealthInitial {
        /// Out of the table until its first passed check (one pass, not `rise`).
        Checked = "checked",
        /// In the table at once; checks take it out when they fail.
        Up = "up",
    }
}

named_enum! {
    /// What the daemon knows about a backend's health.
    pub enum Health {
        /// Not checked yet (a new backend, or this daemon's first check is pending).
        Unknown = "unknown",
        Up = "healthy",
        Down = "unhealthy",
    }
}

/// One service with everything it needs. Serializes (serde) in the shape of a
/// `[[service]]` table, every default spelled out (see [`encode`]); deserializing fills
/// the defaults and applies the checks of [`validate::validate_service`] that need no
/// other service.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(into = "encode::RawService", try_from = "encode::RawService")]
pub struct Service {
    /// `[A-Za-z0-9_.-]{1,64}`, unique.
    pub name: String,
    pub vip: IpAddr,
    /// 0 = every port.
    pub port: u16,
    pub protocol: Protocol,
    pub forwarding: Forwarding,
    pub affinity: Affinity,
    pub prefix_v4: u8,
    pub prefix_v6: u8,
    /// An affinity entry idle for longer is re-decided.
    pub idle_timeout: Duration,
    pub failback: Failback,
    /// Maglev table size M (prime).
    pub table_size: u32,
    pub no_backend: NoBackend,
    pub health: HealthCheck,
    /// Warn when one source or prefix carries more than this share of the service's
    /// packets (and it has at least 3 healthy backends).
    pub nat_warn_share: Millionths,
    /// Clients inside these prefixes (NAT gateways, proxies) are keyed on their whole
    /// address and source port: each connection is balanced alone. Same family as the
    /// VIP, no duplicates.
    pub nat_sources: Vec<Prefix>,
    /// Bounded-load hashing for new clients: a new client whose Maglev backend carries
    /// more than this × its fair share of the packets goes to the next backend of its
    /// probe sequence that does not. `None`: off.
    pub balance_factor: Option<Millionths>,
    /// Tunnel mode: outer source addresses are taken from this prefix, one per client
    /// (so the backend's RSS spreads clients over its queues); `None`: the balancer's
    /// address on the egress interface. The family of every backend.
    pub tunnel_source: Option<Prefix>,
    /// Unique by address, in the order they were given.
    pub backends: Vec<Backend>,
}

/// A share or factor held exactly, in millionths, so the model stays `Eq` (0.2 is
/// `Millionths(200_000)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millionths(pub u32);

impl Millionths {
    /// `x` rounded to millionths; `None` when it is not a finite number in `0..=4294`.
    pub fn from_f64(x: f64) -> Option<Self> {
        let m = (x * 1e6).round();
        (x.is_finite() && (0.0..=u32::MAX as f64).contains(&m)).then_some(Self(m as u32))
    }

    pub fn get(self) -> f64 {
        self.0 as f64 / 1e6
    }
}

/// Written as the number it stands for (`1.25`).
impl serde::Serialize for Millionths {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.get())
    }
}

impl<'de> serde::Deserialize<'de> for Millionths {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let x = f64::deserialize(d)?;
        Self::from_f64(x).ok_or_else(|| serde::de::Error::custom(format!("{x} is out of range")))
    }
}

impl std::fmt::Display for Millionths {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.get())
    }
}

impl Service {
    /// A service with every default: DSR, source-ip affinity, a TCP check on the service
    /// port, no backends.
    pub fn new(name: &str, vip: IpAddr, port: u16, protocol: Protocol) -> Self {
        Self {
            name: name.to_string(),
            vip,
            port,
            protocol,
            forwarding: DEFAULT_FORWARDING,
            affinity: DEFAULT_AFFINITY,
            prefix_v4: DEFAULT_PREFIX_V4,
            prefix_v6: DEFAULT_PREFIX_V6,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            failback: DEFAULT_FAILBACK,
            table_size: DEFAULT_TABLE_SIZE,
            no_backend: DEFAULT_NO_BACKEND,
            health: HealthCheck::new(HealthKind::default_for(DEFAULT_CHECK_KIND, port)),
            nat_warn_share: DEFAULT_NAT_WARN_SHARE,
            nat_sources: Vec::new(),
            balance_factor: None,
            tunnel_source: None,
            backends: Vec::new(),
        }
    }

    /// The prefix length that applies to this service's clients (its VIP's family).
    pub fn prefix_len(&self) -> u8 {
        match self.vip {
            IpAddr::V4(_) => self.prefix_v4,
            IpAddr::V6(_) => self.prefix_v6,
        }
    }

    pub fn backend(&self, address: IpAddr) -> Option<&Backend> {
        self.backends.iter().find(|b| b.address == address)
    }

    pub fn backend_mut(&mut self, address: IpAddr) -> Option<&mut Backend> {
        self.backends.iter_mut().find(|b| b.address == address)
    }

    /// Everything but the backends and the settings `xlb service set` changes equal: a
    /// change between the two is a [`Edit::ServiceSet`] and backend changes.
    pub fn same_but_spread(&self, other: &Service) -> bool {
        let strip = |s: &Service| Service {
            backends: Vec::new(),
            nat_sources: Vec::new(),
            balance_factor: None,
            ..s.clone()
        };
        strip(self) == strip(other)
    }

    /// Everything but the backends equal: a change between the two is a backend change.
    pub fn same_settings(&self, other: &Service) -> bool {
        let strip = |s: &Service| Service {
            backends: Vec::new(),
            ..s.clone()
        };
        strip(self) == strip(other)
    }
}

/// A backend of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub address: IpAddr,
    /// Share of new clients relative to the other backends.
    pub weight: u32,
    /// Keeps its pinned clients, takes no new ones.
    pub draining: bool,
}

impl Backend {
    /// A backend with the default weight, not draining.
    pub fn new(address: IpAddr) -> Self {
        Self {
            address,
            weight: DEFAULT_WEIGHT,
            draining: false,
        }
    }

    pub fn with_weight(address: IpAddr, weight: u32) -> Self {
        Self {
            weight,
            ..Self::new(address)
        }
    }
}

/// How a service's backends are checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub kind: HealthKind,
    /// Between probe starts.
    pub interval: Duration,
    /// Bound of one whole probe (connect, request, response).
    pub timeout: Duration,
    /// Consecutive passes that make an unhealthy backend healthy.
    pub rise: u32,
    /// Consecutive failures that make a healthy backend unhealthy.
    pub fall: u32,
    /// A backend whose health is not known yet: out of the table until checked, or in.
    pub initial: HealthInitial,
}

impl HealthCheck {
    /// A check of `kind` with the default timings.
    pub fn new(kind: HealthKind) -> Self {
        Self {
            kind,
            interval: DEFAULT_HEALTH_INTERVAL,
            timeout: DEFAULT_HEALTH_TIMEOUT,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
            initial: DEFAULT_HEALTH_INITIAL,
        }
    }

    /// The default check: TCP connect to `port`.
    pub fn tcp(port: u16) -> Self {
        Self::new(HealthKind::Tcp { port })
    }

    /// Whether a backend of unknown health may take clients (rules in `reconcile`).
    pub fn unknown_is_up(&self) -> bool {
        self.initial == HealthInitial::Up || self.kind == HealthKind::None
    }
}

/// What one probe does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthKind {
    /// Backends are always healthy.
    None,
    /// A TCP connect succeeds.
    Tcp { port: u16 },
    /// `GET path` answers with a status in `expect_status` (inclusive) and, if `body` is
    /// set, a body containing it.
    Http {
        port: u16,
        path: String,
        host: Option<String>,
        expect_status: (u16, u16),
        body: Option<String>,
    },
    /// `send` (the bytes of the string; empty by default) gets a reply, containing
    /// `expect` if set. An ICMP port unreachable or no reply within the timeout fails.
    Udp {
        port: u16,
        send: String,
        expect: Option<String>,
    },
}

impl HealthKind {
    /// A check of `kind` on `port` with that kind's defaults.
    pub fn default_for(kind: CheckKind, port: u16) -> Self {
        match kind {
            CheckKind::None => HealthKind::None,
            CheckKind::Tcp => HealthKind::Tcp { port },
            CheckKind::Http => HealthKind::Http {
                port,
                path: DEFAULT_HTTP_PATH.into(),
                host: None,
                expect_status: DEFAULT_HTTP_EXPECT,
                body: None,
            },
            CheckKind::Udp => HealthKind::Udp {
                port,
                send: DEFAULT_UDP_SEND.into(),
                expect: None,
            },
        }
    }

    pub fn tag(&self) -> CheckKind {
        match self {
            HealthKind::None => CheckKind::None,
            HealthKind::Tcp { .. } => CheckKind::Tcp,
            HealthKind::Http { .. } => CheckKind::Http,
            HealthKind::Udp { .. } => CheckKind::Udp,
        }
    }

    /// The port probed, for the kinds that probe one.
    pub fn port(&self) -> Option<u16> {
        match self {
            HealthKind::None => None,
            HealthKind::Tcp { port }
            | HealthKind::Http { port, .. }
            | HealthKind::Udp { port, .. } => Some(*port),
        }
    }
}

/// `"200"` or `"200-399"`, the inverse of [`parse_status_range`].
pub fn status_range(lo: u16, hi: u16) -> String {
    if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}-{hi}")
    }
}

/// `"200"` or `"200-399"`; the range itself is checked by the validator.
pub fn parse_status_range(s: &str) -> Option<(u16, u16)> {
    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
    Some((lo.trim().parse().ok()?, hi.trim().parse().ok()?))
}

/// Parses a backend or VIP address, explaining the forms people try that xlb cannot
/// use: an IPv6 zone (`fe80::1%eth0`).
pub fn parse_address(s: &str) -> Result<IpAddr, String> {
    if let Some((addr, zone)) = s.split_once('%')
        && addr.parse::<std::net::Ipv6Addr>().is_ok()
    {
        return Err(format!(
            "{s:?}: zone ids (%{zone}) are not supported: IPv6 link-local addresses need an \
             interface that neither health checks nor the neighbour lookup carry; use a \
             global or unique-local address"
        ));
    }
    s.parse()
        .map_err(|_| format!("{s:?} is not an IPv4 or IPv6 address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_table<T: Named + std::fmt::Debug>() {
        let mut seen = std::collections::HashSet::new();
        for (name, v) in T::NAMES {
            assert!(seen.insert(*name), "{name} twice");
            assert_eq!(T::from_name(name), Some(*v));
            assert_eq!(v.name(), *name);
        }
    }

    #[test]
    fn name_tables_are_one_to_one() {
        check_table::<Protocol>();
        check_table::<Forwarding>();
        check_table::<Affinity>();
        check_table::<Failback>();
        check_table::<NoBackend>();
        check_table::<CheckKind>();
        check_table::<HealthInitial>();
        check_table::<Health>();
        assert_eq!(Protocol::expected(), "\"tcp\", \"udp\"");
        assert!(
            Protocol::parse_name("sctp")
                .unwrap_err()
                .contains("\"tcp\", \"udp\"")
        );
        // serde and Display spell from the same table.
        assert_eq!(
            serde_json::to_string(&Affinity::SourceIp).unwrap(),
            "\"source-ip\""
        );
        assert_eq!(Health::Down.to_string(), "unhealthy");
    }

    #[test]
    fn link_local_and_zones() {
        assert!(is_ipv6_link_local("fe80::1".parse().unwrap()));
        assert!(is_ipv6_link_local("febf::1".parse().unwrap()));
        assert!(!is_ipv6_link_local("fec0::1".parse().unwrap()));
        assert!(!is_ipv6_link_local("169.254.0.1".parse().unwrap()));
        let e = parse_address("fe80::1%eth0").unwrap_err();
        assert!(e.contains("zone") && e.contains("link-local"), "{e}");
        assert_eq!(parse_address("10.0.0.1"), Ok("10.0.0.1".parse().unwrap()));
    }
}
