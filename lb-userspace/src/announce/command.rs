//! The `command` announcer: one program run per change, `announce` or `withdraw`, with
//! the VIP substituted (`{vip}`, `{prefix}`), e.g. an ExaBGP or GoBGP client.
//!
//! Owns: running one command with a time limit and saying why it failed. Must not touch:
//! when to run it (the announcer's state in mod.rs).

use std::{
    io::Read as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// Runs `argv` to completion within `timeout` (killed after it); `Err` says why it failed
/// with the first line of what it wrote to stderr.
pub async fn run(argv: Vec<String>, timeout: Duration) -> Result<(), String> {
    tokio::task::spawn_blocking(move || run_blocking(&argv, timeout))
        .await
        .unwrap_or_else(|e| Err(format!("the command's task failed: {e}")))
}

fn run_blocking(argv: &[String], timeout: Duration) -> Result<(), String> {
    let (program, args) = argv.split_first().ok_or("empty command")?;
    let shown = argv.join(" ");
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("`{shown}`: {e}"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "`{shown}` did not finish within {timeout:?} (killed)"
                ));
            }
            Err(e) => return Err(format!("`{shown}`: {e}")),
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut stderr);
    }
    let first = stderr.lines().next().unwrap_or("").trim();
    Err(format!(
        "`{shown}` failed ({status}){}{first}",
        if first.is_empty() { "" } else { ": " }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn success_failure_and_timeout() {
        let t = Duration::from_secs(2);
        assert_eq!(run(argv(&["true"]), t).await, Ok(()));
        let e = run(argv(&["sh", "-c", "echo nope >&2; exit 3"]), t)
            .await
            .unwrap_err();
        assert!(e.contains("exit status: 3") && e.ends_with(": nope"), "{e}");
        let e = run(argv(&["sleep", "5"]), Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(e.contains("killed"), "{e}");
        let e = run(argv(&["/nonexistent/xlb-announce"]), t)
            .await
            .unwrap_err();
        assert!(e.contains("No such file"), "{e}");
    }
}
