//! Tests of the config file: every error path names file, line and key.

use std::{collections::HashSet, net::IpAddr, path::Path, time::Duration};

use super::*;
use crate::model::{
    Affinity, Announce, Backend, Failback, Forwarding, HealthCheck, HealthKind, NoBackend,
    Protocol, Service, validate::validate_service,
};

const FILE: &str = "/etc/xlb/test.toml";

/// The DESIGN.md example, on an interface that exists everywhere.
const DESIGN_EXAMPLE: &str = r#"
[daemon]
interfaces = ["lo"]              # XDP attach points
xdp_mode = "native"              # native | generic
pin_dir = "/sys/fs/bpf/xlb"
socket = "/run/xlb/xlb.sock"
metrics = "127.0.0.1:9310"       # "" disables
affinity_capacity = 1048576      # LRU entries, shared by all services

[[service]]
name = "web"
vip = "203.0.113.10"             # IPv4 or IPv6
port = 80                        # 0 = every port
protocol = "tcp"                 # tcp | udp
forwarding = "dsr"
affinity = "source-ip"           # source-ip | none
prefix_v4 = 32
prefix_v6 = 128
idle_timeout = "10m"
failback = "sticky"              # sticky | rebalance
table_size = 65537               # Maglev M, prime
health = { kind = "tcp", port = 80, interval = "1s", timeout = "500ms", rise = 2, fall = 3 }
# health kinds: tcp | http (path, expect) | udp (send, expect) | none

[[service.backend]]
address = "192.0.2.11"
weight = 1
"#;

/// `[daemon]` on lo, then a `[[service]]` header on line 4 followed by `body`.
fn service(body: &str) -> String {
    format!("[daemon]\ninterfaces = [\"lo\"]\n\n[[service]]\n{body}")
}

/// A minimal valid service "web" (lines 4-8); `extra` starts on line 9.
fn web(extra: &str) -> String {
    service(&format!(
        "name = \"web\"\nvip = \"203.0.113.10\"\nport = 80\nprotocol = \"tcp\"\n{extra}"
    ))
}

fn parse_str(text: &str) -> Result<Config, ConfigError> {
    parse(Path::new(FILE), text)
}

fn errors_of(text: &str) -> Vec<LocatedError> {
    match parse_str(text) {
        Ok(c) => panic!("accepted:\n{text}\n{c:#?}"),
        Err(ConfigError::Invalid { errors, .. }) => errors,
        Err(e) => panic!("unexpected error {e}"),
    }
}

/// A port out of range is one error, under `port`; it does not also make `health.port`
/// "required" as if the service listened on every port (seen by a new user).
#[test]
fn a_bad_port_is_one_error() {
    for port in ["70000", "-1"] {
        let text = service(&format!(
            "name = \"web\"\nvip = \"203.0.113.10\"\nport = {port}\nprotocol = \"tcp\"\n"
        ));
        let errors = errors_of(&text);
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["service[0].port"], "{errors:#?}");
    }
}

#[test]
fn bad_inputs_are_rejected_naming_file_line_and_key() {
    let two = |a: &str, b: &str| {
        format!("[daemon]\ninterfaces = [\"lo\"]\n\n[[service]]\n{a}\n[[service]]\n{b}")
    };
    let v6 = |extra: &str| {
        service(&format!(
            "name = \"v6\"\nvip = \"2001:db8::10\"\nport = 80\nprotocol = \"tcp\"\n{extra}"
        ))
    };
    let be = |addr: &str| format!("[[service.backend]]\naddress = \"{addr}\"\n");
    // `[announce]` on line 3, `body` from line 4.
    let ann = |body: &str| format!("[daemon]\ninterfaces = [\"lo\"]\n[announce]\n{body}");
    // (what, text, key substring, message substring, line)
    #[rustfmt::skip]
    let cases: Vec<(&str, String, &str, &str, usize)> = vec![
        ("unknown top-level key", "foo = 1\n[daemon]\ninterfaces = [\"lo\"]\n".into(), "foo", "unknown key", 1),
        ("unknown daemon key", "[daemon]\ninterfaces = [\"lo\"]\nintefaces = 1\n".into(), "daemon.intefaces", "unknown field", 3),
        ("unknown service key", web("colour = \"red\"\n"), "service[0].colour", "unknown field", 9),
        ("unknown health key", web("health = { kind = \"tcp\", retries = 3 }\n"), "service[0].health.retries", "unknown field", 9),
        ("unknown backend key", web("[[service.backend]]\naddress = \"192.0.2.1\"\nwieght = 2\n"), "service[0].backend[0].wieght", "unknown field", 11),
        ("port is a string", service("name = \"web\"\nvip = \"203.0.113.10\"\nport = \"80\"\n"), "service[0].port", "invalid type", 7),
        ("interfaces is a string", "[daemon]\ninterfaces = \"lo\"\n".into(), "daemon.interfaces", "invalid type", 2),
        ("interface is a number", "[daemon]\ninterfaces = [\"lo\",\n  5]\n".into(), "daemon.interfaces[1]", "invalid type", 3),
        ("daemon is not a table", "daemon = 5\n".into(), "daemon", "expected a table", 1),
        ("service is not an array", "[daemon]\ninterfaces = [\"lo\"]\n[service]\nname = \"a\"\n".into(), "service", "array of tables", 3),
        ("TOML syntax", "[daemon]\ninterfaces = [\"lo\"]\nxdp_mode = native\n".into(), "daemon.xdp_mode", "invalid", 3),
        ("duplicate TOML key", "[daemon]\ninterfaces = [\"lo\"]\ninterfaces = [\"lo\"]\n".into(), "interfaces", "duplicate key", 3),
        ("no daemon table", web("").replace("[daemon]\ninterfaces = [\"lo\"]\n", ""), "daemon.interfaces", "required", 1),
        ("interfaces empty", "[daemon]\ninterfaces = []\n".into(), "daemon.interfaces", "at least one", 2),
        ("interface listed twice", "[daemon]\ninterfaces = [\"lo\", \"lo\"]\n".into(), "daemon.interfaces[1]", "twice", 2),
        ("interface does not exist", "[daemon]\ninterfaces = [\"lo\",\n \"xlb-nonexistent0\"]\n".into(), "daemon.interfaces[1]", "interface \"xlb-nonexistent0\" does not exist", 3),
        ("xdp_mode offload", "[daemon]\ninterfaces = [\"lo\"]\nxdp_mode = \"offload\"\n".into(), "daemon.xdp_mode", "\"native\", \"generic\"", 3),
        ("pin_dir relative", "[daemon]\ninterfaces = [\"lo\"]\npin_dir = \"bpf/xlb\"\n".into(), "daemon.pin_dir", "absolute", 3),
        ("socket relative", "[daemon]\ninterfaces = [\"lo\"]\nsocket = \"xlb.sock\"\n".into(), "daemon.socket", "absolute", 3),
        ("state_file relative", "[daemon]\ninterfaces = [\"lo\"]\nstate_file = \"\"\n".into(), "daemon.state_file", "absolute", 3),
        ("socket_group unknown", "[daemon]\ninterfaces = [\"lo\"]\nsocket_group = \"xlb-no-such-group\"\n".into(), "daemon.socket_group", "does not exist", 3),
        ("metrics not loopback", "[daemon]\ninterfaces = [\"lo\"]\nmetrics = \"0.0.0.0:9310\"\n".into(), "daemon.metrics", "loopback", 3),
        ("metrics unparsable", "[daemon]\ninterfaces = [\"lo\"]\nmetrics = \"localhost\"\n".into(), "daemon.metrics", "address:port", 3),
        ("affinity_capacity 0", "[daemon]\ninterfaces = [\"lo\"]\naffinity_capacity = 0\n".into(), "daemon.affinity_capacity", "out of range", 3),
        ("affinity_capacity too large", "[daemon]\ninterfaces = [\"lo\"]\naffinity_capacity = 134217728\n".into(), "daemon.affinity_capacity", "67108864", 3),
        ("name empty", service("name = \"\"\nvip = \"203.0.113.10\"\nport = 80\nprotocol = \"tcp\"\n"), "service[0].name", "empty", 5),
        ("name with a space", service("name = \"web app\"\nvip = \"203.0.113.10\"\nport = 80\nprotocol = \"tcp\"\n"), "service[0].name", "A-Z", 5),
        ("name duplicate", two("name = \"a\"\nvip = \"203.0.113.10\"\nport = 80\nprotocol = \"tcp\"", "name = \"a\"\nvip = \"203.0.113.11\"\nport = 80\nprotocol = \"tcp\""), "service[1].name", "duplicate service name", 10),
        ("vip missing", service("name = \"web\"\nport = 80\nprotocol = \"tcp\"\n"), "service[0].vip", "required", 4),
        ("vip unparsable", service("name = \"web\"\nvip = \"203.0.113\"\nport = 80\nprotocol = \"tcp\"\n"), "service[0].vip", "not an IPv4 or IPv6", 6),
        ("vip multicast", service("name = \"web\"\nvip = \"224.0.0.1\"\nport = 80\nprotocol = \"tcp\"\n"), "service[0].vip", "multicast", 6),
        ("vip loopback", service("name = \"web\"\nvip = \"127.0.0.1\"\nport = 80\nprotocol = \"tcp\"\n"), "service[0].vip", "loopback", 6),
        ("vip loopback v6", service("name = \"web\"\nvip = \"::1\"\nport = 80\nprotocol = \"tcp\"\n"), "service[0].vip", "loopback", 6),
        ("port too large", service("name = \"web\"\nvip = \"203.0.113.10\"\nport = 70000\nprotocol = \"tcp\"\n"), "service[0].port", "0..=65535", 7),
        ("protocol sctp", service("name = \"web\"\nvip = \"203.0.113.10\"\nport = 80\nprotocol = \"sctp\"\n"), "service[0].protocol", "\"tcp\", \"udp\"", 8),
        ("forwarding nat", web("forwarding = \"nat\"\n"), "service[0].forwarding", "not supported yet", 9),
        ("forwarding bogus", web("forwarding = \"gre\"\n"), "service[0].forwarding", "\"dsr\", \"tunnel\"", 9),
        // Issue 13: tunnel mode.
        ("tunnel_source without tunnel", web("tunnel_source = \"10.99.0.0/24\"\n"), "service[0].tunnel_source", "applies only to forwarding = \"tunnel\"", 9),
        ("tunnel_source host bits", web("forwarding = \"tunnel\"\ntunnel_source = \"10.99.0.1/24\"\n"), "service[0].tunnel_source", "meant 10.99.0.0/24", 10),
        ("tunnel_source not a prefix", web("forwarding = \"tunnel\"\ntunnel_source = \"lan\"\n"), "service[0].tunnel_source", "not an address prefix", 10),
        ("tunnel_source multicast", web("forwarding = \"tunnel\"\ntunnel_source = \"224.0.0.0/24\"\n"), "service[0].tunnel_source", "multicast or reserved", 10),
        ("tunnel_source loopback", web("forwarding = \"tunnel\"\ntunnel_source = \"127.0.0.0/8\"\n"), "service[0].tunnel_source", "is loopback", 10),
        ("tunnel_source everything", web("forwarding = \"tunnel\"\ntunnel_source = \"0.0.0.0/0\"\n"), "service[0].tunnel_source", "0.0.0.0/8", 10),
        ("tunnel_source too short", web("forwarding = \"tunnel\"\ntunnel_source = \"64.0.0.0/2\"\n"), "service[0].tunnel_source", "too short", 10),
        ("tunnel_source link-local", web("forwarding = \"tunnel\"\ntunnel_source = \"169.254.0.0/16\"\n"), "service[0].tunnel_source", "link-local", 10),
        ("tunnel_source of another family than a backend", web(&format!("forwarding = \"tunnel\"\ntunnel_source = \"10.99.0.0/24\"\n{}", be("2001:db8:2::11"))), "service[0].tunnel_source", "not of the family of backend 2001:db8:2::11", 10),
        ("tunnel, IPv6 VIP, IPv4 backend", v6(&format!("forwarding = \"tunnel\"\n{}", be("192.0.2.1"))), "service[0].backend[0].address", "IPv4 VIP to IPv6 backend (4in6)", 11),
        ("affinity cookie", web("affinity = \"cookie\"\n"), "service[0].affinity", "source-ip", 9),
        ("prefix_v4 33", web("prefix_v4 = 33\n"), "service[0].prefix_v4", "0..=32", 9),
        ("prefix_v4 300", web("prefix_v4 = 300\n"), "service[0].prefix_v4", "0..=32", 9),
        ("prefix_v6 129", web("prefix_v6 = 129\n"), "service[0].prefix_v6", "0..=128", 9),
        ("idle_timeout 0", web("idle_timeout = \"0s\"\n"), "service[0].idle_timeout", "greater than 0", 9),
        ("idle_timeout without unit", web("idle_timeout = \"10\"\n"), "service[0].idle_timeout", "missing unit", 9),
        ("idle_timeout negative", web("idle_timeout = \"-1s\"\n"), "service[0].idle_timeout", "invalid duration", 9),
        ("idle_timeout overflow", web("idle_timeout = \"99999999999999999999h\"\n"), "service[0].idle_timeout", "too large", 9),
        ("idle_timeout is a number", web("idle_timeout = 600\n"), "service[0].idle_timeout", "invalid type", 9),
        ("failback never", web("failback = \"never\"\n"), "service[0].failback", "rebalance", 9),
        ("no_backend reject", web("no_backend = \"reject\"\n"), "service[0].no_backend", "\"drop\", \"pass\"", 9),
        ("table_size not prime", web("table_size = 65536\n"), "service[0].table_size", "next prime: 65537", 9),
        ("table_size below 100 x backends", web(&format!("table_size = 101\n{}{}", be("192.0.2.1"), be("192.0.2.2"))), "service[0].table_size", "at least 200", 9),
        ("table_size below 100", web("table_size = 97\n"), "service[0].table_size", "at least 100", 9),
        ("table_size too large", web("table_size = 16777259\n"), "service[0].table_size", "16777216", 9),
        ("duplicate vip:port/proto", two("name = \"a\"\nvip = \"203.0.113.10\"\nport = 80\nprotocol = \"tcp\"", "name = \"b\"\nvip = \"203.0.113.10\"\nport = 80\nprotocol = \"tcp\""), "service[1].port", "already used by service \"a\"", 12),
        ("weight 0", web("[[service.backend]]\naddress = \"192.0.2.1\"\nweight = 0\n"), "service[0].backend[0].weight", "0 is not allowed", 11),
        ("weight too large", web("[[service.backend]]\naddress = \"192.0.2.1\"\nweight = 70000\n"), "service[0].backend[0].weight", "1..=65535", 11),
        ("duplicate backend", web(&format!("{}{}", be("192.0.2.1"), be("192.0.2.1"))), "service[0].backend[1].address", "duplicate backend", 12),
        ("IPv6 VIP, IPv4 backend, dsr", v6(&be("192.0.2.1")), "service[0].backend[0].address", "dsr", 10),
        ("backend loopback", web(&be("127.0.0.1")), "service[0].backend[0].address", "loopback", 10),
        ("backend multicast", web(&be("ff02::1")), "service[0].backend[0].address", "multicast", 10),
        ("backend unspecified", web(&be("0.0.0.0")), "service[0].backend[0].address", "unspecified", 10),
        ("backend unparsable", web(&be("192.0.2.300")), "service[0].backend[0].address", "not an IPv4", 10),
        ("backend without address", web("[[service.backend]]\nweight = 2\n"), "service[0].backend[0].address", "required", 9),
        ("health kind icmp", web("health = { kind = \"icmp\" }\n"), "service[0].health.kind", "unknown value \"icmp\"", 9),
        ("health interval 0", web("health = { interval = \"0s\" }\n"), "service[0].health.interval", "greater than 0", 9),
        ("health timeout 0", web("health = { timeout = \"0ms\" }\n"), "service[0].health.timeout", "greater than 0", 9),
        ("health timeout > interval", web("health = { interval = \"1s\", timeout = \"2s\" }\n"), "service[0].health.timeout", "longer than the interval 1s", 9),
        ("health interval bad unit", web("health = { interval = \"1x\" }\n"), "service[0].health.interval", "unknown unit \"x\"", 9),
        ("health rise 0", web("health = { rise = 0 }\n"), "service[0].health.rise", "1..=100", 9),
        ("health fall 101", web("[service.health]\nfall = 101\n"), "service[0].health.fall", "1..=100", 10),
        ("http expect 600", web("health = { kind = \"http\", expect = \"200-600\" }\n"), "service[0].health.expect", "100..=599", 9),
        ("http expect text", web("health = { kind = \"http\", expect = \"ok\" }\n"), "service[0].health.expect", "not an HTTP status", 9),
        ("http path relative", web("health = { kind = \"http\", path = \"health\" }\n"), "service[0].health.path", "must start with '/'", 9),
        // Issue 10, fault 8: a link-local backend cannot be checked or resolved without a zone.
        ("backend IPv6 link-local", v6(&be("fe80::1")), "service[0].backend[0].address", "link-local", 10),
        ("backend with a zone", v6(&be("fe80::1%eth0")), "service[0].backend[0].address", "zone ids (%eth0) are not supported", 10),
        // Issue 10, fault 3: an idle timeout the data plane's refresh cannot keep.
        ("idle_timeout below the minimum", web("idle_timeout = \"50ms\"\n"), "service[0].idle_timeout", "at least 100ms", 9),
        ("idle_timeout below the minimum, 99ms", web("idle_timeout = \"99ms\"\n"), "service[0].idle_timeout", "at least 100ms", 9),
        ("idle_timeout above the table's clock, 27 days", web("idle_timeout = \"648h\"\n"), "service[0].idle_timeout", "at most 625h", 9),
        ("health interval too short", web("health = { interval = \"5ms\", timeout = \"1ms\" }\n"), "service[0].health.interval", "outside 10ms", 9),
        ("health initial", web("health = { initial = \"maybe\" }\n"), "service[0].health.initial", "\"checked\", \"up\"", 9),
        ("backend draining not a bool", web("[[service.backend]]\naddress = \"192.0.2.1\"\ndraining = \"yes\"\n"), "service[0].backend[0].draining", "invalid type", 11),
        ("udp expect number", web("health = { kind = \"udp\", send = \"ping\", expect = 200 }\n"), "service[0].health.expect", "must be a string", 9),
        ("key of another kind", web("health = { kind = \"tcp\", path = \"/\" }\n"), "service[0].health.path", "does not apply", 9),
        ("port 0 without health.port", service("name = \"all\"\nvip = \"203.0.113.10\"\nport = 0\nprotocol = \"tcp\"\n"), "service[0].health.port", "required", 4),
        ("health port 0", web("health = { port = 0 }\n"), "service[0].health.port", "1..=65535", 9),
        // Issue 12: nat_sources and nat_warn_share.
        ("nat_sources host bits", web("nat_sources = [\"198.51.100.7/24\"]\n"), "service[0].nat_sources[0]", "meant 198.51.100.0/24", 9),
        ("nat_sources not a prefix", web("nat_sources = [\"office\"]\n"), "service[0].nat_sources[0]", "not an address prefix", 9),
        ("nat_sources other family", web("nat_sources = [\"2001:db8::/32\"]\n"), "service[0].nat_sources[0]", "not of the family of the VIP", 9),
        ("nat_sources twice", web("nat_sources = [\"198.51.100.0/24\", \"198.51.100.0/24\"]\n"), "service[0].nat_sources[1]", "listed twice", 9),
        ("nat_warn_share 0", web("nat_warn_share = 0.0\n"), "service[0].nat_warn_share", "out of range", 9),
        ("nat_warn_share above 1", web("nat_warn_share = 1.5\n"), "service[0].nat_warn_share", "out of range", 9),
        ("balance_factor 1", web("balance_factor = 1.0\n"), "service[0].balance_factor", "out of range", 9),
        ("balance_factor 11", web("balance_factor = 11.0\n"), "service[0].balance_factor", "out of range", 9),
        ("balance_factor text", web("balance_factor = \"on\"\n"), "service[0].balance_factor", "invalid type", 9),
        ("announce without kind", ann("socket = \"/run/bird/bird.ctl\"\n"), "announce.kind", "required", 3),
        ("announce kind ospf", ann("kind = \"ospf\"\n"), "announce.kind", "\"none\", \"bird\", \"command\"", 4),
        ("announce unknown key", ann("kind = \"bird\"\nsokcet = \"/x\"\n"), "announce.sokcet", "unknown field", 5),
        ("announce not a table", "announce = 5\n[daemon]\ninterfaces = [\"lo\"]\n".into(), "announce", "expected a table", 1),
        ("announce bird socket relative", ann("kind = \"bird\"\nsocket = \"bird.ctl\"\n"), "announce.socket", "absolute", 5),
        ("announce socket with kind command", ann("kind = \"command\"\nannounce = [\"/bin/a\", \"{vip}\"]\nwithdraw = [\"/bin/w\", \"{vip}\"]\nsocket = \"/x\"\n"), "announce.socket", "applies to kind = \"bird\" only", 7),
        ("announce command with kind bird", ann("kind = \"bird\"\nwithdraw = [\"/bin/w\", \"{vip}\"]\n"), "announce.withdraw", "applies to kind = \"command\" only", 5),
        ("announce command without a placeholder", ann("kind = \"command\"\nannounce = [\"/bin/a\"]\nwithdraw = [\"/bin/w\", \"{prefix}\"]\n"), "announce.announce", "must contain {vip} or {prefix}", 5),
        ("announce command missing", ann("kind = \"command\"\nannounce = [\"/bin/a\", \"{vip}\"]\n"), "announce.withdraw", "must name a program", 3),
        ("announce command empty program", ann("kind = \"command\"\nannounce = [\"\", \"{vip}\"]\nwithdraw = [\"/bin/w\", \"{vip}\"]\n"), "announce.announce", "must name a program", 5),
    ];
    assert!(cases.len() >= 30);
    let mut seen = HashSet::new();
    for (what, text, key, message, line) in &cases {
        assert!(
            seen.insert(text.clone()),
            "{what}: same input as another case"
        );
        let errors = errors_of(text);
        let hit = errors
            .iter()
            .find(|e| e.key.contains(key) && e.message.contains(message));
        let Some(hit) = hit else {
            panic!(
                "{what}: no error with key {key:?} and message {message:?} in {errors:#?}\n{text}"
            );
        };
        assert_eq!(hit.line, *line, "{what}: {hit}\n{text}");
        // The rendered message names file, line and key.
        let shown = ConfigError::Invalid {
            path: FILE.into(),
            errors: errors.clone(),
        }
        .to_string();
        assert!(
            shown.contains(&format!("{FILE}:{line}:{}: {}: ", hit.column, hit.key)),
            "{what}: {shown}"
        );
    }
}

#[test]
fn all_errors_are_reported_in_file_order() {
    let text = web("prefix_v4 = 40\nidle_timeout = \"0s\"\n[[service.backend]]\naddress = \"192.0.2.1\"\nweight = 0\n")
        .replace("[\"lo\"]", "[\"xlb-nonexistent0\"]");
    let errors = errors_of(&text);
    let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "daemon.interfaces[0]",
            "service[0].prefix_v4",
            "service[0].idle_timeout",
            "service[0].backend[0].weight"
        ],
        "{errors:#?}"
    );
    // Columns point at the value.
    assert_eq!((errors[1].line, errors[1].column), (9, 13));
}

/// `HostChecks::Skip` skips the interface check and nothing else: a config written for
/// another machine passes, the same file with any other mistake still fails, and the
/// default (the daemon's) still reports the interfaces.
#[test]
fn offline_skips_only_the_checks_against_this_host() {
    let elsewhere = DESIGN_EXAMPLE.replace("[\"lo\"]", "[\"xlbnosuch0\", \"lo\", \"xlbnosuch1\"]");
    let cfg = parse_with(Path::new(FILE), &elsewhere, HostChecks::Skip).expect("offline");
    assert_eq!(cfg.daemon.interfaces, ["xlbnosuch0", "lo", "xlbnosuch1"]);
    // A socket group of the other host, too.
    let grouped = elsewhere.replace(
        "[daemon]\n",
        "[daemon]\nsocket_group = \"xlbnosuchgroup\"\n",
    );
    let cfg = parse_with(Path::new(FILE), &grouped, HostChecks::Skip).expect("offline group");
    let g = cfg.daemon.socket_group.expect("kept");
    assert_eq!((g.name.as_str(), g.gid), ("xlbnosuchgroup", None));

    let errors = errors_of(&elsewhere);
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "3:15: daemon.interfaces[0]: interface \"xlbnosuch0\" does not exist on this host",
            "3:35: daemon.interfaces[2]: interface \"xlbnosuch1\" does not exist on this host",
        ],
        "{errors:#?}"
    );

    let also_wrong = elsewhere.replace("prefix_v4 = 32", "prefix_v4 = 33");
    let Err(ConfigError::Invalid { errors, .. }) =
        parse_with(Path::new(FILE), &also_wrong, HostChecks::Skip)
    else {
        panic!("offline accepted prefix_v4 = 33");
    };
    let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["service[0].prefix_v4"]);

    // A duplicate is a mistake on any machine.
    let twice = DESIGN_EXAMPLE.replace("[\"lo\"]", "[\"xlbnosuch0\", \"xlbnosuch0\"]");
    let Err(ConfigError::Invalid { errors, .. }) =
        parse_with(Path::new(FILE), &twice, HostChecks::Skip)
    else {
        panic!("offline accepted a duplicate interface");
    };
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].message.contains("listed twice"), "{errors:#?}");
}

#[test]
fn errors_in_one_service_do_not_hide_another() {
    let text = format!(
        "{}[[service]]\nname = \"b\"\nvip = \"203.0.113.11\"\nport = 80\nprotocol = \"tcp\"\nbogus = 1\n",
        web("prefix_v6 = 200\n")
    );
    let keys: Vec<String> = errors_of(&text).into_iter().map(|e| e.key).collect();
    assert_eq!(keys, ["service[0].prefix_v6", "service[1].bogus"]);
}

#[test]
fn design_example_parses_with_defaults() {
    let c = parse_str(DESIGN_EXAMPLE).unwrap();
    assert_eq!(c.path, Path::new(FILE));
    assert_eq!(c.daemon, DaemonConfig::new(vec!["lo".into()]));
    assert_eq!(c.daemon.state_file, Path::new("/var/lib/xlb/state.json"));
    assert_eq!(c.services.len(), 1);
    let svc = &c.services[0];
    let mut spec = Service::new("web", "203.0.113.10".parse().unwrap(), 80, Protocol::Tcp);
    assert_eq!(svc.health, HealthCheck::tcp(80));
    assert_eq!(svc.backends, [Backend::new("192.0.2.11".parse().unwrap())]);
    spec.backends = svc.backends.clone();
    assert_eq!(*svc, spec);

    // The minimal form gets the same defaults.
    let c = parse_str(&web("[[service.backend]]\naddress = \"192.0.2.11\"\n")).unwrap();
    assert_eq!(c.services[0], spec);
    assert_eq!(
        c.services[0],
        parse_str(DESIGN_EXAMPLE).unwrap().services[0]
    );
    assert_eq!(c.services[0].forwarding, Forwarding::Dsr);

    // Non-defaults land where they belong.
    let c = parse_str(&web(
        "affinity = \"none\"\nprefix_v4 = 24\nprefix_v6 = 64\nidle_timeout = \"1h30m\"\n\
         failback = \"rebalance\"\ntable_size = 1009\nno_backend = \"pass\"\n",
    ))
    .unwrap();
    spec.affinity = Affinity::None;
    spec.prefix_v4 = 24;
    spec.prefix_v6 = 64;
    spec.idle_timeout = Duration::from_secs(5400);
    spec.failback = Failback::Rebalance;
    spec.table_size = 1009;
    spec.no_backend = NoBackend::Pass;
    spec.backends.clear();
    assert_eq!(c.services[0], spec);
}

/// Issue 13: tunnel mode is accepted with each supported kind (4in6 included), its
/// `tunnel_source` parsed, and the effective config (`check-config`) says both.
#[test]
fn tunnel_services_parse_and_print() {
    let c = parse_str(&web(
        "forwarding = \"tunnel\"\ntunnel_source = \"10.99.0.0/24\"\n\
         [[service.backend]]\naddress = \"198.51.100.11\"\n",
    ))
    .unwrap();
    let svc = &c.services[0];
    assert_eq!(svc.forwarding, Forwarding::Tunnel);
    assert_eq!(svc.tunnel_source, Some("10.99.0.0/24".parse().unwrap()));
    let shown = c.to_toml();
    assert!(shown.contains("forwarding = \"tunnel\""), "{shown}");
    assert!(
        shown.contains("tunnel_source = \"10.99.0.0/24\""),
        "{shown}"
    );
    assert_eq!(parse_str(&shown).unwrap().services, c.services);
    // 4in6 (IPv4 VIP, IPv6 backend) and IP6IP6 with an IPv6 tunnel_source.
    let mixed = web(
        "forwarding = \"tunnel\"\n[[service.backend]]\naddress = \"198.51.100.11\"\n\
         [[service.backend]]\naddress = \"2001:db8:2::11\"\n",
    );
    assert_eq!(parse_str(&mixed).unwrap().services[0].backends.len(), 2);
    let v6 = service(
        "name = \"v6\"\nvip = \"2001:db8::10\"\nport = 80\nprotocol = \"tcp\"\n\
         forwarding = \"tunnel\"\ntunnel_source = \"2001:db8:99::/64\"\n\
         [[service.backend]]\naddress = \"2001:db8:2::11\"\n",
    );
    assert!(parse_str(&v6).is_ok());
    // Without a tunnel_source the key is not printed (older readers of the JSON form).
    assert!(
        !parse_str(&mixed)
            .unwrap()
            .to_toml()
            .contains("tunnel_source")
    );
}

#[test]
fn announce_table() {
    let c = parse_str(&web("")).unwrap();
    assert_eq!(c.announce, Announce::None, "no table: nothing announced");
    let c = parse_str(&web("").replace("[[service]]", "[announce]\nkind = \"bird\"\n[[service]]"))
        .unwrap();
    assert_eq!(
        c.announce,
        Announce::Bird {
            socket: "/run/bird/bird.ctl".into()
        }
    );
    let c = parse_str(&web("").replace(
        "[[service]]",
        "[announce]\nkind = \"bird\"\nsocket = \"/run/b.ctl\"\n[[service]]",
    ))
    .unwrap();
    assert_eq!(
        c.announce,
        Announce::Bird {
            socket: "/run/b.ctl".into()
        }
    );
    let c = parse_str(&web("").replace("[[service]]", "[announce]\nkind = \"none\"\n[[service]]"))
        .unwrap();
    assert_eq!(c.announce, Announce::None);
    assert!(!c.to_toml().contains("[announce]"));
}

#[test]
fn valid_variants() {
    // Zero backends, a port-0 service beside a port-80 one on the same VIP, health
    // kinds, metrics disabled, generic mode.
    let text = r#"
[daemon]
interfaces = ["lo"]
xdp_mode = "generic"
metrics = ""
state_file = "/tmp/xlb-state.json"
socket_group = "root"

[[service]]
name = "all"
vip = "203.0.113.10"
port = 0
protocol = "tcp"
health = { kind = "http", port = 8080, expect = 204, host = "example.org", body = "ok" }

[[service]]
name = "web"
vip = "203.0.113.10"
port = 80
protocol = "tcp"

[[service]]
name = "dns"
vip = "2001:db8::53"
port = 53
protocol = "udp"
[service.health]
kind = "udp"
send = "ping"
expect = "pong"
[[service.backend]]
address = "2001:db8::1"
weight = 3

[[service]]
name = "web-udp"
vip = "203.0.113.10"
port = 80
protocol = "udp"
health = { kind = "none" }

[[service]]
name = "dns-plain"
vip = "203.0.113.11"
port = 53
protocol = "udp"
health = { kind = "udp", initial = "up" }
[[service.backend]]
address = "192.0.2.7"
draining = true
"#;
    let c = parse_str(text).unwrap();
    assert_eq!(c.daemon.xdp_mode, XdpMode::Generic);
    assert_eq!(c.daemon.metrics, None);
    assert_eq!(
        c.daemon.socket_group,
        Some(super::SocketGroup {
            name: "root".into(),
            gid: Some(0)
        })
    );
    assert_eq!(
        c.services[0].health.kind,
        HealthKind::Http {
            port: 8080,
            path: "/".into(),
            host: Some("example.org".into()),
            expect_status: (204, 204),
            body: Some("ok".into())
        }
    );
    assert!(c.services[1].backends.is_empty());
    assert_eq!(
        c.services[2].health.kind,
        HealthKind::Udp {
            port: 53,
            send: "ping".into(),
            expect: Some("pong".into())
        }
    );
    assert_eq!(c.services[3].health.kind, HealthKind::None);
    // Issue 10, fault 9: a UDP check without `send` sends an empty datagram.
    let plain = &c.services[4];
    assert_eq!(
        plain.health.kind,
        HealthKind::Udp {
            port: 53,
            send: String::new(),
            expect: None
        }
    );
    assert_eq!(plain.health.initial, crate::model::HealthInitial::Up);
    assert!(plain.backends[0].draining);
}

#[test]
fn to_toml_round_trips() {
    for text in [
        DESIGN_EXAMPLE.to_string(),
        web(""),
        web("health = { kind = \"http\", path = \"/healthz\", expect = \"200-299\" }\n").replace(
            "[\"lo\"]",
            "[\"lo\"]\nmetrics = \"\"\nxdp_mode = \"generic\"",
        ),
        web("").replace("[[service]]", "[announce]\nkind = \"bird\"\n\n[[service]]"),
        web("").replace(
            "[[service]]",
            "[announce]\nkind = \"command\"\nannounce = [\"/bin/a\", \"{prefix}\"]\nwithdraw = [\"/bin/w\", \"{vip}\"]\n[[service]]",
        ),
        service(
            "name = \"dns\"\nvip = \"2001:db8::53\"\nport = 0\nprotocol = \"udp\"\n\
             idle_timeout = \"1m30s\"\nhealth = { kind = \"udp\", port = 53, send = \"q\\\"\\n\" }\n\
             [[service.backend]]\naddress = \"2001:db8::1\"\nweight = 5\n",
        ),
    ] {
        let c = parse_str(&text).unwrap();
        let out = c.to_toml();
        let again = parse_str(&out).unwrap_or_else(|e| panic!("{e}\n{out}"));
        assert_eq!(again, c, "{out}");
        assert_eq!(again.to_toml(), out);
    }
}

#[test]
fn service_config_json_round_trips_and_is_checked() {
    let c = parse_str(DESIGN_EXAMPLE).unwrap();
    let json = serde_json::to_string(&c.services[0]).unwrap();
    let back: Service = serde_json::from_str(&json).unwrap();
    assert_eq!(back, c.services[0]);

    // Minimal JSON gets the defaults; bad values are named.
    let min: Service = serde_json::from_str(
        r#"{"name":"web","vip":"203.0.113.10","port":80,"protocol":"tcp","backend":[{"address":"192.0.2.11"}]}"#,
    )
    .unwrap();
    assert_eq!(min, c.services[0]);
    let err = serde_json::from_str::<Service>(
        r#"{"name":"web","vip":"203.0.113.10","port":80,"protocol":"tcp","prefix_v4":33}"#,
    )
    .unwrap_err();
    assert!(err.to_string().contains("prefix_v4"), "{err}");
}

#[test]
fn validate_service_directly() {
    let vip = "203.0.113.10".parse().unwrap();
    let mut svc = Service::new("web", vip, 80, Protocol::Tcp);
    svc.backends = (1..=3)
        .map(|i| Backend::new(IpAddr::from([192, 0, 2, i])))
        .collect();
    assert_eq!(validate_service(&svc, &[]), Ok(()));

    let fields = |svc: &Service, others: &[&Service]| -> Vec<String> {
        validate_service(svc, others)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect()
    };
    let mut bad = svc.clone();
    bad.prefix_v4 = 33;
    bad.table_size = 65536;
    bad.backends[2].weight = 0;
    bad.health.rise = 0;
    assert_eq!(
        fields(&bad, &[]),
        [
            "prefix_v4",
            "table_size",
            "backend[2].weight",
            "health.rise"
        ]
    );

    // Same name and listener as another service.
    assert_eq!(fields(&svc, &[&svc]), ["name", "port"]);
    // Other port or protocol: fine.
    let mut other = svc.clone();
    other.name = "web2".into();
    other.port = 0;
    assert_eq!(validate_service(&other, &[&svc]), Ok(()));
    other.port = 80;
    other.protocol = Protocol::Udp;
    assert_eq!(validate_service(&other, &[&svc]), Ok(()));

    let mut too_small = svc.clone();
    too_small.table_size = 307;
    assert_eq!(validate_service(&too_small, &[]), Ok(()));
    too_small
        .backends
        .push(Backend::new(IpAddr::from([192, 0, 2, 9])));
    let errors = validate_service(&too_small, &[]).unwrap_err();
    assert!(errors[0].message.contains("at least 400"), "{errors:?}");
    assert!(errors[0].message.contains("next prime: 401"), "{errors:?}");
}

#[test]
fn load_reads_files_and_names_them() {
    let dir = std::env::temp_dir().join(format!("xlb-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(&good, DESIGN_EXAMPLE).unwrap();
    assert_eq!(load(&good).unwrap().path, good);

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, web("prefix_v4 = 33\n")).unwrap();
    let shown = load(&bad).unwrap_err().to_string();
    assert_eq!(
        shown,
        format!(
            "{}:9:13: service[0].prefix_v4: 33 is out of range (0..=32)",
            bad.display()
        )
    );

    let missing = dir.join("missing.toml");
    let err = load(&missing).unwrap_err();
    assert!(matches!(err, ConfigError::Io { .. }));
    assert!(err.to_string().contains("missing.toml"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

// --- property tests: no panic on any input; a rejected input names its key ----------

mod props {
    use proptest::prelude::*;

    use super::*;

    /// Keys that may legitimately be named instead of the mutated one (a rule between
    /// two keys: the interval bounds the timeout; a port-0 service needs a check port).
    // A VIP of the other family than the backends is reported at the backend's address
    // ("backend A and VIP V differ in address family"), naming the VIP in the message.
    const RELATED: &[(&str, &str)] = &[
        ("interval", "timeout"),
        ("port", "health.port"),
        ("vip", "address"),
    ];

    fn toml_value() -> impl Strategy<Value = toml::Value> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(toml::Value::Integer),
            (-5i64..70_000).prop_map(toml::Value::Integer),
            any::<bool>().prop_map(toml::Value::Boolean),
            ".{0,12}".prop_map(toml::Value::String),
            prop::sample::select(vec![
                "tcp",
                "udp",
                "none",
                "http",
                "0s",
                "50ms",
                "10m",
                "1x",
                "10.0.0.1",
                "fe80::1",
                "2001:db8::9",
                "/abs/path",
                "200-399",
                "checked",
                "up",
                "dsr",
                "nat",
                "",
            ])
            .prop_map(|s| toml::Value::String(s.into())),
        ];
        leaf.prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(toml::Value::Array),
                prop::collection::btree_map("[a-z]{1,6}", inner, 0..3)
                    .prop_map(|m| toml::Value::Table(m.into_iter().collect())),
            ]
        })
    }

    /// (table the key lives in, key).
    fn key() -> impl Strategy<Value = (&'static str, &'static str)> {
        prop::sample::select(vec![
            ("service", "name"),
            ("service", "vip"),
            ("service", "port"),
            ("service", "protocol"),
            ("service", "forwarding"),
            ("service", "affinity"),
            ("service", "prefix_v4"),
            ("service", "prefix_v6"),
            ("service", "idle_timeout"),
            ("service", "failback"),
            ("service", "table_size"),
            ("service", "no_backend"),
            ("health", "kind"),
            ("health", "port"),
            ("health", "interval"),
            ("health", "timeout"),
            ("health", "rise"),
            ("health", "fall"),
            ("health", "initial"),
            ("health", "path"),
            ("health", "host"),
            ("health", "expect"),
            ("health", "body"),
            ("health", "send"),
            ("backend", "address"),
            ("backend", "weight"),
            ("backend", "draining"),
            ("daemon", "xdp_mode"),
            ("daemon", "pin_dir"),
            ("daemon", "socket"),
            ("daemon", "metrics"),
            ("daemon", "affinity_capacity"),
            ("daemon", "state_file"),
            ("daemon", "socket_group"),
            ("daemon", "icmp_echo"),
            ("daemon", "interfaces"),
            ("service", "colour"),
            ("health", "retries"),
            ("backend", "wieght"),
            ("daemon", "mode"),
        ])
    }

    /// A minimal valid config with `key = value` set in its table.
    fn config_with(table: &str, key: &str, value: &toml::Value) -> String {
        let kv = format!("{key} = {value}\n");
        let (daemon, svc, health, backend) = match table {
            "daemon" => (kv, String::new(), String::new(), String::new()),
            "service" => (String::new(), kv, String::new(), String::new()),
            "health" => (String::new(), String::new(), kv, String::new()),
            _ => (String::new(), String::new(), String::new(), kv),
        };
        let interfaces = if key == "interfaces" {
            ""
        } else {
            "interfaces = [\"lo\"]\n"
        };
        let base = |k: &str, v: &str| {
            if k == key && table == "service" {
                String::new()
            } else {
                format!("{k} = {v}\n")
            }
        };
        let backend = if table == "backend" && key == "address" {
            backend
        } else {
            format!("address = \"192.0.2.1\"\n{backend}")
        };
        format!(
            "[daemon]\n{interfaces}{daemon}\n[[service]]\n{}{}{}{}{svc}[service.health]\n{health}\n[[service.backend]]\n{backend}",
            base("name", "\"web\""),
            base("vip", "\"203.0.113.10\""),
            base("port", "80"),
            base("protocol", "\"tcp\""),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

        #[test]
        fn any_text_is_parsed_or_rejected_without_panic(text in ".{0,200}") {
            let _ = parse(Path::new(FILE), &text);
        }

        #[test]
        fn toml_like_lines_are_parsed_or_rejected_without_panic(
            lines in prop::collection::vec(
                prop_oneof![
                    Just("[daemon]".to_string()), Just("[[service]]".to_string()),
                    Just("[[service.backend]]".to_string()), Just("[service.health]".to_string()),
                    ("[a-z_]{1,12}", toml_value()).prop_map(|(k, v)| format!("{k} = {v}")),
                ],
                0..16,
            )
        ) {
            let _ = parse(Path::new(FILE), &lines.join("\n"));
        }

        /// Any value at any key: accepted, or rejected with an error naming that key.
        #[test]
        fn a_rejected_value_names_its_key((table, k) in key(), value in toml_value()) {
            let text = config_with(table, k, &value);
            if let Err(ConfigError::Invalid { errors, .. }) = parse(Path::new(FILE), &text) {
                let named = errors.iter().any(|e| {
                    let key = e.key.rsplit('.').next().unwrap_or("");
                    key.starts_with(k)
                        || e.key.ends_with(&format!(".{k}"))
                        || RELATED.iter().any(|(a, b)| *a == k && e.key.ends_with(b))
                });
                prop_assert!(named, "{} = {} rejected without naming it: {:#?}\n{}", k, value, errors, text);
            }
        }
    }
}
