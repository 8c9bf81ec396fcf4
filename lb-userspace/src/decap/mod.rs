//! `xlb decap attach IFACE --from PREFIX...` / `detach IFACE` / `stats IFACE`: the tunnel
//! decapsulation program for backends (lb-ebpf/src/bin/decap.rs, its own object) on one
//! interface, with its link and maps pinned under `ROOT/IFACE/` (`--pin-dir ROOT`, default
//! `/sys/fs/bpf/xlb-decap`; one root per network namespace that uses it), so it
//! outlives the command (and a restart of nothing but itself: running `attach` again
//! updates the allowed prefixes and the host's addresses in place). A reboot needs it run
//! again (e.g. from a unit).
//!
//! Owns that directory only; must not touch the balancer's pin directory, maps or daemon.

use std::{
    collections::BTreeSet,
    fs, io,
    net::IpAddr,
    path::{Path, PathBuf},
    str::FromStr,
};

use aya::{
    EbpfLoader,
    maps::{HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, lpm_trie::Key},
    programs::{
        Xdp,
        links::{FdLink, PinnedLink},
        xdp::XdpMode,
    },
};
use lb_common::{
    FAMILY_V4, FAMILY_V6, addr_from_bytes,
    decap::{
        DecapStat, LocalKey, MAP_DECAP_FROM4, MAP_DECAP_FROM6, MAP_DECAP_LOCAL, MAP_DECAP_STATS,
        MAX_DECAP_PREFIXES, PROG_DECAP,
    },
};

use crate::dataplane::{loader::DECAP_OBJECT, pin::ensure_bpffs};

/// Where every interface's decapsulation state is pinned by default.
pub const DECAP_PIN_ROOT: &str = "/sys/fs/bpf/xlb-decap";

const MAPS: [&str; 4] = [
    MAP_DECAP_FROM4,
    MAP_DECAP_FROM6,
    MAP_DECAP_LOCAL,
    MAP_DECAP_STATS,
];

#[derive(Debug, thiserror::Error)]
pub enum DecapError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("loading the decapsulation program: {0}")]
    Load(String),
    #[error("attaching the decapsulation program to {ifname} ({mode} XDP): {detail}")]
    Attach {
        ifname: String,
        mode: &'static str,
        detail: String,
    },
    #[error("no decapsulation program is attached to {ifname} (nothing pinned under {})", dir.display())]
    NotAttached { ifname: String, dir: PathBuf },
    #[error("more than {MAX_DECAP_PREFIXES} prefixes of one family")]
    TooMany,
}

type Result<T> = std::result::Result<T, DecapError>;

/// An allowed source prefix (`--from`): an address and a prefix length, host bits zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl FromStr for Prefix {
    type Err = String;

    /// `ADDRESS/LEN` or a bare address (a host: /32 or /128).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (a, l) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?}: not an address or ADDRESS/LEN"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = if l.is_empty() {
            max
        } else {
            l.parse::<u8>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0..={max}"))?
        };
        let p = Prefix { addr, len };
        if p.masked() != addr {
            return Err(format!(
                "{s:?}: host bits are set (did you mean {}/{len}?)",
                p.masked()
            ));
        }
        Ok(p)
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Prefix {
    fn masked(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let m = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & m).into())
            }
            IpAddr::V6(a) => {
                let m = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & m).into())
            }
        }
    }
}

/// What `attach` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Attached {
    /// Loaded, attached and pinned.
    New,
    /// Already attached: the prefixes and addresses were replaced in place.
    Updated,
}

/// The pin directory of `ifname` under `root`. Interface names belong to a network
/// namespace: outside the host's (PID 1's) the directory is `root/netns-INODE/ifname`,
/// so the `eth0` of two namespaces (containers, a lab's backends) never share pins — the
/// second attach used to find the first one's link, "update" it and attach nothing.
/// In the host's namespace it is `root/ifname`, as in earlier releases.
pub fn dir_of(root: &Path, ifname: &str) -> PathBuf {
    match foreign_netns() {
        Some(inode) => root.join(format!("netns-{inode}")).join(ifname),
        None => root.join(ifname),
    }
}

/// The inode of the calling thread's network namespace when it is not PID 1's.
fn foreign_netns() -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    let ns = |p: &str| fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let own = ns("/proc/thread-self/ns/net")?;
    (Some(own) != ns("/proc/1/ns/net")).then_some(own.1)
}

fn link_path(dir: &Path) -> PathBuf {
    dir.join("link")
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DecapError {
    let path = path.to_path_buf();
    move |source| DecapError::Io { what, path, source }
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> DecapError {
    move |source| DecapError::Map { map, source }
}

/// Decapsulates tunnel packets from `from` arriving on `ifname` (XDP, native unless
/// `generic`); again on an attached interface: replaces the prefixes and re-reads the
/// host's addresses.
pub fn attach(root: &Path, ifname: &str, from: &[Prefix], generic: bool) -> Result<Attached> {
    let dir = dir_of(root, ifname);
    ensure_bpffs(&dir).map_err(io_err("mounting bpffs for", &dir))?;
    if link_path(&dir).exists() {
        fill(&dir, from)?;
        return Ok(Attached::Updated);
    }
    // A directory without a link is what an interrupted attach leaves: start afresh.
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
    match attach_new(ifname, &dir, from, generic) {
        Ok(()) => Ok(Attached::New),
        Err(e) => {
            let _ = fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}

fn attach_new(ifname: &str, dir: &Path, from: &[Prefix], generic: bool) -> Result<()> {
    let mut ebpf = load_in(dir)?;
    fill(dir, from)?;
    let prog = program(&mut ebpf)?;
    let (mode, mode_name) = if generic {
        (XdpMode::Skb, "generic")
    } else {
        (XdpMode::Driver, "native")
    };
    let failed = |e: &dyn std::error::Error| DecapError::Attach {
        ifname: ifname.to_string(),
        mode: mode_name,
        detail: e.to_string(),
    };
    let id = prog.attach(ifname, mode).map_err(|e| failed(&e))?;
    let link = prog.take_link(id).map_err(|e| failed(&e))?;
    let fd_link = FdLink::try_from(link).map_err(|e| failed(&e))?;
    let path = link_path(dir);
    fd_link
        .pin(&path)
        .map_err(|e| DecapError::Load(format!("pinning the link at {}: {e}", path.display())))?;
    Ok(())
}

/// The decapsulation object loaded (its program verified, not attached) on the maps
/// pinned for `ifname` (created and pinned when missing): what `attach` runs, and what
/// the packet tests run with BPF_PROG_TEST_RUN.
pub fn load(root: &Path, ifname: &str) -> Result<aya::Ebpf> {
    let dir = dir_of(root, ifname);
    let mut ebpf = load_in(&dir)?;
    program(&mut ebpf)?;
    Ok(ebpf)
}

fn load_in(dir: &Path) -> Result<aya::Ebpf> {
    let paths: Vec<(&'static str, PathBuf)> = MAPS.iter().map(|m| (*m, dir.join(m))).collect();
    let mut loader = EbpfLoader::new();
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    loader
        .load(DECAP_OBJECT)
        .map_err(|e| DecapError::Load(e.to_string()))
}

/// The program of `ebpf`, loaded into the kernel.
fn program(ebpf: &mut aya::Ebpf) -> Result<&mut Xdp> {
    let prog: &mut Xdp = ebpf
        .program_mut(PROG_DECAP)
        .ok_or_else(|| DecapError::Load(format!("no program {PROG_DECAP}")))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| DecapError::Load(e.to_string()))?;
    if prog.fd().is_err() {
        prog.load().map_err(|e| DecapError::Load(e.to_string()))?;
    }
    Ok(prog)
}

/// Writes the allowed prefixes and the host's addresses into the pinned maps: new
/// entries first, stale ones last, so no allowed source is refused in between.
fn fill(dir: &Path, from: &[Prefix]) -> Result<()> {
    let open = |name: &'static str| -> Result<MapData> {
        MapData::from_pin(dir.join(name)).map_err(map_err(name))
    };
    let mut v4 = LpmTrie::<MapData, [u8; 4], u32>::try_from(Map::LpmTrie(open(MAP_DECAP_FROM4)?))
        .map_err(map_err(MAP_DECAP_FROM4))?;
    let mut v6 = LpmTrie::<MapData, [u8; 16], u32>::try_from(Map::LpmTrie(open(MAP_DECAP_FROM6)?))
        .map_err(map_err(MAP_DECAP_FROM6))?;
    let (want4, want6): (Vec<&Prefix>, Vec<&Prefix>) = from.iter().partition(|p| p.addr.is_ipv4());
    if want4.len() > MAX_DECAP_PREFIXES as usize || want6.len() > MAX_DECAP_PREFIXES as usize {
        return Err(DecapError::TooMany);
    }
    let keys4: Vec<Key<[u8; 4]>> = want4
        .iter()
        .filter_map(|p| match p.addr {
            IpAddr::V4(a) => Some(Key::new(u32::from(p.len), a.octets())),
            IpAddr::V6(_) => None,
        })
        .collect();
    let keys6: Vec<Key<[u8; 16]>> = want6
        .iter()
        .filter_map(|p| match p.addr {
            IpAddr::V6(a) => Some(Key::new(u32::from(p.len), a.octets())),
            IpAddr::V4(_) => None,
        })
        .collect();
    for k in &keys4 {
        v4.insert(k, 1, 0).map_err(map_err(MAP_DECAP_FROM4))?;
    }
    for k in &keys6 {
        v6.insert(k, 1, 0).map_err(map_err(MAP_DECAP_FROM6))?;
    }
    let stale4: Vec<Key<[u8; 4]>> = v4
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| !keys4.iter().any(|w| same4(w, k)))
        .collect();
    for k in stale4 {
        v4.remove(&k).map_err(map_err(MAP_DECAP_FROM4))?;
    }
    let stale6: Vec<Key<[u8; 16]>> = v6
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| !keys6.iter().any(|w| same6(w, k)))
        .collect();
    for k in stale6 {
        v6.remove(&k).map_err(map_err(MAP_DECAP_FROM6))?;
    }
    fill_local(open(MAP_DECAP_LOCAL)?)
}

fn same4(a: &Key<[u8; 4]>, b: &Key<[u8; 4]>) -> bool {
    a.prefix_len() == b.prefix_len() && a.data() == b.data()
}

fn same6(a: &Key<[u8; 16]>, b: &Key<[u8; 16]>) -> bool {
    a.prefix_len() == b.prefix_len() && a.data() == b.data()
}

/// The host's addresses (every interface of this network namespace) as outer
/// destinations to decapsulate.
fn fill_local(map: MapData) -> Result<()> {
    let mut local = HashMap::<MapData, LocalKey, u32>::try_from(Map::HashMap(map))
        .map_err(map_err(MAP_DECAP_LOCAL))?;
    let keys: Vec<LocalKey> = host_addresses()
        .map_err(io_err(
            "listing the host's addresses",
            Path::new("getifaddrs"),
        ))?
        .into_iter()
        .map(local_key)
        .collect();
    let want: BTreeSet<(Vec<u32>, u32)> =
        keys.iter().map(|k| (k.addr.to_vec(), k.family)).collect();
    for k in &keys {
        local.insert(k, 1, 0).map_err(map_err(MAP_DECAP_LOCAL))?;
    }
    let stale: Vec<LocalKey> = local
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| !want.contains(&(k.addr.to_vec(), k.family)))
        .collect();
    for k in stale {
        local.remove(&k).map_err(map_err(MAP_DECAP_LOCAL))?;
    }
    Ok(())
}

fn local_key(a: IpAddr) -> LocalKey {
    let (bytes, family) = match a {
        IpAddr::V4(v) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v.octets());
            (b, FAMILY_V4)
        }
        IpAddr::V6(v) => (v.octets(), FAMILY_V6),
    };
    LocalKey {
        addr: addr_from_bytes(&bytes),
        family: u32::from(family),
    }
}

/// Every address of every interface (getifaddrs).
fn host_addresses() -> io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: a node of the list getifaddrs returned; addresses by their family.
        unsafe {
            let sa = (*cur).ifa_addr;
            if !sa.is_null() {
                match i32::from((*sa).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(sa as *const libc::sockaddr_in);
                        out.push(IpAddr::V4(u32::from_be(sin.sin_addr.s_addr).into()));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(sa as *const libc::sockaddr_in6);
                        out.push(IpAddr::V6(sin6.sin6_addr.s6_addr.into()));
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
    }
    // SAFETY: the list getifaddrs allocated.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// Detaches the program from `ifname` and removes its pinned state.
pub fn detach(root: &Path, ifname: &str) -> Result<()> {
    let dir = dir_of(root, ifname);
    let path = link_path(&dir);
    if !path.exists() {
        return Err(DecapError::NotAttached {
            ifname: ifname.to_string(),
            dir,
        });
    }
    let pinned = PinnedLink::from_pin(&path)
        .map_err(|e| DecapError::Load(format!("opening {}: {e}", path.display())))?;
    // Unpinned and closed: the last reference, so the kernel detaches the program.
    let link = pinned.unpin().map_err(io_err("unpinning", &path))?;
    drop(link);
    fs::remove_dir_all(&dir).map_err(io_err("removing", &dir))?;
    // A namespace's directory, then the root, go with their last interface.
    if let Some(parent) = dir.parent().filter(|p| *p != root) {
        let _ = fs::remove_dir(parent);
    }
    let _ = fs::remove_dir(root);
    Ok(())
}

/// The counters of `ifname`'s program, summed over CPUs.
pub fn stats(root: &Path, ifname: &str) -> Result<Vec<(DecapStat, u64)>> {
    let dir = dir_of(root, ifname);
    let path = dir.join(MAP_DECAP_STATS);
    if !path.exists() {
        return Err(DecapError::NotAttached {
            ifname: ifname.to_string(),
            dir,
        });
    }
    let data = MapData::from_pin(&path).map_err(map_err(MAP_DECAP_STATS))?;
    let arr = PerCpuArray::<MapData, u64>::try_from(Map::PerCpuArray(data))
        .map_err(map_err(MAP_DECAP_STATS))?;
    DecapStat::ALL
        .iter()
        .map(|s| {
            let v = arr.get(&(*s as u32), 0).map_err(map_err(MAP_DECAP_STATS))?;
            Ok((*s, v.iter().sum()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_with_their_errors() {
        let p: Prefix = "10.100.0.0/16".parse().expect("v4");
        assert_eq!(p.to_string(), "10.100.0.0/16");
        let h: Prefix = "fd00::2".parse().expect("host");
        assert_eq!(h.len, 128);
        assert!(
            "10.100.0.1/16"
                .parse::<Prefix>()
                .unwrap_err()
                .contains("host bits")
        );
        assert!(
            "10.0.0.0/33"
                .parse::<Prefix>()
                .unwrap_err()
                .contains("0..=32")
        );
        assert!(
            "lb".parse::<Prefix>()
                .unwrap_err()
                .contains("not an address")
        );
        let z: Prefix = "::/0".parse().expect("everything");
        assert_eq!(z.len, 0);
    }
}
