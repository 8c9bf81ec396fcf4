//! Man pages and shell completions, generated from the clap definitions in `cli.rs` (the
//! one place every command, flag and help text is written), so they cannot drift from
//! the binary.
//!
//! - [`man_pages`]: one page per command (`xlb.1`, `xlb-backend.1`, `xlb-backend-add.1`,
//!   …) with clap_mangen, plus FILES and SEE ALSO sections of our own. Run at package
//!   time by the `xlb-docs` binary (`cargo xtask package`).
//! - [`completions`]: bash, zsh and fish scripts with clap_complete; printed by
//!   `xlb completions SHELL` and installed by the package.
//!
//! Owns: the page layout and file names. Must not touch: the command definitions
//! themselves (cli.rs).

use std::{
    io::{self, Write},
    path::{Path, PathBuf},
};

use clap::CommandFactory as _;
use clap_mangen::{
    Man,
    roff::{Roff, bold, roman},
};

use crate::cli::Cli;

/// Files xlb reads or writes by default, for the FILES section of `xlb(1)`.
const FILES: &[(&str, &str)] = &[
    (
        "/etc/xlb/xlb.toml",
        "the config file of the packaged systemd unit (xlb.service)",
    ),
    (
        "/run/xlb/xlb.sock",
        "the control socket (mode 0600); --socket or XLB_SOCKET chooses another",
    ),
    (
        "/var/lib/xlb/state.json",
        "runtime changes made with the CLI, replayed at start (daemon.state_file)",
    ),
    (
        "/sys/fs/bpf/xlb",
        "pinned maps and XDP link (daemon.pin_dir); removed only by xlb down",
    ),
];

/// The full command tree as the binary parses it, built (display and bin names set).
fn built_command() -> clap::Command {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// A command with a page, and the page of its parent command.
struct Page {
    cmd: clap::Command,
    parent: Option<String>,
}

/// Every command with a page, parent first: `[xlb, xlb-run, …, xlb-backend,
/// xlb-backend-add, …]` (hidden commands excluded).
fn pages() -> Vec<Page> {
    fn walk(cmd: &clap::Command, parent: Option<String>, out: &mut Vec<Page>) {
        out.push(Page {
            cmd: cmd.clone(),
            parent,
        });
        for sub in visible_subcommands(cmd) {
            walk(sub, Some(page_name(cmd)), out);
        }
    }
    let mut out = Vec::new();
    walk(&built_command(), None, &mut out);
    out
}

fn visible_subcommands(cmd: &clap::Command) -> impl Iterator<Item = &clap::Command> {
    cmd.get_subcommands().filter(|s| !s.is_hide_set())
}

/// The page names [`man_pages`] writes, without the `.1` (`xlb`, `xlb-backend-add`, …).
pub fn page_names() -> Vec<String> {
    pages().iter().map(|p| page_name(&p.cmd)).collect()
}

fn page_name(cmd: &clap::Command) -> String {
    cmd.get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_string()
}

/// Writes every page into `dir` (created if needed) as `NAME.1`; returns their paths.
/// Errors: the directory or a file cannot be written.
pub fn man_pages(dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for page in pages() {
        let path = dir.join(format!("{}.1", page_name(&page.cmd)));
        let mut file = std::fs::File::create(&path)?;
        render_page(page, &mut file)?;
        file.flush()?;
        written.push(path);
    }
    Ok(written)
}

/// One page: clap_mangen's sections, then FILES (top page only) and SEE ALSO.
fn render_page(page: Page, out: &mut dyn Write) -> io::Result<()> {
    let see_also = see_also(&page);
    let top = page.parent.is_none();
    let version = page
        .cmd
        .get_version()
        .unwrap_or(env!("CARGO_PKG_VERSION"))
        .to_string();
    Man::new(page.cmd)
        .manual("xlb manual")
        .source(format!("xlb {version}"))
        .render(out)?;
    let mut roff = Roff::default();
    if top {
        roff.control("SH", ["FILES"]);
        for (path, what) in FILES {
            roff.control("TP", [])
                .text([bold(*path)])
                .text([roman(*what)]);
        }
    }
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman(see_also)]);
    roff.to_writer(out)
}

/// The parent page and the pages of the direct subcommands: `xlb(1), xlb-backend-add(1)`.
fn see_also(page: &Page) -> String {
    page.parent
        .iter()
        .cloned()
        .chain(visible_subcommands(&page.cmd).map(page_name))
        .map(|name| format!("{name}(1)"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The completion script for `shell`, for the command named `xlb`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn Write) {
    clap_complete::generate(shell, &mut Cli::command(), "xlb", out);
}

/// Where distributions look for each shell's completions (relative to `/`), with the
/// file name: bash-completion, zsh's vendor functions, fish's vendor completions.
pub const COMPLETION_PATHS: [(clap_complete::Shell, &str); 3] = [
    (
        clap_complete::Shell::Bash,
        "usr/share/bash-completion/completions/xlb",
    ),
    (
        clap_complete::Shell::Zsh,
        "usr/share/zsh/vendor-completions/_xlb",
    ),
    (
        clap_complete::Shell::Fish,
        "usr/share/fish/vendor_completions.d/xlb.fish",
    ),
];

/// Writes the three completion scripts under `root` at [`COMPLETION_PATHS`].
/// Errors: a directory or file cannot be written.
pub fn completion_files(root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (shell, rel) in COMPLETION_PATHS {
        let path = root.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut buf = Vec::new();
        completions(shell, &mut buf);
        std::fs::write(&path, buf)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One page per command, parent and subcommands alike, each naming its command in
    /// the header and its synopsis, with its own help text.
    #[test]
    fn every_command_has_a_page() {
        let names = page_names();
        for expected in [
            "xlb",
            "xlb-run",
            "xlb-check-config",
            "xlb-status",
            "xlb-backend",
            "xlb-backend-add",
            "xlb-backend-weight",
            "xlb-service-add",
            "xlb-affinity-flush",
            "xlb-down",
            "xlb-completions",
            "xlb-daemon-pid",
        ] {
            assert!(names.iter().any(|n| n == expected), "{expected}: {names:?}");
        }
        assert!(!names.iter().any(|n| n.ends_with("-help")), "{names:?}");
        let dir = std::env::temp_dir().join(format!("xlb-man-test-{}", std::process::id()));
        let pages = man_pages(&dir).expect("pages");
        assert_eq!(pages.len(), names.len());
        let page = |n: &str| std::fs::read_to_string(dir.join(format!("{n}.1"))).expect(n);
        let top = page("xlb");
        assert!(top.contains(".TH xlb 1"), "{top}");
        assert!(top.contains("/etc/xlb/xlb.toml"), "{top}");
        assert!(top.contains("xlb\\-backend(1), xlb\\-service(1)"), "{top}");
        assert!(
            !top.contains("xlb\\-backend\\-add(1)"),
            "only direct subcommands: {top}"
        );
        let add = page("xlb-backend-add");
        assert!(add.contains(".TH xlb-backend-add 1"), "{add}");
        assert!(add.contains("xlb backend add"), "{add}");
        assert!(add.contains("\\-\\-weight"), "{add}");
        assert!(
            add.contains(".SH \"SEE ALSO\"\nxlb\\-backend(1)\n"),
            "{add}"
        );
        let check = page("xlb-check-config");
        assert!(check.contains("\\-\\-offline"), "{check}");
        assert!(check.contains(".SH \"SEE ALSO\"\nxlb(1)\n"), "{check}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    /// Each script completes the subcommands and their flags.
    #[test]
    fn completions_know_the_commands() {
        for (shell, _) in COMPLETION_PATHS {
            let mut buf = Vec::new();
            completions(shell, &mut buf);
            let text = String::from_utf8(buf).expect("utf-8");
            for word in ["check-config", "backend", "completions", "offline", "watch"] {
                assert!(text.contains(word), "{shell}: no {word}");
            }
        }
    }
}
