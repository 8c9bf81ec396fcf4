//! The `xlb` command line: `run` is the daemon, `check-config` and `down` work alone, every
//! other command is a client of the daemon's control socket.
//!
//! Exit codes: 0 ok, 1 runtime error, 2 usage or config error (nothing changed).

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Args, Parser, Subcommand};

use crate::{
    api::{self, ErrorKind, Request, Response},
    config,
    dataplane::{lock::PinDirLock, pin},
    model::{
        Affinity, Backend, CheckKind, Edit, Failback, Forwarding, HealthCheck, HealthInitial,
        HealthKind, HumanDuration, Millionths, NoBackend, Prefix, Protocol, Service,
        edit::TunnelSourceSet,
        limits::*,
        parse_address, parse_status_range, status_range,
        validate::{FieldError, validate_service},
    },
    state,
};

pub use crate::api::UsageError;

#[derive(Parser, Debug)]
#[command(
    name = "xlb",
    version,
    about = "An XDP layer-4 load balancer with IP affinity",
    after_help = "Exit codes: 0 ok, 1 runtime error, 2 usage or config error."
)]
pub struct Cli {
    /// Control socket of the daemon.
    #[arg(long, global = true, env = "XLB_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Print JSON (a documented, stable shape) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon.
    Run {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file and print the effective config (defaults filled in).
    CheckConfig {
        /// The config file (TOML).
        file: PathBuf,
        /// Skip the checks against this host (that the interfaces exist): for a config
        /// written for another machine.
        #[arg(long)]
        offline: bool,
    },
    /// Services and backends: health, draining, weight, table share, pinned clients.
    Status(StatusArgs),
    /// Packets, bytes and rates per service and backend; drops by reason.
    Stats,
    /// The heaviest client sources of a service (or of all) over the last interval:
    /// packets/s, bits/s, share of the service's packets, the backend they reach.
    /// Refreshes in place on a terminal; one snapshot with --json or into a pipe.
    Top(TopArgs),
    /// Add, remove, drain, undrain or re-weight a backend.
    #[command(subcommand)]
    Backend(BackendCmd),
    /// Add or remove a service.
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Which backend the next packet from CLIENT goes to, and why.
    Explain {
        service: String,
        client: IpAddr,
        /// Client source port (only matters with affinity = "none").
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// List or flush affinity entries.
    #[command(subcommand)]
    Affinity(AffinityCmd),
    /// Node maintenance: withdraw or announce again every VIP of this node.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Re-read the daemon's config file (runtime changes stay on top); a config with
    /// errors is refused whole (exit 2) and nothing changes. SIGHUP does the same.
    Reload,
    /// Detach the program, remove all pinned state and move the runtime changes aside
    /// (no daemon needed).
    Down {
        /// Take pin_dir, socket and state_file from this config file.
        #[arg(long, conflicts_with = "pin_dir")]
        config: Option<PathBuf>,
        /// The pinned state to remove (default /sys/fs/bpf/xlb).
        #[arg(long)]
        pin_dir: Option<PathBuf>,
    },
    /// Tunnel decapsulation on a backend (no daemon needed): strip the outer header of
    /// IPIP, IP6IP6 and 4in6 packets from the balancers, pass the inner packet on.
    #[command(subcommand)]
    Decap(DecapCmd),
    /// Print a shell completion script (bash, zsh or fish) on standard output.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the pid of the daemon that holds the pin directory (exit 1 when none does);
    /// for scripts, e.g. the package's prerm.
    DaemonPid {
        /// Take pin_dir from this config file (the interfaces need not exist here).
        #[arg(long, conflicts_with = "pin_dir")]
        config: Option<PathBuf>,
        /// The pin directory (default /sys/fs/bpf/xlb).
        #[arg(long)]
        pin_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug, Clone)]
pub enum DecapCmd {
    /// Attach to IFACE (again: replace the allowed prefixes, re-read the host's
    /// addresses). Pinned under /sys/fs/bpf/xlb-decap/IFACE; a reboot needs it again.
    Attach {
        iface: String,
        /// Outer sources allowed to tunnel to this host (the balancers), ADDRESS/LEN or
        /// ADDRESS; anything else passes untouched.
        #[arg(long = "from", required = true, num_args = 1..)]
        from: Vec<crate::decap::Prefix>,
        /// Attach in generic (skb) mode, for drivers without native XDP.
        #[arg(long)]
        generic: bool,
        #[command(flatten)]
        pins: DecapPins,
    },
    /// Detach from IFACE and remove its pinned state.
    Detach {
        iface: String,
        #[command(flatten)]
        pins: DecapPins,
    },
    /// Packets decapsulated per tunnel kind and passed untouched per reason.
    Stats {
        iface: String,
        #[command(flatten)]
        pins: DecapPins,
    },
}

/// Where `xlb decap` pins its state.
#[derive(Args, Debug, Clone)]
pub struct DecapPins {
    /// The directory holding one directory per interface (one per network namespace
    /// that uses decap: interface names repeat across namespaces).
    #[arg(long, default_value = crate::decap::DECAP_PIN_ROOT)]
    pub pin_dir: PathBuf,
}

/// `xlb status` flags.
#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// Refresh every --interval: in place on a terminal, as appended snapshots (JSON
    /// lines with --json) otherwise. Ctrl-C ends it.
    #[arg(long)]
    pub watch: bool,
    /// Time between refreshes with --watch (at least 100ms).
    #[arg(long, requires = "watch", default_value = "2s", value_parser = parse_interval)]
    pub interval: HumanDuration,
    /// With --watch: stop after this many snapshots.
    #[arg(long, requires = "watch")]
    pub count: Option<u64>,
}

/// `xlb top` flags.
#[derive(Args, Debug, Clone)]
pub struct TopArgs {
    /// One service (default: every service).
    pub service: Option<String>,
    /// Group by source address, or by prefix (IPv4 /24, IPv6 /64).
    #[arg(long, value_enum, default_value_t = TopBy::Source)]
    pub by: TopBy,
    /// The interval the figures cover (whole seconds, 1s to 10s; the daemon keeps the
    /// last 10 completed seconds). On a terminal, also the refresh period.
    #[arg(long, default_value = "2s", value_parser = parse_top_interval)]
    pub interval: HumanDuration,
    /// Rows per service (sources with 5% or more are listed whatever the limit).
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// On a terminal: stop after this many refreshes.
    #[arg(long)]
    pub count: Option<u64>,
}

/// How `xlb top` groups sources.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopBy {
    Source,
    Prefix,
}

impl TopBy {
    fn name(self) -> &'static str {
        match self {
            TopBy::Source => "source",
            TopBy::Prefix => "prefix",
        }
    }
}

/// A `top --interval`: whole seconds within the daemon's history.
fn parse_top_interval(s: &str) -> Result<HumanDuration, String> {
    let d: HumanDuration = s.parse()?;
    let secs = d.0.as_secs_f64();
    let max = crate::load::HISTORY as f64;
    if secs < 1.0 || secs > max || d.0.subsec_nanos() != 0 {
        return Err(format!("{s:?}: whole seconds from 1s to {max}s"));
    }
    Ok(d)
}

/// A `--watch` interval: a duration of at least 100 ms (the daemon answers each one).
fn parse_interval(s: &str) -> Result<HumanDuration, String> {
    let d: HumanDuration = s.parse()?;
    if d.0 < std::time::Duration::from_millis(100) {
        return Err(format!("{s:?} is shorter than 100ms"));
    }
    Ok(d)
}

#[derive(Subcommand, Debug, Clone)]
pub enum BackendCmd {
    /// Add a backend to a service (it takes new clients once healthy).
    Add {
        service: String,
        #[arg(value_parser = parse_address)]
        address: IpAddr,
        #[arg(long, default_value_t = DEFAULT_WEIGHT)]
        weight: u32,
    },
    /// Remove a backend; its pinned clients are re-decided on their next packet.
    Remove {
        service: String,
        #[arg(value_parser = parse_address)]
        address: IpAddr,
    },
    /// Keep its pinned clients, send it no new ones.
    Drain {
        service: String,
        #[arg(value_parser = parse_address)]
        address: IpAddr,
        /// Then wait until it holds no live pinned client (exit 0), so that removing it
        /// or stopping its server cuts no session.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this long (exit 1, saying how many clients remain
        /// and when they were last seen). Default: wait as long as it takes.
        #[arg(long, requires = "wait")]
        timeout: Option<HumanDuration>,
    },
    /// Let a drained backend take new clients again.
    Undrain {
        service: String,
        #[arg(value_parser = parse_address)]
        address: IpAddr,
    },
    /// Change a backend's weight (its share of new clients); pinned clients stay.
    Weight {
        service: String,
        #[arg(value_parser = parse_address)]
        address: IpAddr,
        weight: u32,
    },
}

#[derive(Subcommand, Debug)]
pub enum ServiceCmd {
    /// Add a service with the fields of a [[service]] table.
    Add(Box<ServiceAddArgs>),
    /// Remove a service and its affinity entries.
    Remove { name: String },
    /// Change, at run time, the settings that spread a service's load (saved like
    /// every runtime change).
    Set(ServiceSetArgs),
}

/// `xlb service set` flags: each one given is changed, the others stay.
#[derive(Args, Debug)]
pub struct ServiceSetArgs {
    pub name: String,
    /// Prefixes whose clients are balanced per connection (address and source port),
    /// comma-separated; "none" (or "") empties the list.
    #[arg(long, value_parser = parse_prefix_list)]
    pub nat_sources: Option<PrefixList>,
    /// Bounded-load hashing for new clients: a factor above 1 (1.25: a backend may carry
    /// 25% more than its fair share before new clients avoid it), or "off".
    #[arg(long, value_parser = parse_factor)]
    pub balance_factor: Option<Millionths>,
    /// Tunnel mode: outer sources from this prefix, one per client; "none": the egress
    /// interface's address.
    #[arg(long)]
    pub tunnel_source: Option<TunnelSourceSet>,
}

/// A `--balance-factor`: a number, or "off" (0). The validator checks the range.
fn parse_factor(s: &str) -> Result<Millionths, String> {
    if s == "off" {
        return Ok(Millionths(0));
    }
    s.parse::<f64>()
        .ok()
        .and_then(Millionths::from_f64)
        .ok_or_else(|| format!("{s:?} is not a factor (1.25) or \"off\""))
}

/// A parsed `--nat-sources` list.
#[derive(Clone, Debug)]
pub struct PrefixList(pub Vec<Prefix>);

fn parse_prefix_list(s: &str) -> Result<PrefixList, String> {
    crate::model::prefix::parse_list(s).map(PrefixList)
}

#[derive(Subcommand, Debug)]
pub enum AffinityCmd {
    /// The affinity entries (pinned clients), most recently active first.
    List {
        service: Option<String>,
        /// At most this many entries (most recently active first).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Remove the affinity entries (every service's, or SERVICE's): clients are
    /// re-decided on their next packet.
    Flush { service: Option<String> },
}

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// Withdraw every VIP of this node (the router sends the traffic to the other nodes;
    /// what still arrives is forwarded); kept across restarts until `undrain`.
    Drain,
    /// Announce the VIPs again (each while one of its services has a healthy backend).
    Undrain,
}

/// The fields of a `[[service]]` table, as flags; every default is the model's.
#[derive(Args, Debug)]
pub struct ServiceAddArgs {
    pub name: String,
    #[arg(long)]
    pub vip: IpAddr,
    /// 0 = every port.
    #[arg(long)]
    pub port: u16,
    /// (The config file requires it; the CLI assumes tcp.)
    #[arg(long, value_enum, default_value_t = Protocol::Tcp)]
    pub protocol: Protocol,
    /// dsr: rewrite L2 only (backends on this segment); tunnel: IPIP / IP6IP6 / 4in6 to
    /// backends that may be several hops away.
    #[arg(long, value_enum, default_value_t = DEFAULT_FORWARDING)]
    pub forwarding: Forwarding,
    /// Tunnel mode: outer source addresses, one per client, from this prefix (default:
    /// the balancer's address on the egress interface).
    #[arg(long)]
    pub tunnel_source: Option<Prefix>,
    #[arg(long, value_enum, default_value_t = DEFAULT_AFFINITY)]
    pub affinity: Affinity,
    #[arg(long, default_value_t = DEFAULT_PREFIX_V4)]
    pub prefix_v4: u8,
    #[arg(long, default_value_t = DEFAULT_PREFIX_V6)]
    pub prefix_v6: u8,
    #[arg(long, default_value_t = HumanDuration(DEFAULT_IDLE_TIMEOUT))]
    pub idle_timeout: HumanDuration,
    #[arg(long, value_enum, default_value_t = DEFAULT_FAILBACK)]
    pub failback: Failback,
    #[arg(long, default_value_t = DEFAULT_TABLE_SIZE)]
    pub table_size: u32,
    #[arg(long, value_enum, default_value_t = DEFAULT_NO_BACKEND)]
    pub no_backend: NoBackend,
    #[arg(long, value_enum, default_value_t = DEFAULT_CHECK_KIND)]
    pub health: CheckKind,
    /// Port for health checks (default: the service port).
    #[arg(long)]
    pub health_port: Option<u16>,
    #[arg(long, default_value = DEFAULT_HTTP_PATH)]
    pub health_path: String,
    /// HTTP status or range that counts as healthy, e.g. 200 or 200-399.
    #[arg(long, default_value_t = status_range(DEFAULT_HTTP_EXPECT.0, DEFAULT_HTTP_EXPECT.1),
          value_parser = parse_status_arg)]
    pub health_expect: String,
    /// UDP payload to send (default: an empty datagram; any reply passes).
    #[arg(long)]
    pub health_send: Option<String>,
    #[arg(long, default_value_t = HumanDuration(DEFAULT_HEALTH_INTERVAL))]
    pub health_interval: HumanDuration,
    #[arg(long, default_value_t = HumanDuration(DEFAULT_HEALTH_TIMEOUT))]
    pub health_timeout: HumanDuration,
    #[arg(long, default_value_t = DEFAULT_RISE)]
    pub health_rise: u32,
    #[arg(long, default_value_t = DEFAULT_FALL)]
    pub health_fall: u32,
    /// A new backend's state before its first check: out of the table until it passes
    /// one ("checked"), or in at once ("up").
    #[arg(long, value_enum, default_value_t = DEFAULT_HEALTH_INITIAL)]
    pub health_initial: HealthInitial,
    /// A backend: ADDRESS or ADDRESS=WEIGHT; repeat for each.
    #[arg(long = "backend", value_parser = parse_backend_arg)]
    pub backends: Vec<Backend>,
    /// Prefixes whose clients are balanced per connection (address and source port),
    /// comma-separated.
    #[arg(long, value_parser = parse_prefix_list)]
    pub nat_sources: Option<PrefixList>,
    /// Warn when one source or prefix carries more than this share of the packets.
    #[arg(long, default_value_t = DEFAULT_NAT_WARN_SHARE.get())]
    pub nat_warn_share: f64,
    /// Bounded-load hashing for new clients (a factor above 1, e.g. 1.25); off unless
    /// given.
    #[arg(long, value_parser = parse_factor)]
    pub balance_factor: Option<Millionths>,
}

/// A status or range within the HTTP status codes (the validator checks it again).
fn parse_status_arg(s: &str) -> Result<String, String> {
    let (lo, hi) = parse_status_range(s)
        .ok_or_else(|| format!("{s:?} is not an HTTP status (200) or range (200-399)"))?;
    let status = HTTP_STATUS_MIN..=HTTP_STATUS_MAX;
    if !status.contains(&lo) || !status.contains(&hi) || lo > hi {
        return Err(format!(
            "{s:?} is not a status or status range within {HTTP_STATUS_MIN}..={HTTP_STATUS_MAX}"
        ));
    }
    Ok(s.to_string())
}

fn parse_backend_arg(s: &str) -> Result<Backend, String> {
    let (addr, weight) = match s.split_once('=') {
        Some((a, w)) => (
            a,
            w.parse::<u32>()
                .map_err(|_| format!("weight {w:?} is not a number"))?,
        ),
        None => (s, DEFAULT_WEIGHT),
    };
    Ok(Backend::with_weight(parse_address(addr)?, weight))
}

impl ServiceAddArgs {
    pub fn to_service(&self) -> Service {
        let mut s = Service::new(&self.name, self.vip, self.port, self.protocol);
        s.forwarding = self.forwarding;
        s.tunnel_source = self.tunnel_source;
        s.affinity = self.affinity;
        s.prefix_v4 = self.prefix_v4;
        s.prefix_v6 = self.prefix_v6;
        s.idle_timeout = self.idle_timeout.0;
        s.failback = self.failback;
        s.table_size = self.table_size;
        s.no_backend = self.no_backend;
        let port = self.health_port.unwrap_or(self.port);
        let mut kind = HealthKind::default_for(self.health, port);
        match &mut kind {
            HealthKind::Http {
                path,
                expect_status,
                ..
            } => {
                path.clone_from(&self.health_path);
                if let Some(range) = parse_status_range(&self.health_expect) {
                    *expect_status = range;
                }
            }
            HealthKind::Udp { send, .. } => {
                if let Some(payload) = &self.health_send {
                    send.clone_from(payload);
                }
            }
            HealthKind::None | HealthKind::Tcp { .. } => {}
        }
        s.health = HealthCheck {
            kind,
            interval: self.health_interval.0,
            timeout: self.health_timeout.0,
            rise: self.health_rise,
            fall: self.health_fall,
            initial: self.health_initial,
        };
        s.backends = self.backends.clone();
        if let Some(l) = &self.nat_sources {
            s.nat_sources = l.0.clone();
        }
        // Out of range (or not a number) becomes 0, which the validator refuses.
        s.nat_warn_share = Millionths::from_f64(self.nat_warn_share).unwrap_or(Millionths(0));
        s.balance_factor = self.balance_factor.filter(|f| f.0 != 0);
        s
    }
}

/// The flag that sets a field, for error messages of `service add` and `backend`.
pub fn flag_for_field(field: &str) -> String {
    if let Some(rest) = field.strip_prefix("backend[") {
        let idx = rest.split(']').next().unwrap_or("?");
        return format!("--backend (#{idx})");
    }
    match field {
        "address" | "service" | "name" | "WEIGHT" => field.to_uppercase(),
        _ => format!("--{}", field.replace(['.', '_'], "-")),
    }
}

/// Field errors as lines naming the flags.
fn usage_of(errors: &[FieldError]) -> UsageError {
    let msg: Vec<String> = errors
        .iter()
        .map(|e| format!("{}: {}", flag_for_field(&e.field), e.message))
        .collect();
    UsageError(msg.join("\n"))
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. }) {
        default_sigpipe();
    }
    match dispatch(&cli) {
        Ok(code) => code,
        Err(e) => {
            if e.downcast_ref::<UsageError>().is_some() {
                eprintln!("xlb: {e}");
                ExitCode::from(2)
            } else {
                eprintln!("xlb: {}", render(&e));
                ExitCode::from(1)
            }
        }
    }
}

/// A command whose output is cut short (`xlb status | head`) ends quietly, as Unix tools
/// do, instead of panicking in `println!` on EPIPE (Rust ignores SIGPIPE by default).
/// Not for the daemon: a client closing its socket early must not kill it.
fn default_sigpipe() {
    // SAFETY: setting a signal's disposition to its default; no handler runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// An error with its causes, each cause only when its text is not already in the message
/// (many errors quote their cause).
pub fn render(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

fn dispatch(cli: &Cli) -> anyhow::Result<ExitCode> {
    let request = match &cli.command {
        Command::Run { config } => {
            env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
                .format_timestamp_millis()
                .init();
            crate::daemon::run(config)?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::CheckConfig { file, offline } => {
            let host = if *offline {
                config::HostChecks::Skip
            } else {
                config::HostChecks::Run
            };
            let cfg = config::load_with(file, host).map_err(|e| UsageError(e.to_string()))?;
            print!("{}", cfg.to_toml());
            let skipped = if *offline {
                " (host checks skipped)"
            } else {
                ""
            };
            eprintln!("{}: ok{skipped}", file.display());
            return Ok(ExitCode::SUCCESS);
        }
        Command::Completions { shell } => {
            crate::docs::completions(*shell, &mut std::io::stdout());
            return Ok(ExitCode::SUCCESS);
        }
        Command::DaemonPid { config, pin_dir } => {
            return daemon_pid(config.as_deref(), pin_dir.as_deref());
        }
        Command::Status(args) if args.watch => return watch_status(cli, args),
        Command::Top(args) => return top(cli, args),
        Command::Down { config, pin_dir } => {
            return down(cli, config.as_deref(), pin_dir.as_deref());
        }
        Command::Decap(cmd) => return decap(cli, cmd),
        Command::Status(_) => Request::Status,
        Command::Reload => Request::Reload,
        Command::Stats => Request::Stats,
        Command::Backend(b) => Request::Edit(backend_edit(b)),
        Command::Service(ServiceCmd::Add(args)) => {
            let service = args.to_service();
            // The daemon validates again against the services it runs.
            validate_service(&service, &[]).map_err(|e| usage_of(&e))?;
            Request::Edit(Edit::ServiceAdd {
                service: Box::new(service),
            })
        }
        Command::Service(ServiceCmd::Remove { name }) => {
            Request::Edit(Edit::ServiceRemove { name: name.clone() })
        }
        Command::Service(ServiceCmd::Set(args)) => {
            if args.nat_sources.is_none()
                && args.balance_factor.is_none()
                && args.tunnel_source.is_none()
            {
                return Err(UsageError(
                    "nothing to set: give --nat-sources, --balance-factor and/or \
                     --tunnel-source"
                        .into(),
                )
                .into());
            }
            Request::Edit(Edit::ServiceSet {
                service: args.name.clone(),
                nat_sources: args.nat_sources.as_ref().map(|l| l.0.clone()),
                balance_factor: args.balance_factor,
                tunnel_source: args.tunnel_source,
            })
        }
        Command::Explain {
            service,
            client,
            port,
        } => Request::Explain {
            service: service.clone(),
            client: *client,
            port: *port,
        },
        Command::Affinity(AffinityCmd::List { service, limit }) => Request::AffinityList {
            service: service.clone(),
            limit: *limit,
        },
        Command::Affinity(AffinityCmd::Flush { service }) => Request::AffinityFlush {
            service: service.clone(),
        },
        Command::Node(NodeCmd::Drain) => Request::Edit(Edit::NodeDrain),
        Command::Node(NodeCmd::Undrain) => Request::Edit(Edit::NodeUndrain),
    };
    if let Request::Edit(edit) = &request {
        let mut errors = edit.check_fields();
        if let Edit::BackendWeight { .. } = edit {
            // `backend weight` takes the weight as its WEIGHT argument, not a flag.
            for e in errors.iter_mut().filter(|e| e.field == "weight") {
                e.field = "WEIGHT".into();
            }
        }
        if !errors.is_empty() {
            return Err(usage_of(&errors).into());
        }
    }
    let response = api::call(&cli.socket, &request)?;
    let code = finish(cli, &request, response)?;
    match &cli.command {
        Command::Backend(BackendCmd::Drain {
            service,
            address,
            wait: true,
            timeout,
        }) => drain_wait(cli, service, *address, timeout.map(|t| t.0)),
        _ => Ok(code),
    }
}

/// `xlb backend drain --wait`: polls `drain_status` ([`crate::drain`]); progress on
/// stderr (one line per change), the result on stdout (`--json`: the last answer).
fn drain_wait(
    cli: &Cli,
    service: &str,
    address: IpAddr,
    timeout: Option<std::time::Duration>,
) -> anyhow::Result<ExitCode> {
    use crate::drain::{Outcome, PollError};
    let request = Request::DrainStatus {
        service: service.to_string(),
        address,
    };
    let poll = || -> Result<api::DrainStatus, PollError> {
        let r = match api::call(&cli.socket, &request) {
            Ok(r) => r,
            Err(e @ api::ClientError::Protocol(_)) => return Err(PollError::Fatal(e.into())),
            Err(e) => return Err(PollError::Unreachable(e.to_string())),
        };
        if !r.ok {
            let why = r
                .error
                .map_or_else(|| "no reason given".into(), |e| e.message);
            return Err(PollError::Fatal(anyhow::anyhow!(
                "waiting for the drain: {why}"
            )));
        }
        serde_json::from_value(r.result).map_err(|e| PollError::Fatal(e.into()))
    };
    let mut shown = String::new();
    let progress = |d: Result<&api::DrainStatus, &str>| {
        let line = d.map_or_else(
            |why| format!("daemon unreachable: {why}"),
            crate::drain::progress_line,
        );
        // One line per change of the count, not per poll (the ages move on every poll).
        let key = line
            .split(", last seen")
            .next()
            .unwrap_or(&line)
            .to_string();
        if key != shown {
            eprintln!("{line}");
            shown = key;
        }
    };
    let start = std::time::Instant::now();
    let outcome = crate::drain::wait(poll, timeout, crate::drain::POLL, progress)?;
    let last = match &outcome {
        Outcome::Drained(d) | Outcome::Undrained(d) | Outcome::TimedOut(Some(d)) => Some(d),
        Outcome::TimedOut(None) => None,
    };
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&last)?);
    }
    match outcome {
        Outcome::Drained(d) => {
            if !cli.json {
                println!("{}", crate::drain::drained_line(&d));
            }
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Undrained(_) => Err(anyhow::anyhow!(
            "backend {address} of {service} was undrained while waiting"
        )),
        Outcome::TimedOut(d) => Err(anyhow::anyhow!(crate::drain::timed_out_message(
            service,
            address,
            timeout.unwrap_or_else(|| start.elapsed()),
            d.as_ref()
        ))),
    }
}

fn backend_edit(b: &BackendCmd) -> Edit {
    match b.clone() {
        BackendCmd::Add {
            service,
            address,
            weight,
        } => Edit::BackendAdd {
            service,
            address,
            weight,
        },
        BackendCmd::Remove { service, address } => Edit::BackendRemove { service, address },
        BackendCmd::Drain {
            service, address, ..
        } => Edit::BackendDrain { service, address },
        BackendCmd::Undrain { service, address } => Edit::BackendUndrain { service, address },
        BackendCmd::Weight {
            service,
            address,
            weight,
        } => Edit::BackendWeight {
            service,
            address,
            weight,
        },
    }
}

fn finish(cli: &Cli, request: &Request, response: Response) -> anyhow::Result<ExitCode> {
    if !response.ok {
        let e = response.error.unwrap_or(api::ApiError {
            kind: ErrorKind::Runtime,
            message: "the daemon gave no reason".into(),
        });
        return match e.kind {
            ErrorKind::Usage => Err(UsageError(e.message).into()),
            ErrorKind::Runtime => Err(anyhow::anyhow!(e.message)),
        };
    }
    print!("{}", render_response(cli, request, response)?);
    Ok(ExitCode::SUCCESS)
}

/// The text of a successful response: pretty JSON with `--json`, else the human form.
/// Errors: a response whose shape does not match the request.
fn render_response(cli: &Cli, request: &Request, response: Response) -> anyhow::Result<String> {
    if !response.ok {
        let message = response
            .error
            .map_or_else(|| "the daemon gave no reason".to_string(), |e| e.message);
        anyhow::bail!(message);
    }
    if cli.json {
        return Ok(format!(
            "{}\n",
            serde_json::to_string_pretty(&response.result)?
        ));
    }
    let text = match request {
        Request::Status => crate::display::status(&serde_json::from_value(response.result)?),
        Request::Stats => crate::display::stats(&serde_json::from_value(response.result)?),
        Request::Explain { .. } => {
            crate::display::explain(&serde_json::from_value(response.result)?)
        }
        Request::AffinityList { .. } => {
            crate::display::affinity(&serde_json::from_value(response.result)?)
        }
        Request::Top(_) => crate::display::top(&serde_json::from_value(response.result)?),
        _ => crate::display::done(&response.result),
    };
    Ok(text)
}

/// `xlb status --watch`: [`crate::watch`] around the same request and rendering as
/// `xlb status`.
fn watch_status(cli: &Cli, args: &StatusArgs) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal as _;
    let mode = match (std::io::stdout().is_terminal(), cli.json) {
        (true, _) => crate::watch::Mode::Terminal,
        (false, false) => crate::watch::Mode::Plain,
        (false, true) => crate::watch::Mode::JsonLines,
    };
    let snapshot = || {
        let response = api::call(&cli.socket, &Request::Status).map_err(|e| e.to_string())?;
        let text = render_response(cli, &Request::Status, response).map_err(|e| render(&e))?;
        Ok(text)
    };
    let mut out = std::io::stdout().lock();
    match crate::watch::run(
        mode,
        args.interval.0,
        args.count,
        snapshot,
        crate::watch::time_of_day,
        &mut out,
    ) {
        // A reader that went away (`| head`) ends the watch normally.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        r => r.map(|()| ExitCode::SUCCESS).map_err(Into::into),
    }
}

/// `xlb top`: one snapshot with --json or when stdout is not a terminal; else redrawn in
/// place every --interval ([`crate::watch`]).
fn top(cli: &Cli, args: &TopArgs) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal as _;
    let request = Request::Top(api::TopQuery {
        service: args.service.clone(),
        by: args.by.name().into(),
        interval_s: args.interval.0.as_secs() as u32,
        limit: args.limit,
    });
    if cli.json || !std::io::stdout().is_terminal() {
        let response = api::call(&cli.socket, &request)?;
        return finish(cli, &request, response);
    }
    let snapshot = || {
        let response = api::call(&cli.socket, &request).map_err(|e| e.to_string())?;
        render_response(cli, &request, response).map_err(|e| render(&e))
    };
    let mut out = std::io::stdout().lock();
    match crate::watch::run(
        crate::watch::Mode::Terminal,
        args.interval.0,
        args.count,
        snapshot,
        crate::watch::time_of_day,
        &mut out,
    ) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        r => r.map(|()| ExitCode::SUCCESS).map_err(Into::into),
    }
}

/// `xlb daemon-pid`: the holder of the pin-directory lock, from /proc/locks (the lock is
/// not taken, so a starting daemon is never disturbed). Exit 1 when no daemon holds it.
fn daemon_pid(config: Option<&Path>, pin_dir: Option<&Path>) -> anyhow::Result<ExitCode> {
    let pin_dir = match (config, pin_dir) {
        (Some(c), _) => {
            config::load_with(c, config::HostChecks::Skip)
                .map_err(|e| UsageError(e.to_string()))?
                .daemon
                .pin_dir
        }
        (None, p) => p.map_or_else(|| PathBuf::from(DEFAULT_PIN_DIR), Path::to_path_buf),
    };
    match crate::dataplane::lock::holder_of(&pin_dir) {
        Ok(Some(pid)) => {
            println!("{pid}");
            Ok(ExitCode::SUCCESS)
        }
        Ok(None) => Err(anyhow::anyhow!(
            "no xlb daemon holds {} (not running)",
            pin_dir.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(anyhow::anyhow!(
            "no xlb daemon holds {}: it does not exist (not running)",
            pin_dir.display()
        )),
        Err(e) => Err(anyhow::Error::new(e).context(format!("inspecting {}", pin_dir.display()))),
    }
}

/// `xlb decap …`: works on this host's bpffs alone.
fn decap(cli: &Cli, cmd: &DecapCmd) -> anyhow::Result<ExitCode> {
    use crate::decap::{self, Attached};
    match cmd {
        DecapCmd::Attach {
            iface,
            from,
            generic,
            pins,
        } => {
            let done = decap::attach(&pins.pin_dir, iface, from, *generic)?;
            let list: Vec<String> = from.iter().map(ToString::to_string).collect();
            // Allowed, but it gives up what the program is for: say so.
            if let Some(all) = from.iter().find(|p| p.len == 0) {
                eprintln!(
                    "xlb: warning: --from {all} accepts tunnels from any source: anyone who \
                     reaches this host can deliver packets of any inner source through it; \
                     give the balancers' prefixes"
                );
            }
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({ "interface": iface, "from": list,
                        "updated": done == Attached::Updated })
                );
            } else {
                let verb = match done {
                    Attached::New => "attached to",
                    Attached::Updated => "updated on",
                };
                println!("xlb decap {verb} {iface}: tunnels from {}", list.join(", "));
            }
        }
        DecapCmd::Detach { iface, pins } => {
            decap::detach(&pins.pin_dir, iface)?;
            if !cli.json {
                println!("xlb decap detached from {iface}");
            }
        }
        DecapCmd::Stats { iface, pins } => {
            let stats = decap::stats(&pins.pin_dir, iface)?;
            if cli.json {
                let m: serde_json::Map<String, serde_json::Value> = stats
                    .iter()
                    .map(|(s, n)| (s.name().to_string(), (*n).into()))
                    .collect();
                println!("{}", serde_json::Value::Object(m));
            } else {
                for (s, n) in stats {
                    println!("{:<24} {n}", s.name());
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `xlb down`: detach, remove the pinned maps, and move the deployment's runtime changes
/// aside (its state file to FILE.bak), so the next fresh start begins from the config.
fn down(cli: &Cli, config: Option<&Path>, pin_dir: Option<&Path>) -> anyhow::Result<ExitCode> {
    let cfg = config
        .map(|c| config::load(c).map_err(|e| UsageError(e.to_string())))
        .transpose()?;
    let (pin_dir, socket, state_file) = match (&cfg, pin_dir) {
        (Some(cfg), _) => (
            cfg.daemon.pin_dir.clone(),
            cfg.daemon.socket.clone(),
            cfg.daemon.state_file.clone(),
        ),
        (None, p) => {
            let p = p.map_or_else(|| PathBuf::from(DEFAULT_PIN_DIR), Path::to_path_buf);
            let state_file = config::default_state_file(&p);
            (p, cli.socket.clone(), state_file)
        }
    };
    // The pin-dir lock first: a running daemon holds it, and nothing is touched then.
    let _lock = PinDirLock::acquire_existing(&pin_dir)?;
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        anyhow::bail!(
            "an xlb daemon is running on {}: stop it first (it would recreate the pinned state)",
            socket.display()
        );
    }
    // The VIPs go before the data plane that serves them, or the router keeps sending
    // their traffic here.
    let withdrawn = cfg.as_ref().map(withdraw_before_down).unwrap_or_default();
    let removed = pin::down(&pin_dir)?;
    // The tunnel probes' policy rule (its TC program went with the daemon).
    if let Err(e) = crate::dataplane::probe::remove_rule_blocking() {
        eprintln!("warning: {e}");
    }
    let moved = state::move_aside(&state_file, &pin_dir)?;
    if cli.json {
        let moved_to = match &moved {
            state::MovedAside::To(p) => Some(p.clone()),
            _ => None,
        };
        println!(
            "{}",
            serde_json::json!({ "pin_dir": pin_dir, "vips_withdrawn": withdrawn, "detached": removed.links,
                "maps_removed": removed.maps, "unknown_maps_removed": removed.unknown,
                "state_file_moved_to": moved_to })
        );
        return Ok(ExitCode::SUCCESS);
    }
    if !withdrawn.is_empty() {
        let list: Vec<String> = withdrawn.iter().map(ToString::to_string).collect();
        println!("withdrew {}", list.join(", "));
    }
    if removed.links.is_empty() && removed.maps.is_empty() && removed.unknown.is_empty() {
        println!("nothing pinned under {}", pin_dir.display());
    } else {
        for l in &removed.links {
            println!("detached xlb from {l}");
        }
        println!(
            "removed {} pinned maps under {}",
            removed.maps.len(),
            pin_dir.display()
        );
        if !removed.unknown.is_empty() {
            println!(
                "also removed {} maps this xlb does not know (a newer release's): {}",
                removed.unknown.len(),
                removed.unknown.join(", ")
            );
        }
    }
    match moved {
        state::MovedAside::Nothing => {}
        state::MovedAside::To(bak) => println!(
            "moved the runtime changes in {} to {} (the next start begins from the config)",
            state_file.display(),
            bak.display()
        ),
        state::MovedAside::NotOurs { owner } => println!(
            "left {} alone: it belongs to the deployment with pin_dir {}",
            state_file.display(),
            owner.display()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// `[announce]` before `down`: every VIP of the deployment (the config's services and
/// those added at run time) withdrawn; the ones withdrawn. A failure is a warning: the
/// data plane goes anyway.
fn withdraw_before_down(cfg: &config::Config) -> Vec<IpAddr> {
    if cfg.announce == crate::model::Announce::None {
        return Vec::new();
    }
    let edits = match state::load(&cfg.daemon.state_file, &cfg.daemon.pin_dir) {
        Ok(state::Saved {
            content: state::Content::Edits(e),
            ..
        }) => e,
        _ => Vec::new(),
    };
    let (desired, _) = crate::model::Desired::replay(&cfg.services, &edits);
    let mut vips: Vec<IpAddr> = desired.services().map(|s| s.vip).collect();
    vips.sort_unstable();
    vips.dedup();
    let mut announcer =
        crate::announce::Announcer::new(&cfg.announce, crate::model::limits::ANNOUNCE_TIMEOUT);
    let errors = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(announcer.withdraw_all(&vips)),
        Err(e) => vec![format!("starting a runtime: {e}")],
    };
    for e in &errors {
        eprintln!("warning: withdrawing before down: {e}");
    }
    vips.retain(|v| !errors.iter().any(|e| e.starts_with(&format!("{v}: "))));
    vips
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind as ClapKind;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let mut v = vec!["xlb"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v)
    }

    /// A weight the validator refuses is blamed on the argument the user typed: the
    /// `WEIGHT` of `backend weight`, the `--weight` of `backend add` (both before any
    /// request is sent: no daemon runs here).
    #[test]
    fn a_bad_weight_names_the_argument_that_carried_it() {
        for (args, want) in [
            (
                &["backend", "weight", "web", "10.0.0.1", "0"][..],
                "WEIGHT: ",
            ),
            (
                &["backend", "weight", "web", "10.0.0.1", "65536"][..],
                "WEIGHT: ",
            ),
            (
                &["backend", "add", "web", "10.0.0.1", "--weight", "0"][..],
                "--weight: ",
            ),
        ] {
            let cli = parse(args).expect("parses");
            let err = dispatch(&cli).expect_err("refused");
            assert!(err.downcast_ref::<UsageError>().is_some(), "{err}");
            assert!(err.to_string().starts_with(want), "{args:?}: {err}");
        }
    }

    /// Every bad command line fails before anything is sent, with clap's usage exit code
    /// (2), and the message names the offending argument.
    #[test]
    fn bad_command_lines_name_the_argument() {
        let cases: &[(&[&str], &str)] = &[
            (&[], "Usage"),
            (&["frobnicate"], "frobnicate"),
            (&["run"], "--config"),
            (&["check-config"], "<FILE>"),
            // An empty value (an unset shell variable) is not "none".
            (
                &["service", "set", "web", "--tunnel-source", ""],
                "empty: give a PREFIX",
            ),
            (&["backend"], "Usage"),
            (&["backend", "add", "web"], "<ADDRESS>"),
            (&["backend", "add", "web", "10.0.0.300"], "10.0.0.300"),
            (
                &["backend", "add", "web", "10.0.0.1", "--weight", "heavy"],
                "heavy",
            ),
            (
                &["backend", "add", "web", "10.0.0.1", "--weight", "-1"],
                "-1",
            ),
            (
                &["backend", "remove", "web", "host.example"],
                "host.example",
            ),
            (&["backend", "drain", "web"], "<ADDRESS>"),
            (
                &["backend", "drain", "web", "10.0.0.1", "--timeout", "2s"],
                "--wait",
            ),
            (
                &[
                    "backend",
                    "drain",
                    "web",
                    "10.0.0.1",
                    "--wait",
                    "--timeout",
                    "5x",
                ],
                "5x",
            ),
            (&["backend", "undrain"], "<SERVICE>"),
            (&["backend", "pause", "web", "10.0.0.1"], "pause"),
            (&["explain", "web"], "<CLIENT>"),
            (&["explain", "web", "1.2.3"], "1.2.3"),
            (&["explain", "web", "1.2.3.4", "--port", "70000"], "70000"),
            (&["affinity", "list", "--limit", "many"], "many"),
            (&["affinity", "purge"], "purge"),
            (&["service", "add", "x", "--port", "80"], "--vip"),
            (&["service", "add", "x", "--vip", "1.2.3.4"], "--port"),
            (
                &[
                    "service",
                    "add",
                    "x",
                    "--vip",
                    "1.2.3.4",
                    "--port",
                    "80",
                    "--protocol",
                    "sctp",
                ],
                "sctp",
            ),
            (
                &[
                    "service",
                    "add",
                    "x",
                    "--vip",
                    "1.2.3.4",
                    "--port",
                    "80",
                    "--affinity",
                    "cookie",
                ],
                "cookie",
            ),
            (
                &[
                    "service",
                    "add",
                    "x",
                    "--vip",
                    "1.2.3.4",
                    "--port",
                    "80",
                    "--idle-timeout",
                    "10",
                ],
                "10",
            ),
            (
                &[
                    "service",
                    "add",
                    "x",
                    "--vip",
                    "1.2.3.4",
                    "--port",
                    "80",
                    "--idle-timeout",
                    "5x",
                ],
                "5x",
            ),
            (
                &[
                    "service",
                    "add",
                    "x",
                    "--vip",
                    "1.2.3.4",
                    "--port",
                    "80",
                    "--prefix-v4",
                    "300",
                ],
                "300",
            ),
            (
                &[
                    "service",
                    "add",
                    "x",
                    "--vip",
                    "1.2.3.4",
                    "--port",
                    "80",
                    "--failback",
                    "never",
                ],
                "never",
            ),
            (
                &[
                    "service",
                    "add",
                    "x",
                    "--vip",
                    "1.2.3.4",
                    "--port",
                    "80",
                    "--backend",
                    "10.0.0.1=w",
                ],
                "10.0.0.1=w",
            ),
            (
                &[
                    "service",
                    "add",
                    "x",
                    "--vip",
                    "1.2.3.4",
                    "--port",
                    "80",
                    "--backend",
                    "nope",
                ],
                "nope",
            ),
            (
                &[
                    "service",
                    "add",
                    "x",
                    "--vip",
                    "1.2.3.4",
                    "--port",
                    "80",
                    "--health-expect",
                    "99",
                ],
                "99",
            ),
            (
                &[
                    "service",
                    "add",
                    "x",
                    "--vip",
                    "1.2.3.4",
                    "--port",
                    "80",
                    "--health-expect",
                    "500-200",
                ],
                "500-200",
            ),
            (
                &[
                    "service", "add", "x", "--vip", "1.2.3.4", "--port", "80", "--health", "icmp",
                ],
                "icmp",
            ),
            (&["service", "remove"], "<NAME>"),
            (
                &["down", "--config", "a.toml", "--pin-dir", "/sys/fs/bpf/x"],
                "--pin-dir",
            ),
            (&["status", "--verbose"], "--verbose"),
            (&["node"], "drain"),
            (&["node", "drain", "now"], "now"),
            (&["node", "pause"], "pause"),
        ];
        for (args, needle) in cases {
            let err = match parse(args) {
                Ok(cli) => panic!("{args:?} parsed: {cli:?}"),
                Err(e) => e,
            };
            assert_ne!(err.kind(), ClapKind::DisplayHelp, "{args:?}");
            assert_eq!(err.exit_code(), 2, "{args:?}: exit code");
            let msg = err.render().to_string();
            assert!(
                msg.contains(needle),
                "{args:?}: message does not name {needle:?}:\n{msg}"
            );
        }
        assert!(cases.len() >= 30);
    }

    #[test]
    fn good_command_lines_parse() {
        let cli = parse(&[
            "backend",
            "drain",
            "web",
            "10.0.0.1",
            "--wait",
            "--timeout",
            "2s",
        ])
        .expect("parses");
        let Command::Backend(BackendCmd::Drain { wait, timeout, .. }) = cli.command else {
            panic!("not drain");
        };
        assert!(wait);
        assert_eq!(
            timeout.map(|t| t.0),
            Some(std::time::Duration::from_secs(2))
        );
        assert!(matches!(
            parse(&["reload"]).unwrap().command,
            Command::Reload
        ));
        let cli = parse(&[
            "--json",
            "--socket",
            "/tmp/x.sock",
            "backend",
            "add",
            "web",
            "::1",
            "--weight",
            "3",
        ])
        .expect("parses");
        assert!(cli.json);
        assert_eq!(cli.socket, PathBuf::from("/tmp/x.sock"));
        match cli.command {
            Command::Backend(BackendCmd::Add {
                service,
                address,
                weight,
            }) => {
                assert_eq!(
                    (service.as_str(), address, weight),
                    ("web", "::1".parse().unwrap(), 3)
                );
            }
            other => panic!("{other:?}"),
        }
        for (word, edit) in [("drain", Edit::NodeDrain), ("undrain", Edit::NodeUndrain)] {
            let cli = parse(&["node", word]).expect("parses");
            let Command::Node(cmd) = cli.command else {
                panic!("not node");
            };
            let got = match cmd {
                NodeCmd::Drain => Edit::NodeDrain,
                NodeCmd::Undrain => Edit::NodeUndrain,
            };
            assert_eq!(got, edit);
        }
        let cli = parse(&[
            "service",
            "add",
            "api",
            "--vip",
            "2001:db8::1",
            "--port",
            "0",
            "--protocol",
            "udp",
            "--health",
            "udp",
            "--health-port",
            "53",
            "--health-send",
            "ping",
            "--backend",
            "2001:db8::11=2",
            "--backend",
            "2001:db8::12",
        ])
        .expect("parses");
        let Command::Service(ServiceCmd::Add(args)) = cli.command else {
            panic!("not service add");
        };
        let svc = args.to_service();
        assert_eq!(svc.port, 0);
        assert_eq!(svc.backends.len(), 2);
        assert_eq!(svc.backends[0].weight, 2);
        assert!(matches!(svc.health.kind, HealthKind::Udp { port: 53, .. }));
        assert!(validate_service(&svc, &[]).is_ok());
    }

    #[test]
    fn service_add_validation_names_flags() {
        let cli = parse(&[
            "service",
            "add",
            "x",
            "--vip",
            "10.0.0.1",
            "--port",
            "80",
            "--table-size",
            "1000",
            "--backend",
            "fd00::1",
        ])
        .expect("parses");
        let Command::Service(ServiceCmd::Add(args)) = cli.command else {
            panic!("not service add");
        };
        let errors = validate_service(&args.to_service(), &[]).expect_err("invalid");
        let flags: Vec<String> = errors.iter().map(|e| flag_for_field(&e.field)).collect();
        assert!(flags.iter().any(|f| f == "--table-size"), "{flags:?}");
        assert!(
            flags.iter().any(|f| f.starts_with("--backend")),
            "{flags:?}"
        );
        assert_eq!(flag_for_field("health.timeout"), "--health-timeout");
        assert_eq!(flag_for_field("prefix_v4"), "--prefix-v4");
        assert_eq!(flag_for_field("backend[1].weight"), "--backend (#1)");
    }
}
