//! The data plane's life cycle with the real daemon: adoption of pinned state that lacks a
//! map, holds an unknown one or had another capacity; one daemon per pin_dir; a re-created
//! interface; identity reuse across a restart; short idle timeouts (issues 9 and 10).

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use lb_common::{AffinityKey, AffinityValue};
use xlb_tests::lab::{Lab, LabOptions, VIP4, service_block, xlb_bin};

const NO_HEALTH: &str = "health = { kind = \"none\" }\n";

/// Every affinity entry of `before` is in `after` with the same backend id and
/// generation; returns how many moved (must be 0).
fn moved_pins(
    before: &[(AffinityKey, AffinityValue)],
    after: &[(AffinityKey, AffinityValue)],
) -> usize {
    let after: BTreeMap<_, _> = after
        .iter()
        .map(|(k, v)| ((k.service_id, k.addr, k.port_be, k.family), *v))
        .collect();
    before
        .iter()
        .filter(|(k, v)| {
            after
                .get(&(k.service_id, k.addr, k.port_be, k.family))
                .map(|a| (a.backend_id, a.backend_gen))
                != Some((v.backend_id, v.backend_gen))
        })
        .count()
}

fn assert_no_client_moved(lab: &Lab, first: &BTreeMap<IpAddr, String>, when: &str) {
    let clients: Vec<IpAddr> = first.keys().copied().collect();
    let now = lab.answers(&clients, IpAddr::V4(VIP4), false);
    let moved: Vec<_> = first
        .iter()
        .filter(|(c, b)| now.get(c) != Some(b))
        .collect();
    assert!(
        moved.is_empty(),
        "{} clients moved {when}: {moved:?}\n{}",
        moved.len(),
        lab.daemon_log()
    );
}

/// Runs `xlb run --config FILE` in the balancer namespace, expecting it to exit by itself
/// within `limit`: (exit code, stderr, how long it took).
fn run_expecting_exit(lab: &Lab, config: &Path, limit: Duration) -> (i32, String, Duration) {
    let started = Instant::now();
    let mut child = lab
        .lb
        .cmd(xlb_bin())
        .args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("xlb run");
    loop {
        if child.try_wait().expect("wait").is_some() {
            let out = child.wait_with_output().expect("output");
            return (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stderr).into_owned(),
                started.elapsed(),
            );
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "xlb run did not exit within {limit:?} (it started instead of refusing): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Issue 9: pinned state of a release without one counter map is adopted: the map is
/// created, the program replaced through the link, and no pinned client moves.
#[test]
fn adoption_creates_a_missing_map_and_moves_no_pin() {
    let mut lab = Lab::new(LabOptions {
        clients_v4: 100,
        clients_v6: 1,
        ..LabOptions::default()
    });
    lab.start_servers();
    lab.start_daemon();
    let first = lab.answers(&lab.clients4.clone(), IpAddr::V4(VIP4), false);
    let pins = lab.pinned_affinity();
    assert!(pins.len() >= first.len(), "{} pins", pins.len());
    let prog = lab.attached_prog_id().expect("attached");
    let ids = lab.pinned_ids();

    // What an older release without XLB_BE_STATS would have left.
    lab.kill_daemon();
    let missing = lab.pin_dir.join("maps").join(lb_common::MAP_BE_STATS);
    std::fs::remove_file(&missing).expect("unpin XLB_BE_STATS");
    lab.start_daemon();

    assert!(missing.exists(), "the missing map was not created");
    let log = lab.daemon_log();
    assert!(log.contains("lacks map XLB_BE_STATS"), "{log}");
    let new_prog = lab.attached_prog_id().expect("still attached");
    assert_ne!(new_prog, prog, "the program was not replaced");
    let ids_after = lab.pinned_ids();
    assert_eq!(
        ids_after["link_eth0"], ids["link_eth0"],
        "the program must be replaced through the pinned link, not a new attachment"
    );
    for (path, id) in &ids {
        if !path.ends_with(lb_common::MAP_BE_STATS) {
            assert_eq!(ids_after.get(path), Some(id), "{path} was replaced");
        }
    }
    assert_eq!(moved_pins(&pins, &lab.pinned_affinity()), 0, "pins moved");
    assert_no_client_moved(&lab, &first, "across the adoption");
}

/// Issue 9: a pinned map this build does not know (a newer release's) makes the start
/// fail at once, saying so, and nothing is touched.
#[test]
fn an_unknown_pinned_map_is_refused_and_nothing_is_touched() {
    let mut lab = Lab::new(LabOptions {
        backends: 2,
        clients_v4: 20,
        clients_v6: 1,
    });
    lab.start_servers();
    lab.start_daemon();
    let first = lab.answers(&lab.clients4.clone(), IpAddr::V4(VIP4), false);
    lab.stop_daemon();
    let future = lab.pin_dir.join("maps").join("XLB_FUTURE");
    let map = aya::maps::MapData::create(
        aya_obj::Map::new_from_params(2, 4, 4, 1, 0),
        "XLB_FUTURE",
        None,
    )
    .expect("create a map");
    map.pin(&future).expect("pin it");
    let before = (
        lab.pinned_ids(),
        lab.pinned_affinity(),
        lab.attached_prog_id(),
        std::fs::read(lab.state_file()).expect("state file"),
    );

    let (code, err, took) = run_expecting_exit(&lab, &lab.config, Duration::from_secs(5));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("XLB_FUTURE") && err.contains("newer release") && err.contains("xlb down"),
        "{err}"
    );
    println!("refused in {took:?}: {err}");
    let after = (
        lab.pinned_ids(),
        lab.pinned_affinity(),
        lab.attached_prog_id(),
        std::fs::read(lab.state_file()).expect("state file"),
    );
    assert!(
        before == after,
        "the refused start changed the pinned state"
    );
    assert!(!lab.socket.exists(), "the refused start bound the socket");
    assert_no_client_moved(&lab, &first, "after the refused start");
}

/// Issue 9: changing `daemon.affinity_capacity` migrates every pin into a table of the
/// new size (no `xlb down`, nobody moves).
#[test]
fn an_affinity_capacity_change_migrates_every_pin() {
    let mut lab = Lab::new(LabOptions {
        clients_v4: 150,
        clients_v6: 1,
        ..LabOptions::default()
    });
    lab.start_servers();
    lab.start_daemon();
    let first = lab.answers(&lab.clients4.clone(), IpAddr::V4(VIP4), false);
    let pins = lab.pinned_affinity();
    lab.stop_daemon();
    lab.affinity_capacity = 131_072;
    lab.write_config(&lab.default_services());
    lab.start_daemon();

    let info = aya::maps::MapData::from_pin(lab.pin_dir.join("maps").join(lb_common::MAP_AFFINITY))
        .expect("pinned affinity table")
        .info()
        .expect("info");
    assert_eq!(
        info.max_entries(),
        lb_common::affinity::table::table_entries(131_072),
        "the table was not resized"
    );
    let log = lab.daemon_log();
    assert!(log.contains("migrated pinned map XLB_AFFINITY"), "{log}");
    assert!(
        !lab.pin_dir.join("migrating").exists(),
        "the old map was left aside"
    );
    assert_eq!(moved_pins(&pins, &lab.pinned_affinity()), 0, "pins moved");
    assert_no_client_moved(&lab, &first, "across the capacity change");
}

/// Issue 11: 10,000 pins (the lab's real clients and pins written into the pinned table
/// as the data plane writes them) survive a SIGKILL of the daemon and its restart: not
/// one moves, and the real clients reach the same backends. (The default capacity: in the
/// lab's small table 10,000 pins would overflow a bucket now and then, as documented.)
#[test]
fn ten_thousand_pins_survive_sigkill_and_restart() {
    let mut lab = Lab::new(LabOptions {
        clients_v4: 100,
        clients_v6: 1,
        ..LabOptions::default()
    });
    lab.affinity_capacity = lb_common::DEFAULT_AFFINITY_CAPACITY;
    lab.write_config(&lab.default_services());
    lab.start_servers();
    lab.start_daemon();
    let first = lab.answers(&lab.clients4.clone(), IpAddr::V4(VIP4), false);
    let real = lab.pinned_affinity();
    let service_id = real.first().expect("a real pin").0.service_id;
    let backends: Vec<(u32, u32)> = lab
        .pinned_backends()
        .into_iter()
        .filter(|(_, b)| b.service_id == service_id)
        .map(|(id, b)| (id, b.generation))
        .collect();
    let table = xlb::dataplane::maps::pinned_table(&lab.pin_dir).expect("pinned table");
    let now = xlb::dataplane::maps::ktime_coarse_ns();
    let extra = 10_000 - real.len() as u32;
    for i in 0..extra {
        let key = AffinityKey {
            service_id,
            addr: [
                u32::from_ne_bytes([100, 64, (i >> 8) as u8, i as u8]),
                0,
                0,
                0,
            ],
            port_be: 0,
            family: lb_common::FAMILY_V4,
            _pad: 0,
        };
        let (id, generation) = backends[i as usize % backends.len()];
        let v = AffinityValue {
            backend_id: id,
            backend_gen: generation,
            pinned_ns: now,
            last_seen_ns: now,
        };
        assert!(table.set(&key, &v, true, now, |_| u32::MAX >> 1), "pin {i}");
    }
    drop(table);
    let pins = lab.pinned_affinity();
    assert!(
        pins.len() >= 10_000,
        "{} pins ({} real, {extra} written)",
        pins.len(),
        real.len()
    );
    lab.kill_daemon();
    lab.start_daemon();
    let after = lab.pinned_affinity();
    assert_eq!(
        moved_pins(&pins, &after),
        0,
        "pins moved across SIGKILL + restart"
    );
    assert!(after.len() >= pins.len());
    assert_no_client_moved(&lab, &first, "across SIGKILL + restart");
}

/// Issue 11: pins made by the affinity LRU of the releases before the bucketed table are
/// migrated into the table at the first start of this build — every pin copied, the old
/// map removed — so the upgrade moves no client. The earlier release's state is written
/// through its layout description: an LRU of (key → value) holding the pins the clients'
/// traffic made, without the table's companion maps.
#[test]
fn pins_of_the_lru_layout_survive_the_upgrade() {
    let mut lab = Lab::new(LabOptions {
        clients_v4: 150,
        clients_v6: 20,
        ..LabOptions::default()
    });
    lab.start_servers();
    lab.start_daemon();
    let first = lab.answers(&lab.clients4.clone(), IpAddr::V4(VIP4), false);
    let _ = lab.answers(
        &lab.clients6.clone(),
        IpAddr::V6(xlb_tests::lab::VIP6),
        false,
    );
    let pins = lab.pinned_affinity();
    assert!(
        pins.iter().any(|(k, _)| k.family == lb_common::FAMILY_V6),
        "IPv6 pins too"
    );
    lab.kill_daemon();
    let maps = lab.pin_dir.join("maps");
    for name in [
        lb_common::MAP_AFFINITY,
        lb_common::MAP_AFF_KEYS,
        lb_common::MAP_SVC_IDLE,
    ] {
        std::fs::remove_file(maps.join(name)).expect("unpin");
    }
    let lru = aya::maps::MapData::create(
        aya_obj::Map::new_from_params(
            lb_common::maps::MapKind::LruHash.bpf_type(),
            24,
            24,
            65_536,
            0,
        ),
        lb_common::MAP_AFFINITY,
        None,
    )
    .expect("create the LRU");
    lru.pin(maps.join(lb_common::MAP_AFFINITY)).expect("pin");
    let mut lru: aya::maps::HashMap<_, AffinityKey, AffinityValue> =
        aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(lru)).expect("LRU");
    for (k, v) in &pins {
        lru.insert(k, v, 0).expect("insert");
    }
    drop(lru);

    lab.start_daemon();
    let log = lab.daemon_log();
    assert!(
        log.contains("migrated pinned map XLB_AFFINITY") && log.contains("AffinityFromLru"),
        "{log}"
    );
    let info = aya::maps::MapData::from_pin(maps.join(lb_common::MAP_AFFINITY))
        .expect("pinned table")
        .info()
        .expect("info");
    assert_eq!(info.map_type().expect("type"), aya::maps::MapType::Array);
    assert!(
        !lab.pin_dir.join("migrating").exists(),
        "the old map was left aside"
    );
    let after = lab.pinned_affinity();
    assert_eq!(moved_pins(&pins, &after), 0, "pins moved in the upgrade");
    assert_no_client_moved(&lab, &first, "across the upgrade");
}

/// Fault 2 (issue 10): a second `xlb run` on the same pin_dir and socket exits at once,
/// naming the running daemon, and changes nothing; `xlb down` refuses too.
#[test]
fn a_second_daemon_on_the_same_pin_dir_exits_at_once_and_changes_nothing() {
    let mut lab = Lab::new(LabOptions {
        clients_v4: 30,
        clients_v6: 1,
        ..LabOptions::default()
    });
    lab.start_servers();
    lab.start_daemon();
    let first = lab.answers(&lab.clients4.clone(), IpAddr::V4(VIP4), false);
    // A runtime change the second instance must not erase.
    lab.xlb(&["backend", "drain", "web4", "10.100.0.12"]);
    let pid = lab.daemon.as_ref().expect("daemon").child.id();
    let snapshot = |lab: &Lab| {
        (
            lab.pinned_ids(),
            lab.pinned_tables(),
            lab.pinned_affinity(),
            lab.attached_prog_id(),
            std::fs::read(lab.state_file()).expect("state file"),
        )
    };
    let before = snapshot(&lab);

    // Same daemon section (pin_dir, socket, state file), fewer services.
    let other = lab.dir.join("other.toml");
    let text = std::fs::read_to_string(&lab.config).expect("config");
    let cut = text
        .find("[[service]]\nname = \"dns4\"")
        .expect("dns4 block");
    std::fs::write(&other, &text[..cut]).expect("write other.toml");
    let (code, err, took) = run_expecting_exit(&lab, &other, Duration::from_secs(5));
    assert_eq!(code, 1, "{err}");
    let want = format!(
        "another xlb daemon holds {} (pid {pid})",
        lab.pin_dir.display()
    );
    assert!(err.contains(&want), "want {want:?} in: {err}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(
        before == snapshot(&lab),
        "the second instance changed the state"
    );

    // The same through `ip netns exec`, whose private /sys has no bpffs: a bpffs mounted
    // there would hide the running daemon's pins and lock (the old code mounted one,
    // created fresh state in it and failed only at attach). Refused before anything.
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.lb.name])
        .arg(xlb_bin())
        .args(["run", "--config"])
        .arg(&other)
        .output()
        .expect("ip netns exec xlb run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("not the host's") && err.contains("nsenter --net"),
        "{err}"
    );
    assert!(
        before == snapshot(&lab),
        "the instance under ip netns exec changed the state"
    );

    let cfg = lab.config.to_str().expect("utf-8").to_string();
    let (code, err) = lab
        .try_xlb(&["down", "--config", &cfg])
        .expect_err("down must refuse");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&want), "{err}");
    assert!(
        before == snapshot(&lab),
        "the refused down changed the state"
    );
    lab.xlb(&["status"]);
    assert_no_client_moved(&lab, &first, "after the second instance");
}

/// Fault 6 (issue 10), start-up part: the attached interface deleted and re-created while
/// the daemon was stopped; the next start attaches anew and no client moves.
#[test]
fn a_recreated_interface_gets_a_new_attachment_and_keeps_every_pin() {
    let mut lab = Lab::new(LabOptions {
        clients_v4: 60,
        clients_v6: 1,
        ..LabOptions::default()
    });
    lab.start_servers();
    lab.start_daemon();
    let first = lab.answers(&lab.clients4.clone(), IpAddr::V4(VIP4), false);
    let pins = lab.pinned_affinity();
    lab.stop_daemon();
    lab.recreate_lb_interface();
    assert_eq!(
        lab.attached_prog_id(),
        None,
        "the new interface starts bare"
    );
    lab.start_daemon();
    assert!(
        lab.attached_prog_id().is_some(),
        "not attached after the start"
    );
    assert!(lab.daemon_log().contains("severed"), "{}", lab.daemon_log());
    // The adopted backends carry the old interface until the first resolution.
    let ifindex = lab.lb_ifindex();
    let deadline = Instant::now() + Duration::from_secs(5);
    while lab
        .pinned_backends()
        .iter()
        .any(|(_, b)| b.ifindex != ifindex)
    {
        assert!(
            Instant::now() < deadline,
            "backends still on the old interface"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(moved_pins(&pins, &lab.pinned_affinity()), 0, "pins moved");
    assert_no_client_moved(&lab, &first, "across the re-created interface");
}

/// The backend name answering `client` over HTTP on `vip`.
fn http_answer(lab: &Lab, client: IpAddr, vip: IpAddr) -> String {
    lab.http(client, vip)
        .unwrap_or_else(|e| panic!("{client} → {vip}: {e}\n{}", lab.daemon_log()))
}

fn repins(lab: &Lab, service: &str) -> u64 {
    let s = lab.xlb_json(&["stats"]);
    s["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|x| x["name"] == service)
        .and_then(|x| x["repins"].as_u64())
        .expect("repins")
}

/// `xlb affinity list web` for one client: its backend ("" when none).
fn listed_backend(lab: &Lab, client: IpAddr) -> String {
    let l = lab.xlb_json(&["affinity", "list", "web"]);
    let entry = l["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["client"] == format!("{client}/32"))
        .cloned()
        .unwrap_or_else(|| panic!("{client} not listed: {l}"));
    entry["backend"].as_str().unwrap_or("").to_string()
}

/// Fault 1 (issue 10), exactly as the issue gives it: web (.11, .12), api (.13); .14
/// added to web, a client pinned to it, .14 removed, the daemon restarted, .15 added to
/// api: the client's next SYN goes to web's slot backend, counted as a re-pin, and
/// `explain` and `affinity list` agree.
#[test]
fn identity_reuse_across_a_restart_never_sends_a_client_to_another_service() {
    let mut lab = Lab::new(LabOptions {
        backends: 5,
        clients_v4: 250,
        clients_v6: 1,
    });
    let web_vip = IpAddr::V4(VIP4);
    let api_vip = Lab::vip4(3);
    let be = |n: u8| -> IpAddr { format!("10.100.0.{n}").parse().expect("addr") };
    let mut services = service_block(
        "web",
        &web_vip.to_string(),
        80,
        "tcp",
        NO_HEALTH,
        &[(be(11), 1), (be(12), 1)],
    );
    services.push_str(&service_block(
        "api",
        &api_vip.to_string(),
        80,
        "tcp",
        NO_HEALTH,
        &[(be(13), 1)],
    ));
    lab.write_config(&services);
    lab.start_servers();
    lab.start_daemon();

    lab.xlb(&["backend", "add", "web", "10.100.0.14"]);
    let client = lab
        .clients4
        .iter()
        .copied()
        .find(|c| {
            lab.xlb_json(&["explain", "web", &c.to_string()])["slot_backend"] == "10.100.0.14"
        })
        .expect("a client whose slot is .14");
    assert_eq!(http_answer(&lab, client, web_vip), "be3", "pinned to .14");
    lab.xlb(&["backend", "remove", "web", "10.100.0.14"]);
    lab.stop_daemon();
    lab.start_daemon();
    lab.xlb(&["backend", "add", "api", "10.100.0.15"]);

    let e = lab.xlb_json(&["explain", "web", &client.to_string()]);
    assert_eq!(e["decision"], "hashed", "explain follows the old pin: {e}");
    let slot_backend = e["slot_backend"]
        .as_str()
        .expect("slot backend")
        .to_string();
    assert!(
        slot_backend == "10.100.0.11" || slot_backend == "10.100.0.12",
        "{e}"
    );
    let listed = listed_backend(&lab, client);
    assert!(
        listed != "10.100.0.15",
        "affinity list shows web's client on api's backend"
    );
    let before = repins(&lab, "web");
    let got = http_answer(&lab, client, web_vip);
    let want = if slot_backend == "10.100.0.11" {
        "be0"
    } else {
        "be1"
    };
    assert_eq!(
        got, want,
        "web's client reached {got}, not web's slot backend"
    );
    assert_eq!(repins(&lab, "web"), before + 1, "not counted as a re-pin");
    let e = lab.xlb_json(&["explain", "web", &client.to_string()]);
    assert_eq!(e["decision"], "pinned", "{e}");
    assert_eq!(e["backend"], slot_backend.as_str(), "{e}");
    assert_eq!(listed_backend(&lab, client), slot_backend, "affinity list");
}

/// One UDP client sending every `gap` for `total`; `midway` runs once halfway. Returns
/// the distinct backends that answered.
fn udp_client(
    lab: &Lab,
    client: IpAddr,
    vip: IpAddr,
    gap: Duration,
    total: Duration,
    mut midway: impl FnMut(&Lab, &str),
) -> Vec<String> {
    let started = Instant::now();
    let mut seen: Vec<String> = Vec::new();
    let mut ran = false;
    while started.elapsed() < total {
        let b = lab
            .udp(client, vip)
            .unwrap_or_else(|e| panic!("{client}: {e}"));
        if !seen.contains(&b) {
            seen.push(b.clone());
        }
        if !ran && started.elapsed() >= total / 2 {
            midway(lab, &b);
            ran = true;
        }
        std::thread::sleep(gap);
    }
    seen
}

fn expiries(lab: &Lab, service: &str) -> u64 {
    let s = lab.xlb_json(&["stats"]);
    s["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|x| x["name"] == service)
        .and_then(|x| x["expiries"].as_u64())
        .expect("expiries")
}

/// Fault 3 (issue 10): with `idle_timeout = "500ms"` a UDP client sending every 150 ms
/// for 3 s never expires and keeps one backend, also when that backend is drained
/// meanwhile; `"1s"` with 300 ms gaps likewise.
#[test]
fn short_idle_timeouts_never_expire_active_clients() {
    let mut lab = Lab::new(LabOptions {
        backends: 3,
        clients_v4: 3,
        clients_v6: 1,
    });
    let backends: Vec<(IpAddr, u32)> = lab.backends.iter().map(|b| (b.addr4.into(), 1)).collect();
    let mut services = String::new();
    for (name, vip, idle) in [("half", 2, "500ms"), ("one", 4, "1s")] {
        services.push_str(&service_block(
            name,
            &Lab::vip4(vip).to_string(),
            53,
            "udp",
            &format!("{NO_HEALTH}idle_timeout = \"{idle}\"\n"),
            &backends,
        ));
    }
    lab.write_config(&services);
    lab.start_servers();
    lab.start_daemon();
    let addr_of = |lab: &Lab, name: &str| {
        lab.backends
            .iter()
            .find(|b| b.name == name)
            .map(|b| b.addr4.to_string())
            .expect("backend")
    };
    let secs3 = Duration::from_secs(3);
    let (c0, c1, c2) = (lab.clients4[0], lab.clients4[1], lab.clients4[2]);

    let e = expiries(&lab, "half");
    let seen = udp_client(
        &lab,
        c0,
        Lab::vip4(2),
        Duration::from_millis(150),
        secs3,
        |_, _| {},
    );
    assert_eq!(seen.len(), 1, "500ms, 150 ms gaps: answered by {seen:?}");
    assert_eq!(
        expiries(&lab, "half") - e,
        0,
        "500ms, 150 ms gaps: expiries"
    );

    let e = expiries(&lab, "half");
    let seen = udp_client(
        &lab,
        c1,
        Lab::vip4(2),
        Duration::from_millis(150),
        secs3,
        |lab, b| {
            lab.xlb(&["backend", "drain", "half", &addr_of(lab, b)]);
        },
    );
    assert_eq!(
        seen.len(),
        1,
        "500ms with its backend drained: answered by {seen:?}"
    );
    assert_eq!(expiries(&lab, "half") - e, 0, "500ms, drained: expiries");

    let e = expiries(&lab, "one");
    let seen = udp_client(
        &lab,
        c2,
        Lab::vip4(4),
        Duration::from_millis(300),
        secs3,
        |_, _| {},
    );
    assert_eq!(seen.len(), 1, "1s, 300 ms gaps: answered by {seen:?}");
    assert_eq!(expiries(&lab, "one") - e, 0, "1s, 300 ms gaps: expiries");
}

/// Fault 7 (issue 10): every attach failure names its real cause and the ways out — an
/// MTU above native XDP's limit on veth (the exact limit checked both sides), another XDP
/// program already attached (which, who holds it), a missing interface — and leaves
/// nothing behind; generic mode has no MTU limit.
#[test]
fn attach_errors_name_their_real_cause() {
    use xlb_tests::lab::Netns;
    xlb_tests::require_root();
    let tag = format!("{}", std::process::id() % 100_000);
    let ns = Netns::new(format!("xlbat{tag}"));
    ns.ip("link add v0 type veth peer name v1");
    let dir = std::env::temp_dir().join(format!("xlb-attach-{tag}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let pin_dir = format!("/sys/fs/bpf/xlb-attach-{tag}");
    let sock = dir.join("xlb.sock");
    let config = |iface: &str, mode: &str| {
        let cfg = dir.join("xlb.toml");
        std::fs::write(
            &cfg,
            format!(
                "[daemon]\ninterfaces = [\"{iface}\"]\nxdp_mode = \"{mode}\"\npin_dir = \"{pin_dir}\"\nsocket = \"{}\"\nmetrics = \"\"\nstate_file = \"{}\"\naffinity_capacity = 4096\n",
                sock.display(),
                dir.join("state.json").display()
            ),
        )
        .expect("write config");
        cfg
    };
    let mtu = |m: u32| {
        ns.ip("link set v0 down");
        ns.ip(&format!("link set v0 mtu {m}"));
        ns.ip(&format!("link set v1 mtu {m}"));
        ns.ip("link set v0 up");
        ns.ip("link set v1 up");
    };
    let run = |cfg: &Path| -> (i32, String) {
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
    let left_nothing = |err: &str| {
        assert!(
            !Path::new(&pin_dir).join("maps").exists(),
            "maps left behind: {err}"
        );
    };
    // Starts (the socket appears), then stops and removes its state.
    let starts = |cfg: &Path| {
        let mut child = ns
            .cmd(xlb_bin())
            .args(["run", "--config"])
            .arg(cfg)
            .stderr(Stdio::piped())
            .spawn()
            .expect("xlb run");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !sock.exists() {
            if let Ok(Some(_)) = child.try_wait() {
                let out = child.wait_with_output().expect("output");
                panic!("xlb exited: {}", String::from_utf8_lossy(&out.stderr));
            }
            assert!(Instant::now() < deadline, "xlb did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let _ = child.wait();
        let out = ns
            .cmd(xlb_bin())
            .args(["down", "--pin-dir", &pin_dir])
            .output()
            .expect("down");
        assert!(out.status.success(), "{out:?}");
    };

    // MTU one above the veth limit: named, with both ways out.
    mtu(3507);
    let (code, err) = run(&config("v0", "native"));
    assert_eq!(code, 1, "{err}");
    for needle in [
        "MTU of v0 (3507)",
        "3506",
        "ip link set dev v0 mtu 1500",
        "xdp_mode = \"generic\"",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in: {err}");
    }
    left_nothing(&err);
    // At the limit native XDP attaches; far above it generic mode does.
    mtu(3506);
    starts(&config("v0", "native"));
    mtu(9000);
    starts(&config("v0", "generic"));

    // Another XDP program (held by this test process through a bpf_link).
    mtu(1500);
    let foreign = ns.run(|| {
        let mut ebpf = aya::EbpfLoader::new()
            .load(xlb::dataplane::loader::BENCH_OBJECT)
            .expect("bench object");
        let p: &mut aya::programs::Xdp = ebpf
            .program_mut("xdp_pass")
            .expect("xdp_pass")
            .try_into()
            .expect("XDP");
        p.load().expect("verifier");
        p.attach("v0", aya::programs::xdp::XdpMode::Driver)
            .expect("attach xdp_pass");
        ebpf
    });
    for mode in ["native", "generic"] {
        let (code, err) = run(&config("v0", mode));
        assert_eq!(code, 1, "{mode}: {err}");
        for needle in [
            "XDP program is already attached to v0".to_string(),
            "\"xdp_pass\"".to_string(),
            "bpf_link".to_string(),
            format!("pid {}", std::process::id()),
        ] {
            assert!(
                err.contains(&needle),
                "{mode}: missing {needle:?} in: {err}"
            );
        }
        left_nothing(&err);
    }
    drop(foreign);

    // A missing interface: a config error naming it.
    let (code, err) = run(&config("xlbnosuch0", "native"));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("xlbnosuch0") && err.contains("does not exist"),
        "{err}"
    );
    assert!(!Path::new(&pin_dir).exists());
    let _ = std::fs::remove_dir_all(&dir);
}
