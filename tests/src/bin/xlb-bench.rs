//! `cargo xtask bench [PART]`: benchmarks of xlb, each against a baseline measured in the
//! same run. Results are printed as a table and written to target/bench/<part>.json.

use xlb_tests::{bench, require_root};

const PARTS: &str = "micro, maglev, control, e2e, idle, all";

/// Runs a part on a thread of its own: parts move their thread into private network
/// namespaces and pin it to a CPU, and the next part must start from neither.
fn part(run: fn()) {
    if let Err(e) = std::thread::spawn(run).join() {
        std::panic::resume_unwind(e);
    }
}

fn main() {
    let which = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    require_root();
    match which.as_str() {
        "micro" => part(bench::micro::run),
        "maglev" => part(bench::maglev::run),
        "control" => part(bench::control::run),
        "e2e" => part(bench::e2e::run),
        "idle" => part(bench::idle::run),
        "all" => {
            part(bench::micro::run);
            part(bench::maglev::run);
            part(bench::control::run);
            part(bench::e2e::run);
        }
        other => {
            eprintln!("xlb-bench: unknown part {other:?}; parts: {PARTS}");
            std::process::exit(2);
        }
    }
}
