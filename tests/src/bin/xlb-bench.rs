//! `cargo xtask bench [PART]`: benchmarks of xlb, each against a baseline measured in the
//! same run. Results are printed as a table and written to target/bench/<part>.json.

use xlb_tests::{bench, require_root};

const PARTS: &str = "micro, maglev, control, e2e, all";

fn main() {
    let part = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    require_root();
    match part.as_str() {
        "micro" => bench::micro::run(),
        "maglev" => bench::maglev::run(),
        "control" => bench::control::run(),
        "all" => {
            bench::micro::run();
            bench::maglev::run();
            bench::control::run();
            bench::e2e::run();
        }
        "e2e" => bench::e2e::run(),
        other => {
            eprintln!("xlb-bench: unknown part {other:?}; parts: {PARTS}");
            std::process::exit(2);
        }
    }
}
