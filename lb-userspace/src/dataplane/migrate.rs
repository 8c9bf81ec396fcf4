//! Carrying a pinned map's contents into a map of a new layout: one converter function per
//! `lb_common::maps::Conversion`. [`super::pin`] decides when (adoption) and keeps it
//! crash-safe (the old map is renamed aside first, the new one created, the contents
//! converted, the old pin removed only after the new program is attached); this module
//! only reads the old map and writes the new one.
//!
//! Every converter may run more than once on the same pair (a restart after a crash
//! repeats it, and adoption repeats it once after the new program took over to catch the
//! entries the old program wrote meanwhile): it never overwrites an entry the new map
//! already has, because that one is at least as recent (counters: the larger value).
//!
//! The affinity table's converters write through the table's own protocol
//! ([`super::affinity`]), so they are safe while the new program runs on the table.

use std::path::Path;

use aya::maps::{HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues};
use lb_common::{
    AffinityKey, AffinityValue, MAP_AFF_KEYS, MAP_SERVICES, MAX_SERVICES, SVC_F_VIP_MARKER,
    ServiceKey, ServiceValue,
    affinity::table,
    maps::{Conversion, KERNEL_ADDED_FLAGS, Layout},
};

use super::affinity::{AffinityTable, TableError};

/// A failure converting one map.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("opening pinned map {path}: {source}")]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: MapError,
    },
    #[error("{op} on map {path}: {source}")]
    Op {
        op: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: MapError,
    },
    #[error("affinity table {path}: {source}")]
    Table {
        path: std::path::PathBuf,
        #[source]
        source: Box<TableError>,
    },
}

type Result<T> = std::result::Result<T, MigrateError>;

/// What one conversion did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Converted {
    /// Entries the old map held.
    pub read: usize,
    /// Entries written into the new map.
    pub written: usize,
    /// Entries the new map already had (kept: written by the new program, or by an
    /// earlier run of the same conversion).
    pub already: usize,
    /// Old entries the new map does not hold afterwards (a smaller table evicted them).
    pub lost: usize,
}

/// Opens a pinned map.
pub fn open(path: &Path) -> Result<MapData> {
    MapData::from_pin(path).map_err(|source| MigrateError::Open {
        path: path.to_path_buf(),
        source,
    })
}

/// The layout of a pinned map as the kernel reports it.
pub fn layout_of(path: &Path) -> Result<Layout> {
    let op = |op| {
        move |source| MigrateError::Op {
            op,
            path: path.to_path_buf(),
            source,
        }
    };
    let info = open(path)?.info().map_err(op("get info of"))?;
    // The raw type number, so a type this build has no name for still compares.
    let map_type = info.map_type().map(|t| t as u32).unwrap_or(u32::MAX);
    Ok(Layout {
        map_type,
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
        flags: info.map_flags() & !KERNEL_ADDED_FLAGS,
    })
}

/// Converts the contents of the pinned map `old` into the pinned map `new`.
pub fn convert(conversion: Conversion, old: &Path, new: &Path) -> Result<Converted> {
    match conversion {
        Conversion::AffinityFromLru => affinity_from_lru(old, new),
        Conversion::AffinityTable => affinity_table(old, new),
        // Its contents travel with XLB_AFFINITY's conversion, which reads them.
        Conversion::AffinityKeys => Ok(Converted::default()),
        Conversion::Counters => counters(old, new),
    }
}

/// [`Conversion::Counters`]: every index both arrays have, per CPU the larger value.
fn counters(old: &Path, new: &Path) -> Result<Converted> {
    let err = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| MigrateError::Op { op, path, source }
    };
    let from: PerCpuArray<MapData, u64> = PerCpuArray::try_from(Map::PerCpuArray(open(old)?))
        .map_err(err("open as counters", old))?;
    let mut to: PerCpuArray<MapData, u64> = PerCpuArray::try_from(Map::PerCpuArray(open(new)?))
        .map_err(err("open as counters", new))?;
    let n = from.len().min(to.len());
    let mut c = Converted::default();
    for i in 0..n {
        let a = from.get(&i, 0).map_err(err("lookup", old))?;
        let b = to.get(&i, 0).map_err(err("lookup", new))?;
        c.read += 1;
        let merged: Vec<u64> = a.iter().zip(b.iter()).map(|(x, y)| *x.max(y)).collect();
        // One value per possible CPU, as the lookups returned.
        let values = PerCpuValues::try_from(merged).expect("one value per CPU");
        to.set(i, values, 0).map_err(err("update", new))?;
        c.written += 1;
    }
    c.lost = from.len().saturating_sub(n) as usize;
    Ok(c)
}

type AffinityMap = HashMap<MapData, AffinityKey, AffinityValue>;

fn affinity_map(path: &Path) -> Result<AffinityMap> {
    let err = |source| MigrateError::Op {
        op: "open as an affinity LRU",
        path: path.to_path_buf(),
        source,
    };
    let map = Map::from_map_data(open(path)?).map_err(err)?;
    AffinityMap::try_from(map).map_err(err)
}

/// The table pinned at `path` with its keys pinned beside it.
fn table_at(path: &Path) -> Result<AffinityTable> {
    AffinityTable::open_pinned(path, &path.with_file_name(MAP_AFF_KEYS)).map_err(|source| {
        MigrateError::Table {
            path: path.to_path_buf(),
            source: Box::new(source),
        }
    })
}

/// Each service's `idle_timeout` in table units, from the services map pinned beside
/// `path` (what the data plane's slot choice needs). An id without a service counts as
/// never expiring: a migration keeps what it copies.
fn idle_units_beside(path: &Path) -> Vec<u32> {
    let mut out = vec![table::MAX_IDLE_UNITS; MAX_SERVICES as usize];
    let Ok(data) = MapData::from_pin(path.with_file_name(MAP_SERVICES)) else {
        return out;
    };
    let Ok(services) = HashMap::<MapData, ServiceKey, ServiceValue>::try_from(Map::HashMap(data))
    else {
        return out;
    };
    for (_, v) in services.iter().filter_map(|r| r.ok()) {
        if v.flags & SVC_F_VIP_MARKER == 0
            && let Some(o) = out.get_mut(v.id as usize)
        {
            *o = table::timeout_units(v.idle_timeout_ns);
        }
    }
    out
}

/// Writes `entries` (key, value, established), least recently seen first, into the table
/// pinned at `new` where it has no entry for the key: in a full bucket the most recent
/// clients stay, and an entry the new program already wrote wins.
fn fill(new: &Path, mut entries: Vec<(AffinityKey, AffinityValue, bool)>) -> Result<Converted> {
    let to = table_at(new)?;
    let idle = idle_units_beside(new);
    let idle_of = |s: u32| idle.get(s as usize).copied().unwrap_or(0);
    let now = super::maps::ktime_coarse_ns();
    entries.sort_by_key(|(_, v, _)| v.last_seen_ns);
    let mut done = Converted {
        read: entries.len(),
        ..Converted::default()
    };
    for (k, v, est) in &entries {
        if to.get(k, now).is_some() {
            done.already += 1;
        } else if to.set(k, v, *est, now, idle_of) {
            done.written += 1;
        }
    }
    done.lost = entries
        .iter()
        .filter(|(k, _, _)| to.get(k, now).is_none())
        .count();
    Ok(done)
}

/// The LRU of earlier releases into the bucketed table. An entry whose creation and last
/// packet fall in different seconds is established (the admission rule's evidence).
fn affinity_from_lru(old: &Path, new: &Path) -> Result<Converted> {
    let from = affinity_map(old)?;
    let entries = from
        .iter()
        .filter_map(|r| r.ok())
        .map(|(k, v)| (k, v, v.pinned_ns >> 30 != v.last_seen_ns >> 30))
        .collect();
    fill(new, entries)
}

/// A bucketed table into one of another size, with the keys set aside beside it.
fn affinity_table(old: &Path, new: &Path) -> Result<Converted> {
    let from = table_at(old)?;
    let now = super::maps::ktime_coarse_ns();
    let entries = from
        .scan(1..from.buckets() + 1, None, now)
        .into_iter()
        .map(|e| (e.key, e.value, e.established))
        .collect();
    fill(new, entries)
}
