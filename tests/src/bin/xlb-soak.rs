//! `cargo xtask soak`: the long soak of xlb in the lab (root). See `xlb_tests::soak`.
//!
//! Exit 0 when every check held, 1 when one failed (the report lists the violations), 2 on
//! bad arguments.

use std::time::Duration;

use clap::Parser;
use xlb_tests::soak::{self, OpKind, Options};

#[derive(Parser)]
#[command(
    name = "xlb-soak",
    about = "Soak xlb: 2,000 UDP clients, a random operation every 100 ms, SIGKILL + restart every 30 s"
)]
struct Args {
    /// How long operations are applied (e.g. 30s, 5m).
    #[arg(long, default_value = "5m", value_parser = duration)]
    duration: Duration,
    /// Seed of the operation sequence and the clients' sleep patterns (random if absent).
    #[arg(long)]
    seed: Option<u64>,
    /// Operations to apply, comma-separated: add,remove,drain,undrain,weight,server,neigh,kill (or all).
    #[arg(long, default_value = "all")]
    ops: String,
    /// Number of clients (source addresses).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(2..=60000))]
    clients: u64,
    /// Period of SIGKILL + restart of the daemon (the first comes at half of it).
    #[arg(long, default_value = "30s", value_parser = duration)]
    kill_every: Duration,
    /// Each client sends one request per this interval.
    #[arg(long, default_value = "100ms", value_parser = duration)]
    interval: Duration,
}

fn duration(s: &str) -> Result<Duration, String> {
    soak::parse_duration(s)
}

fn main() {
    let a = Args::parse();
    let ops = OpKind::parse_list(&a.ops).unwrap_or_else(|e| {
        eprintln!("xlb-soak: --ops: {e}");
        std::process::exit(2);
    });
    let opts = Options {
        duration: a.duration,
        seed: a.seed.unwrap_or_else(soak::random_seed),
        ops,
        clients: a.clients as usize,
        kill_every: a.kill_every,
        interval: a.interval,
        ..Options::default()
    };
    println!(
        "xlb soak, seed {} (replay: {})",
        opts.seed,
        soak::replay_command(&opts)
    );
    let report = soak::run(&opts);
    println!("{}", report.text);
    std::process::exit(i32::from(report.failed));
}
