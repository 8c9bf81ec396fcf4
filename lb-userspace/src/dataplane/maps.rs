//! Typed access to the XDP program's maps: the only place userspace reads or writes their
//! contents (adoption's copying between map generations is [`super::migrate`]'s).
//!
//! The controller, `xlb explain`, the packet tests and the benchmarks all go through this
//! API, so what the tests exercise is what the daemon does. Affinity entries are judged
//! here with `lb_common::affinity`, the XDP program's own rules, against the maps' own
//! services and backends — never against a copy of them. The affinity table itself is
//! mmapped and read and written with the data plane's protocol ([`super::affinity`]).
//!
//! It does not decide anything (which backend, which slot: the controller's), and it
//! does not create, pin or remove maps ([`super::pin`]'s).

use std::{collections::HashMap as StdHashMap, ops::Range, path::Path};

use aya::{
    Ebpf,
    maps::{
        Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuValues, RingBuf,
        lpm_trie::Key as LpmKey, xdp::DevMapHash,
    },
};
use lb_common::{
    Addr, AffinityKey, AffinityValue, Backend, BackendStats, MAP_AFF_KEYS, MAP_AFFINITY,
    MAP_BACKENDS, MAP_BE_LOAD, MAP_BE_STATS, MAP_MAGLEV, MAP_META, MAP_NAT_FILTER, MAP_NAT_SRC,
    MAP_SAMPLE_N, MAP_SAMPLES, MAP_SERVICES, MAP_STATS, MAP_SVC_FAST, MAP_SVC_IDLE, MAP_SVC_STATS,
    MAP_TX_PORTS, MAP_VIP_FILTER, MARKER_SOLE, MAX_BACKENDS, MAX_SERVICES, PROTO_VIP_MARKER,
    SVC_F_ECHO_REPLY, SVC_F_VIP_MARKER, ServiceKey, ServiceStats, ServiceValue, Stat,
    VIP_FILTER_WORDS,
    affinity::{self, Verdict, table},
    maps::Meta,
    natsrc::{self, NatSourceData},
    sample::SourceSample,
    tunnel::{Egress, MAP_EGRESS, MAP_TUN_SRC, TunnelSource},
    vip_filter_bit,
};

pub use super::affinity::{LivePins, Seen};
use super::{
    affinity::{AffinityTable, Entry, PinCounter, TableError},
    fastpath::FastServices,
};

/// A failure reading or writing one of the program's maps.
#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("map {0} is missing from the XDP object")]
    Missing(&'static str),
    #[error("map {map} has an unexpected type or layout: {source}")]
    Layout {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("{op} on map {map} failed: {source}")]
    Op {
        op: &'static str,
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("adding interface index {ifindex} to {MAP_TX_PORTS} failed: {source}")]
    TxPort {
        ifindex: u32,
        #[source]
        source: aya::maps::xdp::XdpMapError,
    },
    #[error("index {index} is out of range for map {map}")]
    OutOfRange { map: &'static str, index: u32 },
    #[error(
        "every backend generation has been issued ({MAP_META} next_generation {next}); \
         `xlb down` and a fresh start are needed"
    )]
    GenerationsExhausted { next: u32 },
    #[error("opening pinned map {path}: {source}")]
    Pinned {
        path: std::path::PathBuf,
        #[source]
        source: MapError,
    },
    #[error(transparent)]
    Table(#[from] TableError),
    #[error("the affinity table's bucket stayed busy (the data plane kept writing it)")]
    Busy,
}

type Result<T> = std::result::Result<T, MapsError>;

fn op(op: &'static str, map: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError::Op { op, map, source }
}

fn per_cpu_zeros<T: aya::Pod + Default>(map: &'static str) -> Result<PerCpuValues<T>> {
    let n = aya::util::nr_cpus().map_err(|(_, e)| MapsError::Op {
        op: "count possible CPUs for",
        map,
        source: MapError::from(aya::sys::SyscallError {
            call: "nr_cpus",
            io_error: e,
        }),
    })?;
    Ok(PerCpuValues::try_from(vec![T::default(); n]).expect("one value per CPU"))
}

/// Slots written per BPF_MAP_UPDATE_BATCH call.
const MAGLEV_BATCH: usize = 8192;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf_batch(cmd: libc::c_long, attr: &mut BatchAttr) -> std::io::Result<()> {
    // SAFETY: attr's pointers reference buffers of `count` elements that outlive the
    // call; the size passed is the struct's.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>() as u32,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// BPF_MAP_LOOKUP_BATCH of `len` values of an array from `offset` (kernel ≥ 5.6). `T`
/// must be the map's value type. The kernel continues after the key `in_batch` points to,
/// so a range starting at `offset` passes `offset - 1` (or nothing for 0).
fn lookup_batch<T: aya::Pod + Default>(
    fd: std::os::fd::BorrowedFd<'_>,
    offset: u32,
    len: u32,
) -> std::io::Result<Vec<T>> {
    use std::os::fd::AsRawFd as _;
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    let mut values = vec![T::default(); len as usize];
    let mut keys = vec![0u32; len as usize];
    let mut done = 0usize;
    while done < len as usize {
        let prev = offset + done as u32;
        let prev_key: u32 = prev.wrapping_sub(1);
        let mut out_batch = 0u32;
        let mut attr = BatchAttr {
            in_batch: if prev == 0 {
                0
            } else {
                &prev_key as *const u32 as u64
            },
            out_batch: &mut out_batch as *mut u32 as u64,
            keys: keys[done..].as_mut_ptr() as u64,
            values: values[done..].as_mut_ptr() as u64,
            count: (len as usize - done).min(MAGLEV_BATCH) as u32,
            map_fd: fd.as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        match bpf_batch(BPF_MAP_LOOKUP_BATCH, &mut attr) {
            Ok(()) => {}
            // ENOENT: the end of the map was reached; `count` says how many came back.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
        if attr.count == 0 {
            return Err(std::io::Error::other("the kernel returned no element"));
        }
        done += attr.count as usize;
    }
    debug_assert!(
        keys.iter()
            .enumerate()
            .all(|(i, k)| *k == offset + i as u32)
    );
    Ok(values)
}

/// BPF_MAP_UPDATE_BATCH on an array of u32 (kernel ≥ 5.6): one syscall for many slots
/// instead of one per slot — a table change touches thousands (aya has no batch API).
/// Each element is written whole, so a reader sees every slot either old or new.
fn update_batch(fd: &std::os::fd::OwnedFd, keys: &[u32], values: &[u32]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    debug_assert_eq!(keys.len(), values.len());
    let mut done = 0;
    while done < keys.len() {
        let mut attr = BatchAttr {
            in_batch: 0,
            out_batch: 0,
            keys: keys[done..].as_ptr() as u64,
            values: values[done..].as_ptr() as u64,
            count: (keys.len() - done) as u32,
            map_fd: fd.as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        bpf_batch(BPF_MAP_UPDATE_BATCH, &mut attr)?;
        // The kernel reports how many it wrote; go on from there if it stopped early.
        if attr.count == 0 {
            return Err(std::io::Error::other("the kernel wrote no element"));
        }
        done += attr.count as usize;
    }
    Ok(())
}

/// Every map of the xlb program, typed.
/// A VIP as its marker entry says it (see [`DataPlane::set_vips`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Vip {
    /// Network order ([`Addr`]).
    pub addr: Addr,
    pub family: u8,
    /// The port (network order, 0 = every port) of the VIP's only TCP service, when it
    /// has exactly one and it routes by source address alone: later fragments without
    /// a tracked first fragment go to it (lb_common::MARKER_SOLE).
    pub sole_tcp: Option<u16>,
    /// The same for UDP.
    pub sole_udp: Option<u16>,
}

pub struct DataPlane {
    pub services: HashMap<MapData, ServiceKey, ServiceValue>,
    /// The direct-mapped copy of `services` the program looks at first.
    svc_fast: FastServices,
    pub maglev: Array<MapData, u32>,
    /// A second handle on the Maglev array for batched updates (aya has none).
    maglev_fd: std::os::fd::OwnedFd,
    pub backends: Array<MapData, Backend>,
    /// A second handle on the backends array for batched reads.
    backends_fd: std::os::fd::OwnedFd,
    /// The affinity table and its keys, mmapped.
    pub affinity: AffinityTable,
    /// Service id → `idle_timeout` in table units (kept by [`DataPlane::set_service`]).
    pub svc_idle: Array<MapData, u32>,
    pub stats: PerCpuArray<MapData, u64>,
    pub svc_stats: PerCpuArray<MapData, ServiceStats>,
    pub be_stats: PerCpuArray<MapData, BackendStats>,
    pub tx_ports: DevMapHash<MapData>,
    pub vip_filter: Array<MapData, u64>,
    /// The pinned state's [`Meta`] (one entry): format and the durable generation counter.
    pub meta: Array<MapData, Meta>,
    /// Service id → sampling period (lb_common::sample).
    sample_n: Array<MapData, u32>,
    /// The services' `nat_sources` and their pre-filter (lb_common::natsrc).
    nat_src: LpmTrie<MapData, NatSourceData, u32>,
    nat_filter: Array<MapData, u64>,
    /// Backend id → load flags (lb_common::bound).
    be_load: Array<MapData, u32>,
    /// Service id → its `tunnel_source` (lb_common::tunnel), tunnel mode.
    tun_src: Array<MapData, TunnelSource>,
    /// Egress ifindex → MTU and default outer sources of tunnel backends.
    egress: HashMap<MapData, u32, Egress>,
    /// The sampled sources' ring, until a reader takes it ([`DataPlane::take_samples`]).
    samples: Option<SampleRing>,
    /// `daemon.icmp_echo = "reply"`: VIP markers carry `SVC_F_ECHO_REPLY` (see
    /// [`DataPlane::set_icmp_echo`]). True until told otherwise, as the config's default.
    echo_reply: bool,
}

/// One `nat_sources` prefix of a service, as the trie holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NatSource {
    pub service_id: u32,
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
    /// The prefix's address, network order ([`Addr`]).
    pub addr: Addr,
    pub len: u8,
}

impl NatSource {
    fn key(&self) -> LpmKey<NatSourceData> {
        LpmKey::new(
            natsrc::SCOPE_BITS + self.len as u32,
            natsrc::data(self.service_id, self.family, &self.addr),
        )
    }
}

/// The pre-filter words of `list` (lb_common::natsrc): every IPv4 /16 a prefix covers
/// (all of them for a prefix shorter than /16); an IPv6 prefix's /32 fold, or the
/// any-IPv6 bit when it is shorter than /32.
pub fn nat_filter_words(list: &[NatSource]) -> Vec<u64> {
    let mut words = vec![0u64; natsrc::NAT_FILTER_WORDS as usize];
    let mut set = |(w, bit): (u32, u64)| words[w as usize] |= bit;
    for s in list {
        if s.family == lb_common::FAMILY_V6 {
            if s.len < 32 {
                set((natsrc::ANY_V6_WORD, 1));
            } else {
                set(natsrc::filter_bit(&s.addr, s.family));
            }
            continue;
        }
        let first = u32::from_be_bytes(s.addr[0].to_ne_bytes()) >> 16;
        let count = 1u32 << (16 - s.len.min(16));
        for i in 0..count {
            let a = ((first + i) << 16).to_be_bytes();
            set(natsrc::filter_bit(
                &[u32::from_ne_bytes(a), 0, 0, 0],
                s.family,
            ));
        }
    }
    words
}

/// The bytes of trie data, to compare keys (the packed key type has no `Eq`).
fn data_bytes(d: &NatSourceData) -> [u8; 24] {
    let mut out = [0u8; 24];
    out[..4].copy_from_slice(&d.service_id.to_ne_bytes());
    out[4..8].copy_from_slice(&d.family.to_ne_bytes());
    out[8..].copy_from_slice(&lb_common::addr_to_bytes(&d.addr));
    out
}

/// The reading end of `XLB_SAMPLES`: one reader at a time.
pub struct SampleRing(RingBuf<MapData>);

impl SampleRing {
    /// Every sample in the ring now, at most `max` (the rest stay for the next call).
    pub fn drain(&mut self, max: usize) -> Vec<SourceSample> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(item) = self.0.next() else { break };
            if item.len() >= std::mem::size_of::<SourceSample>() {
                // SAFETY: the program writes whole `SourceSample`s (a plain-data type,
                // every bit pattern valid); read unaligned from the ring's bytes.
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
            }
        }
        out
    }
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Map> {
    ebpf.take_map(name).ok_or(MapsError::Missing(name))
}

fn typed<T: TryFrom<Map, Error = MapError>>(ebpf: &mut Ebpf, name: &'static str) -> Result<T> {
    T::try_from(take(ebpf, name)?).map_err(|source| MapsError::Layout { map: name, source })
}

/// The raw map of an array (the affinity table is mmapped, not typed).
fn array_data(ebpf: &mut Ebpf, name: &'static str) -> Result<MapData> {
    match take(ebpf, name)? {
        Map::Array(data) => Ok(data),
        _ => Err(MapsError::Missing(name)),
    }
}

/// A second fd on an array map of `ebpf`, for the batch syscalls aya does not have.
fn dup_array_fd(ebpf: &Ebpf, name: &'static str) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsFd as _;
    match ebpf.map(name) {
        Some(Map::Array(data)) => {
            data.fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| MapsError::Op {
                    op: "duplicate the fd of",
                    map: name,
                    source: MapError::SyscallError(aya::sys::SyscallError {
                        call: "dup",
                        io_error: e,
                    }),
                })
        }
        _ => Err(MapsError::Missing(name)),
    }
}

impl DataPlane {
    /// Takes the maps out of a loaded object (the programs stay in `ebpf`).
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            maglev_fd: dup_array_fd(ebpf, MAP_MAGLEV)?,
            backends_fd: dup_array_fd(ebpf, MAP_BACKENDS)?,
            services: typed(ebpf, MAP_SERVICES)?,
            svc_fast: FastServices::new(&array_data(ebpf, MAP_SVC_FAST)?)?,
            maglev: typed(ebpf, MAP_MAGLEV)?,
            backends: typed(ebpf, MAP_BACKENDS)?,
            affinity: AffinityTable::new(
                &array_data(ebpf, MAP_AFFINITY)?,
                &array_data(ebpf, MAP_AFF_KEYS)?,
            )?,
            svc_idle: typed(ebpf, MAP_SVC_IDLE)?,
            stats: typed(ebpf, MAP_STATS)?,
            svc_stats: typed(ebpf, MAP_SVC_STATS)?,
            be_stats: typed(ebpf, MAP_BE_STATS)?,
            tx_ports: typed(ebpf, MAP_TX_PORTS)?,
            vip_filter: typed(ebpf, MAP_VIP_FILTER)?,
            meta: typed(ebpf, MAP_META)?,
            sample_n: typed(ebpf, MAP_SAMPLE_N)?,
            nat_src: typed(ebpf, MAP_NAT_SRC)?,
            nat_filter: typed(ebpf, MAP_NAT_FILTER)?,
            be_load: typed(ebpf, MAP_BE_LOAD)?,
            tun_src: typed(ebpf, MAP_TUN_SRC)?,
            egress: typed(ebpf, MAP_EGRESS)?,
            samples: Some(SampleRing(typed(ebpf, MAP_SAMPLES)?)),
            echo_reply: true,
        })
    }

    // --- balance_factor ------------------------------------------------------------------

    /// Flags backend `id` over its service's load bound, or clears the flag.
    pub fn set_over_bound(&mut self, id: u32, over: bool) -> Result<()> {
        let v = if over {
            lb_common::bound::OVER_BOUND
        } else {
            0
        };
        self.be_load
            .set(id, v, 0)
            .map_err(op("update", MAP_BE_LOAD))
    }

    /// Backend `id` is flagged over its service's load bound.
    pub fn over_bound(&self, id: u32) -> Result<bool> {
        let v = self
            .be_load
            .get(&id, 0)
            .map_err(op("lookup", MAP_BE_LOAD))?;
        Ok(v & lb_common::bound::OVER_BOUND != 0)
    }

    // --- tunnel mode -----------------------------------------------------------------------

    /// Writes service `id`'s `tunnel_source` (`family` 0: none, the egress address is used).
    pub fn set_tunnel_source(&mut self, id: u32, value: &TunnelSource) -> Result<()> {
        self.tun_src
            .set(id, value, 0)
            .map_err(op("update", MAP_TUN_SRC))
    }

    /// Service `id`'s `tunnel_source` entry.
    pub fn tunnel_source(&self, id: u32) -> Result<TunnelSource> {
        self.tun_src.get(&id, 0).map_err(op("lookup", MAP_TUN_SRC))
    }

    /// Writes (`Some`) or removes (`None`) the entry of egress interface `ifindex`.
    pub fn set_egress(&mut self, ifindex: u32, value: Option<&Egress>) -> Result<()> {
        match value {
            Some(v) => self
                .egress
                .insert(ifindex, v, 0)
                .map_err(op("update", MAP_EGRESS)),
            None => match self.egress.remove(&ifindex) {
                Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
                Err(e) => Err(op("delete", MAP_EGRESS)(e)),
            },
        }
    }

    /// Every egress entry, by ifindex.
    pub fn egress_entries(&self) -> Result<Vec<(u32, Egress)>> {
        self.egress
            .iter()
            .map(|r| r.map_err(op("iterate", MAP_EGRESS)))
            .collect()
    }

    // --- nat_sources ---------------------------------------------------------------------

    /// Makes the trie and its pre-filter hold exactly `list`: new entries first, then
    /// the filter, then the entries no longer listed.
    pub fn set_nat_sources(&mut self, list: &[NatSource]) -> Result<()> {
        for s in list {
            self.nat_src
                .insert(&s.key(), s.len as u32, 0)
                .map_err(op("update", MAP_NAT_SRC))?;
        }
        for (i, w) in nat_filter_words(list).iter().enumerate() {
            let i = i as u32;
            let old = self
                .nat_filter
                .get(&i, 0)
                .map_err(op("lookup", MAP_NAT_FILTER))?;
            if old != *w {
                self.nat_filter
                    .set(i, w, 0)
                    .map_err(op("update", MAP_NAT_FILTER))?;
            }
        }
        let keep: std::collections::HashSet<(u32, [u8; 24])> = list
            .iter()
            .map(|s| (s.key().prefix_len(), data_bytes(&s.key().data())))
            .collect();
        let stale: Vec<LpmKey<NatSourceData>> = self
            .nat_src
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !keep.contains(&(k.prefix_len(), data_bytes(&k.data()))))
            .collect();
        for k in stale {
            self.nat_src.remove(&k).map_err(op("delete", MAP_NAT_SRC))?;
        }
        Ok(())
    }

    /// The `nat_sources` prefix length that lists `addr` for service `service_id`, by
    /// the data plane's own lookup (pre-filter, then the trie); `None`: not listed.
    pub fn nat_listed(&self, service_id: u32, family: u8, addr: &Addr) -> Result<Option<u8>> {
        let (w, bit) = natsrc::filter_bit(addr, family);
        let word = |i| {
            self.nat_filter
                .get(&i, 0)
                .map_err(op("lookup", MAP_NAT_FILTER))
        };
        let any_v6 = family == lb_common::FAMILY_V6 && word(natsrc::ANY_V6_WORD)? & 1 != 0;
        if word(w)? & bit == 0 && !any_v6 {
            return Ok(None);
        }
        let key = LpmKey::new(natsrc::LOOKUP_BITS, natsrc::data(service_id, family, addr));
        match self.nat_src.get(&key, 0) {
            Ok(len) => Ok(Some(len as u8)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(op("lookup", MAP_NAT_SRC)(e)),
        }
    }

    // --- sampling ------------------------------------------------------------------------

    /// The ring of sampled sources, for its one reader (`None` once taken).
    pub fn take_samples(&mut self) -> Option<SampleRing> {
        self.samples.take()
    }

    /// Sets service `id`'s sampling period (one packet in `period`; 0 = none).
    pub fn set_sample_period(&mut self, id: u32, period: u32) -> Result<()> {
        self.sample_n
            .set(id, period, 0)
            .map_err(op("update", MAP_SAMPLE_N))
    }

    /// Service `id`'s sampling period.
    pub fn sample_period(&self, id: u32) -> Result<u32> {
        self.sample_n
            .get(&id, 0)
            .map_err(op("lookup", MAP_SAMPLE_N))
    }

    // --- meta ----------------------------------------------------------------------------

    /// The pinned state's meta record.
    pub fn meta(&self) -> Result<Meta> {
        self.meta.get(&0, 0).map_err(op("lookup", MAP_META))
    }

    /// Reserves `n` backend generations durably: `XLB_META.next_generation` is advanced
    /// (written to the pinned map) before the caller can put any of them into a backend
    /// entry, so no generation is ever issued twice while the pinned state lives, across
    /// restarts and crashes. Never returns 0; never wraps.
    pub fn reserve_generations(&mut self, n: u32) -> Result<Range<u32>> {
        let mut meta = self.meta()?;
        let start = meta.next_generation.max(1);
        let end = start
            .checked_add(n)
            .ok_or(MapsError::GenerationsExhausted { next: start })?;
        meta.next_generation = end;
        self.meta.set(0, meta, 0).map_err(op("update", MAP_META))?;
        Ok(start..end)
    }

    // --- services ------------------------------------------------------------------

    /// Writes a service entry; a service's (not a VIP marker's) `idle_timeout` also goes
    /// into `XLB_SVC_IDLE` first, so the data plane judges its entries' expiry right, and
    /// the entry into `XLB_SVC_FAST` last (after the hash, which is always complete).
    pub fn set_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<()> {
        if value.flags & SVC_F_VIP_MARKER == 0 && value.id < MAX_SERVICES {
            self.svc_idle
                .set(value.id, table::timeout_units(value.idle_timeout_ns), 0)
                .map_err(op("update", MAP_SVC_IDLE))?;
        }
        self.services
            .insert(key, value, 0)
            .map_err(op("insert", MAP_SERVICES))?;
        self.svc_fast.set(key, value);
        Ok(())
    }

    /// Service id → `idle_timeout` in table units, as `XLB_SVC_IDLE` holds them.
    fn idle_units(&self) -> Result<Vec<u32>> {
        (0..MAX_SERVICES)
            .map(|i| self.svc_idle.get(&i, 0).map_err(op("lookup", MAP_SVC_IDLE)))
            .collect()
    }

    /// Removes a service entry: from `XLB_SVC_FAST` first, so a packet that misses there
    /// still finds the hash's until it goes too.
    pub fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
        self.svc_fast.remove(key);
        match self.services.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(op("remove", MAP_SERVICES)(e)),
        }
    }

    /// `daemon.icmp_echo`: whether echo requests to the VIPs are answered by the program
    /// (`reply`) or passed; rewrites the markers already there (later ones follow it).
    pub fn set_icmp_echo(&mut self, reply: bool) -> Result<()> {
        self.echo_reply = reply;
        let markers: Vec<(ServiceKey, ServiceValue)> = self
            .services
            .iter()
            .filter_map(|e| e.ok())
            .filter(|(k, _)| k.proto == PROTO_VIP_MARKER)
            .collect();
        for (key, mut value) in markers {
            value.flags &= !SVC_F_ECHO_REPLY;
            if reply {
                value.flags |= SVC_F_ECHO_REPLY;
            }
            self.set_service(&key, &value)?;
        }
        Ok(())
    }

    /// The value of a VIP marker: the daemon's echo setting and the VIP's only services
    /// (lb_common::MARKER_SOLE).
    fn marker_value(&self, vip: &Vip) -> ServiceValue {
        let echo = if self.echo_reply { SVC_F_ECHO_REPLY } else { 0 };
        let sole = |p: Option<u16>| p.map_or(0, |port_be| MARKER_SOLE | u32::from(port_be));
        ServiceValue {
            id: u32::MAX,
            flags: SVC_F_VIP_MARKER | echo,
            table_offset: sole(vip.sole_tcp),
            table_size: sole(vip.sole_udp),
            ..Default::default()
        }
    }

    /// Makes the VIP set exactly `vips`: their marker entries exist (with their only
    /// services) and the pre-filter has their bits. Markers first, filter last, so a
    /// packet that passes the filter always finds its marker.
    pub fn set_vips(&mut self, vips: &[Vip]) -> Result<()> {
        let marker = |addr: Addr, family: u8| ServiceKey {
            addr,
            port_be: 0,
            proto: PROTO_VIP_MARKER,
            family,
        };
        for vip in vips {
            self.set_service(&marker(vip.addr, vip.family), &self.marker_value(vip))?;
        }
        let mut words = vec![0u64; VIP_FILTER_WORDS as usize];
        for vip in vips {
            let (w, bit) = vip_filter_bit(&vip.addr);
            words[w as usize] |= bit;
        }
        for (i, w) in words.iter().enumerate() {
            let i = i as u32;
            let old = self
                .vip_filter
                .get(&i, 0)
                .map_err(op("lookup", MAP_VIP_FILTER))?;
            if old != *w {
                self.vip_filter
                    .set(i, w, 0)
                    .map_err(op("update", MAP_VIP_FILTER))?;
            }
        }
        // Stale markers last: the filter no longer sends their traffic here.
        let stale: Vec<ServiceKey> = self
            .services
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| {
                k.proto == PROTO_VIP_MARKER
                    && !vips
                        .iter()
                        .any(|v| (v.addr, v.family) == (k.addr, k.family))
            })
            .collect();
        for k in stale {
            self.remove_service(&k)?;
        }
        Ok(())
    }

    // --- backends and Maglev -----------------------------------------------------------

    pub fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<()> {
        self.backends
            .set(id, backend, 0)
            .map_err(op("update", MAP_BACKENDS))
    }

    pub fn backend(&self, id: u32) -> Result<Backend> {
        self.backends
            .get(&id, 0)
            .map_err(op("lookup", MAP_BACKENDS))
    }

    /// Writes `table` at `offset`, skipping slots equal in `old` (when given). Returns
    /// the number of slots written.
    pub fn write_maglev(
        &mut self,
        offset: u32,
        table: &[u32],
        old: Option<&[u32]>,
    ) -> Result<usize> {
        let end = offset as u64 + table.len() as u64;
        if end > self.maglev.len() as u64 {
            return Err(MapsError::OutOfRange {
                map: MAP_MAGLEV,
                index: end.min(u32::MAX as u64) as u32,
            });
        }
        let (keys, values): (Vec<u32>, Vec<u32>) = table
            .iter()
            .enumerate()
            .filter(|(i, id)| old.is_none_or(|o| o.get(*i) != Some(*id)))
            .map(|(i, id)| (offset + i as u32, *id))
            .unzip();
        for (k, v) in keys.chunks(MAGLEV_BATCH).zip(values.chunks(MAGLEV_BATCH)) {
            update_batch(&self.maglev_fd, k, v).map_err(|io_error| MapsError::Op {
                op: "batch update",
                map: MAP_MAGLEV,
                source: MapError::SyscallError(aya::sys::SyscallError {
                    call: "bpf_map_update_batch",
                    io_error,
                }),
            })?;
        }
        Ok(keys.len())
    }

    /// `len` slots from `offset`, as the data plane sees them (batched reads: a restart
    /// adopts every service's table this way).
    pub fn read_maglev(&self, offset: u32, len: u32) -> Result<Vec<u32>> {
        if offset as u64 + len as u64 > self.maglev.len() as u64 {
            return Err(MapsError::OutOfRange {
                map: MAP_MAGLEV,
                index: offset.saturating_add(len),
            });
        }
        use std::os::fd::AsFd as _;
        lookup_batch(self.maglev_fd.as_fd(), offset, len).map_err(|io_error| MapsError::Op {
            op: "batch lookup",
            map: MAP_MAGLEV,
            source: MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_lookup_batch",
                io_error,
            }),
        })
    }

    /// Every service entry (VIP markers excluded).
    pub fn service_entries(&self) -> Result<Vec<(ServiceKey, ServiceValue)>> {
        let mut out = Vec::new();
        for item in self.services.iter() {
            match item {
                Ok((k, v)) if v.flags & SVC_F_VIP_MARKER == 0 => out.push((k, v)),
                Ok(_) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(op("iterate", MAP_SERVICES)(e)),
            }
        }
        Ok(out)
    }

    /// Every live backend entry (generation ≠ 0) with its id.
    pub fn backend_entries(&self) -> Result<Vec<(u32, Backend)>> {
        Ok(self
            .backend_table()?
            .into_iter()
            .enumerate()
            .filter(|(_, b)| b.generation != 0)
            .map(|(id, b)| (id as u32, b))
            .collect())
    }

    /// The whole backends array, indexed by backend id (one batched read).
    pub fn backend_table(&self) -> Result<Vec<Backend>> {
        use std::os::fd::AsFd as _;
        read_backend_table(self.backends_fd.as_fd())
    }

    pub fn maglev_slot(&self, index: u32) -> Result<u32> {
        self.maglev.get(&index, 0).map_err(op("lookup", MAP_MAGLEV))
    }

    /// Slots available for all services' tables together.
    pub fn maglev_capacity(&self) -> u32 {
        self.maglev.len()
    }

    pub fn add_tx_port(&mut self, ifindex: u32) -> Result<()> {
        self.tx_ports
            .insert(ifindex, ifindex, None, 0)
            .map_err(|source| MapsError::TxPort { ifindex, source })
    }

    // --- affinity ------------------------------------------------------------------------

    pub fn affinity_get(&self, key: &AffinityKey) -> Result<Option<AffinityValue>> {
        Ok(self.affinity.get(key, ktime_coarse_ns()).map(|e| e.value))
    }

    /// Writes `key → value` into the table as the data plane would (the same slot choice,
    /// so it may evict another client of a full bucket); `established` marks the client
    /// as seen in two distinct seconds. For tests, migrations and tools.
    pub fn affinity_set(
        &mut self,
        key: &AffinityKey,
        value: &AffinityValue,
        established: bool,
    ) -> Result<()> {
        let idle = self.idle_units()?;
        let idle_of = |s: u32| idle.get(s as usize).copied().unwrap_or(0);
        if self
            .affinity
            .set(key, value, established, ktime_coarse_ns(), idle_of)
        {
            Ok(())
        } else {
            Err(MapsError::Busy)
        }
    }

    /// Ages `key`'s entry: its last packet becomes `last_seen_ns` (for tests and tools:
    /// the data plane's stamps only move forward). Whether the entry exists.
    pub fn affinity_restamp(&mut self, key: &AffinityKey, last_seen_ns: u64) -> Result<bool> {
        self.affinity
            .restamp(key, last_seen_ns)
            .ok_or(MapsError::Busy)
    }

    /// Every entry, optionally of one service, each read consistently. Entries the data
    /// plane writes while we scan may be missed or seen twice: a snapshot, not a lock.
    pub fn affinity_entries(
        &self,
        service_id: Option<u32>,
    ) -> Result<Vec<(AffinityKey, AffinityValue)>> {
        Ok(self
            .table_entries(service_id)
            .into_iter()
            .map(|e| (e.key, e.value))
            .collect())
    }

    fn table_entries(&self, service_id: Option<u32>) -> Vec<Entry> {
        self.affinity.scan(
            1..self.affinity.buckets() + 1,
            service_id,
            ktime_coarse_ns(),
        )
    }

    /// What the data plane would decide from `key`'s entry of service `svc` at `now`
    /// (`None`: no entry): the entry, the backend it points to and the verdict of
    /// `lb_common::affinity::judge`, the XDP program's own rules.
    pub fn judge(
        &self,
        svc: &ServiceValue,
        key: &AffinityKey,
        now: u64,
    ) -> Result<Option<JudgedPin>> {
        let Some(e) = self.affinity.get(key, now) else {
            return Ok(None);
        };
        let backend = match self.backends.get(&e.value.backend_id, 0) {
            Ok(b) => Some(b),
            Err(MapError::OutOfBounds { .. }) => None,
            Err(e) => return Err(op("lookup", MAP_BACKENDS)(e)),
        };
        let verdict = affinity::judge(svc, key, &e.value, backend.as_ref(), now);
        Ok(Some(JudgedPin {
            key: *key,
            value: e.value,
            backend,
            verdict,
            established: e.established,
        }))
    }

    /// Every affinity entry (optionally of one service) judged at `now` against the
    /// services and backends the maps hold. Entries of a service that no longer exists
    /// are left out (no packet can reach them).
    pub fn judged_entries(&self, service_id: Option<u32>, now: u64) -> Result<Vec<JudgedPin>> {
        let services = self.service_values()?;
        let backends = self.backend_table()?;
        Ok(judge_all(
            self.table_entries(service_id),
            &services,
            &backends,
            now,
        ))
    }

    /// Live pins per service and backend at `now` (see [`LivePins`]): one whole pass.
    pub fn live_pins(&self, now: u64) -> Result<LivePins> {
        Ok(LivePins::count(&self.judged_entries(None, now)?))
    }

    /// Service id → value, from the services map.
    fn service_values(&self) -> Result<StdHashMap<u32, ServiceValue>> {
        Ok(self
            .service_entries()?
            .into_iter()
            .map(|(_, v)| (v.id, v))
            .collect())
    }

    /// Removes one entry (absent is fine: it may have been evicted).
    pub fn affinity_remove(&mut self, key: &AffinityKey) -> Result<()> {
        self.affinity
            .remove(key, ktime_coarse_ns())
            .map(|_| ())
            .ok_or(MapsError::Busy)
    }

    /// Removes the entries of one service (or all); returns how many.
    pub fn affinity_flush(&mut self, service_id: Option<u32>) -> Result<usize> {
        let mut n = 0;
        for e in self.table_entries(service_id) {
            if self
                .affinity
                .remove(&e.key, ktime_coarse_ns())
                .ok_or(MapsError::Busy)?
            {
                n += 1;
            }
        }
        Ok(n)
    }

    // --- counters ------------------------------------------------------------------------

    /// Global counters summed over CPUs, indexed by [`Stat`].
    pub fn stats(&self) -> Result<[u64; Stat::COUNT as usize]> {
        let mut out = [0u64; Stat::COUNT as usize];
        for (i, o) in out.iter_mut().enumerate() {
            let v = self
                .stats
                .get(&(i as u32), 0)
                .map_err(op("lookup", MAP_STATS))?;
            *o = v.iter().sum();
        }
        Ok(out)
    }

    pub fn service_stats(&self, id: u32) -> Result<ServiceStats> {
        let v = self
            .svc_stats
            .get(&id, 0)
            .map_err(op("lookup", MAP_SVC_STATS))?;
        Ok(v.iter().fold(ServiceStats::default(), |mut a, s| {
            a.packets += s.packets;
            a.bytes += s.bytes;
            a.hits += s.hits;
            a.misses += s.misses;
            a.repins += s.repins;
            a.expiries += s.expiries;
            a.no_backend += s.no_backend;
            a.icmp_errors += s.icmp_errors;
            a
        }))
    }

    /// Zeroes a service's counters (its id may have served another service before).
    pub fn reset_service_stats(&mut self, id: u32) -> Result<()> {
        let zeros = per_cpu_zeros::<ServiceStats>(MAP_SVC_STATS)?;
        self.svc_stats
            .set(id, zeros, 0)
            .map_err(op("update", MAP_SVC_STATS))
    }

    /// Zeroes a backend's counters.
    pub fn reset_backend_stats(&mut self, id: u32) -> Result<()> {
        let zeros = per_cpu_zeros::<BackendStats>(MAP_BE_STATS)?;
        self.be_stats
            .set(id, zeros, 0)
            .map_err(op("update", MAP_BE_STATS))
    }

    pub fn backend_stats(&self, id: u32) -> Result<BackendStats> {
        let v = self
            .be_stats
            .get(&id, 0)
            .map_err(op("lookup", MAP_BE_STATS))?;
        Ok(v.iter().fold(BackendStats::default(), |mut a, s| {
            a.packets += s.packets;
            a.bytes += s.bytes;
            a.pins += s.pins;
            a
        }))
    }
}

/// `CLOCK_MONOTONIC_COARSE` in ns: the clock of `bpf_ktime_get_coarse_ns()`, which the
/// data plane stamps affinity entries with.
pub fn ktime_coarse_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; the clock id exists on every Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One affinity entry and what the data plane makes of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JudgedPin {
    pub key: AffinityKey,
    pub value: AffinityValue,
    /// The backend entry the pin's id points to now (`None`: out of range).
    pub backend: Option<Backend>,
    pub verdict: Verdict,
    /// The client was seen in two distinct seconds (admission: kept before newcomers).
    pub established: bool,
}

impl JudgedPin {
    /// The pin's backend still is this client's (same backend, same service): live,
    /// expired, or kept out by its health — not gone, reused or of another service.
    pub fn backend_is_its_own(&self) -> bool {
        matches!(
            self.verdict,
            Verdict::Live { .. } | Verdict::Expired | Verdict::Repin(affinity::Repin::Unusable)
        )
    }
}

fn judge_all(
    entries: Vec<Entry>,
    services: &StdHashMap<u32, ServiceValue>,
    backends: &[Backend],
    now: u64,
) -> Vec<JudgedPin> {
    entries
        .into_iter()
        .filter_map(|e| {
            let (verdict, backend) = super::affinity::judge_entry(&e, services, backends, now)?;
            Some(JudgedPin {
                key: e.key,
                value: e.value,
                backend,
                verdict,
                established: e.established,
            })
        })
        .collect()
}

impl LivePins {
    /// Counts the live ones of `judged`.
    pub fn count(judged: &[JudgedPin]) -> Self {
        let mut c = LivePins::default();
        for p in judged {
            if matches!(p.verdict, Verdict::Live { .. }) {
                c.add(p.key.service_id, p.value.backend_id, p.value.last_seen_ns);
            }
        }
        c
    }
}

fn read_backend_table(fd: std::os::fd::BorrowedFd<'_>) -> Result<Vec<Backend>> {
    lookup_batch::<Backend>(fd, 0, MAX_BACKENDS).map_err(|io_error| MapsError::Op {
        op: "batch lookup",
        map: MAP_BACKENDS,
        source: MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_lookup_batch",
            io_error,
        }),
    })
}

/// The services (by id) and backends the maps pinned under `pin_dir` hold: what live pins
/// are judged against.
pub fn pinned_lookup(pin_dir: &Path) -> Result<(StdHashMap<u32, ServiceValue>, Vec<Backend>)> {
    let dir = super::pin::maps_dir(pin_dir);
    let open = |name: &str| {
        let path = dir.join(name);
        MapData::from_pin(&path).map_err(|source| MapsError::Pinned { path, source })
    };
    let services: HashMap<MapData, ServiceKey, ServiceValue> =
        HashMap::try_from(Map::HashMap(open(MAP_SERVICES)?)).map_err(|source| {
            MapsError::Layout {
                map: MAP_SERVICES,
                source,
            }
        })?;
    let services: StdHashMap<u32, ServiceValue> = services
        .iter()
        .filter_map(|r| r.ok())
        .filter(|(_, v)| v.flags & SVC_F_VIP_MARKER == 0)
        .map(|(_, v)| (v.id, v))
        .collect();
    let backends = {
        use std::os::fd::AsFd as _;
        read_backend_table(open(MAP_BACKENDS)?.fd().as_fd())?
    };
    Ok((services, backends))
}

/// The affinity table pinned under `pin_dir`, mapped through its own handles.
pub fn pinned_table(pin_dir: &Path) -> Result<AffinityTable> {
    let dir = super::pin::maps_dir(pin_dir);
    Ok(AffinityTable::open_pinned(
        &dir.join(MAP_AFFINITY),
        &dir.join(MAP_AFF_KEYS),
    )?)
}

/// A bounded-slice counter of live pins over the table pinned under `pin_dir` (the
/// daemon's background counts; see [`PinCounter`]).
pub fn pin_counter_pinned(pin_dir: &Path) -> Result<PinCounter> {
    Ok(PinCounter::new(pinned_table(pin_dir)?))
}

/// [`LivePins`] at `now` read through the pins under `pin_dir` (own handles, no
/// `DataPlane` needed), in one whole pass.
pub fn live_pins_pinned(pin_dir: &Path, now: u64) -> Result<LivePins> {
    let mut c = pin_counter_pinned(pin_dir)?;
    let counts = c.step(now, std::time::Duration::MAX, || pinned_lookup(pin_dir))?;
    Ok(counts.unwrap_or_default())
}

/// Every affinity entry of the table pinned under `pin_dir`, read through its own
/// handles (what a tool or a test sees without the daemon).
pub fn pinned_affinity_entries(pin_dir: &Path) -> Result<Vec<(AffinityKey, AffinityValue)>> {
    let t = pinned_table(pin_dir)?;
    Ok(t.scan(1..t.buckets() + 1, None, ktime_coarse_ns())
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect())
}
