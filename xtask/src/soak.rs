//! `cargo xtask soak`: builds `xlb` and the lab's binaries (release), then runs the
//! `xlb-soak` binary of the tests crate as root. Its arguments are passed on unchanged;
//! they are declared here too so `cargo xtask soak --help` lists them.
use crate::util;
use anyhow::{Context as _, Result};

#[derive(clap::Args)]
pub struct Args {
    /// How long operations are applied (e.g. 30s, 5m).
    #[arg(long, default_value = "5m")]
    duration: String,
    /// Seed of the operation sequence and the clients' sleep patterns (random if absent).
    #[arg(long)]
    seed: Option<u64>,
    /// Operations, comma-separated: add,remove,drain,undrain,weight,server,neigh,kill (or all).
    #[arg(long, default_value = "all")]
    ops: String,
    /// Number of clients (source addresses).
    #[arg(long, default_value = "2000")]
    clients: String,
    /// Period of SIGKILL + restart of the daemon (the first comes at half of it).
    #[arg(long, default_value = "30s")]
    kill_every: String,
    /// Each client sends one request per this interval.
    #[arg(long, default_value = "100ms")]
    interval: String,
}

pub fn run(args: &Args) -> Result<()> {
    util::require_root("soak")?;
    util::run(util::cargo().args(["build", "--release", "-p", "lb-userspace"]))
        .context("building xlb")?;
    util::run(util::cargo().args([
        "build",
        "--release",
        "-p",
        "xlb-tests",
        "--bin",
        "xlb-soak",
        "--bin",
        "xlb-testsrv",
    ]))
    .context("building the soak")?;
    let release = util::target_dir().join("release");
    let mut cmd = std::process::Command::new(release.join("xlb-soak"));
    cmd.env("XLB_BIN", release.join("xlb"))
        .env("XLB_TESTSRV", release.join("xlb-testsrv"))
        .args(["--duration", &args.duration, "--ops", &args.ops])
        .args(["--clients", &args.clients, "--kill-every", &args.kill_every])
        .args(["--interval", &args.interval]);
    if let Some(seed) = args.seed {
        cmd.args(["--seed", &seed.to_string()]);
    }
    util::run(&mut cmd).context("the soak failed (its report is above)")
}
