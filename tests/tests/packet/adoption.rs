//! Adoption of pinned state through the controller's own `dataplane::pin` API, on bpffs,
//! with catalogs describing other releases: a retired map removed, an unknown one refused
//! with nothing touched, a known old layout migrated (with the late entries of the old
//! program caught), a migration interrupted at either crash point finished by the next
//! start, the durable generation counter initialised for state that predates it, and
//! state of a newer format refused.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use aya::maps::{HashMap, Map, MapData};
use lb_common::{
    AffinityKey, AffinityValue, FAMILY_V4, FAMILY_V6, MAP_AFF_KEYS, MAP_AFFINITY, MAP_META,
    MAP_SVC_IDLE,
    affinity::table::{self, MAX_IDLE_UNITS, table_entries},
    maps::{BPF_F_MMAPABLE, CATALOG, Catalog, Conversion, META_FORMAT, MapKind},
};
use xlb::dataplane::{
    affinity::{self, AffinityTable},
    loader::LoadOptions,
    maps::{DataPlane, ktime_coarse_ns, pinned_affinity_entries},
    pin::{self, Found, PinError, Survey},
};
use xlb_tests::require_root;

static N: AtomicU32 = AtomicU32::new(0);

/// A pin dir of its own on the host's bpffs, removed on drop.
struct PinDir(PathBuf);

impl PinDir {
    fn new() -> Self {
        require_root();
        let p = PathBuf::from(format!(
            "/sys/fs/bpf/xlb-pt-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = pin::down(&p);
        Self(p)
    }

    fn map(&self, name: &str) -> PathBuf {
        pin::maps_dir(&self.0).join(name)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = pin::down(&self.0);
    }
}

fn opts(capacity: u32) -> LoadOptions {
    LoadOptions {
        affinity_capacity: capacity,
        maglev_slots: 1 << 16,
    }
}

/// Survey and load with `catalog`; the object's maps as a `DataPlane`.
fn adopt(dir: &Path, capacity: u32, catalog: &Catalog) -> (Survey, pin::Loaded, DataPlane) {
    let survey = pin::survey_with(dir, &opts(capacity), catalog).expect("survey");
    let mut loaded = pin::load_pinned(dir, &opts(capacity), &survey).expect("load");
    let dp = DataPlane::from_ebpf(&mut loaded.ebpf).expect("maps");
    (survey, loaded, dp)
}

/// Service 1 of these tests keeps pins for as long as the table can tell.
const SERVICE: u32 = 1;

/// Client `i`, seen `3000 - i` ms ago (so a higher `i` is more recent), pinned a second
/// before that.
fn entry(i: u32) -> (AffinityKey, AffinityValue) {
    let now = ktime_coarse_ns();
    let last = now - (3000 - i as u64 % 3000) * 1_000_000;
    let (addr, family) = if i % 5 == 4 {
        // Every fifth client is IPv6: its key is recovered from the cold keys.
        let mut b = [0u8; 16];
        b[0] = 0xfd;
        b[12..].copy_from_slice(&i.to_be_bytes());
        (lb_common::addr_from_bytes(&b), FAMILY_V6)
    } else {
        (
            [
                u32::from_ne_bytes([10, 9, (i >> 8) as u8, i as u8]),
                0,
                0,
                0,
            ],
            FAMILY_V4,
        )
    };
    (
        AffinityKey {
            service_id: SERVICE,
            addr,
            port_be: 0,
            family,
            _pad: 0,
        },
        AffinityValue {
            backend_id: i % 7,
            backend_gen: 3,
            pinned_ns: last - 1_100_000_000,
            last_seen_ns: last,
        },
    )
}

type Pins = BTreeMap<(u32, [u32; 4], u8), (u32, u32, u64)>;

/// Key → (backend, generation, last seen in table units): what a pin is, at the
/// table's resolution.
fn pins<'a>(it: impl IntoIterator<Item = &'a (AffinityKey, AffinityValue)>) -> Pins {
    it.into_iter()
        .map(|(k, v)| {
            (
                (k.service_id, k.addr, k.family),
                (
                    v.backend_id,
                    v.backend_gen,
                    v.last_seen_ns >> table::TIME_SHIFT,
                ),
            )
        })
        .collect()
}

/// Fails with the first few differences (not two whole tables).
fn assert_same(got: &Pins, want: &Pins, what: &str) {
    let missing: Vec<_> = want
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(*v))
        .take(5)
        .collect();
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !want.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: {} entries, {} wanted; wanted but absent or different (first 5): {missing:?}; \
         not wanted: {extra:?}; got for those: {:?}",
        got.len(),
        want.len(),
        missing.iter().map(|(k, _)| got.get(*k)).collect::<Vec<_>>()
    );
}

/// The affinity table pinned under `dir`.
fn affinity_at(dir: &Path) -> Pins {
    pins(&pinned_affinity_entries(dir).expect("pinned table"))
}

/// An LRU of the earlier releases' layout, pinned at `path`.
fn lru_at(path: &Path) -> HashMap<MapData, AffinityKey, AffinityValue> {
    let map = Map::from_map_data(MapData::from_pin(path).expect("pin")).expect("map");
    HashMap::try_from(map).expect("LRU of affinity entries")
}

fn ids(dir: &Path) -> BTreeMap<String, u32> {
    std::fs::read_dir(pin::maps_dir(dir))
        .expect("maps dir")
        .flatten()
        .map(|e| {
            let id = MapData::from_pin(e.path())
                .expect("pin")
                .info()
                .expect("info")
                .id();
            (e.file_name().to_string_lossy().into_owned(), id)
        })
        .collect()
}

/// Gives the tests' service a timeout (the table judges other entries' expiry by it).
fn keep_service(dp: &mut DataPlane) {
    dp.svc_idle
        .set(SERVICE, MAX_IDLE_UNITS, 0)
        .expect("svc idle");
}

/// Fresh state holding `n` affinity entries in a table of `capacity`.
fn fresh_state(dir: &PinDir, capacity: u32, n: u32) {
    let (s, _loaded, mut dp) = adopt(&dir.0, capacity, &CATALOG);
    assert_eq!(s.found, Found::Nothing);
    keep_service(&mut dp);
    for i in 0..n {
        let (k, v) = entry(i);
        dp.affinity_set(&k, &v, false).expect("insert");
    }
}

fn pin_map(path: &Path, kind: MapKind, key: u32, value: u32, entries: u32, flags: u32) -> MapData {
    let name = path
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let m = MapData::create(
        aya_obj::Map::new_from_params(kind.bpf_type(), key, value, entries, flags),
        &name,
        None,
    )
    .expect("create map");
    m.pin(path).expect("pin map");
    m
}

#[test]
fn a_retired_map_is_removed_an_unknown_one_refused_and_the_rest_kept() {
    let dir = PinDir::new();
    fresh_state(&dir, 4096, 100);
    let extra = dir.map("XLB_OLD_TEST");
    pin_map(&extra, MapKind::Array, 4, 4, 1, 0);
    let before = (ids(&dir.0), affinity_at(&dir.0));
    assert_eq!(before.1.len(), 100);

    // This build does not know it: refused, nothing touched.
    match pin::survey(&dir.0, &opts(4096)) {
        Err(PinError::Unknown { names, .. }) => assert_eq!(names, ["XLB_OLD_TEST"]),
        other => panic!("unknown map not refused: {other:?}"),
    }
    assert_eq!(before, (ids(&dir.0), affinity_at(&dir.0)));

    // A release that retired it: removed, every other map and entry kept.
    let retiring = Catalog {
        retired: &["XLB_OLD_TEST"],
        ..CATALOG
    };
    let (s, _loaded, _dp) = adopt(&dir.0, 4096, &retiring);
    assert_eq!(s.retired, ["XLB_OLD_TEST"]);
    assert!(s.created.is_empty() && s.migrations.is_empty(), "{s:?}");
    assert!(!extra.exists(), "the retired map is still pinned");
    let mut kept = before.0.clone();
    kept.remove("XLB_OLD_TEST");
    assert_eq!(ids(&dir.0), kept, "other maps were replaced");
    assert_eq!(affinity_at(&dir.0), before.1);
}

/// The affinity LRU of the releases before the bucketed table (`OLD_LAYOUTS`) is
/// converted into the table: every entry copied (IPv6 keys whole, through the cold
/// keys), the old program's late entries caught by the last pass, the old map's pin
/// removed only then.
#[test]
fn the_lru_of_earlier_releases_is_migrated_with_every_entry() {
    // Roomy, so that no bucket of the new table can overflow (at 500 clients in a
    // 4,096-client table, a random seed overflows a bucket in about 1% of runs, and the
    // test would lose an entry the migration was right to drop).
    const CAP: u32 = 65_536;
    let dir = PinDir::new();
    fresh_state(&dir, CAP, 0);
    // What the earlier release left: an LRU, and neither of the table's companions.
    for name in [MAP_AFFINITY, MAP_AFF_KEYS, MAP_SVC_IDLE] {
        std::fs::remove_file(dir.map(name)).expect("unpin");
    }
    pin_map(&dir.map(MAP_AFFINITY), MapKind::LruHash, 24, 24, CAP, 0);
    let mut old = lru_at(&dir.map(MAP_AFFINITY));
    for i in 0..500 {
        let (k, v) = entry(i);
        old.insert(k, v, 0).expect("insert");
    }
    let want = pins(&old.iter().filter_map(|r| r.ok()).collect::<Vec<_>>());
    assert_eq!(want.len(), 500);

    // A catalog without the old layout refuses it, touching nothing.
    let unknowing = Catalog {
        old_layouts: &[],
        ..CATALOG
    };
    assert!(
        matches!(
            pin::survey_with(&dir.0, &opts(CAP), &unknowing),
            Err(PinError::UnknownLayout { .. })
        ),
        "an unknown layout must be refused"
    );
    let (s, loaded, _dp) = adopt(&dir.0, CAP, &CATALOG);
    assert_eq!(s.migrations.len(), 1, "{s:?}");
    assert_eq!(s.migrations[0].conversion, Conversion::AffinityFromLru);
    assert!(s.created.contains(&MAP_AFF_KEYS) && s.created.contains(&MAP_SVC_IDLE));
    let aside = pin::aside_dir(&dir.0).join(MAP_AFFINITY);
    assert!(
        aside.exists(),
        "the old map must wait aside until the program is attached"
    );
    assert_same(&affinity_at(&dir.0), &want, "after the first pass");
    // The old program is still running on the old map: a late client.
    let (k, v) = entry(900);
    old.insert(k, v, 0).expect("late insert");
    pin::finish_migrations(&dir.0, &loaded.pending).expect("finish");
    assert!(!aside.exists(), "the old map's pin was left");
    let got = affinity_at(&dir.0);
    assert_eq!(got.len(), 501);
    assert_eq!(
        got.get(&(k.service_id, k.addr, k.family)),
        Some(&(
            v.backend_id,
            v.backend_gen,
            v.last_seen_ns >> table::TIME_SHIFT
        )),
        "late entry lost"
    );
    let info = MapData::from_pin(dir.map(MAP_AFFINITY))
        .expect("pin")
        .info()
        .expect("info");
    assert_eq!(info.map_type().expect("type"), aya::maps::MapType::Array);
    assert_eq!(info.max_entries(), table_entries(CAP));
}

/// A capacity change interrupted after the old table was set aside but not its keys
/// (crash point A), after both were (B), or after the new table was pinned and partly
/// filled (C), is finished by the next start: every entry arrives, IPv6 ones whole, and
/// entries the new table already had win.
#[test]
fn an_interrupted_migration_is_finished_by_the_next_start() {
    for crash in ['A', 'B', 'C'] {
        let dir = PinDir::new();
        fresh_state(&dir, 4096, 300);
        let want = affinity_at(&dir.0);
        assert_eq!(want.len(), 300);
        let aside = pin::aside_dir(&dir.0);
        std::fs::create_dir_all(&aside).expect("aside dir");
        let names: &[&str] = if crash == 'A' {
            &[MAP_AFFINITY]
        } else {
            &[MAP_AFFINITY, MAP_AFF_KEYS]
        };
        for name in names {
            std::fs::rename(dir.map(name), aside.join(name)).expect("set aside");
        }
        let mut newer = BTreeMap::new();
        if crash == 'C' {
            let entries = table_entries(8192);
            let hot = pin_map(
                &dir.map(MAP_AFFINITY),
                MapKind::Array,
                4,
                64,
                entries,
                BPF_F_MMAPABLE,
            );
            pin_map(
                &dir.map(MAP_AFF_KEYS),
                MapKind::Array,
                4,
                96,
                entries,
                BPF_F_MMAPABLE,
            );
            affinity::initialise(&hot, affinity::random_seed()).expect("header");
            let t = AffinityTable::open_pinned(&dir.map(MAP_AFFINITY), &dir.map(MAP_AFF_KEYS))
                .expect("new table");
            for i in (0..300).step_by(2) {
                let (k, mut v) = entry(i);
                v.backend_id = 6 - v.backend_id;
                assert!(t.set(&k, &v, true, ktime_coarse_ns(), |_| MAX_IDLE_UNITS));
                newer.insert(
                    (k.service_id, k.addr, k.family),
                    (
                        v.backend_id,
                        v.backend_gen,
                        v.last_seen_ns >> table::TIME_SHIFT,
                    ),
                );
            }
        }
        let (s, loaded, _dp) = adopt(&dir.0, 8192, &CATALOG);
        let resumed: Vec<(&str, bool)> = s.migrations.iter().map(|m| (m.name, m.resumed)).collect();
        let keys_resumed = crash != 'A';
        assert_eq!(
            resumed,
            [(MAP_AFFINITY, true), (MAP_AFF_KEYS, keys_resumed)],
            "crash point {crash}"
        );
        pin::finish_migrations(&dir.0, &loaded.pending).expect("finish");
        let got = affinity_at(&dir.0);
        assert_eq!(got.len(), want.len(), "crash point {crash}");
        for (k, v) in &want {
            let expect = newer.get(k).unwrap_or(v);
            assert_eq!(got.get(k), Some(expect), "crash point {crash}: entry {k:?}");
        }
        assert!(!aside.exists(), "crash point {crash}: aside left");
        for name in [MAP_AFFINITY, MAP_AFF_KEYS] {
            let info = MapData::from_pin(dir.map(name))
                .expect("pin")
                .info()
                .expect("info");
            assert_eq!(info.max_entries(), table_entries(8192), "{name}");
        }
    }
}

/// State pinned before `XLB_META` existed: the counter starts above every generation the
/// backends array holds; state of a newer format is refused.
#[test]
fn the_generation_counter_is_initialised_for_old_state_and_newer_formats_refused() {
    let dir = PinDir::new();
    {
        let (_, _loaded, mut dp) = adopt(&dir.0, 4096, &CATALOG);
        for (id, g) in [(3u32, 17u32), (9, 41), (12, 5)] {
            let b = lb_common::Backend {
                generation: g,
                service_id: 1,
                ..Default::default()
            };
            dp.set_backend(id, &b).expect("backend");
        }
        assert_eq!(dp.meta().expect("meta").format, META_FORMAT);
    }
    std::fs::remove_file(dir.map(MAP_META)).expect("unpin meta");
    let (s, _loaded, mut dp) = adopt(&dir.0, 4096, &CATALOG);
    assert_eq!(s.created, [MAP_META]);
    assert_eq!(dp.meta().expect("meta").next_generation, 42);
    assert_eq!(dp.reserve_generations(2).expect("reserve"), 42..44);
    let mut m = dp.meta().expect("meta");
    assert_eq!(m.next_generation, 44, "reservations must be durable");
    m.format = META_FORMAT + 1;
    dp.meta.set(0, m, 0).expect("write");
    drop(dp);
    match pin::survey(&dir.0, &opts(4096)) {
        Err(PinError::NewerFormat { found, .. }) => assert_eq!(found, META_FORMAT + 1),
        other => panic!("newer format not refused: {other:?}"),
    }
}

/// A capacity cut below the number of pins keeps the most recently seen clients: the
/// entries are copied least recently seen first, so in every bucket of the smaller table
/// an entry that did not fit is older than each entry that did. The table is then full.
#[test]
fn a_smaller_table_keeps_the_most_recent_clients() {
    let dir = PinDir::new();
    fresh_state(&dir, 4096, 3000);
    // 3000 clients in a table for 4096: a few are lost to full buckets already.
    let before = affinity_at(&dir.0);
    assert!(before.len() >= 2900, "{} of 3000", before.len());
    let (s, loaded, dp) = adopt(&dir.0, 1024, &CATALOG);
    assert_eq!(s.migrations.len(), 2, "{s:?}");
    pin::finish_migrations(&dir.0, &loaded.pending).expect("finish");
    let got = affinity_at(&dir.0);
    let slots = dp.affinity.slots() as usize;
    assert!(
        got.len() <= slots && got.len() >= slots * 90 / 100,
        "{} entries in {slots} slots: the smaller table must be (almost) full",
        got.len()
    );
    let last_seen = |k: &(u32, [u32; 4], u8)| before[k].2;
    let key = |k: &(u32, [u32; 4], u8)| AffinityKey {
        service_id: k.0,
        addr: k.1,
        port_be: 0,
        family: k.2,
        _pad: 0,
    };
    let bucket = |k: &(u32, [u32; 4], u8)| {
        table::place(&key(k), dp.affinity.seed(), dp.affinity.buckets()).bucket
    };
    let mut newest_in: BTreeMap<u32, u64> = BTreeMap::new();
    let mut oldest_in: BTreeMap<u32, u64> = BTreeMap::new();
    for k in got.keys() {
        let (b, t) = (bucket(k), last_seen(k));
        let o = oldest_in.entry(b).or_insert(t);
        *o = (*o).min(t);
        let n = newest_in.entry(b).or_insert(t);
        *n = (*n).max(t);
    }
    let lost: Vec<_> = before.keys().filter(|k| !got.contains_key(*k)).collect();
    assert_eq!(lost.len(), before.len() - got.len());
    for k in lost {
        assert!(
            last_seen(k) <= oldest_in[&bucket(k)],
            "{k:?} (seen at {}) lost while its bucket kept one seen at {}",
            last_seen(k),
            oldest_in[&bucket(k)]
        );
    }
    println!("kept {} of {} in {slots} slots", got.len(), before.len());
}

/// The daemon's counting passes remove entries expired for longer than the grace; live and
/// recently expired ones stay, and so do entries of a service the pass does not know (its
/// list of services may predate it); only live ones are counted, with when each backend's
/// were last seen.
#[test]
fn counting_passes_sweep_long_expired_entries() {
    use lb_common::{FAMILY_V4 as V4, ServiceKey, ServiceValue};
    let dir = PinDir::new();
    let (_, _loaded, mut dp) = adopt(&dir.0, 4096, &CATALOG);
    let svc = ServiceValue {
        id: SERVICE,
        idle_timeout_ns: 10_000_000_000,
        ..Default::default()
    };
    dp.set_service(
        &ServiceKey {
            addr: [1, 0, 0, 0],
            port_be: 80u16.to_be(),
            proto: 6,
            family: V4,
        },
        &svc,
    )
    .expect("service");
    dp.set_backend(
        3,
        &lb_common::Backend {
            service_id: SERVICE,
            generation: 3,
            flags: lb_common::BE_F_HEALTHY,
            family: V4,
            ..Default::default()
        },
    )
    .expect("backend");
    let now = ktime_coarse_ns();
    let sec = 1_000_000_000u64;
    // Live, expired within the grace, expired past it, of an unknown service, live.
    let idle = [1, 15, 100, 1, 3];
    let mut keys = Vec::new();
    for (i, idle) in idle.iter().enumerate() {
        let (mut k, mut v) = entry(i as u32 * 5);
        if i == 3 {
            k.service_id = 9;
        }
        v.backend_id = 3;
        v.last_seen_ns = now - idle * sec;
        dp.affinity_set(&k, &v, true).expect("set");
        dp.affinity_restamp(&k, v.last_seen_ns).expect("restamp");
        keys.push(k);
    }
    let mut c = xlb::dataplane::maps::pin_counter_pinned(&dir.0)
        .expect("counter")
        .sweeping(std::time::Duration::from_secs(60));
    let counts = c
        .step(ktime_coarse_ns(), std::time::Duration::MAX, || {
            xlb::dataplane::maps::pinned_lookup(&dir.0)
        })
        .expect("step")
        .expect("a whole pass");
    assert_eq!(counts.per_service.get(&SERVICE), Some(&2), "two live pins");
    assert_eq!(counts.per_backend.get(&3), Some(&2));
    // When the backend's live pins were last seen (drain --wait): the expired ones and
    // the other service's do not count. (Stamps have the table's ≈1 ms resolution.)
    let seen = counts.seen[&3];
    let near = |got: u64, want: u64| got.abs_diff(want) < 5_000_000;
    assert!(near(seen.newest_ns, now - sec), "{seen:?}");
    assert!(near(seen.oldest_ns, now - 3 * sec), "{seen:?}");
    assert_eq!(c.swept, 1);
    let present: Vec<bool> = keys
        .iter()
        .map(|k| dp.affinity_get(k).expect("get").is_some())
        .collect();
    assert_eq!(present, [true, true, false, true, true]);
}

/// `XLB_STATS` pinned by a release with fewer verdicts (11 before ICMP echo replies) is
/// resized, not refused: every counter it had is carried over, the new ones start at 0,
/// and the old map's pin goes once the new program runs.
#[test]
fn counters_of_a_release_with_fewer_verdicts_are_carried_over() {
    use aya::maps::{PerCpuArray, PerCpuValues};
    use lb_common::{MAP_STATS, Stat};
    let dir = PinDir::new();
    fresh_state(&dir, 4096, 0);
    let path = dir.map(MAP_STATS);
    std::fs::remove_file(&path).expect("unpin");
    let old_count = Stat::COUNT - 1;
    let m = pin_map(&path, MapKind::PerCpuArray, 4, 8, old_count, 0);
    let mut old: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(m)).expect("per-CPU array");
    let cpus = aya::util::nr_cpus().expect("cpus");
    for i in 0..old_count {
        let v: Vec<u64> = (0..cpus).map(|c| u64::from(i) * 100 + c as u64).collect();
        old.set(i, PerCpuValues::try_from(v).expect("values"), 0)
            .expect("set");
    }
    let want: Vec<u64> = (0..old_count)
        .map(|i| (0..cpus).map(|c| u64::from(i) * 100 + c as u64).sum())
        .collect();

    let (s, loaded, dp) = adopt(&dir.0, 4096, &CATALOG);
    assert_eq!(s.migrations.len(), 1, "{s:?}");
    assert_eq!(s.migrations[0].conversion, Conversion::Counters);
    let stats = dp.stats().expect("stats");
    assert_eq!(
        &stats[..old_count as usize],
        &want[..],
        "counters not carried over"
    );
    assert_eq!(stats[old_count as usize], 0, "a new verdict starts at 0");
    pin::finish_migrations(&dir.0, &loaded.pending).expect("finish");
    let stats = dp.stats().expect("stats");
    assert_eq!(
        &stats[..old_count as usize],
        &want[..],
        "a second pass changed them"
    );
}
