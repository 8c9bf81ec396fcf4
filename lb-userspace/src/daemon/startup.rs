//! Start-up: the pin-dir lock, the survey of pinned state, loading (adopting, migrating)
//! the data plane, the first look at every backend, the first reconcile, and the
//! attachment to every configured interface.
//!
//! The order matters for "restarts lose nothing": the maps are adopted and brought to
//! the desired state *before* the new program replaces the old one through the pinned
//! link, so the program that takes over finds every service, backend and pin in place.
//! And for "no client pinned to a backend whose state is not known" (issue 10, fault
//! 4): the first table is built after the first look (look.rs).
//!
//! Owns: the steps before the owner task starts. Must not touch: map layouts (dataplane),
//! the reconcile rules, sockets.

use std::{path::Path, sync::Arc};

use anyhow::Context as _;
use aya::{Ebpf, programs::Xdp};
use lb_common::PROG_XLB;
use log::{info, warn};

use super::{
    look,
    tasks::{links::Interfaces, neigh::NeighBook},
};
use crate::{
    config::{Config, IcmpEcho, XdpMode},
    dataplane::{
        events::{self, EventReader},
        loader::LoadOptions,
        lock::PinDirLock,
        maps::DataPlane,
        pin, probe,
    },
    model::{Desired, Health},
    neigh::Resolver,
    reconcile::{Programmed, ProgrammedService, control::Controller},
    state,
};

/// Everything the owner starts from.
pub struct Started {
    pub cfg: Config,
    pub ctl: Controller,
    /// Keeps the program loaded while the daemon runs (the links keep it afterwards), and
    /// attaches it anew to a re-created interface.
    pub ebpf: Ebpf,
    pub program_id: u32,
    /// The reader of this program's rare events (taken before it was attached).
    pub events: Option<EventReader>,
    pub ifaces: Interfaces,
    pub neigh: NeighBook,
    pub resolver: Arc<Resolver>,
    /// Nothing was pinned before this start (a failure after it removes what it made).
    pub fresh: bool,
    /// One daemon per pin_dir: held for the daemon's life.
    pub lock: PinDirLock,
}

/// Runs the start-up; a fresh start that fails half-way leaves nothing behind (no maps
/// without a program, no program without a daemon that configured it).
pub async fn start(cfg: Config) -> anyhow::Result<Started> {
    let d = &cfg.daemon;
    if pin::ensure_bpffs(&d.pin_dir).context("mounting bpffs at /sys/fs/bpf")? {
        info!("mounted bpffs at /sys/fs/bpf (it was not mounted)");
    }
    // First: one daemon per pin_dir. Nothing (maps, program, state file, socket) is
    // touched before this.
    let lock = PinDirLock::acquire(&d.pin_dir)?;
    let opts = LoadOptions {
        affinity_capacity: d.affinity_capacity,
        ..LoadOptions::default()
    };
    let survey = pin::survey(&d.pin_dir, &opts)?;
    let fresh = survey.found == pin::Found::Nothing;
    let pin_dir = d.pin_dir.clone();
    match load(cfg, opts, &survey, lock).await {
        Ok(started) => Ok(started),
        Err(e) => {
            if fresh {
                clean_up(&pin_dir);
            }
            Err(e)
        }
    }
}

/// Removes what a failed fresh start pinned.
pub fn clean_up(pin_dir: &Path) {
    match pin::down(pin_dir) {
        Ok(_) => info!("start-up failed: removed the pinned state this start had created"),
        Err(e) => warn!("start-up failed and cleaning up failed too: {e}"),
    }
}

async fn load(
    cfg: Config,
    opts: LoadOptions,
    survey: &pin::Survey,
    lock: PinDirLock,
) -> anyhow::Result<Started> {
    let d = &cfg.daemon;
    let desired = load_desired(&cfg)?;
    for line in survey.describe() {
        info!("{line}");
    }
    let pin::Loaded {
        mut ebpf,
        pending: migrations,
    } = pin::load_pinned(&d.pin_dir, &opts, survey)?;
    let program_id = program_id(&mut ebpf);
    let events = events::reader(&mut ebpf);
    if events.is_none() {
        warn!("this build's XDP program has no event ring buffer: its rare events are not logged");
    }
    let mut dp = DataPlane::from_ebpf(&mut ebpf)?;
    dp.set_icmp_echo(d.icmp_echo == IcmpEcho::Reply)?;
    let mut ifaces = Interfaces::new(d.pin_dir.clone(), d.xdp_mode == XdpMode::Generic);
    for name in &d.interfaces {
        let index = super::tasks::links::ifindex(name)
            .with_context(|| format!("interface {name} (daemon.interfaces) does not exist"))?;
        dp.add_tx_port(index)?;
    }
    let mut ctl = Controller::new(dp)?;
    let adopted = ctl.programmed.clone();
    let resolver =
        Arc::new(Resolver::new().context("opening a netlink socket for neighbour resolution")?);
    let mut neigh = NeighBook::default();
    for b in adopted.services.iter().flat_map(|s| &s.backends) {
        if let Some(link) = b.link {
            neigh.seed(b.address, link);
        }
    }
    for name in &d.interfaces {
        // Names the interfaces before the first look judges which ones backends use.
        ifaces.expect(name);
    }
    let looks = look::first_look(&resolver, &desired, &adopted).await;
    record_first_looks(&mut ctl, &mut neigh, &ifaces, looks);
    ctl.set_desired(desired).map_err(anyhow::Error::from)?;
    log_start(survey.found, &d.pin_dir, &adopted, &ctl.programmed);
    attach(&mut ebpf, &cfg, &mut ifaces, &mut ctl.dp, program_id)?;
    probe_path(&mut ebpf, &resolver).await;
    pin::finish_migrations(&d.pin_dir, &migrations)?;
    Ok(Started {
        fresh: survey.found == pin::Found::Nothing,
        cfg,
        ctl,
        ebpf,
        program_id,
        events,
        ifaces,
        neigh,
        resolver,
        lock,
    })
}

/// The path of tunnel health probes: `xlb_probe` on `lo` and the fwmark rule. Failing
/// costs only the tunnel services' checks (they fail: their backends stay out), so it
/// is logged, not fatal.
async fn probe_path(ebpf: &mut Ebpf, resolver: &Resolver) {
    // Marks carry only a backend id: another deployment's xlb_probe on lo may take this
    // one's probes (and the other way round).
    if let Ok(n @ 1..) = probe::others_attached() {
        warn!(
            "{n} other xlb daemon(s) of this network namespace have {} on {}: tunnel health \
             probes of two deployments may be taken by the wrong one; run one tunnel-mode \
             deployment per network namespace",
            lb_common::tunnel::PROG_PROBE,
            probe::PROBE_DEVICE
        );
    }
    match probe::attach(ebpf) {
        Ok(true) => info!(
            "tunnel health probes: {} attached to {} egress",
            lb_common::tunnel::PROG_PROBE,
            probe::PROBE_DEVICE
        ),
        Ok(false) => warn!(
            "this build's object has no {} program: health probes of tunnel backends cannot \
             be encapsulated and will fail",
            lb_common::tunnel::PROG_PROBE
        ),
        Err(e) => warn!("tunnel health probes will fail: {e}"),
    }
    if let Err(e) = probe::install_rule(resolver.handle()).await {
        warn!("tunnel health probes will fail: {e}");
    }
}

fn program_id(ebpf: &mut Ebpf) -> u32 {
    let prog: &Xdp = ebpf
        .program(PROG_XLB)
        .expect("xlb program")
        .try_into()
        .expect("XDP");
    prog.info().map(|i| i.id()).unwrap_or(0)
}

/// Records a first look as observations (no reconcile: the caller's change does that).
/// At start-up the configured interfaces count as attached (the attachment comes last).
fn record_first_looks(
    ctl: &mut Controller,
    neigh: &mut NeighBook,
    ifaces: &Interfaces,
    looks: super::command::Looks,
) {
    let now = std::time::Instant::now();
    for (addr, r) in looks.links {
        let link = neigh.observe(addr, &r, ifaces, now);
        ctl.observed.links.insert(addr, link);
        ctl.observed.set_gateway(addr, r.gateway(addr));
    }
    for key in looks.passed {
        ctl.observed.health.insert(key, Health::Up);
    }
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

/// Attaches to every configured interface (last: the program that takes over finds the
/// maps complete) and detaches from interfaces no longer configured.
fn attach(
    ebpf: &mut Ebpf,
    cfg: &Config,
    ifaces: &mut Interfaces,
    dp: &mut DataPlane,
    program_id: u32,
) -> anyhow::Result<()> {
    let d = &cfg.daemon;
    for name in &d.interfaces {
        ifaces.attach(name, ebpf, dp, program_id)?;
    }
    for stale in pin::pinned_links(&d.pin_dir) {
        if !d.interfaces.contains(&stale) {
            pin::detach(&d.pin_dir, &stale)?;
            info!("detached xlb from {stale}: no longer in daemon.interfaces");
        }
    }
    Ok(())
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
