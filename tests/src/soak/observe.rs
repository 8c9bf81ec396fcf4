//! The soak's observer: polls `xlb --json status` (health and its transitions per backend)
//! and samples the daemon's memory (VmRSS) and open file descriptors from /proc.
//!
//! A health observation becomes a [`What::Health`] event spanning from the previous poll's
//! start to this poll's return — the change happened somewhere in there. Transition counts
//! are compared only within one daemon life (a restarted daemon counts from 0). Owns no
//! lab state: it only runs the CLI against the socket and reads /proc.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
};

use super::events::{BackendIx, Event, Log, Ns, What};
use super::wire::now_ns;

/// How to reach the daemon from outside the lab object (which stays with the driver).
#[derive(Clone, Debug)]
pub struct Ctl {
    pub lb_netns: PathBuf,
    pub socket: PathBuf,
    pub xlb: PathBuf,
}

impl Ctl {
    /// `xlb --socket S ARGS` in the balancer's network namespace; stdout or (code, stderr).
    pub fn xlb(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.lb_netns.display()))
            .arg("--")
            .arg(&self.xlb)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running xlb: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "exit {}: {}",
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

/// Which daemon is running: its pid (0 while none) and its life number (1 for the first).
#[derive(Debug, Default)]
pub struct DaemonId {
    pub pid: AtomicU32,
    pub life: AtomicU32,
}

/// One /proc sample of the daemon.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub life: u32,
    pub t: Ns,
    pub rss_kib: u64,
    pub fds: u64,
}

#[derive(Clone, Debug)]
struct Seen {
    life: u32,
    start: Ns,
    health: String,
    transitions: u64,
}

#[derive(Default)]
struct PollState {
    seen: HashMap<BackendIx, Seen>,
    /// Per backend, the log index of the Health event the previous poll extended.
    open: HashMap<BackendIx, usize>,
}

/// Status polls and /proc samples, callable from the observer thread and the driver.
pub struct Observer {
    ctl: Ctl,
    daemon: Arc<DaemonId>,
    log: Log,
    backend_addrs: Vec<IpAddr>,
    backend_names: Vec<String>,
    state: Mutex<PollState>,
    pub samples: Mutex<Vec<Sample>>,
    pub polls: AtomicU32,
    pub failed_polls: AtomicU32,
}

impl Observer {
    pub fn new(
        ctl: Ctl,
        daemon: Arc<DaemonId>,
        log: Log,
        backend_addrs: Vec<IpAddr>,
        backend_names: Vec<String>,
    ) -> Self {
        Self {
            ctl,
            daemon,
            log,
            backend_addrs,
            backend_names,
            state: Mutex::new(PollState::default()),
            samples: Mutex::new(Vec::new()),
            polls: AtomicU32::new(0),
            failed_polls: AtomicU32::new(0),
        }
    }

    /// One `xlb --json status`; health observations go to the log.
    pub fn poll(&self) {
        let mut state = self.state.lock().expect("observer state");
        let life = self.daemon.life.load(Ordering::SeqCst);
        if self.daemon.pid.load(Ordering::SeqCst) == 0 {
            return;
        }
        let start = now_ns();
        let out = self.ctl.xlb(&["--json", "status"]);
        let end = now_ns();
        if self.daemon.life.load(Ordering::SeqCst) != life {
            return;
        }
        self.polls.fetch_add(1, Ordering::Relaxed);
        let Some(status) = out
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        else {
            self.failed_polls.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mut now_open = HashMap::new();
        let seen_now = self.backends_in(&status);
        // A backend gone from the status (removed) starts afresh when it comes back: its
        // new health task counts transitions from 0.
        state
            .seen
            .retain(|b, p| p.life != life || seen_now.iter().any(|(x, ..)| x == b));
        for (b, health, transitions) in seen_now {
            let cur = Seen {
                life,
                start,
                health,
                transitions,
            };
            if let Some(why) = bad(state.seen.get(&b), &cur) {
                let from = state.seen.get(&b).map_or(start, |p| p.start);
                let ix = self.note(state.open.get(&b).copied(), b, from, end, why);
                now_open.insert(b, ix);
            }
            state.seen.insert(b, cur);
        }
        state.open = now_open;
    }

    fn backends_in(&self, status: &serde_json::Value) -> Vec<(BackendIx, String, u64)> {
        let mut out = Vec::new();
        for svc in status["services"].as_array().into_iter().flatten() {
            for be in svc["backends"].as_array().into_iter().flatten() {
                let Some(addr) = be["address"]
                    .as_str()
                    .and_then(|a| a.parse::<IpAddr>().ok())
                else {
                    continue;
                };
                let Some(b) = self.backend_addrs.iter().position(|x| *x == addr) else {
                    continue;
                };
                out.push((
                    b,
                    be["health"].as_str().unwrap_or("?").to_string(),
                    be["health_transitions"].as_u64().unwrap_or(0),
                ));
            }
        }
        out
    }

    /// Extends the Health event at `open` or appends one; returns its log index.
    fn note(&self, open: Option<usize>, b: BackendIx, from: Ns, to: Ns, why: String) -> usize {
        let mut log = self.log.lock().expect("event log");
        if let Some(e) = open.and_then(|i| log.get_mut(i))
            && matches!(&e.what, What::Health(x, _) if *x == b)
        {
            e.end = to;
            if !e.text.ends_with(&why) {
                e.text = format!("{}; {why}", e.text);
            }
            return open.expect("checked");
        }
        log.push(Event {
            tick: None,
            start: from,
            end: to,
            what: What::Health(b, why.clone()),
            text: format!("seen in status: {} {why}", self.backend_names[b]),
            error: None,
        });
        log.len() - 1
    }

    /// One /proc sample of the running daemon.
    pub fn sample(&self) {
        let pid = self.daemon.pid.load(Ordering::SeqCst);
        let life = self.daemon.life.load(Ordering::SeqCst);
        if pid == 0 {
            return;
        }
        let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            });
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64);
        if let (Some(rss_kib), Ok(fds)) = (rss, fds)
            && self.daemon.pid.load(Ordering::SeqCst) == pid
        {
            self.samples.lock().expect("samples").push(Sample {
                life,
                t: now_ns(),
                rss_kib,
                fds,
            });
        }
    }
}

/// Why this observation shows the backend not healthy, or changing health, if it does.
fn bad(prev: Option<&Seen>, cur: &Seen) -> Option<String> {
    if cur.health == "unhealthy" {
        return Some("unhealthy".into());
    }
    let prev = prev?;
    if prev.life == cur.life && cur.transitions > prev.transitions {
        return Some(format!(
            "{} health transition(s), now {}",
            cur.transitions - prev.transitions,
            cur.health
        ));
    }
    // Across a restart only a change between two known states counts: "unknown" is what
    // a new daemon (or a new backend) shows before its first check.
    let known = |h: &str| h == "healthy" || h == "unhealthy";
    if prev.life != cur.life
        && prev.health != cur.health
        && known(&prev.health)
        && known(&cur.health)
    {
        return Some(format!(
            "{} before the restart, {} after",
            prev.health, cur.health
        ));
    }
    None
}
