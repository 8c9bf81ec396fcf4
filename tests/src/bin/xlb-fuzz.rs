//! `cargo xtask fuzz`: frames through the real xlb XDP program (BPF_PROG_TEST_RUN), each
//! checked against the README's rules; prints frames/s and totals per outcome. Exit 0 when
//! every frame passed, 1 on any failure, 2 on bad arguments.

use clap::Parser;
use xlb_tests::{fuzz, require_root};

#[derive(Parser)]
#[command(
    name = "xlb-fuzz",
    about = "Fuzz the xlb XDP program through BPF_PROG_TEST_RUN"
)]
struct Args {
    /// Frames to run (the systematic pass over the fixtures comes first).
    #[arg(long, default_value_t = 10_000_000)]
    frames: u64,
    /// Seed of the random part; a fresh one (printed) when absent.
    #[arg(long)]
    seed: Option<u64>,
    /// Run this one frame (hex) on a fresh setup and describe what happened.
    #[arg(long, value_name = "HEX")]
    replay: Option<String>,
    /// Ingress interface of the replayed frame: lo, xlbf0 (in the redirect map) or
    /// xlbf2 (not in it).
    #[arg(long, default_value = "lo", requires = "replay")]
    ingress: String,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    require_root();
    if let Some(hex) = &args.replay {
        let frame = match fuzz::unhex(hex) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("xlb-fuzz: --replay: {e}");
                return std::process::ExitCode::from(2);
            }
        };
        let (ok, text) = fuzz::replay(&frame, &args.ingress);
        println!("{text}");
        return exit(ok);
    }
    let seed = args.seed.unwrap_or_else(fresh_seed);
    println!("xlb fuzz: {} frames, seed {seed}", args.frames);
    let report = fuzz::run(&fuzz::Options {
        frames: args.frames,
        seed,
        progress: true,
    });
    println!("{report}");
    exit(report.ok())
}

fn exit(ok: bool) -> std::process::ExitCode {
    if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

/// A seed from the clock and the process id: different for every run.
fn fresh_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (u64::from(std::process::id()) << 32)
}
