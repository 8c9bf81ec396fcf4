//! Small helpers: workspace paths, running commands with useful errors, root checks.
use anyhow::{Context as _, Result, bail};
use std::ffi::OsStr;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// The cargo target directory (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// `$CARGO_HOME`, or `~/.cargo`.
pub fn cargo_home() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CARGO_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("neither CARGO_HOME nor HOME is set; set one of them")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

/// A `cargo` command run from the workspace root. Uses the cargo that runs xtask (`$CARGO`).
pub fn cargo() -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(program);
    cmd.current_dir(workspace_root());
    cmd
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Fails with a clear message when not root; `task` is e.g. "bench".
pub fn require_root(task: &str) -> Result<()> {
    if !is_root() {
        bail!(
            "`cargo xtask {task}` needs root (it uses XDP, bpffs and network namespaces); \
             run `sudo -E env PATH=\"$PATH\" cargo xtask {task}`"
        );
    }
    Ok(())
}

/// A printable form of a command line, for messages.
pub fn display(cmd: &Command) -> String {
    let mut parts = Vec::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            parts.push(format!(
                "{}={}",
                key.to_string_lossy(),
                value.to_string_lossy()
            ));
        }
    }
    let program = cmd.get_program();
    // Show `cargo` rather than the full toolchain path from $CARGO.
    let program = match Path::new(program).file_name() {
        Some(name) if name == OsStr::new("cargo") => name,
        _ => program,
    };
    parts.push(program.to_string_lossy().into_owned());
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// `4.2 s`, `1 min 32 s`: elapsed time for progress lines.
pub fn elapsed(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1} s")
    } else {
        let whole = d.as_secs();
        format!("{} min {:02} s", whole / 60, whole % 60)
    }
}

/// Runs one phase of a long task between two progress lines, `[task] what…` and
/// `[task] what: done in 1 min 32 s` (or `failed after …`), so a slow step is never
/// silent and its cost is visible. Whatever the phase prints (cargo's own progress)
/// appears in between.
pub fn phase<T>(task: &str, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    println!("[{task}] {what}…");
    let start = Instant::now();
    let result = f();
    let took = elapsed(start.elapsed());
    match &result {
        Ok(_) => println!("[{task}] {what}: done in {took}"),
        Err(_) => println!("[{task}] {what}: failed after {took}"),
    }
    result
}

/// Runs a command with inherited stdio; fails if it cannot start or exits non-zero.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = display(cmd);
    println!("+ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}` (is it installed and in PATH?)"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs a command quietly and returns its stdout; `None` if it could not start or failed.
pub fn output_ok(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command quietly and returns its stdout; fails with its stderr otherwise.
pub fn output(cmd: &mut Command) -> Result<String> {
    let line = display(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{line}` (is it installed and in PATH?)"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command, copying its stdout to ours as it arrives (stderr is inherited), and
/// returns whether it succeeded together with everything it wrote to stdout.
pub fn run_tee(cmd: &mut Command) -> Result<(bool, String)> {
    let line = display(cmd);
    println!("+ {line}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
    let mut pipe = child.stdout.take().expect("stdout is piped");
    let mut captured = Vec::new();
    let mut buf = [0u8; 8192];
    let mut stdout = std::io::stdout();
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("reading the output of `{line}`")),
        };
        captured.extend_from_slice(&buf[..n]);
        // A closed terminal must not stop the run; the output is still captured.
        let _ = stdout.write_all(&buf[..n]);
        let _ = stdout.flush();
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{line}`"))?;
    Ok((
        status.success(),
        String::from_utf8_lossy(&captured).into_owned(),
    ))
}

/// Whether `program` can be found in PATH.
pub fn in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elapsed_reads_naturally() {
        assert_eq!(elapsed(Duration::from_millis(4_240)), "4.2 s");
        assert_eq!(elapsed(Duration::from_secs(92)), "1 min 32 s");
        assert_eq!(elapsed(Duration::from_secs(314)), "5 min 14 s");
    }

    #[test]
    fn phase_reports_and_passes_the_result() {
        assert_eq!(phase("t", "ok", || Ok(7)).unwrap(), 7);
        assert!(phase::<()>("t", "fails", || bail!("no")).is_err());
    }
}
