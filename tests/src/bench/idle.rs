//! `bench idle`: the daemon's CPU use while nothing changes, with the lab's default config
//! (four services, three backends each, HTTP and UDP checks every 200 ms): user + system
//! time from /proc/PID/stat over a window (60 s, or `XLB_IDLE_SECS`), after a settling
//! pause. What it costs is the health probes, the neighbour poll (every backend once a
//! second), the pin-count scans and the rate samples.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::lab::{Lab, LabOptions};

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // The command name may hold spaces: count fields after its closing parenthesis.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the whole line (1-based) are 12 and 13 here (0-based).
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub fn run() {
    let secs: u64 = std::env::var("XLB_IDLE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let mut lab = Lab::new(LabOptions::default());
    lab.start_servers();
    lab.start_daemon();
    std::thread::sleep(Duration::from_secs(5));
    let pid = lab.daemon.as_ref().expect("daemon").child.id();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let load_before = load_average();
    let (start, before) = (Instant::now(), cpu_ticks(pid));
    std::thread::sleep(Duration::from_secs(secs));
    let ticks = cpu_ticks(pid) - before;
    let wall = start.elapsed().as_secs_f64();
    let cpu_s = ticks as f64 / hz;
    let percent = cpu_s / wall * 100.0;
    println!(
        "daemon idle CPU, lab default config: {cpu_s:.2} s of CPU in {wall:.1} s = {percent:.2}% of one core \
         (load average before: {load_before}; after: {})",
        load_average()
    );
    super::write_json(
        "idle",
        &json!({ "seconds": wall, "cpu_seconds": cpu_s, "percent_of_one_core": percent,
                 "load_average_before": load_before, "binary": crate::lab::xlb_bin() }),
    );
}
