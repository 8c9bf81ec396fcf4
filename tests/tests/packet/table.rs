//! The affinity table's own rows: expiry exactly at `idle_timeout`, a bucket full of
//! established clients meeting a newcomer, unestablished entries evicted first, clients
//! built to share a bucket (and as many fingerprint bits as the search finds), a
//! generation mismatch, the same new client inserted from two CPUs at once, and two CPUs
//! hammering one bucket — every forwarded frame checked against the backend its client
//! was pinned or hashed to.
//!
//! Clients that share a bucket are found by placing candidate keys with the table's own
//! seed (`lb_common::affinity::table::place`), as the XDP program does.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use lb_common::{
    AffinityKey, AffinityValue,
    affinity::table::{self, Place},
};
use xlb::{
    dataplane::{loader::LoadOptions, maps::ktime_coarse_ns},
    model::{Protocol, Service},
    reconcile::inspect::{Decision, affinity_key},
};
use xlb_tests::{
    enter_private_netns,
    harness::{XdpAction, XlbHarness, run_once},
    packet::{tcp_frame, v4, v6},
    require_root,
};

use super::{LO, backends, mac_of};

const SEC: u64 = 1_000_000_000;

/// One service with `n` backends on lo, in a table for `capacity` clients.
struct Table {
    h: XlbHarness,
    vip: IpAddr,
    /// Backend address by the destination MAC the program writes.
    by_mac: BTreeMap<[u8; 6], IpAddr>,
}

impl Table {
    fn new(capacity: u32, n: u8, v6vip: bool, idle: Duration) -> Self {
        require_root();
        enter_private_netns();
        let mut h = XlbHarness::load(&LoadOptions {
            affinity_capacity: capacity,
            maglev_slots: 1 << 16,
        });
        let vip = if v6vip {
            v6("2001:db8::10")
        } else {
            v4("203.0.113.10")
        };
        let addrs: Vec<String> = (0..n)
            .map(|i| {
                if v6vip {
                    format!("2001:db8:1::{:x}", 0x11 + i)
                } else {
                    format!("192.0.2.{}", 11 + i)
                }
            })
            .collect();
        let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
        let mut s = Service::new("web", vip, 80, Protocol::Tcp);
        // A prime of at least 100 slots per backend (the validator's rule).
        s.table_size = if n > 10 { 1601 } else { 1021 };
        s.idle_timeout = idle;
        h.add_service(s, &backends(&refs, LO)).expect("service");
        let by_mac = addrs
            .iter()
            .map(|a| {
                let a: IpAddr = a.parse().expect("addr");
                (mac_of(a), a)
            })
            .collect();
        Self { h, vip, by_mac }
    }

    fn key(&self, c: IpAddr) -> AffinityKey {
        affinity_key(self.h.ctl.service("web").expect("web"), c, 0).expect("key")
    }

    fn place(&self, c: IpAddr) -> Place {
        let t = &self.h.dp().affinity;
        table::place(&self.key(c), t.seed(), t.buckets())
    }

    /// The backend one packet of `c` reached.
    fn send(&self, c: IpAddr) -> IpAddr {
        let r = self.h.run(&tcp_frame(c, self.vip, 40_000, 80), LO);
        assert_eq!(r.action, XdpAction::Tx as u32, "{c} not forwarded");
        self.by_mac[&<[u8; 6]>::try_from(&r.output[..6]).expect("mac")]
    }

    fn entry(&self, c: IpAddr) -> Option<AffinityValue> {
        self.h.dp().affinity_get(&self.key(c)).expect("lookup")
    }

    fn judged(&self, c: IpAddr) -> Option<xlb::dataplane::maps::JudgedPin> {
        let svc = self.h.ctl.service("web").expect("web").value;
        self.h
            .dp()
            .judge(&svc, &self.key(c), ktime_coarse_ns())
            .expect("judge")
    }

    /// The backend Maglev gives `c`.
    fn hashed(&self, c: IpAddr) -> IpAddr {
        self.h
            .explain("web", c, 0)
            .expect("explain")
            .slot_backend
            .expect("a backend")
    }

    fn backend_id(&self, addr: IpAddr) -> (u32, u32) {
        let b = self
            .h
            .ctl
            .service("web")
            .expect("web")
            .backend(addr)
            .expect("backend");
        (b.id, b.generation)
    }

    /// Pins `c` to `backend`, last seen `idle` ago, established or not.
    fn pin(&mut self, c: IpAddr, backend: IpAddr, idle: Duration, established: bool) {
        let (id, generation) = self.backend_id(backend);
        let now = ktime_coarse_ns();
        let v = AffinityValue {
            backend_id: id,
            backend_gen: generation,
            pinned_ns: now - idle.as_nanos() as u64 - SEC,
            last_seen_ns: now,
        };
        let key = self.key(c);
        self.h
            .dp_mut()
            .affinity_set(&key, &v, established)
            .expect("pin");
        self.h
            .dp_mut()
            .affinity_restamp(&key, now - idle.as_nanos() as u64)
            .expect("restamp");
    }

    /// `n` clients of `family` whose keys fall into one bucket, from `base` upwards.
    fn sharing(&self, n: usize, family_v6: bool) -> Vec<IpAddr> {
        let mut by_bucket: BTreeMap<u32, Vec<IpAddr>> = BTreeMap::new();
        for i in 0u32.. {
            let c = client(family_v6, i);
            let v = by_bucket.entry(self.place(c).bucket).or_default();
            v.push(c);
            if v.len() == n {
                return v.clone();
            }
        }
        unreachable!()
    }
}

fn client(v6: bool, i: u32) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(
            (0xfd00_0064u128 << 96) | ((i as u128) << 8) | 0x42,
        ))
    } else {
        IpAddr::V4(Ipv4Addr::from(0x0a40_0000 + i))
    }
}

/// Expiry at exactly `idle_timeout` with the default 10 minutes: idle one tick short of
/// it the pin still decides, one tick past it the client is re-decided (an expiry).
#[test]
fn expiry_at_exactly_the_idle_timeout_of_ten_minutes() {
    let mut t = Table::new(4096, 3, false, Duration::from_secs(600));
    let tick = super::coarse_tick_ns();
    let c = v4("198.51.100.10");
    let hashed = t.hashed(c);
    let other = *t.by_mac.values().find(|b| **b != hashed).expect("other");
    let id = t.h.service_id("web");
    let stats = |t: &Table| t.h.dp().service_stats(id).expect("stats");
    // Pinned elsewhere than Maglev would send it, so the packet shows who decided. The
    // margin is two ticks: an attempt preempted for longer is repeated (within_a_tick).
    super::within_a_tick(tick, || {
        t.pin(c, other, Duration::from_nanos(600 * SEC - 2 * tick), true);
        let s0 = stats(&t);
        assert_eq!(
            t.send(c),
            other,
            "one tick short of idle_timeout: the pin decides"
        );
        assert_eq!(stats(&t).hits, s0.hits + 1);
    });
    t.pin(c, other, Duration::from_nanos(600 * SEC + tick), true);
    let s0 = stats(&t);
    assert_eq!(
        t.send(c),
        hashed,
        "one tick past idle_timeout: Maglev decides again"
    );
    assert_eq!(stats(&t).expiries, s0.expiries + 1);
    assert_eq!(
        t.entry(c).map(|v| v.backend_id),
        Some(t.backend_id(hashed).0)
    );
}

/// A bucket whose four clients are all established and live meets a newcomer: the
/// newcomer is pinned in place of the least recently seen of them; the other three keep
/// their pins.
#[test]
fn a_bucket_full_of_established_clients_meets_a_newcomer() {
    let mut t = Table::new(4096, 3, false, Duration::from_secs(600));
    let cs = t.sharing(5, false);
    let b = t.by_mac.values().next().copied().expect("backend");
    for (i, c) in cs[..4].iter().enumerate() {
        // Client 2 least recently seen.
        let idle = if i == 2 { 90 } else { 10 + i as u64 };
        t.pin(*c, b, Duration::from_secs(idle), true);
    }
    let to = t.send(cs[4]);
    assert_eq!(
        t.entry(cs[4]).map(|v| v.backend_id),
        Some(t.backend_id(to).0)
    );
    assert_eq!(
        t.entry(cs[2]),
        None,
        "the least recently seen established client goes"
    );
    for i in [0, 1, 3] {
        assert!(t.entry(cs[i]).is_some(), "client {i} lost its pin");
        assert!(t.judged(cs[i]).expect("entry").established);
    }
    assert!(
        !t.judged(cs[4]).expect("entry").established,
        "a newcomer is not established"
    );
}

/// In a full bucket an unestablished entry goes before any established one, however
/// much more recently it was seen; and an expired established entry is free space.
#[test]
fn an_unestablished_entry_is_evicted_first() {
    let mut t = Table::new(4096, 3, false, Duration::from_secs(600));
    let cs = t.sharing(6, false);
    let b = t.by_mac.values().next().copied().expect("backend");
    t.pin(cs[0], b, Duration::from_secs(500), true);
    t.pin(cs[1], b, Duration::from_secs(400), true);
    t.pin(cs[2], b, Duration::from_secs(1), false);
    t.pin(cs[3], b, Duration::from_secs(300), true);
    t.send(cs[4]);
    assert_eq!(
        t.entry(cs[2]),
        None,
        "the unestablished entry must go first"
    );
    for i in [0, 1, 3, 4] {
        assert!(t.entry(cs[i]).is_some(), "client {i} lost its pin");
    }
    // Client 0 now expires (idle past 10 minutes): the next newcomer takes its slot,
    // although client 4 (unestablished) is there to evict.
    t.pin(cs[0], b, Duration::from_secs(601), true);
    t.send(cs[5]);
    assert_eq!(t.entry(cs[0]), None, "the expired entry is free space");
    for i in [1, 3, 4, 5] {
        assert!(t.entry(cs[i]).is_some(), "client {i} lost its pin");
    }
    // A client seen in two distinct seconds becomes established by its own packets.
    let c = cs[4];
    let v = t.entry(c).expect("entry");
    let key = t.key(c);
    let second_ago = ktime_coarse_ns() - (1 << 30) - 50_000_000;
    t.h.dp_mut()
        .affinity_restamp(&key, second_ago)
        .expect("restamp");
    assert!(!t.judged(c).expect("entry").established);
    t.send(c);
    let after = t.judged(c).expect("entry");
    assert!(
        after.established,
        "packets in two seconds establish a client"
    );
    assert_eq!(after.value.backend_id, v.backend_id);
}

/// Clients built to share one bucket — IPv4 (whole keys in the tags) and IPv6 pairs whose
/// fingerprints share as many leading bits as a search of a million addresses finds —
/// each keep their own pin: pinned to different backends, each reaches its own.
#[test]
fn clients_sharing_a_bucket_keep_their_own_pins() {
    for v6vip in [false, true] {
        let mut t = Table::new(64, 4, v6vip, Duration::from_secs(600));
        let (a, b, shared) = if v6vip {
            closest_fingerprints(&t)
        } else {
            let cs = t.sharing(2, false);
            (cs[0], cs[1], 0)
        };
        let (pa, pb) = (t.place(a), t.place(b));
        assert_eq!(pa.bucket, pb.bucket);
        assert_ne!(pa.tag, pb.tag);
        let backends: Vec<IpAddr> = t.by_mac.values().copied().collect();
        t.pin(a, backends[0], Duration::from_secs(1), true);
        t.pin(b, backends[1], Duration::from_secs(1), true);
        for _ in 0..3 {
            assert_eq!(
                t.send(a),
                backends[0],
                "{a} (v6: {v6vip}, {shared} fp bits shared)"
            );
            assert_eq!(
                t.send(b),
                backends[1],
                "{b} (v6: {v6vip}, {shared} fp bits shared)"
            );
        }
        if v6vip {
            println!(
                "IPv6 clients {a} and {b}: one bucket, {shared} of 63 fingerprint bits shared"
            );
            assert!(
                shared >= 20,
                "the search should find at least 20 shared bits, found {shared}"
            );
        }
    }
}

/// Two IPv6 clients of one bucket whose fingerprints share the longest leading run of
/// bits among a million candidates.
fn closest_fingerprints(t: &Table) -> (IpAddr, IpAddr, u32) {
    let mut by_bucket: BTreeMap<u32, Vec<(u64, IpAddr)>> = BTreeMap::new();
    for i in 0..1_000_000u32 {
        let c = client(true, i);
        let p = t.place(c);
        by_bucket.entry(p.bucket).or_default().push((p.tag << 1, c));
    }
    let mut best = (0, client(true, 0), client(true, 1));
    for v in by_bucket.values_mut() {
        v.sort();
        for w in v.windows(2) {
            let shared = (w[0].0 ^ w[1].0).leading_zeros();
            if shared > best.0 && w[0].0 != w[1].0 {
                best = (shared, w[0].1, w[1].1);
            }
        }
    }
    (best.1, best.2, best.0)
}

/// An entry whose generation is not its backend's (the id now names another backend
/// incarnation) is re-pinned, counted as a re-pin, and `explain` agrees.
#[test]
fn a_generation_mismatch_re_pins() {
    let mut t = Table::new(4096, 3, false, Duration::from_secs(600));
    let c = v4("198.51.100.20");
    let hashed = t.hashed(c);
    let other = *t.by_mac.values().find(|b| **b != hashed).expect("other");
    let (id, generation) = t.backend_id(other);
    let key = t.key(c);
    let v = AffinityValue {
        backend_id: id,
        backend_gen: generation + 1,
        pinned_ns: ktime_coarse_ns(),
        last_seen_ns: ktime_coarse_ns(),
    };
    t.h.dp_mut().affinity_set(&key, &v, true).expect("forge");
    let e = t.h.explain("web", c, 0).expect("explain");
    assert!(matches!(e.decision, Decision::Hashed { .. }), "{e:?}");
    let sid = t.h.service_id("web");
    let before = t.h.dp().service_stats(sid).expect("stats").repins;
    assert_eq!(t.send(c), hashed, "a stale generation must not decide");
    assert_eq!(
        t.h.dp().service_stats(sid).expect("stats").repins,
        before + 1
    );
    let now = t.entry(c).expect("re-pinned");
    assert_eq!((now.backend_id, now.backend_gen), t.backend_id(hashed));
}

fn pin_thread(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "pin to CPU {cpu}"
        );
    }
}

/// The same new client's first packet on two CPUs at the same moment, many times (a
/// spinning rendezvous per round, until both CPUs raced the first packet in at least 20
/// rounds): both reach the same backend — its Maglev one — and the client ends up with
/// exactly one entry (one bucket writer at a time; the loser writes nothing).
#[test]
fn the_same_new_client_inserted_from_two_cpus_at_once() {
    // Roomy: no bucket overflows, so every client must end with exactly one entry.
    let t = Table::new(1 << 18, 4, false, Duration::from_secs(600));
    const BATCH: u32 = 5000;
    let sid = t.h.service_id("web");
    let prog = t.h.prog();
    let mut rounds = 0u32;
    let mut raced = 0u64;
    while raced < 20 && rounds < 20 * BATCH {
        let first = 100_000 + rounds;
        let before = t.h.dp().service_stats(sid).expect("stats").misses;
        let arrived = AtomicU64::new(0);
        let got: Vec<Vec<[u8; 6]>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2)
                .map(|cpu| {
                    let (arrived, vip) = (&arrived, t.vip);
                    s.spawn(move || {
                        pin_thread(cpu);
                        (0..BATCH)
                            .map(|i| {
                                let f = tcp_frame(client(false, first + i), vip, 40_000, 80);
                                // Spin until both CPUs are at round i.
                                arrived.fetch_add(1, Ordering::AcqRel);
                                while arrived.load(Ordering::Acquire) < 2 * (i as u64 + 1) {
                                    std::hint::spin_loop();
                                }
                                let r = run_once(prog, &f, LO);
                                assert_eq!(r.action, XdpAction::Tx as u32);
                                <[u8; 6]>::try_from(&r.output[..6]).expect("mac")
                            })
                            .collect()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("worker")).collect()
        });
        for i in 0..BATCH {
            let c = client(false, first + i);
            let (a, b) = (got[0][i as usize], got[1][i as usize]);
            assert_eq!(a, b, "{c}: two CPUs, two backends");
            assert_eq!(a, mac_of(t.hashed(c)), "{c}: not its Maglev backend");
            let p = t.place(c);
            let n = bucket_tags(&t, p.bucket)
                .iter()
                .filter(|tag| **tag == p.tag)
                .count();
            assert_eq!(n, 1, "{c}: {n} entries");
        }
        let misses = t.h.dp().service_stats(sid).expect("stats").misses - before;
        raced += misses - BATCH as u64;
        rounds += BATCH;
    }
    println!("{rounds} rounds; both CPUs missed (raced) the first packet in {raced}");
    assert!(
        raced >= 20,
        "the CPUs raced only {raced} times: the test proves too little"
    );
}

/// The tags of bucket `b`, read as the data plane would.
fn bucket_tags(t: &Table, b: u32) -> Vec<u64> {
    let mut out = Vec::new();
    t.h.dp()
        .affinity
        .for_each(b..b + 1, ktime_coarse_ns(), |e| {
            let ta = &t.h.dp().affinity;
            out.push(table::place(&e.key, ta.seed(), ta.buckets()).tag);
        });
    out
}

/// `HammerConfig` of lb-ebpf/src/bin/bench.rs, same layout.
#[repr(C)]
#[derive(Clone, Copy)]
struct HammerConfig {
    clients: [u32; 16],
    n: u32,
    stride: u32,
}
// SAFETY: repr(C), plain integers, no padding (72 = 16 × 4 + 2 × 4).
unsafe impl aya::Pod for HammerConfig {}

/// Two CPUs hammer one bucket with eight clients (four slots: nearly every packet
/// evicts and writes), at full speed: `table_hammer` gives every run of a long `repeat`
/// call the next client's source and tail-calls the real xlb program. A third thread
/// keeps re-pinning each client to a backend of its own through the same protocol.
/// Each client may reach two backends — its Maglev one and its own pinned one — and no
/// backend is allowed to two clients, so xlb's per-backend packet counters must equal,
/// set by set, the packets each client sent: one frame paired with another client's
/// value breaks the sums.
#[test]
fn two_cpus_hammering_one_bucket_never_misdirect_a_client() {
    use aya::{
        EbpfLoader,
        maps::{Array, PerCpuArray, ProgramArray},
        programs::{TestRun as _, TestRunOptions, Xdp},
    };
    let mut t = Table::new(4096, 16, false, Duration::from_secs(600));
    // Eight clients of one bucket with distinct Maglev backends, and for each a pinned
    // backend no client of the eight hashes to.
    let mut cs: Vec<IpAddr> = Vec::new();
    let mut by_bucket: BTreeMap<u32, Vec<IpAddr>> = BTreeMap::new();
    for i in 0.. {
        let c = client(false, 200_000 + i);
        let v = by_bucket.entry(t.place(c).bucket).or_default();
        if v.iter().all(|o| t.hashed(*o) != t.hashed(c)) {
            v.push(c);
        }
        if v.len() == 8 {
            cs = v.clone();
            break;
        }
    }
    let hashed: Vec<IpAddr> = cs.iter().map(|c| t.hashed(*c)).collect();
    let pinned: Vec<IpAddr> = t
        .by_mac
        .values()
        .filter(|b| !hashed.contains(b))
        .copied()
        .collect();
    assert_eq!(pinned.len(), 8);
    let ids: Vec<(u32, u32)> = pinned.iter().map(|p| t.backend_id(*p)).collect();
    let keys: Vec<AffinityKey> = cs.iter().map(|c| t.key(*c)).collect();
    for i in 0..8 {
        t.pin(cs[i], pinned[i], Duration::from_secs(1), false);
    }

    let mut bench = EbpfLoader::new()
        .load(xlb::dataplane::loader::BENCH_OBJECT)
        .expect("bench object");
    let mut clients = [0u32; 16];
    for (w, c) in clients.iter_mut().zip(&cs) {
        let IpAddr::V4(a) = c else { unreachable!() };
        *w = u32::from_ne_bytes(a.octets());
    }
    let mut cfg: Array<_, HammerConfig> =
        Array::try_from(bench.map_mut("HAMMER_CFG").expect("cfg")).expect("array");
    cfg.set(
        0,
        HammerConfig {
            clients,
            n: 8,
            stride: 3,
        },
        0,
    )
    .expect("cfg");
    {
        let p: &mut Xdp = bench
            .program_mut("table_hammer")
            .expect("table_hammer")
            .try_into()
            .expect("XDP");
        p.load().expect("verifier");
    }
    let mut next =
        ProgramArray::try_from(bench.take_map("HAMMER_NEXT").expect("prog array")).expect("array");
    next.set(0, t.h.prog().fd().expect("xlb fd"), 0)
        .expect("tail call slot");
    let hammer: &Xdp = bench
        .program("table_hammer")
        .expect("table_hammer")
        .try_into()
        .expect("XDP");

    let stop = AtomicBool::new(false);
    let repins = AtomicU64::new(0);
    let frame = tcp_frame(cs[0], t.vip, 40_000, 80);
    let ctx = {
        let mut md = [0u8; 24];
        md[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        md[12..16].copy_from_slice(&LO.to_ne_bytes());
        md
    };
    let dp = t.h.dp();
    let run_for = Duration::from_secs(3);
    std::thread::scope(|s| {
        for cpu in 0..2 {
            let (stop, frame, ctx) = (&stop, &frame, &ctx);
            s.spawn(move || {
                pin_thread(cpu);
                let start = Instant::now();
                let mut out = vec![0u8; frame.len() + 256];
                while start.elapsed() < run_for {
                    let r = hammer
                        .test_run(TestRunOptions {
                            data_in: Some(frame),
                            data_out: Some(&mut out),
                            ctx_in: Some(ctx),
                            repeat: 200_000,
                            ..Default::default()
                        })
                        .expect("test run");
                    assert_eq!(r.return_value, XdpAction::Tx as u32, "xlb must forward");
                }
                stop.store(true, Ordering::Relaxed);
            });
        }
        let (stop, repins, keys, ids) = (&stop, &repins, &keys, &ids);
        s.spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i = (i + 1) % 8;
                let now = ktime_coarse_ns();
                let v = AffinityValue {
                    backend_id: ids[i].0,
                    backend_gen: ids[i].1,
                    pinned_ns: now,
                    last_seen_ns: now,
                };
                // Busy buckets are expected here: skip and go on.
                if dp.affinity.set(&keys[i], &v, false, now, |_| u32::MAX >> 1) {
                    repins.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_micros(20));
            }
        });
    });

    // What each client sent: run k of CPU c was client (k + 3c) % 8.
    let counts: PerCpuArray<_, u64> =
        PerCpuArray::try_from(bench.map("HAMMER_COUNT").expect("count")).expect("per-cpu");
    let per_cpu = counts.get(&0, 0).expect("counts");
    let mut sent = [0u64; 8];
    for (cpu, n) in per_cpu.iter().enumerate() {
        for (i, s) in sent.iter_mut().enumerate() {
            // k in [0, n) with (k + 3 cpu) % 8 == i.
            let first = (i as u64 + 8 * 8 - 3 * cpu as u64 % 8) % 8;
            *s += if *n > first {
                (n - first).div_ceil(8)
            } else {
                0
            };
        }
    }
    let got = |b: IpAddr| dp.backend_stats(t.backend_id(b).0).expect("stats").packets;
    let sid = t.h.service_id("web");
    let st = dp.service_stats(sid).expect("stats");
    let total: u64 = sent.iter().sum();
    println!(
        "{total} packets on 2 CPUs: {} hits, {} misses, {} userspace re-pins",
        st.hits,
        st.misses,
        repins.load(Ordering::Relaxed)
    );
    for i in 0..8 {
        assert_eq!(
            got(hashed[i]) + got(pinned[i]),
            sent[i],
            "client {}: its two backends counted another client's packets (or lost its own)",
            cs[i]
        );
    }
    assert!(
        total > 2_000_000 && st.misses > 100_000,
        "too little contention"
    );
}

/// `XLB_SVC_FAST` holds one key per slot: two services whose keys share a slot are both
/// served (the second through the services hash), and removing or re-adding either
/// never sends a packet to the other's backends.
#[test]
fn services_sharing_a_fast_slot_are_both_served() {
    use lb_common::{FAMILY_V4, PROTO_TCP, ServiceKey, fast_slot};
    require_root();
    enter_private_netns();
    let mut h = XlbHarness::load(&LoadOptions {
        affinity_capacity: 4096,
        maglev_slots: 1 << 16,
    });
    let vip = v4("203.0.113.99");
    let IpAddr::V4(v) = vip else { unreachable!() };
    let slot = |port: u16| {
        fast_slot(&ServiceKey {
            addr: [u32::from_ne_bytes(v.octets()), 0, 0, 0],
            port_be: port.to_be(),
            proto: PROTO_TCP,
            family: FAMILY_V4,
        })
    };
    let first = 1000u16;
    let second = (1001..u16::MAX)
        .find(|p| slot(*p) == slot(first))
        .expect("two ports sharing a slot");
    let add = |h: &mut XlbHarness, name: &str, port: u16, be: &str| {
        let mut s = Service::new(name, vip, port, Protocol::Tcp);
        s.table_size = 1021;
        h.add_service(s, &backends(&[be], LO)).expect("service");
    };
    let reach = |h: &XlbHarness, port: u16| -> Option<[u8; 6]> {
        let r = h.run(&tcp_frame(v4("198.51.100.5"), vip, 40_000, port), LO);
        (r.action == XdpAction::Tx as u32)
            .then(|| <[u8; 6]>::try_from(&r.output[..6]).expect("mac"))
    };
    let (a, b) = (v4("192.0.2.71"), v4("192.0.2.72"));
    add(&mut h, "a", first, "192.0.2.71");
    add(&mut h, "b", second, "192.0.2.72");
    assert_eq!(reach(&h, first), Some(mac_of(a)));
    assert_eq!(
        reach(&h, second),
        Some(mac_of(b)),
        "the service the slot could not hold"
    );
    h.edit(xlb::model::Edit::ServiceRemove { name: "a".into() })
        .expect("remove a");
    assert_eq!(reach(&h, first), None, "a removed service still answers");
    assert_eq!(reach(&h, second), Some(mac_of(b)));
    add(&mut h, "a", first, "192.0.2.71");
    assert_eq!(reach(&h, first), Some(mac_of(a)));
    assert_eq!(reach(&h, second), Some(mac_of(b)));
}
