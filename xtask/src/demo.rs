//! `cargo xtask demo`: sets the machine up and builds if needed, then runs the narrated
//! lab demo (tests/src/bin/xlb-demo.rs) as root.
use crate::{setup, util};
use anyhow::{Context as _, Result};

pub fn run() -> Result<()> {
    util::require_root("demo")?;
    // A fresh clone on a fresh machine: setup is idempotent and fast when all is there.
    util::phase("demo", "setup", || setup::run(&setup::Args::default()))
        .context("preparing the machine for the demo")?;
    util::phase(
        "demo",
        "release build of xlb (cargo's progress below)",
        || util::run(util::cargo().args(["build", "--release", "-p", "lb-userspace"])),
    )
    .context("building xlb")?;
    util::phase("demo", "release build of the demo and test server", || {
        util::run(util::cargo().args([
            "build",
            "--release",
            "-p",
            "xlb-tests",
            "--bin",
            "xlb-demo",
            "--bin",
            "xlb-testsrv",
        ]))
    })
    .context("building the demo")?;
    let release = util::target_dir().join("release");
    util::phase("demo", "the demo", || {
        util::run(
            std::process::Command::new(release.join("xlb-demo"))
                .env("XLB_BIN", release.join("xlb"))
                .env("XLB_TESTSRV", release.join("xlb-testsrv")),
        )
    })
    .context("the demo failed (see its output above)")
}
