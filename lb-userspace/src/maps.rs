//! Typed access to the XDP program's maps: the only place userspace touches them.
//!
//! The controller, `xlb explain`, the packet tests and the benchmarks all go through this
//! API, so what the tests exercise is what the daemon does.

use aya::{
    Ebpf,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues, xdp::DevMapHash},
};
use lb_common::{
    ALL_MAPS, Addr, AffinityKey, AffinityValue, Backend, BackendStats, MAP_AFFINITY, MAP_BACKENDS,
    MAP_BE_STATS, MAP_MAGLEV, MAP_SERVICES, MAP_STATS, MAP_SVC_STATS, MAP_TX_PORTS, MAP_VIP_FILTER,
    PROTO_VIP_MARKER, SVC_F_VIP_MARKER, ServiceKey, ServiceStats, ServiceValue, Stat,
    VIP_FILTER_WORDS, vip_filter_bit,
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

/// BPF_MAP_LOOKUP_BATCH of `len` u32 slots of an array from `offset` (kernel ≥ 5.6).
/// The kernel continues after the key `in_batch` points to, so a range starting at
/// `offset` passes `offset - 1` (or nothing for 0).
fn lookup_batch(fd: &std::os::fd::OwnedFd, offset: u32, len: u32) -> std::io::Result<Vec<u32>> {
    use std::os::fd::AsRawFd as _;
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    let mut values = vec![0u32; len as usize];
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
pub struct DataPlane {
    pub services: HashMap<MapData, ServiceKey, ServiceValue>,
    pub maglev: Array<MapData, u32>,
    /// A second handle on the Maglev array for batched updates (aya has none).
    maglev_fd: std::os::fd::OwnedFd,
    pub backends: Array<MapData, Backend>,
    pub affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    pub stats: PerCpuArray<MapData, u64>,
    pub svc_stats: PerCpuArray<MapData, ServiceStats>,
    pub be_stats: PerCpuArray<MapData, BackendStats>,
    pub tx_ports: DevMapHash<MapData>,
    pub vip_filter: Array<MapData, u64>,
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Map> {
    ebpf.take_map(name).ok_or(MapsError::Missing(name))
}

fn typed<T: TryFrom<Map, Error = MapError>>(ebpf: &mut Ebpf, name: &'static str) -> Result<T> {
    T::try_from(take(ebpf, name)?).map_err(|source| MapsError::Layout { map: name, source })
}

impl DataPlane {
    /// Takes the maps out of a loaded object (the programs stay in `ebpf`).
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<Self> {
        debug_assert_eq!(ALL_MAPS.len(), 9);
        let maglev_fd = match ebpf.map(MAP_MAGLEV) {
            Some(Map::Array(data)) => {
                use std::os::fd::AsFd as _;
                data.fd()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(|e| MapsError::Op {
                        op: "duplicate the fd of",
                        map: MAP_MAGLEV,
                        source: MapError::SyscallError(aya::sys::SyscallError {
                            call: "dup",
                            io_error: e,
                        }),
                    })?
            }
            _ => return Err(MapsError::Missing(MAP_MAGLEV)),
        };
        Ok(Self {
            maglev_fd,
            services: typed(ebpf, MAP_SERVICES)?,
            maglev: typed(ebpf, MAP_MAGLEV)?,
            backends: typed(ebpf, MAP_BACKENDS)?,
            affinity: typed(ebpf, MAP_AFFINITY)?,
            stats: typed(ebpf, MAP_STATS)?,
            svc_stats: typed(ebpf, MAP_SVC_STATS)?,
            be_stats: typed(ebpf, MAP_BE_STATS)?,
            tx_ports: typed(ebpf, MAP_TX_PORTS)?,
            vip_filter: typed(ebpf, MAP_VIP_FILTER)?,
        })
    }

    // --- services ------------------------------------------------------------------

    pub fn set_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<()> {
        self.services
            .insert(key, value, 0)
            .map_err(op("insert", MAP_SERVICES))
    }

    pub fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
        match self.services.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(op("remove", MAP_SERVICES)(e)),
        }
    }

    /// Makes the VIP set exactly `vips` (address, family): their marker entries exist
    /// and the pre-filter has their bits. Markers first, filter last, so a packet that
    /// passes the filter always finds its marker.
    pub fn set_vips(&mut self, vips: &[(Addr, u8)]) -> Result<()> {
        let marker = |addr: Addr, family: u8| ServiceKey {
            addr,
            port_be: 0,
            proto: PROTO_VIP_MARKER,
            family,
        };
        for &(addr, family) in vips {
            let value = ServiceValue {
                id: u32::MAX,
                flags: SVC_F_VIP_MARKER,
                ..Default::default()
            };
            self.set_service(&marker(addr, family), &value)?;
        }
        let mut words = vec![0u64; VIP_FILTER_WORDS as usize];
        for (addr, _) in vips {
            let (w, bit) = vip_filter_bit(addr);
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
            .filter(|k| k.proto == PROTO_VIP_MARKER && !vips.contains(&(k.addr, k.family)))
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
        lookup_batch(&self.maglev_fd, offset, len).map_err(|io_error| MapsError::Op {
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
        let mut out = Vec::new();
        for (id, b) in self.backends.iter().enumerate() {
            let b = b.map_err(op("lookup", MAP_BACKENDS))?;
            if b.generation != 0 {
                out.push((id as u32, b));
            }
        }
        Ok(out)
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
        match self.affinity.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(op("lookup", MAP_AFFINITY)(e)),
        }
    }

    /// Every entry, optionally of one service. Entries the data plane evicts or adds
    /// while we iterate may be missed or seen twice: this is a snapshot, not a lock.
    pub fn affinity_entries(
        &self,
        service_id: Option<u32>,
    ) -> Result<Vec<(AffinityKey, AffinityValue)>> {
        let mut out = Vec::new();
        for item in self.affinity.iter() {
            match item {
                Ok((k, v)) if service_id.is_none_or(|s| s == k.service_id) => out.push((k, v)),
                Ok(_) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(op("iterate", MAP_AFFINITY)(e)),
            }
        }
        Ok(out)
    }

    /// Removes one entry (absent is fine: the LRU may have evicted it).
    pub fn affinity_remove(&mut self, key: &AffinityKey) -> Result<()> {
        match self.affinity.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(op("remove", MAP_AFFINITY)(e)),
        }
    }

    /// Removes the entries of one service (or all); returns how many.
    pub fn affinity_flush(&mut self, service_id: Option<u32>) -> Result<usize> {
        let keys: Vec<AffinityKey> = self
            .affinity_entries(service_id)?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let mut n = 0;
        for k in keys {
            match self.affinity.remove(&k) {
                Ok(()) => n += 1,
                Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(op("remove", MAP_AFFINITY)(e)),
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
