//! `xlb run`: the daemon. It loads (or adopts) the pinned data plane, attaches it, keeps
//! the maps in step with the config, runtime changes, neighbours and health, and serves
//! the control API and metrics.
//!
//! Start-up order matters for "restarts lose nothing": the maps are adopted and brought
//! to the desired state *before* the new program replaces the old one through the pinned
//! link, so the program that takes over finds every service, backend and pin in place.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, Weak},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::{Ebpf, programs::Xdp};
use lb_common::{PROG_XLB, Stat};
use log::{info, warn};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::Notify,
};

use crate::{
    api::{self, ErrorKind, Request, Response},
    balancer::{Balancer, BalancerError, Decision, DesiredService, HashReason, ktime_coarse_ns},
    config::{self, Config, HealthConfig, ServiceConfig, XdpModeConfig},
    dataplane::{lock::PinDirLock, maps::DataPlane, pin},
    health, metrics,
    model::{Affinity, BackendSpec, Failback, Link, addr_from_words},
    neigh::{Resolution, Resolver},
    state::{self, Desired},
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
    cfg: HealthConfig,
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
    desired: Desired,
    lb: Balancer,
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
    // A panic while holding the lock must not take the API down with it: the model is
    // always consistent between map writes.
    d.lock().unwrap_or_else(|p| p.into_inner())
}

fn desired_services(desired: &Desired) -> Vec<DesiredService> {
    desired
        .services
        .iter()
        .map(|s| DesiredService {
            spec: s.spec.clone(),
            backends: s
                .backends
                .iter()
                .map(|b| (b.clone(), desired.is_drained(&s.spec.name, b.address)))
                .collect(),
        })
        .collect()
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
    let opts = crate::dataplane::loader::LoadOptions {
        affinity_capacity: d.affinity_capacity,
        ..Default::default()
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

async fn serve_found(
    cfg: &Config,
    opts: crate::dataplane::loader::LoadOptions,
    survey: &pin::Survey,
    running: &mut bool,
) -> anyhow::Result<()> {
    let found = survey.found;
    let d = &cfg.daemon;
    let runtime = state::load(&d.state_file)?;
    let (desired, warnings) = state::apply(&cfg.services, &runtime.ops);
    for w in warnings {
        warn!("{w}");
    }

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
    let (lb, report) = Balancer::adopt(dp, &desired_services(&desired))?;
    match found {
        pin::Found::Nothing => info!(
            "fresh start: {} services, pinned state created under {}",
            report.services_new,
            d.pin_dir.display()
        ),
        pin::Found::Compatible => info!(
            "adopted pinned state under {}: {} services and {} backends kept their ids and pins, \
             {} new services, {} services and {} backends removed",
            d.pin_dir.display(),
            report.services_adopted,
            report.backends_adopted,
            report.services_new,
            report.services_removed,
            report.backends_removed
        ),
    }

    // Attach last: the program that takes over finds the maps complete.
    let generic = d.xdp_mode == XdpModeConfig::Generic;
    let attach_mode = if generic { "generic" } else { "native" };
    for name in &d.interfaces {
        let how = pin::attach(&mut ebpf, &d.pin_dir, name, generic)?;
        match how {
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
    pin::finish_migrations(&d.pin_dir, &migrations)?;
    for stale in pin::pinned_links(&d.pin_dir) {
        if !d.interfaces.contains(&stale) {
            pin::detach(&d.pin_dir, &stale)?;
            info!("detached xlb from {stale}: no longer in daemon.interfaces");
        }
    }

    let socket_path = d.socket.clone();
    let metrics_addr = d.metrics;
    let pin_dir = d.pin_dir.clone();
    let daemon = Arc::new_cyclic(|me| {
        Mutex::new(Daemon {
            health: HashMap::new(),
            me: me.clone(),
            desired,
            lb,
            program_id,
            attach_mode,
            interfaces,
            neigh: HashMap::new(),
            pinned: PinnedCounts::default(),
            rates: Rates::default(),
            _ebpf: ebpf,
            cfg: cfg.clone(),
        })
    });
    lock(&daemon).sync_health();
    // Persist the adopted state's diff right away, so a config edit plus restart keeps
    // the runtime changes that still apply.
    lock(&daemon).persist()?;

    let listener = bind_socket(&socket_path)?;
    info!("control socket {} (mode 0600)", socket_path.display());
    let resolve_now = Arc::new(Notify::new());

    let resolver = Resolver::new().context("opening a netlink socket for neighbour resolution")?;
    let resolver = Arc::new(resolver);
    tokio::spawn(neighbour_loop(
        daemon.clone(),
        resolver.clone(),
        resolve_now.clone(),
    ));
    tokio::spawn(neighbour_events(daemon.clone(), resolve_now.clone()));
    let scan_now = Arc::new(Notify::new());
    tokio::spawn(pinned_scan_loop(daemon.clone(), pin_dir, scan_now.clone()));
    tokio::spawn(rates_loop(daemon.clone()));
    if let Some(addr) = metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics listener on {addr} (daemon.metrics)"))?;
        info!("metrics on http://{addr}/metrics");
        let d = daemon.clone();
        let source: Arc<dyn Fn() -> metrics::Snapshot + Send + Sync> =
            Arc::new(move || lock(&d).metrics_snapshot());
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(listener, source).await {
                warn!("metrics server stopped: {e}");
            }
        });
    }
    let api = tokio::spawn(api_loop(
        listener,
        daemon.clone(),
        Wakers {
            resolver,
            resolve_now,
            scan_now,
        },
    ));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    *running = true;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: stopping; the data plane keeps forwarding on its pinned state"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT: stopping; the data plane keeps forwarding on its pinned state"),
        r = api => bail!("the control API stopped: {r:?}"),
    }
    let _ = std::fs::remove_file(&socket_path);
    Ok(())
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
        let response = match serde_json::from_str::<Request>(&line) {
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

/// Errors that name something the caller got wrong are usage errors (exit 2).
fn balancer_error(e: BalancerError) -> Response {
    match e {
        BalancerError::Maps(_) => runtime(e),
        _ => usage(e),
    }
}

async fn handle(daemon: &Shared, wakers: &Wakers, req: Request) -> Response {
    // Resolve a new backend's neighbour before taking the lock, so the change is live in
    // the data plane as soon as the request returns.
    let pre_resolved: Option<(IpAddr, Resolution)> = match &req {
        Request::BackendAdd { address, .. } => {
            Some((*address, resolve_soon(&wakers.resolver, *address).await))
        }
        _ => None,
    };
    // Status shows pinned counts no older than 200 ms when scans are cheap.
    if req == Request::Status {
        let asked = Instant::now();
        let stale = lock(daemon)
            .pinned
            .taken
            .is_none_or(|t| t.elapsed() > Duration::from_millis(200));
        if stale {
            wakers.scan_now.notify_one();
            while asked.elapsed() < Duration::from_secs(1)
                && lock(daemon).pinned.taken.is_none_or(|t| t < asked)
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    let mut d = lock(daemon);
    let response = match req {
        Request::Status => Response::ok(d.status()),
        Request::Stats => match d.stats() {
            Ok(s) => Response::ok(s),
            Err(e) => runtime(e),
        },
        Request::BackendAdd {
            service,
            address,
            weight,
        } => {
            let link = pre_resolved.and_then(|(a, r)| d.note_resolution(a, r));
            d.backend_add(&service, address, weight, link)
        }
        Request::BackendRemove { service, address } => d.backend_remove(&service, address),
        Request::BackendDrain { service, address } => d.drain(&service, address, true),
        Request::BackendUndrain { service, address } => d.drain(&service, address, false),
        Request::ServiceAdd { service } => d.service_add(*service),
        Request::ServiceRemove { name } => d.service_remove(&name),
        Request::Explain {
            service,
            client,
            port,
        } => d.explain(&service, client, port),
        Request::AffinityList { service, limit } => d.affinity_list(service.as_deref(), limit),
        Request::AffinityFlush { service } => d.affinity_flush(service.as_deref()),
    };
    drop(d);
    wakers.resolve_now.notify_one();
    response
}

impl Daemon {
    /// Starts a health check task for every backend that has none, stops those of
    /// backends that are gone, restarts those whose check config changed.
    fn sync_health(&mut self) {
        let mut wanted: HashMap<(String, IpAddr), (HealthConfig, bool)> = HashMap::new();
        for svc in &self.desired.services {
            let Ok(state) = self.lb.service(&svc.spec.name) else {
                continue;
            };
            for b in &state.backends {
                wanted.insert(
                    (svc.spec.name.clone(), b.spec.address),
                    (svc.health.clone(), b.healthy),
                );
            }
        }
        self.health
            .retain(|k, t| wanted.get(k).is_some_and(|(cfg, _)| *cfg == t.cfg));
        for ((service, addr), (cfg, healthy)) in wanted {
            if self.health.contains_key(&(service.clone(), addr)) {
                continue;
            }
            let me = self.me.clone();
            let svc = service.clone();
            let task = health::run_checks(
                service.clone(),
                addr,
                cfg.clone(),
                healthy,
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
        let Some(healthy) = transition else {
            return;
        };
        health::log_transition(service, addr, probe, tracker);
        if let Err(e) = self.lb.set_healthy(service, addr, healthy) {
            warn!("applying the health of backend {addr} ({service}): {e}");
            return;
        }
        let rebalance = self
            .lb
            .service(service)
            .is_ok_and(|s| s.spec.failback == Failback::Rebalance);
        if healthy && rebalance {
            match self.lb.rebalance_to(service, addr) {
                Ok(n) => info!(
                    "failback rebalance: {n} clients of service {service} unpinned to return to {addr}"
                ),
                Err(e) => warn!("failback rebalance to {addr} ({service}): {e}"),
            }
        }
    }

    /// Writes the runtime changes (difference from the config) atomically.
    fn persist(&self) -> anyhow::Result<()> {
        let diff = state::diff(&self.cfg.services, &self.desired);
        state::save(&self.cfg.daemon.state_file, &diff)?;
        Ok(())
    }

    /// Applies a change to the desired state: data plane first (it validates), then the
    /// state file; if persisting fails the data plane change is undone.
    fn change(
        &mut self,
        what: String,
        apply: impl FnOnce(&mut Balancer) -> Result<(), BalancerError>,
        undo: impl FnOnce(&mut Balancer) -> Result<(), BalancerError>,
        update: impl FnOnce(&mut Desired),
    ) -> Response {
        if let Err(e) = apply(&mut self.lb) {
            return balancer_error(e);
        }
        let before = self.desired.clone();
        update(&mut self.desired);
        if let Err(e) = self.persist() {
            self.desired = before;
            if let Err(u) = undo(&mut self.lb) {
                warn!("undoing {what} after a failed save: {u}");
            }
            return runtime(format!("{what}: not saved, undone: {e:#}"));
        }
        info!("{what}");
        self.sync_health();
        Response::ok(serde_json::json!({ "done": what }))
    }

    fn service_cfg_mut<'a>(desired: &'a mut Desired, name: &str) -> Option<&'a mut ServiceConfig> {
        desired.services.iter_mut().find(|s| s.spec.name == name)
    }

    fn backend_add(
        &mut self,
        service: &str,
        address: IpAddr,
        weight: u32,
        link: Option<Link>,
    ) -> Response {
        if weight == 0 || weight > 65535 {
            return usage(format!("--weight {weight}: must be 1..=65535"));
        }
        let Some(cfg) = self
            .desired
            .services
            .iter()
            .find(|s| s.spec.name == service)
        else {
            return usage(BalancerError::UnknownService(service.to_string()));
        };
        let mut candidate = cfg.clone();
        candidate.backends.push(BackendSpec { address, weight });
        let others: Vec<ServiceConfig> = self
            .desired
            .services
            .iter()
            .filter(|s| s.spec.name != service)
            .cloned()
            .collect();
        if let Err(errors) = config::validate_service(&candidate, &others) {
            let msg: Vec<String> = errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect();
            return usage(format!(
                "backend {address} for service {service:?}: {}",
                msg.join("; ")
            ));
        }
        let spec = BackendSpec { address, weight };
        let added = spec.clone();
        let svc = service.to_string();
        self.change(
            format!("backend {address} added to service {service} (weight {weight})"),
            |lb| lb.add_backend(service, added, link),
            |lb| lb.remove_backend(service, address),
            |d| {
                if let Some(s) = Self::service_cfg_mut(d, &svc) {
                    s.backends.push(spec);
                }
            },
        )
    }

    fn backend_remove(&mut self, service: &str, address: IpAddr) -> Response {
        let Ok(svc) = self.lb.service(service) else {
            return usage(BalancerError::UnknownService(service.to_string()));
        };
        let Some(b) = svc.backend(address) else {
            return usage(BalancerError::UnknownBackend {
                service: service.to_string(),
                address,
            });
        };
        let (spec, link, draining) = (b.spec.clone(), b.link, b.draining);
        let name = service.to_string();
        self.change(
            format!("backend {address} removed from service {service}"),
            |lb| lb.remove_backend(service, address),
            |lb| {
                lb.add_backend(service, spec, link)?;
                lb.set_draining(service, address, draining)
            },
            |d| {
                if let Some(s) = Self::service_cfg_mut(d, &name) {
                    s.backends.retain(|b| b.address != address);
                }
                d.drained.remove(&(name.clone(), address));
            },
        )
    }

    fn drain(&mut self, service: &str, address: IpAddr, on: bool) -> Response {
        let what = if on { "draining" } else { "undrained" };
        let name = service.to_string();
        self.change(
            format!("backend {address} of service {service} {what}"),
            |lb| lb.set_draining(service, address, on),
            |lb| lb.set_draining(service, address, !on),
            |d| {
                if on {
                    d.drained.insert((name, address));
                } else {
                    d.drained.remove(&(name, address));
                }
            },
        )
    }

    fn service_add(&mut self, svc: ServiceConfig) -> Response {
        if let Err(errors) = config::validate_service(&svc, &self.desired.services) {
            let msg: Vec<String> = errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect();
            return usage(format!("service {:?}: {}", svc.spec.name, msg.join("; ")));
        }
        let name = svc.spec.name.clone();
        let backends: Vec<(BackendSpec, Option<Link>)> =
            svc.backends.iter().map(|b| (b.clone(), None)).collect();
        let spec = svc.spec.clone();
        self.change(
            format!("service {name} added ({} backends)", svc.backends.len()),
            |lb| lb.add_service(spec, &backends),
            |lb| lb.remove_service(&name),
            |d| d.services.push(svc),
        )
    }

    fn service_remove(&mut self, name: &str) -> Response {
        let Some(cfg) = self
            .desired
            .services
            .iter()
            .find(|s| s.spec.name == name)
            .cloned()
        else {
            return usage(BalancerError::UnknownService(name.to_string()));
        };
        let n = name.to_string();
        self.change(
            format!("service {name} removed"),
            |lb| lb.remove_service(name),
            |lb| {
                let backends: Vec<(BackendSpec, Option<Link>)> =
                    cfg.backends.iter().map(|b| (b.clone(), None)).collect();
                lb.add_service(cfg.spec.clone(), &backends)
            },
            |d| {
                d.services.retain(|s| s.spec.name != n);
                d.drained.retain(|(s, _)| *s != n);
            },
        )
    }

    /// Records a resolution result; returns the link when resolved.
    fn note_resolution(&mut self, address: IpAddr, r: Resolution) -> Option<Link> {
        let (note, link) = match r {
            Resolution::Resolved { link, ifname, .. } => {
                if !self.interfaces.contains_key(&link.ifindex) {
                    (
                        NeighNote {
                            interface: Some(ifname.clone()),
                            problem: Some(format!(
                                "reached through {ifname}, which is not in daemon.interfaces"
                            )),
                        },
                        None,
                    )
                } else {
                    (
                        NeighNote {
                            interface: Some(ifname),
                            problem: None,
                        },
                        Some(link),
                    )
                }
            }
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
        };
        self.neigh.insert(address, note);
        link
    }

    /// Applies a backend address's link to every service that has it; logs changes.
    fn apply_link(&mut self, address: IpAddr, link: Option<Link>) {
        let owners: Vec<String> = self
            .lb
            .services()
            .filter(|s| s.backend(address).is_some_and(|b| b.link != link))
            .map(|s| s.spec.name.clone())
            .collect();
        for name in owners {
            match self.lb.set_link(&name, address, link) {
                Ok(()) => match link {
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
                },
                Err(e) => warn!("updating the link of backend {address} ({name}): {e}"),
            }
        }
    }

    fn status(&self) -> api::Status {
        let age = self
            .pinned
            .taken
            .map_or(f64::NAN, |t| t.elapsed().as_secs_f64());
        let services = self
            .lb
            .services()
            .map(|s| {
                let backends = s
                    .backends
                    .iter()
                    .map(|b| {
                        let note = self.neigh.get(&b.spec.address);
                        let check = self.health.get(&(s.spec.name.clone(), b.spec.address));
                        let health = match (check.is_some_and(|c| c.checked), b.healthy) {
                            (false, _) => "unknown",
                            (true, true) => "healthy",
                            (true, false) => "unhealthy",
                        };
                        api::BackendStatus {
                            address: b.spec.address,
                            weight: b.spec.weight,
                            health: health.into(),
                            healthy: b.healthy,
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
                            } else if !b.healthy {
                                check.and_then(|c| c.last_failure.clone())
                            } else {
                                None
                            },
                            table_share: s.table_share(b.id),
                            pinned_clients: self.pinned.backend(b.id),
                            health_transitions: check.map_or(0, |c| c.transitions),
                            last_check_ms: check.and_then(|c| c.last_latency).map(|l| l * 1e3),
                        }
                    })
                    .collect();
                let cfg = self
                    .desired
                    .services
                    .iter()
                    .find(|c| c.spec.name == s.spec.name);
                api::ServiceStatus {
                    name: s.spec.name.clone(),
                    vip: s.spec.vip,
                    port: s.spec.port,
                    protocol: protocol_name(s.spec.protocol.number()).into(),
                    affinity: match s.spec.affinity {
                        Affinity::SourceIp => "source-ip",
                        Affinity::None => "none",
                    }
                    .into(),
                    prefix: s.spec.prefix_len(),
                    idle_timeout: config::format_duration(s.spec.idle_timeout),
                    failback: match s.spec.failback {
                        Failback::Sticky => "sticky",
                        Failback::Rebalance => "rebalance",
                    }
                    .into(),
                    table_size: s.spec.table_size,
                    health: cfg
                        .map(|c| health_name(&c.health.kind))
                        .unwrap_or("none")
                        .into(),
                    pinned_clients: self.pinned.service(s.id),
                    backends,
                }
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
        let global = self.lb.dp.stats()?;
        let packets = Stat::ALL
            .iter()
            .map(|s| (s.name().to_string(), global[*s as usize]))
            .collect();
        let mut services = Vec::new();
        for s in self.lb.services() {
            let st = self.lb.dp.service_stats(s.id)?;
            let (spps, sbps) = self
                .rates
                .rate
                .get(&s.spec.name)
                .copied()
                .unwrap_or_default();
            let mut backends = Vec::new();
            for b in &s.backends {
                let bs = self.lb.dp.backend_stats(b.id)?;
                let (pps, bps) = self
                    .rates
                    .rate
                    .get(&rate_key(&s.spec.name, b.spec.address))
                    .copied()
                    .unwrap_or_default();
                backends.push(api::BackendStats {
                    address: b.spec.address,
                    packets: bs.packets,
                    bytes: bs.bytes,
                    packets_per_s: pps,
                    bits_per_s: bps,
                    pins: bs.pins,
                });
            }
            services.push(api::ServiceStats {
                name: s.spec.name.clone(),
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
        let e = match self.lb.explain(service, client, port) {
            Ok(e) => e,
            Err(e) => return balancer_error(e),
        };
        let svc = self.lb.service(service).expect("explain checked it");
        let key_addr = addr_from_words(&e.key.addr, e.key.family);
        let (decision, reason, age, idle) = match &e.decision {
            Decision::Pinned { age, idle } => (
                "pinned",
                None,
                Some(age.as_secs_f64()),
                Some(idle.as_secs_f64()),
            ),
            Decision::Hashed { reason } => (
                "hashed",
                Some(
                    match reason {
                        HashReason::NoEntry => "no_entry",
                        HashReason::Expired => "expired",
                        HashReason::BackendUnusable => "backend_unusable",
                    }
                    .to_string(),
                ),
                None,
                None,
            ),
            Decision::NoBackend => ("no_backend", None, None, None),
        };
        Response::ok(api::Explain {
            service: service.to_string(),
            client,
            key: format!("{key_addr}/{}", svc.spec.prefix_len()),
            decision: decision.into(),
            reason,
            backend: e.backend,
            pinned_age_s: age,
            idle_s: idle,
            slot: e.slot,
            slot_backend: e.slot_backend,
            previous_slot_backend: e.previous_slot_backend,
        })
    }

    fn affinity_list(&self, service: Option<&str>, limit: usize) -> Response {
        let id = match service.map(|s| self.lb.service(s)) {
            Some(Ok(s)) => Some(s.id),
            Some(Err(e)) => return balancer_error(e),
            None => None,
        };
        // Judged like the XDP program judges them (lb_common::affinity).
        let now = ktime_coarse_ns();
        let entries = match self.lb.dp.judged_entries(id, now) {
            Ok(e) => e,
            Err(e) => return runtime(e),
        };
        let total = entries.len();
        let mut out: Vec<api::AffinityEntry> = entries
            .into_iter()
            .filter_map(|p| {
                let (k, v) = (p.key, p.value);
                let svc = self.lb.services().find(|s| s.id == k.service_id)?;
                let backend = p
                    .backend
                    .filter(|_| p.backend_is_its_own())
                    .map(|b| addr_from_words(&b.addr, b.family));
                let idle = now.saturating_sub(v.last_seen_ns);
                Some(api::AffinityEntry {
                    service: svc.spec.name.clone(),
                    client: format!(
                        "{}/{}",
                        addr_from_words(&k.addr, k.family),
                        svc.spec.prefix_len()
                    ),
                    port: u16::from_be(k.port_be),
                    backend,
                    age_s: now.saturating_sub(v.pinned_ns) as f64 / 1e9,
                    idle_s: idle as f64 / 1e9,
                    expired: p.verdict == lb_common::affinity::Verdict::Expired,
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
        let id = match service.map(|s| self.lb.service(s)) {
            Some(Ok(s)) => Some(s.id),
            Some(Err(e)) => return balancer_error(e),
            None => None,
        };
        match self.lb.dp.affinity_flush(id) {
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

    fn metrics_snapshot(&self) -> metrics::Snapshot {
        let global = self.lb.dp.stats().unwrap_or([0; Stat::COUNT as usize]);
        let services = self
            .lb
            .services()
            .map(|s| {
                let st = self.lb.dp.service_stats(s.id).unwrap_or_default();
                metrics::ServiceSnapshot {
                    name: s.spec.name.clone(),
                    vip: s.spec.vip.to_string(),
                    port: s.spec.port,
                    protocol: protocol_name(s.spec.protocol.number()).into(),
                    packets: st.packets,
                    bytes: st.bytes,
                    hits: st.hits,
                    misses: st.misses,
                    repins: st.repins,
                    expiries: st.expiries,
                    no_backend: st.no_backend,
                    pinned_clients: self.pinned.service(s.id),
                    backends: s
                        .backends
                        .iter()
                        .map(|b| {
                            let bs = self.lb.dp.backend_stats(b.id).unwrap_or_default();
                            let check = self.health.get(&(s.spec.name.clone(), b.spec.address));
                            metrics::BackendSnapshot {
                                address: b.spec.address.to_string(),
                                weight: b.spec.weight,
                                packets: bs.packets,
                                bytes: bs.bytes,
                                pins: bs.pins,
                                pinned_clients: self.pinned.backend(b.id),
                                table_share: s.table_share(b.id),
                                healthy: b.healthy,
                                draining: b.draining,
                                resolved: b.link.is_some(),
                                health_transitions: check.map_or(0, |c| c.transitions),
                                last_check_latency_seconds: check.and_then(|c| c.last_latency),
                            }
                        })
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

fn protocol_name(n: u8) -> &'static str {
    if n == lb_common::PROTO_TCP {
        "tcp"
    } else {
        "udp"
    }
}

fn health_name(k: &config::HealthKind) -> &'static str {
    match k {
        config::HealthKind::None => "none",
        config::HealthKind::Tcp { .. } => "tcp",
        config::HealthKind::Http { .. } => "http",
        config::HealthKind::Udp { .. } => "udp",
    }
}

/// Resolves every backend's neighbour: every second, and at once when asked (a change
/// came in). Resolution runs without the daemon lock; results are applied under it.
async fn neighbour_loop(daemon: Shared, resolver: Arc<Resolver>, now: Arc<Notify>) {
    loop {
        let addrs: Vec<IpAddr> = {
            let d = lock(&daemon);
            let mut a: Vec<IpAddr> =
                d.lb.services()
                    .flat_map(|s| s.backends.iter().map(|b| b.spec.address))
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
                        .lb
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

/// Counts live affinity entries per backend and service by scanning the pinned map
/// through its own handle (no daemon lock held during the scan). Rescans every 2 s, or
/// less often when the table is large (ten times the last scan's duration).
///
/// `xlb status` asks for a fresh scan through `now`; it is granted at once when scans are
/// cheap (a small table), otherwise the next regular scan serves it.
async fn pinned_scan_loop(daemon: Shared, pin_dir: PathBuf, now: Arc<Notify>) {
    loop {
        let started = Instant::now();
        let dir = pin_dir.clone();
        // The XDP program's own rules on the maps' own services and backends.
        let scan = tokio::task::spawn_blocking(move || {
            crate::dataplane::maps::live_pins_pinned(&dir, ktime_coarse_ns())
        })
        .await;
        match scan {
            Ok(Ok(c)) => {
                lock(&daemon).pinned = PinnedCounts {
                    taken: Some(Instant::now()),
                    per_service: c.per_service,
                    per_backend: c.per_backend,
                }
            }
            Ok(Err(e)) => warn!("scanning the affinity table: {e:#}"),
            Err(e) => warn!("affinity scan task: {e}"),
        }
        let took = started.elapsed();
        let pause = (took * 10).max(Duration::from_secs(2));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = now.notified(), if took < Duration::from_millis(50) => {}
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
        for s in d.lb.services() {
            if let Ok(st) = d.lb.dp.service_stats(s.id) {
                current.insert(s.spec.name.clone(), (st.packets, st.bytes));
            }
            for b in &s.backends {
                if let Ok(bs) = d.lb.dp.backend_stats(b.id) {
                    current.insert(
                        rate_key(&s.spec.name, b.spec.address),
                        (bs.packets, bs.bytes),
                    );
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
