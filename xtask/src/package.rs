//! `cargo xtask package`: the Debian package of xlb, `target/debian/xlb_VERSION_ARCH.deb`.
//!
//! Built with `dpkg-deb` (part of dpkg, on every Debian system) from a staging tree this
//! module lays out, rather than with cargo-deb: every file of the package is generated or
//! written by us anyway (man pages and completions by `xlb-docs` from the clap
//! definitions; unit, example config and maintainer scripts in lb-userspace/debian/), so
//! cargo-deb would add only the control file, at the price of a `cargo install` of ~200
//! crates (minutes on 2 cores) in every fresh setup. `Depends` comes from
//! `dpkg-shlibdeps` (dpkg-dev), as debhelper would compute it.
//!
//! Contents:
//! - /usr/bin/xlb (release, XDP object embedded, stripped)
//! - /lib/systemd/system/xlb.service
//! - /etc/xlb/xlb.toml (conffile: kept on upgrade and remove, deleted on purge)
//! - /usr/share/man/man1/xlb*.1.gz (one page per command)
//! - bash, zsh and fish completions; /usr/share/doc/xlb/copyright and README.md
//! - maintainer scripts postinst, prerm, postrm (what they do: in each file)
//!
//! Must not touch: the installed system (it only builds the file).
use crate::util;
use anyhow::{Context as _, Result, bail};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const TASK: &str = "package";
/// The package's own files, next to the binary they belong to.
const ASSETS: &str = "lb-userspace/debian";
const UNIT_PATH: &str = "lib/systemd/system/xlb.service";
const CONFFILE: &str = "etc/xlb/xlb.toml";
const SCRIPTS: [&str; 3] = ["postinst", "prerm", "postrm"];

#[derive(clap::Args, Default)]
pub struct Args {
    /// Appended to the version (e.g. `+test1`: a newer build of the same code).
    #[arg(long, default_value = "")]
    pub version_suffix: String,
    /// Use the existing release build instead of running `cargo build --release`.
    #[arg(long)]
    pub no_build: bool,
}

pub fn run(args: &Args) -> Result<()> {
    let deb = build(args)?;
    println!("package: {}", deb.display());
    Ok(())
}

/// Builds the package and returns the path of the `.deb`.
pub fn build(args: &Args) -> Result<PathBuf> {
    if !args.no_build {
        util::phase(
            TASK,
            "release build of xlb (cargo's progress below)",
            || {
                util::run(util::cargo().args(["build", "--release", "-p", "lb-userspace"])).context(
                    "building xlb failed; if bpf-linker or the nightly toolchain is missing, run \
                 `cargo xtask setup` first",
                )
            },
        )?;
    }
    let release = util::target_dir().join("release");
    let version = format!(
        "{}{}",
        binary_version(&release.join("xlb"))?,
        args.version_suffix
    );
    let arch = util::output(Command::new("dpkg").arg("--print-architecture"))
        .context("dpkg is needed to build the package (Debian-based systems only)")?
        .trim()
        .to_string();
    let out_dir = util::target_dir().join("debian");
    let staging = out_dir.join(format!("xlb_{version}_{arch}"));
    util::phase(TASK, &format!("staging {}", staging.display()), || {
        stage(&release, &staging)
    })?;
    util::phase(TASK, "control file (dpkg-shlibdeps for Depends)", || {
        control(&staging, &version, &arch)
    })?;
    let deb = out_dir.join(format!("xlb_{version}_{arch}.deb"));
    util::phase(
        TASK,
        &format!("dpkg-deb --build → {}", deb.display()),
        || {
            util::run(
                Command::new("dpkg-deb")
                    .args(["--root-owner-group", "-Zxz", "--build"])
                    .arg(&staging)
                    .arg(&deb),
            )
        },
    )?;
    Ok(deb)
}

/// `xlb 0.1.0` → `0.1.0`: the package carries the version the binary reports.
fn binary_version(xlb: &Path) -> Result<String> {
    let out = util::output(Command::new(xlb).arg("--version"))
        .with_context(|| format!("running {} --version (build it first)", xlb.display()))?;
    parse_version(&out).with_context(|| format!("unexpected `xlb --version` output {out:?}"))
}

fn parse_version(out: &str) -> Option<String> {
    let v = out.trim().strip_prefix("xlb ")?;
    (!v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+-~".contains(c)))
    .then(|| v.to_string())
}

/// Lays out every file of the package under `staging` (emptied first).
fn stage(release: &Path, staging: &Path) -> Result<()> {
    if staging.exists() {
        fs::remove_dir_all(staging).with_context(|| format!("clearing {}", staging.display()))?;
    }
    let assets = util::workspace_root().join(ASSETS);
    let bin = staging.join("usr/bin/xlb");
    copy(&release.join("xlb"), &bin, 0o755)?;
    // Symbols only; the embedded XDP object is data and stays as it is.
    util::output(Command::new("strip").arg("--strip-unneeded").arg(&bin))
        .context("strip (binutils, installed with dpkg-dev by `cargo xtask setup`)")?;
    util::output(Command::new(release.join("xlb-docs")).arg(staging))
        .context("generating man pages and completions with xlb-docs")?;
    gzip_man_pages(&staging.join("usr/share/man/man1"))?;
    copy(&assets.join("xlb.service"), &staging.join(UNIT_PATH), 0o644)?;
    copy(&assets.join("xlb.toml"), &staging.join(CONFFILE), 0o644)?;
    copy(
        &assets.join("copyright"),
        &staging.join("usr/share/doc/xlb/copyright"),
        0o644,
    )?;
    // The configuration reference lives in the README (the man pages cover the CLI).
    copy(
        &util::workspace_root().join("README.md"),
        &staging.join("usr/share/doc/xlb/README.md"),
        0o644,
    )?;
    for script in SCRIPTS {
        copy(
            &assets.join(script),
            &staging.join("DEBIAN").join(script),
            0o755,
        )?;
    }
    fs::write(staging.join("DEBIAN/conffiles"), format!("/{CONFFILE}\n"))?;
    Ok(())
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", to.display()))
}

/// `gzip -9n` every page (Debian policy: compressed, no name or time stamp inside).
fn gzip_man_pages(dir: &Path) -> Result<()> {
    let pages = files_in(dir)?;
    if pages.is_empty() {
        bail!("xlb-docs wrote no man page into {}", dir.display());
    }
    util::output(Command::new("gzip").args(["-9n", "--"]).args(&pages))?;
    Ok(())
}

fn files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    out.sort();
    Ok(out)
}

/// DEBIAN/control and DEBIAN/md5sums.
fn control(staging: &Path, version: &str, arch: &str) -> Result<()> {
    let depends = shlib_depends(staging)?;
    let files = payload_files(staging)?;
    let mut md5sums = String::new();
    let mut bytes = 0u64;
    for rel in &files {
        let path = staging.join(rel);
        bytes += fs::metadata(&path)?.len();
        let sum = util::output(Command::new("md5sum").arg(&path))?;
        let hash = sum.split_whitespace().next().unwrap_or_default();
        md5sums.push_str(&format!("{hash}  {}\n", rel.display()));
    }
    fs::write(staging.join("DEBIAN/md5sums"), md5sums)?;
    fs::write(
        staging.join("DEBIAN/control"),
        control_text(version, arch, &depends, bytes.div_ceil(1024)),
    )?;
    Ok(())
}

fn control_text(version: &str, arch: &str, depends: &str, installed_kib: u64) -> String {
    format!(
        "Package: xlb\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: xlb developers <xlb@localhost>\n\
         Installed-Size: {installed_kib}\n\
         Depends: {depends}\n\
         Section: net\n\
         Priority: optional\n\
         Description: XDP layer-4 load balancer with IP affinity\n \
         xlb balances TCP and UDP services in the kernel's earliest hook (XDP) with\n \
         Direct Server Return. Every packet from one client address reaches the same\n \
         backend (an affinity table in front of weighted Maglev consistent hashing);\n \
         backend changes, failover and daemon restarts move no pinned client.\n \
         .\n \
         This package holds the xlb daemon and CLI (XDP program embedded), a hardened\n \
         systemd unit, an example /etc/xlb/xlb.toml, man pages and shell completions.\n \
         Removing it stops the daemon but never detaches the data plane: run\n \
         `xlb down` first to remove it.\n"
    )
}

/// Paths of every payload file, relative to the staging root (DEBIAN/ excluded), sorted.
fn payload_files(staging: &Path) -> Result<Vec<PathBuf>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                if path != root.join("DEBIAN") {
                    walk(root, &path, out)?;
                }
            } else {
                out.push(path.strip_prefix(root)?.to_path_buf());
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(staging, staging, &mut out)?;
    out.sort();
    Ok(out)
}

/// `Depends` of the binary from `dpkg-shlibdeps` (the libraries it links and the minimum
/// versions of the symbols it uses). dpkg-shlibdeps wants a debian/control of a source
/// package in its working directory; a minimal one is made for it.
fn shlib_depends(staging: &Path) -> Result<String> {
    let work = staging.with_extension("shlibdeps");
    fs::create_dir_all(work.join("debian"))?;
    fs::write(
        work.join("debian/control"),
        "Source: xlb\n\nPackage: xlb\nArchitecture: any\n",
    )?;
    let out = util::output(
        Command::new("dpkg-shlibdeps")
            .current_dir(&work)
            .arg("-O")
            .arg(format!("-e{}", staging.join("usr/bin/xlb").display())),
    )
    .context("dpkg-shlibdeps (dpkg-dev; `cargo xtask setup` installs it)")?;
    fs::remove_dir_all(&work)?;
    parse_shlibdeps(&out).with_context(|| format!("unexpected dpkg-shlibdeps output {out:?}"))
}

/// `shlibs:Depends=libc6 (>= 2.34), libgcc-s1 (>= 4.2)` → the list.
fn parse_shlibdeps(out: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_depends() {
        assert_eq!(parse_version("xlb 0.1.0\n").as_deref(), Some("0.1.0"));
        assert_eq!(parse_version("xlb 0.1.0-rc1").as_deref(), Some("0.1.0-rc1"));
        assert_eq!(parse_version("xlb"), None);
        assert_eq!(parse_version("xlb 0.1 0"), None);
        assert_eq!(
            parse_shlibdeps("shlibs:Depends=libc6 (>= 2.34), libgcc-s1 (>= 4.2)\n").as_deref(),
            Some("libc6 (>= 2.34), libgcc-s1 (>= 4.2)")
        );
        assert_eq!(parse_shlibdeps("shlibs:Depends=\n"), None);
    }

    /// Every continuation line of the description starts with one space and no line is
    /// empty (dpkg rejects both).
    #[test]
    fn control_text_is_well_formed() {
        let text = control_text("0.1.0+test1", "amd64", "libc6 (>= 2.34)", 9000);
        assert!(text.contains("Version: 0.1.0+test1\n"));
        assert!(text.contains("Installed-Size: 9000\n"));
        let desc = text.split("Description: ").nth(1).expect("description");
        for line in desc.lines().skip(1) {
            assert!(line.starts_with(' ') && line.len() > 1, "{line:?}");
        }
        assert!(text.ends_with('\n') && !text.contains("\n\n"));
    }

    /// The assets the package needs are in the tree, and the maintainer scripts are
    /// executable POSIX shell that `sh -n` accepts.
    #[test]
    fn assets_exist_and_scripts_parse() {
        let assets = util::workspace_root().join(ASSETS);
        for f in ["xlb.service", "xlb.toml", "copyright"] {
            assert!(assets.join(f).is_file(), "{f}");
        }
        for script in SCRIPTS {
            let path = assets.join(script);
            let text = fs::read_to_string(&path).expect(script);
            assert!(text.starts_with("#!/bin/sh\n"), "{script}");
            let ok = Command::new("sh")
                .arg("-n")
                .arg(&path)
                .status()
                .expect("sh");
            assert!(ok.success(), "{script}: sh -n failed");
        }
    }
}
