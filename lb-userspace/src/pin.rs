//! Pinned state under `pin_dir`: the maps and one XDP link per interface.
//!
//! Layout:
//! ```text
//! <pin_dir>/maps/<MAP_NAME>     every map of the xlb object
//! <pin_dir>/link_<ifname>       the bpf_link attaching xlb to that interface
//! ```
//! A daemon that finds this state adopts it: the maps (and so the affinity table) are
//! reused, and the new program replaces the old one atomically through the pinned link
//! (`bpf_link_update`), so traffic never stops. Pins keep maps and links alive when the
//! daemon dies; only `xlb down` removes them.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, MapType},
    programs::{
        Xdp,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpMode},
    },
};
use lb_common::{
    ALL_MAPS, AffinityKey, AffinityValue, Backend, BackendStats, MAP_AFFINITY, MAP_BACKENDS,
    MAP_BE_STATS, MAP_MAGLEV, MAP_SERVICES, MAP_STATS, MAP_SVC_STATS, MAP_TX_PORTS, MAP_VIP_FILTER,
    MAX_BACKENDS, MAX_SERVICE_KEYS, MAX_SERVICES, MAX_TX_PORTS, PROG_XLB, ServiceKey, ServiceStats,
    ServiceValue, Stat, VIP_FILTER_WORDS,
};

use crate::loader::{LoadOptions, XLB_OBJECT};

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "pinned map {path} has another layout than this xlb ({what}); the data plane was made by \
         an incompatible version or with other sizes. Keep the old config/binary, or run \
         `xlb down --pin-dir {pin_dir}` to remove the old state (this drops every affinity pin)"
    )]
    Incompatible {
        path: PathBuf,
        pin_dir: PathBuf,
        what: String,
    },
    #[error(
        "pinned state under {pin_dir} is incomplete (found {found:?}, missing {missing:?}); run \
         `xlb down --pin-dir {pin_dir}` and start again"
    )]
    Partial {
        pin_dir: PathBuf,
        found: Vec<String>,
        missing: Vec<String>,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading pinned map {path}: {source}")]
    Map {
        path: PathBuf,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("loading the xlb object: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("the verifier rejected the xlb program: {0}")]
    Verify(#[source] Box<aya::programs::ProgramError>),
    #[error("attaching XDP to {ifname} in {mode} mode failed: {detail}{hint}")]
    Attach {
        ifname: String,
        mode: &'static str,
        hint: String,
        /// The kernel's answer, with its causes (the hint must come last).
        detail: String,
    },
    #[error("pinned link {path}: {source}")]
    Link {
        path: PathBuf,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
}

type Result<T> = std::result::Result<T, PinError>;

const BPF_F_RDONLY_PROG: u32 = 1 << 7;

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// What a map must look like for this build of xlb.
#[derive(Clone, Debug)]
pub struct MapLayout {
    pub name: &'static str,
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

/// The layout of every map, given the load-time sizes.
pub fn expected_layout(opts: &LoadOptions) -> Vec<MapLayout> {
    use std::mem::size_of;
    let m = |name, map_type, key_size: usize, value_size: usize, max_entries, flags| MapLayout {
        name,
        map_type,
        key_size: key_size as u32,
        value_size: value_size as u32,
        max_entries,
        flags,
    };
    let layout = vec![
        m(
            MAP_SERVICES,
            MapType::Hash,
            size_of::<ServiceKey>(),
            size_of::<ServiceValue>(),
            MAX_SERVICE_KEYS,
            0,
        ),
        m(MAP_MAGLEV, MapType::Array, 4, 4, opts.maglev_slots, 0),
        m(
            MAP_BACKENDS,
            MapType::Array,
            4,
            size_of::<Backend>(),
            MAX_BACKENDS,
            0,
        ),
        m(
            MAP_AFFINITY,
            MapType::LruHash,
            size_of::<AffinityKey>(),
            size_of::<AffinityValue>(),
            opts.affinity_capacity,
            0,
        ),
        m(MAP_STATS, MapType::PerCpuArray, 4, 8, Stat::COUNT, 0),
        m(
            MAP_SVC_STATS,
            MapType::PerCpuArray,
            4,
            size_of::<ServiceStats>(),
            MAX_SERVICES,
            0,
        ),
        m(
            MAP_BE_STATS,
            MapType::PerCpuArray,
            4,
            size_of::<BackendStats>(),
            MAX_BACKENDS,
            0,
        ),
        m(MAP_TX_PORTS, MapType::DevMapHash, 4, 8, MAX_TX_PORTS, 0),
        m(MAP_VIP_FILTER, MapType::Array, 4, 8, VIP_FILTER_WORDS, 0),
    ];
    debug_assert_eq!(layout.len(), ALL_MAPS.len());
    layout
}

pub fn maps_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("maps")
}

pub fn link_path(pin_dir: &Path, ifname: &str) -> PathBuf {
    pin_dir.join(format!("link_{ifname}"))
}

/// What `pin_dir` holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// Nothing pinned: a fresh start.
    Nothing,
    /// Every map pinned with the expected layout: adopt.
    Compatible,
}

/// Checks pinned maps against the expected layout, never mixing incompatible state.
pub fn check(pin_dir: &Path, opts: &LoadOptions) -> Result<Found> {
    let dir = maps_dir(pin_dir);
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for l in expected_layout(opts) {
        let path = dir.join(l.name);
        if !path.exists() {
            missing.push(l.name.to_string());
            continue;
        }
        found.push(l.name.to_string());
        let info = MapData::from_pin(&path)
            .and_then(|m| m.info())
            .map_err(|source| PinError::Map {
                path: path.clone(),
                source,
            })?;
        let map_type = info.map_type().map_err(|source| PinError::Map {
            path: path.clone(),
            source,
        })?;
        let mut diffs = Vec::new();
        if map_type != l.map_type {
            diffs.push(format!("type {map_type:?}, expected {:?}", l.map_type));
        }
        if info.key_size() != l.key_size {
            diffs.push(format!(
                "key size {}, expected {}",
                info.key_size(),
                l.key_size
            ));
        }
        if info.value_size() != l.value_size {
            diffs.push(format!(
                "value size {}, expected {}",
                info.value_size(),
                l.value_size
            ));
        }
        if info.max_entries() != l.max_entries {
            let hint = match l.name {
                MAP_AFFINITY => " (daemon.affinity_capacity changed)",
                MAP_MAGLEV => " (the Maglev array size changed)",
                _ => "",
            };
            diffs.push(format!(
                "{} entries, expected {}{hint}",
                info.max_entries(),
                l.max_entries
            ));
        }
        // The kernel adds BPF_F_RDONLY_PROG to device maps by itself (dev_map_alloc).
        let flags = info.map_flags() & !BPF_F_RDONLY_PROG;
        if flags != l.flags {
            diffs.push(format!("flags {flags:#x}, expected {:#x}", l.flags));
        }
        if !diffs.is_empty() {
            return Err(PinError::Incompatible {
                path,
                pin_dir: pin_dir.to_path_buf(),
                what: diffs.join(", "),
            });
        }
    }
    match (found.is_empty(), missing.is_empty()) {
        (true, _) => Ok(Found::Nothing),
        (false, true) => Ok(Found::Compatible),
        (false, false) => Err(PinError::Partial {
            pin_dir: pin_dir.to_path_buf(),
            found,
            missing,
        }),
    }
}

/// Loads the xlb object with every map pinned under `pin_dir` (reused when present: call
/// [`check`] first) and the program verified and loaded, not attached.
pub fn load_pinned(pin_dir: &Path, opts: &LoadOptions) -> Result<Ebpf> {
    let dir = maps_dir(pin_dir);
    fs::create_dir_all(&dir).map_err(|source| PinError::Io {
        what: "creating",
        path: dir.clone(),
        source,
    })?;
    let paths: Vec<(&'static str, PathBuf)> = ALL_MAPS.iter().map(|n| (*n, dir.join(n))).collect();
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(MAP_AFFINITY, opts.affinity_capacity)
        .map_max_entries(MAP_MAGLEV, opts.maglev_slots);
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader
        .load(XLB_OBJECT)
        .map_err(|e| PinError::Load(Box::new(e)))?;
    let prog: &mut Xdp = ebpf
        .program_mut(PROG_XLB)
        .expect("the xlb object has the xlb program")
        .try_into()
        .expect("xlb is an XDP program");
    prog.load().map_err(|e| PinError::Verify(Box::new(e)))?;
    Ok(ebpf)
}

/// How the program was attached to one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attached {
    /// A new link, now pinned.
    New,
    /// The pinned link of an earlier daemon, its program replaced atomically.
    Replaced,
}

/// Attaches xlb to `ifname` through a pinned link: replaces the program of an existing
/// pinned link atomically, or creates and pins a new link.
pub fn attach(ebpf: &mut Ebpf, pin_dir: &Path, ifname: &str, generic: bool) -> Result<Attached> {
    let path = link_path(pin_dir, ifname);
    let prog: &mut Xdp = ebpf
        .program_mut(PROG_XLB)
        .expect("the xlb object has the xlb program")
        .try_into()
        .expect("xlb is an XDP program");
    let mode_name = if generic { "generic" } else { "native" };
    if path.exists() {
        let pinned = PinnedLink::from_pin(&path).map_err(|source| PinError::Link {
            path: path.clone(),
            source,
        })?;
        // Keep the pin: the link must outlive this daemon.
        let fd_link: FdLink = pinned.into();
        let link = XdpLink::try_from(fd_link).map_err(|source| PinError::Link {
            path: path.clone(),
            source,
        })?;
        let id = prog
            .attach_to_link(link)
            .map_err(|source| PinError::Attach {
                ifname: ifname.to_string(),
                mode: mode_name,
                hint: String::new(),
                detail: chain(&source),
            })?;
        // Take the link out of the program's care so dropping the program (daemon exit)
        // does not detach it; the pin keeps it alive.
        let _ = prog.take_link(id);
        return Ok(Attached::Replaced);
    }
    let mode = if generic {
        XdpMode::Skb
    } else {
        XdpMode::Driver
    };
    let id = prog.attach(ifname, mode).map_err(|source| {
        let hint = if generic {
            String::new()
        } else {
            format!(
                " (if the driver of {ifname} has no native XDP support, set \
                 daemon.xdp_mode = \"generic\" in the config)"
            )
        };
        PinError::Attach {
            ifname: ifname.to_string(),
            mode: mode_name,
            hint,
            detail: chain(&source),
        }
    })?;
    let link = prog.take_link(id).map_err(|source| PinError::Attach {
        ifname: ifname.to_string(),
        mode: mode_name,
        hint: String::new(),
        detail: chain(&source),
    })?;
    let fd_link = FdLink::try_from(link).map_err(|source| PinError::Link {
        path: path.clone(),
        source,
    })?;
    fd_link.pin(&path).map_err(|source| PinError::Pin {
        path: path.clone(),
        source,
    })?;
    Ok(Attached::New)
}

/// Interfaces that have a pinned link under `pin_dir`.
pub fn pinned_links(pin_dir: &Path) -> Vec<String> {
    let Ok(rd) = fs::read_dir(pin_dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("link_"))
                .map(str::to_string)
        })
        .collect();
    out.sort();
    out
}

/// Detaches the program from `ifname` by removing its pinned link.
pub fn detach(pin_dir: &Path, ifname: &str) -> Result<()> {
    let path = link_path(pin_dir, ifname);
    let pinned = PinnedLink::from_pin(&path).map_err(|source| PinError::Link {
        path: path.clone(),
        source,
    })?;
    // Unpinned and closed: the last reference, so the kernel detaches the program.
    let link = pinned.unpin().map_err(|source| PinError::Io {
        what: "unpinning",
        path: path.clone(),
        source,
    })?;
    drop(link);
    Ok(())
}

/// What `down` removed.
#[derive(Debug, Default)]
pub struct Removed {
    pub links: Vec<String>,
    pub maps: Vec<String>,
}

/// Detaches every pinned link and removes every pinned map and the directories.
/// Works without a daemon, on whatever is there.
pub fn down(pin_dir: &Path) -> Result<Removed> {
    let mut removed = Removed::default();
    for ifname in pinned_links(pin_dir) {
        detach(pin_dir, &ifname)?;
        removed.links.push(ifname);
    }
    let dir = maps_dir(pin_dir);
    if let Ok(rd) = fs::read_dir(&dir) {
        for e in rd.filter_map(|e| e.ok()) {
            let p = e.path();
            fs::remove_file(&p).map_err(|source| PinError::Io {
                what: "removing",
                path: p.clone(),
                source,
            })?;
            removed
                .maps
                .push(e.file_name().to_string_lossy().into_owned());
        }
        let _ = fs::remove_dir(&dir);
    }
    let _ = fs::remove_dir(pin_dir);
    removed.maps.sort();
    Ok(removed)
}

/// Mounts bpffs on `pin_dir`'s bpffs root (/sys/fs/bpf) when it is not mounted; a fresh
/// machine has no bpffs there.
pub fn ensure_bpffs(pin_dir: &Path) -> io::Result<()> {
    let root = Path::new("/sys/fs/bpf");
    if !pin_dir.starts_with(root) {
        return Ok(());
    }
    let mounts = fs::read_to_string("/proc/self/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        return Ok(());
    }
    fs::create_dir_all(root)?;
    let src = c"bpf";
    let target = c"/sys/fs/bpf";
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
