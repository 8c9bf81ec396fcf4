//! Carrying a pinned map's contents into a map of a new layout: one converter function per
//! `lb_common::maps::Conversion`. [`super::pin`] decides when (adoption) and keeps it
//! crash-safe (the old map is renamed aside first, the new one created, the contents
//! converted, the old pin removed only after the new program is attached); this module
//! only reads the old map and writes the new one.
//!
//! Every converter may run more than once on the same pair (a restart after a crash
//! repeats it, and adoption repeats it once after the new program took over to catch the
//! entries the old program wrote meanwhile): it never overwrites an entry the new map
//! already has, because that one is at least as recent.

use std::path::Path;

use aya::maps::{HashMap, Map, MapData, MapError};
use lb_common::{
    AffinityKey, AffinityValue,
    maps::{Conversion, KERNEL_ADDED_FLAGS, Layout},
};

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
        Conversion::AffinityByRecency => affinity_by_recency(old, new),
    }
}

type AffinityMap = HashMap<MapData, AffinityKey, AffinityValue>;

fn affinity_map(path: &Path) -> Result<AffinityMap> {
    let err = |source| MigrateError::Op {
        op: "open as an affinity table",
        path: path.to_path_buf(),
        source,
    };
    let map = Map::from_map_data(open(path)?).map_err(err)?;
    AffinityMap::try_from(map).map_err(err)
}

/// Affinity entries, least recently seen first, inserted only where the new table has
/// none (`BPF_NOEXIST`): into a smaller LRU the most recently seen clients are the ones
/// that stay, and an entry the new program already wrote wins.
fn affinity_by_recency(old: &Path, new: &Path) -> Result<Converted> {
    const BPF_NOEXIST: u64 = 1;
    let from = affinity_map(old)?;
    let mut to = affinity_map(new)?;
    let mut entries: Vec<(AffinityKey, AffinityValue)> =
        from.iter().filter_map(|r| r.ok()).collect();
    entries.sort_by_key(|(_, v)| v.last_seen_ns);
    let mut done = Converted {
        read: entries.len(),
        ..Converted::default()
    };
    for (k, v) in &entries {
        match to.insert(k, v, BPF_NOEXIST) {
            Ok(()) => done.written += 1,
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {
                done.already += 1
            }
            Err(source) => {
                return Err(MigrateError::Op {
                    op: "insert into",
                    path: new.to_path_buf(),
                    source,
                });
            }
        }
    }
    done.lost = entries
        .iter()
        .filter(|(k, _)| to.get(k, 0).is_err())
        .count();
    Ok(done)
}
