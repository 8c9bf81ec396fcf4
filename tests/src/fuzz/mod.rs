//! The fuzzer (`cargo xtask fuzz`, and a short run in the fuzz tier): frames through the
//! real xlb XDP program with BPF_PROG_TEST_RUN, each judged against the README's rules.
//!
//! Per frame: the generator makes it ([`frames`]), the oracle says what must happen
//! ([`oracle`]), the program runs once, the counters are read ([`counters`]) and the
//! checker compares ([`check`]). Counter attribution is per frame: the global counters are
//! read after every frame; the service and backend counters right before and after every
//! frame that reaches a service. Between two such reads only frames that must not touch
//! them ran, and the program only ever adds to counters, so "no change over those frames"
//! is "no change for each of them" — the same check as reading after each frame, with
//! about half the syscalls.
//!
//! Owns its private network namespace (entered by [`topology::setup`] on the calling
//! thread); touches nothing else on the host.

pub mod check;
pub mod counters;
pub mod frames;
pub mod oracle;
pub mod rng;
pub mod topology;

use std::{
    collections::BTreeMap,
    fmt::{self, Write as _},
    time::{Duration, Instant},
};

use lb_common::Stat;

use check::{Case as Judged, Memory, Observed, action_name};
use counters::{Counters, Snapshot, backend_stats, delta, service_stats};
use frames::{Case, Generator, Origin};
use oracle::{Described, Expect, Topology};

use crate::harness::{RunResult, try_run_once};

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    pub frames: u64,
    pub seed: u64,
    /// Print a progress line to stderr every few seconds.
    pub progress: bool,
}

/// One frame the checker rejected.
#[derive(Clone, Debug)]
pub struct Failure {
    pub index: u64,
    pub case: Case,
    /// Name of the ingress interface (`--ingress` of a replay).
    pub ingress: &'static str,
    pub expected: String,
    pub problem: String,
    pub output: Option<Vec<u8>>,
}

/// Failures of one kind (expected outcome, actual outcome) and the first example.
#[derive(Clone, Debug)]
pub struct FailureClass {
    pub count: u64,
    pub first: Failure,
}

/// Totals of a run.
#[derive(Debug)]
pub struct Report {
    pub seed: u64,
    pub frames: u64,
    pub systematic: usize,
    pub elapsed: Duration,
    /// Frames per counter moved (a frame whose counters were wrong is not counted).
    pub outcomes: BTreeMap<&'static str, u64>,
    pub aborted: u64,
    pub origins: BTreeMap<Origin, u64>,
    pub failures: u64,
    pub classes: BTreeMap<String, FailureClass>,
    pub affinity_keys: usize,
    pub exact_hits: bool,
    pub hits: u64,
    pub misses: u64,
    /// Frames judged as ICMP errors sent on to a backend (they count as tx/redirect).
    pub icmp_errors: u64,
    /// Later fragments sent on to a backend.
    pub later_fragments: u64,
}

/// At most this many failure classes are kept with an example.
const MAX_CLASSES: usize = 20;
/// Non-service frames between two reads of the service counters, at most: it bounds the
/// frames a (never expected) change there could come from.
const MAX_PENDING: usize = 64;

impl Report {
    /// No failure at all.
    pub fn ok(&self) -> bool {
        self.failures == 0
    }

    fn fail(&mut self, f: Failure, class: String) {
        self.failures += 1;
        if let Some(c) = self.classes.get_mut(&class) {
            c.count += 1;
        } else if self.classes.len() < MAX_CLASSES {
            self.classes
                .insert(class, FailureClass { count: 1, first: f });
        }
    }
}

/// The service and backend counters of the topology's services, in its order.
struct Deltas {
    services: Vec<lb_common::ServiceStats>,
    backends: Vec<lb_common::BackendStats>,
}

impl Deltas {
    fn zero(top: &Topology) -> Self {
        Self {
            services: vec![Default::default(); top.services.len()],
            backends: vec![Default::default(); top.backends.len()],
        }
    }

    fn from_words(top: &Topology, svc: &[u64], be: &[u64]) -> Self {
        Self {
            services: top
                .services
                .iter()
                .map(|s| service_stats(svc, s.id))
                .collect(),
            backends: top
                .backends
                .iter()
                .map(|b| backend_stats(be, b.id))
                .collect(),
        }
    }
}

/// The fuzzer's state during a run.
struct Run {
    top: Topology,
    counters: Counters,
    mem: Memory,
    base: Snapshot,
    now: Snapshot,
    /// Non-service frames since the service counters were last read.
    pending: Vec<(u64, Case)>,
    scratch: (Vec<u64>, Vec<u64>),
    report: Report,
}

/// Runs `opts.frames` frames on the calling thread (which it moves into a private
/// network namespace) and returns the totals; never panics on a fault of the program.
pub fn run(opts: &Options) -> Report {
    let (h, top) = topology::setup();
    let prog = h.prog();
    let max_svc = top.services.iter().map(|s| s.id).max().unwrap_or(0);
    let max_be = top.backends.iter().map(|b| b.id).max().unwrap_or(0);
    let counters = Counters::open(prog, max_svc + 1, max_be + 1);
    let mut generator = Generator::new(opts.seed, &top);
    let mut run = Run::new(top, counters, opts, generator.systematic_len());
    let start = Instant::now();
    let mut last_progress = start;
    for index in 0..opts.frames {
        let case = generator.next_case();
        run.one(prog, index, case);
        if opts.progress && last_progress.elapsed() > Duration::from_secs(5) {
            last_progress = Instant::now();
            let s = start.elapsed().as_secs_f64();
            eprintln!(
                "  {} frames, {:.0}/s, {} failures",
                index + 1,
                (index + 1) as f64 / s,
                run.report.failures
            );
        }
    }
    run.settle();
    run.report.elapsed = start.elapsed();
    run.report.frames = opts.frames;
    run.report.affinity_keys = run.mem.keys();
    run.report.exact_hits = run.mem.exact();
    (run.report.hits, run.report.misses) = (run.mem.hits, run.mem.misses);
    run.report
}

impl Run {
    fn new(top: Topology, mut counters: Counters, opts: &Options, systematic: usize) -> Self {
        let mut base = Snapshot::default();
        counters.read_stats(&mut base);
        counters.read_services(&mut base);
        Self {
            mem: Memory::new(topology::AFFINITY_CAPACITY as usize / 4),
            now: base.clone(),
            base,
            counters,
            pending: Vec::new(),
            scratch: (Vec::new(), Vec::new()),
            report: Report {
                seed: opts.seed,
                frames: 0,
                systematic,
                elapsed: Duration::ZERO,
                outcomes: BTreeMap::new(),
                aborted: 0,
                origins: BTreeMap::new(),
                failures: 0,
                classes: BTreeMap::new(),
                affinity_keys: 0,
                exact_hits: true,
                hits: 0,
                misses: 0,
                icmp_errors: 0,
                later_fragments: 0,
            },
            top,
        }
    }

    fn one(&mut self, prog: &aya::programs::Xdp, index: u64, case: Case) {
        *self.report.origins.entry(case.origin).or_default() += 1;
        let expect = oracle::expect(&self.top, &case.frame);
        let balance = matches!(
            expect,
            Expect::Balance { .. } | Expect::IcmpError { .. } | Expect::Later { .. }
        );
        if balance || self.pending.len() >= MAX_PENDING {
            self.settle();
        }
        let r = match try_run_once(prog, &case.frame, case.ingress) {
            Ok(r) => r,
            Err(e) => {
                let problem = format!("BPF_PROG_TEST_RUN refused the frame: {e}");
                return self.failed(index, case, &expect, problem, None, "refused".into());
            }
        };
        if r.action == 0 {
            self.report.aborted += 1;
        }
        if !balance {
            self.pending.push((index, case.clone()));
        }
        match self.observe(balance) {
            Ok(deltas) => self.judge(index, case, &expect, &r, &deltas.0, &deltas.1),
            Err(problem) => {
                let class = format!("counters / {}", action_name(r.action));
                self.failed(index, case, &expect, problem, Some(r.output), class)
            }
        }
    }

    /// Reads the counters after a run: global deltas, and the service/backend deltas
    /// when the frame reached a service (zero otherwise, checked later by `settle`).
    fn observe(&mut self, balance: bool) -> Result<([u64; Stat::COUNT as usize], Deltas), String> {
        self.counters.read_stats(&mut self.now);
        let mut stats = [0u64; Stat::COUNT as usize];
        let (a, b) = (&self.now.stats, &self.base.stats);
        for (i, d) in stats.iter_mut().enumerate() {
            *d = a[i].checked_sub(b[i]).ok_or("a global counter went down")?;
        }
        self.base.stats = self.now.stats;
        if !balance {
            return Ok((stats, Deltas::zero(&self.top)));
        }
        self.counters.read_services(&mut self.now);
        let (svc, be) = &mut self.scratch;
        delta(&self.now.services, &self.base.services, svc)?;
        delta(&self.now.backends, &self.base.backends, be)?;
        std::mem::swap(&mut self.base.services, &mut self.now.services);
        std::mem::swap(&mut self.base.backends, &mut self.now.backends);
        Ok((stats, Deltas::from_words(&self.top, svc, be)))
    }

    fn judge(
        &mut self,
        index: u64,
        case: Case,
        expect: &Expect,
        r: &RunResult,
        stats: &[u64; Stat::COUNT as usize],
        d: &Deltas,
    ) {
        let obs = Observed {
            action: r.action,
            output: &r.output,
            stats: *stats,
            services: &d.services,
            backends: &d.backends,
        };
        let judged = Judged {
            frame: &case.frame,
            ingress: case.ingress,
            expect,
        };
        match check::judge(&self.top, &mut self.mem, &judged, &obs) {
            Ok(stat) => {
                *self.report.outcomes.entry(stat.name()).or_default() += 1;
                if matches!(stat, Stat::Tx | Stat::Redirect) {
                    match expect {
                        Expect::IcmpError { .. } => self.report.icmp_errors += 1,
                        Expect::Later { .. } => self.report.later_fragments += 1,
                        _ => {}
                    }
                }
            }
            Err(problem) => {
                let class = format!(
                    "{} / {}",
                    expect_label(&self.top, expect),
                    actual_label(stats, r.action)
                );
                self.failed(index, case, expect, problem, Some(r.output.clone()), class);
            }
        }
    }

    fn failure(
        &self,
        index: u64,
        case: Case,
        expect: &Expect,
        problem: String,
        output: Option<Vec<u8>>,
    ) -> Failure {
        Failure {
            index,
            ingress: self.top.ingress_name(case.ingress),
            case,
            expected: Described(&self.top, expect).to_string(),
            problem,
            output,
        }
    }

    fn failed(
        &mut self,
        index: u64,
        case: Case,
        expect: &Expect,
        problem: String,
        output: Option<Vec<u8>>,
        class: String,
    ) {
        let f = self.failure(index, case, expect, problem, output);
        self.report.fail(f, class);
    }

    /// Reads the service and backend counters; they must not have moved since the last
    /// read (only frames that must not touch them ran since).
    fn settle(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        self.counters.read_services(&mut self.now);
        let moved =
            self.now.services != self.base.services || self.now.backends != self.base.backends;
        std::mem::swap(&mut self.base.services, &mut self.now.services);
        std::mem::swap(&mut self.base.backends, &mut self.now.backends);
        let pending = std::mem::take(&mut self.pending);
        if moved {
            let frames: Vec<String> = pending.iter().map(|(i, _)| format!("#{i}")).collect();
            let (index, case) = pending.into_iter().next().expect("not empty");
            let problem = format!(
                "service or backend counters moved during frames that reach no service: {}",
                frames.join(" ")
            );
            let class = "service counters moved without a service".to_string();
            let f = Failure {
                index,
                ingress: self.top.ingress_name(case.ingress),
                case,
                expected: "no service or backend counter moves".into(),
                problem,
                output: None,
            };
            self.report.fail(f, class);
        }
    }
}

fn expect_label(top: &Topology, e: &Expect) -> String {
    match e {
        Expect::Pass(s) => format!("expected pass {}", s.name()),
        Expect::Drop(s) => format!("expected drop {}", s.name()),
        Expect::Balance { service, .. } => {
            format!("expected service {}", top.services[*service].name)
        }
        Expect::Later { sole, .. } => match sole {
            Some(s) => format!("expected later fragment to {}", top.services[*s].name),
            None => "expected later fragment, tracked or dropped".into(),
        },
        Expect::IcmpError { service, .. } => {
            format!(
                "expected ICMP error to service {}",
                top.services[*service].name
            )
        }
        Expect::EchoReply(_) => "expected echo reply".into(),
    }
}

fn actual_label(stats: &[u64; Stat::COUNT as usize], action: u32) -> String {
    let moved: Vec<&str> = Stat::ALL
        .iter()
        .filter(|s| stats[**s as usize] != 0)
        .map(|s| s.name())
        .collect();
    format!("got {} {}", action_name(action), moved.join("+"))
}

pub fn hex(b: &[u8]) -> String {
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

/// Parses `hex` (whitespace ignored).
pub fn unhex(s: &str) -> Result<Vec<u8>, String> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if !s.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| format!("at {i}: {e}")))
        .collect()
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        writeln!(
            f,
            "xlb fuzz: seed {}, {} frames in {:.1} s ({:.0} frames/s), the first {} systematic",
            self.seed,
            self.frames,
            secs,
            self.frames as f64 / secs.max(1e-9),
            self.systematic.min(self.frames as usize)
        )?;
        writeln!(f, "outcomes (the one counter each frame moved):")?;
        for s in Stat::ALL {
            let n = self.outcomes.get(s.name()).copied().unwrap_or(0);
            writeln!(f, "  {:<22} {n:>12}", s.name())?;
        }
        writeln!(f, "  {:<22} {:>12}", "XDP_ABORTED", self.aborted)?;
        writeln!(f, "frames by origin:")?;
        for o in Origin::ALL {
            let n = self.origins.get(&o).copied().unwrap_or(0);
            writeln!(f, "  {:<26} {n:>12}", o.name())?;
        }
        writeln!(f, "ICMP errors sent on to a backend: {}", self.icmp_errors)?;
        writeln!(
            f,
            "later fragments sent on to a backend: {}",
            self.later_fragments
        )?;
        writeln!(
            f,
            "affinity: {} hits, {} misses, {} keys (hit/miss predicted exactly: {})",
            self.hits,
            self.misses,
            self.affinity_keys,
            if self.exact_hits {
                "yes"
            } else {
                "no, past a quarter of the table"
            }
        )?;
        writeln!(f, "failures: {}", self.failures)?;
        for (i, (class, c)) in self.classes.iter().enumerate() {
            writeln!(f, "\n[{}] {} × {class}", i + 1, c.count)?;
            self.example(f, &c.first)?;
        }
        Ok(())
    }
}

impl Report {
    fn example(&self, f: &mut fmt::Formatter<'_>, x: &Failure) -> fmt::Result {
        writeln!(
            f,
            "  first: frame #{} ({}: {}), ingress {}",
            x.index,
            x.case.origin.name(),
            x.case.detail,
            x.ingress
        )?;
        writeln!(f, "  expected: {}", x.expected)?;
        writeln!(f, "  problem:  {}", x.problem)?;
        writeln!(
            f,
            "  frame ({} bytes): {}",
            x.case.frame.len(),
            hex(&x.case.frame)
        )?;
        if let Some(o) = x.output.as_ref().filter(|o| **o != x.case.frame) {
            writeln!(f, "  output ({} bytes): {}", o.len(), hex(o))?;
        }
        writeln!(
            f,
            "  replay alone:  cargo xtask fuzz --replay {} --ingress {}",
            hex(&x.case.frame),
            x.ingress
        )?;
        writeln!(
            f,
            "  replay run:    cargo xtask fuzz --seed {} --frames {}",
            self.seed,
            x.index + 1
        )
    }
}

/// Runs one frame through a fresh setup (on the calling thread, in a private namespace)
/// and describes what happened against what the oracle expects. Returns whether the
/// checker accepts it (with an empty history: a known key cannot be replayed alone).
pub fn replay(frame: &[u8], ingress: &str) -> (bool, String) {
    let (h, top) = topology::setup();
    let Some(&(ifindex, _)) = top.ingresses.iter().find(|(_, n)| *n == ingress) else {
        let names: Vec<&str> = top.ingresses.iter().map(|(_, n)| *n).collect();
        return (false, format!("no ingress {ingress:?}; one of {names:?}"));
    };
    let prog = h.prog();
    let max_svc = top.services.iter().map(|s| s.id).max().unwrap_or(0);
    let max_be = top.backends.iter().map(|b| b.id).max().unwrap_or(0);
    let mut counters = Counters::open(prog, max_svc + 1, max_be + 1);
    let (mut before, mut after) = (Snapshot::default(), Snapshot::default());
    counters.read_stats(&mut before);
    counters.read_services(&mut before);
    let expect = oracle::expect(&top, frame);
    let mut out = format!(
        "frame ({} bytes) on {ingress}\nexpected: {}\n",
        frame.len(),
        Described(&top, &expect)
    );
    let r = match try_run_once(prog, frame, ifindex) {
        Ok(r) => r,
        Err(e) => return (false, format!("{out}BPF_PROG_TEST_RUN refused it: {e}")),
    };
    counters.read_stats(&mut after);
    counters.read_services(&mut after);
    let mut stats = [0u64; Stat::COUNT as usize];
    for (i, d) in stats.iter_mut().enumerate() {
        *d = after.stats[i].wrapping_sub(before.stats[i]);
    }
    let (mut svc, mut be) = (Vec::new(), Vec::new());
    let counted = delta(&after.services, &before.services, &mut svc)
        .and_then(|()| delta(&after.backends, &before.backends, &mut be));
    let d = Deltas::from_words(&top, &svc, &be);
    let _ = writeln!(out, "{}", actual_label(&stats, r.action));
    describe_counters(&top, &d, &mut out);
    if r.output != frame {
        let _ = writeln!(out, "output ({} bytes): {}", r.output.len(), hex(&r.output));
    }
    let obs = Observed {
        action: r.action,
        output: &r.output,
        stats,
        services: &d.services,
        backends: &d.backends,
    };
    let case = Judged {
        frame,
        ingress: ifindex,
        expect: &expect,
    };
    let verdict =
        counted.and_then(|()| check::judge(&top, &mut Memory::new(usize::MAX), &case, &obs));
    match verdict {
        Ok(_) => (true, format!("{out}checker: ok")),
        Err(problem) => (false, format!("{out}checker: FAILED: {problem}")),
    }
}

fn describe_counters(top: &Topology, d: &Deltas, out: &mut String) {
    for (s, v) in top.services.iter().zip(&d.services) {
        if *v != Default::default() {
            let _ = writeln!(out, "service {}: {v:?}", s.name);
        }
    }
    for (b, v) in top.backends.iter().zip(&d.backends) {
        if *v != Default::default() {
            let _ = writeln!(
                out,
                "backend {} of {}: {v:?}",
                b.address, top.services[b.service].name
            );
        }
    }
}
