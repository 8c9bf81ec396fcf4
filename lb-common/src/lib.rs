//! The one source of truth for the boundary between the xlb XDP program and its controller.
//!
//! Every map key and value is `#[repr(C)]` with explicit padding fields and a size assert,
//! so the eBPF object, the controller and the tests agree byte for byte. No `bool`, `enum`
//! or `Option` crosses the boundary: flags are integer bit sets and indices are `u32`.
//!
//! Byte order, per field, is stated in its doc comment:
//! - *network order*: the bytes exactly as they appear on the wire (addresses, ports).
//!   Addresses are [`Addr`]: the 16 wire bytes held as four native `u32` words, so the
//!   program moves them with four loads instead of sixteen (see [`addr_from_bytes`]);
//! - *host order*: native integers written by the controller and read by the program
//!   (both little-endian here: bpfel and x86_64).
//!
//! The flow hash and the Maglev slot selection live here too, so that the XDP program,
//! the unit tests and `xlb explain` all run the same code.
#![cfg_attr(not(any(feature = "user", test)), no_std)]
// The affinity table's compare-and-swap: the BPF target has no `AtomicU64::compare_exchange`
// (rustc's target spec says no CAS), but LLVM emits BPF_ATOMIC | BPF_CMPXCHG for the
// intrinsic, which the kernel's verifier and JIT support (≥ 5.12).
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

pub mod affinity;
pub mod bound;
pub mod decap;
pub mod hash;
pub mod log_gate;
#[cfg(feature = "user")]
pub mod maglev;
pub mod maps;
pub mod natsrc;
pub mod sample;
pub mod tunnel;

pub use affinity::{MAX_IDLE_TIMEOUT_NS, MIN_IDLE_TIMEOUT_NS};
pub use hash::{flow_hash, maglev_slot};
pub use maps::MAP_META;

/// An address as it sits in maps: the network-order bytes (IPv4 in bytes 0..4, the rest
/// zero) viewed as four native-endian `u32` words. `addr_from_bytes`/`addr_to_bytes`
/// convert without changing a byte.
pub type Addr = [u32; 4];

#[inline(always)]
pub const fn addr_from_bytes(b: &[u8; 16]) -> Addr {
    [
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
        u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
    ]
}

pub const fn addr_to_bytes(a: &Addr) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let w = a[i].to_ne_bytes();
        out[4 * i] = w[0];
        out[4 * i + 1] = w[1];
        out[4 * i + 2] = w[2];
        out[4 * i + 3] = w[3];
        i += 1;
    }
    out
}

// ---------------------------------------------------------------------------------------
// Map names (≤ 15 bytes: BPF_OBJ_NAME_LEN is 16 with the NUL).
// ---------------------------------------------------------------------------------------

/// HASH: [`ServiceKey`] → [`ServiceValue`].
pub const MAP_SERVICES: &str = "XLB_SERVICES";
/// ARRAY: slot index (service `table_offset` + slot) → backend id (`u32`, [`NO_BACKEND`] if empty).
pub const MAP_MAGLEV: &str = "XLB_MAGLEV";
/// ARRAY: backend id → [`Backend`].
pub const MAP_BACKENDS: &str = "XLB_BACKENDS";
/// ARRAY (mmapable) of [`affinity::table::Bucket`]: the affinity table, value 0 its
/// [`affinity::table::Header`]. (Releases before it: an LRU_HASH [`AffinityKey`] →
/// [`AffinityValue`] of the same name, migrated on adoption.)
pub const MAP_AFFINITY: &str = "XLB_AFFINITY";
/// ARRAY (mmapable) of [`affinity::table::ColdBucket`], indexed like `XLB_AFFINITY`: the
/// whole key and creation time of each pin.
pub const MAP_AFF_KEYS: &str = "XLB_AFF_KEYS";
/// ARRAY (mmapable) of [`FastService`]: a direct-mapped copy of the services map in front
/// of it (see [`fast_slot`]); a miss there falls back to `XLB_SERVICES`.
pub const MAP_SVC_FAST: &str = "XLB_SVC_FAST";
/// ARRAY: service id → its `idle_timeout` in affinity-table units (`u32`,
/// [`affinity::table::timeout_units`]): lets a writer tell whether another service's
/// entry has expired.
pub const MAP_SVC_IDLE: &str = "XLB_SVC_IDLE";
/// PERCPU_ARRAY: [`Stat`] index → `u64` packet count.
pub const MAP_STATS: &str = "XLB_STATS";
/// PERCPU_ARRAY: service id → [`ServiceStats`].
pub const MAP_SVC_STATS: &str = "XLB_SVC_STATS";
/// PERCPU_ARRAY: backend id → [`BackendStats`].
pub const MAP_BE_STATS: &str = "XLB_BE_STATS";
/// LRU_HASH: [`FragKey`] → [`FragValue`]: the ports of each fragmented packet whose
/// first fragment was balanced, so its later fragments (no ports) follow it.
pub const MAP_FRAGS: &str = "XLB_FRAGS";
/// DEVMAP_HASH: egress ifindex → ifindex, for `bpf_redirect_map`.
pub const MAP_TX_PORTS: &str = "XLB_TX_PORTS";
/// ARRAY: word index → `u64` bit set; a cheap pre-filter on destination addresses
/// (see [`vip_filter_bit`]) so traffic that is not ours pays no hash lookup.
pub const MAP_VIP_FILTER: &str = "XLB_VIP_FILTER";
/// RINGBUF of [`sample::SourceSample`] records: sampled packets' sources, drained by the
/// controller (see [`sample`]).
pub const MAP_SAMPLES: &str = "XLB_SAMPLES";
/// ARRAY: service id → `u32` sampling period N (one packet in N; 0 = off), set by the
/// controller from the service's rate.
pub const MAP_SAMPLE_N: &str = "XLB_SAMPLE_N";
/// PERCPU_ARRAY: service id → `u32` packets until the next sample on this CPU. (Its own
/// map: the service's per-CPU counters have no free word left.)
pub const MAP_SAMPLE_CD: &str = "XLB_SAMPLE_CD";
/// LPM_TRIE: the services' `nat_sources` prefixes (see [`natsrc`]).
pub const MAP_NAT_SRC: &str = "XLB_NAT_SRC";
/// ARRAY of `u64`: the pre-filter in front of `XLB_NAT_SRC` (see [`natsrc`]).
pub const MAP_NAT_FILTER: &str = "XLB_NAT_FILTER";
/// ARRAY: backend id → `u32` flags of its load ([`bound::OVER_BOUND`]), set by the
/// controller for services with a balance factor.
pub const MAP_BE_LOAD: &str = "XLB_BE_LOAD";

// Every map with its type, sizes and adoption rules: the table in [`maps::MAPS`].

/// Name of the XDP balancer program in the object.
pub const PROG_XLB: &str = "xlb";

// ---------------------------------------------------------------------------------------
// Limits.
// ---------------------------------------------------------------------------------------

/// Services (ids `0..MAX_SERVICES`).
pub const MAX_SERVICES: u32 = 256;
/// Backends over all services (ids `0..MAX_BACKENDS`).
pub const MAX_BACKENDS: u32 = 4096;
/// Entries in the services hash: every service plus one VIP marker per distinct address.
pub const MAX_SERVICE_KEYS: u32 = 2 * MAX_SERVICES;
/// Slots of `XLB_SVC_FAST` (a power of two, twice the services: few collisions).
pub const FAST_SERVICE_SLOTS: u32 = 512;
/// Default size of the Maglev array (all services' tables side by side); the controller
/// may resize it at load time.
pub const DEFAULT_MAGLEV_SLOTS: u32 = 1 << 21;
/// Default capacity of the affinity table (clients, shared by all services).
pub const DEFAULT_AFFINITY_CAPACITY: u32 = 1 << 20;
/// Egress interfaces in the redirect map.
pub const MAX_TX_PORTS: u32 = 64;
/// Fragmented packets tracked at once (`XLB_FRAGS`, least recently used evicted).
pub const MAX_TRACKED_FRAGMENTS: u32 = 65536;
/// A tracked fragmented packet is forgotten this long after its first fragment (the
/// kernel's own reassembly timeout, `net.ipv4.ipfrag_time`, is 30 s).
pub const FRAG_TIMEOUT_NS: u64 = 30_000_000_000;
/// IPv6 extension headers walked before the upper-layer header, at most (hop-by-hop,
/// destination options, routing, fragment, destination options again: RFC 8200's order
/// has five; one more for slack). A chain longer than this is dropped and counted.
pub const MAX_IPV6_EXT_HEADERS: usize = 6;
/// Bits in the VIP pre-filter.
pub const VIP_FILTER_BITS: u32 = 1 << 16;
/// `u64` words in the VIP pre-filter array.
pub const VIP_FILTER_WORDS: u32 = VIP_FILTER_BITS / 64;

/// Maglev slot value meaning "no backend" (an empty table: no healthy backend).
pub const NO_BACKEND: u32 = u32::MAX;

/// Address families as stored in keys (`AF_INET`, `AF_INET6`).
pub const FAMILY_V4: u8 = 2;
pub const FAMILY_V6: u8 = 10;

/// IP protocol numbers (`IPPROTO_*`).
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;
/// Protocol value of a VIP marker key (see [`SVC_F_VIP_MARKER`]).
pub const PROTO_VIP_MARKER: u8 = 0;

// ---------------------------------------------------------------------------------------
// Services.
// ---------------------------------------------------------------------------------------

/// Key of the services map.
///
/// A service listening on every port has `port_be = 0`. The controller also inserts one
/// *VIP marker* per distinct VIP address (`port_be = 0`, `proto = PROTO_VIP_MARKER`), which
/// lets the program recognise fragments and unsupported headers addressed to a VIP
/// without knowing the port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ServiceKey {
    /// VIP, network order ([`Addr`]).
    pub addr: Addr,
    /// Destination port, network order; 0 = every port.
    pub port_be: u16,
    /// `PROTO_TCP`, `PROTO_UDP` or `PROTO_VIP_MARKER`.
    pub proto: u8,
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
}
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 20);

/// `affinity = "none"`: the affinity key includes the client's source port (flow hashing).
pub const SVC_F_AFFINITY_NONE: u32 = 1 << 0;
/// No healthy backend: pass to the local stack instead of dropping.
pub const SVC_F_PASS_NO_BACKEND: u32 = 1 << 1;
/// The entry is a VIP marker, not a service.
pub const SVC_F_VIP_MARKER: u32 = 1 << 2;
/// The service lists `nat_sources`: clients in them are keyed on address and port.
pub const SVC_F_NAT_SOURCES: u32 = 1 << 4;
/// The service has a `balance_factor`: new clients avoid backends over the bound.
pub const SVC_F_BOUNDED: u32 = 1 << 5;
/// The service (tunnel mode) has a `tunnel_source` prefix in `XLB_TUN_SRC`; without it
/// the outer source is the egress interface's address (`XLB_EGRESS`).
pub const SVC_F_TUNNEL_SOURCE: u32 = 1 << 6;

/// On a VIP marker: ICMP/ICMPv6 echo requests to this VIP are answered by the program
/// (`daemon.icmp_echo = "reply"`); without it they are passed to the local stack.
pub const SVC_F_ECHO_REPLY: u32 = 1 << 3;

/// A VIP marker's `table_offset` (TCP) and `table_size` (UDP): this bit set means the
/// VIP has exactly one service of that protocol that routes by source address alone
/// (not `affinity = "none"`), whose port (network order, 0 = every port) is the low 16
/// bits. A later fragment (no ports) untracked in `XLB_FRAGS` goes to that service.
pub const MARKER_SOLE: u32 = 1 << 16;

/// The port (network order) of the only service of `proto` on a VIP, from its marker's
/// value (see [`MARKER_SOLE`]); `None` when it has none, several, or one with
/// `affinity = "none"`.
#[inline(always)]
pub fn marker_sole_port(marker: &ServiceValue, proto: u8) -> Option<u16> {
    let w = if proto == PROTO_TCP {
        marker.table_offset
    } else if proto == PROTO_UDP {
        marker.table_size
    } else {
        0
    };
    if w & MARKER_SOLE != 0 {
        Some(w as u16)
    } else {
        None
    }
}

/// Forwarding modes (`ServiceValue::mode`): DSR rewrites the MACs only; tunnel
/// encapsulates in IPIP / IP6IP6 / 4in6 ([`tunnel`]).
pub const MODE_DSR: u8 = 0;
pub const MODE_TUNNEL: u8 = 1;

/// Value of the services map. All fields host order unless stated.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceValue {
    /// Service id: index into `XLB_SVC_STATS`, part of every affinity key.
    pub id: u32,
    /// `SVC_F_*` bits.
    pub flags: u32,
    /// First index of this service's Maglev table in `XLB_MAGLEV`.
    pub table_offset: u32,
    /// Maglev table size M (prime).
    pub table_size: u32,
    /// An affinity entry idle for longer than this is re-decided.
    pub idle_timeout_ns: u64,
    /// Mask applied to the client address before it becomes an affinity key, in the
    /// layout of [`Addr`], so the program masks word by word.
    pub src_mask: Addr,
    /// The prefix length behind `src_mask` (for display only).
    pub prefix_len: u8,
    /// `MODE_*`.
    pub mode: u8,
    pub _pad: [u8; 2],
    /// A live affinity entry's `last_seen_ns` is refreshed when older than this (ns):
    /// [`affinity::refresh_period_ns`] of `idle_timeout_ns`, set by the controller. It
    /// sits in what was padding before `XLB_META` format 1, so the layout is unchanged;
    /// 0 (a value written by an older controller) refreshes on every packet: correct,
    /// only slower.
    pub refresh_ns: u32,
}
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 48);
const _: () = assert!(core::mem::offset_of!(ServiceValue, refresh_ns) == 44);

/// One slot of `XLB_SVC_FAST`: a service entry copied whole, under a sequence word.
///
/// Why: a hash lookup of the 20-byte key is the most expensive step of a pinned client's
/// packet; this array is indexed by a hash the program computes itself. Its entries are
/// written in place, so a reader could see half of an update: the controller (the only
/// writer, through the mmapped map) makes `seq` odd, writes the key and value, makes it
/// even again; the program reads `seq`, copies key and value, reads `seq` again, and uses
/// the copy only when both reads are equal and even — otherwise it asks `XLB_SERVICES`
/// (always complete: the controller writes it first). A slot holds at most one key; a
/// service whose slot another holds lives only in the hash.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FastService {
    /// Even: stable; odd: being written.
    pub seq: u32,
    /// The service key (`family == 0`: an empty slot).
    pub key: ServiceKey,
    pub value: ServiceValue,
}
const _: () = assert!(core::mem::size_of::<FastService>() == 72);
const _: () = assert!(FAST_SERVICE_SLOTS.is_power_of_two());

/// The `XLB_SVC_FAST` slot of a service key.
#[inline(always)]
pub fn fast_slot(key: &ServiceKey) -> u32 {
    let w = (key.addr[0] ^ key.addr[1] ^ key.addr[2] ^ key.addr[3]) as u64
        | ((key.port_be as u64) << 32)
        | ((key.proto as u64) << 48)
        | ((key.family as u64) << 56);
    (hash::fmix64(w) as u32) & (FAST_SERVICE_SLOTS - 1)
}

// ---------------------------------------------------------------------------------------
// Fragments.
// ---------------------------------------------------------------------------------------

/// Key of `XLB_FRAGS`: one fragmented packet (RFC 791 / 8200: source, destination,
/// identification and protocol name it).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragKey {
    /// Source and destination, network order ([`Addr`]).
    pub saddr: Addr,
    pub daddr: Addr,
    /// Identification: IPv4's 16 bits (network order, zero-extended) or the IPv6
    /// fragment header's 32 (network order).
    pub id: u32,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub proto: u8,
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<FragKey>() == 40);

/// Value of `XLB_FRAGS`: the first fragment's ports and when it was seen.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragValue {
    /// Ports of the first fragment, network order.
    pub sport_be: u16,
    pub dport_be: u16,
    pub _pad: u32,
    /// `bpf_ktime_get_coarse_ns()` of the first fragment; the entry is ignored after
    /// [`FRAG_TIMEOUT_NS`].
    pub seen_ns: u64,
}
const _: () = assert!(core::mem::size_of::<FragValue>() == 16);

// ---------------------------------------------------------------------------------------
// Backends.
// ---------------------------------------------------------------------------------------

/// The backend takes new clients and keeps its pinned ones.
pub const BE_F_HEALTHY: u8 = 1 << 0;
/// Draining: keeps its pinned clients, takes no new ones (the controller leaves it out of
/// the Maglev table; the flag is for display and for the data plane's hit path).
pub const BE_F_DRAINING: u8 = 1 << 1;

/// Value of the backends array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend {
    /// Backend address, network order ([`Addr`]).
    pub addr: Addr,
    /// Destination MAC: the backend's (or its next hop's) link address.
    pub mac: [u8; 6],
    /// Source MAC: the egress interface's own address.
    pub src_mac: [u8; 6],
    /// Backend port, network order (0 = the VIP's port; unused in DSR).
    pub port_be: u16,
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
    /// `BE_F_*` bits.
    pub flags: u8,
    /// Egress interface index: XDP_TX when it is the ingress interface, else redirect.
    pub ifindex: u32,
    /// Owning service id.
    pub service_id: u32,
    /// Generation: unique for every (backend, service) the controller ever creates, never 0
    /// for a live backend. An affinity entry is valid only while its `backend_gen` equals
    /// this, so a reused id never inherits another backend's clients.
    pub generation: u32,
    pub _pad: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<Backend>() == 48);

// ---------------------------------------------------------------------------------------
// Affinity.
// ---------------------------------------------------------------------------------------

/// An affinity key: what a pin is for. The table stores it as a tag (and a cold copy),
/// see [`affinity::table`]; this is also the key layout of the LRU table of earlier
/// releases.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct AffinityKey {
    /// Service id (host order).
    pub service_id: u32,
    /// Client source address masked to the service prefix, network order ([`Addr`]).
    pub addr: Addr,
    /// Client source port, network order, only with `affinity = "none"`; else 0.
    pub port_be: u16,
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<AffinityKey>() == 24);

/// An affinity entry as userspace sees it (and the value layout of the LRU table of
/// earlier releases). Times are `bpf_ktime_get_coarse_ns()`, i.e.
/// `CLOCK_MONOTONIC_COARSE` in nanoseconds; read from the table they have its resolution
/// (2^20 ns for `last_seen_ns`, 2^30 ns for `pinned_ns`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AffinityValue {
    /// Backend id.
    pub backend_id: u32,
    /// The backend's generation when the entry was written.
    pub backend_gen: u32,
    /// When the entry was (re)written.
    pub pinned_ns: u64,
    /// Last packet seen, refreshed when older than the service's
    /// [`ServiceValue::refresh_ns`].
    pub last_seen_ns: u64,
}
const _: () = assert!(core::mem::size_of::<AffinityValue>() == 24);

// ---------------------------------------------------------------------------------------
// Statistics.
// ---------------------------------------------------------------------------------------

/// Indices of the global per-CPU counters in `XLB_STATS`: every verdict and every reason.
/// Each packet increments exactly one of them.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Not IPv4/IPv6 (ARP, LLDP, a second VLAN tag, ...): passed.
    PassNonIp = 0,
    /// IP, but not addressed to a service (other address, port, protocol; ICMP): passed.
    PassNotService = 1,
    /// Ethernet, VLAN or IP header truncated or invalid before any VIP is known: passed
    /// (the kernel stack drops it as it would without xlb).
    PassMalformed = 2,
    /// Service without a healthy backend, configured to pass to the local stack.
    PassNoBackend = 3,
    /// A later fragment (no ports) addressed to a VIP whose packet is not tracked and
    /// whose VIP has no single source-address service of its protocol, or a fragment of
    /// neither TCP nor UDP: dropped.
    DropFragment = 4,
    /// Addressed to a VIP but the TCP/UDP header is truncated: dropped.
    DropMalformed = 5,
    /// IPv6 to a VIP with more extension headers than [`MAX_IPV6_EXT_HEADERS`], or with
    /// AH, ESP, mobility, HIP, shim6 or an experimental one (253, 254): dropped.
    DropIpv6ExtHeader = 6,
    /// Service without a healthy backend: dropped.
    DropNoBackend = 7,
    /// The backend's egress interface is not in `XLB_TX_PORTS`: dropped.
    DropNoTxPort = 8,
    /// Forwarded with XDP_TX (backend behind the ingress interface).
    Tx = 9,
    /// Forwarded with XDP_REDIRECT to another interface.
    Redirect = 10,
    /// ICMP or ICMPv6 echo request to a VIP answered by the program (XDP_TX), with
    /// `daemon.icmp_echo = "reply"`.
    IcmpEchoReply = 11,
    /// Tunnel mode: the packet would exceed the egress MTU once encapsulated, and it is
    /// IPv6 or IPv4 with DF: answered with ICMP fragmentation-needed / ICMPv6 packet-too-big
    /// carrying the inner MTU, back to the client (XDP_TX).
    IcmpTooBig = 12,
    /// Tunnel mode: an IPv4 packet without DF that would exceed the egress MTU once
    /// encapsulated (XDP cannot fragment): dropped.
    DropTooBig = 13,
    /// Tunnel mode: the backend's egress interface has no `XLB_EGRESS` entry, or no
    /// address of the backend's family for the default outer source: dropped.
    DropNoEgress = 14,
    /// Not an XDP verdict: a health probe to a tunnel backend (`SO_MARK` =
    /// `tunnel::probe_mark`) dropped by the `xlb_probe` TC program: its backend id holds no
    /// backend, or the backend's interface has no `XLB_EGRESS` entry or address for the
    /// outer source. The check of that backend fails, as the traffic would.
    DropProbe = 15,
}

impl Stat {
    pub const COUNT: u32 = 16;
    pub const ALL: [Stat; Self::COUNT as usize] = [
        Stat::PassNonIp,
        Stat::PassNotService,
        Stat::PassMalformed,
        Stat::PassNoBackend,
        Stat::DropFragment,
        Stat::DropMalformed,
        Stat::DropIpv6ExtHeader,
        Stat::DropNoBackend,
        Stat::DropNoTxPort,
        Stat::Tx,
        Stat::Redirect,
        Stat::IcmpEchoReply,
        Stat::IcmpTooBig,
        Stat::DropTooBig,
        Stat::DropNoEgress,
        Stat::DropProbe,
    ];

    /// Stable snake_case name, used in metrics and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Stat::PassNonIp => "pass_non_ip",
            Stat::PassNotService => "pass_not_service",
            Stat::PassMalformed => "pass_malformed",
            Stat::PassNoBackend => "pass_no_backend",
            Stat::DropFragment => "drop_fragment",
            Stat::DropMalformed => "drop_malformed",
            Stat::DropIpv6ExtHeader => "drop_ipv6_ext_header",
            Stat::DropNoBackend => "drop_no_backend",
            Stat::DropNoTxPort => "drop_no_tx_port",
            Stat::Tx => "tx",
            Stat::Redirect => "redirect",
            Stat::IcmpEchoReply => "icmp_echo_reply",
            Stat::IcmpTooBig => "icmp_too_big",
            Stat::DropTooBig => "drop_too_big",
            Stat::DropNoEgress => "drop_no_egress",
            Stat::DropProbe => "drop_probe",
        }
    }
}

/// Per-CPU counters of one service (`XLB_SVC_STATS[service id]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceStats {
    /// Packets forwarded to a backend.
    pub packets: u64,
    /// Bytes (whole frames) forwarded to a backend.
    pub bytes: u64,
    /// Packets whose live affinity entry decided the backend.
    pub hits: u64,
    /// Packets of clients without an entry (new clients, or evicted by the LRU).
    pub misses: u64,
    /// Entries re-decided because their backend became unhealthy or left the service.
    pub repins: u64,
    /// Entries re-decided because they were idle longer than `idle_timeout`.
    pub expiries: u64,
    /// Packets without a healthy backend (dropped or passed per the service flag).
    pub no_backend: u64,
    /// ICMP errors about the service's packets (inner source = the VIP and the service
    /// port) sent on to the client's backend; they are in `packets` too, never in
    /// `hits`/`misses` (they are looked up, never pinned). Was padding before: 0 in
    /// state written by earlier releases.
    pub icmp_errors: u64,
}
const _: () = assert!(core::mem::size_of::<ServiceStats>() == 64);

/// Per-CPU counters of one backend (`XLB_BE_STATS[backend id]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BackendStats {
    /// Packets forwarded to the backend.
    pub packets: u64,
    /// Bytes forwarded to the backend.
    pub bytes: u64,
    /// Affinity entries written pointing to this backend (new clients, re-pins, expiries).
    pub pins: u64,
    pub _reserved: u64,
}
const _: () = assert!(core::mem::size_of::<BackendStats>() == 32);

// ---------------------------------------------------------------------------------------
// Helpers shared by the program and the controller.
// ---------------------------------------------------------------------------------------

/// Bit of the VIP pre-filter for a destination address: `(word index, bit mask)`.
///
/// Folds the address to 16 bits; a collision only costs the packet a services lookup.
#[inline(always)]
pub fn vip_filter_bit(addr: &Addr) -> (u32, u64) {
    // IPv4 words 1..3 are zero, so one fold serves both families.
    vip_filter_bit_folded(addr[0] ^ addr[1] ^ addr[2] ^ addr[3])
}

/// [`vip_filter_bit`] after the address has been folded to one word (the XOR of its
/// words); lets the program fold straight from the packet.
#[inline(always)]
pub fn vip_filter_bit_folded(w: u32) -> (u32, u64) {
    let f = (w ^ (w >> 16)) & (VIP_FILTER_BITS - 1);
    (f >> 6, 1u64 << (f & 63))
}

/// The source mask of a prefix length, in the layout of [`ServiceValue::src_mask`].
pub const fn prefix_mask(prefix_len: u8, family: u8) -> Addr {
    let max = if family == FAMILY_V6 { 128 } else { 32 };
    let len = if prefix_len as u32 > max {
        max
    } else {
        prefix_len as u32
    };
    let mut bytes = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        let bits = len as i32 - (i as i32) * 8;
        bytes[i] = if bits >= 8 {
            0xff
        } else if bits <= 0 {
            0
        } else {
            0xffu8 << (8 - bits)
        };
        i += 1;
    }
    addr_from_bytes(&bytes)
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], contain only integers and explicit padding
    // fields, so every bit pattern is valid and there are no implicit padding bytes.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceValue {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::AffinityKey {}
    unsafe impl aya::Pod for super::AffinityValue {}
    unsafe impl aya::Pod for super::ServiceStats {}
    unsafe impl aya::Pod for super::BackendStats {}
    unsafe impl aya::Pod for super::maps::Meta {}
    unsafe impl aya::Pod for super::affinity::table::Bucket {}
    unsafe impl aya::Pod for super::FastService {}
    unsafe impl aya::Pod for super::FragKey {}
    unsafe impl aya::Pod for super::FragValue {}
    unsafe impl aya::Pod for super::affinity::table::ColdBucket {}
    unsafe impl aya::Pod for super::sample::SourceSample {}
    unsafe impl aya::Pod for super::natsrc::NatSourceData {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_masks() {
        let b = addr_to_bytes(&prefix_mask(24, FAMILY_V4));
        assert_eq!(&b[..4], &[255, 255, 255, 0]);
        assert_eq!(&b[4..], &[0; 12]);
        let b = addr_to_bytes(&prefix_mask(32, FAMILY_V4));
        assert_eq!(&b[..4], &[255; 4]);
        assert_eq!(&b[4..], &[0; 12]);
        assert_eq!(prefix_mask(64, FAMILY_V6), [u32::MAX, u32::MAX, 0, 0]);
        assert_eq!(prefix_mask(128, FAMILY_V6), [u32::MAX; 4]);
        assert_eq!(prefix_mask(0, FAMILY_V6), [0; 4]);
        let b = addr_to_bytes(&prefix_mask(57, FAMILY_V6));
        assert_eq!(&b[..8], &[255, 255, 255, 255, 255, 255, 255, 0x80]);
        assert_eq!(&b[8..], &[0; 8]);
    }

    #[test]
    fn vip_filter_is_in_range_and_family_aware() {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[203, 0, 113, 10]);
        let (w, bit) = vip_filter_bit(&addr_from_bytes(&a));
        assert!(w < VIP_FILTER_WORDS);
        assert_eq!(bit.count_ones(), 1);
        // The folded form the program uses on an IPv4 header gives the same bit.
        let folded = u32::from_ne_bytes([203, 0, 113, 10]);
        assert_eq!(vip_filter_bit_folded(folded), (w, bit));
        assert_eq!(addr_to_bytes(&addr_from_bytes(&a)), a);
    }

    #[test]
    fn stat_names_are_unique_and_indexed() {
        for (i, s) in Stat::ALL.iter().enumerate() {
            assert_eq!(*s as u32, i as u32);
        }
        let mut names: Vec<_> = Stat::ALL.iter().map(|s| s.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Stat::COUNT as usize);
    }
}
