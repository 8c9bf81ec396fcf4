//! The affinity table: where a pin lives, how it is packed, and the one protocol every
//! reader and writer follows — the XDP program (on the map value pointer) and userspace
//! (on the same memory, mmapped) run these very functions.
//!
//! Owns: the bucket layout, tags, value words, time units, the slot choice and the
//! read/write protocol. Must not touch: maps (callers look buckets up and hand pointers
//! in) and what an entry decides (`super::judge_word`).
//!
//! # Layout
//!
//! An ARRAY map (`XLB_AFFINITY`, `BPF_F_MMAPABLE`: the kernel then page-aligns the values,
//! so every 64-byte [`Bucket`] is exactly one cache line) of [`table_entries`] values.
//! Value 0 is the [`Header`] (hash seed, bucket count); buckets `1..=buckets` hold
//! [`SLOTS`] entries each. A key's bucket comes from a seeded hash, and a lookup reads that
//! one bucket: one cache line per packet, hit or miss. A parallel ARRAY
//! (`XLB_AFF_KEYS`, same indices) holds a [`ColdKey`] per slot — the whole key and the
//! pin's creation time — read only by userspace views, migration and, for IPv6 entries,
//! by the eviction choice. An IPv6 pin writes it when created (its tag is only a
//! fingerprint); an IPv4 pin, whose tag is its whole key, writes it once, when the client
//! becomes established ([`establish`]): a new IPv4 client — or a spoofed source of a
//! flood — touches one cache line, not two. (An unestablished entry was seen within one
//! second: its age is its idle time, to that second.)
//!
//! Per slot, two 64-bit words:
//! - **tag**: 0 = empty. IPv4: the whole key (`V4_MARK | service << 48 | port << 32 |
//!   address`), so an IPv4 match is exact. IPv6: `V6_MARK |` 63 bits of a second seeded
//!   hash of the whole key (a fingerprint). IPv4 and IPv6 tags never equal each other
//!   (bit 63), and no key's tag is 0.
//! - **value**: `BUSY | ESTABLISHED | backend id (12) | generation (18) | last seen (32)`,
//!   the time in units of 2^20 ns (≈1.05 ms) of `bpf_ktime_get_coarse_ns`.
//!
//! 32 bytes of hot table per configured client: [`SLOTS_PER_CLIENT`] slots of 16 bytes.
//!
//! # False matches (IPv6)
//!
//! A lookup compares its tag with at most [`SLOTS`] = 4 tags. Its bucket index comes from
//! `table_hash(seed, key)` and its fingerprint from `table_hash(seed ^ FINGERPRINT_SEED,
//! key)`: differently seeded, so modelled as independent. Given that another IPv6 key
//! shares the bucket, its 63 fingerprint bits equal ours with probability 2^-63; with 4
//! entries compared, a false match has probability ≤ 4 · 2^-63 = 2^-61 < 2^-60 per
//! lookup. (IPv4 matches are exact.) The seed is random per table and kept in its header,
//! so nobody outside the host can aim addresses at one bucket or one fingerprint.
//!
//! That model needs a hash without structure across its input words: [`table_hash`] runs
//! each 64-bit word through the nonlinear MurmurHash3 finalizer, seeded, before the next
//! is absorbed. (The flow hash of the Maglev slot, a multiply-rotate per word and one
//! finalizer, is linear across words: flipping bit 63 of the first word and flipping bit
//! 30 of the second give the same hash for every seed — harmless for a slot, fatal for a
//! fingerprint; the fuzzer found two IPv6 clients one such flip apart sharing a pin.)
//!
//! # Concurrency: a torn or concurrent write may lose a pin, never misdirect one
//!
//! Writers on several CPUs, userspace included, and readers that never block. The rules:
//! 1. A slot's tag and its cold key are written only while its value word carries
//!    `BUSY`, set with a compare-and-swap from the value the writer read.
//! 2. Every completed change of a value word gives it a strictly larger time than the
//!    value it replaced (a write in the same time unit takes `old + 1`), so a value never
//!    repeats (until the 32-bit time wraps: 52 days of bumps between a reader's two loads).
//!    `BUSY` is cleared by storing the new value, or by restoring the exact old value when
//!    the tag was left untouched.
//! 3. Structural changes of a bucket (insert, evict, remove) hold the bucket lock: `BUSY`
//!    on slot 0's value word. So two CPUs inserting the same client never both write it:
//!    the loser skips (its packet goes to the same Maglev backend), and no key is ever in
//!    two slots. Refreshes of `last seen` need no lock: one CAS on the value word.
//! 4. A reader loads value, tag, value ([`find`]); it uses the slot only when both value
//!    loads are equal and not `BUSY` and the tag is its key's.
//!
//! Why that is enough: say a reader accepts (tag K, value v) with v loaded at t1 and t2 and
//! K at t in between. Any tag store between t1 and t2 was preceded by a CAS to `BUSY` and
//! followed by a strictly newer value (rule 2), after which values only grow; so the value
//! at t2 could not equal v. Hence no tag store happened between t1 and t2: K was the tag
//! of the slot whose value v was, and v is K's own (pinned or hashed) backend. (A plain
//! `tag := 0; value; tag` protocol is not enough: two writers of one slot interleave into
//! one key with another's value; and without rule 2 a reader stalled across two writes
//! can pair a tag with a value that happens to recur.) A reader that sees `BUSY` retries
//! a few times and otherwise lets Maglev decide this packet, writing nothing: a lost pin
//! for one packet at worst, never a wrong one.
//!
//! Memory order: x86 (TSO) keeps loads in order with loads and stores with stores, and the
//! CAS (`lock cmpxchg`) is a full barrier; the BPF JIT emits loads and stores in program
//! order and volatile accesses keep LLVM from reordering them. arm64 would need the reader's
//! first two loads as load-acquire and the writer's value store as store-release (BPF
//! `load_acquire`/`store_release`, kernel ≥ 6.15); userspace already uses Acquire/Release.

use crate::{Addr, AffinityKey, FAMILY_V4, FAMILY_V6, MAX_BACKENDS, MAX_SERVICES, hash::fmix64};

/// Entries per bucket.
pub const SLOTS: usize = 4;
/// Slots the table holds per configured client (`affinity_capacity`): with 4-slot buckets
/// a random spread overflows a bucket for a small fraction of the clients at full
/// capacity (README, "Capacity").
pub const SLOTS_PER_CLIENT: u32 = 2;

/// One bucket: 64 bytes, one cache line.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    pub tag: [u64; SLOTS],
    pub val: [u64; SLOTS],
}
const _: () = assert!(core::mem::size_of::<Bucket>() == 64);

/// `Header::magic`: "XLBAFF" and the layout version 1.
pub const HEADER_MAGIC: u64 = u64::from_le_bytes(*b"XLBAFF\x00\x01");

/// Value 0 of the table: what a reader needs to find keys in it. Written once, by the
/// controller, before any entry (and before the program that reads it is attached).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// [`HEADER_MAGIC`]; 0 for a table nobody initialised yet.
    pub magic: u64,
    /// The hash seed of this table (never 0 once initialised).
    pub seed: u64,
    /// Data buckets (`1..=buckets` are used).
    pub buckets: u32,
    /// [`SLOTS`].
    pub slots: u32,
    pub _reserved: [u64; 5],
}
const _: () = assert!(core::mem::size_of::<Header>() == 64);

/// The rest of a pinned key, per slot in `XLB_AFF_KEYS`: written with the tag (under
/// `BUSY`), validated by recomputing the tag from it. 8-aligned: written as three words.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ColdKey {
    /// The masked client address, network order ([`Addr`]).
    pub addr: Addr,
    /// When the pin was created: `bpf_ktime_get_coarse_ns() >> 30` (≈ seconds).
    pub pinned_s: u32,
    /// Source port, network order (`affinity = "none"`), else 0.
    pub port_be: u16,
    /// Service id.
    pub service: u8,
    /// `FAMILY_V4` or `FAMILY_V6` (0: never written).
    pub family: u8,
}
const _: () = assert!(core::mem::size_of::<ColdKey>() == 24);

/// The cold keys of one bucket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ColdBucket {
    pub key: [ColdKey; SLOTS],
}
const _: () = assert!(core::mem::size_of::<ColdBucket>() == 96);

/// `max_entries` of the table (and of the cold keys) for `affinity_capacity` clients:
/// [`SLOTS_PER_CLIENT`] slots per client, the header included — so the hot table costs
/// exactly 32 bytes per configured client.
pub const fn table_entries(capacity: u32) -> u32 {
    let n = capacity.div_ceil(SLOTS as u32 / SLOTS_PER_CLIENT);
    if n < 2 { 2 } else { n }
}

/// Data buckets of a table of `entries` values.
pub const fn data_buckets(entries: u32) -> u32 {
    entries - 1
}

// ---------------------------------------------------------------------------------------
// Tags and places.
// ---------------------------------------------------------------------------------------

/// Set in every IPv4 tag (so no tag is 0); bit 63 clear.
pub const V4_MARK: u64 = 1 << 56;
/// Set in every IPv6 tag.
pub const V6_MARK: u64 = 1 << 63;
/// XORed into the seed for the IPv6 fingerprint, so it and the bucket index come from
/// differently seeded hashes.
pub const FINGERPRINT_SEED: u64 = 0x510e_527f_ade6_82d1;

// The IPv4 tag holds the service id in 8 bits.
const _: () = assert!(MAX_SERVICES <= 256);

/// Where a key lives: its tag and its bucket (`1..=buckets`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    pub tag: u64,
    pub bucket: u32,
}

/// `h`'s high 32 bits scaled onto `1..=buckets` (no division).
#[inline(always)]
fn bucket_of(h: u64, buckets: u32) -> u32 {
    1 + (((h >> 32) * buckets as u64) >> 32) as u32
}

/// A seeded hash of three words in which every word goes through the nonlinear
/// finalizer, with all before it, before the next is absorbed: no difference in one word
/// can cancel one in another independently of the seed (see the module docs).
#[inline(always)]
pub const fn table_hash(w: [u64; 3], seed: u64) -> u64 {
    let h = fmix64(seed ^ w[0]);
    let h = fmix64(h ^ w[1]);
    fmix64(h ^ w[2] ^ 0x9e37_79b9_7f4a_7c15)
}

/// The three words [`table_hash`] takes of an IPv6 key: address halves (in wire byte
/// order read little-endian, so equal on every host), then service and port.
#[inline(always)]
const fn v6_words(key: &AffinityKey) -> [u64; 3] {
    let a = &key.addr;
    [
        (u32::from_le(a[0]) as u64) | ((u32::from_le(a[1]) as u64) << 32),
        (u32::from_le(a[2]) as u64) | ((u32::from_le(a[3]) as u64) << 32),
        (key.service_id as u64) | ((key.port_be as u64) << 32) | (1 << 48),
    ]
}

/// The tag and bucket of `key` in a table with `seed` and `buckets` data buckets.
#[inline(always)]
pub fn place(key: &AffinityKey, seed: u64, buckets: u32) -> Place {
    if key.family == FAMILY_V6 {
        let w = v6_words(key);
        let h = table_hash(w, seed);
        let f = table_hash(w, seed ^ FINGERPRINT_SEED);
        Place {
            tag: V6_MARK | f,
            bucket: bucket_of(h, buckets),
        }
    } else {
        let tag = V4_MARK
            | ((key.service_id as u64 & 0xff) << 48)
            | ((key.port_be as u64) << 32)
            | key.addr[0] as u64;
        Place {
            tag,
            bucket: bucket_of(fmix64(tag ^ seed), buckets),
        }
    }
}

/// The service id an entry's tag names: IPv4 tags hold it, IPv6 ones need the cold key.
#[inline(always)]
pub fn tag_service(tag: u64) -> Option<u32> {
    if tag & V6_MARK == 0 {
        Some(((tag >> 48) & 0xff) as u32)
    } else {
        None
    }
}

/// The key of an IPv4 tag.
pub fn v4_key(tag: u64) -> Option<AffinityKey> {
    if tag & V6_MARK != 0 || tag & V4_MARK == 0 {
        return None;
    }
    Some(AffinityKey {
        service_id: ((tag >> 48) & 0xff) as u32,
        addr: [tag as u32, 0, 0, 0],
        port_be: (tag >> 32) as u16,
        family: FAMILY_V4,
        _pad: 0,
    })
}

/// The key a cold record holds.
pub fn cold_to_key(c: &ColdKey) -> AffinityKey {
    AffinityKey {
        service_id: c.service as u32,
        addr: c.addr,
        port_be: c.port_be,
        family: c.family,
        _pad: 0,
    }
}

/// The cold record of `key`, pinned at `now_ns`.
#[inline(always)]
pub fn cold_of(key: &AffinityKey, now_ns: u64) -> ColdKey {
    ColdKey {
        addr: key.addr,
        pinned_s: (now_ns >> 30) as u32,
        port_be: key.port_be,
        service: key.service_id as u8,
        family: key.family,
    }
}

// ---------------------------------------------------------------------------------------
// Value words and time.
// ---------------------------------------------------------------------------------------

/// Set while a writer owns the slot (slot 0: the whole bucket).
pub const BUSY: u64 = 1 << 63;
/// The client's packets were seen in two distinct seconds (admission, see [`victim`]).
pub const ESTABLISHED: u64 = 1 << 62;
const BACKEND_SHIFT: u32 = 50;
const BACKEND_MASK: u64 = (1 << 12) - 1;
const GEN_SHIFT: u32 = 32;
/// Generation bits kept per entry.
pub const GEN_BITS: u32 = 18;
/// The generation bits kept, as a mask.
pub const GEN_MASK: u32 = (1 << GEN_BITS) - 1;
const TIME_MASK: u64 = 0xffff_ffff;
const _: () = assert!(MAX_BACKENDS as u64 <= BACKEND_MASK + 1);

/// Time unit of entries: 2^20 ns ≈ 1.05 ms, a quarter of a scheduler tick at HZ=250.
pub const TIME_SHIFT: u32 = 20;
/// `bpf_ktime_get_coarse_ns` → table time units (wrapping every 2^52 ns ≈ 52 days).
#[inline(always)]
pub const fn units(ns: u64) -> u32 {
    (ns >> TIME_SHIFT) as u32
}
/// Units per "second" of the admission rule: 2^30 ns ≈ 1.07 s.
const SECOND_SHIFT: u32 = 30 - TIME_SHIFT;

/// How far a stamp may lie in the future of `now` and still be a recent one (rule 2's
/// bumps); further means the clock wrapped past it.
const FUTURE_SLACK: i32 = 1 << 16;

/// The longest idle time the table can tell: 2^31 units ≈ 26 days. A longer
/// `idle_timeout` acts as this one.
pub const MAX_IDLE_UNITS: u32 = (1 << 31) - 1;

/// `idle_timeout` in table units, capped at [`MAX_IDLE_UNITS`].
#[inline(always)]
pub const fn timeout_units(idle_timeout_ns: u64) -> u32 {
    let u = idle_timeout_ns >> TIME_SHIFT;
    if u > MAX_IDLE_UNITS as u64 {
        MAX_IDLE_UNITS
    } else {
        u as u32
    }
}

/// Idle time of an entry stamped `last`, at `now` (units). A stamp slightly ahead counts
/// as 0; one far ahead can only be older than half the clock's wrap: idle "forever".
#[inline(always)]
pub const fn idle_units(now: u32, last: u32) -> u32 {
    let d = now.wrapping_sub(last) as i32;
    if d >= 0 {
        d as u32
    } else if d > -FUTURE_SLACK {
        0
    } else {
        u32::MAX
    }
}

/// A value word (not busy): the backend id's 12 bits, the generation's low
/// [`GEN_BITS`], established, and the last-seen stamp (units).
#[inline(always)]
pub const fn pack(backend_id: u32, generation: u32, established: bool, time: u32) -> u64 {
    ((backend_id as u64 & BACKEND_MASK) << BACKEND_SHIFT)
        | (((generation & GEN_MASK) as u64) << GEN_SHIFT)
        | if established { ESTABLISHED } else { 0 }
        | time as u64
}
/// The backend id of a value word.
#[inline(always)]
pub const fn backend_of(v: u64) -> u32 {
    ((v >> BACKEND_SHIFT) & BACKEND_MASK) as u32
}
/// The generation bits of a value word (the backend's generation & [`GEN_MASK`]).
#[inline(always)]
pub const fn generation_of(v: u64) -> u32 {
    ((v >> GEN_SHIFT) as u32) & GEN_MASK
}
/// The last-seen stamp of a value word (units of 2^20 ns, wrapping).
#[inline(always)]
pub const fn time_of(v: u64) -> u32 {
    v as u32
}
/// Whether a value word's client is established.
#[inline(always)]
pub const fn is_established(v: u64) -> bool {
    v & ESTABLISHED != 0
}
#[inline(always)]
const fn is_busy(v: u64) -> bool {
    v & BUSY != 0
}

/// The time a write replacing a value stamped `old` takes at `now`: `now`, or `old + 1`
/// when `now` is not later (rule 2).
#[inline(always)]
pub const fn next_time(old: u32, now: u32) -> u32 {
    if (now.wrapping_sub(old) as i32) > 0 {
        now
    } else {
        old.wrapping_add(1)
    }
}

/// Does a hit on `v` at `now` move the client to established? Packets in two distinct
/// seconds: the one that stamped `v` and this one.
#[inline(always)]
pub const fn becomes_established(v: u64, now: u32) -> bool {
    !is_established(v)
        && (now.wrapping_sub(time_of(v)) as i32) > 0
        && (now >> SECOND_SHIFT) != (time_of(v) >> SECOND_SHIFT)
}

// ---------------------------------------------------------------------------------------
// Memory access: volatile in the XDP program, Acquire/Release atomics in userspace.
// ---------------------------------------------------------------------------------------

/// # Safety
/// `p` points to a live, 8-aligned word of a table.
#[inline(always)]
pub(crate) unsafe fn load(p: *const u64) -> u64 {
    #[cfg(target_arch = "bpf")]
    {
        // SAFETY: see the function contract.
        unsafe { core::ptr::read_volatile(p) }
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        // SAFETY: see the function contract; the word is shared with other threads.
        unsafe { core::sync::atomic::AtomicU64::from_ptr(p as *mut u64) }
            .load(core::sync::atomic::Ordering::Acquire)
    }
}

/// # Safety
/// As [`load`].
#[inline(always)]
unsafe fn store(p: *mut u64, v: u64) {
    #[cfg(target_arch = "bpf")]
    {
        // SAFETY: see the function contract.
        unsafe { core::ptr::write_volatile(p, v) }
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        // SAFETY: see the function contract.
        unsafe { core::sync::atomic::AtomicU64::from_ptr(p) }
            .store(v, core::sync::atomic::Ordering::Release)
    }
}

/// Compare-and-swap (BPF_ATOMIC | BPF_CMPXCHG in the XDP program, kernel ≥ 5.12).
///
/// # Safety
/// As [`load`].
#[inline(always)]
pub(crate) unsafe fn cas(p: *mut u64, old: u64, new: u64) -> bool {
    #[cfg(target_arch = "bpf")]
    {
        use core::intrinsics::{AtomicOrdering::SeqCst, atomic_cxchg};
        // SAFETY: see the function contract.
        unsafe { atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(p, old, new).1 }
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        use core::sync::atomic::{AtomicU64, Ordering::SeqCst};
        // SAFETY: see the function contract.
        unsafe { AtomicU64::from_ptr(p) }
            .compare_exchange(old, new, SeqCst, SeqCst)
            .is_ok()
    }
}

/// Cold keys are written as three words (volatile: the userspace reader checks them
/// against the tag, so a torn one is only ever rejected).
///
/// # Safety
/// `dst` points to a live cold record.
#[inline(always)]
unsafe fn store_cold(dst: *mut ColdKey, c: &ColdKey) {
    let src = c as *const ColdKey as *const u64;
    let dst = dst as *mut u64;
    for i in 0..3 {
        // SAFETY: 24 bytes, 8-aligned, both sides.
        unsafe { store(dst.add(i), *src.add(i)) };
    }
}

/// # Safety
/// `src` points to a live cold record.
#[inline(always)]
pub unsafe fn load_cold(src: *const ColdKey) -> ColdKey {
    let mut out = ColdKey::default();
    let dst = &mut out as *mut ColdKey as *mut u64;
    let src = src as *const u64;
    for i in 0..3 {
        // SAFETY: 24 bytes, 8-aligned, both sides.
        unsafe { *dst.add(i) = load(src.add(i)) };
    }
    out
}

// ---------------------------------------------------------------------------------------
// Reading.
// ---------------------------------------------------------------------------------------

/// Attempts of a reader at a slot another CPU is writing (each a few ns apart; a writer
/// holds a slot for tens of ns).
const READ_TRIES: u32 = 3;

/// What a lookup found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// The key's slot and its value word, read consistently (rule 4).
    Hit { slot: usize, val: u64 },
    /// No slot holds the key.
    None,
    /// The key's slot was being written through every attempt: decide without the table.
    Busy,
}

/// Looks `tag` up in bucket `b` (rule 4).
///
/// # Safety
/// `b` points to a live bucket of a table.
#[inline(always)]
pub unsafe fn find(b: *const Bucket, tag: u64) -> Found {
    // SAFETY (all accesses): within the bucket the caller vouches for.
    let (tags, vals) = unsafe {
        (
            core::ptr::addr_of!((*b).tag) as *const u64,
            core::ptr::addr_of!((*b).val) as *const u64,
        )
    };
    for i in 0..SLOTS {
        for _ in 0..READ_TRIES {
            let v1 = unsafe { load(vals.add(i)) };
            let t = unsafe { load(tags.add(i)) };
            if t != tag {
                break;
            }
            let v2 = unsafe { load(vals.add(i)) };
            if v1 == v2 && !is_busy(v1) {
                return Found::Hit { slot: i, val: v1 };
            }
        }
        // Re-check after the attempts: a slot still naming the key but never stable.
        if unsafe { load(tags.add(i)) } == tag {
            return Found::Busy;
        }
    }
    Found::None
}

/// One slot read consistently: its tag, value and cold key (userspace views).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub tag: u64,
    pub val: u64,
    pub cold: ColdKey,
}

/// Attempts of a view at a busy slot: a writer holds one for tens of ns, a view (userspace)
/// can wait a little longer than a packet.
const SNAPSHOT_TRIES: u32 = 10_000;

/// Reads slot `i` of bucket `b` (and its cold key in `c`) consistently, or `None` when it
/// is empty or stayed busy (a writer stalled: its vCPU preempted).
///
/// # Safety
/// `b` and `c` point to the same live bucket of a table and of its cold keys.
pub unsafe fn snapshot(b: *const Bucket, c: *const ColdBucket, i: usize) -> Option<Snapshot> {
    // SAFETY (all accesses): within the buckets the caller vouches for.
    let (tags, vals, cold) = unsafe {
        (
            core::ptr::addr_of!((*b).tag) as *const u64,
            core::ptr::addr_of!((*b).val) as *const u64,
            core::ptr::addr_of!((*c).key) as *const ColdKey,
        )
    };
    for _ in 0..SNAPSHOT_TRIES {
        let v1 = unsafe { load(vals.add(i)) };
        let tag = unsafe { load(tags.add(i)) };
        if tag == 0 {
            return None;
        }
        let cold = unsafe { load_cold(cold.add(i)) };
        let v2 = unsafe { load(vals.add(i)) };
        if v1 == v2 && !is_busy(v1) {
            return Some(Snapshot { tag, val: v1, cold });
        }
        core::hint::spin_loop();
    }
    None
}

// ---------------------------------------------------------------------------------------
// Writing.
// ---------------------------------------------------------------------------------------

/// Refreshes slot `i` found with value `v` at `now`: `last seen := now`, and
/// established when this hit makes it so. One CAS; a lost race is harmless (someone else
/// wrote the slot, with a newer stamp or another key).
///
/// # Safety
/// As [`find`].
#[inline(always)]
pub unsafe fn refresh(b: *mut Bucket, i: usize, v: u64, now: u32) -> bool {
    // SAFETY: slot i < SLOTS of the bucket the caller vouches for.
    unsafe {
        cas(
            (core::ptr::addr_of_mut!((*b).val) as *mut u64).add(i & 3),
            v,
            refreshed(v, now),
        )
    }
}

/// The value a hit on `v` at `now` writes.
#[inline(always)]
const fn refreshed(v: u64, now: u32) -> u64 {
    let est = if becomes_established(v, now) {
        ESTABLISHED
    } else {
        0
    };
    (v & !TIME_MASK) | est | next_time(time_of(v), now) as u64
}

/// [`refresh`] of a hit that makes its IPv4 client established, also writing its cold
/// key (`cold`, its creation time included) under the slot's `BUSY` (rule 1): the one
/// time an IPv4 pin writes a second cache line.
///
/// # Safety
/// `b` and `c` point to the same live bucket of a table and of its cold keys.
#[inline(always)]
pub unsafe fn establish(
    b: *mut Bucket,
    c: *mut ColdBucket,
    i: usize,
    v: u64,
    now: u32,
    cold: &ColdKey,
) -> bool {
    let i = i & (SLOTS - 1);
    // SAFETY (all accesses): slot i of the buckets the caller vouches for.
    let (val, colds) = unsafe {
        (
            (core::ptr::addr_of_mut!((*b).val) as *mut u64).add(i),
            core::ptr::addr_of_mut!((*c).key) as *mut ColdKey,
        )
    };
    if is_busy(v) || !unsafe { cas(val, v, v | BUSY) } {
        return false;
    }
    unsafe {
        store_cold(colds.add(i), cold);
        store(val, refreshed(v, now));
    }
    true
}

/// The creation second (`ns >> 30`) of an entry that is being established at `now_ns`:
/// its stamp before this hit is its first packet's (no earlier hit refreshed it: that
/// would have established it already, or was in the same second).
#[inline(always)]
pub const fn first_second(v: u64, now_ns: u64) -> u32 {
    let idle = idle_units(units(now_ns), time_of(v)) as u64;
    (((now_ns >> TIME_SHIFT).saturating_sub(idle)) >> SECOND_SHIFT) as u32
}

/// Why a slot may be taken for a new pin, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Room {
    /// Empty, or expired under its own service's `idle_timeout`: free space.
    Free,
    /// Live, never seen in two distinct seconds.
    Unestablished,
    /// Live and established: taken only when every slot is.
    Established,
}

/// The slot a new pin takes in a bucket whose slots have `tags`, `vals` and `idle_to`
/// (each entry's own service's timeout, units) at `now`: the first free slot; else the
/// least recently seen unestablished entry; an established entry only when every entry
/// is established (then the least recently seen). Returns the slot and what it held.
#[inline(always)]
pub fn victim(
    tags: &[u64; SLOTS],
    vals: &[u64; SLOTS],
    idle_to: &[u32; SLOTS],
    now: u32,
) -> (usize, Room) {
    let mut best = 0usize;
    let mut best_room = Room::Established;
    let mut best_idle = 0u32;
    let mut first = true;
    for i in 0..SLOTS {
        let idle = idle_units(now, time_of(vals[i]));
        let room = if tags[i] == 0 || idle > idle_to[i] {
            Room::Free
        } else if is_established(vals[i]) {
            Room::Established
        } else {
            Room::Unestablished
        };
        if room == Room::Free {
            return (i, Room::Free);
        }
        if first || room < best_room || (room == best_room && idle > best_idle) {
            best = i;
            best_room = room;
            best_idle = idle;
            first = false;
        }
    }
    (best, best_room)
}

/// Another writer held the bucket: try again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketBusy;

/// What [`write`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// The pin is in `slot`; `replaced` says what the slot held (the key's own old entry
    /// counts as `Free`).
    Pinned { slot: usize, replaced: Room },
    /// Another writer held the bucket or the slot: nothing written.
    Busy,
}

/// Writes the pin `tag → word` ([`pack`]: backend, generation, established, last seen)
/// into bucket `b` (cold keys `c`, with `cold` when given) at `now`, replacing the key's
/// own entry if it has one, else the slot [`victim`] picks. The stored stamp is the
/// word's, or just above the slot's old one (rule 2). `idle_of(service id)` gives a
/// service's timeout in units (an IPv6 entry's service id comes from its cold key).
/// Follows rules 1–3; never waits.
///
/// Without `cold` (a new IPv4 client) the slot's cold key is left untouched — not even
/// voided, which would cost the cache line this saves: it may name another key, or this
/// key's earlier pin, so views trust an IPv4 entry's cold key only once the entry is
/// established ([`establish`] writes it then).
///
/// # Safety
/// `b` and `c` point to the same live bucket of a table and of its cold keys.
#[inline(always)]
pub unsafe fn write(
    b: *mut Bucket,
    c: *mut ColdBucket,
    tag: u64,
    cold: Option<&ColdKey>,
    word: u64,
    now: u32,
    idle_of: impl Fn(u32) -> u32,
) -> Written {
    // SAFETY (all accesses): within the buckets the caller vouches for.
    let (tags, vals, colds) = unsafe {
        (
            core::ptr::addr_of_mut!((*b).tag) as *mut u64,
            core::ptr::addr_of_mut!((*b).val) as *mut u64,
            core::ptr::addr_of_mut!((*c).key) as *mut ColdKey,
        )
    };
    // Rule 3: the bucket lock is BUSY on slot 0.
    let v0 = unsafe { load(vals) };
    if is_busy(v0) || !unsafe { cas(vals, v0, v0 | BUSY) } {
        return Written::Busy;
    }
    let mut t = [0u64; SLOTS];
    let mut v = [0u64; SLOTS];
    let mut idle_to = [0u32; SLOTS];
    let mut own = SLOTS;
    for i in 0..SLOTS {
        t[i] = unsafe { load(tags.add(i)) };
        v[i] = if i == 0 {
            v0
        } else {
            unsafe { load(vals.add(i)) }
        };
        if t[i] == tag {
            own = i;
        }
        let svc = match tag_service(t[i]) {
            Some(s) => s,
            None => unsafe { (*colds.add(i)).service as u32 },
        };
        idle_to[i] = idle_of(svc);
    }
    let (slot, replaced) = if own < SLOTS {
        (own, Room::Free)
    } else {
        victim(&t, &v, &idle_to, now)
    };
    let slot = slot & (SLOTS - 1);
    let old = v[slot];
    // Rule 1: the slot's own BUSY (slot 0's is the lock we hold). A refresh may have
    // changed it since we read it: then we lose this time.
    if slot != 0 && !unsafe { cas(vals.add(slot), old, old | BUSY) } {
        unsafe { store(vals, v0) };
        return Written::Busy;
    }
    unsafe {
        store(tags.add(slot), tag);
        if let Some(cold) = cold {
            store_cold(colds.add(slot), cold);
        }
        store(
            vals.add(slot),
            (word & !(TIME_MASK | BUSY)) | next_time(time_of(old), time_of(word)) as u64,
        );
        if slot != 0 {
            // Unlock: slot 0 unchanged, its exact old value (rule 2 allows it: its tag
            // was not touched).
            store(vals, v0);
        }
    }
    Written::Pinned { slot, replaced }
}

/// Removes `tag` from bucket `b` when present (the slot becomes empty, its stamp bumped
/// per rule 2).
///
/// # Safety
/// As [`find`].
pub unsafe fn remove(b: *mut Bucket, tag: u64, now: u32) -> Result<bool, BucketBusy> {
    // SAFETY (all accesses): within the bucket the caller vouches for.
    let (tags, vals) = unsafe {
        (
            core::ptr::addr_of_mut!((*b).tag) as *mut u64,
            core::ptr::addr_of_mut!((*b).val) as *mut u64,
        )
    };
    let v0 = unsafe { load(vals) };
    if is_busy(v0) || !unsafe { cas(vals, v0, v0 | BUSY) } {
        return Err(BucketBusy);
    }
    let mut slot = SLOTS;
    for i in 0..SLOTS {
        if unsafe { load(tags.add(i)) } == tag {
            slot = i;
        }
    }
    if slot == SLOTS {
        unsafe { store(vals, v0) };
        return Ok(false);
    }
    let old = if slot == 0 {
        v0
    } else {
        let old = unsafe { load(vals.add(slot)) };
        if !unsafe { cas(vals.add(slot), old, old | BUSY) } {
            unsafe { store(vals, v0) };
            return Err(BucketBusy);
        }
        old
    };
    unsafe {
        store(tags.add(slot), 0);
        store(vals.add(slot), next_time(time_of(old), now) as u64);
        if slot != 0 {
            store(vals, v0);
        }
    }
    Ok(true)
}

/// Moves the stamp of `tag`'s entry in bucket `b` to `time` — also back in time, which
/// rule 2 otherwise forbids: for tests and tools that age an entry, never for the data
/// plane. (A stamp moved back can recreate a value the slot had before; a reader racing
/// this very write across two earlier rewrites of the slot could then pair wrongly.)
/// `Ok(false)`: no such entry.
///
/// # Safety
/// As [`find`].
pub unsafe fn restamp(b: *mut Bucket, tag: u64, time: u32) -> Result<bool, BucketBusy> {
    // SAFETY (all accesses): within the bucket the caller vouches for.
    let (tags, vals) = unsafe {
        (
            core::ptr::addr_of_mut!((*b).tag) as *mut u64,
            core::ptr::addr_of_mut!((*b).val) as *mut u64,
        )
    };
    let v0 = unsafe { load(vals) };
    if is_busy(v0) || !unsafe { cas(vals, v0, v0 | BUSY) } {
        return Err(BucketBusy);
    }
    let mut found = false;
    for i in 0..SLOTS {
        if unsafe { load(tags.add(i)) } != tag {
            continue;
        }
        let old = if i == 0 {
            v0
        } else {
            unsafe { load(vals.add(i)) }
        };
        let new = (old & !(TIME_MASK | BUSY)) | time as u64;
        if i == 0 {
            unsafe { store(vals, new) };
            return Ok(true);
        }
        found = unsafe { cas(vals.add(i), old, new) };
    }
    unsafe { store(vals, v0) };
    Ok(found)
}

#[cfg(test)]
mod tests;
