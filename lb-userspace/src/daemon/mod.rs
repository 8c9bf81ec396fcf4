//! `xlb run`: the daemon. This file only wires the rooms together:
//!
//! - `startup.rs`: lock, survey, load/adopt/migrate, first look, first reconcile, attach;
//! - `owner.rs`: the one task that owns the state; it takes [`command::Command`]s and
//!   [`command::Observation`]s from channels, one at a time;
//! - `command.rs`: those message types;
//! - `server.rs`: the control socket (and the metrics server's task);
//! - `views.rs`: status, stats and metrics from one walk;
//! - `look.rs`: the first look at new backends; `reload.rs`: `xlb reload` and SIGHUP;
//! - `load.rs`: sampled sources, load shares, `xlb top`, the heavy-source warning;
//! - `tasks/`: health checks, neighbours, links, pin counts, rates, sampled sources,
//!   announcing the VIPs.
//!
//! Owns: the runtime, the channels, the signals. Must not touch: any state (the owner's),
//! the CLI (the daemon never imports it).

mod command;
mod load;
mod look;
mod owner;
mod reload;
mod server;
mod startup;
mod tasks;
mod views;

use std::{path::Path, sync::Arc};

use anyhow::{Context as _, bail};
use log::{info, warn};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{Notify, mpsc, oneshot, watch},
};

use self::{
    command::Command,
    owner::{Lines, Owner},
    server::{Access, MetricsServer},
    startup::Started,
};
use crate::{api::UsageError, config};

/// Commands waiting for the owner (senders wait when it is full).
const COMMAND_QUEUE: usize = 256;
/// Open files the daemon asks for (control connections, maps, netlink, probes).
const OPEN_FILES: u64 = 8192;

/// `xlb run --config FILE`.
pub fn run(config_path: &Path) -> anyhow::Result<()> {
    let cfg = config::load(config_path).map_err(|e| UsageError(e.to_string()))?;
    raise_open_files();
    // One thread: the owner handles one message at a time anyway, and every hop between
    // tasks (socket → owner → socket, task → owner) stays on it instead of waking a
    // parked thread on another CPU. Blocking work (affinity scans, metrics snapshots)
    // runs on tokio's blocking pool.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async move {
        let started = startup::start(cfg).await?;
        serve(started).await
    })
}

/// The soft open-file limit up to [`OPEN_FILES`] (within the hard limit), so that
/// [`server::MAX_CONNECTIONS`] control connections fit.
fn raise_open_files() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    let want = OPEN_FILES.min(lim.rlim_max);
    if lim.rlim_cur < want {
        lim.rlim_cur = want;
        // SAFETY: a valid pointer; raising the soft limit within the hard one.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
}

/// Starts the socket, the owner and the tasks; runs until SIGTERM/SIGINT.
async fn serve(mut started: Started) -> anyhow::Result<()> {
    let d = started.cfg.daemon.clone();
    let access = Access::of(&d);
    let bound =
        server::bind_metrics(d.metrics).and_then(|m| Ok((m, server::bind(&d.socket, &access)?)));
    let (metrics_listener, listener) = match bound {
        Ok(b) => b,
        Err(e) => {
            if started.fresh {
                startup::clean_up(&d.pin_dir);
            }
            return Err(e);
        }
    };
    info!(
        "control socket {} ({})",
        d.socket.display(),
        access.describe()
    );
    let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
    let (observations, observation_rx) = mpsc::unbounded_channel();
    let mut metrics = MetricsServer::new(commands.clone());
    metrics.start(metrics_listener);
    let (access_tx, access_rx) = watch::channel(access);
    let (targets, targets_rx) = watch::channel(Arc::new(Vec::new()));
    let (names, names_rx) = watch::channel(Arc::new(started.ifaces.names()));
    let (announce, announce_rx) = watch::channel(tasks::announce::AnnounceInput {
        announce: started.cfg.announce.clone(),
        facts: None,
    });
    let resolve_now = Arc::new(Notify::new());
    let scan_now = Arc::new(Notify::new());
    let samples = started
        .ctl
        .dp
        .take_samples()
        .context("the sampled sources' ring was taken before the daemon started")?;
    let _tasks = [
        tasks::neigh::spawn_resolver(
            started.resolver.clone(),
            targets_rx.clone(),
            resolve_now.clone(),
            observations.clone(),
        ),
        tasks::neigh::spawn_events(targets_rx, resolve_now.clone()),
        tasks::links::spawn(names_rx, observations.clone()),
        tasks::scan::spawn(d.pin_dir.clone(), scan_now.clone(), observations.clone()),
        tasks::rates::spawn(observations.clone()),
        tasks::sources::spawn(samples, observations.clone()),
        tasks::announce::spawn(announce_rx, observations.clone()),
        server::spawn(listener, access_rx, commands.clone()),
    ];
    let _events = started.events.take().map(tasks::events::spawn);
    let lines = Lines {
        observations,
        resolver: started.resolver.clone(),
        resolve_now,
        scan_now,
        targets,
        names,
        access: access_tx,
        metrics,
        announce,
    };
    let resolver = started.resolver.clone();
    let owner = Owner::new(started, lines);
    // Persist the adopted state's diff right away, so a config edit plus restart keeps
    // the runtime changes that still apply (and a format-1 file becomes format 2).
    owner.persist()?;
    let owner = tokio::spawn(owner.run(command_rx, observation_rx));
    let result = signals(commands).await;
    owner.abort();
    // Dropping the owner detaches this daemon's xlb_probe: only then can the rule's
    // other users be counted.
    let _ = owner.await;
    match crate::dataplane::probe::release_rule(resolver.handle()).await {
        Ok(r) => info!("{r}"),
        Err(e) => warn!("{e}"),
    }
    let _ = std::fs::remove_file(&d.socket);
    result
}

/// Waits for SIGTERM/SIGINT (stop: the data plane keeps forwarding on its pinned state);
/// SIGHUP reloads the config.
async fn signals(commands: mpsc::Sender<Command>) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    loop {
        tokio::select! {
            _ = term.recv() => {
                info!("SIGTERM: stopping; the data plane keeps forwarding on its pinned state");
                return Ok(());
            }
            _ = tokio::signal::ctrl_c() => {
                info!("SIGINT: stopping; the data plane keeps forwarding on its pinned state");
                return Ok(());
            }
            _ = hup.recv() => {
                info!("SIGHUP: reloading the config");
                let (reply, answer) = oneshot::channel();
                if commands.send(Command::Reload(reply)).await.is_err() {
                    bail!("the daemon's owner task stopped");
                }
                // The owner logs the outcome; a refused reload changes nothing.
                tokio::spawn(async move {
                    if let Ok(r) = answer.await
                        && !r.ok
                    {
                        warn!("SIGHUP: reload refused, the running state is unchanged");
                    }
                });
            }
        }
    }
}
