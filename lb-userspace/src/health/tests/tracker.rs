//! Hysteresis, jitter, the probing loop and its messages.

use super::*;

/// Issue 10, fault 4: from Unknown one passed check is enough ("checked" is one
/// pass, not `rise`), and learning the first state is no transition.
#[test]
fn tracker_from_unknown_needs_one_pass() {
    let mut t = Tracker::starting(3, 2, Health::Unknown);
    assert_eq!(t.record(&probe_result(true)), Some(true));
    assert_eq!((t.state(), t.transitions()), (Health::Up, 0));
    let mut t = Tracker::starting(3, 2, Health::Unknown);
    assert_eq!(t.record(&probe_result(false)), None);
    assert_eq!(t.state(), Health::Unknown);
    assert_eq!(t.record(&probe_result(false)), Some(false));
    assert_eq!(t.state(), Health::Down);
    assert_eq!(
        t.record(&probe_result(true)),
        None,
        "down needs rise passes"
    );
}

fn feed(t: &mut Tracker, seq: &[bool]) -> Vec<Option<bool>> {
    seq.iter().map(|&ok| t.record(&probe_result(ok))).collect()
}

#[test]
fn tracker_fall_needs_consecutive_failures() {
    let mut t = Tracker::new(2, 3, true);
    assert!(!t.checked());
    assert!(t.last().is_none());
    let flips = feed(&mut t, &[true, false, false, true, false, false, false]);
    assert_eq!(flips, [None, None, None, None, None, None, Some(false)]);
    assert!(!t.healthy());
    assert_eq!(t.transitions(), 1);
    assert!(t.checked());
    assert_eq!(t.last(), Some(&probe_result(false)));
    // More failures do not flip again.
    assert_eq!(feed(&mut t, &[false, false]), [None, None]);
    assert_eq!(t.transitions(), 1);
}

#[test]
fn tracker_rise_recovers() {
    let mut t = Tracker::new(2, 3, false);
    assert!(!t.healthy());
    let flips = feed(&mut t, &[true, false, true, true, true]);
    assert_eq!(flips, [None, None, None, Some(true), None]);
    assert!(t.healthy());
    assert_eq!(t.transitions(), 1);
    let flips = feed(&mut t, &[false, false, false, true, true]);
    assert_eq!(flips, [None, None, Some(false), None, Some(true)]);
    assert_eq!(t.transitions(), 3);
}

#[test]
fn tracker_initial_state_is_honoured() {
    let mut up = Tracker::new(2, 2, true);
    assert_eq!(up.record(&probe_result(true)), None);
    assert!(up.healthy());
    let mut down = Tracker::new(2, 2, false);
    assert_eq!(down.record(&probe_result(false)), None);
    assert!(!down.healthy());
    // rise = fall = 1 (and 0 counts as 1): every change flips at once.
    let mut t = Tracker::new(0, 1, true);
    assert_eq!(
        feed(&mut t, &[false, true, false]),
        [Some(false), Some(true), Some(false)]
    );
    assert_eq!(t.transitions(), 3);
}

#[test]
fn tracker_flapping_is_damped() {
    for (rise, fall) in [(2, 2), (2, 3), (3, 2), (5, 5)] {
        for start in [true, false] {
            let mut t = Tracker::new(rise, fall, start);
            let seq: Vec<bool> = (0..100).map(|i| i % 2 == 0).collect();
            assert!(feed(&mut t, &seq).iter().all(Option::is_none));
            assert_eq!(t.healthy(), start);
            assert_eq!(t.transitions(), 0);
        }
    }
}

#[test]
fn jitter_is_within_the_interval_and_spread() {
    let interval = Duration::from_secs(1);
    let mut seen = std::collections::HashSet::new();
    for i in 0..50u8 {
        let addr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, i));
        let j = initial_jitter("web", addr, interval);
        assert!(j < interval);
        assert_eq!(j, initial_jitter("web", addr, interval), "deterministic");
        seen.insert(j.as_millis());
    }
    // 50 uniform draws over 1000 ms: a handful of same-millisecond pairs at most.
    assert!(seen.len() >= 40, "{} distinct milliseconds", seen.len());
    let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    assert_ne!(
        initial_jitter("web", a, interval),
        initial_jitter("dns", a, interval)
    );
    assert_eq!(initial_jitter("web", a, Duration::ZERO), Duration::ZERO);
    assert!(initial_jitter("web", a, Duration::from_nanos(1)).is_zero());
}

type Log = Arc<Mutex<Vec<(Instant, Probe, Option<bool>, bool, u64)>>>;

fn recorder(log: &Log) -> impl FnMut(&Probe, Option<bool>, &Tracker) + Send + 'static {
    let log = log.clone();
    move |p, flip, t| {
        log.lock().unwrap().push((
            Instant::now(),
            p.clone(),
            flip,
            t.healthy(),
            t.transitions(),
        ))
    }
}

/// Polls `log` until `cond` holds or `limit` passes.
async fn wait_for(
    log: &Log,
    limit: Duration,
    cond: impl Fn(&[(Instant, Probe, Option<bool>, bool, u64)]) -> bool,
) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond(&log.lock().unwrap()) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

#[tokio::test]
async fn run_checks_marks_a_stopped_server_down_and_a_restarted_one_up() {
    let l = TcpListener::bind((LO, 0)).await.unwrap();
    let port = l.local_addr().unwrap().port();
    let cfg = HealthCheck {
        kind: tcp(port),
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(40),
        rise: 2,
        fall: 3,
        initial: crate::model::HealthInitial::Checked,
    };
    let log: Log = Arc::default();
    let task = tokio::spawn(run_checks(
        "web".into(),
        LO,
        crate::health::Target::Direct(LO),
        cfg,
        Health::Up,
        recorder(&log),
    ));

    assert!(wait_for(&log, Duration::from_secs(1), |l| l.len() >= 2).await);
    assert!(
        log.lock()
            .unwrap()
            .iter()
            .all(|e| e.1.ok && e.2.is_none() && e.3)
    );

    let stopped_at = Instant::now();
    drop(l);
    assert!(
        wait_for(&log, Duration::from_secs(1), |l| l
            .iter()
            .any(|e| e.2 == Some(false)))
        .await,
        "no transition to unhealthy"
    );
    let down_after = stopped_at.elapsed();
    {
        let entries = log.lock().unwrap();
        let fails: Vec<_> = entries.iter().filter(|e| !e.1.ok).collect();
        // Exactly `fall` failures: the 3rd one flips.
        assert_eq!(fails.len(), 3, "{fails:?}");
        assert_eq!(fails[0].2, None);
        assert_eq!(fails[1].2, None);
        assert_eq!(fails[2].2, Some(false));
        assert!(fails.iter().all(|e| e.1.reason == "connection refused"));
        assert_eq!((fails[2].3, fails[2].4), (false, 1));
        // Start to start ≈ the interval.
        let gap = fails[2].0 - fails[1].0;
        assert!(
            gap > Duration::from_millis(30) && gap < Duration::from_millis(90),
            "{gap:?}"
        );
    }

    // Back on the same port: healthy after `rise` passes.
    let l = TcpListener::bind((LO, port)).await.unwrap();
    let restarted_at = Instant::now();
    assert!(
        wait_for(&log, Duration::from_secs(1), |l| l
            .last()
            .is_some_and(|e| e.2 == Some(true)))
        .await,
        "no transition back to healthy"
    );
    let up_after = restarted_at.elapsed();
    assert_eq!(log.lock().unwrap().last().unwrap().4, 2);
    task.abort();
    drop(l);
    eprintln!(
        "run_checks (interval 50ms, fall 3, rise 2): down {down_after:?} after stop, up {up_after:?} after restart"
    );
    // fall=3 at 50 ms: the 3rd failing probe is 100..150 ms after the stop.
    assert!(down_after < Duration::from_millis(300), "{down_after:?}");
    assert!(up_after < Duration::from_millis(250), "{up_after:?}");
}

#[tokio::test]
async fn run_checks_none_reports_once_and_stays_pending() {
    let cfg = HealthCheck {
        kind: HealthKind::None,
        interval: Duration::from_millis(10),
        timeout: Duration::from_millis(10),
        rise: 3,
        fall: 3,
        initial: crate::model::HealthInitial::Checked,
    };
    let log: Log = Arc::default();
    let task = tokio::spawn(run_checks(
        "web".into(),
        LO,
        crate::health::Target::Direct(LO),
        cfg,
        Health::Down,
        recorder(&log),
    ));
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert!(!task.is_finished());
    task.abort();
    let entries = log.lock().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!((entries[0].2, entries[0].3), (Some(true), true));
}

/// 20 backends, one hanging: every probe of the 19 fast ones completes within the
/// interval, on schedule, while the hanging one times out in its own task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_backend_does_not_delay_the_others() {
    let interval = Duration::from_millis(100);
    let timeout = Duration::from_millis(90);
    let hang_port = hanging_server().await;
    let mut ports = vec![hang_port];
    for _ in 0..19 {
        let (port, _rx) = http_server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
        ports.push(port);
    }
    let log: Arc<Mutex<Vec<(usize, Instant, Probe)>>> = Arc::default();
    let started = Instant::now();
    let tasks: Vec<_> = ports
        .iter()
        .enumerate()
        .map(|(i, &port)| {
            let cfg = HealthCheck {
                kind: http(port, (200, 399), Some("ok")),
                interval,
                timeout,
                rise: 2,
                fall: 3,
                initial: crate::model::HealthInitial::Checked,
            };
            let log = log.clone();
            tokio::spawn(run_checks(
                format!("svc{i}"),
                LO,
                crate::health::Target::Direct(LO),
                cfg,
                Health::Up,
                move |p: &Probe, _, _: &Tracker| {
                    log.lock().unwrap().push((i, Instant::now(), p.clone()))
                },
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(650)).await;
    for t in &tasks {
        t.abort();
    }
    let log = log.lock().unwrap();
    let mut fast_max = Duration::ZERO;
    let mut fast_gap_max = Duration::ZERO;
    let mut first_max = Duration::ZERO;
    for i in 0..ports.len() {
        let mine: Vec<_> = log.iter().filter(|e| e.0 == i).collect();
        if i == 0 {
            assert!(
                mine.len() >= 4,
                "hanging backend probed {} times",
                mine.len()
            );
            for e in &mine {
                assert!(!e.2.ok);
                assert_eq!(e.2.reason, "timeout (no response)");
                assert!(
                    e.2.latency >= timeout && e.2.latency < timeout + Duration::from_millis(60)
                );
            }
            eprintln!(
                "hanging backend: {} probes, latencies {:?}",
                mine.len(),
                mine.iter().map(|e| e.2.latency).collect::<Vec<_>>()
            );
            continue;
        }
        // The first probe within jitter (< interval) + a fast probe; then one per interval.
        assert!(mine.len() >= 5, "backend {i} probed {} times", mine.len());
        first_max = first_max.max(mine[0].1 - started);
        for e in &mine {
            assert!(e.2.ok, "backend {i}: {:?}", e.2);
            fast_max = fast_max.max(e.2.latency);
        }
        for w in mine.windows(2) {
            fast_gap_max = fast_gap_max.max(w[1].1 - w[0].1);
        }
    }
    eprintln!(
        "19 fast backends: slowest probe {fast_max:?}, first result by {first_max:?}, \
         largest gap between results {fast_gap_max:?} (interval {interval:?})"
    );
    assert!(fast_max < Duration::from_millis(60), "{fast_max:?}");
    assert!(
        first_max < interval + Duration::from_millis(60),
        "{first_max:?}"
    );
    assert!(
        fast_gap_max < interval + Duration::from_millis(60),
        "{fast_gap_max:?}"
    );
}

#[test]
fn transition_message_names_the_reason() {
    let mut t = Tracker::new(2, 3, true);
    let p = Probe {
        ok: false,
        latency: Duration::from_millis(500),
        reason: "timeout".into(),
    };
    for _ in 0..3 {
        t.record(&p);
    }
    assert_eq!(
        transition_message("web", LO, &p, &t),
        "service web: backend 127.0.0.1 is now unhealthy: timeout (3 failed checks in a row, last took 500ms)"
    );
}

/// A probe the balancer could not send (no route: its own interface is being
/// re-created) counts neither way: it neither fails a backend nor breaks a streak.
#[test]
fn a_local_failure_counts_neither_way() {
    let local = Probe {
        ok: false,
        latency: Duration::from_micros(30),
        reason: "network unreachable".into(),
    };
    assert!(local.is_local_failure());
    let mut t = Tracker::new(2, 2, true);
    for _ in 0..5 {
        assert_eq!(t.record(&local), None);
    }
    assert!(t.healthy());
    assert_eq!(t.last(), Some(&local));
    // A real failure, a local one, a real one: two in a row.
    assert_eq!(t.record(&probe_result(false)), None);
    assert_eq!(t.record(&local), None);
    assert_eq!(t.record(&probe_result(false)), Some(false));
}

/// A tunnel probe without a source address is a failed check (finding 1 of the tunnel
/// trial: it counted neither way and left the backend "healthy" forever).
#[test]
fn a_tunnel_probe_without_a_source_fails() {
    let p = Probe {
        ok: false,
        latency: Duration::from_micros(5),
        reason: crate::health::probe::no_source("10.71.100.10".parse().unwrap()),
    };
    assert_eq!(
        p.reason,
        "cannot probe through the tunnel: no IPv4 address on this host"
    );
    assert!(!p.is_local_failure());
    let mut t = Tracker::new(2, 2, true);
    assert_eq!(t.record(&p), None);
    assert_eq!(t.record(&p), Some(false));
}
