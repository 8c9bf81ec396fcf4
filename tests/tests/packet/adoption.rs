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
    AffinityKey, AffinityValue, FAMILY_V4, MAP_AFFINITY, MAP_META,
    maps::{CATALOG, Catalog, Conversion, META_FORMAT, MapKind, OldLayout},
};
use xlb::dataplane::{
    loader::LoadOptions,
    maps::DataPlane,
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

fn entry(i: u32) -> (AffinityKey, AffinityValue) {
    (
        AffinityKey {
            service_id: 1,
            addr: [
                u32::from_ne_bytes([10, 9, (i >> 8) as u8, i as u8]),
                0,
                0,
                0,
            ],
            port_be: 0,
            family: FAMILY_V4,
            _pad: 0,
        },
        AffinityValue {
            backend_id: i % 7,
            backend_gen: 3,
            pinned_ns: 1_000 + i as u64,
            last_seen_ns: 2_000 + i as u64,
        },
    )
}

fn affinity_at(path: &Path) -> BTreeMap<(u32, [u32; 4]), AffinityValue> {
    let map = Map::from_map_data(MapData::from_pin(path).expect("pin")).expect("map");
    let map: HashMap<MapData, AffinityKey, AffinityValue> =
        HashMap::try_from(map).expect("hash of affinity entries");
    map.iter()
        .filter_map(|r| r.ok())
        .map(|(k, v)| ((k.service_id, k.addr), v))
        .collect()
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

/// Fresh state holding `n` affinity entries in a table of `capacity`.
fn fresh_state(dir: &PinDir, capacity: u32, n: u32) {
    let (s, _loaded, mut dp) = adopt(&dir.0, capacity, &CATALOG);
    assert_eq!(s.found, Found::Nothing);
    for i in 0..n {
        let (k, v) = entry(i);
        dp.affinity.insert(k, v, 0).expect("insert");
    }
}

fn pin_map(path: &Path, kind: MapKind, key: u32, value: u32, entries: u32) -> MapData {
    let name = path
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let m = MapData::create(
        aya_obj::Map::new_from_params(kind.bpf_type(), key, value, entries, 0),
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
    pin_map(&extra, MapKind::Array, 4, 4, 1);
    let before = (ids(&dir.0), affinity_at(&dir.map(MAP_AFFINITY)));

    // This build does not know it: refused, nothing touched.
    match pin::survey(&dir.0, &opts(4096)) {
        Err(PinError::Unknown { names, .. }) => assert_eq!(names, ["XLB_OLD_TEST"]),
        other => panic!("unknown map not refused: {other:?}"),
    }
    assert_eq!(before, (ids(&dir.0), affinity_at(&dir.map(MAP_AFFINITY))));

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
    assert_eq!(affinity_at(&dir.map(MAP_AFFINITY)), before.1);
}

/// A known old layout (here: an affinity table of type HASH, as a release might have had)
/// is converted into the current map, entries the old program writes until the new one
/// is attached are caught by the last pass, and the old map's pin goes only then.
#[test]
fn a_known_old_layout_is_migrated_with_every_entry() {
    let dir = PinDir::new();
    fresh_state(&dir, 4096, 0);
    std::fs::remove_file(dir.map(MAP_AFFINITY)).expect("unpin");
    let old = pin_map(&dir.map(MAP_AFFINITY), MapKind::Hash, 24, 24, 1000);
    let mut old: HashMap<MapData, AffinityKey, AffinityValue> =
        HashMap::try_from(Map::HashMap(old)).expect("hash");
    for i in 0..500 {
        let (k, v) = entry(i);
        old.insert(k, v, 0).expect("insert");
    }
    let want = affinity_at(&dir.map(MAP_AFFINITY));

    // Unknown to this build's catalog: refused, nothing touched.
    assert!(
        matches!(
            pin::survey(&dir.0, &opts(4096)),
            Err(PinError::UnknownLayout { .. })
        ),
        "an unknown layout must be refused"
    );
    let knowing = Catalog {
        old_layouts: &[OldLayout {
            name: MAP_AFFINITY,
            map_type: 1,
            key_size: 24,
            value_size: 24,
            flags: 0,
            conversion: Conversion::AffinityByRecency,
        }],
        ..CATALOG
    };
    let (s, loaded, _dp) = adopt(&dir.0, 4096, &knowing);
    assert_eq!(s.migrations.len(), 1, "{s:?}");
    assert!(!s.migrations[0].resumed);
    let aside = pin::aside_dir(&dir.0).join(MAP_AFFINITY);
    assert!(
        aside.exists(),
        "the old map must wait aside until the program is attached"
    );
    assert_eq!(affinity_at(&dir.map(MAP_AFFINITY)), want, "entries lost");
    // The old program is still running on the old map: a late client.
    let (k, v) = entry(900);
    old.insert(k, v, 0).expect("late insert");
    pin::finish_migrations(&dir.0, &loaded.pending).expect("finish");
    assert!(!aside.exists(), "the old map's pin was left");
    let got = affinity_at(&dir.map(MAP_AFFINITY));
    assert_eq!(got.len(), 501);
    assert_eq!(
        got.get(&(k.service_id, k.addr)),
        Some(&v),
        "late entry lost"
    );
    let info = MapData::from_pin(dir.map(MAP_AFFINITY))
        .expect("pin")
        .info()
        .expect("info");
    assert_eq!(info.map_type().expect("type"), aya::maps::MapType::LruHash);
}

/// A capacity change interrupted after the old map was set aside (crash point A), or
/// after the new map was pinned and partly filled (crash point B), is finished by the
/// next start: every entry arrives, and entries the new map already had win.
#[test]
fn an_interrupted_migration_is_finished_by_the_next_start() {
    for crash_after_new_map in [false, true] {
        let dir = PinDir::new();
        fresh_state(&dir, 4096, 300);
        let want = affinity_at(&dir.map(MAP_AFFINITY));
        std::fs::create_dir_all(pin::aside_dir(&dir.0)).expect("aside dir");
        std::fs::rename(
            dir.map(MAP_AFFINITY),
            pin::aside_dir(&dir.0).join(MAP_AFFINITY),
        )
        .expect("set aside");
        let mut newer = BTreeMap::new();
        if crash_after_new_map {
            let m = pin_map(&dir.map(MAP_AFFINITY), MapKind::LruHash, 24, 24, 8192);
            let mut m: HashMap<MapData, AffinityKey, AffinityValue> =
                HashMap::try_from(Map::LruHashMap(m)).expect("lru");
            for i in (0..300).step_by(2) {
                let (k, mut v) = entry(i);
                v.last_seen_ns += 1_000_000;
                m.insert(k, v, 0).expect("insert");
                newer.insert((k.service_id, k.addr), v);
            }
        }
        let (s, loaded, _dp) = adopt(&dir.0, 8192, &CATALOG);
        assert_eq!(s.migrations.len(), 1, "{s:?}");
        assert!(s.migrations[0].resumed, "{s:?}");
        pin::finish_migrations(&dir.0, &loaded.pending).expect("finish");
        let got = affinity_at(&dir.map(MAP_AFFINITY));
        assert_eq!(
            got.len(),
            want.len(),
            "crash after new map: {crash_after_new_map}"
        );
        for (k, v) in &want {
            let expect = newer.get(k).unwrap_or(v);
            assert_eq!(got.get(k), Some(expect), "entry {k:?}");
        }
        assert!(!pin::aside_dir(&dir.0).exists());
        let info = MapData::from_pin(dir.map(MAP_AFFINITY))
            .expect("pin")
            .info()
            .expect("info");
        assert_eq!(info.max_entries(), 8192);
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

/// A capacity cut below the number of pins keeps the most recently seen clients (entries
/// are copied least recently seen first, so the LRU evicts the oldest), and says how many
/// did not fit.
#[test]
fn a_smaller_table_keeps_the_most_recent_clients() {
    let dir = PinDir::new();
    fresh_state(&dir, 4096, 3000);
    let (s, loaded, _dp) = adopt(&dir.0, 1024, &CATALOG);
    assert_eq!(s.migrations.len(), 1, "{s:?}");
    pin::finish_migrations(&dir.0, &loaded.pending).expect("finish");
    let got = affinity_at(&dir.map(MAP_AFFINITY));
    assert!(
        got.len() <= 1024,
        "{} entries in a table of 1024",
        got.len()
    );
    // entry(i) was last seen at 2000 + i: the newest are the highest i.
    let newest: Vec<u32> = (3000 - 512..3000).collect();
    let kept = newest
        .iter()
        .filter(|i| {
            let (k, _) = entry(**i);
            got.contains_key(&(k.service_id, k.addr))
        })
        .count();
    println!("kept {} entries; {kept} of the newest 512", got.len());
    assert_eq!(
        kept,
        newest.len(),
        "recent clients were evicted before older ones"
    );
}
