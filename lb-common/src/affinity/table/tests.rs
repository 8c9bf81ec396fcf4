use super::*;
use crate::{addr_from_bytes, prefix_mask};
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

fn v4key(svc: u32, a: [u8; 4], port: u16) -> AffinityKey {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&a);
    AffinityKey {
        service_id: svc,
        addr: addr_from_bytes(&b),
        port_be: port.to_be(),
        family: FAMILY_V4,
        _pad: 0,
    }
}

fn v6key(svc: u32, i: u64) -> AffinityKey {
    let mut b = [0u8; 16];
    b[0] = 0xfd;
    b[8..].copy_from_slice(&i.to_be_bytes());
    AffinityKey {
        service_id: svc,
        addr: addr_from_bytes(&b),
        port_be: 0,
        family: FAMILY_V6,
        _pad: 0,
    }
}

#[test]
fn value_words_round_trip() {
    let v = pack(4095, 0x3_ffff, true, 0xdead_beef);
    assert_eq!(backend_of(v), 4095);
    assert_eq!(generation_of(v), 0x3_ffff);
    assert!(is_established(v));
    assert_eq!(time_of(v), 0xdead_beef);
    assert!(!is_busy(v));
    let v = pack(7, 0x4_0003, false, 1);
    assert_eq!(
        (backend_of(v), generation_of(v), is_established(v)),
        (7, 3, false),
        "generations keep their low 18 bits"
    );
}

#[test]
fn ipv4_tags_are_the_whole_key_and_never_collide_with_ipv6() {
    let seed = 0x1234_5678_9abc_def1;
    for (svc, a, port) in [
        (0, [0, 0, 0, 0], 0),
        (255, [255; 4], 65535),
        (3, [10, 1, 2, 3], 80),
    ] {
        let k = v4key(svc, a, port);
        let p = place(&k, seed, 1000);
        assert_ne!(p.tag, 0);
        assert_eq!(p.tag & V6_MARK, 0);
        assert_eq!(v4_key(p.tag), Some(k));
        assert_eq!(tag_service(p.tag), Some(svc));
        assert!((1..=1000).contains(&p.bucket));
    }
    for i in 0..1000 {
        let p = place(&v6key(1, i), seed, 1000);
        assert_ne!(p.tag & V6_MARK, 0);
        assert_eq!(v4_key(p.tag), None);
        assert!((1..=1000).contains(&p.bucket));
    }
}

#[test]
fn the_seed_moves_buckets_and_fingerprints() {
    let k = v6key(1, 42);
    let (a, b) = (place(&k, 1, 1 << 20), place(&k, 2, 1 << 20));
    assert_ne!(a.tag, b.tag);
    assert_ne!(a.bucket, b.bucket);
    let k4 = v4key(1, [10, 0, 0, 1], 0);
    assert_eq!(place(&k4, 1, 1 << 20).tag, place(&k4, 2, 1 << 20).tag);
    assert_ne!(place(&k4, 1, 1 << 20).bucket, place(&k4, 2, 1 << 20).bucket);
}

/// Clients of one /24 or one /64, as a flood or a NAT pool sends them, spread over the
/// buckets like a uniform hash: the fullest of 4096 buckets holds close to what a
/// Poisson spread predicts.
#[test]
fn buckets_spread_adjacent_clients() {
    let buckets = 4096u32;
    for v6 in [false, true] {
        let mut count = vec![0u32; buckets as usize + 1];
        for i in 0..(2 * buckets) {
            let k = if v6 {
                v6key(2, i as u64)
            } else {
                v4key(2, [10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 0)
            };
            count[place(&k, 0xabcd, buckets).bucket as usize] += 1;
        }
        assert_eq!(count[0], 0, "bucket 0 is the header");
        let max = *count.iter().max().expect("buckets");
        assert!(max <= 10, "v6 {v6}: a bucket got {max} of a mean of 2");
    }
}

#[test]
fn table_entries_give_two_slots_per_client_and_32_bytes() {
    assert_eq!(table_entries(1 << 20), 1 << 19);
    assert_eq!(
        table_entries(1 << 20) as usize * core::mem::size_of::<Bucket>(),
        32 << 20
    );
    assert_eq!(table_entries(1), 2);
    assert_eq!(table_entries(7), 4);
    assert_eq!(data_buckets(table_entries(1 << 20)), (1 << 19) - 1);
}

#[test]
fn time_rules() {
    assert_eq!(timeout_units(200_000_000), 190);
    assert_eq!(timeout_units(u64::MAX), MAX_IDLE_UNITS);
    assert_eq!(idle_units(100, 90), 10);
    assert_eq!(idle_units(5, u32::MAX - 4), 10, "across the wrap");
    assert_eq!(idle_units(90, 100), 0, "slightly ahead: just seen");
    assert_eq!(
        idle_units(0, 1 << 31),
        u32::MAX,
        "far ahead: older than half a wrap"
    );
    assert_eq!(next_time(10, 20), 20);
    assert_eq!(next_time(20, 20), 21);
    assert_eq!(next_time(u32::MAX, 3), 3);
    // Established: two distinct 2^30 ns "seconds".
    let sec = 1u32 << SECOND_SHIFT;
    let v = pack(1, 1, false, sec - 1);
    assert!(becomes_established(v, sec));
    assert!(!becomes_established(pack(1, 1, false, sec), sec + sec - 1));
    assert!(!becomes_established(pack(1, 1, true, 0), sec), "already");
    assert!(
        !becomes_established(pack(1, 1, false, sec), sec - 1),
        "stamp ahead"
    );
}

#[test]
fn victims_free_first_then_unestablished_then_established_lru() {
    let now = 10_000;
    let live = |est: bool, idle: u32| pack(1, 1, est, now - idle);
    let to = [1000; SLOTS];
    let t = [1, 2, 3, 4];
    // An empty slot wins.
    let (s, r) = victim(&[1, 0, 3, 4], &[live(true, 1); 4], &to, now);
    assert_eq!((s, r), (1, Room::Free));
    // An expired established entry is free space.
    let v = [
        live(false, 5),
        live(true, 1001),
        live(false, 9),
        live(true, 2),
    ];
    assert_eq!(victim(&t, &v, &to, now), (1, Room::Free));
    // Expiry follows each entry's own service's timeout.
    assert_eq!(
        victim(&t, &v, &[1000, 2000, 1000, 1000], now),
        (2, Room::Unestablished)
    );
    // The least recently seen unestablished entry, even when established ones are older.
    let v = [
        live(true, 900),
        live(false, 5),
        live(false, 50),
        live(true, 999),
    ];
    assert_eq!(victim(&t, &v, &to, now), (2, Room::Unestablished));
    // All established: the least recently seen.
    let v = [
        live(true, 900),
        live(true, 5),
        live(true, 950),
        live(true, 2),
    ];
    assert_eq!(victim(&t, &v, &to, now), (2, Room::Established));
}

/// An in-memory table with the same layout as the map's (header + buckets).
struct Mem {
    hot: Vec<Bucket>,
    cold: Vec<ColdBucket>,
}

impl Mem {
    fn new(buckets: u32) -> Self {
        Self {
            hot: vec![Bucket::default(); buckets as usize + 1],
            cold: vec![ColdBucket::default(); buckets as usize + 1],
        }
    }
    fn ptrs(&mut self, bucket: u32) -> (*mut Bucket, *mut ColdBucket) {
        (
            &mut self.hot[bucket as usize] as *mut Bucket,
            &mut self.cold[bucket as usize] as *mut ColdBucket,
        )
    }
}

#[test]
fn write_find_refresh_remove() {
    let mut m = Mem::new(1);
    let (b, c) = m.ptrs(1);
    let now = 5000;
    let keys: Vec<AffinityKey> = (0..6).map(|i| v4key(1, [10, 0, 0, i], 0)).collect();
    let tag = |k: &AffinityKey| place(k, 9, 1).tag;
    for (i, k) in keys.iter().take(4).enumerate() {
        let w = unsafe {
            write(
                b,
                c,
                tag(k),
                Some(&cold_of(k, 0)),
                pack(i as u32, 7, false, now),
                now,
                |_| 1000,
            )
        };
        assert_eq!(
            w,
            Written::Pinned {
                slot: i,
                replaced: Room::Free
            }
        );
    }
    for (i, k) in keys.iter().take(4).enumerate() {
        match unsafe { find(b, tag(k)) } {
            Found::Hit { slot, val } => {
                assert_eq!((slot, backend_of(val)), (i, i as u32));
                assert_eq!(
                    unsafe { snapshot(b, c, slot) }.map(|s| cold_to_key(&s.cold)),
                    Some(*k)
                );
            }
            other => panic!("{k:?}: {other:?}"),
        }
    }
    assert_eq!(unsafe { find(b, tag(&keys[4])) }, Found::None);
    // Slot 2's client comes back in another second: established.
    let Found::Hit { val, .. } = (unsafe { find(b, tag(&keys[2])) }) else {
        panic!()
    };
    assert!(unsafe { refresh(b, 2, val, now + 2048) });
    assert!(
        !unsafe { refresh(b, 2, val, now + 2049) },
        "a stale value must lose"
    );
    let Found::Hit { val, .. } = (unsafe { find(b, tag(&keys[2])) }) else {
        panic!()
    };
    assert!(is_established(val));
    // Full bucket: the newcomer takes the least recently seen unestablished slot (0).
    let w = unsafe {
        write(
            b,
            c,
            tag(&keys[4]),
            Some(&cold_of(&keys[4], 0)),
            pack(9, 7, false, now + 2048),
            now + 2048,
            |_| 1 << 20,
        )
    };
    assert_eq!(
        w,
        Written::Pinned {
            slot: 0,
            replaced: Room::Unestablished
        }
    );
    assert_eq!(unsafe { find(b, tag(&keys[0])) }, Found::None);
    // Rewriting a present key keeps its slot, with a strictly newer stamp.
    let before = m.hot[1].val[3];
    let (b, c) = m.ptrs(1);
    let w = unsafe {
        write(
            b,
            c,
            tag(&keys[3]),
            Some(&cold_of(&keys[3], 0)),
            pack(11, 7, false, 0),
            0,
            |_| 1 << 20,
        )
    };
    assert_eq!(
        w,
        Written::Pinned {
            slot: 3,
            replaced: Room::Free
        }
    );
    assert_eq!(
        time_of(m.hot[1].val[3]),
        time_of(before) + 1,
        "rule 2: never an older stamp"
    );
    let (b, _) = m.ptrs(1);
    assert_eq!(unsafe { remove(b, tag(&keys[3]), now) }, Ok(true));
    assert_eq!(unsafe { remove(b, tag(&keys[3]), now) }, Ok(false));
    assert_eq!(unsafe { find(b, tag(&keys[3])) }, Found::None);
    // A held bucket: writers and removers step back, readers of other slots still read.
    m.hot[1].val[0] |= BUSY;
    let (b, c) = m.ptrs(1);
    assert_eq!(
        unsafe {
            write(
                b,
                c,
                tag(&keys[5]),
                Some(&cold_of(&keys[5], 0)),
                pack(1, 7, false, now),
                now,
                |_| 0,
            )
        },
        Written::Busy
    );
    assert_eq!(unsafe { remove(b, tag(&keys[4]), now) }, Err(BucketBusy));
    assert!(matches!(
        unsafe { find(b, tag(&keys[2])) },
        Found::Hit { .. }
    ));
    assert_eq!(unsafe { find(b, tag(&keys[4])) }, Found::Busy);
}

/// The protocol under real contention: writer threads pin clients that all share one
/// bucket, each to a backend that is a function of the client (its "Maglev choice") or
/// to its previous pin; readers on other threads check that every hit returns one of
/// the two backends that client may have. A pairing of one client's tag with another's
/// value fails the check.
#[test]
fn concurrent_writers_never_pair_a_key_with_another_clients_value() {
    const CLIENTS: u64 = 12;
    let mem = Arc::new(std::sync::Mutex::new(Mem::new(1)));
    let (bp, cp) = {
        let mut m = mem.lock().expect("mem");
        let (b, c) = m.ptrs(1);
        (b as usize, c as usize)
    };
    let keys: Vec<AffinityKey> = (0..CLIENTS).map(|i| v6key(3, i)).collect();
    let tags: Arc<Vec<u64>> = Arc::new(keys.iter().map(|k| place(k, 77, 1).tag).collect());
    // Client i may be on backend 2i (hashed) or 2i + 1 (pinned earlier).
    let stop = Arc::new(AtomicBool::new(false));
    let hits = Arc::new(AtomicU64::new(0));
    let writes = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for w in 0..3u64 {
        let (tags, stop, writes) = (tags.clone(), stop.clone(), writes.clone());
        let keys = keys.clone();
        threads.push(std::thread::spawn(move || {
            let mut x = w + 1;
            let mut now = 1u32;
            while !stop.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x % CLIENTS) as usize;
                let backend = 2 * i as u32 + (x >> 40) as u32 % 2;
                now = now.wrapping_add((x >> 50) as u32 % 3);
                let (b, c) = (bp as *mut Bucket, cp as *mut ColdBucket);
                match x % 8 {
                    // Mostly inserts and re-pins (evictions included: 12 clients, 4 slots).
                    0..=5 => {
                        let cold = cold_of(&keys[i], 0);
                        // Short timeouts make some entries free space, as in life.
                        let w = unsafe {
                            write(
                                b,
                                c,
                                tags[i],
                                Some(&cold),
                                pack(backend, 5, false, now),
                                now,
                                |_| 3,
                            )
                        };
                        if matches!(w, Written::Pinned { .. }) {
                            writes.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    6 => {
                        if let Found::Hit { slot, val } = unsafe { find(b, tags[i]) } {
                            unsafe { refresh(b, slot, val, now) };
                        }
                    }
                    _ => {
                        let _ = unsafe { remove(b, tags[i], now) };
                    }
                }
            }
        }));
    }
    for r in 0..2u64 {
        let (tags, stop, hits) = (tags.clone(), stop.clone(), hits.clone());
        threads.push(std::thread::spawn(move || {
            let mut i = r as usize;
            while !stop.load(Ordering::Relaxed) {
                i = (i + 1) % CLIENTS as usize;
                let b = bp as *const Bucket;
                if let Found::Hit { val, .. } = unsafe { find(b, tags[i]) } {
                    let be = backend_of(val);
                    assert!(
                        be / 2 == i as u32,
                        "client {i} got backend {be}: another client's value"
                    );
                    hits.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("no thread may fail");
    }
    let (h, w) = (hits.load(Ordering::Relaxed), writes.load(Ordering::Relaxed));
    println!("{w} writes, {h} checked hits");
    assert!(
        h > 10_000 && w > 10_000,
        "too little contention: {w} writes, {h} hits"
    );
    drop(mem);
}

#[test]
fn prefix_masked_keys_share_a_place() {
    // The key is built from the masked address: two clients of one /24 are one client.
    let m = prefix_mask(24, FAMILY_V4);
    let a = v4key(1, [10, 0, 0, 1], 0);
    let b = v4key(1, [10, 0, 0, 200], 0);
    let mask = |k: &AffinityKey| AffinityKey {
        addr: [k.addr[0] & m[0], 0, 0, 0],
        ..*k
    };
    assert_eq!(place(&mask(&a), 5, 99), place(&mask(&b), 5, 99));
}

/// A new IPv4 pin writes no cold key (it leaves the slot's as it was); the hit that
/// establishes it writes its whole key and first second.
#[test]
fn ipv4_cold_keys_are_written_when_established() {
    let mut m = Mem::new(1);
    let (b, c) = m.ptrs(1);
    let sec = 1u64 << 30;
    let (k6, k4) = (v6key(1, 9), v4key(1, [10, 0, 0, 9], 0));
    let (t6, t4) = (place(&k6, 3, 1).tag, place(&k4, 3, 1).tag);
    let t0 = 5 * sec + 1000;
    let now = units(t0);
    let w = unsafe {
        write(
            b,
            c,
            t6,
            Some(&cold_of(&k6, t0)),
            pack(1, 1, false, now),
            now,
            |_| 0,
        )
    };
    assert_eq!(
        w,
        Written::Pinned {
            slot: 0,
            replaced: Room::Free
        }
    );
    // The IPv6 entry expired (timeout 0): the IPv4 client takes its slot, no cold key.
    let w = unsafe { write(b, c, t4, None, pack(2, 1, false, now + 5), now + 5, |_| 0) };
    assert_eq!(
        w,
        Written::Pinned {
            slot: 0,
            replaced: Room::Free
        }
    );
    let s = unsafe { snapshot(b, c, 0) }.expect("entry");
    assert_eq!(
        cold_to_key(&s.cold),
        k6,
        "left untouched: the IPv6 key's record"
    );
    assert!(!is_established(s.val), "so a view must not trust it");
    // A hit a second later establishes it and writes its cold key.
    let Found::Hit { slot, val } = (unsafe { find(b, t4) }) else {
        panic!()
    };
    let later = t0 + sec + 5 * (1 << TIME_SHIFT);
    assert!(becomes_established(val, units(later)));
    let cold = ColdKey {
        pinned_s: first_second(val, later),
        ..cold_of(&k4, later)
    };
    assert_eq!(cold.pinned_s, 5, "created in second 5");
    assert!(unsafe { establish(b, c, slot, val, units(later), &cold) });
    let s = unsafe { snapshot(b, c, 0) }.expect("entry");
    assert!(is_established(s.val));
    assert_eq!(cold_to_key(&s.cold), k4);
    assert_eq!(s.cold.pinned_s, 5);
    assert!(time_of(s.val) > time_of(val), "rule 2");
    assert!(
        !unsafe { establish(b, c, slot, val, units(later), &cold) },
        "stale value"
    );
}

/// The structured collision of a multiply-rotate-per-word hash (found by the fuzzer with
/// the flow hash's construction): an IPv6 key with bit 31 of address word 1 flipped and
/// one with bit 30 of word 2 flipped must not share bucket and tag — and no single or
/// double bit flip of a key in a million tried does.
#[test]
fn ipv6_keys_a_bit_apart_never_share_a_tag() {
    let base = {
        let mut b = [0u8; 16];
        b[..6].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0x0c]);
        b[15] = 7;
        AffinityKey {
            service_id: 3,
            addr: addr_from_bytes(&b),
            port_be: 0,
            family: FAMILY_V6,
            _pad: 0,
        }
    };
    let flip = |k: &AffinityKey, bit: u32| {
        let mut k = *k;
        k.addr[(bit / 32) as usize] ^= 1 << (bit % 32);
        k
    };
    for seed in [1u64, 0xdead_beef, u64::MAX] {
        let c = place(&flip(&base, 63), seed, 1 << 19);
        let b = place(&flip(&base, 94), seed, 1 << 19);
        assert_ne!(c.tag, b.tag, "seed {seed:x}");
    }
    let seed = 0x0123_4567_89ab_cdef;
    let mut tags = std::collections::HashSet::new();
    let mut n = 0;
    for i in 0..128 {
        for j in i..128 {
            let mut k = flip(&base, i);
            if j != i {
                k = flip(&k, j);
            }
            assert!(tags.insert(place(&k, seed, 1 << 19).tag), "bits {i}, {j}");
            n += 1;
        }
    }
    for x in 0..1_000_000u64 {
        let mut k = base;
        k.addr[(x % 4) as usize] ^= (x as u32).wrapping_mul(0x9e37_79b9);
        k.service_id = (x % 7) as u32;
        if tags.insert(place(&k, seed, 1 << 19).tag) {
            n += 1;
        }
    }
    assert!(n > 1_000_000, "{n} distinct tags");
}
