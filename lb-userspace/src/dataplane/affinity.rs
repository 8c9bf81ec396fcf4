//! The affinity table seen from userspace: the two mmapped arrays (`XLB_AFFINITY` and its
//! cold keys `XLB_AFF_KEYS`), read and written with the XDP program's own protocol
//! (`lb_common::affinity::table`: the same functions, on the same memory), so a view or
//! a write here can race the data plane safely.
//!
//! Owns: the mappings, the header (seed, bucket count), whole-key recovery (IPv4 from the
//! tag, IPv6 from the cold key, checked against the tag), scans and bounded-slice counts.
//! Must not touch: what an entry means (that is `lb_common::affinity::judge`'s) or any
//! other map.

use std::{collections::HashMap as StdHashMap, ops::Range, os::fd::AsFd as _, path::Path};

use aya::maps::{MapData, MapError};
use lb_common::{
    AffinityKey, AffinityValue, Backend, ServiceValue,
    affinity::{
        self, Verdict,
        table::{
            self, Bucket, ColdBucket, Found, HEADER_MAGIC, Header, SLOTS, Written, data_buckets,
        },
    },
};

/// A failure mapping or initialising the table.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("reading the info of the affinity table: {0}")]
    Info(#[source] MapError),
    #[error("mmap of the affinity table ({what}): {source}")]
    Mmap {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the affinity table has no header (not initialised by a loader)")]
    Uninitialised,
    #[error("the affinity table's header says {found} buckets, its map holds {expected}")]
    Mismatch { found: u32, expected: u32 },
    #[error("opening pinned map {path}: {source}")]
    Pinned {
        path: std::path::PathBuf,
        #[source]
        source: MapError,
    },
}

type Result<T> = std::result::Result<T, TableError>;

/// A shared, writable mapping of a map's values.
pub(super) struct Mapping {
    pub(super) ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is kernel memory shared with the XDP program; every access goes
// through the table protocol's atomics, from any thread.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps the values of an mmapable array; also returns its `max_entries`.
    pub(super) fn new(map: &MapData, what: &'static str) -> Result<(Self, u32)> {
        use std::os::fd::AsRawFd as _;
        let info = map.info().map_err(TableError::Info)?;
        let len = info.max_entries() as usize * info.value_size() as usize;
        // SAFETY: a shared mapping of an mmapable BPF array of `len` bytes (the kernel
        // rounds up to whole pages); it stays valid after the fd closes.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(TableError::Mmap {
                what,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok((
            Self {
                ptr: ptr as *mut u8,
                len,
            },
            info.max_entries(),
        ))
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

/// Writes the header of a freshly created table (seed `seed`), or reads the one it has:
/// the seed the table's entries were placed with. Call before any entry is written and
/// before a program reading it is attached.
pub fn initialise(hot: &MapData, seed: u64) -> Result<u64> {
    let (m, entries) = Mapping::new(hot, "header")?;
    let h = m.ptr as *mut Header;
    // SAFETY: value 0 of the table, 64 bytes; nobody else writes it.
    let mut header = unsafe { h.read_volatile() };
    if header.magic == HEADER_MAGIC && header.seed != 0 {
        return Ok(header.seed);
    }
    header = Header {
        magic: HEADER_MAGIC,
        seed,
        buckets: data_buckets(entries),
        slots: SLOTS as u32,
        _reserved: [0; 5],
    };
    // SAFETY: as above.
    unsafe { h.write_volatile(header) };
    Ok(seed)
}

/// The header's seed of the table pinned at `path`, when it has one.
pub fn pinned_seed(path: &Path) -> Option<u64> {
    let map = MapData::from_pin(path).ok()?;
    let (m, _) = Mapping::new(&map, "header").ok()?;
    // SAFETY: value 0 of the table.
    let h = unsafe { (m.ptr as *const Header).read_volatile() };
    (h.magic == HEADER_MAGIC && h.seed != 0).then_some(h.seed)
}

/// A fresh random seed (never 0).
pub fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: a buffer of 8 bytes.
    let n = unsafe { libc::getrandom(b.as_mut_ptr() as *mut libc::c_void, 8, 0) };
    let mut s = u64::from_ne_bytes(b);
    if n != 8 || s == 0 {
        // getrandom cannot fail for 8 bytes after boot; be safe anyway.
        s ^= std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
    }
    s
}

/// One entry of the table: its whole key, its value as userspace sees it, and whether
/// the client is established (admission).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: AffinityKey,
    pub value: AffinityValue,
    pub established: bool,
}

/// The mapped table.
pub struct AffinityTable {
    hot: Mapping,
    cold: Mapping,
    seed: u64,
    buckets: u32,
}

/// Attempts of a userspace write at a bucket the data plane holds (each a microsecond
/// apart; the data plane holds one for tens of ns).
const WRITE_TRIES: u32 = 1000;

impl AffinityTable {
    /// Maps the table and its cold keys.
    pub fn new(hot: &MapData, cold: &MapData) -> Result<Self> {
        let (hot, entries) = Mapping::new(hot, XLB_AFFINITY)?;
        let (cold, cold_entries) = Mapping::new(cold, XLB_AFF_KEYS)?;
        // SAFETY: value 0 of the table.
        let h = unsafe { (hot.ptr as *const Header).read_volatile() };
        if h.magic != HEADER_MAGIC || h.seed == 0 {
            return Err(TableError::Uninitialised);
        }
        let expected = data_buckets(entries.min(cold_entries));
        if h.buckets != expected {
            return Err(TableError::Mismatch {
                found: h.buckets,
                expected,
            });
        }
        Ok(Self {
            hot,
            cold,
            seed: h.seed,
            buckets: h.buckets,
        })
    }

    /// Maps the table pinned at `hot` with its keys pinned at `cold`.
    pub fn open_pinned(hot: &Path, cold: &Path) -> Result<Self> {
        let open = |path: &Path| {
            MapData::from_pin(path).map_err(|source| TableError::Pinned {
                path: path.to_path_buf(),
                source,
            })
        };
        Self::new(&open(hot)?, &open(cold)?)
    }

    /// The table's hash seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Data buckets (`1..=buckets`).
    pub fn buckets(&self) -> u32 {
        self.buckets
    }

    /// Slots for pins.
    pub fn slots(&self) -> u64 {
        self.buckets as u64 * SLOTS as u64
    }

    fn bucket(&self, b: u32) -> (*mut Bucket, *mut ColdBucket) {
        assert!(b >= 1 && b <= self.buckets, "bucket {b} out of range");
        // SAFETY: in range of both mappings (checked against their sizes in `new`).
        unsafe {
            (
                (self.hot.ptr as *mut Bucket).add(b as usize),
                (self.cold.ptr as *mut ColdBucket).add(b as usize),
            )
        }
    }

    /// The entry of `key`, if the table holds one (read as the XDP program reads it).
    pub fn get(&self, key: &AffinityKey, now: u64) -> Option<Entry> {
        let place = table::place(key, self.seed, self.buckets);
        let (b, c) = self.bucket(place.bucket);
        for _ in 0..WRITE_TRIES {
            // SAFETY: a live bucket of the mapped table.
            match unsafe { table::find(b, place.tag) } {
                Found::None => return None,
                Found::Busy => std::thread::yield_now(),
                Found::Hit { slot, .. } => {
                    // SAFETY: as above.
                    let s = unsafe { table::snapshot(b, c, slot) }?;
                    if s.tag == place.tag {
                        return Some(self.entry(*key, &s, now));
                    }
                }
            }
        }
        None
    }

    /// Writes `key → value` (its `last_seen_ns` included; `pinned_ns` to the cold key's
    /// resolution), marking it established or not. Replaces the key's own entry, else
    /// takes the slot the data plane would ([`table::victim`]), so it may evict another
    /// client. `idle_of` gives a service's timeout in table units. `Ok(false)`: the
    /// bucket stayed busy.
    pub fn set(
        &self,
        key: &AffinityKey,
        value: &AffinityValue,
        established: bool,
        now: u64,
        idle_of: impl Fn(u32) -> u32 + Copy,
    ) -> bool {
        let place = table::place(key, self.seed, self.buckets);
        let (b, c) = self.bucket(place.bucket);
        let mut cold = table::cold_of(key, value.pinned_ns);
        cold.pinned_s = (value.pinned_ns >> 30) as u32;
        let word = table::pack(
            value.backend_id,
            value.backend_gen,
            established,
            table::units(value.last_seen_ns),
        );
        for _ in 0..WRITE_TRIES {
            // SAFETY: a live bucket of the mapped table and its keys.
            match unsafe {
                table::write(
                    b,
                    c,
                    place.tag,
                    Some(&cold),
                    word,
                    table::units(now),
                    idle_of,
                )
            } {
                Written::Pinned { .. } => return true,
                Written::Busy => std::thread::sleep(std::time::Duration::from_micros(1)),
            }
        }
        false
    }

    /// Moves `key`'s last-seen stamp to `last_seen_ns`, also back in time (tests and tools
    /// only: see [`table::restamp`]). Whether the entry exists; `None`: stayed busy.
    pub fn restamp(&self, key: &AffinityKey, last_seen_ns: u64) -> Option<bool> {
        let place = table::place(key, self.seed, self.buckets);
        let (b, _) = self.bucket(place.bucket);
        for _ in 0..WRITE_TRIES {
            // SAFETY: a live bucket of the mapped table.
            match unsafe { table::restamp(b, place.tag, table::units(last_seen_ns)) } {
                Ok(done) => return Some(done),
                Err(table::BucketBusy) => std::thread::sleep(std::time::Duration::from_micros(1)),
            }
        }
        None
    }

    /// Removes `key`'s entry; whether there was one. `None`: the bucket stayed busy.
    pub fn remove(&self, key: &AffinityKey, now: u64) -> Option<bool> {
        let place = table::place(key, self.seed, self.buckets);
        let (b, _) = self.bucket(place.bucket);
        for _ in 0..WRITE_TRIES {
            // SAFETY: a live bucket of the mapped table.
            match unsafe { table::remove(b, place.tag, table::units(now)) } {
                Ok(done) => return Some(done),
                Err(table::BucketBusy) => std::thread::sleep(std::time::Duration::from_micros(1)),
            }
        }
        None
    }

    /// The entries of buckets `range` (optionally of one service), each read
    /// consistently; entries whose whole key cannot be recovered (an IPv6 entry whose cold
    /// key a concurrent write left torn) are skipped.
    pub fn scan(&self, range: Range<u32>, service: Option<u32>, now: u64) -> Vec<Entry> {
        let mut out = Vec::new();
        self.for_each(range, now, |e| {
            if service.is_none_or(|s| s == e.key.service_id) {
                out.push(e);
            }
        });
        out
    }

    /// Calls `f` with every entry of buckets `range` (clamped to the table).
    pub fn for_each(&self, range: Range<u32>, now: u64, mut f: impl FnMut(Entry)) {
        let range = range.start.max(1)..range.end.min(self.buckets + 1);
        for bi in range {
            let (b, c) = self.bucket(bi);
            for i in 0..SLOTS {
                // SAFETY: a live bucket of the mapped table and its keys.
                let Some(s) = (unsafe { table::snapshot(b, c, i) }) else {
                    continue;
                };
                if let Some(key) = self.key_of(&s, bi) {
                    f(self.entry(key, &s, now));
                }
            }
        }
    }

    /// The whole key of a slot of bucket `bucket`: IPv4 from the tag; IPv6 from the cold
    /// key when it places exactly there.
    fn key_of(&self, s: &table::Snapshot, bucket: u32) -> Option<AffinityKey> {
        if let Some(k) = table::v4_key(s.tag) {
            return Some(k);
        }
        let k = table::cold_to_key(&s.cold);
        let p = table::place(&k, self.seed, self.buckets);
        (p.tag == s.tag && p.bucket == bucket).then_some(k)
    }

    fn entry(&self, key: AffinityKey, s: &table::Snapshot, now: u64) -> Entry {
        let idle = table::idle_units(table::units(now), table::time_of(s.val));
        let last = (now >> table::TIME_SHIFT).saturating_sub(idle as u64) << table::TIME_SHIFT;
        // The cold key's creation time, when it is this pin's: an IPv4 entry's cold key
        // is written when it becomes established (before, it may be a former pin's; and
        // an unestablished entry was seen within one second: its age is its idle time).
        let trusted = key.family != lb_common::FAMILY_V4 || table::is_established(s.val);
        let pinned_ns = if trusted && table::cold_to_key(&s.cold) == key {
            (s.cold.pinned_s as u64) << 30
        } else {
            last
        };
        Entry {
            key,
            value: AffinityValue {
                backend_id: table::backend_of(s.val),
                backend_gen: table::generation_of(s.val),
                pinned_ns: pinned_ns.min(last),
                last_seen_ns: last,
            },
            established: table::is_established(s.val),
        }
    }
}

const XLB_AFFINITY: &str = lb_common::MAP_AFFINITY;
const XLB_AFF_KEYS: &str = lb_common::MAP_AFF_KEYS;

/// Live pins per service and backend: the pinned-client counts of `status` and the
/// metrics. An entry counts when the data plane's own rules say it decides the client's
/// next packet ([`Verdict::Live`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LivePins {
    pub per_service: StdHashMap<u32, u64>,
    pub per_backend: StdHashMap<u32, u64>,
    /// When the live pins of each backend were last seen (for `backend drain --wait`).
    pub seen: StdHashMap<u32, Seen>,
}

/// The last-seen stamps (`bpf_ktime_get_coarse_ns` clock, ns) of a backend's live pins:
/// the least and the most recently active. A stamp lags its client's last packet by up
/// to the service's refresh period (a quarter of `idle_timeout`, at most 1 s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub oldest_ns: u64,
    pub newest_ns: u64,
}

impl LivePins {
    /// Counts one live pin of `backend` (of `service`) last seen at `last_seen_ns`.
    pub fn add(&mut self, service: u32, backend: u32, last_seen_ns: u64) {
        *self.per_service.entry(service).or_default() += 1;
        *self.per_backend.entry(backend).or_default() += 1;
        self.seen
            .entry(backend)
            .and_modify(|s| {
                s.oldest_ns = s.oldest_ns.min(last_seen_ns);
                s.newest_ns = s.newest_ns.max(last_seen_ns);
            })
            .or_insert(Seen {
                oldest_ns: last_seen_ns,
                newest_ns: last_seen_ns,
            });
    }
}

/// Judges an entry against the maps' services (by id) and backends at `now`; `None` for
/// an entry of a service that no longer exists.
pub fn judge_entry(
    e: &Entry,
    services: &StdHashMap<u32, ServiceValue>,
    backends: &[Backend],
    now: u64,
) -> Option<(Verdict, Option<Backend>)> {
    let svc = services.get(&e.key.service_id)?;
    let backend = backends.get(e.value.backend_id as usize).copied();
    let verdict = affinity::judge(svc, &e.key, &e.value, backend.as_ref(), now);
    Some((verdict, backend))
}

/// Counts live pins a slice at a time, so a large table never costs the daemon a long
/// stretch of CPU: each [`PinCounter::step`] scans buckets for at most its budget and
/// continues where the last one stopped; a pass's counts are published when it ends.
/// (The data plane cannot keep counts itself: an entry expires silently, by time.)
///
/// With [`PinCounter::sweeping`], the scan also removes entries expired for longer than
/// the grace: table time wraps after 52 days, so an entry nobody touched for that long
/// could otherwise look fresh again. (Entries of a service the pass does not know are left
/// alone: the pass's list of services may predate one, and removing a service flushes its
/// entries anyway.)
pub struct PinCounter {
    table: AffinityTable,
    /// Remove entries expired for longer than this (ns); `None`: count only.
    sweep: Option<u64>,
    /// Entries removed so far.
    pub swept: u64,
    cursor: u32,
    partial: LivePins,
    services: StdHashMap<u32, ServiceValue>,
    backends: Vec<Backend>,
    /// Wall time the pass has taken so far (scanning only).
    spent: std::time::Duration,
    /// Scanning time of the last whole pass.
    pub last_pass: Option<std::time::Duration>,
}

/// Buckets scanned between two looks at the clock.
const STEP_CHUNK: u32 = 2048;

impl PinCounter {
    pub fn new(table: AffinityTable) -> Self {
        Self {
            table,
            sweep: None,
            swept: 0,
            cursor: 1,
            partial: LivePins::default(),
            services: StdHashMap::new(),
            backends: Vec::new(),
            spent: std::time::Duration::ZERO,
            last_pass: None,
        }
    }

    /// No pass is under way: the next [`PinCounter::step`] starts one (and reads the
    /// services and backends it judges against).
    pub fn at_pass_start(&self) -> bool {
        self.cursor == 1
    }

    /// Also removes entries expired for longer than `grace`.
    pub fn sweeping(mut self, grace: std::time::Duration) -> Self {
        self.sweep = Some(grace.as_nanos().min(u64::MAX as u128) as u64);
        self
    }

    /// Scans on from the cursor for at most `budget`, judging entries against `lookup`'s
    /// services and backends (called when a pass starts). Returns the counts when the
    /// pass ended in this step.
    pub fn step<E>(
        &mut self,
        now: u64,
        budget: std::time::Duration,
        lookup: impl FnOnce() -> std::result::Result<(StdHashMap<u32, ServiceValue>, Vec<Backend>), E>,
    ) -> std::result::Result<Option<LivePins>, E> {
        let started = std::time::Instant::now();
        if self.cursor == 1 {
            (self.services, self.backends) = lookup()?;
            self.partial = LivePins::default();
            self.spent = std::time::Duration::ZERO;
        }
        let end = self.table.buckets() + 1;
        while self.cursor < end {
            let to = (self.cursor + STEP_CHUNK).min(end);
            let (services, backends, partial) = (&self.services, &self.backends, &mut self.partial);
            let mut stale = Vec::new();
            self.table.for_each(self.cursor..to, now, |e| {
                match judge_entry(&e, services, backends, now) {
                    Some((Verdict::Live { .. }, _)) => {
                        partial.add(e.key.service_id, e.value.backend_id, e.value.last_seen_ns)
                    }
                    Some((Verdict::Expired, _)) => {
                        let timeout = services[&e.key.service_id].idle_timeout_ns;
                        let idle = now.saturating_sub(e.value.last_seen_ns);
                        if self.sweep.is_some_and(|g| idle > timeout.saturating_add(g)) {
                            stale.push(e.key);
                        }
                    }
                    Some(_) | None => {}
                }
            });
            for k in stale {
                self.swept += (self.table.remove(&k, now) == Some(true)) as u64;
            }
            self.cursor = to;
            if started.elapsed() >= budget {
                break;
            }
        }
        self.spent += started.elapsed();
        if self.cursor < end {
            return Ok(None);
        }
        self.cursor = 1;
        self.last_pass = Some(self.spent);
        Ok(Some(std::mem::take(&mut self.partial)))
    }
}
