//! `bench maglev`: the consistent-hash table and the affinity map.
//!
//! * Build time of `lb_common::maglev::build` (the controller's code) against the Maglev
//!   paper's numbers (Eisenbud et al., NSDI 2016, §5.3: 1.8 ms at M = 65 537 and 22.9 ms at
//!   M = 655 373 for N = 1000).
//! * Disruption and balance over 1,000,000 client addresses taken through the real
//!   selection code: the controller's `reconcile::inspect::affinity_key_for` (the key the XDP
//!   program builds), `lb_common::flow_hash`, `lb_common::maglev_slot`, the table.
//! * Memory of every map of the real object with the default sizes, as the kernel
//!   accounts it (`memlock:` in /proc/self/fdinfo, cross-checked with bpftool).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsFd as _, AsRawFd as _},
    process::Command,
    time::Instant,
};

use aya::{
    Ebpf,
    maps::{Map, MapData},
    programs::Xdp,
};
use lb_common::{
    MAP_AFFINITY, PROG_XLB, flow_hash,
    maglev::{self, MaglevBackend},
    maglev_slot,
};
use serde_json::{Value, json};
use xlb::{
    dataplane::loader::{LoadOptions, load_xlb},
    model::{Protocol, Service, addr_bytes},
    reconcile::inspect::affinity_key_for,
};

use super::{Samples, pin_to_cpu};
use crate::enter_private_netns;

const M_SMALL: u32 = 65_537;
const M_LARGE: u32 = 655_373;
const BUILD_REPS: usize = 21;
const CLIENTS: u32 = 1_000_000;
/// The paper's build times for N = 1000 (ms).
const PAPER_MS: [(u32, f64); 2] = [(M_SMALL, 1.8), (M_LARGE, 22.9)];
/// The goals (ms).
const GOAL_MS: [(u32, f64); 2] = [(M_SMALL, 5.0), (M_LARGE, 50.0)];
/// Capacity of the second load, to separate the affinity map's fixed and per-entry cost.
const SMALL_CAPACITY: u32 = 65_536;

pub fn run() {
    let build = build_time();
    println!();
    let (disruption, balance) = disruption_and_balance();
    println!();
    let memory = memory();

    super::write_json(
        "maglev",
        &json!({
            "build_ms": build,
            "build_backends": "10.1.0.1 + i (sequential IPv4), weight 1 or (weights 1..10) i % 10 + 1",
            "build_repetitions": BUILD_REPS,
            "clients": CLIENTS,
            "clients_range": "100.64.0.0 + i, sequential IPv4 from 100.64.0.0/10, /32 affinity keys",
            "disruption": disruption,
            "balance": balance,
            "memory": memory,
        }),
    );
}

/// Backend `i`: 10.1.0.1 + i, weight 1, id `i`.
fn pool(n: u32) -> Vec<MaglevBackend> {
    (0..n).map(backend).collect()
}

/// [`pool`] with weights 1..=10 (backend `i` weighs `i % 10 + 1`): the weighted build
/// takes turns by weight, a path equal weights do not exercise.
fn weighted_pool(n: u32) -> Vec<MaglevBackend> {
    (0..n)
        .map(|i| MaglevBackend {
            weight: i % 10 + 1,
            ..backend(i)
        })
        .collect()
}

fn backend(i: u32) -> MaglevBackend {
    let a = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 1, 0, 1)) + i);
    MaglevBackend {
        id: i,
        addr: addr_bytes(IpAddr::V4(a)).0,
        weight: 1,
    }
}

fn build_time() -> Vec<Value> {
    pin_to_cpu(0);
    println!(
        "Maglev table build (lb_common::maglev::build, the controller's code): {BUILD_REPS} builds \
         per case, one CPU, backends 10.1.0.1 + i, weight 1"
    );
    println!();
    println!(
        "{:>5} {:>7} {:>8} {:>9} {:>19} {:>8} {:>8}  verdict",
        "N", "M", "weights", "median", "min – max", "paper", "goal"
    );
    let mut out = Vec::new();
    let cases = [10u32, 100, 1000]
        .map(|n| (n, "1", pool as fn(u32) -> Vec<MaglevBackend>))
        .into_iter()
        .chain([(
            1000,
            "1..10",
            weighted_pool as fn(u32) -> Vec<MaglevBackend>,
        )]);
    for m in [M_SMALL, M_LARGE] {
        for (n, weights, make) in cases.clone() {
            let backends = make(n);
            // One warm-up build (page faults of the first allocation).
            std::hint::black_box(maglev::build(&backends, m).expect("build"));
            let mut s = Samples::default();
            for _ in 0..BUILD_REPS {
                let t = Instant::now();
                let table = maglev::build(&backends, m).expect("build");
                s.0.push(t.elapsed().as_secs_f64() * 1e3);
                assert_eq!(table.len(), m as usize);
                std::hint::black_box(table);
            }
            let goal = GOAL_MS.iter().find(|g| g.0 == m).expect("goal").1;
            let paper = if n == 1000 && weights == "1" {
                PAPER_MS.iter().find(|p| p.0 == m).map(|p| p.1)
            } else {
                None
            };
            let verdict = if s.median() <= goal { "met" } else { "MISSED" };
            println!(
                "{n:>5} {m:>7} {weights:>8} {:>6.2} ms {:>7.2} – {:>6.2} ms {:>8} {:>5.0} ms  {verdict}",
                s.median(),
                s.min(),
                s.max(),
                paper.map_or("".into(), |p| format!("{p} ms")),
                goal,
            );
            out.push(json!({
                "n": n,
                "m": m,
                "weights": weights,
                "median": s.median(),
                "min": s.min(),
                "max": s.max(),
                "goal_ms": goal,
                "goal_met": s.median() <= goal,
                "paper_ms": paper,
            }));
        }
    }
    println!(
        "paper: Eisenbud et al., Maglev, NSDI 2016, §5.3 (N = 1000); goal applies to the median"
    );
    out
}

/// Maglev slot of every client (sequential IPv4 from 100.64.0.0), computed exactly as the
/// data plane does: the controller's affinity key (service id 0, /32, port 0, family),
/// `flow_hash`, `maglev_slot`.
fn client_slots(m: u32) -> Vec<u32> {
    let vip = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10));
    let mut svc = Service::new("bench", vip, 80, Protocol::Tcp);
    svc.table_size = m;
    let base = u32::from(Ipv4Addr::new(100, 64, 0, 0));
    (0..CLIENTS)
        .map(|i| {
            let client = IpAddr::V4(Ipv4Addr::from(base + i));
            let key = affinity_key_for(0, &svc, client, 40_000).expect("same family");
            maglev_slot(flow_hash(&key), m)
        })
        .collect()
}

/// Backend id of every client.
fn assign(table: &[u32], slots: &[u32]) -> Vec<u32> {
    slots.iter().map(|&s| table[s as usize]).collect()
}

fn disruption_and_balance() -> (Vec<Value>, Vec<Value>) {
    let t = Instant::now();
    let slots: BTreeMap<u32, Vec<u32>> = [M_SMALL, M_LARGE]
        .into_iter()
        .map(|m| (m, client_slots(m)))
        .collect();
    let hash_ms = t.elapsed().as_secs_f64() * 1e3;

    println!(
        "Disruption: {CLIENTS} clients (100.64.0.0 + i, sequential IPv4, /32 keys) through the real \
         selection code (affinity key → flow_hash → maglev_slot → table)"
    );
    println!(
        "This is the table alone, as for clients without an affinity entry: with xlb's affinity \
         table, pinned clients of the other backends do not move at all."
    );
    println!(
        "remove: backends of rank 0, N/2, N−1 in turn (mean [max] over the 3); add: backend \
         10.1.0.1 + N (the next address)"
    );
    println!();
    println!(
        "{:>5} {:>7} | {:>17} {:>8} | {:>20} | {:>17} {:>8}",
        "N", "M", "remove: moved", "1/N", "others moved (ideal 0)", "add: moved", "1/(N+1)"
    );
    let pct = |f: f64| format!("{:.3}%", f * 100.0);
    let mut disruption = Vec::new();
    for (n, m) in [
        (3u32, M_SMALL),
        (10, M_SMALL),
        (100, M_SMALL),
        (1000, M_SMALL),
        (1000, M_LARGE),
    ] {
        let slots = &slots[&m];
        let backends = pool(n);
        let before = assign(&maglev::build(&backends, m).expect("build"), slots);
        let mut removed = Samples::default();
        let mut others = Samples::default();
        for rank in [0, n / 2, n - 1] {
            let rest: Vec<_> = backends.iter().filter(|b| b.id != rank).copied().collect();
            let after = assign(&maglev::build(&rest, m).expect("build"), slots);
            let (mut moved, mut other_total, mut other_moved) = (0u64, 0u64, 0u64);
            for (b, a) in before.iter().zip(&after) {
                let changed = b != a;
                moved += changed as u64;
                if *b != rank {
                    other_total += 1;
                    other_moved += changed as u64;
                }
            }
            removed.0.push(moved as f64 / CLIENTS as f64);
            others.0.push(other_moved as f64 / other_total as f64);
        }
        let mut grown = backends.clone();
        grown.push(backend(n));
        let after = assign(&maglev::build(&grown, m).expect("build"), slots);
        let added =
            before.iter().zip(&after).filter(|(b, a)| b != a).count() as f64 / CLIENTS as f64;
        let mean = |s: &Samples| s.0.iter().sum::<f64>() / s.0.len() as f64;
        let (ideal, ideal_added) = (1.0 / n as f64, 1.0 / (n + 1) as f64);
        println!(
            "{n:>5} {m:>7} | {:>8} [{:>7}] {:>8} | {:>9} [{:>8}] | {:>17} {:>8}",
            pct(mean(&removed)),
            pct(removed.max()),
            pct(ideal),
            pct(mean(&others)),
            pct(others.max()),
            pct(added),
            pct(ideal_added),
        );
        disruption.push(json!({
            "n": n,
            "m": m,
            "removed_moved_fraction": mean(&removed),
            "removed_moved_fraction_max": removed.max(),
            "others_moved_fraction": mean(&others),
            "others_moved_fraction_max": others.max(),
            "ideal": ideal,
            "added_moved_fraction": added,
            "ideal_added": ideal_added,
            "removal_trials": 3,
        }));
    }
    println!(
        "(hashing the {CLIENTS} clients for both table sizes took {hash_ms:.0} ms: {:.0} ns per client and M)",
        hash_ms * 1e6 / (2.0 * CLIENTS as f64)
    );

    println!();
    println!("Balance: the same {CLIENTS} clients, M = {M_SMALL}, equal weights");
    println!();
    println!(
        "{:>5} | {:>13} {:>13} | {:>15} | {:>22}",
        "N", "clients max/mean", "min/mean", "table max/mean", "sampling σ/mean (ref.)"
    );
    let mut balance = Vec::new();
    for n in [3u32, 10, 100, 1000] {
        let table = maglev::build(&pool(n), M_SMALL).expect("build");
        let mut clients = vec![0u64; n as usize];
        for &s in &slots[&M_SMALL] {
            clients[table[s as usize] as usize] += 1;
        }
        let mut owned = vec![0u64; n as usize];
        for &id in &table {
            owned[id as usize] += 1;
        }
        let mean = CLIENTS as f64 / n as f64;
        let max = *clients.iter().max().expect("n > 0") as f64 / mean;
        let min = *clients.iter().min().expect("n > 0") as f64 / mean;
        let table_max = *owned.iter().max().expect("n > 0") as f64 / (M_SMALL as f64 / n as f64);
        // Clients land on slots at random: a backend's count is binomial(CLIENTS, 1/N).
        let sigma = (mean * (1.0 - 1.0 / n as f64)).sqrt() / mean;
        println!(
            "{n:>5} | {max:>16.4} {min:>13.4} | {table_max:>15.5} | {:>21.2}%",
            sigma * 100.0
        );
        balance.push(json!({
            "n": n,
            "m": M_SMALL,
            "max_over_mean": max,
            "min_over_mean": min,
            "table_slots_max_over_mean": table_max,
            "binomial_sigma_over_mean": sigma,
        }));
    }
    println!(
        "the table itself is within one slot (table max/mean); the rest of the client spread is \
         the hash's sampling noise (σ/mean of a binomial, for reference)"
    );
    (disruption, balance)
}

/// One map's (or the program's) accounting, from /proc/self/fdinfo.
#[derive(Debug, Default, Clone)]
struct FdInfo {
    fields: BTreeMap<String, String>,
}

impl FdInfo {
    fn read(fd: i32) -> Self {
        let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
            .unwrap_or_else(|e| panic!("fdinfo of fd {fd}: {e}"));
        let fields = text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        Self { fields }
    }

    fn num(&self, key: &str) -> u64 {
        self.fields
            .get(key)
            .unwrap_or_else(|| panic!("fdinfo has no {key:?}: {:?}", self.fields))
            .parse()
            .unwrap_or_else(|e| panic!("fdinfo {key}: {e}"))
    }
}

fn map_data(map: &Map) -> &MapData {
    match map {
        Map::Array(m)
        | Map::HashMap(m)
        | Map::LruHashMap(m)
        | Map::PerCpuArray(m)
        | Map::PerCpuHashMap(m)
        | Map::DevMap(m)
        | Map::DevMapHash(m) => m,
        other => panic!("unexpected map kind {other:?}"),
    }
}

fn map_type_name(t: u64) -> &'static str {
    match t {
        1 => "hash",
        2 => "array",
        6 => "percpu_array",
        9 => "lru_hash",
        14 => "devmap",
        25 => "devmap_hash",
        _ => "other",
    }
}

/// Loads the real object (maps created, program verified) and reads the kernel's
/// accounting of every map and of the program.
fn load_and_measure(opts: &LoadOptions) -> (BTreeMap<String, FdInfo>, FdInfo) {
    let mut ebpf: Ebpf = load_xlb(opts).unwrap_or_else(|e| panic!("loading xlb: {e:#}"));
    {
        let prog: &mut Xdp = ebpf
            .program_mut(PROG_XLB)
            .expect("program xlb")
            .try_into()
            .expect("XDP");
        prog.load().unwrap_or_else(|e| panic!("verifier: {e:#?}"));
    }
    let maps = ebpf
        .maps()
        .map(|(name, m)| {
            let fd = map_data(m).fd().as_fd().as_raw_fd();
            (name.to_string(), FdInfo::read(fd))
        })
        .collect();
    let prog: &Xdp = ebpf
        .program(PROG_XLB)
        .expect("program")
        .try_into()
        .expect("XDP");
    let prog_info = FdInfo::read(prog.fd().expect("loaded").as_fd().as_raw_fd());
    (maps, prog_info)
}

/// `bytes_memlock` of map `id` according to bpftool, if bpftool is installed.
fn bpftool_memlock(id: u64) -> Option<u64> {
    let out = Command::new("bpftool")
        .args(["map", "show", "id", &id.to_string(), "-j"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["bytes_memlock"].as_u64()
}

fn memory() -> Value {
    enter_private_netns();
    let opts = LoadOptions::default();
    let (maps, prog) = load_and_measure(&opts);
    let cpus = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap_or_default();
    println!(
        "Memory of the real object with the default sizes (LoadOptions::default(): affinity \
         capacity {}, Maglev slots {}), as the kernel charges it: `memlock` in /proc/self/fdinfo",
        opts.affinity_capacity, opts.maglev_slots
    );
    println!(
        "(per-CPU maps are charged for every possible CPU: {}; the affinity table is an array \
         sized for the capacity, so its memory is the full capacity's whether used or not)",
        cpus.trim()
    );
    println!();
    println!(
        "{:<15} {:<13} {:>5} {:>6} {:>10} {:>14} {:>12}  bpftool",
        "map", "type", "key", "value", "entries", "memlock B", "B/entry"
    );
    let mut total = 0u64;
    let mut json_maps = serde_json::Map::new();
    let mut bpftool_ok = true;
    let mut bpftool_seen = false;
    for (name, info) in &maps {
        let mem = info.num("memlock");
        let entries = info.num("max_entries");
        total += mem;
        let check = match bpftool_memlock(info.num("map_id")) {
            Some(b) => {
                bpftool_seen = true;
                bpftool_ok &= b == mem;
                if b == mem {
                    "same".to_string()
                } else {
                    format!("{b}")
                }
            }
            None => "-".into(),
        };
        println!(
            "{name:<15} {:<13} {:>5} {:>6} {:>10} {:>14} {:>12.1}  {check}",
            map_type_name(info.num("map_type")),
            info.num("key_size"),
            info.num("value_size"),
            entries,
            mem,
            mem as f64 / entries as f64,
        );
        json_maps.insert(name.clone(), json!(mem));
    }
    let prog_mem = prog.num("memlock");
    println!("{:<15} {:<13} {:>40}", "total maps", "", total);
    println!(
        "{:<15} {:<13} {:>40}  (JITed program; not a map)",
        "program xlb", "xdp", prog_mem
    );

    // Per configured client (`affinity_capacity`): the hot table (the buckets a lookup
    // reads) and the cold keys (whole keys and creation times), each from the kernel's
    // own charge; a second load with a small capacity separates the per-client cost from
    // the fixed part (page-aligned array header).
    let cap = opts.affinity_capacity as u64;
    let small_opts = LoadOptions {
        affinity_capacity: SMALL_CAPACITY,
        ..opts
    };
    let (small, _) = load_and_measure(&small_opts);
    let per_client = |name: &str| {
        let (mem, small_mem) = (maps[name].num("memlock"), small[name].num("memlock"));
        let marginal = (mem - small_mem) as f64 / (cap - SMALL_CAPACITY as u64) as f64;
        (
            mem,
            mem as f64 / cap as f64,
            marginal,
            small_mem as f64 - marginal * SMALL_CAPACITY as f64,
        )
    };
    let (hot_mem, hot, hot_marginal, hot_fixed) = per_client(MAP_AFFINITY);
    let (cold_mem, cold, cold_marginal, _) = per_client(lb_common::MAP_AFF_KEYS);
    println!();
    println!(
        "affinity table (hot: what a lookup reads): {hot:.3} B per configured client \
         ({hot_mem} B / {cap}); marginal {hot_marginal:.2} B per client (loads at {cap} and \
         {SMALL_CAPACITY}), fixed ≈ {:.0} KiB — goal ≤ 32 B per pinned client: {}",
        hot_fixed / 1024.0,
        if hot_marginal <= 32.0 {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "affinity keys (cold: whole keys and creation times, read by views and migrations): \
         {cold:.3} B per client ({cold_mem} B), marginal {cold_marginal:.2} B; hot + cold \
         {:.1} B per client (the LRU of earlier releases: 112 B)",
        hot + cold
    );
    println!(
        "total pinned map memory for the default config: {total} B = {:.1} MiB",
        total as f64 / (1 << 20) as f64
    );
    if bpftool_seen {
        println!(
            "bpftool map show (bytes_memlock) {} fdinfo for every map",
            if bpftool_ok {
                "agrees with"
            } else {
                "DIFFERS from"
            }
        );
    }

    json!({
        "maps": json_maps,
        "total_bytes": total,
        "program_bytes": prog_mem,
        "affinity_bytes_per_entry": hot,
        "affinity_marginal_bytes_per_entry": hot_marginal,
        "affinity_fixed_bytes": hot_fixed,
        "affinity_capacity": cap,
        "affinity_hot_bytes_per_client": hot,
        "affinity_hot_marginal_bytes_per_client": hot_marginal,
        "affinity_keys_bytes_per_client": cold,
        "affinity_keys_marginal_bytes_per_client": cold_marginal,
        "affinity_total_bytes_per_client": hot + cold,
        "maglev_slots": opts.maglev_slots,
        "possible_cpus": cpus.trim(),
        "source": "memlock in /proc/self/fdinfo of each map fd",
        "bpftool_agrees": if bpftool_seen { json!(bpftool_ok) } else { Value::Null },
    })
}
