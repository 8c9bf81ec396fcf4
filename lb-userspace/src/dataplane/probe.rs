//! The path of tunnel health probes: the `xlb_probe` TC program on `lo` egress and the
//! policy rule that routes marked probes into `lo`.
//!
//! A probe of a tunnel backend is a normal socket of the daemon, marked with
//! `SO_MARK = probe_mark(backend id)` and bound to the egress interface's address, that
//! connects to VIP:health-port. The policy rule `fwmark 0x584c0000/0xffff0000 lookup
//! 22604` and, in table 22604, the route `default dev lo` (IPv4) or `local default dev
//! lo` (IPv6) send it into `lo`, where `xlb_probe` (lb_common::tunnel::PROG_PROBE, in the balancer's object and
//! sharing its maps) encapsulates it towards `XLB_BACKENDS[id]` exactly as the XDP
//! program encapsulates traffic and redirects it to the backend's egress interface. The
//! backend's service answers from the VIP straight to the balancer's address. Only
//! marked packets are touched: everything else on `lo` passes.
//!
//! Lifetimes: the TC attachment is a TCX link owned by the running daemon (not pinned):
//! it goes when the daemon exits or dies, and a restarted daemon attaches anew, so no
//! stale program outlives its maps. The rule and route stay until the daemon stops or
//! `xlb down` (they only route marked packets, which nobody else sends); installing them
//! is idempotent.
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
    route::{RouteMessage, RouteScope},
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
        RouteMessageBuilder::<std::net::Ipv6Addr>::new()
            .output_interface(lo)
            .table_id(PROBE_TABLE)
            // A unicast IPv6 route into lo is made a reject route by the kernel
            // (fib6_is_reject): packets are dropped silently after the output hooks
            // (Ip6OutNoRoutes), and sendmsg succeeds. A local route sends them through
            // lo's transmit, where xlb_probe takes them first.
            .kind(netlink_packet_route::route::RouteType::Local)
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

/// Removes the rule and the routes (what is already gone is no error).
pub async fn remove_rule(handle: &Handle) -> Result<(), ProbePathError> {
    let gone = |r: Result<(), ProbePathError>| match r {
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
    Ok(())
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

/// [`remove_rule`] outside a runtime (`xlb down`), in the calling thread's network
/// namespace.
pub fn remove_rule_blocking() -> Result<(), ProbePathError> {
    blocking(|h| Box::pin(async move { remove_rule(&h).await }))
}

/// [`install_rule`] outside a runtime (tests), in the calling thread's network namespace.
pub fn install_rule_blocking() -> Result<(), ProbePathError> {
    blocking(|h| Box::pin(async move { install_rule(&h).await }))
}

type Job = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ProbePathError>>>>;

/// Runs `f` with a netlink connection of its own on a current-thread runtime.
fn blocking(f: impl FnOnce(Handle) -> Job) -> Result<(), ProbePathError> {
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
