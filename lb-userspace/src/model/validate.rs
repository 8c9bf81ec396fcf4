//! THE validator: the config file, the CLI's `service add` and every [`Edit`] the daemon
//! receives go through these functions, so a rule is written once and every way in
//! applies it alike.
//!
//! Field names are relative to the service (`prefix_v4`, `backend[2].weight`,
//! `health.timeout`); callers prefix them (`service[0].`) or map them to flags.
//!
//! Owns: the rules and their messages. Must not touch: parsing (it sees typed values),
//! the maps, the daemon's observations.
//!
//! [`Edit`]: super::Edit

use std::{collections::HashSet, fmt, net::IpAddr, net::SocketAddr, time::Duration};

use lb_common::maglev::{is_prime, next_prime};

use super::{
    Announce, Forwarding, HealthCheck, HealthKind, Service, TUNNEL_KINDS, announce::PLACEHOLDERS,
    format_duration, is_ipv6_link_local, limits::*, prefix::Prefix, status_range,
};

/// A problem with one field, named relative to its service (or to the edit that
/// carries it).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// `a: x; b: y`, for one-line messages.
pub fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Collects the field errors of one value, so that all of them get reported.
#[derive(Default)]
pub struct Errors(pub Vec<FieldError>);

impl Errors {
    pub fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }

    pub fn finish<T>(self, value: T) -> Result<T, Vec<FieldError>> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self.0)
        }
    }
}

/// `"33 is out of range (0..=32)"`.
pub fn out_of_range(
    value: impl fmt::Display,
    lo: impl fmt::Display,
    hi: impl fmt::Display,
) -> String {
    format!("{value} is out of range ({lo}..={hi})")
}

/// Checks one service on its own and against `others` (the services it must coexist
/// with, not including itself): name and listener (VIP, port, protocol) are unique, and
/// all of them together fit the data plane's id spaces.
pub fn validate_service(svc: &Service, others: &[&Service]) -> Result<(), Vec<FieldError>> {
    let mut e = Errors::default();
    check_name(&mut e, svc, others);
    check_listener(&mut e, svc, others);
    if svc.prefix_v4 > MAX_PREFIX_V4 {
        e.push("prefix_v4", out_of_range(svc.prefix_v4, 0, MAX_PREFIX_V4));
    }
    if svc.prefix_v6 > MAX_PREFIX_V6 {
        e.push("prefix_v6", out_of_range(svc.prefix_v6, 0, MAX_PREFIX_V6));
    }
    if let Some(why) = check_idle_timeout(svc.idle_timeout) {
        e.push("idle_timeout", why);
    }
    check_table_size(&mut e, svc, others);
    if svc.nat_warn_share.0 == 0 || svc.nat_warn_share.0 > 1_000_000 {
        e.push(
            "nat_warn_share",
            format!(
                "{} is out of range (a share above 0, at most 1)",
                svc.nat_warn_share
            ),
        );
    }
    check_nat_sources(&mut e, svc, others);
    if let Some(f) = svc.balance_factor
        && (f <= MIN_BALANCE_FACTOR || f > MAX_BALANCE_FACTOR)
    {
        e.push(
            "balance_factor",
            format!(
                "{f} is out of range (above {MIN_BALANCE_FACTOR}, at most {MAX_BALANCE_FACTOR})"
            ),
        );
    }
    check_backends(&mut e, svc);
    check_tunnel_source(&mut e, svc);
    check_health(&mut e, &svc.health);
    e.finish(())
}

/// `tunnel_source` only in tunnel mode, and of the family of every backend (it is the
/// outer source: the outer header has the backend's family). Host bits are refused when
/// the prefix is parsed ([`super::Prefix`]).
fn check_tunnel_source(e: &mut Errors, svc: &Service) {
    let Some(p) = svc.tunnel_source else { return };
    if svc.forwarding != Forwarding::Tunnel {
        e.push(
            "tunnel_source",
            format!(
                "applies only to forwarding = \"tunnel\" (this service has forwarding = \"{}\")",
                svc.forwarding
            ),
        );
        return;
    }
    if let Some(why) = not_a_source_prefix(p) {
        e.push("tunnel_source", format!("{p} {why}"));
        return;
    }
    if let Some(b) = svc
        .backends
        .iter()
        .find(|b| b.address.is_ipv4() != p.addr.is_ipv4())
    {
        e.push(
            "tunnel_source",
            format!(
                "{p} is not of the family of backend {}: the outer source and the outer \
                 destination (the backend) are one header's; give the service backends of \
                 one family, or no tunnel_source (the egress interface's address of each \
                 backend's family is used)",
                b.address
            ),
        );
    }
}

/// Why `p` cannot give outer sources, if it cannot: every address of it becomes the
/// source of packets routed to the backends, so it must be global unicast (RFC 1122
/// §3.2.1.3 and RFC 4291 §2.5.2 forbid the others as sources; routers drop them), and
/// long enough to be an allocation of the operator's (at least /8 for IPv4, /16 for
/// IPv6), not "everything".
fn not_a_source_prefix(p: Prefix) -> Option<&'static str> {
    let (min, what) = match p.addr {
        IpAddr::V4(a) => (
            8,
            if a.is_loopback() {
                Some("is loopback (127.0.0.0/8): not a source on the wire")
            } else if a.is_multicast() || a.octets()[0] >= 240 {
                Some("is multicast or reserved (224.0.0.0/3)")
            } else if a.octets()[0] == 0 {
                Some("is in 0.0.0.0/8 (this network: no source)")
            } else if a.is_link_local() {
                Some("is link-local (169.254.0.0/16: not routed)")
            } else {
                None
            },
        ),
        IpAddr::V6(a) => (
            16,
            if a.is_loopback() || a.is_unspecified() {
                Some("is loopback or unspecified")
            } else if a.is_multicast() {
                Some("is multicast (ff00::/8)")
            } else if a.segments()[0] & 0xffc0 == 0xfe80 {
                Some("is link-local (fe80::/10: not routed)")
            } else {
                None
            },
        ),
    };
    if what.is_some() {
        return what;
    }
    (p.len < min).then_some(
        "is too short for outer sources (at least /8 for IPv4, /16 for IPv6): give the \
         prefix routed to the balancers",
    )
}

/// Same family as the VIP (other clients never reach it), no duplicates, at most
/// `MAX_NAT_SOURCES_PER_SERVICE`, and all services together within the data plane's
/// `MAX_NAT_SOURCES`.
fn check_nat_sources(e: &mut Errors, svc: &Service, others: &[&Service]) {
    let max = lb_common::natsrc::MAX_NAT_SOURCES_PER_SERVICE;
    let total = lb_common::natsrc::MAX_NAT_SOURCES as usize;
    let all: usize =
        others.iter().map(|o| o.nat_sources.len()).sum::<usize>() + svc.nat_sources.len();
    if svc.nat_sources.len() > max {
        e.push(
            "nat_sources",
            format!("{} prefixes: at most {max}", svc.nat_sources.len()),
        );
    } else if all > total {
        e.push(
            "nat_sources",
            format!("{all} prefixes over all services: at most {total}"),
        );
    }
    for (i, p) in svc.nat_sources.iter().enumerate() {
        let field = format!("nat_sources[{i}]");
        if p.addr.is_ipv4() != svc.vip.is_ipv4() {
            e.push(
                field,
                format!("{p} is not of the family of the VIP {}", svc.vip),
            );
        } else if svc.nat_sources[..i].contains(p) {
            e.push(field, format!("{p} is listed twice"));
        }
    }
}

fn check_name(e: &mut Errors, svc: &Service, others: &[&Service]) {
    let name_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    let name = &svc.name;
    if name.is_empty() {
        e.push("name", "must not be empty");
    } else if name.len() > NAME_MAX_LEN || !name.chars().all(name_ok) {
        e.push(
            "name",
            format!(
                "{name:?} must be 1 to {NAME_MAX_LEN} characters of A-Z, a-z, 0-9, '_', '.', '-'"
            ),
        );
    } else if others.iter().any(|o| o.name == *name) {
        e.push("name", format!("duplicate service name {name:?}"));
    } else if others.len() >= MAX_SERVICES as usize {
        e.push("name", format!("too many services: at most {MAX_SERVICES}"));
    }
}

fn check_listener(e: &mut Errors, svc: &Service, others: &[&Service]) {
    // A loopback address never arrives on a NIC, so XDP never sees its packets.
    if svc.vip.is_unspecified() || svc.vip.is_multicast() || svc.vip.is_loopback() {
        e.push(
            "vip",
            format!(
                "{} cannot be a VIP (unspecified, multicast or loopback)",
                svc.vip
            ),
        );
    }
    // A port-0 service and a port-80 service on one VIP coexist (the specific one wins).
    if let Some(o) = others
        .iter()
        .find(|o| o.vip == svc.vip && o.port == svc.port && o.protocol == svc.protocol)
    {
        e.push(
            "port",
            format!(
                "{}/{} is already used by service {:?}",
                SocketAddr::new(svc.vip, svc.port),
                svc.protocol,
                o.name
            ),
        );
    }
}

/// Why `t` cannot be an idle timeout, if it cannot.
pub fn check_idle_timeout(t: Duration) -> Option<String> {
    if t.is_zero() {
        Some("must be greater than 0".into())
    } else if t < MIN_IDLE_TIMEOUT {
        Some(format!(
            "{} is too short: must be at least {}: idleness is measured with the kernel's \
             coarse clock, which steps once per scheduler tick (up to 10 ms), and an active \
             client's entry is refreshed only every so often; a shorter timeout would not \
             mean what it says",
            format_duration(t),
            format_duration(MIN_IDLE_TIMEOUT)
        ))
    } else if t > MAX_IDLE_TIMEOUT {
        Some(format!(
            "{} is too long: must be at most {} (26 days): the affinity table stamps \
             entries with a 31-bit clock of 2^20 ns units and cannot measure a longer \
             idleness",
            format_duration(t),
            format_duration(MAX_IDLE_TIMEOUT)
        ))
    } else {
        None
    }
}

fn check_table_size(e: &mut Errors, svc: &Service, others: &[&Service]) {
    let n = svc.backends.len();
    let total = n + others.iter().map(|o| o.backends.len()).sum::<usize>();
    if n > MAX_BACKENDS as usize {
        e.push("backend", format!("{n} backends: at most {MAX_BACKENDS}"));
    } else if total > MAX_BACKENDS as usize {
        e.push(
            "backend",
            format!("{total} backends over all services: at most {MAX_BACKENDS}"),
        );
    }
    let m = svc.table_size;
    let min = (n as u64 * u64::from(SLOTS_PER_BACKEND)).max(MIN_TABLE_SIZE.into());
    if m > MAX_TABLE_SIZE {
        e.push(
            "table_size",
            out_of_range(m, MIN_TABLE_SIZE, MAX_TABLE_SIZE),
        );
    } else if min > u64::from(MAX_TABLE_SIZE) {
        // Only reachable with more backends than MAX_BACKENDS, reported above.
    } else if !is_prime(m) {
        // Maglev's permutations need a prime M; suggest one that also fits the backends.
        let suggestion = next_prime(m.max(min as u32));
        e.push(
            "table_size",
            format!("{m} is not prime (next prime: {suggestion})"),
        );
    } else if u64::from(m) < min {
        e.push(
            "table_size",
            format!(
                "{m} is too small for {n} backend(s): at least {min} ({SLOTS_PER_BACKEND} slots \
                 per backend, {MIN_TABLE_SIZE} at least); next prime: {}",
                next_prime(min as u32)
            ),
        );
    }
}

fn check_backends(e: &mut Errors, svc: &Service) {
    let mut seen = HashSet::new();
    for (i, b) in svc.backends.iter().enumerate() {
        let field = |key: &str| format!("backend[{i}].{key}");
        if let Some(why) = check_backend_address(b.address) {
            e.push(field("address"), why);
        } else if !seen.insert(b.address) {
            e.push(field("address"), format!("duplicate backend {}", b.address));
        } else if let Some(why) = check_family(svc, b.address) {
            e.push(field("address"), why);
        }
        if let Some(why) = check_weight(b.weight) {
            e.push(field("weight"), why);
        }
    }
}

/// Why `a` cannot be a backend address on its own, if it cannot.
pub fn check_backend_address(a: IpAddr) -> Option<String> {
    if a.is_unspecified() || a.is_multicast() || a.is_loopback() {
        Some(format!(
            "{a} cannot be a backend (unspecified, multicast or loopback)"
        ))
    } else if is_ipv6_link_local(a) {
        Some(format!(
            "{a} is IPv6 link-local: it is only reachable with a zone (an interface), which \
             neither health checks nor the neighbour lookup carry; use a global or \
             unique-local address of the backend"
        ))
    } else {
        None
    }
}

/// Why backend `a` cannot serve `svc`'s VIP, if it cannot.
pub fn check_family(svc: &Service, a: IpAddr) -> Option<String> {
    match svc.forwarding {
        // DSR rewrites only the MAC: the packet still carries the VIP's family.
        Forwarding::Dsr => (a.is_ipv4() != svc.vip.is_ipv4()).then(|| {
            format!(
                "backend {a} and VIP {} differ in address family (not possible in {} mode)",
                svc.vip, svc.forwarding
            )
        }),
        // IPv6 in IPv4 would need the outer IPv4 header to carry a whole IPv6 packet
        // whose PMTU rules differ; not supported.
        Forwarding::Tunnel => (svc.vip.is_ipv6() && a.is_ipv4()).then(|| {
            format!(
                "IPv4 backend {a} cannot serve the IPv6 VIP {} (IPv6 in IPv4 is not \
                 supported); tunnel mode supports: {TUNNEL_KINDS}",
                svc.vip
            )
        }),
    }
}

/// Why `w` cannot be a weight, if it cannot.
pub fn check_weight(w: u32) -> Option<String> {
    if w == 0 {
        Some("0 is not allowed (remove or drain the backend instead)".into())
    } else if !(MIN_WEIGHT..=MAX_WEIGHT).contains(&w) {
        Some(out_of_range(w, MIN_WEIGHT, MAX_WEIGHT))
    } else {
        None
    }
}

fn check_health(e: &mut Errors, h: &HealthCheck) {
    if h.kind.port() == Some(0) {
        e.push("health.port", out_of_range(0, 1, u16::MAX));
    }
    if let HealthKind::Http {
        path,
        host,
        expect_status: (lo, hi),
        ..
    } = &h.kind
    {
        // Both go into the request line and headers verbatim.
        let clean = |s: &str| !s.chars().any(|c| c.is_whitespace() || c.is_control());
        if !path.starts_with('/') || !clean(path) {
            e.push(
                "health.path",
                format!("{path:?} must start with '/' and contain no spaces or control characters"),
            );
        }
        if let Some(host) = host.as_deref().filter(|h| h.is_empty() || !clean(h)) {
            e.push(
                "health.host",
                format!("{host:?} must be non-empty, without spaces or control characters"),
            );
        }
        let status = HTTP_STATUS_MIN..=HTTP_STATUS_MAX;
        if !status.contains(lo) || !status.contains(hi) || lo > hi {
            e.push(
                "health.expect",
                format!(
                    "{:?} is not a status or status range within {HTTP_STATUS_MIN}..={HTTP_STATUS_MAX}",
                    status_range(*lo, *hi)
                ),
            );
        }
    }
    check_timing(e, h);
    for (field, n) in [("health.rise", h.rise), ("health.fall", h.fall)] {
        if !(1..=MAX_RISE_FALL).contains(&n) {
            e.push(field, out_of_range(n, 1, MAX_RISE_FALL));
        }
    }
}

fn check_timing(e: &mut Errors, h: &HealthCheck) {
    let fmt = format_duration;
    if h.interval.is_zero() {
        e.push("health.interval", "must be greater than 0");
    } else if h.interval < MIN_HEALTH_INTERVAL || h.interval > MAX_HEALTH_INTERVAL {
        e.push(
            "health.interval",
            format!(
                "{} is outside {}..={} (probes more often are load, not monitoring; longer \
                 ones leave failures unseen)",
                fmt(h.interval),
                fmt(MIN_HEALTH_INTERVAL),
                fmt(MAX_HEALTH_INTERVAL)
            ),
        );
    }
    if h.timeout.is_zero() {
        e.push("health.timeout", "must be greater than 0");
    } else if h.timeout > h.interval && !h.interval.is_zero() {
        // A probe still running when the next starts would overlap it: the checks of
        // one backend are one after the other.
        e.push(
            "health.timeout",
            format!(
                "{} is longer than the interval {}",
                fmt(h.timeout),
                fmt(h.interval)
            ),
        );
    }
}

/// Checks the `[announce]` table's values: BIRD's socket is an absolute path; each
/// command names a program and says which VIP it is about (every VIP is announced and
/// withdrawn on its own, so a command without `{vip}` or `{prefix}` would do the same
/// for all of them).
pub fn validate_announce(a: &Announce) -> Result<(), Vec<FieldError>> {
    let mut e = Errors::default();
    match a {
        Announce::None => {}
        Announce::Bird { socket } => {
            if !socket.is_absolute() {
                e.push("socket", format!("{:?} must be an absolute path", socket));
            }
        }
        Announce::Command { announce, withdraw } => {
            for (field, argv) in [("announce", announce), ("withdraw", withdraw)] {
                if argv.first().is_none_or(|p| p.is_empty()) {
                    e.push(
                        field,
                        "must name a program, e.g. [\"/usr/local/bin/vip\", \"add\", \"{prefix}\"]",
                    );
                } else if !argv
                    .iter()
                    .any(|a| PLACEHOLDERS.iter().any(|p| a.contains(p)))
                {
                    e.push(
                        field,
                        format!(
                            "must contain {} or {} (it runs once per VIP)",
                            PLACEHOLDERS[0], PLACEHOLDERS[1]
                        ),
                    );
                }
            }
        }
    }
    e.finish(())
}
