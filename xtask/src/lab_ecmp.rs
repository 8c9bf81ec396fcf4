//! `cargo xtask lab-ecmp`: sets the machine up and builds if needed, then runs the
//! narrated ECMP lab (tests/src/bin/xlb-lab-ecmp.rs) as root.
use crate::{setup, util};
use anyhow::{Context as _, Result};

pub fn run() -> Result<()> {
    util::require_root("lab-ecmp")?;
    // BIRD comes from setup (Debian's bird2); idempotent and fast when all is there.
    setup::run(&setup::Args::default()).context("preparing the machine for the ECMP lab")?;
    util::run(util::cargo().args(["build", "--release", "-p", "lb-userspace"]))
        .context("building xlb")?;
    util::run(util::cargo().args([
        "build",
        "--release",
        "-p",
        "xlb-tests",
        "--bin",
        "xlb-lab-ecmp",
        "--bin",
        "xlb-testsrv",
    ]))
    .context("building the ECMP lab")?;
    let release = util::target_dir().join("release");
    util::run(
        std::process::Command::new(release.join("xlb-lab-ecmp"))
            .env("XLB_BIN", release.join("xlb"))
            .env("XLB_TESTSRV", release.join("xlb-testsrv")),
    )
    .context("the ECMP lab failed (see its output above)")
}
