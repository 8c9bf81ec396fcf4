//! Every limit and default of the domain, written once. The config parser, the CLI, the
//! validator and the display all read them from here.
//!
//! Owns: numbers and default values. Must not touch: the rules that combine them (they
//! live in `validate.rs`).

use std::time::Duration;

use super::{Affinity, CheckKind, Failback, Forwarding, HealthInitial, NoBackend};

// --- service ----------------------------------------------------------------------------

/// A service name is a metrics label and a CLI argument: `[A-Za-z0-9_.-]{1,NAME_MAX_LEN}`.
pub const NAME_MAX_LEN: usize = 64;
/// Services at once (ids `0..MAX_SERVICES` index the per-service counters).
pub const MAX_SERVICES: u32 = lb_common::MAX_SERVICES;
/// Backends over all services at once (ids index the backends array).
pub const MAX_BACKENDS: u32 = lb_common::MAX_BACKENDS;

pub const DEFAULT_FORWARDING: Forwarding = Forwarding::Dsr;
pub const DEFAULT_AFFINITY: Affinity = Affinity::SourceIp;
pub const DEFAULT_FAILBACK: Failback = Failback::Sticky;
pub const DEFAULT_NO_BACKEND: NoBackend = NoBackend::Drop;

/// Longest IPv4 prefix (and the default: one client per address).
pub const MAX_PREFIX_V4: u8 = 32;
/// Longest IPv6 prefix (and the default).
pub const MAX_PREFIX_V6: u8 = 128;
pub const DEFAULT_PREFIX_V4: u8 = MAX_PREFIX_V4;
pub const DEFAULT_PREFIX_V6: u8 = MAX_PREFIX_V6;

pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// The shortest `idle_timeout` the data plane keeps (its per-service refresh period is
/// derived from the timeout; idleness is measured with the kernel's coarse clock).
pub const MIN_IDLE_TIMEOUT: Duration = Duration::from_nanos(lb_common::MIN_IDLE_TIMEOUT_NS);
/// The longest `idle_timeout` the affinity table can measure (≈26 days; see
/// [`lb_common::MAX_IDLE_TIMEOUT_NS`]).
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_nanos(lb_common::MAX_IDLE_TIMEOUT_NS);

/// Maglev table size M (a prime) by default.
pub const DEFAULT_TABLE_SIZE: u32 = 65537;
/// Maglev needs a table well above the backend count for even shares (see
/// `lb_common::maglev::build`): 100 slots per backend keeps shares within about 1%.
pub const SLOTS_PER_BACKEND: u32 = 100;
pub const MIN_TABLE_SIZE: u32 = 100;
/// All services' tables share one Maglev array; one service must not take all of it.
pub const MAX_TABLE_SIZE: u32 = 1 << 24;

// --- backend ----------------------------------------------------------------------------

pub const MIN_WEIGHT: u32 = 1;
pub const MAX_WEIGHT: u32 = 65535;
pub const DEFAULT_WEIGHT: u32 = MIN_WEIGHT;

// --- health check -----------------------------------------------------------------------

pub const DEFAULT_CHECK_KIND: CheckKind = CheckKind::Tcp;
pub const DEFAULT_HEALTH_INITIAL: HealthInitial = HealthInitial::Checked;
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_millis(500);
/// Probes more often than this would be load, not monitoring; it also keeps the per-probe
/// timers meaningful (the timeout must fit within the interval).
pub const MIN_HEALTH_INTERVAL: Duration = Duration::from_millis(10);
/// Timer arithmetic must stay finite; a day between probes is already no monitoring.
pub const MAX_HEALTH_INTERVAL: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 3;
pub const MAX_RISE_FALL: u32 = 100;
pub const DEFAULT_HTTP_PATH: &str = "/";
/// HTTP status range that counts as healthy by default (inclusive).
pub const DEFAULT_HTTP_EXPECT: (u16, u16) = (200, 399);
/// Statuses an `expect` may name (inclusive).
pub const HTTP_STATUS_MIN: u16 = 100;
pub const HTTP_STATUS_MAX: u16 = 599;
/// A UDP check without `send` sends an empty datagram: any reply is a pass, an ICMP
/// port unreachable or silence until the timeout a failure.
pub const DEFAULT_UDP_SEND: &str = "";

// --- daemon -----------------------------------------------------------------------------

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/xlb";
pub const DEFAULT_SOCKET: &str = "/run/xlb/xlb.sock";
pub const DEFAULT_METRICS: &str = "127.0.0.1:9310";
/// Where the state file of the default `pin_dir` lives; other deployments derive theirs
/// under [`STATE_DIR`] (see `config::default_state_file`).
pub const DEFAULT_STATE_FILE: &str = "/var/lib/xlb/state.json";
pub const STATE_DIR: &str = "/var/lib/xlb/deployments";
pub const DEFAULT_AFFINITY_CAPACITY: u32 = lb_common::DEFAULT_AFFINITY_CAPACITY;
/// The affinity LRU is preallocated by the kernel; 2^26 entries is already gigabytes.
pub const MAX_AFFINITY_CAPACITY: u32 = 1 << 26;

// --- announce ---------------------------------------------------------------------------

/// BIRD's control socket on Debian (`bird -s` changes it).
pub const DEFAULT_BIRD_SOCKET: &str = "/run/bird/bird.ctl";
/// How often the announcer checks that the BGP daemon announces what it should (a
/// restarted BIRD, a protocol someone disabled by hand), besides every change.
pub const ANNOUNCE_SYNC_PERIOD: Duration = Duration::from_secs(1);
/// How long one talk with BIRD, or one announce/withdraw command, may take.
pub const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(5);
