//! `xlb status --watch`: a snapshot every interval, like `watch xlb status`.
//!
//! On a terminal each snapshot is redrawn in place with plain ANSI sequences (cursor
//! home, clear to end of line and of screen), so the table does not scroll or flicker;
//! anywhere else (a pipe, a file) snapshots are appended one after the other, each
//! introduced by a `--- xlb status at HH:MM:SS` line (or, with `--json`, one compact JSON
//! document per line), so a script can read them as they come.
//!
//! An error (the daemon stopped) is shown in place of a snapshot and the watch goes on:
//! the next snapshot appears when the daemon is back. It stops after `--count`
//! snapshots, or on Ctrl-C.
//!
//! Owns: the frame layout. Must not touch: how a snapshot is fetched or rendered
//! (cli.rs and display.rs).

use std::{io::Write, time::Duration};

/// Cursor to the top-left corner.
const HOME: &str = "\x1b[H";
/// Erase from the cursor to the end of the line.
const CLEAR_LINE: &str = "\x1b[K";
/// Erase from the cursor to the end of the screen.
const CLEAR_BELOW: &str = "\x1b[J";
/// Erase the whole screen.
const CLEAR_SCREEN: &str = "\x1b[2J";

/// How snapshots are shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Redrawn in place (stdout is a terminal).
    Terminal,
    /// Appended, each with a header line (anything else).
    Plain,
    /// Appended, one compact JSON document per line (`--json`, not a terminal).
    JsonLines,
}

/// The watch loop: `snapshot` is called once per round (`Ok(text)`, or `Err(message)`
/// when the daemon could not be asked); `clock` gives the header's time of day. Stops
/// after `count` rounds (never when `None`). Errors: `out` cannot be written (a closed
/// pipe ends the watch).
pub fn run(
    mode: Mode,
    interval: Duration,
    count: Option<u64>,
    mut snapshot: impl FnMut() -> Result<String, String>,
    clock: impl Fn() -> String,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let mut round = 0u64;
    loop {
        let frame = frame(mode, interval, round, &clock(), snapshot());
        out.write_all(frame.as_bytes())?;
        out.flush()?;
        round += 1;
        if count.is_some_and(|c| round >= c) {
            return Ok(());
        }
        std::thread::sleep(interval);
    }
}

/// The bytes of one round.
fn frame(
    mode: Mode,
    interval: Duration,
    round: u64,
    time: &str,
    body: Result<String, String>,
) -> String {
    let every = crate::model::format_duration(interval);
    let header = format!("--- xlb status every {every} at {time}");
    let body = body.unwrap_or_else(|e| format!("xlb: {e}\n"));
    match mode {
        Mode::Plain => format!("{header}\n{body}\n"),
        Mode::JsonLines => {
            // One line per snapshot; an error becomes {"error": "..."} so every line parses.
            let value = serde_json::from_str::<serde_json::Value>(&body)
                .unwrap_or_else(|_| serde_json::json!({ "error": body.trim() }));
            format!("{value}\n")
        }
        Mode::Terminal => {
            let mut s = String::new();
            if round == 0 {
                s.push_str(CLEAR_SCREEN);
            }
            s.push_str(HOME);
            for line in std::iter::once(header.as_str()).chain(body.lines()) {
                s.push_str(line);
                s.push_str(CLEAR_LINE);
                s.push('\n');
            }
            s.push_str(CLEAR_BELOW);
            s
        }
    }
}

/// The local time of day as `HH:MM:SS`.
pub fn time_of_day() -> String {
    // SAFETY: time(NULL) and localtime_r with a valid out-pointer have no other
    // preconditions; `tm` is fully written on success.
    unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return "--:--:--".into();
        }
        format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rounds(mode: Mode, answers: Vec<Result<String, String>>) -> String {
        let n = answers.len() as u64;
        let mut answers = answers.into_iter();
        let mut out = Vec::new();
        run(
            mode,
            Duration::from_millis(1),
            Some(n),
            || answers.next().expect("one answer per round"),
            || "12:00:00".into(),
            &mut out,
        )
        .expect("write");
        String::from_utf8(out).expect("utf-8")
    }

    /// Not a terminal: snapshots follow each other with a header, errors in between, and
    /// no escape sequence anywhere.
    #[test]
    fn plain_snapshots_are_appended() {
        let out = rounds(
            Mode::Plain,
            vec![
                Ok("service web\n".into()),
                Err("the daemon is not running".into()),
                Ok("service web\n".into()),
            ],
        );
        assert_eq!(
            out,
            "--- xlb status every 1ms at 12:00:00\nservice web\n\n\
             --- xlb status every 1ms at 12:00:00\nxlb: the daemon is not running\n\n\
             --- xlb status every 1ms at 12:00:00\nservice web\n\n"
        );
        assert!(!out.contains('\x1b'));
    }

    #[test]
    fn json_lines_parse_one_by_one() {
        let out = rounds(
            Mode::JsonLines,
            vec![Ok("{\n  \"services\": []\n}".into()), Err("gone".into())],
        );
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        assert_eq!(lines[0]["services"], serde_json::json!([]));
        assert_eq!(lines[1]["error"], "xlb: gone");
    }

    /// A terminal: the screen is cleared once, then every frame starts at the top-left
    /// corner, clears each line's rest and everything below, so a shorter frame leaves
    /// nothing of the longer one before it.
    #[test]
    fn terminal_frames_redraw_in_place() {
        let out = rounds(
            Mode::Terminal,
            vec![Ok("a\nb\nc\n".into()), Ok("a\n".into())],
        );
        let frames: Vec<&str> = out.split(HOME).collect();
        assert_eq!(frames.len(), 3, "{out:?}");
        assert_eq!(frames[0], CLEAR_SCREEN);
        assert_eq!(
            frames[2],
            "--- xlb status every 1ms at 12:00:00\x1b[K\na\x1b[K\n\x1b[J"
        );
        assert_eq!(out.matches(CLEAR_SCREEN).count(), 1);
    }
}
