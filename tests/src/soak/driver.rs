//! The soak's driver: one seeded random operation per tick through the real CLI (and `ip`,
//! and the lab's processes), SIGKILL + restart of the daemon on a fixed period, every
//! operation logged with its start and return time.
//!
//! The sequence is a function of the seed and of which operations succeeded: the model of
//! what each backend is (member, draining, server up, weight) only follows successful
//! operations, and the targets are drawn from it. Every service keeps at least
//! [`MIN_ACTIVE`] active backends (member, not draining, server up), so it always has
//! somewhere to send its clients. Owns the lab while the soak runs.

use std::{
    collections::BTreeMap,
    fs,
    process::{Command, Stdio},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use super::Shared;
use super::check::Topology;
use super::events::{BackendIx, Event, OpKind, What};
use super::rng::Rng;
use super::wire::now_ns;
use crate::lab::{Lab, Proc, xlb_bin};

/// A service never has fewer active backends than this because of an operation.
pub const MIN_ACTIVE: usize = 2;

/// What the driver believes each backend host is.
#[derive(Clone, Debug)]
pub struct Model {
    pub member: Vec<bool>,
    pub drained: Vec<bool>,
    pub server_up: Vec<bool>,
    pub weight: Vec<u32>,
}

impl Model {
    fn active(&self, b: BackendIx) -> bool {
        self.member[b] && !self.drained[b] && self.server_up[b]
    }
}

/// The driver's settings.
#[derive(Clone, Debug)]
pub struct DriverOptions {
    /// The kinds drawn at random (everything but `kill`).
    pub drawn: Vec<OpKind>,
    /// Kill and restart the daemon every this many ticks (the first at half of it).
    pub kill_every: Option<u64>,
    pub tick: Duration,
}

/// Applies the operations; see the module docs.
pub struct Driver<'a> {
    lab: &'a mut Lab,
    topo: &'a Topology,
    pub model: Model,
    rng: Rng,
    opts: DriverOptions,
    shared: Shared,
    starts_due: BTreeMap<u64, Vec<BackendIx>>,
    /// How long each restart took until the daemon answered with every backend resolved.
    pub restarts: Vec<Duration>,
    pub ops_done: BTreeMap<&'static str, (u64, u64)>,
}

impl<'a> Driver<'a> {
    pub fn new(
        lab: &'a mut Lab,
        topo: &'a Topology,
        model: Model,
        seed: u64,
        opts: DriverOptions,
        shared: Shared,
    ) -> Self {
        Self {
            lab,
            topo,
            model,
            rng: Rng::fork(seed, 1),
            opts,
            shared,
            starts_due: BTreeMap::new(),
            restarts: Vec::new(),
            ops_done: BTreeMap::new(),
        }
    }

    /// Runs ticks from `t0` until `duration` has passed; a late tick runs at once, so the
    /// sequence does not depend on how long operations take.
    pub fn run(&mut self, t0: Instant, duration: Duration) {
        for tick in 0u64.. {
            let at = t0 + self.opts.tick * tick as u32;
            if at >= t0 + duration {
                break;
            }
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            self.watch_daemon(tick);
            for b in self.starts_due.remove(&tick).unwrap_or_default() {
                self.server_start(tick, b);
            }
            match self.opts.kill_every {
                Some(k) if tick % k == k / 2 => self.kill_and_restart(tick),
                _ => self.random_op(tick),
            }
        }
        // Servers stopped near the end come back, so the lab ends whole.
        let due: Vec<BackendIx> = std::mem::take(&mut self.starts_due)
            .into_values()
            .flatten()
            .collect();
        for b in due {
            self.server_start(u64::MAX, b);
        }
    }

    fn random_op(&mut self, tick: u64) {
        let candidates: Vec<(OpKind, Vec<BackendIx>)> = self
            .opts
            .drawn
            .clone()
            .into_iter()
            .map(|k| (k, self.targets(k)))
            .filter(|(_, t)| !t.is_empty())
            .collect();
        if candidates.is_empty() {
            return;
        }
        let (kind, targets) = self.rng.pick(&candidates).clone();
        let b = *self.rng.pick(&targets);
        match kind {
            OpKind::Add => self.cli(tick, kind, b, &[], What::Add(b)),
            OpKind::Remove => self.cli(tick, kind, b, &[], What::Remove(b)),
            OpKind::Drain => self.cli(tick, kind, b, &[], What::Drain(b)),
            OpKind::Undrain => self.cli(tick, kind, b, &[], What::Undrain(b)),
            OpKind::Weight => {
                let others: Vec<u32> = (1..=4).filter(|w| *w != self.model.weight[b]).collect();
                let w = *self.rng.pick(&others);
                self.cli(tick, kind, b, &[w.to_string()], What::Weight(b, w));
            }
            OpKind::Server => {
                let back = tick + self.rng.range(5, 30);
                self.server_stop(tick, b);
                self.starts_due.entry(back).or_default().push(b);
            }
            OpKind::Neigh => {
                let all = self.rng.below(10) < 3;
                self.neigh(tick, b, all);
            }
            OpKind::Kill => {}
        }
    }

    /// The backends `kind` may be applied to now.
    fn targets(&self, kind: OpKind) -> Vec<BackendIx> {
        let m = &self.model;
        let n = m.member.len();
        let spare = |b: BackendIx| {
            let svc = self.topo.backend_service[b];
            let active = (0..n)
                .filter(|&x| self.topo.backend_service[x] == svc && m.active(x))
                .count();
            !m.active(b) || active > MIN_ACTIVE
        };
        (0..n)
            .filter(|&b| match kind {
                OpKind::Add => !m.member[b],
                OpKind::Remove => m.member[b] && spare(b),
                OpKind::Drain => m.member[b] && !m.drained[b] && spare(b),
                OpKind::Undrain => m.member[b] && m.drained[b],
                OpKind::Weight | OpKind::Neigh => m.member[b],
                OpKind::Server => m.member[b] && m.server_up[b] && spare(b),
                OpKind::Kill => false,
            })
            .collect()
    }

    /// `xlb backend KIND SERVICE ADDRESS [EXTRA]`; the model follows on success.
    fn cli(&mut self, tick: u64, kind: OpKind, b: BackendIx, extra: &[String], what: What) {
        let svc = self.topo.services[self.topo.backend_service[b]].clone();
        let addr = self.topo.backend_addrs[b].to_string();
        let mut args = vec!["backend", kind.name(), &svc, &addr];
        args.extend(extra.iter().map(String::as_str));
        let start = now_ns();
        let r = self.lab.try_xlb(&args);
        let end = now_ns();
        let text = format!("xlb {} ({})", args.join(" "), self.topo.backend_names[b]);
        let error = r
            .err()
            .map(|(code, e)| format!("exit {code}: {}", e.trim()));
        if error.is_none() {
            let m = &mut self.model;
            match what {
                What::Add(_) => {
                    m.member[b] = true;
                    m.drained[b] = false;
                    m.weight[b] = 1;
                }
                What::Remove(_) => m.member[b] = false,
                What::Drain(_) => m.drained[b] = true,
                What::Undrain(_) => m.drained[b] = false,
                What::Weight(_, w) => m.weight[b] = w,
                _ => {}
            }
        }
        self.record(Some(tick), start, end, what, text, error);
    }

    fn server_stop(&mut self, tick: u64, b: BackendIx) {
        let start = now_ns();
        self.lab.stop_server(b);
        let end = now_ns();
        self.model.server_up[b] = false;
        let text = format!("server of {} stopped", self.topo.backend(b));
        self.record(Some(tick), start, end, What::ServerStop(b), text, None);
    }

    fn server_start(&mut self, tick: u64, b: BackendIx) {
        let start = now_ns();
        let lab = &mut *self.lab;
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| lab.start_server(b)));
        let end = now_ns();
        let error = r.err().map(|p| panic_text(&p));
        if error.is_none() {
            self.model.server_up[b] = true;
        }
        let text = format!("server of {} started", self.topo.backend(b));
        let tick = (tick != u64::MAX).then_some(tick);
        self.record(tick, start, end, What::ServerStart(b), text, error);
    }

    /// `ip neigh del` of one backend's entry on the balancer, or a flush of them all.
    fn neigh(&mut self, tick: u64, b: BackendIx, all: bool) {
        let addr = self.topo.backend_addrs[b].to_string();
        let args: Vec<&str> = if all {
            vec!["neigh", "flush", "dev", "eth0"]
        } else {
            vec!["neigh", "del", &addr, "dev", "eth0"]
        };
        let start = now_ns();
        let out = Command::new("ip")
            .args(["-n", &self.lab.lb.name])
            .args(&args)
            .stdin(Stdio::null())
            .output();
        let end = now_ns();
        // A missing entry (already being re-resolved) is not a failure of the soak.
        let note = match out {
            Ok(o) if o.status.success() => String::new(),
            Ok(o) => format!(" ({})", String::from_utf8_lossy(&o.stderr).trim()),
            Err(e) => format!(" ({e})"),
        };
        let (what, text) = if all {
            (
                What::NeighFlush,
                format!("ip neigh flush dev eth0 on the balancer{note}"),
            )
        } else {
            (
                What::NeighDel(b),
                format!(
                    "ip neigh del {} on the balancer{note}",
                    self.topo.backend(b)
                ),
            )
        };
        self.record(Some(tick), start, end, what, text, None);
    }

    fn kill_and_restart(&mut self, tick: u64) {
        // A last look at health, so a change just before the kill is not lost with the
        // daemon's counters.
        self.shared.observer.poll();
        let start = now_ns();
        self.shared.daemon.pid.store(0, Ordering::SeqCst);
        self.lab.kill_daemon();
        let end = now_ns();
        self.record(
            Some(tick),
            start,
            end,
            What::Kill,
            "SIGKILL xlb run".into(),
            None,
        );
        self.restart(Some(tick), "xlb run (restart)");
    }

    /// Starts the daemon and waits until it answers with every backend resolved.
    pub fn restart(&mut self, tick: Option<u64>, text: &str) {
        let began = Instant::now();
        let start = now_ns();
        let r = spawn_daemon(self.lab);
        let end = now_ns();
        if r.is_ok() {
            self.restarts.push(began.elapsed());
        }
        if let Some(pid) = self.lab.daemon.as_ref().map(|d| d.child.id()) {
            self.shared.daemon.life.fetch_add(1, Ordering::SeqCst);
            self.shared.daemon.pid.store(pid, Ordering::SeqCst);
        }
        self.record(tick, start, end, What::Restart, text.into(), r.err());
    }

    /// A daemon that exited by itself is a failure; it is restarted so the soak goes on.
    fn watch_daemon(&mut self, tick: u64) {
        let died = self.lab.daemon.as_mut().is_some_and(|d| !d.alive());
        if !died {
            return;
        }
        self.shared.daemon.pid.store(0, Ordering::SeqCst);
        self.lab.daemon.take();
        let t = now_ns();
        let tail: String = tail(&self.lab.daemon_log(), 15);
        self.record(
            Some(tick),
            t,
            t,
            What::DaemonDied,
            "the daemon exited by itself".into(),
            Some(format!("last log lines:\n{tail}")),
        );
        self.restart(Some(tick), "xlb run (after it died)");
    }

    fn record(
        &mut self,
        tick: Option<u64>,
        start: u64,
        end: u64,
        what: What,
        text: String,
        error: Option<String>,
    ) {
        let kind = kind_of(&what);
        let e = self.ops_done.entry(kind).or_default();
        e.0 += 1;
        e.1 += u64::from(error.is_some());
        self.shared.log.lock().expect("event log").push(Event {
            tick,
            start,
            end,
            what,
            text,
            error,
        });
    }
}

fn kind_of(w: &What) -> &'static str {
    match w {
        What::Add(_) => "add",
        What::Remove(_) => "remove",
        What::Drain(_) => "drain",
        What::Undrain(_) => "undrain",
        What::Weight(..) => "weight",
        What::ServerStop(_) => "server stop",
        What::ServerStart(_) => "server start",
        What::NeighDel(_) => "neigh del",
        What::NeighFlush => "neigh flush",
        What::Kill => "kill",
        What::Restart => "restart",
        What::DaemonDied => "daemon died",
        What::Health(..) => "health",
    }
}

/// Starts `xlb run` and waits (10 s at most) until it answers `status` with every backend
/// resolved — like [`Lab::start_daemon`], but a failure is returned, not a panic.
pub fn spawn_daemon(lab: &mut Lab) -> Result<(), String> {
    let log = fs::File::options()
        .create(true)
        .append(true)
        .open(lab.dir.join("daemon.log"))
        .map_err(|e| format!("daemon log: {e}"))?;
    let child = lab
        .lb
        .cmd(xlb_bin())
        .args(["run", "--config"])
        .arg(&lab.config)
        .env("RUST_LOG", "info")
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("starting xlb: {e}"))?;
    lab.daemon = Some(Proc { child });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if lab.daemon.as_mut().is_some_and(|d| !d.alive()) {
            return Err(format!(
                "xlb exited at start:\n{}",
                tail(&lab.daemon_log(), 15)
            ));
        }
        let ready = lab
            .try_xlb(&["--json", "status"])
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .is_some_and(|v| {
                v["services"].as_array().is_some_and(|s| {
                    s.iter().all(|svc| {
                        svc["backends"]
                            .as_array()
                            .is_some_and(|b| b.iter().all(|b| b["resolved"] == true))
                    })
                })
            });
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "xlb did not answer with every backend resolved within 10 s:\n{}",
                tail(&lab.daemon_log(), 15)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panicked".into())
}
