//! The daemon and its CLI: affinity and balance, maps following CLI changes, bad
//! arguments, SIGKILL and restart, `down`.

use std::{collections::BTreeMap, net::IpAddr};

use xlb_tests::lab::{Lab, LabOptions, VIP4, VIP6};

/// Per client: the backends that answered it over `rounds` rounds.
pub fn affinity_rounds(
    lab: &Lab,
    clients: &[IpAddr],
    vip: IpAddr,
    udp: bool,
    rounds: usize,
) -> BTreeMap<IpAddr, Vec<String>> {
    let mut seen: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
    for _ in 0..rounds {
        for (c, r) in lab.round(clients, vip, udp) {
            let b = r.unwrap_or_else(|e| panic!("client {c} → {vip}: {e}\n{}", lab.daemon_log()));
            seen.entry(c).or_default().push(b);
        }
    }
    seen
}

#[test]
fn affinity_and_balance_v4_v6_tcp_udp() {
    let mut lab = Lab::new(LabOptions::default());
    lab.start_servers();
    lab.start_daemon();
    for (vip, clients, udp) in [
        (IpAddr::V4(VIP4), lab.clients4.clone(), false),
        (IpAddr::V4(VIP4), lab.clients4.clone(), true),
        (IpAddr::V6(VIP6), lab.clients6.clone(), false),
        (IpAddr::V6(VIP6), lab.clients6.clone(), true),
    ] {
        let seen = affinity_rounds(&lab, &clients, vip, udp, 3);
        let mut per_backend: BTreeMap<String, usize> = BTreeMap::new();
        for (c, answers) in &seen {
            assert!(
                answers.iter().all(|a| *a == answers[0]),
                "client {c} reached several backends: {answers:?}"
            );
            *per_backend.entry(answers[0].clone()).or_default() += 1;
        }
        let n = clients.len() as f64;
        println!("{vip} {}: {per_backend:?}", if udp { "udp" } else { "tcp" });
        assert_eq!(
            per_backend.len(),
            3,
            "not every backend got clients: {per_backend:?}"
        );
        for (b, k) in &per_backend {
            let share = *k as f64 / n;
            assert!(
                (share - 1.0 / 3.0).abs() <= 0.10,
                "backend {b} got {:.1}% of the clients, not 33% ± 10",
                share * 100.0
            );
        }
    }
}

/// Status of one backend of one service, from `xlb --json status`.
pub fn backend_status(lab: &Lab, service: &str, addr: &str) -> Option<serde_json::Value> {
    let s = lab.xlb_json(&["status"]);
    s["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|x| x["name"] == service)
        .and_then(|svc| {
            svc["backends"]
                .as_array()
                .expect("backends")
                .iter()
                .find(|b| b["address"] == addr)
                .cloned()
        })
}

#[test]
fn cli_changes_reach_the_maps_and_bad_arguments_change_nothing() {
    let mut lab = Lab::new(LabOptions {
        clients_v4: 10,
        clients_v6: 10,
        ..LabOptions::default()
    });
    lab.start_servers();
    lab.start_daemon();
    let web4 = (IpAddr::V4(VIP4), 80u16, 6u8);
    let share = |lab: &Lab, addr: &str| -> f64 {
        lab.pinned_tables()[&web4]
            .get(&addr.parse::<IpAddr>().expect("addr"))
            .copied()
            .unwrap_or(0.0)
    };
    for b in ["10.100.0.11", "10.100.0.12", "10.100.0.13"] {
        assert!(
            (share(&lab, b) - 1.0 / 3.0).abs() < 0.01,
            "{b}: {}",
            share(&lab, b)
        );
    }

    // Drain: out of the table, flag set, status says so.
    lab.xlb(&["backend", "drain", "web4", "10.100.0.11"]);
    assert_eq!(
        share(&lab, "10.100.0.11"),
        0.0,
        "drained backend still in the table"
    );
    assert!((share(&lab, "10.100.0.12") - 0.5).abs() < 0.01);
    let st = backend_status(&lab, "web4", "10.100.0.11").expect("listed");
    assert_eq!(st["draining"], true);
    assert_eq!(st["table_share"], 0.0);
    lab.xlb(&["backend", "undrain", "web4", "10.100.0.11"]);
    assert!((share(&lab, "10.100.0.11") - 1.0 / 3.0).abs() < 0.01);

    // Remove, then add back with weight 2.
    lab.xlb(&["backend", "remove", "web4", "10.100.0.13"]);
    assert_eq!(share(&lab, "10.100.0.13"), 0.0);
    assert!(backend_status(&lab, "web4", "10.100.0.13").is_none());
    lab.xlb(&["backend", "add", "web4", "10.100.0.13", "--weight", "2"]);
    assert!(
        (share(&lab, "10.100.0.13") - 0.5).abs() < 0.01,
        "weight 2 of 4"
    );
    let ok = lab.http(lab.clients4[0], IpAddr::V4(VIP4));
    assert!(ok.is_ok(), "traffic after the changes: {ok:?}");

    // Bad arguments: exit 2, a message naming what is wrong, nothing changed.
    let before = lab.pinned_tables();
    let status_before = lab.xlb_json(&["status"]);
    for (args, needle) in [
        (vec!["backend", "add", "nosuch", "10.100.0.14"], "nosuch"),
        (vec!["backend", "add", "web4", "not-an-ip"], "not-an-ip"),
        (
            vec!["backend", "add", "web4", "10.100.0.14", "--weight", "0"],
            "weight",
        ),
        (vec!["backend", "add", "web4", "fd00:100::14"], "family"),
        (vec!["backend", "add", "web4", "10.100.0.12"], "10.100.0.12"),
        (
            vec!["backend", "remove", "web4", "10.100.0.99"],
            "10.100.0.99",
        ),
        (vec!["backend", "drain", "web9", "10.100.0.11"], "web9"),
        (vec!["explain", "web4", "fd00::1"], "family"),
        (
            vec!["service", "add", "x", "--vip", "10.200.0.1", "--port", "80"],
            "10.200.0.1",
        ),
        (
            vec![
                "service",
                "add",
                "y",
                "--vip",
                "10.200.0.2",
                "--port",
                "80",
                "--table-size",
                "1000",
            ],
            "table-size",
        ),
        (vec!["service", "remove", "nosuch"], "nosuch"),
        (vec!["affinity", "flush", "nosuch"], "nosuch"),
    ] {
        match lab.try_xlb(&args) {
            Ok(out) => panic!("xlb {args:?} succeeded: {out}"),
            Err((code, err)) => {
                assert_eq!(code, 2, "xlb {args:?}: exit {code}, want 2: {err}");
                assert!(
                    err.to_lowercase().contains(&needle.to_lowercase()),
                    "xlb {args:?}: message does not name {needle:?}: {err}"
                );
            }
        }
    }
    assert_eq!(
        lab.pinned_tables(),
        before,
        "a rejected command changed the maps"
    );
    // The configuration part of status is unchanged (check timings and the load figures
    // of the last seconds move on their own).
    let config_view = |v: &serde_json::Value| -> serde_json::Value {
        let mut v = v["services"].clone();
        for svc in v.as_array_mut().expect("services") {
            let svc = svc.as_object_mut().expect("service");
            for k in ["load_imbalance", "heavy_source"] {
                svc.remove(k);
            }
            for b in svc["backends"].as_array_mut().expect("backends") {
                let b = b.as_object_mut().expect("backend");
                for k in ["last_check_ms", "load_share", "weight_share", "over_bound"] {
                    b.remove(k);
                }
            }
        }
        v
    };
    assert_eq!(
        config_view(&lab.xlb_json(&["status"])),
        config_view(&status_before)
    );

    // A service added at runtime works end to end.
    lab.xlb(&[
        "service",
        "add",
        "web4b",
        "--vip",
        "10.200.0.2",
        "--port",
        "80",
        "--protocol",
        "tcp",
        "--backend",
        "10.100.0.11",
        "--backend",
        "10.100.0.12",
    ]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let got = loop {
        match lab.http(lab.clients4[1], xlb_tests::lab::Lab::vip4(2)) {
            Ok(b) => break b,
            Err(e) if std::time::Instant::now() > deadline => panic!("runtime service: {e}"),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    };
    assert!(
        got == "be0" || got == "be1",
        "runtime service answered by {got}"
    );
}

#[test]
fn sigkill_and_restart_move_nobody_and_keep_runtime_changes() {
    let mut lab = Lab::new(LabOptions {
        clients_v6: 50,
        ..LabOptions::default()
    });
    lab.start_servers();
    lab.start_daemon();
    let vip = IpAddr::V4(VIP4);
    let clients = lab.clients4.clone();
    let first = lab.answers(&clients, vip, false);
    // A runtime change that must survive: drain be1 for new clients of web4.
    lab.xlb(&["backend", "drain", "web4", "10.100.0.12"]);
    let pins_before = lab.pinned_affinity();
    assert!(
        pins_before.len() >= clients.len(),
        "{} pins",
        pins_before.len()
    );
    let prog = lab.attached_prog_id().expect("xlb attached");

    lab.kill_daemon();
    assert_eq!(
        lab.attached_prog_id(),
        Some(prog),
        "SIGKILL detached the program"
    );
    // Traffic keeps flowing, to the same backends, with nobody to run the control plane.
    for (c, r) in lab.round(&clients, vip, false) {
        assert_eq!(
            r.as_ref().ok(),
            first.get(&c),
            "client {c} moved while the daemon was dead"
        );
    }
    let pins_dead = lab.pinned_affinity();
    for (k, v) in &pins_before {
        let after = pins_dead.iter().find(|(k2, _)| k2 == k).map(|(_, v)| v);
        assert_eq!(
            after.map(|a| (a.backend_id, a.backend_gen)),
            Some((v.backend_id, v.backend_gen))
        );
    }

    lab.start_daemon();
    let new_prog = lab.attached_prog_id().expect("still attached");
    assert_ne!(
        new_prog, prog,
        "the restarted daemon did not replace the program"
    );
    for (c, r) in lab.round(&clients, vip, false) {
        assert_eq!(
            r.as_ref().ok(),
            first.get(&c),
            "client {c} moved across the restart"
        );
    }
    let pins_after = lab.pinned_affinity();
    for (k, v) in &pins_before {
        let after = pins_after.iter().find(|(k2, _)| k2 == k).map(|(_, v)| v);
        assert_eq!(
            after.map(|a| (a.backend_id, a.backend_gen)),
            Some((v.backend_id, v.backend_gen)),
            "an affinity entry changed across the restart"
        );
    }
    let st = backend_status(&lab, "web4", "10.100.0.12").expect("listed");
    assert_eq!(
        st["draining"], true,
        "the runtime drain was lost across the restart"
    );
    assert!(lab.daemon_log().contains("adopted pinned state"));
}

#[test]
fn socket_is_private_and_down_removes_program_and_state() {
    use std::os::unix::fs::PermissionsExt as _;
    let mut lab = Lab::new(LabOptions {
        backends: 1,
        clients_v4: 1,
        clients_v6: 1,
    });
    lab.start_servers();
    lab.start_daemon();
    let mode = std::fs::metadata(&lab.socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "control socket mode {:o}",
        mode & 0o777
    );
    assert!(lab.attached_prog_id().is_some());

    // With the daemon running, `down` refuses (the daemon would recreate the state).
    let cfg = lab.config.to_str().expect("utf-8").to_string();
    let (code, err) = lab
        .try_xlb(&["down", "--config", &cfg])
        .expect_err("down must refuse");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("running"), "{err}");

    lab.stop_daemon();
    assert!(
        lab.attached_prog_id().is_some(),
        "SIGTERM must leave the data plane running"
    );
    let (code, err) = lab.try_xlb(&["status"]).expect_err("no daemon");
    assert_eq!(code, 1);
    assert!(
        err.contains("not running") && err.contains("xlb run"),
        "{err}"
    );

    let out = lab.xlb(&["down", "--config", &cfg]);
    assert!(out.contains("detached xlb from eth0"), "{out}");
    assert_eq!(
        lab.attached_prog_id(),
        None,
        "program still attached after down"
    );
    assert!(
        !lab.pin_dir.exists(),
        "pinned state left under {}",
        lab.pin_dir.display()
    );
    let out = lab.xlb(&["down", "--config", &cfg]);
    assert!(out.contains("nothing pinned"), "{out}");
}

#[test]
fn start_up_errors_are_clear_and_leave_nothing_behind() {
    use std::process::Command;
    use xlb_tests::lab::{Netns, xlb_bin};
    xlb_tests::require_root();
    let ns = Netns::new(format!("xlbst{}", std::process::id() % 100_000));
    let dir = std::env::temp_dir().join(format!("xlb-startup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let pin_dir = format!("/sys/fs/bpf/xlb-startup-{}", std::process::id());
    let write = |mode: &str, extra: &str| {
        let cfg = dir.join("xlb.toml");
        std::fs::write(
            &cfg,
            format!(
                "[daemon]\ninterfaces = [\"lo\"]\nxdp_mode = \"{mode}\"\npin_dir = \"{pin_dir}\"\nsocket = \"{}\"\nmetrics = \"\"\nstate_file = \"{}\"\naffinity_capacity = 4096\n{extra}",
                dir.join("xlb.sock").display(),
                dir.join("state.json").display()
            ),
        )
        .expect("write config");
        cfg
    };
    let run = |cfg: &std::path::Path| -> (i32, String) {
        let out = ns
            .cmd(xlb_bin())
            .args(["run", "--config"])
            .arg(cfg)
            .output()
            .expect("xlb run");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // lo has no native XDP: the error says so and names the setting; nothing is left.
    let (code, err) = run(&write("native", ""));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("native") && err.contains("xdp_mode = \"generic\""),
        "{err}"
    );
    assert!(
        !std::path::Path::new(&pin_dir).join("maps").exists(),
        "maps left behind: {err}"
    );

    // A config error: exit 2, file:line: key, nothing created.
    let cfg = write(
        "native",
        "[[service]]\nname = \"web\"\nvip = \"10.0.0.1\"\nport = 80\nprotocol = \"tcp\"\nprefix_v4 = 33\n",
    );
    let (code, err) = run(&cfg);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("xlb.toml:14") && err.contains("prefix_v4"),
        "{err}"
    );
    assert!(!std::path::Path::new(&pin_dir).exists());
    let out = Command::new(xlb_bin())
        .args(["check-config"])
        .arg(&cfg)
        .output()
        .expect("check-config");
    assert_eq!(out.status.code(), Some(2));

    // Generic mode works on the same interface.
    let cfg = write("generic", "");
    let mut child = ns
        .cmd(xlb_bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("xlb run");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !dir.join("xlb.sock").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "generic mode did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    let out = Command::new(xlb_bin())
        .args(["down", "--pin-dir", &pin_dir])
        .output()
        .expect("down");
    let removed = format!("removed {} pinned maps", lb_common::maps::MAPS.len());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&removed));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A daemon on `lo` (generic XDP) in its own network namespace, for tests of start-up
/// and lifecycle rules that need no lab.
struct LoDaemon {
    ns: xlb_tests::lab::Netns,
    dir: std::path::PathBuf,
}

impl LoDaemon {
    fn new(tag: &str) -> Self {
        xlb_tests::require_root();
        let id = std::process::id() % 100_000;
        let ns = xlb_tests::lab::Netns::new(format!("xlb{tag}{id}"));
        let dir = std::env::temp_dir().join(format!("xlb-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        Self { ns, dir }
    }

    /// Writes config `name` with this pin_dir and state file, one service without backends.
    fn config(
        &self,
        name: &str,
        pin_dir: &str,
        state_file: &std::path::Path,
    ) -> std::path::PathBuf {
        let cfg = self.dir.join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[daemon]\ninterfaces = [\"lo\"]\nxdp_mode = \"generic\"\npin_dir = \"{pin_dir}\"\n\
                 socket = \"{}\"\nmetrics = \"\"\nstate_file = \"{}\"\naffinity_capacity = 4096\n\n\
                 [[service]]\nname = \"web\"\nvip = \"10.0.0.1\"\nport = 80\nprotocol = \"tcp\"\n\
                 health = {{ kind = \"none\" }}\n",
                self.socket(name).display(),
                state_file.display()
            ),
        )
        .expect("write config");
        cfg
    }

    fn socket(&self, name: &str) -> std::path::PathBuf {
        self.dir.join(format!("{name}.sock"))
    }

    fn xlb(&self, args: &[&str]) -> std::process::Output {
        self.ns
            .cmd(xlb_tests::lab::xlb_bin())
            .args(args)
            .output()
            .expect("xlb")
    }

    /// `xlb run`, until its socket answers; the log goes to NAME.log.
    fn start(&self, name: &str, cfg: &std::path::Path) -> std::process::Child {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).expect("log");
        let child = self
            .ns
            .cmd(xlb_tests::lab::xlb_bin())
            .args(["run", "--config"])
            .arg(cfg)
            .stderr(log)
            .spawn()
            .expect("xlb run");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self
            .xlb(&["--socket", self.socket(name).to_str().unwrap(), "status"])
            .status
            .code()
            != Some(0)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{name} did not start: {}",
                self.log(name)
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        child
    }

    fn stop(&self, mut child: std::process::Child) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let _ = child.wait();
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    fn services(&self, name: &str) -> Vec<String> {
        let out = self.xlb(&[
            "--socket",
            self.socket(name).to_str().unwrap(),
            "--json",
            "status",
        ]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
        v["services"]
            .as_array()
            .expect("services")
            .iter()
            .map(|s| s["name"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

impl Drop for LoDaemon {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Issue 10, fault 10: runtime changes belong to the deployment (pin_dir) that made
/// them. Another deployment pointed at the same state file refuses to start (naming the
/// setting) and leaves the file alone; a start that applies saved changes says how many
/// and from where; `xlb down` moves the file aside and the next start begins from the
/// config.
#[test]
fn state_file_belongs_to_its_deployment() {
    let t = LoDaemon::new("sf");
    let id = std::process::id();
    let (pin_a, pin_b) = (
        format!("/sys/fs/bpf/xlb-sf-a-{id}"),
        format!("/sys/fs/bpf/xlb-sf-b-{id}"),
    );
    let state = t.dir.join("state.json");
    let cfg_a = t.config("a", &pin_a, &state);
    let cfg_b = t.config("b", &pin_b, &state);

    let a = t.start("a", &cfg_a);
    let sock_a = t.socket("a");
    let out = t.xlb(&[
        "--socket",
        sock_a.to_str().unwrap(),
        "service",
        "remove",
        "web",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.stop(a);
    let saved = std::fs::read_to_string(&state).expect("state file written");
    assert!(saved.contains(&pin_a), "{saved}");

    // Deployment B: refuses, says why and what to set, touches nothing.
    let out = t.xlb(&["run", "--config", cfg_b.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&pin_a) && err.contains(&pin_b) && err.contains("daemon.state_file"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&state).unwrap(), saved);
    assert!(!std::path::Path::new(&pin_b).join("maps").exists());

    // Deployment A again: applies its change and says so.
    let a = t.start("a", &cfg_a);
    assert!(
        t.log("a").contains(&format!(
            "applied 1 of 1 saved runtime changes from {}",
            state.display()
        )),
        "{}",
        t.log("a")
    );
    assert!(t.services("a").is_empty(), "the runtime removal was lost");
    t.stop(a);

    // `down` moves the changes aside; the next start is the config alone.
    let out = t.xlb(&["down", "--config", cfg_a.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("state.json.bak"),
        "{said}"
    );
    assert!(!state.exists() && t.dir.join("state.json.bak").exists());
    let a = t.start("a", &cfg_a);
    assert_eq!(t.services("a"), ["web"]);
    assert!(
        !t.log("a").contains("saved runtime changes"),
        "{}",
        t.log("a")
    );
    t.stop(a);
    let _ = t.xlb(&["down", "--config", cfg_a.to_str().unwrap()]);
}
