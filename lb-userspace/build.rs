//! Builds the XDP object (lb-ebpf) with the nightly toolchain and bpf-linker, so the
//! `xlb` binary embeds exactly the program its map types were compiled against.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("no workspace root"))?
        .join("lb-ebpf");
    let root_dir = root.to_str().context("lb-ebpf path is not UTF-8")?;
    let package = Package {
        name: "lb-ebpf",
        root_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::default()).context(
        "building the XDP object failed; if bpf-linker or the nightly rust-src component \
         is missing, run `cargo xtask setup`",
    )
}
