//! Every map of the xlb program, declared once.
//!
//! [`MAPS`] is the one table the loader, the pinned-state adoption (layout check, creation
//! of missing maps, migration), `xlb down` and the tests derive from. The eBPF statics in
//! lb-ebpf must repeat each name as a literal (aya's `#[map(name = ...)]` wants one); a
//! test in lb-userspace parses the embedded object and fails when it drifts from this table.
//!
//! Adoption rules (applied by lb-userspace's `dataplane::pin`):
//! - a map of [`MAPS`] that is not pinned is created (a release added it);
//! - a pinned map named in [`RETIRED_MAPS`] is removed (a release dropped it);
//! - a pinned map whose layout differs is migrated when its old layout is known: listed in
//!   [`OLD_LAYOUTS`], or the same layout with another size when the map's [`OnResize`]
//!   says how; otherwise the start is refused;
//! - any other pinned map was written by a newer release: the start is refused.
//!
//! Adding a map: one row here, one static in lb-ebpf/src/xlb/maps.rs with the same name,
//! one typed field in lb-userspace's `DataPlane`. Changing a layout: the new row here, the
//! old one into [`OLD_LAYOUTS`] with a [`Conversion`] (and its converter in lb-userspace).

use crate::{
    AffinityKey, AffinityValue, Backend, BackendStats, DEFAULT_AFFINITY_CAPACITY,
    DEFAULT_MAGLEV_SLOTS, FAST_SERVICE_SLOTS, FastService, FragKey, FragValue, MAP_AFF_KEYS,
    MAP_AFFINITY, MAP_BACKENDS, MAP_BE_LOAD, MAP_BE_STATS, MAP_FRAGS, MAP_MAGLEV, MAP_NAT_FILTER,
    MAP_NAT_SRC, MAP_SAMPLE_CD, MAP_SAMPLE_N, MAP_SAMPLES, MAP_SERVICES, MAP_STATS, MAP_SVC_FAST,
    MAP_SVC_IDLE, MAP_SVC_STATS, MAP_TX_PORTS, MAP_VIP_FILTER, MAX_BACKENDS, MAX_SERVICE_KEYS,
    MAX_SERVICES, MAX_TRACKED_FRAGMENTS, MAX_TX_PORTS, ServiceKey, ServiceStats, ServiceValue,
    Stat, VIP_FILTER_WORDS,
    affinity::table::{Bucket, ColdBucket, table_entries},
    natsrc::{BPF_F_NO_PREALLOC, MAX_NAT_SOURCES, NAT_FILTER_WORDS, NatSourceData},
    sample::SAMPLES_RING_BYTES,
    tunnel::{Egress, MAP_EGRESS, MAP_TUN_SRC, MAX_EGRESS, TunnelSource},
};

/// `BPF_F_MMAPABLE`: the array's memory can be mmapped (and its values start page-aligned,
/// so 64-byte values are whole cache lines).
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

/// ARRAY of one [`Meta`]: facts about the pinned state as a whole.
pub const MAP_META: &str = "XLB_META";

/// BPF map types xlb uses (`enum bpf_map_type` of the kernel UAPI).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    Hash = 1,
    Array = 2,
    PerCpuArray = 6,
    LruHash = 9,
    DevMapHash = 25,
    LpmTrie = 11,
    RingBuf = 27,
}

impl MapKind {
    /// The kernel's `BPF_MAP_TYPE_*` number.
    pub const fn bpf_type(self) -> u32 {
        self as u32
    }

    /// The kernel's name without the prefix, for messages.
    pub const fn name(self) -> &'static str {
        match self {
            MapKind::Hash => "hash",
            MapKind::Array => "array",
            MapKind::PerCpuArray => "percpu_array",
            MapKind::LruHash => "lru_hash",
            MapKind::DevMapHash => "devmap_hash",
            MapKind::RingBuf => "ringbuf",
            MapKind::LpmTrie => "lpm_trie",
        }
    }
}

/// Sizes chosen when the object is loaded (the rest of the table is fixed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    /// `daemon.affinity_capacity`: clients the affinity table is sized for.
    pub affinity_capacity: u32,
    /// Slots of the Maglev array (all services' tables side by side).
    pub maglev_slots: u32,
}

impl Sizes {
    /// The sizes the object is compiled with.
    pub const DEFAULT: Sizes = Sizes {
        affinity_capacity: DEFAULT_AFFINITY_CAPACITY,
        maglev_slots: DEFAULT_MAGLEV_SLOTS,
    };
}

/// Where a map's `max_entries` comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaxEntries {
    Fixed(u32),
    /// [`table_entries`] of [`Sizes::affinity_capacity`] (buckets of the affinity table).
    AffinityTable,
    /// [`Sizes::maglev_slots`].
    MaglevSlots,
}

impl MaxEntries {
    pub const fn resolve(self, sizes: &Sizes) -> u32 {
        match self {
            MaxEntries::Fixed(n) => n,
            MaxEntries::AffinityTable => table_entries(sizes.affinity_capacity),
            MaxEntries::MaglevSlots => sizes.maglev_slots,
        }
    }
}

/// How pinned contents are carried into a map of a new layout. Each variant has one
/// converter function in lb-userspace (`dataplane::migrate`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conversion {
    /// The LRU hash of earlier releases ([`AffinityKey`] → [`AffinityValue`]) into the
    /// bucketed table (and its keys): every entry copied, least recently seen first, so
    /// a full bucket keeps the most recent clients; a key the new table already holds
    /// (written by the new program) is kept.
    AffinityFromLru,
    /// The bucketed table into one of another size: the same, reading the old table's
    /// keys from its `XLB_AFF_KEYS` (set aside with it).
    AffinityTable,
    /// `XLB_AFF_KEYS` of another size: carried over by the conversion of `XLB_AFFINITY`
    /// (which reads the old keys); nothing of its own.
    AffinityKeys,
    /// A per-CPU array of `u64` counters with another number of entries (`XLB_STATS`
    /// when a release adds a verdict): every index both have is carried over, per CPU
    /// the larger of the old and the new value (counters only grow, and the conversion
    /// runs twice: before and after the new program is attached).
    Counters,
}

/// What adoption does with a pinned map whose only difference is `max_entries`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnResize {
    /// Refuse to start: the size cannot change under pinned state.
    Refuse,
    /// Create the map with the new size and convert the old contents into it.
    Migrate(Conversion),
}

/// One map: everything the kernel is told when it is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapDef {
    /// Its name in the object and in bpffs (≤ 15 bytes).
    pub name: &'static str,
    pub kind: MapKind,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: MaxEntries,
    /// `BPF_F_*` creation flags.
    pub flags: u32,
    pub on_resize: OnResize,
}

impl MapDef {
    /// The layout the kernel reports for this map when created with `sizes`.
    pub const fn layout(&self, sizes: &Sizes) -> Layout {
        Layout {
            map_type: self.kind.bpf_type(),
            key_size: self.key_size,
            value_size: self.value_size,
            max_entries: self.max_entries.resolve(sizes),
            flags: self.flags,
        }
    }
}

/// A map's layout as the kernel reports it (`bpf_map_info`), comparable across builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// `BPF_MAP_TYPE_*` number.
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    /// Creation flags, without the ones the kernel adds by itself ([`KERNEL_ADDED_FLAGS`]).
    pub flags: u32,
}

impl Layout {
    /// Equal in everything but `max_entries`.
    pub const fn same_but_size(&self, other: &Layout) -> bool {
        self.map_type == other.map_type
            && self.key_size == other.key_size
            && self.value_size == other.value_size
            && self.flags == other.flags
    }
}

/// `BPF_F_RDONLY_PROG`: the kernel sets it on device maps by itself (`dev_map_alloc`), so
/// it is masked out before comparing flags.
pub const KERNEL_ADDED_FLAGS: u32 = 1 << 7;

/// A layout an earlier release pinned, and how its contents become the current map's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OldLayout {
    pub name: &'static str,
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    /// Any `max_entries` matches: the conversion reads what is there.
    pub flags: u32,
    pub conversion: Conversion,
}

impl OldLayout {
    pub const fn matches(&self, name: &str, l: &Layout) -> bool {
        const_str_eq(self.name, name)
            && self.map_type == l.map_type
            && self.key_size == l.key_size
            && self.value_size == l.value_size
            && self.flags == l.flags
    }
}

const fn const_str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

const fn size<T>() -> u32 {
    core::mem::size_of::<T>() as u32
}

const fn def(
    name: &'static str,
    kind: MapKind,
    key_size: u32,
    value_size: u32,
    max_entries: MaxEntries,
) -> MapDef {
    MapDef {
        name,
        kind,
        key_size,
        value_size,
        max_entries,
        flags: 0,
        on_resize: OnResize::Refuse,
    }
}

/// Every map of the xlb program.
pub const MAPS: &[MapDef] = &[
    def(
        MAP_SERVICES,
        MapKind::Hash,
        size::<ServiceKey>(),
        size::<ServiceValue>(),
        MaxEntries::Fixed(MAX_SERVICE_KEYS),
    ),
    // Its size is not configurable; a change would move service table regions.
    def(MAP_MAGLEV, MapKind::Array, 4, 4, MaxEntries::MaglevSlots),
    def(
        MAP_BACKENDS,
        MapKind::Array,
        4,
        size::<Backend>(),
        MaxEntries::Fixed(MAX_BACKENDS),
    ),
    MapDef {
        flags: BPF_F_MMAPABLE,
        on_resize: OnResize::Migrate(Conversion::AffinityTable),
        ..def(
            MAP_AFFINITY,
            MapKind::Array,
            4,
            size::<Bucket>(),
            MaxEntries::AffinityTable,
        )
    },
    MapDef {
        flags: BPF_F_MMAPABLE,
        on_resize: OnResize::Migrate(Conversion::AffinityKeys),
        ..def(
            MAP_AFF_KEYS,
            MapKind::Array,
            4,
            size::<ColdBucket>(),
            MaxEntries::AffinityTable,
        )
    },
    MapDef {
        flags: BPF_F_MMAPABLE,
        ..def(
            MAP_SVC_FAST,
            MapKind::Array,
            4,
            size::<FastService>(),
            MaxEntries::Fixed(FAST_SERVICE_SLOTS),
        )
    },
    def(
        MAP_SVC_IDLE,
        MapKind::Array,
        4,
        4,
        MaxEntries::Fixed(MAX_SERVICES),
    ),
    // A release that adds a verdict adds an entry: the counters are carried over.
    MapDef {
        on_resize: OnResize::Migrate(Conversion::Counters),
        ..def(
            MAP_STATS,
            MapKind::PerCpuArray,
            4,
            8,
            MaxEntries::Fixed(Stat::COUNT),
        )
    },
    def(
        MAP_SVC_STATS,
        MapKind::PerCpuArray,
        4,
        size::<ServiceStats>(),
        MaxEntries::Fixed(MAX_SERVICES),
    ),
    def(
        MAP_BE_STATS,
        MapKind::PerCpuArray,
        4,
        size::<BackendStats>(),
        MaxEntries::Fixed(MAX_BACKENDS),
    ),
    def(
        MAP_FRAGS,
        MapKind::LruHash,
        size::<FragKey>(),
        size::<FragValue>(),
        MaxEntries::Fixed(MAX_TRACKED_FRAGMENTS),
    ),
    def(
        MAP_TX_PORTS,
        MapKind::DevMapHash,
        4,
        8,
        MaxEntries::Fixed(MAX_TX_PORTS),
    ),
    def(
        MAP_VIP_FILTER,
        MapKind::Array,
        4,
        8,
        MaxEntries::Fixed(VIP_FILTER_WORDS),
    ),
    // Sampling (lb_common::sample): its contents are transient, so a fresh daemon may
    // start on whatever a previous one left.
    def(
        MAP_SAMPLES,
        MapKind::RingBuf,
        0,
        0,
        MaxEntries::Fixed(SAMPLES_RING_BYTES),
    ),
    def(
        MAP_SAMPLE_CD,
        MapKind::PerCpuArray,
        4,
        4,
        MaxEntries::Fixed(MAX_SERVICES),
    ),
    def(
        MAP_SAMPLE_N,
        MapKind::Array,
        4,
        4,
        MaxEntries::Fixed(MAX_SERVICES),
    ),
    // nat_sources (lb_common::natsrc): rewritten whole from the config at every start.
    MapDef {
        flags: BPF_F_NO_PREALLOC,
        ..def(
            MAP_NAT_SRC,
            MapKind::LpmTrie,
            4 + size::<NatSourceData>(),
            4,
            MaxEntries::Fixed(MAX_NAT_SOURCES),
        )
    },
    def(
        MAP_NAT_FILTER,
        MapKind::Array,
        4,
        8,
        MaxEntries::Fixed(NAT_FILTER_WORDS),
    ),
    // balance_factor (lb_common::bound): recomputed every second by the controller.
    def(
        MAP_BE_LOAD,
        MapKind::Array,
        4,
        4,
        MaxEntries::Fixed(MAX_BACKENDS),
    ),
    // forwarding = "tunnel" (crate::tunnel): set by the controller.
    def(
        MAP_TUN_SRC,
        MapKind::Array,
        4,
        size::<TunnelSource>(),
        MaxEntries::Fixed(MAX_SERVICES),
    ),
    def(
        MAP_EGRESS,
        MapKind::Hash,
        4,
        size::<Egress>(),
        MaxEntries::Fixed(MAX_EGRESS),
    ),
    def(
        MAP_META,
        MapKind::Array,
        4,
        size::<Meta>(),
        MaxEntries::Fixed(1),
    ),
];

/// The maps of one loaded program, never pinned: every load creates them afresh and
/// they go with the program (the daemon that loaded it reads them). They are outside
/// adoption, so pinned state of any release is adopted as before, and a program the
/// daemon replaces at a restart takes its own with it. Both exist only in the build with
/// data-plane diagnostics (lb-ebpf's `log` feature, the default).
pub const PROGRAM_MAPS: &[MapDef] = &[
    // aya-log's ring buffer (its name and size are aya-log-ebpf's: 128 KiB).
    def(
        MAP_AYA_LOGS,
        MapKind::RingBuf,
        0,
        0,
        MaxEntries::Fixed(1 << 17),
    ),
    // When each rare event was last reported ([`crate::log_gate`]): shared, one
    // compare-and-swap per report.
    def(
        MAP_LOG_GATE,
        MapKind::Array,
        4,
        8,
        MaxEntries::Fixed(crate::log_gate::GATES),
    ),
];

/// aya-log's ring buffer of records (the name aya-log-ebpf gives it).
pub const MAP_AYA_LOGS: &str = "AYA_LOGS";
/// ARRAY of `u64`: when each rare event was last reported ([`crate::log_gate`]).
pub const MAP_LOG_GATE: &str = "XLB_LOG_GATE";

/// Maps earlier releases pinned and this one no longer has: removed on adoption.
pub const RETIRED_MAPS: &[&str] = &[];

/// Layouts earlier releases pinned that this one converts.
pub const OLD_LAYOUTS: &[OldLayout] = &[
    // The affinity LRU of releases up to the bucketed table (shared LRU lists).
    OldLayout {
        name: MAP_AFFINITY,
        map_type: MapKind::LruHash.bpf_type(),
        key_size: size::<AffinityKey>(),
        value_size: size::<AffinityValue>(),
        flags: 0,
        conversion: Conversion::AffinityFromLru,
    },
];

/// The three lists adoption works from, together so tests can describe other releases.
#[derive(Clone, Copy, Debug)]
pub struct Catalog {
    pub maps: &'static [MapDef],
    pub retired: &'static [&'static str],
    pub old_layouts: &'static [OldLayout],
}

/// This build's catalog.
pub const CATALOG: Catalog = Catalog {
    maps: MAPS,
    retired: RETIRED_MAPS,
    old_layouts: OLD_LAYOUTS,
};

impl Catalog {
    pub fn map(&self, name: &str) -> Option<&'static MapDef> {
        self.maps.iter().find(|m| m.name == name)
    }

    pub fn is_retired(&self, name: &str) -> bool {
        self.retired.contains(&name)
    }

    /// The old layout `layout` of map `name`, if this build knows it.
    pub fn old_layout(&self, name: &str, layout: &Layout) -> Option<&'static OldLayout> {
        self.old_layouts.iter().find(|o| o.matches(name, layout))
    }
}

// ---------------------------------------------------------------------------------------
// The meta map.
// ---------------------------------------------------------------------------------------

/// Format of the pinned state this build writes into [`Meta::format`]. Raised when a
/// release changes what a map's bytes mean without changing its layout (so the layout
/// check alone cannot tell); a build refuses state whose format is newer than its own.
///
/// 1: the first release with `XLB_META`; `ServiceValue::refresh_ns` is meaningful.
/// (State pinned before `XLB_META` existed counts as format 0.)
pub const META_FORMAT: u32 = 1;

/// The one value of `XLB_META`. Host order. Only the controller reads and writes it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Meta {
    /// [`META_FORMAT`] of the build that last adopted the state.
    pub format: u32,
    /// The next backend generation to issue. Generations are reserved here (written)
    /// before any backend entry carries them, so a restart never issues one twice while
    /// the pinned state lives. 0 means "not initialised" (a fresh map): treated as 1.
    pub next_generation: u32,
    /// Room for later fields without a layout change (zero until used).
    pub _reserved: [u64; 7],
}
const _: () = assert!(core::mem::size_of::<Meta>() == 64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_fit_bpffs() {
        let mut names: Vec<&str> = MAPS.iter().map(|m| m.name).collect();
        names.extend_from_slice(RETIRED_MAPS);
        for n in &names {
            assert!(n.len() <= 15, "{n}: BPF_OBJ_NAME_LEN is 16 with the NUL");
        }
        let total = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), total, "a name is declared twice");
    }

    #[test]
    fn sizes_resolve_from_load_options() {
        let s = Sizes {
            affinity_capacity: 7,
            maglev_slots: 11,
        };
        let affinity = CATALOG.map(MAP_AFFINITY).expect("affinity");
        assert_eq!(affinity.layout(&s).max_entries, table_entries(7));
        assert_eq!(
            CATALOG
                .map(MAP_AFF_KEYS)
                .expect("keys")
                .layout(&s)
                .max_entries,
            table_entries(7)
        );
        assert_eq!(
            CATALOG
                .map(MAP_MAGLEV)
                .expect("maglev")
                .layout(&s)
                .max_entries,
            11
        );
        assert_eq!(
            CATALOG.map(MAP_META).expect("meta").layout(&s).max_entries,
            1
        );
        assert!(matches!(affinity.on_resize, OnResize::Migrate(_)));
    }

    #[test]
    fn old_layouts_match_by_name_and_shape_not_size() {
        let old = OldLayout {
            name: MAP_AFFINITY,
            map_type: MapKind::Hash.bpf_type(),
            key_size: 24,
            value_size: 24,
            flags: 0,
            conversion: Conversion::AffinityFromLru,
        };
        let l = Layout {
            map_type: MapKind::Hash.bpf_type(),
            key_size: 24,
            value_size: 24,
            max_entries: 123,
            flags: 0,
        };
        assert!(old.matches(MAP_AFFINITY, &l));
        assert!(!old.matches(MAP_BACKENDS, &l));
        assert!(!old.matches(
            MAP_AFFINITY,
            &Layout {
                value_size: 32,
                ..l
            }
        ));
    }

    #[test]
    fn the_lru_table_of_earlier_releases_is_a_known_old_layout() {
        let lru = Layout {
            map_type: MapKind::LruHash.bpf_type(),
            key_size: 24,
            value_size: 24,
            max_entries: 1 << 20,
            flags: 0,
        };
        assert_eq!(
            CATALOG.old_layout(MAP_AFFINITY, &lru).map(|o| o.conversion),
            Some(Conversion::AffinityFromLru)
        );
    }
}
