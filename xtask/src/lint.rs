//! `cargo xtask lint`: formatting and clippy with `-D warnings` over every crate; the
//! eBPF crate is linted separately, for its own target with the nightly toolchain, with
//! and without its `log` feature.
use crate::util;
use anyhow::{Context as _, Result};
use std::process::Command;

pub fn run() -> Result<()> {
    util::run(util::cargo().args(["fmt", "--all", "--", "--check"]))
        .context("`cargo fmt --all -- --check` found unformatted code: run `cargo fmt --all`")?;
    util::run(util::cargo().args([
        "clippy",
        "-p",
        "lb-common",
        "--features",
        "lb-common/user",
        "-p",
        "lb-userspace",
        "-p",
        "xtask",
        "-p",
        "xlb-tests",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
    .context("clippy found problems in the host crates")?;
    // Both builds of the object: with its diagnostics (the default) and without (`log`
    // off, the comparison object).
    for features in [&[][..], &["--no-default-features"][..]] {
        let mut ebpf = Command::new("cargo");
        ebpf.current_dir(util::workspace_root())
            .args([
                "+nightly",
                "clippy",
                "-p",
                "lb-ebpf",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--release",
            ])
            .args(features)
            .args(["--", "-D", "warnings"]);
        util::run(&mut ebpf).context("clippy found problems in the eBPF crate (lb-ebpf)")?;
    }
    println!("lint: fmt and clippy clean");
    Ok(())
}
