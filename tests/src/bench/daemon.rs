//! `bench daemon`: the daemon's own CPU with a full affinity table and no control changes.
//!
//! The lab's real `xlb run` with one TCP service (three backends, no health checks: the
//! figure is the daemon's own upkeep — the pinned-client counts above all), the default
//! capacity (1,048,576) filled with live, established pins written through the table's
//! protocol; then the daemon's user + system time from /proc/PID/stat over a minute.

use std::time::{Duration, Instant};

use lb_common::{AffinityKey, AffinityValue, DEFAULT_AFFINITY_CAPACITY, FAMILY_V4};
use xlb::dataplane::maps::{ktime_coarse_ns, pinned_table};

use super::{cpu_model, load_average};
use crate::lab::{Lab, LabOptions, VIP4};

/// How long the daemon's CPU is measured.
const WINDOW: Duration = Duration::from_secs(60);

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

pub fn run() {
    crate::require_root();
    let load_start = load_average();
    let mut lab = Lab::new(LabOptions {
        backends: 3,
        clients_v4: 1,
        clients_v6: 1,
    });
    lab.affinity_capacity = DEFAULT_AFFINITY_CAPACITY;
    let block = lab.service_toml(
        "web",
        &VIP4.to_string(),
        80,
        "tcp",
        4,
        "health = { kind = \"none\" }\n",
    );
    lab.write_config(&block);
    lab.start_servers();
    lab.start_daemon();
    let pid = lab.daemon.as_ref().expect("daemon").child.id();

    // Fill the table: as many live, established pins as the capacity.
    let backends: Vec<(u32, u32, u32)> = lab
        .pinned_backends()
        .into_iter()
        .map(|(id, b)| (id, b.generation, b.service_id))
        .collect();
    let service_id = backends[0].2;
    let table = pinned_table(&lab.pin_dir).expect("pinned table");
    let started = Instant::now();
    let mut written = 0u32;
    for i in 0..DEFAULT_AFFINITY_CAPACITY {
        let now = ktime_coarse_ns();
        let (id, generation, _) = backends[i as usize % backends.len()];
        let key = AffinityKey {
            service_id,
            addr: [(0x0a00_0000u32 + i).to_be(), 0, 0, 0],
            port_be: 0,
            family: FAMILY_V4,
            _pad: 0,
        };
        let v = AffinityValue {
            backend_id: id,
            backend_gen: generation,
            pinned_ns: now,
            last_seen_ns: now,
        };
        written += table.set(&key, &v, true, now, |_| u32::MAX >> 1) as u32;
    }
    let fill = started.elapsed();
    let live = table
        .scan(1..table.buckets() + 1, None, ktime_coarse_ns())
        .len();
    drop(table);
    // Let the daemon's first passes settle, then measure.
    std::thread::sleep(Duration::from_secs(5));
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let (t0, c0) = (Instant::now(), cpu_ticks(pid));
    std::thread::sleep(WINDOW);
    let (secs, ticks) = (t0.elapsed().as_secs_f64(), cpu_ticks(pid) - c0);
    let cpu = 100.0 * ticks as f64 / hz / secs;
    let status = lab.xlb(&["--json", "status"]);
    let v: serde_json::Value = serde_json::from_str(&status).expect("status json");
    let pinned = v["services"][0]["pinned_clients"].as_u64().unwrap_or(0);
    let load_end = load_average();
    println!("xlb daemon benchmark: CPU of `xlb run` with a full affinity table, no changes");
    println!(
        "CPU: {}; load average {load_start:.2} at the start, {load_end:.2} at the end",
        cpu_model()
    );
    println!(
        "table: capacity {DEFAULT_AFFINITY_CAPACITY}, {written} pins written in {:.1} s, {live} live in it; status says {pinned} pinned",
        fill.as_secs_f64()
    );
    println!(
        "daemon CPU over {secs:.0} s: {ticks} ticks at {hz} Hz = {cpu:.2}% of one core (goal < 1%: {})",
        if cpu < 1.0 { "met" } else { "MISSED" }
    );
    super::write_json(
        "daemon",
        &serde_json::json!({
            "cpu_percent": cpu,
            "window_s": secs,
            "capacity": DEFAULT_AFFINITY_CAPACITY,
            "live_pins": live,
            "status_pinned_clients": pinned,
            "cpu": cpu_model(),
            "load_start": load_start,
            "load_end": load_end,
        }),
    );
}
