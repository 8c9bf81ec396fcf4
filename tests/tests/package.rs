//! The Debian package on this machine (root; `cargo xtask test --tier package` builds the
//! package and a newer build of it, and passes them as XLB_DEB and XLB_DEB_NEWER).
//!
//! What an operator checks after `dpkg -i`: the binary runs, the example config is
//! judged like any config (its interface names do not exist here: exit 2 naming them;
//! `--offline`: exit 0), every man page renders, the completions are the binary's own,
//! the unit passes `systemd-analyze verify`. Then the life cycle with a daemon started by
//! hand from the installed binary, with exactly the unit's capabilities: an upgrade and a
//! restart move no pinned client; `dpkg -r` stops the daemon and the data plane keeps
//! answering, config kept; `dpkg -P` deletes config and state; `xlb down` from the build
//! tree removes the data plane. The machine is left as found: the package purged, also
//! when a step fails.

use std::{
    collections::BTreeMap,
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use xlb_tests::{
    lab::{Lab, LabOptions, VIP4, xlb_bin},
    require_root,
};

const BIN: &str = "/usr/bin/xlb";
const CONFIG: &str = "/etc/xlb/xlb.toml";
const STATE_DIR: &str = "/var/lib/xlb";
const UNIT: &str = "/lib/systemd/system/xlb.service";
const MAN_DIR: &str = "/usr/share/man/man1";

fn deb(var: &str) -> PathBuf {
    let p = PathBuf::from(std::env::var_os(var).unwrap_or_else(|| {
        panic!("{var} is not set: run this tier with `cargo xtask test --tier package`")
    }));
    assert!(p.is_file(), "{var}: {} does not exist", p.display());
    p
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `dpkg ARGS`, which must succeed; returns its output and how long it took.
fn dpkg(args: &[&str]) -> (String, Duration) {
    let started = Instant::now();
    let out = Command::new("dpkg")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .expect("running dpkg");
    let took = started.elapsed();
    let shown = text(&out);
    assert!(out.status.success(), "dpkg {args:?} failed:\n{shown}");
    eprintln!("dpkg {args:?} took {:.1} s", took.as_secs_f64());
    (shown, took)
}

fn installed_version() -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status} ${Version}", "xlb"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.strip_prefix("install ok installed ").map(str::to_string)
}

/// The machine as the tests found it: no xlb package, no config or state of one. Taken
/// before anything is installed; on drop (also after a failed step) purges the package,
/// so the machine is left as found.
struct Machine;

impl Machine {
    fn as_found() -> Self {
        require_root();
        let status = Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", "xlb"])
            .stderr(Stdio::null())
            .output()
            .expect("dpkg-query");
        let status = String::from_utf8_lossy(&status.stdout).into_owned();
        assert!(
            status.is_empty() || status.ends_with("not-installed"),
            "an xlb package is on this machine ({status}); these tests install, remove and \
             purge it: remove it first (`dpkg -P xlb`)"
        );
        for p in ["/etc/xlb", STATE_DIR] {
            assert!(
                !Path::new(p).exists(),
                "{p} exists: the package tests would delete it on purge; move it away first"
            );
        }
        Machine
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = Command::new("dpkg")
            .args(["--purge", "xlb"])
            .stdin(Stdio::null())
            .output();
    }
}

/// `xlb ARGS` as installed; (exit code, stdout, stderr).
fn xlb(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running the installed xlb");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The interfaces the installed example config names (read with xlb's own parser; what
/// is under test is the installed binary's verdict on them).
fn example_interfaces() -> Vec<String> {
    xlb::config::load_with(Path::new(CONFIG), xlb::config::HostChecks::Skip)
        .expect("the example parses offline")
        .daemon
        .interfaces
}

fn interface_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Install, then everything an operator checks without a daemon; purge.
#[test]
fn installed_package_contents() {
    let _machine = Machine::as_found();
    let deb = deb("XLB_DEB");
    dpkg(&["-i", deb.to_str().expect("utf-8")]);
    let version = installed_version().expect("installed");

    let (code, out, _) = xlb(&["--version"]);
    assert_eq!((code, out.trim()), (0, format!("xlb {version}").as_str()));

    // The example is valid but for its interfaces, which this host does not have.
    let missing: Vec<String> = example_interfaces()
        .into_iter()
        .filter(|i| !interface_exists(i))
        .collect();
    assert!(
        !missing.is_empty(),
        "the example's interfaces all exist here"
    );
    let (code, _, err) = xlb(&["check-config", CONFIG]);
    assert_eq!(code, 2, "{err}");
    for name in &missing {
        assert!(
            err.contains(&format!("interface \"{name}\" does not exist on this host")),
            "{name} not named:\n{err}"
        );
    }
    assert_eq!(
        err.lines().count(),
        missing.len(),
        "only the interfaces:\n{err}"
    );
    let (code, out, err) = xlb(&["check-config", "--offline", CONFIG]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("[[service]]") && err.contains("host checks skipped"));

    // The example's pointer to the key reference leads somewhere that has it.
    let example = fs::read_to_string(CONFIG).expect("example");
    let readme = "/usr/share/doc/xlb/README.md";
    assert!(example.contains(readme), "the example names {readme}");
    let text = fs::read_to_string(readme).expect("the README is installed");
    assert!(text.contains("idle_timeout") && text.contains("affinity_capacity"));

    man_pages_render();
    completions_are_the_binarys();
    unit_verifies();
    dpkg(&["--purge", "xlb"]);
    assert!(!Path::new(BIN).exists() && !Path::new("/etc/xlb").exists());
}

/// One page per command of the CLI, each rendering without a warning.
fn man_pages_render() {
    let names = xlb::docs::page_names();
    let installed = fs::read_dir(MAN_DIR)
        .expect("man dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n == "xlb.1.gz" || n.starts_with("xlb-"))
        .count();
    assert_eq!(installed, names.len(), "pages installed vs commands");
    for name in names {
        let page = format!("{MAN_DIR}/{name}.1.gz");
        let out = Command::new("man")
            .args(["--warnings", "-l", &page])
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100")
            .output()
            .expect("man");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "man -l {page}: {stderr}");
        assert!(stderr.trim().is_empty(), "man -l {page} warns: {stderr}");
        assert!(
            stdout.contains("NAME") && stdout.contains("SYNOPSIS") && stdout.contains(&name),
            "{page}:\n{stdout}"
        );
    }
}

/// The installed completion scripts are what `xlb completions SHELL` prints, and the
/// bash one is valid bash.
fn completions_are_the_binarys() {
    for (shell, path) in [
        ("bash", "/usr/share/bash-completion/completions/xlb"),
        ("zsh", "/usr/share/zsh/vendor-completions/_xlb"),
        ("fish", "/usr/share/fish/vendor_completions.d/xlb.fish"),
    ] {
        let (code, printed, err) = xlb(&["completions", shell]);
        assert_eq!(code, 0, "{err}");
        let file = fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(file, printed, "{path}");
    }
    let ok = Command::new("bash")
        .args(["-n", "/usr/share/bash-completion/completions/xlb"])
        .status()
        .expect("bash");
    assert!(ok.success(), "bash -n on the completion script");
}

/// `systemd-analyze verify` accepts the unit (it checks the binary and the man pages
/// named in Documentation= exist), and the unit keeps what the data plane relies on.
fn unit_verifies() {
    let out = Command::new("systemd-analyze")
        .args(["verify", UNIT])
        .output()
        .expect("systemd-analyze");
    let shown = text(&out);
    assert!(out.status.success(), "systemd-analyze verify:\n{shown}");
    assert!(
        shown.trim().is_empty(),
        "systemd-analyze verify warns:\n{shown}"
    );
    let unit = fs::read_to_string(UNIT).expect("unit");
    for line in [
        "ExecStart=/usr/bin/xlb run --config /etc/xlb/xlb.toml",
        "KillMode=process",
        "RuntimeDirectory=xlb",
        "StateDirectory=xlb",
        "ReadWritePaths=/sys/fs/bpf",
    ] {
        assert!(unit.lines().any(|l| l == line), "{UNIT} lacks {line}");
    }
}

/// The capabilities of the unit: `CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN …` →
/// `["bpf", "net_admin", …]`.
fn unit_capabilities() -> Vec<String> {
    let unit = fs::read_to_string(UNIT).expect("unit");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet=");
    line.split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect()
}

/// `setpriv` keeping only `caps` (bounding and inheritable sets; as root, that is what
/// the process gets, as under the unit's CapabilityBoundingSet=).
fn setpriv(caps: &[String]) -> Vec<String> {
    let list: String = caps.iter().map(|c| format!(",+{c}")).collect();
    vec![
        "setpriv".into(),
        format!("--inh-caps=-all{list}"),
        format!("--bounding-set=-all{list}"),
        "--".into(),
    ]
}

/// Bits of `CapEff:` in /proc/PID/status.
fn effective_caps(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .expect("CapEff");
    u64::from_str_radix(hex.trim(), 16).expect("hex")
}

fn cap_bit(name: &str) -> u64 {
    let n = match name {
        "net_admin" => 12,
        "sys_admin" => 21,
        "perfmon" => 38,
        "bpf" => 39,
        other => panic!("unexpected capability {other}"),
    };
    1 << n
}

/// Starts `xlb run` with `caps` only and expects it to fail at once (not `Operation not
/// permitted`-free success), with nothing left pinned.
fn start_fails_without(lab: &Lab, caps: &[String], left_out: &str) {
    let mut cmd = lab.lb.cmd("setpriv");
    cmd.args(&setpriv(caps)[1..])
        .arg(BIN)
        .args(["run", "--config"])
        .arg(&lab.config)
        .stdin(Stdio::null());
    // A file, not a pipe: the verifier's log can fill a pipe nobody reads yet.
    let log_path = lab.dir.join(format!("without-{left_out}.log"));
    let log = fs::File::create(&log_path).expect("log");
    cmd.stdout(log.try_clone().expect("log")).stderr(log);
    let mut child = cmd.spawn().expect("setpriv");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the daemon runs without CAP_{}", left_out.to_uppercase());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let err = fs::read_to_string(&log_path).expect("log");
    assert!(
        err.contains("not permitted") || err.contains("Permission denied"),
        "without CAP_{}: {err}",
        left_out.to_uppercase()
    );
    assert!(
        lab.attached_prog_id().is_none(),
        "a failed start left XDP attached"
    );
}

/// Which backend answers each client (UDP), all of them answered.
fn answers(lab: &Lab) -> BTreeMap<IpAddr, String> {
    lab.answers(&lab.clients4, IpAddr::V4(VIP4), true)
}

/// The affinity entries as `xlb affinity list` shows them: (service, client, backend).
fn pins(lab: &Lab) -> Vec<(String, String, String)> {
    let list = lab.xlb_json(&["affinity", "list", "--limit", "100000"]);
    let mut out: Vec<(String, String, String)> = list["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (s("service"), s("client"), s("backend"))
        })
        .collect();
    out.sort();
    out
}

/// Writes the lab's config as the package's /etc/xlb/xlb.toml (as an operator edits the
/// conffile), with the package's state file, and points the lab at it.
fn use_package_config(lab: &mut Lab) {
    let text = fs::read_to_string(&lab.config).expect("lab config");
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("state_file") {
                format!("state_file = \"{STATE_DIR}/state.json\"\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    fs::write(CONFIG, &text).expect("write /etc/xlb/xlb.toml");
    lab.config = PathBuf::from(CONFIG);
}

#[test]
fn upgrade_remove_purge_keep_the_data_plane() {
    let _machine = Machine::as_found();
    let (deb, newer) = (deb("XLB_DEB"), deb("XLB_DEB_NEWER"));
    dpkg(&["-i", deb.to_str().expect("utf-8")]);

    let mut lab = Lab::new(LabOptions {
        backends: 3,
        clients_v4: 60,
        clients_v6: 2,
    });
    lab.xlb = PathBuf::from(BIN);
    use_package_config(&mut lab);
    let caps = unit_capabilities();
    for left_out in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != left_out).cloned().collect();
        start_fails_without(&lab, &fewer, left_out);
    }
    lab.daemon_wrapper = setpriv(&caps);
    lab.start_servers();
    lab.start_daemon();
    let pid = lab.daemon.as_ref().expect("daemon").child.id();
    let expected = caps.iter().map(|c| cap_bit(c)).fold(0, |a, b| a | b);
    assert_eq!(effective_caps(pid), expected, "the daemon's capabilities");

    // A runtime change, so that the state file exists.
    let be0 = lab.backends[0].addr4.to_string();
    lab.xlb(&["backend", "weight", "dns4", &be0, "2"]);
    assert!(Path::new(STATE_DIR).join("state.json").is_file());
    let before = answers(&lab);
    let pinned = pins(&lab);
    assert_eq!(pinned.len(), lab.clients4.len(), "{pinned:?}");

    // Upgrade: the running daemon is not touched; a restart from the new binary adopts
    // the data plane and moves nobody.
    let (out, _) = dpkg(&["-i", newer.to_str().expect("utf-8")]);
    assert!(installed_version().is_some_and(|v| v.ends_with("+test1")));
    assert!(
        out.contains(&format!(
            "started by hand (pid {pid}) still runs the previous version"
        )),
        "{out}"
    );
    assert!(
        lab.daemon.as_mut().expect("daemon").alive(),
        "upgrade stopped the daemon"
    );
    lab.stop_daemon();
    lab.start_daemon();
    assert_eq!(
        answers(&lab),
        before,
        "clients moved across upgrade and restart"
    );
    assert_eq!(pins(&lab), pinned, "affinity entries changed");

    // Remove: prerm signals the lock holder; the data plane keeps answering. The daemon
    // is this test's child: reap it as it exits, as its parent would (a zombie would
    // still look alive to prerm's wait).
    let mut daemon = lab.daemon.take().expect("daemon");
    let pid = daemon.child.id();
    let reaper = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = daemon.child.try_wait().expect("wait") {
                return Some((status, Instant::now()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon.kill(); // never leave it running, whatever dpkg did
        None
    });
    let (out, _) = dpkg(&["-r", "xlb"]);
    let dpkg_done = Instant::now();
    let exit = reaper.join().expect("reaper");
    assert!(
        out.contains(&format!("stopping the xlb daemon (pid {pid})")),
        "{out}"
    );
    assert!(!out.contains("did not exit"), "{out}");
    let (status, exited) = exit.expect("dpkg -r left the daemon running");
    assert!(exited <= dpkg_done, "the daemon outlived dpkg -r");
    assert!(status.success(), "the daemon's exit on SIGTERM: {status}");
    assert!(!Path::new(BIN).exists());
    assert!(Path::new(CONFIG).is_file(), "dpkg -r removed the config");
    assert!(Path::new(STATE_DIR).join("state.json").is_file());
    assert!(lab.attached_prog_id().is_some(), "dpkg -r detached XDP");
    assert_eq!(answers(&lab), before, "clients moved after dpkg -r");

    // Purge: config and state go; the data plane is still not touched.
    dpkg(&["--purge", "xlb"]);
    assert!(!Path::new("/etc/xlb").exists(), "purge kept /etc/xlb");
    assert!(!Path::new(STATE_DIR).exists(), "purge kept {STATE_DIR}");
    assert_eq!(answers(&lab), before, "clients moved after dpkg -P");

    // Only `xlb down` removes the data plane.
    let out = Command::new(xlb_bin())
        .args(["down", "--pin-dir"])
        .arg(&lab.pin_dir)
        .output()
        .expect("xlb down");
    assert!(out.status.success(), "xlb down: {}", text(&out));
    assert!(
        lab.attached_prog_id().is_none(),
        "xlb down left XDP attached"
    );
    assert!(!lab.pin_dir.exists());
}
