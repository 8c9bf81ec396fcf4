//! `cargo xtask bench [PART]`: benchmarks of xlb, each against a baseline measured in the
//! same run. Results are printed as a table and written to target/bench/<part>.json.

use xlb_tests::{bench, require_root};

const PARTS: &str = "micro, maglev, control, e2e, flood, daemon, idle, all";

/// Runs a part on a thread of its own: parts move their thread into private network
/// namespaces and pin it to a CPU, and the next part must start from neither. A line
/// before and after, with the time it took, shows progress through `all`.
fn part(name: &str, run: fn()) {
    println!("== bench {name}: started");
    let started = std::time::Instant::now();
    if let Err(e) = std::thread::spawn(run).join() {
        println!(
            "== bench {name}: failed after {:.1} s",
            started.elapsed().as_secs_f64()
        );
        std::panic::resume_unwind(e);
    }
    println!(
        "== bench {name}: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

fn main() {
    let which = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    require_root();
    match which.as_str() {
        "micro" => part("micro", bench::micro::run),
        "maglev" => part("maglev", bench::maglev::run),
        "control" => part("control", bench::control::run),
        "e2e" => part("e2e", bench::e2e::run),
        "flood" => part("flood", bench::flood::run),
        "daemon" => part("daemon", bench::daemon::run),
        "idle" => part("idle", bench::idle::run),
        "all" => {
            part("micro", bench::micro::run);
            part("maglev", bench::maglev::run);
            part("control", bench::control::run);
            part("e2e", bench::e2e::run);
            part("flood", bench::flood::run);
            part("daemon", bench::daemon::run);
        }
        other => {
            eprintln!("xlb-bench: unknown part {other:?}; parts: {PARTS}");
            std::process::exit(2);
        }
    }
}
