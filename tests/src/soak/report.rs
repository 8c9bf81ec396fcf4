//! The soak's report: counts, the daemon's memory series, CPU time, and the violations
//! grouped by the operations that could explain them, with examples in detail (the
//! operations and daemon log lines around each). Pure text from what the soak collected.

use std::{collections::BTreeMap, fmt::Write as _, sync::atomic::Ordering, time::Duration};

use super::check::{Checker, LATE_NS, Topology, Violation};
use super::events::{Event, Ns, What};
use super::observe::{Observer, Sample};
use super::traffic::TrafficCounts;
use super::{Options, Report, mem, replay_command};

/// Everything the report is made of.
pub struct Inputs<'a> {
    pub opts: &'a Options,
    pub topo: &'a Topology,
    pub t_start: Ns,
    pub events: &'a [Event],
    pub checker: &'a Checker,
    pub traffic: &'a TrafficCounts,
    pub samples: &'a [Sample],
    pub restarts: &'a [Duration],
    pub ops_done: &'a BTreeMap<&'static str, (u64, u64)>,
    pub polls: (u32, u32),
    pub cpu: Cpu,
    pub daemon_log: &'a str,
}

/// How many failed operations are shown in detail.
const SHOWN: usize = 12;
/// How many violations of each kind and suspect are shown in detail, for how many of the
/// largest groups.
const EXAMPLES: usize = 2;
const GROUPS: usize = 6;

pub fn render(i: &Inputs) -> Report {
    let mut out = String::new();
    let sent = i.traffic.sent.load(Ordering::Relaxed);
    let answers = i.traffic.answers.load(Ordering::Relaxed);
    header_lines(&mut out, i);
    traffic_lines(&mut out, i, sent, answers);
    ops_lines(&mut out, i);
    let (lives, mem_bad) = mem::judge(i.samples);
    let failed_ops: Vec<&Event> = i.events.iter().filter(|e| e.error.is_some()).collect();
    check_lines(&mut out, i, failed_ops.len());
    mem_lines(&mut out, &lives, &mem_bad);
    let _ = writeln!(out, "CPU: {}", i.cpu);
    let problems = problems(i, sent, answers, failed_ops.len(), mem_bad.len());
    if problems.is_empty() {
        let _ = writeln!(out, "RESULT: ok");
    } else {
        let _ = writeln!(out, "RESULT: FAILED: {}", problems.join(", "));
        let _ = writeln!(
            out,
            "replay the same operations: {}",
            replay_command(i.opts)
        );
        violation_lines(&mut out, i, &failed_ops, &mem_bad);
    }
    Report {
        text: out,
        failed: !problems.is_empty(),
    }
}

fn header_lines(out: &mut String, i: &Inputs) {
    let o = i.opts;
    let _ = writeln!(
        out,
        "\n=== xlb soak: seed {}, {} of operations, one per {} ===",
        o.seed,
        fmt_d(o.duration),
        fmt_d(o.tick)
    );
    let kill = if o.ops.contains(&super::OpKind::Kill) {
        format!(" (kill + restart every {})", fmt_d(o.kill_every))
    } else {
        String::new()
    };
    let names: Vec<&str> = o.ops.iter().map(|k| k.name()).collect();
    let _ = writeln!(out, "operations: {}{kill}", names.join(","));
}

fn check_lines(out: &mut String, i: &Inputs, failed_ops: usize) {
    let c = &i.checker.counts;
    let _ = writeln!(out, "checks:");
    let _ = writeln!(
        out,
        "  backend changes: {} excused (removed {}, server stopped {}, health change {}), {} unexcused",
        c.excused(),
        c.excused_removed,
        c.excused_server,
        c.excused_health,
        c.unexcused
    );
    let _ = writeln!(
        out,
        "  late packets (> {} ms after `backend remove` returned): {} (largest in-flight delay within the allowance: {:.1} ms)",
        LATE_NS / 1_000_000,
        c.late,
        c.max_in_flight_after_remove as f64 / 1e6
    );
    let _ = writeln!(out, "  cross-service packets: {}", c.cross_service);
    if !i.checker.kept.is_empty() {
        let _ = writeln!(
            out,
            "  violations by the operations that could explain them (started up to 0.5 s \
             before, on the backend concerned or on all; else on others of its service):"
        );
        for (label, n) in attribution(i) {
            let _ = writeln!(out, "    {n:>7}  {label}");
        }
    }
    let _ = writeln!(out, "  failed operations: {failed_ops}");
}

/// Why the soak failed, one phrase per check that did.
fn problems(i: &Inputs, sent: u64, answers: u64, failed_ops: usize, mem_bad: usize) -> Vec<String> {
    let c = &i.checker.counts;
    let mut p = Vec::new();
    for (n, what) in [
        (c.unexcused, "unexcused backend changes"),
        (c.late, "late packets"),
        (c.cross_service, "cross-service packets"),
        (failed_ops as u64, "failed operations"),
        (mem_bad as u64, "memory/descriptor growths"),
    ] {
        if n > 0 {
            p.push(format!("{n} {what}"));
        }
    }
    if sent == 0 || answers * 2 < sent {
        p.push(format!(
            "traffic did not flow ({answers} answers to {sent} requests)"
        ));
    }
    p
}

fn traffic_lines(out: &mut String, i: &Inputs, sent: u64, answers: u64) {
    let t = i.traffic;
    let sleepy = i.opts.clients as u64 * i.opts.sleepy_percent / 100;
    let _ = writeln!(
        out,
        "traffic: {} clients (~{sleepy} intermittent) over {}, one UDP request per {} each",
        i.opts.clients,
        i.topo
            .services
            .iter()
            .zip(&i.topo.vips)
            .map(|(s, v)| format!("{s} {v}:{}", super::SERVICE_PORT))
            .collect::<Vec<_>>()
            .join(" and "),
        fmt_d(i.opts.interval)
    );
    let _ = writeln!(
        out,
        "  requests {sent}, answers {answers} ({:.2}%), send errors {}, checked {}, stragglers {}, undecodable {}, answers without a kernel stamp {}",
        100.0 * answers as f64 / sent.max(1) as f64,
        t.send_errors.load(Ordering::Relaxed),
        i.checker.counts.answers,
        i.checker.counts.stragglers,
        t.foreign.load(Ordering::Relaxed),
        t.user_stamps.load(Ordering::Relaxed),
    );
}

fn ops_lines(out: &mut String, i: &Inputs) {
    let list: Vec<String> = i
        .ops_done
        .iter()
        .map(|(k, (n, failed))| format!("{k} {n} ({failed} failed)"))
        .collect();
    let _ = writeln!(out, "operations done: {}", list.join(", "));
    let mut r: Vec<Duration> = i.restarts.to_vec();
    r.sort();
    let _ = writeln!(
        out,
        "daemon: {} starts (median {}, max {} until it answered with every backend resolved); status polls {} ({} failed)",
        r.len(),
        r.get(r.len() / 2).map_or("-".into(), |d| fmt_d(*d)),
        r.last().map_or("-".into(), |d| fmt_d(*d)),
        i.polls.0,
        i.polls.1
    );
}

fn mem_lines(out: &mut String, lives: &[mem::LifeSummary], bad: &[String]) {
    let _ = writeln!(
        out,
        "  daemon memory and descriptors: {} growths (per life after {} s: RSS KiB min–max, median [first third → last third]; fds min–max [fewest in the first third → in the last])",
        bad.len(),
        mem::WARMUP_S
    );
    for l in lives {
        let _ = writeln!(
            out,
            "    life {:>2}: {:>3} samples over {:>5.1} s, RSS {}–{}, {} [{} → {}], fds {}–{} [{} → {}]{}",
            l.life,
            l.samples,
            l.seconds,
            l.rss_min,
            l.rss_max,
            l.rss_level,
            l.rss_first,
            l.rss_last,
            l.fds_min,
            l.fds_max,
            l.fds_first,
            l.fds_last,
            if l.judged {
                ""
            } else {
                " (too short to judge alone)"
            }
        );
    }
}

fn violation_lines(out: &mut String, i: &Inputs, failed_ops: &[&Event], mem_bad: &[String]) {
    let _ = writeln!(
        out,
        "\nVIOLATIONS ({EXAMPLES} examples of each of the {GROUPS} largest groups above, in the order found):"
    );
    let top: Vec<String> = attribution(i)
        .into_iter()
        .take(GROUPS)
        .map(|(g, _)| g)
        .collect();
    let mut shown: BTreeMap<String, usize> = BTreeMap::new();
    for v in &i.checker.kept {
        let g = group(i, v);
        if !top.contains(&g) {
            continue;
        }
        let n = shown.entry(g).or_default();
        *n += 1;
        if *n > EXAMPLES {
            continue;
        }
        let _ = writeln!(out, "- [{}] {}", group(i, v), describe(i, v));
        let (from, to) = v.span();
        for line in around(i, from, to, &v.backends()) {
            let _ = writeln!(out, "      {line}");
        }
    }
    for e in failed_ops.iter().take(SHOWN) {
        let _ = writeln!(
            out,
            "- operation failed at {}: {}: {}",
            rel(i.t_start, e.start),
            e.text,
            e.error.as_deref().unwrap_or("")
        );
    }
    for m in mem_bad {
        let _ = writeln!(out, "- {m}");
    }
}

fn describe(i: &Inputs, v: &Violation) -> String {
    let t = i.topo;
    let r = |ns| rel(i.t_start, ns);
    match *v {
        Violation::Unexcused {
            client,
            from,
            from_seq,
            from_rx,
            to,
            to_seq,
            to_rx,
        } => format!(
            "unexcused change: {}: {} (seq {from_seq} at {}) → {} (seq {to_seq} at {}); {} stayed healthy and in its service (no removal, server stop or health change seen between)",
            t.client(client),
            t.backend(from),
            r(from_rx),
            t.backend(to),
            r(to_rx),
            t.backend_names[from]
        ),
        Violation::Late {
            client,
            seq,
            backend,
            rx,
            removed,
        } => format!(
            "late packet: {} seq {seq} reached {} at {}, {:.1} ms after {} (allowance {} ms)",
            t.client(client),
            t.backend(backend),
            r(rx),
            (rx - removed) as f64 / 1e6,
            if removed == i.t_start {
                "the soak started (never added)".to_string()
            } else {
                format!("its `backend remove` returned at {}", r(removed))
            },
            LATE_NS / 1_000_000
        ),
        Violation::CrossService {
            client,
            seq,
            backend,
            rx,
            dst,
        } => format!(
            "cross-service packet: {} seq {seq} reached {} of {} at {} (addressed to {dst})",
            t.client(client),
            t.backend(backend),
            t.services[t.backend_service[backend]],
            r(rx)
        ),
    }
}

/// Per violation kind and suspect operation: how many violations.
fn attribution(i: &Inputs) -> Vec<(String, u64)> {
    let mut n: BTreeMap<String, u64> = BTreeMap::new();
    for v in &i.checker.kept {
        *n.entry(group(i, v)).or_default() += 1;
    }
    let mut v: Vec<(String, u64)> = n.into_iter().collect();
    v.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    v
}

/// "KIND after: SUSPECTS" — the violation's kind and the operations that could explain it
/// (see [`suspects`]).
fn group(i: &Inputs, v: &Violation) -> String {
    let kind = match v {
        Violation::Unexcused { .. } => "unexcused change",
        Violation::Late { .. } => "late packet",
        Violation::CrossService { .. } => "cross-service packet",
    };
    let (from, to) = v.span();
    format!("{kind} after: {}", suspects(i, from, to, v.backends()[0]))
}

/// The kinds of operation started in [from − 0.5 s, to] on backend `b` or on every
/// backend (neighbour flush, kill, restart); if none, those on other backends of its
/// service; "nothing" if none at all.
fn suspects(i: &Inputs, from: Ns, to: Ns, b: usize) -> String {
    let svc = i.topo.backend_service[b];
    let target = |w: &What| match w {
        What::Add(x)
        | What::Remove(x)
        | What::Drain(x)
        | What::Undrain(x)
        | What::Weight(x, _)
        | What::ServerStop(x)
        | What::ServerStart(x)
        | What::NeighDel(x) => Some(*x),
        _ => None,
    };
    let in_window: Vec<&Event> = i
        .events
        .iter()
        .filter(|e| e.start <= to && e.start + 500_000_000 >= from)
        .filter(|e| !matches!(e.what, What::Health(..)))
        .collect();
    let kinds = |pick: &dyn Fn(&What) -> bool| {
        let set: std::collections::BTreeSet<&str> = in_window
            .iter()
            .filter(|e| pick(&e.what))
            .map(|e| label(&e.what))
            .collect();
        set.into_iter().collect::<Vec<_>>().join(" + ")
    };
    let mine = kinds(&|w| target(w).is_none_or(|x| x == b));
    if !mine.is_empty() {
        return mine;
    }
    let others = kinds(&|w| target(w).is_some_and(|x| i.topo.backend_service[x] == svc));
    if others.is_empty() {
        "nothing within 0.5 s".into()
    } else {
        format!("{others} (of other backends)")
    }
}

fn label(w: &What) -> &'static str {
    match w {
        What::Add(_) => "backend add",
        What::Remove(_) => "backend remove",
        What::Drain(_) => "backend drain",
        What::Undrain(_) => "backend undrain",
        What::Weight(..) => "backend weight",
        What::ServerStop(_) => "server stop",
        What::ServerStart(_) => "server start",
        What::NeighDel(_) => "ip neigh del",
        What::NeighFlush => "ip neigh flush",
        What::Kill => "SIGKILL of the daemon",
        What::Restart => "daemon restart",
        What::DaemonDied => "daemon died",
        What::Health(..) => "health change",
    }
}

/// Operations from 1 s before to 0.3 s after [from, to] (the 12 latest), health
/// observations of the backends concerned, and daemon log lines about them then.
fn around(i: &Inputs, from: Ns, to: Ns, backends: &[usize]) -> Vec<String> {
    let lo = from.saturating_sub(1_000_000_000);
    let hi = to + 300_000_000;
    let mut lines: Vec<String> = i
        .events
        .iter()
        .filter(|e| e.end >= lo && e.start <= hi)
        .filter(|e| match &e.what {
            What::Health(b, _) => backends.contains(b),
            _ => true,
        })
        .map(|e| {
            format!(
                "{}{} {}{}",
                rel(i.t_start, e.start),
                e.tick
                    .map_or("       ".to_string(), |t| format!(" #{t:<5}")),
                e.text,
                match &e.what {
                    What::Health(..) => format!(" (until {})", rel(i.t_start, e.end)),
                    _ => format!(" (returned after {:.1} ms)", (e.end - e.start) as f64 / 1e6),
                }
            )
        })
        .collect();
    if lines.len() > 12 {
        let n = lines.len();
        lines.drain(..n - 12);
        lines.insert(0, format!("... ({} earlier)", n - 12));
    }
    let addrs: Vec<String> = backends
        .iter()
        .map(|b| i.topo.backend_addrs[*b].to_string())
        .collect();
    let logged: Vec<String> = i
        .daemon_log
        .lines()
        .filter(|l| {
            addrs
                .iter()
                .any(|a| l.contains(&format!("{a} ")) || l.ends_with(a.as_str()))
        })
        .filter(|l| log_time(l).is_some_and(|t| t >= lo && t <= hi))
        .take(8)
        .map(|l| format!("daemon log: {l}"))
        .collect();
    lines.extend(logged);
    lines
}

/// The time (ns since the epoch) of an env_logger line `[2026-11-29T12:34:56.789Z INFO ...`
/// (UTC; the fraction is optional).
fn log_time(line: &str) -> Option<Ns> {
    let s = line.strip_prefix('[')?;
    let (date, rest) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let hms: Vec<i64> = rest
        .get(..8)?
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let frac = rest[8..]
        .strip_prefix('.')
        .map(|f| {
            let digits: String = f.chars().take_while(char::is_ascii_digit).collect();
            format!("{digits:0<9}")[..9].parse::<u64>().unwrap_or(0)
        })
        .unwrap_or(0);
    let secs = days_from_civil(y, m, day) * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2];
    Some(secs as u64 * 1_000_000_000 + frac)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// One progress line, every 10 s while the soak runs.
pub fn progress(
    c: &Checker,
    traffic: &TrafficCounts,
    events: &[Event],
    observer: &Observer,
    t_start: Ns,
) -> String {
    let k = &c.counts;
    let ops = events.iter().filter(|e| e.tick.is_some()).count();
    let last = observer.samples.lock().expect("samples").last().copied();
    format!(
        "soak {}: requests {}, answers {}, changes {} excused / {} unexcused, late {}, cross-service {}, operations {ops}, daemon {}",
        rel(t_start, super::wire::now_ns()),
        traffic.sent.load(Ordering::Relaxed),
        traffic.answers.load(Ordering::Relaxed),
        k.excused(),
        k.unexcused,
        k.late,
        k.cross_service,
        last.map_or("-".into(), |s| format!(
            "life {} RSS {} KiB fds {}",
            s.life, s.rss_kib, s.fds
        ))
    )
}

fn rel(t0: Ns, t: Ns) -> String {
    format!("+{:.3}s", (t as f64 - t0 as f64) / 1e9)
}

fn fmt_d(d: Duration) -> String {
    super::format_duration(d)
}

/// CPU time: this process, its reaped children (daemon, servers, CLI runs), and the whole
/// machine (which includes other work on it and the kernel's packet processing).
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    self_user: f64,
    self_sys: f64,
    child_user: f64,
    child_sys: f64,
    machine_busy: f64,
    machine_total: f64,
}

impl Cpu {
    pub fn now() -> Self {
        let ru = |who| {
            // SAFETY: getrusage fills the struct we pass.
            let mut r: libc::rusage = unsafe { std::mem::zeroed() };
            unsafe { libc::getrusage(who, &mut r) };
            let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            (s(r.ru_utime), s(r.ru_stime))
        };
        let (self_user, self_sys) = ru(libc::RUSAGE_SELF);
        let (child_user, child_sys) = ru(libc::RUSAGE_CHILDREN);
        let (machine_busy, machine_total) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let f: Vec<f64> = s
                    .lines()
                    .next()?
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|x| x.parse().ok())
                    .collect();
                let total: f64 = f.iter().take(8).sum();
                let idle = f.get(3)? + f.get(4)?;
                Some(((total - idle) / 100.0, total / 100.0))
            })
            .unwrap_or_default();
        Self {
            self_user,
            self_sys,
            child_user,
            child_sys,
            machine_busy,
            machine_total,
        }
    }

    pub fn since(&self, before: &Cpu) -> Cpu {
        Cpu {
            self_user: self.self_user - before.self_user,
            self_sys: self.self_sys - before.self_sys,
            child_user: self.child_user - before.child_user,
            child_sys: self.child_sys - before.child_sys,
            machine_busy: self.machine_busy - before.machine_busy,
            machine_total: self.machine_total - before.machine_total,
        }
    }
}

impl std::fmt::Display for Cpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "soak process {:.1} s user + {:.1} s sys; its children (daemon, servers, CLI runs) {:.1} s user + {:.1} s sys; whole machine {:.1} s busy of {:.1} s (includes other work and the kernel's packet path)",
            self.self_user,
            self.self_sys,
            self.child_user,
            self.child_sys,
            self.machine_busy,
            self.machine_total
        )
    }
}
