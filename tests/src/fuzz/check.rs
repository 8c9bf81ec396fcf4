//! Judges one run of the program against the oracle's [`Expect`]: verdict, output bytes,
//! the one global counter, the service and backend counters, and affinity (one key, one
//! backend, for the whole run).
//!
//! Pure: it reads what the runner observed and updates [`Memory`]; it never touches the
//! kernel, so its own tests need no root.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use lb_common::{BackendStats, ServiceStats, Stat};

use std::net::IpAddr;

use lb_common::tunnel;

use super::oracle::{Backend, Expect, FragId, Key, TooBig, Topology, client_of};
use crate::harness::XdpAction;
use crate::packet::{Outer, encapsulate};

/// What earlier frames decided: every affinity key that has an entry in the kernel, and
/// the backend (index into `Topology::backends`) it went to when the output showed it.
#[derive(Clone, Debug, Default)]
pub struct Memory {
    pins: HashMap<Key, Option<usize>>,
    /// First fragments balanced: where their later fragments go, and when.
    frags: HashMap<FragId, (usize, Key, Instant)>,
    /// Up to this many keys the affinity table cannot have evicted any (it holds four
    /// times as many), so a known key must hit; past it a known key may miss.
    exact_up_to: usize,
    /// Affinity hits and misses counted by the service counters so far.
    pub hits: u64,
    pub misses: u64,
}

impl Memory {
    pub fn new(exact_up_to: usize) -> Self {
        Self {
            pins: HashMap::new(),
            frags: HashMap::new(),
            exact_up_to,
            hits: 0,
            misses: 0,
        }
    }

    /// Distinct affinity keys seen so far.
    pub fn keys(&self) -> usize {
        self.pins.len()
    }

    /// Whether a known key must still be a hit (no eviction possible yet).
    pub fn exact(&self) -> bool {
        self.pins.len() <= self.exact_up_to
    }
}

/// What one run of the program did, as counter deltas over that run alone.
#[derive(Debug)]
pub struct Observed<'a> {
    pub action: u32,
    pub output: &'a [u8],
    /// `XLB_STATS` deltas, indexed by [`Stat`].
    pub stats: [u64; Stat::COUNT as usize],
    /// `XLB_SVC_STATS` deltas in `Topology::services` order.
    pub services: &'a [ServiceStats],
    /// `XLB_BE_STATS` deltas in `Topology::backends` order.
    pub backends: &'a [BackendStats],
}

/// The input of one judgement.
pub struct Case<'a> {
    pub frame: &'a [u8],
    pub ingress: u32,
    pub expect: &'a Expect,
}

type Verdict = Result<Stat, String>;

pub fn action_name(a: u32) -> String {
    match a {
        0 => "XDP_ABORTED".into(),
        1 => "XDP_DROP".into(),
        2 => "XDP_PASS".into(),
        3 => "XDP_TX".into(),
        4 => "XDP_REDIRECT".into(),
        n => format!("action {n}"),
    }
}

macro_rules! ensure {
    ($cond:expr, $($why:tt)*) => {
        if !$cond {
            return Err(format!($($why)*));
        }
    };
}

/// Checks one run; returns the counter that moved (the frame's outcome) or what is wrong.
pub fn judge(top: &Topology, mem: &mut Memory, case: &Case, obs: &Observed) -> Verdict {
    ensure!(obs.action != XdpAction::Aborted as u32, "XDP_ABORTED");
    let counted = one_counter(&obs.stats)?;
    match case.expect {
        Expect::Pass(want) => {
            ensure!(
                obs.action == XdpAction::Pass as u32 && counted == *want,
                "got {} with counter {}",
                action_name(obs.action),
                counted.name()
            );
            unchanged(case.frame, obs.output)?;
            quiet_services(top, obs, None)?;
            quiet_backends(obs, &[])?;
        }
        Expect::Drop(want) => {
            ensure!(
                obs.action == XdpAction::Drop as u32 && counted == *want,
                "got {} with counter {}",
                action_name(obs.action),
                counted.name()
            );
            quiet_services(top, obs, None)?;
            quiet_backends(obs, &[])?;
        }
        Expect::Balance {
            service,
            key,
            track,
        } => {
            if let Some(id) = track {
                mem.frags.insert(*id, (*service, *key, Instant::now()));
            }
            quiet_services(top, obs, Some(*service))?;
            balance(top, mem, case, obs, counted, *service, *key)?;
        }
        Expect::Later { id, sole } => return later(top, mem, case, obs, *id, *sole),
        Expect::IcmpError { service, key } => {
            quiet_services(top, obs, Some(*service))?;
            icmp_error(top, mem, case, obs, counted, *service, *key)?;
        }
        Expect::EchoReply(want) => {
            verdict_is(
                obs,
                counted,
                XdpAction::Tx,
                Stat::IcmpEchoReply,
                "echo request",
            )?;
            output_is(obs, want, "echo reply")?;
            quiet_services(top, obs, None)?;
            quiet_backends(obs, &[])?;
        }
    }
    Ok(counted)
}

/// Tracked first fragments are certain to be in `XLB_FRAGS` while younger than this (its
/// timeout is 30 s) and while there are no more than [`FRAGS_EXACT`] of them (it holds
/// 65,536, least recently used evicted); past either a later fragment may also take the
/// untracked way.
const FRAG_SURE: Duration = Duration::from_secs(25);
const FRAGS_EXACT: usize = 16_384;

/// A later fragment: judged as its first fragment's packet when tracked, else as its
/// source's packet to the VIP's only service, else `drop_fragment`.
fn later(
    top: &Topology,
    mem: &mut Memory,
    case: &Case,
    obs: &Observed,
    id: FragId,
    sole: Option<usize>,
) -> Verdict {
    let untracked = match sole {
        Some(service) => Expect::Balance {
            service,
            key: top.key(service, id.src, 0),
            track: None,
        },
        None => Expect::Drop(Stat::DropFragment),
    };
    let Some(&(service, key, when)) = mem.frags.get(&id) else {
        return judge(
            top,
            mem,
            &Case {
                expect: &untracked,
                ..*case
            },
            obs,
        );
    };
    let tracked = Expect::Balance {
        service,
        key,
        track: None,
    };
    if when.elapsed() < FRAG_SURE && mem.frags.len() <= FRAGS_EXACT {
        return judge(
            top,
            mem,
            &Case {
                expect: &tracked,
                ..*case
            },
            obs,
        );
    }
    let mut trial = mem.clone();
    match judge(
        top,
        &mut trial,
        &Case {
            expect: &tracked,
            ..*case
        },
        obs,
    ) {
        Ok(stat) => {
            *mem = trial;
            Ok(stat)
        }
        Err(_) => judge(
            top,
            mem,
            &Case {
                expect: &untracked,
                ..*case
            },
            obs,
        ),
    }
}

/// Exactly one global counter moved, by exactly one: which.
pub fn one_counter(stats: &[u64; Stat::COUNT as usize]) -> Result<Stat, String> {
    let moved: Vec<String> = Stat::ALL
        .iter()
        .filter(|s| stats[**s as usize] != 0)
        .map(|s| format!("{} +{}", s.name(), stats[*s as usize]))
        .collect();
    match Stat::ALL.iter().find(|s| stats[**s as usize] != 0) {
        Some(s) if moved.len() == 1 && stats[*s as usize] == 1 => Ok(*s),
        _ => Err(format!(
            "counters of XLB_STATS moved: [{}] (want exactly one, by one)",
            moved.join(", ")
        )),
    }
}

fn unchanged(input: &[u8], output: &[u8]) -> Result<(), String> {
    if input == output {
        return Ok(());
    }
    Err(match input.iter().zip(output).position(|(a, b)| a != b) {
        Some(i) => format!(
            "frame modified: first difference at byte {i} ({:02x} → {:02x})",
            input[i], output[i]
        ),
        None => format!("frame length changed: {} → {}", input.len(), output.len()),
    })
}

/// No service counter moved, except `except`'s.
fn quiet_services(top: &Topology, obs: &Observed, except: Option<usize>) -> Result<(), String> {
    for (i, d) in obs.services.iter().enumerate() {
        ensure!(
            Some(i) == except || *d == ServiceStats::default(),
            "counters of service {} moved: {d:?}",
            top.services[i].name
        );
    }
    Ok(())
}

/// No backend counter moved, except those of `except` (indexes into `backends`).
fn quiet_backends(obs: &Observed, except: &[usize]) -> Result<(), String> {
    for (i, d) in obs.backends.iter().enumerate() {
        ensure!(
            except.contains(&i) || *d == BackendStats::default(),
            "counters of backend #{i} moved: {d:?}"
        );
    }
    Ok(())
}

/// A frame that reached a service's balancing.
fn balance(
    top: &Topology,
    mem: &mut Memory,
    case: &Case,
    obs: &Observed,
    counted: Stat,
    service: usize,
    key: Key,
) -> Result<(), String> {
    let d = obs.services[service];
    let known = mem.pins.get(&key).copied();
    // Health never changes during a run and idle_timeout is an hour: no re-pin, no expiry.
    ensure!(
        d.repins == 0 && d.expiries == 0,
        "service counters: {d:?} (a re-pin or expiry cannot happen in this run)"
    );
    match (known, mem.exact()) {
        (None, _) => ensure!(
            d.misses == 1 && d.hits == 0,
            "new affinity key, want one miss: {d:?}"
        ),
        (Some(_), true) => ensure!(
            d.hits == 1 && d.misses == 0,
            "known affinity key (no eviction possible yet), want one hit: {d:?}"
        ),
        (Some(_), false) => ensure!(d.hits + d.misses == 1, "want one hit or miss: {d:?}"),
    }
    mem.hits += d.hits;
    mem.misses += d.misses;
    if let Some(nb) = top.services[service].no_backend {
        return no_backend(case, obs, counted, nb, d);
    }
    ensure!(d.no_backend == 0, "no_backend moved: {d:?}");
    if top.services[service].tunnel.is_some_and(|t| t.no_egress) {
        no_egress(obs, counted, d)?;
        let pins: u64 = top.backends_of(service).map(|b| obs.backends[b].pins).sum();
        ensure!(pins == d.misses, "pins {pins} for {} misses", d.misses);
        mem.pins.entry(key).or_insert(None);
        return Ok(());
    }
    if let Some(big) = top.services[service]
        .tunnel
        .and_then(|t| t.too_big(case.frame, false))
    {
        too_big(obs, counted, &big, d)?;
        let pins: u64 = top.backends_of(service).map(|b| obs.backends[b].pins).sum();
        ensure!(pins == d.misses, "pins {pins} for {} misses", d.misses);
        mem.pins.entry(key).or_insert(None);
        return Ok(());
    }
    let chosen = match obs.action {
        a if a == XdpAction::Tx as u32 || a == XdpAction::Redirect as u32 => {
            forwarded(top, case, obs, counted, service)?
        }
        a if a == XdpAction::Drop as u32 => no_tx_port(top, case, obs, counted, service)?,
        a => {
            return Err(format!(
                "got {} with counter {}",
                action_name(a),
                counted.name()
            ));
        }
    };
    if let (Some(Some(before)), Some(now)) = (known, chosen) {
        ensure!(
            before == now,
            "affinity broken: this key went to {} before, now to {}",
            top.backends[before].address,
            top.backends[now].address
        );
    }
    let remembered = chosen.or(known.flatten());
    mem.pins.insert(key, remembered);
    Ok(())
}

/// An ICMP error: forwarded as a packet of the client would be, to its pin when the
/// checker knows one, without a hit, miss or pin; `icmp_errors` counts what left.
fn icmp_error(
    top: &Topology,
    mem: &Memory,
    case: &Case,
    obs: &Observed,
    counted: Stat,
    service: usize,
    key: Key,
) -> Result<(), String> {
    let d = obs.services[service];
    ensure!(
        d.hits == 0 && d.misses == 0 && d.repins == 0 && d.expiries == 0,
        "an ICMP error moved affinity counters: {d:?}"
    );
    if let Some(nb) = top.services[service].no_backend {
        ensure!(
            d.icmp_errors == 0,
            "icmp_errors moved without a backend: {d:?}"
        );
        return no_backend(case, obs, counted, nb, d);
    }
    if top.services[service].tunnel.is_some_and(|t| t.no_egress) {
        ensure!(d.icmp_errors == 0, "icmp_errors moved for a drop: {d:?}");
        no_egress(obs, counted, d)?;
        return quiet_backends(obs, &[]);
    }
    if let Some(big) = top.services[service]
        .tunnel
        .and_then(|t| t.too_big(case.frame, true))
    {
        ensure!(d.icmp_errors == 0, "icmp_errors moved for a drop: {d:?}");
        too_big(obs, counted, &big, d)?;
        return quiet_backends(obs, &[]);
    }
    let chosen = match obs.action {
        a if a == XdpAction::Tx as u32 || a == XdpAction::Redirect as u32 => {
            ensure!(d.icmp_errors == 1, "icmp_errors did not move by one: {d:?}");
            forwarded(top, case, obs, counted, service)?
        }
        a if a == XdpAction::Drop as u32 => {
            ensure!(d.icmp_errors == 0, "icmp_errors moved for a drop: {d:?}");
            no_tx_port(top, case, obs, counted, service)?
        }
        a => {
            return Err(format!(
                "got {} with counter {}",
                action_name(a),
                counted.name()
            ));
        }
    };
    if let (Some(Some(pinned)), true, Some(now)) =
        (mem.pins.get(&key).copied(), mem.exact(), chosen)
    {
        ensure!(
            pinned == now,
            "ICMP error went to {}, but the client is pinned to {}",
            top.backends[now].address,
            top.backends[pinned].address
        );
    }
    Ok(())
}

fn no_backend(
    case: &Case,
    obs: &Observed,
    counted: Stat,
    want: Stat,
    d: ServiceStats,
) -> Result<(), String> {
    let action = if want == Stat::PassNoBackend {
        XdpAction::Pass
    } else {
        XdpAction::Drop
    };
    ensure!(
        obs.action == action as u32 && counted == want,
        "got {} with counter {}",
        action_name(obs.action),
        counted.name()
    );
    ensure!(
        d.no_backend == 1 && d.packets == 0 && d.bytes == 0,
        "service counters: {d:?}"
    );
    if action == XdpAction::Pass {
        unchanged(case.frame, obs.output)?;
    }
    quiet_backends(obs, &[])
}

/// XDP_TX or XDP_REDIRECT: only the two MACs changed, to one backend of the service, on
/// the verdict its interface calls for. Returns the backend.
fn forwarded(
    top: &Topology,
    case: &Case,
    obs: &Observed,
    counted: Stat,
    service: usize,
) -> Result<Option<usize>, String> {
    let (f, out) = (case.frame, obs.output);
    let tunnel = top.services[service].tunnel.is_some();
    ensure!(
        tunnel || (out.len() == f.len() && out[12..] == f[12..]),
        "forwarded frame changed beyond the MACs (length {} → {})",
        f.len(),
        out.len()
    );
    ensure!(out.len() >= 12, "forwarded frame of {} bytes", out.len());
    let b = top
        .backends_of(service)
        .find(|&b| out[..6] == top.backends[b].mac && out[6..12] == top.backends[b].src_mac)
        .ok_or_else(|| {
            format!(
                "forwarded with MACs {:02x?} → {:02x?}: not a backend of {}",
                &out[6..12],
                &out[..6],
                top.services[service].name
            )
        })?;
    let be = &top.backends[b];
    if tunnel {
        encapsulated(f, out, be)?;
    }
    let want = if be.ifindex == case.ingress {
        (XdpAction::Tx, Stat::Tx)
    } else if top.tx_ports.contains(&be.ifindex) {
        (XdpAction::Redirect, Stat::Redirect)
    } else {
        (XdpAction::Drop, Stat::DropNoTxPort)
    };
    ensure!(
        obs.action == want.0 as u32 && counted == want.1,
        "backend {} on ifindex {}, ingress {}: want {:?}/{}, got {}/{}",
        be.address,
        be.ifindex,
        case.ingress,
        want.0,
        want.1.name(),
        action_name(obs.action),
        counted.name()
    );
    let d = obs.services[service];
    let len = out.len() as u64;
    ensure!(
        d.packets == 1 && d.bytes == len && d.no_backend == 0,
        "service counters: {d:?} (want packets 1, bytes {len})"
    );
    let bd = obs.backends[b];
    ensure!(
        bd.packets == 1 && bd.bytes == len && bd.pins == d.misses,
        "backend {} counters: {bd:?} (want packets 1, bytes {len}, pins {})",
        be.address,
        d.misses
    );
    quiet_backends(obs, &[b])?;
    Ok(Some(b))
}

/// A tunnel service's frame to backend `be`: exactly the input encapsulated as the README
/// says (the outer header from the inner one, the interface's address as the source, the
/// client's flow label), with the backend's MACs.
fn encapsulated(f: &[u8], out: &[u8], be: &Backend) -> Result<(), String> {
    let client = client_of(f).ok_or("a tunnel frame without a client")?;
    let caddr = match client {
        IpAddr::V4(a) => [u32::from_ne_bytes(a.octets()), 0, 0, 0],
        IpAddr::V6(a) => lb_common::addr_from_bytes(&a.octets()),
    };
    let outer = Outer {
        src: be.outer_src,
        dst: be.outer,
        flow_label: tunnel::flow_label(tunnel::client_hash(&caddr)),
    };
    let want = encapsulate(f, be.mac, be.src_mac, &outer);
    if out != want.as_slice() {
        return Err(format!(
            "not encapsulated to {} as the README says: {}",
            be.outer,
            unchanged(&want, out).unwrap_err()
        ));
    }
    Ok(())
}

/// A tunnel service whose backends' interface has no `XLB_EGRESS` entry: dropped.
fn no_egress(obs: &Observed, counted: Stat, d: ServiceStats) -> Result<(), String> {
    verdict_is(
        obs,
        counted,
        XdpAction::Drop,
        Stat::DropNoEgress,
        "no egress entry",
    )?;
    nothing_sent(obs, d)
}

/// A tunnel service's packet too big for the egress MTU once encapsulated: dropped as
/// `drop_too_big`, or answered with exactly the ICMP bytes; nothing counted as sent.
fn too_big(obs: &Observed, counted: Stat, big: &TooBig, d: ServiceStats) -> Result<(), String> {
    match big {
        TooBig::Drop => verdict_is(
            obs,
            counted,
            XdpAction::Drop,
            Stat::DropTooBig,
            "too big without DF",
        )?,
        TooBig::Reply(want) => {
            verdict_is(
                obs,
                counted,
                XdpAction::Tx,
                Stat::IcmpTooBig,
                "too big with DF",
            )?;
            output_is(obs, want, "too-big answer")?;
        }
    }
    nothing_sent(obs, d)
}

/// The run's action and the one counter that moved are `action` and `stat`.
fn verdict_is(
    obs: &Observed,
    counted: Stat,
    action: XdpAction,
    stat: Stat,
    what: &str,
) -> Result<(), String> {
    ensure!(
        obs.action == action as u32 && counted == stat,
        "{what}: got {} with counter {}",
        action_name(obs.action),
        counted.name()
    );
    Ok(())
}

/// The frame the program left is exactly `want` (an answer it built).
fn output_is(obs: &Observed, want: &[u8], what: &str) -> Result<(), String> {
    if obs.output != want {
        return Err(format!(
            "{what} differs: {}",
            unchanged(want, obs.output).unwrap_err()
        ));
    }
    Ok(())
}

/// Neither the service's nor any backend's counters moved: nothing was sent.
fn nothing_sent(obs: &Observed, d: ServiceStats) -> Result<(), String> {
    ensure!(
        d.packets == 0 && d.bytes == 0,
        "service counters: {d:?} (nothing sent)"
    );
    let sent: u64 = obs.backends.iter().map(|b| b.packets + b.bytes).sum();
    ensure!(sent == 0, "backend counters moved for a packet not sent");
    Ok(())
}

/// XDP_DROP for a backend whose interface is neither the ingress nor in the redirect map.
/// Returns the backend when its counters show which one it was.
fn no_tx_port(
    top: &Topology,
    case: &Case,
    obs: &Observed,
    counted: Stat,
    service: usize,
) -> Result<Option<usize>, String> {
    ensure!(
        counted == Stat::DropNoTxPort,
        "got XDP_DROP with counter {}",
        counted.name()
    );
    let unreachable: Vec<usize> = top
        .backends_of(service)
        .filter(|&b| {
            let i = top.backends[b].ifindex;
            i != case.ingress && !top.tx_ports.contains(&i)
        })
        .collect();
    ensure!(
        !unreachable.is_empty(),
        "drop_no_tx_port, but every backend of {} is reachable from ingress {}",
        top.services[service].name,
        case.ingress
    );
    let d = obs.services[service];
    ensure!(
        d.packets == 0 && d.bytes == 0,
        "service counters: {d:?} (nothing forwarded)"
    );
    quiet_backends(obs, &unreachable)?;
    let pins: u64 = unreachable.iter().map(|&b| obs.backends[b].pins).sum();
    ensure!(
        pins == d.misses
            && unreachable
                .iter()
                .all(|&b| obs.backends[b].packets == 0 && obs.backends[b].bytes == 0),
        "backend counters moved wrongly for drop_no_tx_port"
    );
    Ok(unreachable
        .iter()
        .copied()
        .find(|&b| obs.backends[b].pins == 1)
        .or(if unreachable.len() == 1 {
            Some(unreachable[0])
        } else {
            None
        }))
}
