//! The serialized shape of a service: one `[[service]]` table of the config file, and the
//! JSON of a service in the control API and the state file. One schema for all of them
//! keeps the state file readable and checked by the same code as the config.
//!
//! Optional fields are those with defaults; integers are `i64` so that an out-of-range
//! number gets a message naming the allowed range rather than serde's type name; enums
//! are strings so that all bad values of a table are reported together.
//!
//! Owns: [`RawService`] and its conversions to and from [`Service`], and the small parsing
//! helpers the config's `[daemon]` table shares. Must not touch: rules between fields
//! (they are the validator's) or where a key sits in a file (config/locate.rs).

use std::{net::IpAddr, time::Duration};

use serde::{Deserialize, Serialize};

use super::{
    Backend, CheckKind, FUTURE_FORWARDING, Forwarding, HealthCheck, HealthKind, Millionths, Named,
    Service, format_duration,
    limits::*,
    parse_address, parse_duration, parse_status_range, status_range,
    validate::{Errors, FieldError, join, out_of_range, validate_service},
};

/// A `[[service]]` table as written.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawService {
    pub name: Option<String>,
    pub vip: Option<String>,
    pub port: Option<i64>,
    pub protocol: Option<String>,
    pub forwarding: Option<String>,
    pub affinity: Option<String>,
    pub prefix_v4: Option<i64>,
    pub prefix_v6: Option<i64>,
    pub idle_timeout: Option<String>,
    pub failback: Option<String>,
    pub table_size: Option<i64>,
    pub no_backend: Option<String>,
    pub health: Option<RawHealth>,
    pub nat_warn_share: Option<f64>,
    pub nat_sources: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balance_factor: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel_source: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend: Vec<RawBackend>,
}

/// The `health` table of a service.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawHealth {
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub rise: Option<i64>,
    pub fall: Option<i64>,
    pub initial: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect: Option<RawExpect>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send: Option<String>,
}

/// `expect` is a status (`200`), a status range (`"200-399"`) for http, text for udp.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(
    untagged,
    expecting = "an HTTP status (200), a status range (\"200-399\") or a string"
)]
pub enum RawExpect {
    Status(i64),
    Text(String),
}

/// A `[[service.backend]]` table.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawBackend {
    pub address: Option<String>,
    pub weight: Option<i64>,
    pub draining: Option<bool>,
}

// ---------------------------------------------------------------------------------------
// Raw → typed: defaults and parsing of strings. A number is only rejected here when it
// does not fit its type; its range is the validator's (which also sees services built
// without a file).
// ---------------------------------------------------------------------------------------

/// A service from its table; every field error found, named relative to the service.
pub fn service_from_raw(raw: RawService) -> Result<Service, Vec<FieldError>> {
    let mut e = Errors::default();
    let name = required(&mut e, "name", raw.name).unwrap_or_default();
    let vip = required(&mut e, "vip", raw.vip)
        .and_then(|s| address(&mut e, "vip", &s))
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    // Only a valid port can make health.port required (port = 0); a missing or bad one
    // is reported once, under `port`.
    let port_known = raw.port.is_some_and(|p| u16::try_from(p).is_ok());
    let port =
        required(&mut e, "port", raw.port).map_or(0, |p| int(&mut e, "port", p, 0, u16::MAX));
    let protocol = match required(&mut e, "protocol", raw.protocol) {
        Some(p) => named(&mut e, "protocol", Some(p), super::Protocol::Tcp),
        None => super::Protocol::Tcp,
    };
    let mut s = Service::new(&name, vip, port, protocol);
    s.affinity = named(&mut e, "affinity", raw.affinity, s.affinity);
    s.failback = named(&mut e, "failback", raw.failback, s.failback);
    s.no_backend = named(&mut e, "no_backend", raw.no_backend, s.no_backend);
    s.forwarding = forwarding(&mut e, raw.forwarding);
    if let Some(p) = raw.prefix_v4 {
        s.prefix_v4 = int(&mut e, "prefix_v4", p, 0, MAX_PREFIX_V4);
    }
    if let Some(p) = raw.prefix_v6 {
        s.prefix_v6 = int(&mut e, "prefix_v6", p, 0, MAX_PREFIX_V6);
    }
    if let Some(d) = raw.idle_timeout {
        s.idle_timeout = duration(&mut e, "idle_timeout", &d);
    }
    if let Some(m) = raw.table_size {
        s.table_size = int(&mut e, "table_size", m, MIN_TABLE_SIZE, MAX_TABLE_SIZE);
    }
    s.health = health_from_raw(&mut e, raw.health.unwrap_or_default(), port, port_known);
    if let Some(x) = raw.nat_warn_share {
        s.nat_warn_share = share(&mut e, "nat_warn_share", x);
    }
    if let Some(x) = raw.balance_factor {
        s.balance_factor = Some(Millionths::from_f64(x).unwrap_or_else(|| {
            e.push("balance_factor", format!("{x} is not a factor"));
            Millionths(0)
        }));
    }
    for (i, p) in raw.nat_sources.unwrap_or_default().iter().enumerate() {
        match p.parse() {
            Ok(p) => s.nat_sources.push(p),
            Err(why) => e.push(format!("nat_sources[{i}]"), why),
        }
    }
    if let Some(p) = raw.tunnel_source {
        match p.parse() {
            Ok(p) => s.tunnel_source = Some(p),
            Err(why) => e.push("tunnel_source", why),
        }
    }
    s.backends = raw
        .backend
        .into_iter()
        .enumerate()
        .map(|(i, b)| backend_from_raw(&mut e, i, b))
        .collect();
    e.finish(s)
}

fn forwarding(e: &mut Errors, raw: Option<String>) -> Forwarding {
    match raw.as_deref() {
        Some(mode) if FUTURE_FORWARDING.contains(&mode) => {
            e.push(
                "forwarding",
                format!(
                    "{mode:?} is not supported yet (only {})",
                    Forwarding::expected()
                ),
            );
            DEFAULT_FORWARDING
        }
        _ => named(e, "forwarding", raw, DEFAULT_FORWARDING),
    }
}

fn backend_from_raw(e: &mut Errors, i: usize, b: RawBackend) -> Backend {
    let field = |key: &str| format!("backend[{i}].{key}");
    let address = required(e, field("address"), b.address)
        .and_then(|s| address(e, field("address"), &s))
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let weight = b.weight.map_or(DEFAULT_WEIGHT, |w| {
        int(e, field("weight"), w, MIN_WEIGHT, MAX_WEIGHT)
    });
    Backend {
        address,
        weight,
        draining: b.draining.unwrap_or(false),
    }
}

fn health_from_raw(
    e: &mut Errors,
    raw: RawHealth,
    service_port: u16,
    port_known: bool,
) -> HealthCheck {
    let known = raw
        .kind
        .as_deref()
        .is_none_or(|k| CheckKind::from_name(k).is_some());
    let kind = named(e, "health.kind", raw.kind.clone(), DEFAULT_CHECK_KIND);
    check_keys_apply(e, &raw, kind, known);
    let port = match raw.port {
        Some(p) => int(e, "health.port", p, 1, u16::MAX),
        None if service_port != 0 || kind == CheckKind::None || !port_known => service_port,
        None => {
            e.push(
                "health.port",
                "is required: the service listens on every port (port = 0)",
            );
            0
        }
    };
    let mut h = HealthCheck::new(HealthKind::default_for(kind, port));
    match &mut h.kind {
        HealthKind::Http {
            path,
            host,
            expect_status,
            body,
            ..
        } => {
            if let Some(p) = raw.path {
                *path = p;
            }
            *host = raw.host;
            *body = raw.body;
            if let Some(x) = raw.expect {
                *expect_status = http_expect(e, x);
            }
        }
        HealthKind::Udp { send, expect, .. } => {
            if let Some(s) = raw.send {
                *send = s;
            }
            *expect = match raw.expect {
                None => None,
                Some(RawExpect::Text(s)) => Some(s),
                Some(RawExpect::Status(_)) => {
                    e.push("health.expect", "must be a string for kind \"udp\"");
                    None
                }
            };
        }
        HealthKind::None | HealthKind::Tcp { .. } => {}
    }
    health_timing(e, raw.interval, raw.timeout, raw.rise, raw.fall, &mut h);
    h.initial = named(e, "health.initial", raw.initial, h.initial);
    h
}

/// Keys of one kind given for another are mistakes (a typo in `kind`, or a forgotten
/// one), not something to ignore silently.
fn check_keys_apply(e: &mut Errors, raw: &RawHealth, kind: CheckKind, known: bool) {
    let applies: &[&str] = match (known, kind) {
        (false, _) => &["port", "path", "host", "expect", "body", "send"],
        (_, CheckKind::None) => &[],
        (_, CheckKind::Tcp) => &["port"],
        (_, CheckKind::Http) => &["port", "path", "host", "expect", "body"],
        (_, CheckKind::Udp) => &["port", "send", "expect"],
    };
    for (key, given) in [
        ("port", raw.port.is_some()),
        ("path", raw.path.is_some()),
        ("host", raw.host.is_some()),
        ("expect", raw.expect.is_some()),
        ("body", raw.body.is_some()),
        ("send", raw.send.is_some()),
    ] {
        if given && !applies.contains(&key) {
            e.push(
                format!("health.{key}"),
                format!("does not apply to health kind {:?}", kind.name()),
            );
        }
    }
}

fn http_expect(e: &mut Errors, x: RawExpect) -> (u16, u16) {
    match x {
        RawExpect::Status(n) => {
            let n = int(e, "health.expect", n, HTTP_STATUS_MIN, HTTP_STATUS_MAX);
            (n, n)
        }
        RawExpect::Text(s) => parse_status_range(&s).unwrap_or_else(|| {
            e.push(
                "health.expect",
                format!("{s:?} is not an HTTP status (200) or range (\"200-399\")"),
            );
            DEFAULT_HTTP_EXPECT
        }),
    }
}

fn health_timing(
    e: &mut Errors,
    interval: Option<String>,
    timeout: Option<String>,
    rise: Option<i64>,
    fall: Option<i64>,
    h: &mut HealthCheck,
) {
    if let Some(s) = interval {
        h.interval = duration(e, "health.interval", &s);
    }
    if let Some(s) = timeout {
        h.timeout = duration(e, "health.timeout", &s);
    }
    if let Some(n) = rise {
        h.rise = int(e, "health.rise", n, 1, MAX_RISE_FALL);
    }
    if let Some(n) = fall {
        h.fall = int(e, "health.fall", n, 1, MAX_RISE_FALL);
    }
}

// --- helpers shared with the config's [daemon] table -------------------------------------

/// `value`, or "is required" when absent.
pub fn required<T>(e: &mut Errors, field: impl Into<String>, value: Option<T>) -> Option<T> {
    if value.is_none() {
        e.push(field, "is required");
    }
    value
}

fn address(e: &mut Errors, field: impl Into<String>, s: &str) -> Option<IpAddr> {
    parse_address(s).map_err(|why| e.push(field, why)).ok()
}

/// `value` as a `T`; `lo..=hi` is the allowed range, named in the message (and checked
/// by the validator, which also sees values built without a file).
pub fn int<T: TryFrom<i64> + Default>(
    e: &mut Errors,
    field: impl Into<String>,
    value: i64,
    lo: impl std::fmt::Display,
    hi: impl std::fmt::Display,
) -> T {
    T::try_from(value).unwrap_or_else(|_| {
        e.push(field, out_of_range(value, lo, hi));
        T::default()
    })
}

/// A share `0 < x <= 1` (its range is the validator's; here only what fits).
fn share(e: &mut Errors, field: &str, x: f64) -> Millionths {
    Millionths::from_f64(x).unwrap_or_else(|| {
        e.push(field, format!("{x} is not a share between 0 and 1"));
        Millionths(0)
    })
}

fn duration(e: &mut Errors, field: &str, s: &str) -> Duration {
    parse_duration(s).unwrap_or_else(|message| {
        e.push(field, message);
        Duration::ZERO
    })
}

/// One of `T`'s names; `default` when absent.
pub fn named<T: Named>(e: &mut Errors, field: &str, value: Option<String>, default: T) -> T {
    let Some(value) = value else { return default };
    T::parse_name(&value).unwrap_or_else(|why| {
        e.push(field, why);
        default
    })
}

// ---------------------------------------------------------------------------------------
// Typed → raw: the effective config, and the JSON form of a service.
// ---------------------------------------------------------------------------------------

impl From<&Service> for RawService {
    fn from(s: &Service) -> Self {
        Self {
            name: Some(s.name.clone()),
            vip: Some(s.vip.to_string()),
            port: Some(s.port.into()),
            protocol: Some(s.protocol.name().into()),
            forwarding: Some(s.forwarding.name().into()),
            affinity: Some(s.affinity.name().into()),
            prefix_v4: Some(s.prefix_v4.into()),
            prefix_v6: Some(s.prefix_v6.into()),
            idle_timeout: Some(format_duration(s.idle_timeout)),
            failback: Some(s.failback.name().into()),
            table_size: Some(s.table_size.into()),
            no_backend: Some(s.no_backend.name().into()),
            health: Some(RawHealth::from(&s.health)),
            nat_warn_share: Some(s.nat_warn_share.get()),
            nat_sources: Some(s.nat_sources.iter().map(|p| p.to_string()).collect()),
            balance_factor: s.balance_factor.map(Millionths::get),
            tunnel_source: s.tunnel_source.map(|p| p.to_string()),
            backend: s
                .backends
                .iter()
                .map(|b| RawBackend {
                    address: Some(b.address.to_string()),
                    weight: Some(b.weight.into()),
                    draining: Some(b.draining),
                })
                .collect(),
        }
    }
}

impl From<&HealthCheck> for RawHealth {
    fn from(h: &HealthCheck) -> Self {
        let mut raw = RawHealth {
            kind: Some(h.kind.tag().name().into()),
            interval: Some(format_duration(h.interval)),
            timeout: Some(format_duration(h.timeout)),
            rise: Some(h.rise.into()),
            fall: Some(h.fall.into()),
            initial: Some(h.initial.name().into()),
            port: h.kind.port().map(i64::from),
            ..Default::default()
        };
        match &h.kind {
            HealthKind::None | HealthKind::Tcp { .. } => {}
            HealthKind::Http {
                path,
                host,
                expect_status: (lo, hi),
                body,
                ..
            } => {
                raw.path = Some(path.clone());
                raw.host = host.clone();
                raw.body = body.clone();
                raw.expect = Some(RawExpect::Text(status_range(*lo, *hi)));
            }
            HealthKind::Udp { send, expect, .. } => {
                raw.send = Some(send.clone());
                raw.expect = expect.clone().map(RawExpect::Text);
            }
        }
        raw
    }
}

impl From<Service> for RawService {
    fn from(s: Service) -> Self {
        RawService::from(&s)
    }
}

impl TryFrom<RawService> for Service {
    type Error = String;

    /// Field parsing and the validator's single-service rules; the message names every
    /// field that is wrong (`prefix_v4: 33 is out of range (0..=32)`).
    fn try_from(raw: RawService) -> Result<Self, String> {
        let svc = service_from_raw(raw).map_err(|e| join(&e))?;
        validate_service(&svc, &[]).map_err(|e| join(&e))?;
        Ok(svc)
    }
}
