//! `cargo xtask build`: the release `xlb` binary, with the XDP object embedded by
//! lb-userspace's build script (nightly + bpf-linker).
use crate::util;
use anyhow::{Context as _, Result};

pub fn run() -> Result<()> {
    util::phase(
        "build",
        "release build of xlb (cargo's progress below)",
        || util::run(util::cargo().args(["build", "--release", "-p", "lb-userspace"])),
    )
    .context(
        "building xlb failed; if bpf-linker, the nightly toolchain or its rust-src is \
         missing, run `cargo xtask setup` first",
    )?;
    let binary = util::target_dir().join("release").join("xlb");
    anyhow::ensure!(
        binary.is_file(),
        "the build succeeded but {} is not there",
        binary.display()
    );
    println!("xlb: {}", binary.display());
    Ok(())
}
