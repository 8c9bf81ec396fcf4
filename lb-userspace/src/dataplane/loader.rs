//! The embedded XDP objects and how they are loaded: the map sizes chosen at load time
//! come from the table in `lb_common::maps` (every map whose `max_entries` is not fixed),
//! and the affinity table's seed and bucket count are set as the program's read-only
//! globals. Pinning is [`super::pin`]'s business; this module only configures the loader.

use aya::{Ebpf, EbpfError, EbpfLoader, maps::Map};
use lb_common::{
    MAP_AFFINITY,
    affinity::table::{data_buckets, table_entries},
    maps::{CATALOG, MaxEntries, Sizes},
};

use super::affinity::{self, TableError};

/// The xlb balancer object, built by build.rs from lb-ebpf.
pub static XLB_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb"));
/// The balancer object built without its diagnostics (lb-ebpf without the `log`
/// feature: no aya-log records, no `AYA_LOGS` or `XLB_LOG_GATE`), for benchmarks and
/// instruction counts that compare the hot path with and without them.
pub static XLB_NOLOG_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb-nolog"));

/// The tunnel decapsulation program for backends (`xlb decap`), its own object.
pub static DECAP_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb-decap"));
/// Programs used only by benchmarks and tests (trivial pass, reflector).
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb-bench-progs"));

/// Sizes fixed when the object is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Entries of the affinity table, shared by all services (`daemon.affinity_capacity`).
    pub affinity_capacity: u32,
    /// Slots of the Maglev array (all services' tables side by side).
    pub maglev_slots: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self::from(Sizes::DEFAULT)
    }
}

impl From<Sizes> for LoadOptions {
    fn from(s: Sizes) -> Self {
        Self {
            affinity_capacity: s.affinity_capacity,
            maglev_slots: s.maglev_slots,
        }
    }
}

impl LoadOptions {
    /// The same sizes in the form of the map table.
    pub fn sizes(&self) -> Sizes {
        Sizes {
            affinity_capacity: self.affinity_capacity,
            maglev_slots: self.maglev_slots,
        }
    }
}

/// The program's read-only globals: what it needs to find keys in the affinity table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Globals {
    /// `AFFINITY_SEED`: the table header's seed.
    pub seed: u64,
    /// `AFFINITY_BUCKETS`: the table's data buckets.
    pub buckets: u32,
    /// `SAMPLING`: 1 samples sources (lb_common::sample), 0 leaves the code out (the
    /// verifier removes it): only benchmarks measuring its cost load that.
    pub sampling: u32,
}

impl Globals {
    /// The globals for a table sized by `opts` with `seed`.
    pub fn new(opts: &LoadOptions, seed: u64) -> Self {
        Self {
            seed,
            buckets: data_buckets(table_entries(opts.affinity_capacity)),
            sampling: 1,
        }
    }
}

/// A loader with every load-time size of the table applied, and the globals.
pub fn loader<'a>(opts: &LoadOptions, globals: &'a Globals) -> EbpfLoader<'a> {
    let sizes = opts.sizes();
    let mut loader = EbpfLoader::new();
    for def in CATALOG.maps {
        if !matches!(def.max_entries, MaxEntries::Fixed(_)) {
            loader.map_max_entries(def.name, def.max_entries.resolve(&sizes));
        }
    }
    loader.override_global("AFFINITY_SEED", &globals.seed, true);
    loader.override_global("AFFINITY_BUCKETS", &globals.buckets, true);
    loader.override_global("SAMPLING", &globals.sampling, true);
    loader
}

/// A failure loading the balancer object.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Load(#[from] EbpfError),
    #[error("the object has no map {0}")]
    Missing(&'static str),
    #[error(transparent)]
    Table(#[from] TableError),
    #[error(
        "the affinity table's seed is {found:#x} but the program was loaded with {expected:#x}"
    )]
    SeedMismatch { found: u64, expected: u64 },
}

/// Writes the header of the affinity table of a loaded object (seed `seed`), unless it
/// has one; fails unless the seed in force is `seed` (the program's `AFFINITY_SEED`).
pub fn initialise_table(ebpf: &Ebpf, seed: u64) -> Result<(), LoadError> {
    let found = match ebpf.map(MAP_AFFINITY) {
        Some(Map::Array(data)) => affinity::initialise(data, seed)?,
        _ => return Err(LoadError::Missing(MAP_AFFINITY)),
    };
    if found != seed {
        return Err(LoadError::SeedMismatch {
            found,
            expected: seed,
        });
    }
    Ok(())
}

/// Loads the balancer object into the kernel, unpinned (maps created, programs not yet
/// loaded), with a fresh affinity table: what the packet tests and benchmarks use.
pub fn load_xlb(opts: &LoadOptions) -> Result<Ebpf, LoadError> {
    load_object(opts, XLB_OBJECT)
}

/// [`load_xlb`] of another build of the balancer ([`XLB_OBJECT`] or [`XLB_NOLOG_OBJECT`]).
pub fn load_object(opts: &LoadOptions, object: &[u8]) -> Result<Ebpf, LoadError> {
    load_object_sampling(opts, object, true)
}

/// [`load_object`], with source sampling compiled in or left out (`SAMPLING`): the
/// benchmarks measure what sampling costs this way.
pub fn load_object_sampling(
    opts: &LoadOptions,
    object: &[u8],
    sampling: bool,
) -> Result<Ebpf, LoadError> {
    let globals = Globals {
        sampling: sampling.into(),
        ..Globals::new(opts, affinity::random_seed())
    };
    let ebpf = loader(opts, &globals).load(object)?;
    initialise_table(&ebpf, globals.seed)?;
    Ok(ebpf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::maps::{KERNEL_ADDED_FLAGS, MapDef, PROGRAM_MAPS};

    /// The maps of the embedded object are exactly the table's (the pinned ones and the
    /// program's own): same names, types, key and value sizes, default sizes and flags.
    /// The eBPF statics repeat the table by hand (aya's `#[map(name = ...)]` wants
    /// literals); this fails when they drift. The object without diagnostics has exactly
    /// the pinned ones: it differs in nothing adoption sees.
    #[test]
    fn object_maps_equal_the_table() {
        let all: Vec<&MapDef> = CATALOG.maps.iter().chain(PROGRAM_MAPS).collect();
        object_maps_are(XLB_OBJECT, &all);
        object_maps_are(XLB_NOLOG_OBJECT, &CATALOG.maps.iter().collect::<Vec<_>>());
    }

    fn object_maps_are(object: &[u8], defs: &[&MapDef]) {
        let obj = aya_obj::Object::parse(object).expect("the embedded object parses");
        let sizes = Sizes::DEFAULT;
        let mut in_object: Vec<&str> = obj
            .maps
            .keys()
            .map(String::as_str)
            .filter(|n| !n.starts_with('.'))
            .collect();
        in_object.sort();
        let mut in_table: Vec<&str> = defs.iter().map(|d| d.name).collect();
        in_table.sort();
        assert_eq!(
            in_object, in_table,
            "map names: object vs lb_common::maps::MAPS"
        );
        for def in defs {
            let m = &obj.maps[def.name];
            let want = def.layout(&sizes);
            let got = (
                m.map_type(),
                m.key_size(),
                m.value_size(),
                m.max_entries(),
                m.map_flags() & !KERNEL_ADDED_FLAGS,
            );
            assert_eq!(
                got,
                (
                    want.map_type,
                    want.key_size,
                    want.value_size,
                    want.max_entries,
                    want.flags
                ),
                "map {}: (type, key, value, max_entries, flags) of the object vs the table",
                def.name
            );
        }
    }
}
