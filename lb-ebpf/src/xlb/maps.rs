//! Every map and global of the xlb program, and nothing else.
//!
//! Each static repeats a name and the sizes of `lb_common::maps::MAPS` (aya wants a
//! literal); lb-userspace's `object_maps_equal_the_table` test fails when they drift.
//! Must not hold logic: the modules that read and write a map own what its values mean.

use aya_ebpf::{
    Global,
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use lb_common::{
    Backend, BackendStats, DEFAULT_AFFINITY_CAPACITY, DEFAULT_MAGLEV_SLOTS, FAST_SERVICE_SLOTS,
    FastService, FragKey, FragValue, MAX_BACKENDS, MAX_SERVICE_KEYS, MAX_SERVICES,
    MAX_TRACKED_FRAGMENTS, MAX_TX_PORTS, ServiceKey, ServiceStats, ServiceValue, Stat,
    VIP_FILTER_WORDS,
    affinity::table::{Bucket, ColdBucket, table_entries},
    maps::{BPF_F_MMAPABLE, Meta},
    natsrc::{MAX_NAT_SOURCES, NAT_FILTER_WORDS, NatSourceData},
    sample::SAMPLES_RING_BYTES,
    tunnel::{Egress, MAX_EGRESS, TunnelSource},
};

/// The services (and a `PROTO_VIP_MARKER` key per VIP), replaced whole by the controller.
#[map(name = "XLB_SERVICES")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::with_max_entries(MAX_SERVICE_KEYS, 0);

/// The services map's direct-mapped copy, looked at first (lb_common::FastService).
#[map(name = "XLB_SVC_FAST")]
pub static SVC_FAST: Array<FastService> =
    Array::with_max_entries(FAST_SERVICE_SLOTS, BPF_F_MMAPABLE);

/// All services' Maglev tables side by side: slot → backend id (or `NO_BACKEND`).
#[map(name = "XLB_MAGLEV")]
pub static MAGLEV: Array<u32> = Array::with_max_entries(DEFAULT_MAGLEV_SLOTS, 0);

/// Backend id → where and how to send (MACs, ifindex, generation, flags).
#[map(name = "XLB_BACKENDS")]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// The affinity table, shared by all CPUs (a client's connections arrive on several RX
/// queues and must all see the same pin): one 64-byte bucket per lookup, expiry by
/// timestamp, no lists and no locks on the read path (lb_common::affinity::table).
#[map(name = "XLB_AFFINITY")]
pub static AFFINITY: Array<Bucket> =
    Array::with_max_entries(table_entries(DEFAULT_AFFINITY_CAPACITY), BPF_F_MMAPABLE);

/// The whole key and creation time of every pin, indexed like `XLB_AFFINITY`.
#[map(name = "XLB_AFF_KEYS")]
pub static AFF_KEYS: Array<ColdBucket> =
    Array::with_max_entries(table_entries(DEFAULT_AFFINITY_CAPACITY), BPF_F_MMAPABLE);

/// Each service's `idle_timeout` in table units: whether another service's entry in a
/// full bucket is free space.
#[map(name = "XLB_SVC_IDLE")]
pub static SVC_IDLE: Array<u32> = Array::with_max_entries(MAX_SERVICES, 0);

/// The affinity table's hash seed and data bucket count, from its header: set by the
/// loader (read-only data, so the verifier folds them into constants). The symbol names
/// are what the loader sets, hence `no_mangle`.
#[unsafe(no_mangle)]
pub static AFFINITY_SEED: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
pub static AFFINITY_BUCKETS: Global<u32> = Global::new(1);

/// One per-CPU counter per verdict and reason (`Stat`).
#[map(name = "XLB_STATS")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Stat::COUNT, 0);

/// Per-CPU counters per service id.
#[map(name = "XLB_SVC_STATS")]
pub static SVC_STATS: PerCpuArray<ServiceStats> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

/// Per-CPU counters per backend id.
#[map(name = "XLB_BE_STATS")]
pub static BE_STATS: PerCpuArray<BackendStats> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// The egress interfaces a backend may sit behind, for XDP_REDIRECT.
#[map(name = "XLB_TX_PORTS")]
pub static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_TX_PORTS, 0);

/// The VIP pre-filter: one bit per folded destination address of any service.
#[map(name = "XLB_VIP_FILTER")]
pub static VIP_FILTER: Array<u64> = Array::with_max_entries(VIP_FILTER_WORDS, 0);

/// Sampled packets' sources for the controller (lb_common::sample).
#[map(name = "XLB_SAMPLES")]
pub static SAMPLES: RingBuf = RingBuf::with_byte_size(SAMPLES_RING_BYTES, 0);

/// Per CPU and service: packets until the next sample.
#[map(name = "XLB_SAMPLE_CD")]
pub static SAMPLE_CD: PerCpuArray<u32> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

/// Per service: the sampling period N set by the controller (0 = off).
#[map(name = "XLB_SAMPLE_N")]
pub static SAMPLE_N: Array<u32> = Array::with_max_entries(MAX_SERVICES, 0);

/// The services' `nat_sources` prefixes (lb_common::natsrc): value = the prefix length.
#[map(name = "XLB_NAT_SRC")]
pub static NAT_SRC: LpmTrie<NatSourceData, u32> = LpmTrie::with_max_entries(MAX_NAT_SOURCES, 0);

/// The pre-filter in front of `XLB_NAT_SRC` (lb_common::natsrc).
#[map(name = "XLB_NAT_FILTER")]
pub static NAT_FILTER: Array<u64> = Array::with_max_entries(NAT_FILTER_WORDS, 0);

/// Backend id → load flags (lb_common::bound::OVER_BOUND), set by the controller.
#[map(name = "XLB_BE_LOAD")]
pub static BE_LOAD: Array<u32> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Service id → its `tunnel_source` prefix (lb_common::tunnel), tunnel mode only.
#[map(name = "XLB_TUN_SRC")]
pub static TUN_SRC: Array<TunnelSource> = Array::with_max_entries(MAX_SERVICES, 0);

/// Egress ifindex → MTU and default outer sources of tunnel backends (lb_common::tunnel).
#[map(name = "XLB_EGRESS")]
pub static EGRESS: HashMap<u32, Egress> = HashMap::with_max_entries(MAX_EGRESS, 0);

/// Facts about the pinned state (format, the durable generation counter). Only the
/// controller uses it; it is declared here so it is created and pinned with the rest.
#[map(name = "XLB_META")]
pub static META: Array<Meta> = Array::with_max_entries(1, 0);

/// When each rare event was last reported (`lb_common::log_gate`); never pinned: it
/// belongs to this loaded program (`lb_common::maps::PROGRAM_MAPS`).
#[cfg(feature = "log")]
#[map(name = "XLB_LOG_GATE")]
pub static LOG_GATE: Array<u64> = Array::with_max_entries(lb_common::log_gate::GATES, 0);

/// Fragmented packets whose first fragment was balanced: their ports, for the later
/// fragments (lb_common::FragKey).
#[map(name = "XLB_FRAGS")]
pub static FRAGS: LruHashMap<FragKey, FragValue> =
    LruHashMap::with_max_entries(MAX_TRACKED_FRAGMENTS, 0);
