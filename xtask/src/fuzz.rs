//! `cargo xtask fuzz`: runs the `xlb-fuzz` binary of the tests crate (root): frames
//! through the real XDP program, each checked against the README's rules.
use crate::util;
use anyhow::{Context as _, Result};

#[derive(clap::Args)]
pub struct Args {
    /// Frames to run (a systematic pass over the packet fixtures comes first).
    #[arg(long, value_name = "N", default_value_t = 10_000_000)]
    frames: u64,
    /// Seed of the random part (printed with every failure); a fresh one when absent.
    #[arg(long, value_name = "S")]
    seed: Option<u64>,
    /// Run this one frame (hex, as a failure prints it) on a fresh setup and describe it.
    #[arg(long, value_name = "HEX")]
    replay: Option<String>,
    /// Ingress of the replayed frame: lo, xlbf0 (in the redirect map), xlbf2 (not in it).
    #[arg(long, value_name = "IFACE", requires = "replay")]
    ingress: Option<String>,
}

pub fn run(args: &Args) -> Result<()> {
    util::require_root("fuzz")?;
    let mut cmd = util::cargo();
    cmd.args([
        "run",
        "--release",
        "-p",
        "xlb-tests",
        "--bin",
        "xlb-fuzz",
        "--",
    ]);
    match &args.replay {
        Some(hex) => {
            cmd.args(["--replay", hex]);
            if let Some(i) = &args.ingress {
                cmd.args(["--ingress", i]);
            }
        }
        None => {
            cmd.args(["--frames", &args.frames.to_string()]);
            if let Some(s) = args.seed {
                cmd.args(["--seed", &s.to_string()]);
            }
        }
    }
    util::run(&mut cmd).context(
        "the fuzzer rejected frames (each is printed above with its replay commands), \
         or it could not run (`cargo xtask setup` installs what the XDP build needs)",
    )
}
