//! Config text → [`Config`]: the document tree, the `[daemon]` and `[announce]` tables,
//! and each `[[service]]` through `model::encode` and the validator.
//!
//! Owns: the order of the steps, the `[daemon]` rules and the shape of `[announce]`
//! (which keys go with which kind; its values are the validator's). Must not touch: a service's
//! rules (the validator's) or the key → line lookup (locate.rs).

use std::{collections::HashSet, ffi::CString, net::SocketAddr, path::Path};

use toml::{
    Spanned,
    de::{DeTable, DeValue},
};

use super::{
    Config, DaemonConfig, HostChecks, LocatedError, SocketGroup, default_state_file,
    locate::Doc,
    schema::{RawAnnounce, RawDaemon},
};
use crate::model::{
    Announce, AnnounceKind, FieldError, Named, Service,
    encode::{RawService, named, service_from_raw},
    limits::{DEFAULT_BIRD_SOCKET, MAX_AFFINITY_CAPACITY},
    validate::{Errors, out_of_range, validate_announce, validate_service},
};

/// Every error of the text, or the config. `host` says whether the checks against this
/// machine run (the last step, [`host_errors`]).
pub fn parse(path: &Path, text: &str, host: HostChecks) -> Result<Config, Vec<LocatedError>> {
    let (table, syntax_errors) = DeTable::parse_recoverable(text);
    let doc = Doc {
        text,
        root: Spanned::new(table.span(), DeValue::Table(table.into_inner())),
    };
    if !syntax_errors.is_empty() {
        return Err(syntax_errors.iter().map(|e| doc.toml_error(e)).collect());
    }
    let mut errors = Vec::new();
    let top = split_top(&doc, &mut errors);
    if host == HostChecks::Run
        && let Some(raw) = &top.daemon
    {
        let found = host_errors(raw);
        errors.extend(found.into_iter().map(|e| doc.field_error("daemon", e)));
    }
    let daemon = top.daemon.and_then(|raw| match daemon_from_raw(raw) {
        Ok(d) => Some(d),
        Err(fe) => {
            errors.extend(fe.into_iter().map(|e| doc.field_error("daemon", e)));
            None
        }
    });
    let announce = match top.announce.map(announce_from_raw) {
        None => Some(Announce::None),
        Some(Ok(a)) => Some(a),
        Some(Err(fe)) => {
            errors.extend(fe.into_iter().map(|e| doc.field_error("announce", e)));
            None
        }
    };
    let services = services(&doc, top.services, &mut errors);
    match (daemon, announce) {
        (Some(daemon), Some(announce)) if errors.is_empty() => Ok(Config {
            path: path.to_owned(),
            daemon,
            announce,
            services,
        }),
        _ => Err(errors),
    }
}

type RawServices = Vec<(usize, Option<RawService>)>;

/// The top-level tables as written (`daemon` is `None` when it did not deserialize).
struct RawTables {
    daemon: Option<RawDaemon>,
    announce: Option<RawAnnounce>,
    services: RawServices,
}

/// The `[daemon]` table (all defaults when absent), the `[announce]` table (absent: nothing
/// is announced) and the `[[service]]` tables.
fn split_top(doc: &Doc<'_>, errors: &mut Vec<LocatedError>) -> RawTables {
    let mut raw_daemon = Some(RawDaemon::default());
    let mut raw_announce = None;
    let mut raw_services = Vec::new();
    let DeValue::Table(top) = doc.root.get_ref() else {
        return RawTables {
            daemon: raw_daemon,
            announce: raw_announce,
            services: raw_services,
        };
    };
    for (key, value) in top.iter() {
        match key.get_ref().as_ref() {
            "daemon" => raw_daemon = doc.deserialize(value, errors),
            // A table that does not deserialize was reported; nothing is announced.
            "announce" => {
                raw_announce = Some(doc.deserialize(value, errors).unwrap_or_default());
            }
            "service" => match value.get_ref() {
                DeValue::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        raw_services.push((i, doc.deserialize::<RawService>(item, errors)));
                    }
                }
                _ => errors.push(doc.error(
                    value.span(),
                    "service",
                    "must be an array of tables ([[service]])",
                )),
            },
            other => errors.push(doc.error(
                key.span(),
                other,
                "unknown key (expected [daemon], [announce] or [[service]])",
            )),
        }
    }
    RawTables {
        daemon: raw_daemon,
        announce: raw_announce,
        services: raw_services,
    }
}

/// Each service parsed and validated against the ones before it.
fn services(doc: &Doc<'_>, raw: RawServices, errors: &mut Vec<LocatedError>) -> Vec<Service> {
    let mut services: Vec<Service> = Vec::new();
    for (i, raw) in raw {
        let prefix = format!("service[{i}]");
        let Some(raw) = raw else { continue };
        let svc = match service_from_raw(raw) {
            Ok(svc) => svc,
            Err(fe) => {
                errors.extend(fe.into_iter().map(|e| doc.field_error(&prefix, e)));
                continue;
            }
        };
        let others: Vec<&Service> = services.iter().collect();
        if let Err(fe) = validate_service(&svc, &others) {
            errors.extend(fe.into_iter().map(|e| doc.field_error(&prefix, e)));
        }
        // Kept even when invalid, so later duplicates of it are still reported.
        services.push(svc);
    }
    services
}

fn daemon_from_raw(raw: RawDaemon) -> Result<DaemonConfig, Vec<FieldError>> {
    let mut e = Errors::default();
    let mut d = DaemonConfig::new(Vec::new());
    interfaces(&mut e, raw.interfaces, &mut d);
    d.xdp_mode = named(&mut e, "xdp_mode", raw.xdp_mode, d.xdp_mode);
    d.icmp_echo = named(&mut e, "icmp_echo", raw.icmp_echo, d.icmp_echo);
    let mut state_file = None;
    for (field, value, target) in [
        ("pin_dir", raw.pin_dir, &mut d.pin_dir),
        ("socket", raw.socket, &mut d.socket),
        (
            "state_file",
            raw.state_file,
            state_file.get_or_insert_default(),
        ),
    ] {
        if let Some(value) = value {
            if Path::new(&value).is_absolute() {
                *target = value.into();
            } else {
                e.push(field, format!("{value:?} must be an absolute path"));
            }
        }
    }
    d.state_file = state_file
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| default_state_file(&d.pin_dir));
    d.metrics = metrics(&mut e, raw.metrics);
    // Whether the group exists here is a host check (`host_errors`).
    d.socket_group = raw
        .socket_group
        .filter(|g| !g.is_empty())
        .map(|name| SocketGroup {
            gid: group_id(&name),
            name,
        });
    if let Some(n) = raw.affinity_capacity {
        match u32::try_from(n) {
            Ok(n) if (1..=MAX_AFFINITY_CAPACITY).contains(&n) => d.affinity_capacity = n,
            _ => e.push(
                "affinity_capacity",
                out_of_range(n, 1, MAX_AFFINITY_CAPACITY),
            ),
        }
    }
    e.finish(d)
}

fn interfaces(e: &mut Errors, raw: Option<Vec<String>>, d: &mut DaemonConfig) {
    match raw {
        None => e.push(
            "interfaces",
            "is required (the interfaces to attach XDP to, e.g. [\"eth0\"])",
        ),
        Some(list) if list.is_empty() => e.push("interfaces", "must name at least one interface"),
        Some(list) => {
            let mut seen = HashSet::new();
            for (i, name) in list.iter().enumerate() {
                let field = format!("interfaces[{i}]");
                if !seen.insert(name) {
                    e.push(field, format!("interface {name:?} is listed twice"));
                }
            }
            d.interfaces = list;
        }
    }
}

fn metrics(e: &mut Errors, raw: Option<String>) -> Option<SocketAddr> {
    match raw.as_deref() {
        None => DaemonConfig::new(Vec::new()).metrics,
        Some("") => None,
        Some(s) => match s.parse::<SocketAddr>() {
            Ok(addr) if addr.ip().is_loopback() => Some(addr),
            // The endpoint has no authentication: it is only served on loopback.
            Ok(_) => {
                e.push(
                    "metrics",
                    format!(
                        "{s:?} is not a loopback address (metrics are served on loopback only)"
                    ),
                );
                None
            }
            Err(_) => {
                e.push(
                    "metrics",
                    format!("{s:?} is not an address:port such as \"127.0.0.1:9310\" (\"\" disables metrics)"),
                );
                None
            }
        },
    }
}

/// The checks against this machine, the only ones `check-config --offline` skips: every
/// interface (first mention of each) exists here. Everything else in the file is judged
/// the same on any machine.
fn host_errors(raw: &RawDaemon) -> Vec<FieldError> {
    let mut seen = HashSet::new();
    let mut errors: Vec<FieldError> = raw
        .interfaces
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter(|(_, name)| seen.insert(*name) && !interface_exists(name))
        .map(|(i, name)| {
            FieldError::new(
                format!("interfaces[{i}]"),
                format!("interface {name:?} does not exist on this host"),
            )
        })
        .collect();
    if let Some(g) = raw.socket_group.as_deref().filter(|g| !g.is_empty())
        && group_id(g).is_none()
    {
        errors.push(FieldError::new(
            "socket_group",
            format!("group {g:?} does not exist on this host"),
        ));
    }
    errors
}

fn interface_exists(name: &str) -> bool {
    let Ok(c_name) = CString::new(name) else {
        return false;
    };
    // SAFETY: `c_name` is a valid NUL-terminated string that outlives the call.
    unsafe { libc::if_nametoindex(c_name.as_ptr()) != 0 }
}

/// The id of group `name` (a name in the group database, or a number).
fn group_id(name: &str) -> Option<u32> {
    let c_name = CString::new(name).ok()?;
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf` outlives it and its length is
    // passed; `found` is only read after the call.
    let rc = unsafe {
        libc::getgrnam_r(
            c_name.as_ptr(),
            &mut group,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc == 0 && !found.is_null() {
        return Some(group.gr_gid);
    }
    name.parse().ok()
}

/// `[announce]`: `kind` is required; each other key belongs to one kind and is refused
/// with any other.
fn announce_from_raw(raw: RawAnnounce) -> Result<Announce, Vec<FieldError>> {
    let mut e = Errors::default();
    let Some(kind) = raw.kind else {
        e.push(
            "kind",
            format!(
                "is required (one of {}; without an [announce] table nothing is announced)",
                AnnounceKind::expected()
            ),
        );
        return e.finish(Announce::None);
    };
    let kind = named(&mut e, "kind", Some(kind), AnnounceKind::None);
    let mut foreign = |field: &str, present: bool, owner: AnnounceKind| {
        if present && kind != owner {
            e.push(field, format!("applies to kind = \"{owner}\" only"));
        }
    };
    foreign("socket", raw.socket.is_some(), AnnounceKind::Bird);
    foreign("announce", raw.announce.is_some(), AnnounceKind::Command);
    foreign("withdraw", raw.withdraw.is_some(), AnnounceKind::Command);
    let a = match kind {
        AnnounceKind::None => Announce::None,
        AnnounceKind::Bird => Announce::Bird {
            socket: raw
                .socket
                .unwrap_or_else(|| DEFAULT_BIRD_SOCKET.into())
                .into(),
        },
        AnnounceKind::Command => Announce::Command {
            announce: raw.announce.unwrap_or_default(),
            withdraw: raw.withdraw.unwrap_or_default(),
        },
    };
    if let Err(fe) = validate_announce(&a) {
        e.0.extend(fe);
    }
    e.finish(a)
}
