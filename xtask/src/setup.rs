//! `cargo xtask setup`: prepares a fresh Debian-based machine (as root) idempotently.
//!
//! Every item is checked first and changed only when missing, so a second run does
//! nothing and says so.
use crate::util;
use anyhow::{Context as _, Result, bail};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian packages the tests and benches need (`ip`, `ethtool`, `nft`, `curl`, `bpftool`),
/// the package tier: dpkg-dev (`dpkg-shlibdeps`, `strip` from binutils) for
/// `cargo xtask package`, man-db (`man -l`) and systemd (`systemd-analyze verify`), and
/// the ECMP lab: bird2 (`bird`, `birdc`) for its router and nodes.
const PACKAGES: &[&str] = &[
    "iproute2", "ethtool", "nftables", "curl", "bpftool", "dpkg-dev", "man-db", "systemd", "bird2",
];
/// Another apt run holding the dpkg lock (unattended upgrades, a second setup) is waited
/// for instead of failing at once.
const APT_LOCK_WAIT: &[&str] = &["-o", "DPkg::Lock::Timeout=300"];
/// Useful for debugging only: reported, never installed.
const OPTIONAL_PACKAGES: &[&str] = &["tcpdump"];

const BPFFS: &str = "/sys/fs/bpf";
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(clap::Args, Default)]
pub struct Args {
    /// Check everything and print what would be changed, without changing anything.
    #[arg(long)]
    dry_run: bool,
    /// Rebuild bpf-linker against the nightly toolchain's LLVM even if one works already
    /// (e.g. after `rustup update nightly` moved to a new LLVM).
    #[arg(long)]
    rebuild_bpf_linker: bool,
}

struct Setup {
    dry_run: bool,
    /// What was changed (or, in a dry run, would be).
    changes: Vec<String>,
}

impl Setup {
    fn ok(&self, item: &str, state: &str) {
        println!("setup: {item}: {state}");
    }

    /// Runs `cmd` to fix `item`, or only prints it in a dry run.
    fn fix(&mut self, item: &str, cmd: &mut Command) -> Result<()> {
        self.changes.push(item.to_string());
        if self.dry_run {
            println!("setup: {item}: would run `{}`", util::display(cmd));
            Ok(())
        } else {
            // A phase with its time: the bpf-linker build takes minutes on 2 cores
            // (cargo's own progress shows in between).
            util::phase("setup", &format!("{item}: fixing"), || util::run(cmd))
                .with_context(|| format!("setup of {item} failed"))
        }
    }
}

pub fn run(args: &Args) -> Result<()> {
    let mut setup = Setup {
        dry_run: args.dry_run,
        changes: Vec::new(),
    };
    preconditions(&setup)?;
    nightly(&mut setup)?;
    packages(&mut setup)?;
    bpffs(&mut setup)?;
    bpf_linker(&mut setup, args.rebuild_bpf_linker)?;

    if setup.changes.is_empty() {
        println!("setup: everything already in place");
    } else if setup.dry_run {
        println!(
            "setup (dry run): would change {}: {}",
            setup.changes.len(),
            setup.changes.join(", ")
        );
    } else {
        println!(
            "setup: done; changed {}: {}",
            setup.changes.len(),
            setup.changes.join(", ")
        );
    }
    Ok(())
}

fn preconditions(setup: &Setup) -> Result<()> {
    if !util::is_root() {
        bail!(
            "setup must run as root (it installs packages and mounts bpffs); \
             run `sudo -E env PATH=\"$PATH\" cargo xtask setup`"
        );
    }
    setup.ok("root", "yes");
    if !Path::new(VMLINUX_BTF).exists() {
        bail!(
            "{VMLINUX_BTF} is missing: this kernel has no BTF. xlb needs a kernel built with \
             CONFIG_DEBUG_INFO_BTF=y (any current distribution kernel); boot one and rerun \
             `cargo xtask setup`"
        );
    }
    setup.ok("kernel BTF", VMLINUX_BTF);
    Ok(())
}

fn nightly(setup: &mut Setup) -> Result<()> {
    let toolchains = util::output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed to manage the nightly toolchain; install it from https://rustup.rs and rerun `cargo xtask setup`")?;
    if has_nightly(&toolchains) {
        setup.ok("nightly toolchain", "present");
    } else {
        // A fresh install brings rust-src along, so the component check below passes.
        setup.fix(
            "nightly toolchain",
            Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
                "--component",
                "clippy",
            ]),
        )?;
        if setup.dry_run {
            setup.ok("nightly rust-src", "comes with the nightly install");
            return Ok(());
        }
    }

    let components = util::output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    // rust-src builds core for the BPF target; clippy lints the eBPF crate (xtask lint).
    for component in ["rust-src", "clippy"] {
        let label = format!("nightly {component}");
        if has_component(&components, component) {
            setup.ok(&label, "present");
        } else {
            setup.fix(
                &label,
                Command::new("rustup").args([
                    "component",
                    "add",
                    component,
                    "--toolchain",
                    "nightly",
                ]),
            )?;
        }
    }
    Ok(())
}

fn has_nightly(toolchain_list: &str) -> bool {
    toolchain_list
        .lines()
        .any(|l| l.trim_start().starts_with("nightly"))
}

fn has_component(component_list: &str, name: &str) -> bool {
    let prefix = format!("{name}-");
    component_list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .any(|c| c == name || c.starts_with(&prefix))
}

fn packages(setup: &mut Setup) -> Result<()> {
    if util::in_path("dpkg-query").is_none() || util::in_path("apt-get").is_none() {
        bail!(
            "dpkg-query/apt-get not found: `cargo xtask setup` supports Debian-based systems only; \
             install {} by hand, then rerun `cargo xtask setup`",
            PACKAGES.join(", ")
        );
    }
    let mut missing = Vec::new();
    for &name in PACKAGES {
        if package_installed(name) {
            setup.ok(&format!("package {name}"), "installed");
        } else if let Some(path) = util::in_path(name).filter(|_| name == "bpftool") {
            // bpftool built from source or shipped by another package is as good.
            setup.ok(
                &format!("package {name}"),
                &format!("not from apt, but {} exists", path.display()),
            );
        } else {
            setup.ok(&format!("package {name}"), "missing");
            missing.push(name);
        }
    }
    for &name in OPTIONAL_PACKAGES {
        if package_installed(name) {
            setup.ok(&format!("package {name}"), "installed");
        } else {
            setup.ok(
                &format!("package {name}"),
                &format!("not installed (optional, skipped; `apt-get install {name}` for packet captures)"),
            );
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    setup.fix(
        "apt package lists",
        Command::new("apt-get").args(["update"]).args(APT_LOCK_WAIT),
    )?;
    if !setup.dry_run {
        // After `apt-get update`: name packages that no configured repository offers.
        let unavailable: Vec<&str> = missing
            .iter()
            .copied()
            .filter(|name| !package_available(name))
            .collect();
        if !unavailable.is_empty() {
            bail!(
                "no apt repository offers {} (see `apt-cache policy {}`); on Debian 11 enable \
                 bullseye-backports, on Ubuntu install linux-tools-common for bpftool; then \
                 rerun `cargo xtask setup`",
                unavailable.join(", "),
                unavailable[0]
            );
        }
    }
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "--no-install-recommends"])
        .args(APT_LOCK_WAIT)
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive");
    setup.fix(&format!("packages {}", missing.join(" ")), &mut install)
}

fn package_installed(name: &str) -> bool {
    util::output_ok(Command::new("dpkg-query").args(["-W", "-f=${Status}", name]))
        .is_some_and(|status| dpkg_status_installed(&status))
}

/// `dpkg-query -W -f='${Status}'` prints e.g. "install ok installed", "deinstall ok
/// config-files" or "unknown ok not-installed".
fn dpkg_status_installed(status: &str) -> bool {
    status.split_whitespace().last() == Some("installed")
}

fn package_available(name: &str) -> bool {
    util::output_ok(Command::new("apt-cache").args(["policy", name]))
        .and_then(|policy| apt_candidate(&policy))
        .is_some()
}

/// The `Candidate:` version in `apt-cache policy NAME` output, if there is one.
fn apt_candidate(policy: &str) -> Option<String> {
    policy
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(str::trim)
        .filter(|v| !v.is_empty() && *v != "(none)")
        .map(str::to_string)
}

fn bpffs(setup: &mut Setup) -> Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    if bpffs_mounted(&mounts, BPFFS) {
        setup.ok("bpffs", &format!("mounted at {BPFFS}"));
        return Ok(());
    }
    if !setup.dry_run {
        fs::create_dir_all(BPFFS).with_context(|| format!("creating {BPFFS}"))?;
    }
    setup.fix(
        "bpffs",
        Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]),
    )
}

fn bpffs_mounted(proc_mounts: &str, at: &str) -> bool {
    proc_mounts.lines().any(|l| {
        let mut fields = l.split_whitespace();
        let _source = fields.next();
        fields.next() == Some(at) && fields.next() == Some("bpf")
    })
}

fn bpf_linker(setup: &mut Setup, rebuild: bool) -> Result<()> {
    // Where `cargo install` puts binaries: $CARGO_INSTALL_ROOT/bin, else $CARGO_HOME/bin.
    let install_root = match std::env::var_os("CARGO_INSTALL_ROOT").filter(|r| !r.is_empty()) {
        Some(root) => PathBuf::from(root),
        None => util::cargo_home()?,
    };
    let cargo_bin = install_root.join("bin").join("bpf-linker");
    let found = bpf_linker_version(Path::new("bpf-linker"))
        .map(|v| (v, true))
        .or_else(|| bpf_linker_version(&cargo_bin).map(|v| (v, false)));
    if let Some((version, in_path)) = &found {
        if !in_path {
            println!(
                "setup: warning: {} works but is not in PATH; the XDP build looks it up there: \
                 run `. \"$HOME/.cargo/env\"` (or add {} to PATH)",
                cargo_bin.display(),
                cargo_bin.parent().unwrap_or(Path::new("")).display()
            );
        }
        if !rebuild {
            setup.ok("bpf-linker", version);
            return Ok(());
        }
        println!("setup: bpf-linker: {version} present, rebuilding as asked");
    } else {
        println!(
            "setup: bpf-linker: missing or not runnable (e.g. its LLVM moved after a nightly update)"
        );
    }

    let sysroot = match util::output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
    {
        Ok(s) => PathBuf::from(s.trim()),
        Err(_) if setup.dry_run => {
            setup.changes.push("bpf-linker".into());
            println!(
                "setup: bpf-linker: would build against the LLVM of the nightly toolchain once it is installed"
            );
            return Ok(());
        }
        Err(e) => {
            return Err(e)
                .context("finding the nightly toolchain (run `rustup toolchain install nightly`)");
        }
    };
    let libdir = sysroot.join("lib");
    let lib_name = find_rust_llvm(&libdir)?;
    let major = llvm_major(&lib_name)
        .with_context(|| format!("cannot read the LLVM major version from {lib_name}"))?;
    let llvm_lib = libdir.join(&lib_name);

    // bpf-linker's RUNPATH points at PREFIX/lib, so the prefix must outlive `cargo clean`:
    // keep it in CARGO_HOME, next to the binary that needs it.
    let prefix = util::cargo_home()?.join("xlb-llvm-prefix");
    let prefix_lib = prefix.join("lib");
    if setup.dry_run {
        println!(
            "setup: bpf-linker: would link {}/{{libLLVM.so,{lib_name}}} -> {}",
            prefix_lib.display(),
            llvm_lib.display()
        );
    } else {
        fs::create_dir_all(&prefix_lib)
            .with_context(|| format!("creating {}", prefix_lib.display()))?;
        remove_stale_llvm_links(&prefix_lib, &lib_name)?;
        ensure_symlink(&prefix_lib.join("libLLVM.so"), &llvm_lib)?;
        ensure_symlink(&prefix_lib.join(&lib_name), &llvm_lib)?;
    }

    let mut install = util::cargo();
    install
        .env("LLVM_PREFIX", &prefix)
        .args(["install", "bpf-linker", "--locked", "--force"])
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{major}"));
    if !setup.dry_run {
        println!(
            "setup: bpf-linker: building it from source against the nightly LLVM \
             (about 1.5 min on 2 cores; only once per machine)"
        );
    }
    setup.fix("bpf-linker", &mut install)?;
    if setup.dry_run {
        return Ok(());
    }
    let version = bpf_linker_version(&cargo_bin).with_context(|| {
        format!(
            "bpf-linker was installed but `bpf-linker --version` does not run; check `ldd {}`",
            cargo_bin.display()
        )
    })?;
    setup.ok(
        "bpf-linker",
        &format!("built: {version} ({})", cargo_bin.display()),
    );
    if util::in_path("bpf-linker").is_none_or(|p| !same_file(&p, &cargo_bin)) {
        println!(
            "setup: warning: `bpf-linker` in PATH is not {}; put {} first in PATH (`. \"$HOME/.cargo/env\"`)",
            cargo_bin.display(),
            cargo_bin.parent().unwrap_or(Path::new("")).display()
        );
    }
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// `bpf-linker --version` output if that program runs.
fn bpf_linker_version(program: &Path) -> Option<String> {
    util::output_ok(Command::new(program).arg("--version"))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// The file name `libLLVM.so.<ver>-rust-<ver>-nightly` in the nightly toolchain's lib dir.
fn find_rust_llvm(libdir: &Path) -> Result<String> {
    let mut names: Vec<String> = fs::read_dir(libdir)
        .with_context(|| format!("listing {}", libdir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| is_rust_llvm_name(n))
        .collect();
    names.sort();
    match names.pop() {
        Some(name) => Ok(name),
        None => bail!(
            "no libLLVM.so.*-rust-*-nightly in {}: the nightly toolchain looks incomplete; \
             run `rustup toolchain install nightly --force` and rerun `cargo xtask setup`",
            libdir.display()
        ),
    }
}

fn is_rust_llvm_name(name: &str) -> bool {
    name.strip_prefix("libLLVM.so.")
        .is_some_and(|rest| rest.contains("-rust-") && rest.ends_with("-nightly"))
}

/// "libLLVM.so.22.1-rust-1.97.0-nightly" → 22.
fn llvm_major(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("libLLVM.so.")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Removes libLLVM links for other LLVM versions left by earlier runs, so the bpf-linker
/// build cannot pick them up.
fn remove_stale_llvm_links(prefix_lib: &Path, keep: &str) -> Result<()> {
    for entry in
        fs::read_dir(prefix_lib).with_context(|| format!("listing {}", prefix_lib.display()))?
    {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("libLLVM") && name != "libLLVM.so" && name != keep {
            let path = entry.path();
            fs::remove_file(&path).with_context(|| format!("removing stale {}", path.display()))?;
        }
    }
    Ok(())
}

/// Makes `link` a symlink to `target`, replacing whatever is there.
fn ensure_symlink(link: &Path, target: &Path) -> Result<()> {
    if fs::read_link(link).is_ok_and(|t| t == target) {
        return Ok(());
    }
    if fs::symlink_metadata(link).is_ok() {
        fs::remove_file(link).with_context(|| format!("removing {}", link.display()))?;
    }
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("symlinking {} -> {}", link.display(), target.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_llvm_file_names() {
        assert!(is_rust_llvm_name("libLLVM.so.22.1-rust-1.97.0-nightly"));
        assert!(!is_rust_llvm_name("libLLVM-22-rust-1.97.0-nightly.so"));
        assert!(!is_rust_llvm_name("libLLVM.so"));
        assert_eq!(llvm_major("libLLVM.so.22.1-rust-1.97.0-nightly"), Some(22));
        assert_eq!(llvm_major("libLLVM.so.23-rust-1.99.0-nightly"), Some(23));
        assert_eq!(llvm_major("libLLVM.so.x"), None);
    }

    #[test]
    fn toolchain_and_component_lists() {
        let list =
            "stable-x86_64-unknown-linux-gnu (active, default)\nnightly-x86_64-unknown-linux-gnu\n";
        assert!(has_nightly(list));
        assert!(!has_nightly("stable-x86_64-unknown-linux-gnu (default)\n"));
        let installed =
            "cargo-x86_64-unknown-linux-gnu\nclippy-x86_64-unknown-linux-gnu\nrust-src\n";
        assert!(has_component(installed, "rust-src"));
        assert!(has_component(installed, "clippy"));
        let bare = "cargo-x86_64-unknown-linux-gnu\nrust-std-x86_64-unknown-linux-gnu\n";
        assert!(!has_component(bare, "rust-src"));
        assert!(!has_component(bare, "clippy"));
    }

    #[test]
    fn dpkg_and_apt_output() {
        assert!(dpkg_status_installed("install ok installed"));
        assert!(dpkg_status_installed("hold ok installed"));
        assert!(!dpkg_status_installed("unknown ok not-installed"));
        assert!(!dpkg_status_installed("deinstall ok config-files"));
        assert!(!dpkg_status_installed(""));
        let policy =
            "bpftool:\n  Installed: (none)\n  Candidate: 7.1.0+6.1.172-1\n  Version table:\n";
        assert_eq!(apt_candidate(policy).as_deref(), Some("7.1.0+6.1.172-1"));
        assert_eq!(
            apt_candidate("x:\n  Installed: (none)\n  Candidate: (none)\n"),
            None
        );
        assert_eq!(apt_candidate(""), None);
    }

    #[test]
    fn proc_mounts() {
        let mounts = "sysfs /sys sysfs rw 0 0\nbpf /sys/fs/bpf bpf rw,nosuid 0 0\n";
        assert!(bpffs_mounted(mounts, "/sys/fs/bpf"));
        assert!(!bpffs_mounted(
            "tmpfs /sys/fs/bpf tmpfs rw 0 0\n",
            "/sys/fs/bpf"
        ));
        assert!(!bpffs_mounted("bpf /mnt/bpf bpf rw 0 0\n", "/sys/fs/bpf"));
    }
}
