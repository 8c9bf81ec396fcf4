//! Loading the embedded XDP objects.

use aya::{Ebpf, EbpfError, EbpfLoader};
use lb_common::{DEFAULT_AFFINITY_CAPACITY, DEFAULT_MAGLEV_SLOTS, MAP_AFFINITY, MAP_MAGLEV};

/// The xlb balancer object, built by build.rs from lb-ebpf.
pub static XLB_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb"));
/// Programs used only by benchmarks (trivial pass, reflector).
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb-bench-progs"));

/// Sizes fixed when the object is loaded.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Entries of the affinity LRU, shared by all services.
    pub affinity_capacity: u32,
    /// Slots of the Maglev array (all services' tables side by side).
    pub maglev_slots: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            affinity_capacity: DEFAULT_AFFINITY_CAPACITY,
            maglev_slots: DEFAULT_MAGLEV_SLOTS,
        }
    }
}

/// Loads the balancer object into the kernel (maps created, programs not yet loaded).
pub fn load_xlb(opts: &LoadOptions) -> Result<Ebpf, EbpfError> {
    EbpfLoader::new()
        .map_max_entries(MAP_AFFINITY, opts.affinity_capacity)
        .map_max_entries(MAP_MAGLEV, opts.maglev_slots)
        .load(XLB_OBJECT)
}
