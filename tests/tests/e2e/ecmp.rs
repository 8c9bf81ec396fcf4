//! Several xlb nodes behind a router's ECMP (tests/src/lab_ecmp): BIRD on the router and
//! on every node, BGP with BFD, the real daemon on each node, shared DSR backends.

use std::time::Duration;

use xlb_tests::lab_ecmp::{EcmpLab, EcmpOptions, scenarios};

/// A smaller client population than `cargo xtask lab-ecmp` (300 + 150) keeps CI short;
/// every property is the same. `backends` for the main services, plus one for the app
/// services of VIP 2.
fn lab(backends: usize) -> EcmpLab {
    EcmpLab::new(EcmpOptions {
        backends: backends + 1,
        clients_v4: 150,
        clients_v6: 90,
        ..EcmpOptions::default()
    })
}

/// The same backend for a client without a pin on every node, whatever the order in which
/// backends were added at run time: `xlb explain` on every node for every client, and real
/// traffic through each node alone.
#[test]
fn ecmp_every_node_picks_the_same_backend_whatever_the_order_of_adds() {
    let mut lab = lab(4);
    lab.write_configs(&scenarios::services(&lab, &[0]));
    lab.start_all();
    lab.wait_next_hops(&lab.vips, &[0, 1, 2], Duration::from_secs(10));
    let r = scenarios::determinism(&lab);
    println!("{r}");
    assert_eq!(r.table_differences.len(), 6, "{r}");
    for (svc, differing, _) in &r.table_differences {
        assert_eq!(*differing, 0, "{svc}: {r}");
    }
    assert_eq!(r.explained_hashed, r.explained, "no client had a pin yet");
    assert_eq!(r.explain_agree, r.clients, "{r}");
    for (n, agree) in &r.traffic_agree {
        assert_eq!(*agree, r.clients, "through {n}: {r}");
    }
    assert_eq!(r.traffic_same_everywhere, r.clients, "{r}");
    assert_eq!(r.failed, 0, "{r}");
}

/// Steady state, then a daemon SIGKILLed (nothing withdrawn, lost or moved), a node made
/// silent (BFD withdraws it within a second; its clients keep their backend), and a VIP
/// whose services lose their last backend (withdrawn by every node only when none of its
/// services can serve; back on recovery).
#[test]
fn ecmp_steady_daemon_kill_silent_node_and_last_backend() {
    let mut lab = lab(3);
    lab.write_configs(&scenarios::services(&lab, &[0, 1, 2]));
    lab.start_all();
    lab.wait_next_hops(&lab.vips, &[0, 1, 2], Duration::from_secs(10));
    let s = scenarios::steady(&lab, 4);
    println!("{s}");
    assert_eq!(s.failed, 0, "{s}");
    assert_eq!(s.consistent, s.clients, "{s}");
    assert_eq!(s.one_node, s.clients, "{s}");
    assert_eq!(s.pinned_where_carried, s.clients, "{s}");
    assert_eq!(s.explain_agrees, s.clients, "{s}");
    assert_eq!(s.per_node.len(), 3, "every node carries clients: {s}");
    assert_eq!(s.per_backend.len(), 3, "{s}");

    let k = scenarios::daemon_kill(&mut lab, 1);
    println!("{k}");
    assert_eq!(k.routes_seen, vec![vec![0, 1, 2]], "nothing withdrawn: {k}");
    assert_eq!(
        k.vip_disables, 0,
        "no VIP protocol disabled, even briefly: {k}"
    );
    assert_eq!(k.answered_dead, k.clients, "{k}");
    assert_eq!(k.moved_node_dead, 0, "{k}");
    assert_eq!(k.moved_backend_dead, 0, "{k}");
    assert_eq!(k.answered_after, k.clients, "{k}");
    assert_eq!(k.moved_backend_after, 0, "{k}");
    assert_eq!(k.answered_term, k.clients, "{k}");
    assert_eq!(k.moved_node_term, 0, "{k}");
    assert_eq!(k.moved_backend_term, 0, "{k}");

    let q = scenarios::silent(&lab, 2);
    println!("{q}");
    assert!(q.clients_of_node > 0, "{q}");
    let bound = scenarios::WITHDRAW_BOUND.as_millis();
    assert!(
        q.withdrawn_ms.last().is_some_and(|t| *t < bound),
        "BFD withdraws within 1 s: {q}"
    );
    assert_eq!(q.answered, q.clients_of_node, "{q}");
    assert_eq!(q.changed_backend, 0, "{q}");
    assert_eq!(q.others_changed_backend, 0, "{q}");
    assert_eq!(q.returned, q.clients_of_node, "{q}");
    assert_eq!(q.returned_changed_backend, 0, "{q}");

    let l = scenarios::last_backend(&mut lab);
    println!("{l}");
    assert_eq!(l.nodes_one_service_down, vec![0, 1, 2], "{l}");
    assert!(
        l.why_one_service_down
            .starts_with("announced: served by app-dns"),
        "{l}"
    );
    assert!(
        l.why_withdrawn
            .starts_with("withdrawn: no service has a healthy backend (app-dns 0/1, app-web 0/1)"),
        "{l}"
    );
    assert_eq!(l.answered_withdrawn, 0, "{l}");
    assert_eq!(l.answered_back, l.asked, "{l}");
    assert_eq!(l.main_routes, vec![vec![0, 1, 2]], "VIP 1 untouched: {l}");
}

/// Node drain (clients move, keep their backend, open connections survive), a backend
/// added then a node drained (≈1/(N+1) of the moved clients change backend), and a
/// drained node returning after a backend was added: with its pinned state nobody
/// changes backend; after a restart that lost it, some do.
#[test]
fn ecmp_drain_add_and_return() {
    let mut lab = lab(6);
    lab.write_configs(&scenarios::services(&lab, &[0, 1, 2]));
    lab.start_all();
    lab.wait_next_hops(&lab.vips, &[0, 1, 2], Duration::from_secs(10));

    let d = scenarios::drain(&lab, 1);
    println!("{d}");
    assert!(d.clients_of_node > 0, "{d}");
    let bound = scenarios::WITHDRAW_BOUND.as_millis();
    assert!(
        d.withdrawn_ms.last().is_some_and(|t| *t < bound),
        "withdrawn within 1 s: {d}"
    );
    assert_eq!(d.moved, d.clients_of_node, "{d}");
    assert_eq!(d.changed_backend, 0, "{d}");
    assert_eq!(d.shuffled_changed, 0, "{d}");
    assert_eq!(d.failed, 0, "{d}");
    assert!(d.held.1 > 0 && d.held.0 == d.held.1, "{d}");
    // Persisted: a restarted daemon keeps the node drained; status says why.
    let why = scenarios::vip_why(&lab, 1, lab.vips[0]);
    assert!(why.starts_with("withdrawn: node drained"), "{why}");
    let (enables, _) = lab.nodes[1].bird_vip_changes();
    lab.nodes[1].kill_daemon();
    lab.nodes[1].start_daemon();
    // Once the restarted daemon has synced, what it decided at start is in BIRD.
    lab.nodes[1].wait_announce_synced(Duration::from_secs(5));
    assert_eq!(
        lab.nodes[1].bird_vip_changes().0,
        enables,
        "still drained after a restart: no VIP protocol enabled"
    );
    assert_eq!(lab.next_hops(lab.vips[0]), vec![0, 2]);
    let text = lab.nodes[1].xlb(&["status"]);
    assert!(text.contains("node drained"), "{text}");
    scenarios::undrain(&lab, 1);

    let a = scenarios::add_then_drain(&lab, 3, 0, 4);
    println!("{a}");
    assert_eq!(a.changed_by_add, 0, "{a}");
    assert!(a.moved_off > 0, "{a}");
    // ≈1/4 expected; the bounds only catch "nobody" and "most".
    assert!(
        a.moved_off_changed > 0 && a.moved_off_changed * 2 < a.moved_off,
        "{a}"
    );
    assert_eq!(a.stayed_changed, 0, "{a}");

    let r = scenarios::drain_add_return(&mut lab, 2, 4, false, 5);
    println!("{r}");
    assert_eq!(r.moved_off_changed, 0, "{r}");
    assert_eq!(r.changed_by_add, 0, "{r}");
    assert!(r.returned > 0, "{r}");
    assert_eq!(
        r.returned_changed, 0,
        "pins on the returning node decide: {r}"
    );
    assert_eq!(r.others_changed, 0, "{r}");

    let r = scenarios::drain_add_return(&mut lab, 2, 5, true, 6);
    println!("{r}");
    assert_eq!(r.moved_off_changed, 0, "{r}");
    assert!(r.returned > 0, "{r}");
    assert!(
        r.returned_changed > 0 && r.returned_changed * 2 < r.returned,
        "without its pins the node decides with the new table (≈1/6): {r}"
    );
    assert_eq!(r.others_changed, 0, "{r}");
    assert_eq!(
        r.enabled_while_drained,
        Some(0),
        "a reboot keeps the node drained: {r}"
    );

    // `xlb down --config` withdraws the node's VIPs before removing its data plane (a
    // stopped daemon alone withdraws nothing).
    let (_, disables) = lab.nodes[0].bird_vip_changes();
    lab.nodes[0].stop_daemon();
    assert_eq!(
        lab.nodes[0].bird_vip_changes().1,
        disables,
        "stopping withdraws nothing"
    );
    assert_eq!(lab.next_hops(lab.vips[0]), vec![0, 1, 2]);
    let config = lab.nodes[0].config.display().to_string();
    let out = lab.nodes[0].xlb(&["down", "--config", &config]);
    assert!(
        out.contains("withdrew 10.200.0.1, 10.200.0.2, fd00:200::1"),
        "{out}"
    );
    assert_eq!(
        lab.nodes[0].bird_vip_changes().1,
        disables + lab.vips.len(),
        "{out}"
    );
    let others = [1, 2];
    lab.wait_next_hops(&lab.vips, &others, Duration::from_secs(2));
    lab.nodes[0].start_daemon();
    lab.wait_next_hops(&lab.vips, &[0, 1, 2], Duration::from_secs(5));
}

/// xlb's BIRD announcer against a real BIRD: protocols of announced VIPs enabled, of
/// withdrawn ones disabled, a stale `xlb_*` protocol (its VIP no longer configured)
/// disabled, a VIP without protocol reported with the block to add, an unreachable BIRD
/// reported for every VIP.
#[test]
fn ecmp_bird_announcer_drives_a_real_bird() {
    use xlb::announce::{Announcer, Decision, Reason};
    use xlb::model::{Announce, announce::bird_protocol};
    use xlb_tests::lab::{Netns, Proc};

    xlb_tests::require_root();
    let id = format!("xb{:x}", std::process::id() % 0xffff);
    let ns = Netns::new(format!("{id}-bird"));
    let dir = std::env::temp_dir().join(format!("xlb-{id}-bird"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (v1, v2, v3, v4): (
        std::net::IpAddr,
        std::net::IpAddr,
        std::net::IpAddr,
        std::net::IpAddr,
    ) = (
        "192.0.2.1".parse().unwrap(),
        "2001:db8::2".parse().unwrap(),
        "192.0.2.3".parse().unwrap(),
        "192.0.2.4".parse().unwrap(),
    );
    let conf = dir.join("bird.conf");
    std::fs::write(
        &conf,
        format!(
            "router id 192.0.2.254;\nprotocol device {{}}\n{}\n{}\n\
             protocol static {} {{ ipv4; route {v3}/32 blackhole; }}\n",
            xlb::model::announce::bird_protocol_config(v1),
            xlb::model::announce::bird_protocol_config(v2).replace("disabled; ", ""),
            bird_protocol(v3),
        ),
    )
    .unwrap();
    let sock = dir.join("bird.ctl");
    let mut bird = Proc {
        child: ns
            .cmd("bird")
            .args(["-f", "-c"])
            .arg(&conf)
            .arg("-s")
            .arg(&sock)
            .spawn()
            .expect("bird (cargo xtask setup installs it)"),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let states = |rt: &tokio::runtime::Runtime| {
        rt.block_on(xlb::announce::bird::Bird::new(&sock, Duration::from_secs(2)).protocols("xlb_"))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while states(&rt).is_err() {
        assert!(std::time::Instant::now() < deadline, "BIRD did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut a = Announcer::new(
        &Announce::Bird {
            socket: sock.clone(),
        },
        Duration::from_secs(2),
    );
    let d = |vip, announce| Decision {
        vip,
        announce,
        reason: Reason::Drained,
    };
    let out = rt.block_on(a.sync(&[d(v1, true), d(v2, false), d(v4, true)]));
    let s = states(&rt).unwrap();
    assert_eq!(s.get(&bird_protocol(v1)), Some(&true), "{s:?}");
    assert_eq!(s.get(&bird_protocol(v2)), Some(&false), "{s:?}");
    assert_eq!(
        s.get(&bird_protocol(v3)),
        Some(&false),
        "stale protocol disabled: {s:?}"
    );
    assert_eq!(out[0].announced, Some(true));
    assert_eq!(out[1].announced, Some(false));
    assert_eq!(out[2].announced, None);
    let e = out[2].error.clone().unwrap_or_default();
    assert!(
        e.contains("BIRD has no protocol xlb_192_0_2_4")
            && e.contains(
                "protocol static xlb_192_0_2_4 { disabled; ipv4; route 192.0.2.4/32 blackhole; }"
            ),
        "{e}"
    );
    // Someone disables an announced VIP by hand (or BIRD restarts): the next sync fixes it.
    rt.block_on(
        xlb::announce::bird::Bird::new(&sock, Duration::from_secs(2))
            .set(&bird_protocol(v1), false),
    )
    .unwrap();
    rt.block_on(a.sync(&[d(v1, true), d(v2, false)]));
    assert_eq!(states(&rt).unwrap().get(&bird_protocol(v1)), Some(&true));
    bird.kill();
    let out = rt.block_on(a.sync(&[d(v1, true)]));
    assert_eq!(out[0].announced, None);
    assert!(
        out[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("cannot reach BIRD")),
        "{out:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
