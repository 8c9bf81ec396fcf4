//! `xlb status --watch` when stdout is not a terminal (a pipe, as in a script): appended
//! snapshots that follow the daemon, and JSON lines with `--json`.

use std::{
    io::{BufRead as _, BufReader},
    process::Stdio,
    time::{Duration, Instant},
};

use xlb_tests::lab::{Lab, LabOptions};

fn small_lab() -> Lab {
    let mut lab = Lab::new(LabOptions {
        backends: 2,
        clients_v4: 4,
        clients_v6: 4,
    });
    lab.start_servers();
    lab.start_daemon();
    lab
}

/// Three snapshots, each a header and the full status, none with an escape sequence;
/// a backend drained between two snapshots shows up in the later ones.
#[test]
fn status_watch_appends_snapshots_to_a_pipe() {
    let lab = small_lab();
    let be0 = lab.backends[0].addr4.to_string();
    let mut child = lab
        .lb
        .cmd(&lab.xlb)
        .arg("--socket")
        .arg(&lab.socket)
        .args(["status", "--watch", "--interval", "300ms", "--count", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("xlb status --watch");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    // The first snapshot arrives at once; change something before the next ones.
    let first = lines.next().expect("a line").expect("utf-8");
    assert!(
        first.starts_with("--- xlb status every 300ms at "),
        "{first}"
    );
    lab.xlb(&["backend", "drain", "web4", &be0]);
    let started = Instant::now();
    let rest: Vec<String> = lines.map(|l| l.expect("utf-8")).collect();
    let status = child.wait().expect("wait");
    assert!(status.success(), "exit {status}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "three snapshots 300ms apart took {:?}",
        started.elapsed()
    );
    let out = format!("{first}\n{}\n", rest.join("\n"));
    assert!(!out.contains('\x1b'), "escape sequences in a pipe:\n{out}");
    let snapshots: Vec<&str> = out
        .split("--- xlb status every 300ms at ")
        .skip(1)
        .collect();
    assert_eq!(snapshots.len(), 3, "{out}");
    for s in &snapshots {
        assert!(
            s.contains("service web4") && s.contains("service dns6"),
            "{s}"
        );
    }
    // be0's row in the web4 table: its draining column.
    let draining = |s: &str| {
        s.lines()
            .skip_while(|l| !l.starts_with("service web4"))
            .find(|l| l.trim_start().starts_with(&format!("{be0} ")))
            .is_some_and(|l| l.contains(" yes "))
    };
    assert!(
        !draining(snapshots[0]),
        "drained before the command:\n{out}"
    );
    assert!(
        draining(snapshots[2]),
        "the drain is not in the last snapshot:\n{out}"
    );
}

/// With --json: one status document per line.
#[test]
fn status_watch_json_lines() {
    let lab = small_lab();
    let out = lab
        .lb
        .cmd(&lab.xlb)
        .arg("--socket")
        .arg(&lab.socket)
        .args([
            "--json",
            "status",
            "--watch",
            "--interval",
            "100ms",
            "--count",
            "2",
        ])
        .output()
        .expect("xlb --json status --watch");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let docs: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(docs.len(), 2, "{text}");
    for d in docs {
        assert_eq!(d["services"].as_array().map(Vec::len), Some(4), "{d}");
    }
}
