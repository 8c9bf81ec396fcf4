//! The one task that owns the daemon's state: the [`Controller`] (intent, observations,
//! what is programmed, the maps), the program object, the attached interfaces, the
//! neighbour, health, pin-count and rate books. It receives [`Command`]s (each with a
//! oneshot responder) and [`Observation`]s over channels and handles them one at a time,
//! so every change is a plain `&mut` borrow: no mutex, no polling loop. Slow work (a
//! first look at new backends, probes, scans, netlink) runs in other tasks, which send
//! their results back as observations.
//!
//! Every affinity-table write from userspace goes through here: `affinity flush`,
//! failback rebalance (a reconcile plan step) and the removal of a service's entries.
//! (A migration of the table at start-up runs in startup.rs, before this task and every
//! other one exist: the one writer then too. The scan task only reads.)
//!
//! Owns: the daemon's state and the order of changes to it. Must not touch: sockets
//! (server.rs), the rules of reconcile, what each background task does.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use aya::Ebpf;
use log::{info, warn};
use tokio::sync::{
    Notify,
    mpsc::{Receiver, UnboundedReceiver, UnboundedSender},
    watch,
};

use super::{
    command::{Command, Looked, Looks, Observation, Pending, ProbeReport, Reply},
    load::{self, LoadState},
    look,
    server::{Access, MetricsServer},
    startup::Started,
    tasks::{
        announce::{self, AnnounceBook, AnnounceInput},
        health::{Checks, Wanted},
        links::Interfaces,
        neigh::NeighBook,
        rates::Rates,
        scan::PinnedCounts,
    },
    views,
};
use crate::{
    api::{ErrorKind, Response},
    config::Config,
    dataplane::lock::PinDirLock,
    egress::EgressFacts,
    health::Target,
    model::{Edit, Link},
    neigh::Resolver,
    reconcile::{
        apply::Applied,
        control::{ControlError, Controller},
    },
    state,
};

/// Pin counts no older than this (and taken after the last change) are shown as they are.
const FRESH_COUNTS: Duration = Duration::from_millis(200);
/// How long a status waits for a fresh count.
const COUNTS_WAIT: Duration = Duration::from_secs(1);

/// The daemon's state.
pub struct State {
    pub cfg: Config,
    pub ctl: Controller,
    pub ebpf: Ebpf,
    pub program_id: u32,
    pub ifaces: Interfaces,
    pub neigh: NeighBook,
    pub checks: Checks,
    pub pinned: PinnedCounts,
    pub rates: Rates,
    /// Sampled sources, load shares, the heavy-source warning.
    pub load: LoadState,
    /// The announcer's last outcome per VIP.
    pub announced: AnnounceBook,
    /// The egress interfaces of the resolved backends as last read (MTU, addresses): the
    /// tunnel's outer sources and the probes' source addresses.
    pub egress: BTreeMap<u32, EgressFacts>,
    /// The host's global addresses as last read (`None`: not read yet; tunnel checks
    /// wait for it, so a check does not fail for want of a source not looked up yet).
    pub host_addresses: Option<Vec<IpAddr>>,
    /// When the programmed state last changed: pin counts taken before are not fresh.
    pub changed_at: Instant,
    /// (service, backend address) → when it was programmed draining (this daemon's run;
    /// the start for one adopted or configured draining): only pin counts of passes
    /// started after it speak for `drain --wait`.
    pub drained_at: HashMap<(String, IpAddr), Instant>,
    /// One daemon per pin_dir: held as long as the state.
    _lock: PinDirLock,
}

/// The owner's lines to the other tasks.
pub struct Lines {
    pub observations: UnboundedSender<Observation>,
    pub resolver: Arc<Resolver>,
    pub resolve_now: Arc<Notify>,
    pub scan_now: Arc<Notify>,
    /// Backend addresses the neighbour task resolves.
    pub targets: watch::Sender<Arc<Vec<IpAddr>>>,
    /// Configured interfaces the links task follows.
    pub names: watch::Sender<Arc<Vec<String>>>,
    /// Who may use the control socket.
    pub access: watch::Sender<Access>,
    pub metrics: MetricsServer,
    /// What the announce task acts on: `[announce]` and the facts of the state.
    pub announce: watch::Sender<AnnounceInput>,
}

pub struct Owner {
    pub(super) st: State,
    pub(super) io: Lines,
    /// Status requests waiting for a fresh pin count, since when.
    waiting: Vec<(Reply, Instant)>,
}

/// Where the probes of backend `b` of `svc` go: to the backend itself, or (tunnel mode)
/// to the VIP through the tunnel, marked with the backend's id, from the egress
/// interface's address of the VIP's family, else the first global address of that
/// family on the host (`host`) that is not a VIP of `vips` (a backend answering a VIP
/// it holds would answer itself); `source: None` when there is none (the check fails,
/// saying so). `None` while the host's addresses are not read yet: no check yet.
fn probe_target(
    egress: &BTreeMap<u32, EgressFacts>,
    host: Option<&[IpAddr]>,
    vips: &[IpAddr],
    svc: &crate::model::Service,
    b: &crate::reconcile::ProgrammedBackend,
) -> Option<Target> {
    if svc.forwarding != crate::model::Forwarding::Tunnel {
        return Some(Target::Direct(b.address));
    }
    let on_egress = b
        .link
        .and_then(|l| egress.get(&l.ifindex))
        .and_then(|f| f.address_like(svc.vip));
    let elsewhere = || {
        host?
            .iter()
            .find(|a| a.is_ipv4() == svc.vip.is_ipv4() && !vips.contains(a))
            .copied()
    };
    if on_egress.is_none() {
        host?;
    }
    Some(Target::Tunnel {
        vip: svc.vip,
        source: on_egress.or_else(elsewhere),
        mark: lb_common::tunnel::probe_mark(b.id),
    })
}

/// Sends a response (a requester that went away is no error).
pub fn answer(reply: Reply, r: Response) {
    let _ = reply.send(r);
}

pub fn usage(e: impl std::fmt::Display) -> Response {
    Response::error(ErrorKind::Usage, e.to_string())
}

pub fn runtime(e: impl std::fmt::Display) -> Response {
    Response::error(ErrorKind::Runtime, e.to_string())
}

/// A controller error as a response: the caller's mistakes are usage errors (exit 2).
pub fn control_error(e: ControlError) -> Response {
    if e.is_usage() { usage(e) } else { runtime(e) }
}

impl Owner {
    pub fn new(s: Started, io: Lines) -> Self {
        let st = State {
            cfg: s.cfg,
            ctl: s.ctl,
            ebpf: s.ebpf,
            program_id: s.program_id,
            ifaces: s.ifaces,
            neigh: s.neigh,
            checks: Checks::default(),
            pinned: PinnedCounts::default(),
            rates: Rates::default(),
            load: LoadState::default(),
            announced: AnnounceBook::default(),
            egress: BTreeMap::new(),
            host_addresses: None,
            changed_at: Instant::now(),
            drained_at: HashMap::new(),
            _lock: s.lock,
        };
        Self {
            st,
            io,
            waiting: Vec::new(),
        }
    }

    /// Handles commands and observations until both channels close.
    pub async fn run(
        mut self,
        mut commands: Receiver<Command>,
        mut observations: UnboundedReceiver<Observation>,
    ) {
        self.after_change();
        loop {
            self.publish_announce_facts();
            tokio::select! {
                Some(c) = commands.recv() => self.command(c),
                Some(o) = observations.recv() => self.observe(o),
                else => return,
            }
        }
    }

    /// Tells the announce task what it acts on when that changed (after every message:
    /// edits, health transitions, links, reloads all change it).
    fn publish_announce_facts(&self) {
        let input = AnnounceInput {
            announce: self.st.cfg.announce.clone(),
            facts: Some(announce::facts(&self.st)),
        };
        self.io.announce.send_if_modified(|current| {
            let changed = *current != input;
            if changed {
                *current = input;
            }
            changed
        });
    }

    fn command(&mut self, c: Command) {
        let st = &self.st;
        match c {
            Command::Status(reply) => self.status(reply),
            Command::Stats(reply) => answer(reply, views::stats(st)),
            Command::Explain {
                service,
                client,
                port,
                reply,
            } => answer(reply, views::explain(st, &service, client, port)),
            Command::Top { query, reply } => answer(reply, load::top(st, &query)),
            Command::AffinityList {
                service,
                limit,
                reply,
            } => answer(reply, views::affinity_list(st, service.as_deref(), limit)),
            Command::AffinityFlush { service, reply } => {
                answer(reply, self.affinity_flush(service.as_deref()))
            }
            Command::DrainStatus {
                service,
                address,
                reply,
            } => self.drain_status(&service, address, reply),
            Command::Edit { edit, reply } => self.edit(edit, reply),
            Command::Reload(reply) => self.reload(reply),
            Command::Metrics(tx) => {
                let _ = tx.send(views::snapshot(st));
            }
        }
    }

    fn observe(&mut self, o: Observation) {
        log::trace!("observation: {o:?}");
        match o {
            Observation::Probe(r) => self.probe(r),
            Observation::Neighbour {
                address,
                resolution,
            } => {
                if self.is_target(address) {
                    if !resolution.is_resolved() {
                        log::debug!("neighbour of backend {address}: {resolution}");
                    }
                    let now = Instant::now();
                    let link = self
                        .st
                        .neigh
                        .observe(address, &resolution, &self.st.ifaces, now);
                    self.apply_link(address, link, resolution.gateway(address));
                }
            }
            Observation::Egress { facts, host } => {
                let host_changed = host.is_some() && host != self.st.host_addresses;
                if host_changed {
                    self.st.host_addresses = host;
                }
                if !self.egress(facts) && host_changed {
                    self.sync_checks();
                }
            }
            Observation::Interface { name, ifindex } => self.interface(&name, ifindex),
            Observation::InterfaceGone { ifindex } => {
                if self.st.ifaces.gone(ifindex).is_some() {
                    self.io.resolve_now.notify_one();
                }
            }
            Observation::Pins(r) => {
                self.st.pinned.update(r);
                self.answer_waiting(false);
            }
            Observation::RatesTick => {
                let current = views::rate_samples(&self.st);
                self.st.rates.sample(Instant::now(), current);
                load::tick(&mut self.st);
            }
            Observation::Samples(s) => self.st.load.book.add(&s),
            Observation::Looked(l) => self.looked(*l),
            Observation::CountsDeadline => self.answer_waiting(true),
            Observation::Announced(outcomes) => self.st.announced.record(outcomes),
        }
    }

    fn is_target(&self, address: IpAddr) -> bool {
        self.io.targets.borrow().contains(&address)
    }

    // --- status and its pin counts ------------------------------------------------------

    /// Status shows pin counts taken after the last change and no older than 200 ms when
    /// scans are cheap (a small table): it waits up to a second for one.
    fn status(&mut self, reply: Reply) {
        let p = &self.st.pinned;
        if p.fresh(self.st.changed_at, FRESH_COUNTS) || (p.taken.is_some() && !p.cheap) {
            return answer(reply, Response::ok(views::status(&self.st)));
        }
        self.waiting.push((reply, Instant::now()));
        self.io.scan_now.notify_one();
        let tx = self.io.observations.clone();
        tokio::spawn(async move {
            tokio::time::sleep(COUNTS_WAIT).await;
            let _ = tx.send(Observation::CountsDeadline);
        });
    }

    /// Answers the waiting status requests: all of them when the counts are fresh, else
    /// (at a deadline) those that waited long enough.
    fn answer_waiting(&mut self, deadline: bool) {
        if self.waiting.is_empty() {
            return;
        }
        let fresh = self.st.pinned.fresh(self.st.changed_at, FRESH_COUNTS);
        if !fresh && !deadline {
            // Taken before the last change: ask again.
            self.io.scan_now.notify_one();
            return;
        }
        let (ready, still): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|(_, since)| fresh || since.elapsed() >= COUNTS_WAIT);
        self.waiting = still;
        for (reply, _) in ready {
            answer(reply, Response::ok(views::status(&self.st)));
        }
    }

    /// One poll of `drain --wait`, answered at once from the last count; when that count
    /// predates the drain and passes are cheap, a fresh pass is asked for (the next poll
    /// sees it). A large table's passes come at their own pace.
    fn drain_status(&mut self, service: &str, address: IpAddr, reply: Reply) {
        match views::drain_status(&self.st, service, address) {
            Ok(d) => {
                if d.draining && !d.counted_since_drain && self.st.pinned.cheap {
                    self.io.scan_now.notify_one();
                }
                answer(reply, Response::ok(d));
            }
            Err(r) => answer(reply, r),
        }
    }

    // --- changes ------------------------------------------------------------------------

    /// An edit: a first look at the backends it adds (in its own task: up to a second),
    /// then validate, reconcile, apply and save (in [`Owner::looked`]).
    fn edit(&mut self, edit: Edit, reply: Reply) {
        let added = look::added_by(&self.st.ctl.desired, &edit);
        if added.is_empty() {
            return answer(reply, self.change(&edit));
        }
        let tx = self.io.observations.clone();
        look::spawn(
            self.io.resolver.clone(),
            added,
            Pending::Edit { edit, reply },
            tx,
        );
    }

    fn looked(&mut self, l: Looked) {
        self.record_looks(l.looks);
        match l.then {
            Pending::Edit { edit, reply } => answer(reply, self.change(&edit)),
            Pending::Reload { reload, reply } => answer(reply, self.apply_reload(*reload)),
        }
    }

    /// Records a first look as observations (no reconcile: the change that waited for it
    /// does that).
    pub(super) fn record_looks(&mut self, looks: Looks) {
        let now = Instant::now();
        for (addr, r) in looks.links {
            let link = self.st.neigh.observe(addr, &r, &self.st.ifaces, now);
            self.st.ctl.observed.links.insert(addr, link);
            self.st.ctl.observed.set_gateway(addr, r.gateway(addr));
        }
        for key in looks.passed {
            self.st
                .ctl
                .observed
                .health
                .insert(key, crate::model::Health::Up);
        }
    }

    /// Applies an edit (validated by the controller), then saves the state file; if
    /// saving fails the edit is undone.
    fn change(&mut self, edit: &Edit) -> Response {
        let before = self.st.ctl.desired.clone();
        let mut what = edit.describe();
        let node_edit = matches!(edit, Edit::NodeDrain | Edit::NodeUndrain);
        if node_edit && self.st.cfg.announce.kind() == crate::model::AnnounceKind::None {
            // Without an announcer nothing is announced or withdrawn: say so, not what
            // an announcer would do.
            what = format!(
                "{} — but no [announce] is configured, so this node announces nothing: the \
                 router's routes are unchanged (the state is kept for when [announce] is set)",
                if matches!(edit, Edit::NodeDrain) {
                    "node drained"
                } else {
                    "node undrained"
                }
            );
        }
        let applied = match self.st.ctl.edit(edit) {
            Ok(a) => a,
            Err(e) => return control_error(e),
        };
        if let Err(e) = self.persist() {
            if let Err(u) = self.st.ctl.set_desired(before) {
                warn!("undoing {what} after a failed save: {u}");
            }
            self.after_change();
            return runtime(format!("{what}: not saved, undone: {e:#}"));
        }
        info!("{what}");
        self.applied(&applied);
        self.after_change();
        Response::ok(serde_json::json!({ "done": what }))
    }

    /// Writes the runtime changes (difference from the config) atomically.
    pub(super) fn persist(&self) -> anyhow::Result<()> {
        let d = &self.st.cfg.daemon;
        let edits = self.st.ctl.desired.diff(&self.st.cfg.services);
        state::save(&d.state_file, &d.pin_dir, &edits)?;
        Ok(())
    }

    /// After a change of intent: health checks, neighbour targets and books follow.
    pub(super) fn after_change(&mut self) {
        let st = &mut self.st;
        st.changed_at = Instant::now();
        let mut addresses = HashSet::new();
        let mut draining = HashMap::new();
        for svc in st.ctl.desired.services() {
            let Some(ps) = st.ctl.programmed.service(&svc.name) else {
                continue;
            };
            for b in &ps.backends {
                if b.draining {
                    let key = (svc.name.clone(), b.address);
                    let since = st.drained_at.get(&key).copied();
                    draining.insert(key, since.unwrap_or(st.changed_at));
                }
                addresses.insert(b.address);
            }
        }
        st.drained_at = draining;
        self.sync_checks();
        let st = &mut self.st;
        st.neigh.retain(&addresses);
        let mut targets: Vec<IpAddr> = addresses.into_iter().collect();
        targets.sort();
        self.io.targets.send_if_modified(|t| {
            let changed = **t != targets;
            if changed {
                *t = Arc::new(targets);
            }
            changed
        });
        self.io.resolve_now.notify_one();
    }

    /// Health checks follow the programmed backends (started, stopped, restarted when
    /// their check or probe path changed).
    fn sync_checks(&mut self) {
        let st = &mut self.st;
        let mut wanted: Vec<Wanted> = Vec::new();
        let vips: Vec<IpAddr> = st.ctl.desired.services().map(|s| s.vip).collect();
        for svc in st.ctl.desired.services() {
            let Some(ps) = st.ctl.programmed.service(&svc.name) else {
                continue;
            };
            for b in &ps.backends {
                let host = st.host_addresses.as_deref();
                let Some(target) = probe_target(&st.egress, host, &vips, svc, b) else {
                    continue;
                };
                wanted.push((
                    (svc.name.clone(), b.address),
                    svc.health.clone(),
                    target,
                    b.health,
                ));
            }
        }
        st.checks.sync(wanted, &self.io.observations);
    }

    /// Logs what a plan did besides writing entries; the programmed state changed.
    pub(super) fn applied(&mut self, a: &Applied) {
        if a.ops > 0 {
            self.st.changed_at = Instant::now();
            // A backend's link (egress interface) may have changed its probe path.
            self.sync_checks();
        }
        for (service_id, backend_id, n) in &a.rebalanced {
            let Some(s) = self.st.ctl.programmed.service_by_id(*service_id) else {
                continue;
            };
            let name = s.name.as_deref().unwrap_or("?");
            let addr = s.backend_by_id(*backend_id).map(|b| b.address);
            info!(
                "failback rebalance: {n} clients of service {name} unpinned to return to {}",
                addr.map_or_else(|| "?".into(), |a| a.to_string())
            );
        }
    }

    fn affinity_flush(&mut self, service: Option<&str>) -> Response {
        let id = match service.map(|s| self.st.ctl.service(s)) {
            Some(Ok(s)) => Some(s.id),
            Some(Err(e)) => return control_error(e),
            None => None,
        };
        match self.st.ctl.dp.affinity_flush(id) {
            Ok(n) => {
                info!(
                    "affinity flushed ({}): {n} entries removed",
                    service.unwrap_or("all services")
                );
                self.st.changed_at = Instant::now();
                Response::ok(serde_json::json!({ "removed": n }))
            }
            Err(e) => runtime(e),
        }
    }

    // --- observations -------------------------------------------------------------------

    /// One probe result: bookkeeping, and on a transition the data plane follows.
    fn probe(&mut self, r: ProbeReport) {
        let Some(state) = self.st.checks.record(&r) else {
            return;
        };
        let key = (r.service.clone(), r.address);
        match self.st.ctl.observe(|o| {
            o.health.insert(key, state);
        }) {
            Ok(applied) => self.applied(&applied),
            Err(e) => warn!(
                "applying the health of backend {} ({}): {e}",
                r.address, r.service
            ),
        }
    }

    /// Egress facts read: recorded; when an interface's MTU or addresses changed, the
    /// maps follow (`XLB_EGRESS`, and the tunnel backends' usability) and the checks
    /// (their source): returns whether they did.
    fn egress(&mut self, facts: BTreeMap<u32, EgressFacts>) -> bool {
        let changed: Vec<(u32, EgressFacts)> = facts
            .iter()
            .filter(|(i, f)| self.st.egress.get(i) != Some(f))
            .map(|(i, f)| (*i, *f))
            .collect();
        self.st.egress.extend(facts);
        if changed.is_empty() {
            return false;
        }
        for (ifindex, f) in &changed {
            log::debug!("egress interface {ifindex}: {f:?}");
        }
        match self.st.ctl.observe(|o| {
            o.egress
                .extend(changed.iter().map(|(i, f)| (*i, f.value())));
        }) {
            Ok(applied) => self.applied(&applied),
            Err(e) => warn!("updating the egress interfaces: {e}"),
        }
        // Tunnel probes are sent from the egress interfaces' addresses. (Not
        // after_change: it wakes the resolver, whose round sends this observation.)
        self.sync_checks();
        true
    }

    fn interface(&mut self, name: &str, ifindex: Option<u32>) {
        let st = &mut self.st;
        if st
            .ifaces
            .follow(name, ifindex, &mut st.ebpf, &mut st.ctl.dp, st.program_id)
        {
            // Its backends' routes and neighbours changed with it.
            self.io.resolve_now.notify_one();
        }
    }

    /// A backend address's link and the gateway of its route: recorded, and when they
    /// differ from what is programmed (observed, for the gateway), the maps follow; logs
    /// changes.
    fn apply_link(&mut self, address: IpAddr, link: Option<Link>, gateway: Option<IpAddr>) {
        if self.st.ctl.observed.gateways.get(&address).copied() != gateway {
            match self.st.ctl.observe(|o| {
                o.set_gateway(address, gateway);
                o.links.insert(address, link);
            }) {
                Ok(applied) => self.applied(&applied),
                Err(e) => warn!("updating the route of backend {address}: {e}"),
            }
        }
        let owners: Vec<String> = self
            .st
            .ctl
            .programmed
            .services
            .iter()
            .filter(|s| s.backend(address).is_some_and(|b| b.link != link))
            .filter_map(|s| s.name.clone())
            .collect();
        if owners.is_empty() {
            self.st.ctl.observed.links.insert(address, link);
            return;
        }
        match self.st.ctl.observe(|o| {
            o.links.insert(address, link);
        }) {
            Ok(applied) => self.applied(&applied),
            Err(e) => return warn!("updating the link of backend {address}: {e}"),
        }
        for name in owners {
            self.log_link(address, &name, link);
        }
    }

    fn log_link(&self, address: IpAddr, service: &str, link: Option<Link>) {
        match link {
            Some(l) => info!(
                "neighbour of backend {address} ({service}) resolved: {} via {}",
                crate::neigh::format_mac(&l.mac),
                self.st
                    .ifaces
                    .name_of(l.ifindex)
                    .map_or_else(|| format!("ifindex {}", l.ifindex), str::to_string)
            ),
            None => warn!(
                "neighbour of backend {address} ({service}) lost: {}; kept out of the table",
                self.st
                    .neigh
                    .note(address)
                    .and_then(|n| n.problem.clone())
                    .unwrap_or_default()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{Forwarding, Health, Link, Protocol, Service},
        reconcile::ProgrammedBackend,
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn backend(addr: &str) -> ProgrammedBackend {
        ProgrammedBackend {
            id: 5,
            address: ip(addr),
            weight: 1,
            generation: 1,
            health: Health::Up,
            link: Some(Link {
                mac: [2, 0, 0, 0, 0, 1],
                src_mac: [2, 0, 0, 0, 0, 2],
                ifindex: 3,
            }),
            draining: false,
            value: Default::default(),
        }
    }

    fn source(t: Option<Target>) -> Option<IpAddr> {
        match t {
            Some(Target::Tunnel { source, .. }) => source,
            other => panic!("not a tunnel target: {other:?}"),
        }
    }

    /// Finding 1 of the tunnel trial: an egress interface without an address of the
    /// VIP's family left the probe without a source (and the backend frozen healthy).
    #[test]
    fn a_tunnel_probe_falls_back_to_a_host_address_that_is_not_a_vip() {
        let mut svc = Service::new("web", ip("10.71.100.10"), 80, Protocol::Tcp);
        svc.forwarding = Forwarding::Tunnel;
        let b = backend("fd71:3::11");
        let vips = [svc.vip];
        let v6_only = EgressFacts {
            mtu: 1500,
            v4: None,
            v6: Some("fd71:2::2".parse().unwrap()),
        };
        let egress = BTreeMap::from([(3, v6_only)]);
        // The VIP on lo is skipped; the balancer's address elsewhere is taken.
        let host = [ip("10.71.100.10"), ip("fd71:2::2"), ip("10.71.2.2")];
        assert_eq!(
            source(probe_target(&egress, Some(&host), &vips, &svc, &b)),
            Some(ip("10.71.2.2"))
        );
        // The egress interface's address comes first.
        let both = EgressFacts {
            v4: Some("10.71.2.3".parse().unwrap()),
            ..v6_only
        };
        let egress2 = BTreeMap::from([(3, both)]);
        assert_eq!(
            source(probe_target(&egress2, Some(&host), &vips, &svc, &b)),
            Some(ip("10.71.2.3"))
        );
        // None at all: a target without a source (the check fails, saying why).
        let only_vip = [ip("10.71.100.10")];
        assert_eq!(
            source(probe_target(&egress, Some(&only_vip), &vips, &svc, &b)),
            None
        );
        // The host's addresses not read yet: no check yet.
        assert_eq!(probe_target(&egress, None, &vips, &svc, &b), None);
        // DSR: the backend itself.
        svc.forwarding = Forwarding::Dsr;
        assert_eq!(
            probe_target(&egress, None, &vips, &svc, &b),
            Some(Target::Direct(b.address))
        );
    }
}
