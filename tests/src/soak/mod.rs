//! `cargo xtask soak`: thousands of UDP clients send continuously through the lab to two
//! services while a driver applies a seeded random operation every 100 ms through the real
//! CLI (backend add, remove, drain, undrain, weight, a backend's server
//! stopped and started, a neighbour entry deleted or flushed on the balancer) and SIGKILLs
//! and restarts the daemon on a fixed period. Checked continuously under sticky failback
//! (see [`check`]): no unexcused change of backend, no request at a removed backend more
//! than 20 ms after the remove returned, no request at another service's backend; and the
//! daemon's memory and descriptors stay flat (see [`mem`]).
//!
//! Layout: [`wire`] (datagrams, shared with xlb-testsrv), [`traffic`] (clients), [`driver`]
//! (operations), [`observe`] (status polls, /proc samples), [`events`] (the log and the
//! per-backend timeline), [`check`] and [`mem`] (the judgements, pure), this module (the
//! lab, the threads, the report). Additive to the lab: it uses its public API only.

pub mod check;
pub mod driver;
pub mod events;
pub mod mem;
pub mod observe;
pub mod rng;
pub mod traffic;
pub mod wire;

pub use events::OpKind;

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use check::{Checker, Obs, Topology};
use driver::{Driver, DriverOptions, Model};
use events::{Log, Ns, Timeline};
use observe::{Ctl, DaemonId, Observer};
use rng::Rng;
use traffic::{Client, Sleepy, Traffic};

use crate::lab::{Lab, LabOptions, UDP_PORT, service_block, xlb_bin};

/// Every soak service listens on this UDP port (the test server answers there).
pub const SERVICE_PORT: u16 = UDP_PORT;
/// Answers are checked once their request is this old (every event around is logged).
const LAG: Duration = Duration::from_secs(3);
/// Backend hosts per service pool; the first `POOL - 1` are members at the start.
const POOL: usize = 5;
const SERVICES: [&str; 2] = ["svc-a", "svc-b"];

/// What a soak does.
#[derive(Clone, Debug)]
pub struct Options {
    /// How long operations are applied (traffic runs 2 s before and 1 s after).
    pub duration: Duration,
    pub seed: u64,
    pub ops: Vec<OpKind>,
    pub clients: usize,
    /// Percentage of clients that sleep for seconds at a time.
    pub sleepy_percent: u64,
    /// Each client sends one request per `interval`.
    pub interval: Duration,
    /// One operation per tick.
    pub tick: Duration,
    /// SIGKILL + restart period (when `kill` is among the operations).
    pub kill_every: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(300),
            seed: 1,
            ops: OpKind::ALL.to_vec(),
            clients: 2000,
            sleepy_percent: 10,
            interval: Duration::from_millis(100),
            tick: Duration::from_millis(100),
            kill_every: Duration::from_secs(30),
        }
    }
}

/// The outcome: the printed report and whether any check failed.
pub struct Report {
    pub text: String,
    pub failed: bool,
}

/// A seed from the clock, for runs that were not given one.
pub fn random_seed() -> u64 {
    let mut r = Rng::new(wire::now_ns() ^ u64::from(std::process::id()) << 32);
    r.next_u64() % 1_000_000_000
}

/// The command that replays these options.
pub fn replay_command(o: &Options) -> String {
    format!(
        "cargo xtask soak --seed {} --duration {} --ops {} --clients {} --kill-every {} --interval {}",
        o.seed,
        format_duration(o.duration),
        o.ops.iter().map(|k| k.name()).collect::<Vec<_>>().join(","),
        o.clients,
        format_duration(o.kill_every),
        format_duration(o.interval),
    )
}

/// Parses `100ms`, `30s`, `5m`, `1h`, or sums of them (`1m30s`). Kept here rather than
/// borrowed from the daemon's config code, which other work reshapes.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration like 100ms, 30s, 5m or 1m30s");
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let one = match &rest[..unit] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        total += one * u32::try_from(n).map_err(|_| bad())?;
        rest = &rest[unit..];
    }
    Ok(total)
}

/// `250ms`, `1.5s`, `30s`, `5m`: short and exact enough for the report.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 1000.0 {
        format!("{}ms", (ms * 10.0).round() / 10.0)
    } else if d.as_secs() >= 60 && d.as_secs().is_multiple_of(60) && d.subsec_nanos() == 0 {
        format!("{}m", d.as_secs() / 60)
    } else {
        format!("{}s", (d.as_secs_f64() * 100.0).round() / 100.0)
    }
}

/// Runs a soak (root; builds and tears down its own lab).
pub fn run(opts: &Options) -> Report {
    crate::require_root();
    let cpu0 = report::Cpu::now();
    let (mut lab, topo, model) = build_lab(opts);
    let ctl = Ctl {
        lb_netns: lab.lb.path(),
        socket: lab.socket.clone(),
        xlb: xlb_bin(),
    };
    let shared = Shared::new(ctl.clone(), &topo);
    let members = model.member.clone();
    let client_netns = lab.client.path();
    let t_start = wire::now_ns();
    let drv_opts = driver_options(opts);
    let mut drv = Driver::new(&mut lab, &topo, model, opts.seed, drv_opts, shared.clone());
    drv.restart(None, "xlb run (first start)");
    let started = shared
        .log
        .lock()
        .expect("log")
        .iter()
        .find_map(|e| e.error.clone());
    if let Some(text) = started.or_else(|| wait_all_healthy(&ctl, &topo, &members).err()) {
        return Report { text, failed: true };
    }
    let ctx = Context {
        opts,
        topo: &topo,
        members: &members,
        t_start,
        shared: &shared,
    };
    let out = ctx.soak(&mut drv, &client_netns);
    drop(drv);
    let daemon_log = lab.daemon_log();
    drop(lab);
    let samples = shared.observer.samples.lock().expect("samples").clone();
    let mut report = report::render(&report::Inputs {
        opts,
        topo: &topo,
        t_start,
        events: &out.events,
        checker: &out.checker,
        traffic: &out.traffic,
        samples: &samples,
        restarts: &out.restarts,
        ops_done: &out.ops_done,
        polls: (
            shared.observer.polls.load(Ordering::Relaxed),
            shared.observer.failed_polls.load(Ordering::Relaxed),
        ),
        cpu: report::Cpu::now().since(&cpu0),
        daemon_log: &daemon_log,
    });
    report
        .text
        .push_str(&save(opts, t_start, &out.events, &daemon_log, &samples));
    report
}

/// What the driver, the observer and the checker share.
#[derive(Clone)]
pub struct Shared {
    pub log: Log,
    pub daemon: Arc<DaemonId>,
    pub observer: Arc<Observer>,
}

impl Shared {
    fn new(ctl: Ctl, topo: &Topology) -> Self {
        let log: Log = Arc::new(Mutex::new(Vec::new()));
        let daemon = Arc::new(DaemonId::default());
        let observer = Arc::new(Observer::new(
            ctl,
            daemon.clone(),
            log.clone(),
            topo.backend_addrs.clone(),
            topo.backend_names.clone(),
        ));
        Self {
            log,
            daemon,
            observer,
        }
    }
}

/// The fixed facts of one soak.
struct Context<'a> {
    opts: &'a Options,
    topo: &'a Topology,
    members: &'a [bool],
    t_start: Ns,
    shared: &'a Shared,
}

/// What a soak leaves for its report.
struct Outcome {
    events: Vec<events::Event>,
    checker: Checker,
    traffic: Arc<traffic::TrafficCounts>,
    restarts: Vec<Duration>,
    ops_done: std::collections::BTreeMap<&'static str, (u64, u64)>,
}

impl Context<'_> {
    /// Traffic, watchers, 2 s of warm-up, the operations; then everything stopped and
    /// the last answers checked.
    fn soak(&self, drv: &mut Driver, client_netns: &std::path::Path) -> Outcome {
        let checker = Arc::new(Mutex::new(Checker::new(self.topo.clone())));
        let sink = Arc::new(Mutex::new(Vec::<Obs>::new()));
        let names = self.topo.backend_names.clone();
        let traffic = Traffic::start(
            client_netns,
            clients(self.opts, self.topo),
            self.opts.interval,
            sink.clone(),
            move |n| names.iter().position(|x| x == n),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let watchers = Watchers {
            stop: stop.clone(),
            observer: self.shared.observer.clone(),
            checker: checker.clone(),
            sink: sink.clone(),
            log: self.shared.log.clone(),
            members: self.members.to_vec(),
            t_start: self.t_start,
            traffic: traffic.counts.clone(),
        }
        .spawn();
        // Warm-up: every client is pinned before the first operation.
        std::thread::sleep(Duration::from_secs(2));
        drv.run(Instant::now(), self.opts.duration);
        let counts = traffic.counts.clone();
        traffic.stop(Duration::from_secs(1));
        stop.store(true, Ordering::SeqCst);
        for t in watchers {
            let _ = t.join();
        }
        let events = self.shared.log.lock().expect("log").clone();
        let mut checker = std::mem::replace(
            &mut *checker.lock().expect("checker"),
            Checker::new(self.topo.clone()),
        );
        checker.feed(std::mem::take(&mut *sink.lock().expect("sink")));
        checker.process(
            Ns::MAX,
            &Timeline::build(&events, self.members, self.t_start),
        );
        Outcome {
            events,
            checker,
            traffic: counts,
            restarts: std::mem::take(&mut drv.restarts),
            ops_done: std::mem::take(&mut drv.ops_done),
        }
    }
}

/// Keeps the event log, the daemon's log and its /proc samples in /tmp/xlb-soak-SEED/ (the
/// lab's own files go with it); returns a line saying where.
fn save(
    opts: &Options,
    t_start: Ns,
    events: &[events::Event],
    daemon_log: &str,
    samples: &[observe::Sample],
) -> String {
    let dir = std::env::temp_dir().join(format!("xlb-soak-{}", opts.seed));
    let rel = |t: Ns| (t as f64 - t_start as f64) / 1e9;
    let mut text = String::new();
    for e in events {
        text.push_str(&format!(
            "+{:.3}s +{:.3}s {} {}{}\n",
            rel(e.start),
            rel(e.end),
            e.tick.map_or("-".to_string(), |t| format!("#{t}")),
            e.text,
            e.error
                .as_ref()
                .map_or(String::new(), |x| format!(" FAILED: {x}"))
        ));
    }
    let mut series = String::from("life\tseconds\trss_kib\tfds\n");
    for m in samples {
        series.push_str(&format!(
            "{}\t{:.3}\t{}\t{}\n",
            m.life,
            rel(m.t),
            m.rss_kib,
            m.fds
        ));
    }
    let written = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(dir.join("events.txt"), text))
        .and_then(|()| std::fs::write(dir.join("daemon.log"), daemon_log))
        .and_then(|()| std::fs::write(dir.join("memory.tsv"), series));
    match written {
        Ok(()) => format!(
            "\nevents, the daemon's log and its memory series: {}/{{events.txt,daemon.log,memory.tsv}}\n",
            dir.display()
        ),
        Err(e) => format!("\n(could not save the logs in {}: {e})\n", dir.display()),
    }
}

fn driver_options(opts: &Options) -> DriverOptions {
    let ticks = |d: Duration| (d.as_nanos() / opts.tick.as_nanos().max(1)).max(2) as u64;
    DriverOptions {
        drawn: opts
            .ops
            .iter()
            .copied()
            .filter(|k| *k != OpKind::Kill)
            .collect(),
        kill_every: opts
            .ops
            .contains(&OpKind::Kill)
            .then(|| ticks(opts.kill_every)),
        tick: opts.tick,
    }
}

/// The lab: `2 × POOL` backend hosts, the soak's client addresses (10.101.0.0/16, routed
/// by the backends through the lab client's first address, so a backend keeps one
/// neighbour entry instead of one per client), two UDP services with health checks.
fn build_lab(opts: &Options) -> (Lab, Topology, Model) {
    let mut lab = Lab::new(LabOptions {
        backends: 2 * POOL,
        clients_v4: 1,
        clients_v6: 1,
    });
    let gateway = lab.clients4[0];
    let client_addrs: Vec<IpAddr> = (0..opts.clients)
        .map(|i| IpAddr::V4(Ipv4Addr::new(10, 101, (i / 250) as u8, 1 + (i % 250) as u8)))
        .collect();
    let batch: String = client_addrs
        .iter()
        .map(|a| format!("addr add {a}/32 dev eth0\n"))
        .collect();
    let file = lab.dir.join("soak-clients.batch");
    std::fs::write(&file, batch).expect("write the client address batch");
    crate::lab::run(std::process::Command::new("ip").args([
        "-n",
        &lab.client.name,
        "-batch",
        file.to_str().expect("utf-8 path"),
    ]));
    for b in &lab.backends {
        b.ns.ip(&format!("route add 10.101.0.0/16 via {gateway} dev eth0"));
    }
    let backend_service: Vec<usize> = (0..2 * POOL).map(|b| b / POOL).collect();
    let backend_addrs: Vec<IpAddr> = lab.backends.iter().map(|b| b.addr4.into()).collect();
    let member: Vec<bool> = (0..2 * POOL).map(|b| b % POOL != POOL - 1).collect();
    let health = format!(
        "health = {{ kind = \"udp\", port = {SERVICE_PORT}, send = \"ping\", interval = \"200ms\", timeout = \"200ms\", rise = 2, fall = 2 }}\n"
    );
    let vips = [Lab::vip4(1), Lab::vip4(2)];
    let mut config = String::new();
    for (s, name) in SERVICES.iter().enumerate() {
        let backends: Vec<(IpAddr, u32)> = (0..2 * POOL)
            .filter(|&b| backend_service[b] == s && member[b])
            .map(|b| (backend_addrs[b], 1))
            .collect();
        config.push_str(&service_block(
            name,
            &vips[s].to_string(),
            SERVICE_PORT,
            "udp",
            &health,
            &backends,
        ));
    }
    lab.write_config(&config);
    lab.start_servers();
    let topo = Topology {
        services: SERVICES.iter().map(|s| s.to_string()).collect(),
        vips: vips.to_vec(),
        backend_service,
        backend_names: lab.backends.iter().map(|b| b.name.clone()).collect(),
        backend_addrs,
        client_service: (0..opts.clients).map(|c| c % SERVICES.len()).collect(),
        client_addrs,
    };
    let n = 2 * POOL;
    let model = Model {
        member,
        drained: vec![false; n],
        server_up: vec![true; n],
        weight: vec![1; n],
    };
    (lab, topo, model)
}

/// The clients: address, VIP of their service, and (for a seeded share) a sleep pattern.
fn clients(opts: &Options, topo: &Topology) -> Vec<Client> {
    let mut rng = Rng::fork(opts.seed, 2);
    (0..opts.clients)
        .map(|c| {
            let sleepy = rng.below(100) < opts.sleepy_percent;
            let pattern = Sleepy::draw(&mut rng);
            let (IpAddr::V4(addr), IpAddr::V4(vip)) =
                (topo.client_addrs[c], topo.vips[topo.client_service[c]])
            else {
                unreachable!("the soak's clients and VIPs are IPv4");
            };
            Client {
                addr,
                vip,
                sleepy: sleepy.then_some(pattern),
            }
        })
        .collect()
}

/// Waits (15 s at most) until `status` shows every member backend healthy.
fn wait_all_healthy(ctl: &Ctl, topo: &Topology, members: &[bool]) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(out) = ctl.xlb(&["--json", "status"]) {
            let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
            let healthy: Vec<IpAddr> = v["services"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|s| s["backends"].as_array().into_iter().flatten())
                .filter(|b| b["health"] == "healthy")
                .filter_map(|b| b["address"].as_str()?.parse().ok())
                .collect();
            let all = (0..members.len())
                .filter(|&b| members[b])
                .all(|b| healthy.contains(&topo.backend_addrs[b]));
            if all {
                return Ok(());
            }
            last = out;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "not every backend became healthy within 15 s; last status:\n{last}"
    ))
}

/// The background threads: status polls and /proc samples, the checker, progress lines.
struct Watchers {
    stop: Arc<AtomicBool>,
    observer: Arc<Observer>,
    checker: Arc<Mutex<Checker>>,
    sink: Arc<Mutex<Vec<Obs>>>,
    log: Log,
    members: Vec<bool>,
    t_start: Ns,
    traffic: Arc<traffic::TrafficCounts>,
}

impl Watchers {
    fn spawn(self) -> Vec<std::thread::JoinHandle<()>> {
        let observe = {
            let (stop, observer) = (self.stop.clone(), self.observer.clone());
            std::thread::spawn(move || {
                for i in 0u64.. {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    observer.poll();
                    if i % 4 == 0 {
                        observer.sample();
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
            })
        };
        let check = std::thread::spawn(move || self.check_loop());
        vec![observe, check]
    }

    fn check_loop(self) {
        let mut last_progress = Instant::now();
        while !self.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(500));
            let batch = std::mem::take(&mut *self.sink.lock().expect("sink"));
            let events = self.log.lock().expect("log").clone();
            let timeline = Timeline::build(&events, &self.members, self.t_start);
            let mut c = self.checker.lock().expect("checker");
            c.feed(batch);
            c.process(wire::now_ns() - LAG.as_nanos() as u64, &timeline);
            if last_progress.elapsed() >= Duration::from_secs(10) {
                last_progress = Instant::now();
                println!(
                    "{}",
                    report::progress(&c, &self.traffic, &events, &self.observer, self.t_start)
                );
            }
        }
    }
}

mod report;
