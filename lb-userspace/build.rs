//! Builds the XDP object (lb-ebpf) with the nightly toolchain and bpf-linker, so the
//! `xlb` binary embeds exactly the program its map types were compiled against; and the
//! same object without its diagnostics (`xlb-nolog`: lb-ebpf without the `log` feature),
//! which only the benchmarks and the instruction counts load, to compare the hot path.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("no workspace root"))?
        .join("lb-ebpf");
    let root_dir = root.to_str().context("lb-ebpf path is not UTF-8")?;
    let build = |no_default_features| {
        let package = Package {
            name: "lb-ebpf",
            root_dir,
            no_default_features,
            ..Default::default()
        };
        aya_build::build_ebpf([package], Toolchain::default()).context(
            "building the XDP object failed; if bpf-linker or the nightly rust-src component \
             is missing, run `cargo xtask setup`",
        )
    };
    // Without diagnostics first: both builds write OUT_DIR/xlb, the default one last.
    build(true)?;
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR")?);
    std::fs::copy(out.join("xlb"), out.join("xlb-nolog")).context("copying xlb-nolog")?;
    build(false)
}
