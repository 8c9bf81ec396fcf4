//! `xlb run`: the daemon. It loads (or adopts) the pinned data plane, attaches it, keeps
//! the maps in step with the intent (config + runtime edits), neighbours and health
//! through one [`Controller`] (reconcile + apply after every change), and serves the
//! control API and metrics.
//!
//! Start-up order matters for "restarts lose nothing": the maps are adopted and brought
//! to the desired state *before* the new program replaces the old one through the pinned
//! link, so the program that takes over finds every service, backend and pin in place.
//! And for "no client pinned to a backend whose state is not known" (issue 10, fault 4):
//! before the first table is built, every backend's neighbour gets up to a second to
//! resolve and every backend of unknown health is probed once, all at the same time, so
//! the first table holds every backend that is ready rather than the first to answer.
//! A backend added at runtime gets the same first look before the command returns.
//!
//! Owns: wiring (sockets, tasks, the state file). Must not touch: map layouts, the
//! reconcile rules. (Split into daemon/ with one owner task in a later change.)

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, Weak},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::{Ebpf, programs::Xdp};
use lb_common::{PROG_XLB, Stat, affinity::Verdict};
use log::{info, warn};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::Notify,
};

use crate::{
    api::{self, ErrorKind, Request, Response},
    config::{self, Config, XdpMode},
    dataplane::{
        loader::LoadOptions,
        lock::PinDirLock,
        maps::{DataPlane, ktime_coarse_ns},
        pin,
    },
    health, metrics,
    model::{
        CheckKind, Desired, Edit, Health, HealthCheck, Link, Named, Service, addr_from_words,
        format_duration,
    },
    neigh::{Resolution, Resolver},
    reconcile::{
        Programmed, ProgrammedBackend, ProgrammedService,
        apply::Applied,
        control::{ControlError, Controller},
        inspect::Decision,
        service_key,
    },
    state,
};

/// How a backend's neighbour resolution stands (for status).
#[derive(Clone, Debug, Default)]
struct NeighNote {
    interface: Option<String>,
    problem: Option<String>,
}

/// Live affinity entries per backend id and per service id, from a background scan.
#[derive(Clone, Debug, Default)]
struct PinnedCounts {
    taken: Option<Instant>,
    per_service: HashMap<u32, u64>,
    per_backend: HashMap<u32, u64>,
}

impl PinnedCounts {
    fn backend(&self, id: u32) -> u64 {
        self.per_backend.get(&id).copied().unwrap_or(0)
    }

    fn service(&self, id: u32) -> u64 {
        self.per_service.get(&id).copied().unwrap_or(0)
    }
}

/// Counter samples for rates.
#[derive(Clone, Debug, Default)]
struct Rates {
    at: Option<Instant>,
    interval_s: f64,
    prev: HashMap<String, (u64, u64)>,
    rate: HashMap<String, (f64, f64)>,
}

/// The health checking of one backend of one service.
struct HealthTask {
    cfg: HealthCheck,
    handle: tokio::task::JoinHandle<()>,
    checked: bool,
    transitions: u64,
    last_latency: Option<f64>,
    last_failure: Option<String>,
}

impl Drop for HealthTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

pub struct Daemon {
    cfg: Config,
    /// Health checks by (service, backend address).
    health: HashMap<(String, IpAddr), HealthTask>,
    /// The daemon itself, for the tasks it spawns.
    me: Weak<Mutex<Daemon>>,
    /// Intent, observations, what is programmed, and the maps.
    ctl: Controller,
    program_id: u32,
    attach_mode: &'static str,
    /// Configured XDP interfaces by ifindex.
    interfaces: BTreeMap<u32, String>,
    neigh: HashMap<IpAddr, NeighNote>,
    pinned: PinnedCounts,
    rates: Rates,
    /// Keeps the program loaded while the daemon runs (the links keep it afterwards).
    _ebpf: Ebpf,
}

type Shared = Arc<Mutex<Daemon>>;

fn lock(d: &Shared) -> MutexGuard<'_, Daemon> {
    // A panic while holding the lock must not take the API down with it: the controller
    // is consistent between reconciles.
    d.lock().unwrap_or_else(|p| p.into_inner())
}

/// `xlb run --config FILE`.
pub fn run(config_path: &Path) -> anyhow::Result<()> {
    let cfg = config::load(config_path).map_err(|e| crate::cli::UsageError(e.to_string()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(serve(cfg))
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    let d = &cfg.daemon;
    pin::ensure_bpffs(&d.pin_dir).context("mounting bpffs at /sys/fs/bpf")?;
    // First: one daemon per pin_dir. Nothing (maps, program, state file, socket) is
    // touched before this; the lock lives as long as the daemon.
    let _lock = PinDirLock::acquire(&d.pin_dir)?;
    let opts = LoadOptions {
        affinity_capacity: d.affinity_capacity,
        ..LoadOptions::default()
    };
    let survey = pin::survey(&d.pin_dir, &opts)?;
    let found = survey.found;
    let mut running = false;
    let result = serve_found(&cfg, opts, &survey, &mut running).await;
    if result.is_err() && !running && found == pin::Found::Nothing {
        // A fresh start that failed half-way leaves nothing behind (no maps without a
        // program, no program without a daemon that configured it).
        match pin::down(&cfg.daemon.pin_dir) {
            Ok(_) => info!("start-up failed: removed the pinned state this start had created"),
            Err(e) => warn!("start-up failed and cleaning up failed too: {e}"),
        }
    }
    result
}

/// The config's services with this deployment's saved runtime changes; logs what was
/// applied and from where.
fn load_desired(cfg: &Config) -> anyhow::Result<Desired> {
    let d = &cfg.daemon;
    let saved = state::load(&d.state_file, &d.pin_dir)?;
    let (desired, warnings) = saved.replay(&cfg.services);
    for w in &warnings {
        warn!("{w}");
    }
    if !saved.is_empty() {
        info!(
            "applied {} of {} saved runtime changes from {} (state file format {}{})",
            saved.len() - warnings.len(),
            saved.len(),
            d.state_file.display(),
            saved.format,
            if saved.format < state::FORMAT {
                ", rewritten as the current format"
            } else {
                ""
            }
        );
    }
    Ok(desired)
}

async fn serve_found(
    cfg: &Config,
    opts: LoadOptions,
    survey: &pin::Survey,
    running: &mut bool,
) -> anyhow::Result<()> {
    let d = &cfg.daemon;
    let found = survey.found;
    let desired = load_desired(cfg)?;
    for line in survey.describe() {
        info!("{line}");
    }
    let pin::Loaded {
        mut ebpf,
        pending: migrations,
    } = pin::load_pinned(&d.pin_dir, &opts, survey)?;
    let program_id = {
        let prog: &Xdp = ebpf
            .program(PROG_XLB)
            .expect("xlb program")
            .try_into()
            .expect("XDP");
        prog.info().map(|i| i.id()).unwrap_or(0)
    };
    let mut dp = DataPlane::from_ebpf(&mut ebpf)?;
    let mut interfaces = BTreeMap::new();
    for name in &d.interfaces {
        let index =
            ifindex(name).with_context(|| format!("interface {name} (daemon.interfaces)"))?;
        dp.add_tx_port(index)?;
        interfaces.insert(index, name.clone());
    }
    let mut ctl = Controller::new(dp)?;
    let adopted = ctl.programmed.clone();
    let resolver =
        Arc::new(Resolver::new().context("opening a netlink socket for neighbour resolution")?);
    let mut neigh = HashMap::new();
    let looked = first_look(&resolver, &desired, &adopted).await;
    record_looks(&mut ctl, &mut neigh, &interfaces, looked);
    ctl.set_desired(desired).map_err(anyhow::Error::from)?;
    log_start(found, &d.pin_dir, &adopted, &ctl.programmed);
    let attach_mode = attach(&mut ebpf, cfg, program_id)?;
    pin::finish_migrations(&d.pin_dir, &migrations)?;

    let daemon = Arc::new_cyclic(|me| {
        Mutex::new(Daemon {
            health: HashMap::new(),
            me: me.clone(),
            ctl,
            program_id,
            attach_mode,
            interfaces,
            neigh,
            pinned: PinnedCounts::default(),
            rates: Rates::default(),
            _ebpf: ebpf,
            cfg: cfg.clone(),
        })
    });
    lock(&daemon).sync_health();
    // Persist the adopted state's diff right away, so a config edit plus restart keeps
    // the runtime changes that still apply (and a format-1 file becomes format 2).
    lock(&daemon).persist()?;
    let result = run_tasks(cfg, daemon, resolver, running).await;
    let _ = std::fs::remove_file(&d.socket);
    result
}

/// Attaches to every configured interface (last: the program that takes over finds the
/// maps complete) and detaches from interfaces no longer configured.
fn attach(ebpf: &mut Ebpf, cfg: &Config, program_id: u32) -> anyhow::Result<&'static str> {
    let d = &cfg.daemon;
    let generic = d.xdp_mode == XdpMode::Generic;
    let attach_mode = d.xdp_mode.name();
    for name in &d.interfaces {
        match pin::attach(ebpf, &d.pin_dir, name, generic)? {
            pin::Attached::New => {
                info!("attached xlb (program {program_id}) to {name}, {attach_mode} XDP")
            }
            pin::Attached::Replaced => info!(
                "replaced the program on {name} atomically through its pinned link (program {program_id})"
            ),
            pin::Attached::Reattached => info!(
                "attached xlb (program {program_id}) to the re-created {name}, {attach_mode} XDP"
            ),
        }
    }
    for stale in pin::pinned_links(&d.pin_dir) {
        if !d.interfaces.contains(&stale) {
            pin::detach(&d.pin_dir, &stale)?;
            info!("detached xlb from {stale}: no longer in daemon.interfaces");
        }
    }
    Ok(attach_mode)
}

fn log_start(found: pin::Found, pin_dir: &Path, before: &Programmed, after: &Programmed) {
    let kept = |s: &ProgrammedService| {
        before
            .services
            .iter()
            .any(|b| b.id == s.id && b.key == s.key)
    };
    let adopted = after.services.iter().filter(|s| kept(s)).count();
    let backends_kept = after
        .services
        .iter()
        .flat_map(|s| &s.backends)
        .filter(|b| {
            before
                .services
                .iter()
                .flat_map(|s| &s.backends)
                .any(|o| o.id == b.id && o.generation == b.generation)
        })
        .count();
    let old_backends: usize = before.services.iter().map(|s| s.backends.len()).sum();
    match found {
        pin::Found::Nothing => info!(
            "fresh start: {} services, pinned state created under {}",
            after.services.len(),
            pin_dir.display()
        ),
        pin::Found::Compatible => info!(
            "adopted pinned state under {}: {adopted} services and {backends_kept} backends kept \
             their ids and pins, {} new services, {} services and {} backends removed",
            pin_dir.display(),
            after.services.len() - adopted,
            before.services.len() - adopted,
            old_backends + before.orphans.len() - backends_kept
        ),
    }
}

/// Runs the control socket, metrics and background loops until SIGTERM/SIGINT.
async fn run_tasks(
    cfg: &Config,
    daemon: Shared,
    resolver: Arc<Resolver>,
    running: &mut bool,
) -> anyhow::Result<()> {
    let d = &cfg.daemon;
    let listener = bind_socket(&d.socket)?;
    info!("control socket {} (mode 0600)", d.socket.display());
    let resolve_now = Arc::new(Notify::new());
    tokio::spawn(neighbour_loop(
        daemon.clone(),
        resolver.clone(),
        resolve_now.clone(),
    ));
    tokio::spawn(neighbour_events(daemon.clone(), resolve_now.clone()));
    let scan_now = Arc::new(Notify::new());
    tokio::spawn(pinned_scan_loop(
        daemon.clone(),
        d.pin_dir.clone(),
        scan_now.clone(),
    ));
    tokio::spawn(rates_loop(daemon.clone()));
    if let Some(addr) = d.metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics listener on {addr} (daemon.metrics)"))?;
        info!("metrics on http://{addr}/metrics");
        let dd = daemon.clone();
        let source: Arc<dyn Fn() -> metrics::Snapshot + Send + Sync> =
            Arc::new(move || lock(&dd).metrics_snapshot());
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(listener, source).await {
                warn!("metrics server stopped: {e}");
            }
        });
    }
    let wakers = Wakers {
        resolver,
        resolve_now,
        scan_now,
    };
    let api = tokio::spawn(api_loop(listener, daemon, wakers));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    *running = true;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: stopping; the data plane keeps forwarding on its pinned state"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT: stopping; the data plane keeps forwarding on its pinned state"),
        r = api => bail!("the control API stopped: {r:?}"),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The first look at new backends: neighbours and one health probe, before they can take
// clients.
// ---------------------------------------------------------------------------------------

/// What a first look found for the backends of some services.
#[derive(Default)]
struct Looks {
    links: Vec<(IpAddr, Resolution)>,
    /// (service, backend) whose first probe passed.
    passed: Vec<(String, IpAddr)>,
}

/// The health `programmed` (adopted, or as last written) holds for a backend of `svc`.
fn known_health(programmed: &Programmed, svc: &Service, address: IpAddr) -> Health {
    let key = service_key(svc);
    programmed
        .services
        .iter()
        .filter(|p| p.name.as_deref().is_none_or(|n| n == svc.name))
        .find(|p| p.key == key && p.table_size() == svc.table_size)
        .and_then(|p| p.backend(address))
        .map_or(Health::Unknown, |b| b.health)
}

/// Resolves every backend of `desired` (each gets up to a second) and probes once every
/// backend whose health `programmed` does not know, all concurrently.
async fn first_look(resolver: &Resolver, desired: &Desired, programmed: &Programmed) -> Looks {
    let addrs: HashSet<IpAddr> = desired
        .services()
        .flat_map(|s| s.backends.iter().map(|b| b.address))
        .collect();
    let resolving = futures::future::join_all(
        addrs
            .into_iter()
            .map(|a| async move { (a, resolve_soon(resolver, a).await) }),
    );
    let probes: Vec<(String, IpAddr, HealthCheck)> = desired
        .services()
        .filter(|s| s.health.kind.tag() != CheckKind::None)
        .flat_map(|s| {
            s.backends
                .iter()
                .filter(|b| known_health(programmed, s, b.address) == Health::Unknown)
                .map(|b| (s.name.clone(), b.address, s.health.clone()))
        })
        .collect();
    let probing = futures::future::join_all(probes.into_iter().map(|(svc, addr, h)| async move {
        let p = health::probe(&h.kind, addr, h.timeout).await;
        (svc, addr, p.ok)
    }));
    let (links, probed) = futures::join!(resolving, probing);
    Looks {
        links,
        passed: probed
            .into_iter()
            .filter(|(_, _, ok)| *ok)
            .map(|(s, a, _)| (s, a))
            .collect(),
    }
}

/// Records a first look as observations (no reconcile: the caller's change does that).
fn record_looks(
    ctl: &mut Controller,
    neigh: &mut HashMap<IpAddr, NeighNote>,
    interfaces: &BTreeMap<u32, String>,
    looks: Looks,
) {
    for (addr, r) in looks.links {
        let (note, link) = judge_resolution(interfaces, r);
        neigh.insert(addr, note);
        ctl.observed.links.insert(addr, link);
    }
    for key in looks.passed {
        ctl.observed.health.insert(key, Health::Up);
    }
}

/// A resolution as a status note and the link the data plane may use.
fn judge_resolution(
    interfaces: &BTreeMap<u32, String>,
    r: Resolution,
) -> (NeighNote, Option<Link>) {
    match r {
        Resolution::Resolved { link, ifname, .. } if !interfaces.contains_key(&link.ifindex) => (
            NeighNote {
                problem: Some(format!(
                    "reached through {ifname}, which is not in daemon.interfaces"
                )),
                interface: Some(ifname),
            },
            None,
        ),
        Resolution::Resolved { link, ifname, .. } => (
            NeighNote {
                interface: Some(ifname),
                problem: None,
            },
            Some(link),
        ),
        Resolution::Unresolved { ifname, reason, .. } => (
            NeighNote {
                interface: Some(ifname),
                problem: Some(reason),
            },
            None,
        ),
        Resolution::NoRoute { reason } => (
            NeighNote {
                interface: None,
                problem: Some(reason),
            },
            None,
        ),
    }
}

fn ifindex(name: &str) -> anyhow::Result<u32> {
    let c = std::ffi::CString::new(name).context("interface name has a NUL byte")?;
    // SAFETY: a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        bail!("interface {name} does not exist");
    }
    Ok(i)
}

/// Binds the control socket with mode 0600 from the start (umask), replacing a stale
/// socket file but never a live daemon's.
fn bind_socket(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another xlb daemon is listening on {}; stop it first",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    // SAFETY: umask only changes this process's file-creation mask.
    let old = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = listener.with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok(listener)
}

/// What request handlers need besides the daemon: the resolver, and the background loops
/// they may wake.
#[derive(Clone)]
struct Wakers {
    resolver: Arc<Resolver>,
    resolve_now: Arc<Notify>,
    scan_now: Arc<Notify>,
}

async fn api_loop(listener: UnixListener, daemon: Shared, wakers: Wakers) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!("control socket accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let d = daemon.clone();
        let w = wakers.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, d, w).await {
                log::debug!("control connection: {e}");
            }
        });
    }
}

async fn connection(stream: UnixStream, daemon: Shared, wakers: Wakers) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "idle client"))??
    {
        let response = match api::decode_request(&line) {
            Ok(req) => handle(&daemon, &wakers, req).await,
            Err(e) => Response::error(ErrorKind::Usage, format!("malformed request: {e}")),
        };
        let mut out = serde_json::to_string(&response).expect("responses serialize");
        out.push('\n');
        write.write_all(out.as_bytes()).await?;
    }
    Ok(())
}

/// Resolves a backend's neighbour, giving ARP/ND up to a second to answer: a backend
/// added through the CLI should take traffic when the command returns, not a poll later.
/// (An unresolvable one is added anyway and kept out of the table until it resolves.)
async fn resolve_soon(resolver: &Resolver, address: IpAddr) -> Resolution {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let r = resolver.resolve(address).await;
        if !matches!(r, Resolution::Unresolved { .. }) || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn usage(e: impl std::fmt::Display) -> Response {
    Response::error(ErrorKind::Usage, e.to_string())
}

fn runtime(e: impl std::fmt::Display) -> Response {
    Response::error(ErrorKind::Runtime, e.to_string())
}

/// A controller error as a response: the caller's mistakes are usage errors (exit 2).
fn control_error(e: ControlError) -> Response {
    if e.is_usage() { usage(e) } else { runtime(e) }
}

async fn handle(daemon: &Shared, wakers: &Wakers, req: Request) -> Response {
    if req == Request::Status {
        fresh_counts(daemon, wakers).await;
    }
    let response = match req {
        Request::Edit(edit) => edit_request(daemon, wakers, edit).await,
        Request::Status => Response::ok(lock(daemon).status()),
        Request::Stats => match lock(daemon).stats() {
            Ok(s) => Response::ok(s),
            Err(e) => runtime(e),
        },
        Request::Explain {
            service,
            client,
            port,
        } => lock(daemon).explain(&service, client, port),
        Request::AffinityList { service, limit } => {
            lock(daemon).affinity_list(service.as_deref(), limit)
        }
        Request::AffinityFlush { service } => lock(daemon).affinity_flush(service.as_deref()),
    };
    wakers.resolve_now.notify_one();
    response
}

/// Status shows pinned counts no older than 200 ms when scans are cheap.
async fn fresh_counts(daemon: &Shared, wakers: &Wakers) {
    let asked = Instant::now();
    let stale = lock(daemon)
        .pinned
        .taken
        .is_none_or(|t| t.elapsed() > Duration::from_millis(200));
    if !stale {
        return;
    }
    wakers.scan_now.notify_one();
    while asked.elapsed() < Duration::from_secs(1)
        && lock(daemon).pinned.taken.is_none_or(|t| t < asked)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An edit: a first look at the backends it adds (without the lock: resolution and one
/// probe take up to a second), then validate, reconcile, apply and save under the lock.
async fn edit_request(daemon: &Shared, wakers: &Wakers, edit: Edit) -> Response {
    let added = lock(daemon).added_by(&edit);
    let looks = first_look(&wakers.resolver, &added, &Programmed::empty(0)).await;
    let mut d = lock(daemon);
    let d = &mut *d;
    record_looks(&mut d.ctl, &mut d.neigh, &d.interfaces, looks);
    d.change(&edit)
}

impl Daemon {
    /// The backends `edit` would add, with their service's settings (for a first look).
    fn added_by(&self, edit: &Edit) -> Desired {
        let services: Vec<Service> = match edit {
            Edit::ServiceAdd { service } => vec![(**service).clone()],
            Edit::BackendAdd {
                service, address, ..
            } => self
                .ctl
                .desired
                .service(service)
                .map(|s| Service {
                    backends: vec![crate::model::Backend::new(*address)],
                    ..s.clone()
                })
                .into_iter()
                .collect(),
            _ => Vec::new(),
        };
        Desired::from_services(&services)
    }

    /// Applies an edit (validated by the controller), then saves the state file; if
    /// saving fails the edit is undone.
    fn change(&mut self, edit: &Edit) -> Response {
        let before = self.ctl.desired.clone();
        let what = edit.describe();
        let applied = match self.ctl.edit(edit) {
            Ok(a) => a,
            Err(e) => return control_error(e),
        };
        if let Err(e) = self.persist() {
            if let Err(u) = self.ctl.set_desired(before) {
                warn!("undoing {what} after a failed save: {u}");
            }
            return runtime(format!("{what}: not saved, undone: {e:#}"));
        }
        info!("{what}");
        self.log_applied(&applied);
        self.sync_health();
        Response::ok(serde_json::json!({ "done": what }))
    }

    /// Writes the runtime changes (difference from the config) atomically.
    fn persist(&self) -> anyhow::Result<()> {
        let d = &self.cfg.daemon;
        let edits = self.ctl.desired.diff(&self.cfg.services);
        state::save(&d.state_file, &d.pin_dir, &edits)?;
        Ok(())
    }

    fn log_applied(&self, a: &Applied) {
        for (service_id, backend_id, n) in &a.rebalanced {
            let Some(s) = self.ctl.programmed.service_by_id(*service_id) else {
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

    /// Starts a health check task for every backend that has none, stops those of
    /// backends that are gone, restarts those whose check config changed.
    fn sync_health(&mut self) {
        let mut wanted: HashMap<(String, IpAddr), (HealthCheck, Health)> = HashMap::new();
        for svc in self.ctl.desired.services() {
            let Some(ps) = self.ctl.programmed.service(&svc.name) else {
                continue;
            };
            for b in &ps.backends {
                wanted.insert(
                    (svc.name.clone(), b.address),
                    (svc.health.clone(), b.health),
                );
            }
        }
        self.health
            .retain(|k, t| wanted.get(k).is_some_and(|(cfg, _)| *cfg == t.cfg));
        for ((service, addr), (cfg, initial)) in wanted {
            if self.health.contains_key(&(service.clone(), addr)) {
                continue;
            }
            let me = self.me.clone();
            let svc = service.clone();
            let task = health::run_checks(
                service.clone(),
                addr,
                cfg.clone(),
                initial,
                move |probe, transition, tracker| {
                    if let Some(d) = me.upgrade() {
                        lock(&d).on_health(&svc, addr, probe, transition, tracker);
                    }
                },
            );
            self.health.insert(
                (service, addr),
                HealthTask {
                    cfg,
                    handle: tokio::spawn(task),
                    checked: false,
                    transitions: 0,
                    last_latency: None,
                    last_failure: None,
                },
            );
        }
    }

    /// One probe result: bookkeeping, and on a transition the data plane follows.
    fn on_health(
        &mut self,
        service: &str,
        addr: IpAddr,
        probe: &health::Probe,
        transition: Option<bool>,
        tracker: &health::Tracker,
    ) {
        let Some(t) = self.health.get_mut(&(service.to_string(), addr)) else {
            return;
        };
        t.checked = true;
        t.transitions = tracker.transitions();
        t.last_latency = Some(probe.latency.as_secs_f64());
        if !probe.ok {
            t.last_failure = Some(probe.reason.clone());
        }
        if transition.is_none() {
            return;
        }
        health::log_transition(service, addr, probe, tracker);
        let state = tracker.state();
        match self.ctl.observe(|o| {
            o.health.insert((service.to_string(), addr), state);
        }) {
            Ok(applied) => self.log_applied(&applied),
            Err(e) => warn!("applying the health of backend {addr} ({service}): {e}"),
        }
    }

    /// Records a resolution result; returns the link when resolved.
    fn note_resolution(&mut self, address: IpAddr, r: Resolution) -> Option<Link> {
        let (note, link) = judge_resolution(&self.interfaces, r);
        self.neigh.insert(address, note);
        link
    }

    /// A backend address's link: recorded, and when it differs from what is programmed,
    /// the maps follow; logs changes.
    fn apply_link(&mut self, address: IpAddr, link: Option<Link>) {
        let owners: Vec<String> = self
            .ctl
            .programmed
            .services
            .iter()
            .filter(|s| s.backend(address).is_some_and(|b| b.link != link))
            .filter_map(|s| s.name.clone())
            .collect();
        if owners.is_empty() {
            self.ctl.observed.links.insert(address, link);
            return;
        }
        if let Err(e) = self.ctl.observe(|o| {
            o.links.insert(address, link);
        }) {
            warn!("updating the link of backend {address}: {e}");
            return;
        }
        for name in owners {
            match link {
                Some(l) => info!(
                    "neighbour of backend {address} ({name}) resolved: {} via ifindex {}",
                    crate::neigh::format_mac(&l.mac),
                    l.ifindex
                ),
                None => warn!(
                    "neighbour of backend {address} ({name}) lost: {}; kept out of the table",
                    self.neigh
                        .get(&address)
                        .and_then(|n| n.problem.clone())
                        .unwrap_or_default()
                ),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Views.
// ---------------------------------------------------------------------------------------

impl Daemon {
    /// Desired services with what is programmed for them, in name order.
    fn services(&self) -> impl Iterator<Item = (&Service, &ProgrammedService)> {
        self.ctl
            .desired
            .services()
            .filter_map(|s| self.ctl.programmed.service(&s.name).map(|p| (s, p)))
    }

    /// What status shows as a backend's health: "unknown" until this daemon's first
    /// check of it (the data plane keeps the last known state meanwhile).
    fn shown_health(&self, svc: &Service, b: &ProgrammedBackend) -> Health {
        let check = self.health.get(&(svc.name.clone(), b.address));
        if check.is_some_and(|c| c.checked) {
            b.health
        } else {
            Health::Unknown
        }
    }

    fn backend_status(
        &self,
        svc: &Service,
        ps: &ProgrammedService,
        b: &ProgrammedBackend,
    ) -> api::BackendStatus {
        let note = self.neigh.get(&b.address);
        let check = self.health.get(&(svc.name.clone(), b.address));
        let up = match b.health {
            Health::Up => true,
            Health::Down => false,
            Health::Unknown => svc.health.unknown_is_up(),
        };
        api::BackendStatus {
            address: b.address,
            weight: b.weight,
            health: self.shown_health(svc, b).name().into(),
            healthy: up,
            draining: b.draining,
            resolved: b.link.is_some(),
            mac: b.link.map(|l| crate::neigh::format_mac(&l.mac)),
            interface: b
                .link
                .and_then(|l| self.interfaces.get(&l.ifindex).cloned())
                .or_else(|| note.and_then(|n| n.interface.clone())),
            note: if b.link.is_none() {
                note.and_then(|n| n.problem.clone())
                    .or_else(|| Some("neighbour not resolved yet".into()))
            } else if !up {
                check.and_then(|c| c.last_failure.clone())
            } else {
                None
            },
            table_share: ps.table_share(b.id),
            pinned_clients: self.pinned.backend(b.id),
            health_transitions: check.map_or(0, |c| c.transitions),
            last_check_ms: check.and_then(|c| c.last_latency).map(|l| l * 1e3),
        }
    }

    fn status(&self) -> api::Status {
        let age = self
            .pinned
            .taken
            .map_or(f64::NAN, |t| t.elapsed().as_secs_f64());
        let services = self
            .services()
            .map(|(s, ps)| api::ServiceStatus {
                name: s.name.clone(),
                vip: s.vip,
                port: s.port,
                protocol: s.protocol.name().into(),
                affinity: s.affinity.name().into(),
                prefix: s.prefix_len(),
                idle_timeout: format_duration(s.idle_timeout),
                failback: s.failback.name().into(),
                table_size: s.table_size,
                health: s.health.kind.tag().name().into(),
                pinned_clients: self.pinned.service(ps.id),
                backends: ps
                    .backends
                    .iter()
                    .map(|b| self.backend_status(s, ps, b))
                    .collect(),
            })
            .collect();
        api::Status {
            version: env!("CARGO_PKG_VERSION").into(),
            program_id: self.program_id,
            attach_mode: self.attach_mode.into(),
            interfaces: self.interfaces.values().cloned().collect(),
            pinned_counts_age_s: age,
            services,
        }
    }

    fn stats(&self) -> Result<api::Stats, crate::dataplane::maps::MapsError> {
        let dp = &self.ctl.dp;
        let global = dp.stats()?;
        let packets = Stat::ALL
            .iter()
            .map(|s| (s.name().to_string(), global[*s as usize]))
            .collect();
        let mut services = Vec::new();
        for (s, ps) in self.services() {
            let st = dp.service_stats(ps.id)?;
            let (spps, sbps) = self.rates.rate.get(&s.name).copied().unwrap_or_default();
            let mut backends = Vec::new();
            for b in &ps.backends {
                let bs = dp.backend_stats(b.id)?;
                let (pps, bps) = self
                    .rates
                    .rate
                    .get(&rate_key(&s.name, b.address))
                    .copied()
                    .unwrap_or_default();
                backends.push(api::BackendStats {
                    address: b.address,
                    packets: bs.packets,
                    bytes: bs.bytes,
                    packets_per_s: pps,
                    bits_per_s: bps,
                    pins: bs.pins,
                });
            }
            services.push(api::ServiceStats {
                name: s.name.clone(),
                packets: st.packets,
                bytes: st.bytes,
                packets_per_s: spps,
                bits_per_s: sbps,
                hits: st.hits,
                misses: st.misses,
                repins: st.repins,
                expiries: st.expiries,
                no_backend: st.no_backend,
                backends,
            });
        }
        Ok(api::Stats {
            packets,
            services,
            rate_interval_s: self.rates.interval_s,
        })
    }

    fn explain(&self, service: &str, client: IpAddr, port: u16) -> Response {
        let e = match self.ctl.explain(service, client, port) {
            Ok(e) => e,
            Err(e) => return control_error(e),
        };
        let Ok(ps) = self.ctl.service(service) else {
            return usage(format!("service {service:?} does not exist"));
        };
        let key_addr = addr_from_words(&e.key.addr, e.key.family);
        let (reason, age, idle) = match &e.decision {
            Decision::Pinned { age, idle } => {
                (None, Some(age.as_secs_f64()), Some(idle.as_secs_f64()))
            }
            Decision::Hashed { reason } => (Some(reason.name().to_string()), None, None),
            Decision::NoBackend => (None, None, None),
        };
        Response::ok(api::Explain {
            service: service.to_string(),
            client,
            key: format!("{key_addr}/{}", ps.value.prefix_len),
            decision: e.decision.name().into(),
            reason,
            backend: e.backend,
            pinned_age_s: age,
            idle_s: idle,
            slot: e.slot,
            slot_backend: e.slot_backend,
            previous_slot_backend: e.previous_slot_backend,
        })
    }

    /// The id of the service named in a request, or all services.
    fn service_id(&self, service: Option<&str>) -> Result<Option<u32>, Response> {
        match service.map(|s| self.ctl.service(s)) {
            Some(Ok(s)) => Ok(Some(s.id)),
            Some(Err(e)) => Err(control_error(e)),
            None => Ok(None),
        }
    }

    fn affinity_list(&self, service: Option<&str>, limit: usize) -> Response {
        let id = match self.service_id(service) {
            Ok(id) => id,
            Err(r) => return r,
        };
        // Judged like the XDP program judges them (lb_common::affinity).
        let now = ktime_coarse_ns();
        let entries = match self.ctl.dp.judged_entries(id, now) {
            Ok(e) => e,
            Err(e) => return runtime(e),
        };
        let total = entries.len();
        let mut out: Vec<api::AffinityEntry> = entries
            .into_iter()
            .filter_map(|p| {
                let (k, v) = (p.key, p.value);
                let ps = self.ctl.programmed.service_by_id(k.service_id)?;
                let backend = p
                    .backend
                    .filter(|_| p.backend_is_its_own())
                    .map(|b| addr_from_words(&b.addr, b.family));
                let idle = now.saturating_sub(v.last_seen_ns);
                Some(api::AffinityEntry {
                    service: ps.name.clone().unwrap_or_default(),
                    client: format!(
                        "{}/{}",
                        addr_from_words(&k.addr, k.family),
                        ps.value.prefix_len
                    ),
                    port: u16::from_be(k.port_be),
                    backend,
                    age_s: now.saturating_sub(v.pinned_ns) as f64 / 1e9,
                    idle_s: idle as f64 / 1e9,
                    expired: p.verdict == Verdict::Expired,
                })
            })
            .collect();
        out.sort_by(|a, b| a.idle_s.total_cmp(&b.idle_s));
        out.truncate(limit);
        Response::ok(api::AffinityList {
            total,
            entries: out,
        })
    }

    fn affinity_flush(&mut self, service: Option<&str>) -> Response {
        let id = match self.service_id(service) {
            Ok(id) => id,
            Err(r) => return r,
        };
        match self.ctl.dp.affinity_flush(id) {
            Ok(n) => {
                info!(
                    "affinity flushed ({}): {n} entries removed",
                    service.unwrap_or("all services")
                );
                Response::ok(serde_json::json!({ "removed": n }))
            }
            Err(e) => runtime(e),
        }
    }

    fn backend_snapshot(
        &self,
        svc: &Service,
        ps: &ProgrammedService,
        b: &ProgrammedBackend,
    ) -> metrics::BackendSnapshot {
        let bs = self.ctl.dp.backend_stats(b.id).unwrap_or_default();
        let check = self.health.get(&(svc.name.clone(), b.address));
        metrics::BackendSnapshot {
            address: b.address.to_string(),
            weight: b.weight,
            packets: bs.packets,
            bytes: bs.bytes,
            pins: bs.pins,
            pinned_clients: self.pinned.backend(b.id),
            table_share: ps.table_share(b.id),
            healthy: b.usable() || (b.health == Health::Up),
            draining: b.draining,
            resolved: b.link.is_some(),
            health_transitions: check.map_or(0, |c| c.transitions),
            last_check_latency_seconds: check.and_then(|c| c.last_latency),
        }
    }

    fn metrics_snapshot(&self) -> metrics::Snapshot {
        let global = self.ctl.dp.stats().unwrap_or([0; Stat::COUNT as usize]);
        let services = self
            .services()
            .map(|(s, ps)| {
                let st = self.ctl.dp.service_stats(ps.id).unwrap_or_default();
                metrics::ServiceSnapshot {
                    name: s.name.clone(),
                    vip: s.vip.to_string(),
                    port: s.port,
                    protocol: s.protocol.name().into(),
                    packets: st.packets,
                    bytes: st.bytes,
                    hits: st.hits,
                    misses: st.misses,
                    repins: st.repins,
                    expiries: st.expiries,
                    no_backend: st.no_backend,
                    pinned_clients: self.pinned.service(ps.id),
                    backends: ps
                        .backends
                        .iter()
                        .map(|b| self.backend_snapshot(s, ps, b))
                        .collect(),
                }
            })
            .collect();
        metrics::Snapshot {
            version: env!("CARGO_PKG_VERSION").into(),
            program_id: self.program_id,
            attach_mode: self.attach_mode.into(),
            interfaces: self.interfaces.values().cloned().collect(),
            packets: Stat::ALL
                .iter()
                .map(|s| (s.name().to_string(), global[*s as usize]))
                .collect(),
            services,
        }
    }
}

fn rate_key(service: &str, backend: IpAddr) -> String {
    format!("{service}/{backend}")
}

/// Resolves every backend's neighbour: every second, and at once when asked (a change
/// came in). Resolution runs without the daemon lock; results are applied under it.
async fn neighbour_loop(daemon: Shared, resolver: Arc<Resolver>, now: Arc<Notify>) {
    loop {
        let addrs: Vec<IpAddr> = {
            let d = lock(&daemon);
            let mut a: Vec<IpAddr> = d
                .ctl
                .desired
                .services()
                .flat_map(|s| s.backends.iter().map(|b| b.address))
                .collect();
            a.sort();
            a.dedup();
            a
        };
        for addr in addrs {
            let r = resolver.resolve(addr).await;
            let mut d = lock(&daemon);
            let link = d.note_resolution(addr, r);
            d.apply_link(addr, link);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = now.notified() => {}
        }
    }
}

/// Follows the kernel's neighbour changes (netlink RTNLGRP_NEIGH): a change for a
/// backend's address wakes the resolution loop at once instead of at its next second.
/// (Changes of a gateway in front of routed backends are picked up by that poll.)
async fn neighbour_events(daemon: Shared, now: Arc<Notify>) {
    use futures::StreamExt as _;
    loop {
        match crate::neigh::subscribe_neighbours() {
            Ok(mut events) => {
                while let Some(ev) = events.next().await {
                    let ours = lock(&daemon)
                        .ctl
                        .desired
                        .services()
                        .any(|s| s.backend(ev.addr).is_some());
                    if ours {
                        log::debug!("neighbour event for backend {}: {:?}", ev.addr, ev.mac);
                        now.notify_one();
                    }
                }
                warn!("the neighbour event stream ended; subscribing again");
            }
            Err(e) => warn!("following neighbour changes: {e}; relying on the 1 s poll"),
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Counts live affinity entries per backend and service over the pinned table through
/// its own handles (no daemon lock held while scanning), a bounded slice at a time
/// (`PinCounter`): every `PIN_TICK` at most `PIN_BUDGET` of scanning, so a full 1M-client
/// table costs the daemon well under 1% of a core; counts are published when a pass ends.
///
/// `xlb status` asks for fresh counts through `now`: when a whole pass is cheap (a small
/// table) it runs at once, otherwise the pass under way serves it. The passes also remove
/// entries expired for an hour (table time wraps after 52 days).
async fn pinned_scan_loop(daemon: Shared, pin_dir: PathBuf, now: Arc<Notify>) {
    const PIN_TICK: Duration = Duration::from_millis(250);
    const PIN_BUDGET: Duration = Duration::from_millis(1);
    const CHEAP_PASS: Duration = Duration::from_millis(20);
    let mut counter: Option<crate::dataplane::affinity::PinCounter> = None;
    // The first pass at once, whole: counts right after a start.
    let mut budget = Duration::MAX;
    loop {
        let dir = pin_dir.clone();
        let c = counter.take();
        // The XDP program's own rules on the maps' own services and backends.
        let step = tokio::task::spawn_blocking(move || {
            let mut c = match c {
                Some(c) => c,
                // Entries expired for an hour go (table time wraps after 52 days).
                None => crate::dataplane::maps::pin_counter_pinned(&dir)?
                    .sweeping(Duration::from_secs(3600)),
            };
            let counts = c.step(ktime_coarse_ns(), budget, || {
                crate::dataplane::maps::pinned_lookup(&dir)
            })?;
            Ok::<_, crate::dataplane::maps::MapsError>((c, counts))
        })
        .await;
        match step {
            Ok(Ok((c, counts))) => {
                if let Some(counts) = counts {
                    lock(&daemon).pinned = PinnedCounts {
                        taken: Some(Instant::now()),
                        per_service: counts.per_service,
                        per_backend: counts.per_backend,
                    };
                }
                counter = Some(c);
            }
            Ok(Err(e)) => warn!("counting the affinity table's pins: {e:#}"),
            Err(e) => warn!("affinity count task: {e}"),
        }
        let cheap = counter
            .as_ref()
            .and_then(|c| c.last_pass)
            .is_some_and(|d| d < CHEAP_PASS);
        budget = PIN_BUDGET;
        tokio::select! {
            _ = tokio::time::sleep(PIN_TICK) => {}
            _ = now.notified(), if cheap => budget = Duration::MAX,
        }
    }
}

/// Samples counters every second for the rates `xlb stats` shows.
async fn rates_loop(daemon: Shared) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut d = lock(&daemon);
        let now = Instant::now();
        let mut current = HashMap::new();
        for (s, ps) in d.services() {
            if let Ok(st) = d.ctl.dp.service_stats(ps.id) {
                current.insert(s.name.clone(), (st.packets, st.bytes));
            }
            for b in &ps.backends {
                if let Ok(bs) = d.ctl.dp.backend_stats(b.id) {
                    current.insert(rate_key(&s.name, b.address), (bs.packets, bs.bytes));
                }
            }
        }
        if let Some(at) = d.rates.at {
            let dt = now.duration_since(at).as_secs_f64().max(1e-3);
            let mut rate = HashMap::new();
            for (k, (p, b)) in &current {
                if let Some((pp, pb)) = d.rates.prev.get(k) {
                    rate.insert(
                        k.clone(),
                        (
                            p.saturating_sub(*pp) as f64 / dt,
                            b.saturating_sub(*pb) as f64 * 8.0 / dt,
                        ),
                    );
                }
            }
            d.rates.rate = rate;
            d.rates.interval_s = dt;
        }
        d.rates.prev = current;
        d.rates.at = Some(now);
    }
}
