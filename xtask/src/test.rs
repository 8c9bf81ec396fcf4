//! `cargo xtask test`: runs every test tier that exists and fails loudly on anything that
//! failed, ran no tests, or could not run.
//!
//! 1. unit (no root): lb-common (with `user`), lb-userspace, xtask. lb-ebpf is never built
//!    as a host test binary, which is why this does not use `--workspace`.
//! 2. packet (root): `tests/tests/packet.rs`, BPF_PROG_TEST_RUN fixtures.
//! 3. fuzz (root): `tests/tests/fuzz.rs`, a short fixed-seed run of `cargo xtask fuzz`,
//!    and the unit tests of the tests crate itself (its oracle, generator, builders).
//! 4. e2e (root): `tests/tests/e2e/`, network namespaces and the real daemon.
//!
//! Root tiers run with `--test-threads=1` by default: they share bpffs and network state.
use crate::util;
use anyhow::{Result, bail};
use std::fmt;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TierArg {
    Unit,
    Packet,
    Fuzz,
    E2e,
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
}

impl Tier {
    const ALL: [Tier; 4] = [Tier::Unit, Tier::Packet, Tier::Fuzz, Tier::E2e];

    fn name(self) -> &'static str {
        match self {
            Tier::Unit => "unit",
            Tier::Packet => "packet",
            Tier::Fuzz => "fuzz",
            Tier::E2e => "e2e",
        }
    }

    fn number(self) -> u8 {
        match self {
            Tier::Unit => 1,
            Tier::Packet => 2,
            Tier::Fuzz => 3,
            Tier::E2e => 4,
        }
    }

    /// The integration-test target in the xlb-tests crate, for root tiers.
    fn test_target(self) -> Option<&'static str> {
        match self {
            Tier::Unit => None,
            Tier::Packet => Some("packet"),
            Tier::Fuzz => Some("fuzz"),
            Tier::E2e => Some("e2e"),
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
        TierArg::All => Tier::ALL.to_vec(),
    };
    let explicit = args.tier != TierArg::All;
    let (cargo_extra, libtest_extra) = split_extra(&args.extra);

    let mut outcomes = Vec::new();
    for tier in tiers {
        println!("\n=== tier {tier} ===");
        let outcome = run_tier(tier, args.test_threads, cargo_extra, libtest_extra)?;
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
    let mut cmd = util::cargo();
    cmd.arg("test");
    let mut libtest: Vec<String> = Vec::new();
    match tier.test_target() {
        None => {
            cmd.args(["-p", "lb-common", "--features", "lb-common/user"])
                .args(["-p", "lb-userspace", "-p", "xtask"]);
        }
        Some(target) => {
            let dir = util::workspace_root().join("tests/tests");
            // A target is tests/tests/NAME.rs or tests/tests/NAME/main.rs.
            let file = [
                dir.join(format!("{target}.rs")),
                dir.join(target).join("main.rs"),
            ]
            .into_iter()
            .find(|f| f.is_file())
            .unwrap_or_else(|| dir.join(format!("{target}.rs")));
            if !file.is_file() {
                return Ok(Outcome {
                    tier,
                    counts: None,
                    status: Status::NotPresent,
                });
            }
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
            // The lab runs the real `xlb` binary: build it (release) first and point the
            // tests at it, so they never run a stale one.
            util::run(util::cargo().args(["build", "--release", "-p", "lb-userspace"]))?;
            cmd.env("XLB_BIN", util::target_dir().join("release").join("xlb"));
            cmd.args(["--release", "-p", "xlb-tests", "--test", target]);
            if tier == Tier::Fuzz {
                // The tests crate's own unit tests (oracle, generator, frame builders).
                cmd.arg("--lib");
            }
            if !libtest_extra
                .iter()
                .any(|a| a.starts_with("--test-threads"))
            {
                libtest.push(format!("--test-threads={}", test_threads.unwrap_or(1)));
            }
        }
    }
    cmd.arg("--no-fail-fast").args(cargo_extra);
    libtest.extend(libtest_extra.iter().cloned());
    if !libtest.is_empty() {
        cmd.arg("--").args(&libtest);
    }

    let (success, output) = util::run_tee(&mut cmd)?;
    let counts = parse_counts(&output);
    let status = judge(success, &counts);
    Ok(Outcome {
        tier,
        counts: Some(counts),
        status,
    })
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
