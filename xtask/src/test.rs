//! `cargo xtask test`: runs every test tier that exists and fails loudly on anything that
//! failed, ran no tests, or could not run.
//!
//! 1. unit (no root): lb-common (with `user`), lb-userspace, xtask. lb-ebpf is never built
//!    as a host test binary, which is why this does not use `--workspace`.
//! 2. packet (root): `tests/tests/packet.rs`, BPF_PROG_TEST_RUN fixtures.
//! 3. fuzz (root): `tests/tests/fuzz.rs`, a short fixed-seed run of `cargo xtask fuzz`,
//!    and the unit tests of the tests crate itself (its oracle, generator, builders).
//! 4. e2e (root): `tests/tests/e2e/`, network namespaces and the real daemon.
//! 5. soak (root): `tests/tests/soak.rs`, 30 s of the lab soak with every operation (the
//!    long one is `cargo xtask soak`), and its checks proven on made-up data.
//! 6. package (root): `tests/tests/package.rs`, the Debian package built by
//!    `cargo xtask package` (and a newer build of it) installed, upgraded, removed and
//!    purged on this machine, with a daemon started from the installed binary.
//!
//! Unit tests that need root are `#[ignore = "needs root: …"]` in lb-common and
//! lb-userspace (the unit tier may run without root); the packet tier runs them with
//! `--ignored`, and a test below keeps every other `#[ignore]` out of the tree, so none
//! is silently skipped.
//!
//! Root tiers run with `--test-threads=1` by default: they share bpffs and network state.
use crate::{package, util};
use anyhow::{Result, bail};
use std::fmt;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TierArg {
    Unit,
    Packet,
    Fuzz,
    E2e,
    Soak,
    Package,
    All,
}

#[derive(clap::Args)]
pub struct Args {
    /// Which tier(s) to run.
    #[arg(long, value_enum, default_value = "all")]
    tier: TierArg,
    /// Test threads for the root tiers (packet, e2e); they share bpffs, so 1 by default.
    #[arg(long, value_name = "N")]
    test_threads: Option<usize>,
    /// Passed to every `cargo test`, e.g. `-- maglev` (a filter) or `-- -- --nocapture`
    /// (arguments after a second `--` go to the test binaries).
    #[arg(last = true, value_name = "CARGO_TEST_ARGS")]
    extra: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tier {
    Unit,
    Packet,
    Fuzz,
    E2e,
    Soak,
    Package,
}

impl Tier {
    const ALL: [Tier; 6] = [
        Tier::Unit,
        Tier::Packet,
        Tier::Fuzz,
        Tier::E2e,
        Tier::Soak,
        Tier::Package,
    ];

    fn name(self) -> &'static str {
        match self {
            Tier::Unit => "unit",
            Tier::Packet => "packet",
            Tier::Fuzz => "fuzz",
            Tier::E2e => "e2e",
            Tier::Soak => "soak",
            Tier::Package => "package",
        }
    }

    fn number(self) -> u8 {
        match self {
            Tier::Unit => 1,
            Tier::Packet => 2,
            Tier::Fuzz => 3,
            Tier::E2e => 4,
            Tier::Soak => 5,
            Tier::Package => 6,
        }
    }

    /// The integration-test target in the xlb-tests crate, for root tiers.
    fn test_target(self) -> Option<&'static str> {
        match self {
            Tier::Unit => None,
            Tier::Packet => Some("packet"),
            Tier::Fuzz => Some("fuzz"),
            Tier::E2e => Some("e2e"),
            Tier::Soak => Some("soak"),
            Tier::Package => Some("package"),
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.number(), self.name())
    }
}

/// Totals of the libtest `test result:` lines of one tier.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    summaries: usize,
    passed: u64,
    failed: u64,
    ignored: u64,
    filtered_out: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum Status {
    Ok,
    /// Not a failure unless the tier was asked for by name.
    NotPresent,
    /// Every test was filtered out by the caller's filter.
    FilteredOut,
    Failed(String),
}

struct Outcome {
    tier: Tier,
    counts: Option<Counts>,
    status: Status,
}

pub fn run(args: &Args) -> Result<()> {
    let tiers: Vec<Tier> = match args.tier {
        TierArg::Unit => vec![Tier::Unit],
        TierArg::Packet => vec![Tier::Packet],
        TierArg::Fuzz => vec![Tier::Fuzz],
        TierArg::E2e => vec![Tier::E2e],
        TierArg::Soak => vec![Tier::Soak],
        TierArg::Package => vec![Tier::Package],
        TierArg::All => Tier::ALL.to_vec(),
    };
    let explicit = args.tier != TierArg::All;
    let (cargo_extra, libtest_extra) = split_extra(&args.extra);

    let mut outcomes = Vec::new();
    for tier in tiers {
        println!("\n=== tier {tier} ===");
        let outcome = util::phase("test", &format!("tier {tier}"), || {
            run_tier(tier, args.test_threads, cargo_extra, libtest_extra)
        })?;
        match &outcome.status {
            Status::NotPresent => println!("tier {tier}: not present yet"),
            Status::Failed(why) => eprintln!("tier {tier}: FAILED: {why}"),
            _ => {}
        }
        outcomes.push(outcome);
    }

    print_summary(&outcomes);
    let passed: u64 = outcomes
        .iter()
        .filter_map(|o| o.counts)
        .map(|c| c.passed)
        .sum();
    let failed: u64 = outcomes
        .iter()
        .filter_map(|o| o.counts)
        .map(|c| c.failed)
        .sum();
    println!("{passed} passed, {failed} failed");

    let mut problems = Vec::new();
    for o in &outcomes {
        match &o.status {
            Status::Failed(why) => problems.push(format!("tier {} failed: {why}", o.tier)),
            Status::NotPresent if explicit => problems.push(format!(
                "tier {} was asked for but tests/tests/{}.rs does not exist yet",
                o.tier,
                o.tier.test_target().unwrap_or_default()
            )),
            _ => {}
        }
    }
    if problems.is_empty() && passed == 0 {
        problems.push("no test ran at all".to_string());
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(())
}

fn run_tier(
    tier: Tier,
    test_threads: Option<usize>,
    cargo_extra: &[String],
    libtest_extra: &[String],
) -> Result<Outcome> {
    let mut commands = Vec::new();
    match tier.test_target() {
        None => {
            let mut cmd = util::cargo();
            cmd.args(["test", "-p", "lb-common", "--features", "lb-common/user"])
                .args(["-p", "lb-userspace", "-p", "xtask"]);
            commands.push((cmd, Vec::new()));
        }
        Some(target) => {
            let Some(file) = root_tier_file(target) else {
                return Ok(Outcome {
                    tier,
                    counts: None,
                    status: Status::NotPresent,
                });
            };
            if !util::is_root() {
                // Present but unrunnable is a failure, never a silent skip.
                return Ok(Outcome {
                    tier,
                    counts: None,
                    status: Status::Failed(format!(
                        "{} exists but needs root; run `sudo -E env PATH=\"$PATH\" cargo xtask test`",
                        file.display()
                    )),
                });
            }
            let threads = if libtest_extra
                .iter()
                .any(|a| a.starts_with("--test-threads"))
            {
                Vec::new()
            } else {
                vec![format!("--test-threads={}", test_threads.unwrap_or(1))]
            };
            commands.push((root_tier_command(tier, target)?, threads.clone()));
            if tier == Tier::Packet {
                // The unit tests that need root (namespaces, veths), `#[ignore]`d for
                // the unit tier, which may run without root.
                let mut cmd = util::cargo();
                cmd.args(["test", "-p", "lb-common", "--features", "lb-common/user"])
                    .args(["-p", "lb-userspace", "--lib"]);
                let mut libtest = threads;
                libtest.push("--ignored".into());
                commands.push((cmd, libtest));
            }
        }
    }
    let mut success = true;
    let mut output = String::new();
    for (mut cmd, mut libtest) in commands {
        cmd.arg("--no-fail-fast").args(cargo_extra);
        libtest.extend(libtest_extra.iter().cloned());
        if !libtest.is_empty() {
            cmd.arg("--").args(&libtest);
        }
        let (ok, out) = util::run_tee(&mut cmd)?;
        success &= ok;
        output.push_str(&out);
    }
    let counts = parse_counts(&output);
    let status = judge(success, &counts);
    Ok(Outcome {
        tier,
        counts: Some(counts),
        status,
    })
}

/// tests/tests/NAME.rs or tests/tests/NAME/main.rs, if present.
fn root_tier_file(target: &str) -> Option<std::path::PathBuf> {
    let dir = util::workspace_root().join("tests/tests");
    [
        dir.join(format!("{target}.rs")),
        dir.join(target).join("main.rs"),
    ]
    .into_iter()
    .find(|f| f.is_file())
}

/// `cargo test` of a root tier's target, after building what it runs: the release `xlb`
/// (the lab runs the real binary; never a stale one), and for the package tier the
/// package and a newer build of it.
fn root_tier_command(tier: Tier, target: &str) -> Result<std::process::Command> {
    util::run(util::cargo().args(["build", "--release", "-p", "lb-userspace"]))?;
    let mut cmd = util::cargo();
    cmd.arg("test");
    cmd.env("XLB_BIN", util::target_dir().join("release").join("xlb"));
    if tier == Tier::Package {
        for (var, suffix) in [("XLB_DEB", ""), ("XLB_DEB_NEWER", "+test1")] {
            let deb = package::build(&package::Args {
                version_suffix: suffix.into(),
                no_build: true,
            })?;
            cmd.env(var, deb);
        }
    }
    cmd.args(["--release", "-p", "xlb-tests", "--test", target]);
    if tier == Tier::Fuzz {
        // The tests crate's own unit tests (oracle, generator, frame builders).
        cmd.arg("--lib");
    }
    Ok(cmd)
}

fn judge(success: bool, counts: &Counts) -> Status {
    if counts.failed > 0 {
        Status::Failed(format!("{} test(s) failed", counts.failed))
    } else if !success && counts.summaries == 0 {
        Status::Failed(
            "cargo test failed before any test ran (build error? see above; \
             `cargo xtask setup` installs what the XDP build needs)"
                .to_string(),
        )
    } else if !success {
        Status::Failed("cargo test exited with an error (see above)".to_string())
    } else if counts.passed == 0 && counts.filtered_out > 0 {
        Status::FilteredOut
    } else if counts.passed == 0 {
        Status::Failed("ran 0 tests".to_string())
    } else {
        Status::Ok
    }
}

/// Splits the extra arguments at their own `--`: cargo's part, then the test binaries' part.
fn split_extra(extra: &[String]) -> (&[String], &[String]) {
    match extra.iter().position(|a| a == "--") {
        Some(i) => (&extra[..i], &extra[i + 1..]),
        None => (extra, &[]),
    }
}

/// Sums every libtest summary line, e.g.
/// `test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 2 filtered out; finished in 0.01s`.
fn parse_counts(output: &str) -> Counts {
    let mut counts = Counts::default();
    for line in output.lines() {
        let line = strip_ansi(line);
        let Some(rest) = line.trim().strip_prefix("test result:") else {
            continue;
        };
        // "ok. 3 passed; ..." or "FAILED. 1 passed; ..."
        let Some((_, fields)) = rest.split_once('.') else {
            continue;
        };
        counts.summaries += 1;
        for field in fields.split(';') {
            let mut words = field.split_whitespace();
            let Some(n) = words.next().and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            match words.collect::<Vec<_>>().join(" ").as_str() {
                "passed" => counts.passed += n,
                "failed" => counts.failed += n,
                "ignored" => counts.ignored += n,
                "filtered out" => counts.filtered_out += n,
                _ => {}
            }
        }
    }
    counts
}

/// Removes ANSI colour sequences (ESC [ ... letter), in case colour was forced.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn print_summary(outcomes: &[Outcome]) {
    println!("\n=== summary ===");
    println!(
        "{:<10} {:>7} {:>7} {:>8}  status",
        "tier", "passed", "failed", "ignored"
    );
    for o in outcomes {
        let (passed, failed, ignored) = match o.counts {
            Some(c) if c.summaries > 0 => (
                c.passed.to_string(),
                c.failed.to_string(),
                c.ignored.to_string(),
            ),
            _ => ("-".into(), "-".into(), "-".into()),
        };
        let status = match &o.status {
            Status::Ok => "ok".to_string(),
            Status::NotPresent => format!(
                "not present yet (tests/tests/{}.rs)",
                o.tier.test_target().unwrap_or_default()
            ),
            Status::FilteredOut => "all filtered out".to_string(),
            Status::Failed(why) => format!("FAILED: {why}"),
        };
        println!(
            "{:<10} {passed:>7} {failed:>7} {ignored:>8}  {status}",
            o.tier.to_string()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "\
running 3 tests
test a ... ok
test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 2 filtered out; finished in 0.01s

running 0 tests

test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s

test result: FAILED. 4 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.50s
";

    #[test]
    fn sums_every_summary_line() {
        let c = parse_counts(OUTPUT);
        assert_eq!(
            c,
            Counts {
                summaries: 3,
                passed: 7,
                failed: 2,
                ignored: 1,
                filtered_out: 2
            }
        );
    }

    #[test]
    fn ignores_colour_and_other_lines() {
        let c = parse_counts(
            "\u{1b}[1mtest result:\u{1b}[0m \u{1b}[32mok\u{1b}[0m. 5 passed; 0 failed; 0 ignored\nnot a result: 9 passed\n",
        );
        assert_eq!((c.summaries, c.passed, c.failed), (1, 5, 0));
    }

    #[test]
    fn judging() {
        let ok = Counts {
            summaries: 1,
            passed: 3,
            ..Default::default()
        };
        assert_eq!(judge(true, &ok), Status::Ok);
        assert!(matches!(judge(false, &ok), Status::Failed(_)));
        assert!(matches!(
            judge(
                true,
                &Counts {
                    summaries: 2,
                    ..Default::default()
                }
            ),
            Status::Failed(_)
        ));
        assert!(matches!(
            judge(false, &Counts::default()),
            Status::Failed(_)
        ));
        let failed = Counts {
            summaries: 1,
            passed: 3,
            failed: 1,
            ..Default::default()
        };
        assert!(matches!(judge(false, &failed), Status::Failed(_)));
        let filtered = Counts {
            summaries: 1,
            filtered_out: 4,
            ..Default::default()
        };
        assert_eq!(judge(true, &filtered), Status::FilteredOut);
    }

    /// Nothing is silently skipped: every ignored test in the workspace is a root-only
    /// unit test of lb-common or lb-userspace (`#[ignore = "needs root…"]`), which the
    /// packet tier runs with `--ignored`. Benchmarks belong to `cargo xtask bench`.
    #[test]
    fn every_ignored_test_runs_in_a_root_tier() {
        let needle = concat!("#[", "ignore");
        let allowed = concat!("#[", "ignore = \"needs root");
        let root = util::workspace_root();
        let mut found = Vec::new();
        for dir in ["lb-common", "lb-ebpf", "lb-userspace", "tests", "xtask"] {
            rust_files(&root.join(dir), &mut found);
        }
        assert!(found.len() > 50, "found only {} files", found.len());
        let mut root_only = 0;
        for file in found {
            let text = std::fs::read_to_string(&file).expect("read");
            let rel = file.strip_prefix(&root).expect("in the workspace");
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if !line.starts_with(needle) {
                    continue;
                }
                let ran_by_packet_tier =
                    rel.starts_with("lb-common/src") || rel.starts_with("lb-userspace/src");
                assert!(
                    line.starts_with(allowed) && ran_by_packet_tier,
                    "{}:{}: `{line}` would never run: make it a root-only unit test of \
                     lb-common/lb-userspace (`{allowed}: …\"]`, run by the packet tier), \
                     a test of a root tier, or a benchmark",
                    rel.display(),
                    n + 1
                );
                root_only += 1;
            }
        }
        assert!(root_only >= 1, "the neighbour test is root-only");
    }

    fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() && !path.ends_with("target") {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn extra_args_split_at_double_dash() {
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let extra = v(&["maglev", "--", "--nocapture"]);
        let (cargo, libtest) = split_extra(&extra);
        assert_eq!(
            (cargo, libtest),
            (&v(&["maglev"])[..], &v(&["--nocapture"])[..])
        );
        let extra = v(&["maglev"]);
        assert_eq!(split_extra(&extra).1.len(), 0);
    }
}
