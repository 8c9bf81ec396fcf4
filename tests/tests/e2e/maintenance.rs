//! Day-two operations (issue 15): draining a backend until no session is left before
//! removing it (`xlb backend drain --wait`), and changing a backend's weight at runtime.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use xlb_tests::lab::{HTTP_PORT, Lab, LabOptions};

use crate::daemon::backend_status;

const BE0: &str = "10.100.0.11";

/// A lab with one HTTP-checked service `web` on VIP 1, idle_timeout `idle`, running.
fn web_lab(clients: usize, idle: &str) -> Lab {
    let mut lab = Lab::new(LabOptions {
        clients_v4: clients,
        clients_v6: 1,
        backends: 3,
    });
    let extra = format!(
        "idle_timeout = \"{idle}\"\nhealth = {{ kind = \"http\", port = {HTTP_PORT}, path = \"/\", interval = \"200ms\", timeout = \"100ms\", rise = 2, fall = 2 }}\n"
    );
    lab.write_config(&lab.service_toml(
        "web",
        &Lab::vip4(1).to_string(),
        HTTP_PORT,
        "tcp",
        4,
        &extra,
    ));
    lab.start_servers();
    lab.start_daemon();
    lab
}

/// The clients of `first` that reached `backend`, and the others.
fn split(first: &BTreeMap<IpAddr, String>, backend: &str) -> (Vec<IpAddr>, Vec<IpAddr>) {
    let (on, off): (Vec<_>, Vec<_>) = first.iter().partition(|(_, b)| *b == backend);
    (
        on.into_iter().map(|(c, _)| *c).collect(),
        off.into_iter().map(|(c, _)| *c).collect(),
    )
}

/// Issue 15: `xlb backend drain --wait` while the backend's clients are active gives up
/// at `--timeout` (exit 1) saying how many remain and when they were last seen; once they
/// are idle past idle_timeout it returns 0 — not before — and removing the backend then
/// moves none of the clients still active (all on other backends).
#[test]
fn drain_wait_returns_when_no_session_is_left_then_remove_moves_nobody_active() {
    const IDLE: Duration = Duration::from_secs(4);
    let lab = web_lab(90, "4s");
    let clients = lab.clients4.clone();
    let first = lab.answers(&clients, Lab::vip4(1), false);
    let (on_be0, others) = split(&first, "be0");
    assert!(!on_be0.is_empty() && !others.is_empty(), "{first:?}");

    // Mistakes are usage errors (exit 2) naming what is wrong, and drain nothing.
    let wait = ["--wait", "--timeout", "1s"];
    for (args, want) in [
        (["backend", "drain", "mail", BE0], "\"mail\""),
        (
            ["backend", "drain", "web", "10.100.0.99"],
            "no backend 10.100.0.99",
        ),
    ] {
        let all: Vec<&str> = args.iter().chain(&wait).copied().collect();
        let (code, err) = lab.try_xlb(&all).expect_err("a mistake");
        assert_eq!(code, 2, "{all:?}: {err}");
        assert!(err.contains(want), "{all:?}: {err}");
    }
    let bad = [
        "backend",
        "drain",
        "web",
        BE0,
        "--wait",
        "--timeout",
        "soon",
    ];
    let (code, err) = lab.try_xlb(&bad).expect_err("a bad duration");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("soon"), "{err}");
    let st = backend_status(&lab, "web", BE0).expect("listed");
    assert_eq!(st["draining"], false, "a rejected command drained: {st}");

    // Active clients: the wait times out, naming their count and last-seen.
    let (result, waited) = std::thread::scope(|s| {
        let start = Instant::now();
        let h =
            s.spawn(|| lab.try_xlb(&["backend", "drain", "web", BE0, "--wait", "--timeout", "2s"]));
        while !h.is_finished() {
            for (c, b) in lab.answers(&on_be0, Lab::vip4(1), false) {
                assert_eq!(b, "be0", "drained client {c} moved");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        (h.join().expect("xlb"), start.elapsed())
    });
    let (code, err) = result.expect_err("active clients: the wait must time out");
    assert_eq!(code, 1, "{err}");
    let n = on_be0.len();
    let want = format!(
        "still holds {n} live pinned client{} after 2s",
        if n == 1 { "" } else { "s" }
    );
    assert!(err.contains(&want), "{err}");
    assert!(err.contains("last seen") && err.contains("ago"), "{err}");
    assert!(waited >= Duration::from_secs(2), "gave up after {waited:?}");
    assert!(waited < Duration::from_secs(4), "gave up after {waited:?}");
    println!("drain --wait --timeout 2s with active clients: exit 1 after {waited:?}: {err}");

    // The drained backend's clients go silent; the others stay active meanwhile.
    let silent_since = Instant::now();
    let stop = AtomicBool::new(false);
    let (result, waited) = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                for (c, b) in lab.answers(&others, Lab::vip4(1), false) {
                    assert_eq!(b, first[&c], "client {c} of another backend moved");
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        let start = Instant::now();
        let r = lab.try_xlb(&["backend", "drain", "web", BE0, "--wait", "--timeout", "30s"]);
        let waited = start.elapsed();
        stop.store(true, Ordering::Relaxed);
        (r, waited)
    });
    let out = result.unwrap_or_else(|(c, e)| panic!("drain --wait: exit {c}: {e}"));
    assert!(out.contains("is drained"), "{out}");
    let silent = silent_since.elapsed();
    // A pin's last-seen lags its client's last packet by up to a quarter of idle_timeout:
    // the wait cannot end sooner than that much before idle_timeout of silence.
    assert!(
        silent >= IDLE - IDLE / 4,
        "drain --wait returned after {silent:?} of silence (idle_timeout {IDLE:?})"
    );
    assert!(
        silent <= IDLE + Duration::from_secs(3),
        "{silent:?} of silence"
    );
    println!(
        "drain --wait: exit 0 after {waited:?} ({silent:?} after the drained clients went silent, idle_timeout {IDLE:?})"
    );
    let st = backend_status(&lab, "web", BE0).expect("listed");
    assert_eq!(st["pinned_clients"], 0, "{st}");

    // Remove: nobody still active moves.
    lab.xlb(&["backend", "remove", "web", BE0]);
    for (c, b) in lab.answers(&others, Lab::vip4(1), false) {
        assert_eq!(
            b, first[&c],
            "client {c} moved when the drained backend left"
        );
    }
    for (c, b) in lab.answers(&on_be0, Lab::vip4(1), false) {
        assert_ne!(b, "be0", "{c} still reached the removed backend");
    }
}

/// `xlb explain --json` of one client.
fn explain(lab: &Lab, client: IpAddr) -> serde_json::Value {
    lab.xlb_json(&["explain", "web", &client.to_string()])
}

/// The lab name (`be0`…) of a backend address in an explain answer.
fn name_of(lab: &Lab, v: &serde_json::Value) -> String {
    let a: IpAddr = v.as_str().expect("address").parse().expect("address");
    let i = lab
        .backends
        .iter()
        .position(|b| IpAddr::V4(b.addr4) == a)
        .expect("a lab backend");
    lab.backends[i].name.clone()
}

/// Issue 15: `xlb backend weight` changes a backend's share of new clients without a
/// restart; every pinned client stays; a client whose pin is gone lands where the new
/// table says, so only clients whose Maglev slot changed owner move; the change is
/// persisted (state file) and survives a restart.
#[test]
fn weight_change_moves_only_what_the_table_moves_and_survives_a_restart() {
    let mut lab = web_lab(150, "10m");
    let clients = lab.clients4.clone();
    let first = lab.answers(&clients, Lab::vip4(1), false);
    let web = (Lab::vip4(1), HTTP_PORT, 6u8);
    let share = |lab: &Lab| lab.pinned_tables()[&web][&BE0.parse::<IpAddr>().unwrap()];
    assert!((share(&lab) - 1.0 / 3.0).abs() < 0.01);

    lab.xlb(&["backend", "weight", "web", BE0, "3"]);
    assert!((share(&lab) - 0.6).abs() < 0.01, "share {}", share(&lab));
    assert_eq!(
        backend_status(&lab, "web", BE0).expect("listed")["weight"],
        3
    );
    assert_eq!(
        lab.answers(&clients, Lab::vip4(1), false),
        first,
        "a pinned client moved"
    );

    // Without their pins, clients go where the new table says; only the moved slots move.
    let explained: BTreeMap<IpAddr, serde_json::Value> =
        clients.iter().map(|c| (*c, explain(&lab, *c))).collect();
    lab.xlb(&["affinity", "flush", "web"]);
    let after = lab.answers(&clients, Lab::vip4(1), false);
    let mut moved = 0;
    for (c, e) in &explained {
        let now = name_of(&lab, &e["slot_backend"]);
        // (`previous_slot_backend` is there only when the change gave the slot away.)
        let before = match &e["previous_slot_backend"] {
            serde_json::Value::Null => now.clone(),
            b => name_of(&lab, b),
        };
        assert_eq!(after[c], now, "{c} is not where the new table says: {e}");
        assert_eq!(before, first[c], "{c}: the old table's backend: {e}");
        if after[c] != first[c] {
            moved += 1;
            assert_eq!(
                now, "be0",
                "{c} moved to another backend than the heavier one"
            );
        }
    }
    let moved_share = moved as f64 / clients.len() as f64;
    println!(
        "weight 1 → 3 of 1 in 3: be0's table share 33% → 60%; after a flush {moved} of {} clients moved ({:.0}%), all to be0",
        clients.len(),
        moved_share * 100.0
    );
    assert!(moved_share > 0.1 && moved_share < 0.45, "{moved_share}");

    // Persisted: the state file has it, a restart keeps it and moves nobody.
    let state = std::fs::read_to_string(lab.state_file()).expect("state file");
    assert!(state.contains("backend_weight"), "{state}");
    lab.stop_daemon();
    lab.start_daemon();
    assert_eq!(
        backend_status(&lab, "web", BE0).expect("listed")["weight"],
        3
    );
    assert!((share(&lab) - 0.6).abs() < 0.01, "share {}", share(&lab));
    assert_eq!(
        lab.answers(&clients, Lab::vip4(1), false),
        after,
        "the restart moved a client"
    );
}
