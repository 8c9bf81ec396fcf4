//! Reads the program's per-CPU counters cheaply enough to do it after every frame: one
//! BPF_MAP_LOOKUP_BATCH per map (all CPUs of a range of keys in one syscall), on map
//! file descriptors found from the loaded program's own map ids — independent of the
//! controller's map API.
//!
//! Reads only; never writes a map.

use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};

use aya::{maps::MapInfo, programs::Xdp};
use lb_common::{BackendStats, MAP_BE_STATS, MAP_STATS, MAP_SVC_STATS, ServiceStats, Stat};

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Keys `0..keys` of one PERCPU_ARRAY of plain `u64` fields, summed over CPUs.
struct PerCpuReader {
    name: &'static str,
    fd: OwnedFd,
    keys: u32,
    /// `u64` words per value.
    words: usize,
    cpus: usize,
    key_buf: Vec<u32>,
    raw: Vec<u64>,
}

impl PerCpuReader {
    fn open(prog: &Xdp, name: &'static str, keys: u32, words: usize) -> Self {
        let info = prog.info().expect("program info");
        let ids = info
            .map_ids()
            .expect("program map ids")
            .expect("kernel reports map ids");
        let map = ids
            .into_iter()
            .map(|id| MapInfo::from_id(id).expect("map info"))
            .find(|m| m.name_as_str() == Some(name))
            .unwrap_or_else(|| panic!("map {name} not used by the program"));
        assert_eq!(map.value_size() as usize, words * 8, "{name} value size");
        assert!(
            keys <= map.max_entries(),
            "{name} has fewer than {keys} keys"
        );
        let fd = map.fd().expect("map fd");
        let cpus = aya::util::nr_cpus().expect("possible CPUs");
        Self {
            name,
            fd: fd.as_fd().try_clone_to_owned().expect("dup map fd"),
            keys,
            words,
            cpus,
            key_buf: vec![0; keys as usize],
            raw: vec![0; keys as usize * words * cpus],
        }
    }

    /// Current values, summed over CPUs, into `out` (`keys × words`).
    fn read(&mut self, out: &mut [u64]) {
        let mut out_batch = 0u32;
        let mut attr = BatchAttr {
            in_batch: 0,
            out_batch: &mut out_batch as *mut u32 as u64,
            keys: self.key_buf.as_mut_ptr() as u64,
            values: self.raw.as_mut_ptr() as u64,
            count: self.keys,
            map_fd: self.fd.as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: the key and value buffers hold `count` keys and `count × cpus` values
        // and outlive the call; the size passed is the struct's.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>() as u32,
            )
        };
        let err = std::io::Error::last_os_error();
        // ENOENT: the batch reached the map's end (when `keys` is its size).
        assert!(
            rc == 0 || err.raw_os_error() == Some(libc::ENOENT),
            "BPF_MAP_LOOKUP_BATCH on {}: {err}",
            self.name
        );
        assert_eq!(attr.count, self.keys, "{}: short batch", self.name);
        out.fill(0);
        for k in 0..self.keys as usize {
            for cpu in 0..self.cpus {
                let v = &self.raw[(k * self.cpus + cpu) * self.words..][..self.words];
                for (o, x) in out[k * self.words..][..self.words].iter_mut().zip(v) {
                    *o += x;
                }
            }
        }
    }
}

/// One snapshot of every counter the checker reads, as `u64` words summed over CPUs.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// `XLB_STATS`, indexed by [`Stat`].
    pub stats: [u64; Stat::COUNT as usize],
    /// `XLB_SVC_STATS`, service id × [`SVC_WORDS`].
    pub services: Vec<u64>,
    /// `XLB_BE_STATS`, backend id × [`BE_WORDS`].
    pub backends: Vec<u64>,
}

/// The three counter maps, for service ids `< services` and backend ids `< backends`.
pub struct Counters {
    stats: PerCpuReader,
    svc: PerCpuReader,
    be: PerCpuReader,
}

pub const SVC_WORDS: usize = std::mem::size_of::<ServiceStats>() / 8;
pub const BE_WORDS: usize = std::mem::size_of::<BackendStats>() / 8;

/// Reads a `#[repr(C)]` counter struct made only of `u64` fields from its words.
fn from_words<T: Copy>(w: &[u64]) -> T {
    assert_eq!(std::mem::size_of_val(w), std::mem::size_of::<T>());
    // SAFETY: T is a #[repr(C)] struct of u64 fields only (ServiceStats, BackendStats),
    // so every bit pattern of the right size is a valid T; the length is checked above.
    unsafe { std::ptr::read_unaligned(w.as_ptr() as *const T) }
}

/// The counters of service `id` in `words`.
pub fn service_stats(words: &[u64], id: u32) -> ServiceStats {
    from_words(&words[id as usize * SVC_WORDS..][..SVC_WORDS])
}

/// The counters of backend `id` in `words`.
pub fn backend_stats(words: &[u64], id: u32) -> BackendStats {
    from_words(&words[id as usize * BE_WORDS..][..BE_WORDS])
}

impl Counters {
    pub fn open(prog: &Xdp, services: u32, backends: u32) -> Self {
        Self {
            stats: PerCpuReader::open(prog, MAP_STATS, Stat::COUNT, 1),
            svc: PerCpuReader::open(prog, MAP_SVC_STATS, services, SVC_WORDS),
            be: PerCpuReader::open(prog, MAP_BE_STATS, backends, BE_WORDS),
        }
    }

    /// Global counters only (one syscall).
    pub fn read_stats(&mut self, snap: &mut Snapshot) {
        self.stats.read(&mut snap.stats);
    }

    /// Service and backend counters (two syscalls).
    pub fn read_services(&mut self, snap: &mut Snapshot) {
        snap.services.resize(self.svc.keys as usize * SVC_WORDS, 0);
        self.svc.read(&mut snap.services);
        snap.backends.resize(self.be.keys as usize * BE_WORDS, 0);
        self.be.read(&mut snap.backends);
    }
}

/// `after - before`, word by word, into `out`. The program only ever adds to its
/// counters, so a negative difference is a fault too.
pub fn delta(after: &[u64], before: &[u64], out: &mut Vec<u64>) -> Result<(), String> {
    out.clear();
    for (i, (a, b)) in after.iter().zip(before).enumerate() {
        out.push(
            a.checked_sub(*b)
                .ok_or_else(|| format!("counter word {i} went down: {b} → {a}"))?,
        );
    }
    Ok(())
}
