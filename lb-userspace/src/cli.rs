//! The `xlb` command line: `run` is the daemon, `check-config` and `down` work alone, every
//! other command is a client of the daemon's control socket.
//!
//! Exit codes: 0 ok, 1 runtime error, 2 usage or config error (nothing changed).

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    api::{self, ErrorKind, Request, Response},
    config::{self, HealthConfig, HealthKind, ServiceConfig},
    dataplane::{lock::PinDirLock, pin},
    model::{Affinity, BackendSpec, Failback, NoBackend, Protocol, ServiceSpec},
};

/// An error that is the caller's: bad arguments or config. Exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

#[derive(Parser, Debug)]
#[command(
    name = "xlb",
    version,
    about = "xlb: an XDP layer-4 load balancer with IP affinity",
    after_help = "Exit codes: 0 ok, 1 runtime error, 2 usage or config error."
)]
pub struct Cli {
    /// Control socket of the daemon.
    #[arg(
        long,
        global = true,
        env = "XLB_SOCKET",
        default_value = "/run/xlb/xlb.sock"
    )]
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
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file and print the effective config (defaults filled in).
    CheckConfig { file: PathBuf },
    /// Services and backends: health, draining, weight, table share, pinned clients.
    Status,
    /// Packets, bytes and rates per service and backend; drops by reason.
    Stats,
    /// Add, remove, drain or undrain a backend.
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
    /// Detach the program and remove all pinned state (no daemon needed).
    Down {
        #[arg(long, conflicts_with = "pin_dir")]
        config: Option<PathBuf>,
        #[arg(long)]
        pin_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum BackendCmd {
    Add {
        service: String,
        address: IpAddr,
        #[arg(long, default_value_t = 1)]
        weight: u32,
    },
    Remove {
        service: String,
        address: IpAddr,
    },
    /// Keep its pinned clients, send it no new ones.
    Drain {
        service: String,
        address: IpAddr,
    },
    Undrain {
        service: String,
        address: IpAddr,
    },
}

#[derive(Subcommand, Debug)]
pub enum ServiceCmd {
    Add(ServiceAddArgs),
    Remove { name: String },
}

#[derive(Subcommand, Debug)]
pub enum AffinityCmd {
    List {
        service: Option<String>,
        /// At most this many entries (most recently active first).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    Flush {
        service: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ProtocolArg {
    Tcp,
    Udp,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum AffinityArg {
    SourceIp,
    None,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum FailbackArg {
    Sticky,
    Rebalance,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum NoBackendArg {
    Drop,
    Pass,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum HealthArg {
    Tcp,
    Http,
    Udp,
    None,
}

/// The fields of a `[[service]]` table, as flags.
#[derive(Args, Debug)]
pub struct ServiceAddArgs {
    pub name: String,
    #[arg(long)]
    pub vip: IpAddr,
    /// 0 = every port.
    #[arg(long)]
    pub port: u16,
    #[arg(long, value_enum, default_value = "tcp")]
    pub protocol: ProtocolArg,
    #[arg(long, value_enum, default_value = "source-ip")]
    pub affinity: AffinityArg,
    #[arg(long, default_value_t = 32)]
    pub prefix_v4: u8,
    #[arg(long, default_value_t = 128)]
    pub prefix_v6: u8,
    #[arg(long, default_value = "10m", value_parser = parse_duration_arg)]
    pub idle_timeout: Duration,
    #[arg(long, value_enum, default_value = "sticky")]
    pub failback: FailbackArg,
    #[arg(long, default_value_t = 65537)]
    pub table_size: u32,
    #[arg(long, value_enum, default_value = "drop")]
    pub no_backend: NoBackendArg,
    #[arg(long, value_enum, default_value = "tcp")]
    pub health: HealthArg,
    /// Port for health checks (default: the service port).
    #[arg(long)]
    pub health_port: Option<u16>,
    #[arg(long, default_value = "/")]
    pub health_path: String,
    /// HTTP status or range that counts as healthy, e.g. 200 or 200-399.
    #[arg(long, default_value = "200-399", value_parser = parse_status_range)]
    pub health_expect: (u16, u16),
    /// UDP payload to send.
    #[arg(long)]
    pub health_send: Option<String>,
    #[arg(long, default_value = "1s", value_parser = parse_duration_arg)]
    pub health_interval: Duration,
    #[arg(long, default_value = "500ms", value_parser = parse_duration_arg)]
    pub health_timeout: Duration,
    #[arg(long, default_value_t = 2)]
    pub health_rise: u32,
    #[arg(long, default_value_t = 3)]
    pub health_fall: u32,
    /// A backend: ADDRESS or ADDRESS=WEIGHT; repeat for each.
    #[arg(long = "backend", value_parser = parse_backend_arg)]
    pub backends: Vec<BackendSpec>,
}

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    config::parse_duration(s)
}

fn parse_status_range(s: &str) -> Result<(u16, u16), String> {
    let parse = |x: &str| -> Result<u16, String> {
        x.trim()
            .parse::<u16>()
            .ok()
            .filter(|v| (100..=599).contains(v))
            .ok_or_else(|| format!("{x:?} is not an HTTP status (100..=599)"))
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (parse(a)?, parse(b)?);
            if a > b {
                return Err(format!("range {s} is empty"));
            }
            Ok((a, b))
        }
        None => {
            let v = parse(s)?;
            Ok((v, v))
        }
    }
}

fn parse_backend_arg(s: &str) -> Result<BackendSpec, String> {
    let (addr, weight) = match s.split_once('=') {
        Some((a, w)) => (
            a,
            w.parse::<u32>()
                .map_err(|_| format!("weight {w:?} is not a number"))?,
        ),
        None => (s, 1),
    };
    let address = addr
        .parse::<IpAddr>()
        .map_err(|_| format!("{addr:?} is not an IP address"))?;
    Ok(BackendSpec { address, weight })
}

impl ServiceAddArgs {
    pub fn to_config(&self) -> ServiceConfig {
        let mut spec = ServiceSpec::new(
            &self.name,
            self.vip,
            self.port,
            match self.protocol {
                ProtocolArg::Tcp => Protocol::Tcp,
                ProtocolArg::Udp => Protocol::Udp,
            },
        );
        spec.affinity = match self.affinity {
            AffinityArg::SourceIp => Affinity::SourceIp,
            AffinityArg::None => Affinity::None,
        };
        spec.prefix_v4 = self.prefix_v4;
        spec.prefix_v6 = self.prefix_v6;
        spec.idle_timeout = self.idle_timeout;
        spec.failback = match self.failback {
            FailbackArg::Sticky => Failback::Sticky,
            FailbackArg::Rebalance => Failback::Rebalance,
        };
        spec.table_size = self.table_size;
        spec.no_backend = match self.no_backend {
            NoBackendArg::Drop => NoBackend::Drop,
            NoBackendArg::Pass => NoBackend::Pass,
        };
        let port = self.health_port.unwrap_or(self.port);
        let kind = match self.health {
            HealthArg::None => HealthKind::None,
            HealthArg::Tcp => HealthKind::Tcp { port },
            HealthArg::Http => HealthKind::Http {
                port,
                path: self.health_path.clone(),
                host: None,
                expect_status: self.health_expect,
                body: None,
            },
            HealthArg::Udp => HealthKind::Udp {
                port,
                send: self.health_send.clone().unwrap_or_default(),
                expect: None,
            },
        };
        ServiceConfig {
            spec,
            forwarding: config::Forwarding::Dsr,
            health: HealthConfig {
                kind,
                interval: self.health_interval,
                timeout: self.health_timeout,
                rise: self.health_rise,
                fall: self.health_fall,
            },
            backends: self.backends.clone(),
        }
    }
}

/// The flag that sets a config field, for error messages of `service add`.
pub fn flag_for_field(field: &str) -> String {
    if let Some(rest) = field.strip_prefix("backend[") {
        let idx = rest.split(']').next().unwrap_or("?");
        return format!("--backend (#{idx})");
    }
    let f = field.replace(['.', '_'], "-");
    format!("--{f}")
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
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
        Command::CheckConfig { file } => {
            let cfg = config::load(file).map_err(|e| UsageError(e.to_string()))?;
            print!("{}", cfg.to_toml());
            eprintln!("{}: ok", file.display());
            return Ok(ExitCode::SUCCESS);
        }
        Command::Down { config, pin_dir } => {
            return down(cli, config.as_deref(), pin_dir.as_deref());
        }
        Command::Status => Request::Status,
        Command::Stats => Request::Stats,
        Command::Backend(b) => match b {
            BackendCmd::Add {
                service,
                address,
                weight,
            } => {
                if *weight == 0 || *weight > 65535 {
                    return Err(UsageError(format!("--weight {weight}: must be 1..=65535")).into());
                }
                Request::BackendAdd {
                    service: service.clone(),
                    address: *address,
                    weight: *weight,
                }
            }
            BackendCmd::Remove { service, address } => Request::BackendRemove {
                service: service.clone(),
                address: *address,
            },
            BackendCmd::Drain { service, address } => Request::BackendDrain {
                service: service.clone(),
                address: *address,
            },
            BackendCmd::Undrain { service, address } => Request::BackendUndrain {
                service: service.clone(),
                address: *address,
            },
        },
        Command::Service(s) => match s {
            ServiceCmd::Add(args) => {
                let svc = args.to_config();
                if let Err(errors) = config::validate_service(&svc, &[]) {
                    let msg: Vec<String> = errors
                        .iter()
                        .map(|e| format!("{}: {}", flag_for_field(&e.field), e.message))
                        .collect();
                    return Err(UsageError(msg.join("\n")).into());
                }
                Request::ServiceAdd {
                    service: Box::new(svc),
                }
            }
            ServiceCmd::Remove { name } => Request::ServiceRemove { name: name.clone() },
        },
        Command::Explain {
            service,
            client,
            port,
        } => Request::Explain {
            service: service.clone(),
            client: *client,
            port: *port,
        },
        Command::Affinity(a) => match a {
            AffinityCmd::List { service, limit } => Request::AffinityList {
                service: service.clone(),
                limit: *limit,
            },
            AffinityCmd::Flush { service } => Request::AffinityFlush {
                service: service.clone(),
            },
        },
    };
    let response = api::call(&cli.socket, &request)?;
    finish(cli, &request, response)
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
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&response.result)?);
        return Ok(ExitCode::SUCCESS);
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
        _ => crate::display::done(&response.result),
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

fn down(cli: &Cli, config: Option<&Path>, pin_dir: Option<&Path>) -> anyhow::Result<ExitCode> {
    let (pin_dir, socket) = match (config, pin_dir) {
        (Some(c), _) => {
            let cfg = config::load(c).map_err(|e| UsageError(e.to_string()))?;
            (cfg.daemon.pin_dir, cfg.daemon.socket)
        }
        (None, Some(p)) => (p.to_path_buf(), cli.socket.clone()),
        (None, None) => (PathBuf::from("/sys/fs/bpf/xlb"), cli.socket.clone()),
    };
    // The pin-dir lock first: a running daemon holds it, and nothing is touched then.
    let _lock = PinDirLock::acquire_existing(&pin_dir)?;
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        anyhow::bail!(
            "an xlb daemon is running on {}: stop it first (it would recreate the pinned state)",
            socket.display()
        );
    }
    let removed = pin::down(&pin_dir)?;
    if cli.json {
        println!(
            "{}",
            serde_json::json!({ "pin_dir": pin_dir, "detached": removed.links, "maps_removed": removed.maps, "unknown_maps_removed": removed.unknown })
        );
    } else if removed.links.is_empty() && removed.maps.is_empty() && removed.unknown.is_empty() {
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
    Ok(ExitCode::SUCCESS)
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

    /// Every bad command line fails before anything is sent, with clap's usage exit code
    /// (2), and the message names the offending argument.
    #[test]
    fn bad_command_lines_name_the_argument() {
        let cases: &[(&[&str], &str)] = &[
            (&[], "Usage"),
            (&["frobnicate"], "frobnicate"),
            (&["run"], "--config"),
            (&["check-config"], "<FILE>"),
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
        let svc = args.to_config();
        assert_eq!(svc.spec.port, 0);
        assert_eq!(svc.backends.len(), 2);
        assert_eq!(svc.backends[0].weight, 2);
        assert!(matches!(svc.health.kind, HealthKind::Udp { port: 53, .. }));
        assert!(config::validate_service(&svc, &[]).is_ok());
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
        let errors = config::validate_service(&args.to_config(), &[]).expect_err("invalid");
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
