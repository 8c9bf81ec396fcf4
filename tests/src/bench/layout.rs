//! `XLB_BENCH_LAYOUT=1 cargo xtask bench micro` (`=only`: this and nothing else): does the
//! memory a BPF map lives in decide what a random bucket of the affinity table costs?
//!
//! The table (`XLB_AFFINITY`, 32 MiB at the default capacity) is one ARRAY, which the
//! kernel vmallocs with 4 KiB pages; an array of at most 32 KiB (with the kernel's
//! 312-byte `struct bpf_array`) is kmalloc'd instead, in the direct map, which the kernel
//! maps with 2 MiB / 1 GiB pages. So an ARRAY_OF_MAPS of small inner arrays could hold the
//! same buckets in huge-page memory, with both lookups inlined by the verifier. Measured
//! here with the bench object's probes (lb-ebpf/src/bin/bench.rs, `probe_*`): run k reads
//! the 64-byte line of client `k & 65535` of a 32 MiB table — the access pattern of
//! `hit_many` — in (a) one big mmapable array as today, (a') the same without
//! `BPF_F_MMAPABLE`, (b) 1,035 inner arrays of 507 buckets; each once with overlapping
//! runs and once dependent (the next run waits for the line: its latency), and the lines
//! packed into 4 MiB (what they cost without the spread). Next to them, in the same
//! interleaved rounds: a pointer chase over the same lines in this process's memory with
//! 4 KiB and with 2 MiB (THP) pages, and the real xlb program's `hit_many` (rotated) on the
//! filled default table. Prints a table, writes target/bench/micro_layout.json.

use std::collections::BTreeMap;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, ArrayOfMaps, MapData},
    programs::Xdp,
};
use xlb::dataplane::loader::BENCH_OBJECT;

use super::{RotateConfig, Samples};
use crate::harness::run_repeat;

const ROUNDS: usize = 9;
const REPEAT: u32 = 2_000_000;
const LO: u32 = 1;
/// Buckets of the one big array: 32 MiB, the default capacity's table.
const BIG: u32 = 524_288;
/// Buckets per inner array: 507 × 64 + 312 = 32,760 B, the largest array the kernel still
/// kmallocs (checked here: `max_entries 508` appears in /proc/vmallocinfo, 507 does not).
const INNER: u32 = 507;
/// ⌈524,288 / 507⌉ inner arrays: the same 32 MiB. Must equal the bench object's.
const INNER_MAPS: u32 = 1035;
/// Wide inner arrays (one value of 507 × 64 bytes holding 505 line-aligned buckets).
const WIDE_MAPS: u32 = 1039;
const WIDE_WORDS: usize = 4056;

/// The probe programs, in the order of the table (see the module docs).
const PROBES: [&str; 14] = [
    "probe_none",
    "probe_big",
    "probe_big_plain",
    "probe_mim",
    "probe_none_dep",
    "probe_big_dep",
    "probe_big_plain_dep",
    "probe_mim_dep",
    "probe_none_spread_dep",
    "probe_packed_dep",
    "probe_spread_dep",
    "probe_mim_spread_dep",
    "probe_mim_wide_dep",
    "probe_mim_wide_spread_dep",
];

/// The filled default table's xlb behind `src_rotator` (slot 0 of its `ROTATE_NEXT`;
/// slot 1 `xdp_pass`, for the rotation's own cost).
pub struct RotatedXlb<'a> {
    pub cfg: &'a mut Array<MapData, RotateConfig>,
    pub rotator: &'a Xdp,
    /// The 65,536 pinned clients round robin (slot 0).
    pub clients: RotateConfig,
}

/// The probes with their maps: the inner arrays live as long as this.
struct Probes {
    ebpf: Ebpf,
    _inners: Vec<Array<MapData, [u64; 8]>>,
    _wide: Vec<Array<MapData, [u64; WIDE_WORDS]>>,
}

impl Probes {
    fn load() -> Probes {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("PROBE_BIG", BIG)
            .map_max_entries("PROBE_PLAIN", BIG)
            .load(BENCH_OBJECT)
            .expect("load bench object (probes)");
        for name in PROBES {
            let p: &mut Xdp = ebpf
                .program_mut(name)
                .expect("probe program")
                .try_into()
                .expect("XDP");
            p.load().expect("verifier");
        }
        let mut outer: ArrayOfMaps<MapData, Array<MapData, [u64; 8]>> =
            ArrayOfMaps::try_from(ebpf.take_map("PROBE_OUTER").expect("outer")).expect("outer");
        assert_eq!(outer.len(), INNER_MAPS, "bench object's PROBE_OUTER");
        // Zeroed by the kernel when allocated (every page present): the words of every
        // line XOR to 0, which the dependent probes' sequence relies on.
        let inners = (0..INNER_MAPS)
            .map(|i| {
                let inner = Array::<MapData, [u64; 8]>::create(INNER, 0).expect("inner map");
                outer.set(i, &inner, 0).expect("outer set");
                inner
            })
            .collect();
        let mut outer: ArrayOfMaps<MapData, Array<MapData, [u64; WIDE_WORDS]>> =
            ArrayOfMaps::try_from(ebpf.take_map("PROBE_OUTER_WIDE").expect("outer"))
                .expect("outer");
        assert_eq!(outer.len(), WIDE_MAPS, "bench object's PROBE_OUTER_WIDE");
        let wide: Vec<_> = (0..WIDE_MAPS)
            .map(|i| {
                let inner = Array::<MapData, [u64; WIDE_WORDS]>::create(1, 0).expect("wide map");
                outer.set(i, &inner, 0).expect("outer set");
                inner
            })
            .collect();
        // The probes read the buckets at byte 8 + 64 i of the value: right only if the
        // kernel's header before it is 56 bytes past a line (312 bytes on 6.18).
        let header = memlock(aya::maps::IterableMap::map(&wide[0]).fd()) - (WIDE_WORDS as u64 * 8);
        assert_eq!(header % 64, 56, "struct bpf_array is {header} bytes here");
        Probes {
            ebpf,
            _inners: inners,
            _wide: wide,
        }
    }

    fn prog(&self, name: &str) -> &Xdp {
        self.ebpf
            .program(name)
            .expect("program")
            .try_into()
            .expect("XDP")
    }
}

/// Runs the experiment's rounds and reports them (see the module docs).
pub fn run(mut xlb: RotatedXlb<'_>, xdp_pass: &Xdp, frame: &[u8], load_start: f64) {
    let probes = Probes::load();
    let pass_ns = run_repeat(xdp_pass, frame, LO, REPEAT);
    let mut s: BTreeMap<&str, Samples> = BTreeMap::new();
    let cases = PROBES.len() + 3;
    for round in 0..ROUNDS {
        // The order rotates each round: whatever runs first finds colder caches.
        for step in 0..cases {
            let case = (step + round) % cases;
            let (key, ns) = match case {
                c if c < PROBES.len() => (
                    PROBES[c],
                    run_repeat(probes.prog(PROBES[c]), frame, LO, REPEAT),
                ),
                c if c == PROBES.len() => ("user_4k_dep", user_chase(false)),
                c if c == PROBES.len() + 1 => ("user_thp_dep", user_chase(true)),
                _ => (
                    "xlb_hit_many_rotated",
                    rotated_hit_many(&mut xlb, frame, pass_ns),
                ),
            };
            s.entry(key).or_default().0.push(ns);
        }
    }
    report(&s, load_start);
}

/// ns per packet of xlb's `hit_many`, rotated: the rotator's cost measured with slot 1
/// (`xdp_pass`) and replaced by XDP_PASS's own, as `bench micro` does.
fn rotated_hit_many(xlb: &mut RotatedXlb<'_>, frame: &[u8], pass_ns: f64) -> f64 {
    let mut run = |cfg: RotateConfig| {
        xlb.cfg.set(0, cfg, 0).expect("rotate cfg");
        run_repeat(xlb.rotator, frame, LO, REPEAT)
    };
    let pass = run(RotateConfig {
        slot: 1,
        ..xlb.clients
    });
    let many = run(xlb.clients);
    many - pass + pass_ns
}

fn report(s: &BTreeMap<&str, Samples>, load_start: f64) {
    let net = |k: &str, base: &str| -> Samples {
        Samples(s[k].0.iter().zip(&s[base].0).map(|(a, b)| a - b).collect())
    };
    let load_end = super::load_average();
    println!();
    println!(
        "layout experiment: one random 64-byte line of 32 MiB per run, 65,536 lines round \
         robin; {ROUNDS} rounds interleaved; CPU {}; load average {load_start:.2} → {load_end:.2}",
        super::cpu_model()
    );
    println!(
        "{:<46} {:>8} {:>18}",
        "case (ns per access)", "median", "min – max"
    );
    let rows = [
        (
            "none",
            "hash + index only (subtracted below)",
            s["probe_none"].clone(),
        ),
        (
            "big",
            "(a) one array, mmapable (today)",
            net("probe_big", "probe_none"),
        ),
        (
            "big_plain",
            "(a') one array, not mmapable",
            net("probe_big_plain", "probe_none"),
        ),
        (
            "map_in_map",
            "(b) ARRAY_OF_MAPS, 507-bucket arrays",
            net("probe_mim", "probe_none"),
        ),
        (
            "none_dep",
            "dependent: hash + index only",
            s["probe_none_dep"].clone(),
        ),
        (
            "big_dep",
            "dependent: (a)",
            net("probe_big_dep", "probe_none_dep"),
        ),
        (
            "big_plain_dep",
            "dependent: (a')",
            net("probe_big_plain_dep", "probe_none_dep"),
        ),
        (
            "map_in_map_dep",
            "dependent: (b)",
            net("probe_mim_dep", "probe_none_dep"),
        ),
        (
            "packed_dep",
            "distinct lines, packed in 4 MiB (1,024 pages)",
            net("probe_packed_dep", "probe_none_dep"),
        ),
        (
            "spread_dep",
            "distinct lines, spread, (a) (8,192 pages)",
            net("probe_spread_dep", "probe_none_dep"),
        ),
        (
            "map_in_map_spread_dep",
            "distinct lines, spread, (b)",
            net("probe_mim_spread_dep", "probe_none_spread_dep"),
        ),
        (
            "map_in_map_wide_dep",
            "(b) with line-aligned buckets",
            net("probe_mim_wide_dep", "probe_none_dep"),
        ),
        (
            "map_in_map_wide_spread_dep",
            "distinct lines, spread, (b) line-aligned",
            net("probe_mim_wide_spread_dep", "probe_none_spread_dep"),
        ),
        (
            "user_4k_dep",
            "userspace chase, 4 KiB pages",
            s["user_4k_dep"].clone(),
        ),
        (
            "user_thp_dep",
            "userspace chase, 2 MiB pages (THP)",
            s["user_thp_dep"].clone(),
        ),
        (
            "xlb_hit_many_rotated",
            "xlb hit_many, rotated (whole program)",
            s["xlb_hit_many_rotated"].clone(),
        ),
    ];
    let mut json = serde_json::Map::new();
    for (k, label, v) in &rows {
        println!(
            "{label:<46} {:>8.1} {:>8.1} – {:>7.1}",
            v.median(),
            v.min(),
            v.max()
        );
        json.insert(
            (*k).to_string(),
            serde_json::json!({"median": v.median(), "min": v.min(), "max": v.max(), "samples": v.0}),
        );
    }
    json.insert("rounds".into(), serde_json::json!(ROUNDS));
    json.insert("load_start".into(), serde_json::json!(load_start));
    json.insert("load_end".into(), serde_json::json!(load_end));
    json.insert("cpu".into(), serde_json::json!(super::cpu_model()));
    super::write_json("micro_layout", &serde_json::Value::Object(json));
}

/// ns per access of a pointer chase through the spread probes' 65,536 lines of a 32 MiB buffer
/// of this process, backed by 2 MiB transparent huge pages (`huge`) or 4 KiB pages
/// (checked in /proc/self/smaps; panics if the kernel did not map as asked).
fn user_chase(huge: bool) -> f64 {
    const BYTES: usize = 32 << 20;
    const STEPS: usize = 1_000_000;
    let buf = UserBuffer::new(BYTES, huge);
    let lines = spread_lines();
    for (j, l) in lines.iter().enumerate() {
        // Each line holds the word index of the next.
        buf.store(*l * 8, lines[(j + 1) % lines.len()] * 8);
    }
    let anon_huge_kb = smaps_anon_huge_kb(buf.base as usize);
    assert_eq!(
        anon_huge_kb > 0,
        huge,
        "AnonHugePages {anon_huge_kb} kB: the kernel did not map as asked"
    );
    let mut p = lines[0] * 8;
    // Thread CPU time: time preempted by other work does not count (nor does it in the
    // kernel's test-run timer).
    let start = thread_cpu_ns();
    for _ in 0..STEPS {
        p = buf.load(p);
    }
    let ns = (thread_cpu_ns() - start) as f64 / STEPS as f64;
    std::hint::black_box(p);
    ns
}

/// The spread probes' lines (lb-ebpf/src/bin/bench.rs, `spread_line`): client j's line is
/// `perm16(j) * 8 + (hash(j) & 7)`, 65,536 distinct lines, one per 512 bytes of 32 MiB.
fn spread_lines() -> Vec<u64> {
    let perm16 = |j: u64| {
        let mut x = j & 0xffff;
        x ^= x >> 8;
        x = (x * 0x6b4b) & 0xffff;
        x ^= x >> 7;
        x = (x * 0x2c1b) & 0xffff;
        x ^ (x >> 8)
    };
    (0..65_536u64)
        .map(|j| perm16(j) * 8 + (lb_common::hash::fmix64(j ^ 0x9e37_79b9_7f4a_7c15) & 7))
        .collect()
}

/// An anonymous, 2 MiB-aligned, zeroed buffer of 64-bit words, with or without THP.
struct UserBuffer {
    raw: *mut libc::c_void,
    len: usize,
    base: *mut u64,
    words: u64,
}

impl UserBuffer {
    fn new(bytes: usize, huge: bool) -> UserBuffer {
        let len = bytes + (2 << 20);
        // SAFETY: a fresh anonymous private mapping, unmapped on drop.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(raw, libc::MAP_FAILED, "mmap");
        let base = (raw as usize).next_multiple_of(2 << 20) as *mut u64;
        let advice = if huge {
            libc::MADV_HUGEPAGE
        } else {
            libc::MADV_NOHUGEPAGE
        };
        // SAFETY: `base .. base + bytes` lies inside the mapping.
        unsafe {
            assert_eq!(libc::madvise(base.cast(), bytes, advice), 0, "madvise");
            std::ptr::write_bytes(base.cast::<u8>(), 0, bytes);
        }
        UserBuffer {
            raw,
            len,
            base,
            words: (bytes / 8) as u64,
        }
    }

    fn store(&self, word: u64, value: u64) {
        assert!(word < self.words);
        // SAFETY: inside the buffer (checked).
        unsafe { *self.base.add(word as usize) = value };
    }

    /// A volatile load (kept in the chase); `word` must be below the buffer's length,
    /// which the chase keeps by storing only line indices.
    fn load(&self, word: u64) -> u64 {
        debug_assert!(word < self.words);
        // SAFETY: `word` is an index stored by `store`, inside the buffer.
        unsafe { std::ptr::read_volatile(self.base.add(word as usize)) }
    }
}

impl Drop for UserBuffer {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`.
        unsafe { libc::munmap(self.raw, self.len) };
    }
}

/// A map's `memlock` (bytes the kernel charges for it), from its fdinfo.
fn memlock(fd: &aya::maps::MapFd) -> u64 {
    use std::os::fd::{AsFd, AsRawFd};
    let path = format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd());
    std::fs::read_to_string(&path)
        .expect("fdinfo")
        .lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("memlock in fdinfo")
}

/// This thread's CPU time, ns.
fn thread_cpu_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes the timespec passed.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// `AnonHugePages` of the mapping containing `addr`, from /proc/self/smaps.
fn smaps_anon_huge_kb(addr: usize) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
    let mut inside = false;
    for l in smaps.lines() {
        if let Some((range, _)) = l.split_once(' ')
            && let Some((a, b)) = range.split_once('-')
            && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            inside = (a..b).contains(&addr);
        } else if inside && let Some(v) = l.strip_prefix("AnonHugePages:") {
            return v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
        }
    }
    0
}
