//! The benchmarks behind `cargo xtask bench`, one module per part. Each part measures
//! xlb against a baseline in the same run, prints a table and writes
//! target/bench/<part>.json.

pub mod control;
pub mod daemon;
pub mod e2e;
pub mod flood;
pub mod idle;
pub mod layout;
pub mod maglev;
pub mod micro;

use std::path::PathBuf;

/// Pins the calling thread to one CPU: the host migrates vCPUs and cross-CPU cache
/// traffic makes ratios unstable (DESIGN.md, benchmarking facts).
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            panic!("sched_setaffinity: {}", std::io::Error::last_os_error());
        }
    }
}

/// The CPU's model name (`/proc/cpuinfo`), for the report: numbers are only comparable
/// on the same kind of machine.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The 1-minute load average (`/proc/loadavg`): numbers taken while other work runs are
/// noise, so every report says what it was.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// `RotateConfig` of lb-ebpf/src/bin/bench.rs (`src_rotator`), same layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RotateConfig {
    pub base: u32,
    pub mask: u32,
    pub shift: u32,
    pub slot: u32,
    pub random: u32,
    pub est_base: u32,
    pub est_count: u32,
    pub est_shift: u32,
}
// SAFETY: repr(C), eight u32, no padding.
unsafe impl aya::Pod for RotateConfig {}

/// Samples of one measurement over rounds.
#[derive(Default, Clone, Debug)]
pub struct Samples(pub Vec<f64>);

impl Samples {
    pub fn median(&self) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    }
    pub fn min(&self) -> f64 {
        self.0.iter().copied().fold(f64::INFINITY, f64::min)
    }
    pub fn max(&self) -> f64 {
        self.0.iter().copied().fold(0.0, f64::max)
    }
}

/// target/bench, created if needed.
pub fn out_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("target/bench");
    std::fs::create_dir_all(&root).expect("create target/bench");
    root
}

/// Writes `json` to target/bench/<part>.json and says so.
pub fn write_json(part: &str, json: &serde_json::Value) {
    let path = out_dir().join(format!("{part}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(json).expect("json")).expect("write json");
    println!("wrote {}", path.display());
}
