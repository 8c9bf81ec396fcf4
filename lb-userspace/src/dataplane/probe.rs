//! The path of tunnel health probes: the `xlb_probe` TC program on `lo` egress and the
//! policy rule that routes marked probes into `lo`.
//!
//! A probe of a tunnel backend is a normal socket of the daemon, marked with
//! `SO_MARK = probe_mark(backend id)` and bound to the egress interface's address, that
//! connects to VIP:health-port. The policy rule `fwmark 0x584c0000/0xffff0000 lookup
//! 22604` (both families) and in table 22604 the routes `default dev lo` (IPv4) and
//! `local default dev lo` (IPv6: a unicast route through lo is a reject route there)
//! send it into `lo`, where `xlb_probe` (lb_common::tunnel::PROG_PROBE, in the balancer's object and
//! sharing its maps) encapsulates it towards `XLB_BACKENDS[id]` exactly as the XDP
//! program encapsulates traffic and redirects it to the backend's egress interface. The
//! backend's service answers from the VIP straight to the balancer's address. Only
//! marked packets are touched: everything else on `lo` passes.
//!
//! Lifetimes: the TC attachment is a TCX link owned by the running daemon (not pinned):
//! it goes when the daemon exits or dies, and a restarted daemon attaches anew, so no
//! stale program outlives its maps. The rule and routes are the network namespace's,
//! shared by every xlb daemon in it: a daemon that stops, and `xlb down`, remove them only
//! when no other `xlb_probe` is attached to `lo` ([`others_attached`]: another daemon
//! still probes through them), and a running daemon puts them back within a second when
//! they vanish ([`ensure_rule`]). They only route marked packets, which nobody else
//! sends; installing them is idempotent.
//!
//! Owns: the attachment and the rule. Must not touch: the marks and sockets (health),
//! the maps' contents.

use std::io;

use aya::{
    Ebpf,
    programs::{SchedClassifier, TcAttachType},
};
use futures::TryStreamExt as _;
use lb_common::tunnel::{PROBE_MARK_BASE, PROBE_MARK_MASK, PROG_PROBE};
use netlink_packet_route::{
    AddressFamily,
    route::{RouteMessage, RouteScope, RouteType},
    rule::{RuleAction, RuleAttribute, RuleMessage},
};
use rtnetlink::{Handle, RouteMessageBuilder};

/// The routing table of marked probes (`XL` in ASCII: 0x584c = 22604).
pub const PROBE_TABLE: u32 = 22604;
/// The priority of the probes' policy rule (before `main` at 32766).
pub const PROBE_RULE_PRIORITY: u32 = 22604;
/// The interface probes are routed into and the TC program sits on.
pub const PROBE_DEVICE: &str = "lo";

#[derive(Debug, thiserror::Error)]
pub enum ProbePathError {
    #[error("the program {PROG_PROBE} of the object is not a TC classifier: {0}")]
    NotClassifier(#[source] aya::programs::ProgramError),
    #[error("loading {PROG_PROBE}: {0}")]
    Load(#[source] aya::programs::ProgramError),
    #[error("attaching {PROG_PROBE} to {PROBE_DEVICE} (egress): {0}")]
    Attach(#[source] aya::programs::ProgramError),
    #[error("interface {PROBE_DEVICE} does not exist")]
    NoLoopback,
    #[error("{what} (policy routing of tunnel probes): {source}")]
    Netlink {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Attaches `xlb_probe` to `lo` egress (TCX on kernels ≥ 6.6, else clsact). `Ok(false)`
/// when this build's object has no such program: tunnel probes then go out
/// unencapsulated and fail, which the caller says once.
pub fn attach(ebpf: &mut Ebpf) -> Result<bool, ProbePathError> {
    let Some(prog) = ebpf.program_mut(PROG_PROBE) else {
        return Ok(false);
    };
    let tc: &mut SchedClassifier = prog.try_into().map_err(ProbePathError::NotClassifier)?;
    tc.load().map_err(ProbePathError::Load)?;
    use aya::util::KernelVersion;
    let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
    if !tcx {
        // Older kernels attach through a clsact qdisc; it may exist already.
        let _ = aya::programs::tc::qdisc_add_clsact(PROBE_DEVICE);
    }
    tc.attach(PROBE_DEVICE, TcAttachType::Egress)
        .map_err(ProbePathError::Attach)?;
    Ok(true)
}

fn loopback_index() -> Result<u32, ProbePathError> {
    // SAFETY: a NUL-terminated name.
    let i = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    (i != 0).then_some(i).ok_or(ProbePathError::NoLoopback)
}

fn rule(family: AddressFamily) -> RuleMessage {
    let mut m = RuleMessage::default();
    m.header.family = family;
    m.header.action = RuleAction::ToTable;
    m.attributes.extend([
        RuleAttribute::Table(PROBE_TABLE),
        RuleAttribute::FwMark(PROBE_MARK_BASE),
        RuleAttribute::FwMask(PROBE_MARK_MASK),
        RuleAttribute::Priority(PROBE_RULE_PRIORITY),
    ]);
    m
}

fn routes(lo: u32) -> [RouteMessage; 2] {
    [
        RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .output_interface(lo)
            .table_id(PROBE_TABLE)
            .scope(RouteScope::Link)
            .build(),
        // IPv6 makes a unicast route through `lo` a reject route (the kernel's
        // fib6_is_reject: packets are discarded before they reach lo's egress, though
        // connect() succeeds); a `local` route goes out through lo's transmit path too.
        RouteMessageBuilder::<std::net::Ipv6Addr>::new()
            .output_interface(lo)
            .table_id(PROBE_TABLE)
            .kind(RouteType::Local)
            .build(),
    ]
}

fn netlink(what: &'static str) -> impl FnOnce(rtnetlink::Error) -> ProbePathError {
    move |e| ProbePathError::Netlink {
        what,
        source: crate::neigh::io_error(e),
    }
}

fn errno(e: &ProbePathError) -> Option<i32> {
    match e {
        ProbePathError::Netlink { source, .. } => source.raw_os_error(),
        _ => None,
    }
}

/// Installs the rule and the routes for both families (idempotent: what exists stays).
pub async fn install_rule(handle: &Handle) -> Result<(), ProbePathError> {
    let lo = loopback_index()?;
    for route in routes(lo) {
        handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(netlink("adding the route of table 22604"))?;
    }
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut req = handle.rule().add();
        *req.message_mut() = rule(family);
        match req
            .execute()
            .await
            .map_err(netlink("adding the fwmark rule"))
        {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// How many `xlb_probe` programs are attached to `lo` egress (TCX) in this network
/// namespace: the running xlb daemons that probe through the shared rule. (A daemon
/// attached through clsact on a kernel older than 6.6 is not seen: on those, a daemon
/// that stops removes the rule even so, and the others put it back within a second.)
pub fn others_attached() -> Result<usize, ProbePathError> {
    match SchedClassifier::query_tcx(PROBE_DEVICE, TcAttachType::Egress) {
        Ok((_, progs)) => Ok(progs
            .iter()
            .filter(|p| p.name_as_str() == Some(PROG_PROBE))
            .count()),
        // No TCX (older kernel) or nothing to query: none seen.
        Err(_) => Ok(0),
    }
}

/// What [`release_rule`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Released {
    /// Removed (`false`: there was nothing to remove).
    Removed(bool),
    /// Kept: this many other `xlb_probe` programs are attached to `lo`.
    Kept(usize),
}

impl std::fmt::Display for Released {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Released::Removed(true) => write!(
                f,
                "removed the tunnel probes' policy rule (fwmark {PROBE_MARK_BASE:#x}, table \
                 {PROBE_TABLE})"
            ),
            Released::Removed(false) => write!(f, "no tunnel probe policy rule to remove"),
            Released::Kept(n) => write!(
                f,
                "kept the tunnel probes' policy rule (table {PROBE_TABLE}): {n} other xlb \
                 daemon(s) of this network namespace probe through it ({PROG_PROBE} on \
                 {PROBE_DEVICE})"
            ),
        }
    }
}

/// Removes the rule and routes unless another daemon's `xlb_probe` is attached to `lo`
/// (call it once the caller's own program is detached).
pub async fn release_rule(handle: &Handle) -> Result<Released, ProbePathError> {
    match others_attached()? {
        0 => remove_rule(handle).await.map(Released::Removed),
        n => Ok(Released::Kept(n)),
    }
}

/// Installs the rule and routes when the rule of either family is missing (another
/// deployment's `xlb down`, an operator's `ip rule flush`); whether it did.
pub async fn ensure_rule(handle: &Handle) -> Result<bool, ProbePathError> {
    if rule_installed(handle, false).await? && rule_installed(handle, true).await? {
        return Ok(false);
    }
    install_rule(handle).await?;
    Ok(true)
}

/// Removes the rule and the routes (what is already gone is no error); whether anything
/// was there.
pub async fn remove_rule(handle: &Handle) -> Result<bool, ProbePathError> {
    let mut removed = false;
    let mut gone = |r: Result<(), ProbePathError>| match r {
        Ok(()) => {
            removed = true;
            Ok(())
        }
        Err(e) if !matches!(errno(&e), Some(libc::ENOENT | libc::ESRCH)) => Err(e),
        _ => Ok(()),
    };
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        gone(
            handle
                .rule()
                .del(rule(family))
                .execute()
                .await
                .map_err(netlink("removing the fwmark rule")),
        )?;
    }
    let lo = loopback_index()?;
    for route in routes(lo) {
        gone(
            handle
                .route()
                .del(route)
                .execute()
                .await
                .map_err(netlink("removing the route of table 22604")),
        )?;
    }
    Ok(removed)
}

/// Whether the probes' rule is installed (for the family `family`).
pub async fn rule_installed(handle: &Handle, v6: bool) -> Result<bool, ProbePathError> {
    let version = if v6 {
        rtnetlink::IpVersion::V6
    } else {
        rtnetlink::IpVersion::V4
    };
    let rules: Vec<RuleMessage> = handle
        .rule()
        .get(version)
        .execute()
        .try_collect()
        .await
        .map_err(netlink("listing rules"))?;
    Ok(rules.iter().any(|r| {
        r.attributes
            .contains(&RuleAttribute::FwMark(PROBE_MARK_BASE))
            && r.attributes.contains(&RuleAttribute::Table(PROBE_TABLE))
    }))
}

/// [`remove_rule`] outside a runtime (tests), in the calling thread's network namespace.
pub fn remove_rule_blocking() -> Result<(), ProbePathError> {
    blocking(|h| Box::pin(async move { remove_rule(&h).await.map(drop) }))
}

/// [`release_rule`] outside a runtime (`xlb down`), in the calling thread's network
/// namespace.
pub fn release_rule_blocking() -> Result<Released, ProbePathError> {
    blocking(|h| Box::pin(async move { release_rule(&h).await }))
}

/// [`install_rule`] outside a runtime (tests), in the calling thread's network namespace.
pub fn install_rule_blocking() -> Result<(), ProbePathError> {
    blocking(|h| Box::pin(async move { install_rule(&h).await }))
}

type Job<T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, ProbePathError>>>>;

/// Runs `f` with a netlink connection of its own on a current-thread runtime.
fn blocking<T>(f: impl FnOnce(Handle) -> Job<T>) -> Result<T, ProbePathError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| ProbePathError::Netlink {
            what: "starting a runtime",
            source,
        })?;
    rt.block_on(async {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|source| ProbePathError::Netlink {
                what: "opening a netlink socket",
                source,
            })?;
        let conn = tokio::spawn(connection);
        let r = f(handle).await;
        conn.abort();
        r
    })
}
