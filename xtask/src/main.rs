//! `cargo xtask` for the xlb workspace: `setup`, `build`, `lint`, `test`, `fuzz`, `soak`,
//! `bench`, `demo`, `package`, `lab-ecmp`.
//!
//! This crate must compile on a fresh machine, so it depends on nothing in the workspace
//! and on no eBPF tooling; everything else is driven through `cargo`, `rustup`, `apt-get`.
mod bench;
mod build;
mod demo;
mod fuzz;
mod lab_ecmp;
mod lint;
mod package;
mod setup;
mod soak;
mod test;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "Development tasks for xlb",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prepare this machine (root, Debian-based): nightly + rust-src, bpf-linker, packages, bpffs.
    Setup(setup::Args),
    /// Build the `xlb` binary (release) with its embedded XDP object.
    Build,
    /// cargo fmt --check and clippy -D warnings, the eBPF crate for its own target.
    Lint,
    /// Run the test tiers: unit (no root), packet, fuzz, e2e, a 30 s soak and package (root).
    Test(test::Args),
    /// Fuzz the XDP program (root): default 10 million frames, checked one by one.
    Fuzz(fuzz::Args),
    /// The long soak in the lab (root): 2,000 clients, a random operation every 100 ms,
    /// SIGKILL + restart every 30 s, checked continuously.
    Soak(soak::Args),
    /// Run the benchmarks (root).
    Bench(bench::Args),
    /// The narrated lab demo (root): builds what it needs, cleans up after itself.
    Demo,
    /// Build the Debian package target/debian/xlb_VERSION_ARCH.deb (binary, systemd unit,
    /// example config, man pages, completions).
    Package(package::Args),
    /// Several xlb nodes behind a router's ECMP with BGP (BIRD), narrated with counts (root).
    LabEcmp,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup(args) => setup::run(&args),
        Command::Build => build::run(),
        Command::Lint => lint::run(),
        Command::Test(args) => test::run(&args),
        Command::Fuzz(args) => fuzz::run(&args),
        Command::Soak(args) => soak::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Demo => demo::run(),
        Command::Package(args) => package::run(&args),
        Command::LabEcmp => lab_ecmp::run(),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}
