//! The embedded XDP objects and how they are loaded: the map sizes chosen at load time
//! come from the table in `lb_common::maps` (every map whose `max_entries` is not fixed).
//! Pinning is [`super::pin`]'s business; this module only configures the loader.

use aya::{Ebpf, EbpfError, EbpfLoader};
use lb_common::maps::{CATALOG, MaxEntries, Sizes};

/// The xlb balancer object, built by build.rs from lb-ebpf.
pub static XLB_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb"));
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

/// A loader with every load-time size of the table applied.
pub fn loader(opts: &LoadOptions) -> EbpfLoader<'static> {
    let sizes = opts.sizes();
    let mut loader = EbpfLoader::new();
    for def in CATALOG.maps {
        if !matches!(def.max_entries, MaxEntries::Fixed(_)) {
            loader.map_max_entries(def.name, def.max_entries.resolve(&sizes));
        }
    }
    loader
}

/// Loads the balancer object into the kernel, unpinned (maps created, programs not yet
/// loaded): what the packet tests and benchmarks use.
pub fn load_xlb(opts: &LoadOptions) -> Result<Ebpf, EbpfError> {
    loader(opts).load(XLB_OBJECT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::maps::KERNEL_ADDED_FLAGS;

    /// The maps of the embedded object are exactly the table's: same names, types, key
    /// and value sizes, default sizes and flags. The eBPF statics repeat the table by
    /// hand (aya's `#[map(name = ...)]` wants literals); this fails when they drift.
    #[test]
    fn object_maps_equal_the_table() {
        let obj = aya_obj::Object::parse(XLB_OBJECT).expect("the embedded object parses");
        let sizes = Sizes::DEFAULT;
        let mut in_object: Vec<&str> = obj
            .maps
            .keys()
            .map(String::as_str)
            .filter(|n| !n.starts_with('.'))
            .collect();
        in_object.sort();
        let mut in_table: Vec<&str> = CATALOG.maps.iter().map(|d| d.name).collect();
        in_table.sort();
        assert_eq!(
            in_object, in_table,
            "map names: object vs lb_common::maps::MAPS"
        );
        for def in CATALOG.maps {
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
