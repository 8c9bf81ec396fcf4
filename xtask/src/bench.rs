//! `cargo xtask bench [PART]`: runs the `xlb-bench` binary of the tests crate (root).
use crate::util;
use anyhow::{Context as _, Result, bail};

#[derive(Clone, Copy, clap::ValueEnum)]
enum Part {
    All,
    Micro,
    E2e,
    Maglev,
    Control,
    /// Established clients against a flood of spoofed sources (issue 11).
    Flood,
    /// The daemon's CPU over a minute with the default affinity capacity filled.
    Daemon,
    /// The daemon's CPU use while nothing changes (not part of `all`).
    Idle,
}

#[derive(clap::Args)]
pub struct Args {
    /// Which benchmark to run.
    #[arg(value_enum, default_value = "all")]
    part: Part,
    /// Extra arguments for xlb-bench (after `--`).
    #[arg(last = true)]
    extra: Vec<String>,
}

pub fn run(args: &Args) -> Result<()> {
    util::require_root("bench")?;
    if !bench_present() {
        bail!(
            "the benchmark binary xlb-bench is not in the tests crate yet \
             (expected tests/src/bin/xlb-bench.rs or a [[bin]] named xlb-bench in tests/Cargo.toml)"
        );
    }
    let part = clap::ValueEnum::to_possible_value(&args.part)
        .expect("no skipped variants")
        .get_name()
        .to_string();
    util::phase(
        "bench",
        &format!("bench {part} (a line per part and round below)"),
        || {
            util::run(
                util::cargo()
                    .args([
                        "run",
                        "--release",
                        "-p",
                        "xlb-tests",
                        "--bin",
                        "xlb-bench",
                        "--",
                    ])
                    .arg(&part)
                    .args(&args.extra),
            )
        },
    )
    .with_context(|| {
        format!("benchmark `{part}` failed; run `cargo xtask setup` if the build itself failed")
    })
}

fn bench_present() -> bool {
    let tests = util::workspace_root().join("tests");
    tests.join("src/bin/xlb-bench.rs").is_file()
        || tests.join("src/bin/xlb-bench/main.rs").is_file()
        || std::fs::read_to_string(tests.join("Cargo.toml"))
            .is_ok_and(|manifest| manifest.contains("\"xlb-bench\""))
}
