//! Tier 4: the soak (root). `soak_every_operation` runs the lab soak for 30 s with every
//! operation; the other tests prove, on made-up data, that its checks catch what they
//! must (so a green soak means something).
//!
//! Environment: `XLB_SOAK_SEED` (default: random, printed), `XLB_SOAK_DURATION` (default
//! 30s), `XLB_SOAK_OPS` (default all). `cargo xtask soak` runs the long one.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use xlb_tests::soak::{
    self, OpKind, Options,
    check::{Checker, LATE_NS, Obs, Topology, Violation},
    events::{Event, Ns, Timeline, What},
    mem,
    observe::Sample,
    rng::Rng,
    wire::{Answer, Request},
};

#[test]
fn soak_every_operation() {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let opts = Options {
        duration: env("XLB_SOAK_DURATION")
            .map(|d| soak::parse_duration(&d).expect("XLB_SOAK_DURATION"))
            .unwrap_or(Duration::from_secs(30)),
        seed: env("XLB_SOAK_SEED")
            .map(|s| s.parse().expect("XLB_SOAK_SEED"))
            .unwrap_or_else(soak::random_seed),
        ops: env("XLB_SOAK_OPS")
            .map(|o| OpKind::parse_list(&o).expect("XLB_SOAK_OPS"))
            .unwrap_or_else(|| OpKind::ALL.to_vec()),
        // Three restarts in 30 s (at 5, 15 and 25 s) instead of one.
        kill_every: Duration::from_secs(10),
        ..Options::default()
    };
    println!("soak seed {} ({})", opts.seed, soak::replay_command(&opts));
    let report = soak::run(&opts);
    println!("{}", report.text);
    assert!(
        !report.failed,
        "the soak found violations:\n{}",
        report.text
    );
}

// ---------------------------------------------------------------------------------------
// The checks, on made-up data.
// ---------------------------------------------------------------------------------------

const MS: Ns = 1_000_000;
const T0: Ns = 1_000_000_000_000;

fn vip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 200, 0, n))
}

/// Two services; backends 0 and 1 in a's pool, 2 and 3 in b's; 3 never added at the
/// start. Client 0 uses a, client 1 uses b.
fn topo() -> Topology {
    Topology {
        services: vec!["a".into(), "b".into()],
        vips: vec![vip(1), vip(2)],
        backend_service: vec![0, 0, 1, 1],
        backend_names: (0..4).map(|b| format!("be{b}")).collect(),
        backend_addrs: (0..4)
            .map(|b| IpAddr::V4(Ipv4Addr::new(10, 100, 0, 11 + b)))
            .collect(),
        client_addrs: vec![
            IpAddr::V4(Ipv4Addr::new(10, 101, 0, 1)),
            IpAddr::V4(Ipv4Addr::new(10, 101, 0, 2)),
        ],
        client_service: vec![0, 1],
    }
}

const MEMBERS: [bool; 4] = [true, true, true, false];

fn obs(client: u32, seq: u32, at_ms: Ns, backend: usize) -> Obs {
    Obs {
        client,
        seq,
        send_ns: T0 + at_ms * MS - MS,
        rx_ns: T0 + at_ms * MS,
        backend,
        dst: vip(1 + client as u8),
    }
}

fn op(start_ms: Ns, end_ms: Ns, what: What) -> Event {
    Event {
        tick: Some(0),
        start: T0 + start_ms * MS,
        end: T0 + end_ms * MS,
        text: format!("{what:?}"),
        what,
        error: None,
    }
}

fn check(events: &[Event], answers: &[Obs]) -> Checker {
    let mut c = Checker::new(topo());
    c.feed(answers.iter().copied());
    c.process(Ns::MAX, &Timeline::build(events, &MEMBERS, T0));
    c
}

#[test]
fn a_change_nothing_explains_is_a_violation() {
    let c = check(
        &[],
        &[obs(0, 0, 100, 0), obs(0, 1, 200, 0), obs(0, 2, 300, 1)],
    );
    assert_eq!(c.counts.unexcused, 1);
    assert_eq!(
        c.kept,
        vec![Violation::Unexcused {
            client: 0,
            from: 0,
            from_seq: 1,
            from_rx: T0 + 200 * MS,
            to: 1,
            to_seq: 2,
            to_rx: T0 + 300 * MS,
        }]
    );
}

#[test]
fn drain_neighbour_flush_weight_and_restart_excuse_nothing() {
    let events = [
        op(210, 220, What::Drain(0)),
        op(230, 231, What::NeighDel(0)),
        op(232, 233, What::NeighFlush),
        op(234, 240, What::Weight(0, 3)),
        op(241, 242, What::Kill),
        op(242, 280, What::Restart),
    ];
    let c = check(&events, &[obs(0, 1, 200, 0), obs(0, 2, 300, 1)]);
    assert_eq!(c.counts.unexcused, 1);
    assert_eq!(c.counts.excused(), 0);
}

#[test]
fn removal_server_stop_and_health_change_of_the_old_backend_excuse_a_change() {
    let cases = [
        (op(250, 260, What::Remove(0)), "removed"),
        (op(250, 251, What::ServerStop(0)), "server"),
        (op(150, 260, What::Health(0, "unhealthy".into())), "health"),
    ];
    for (event, name) in cases {
        let c = check(&[event], &[obs(0, 1, 200, 0), obs(0, 2, 300, 1)]);
        assert_eq!((c.counts.unexcused, c.counts.excused()), (0, 1), "{name}");
    }
    // The same events on another backend, or long before, excuse nothing.
    for event in [
        op(250, 260, What::Remove(1)),
        op(250, 251, What::ServerStop(2)),
        op(10, 20, What::Health(0, "unhealthy".into())),
    ] {
        let c = check(&[event], &[obs(0, 1, 200, 0), obs(0, 2, 300, 1)]);
        assert_eq!(c.counts.unexcused, 1, "{:?}", c.counts);
    }
    // A server started again before the client's last answer from it excuses nothing.
    let events = [
        op(50, 51, What::ServerStop(0)),
        op(100, 150, What::ServerStart(0)),
    ];
    let c = check(&events, &[obs(0, 1, 200, 0), obs(0, 2, 300, 1)]);
    assert_eq!(c.counts.unexcused, 1);
}

#[test]
fn a_packet_at_a_removed_backend_after_20_ms_is_late() {
    let events = [op(100, 110, What::Remove(0))];
    let allowed = LATE_NS / MS;
    let c = check(
        &events,
        &[
            obs(0, 1, 105, 0),
            obs(0, 2, 110 + allowed - 1, 0),
            obs(0, 3, 110 + allowed + 1, 0),
        ],
    );
    assert_eq!(c.counts.late, 1, "{:?}", c.counts);
    assert!(matches!(c.kept[0], Violation::Late { seq: 3, .. }));
    // Added again: from the add's start on, packets there are fine.
    let events = [op(100, 110, What::Remove(0)), op(200, 210, What::Add(0))];
    let c = check(&events, &[obs(0, 1, 205, 0), obs(0, 2, 300, 0)]);
    assert_eq!(c.counts.late, 0);
    // A backend never added takes nothing, from the start.
    let c = check(&[], &[obs(1, 1, 100, 3)]);
    assert_eq!(c.counts.late, 1);
    // A failed remove removed nothing.
    let mut failed = op(100, 110, What::Remove(0));
    failed.error = Some("exit 1".into());
    let c = check(&[failed], &[obs(0, 1, 300, 0)]);
    assert_eq!(c.counts.late, 0);
}

#[test]
fn a_packet_at_another_services_backend_or_vip_is_cross_service() {
    let c = check(&[], &[obs(0, 1, 100, 2)]);
    assert_eq!(c.counts.cross_service, 1);
    let mut wrong_vip = obs(0, 2, 200, 0);
    wrong_vip.dst = vip(2);
    let c = check(&[], &[wrong_vip]);
    assert_eq!(c.counts.cross_service, 1);
    let c = check(&[], &[obs(0, 1, 100, 0), obs(1, 1, 100, 2)]);
    assert_eq!(c.counts.cross_service, 0);
}

#[test]
fn answers_are_checked_per_client_in_sequence_order_whatever_their_arrival() {
    // Arrival order 2, 0, 1: still no change.
    let c = check(
        &[],
        &[obs(0, 2, 300, 1), obs(0, 0, 100, 1), obs(0, 1, 200, 1)],
    );
    assert_eq!((c.counts.answers, c.counts.unexcused), (3, 0));
    // An answer whose batch has passed is a straggler, not a change.
    let mut k = Checker::new(topo());
    let tl = Timeline::build(&[], &MEMBERS, T0);
    k.feed([obs(0, 5, 500, 0)]);
    k.process(Ns::MAX, &tl);
    k.feed([obs(0, 4, 400, 1)]);
    k.process(Ns::MAX, &tl);
    assert_eq!((k.counts.stragglers, k.counts.unexcused), (1, 0));
    // Batches cut at the watermark keep a client's order across them.
    let mut k = Checker::new(topo());
    k.feed([obs(0, 0, 100, 0), obs(0, 1, 200, 1)]);
    k.process(T0 + 150 * MS, &tl);
    assert_eq!(k.counts.answers, 1);
    k.process(Ns::MAX, &tl);
    assert_eq!((k.counts.answers, k.counts.unexcused), (2, 1));
}

fn samples(life: u32, rss: impl Fn(u64) -> u64, fds: impl Fn(u64) -> u64) -> Vec<Sample> {
    (0..40)
        .map(|s| Sample {
            life,
            t: T0 + s * 1_000 * MS,
            rss_kib: rss(s),
            fds: fds(s),
        })
        .collect()
}

#[test]
fn flat_memory_passes_growth_within_a_life_or_across_lives_fails() {
    let flat = samples(1, |s| 14_000 + (s % 3) * 300, |s| 29 + s % 3);
    assert_eq!(mem::judge(&flat).1, Vec::<String>::new());
    let leak = samples(1, |s| 14_000 + s * 200, |_| 29);
    assert_eq!(mem::judge(&leak).1.len(), 1, "{:?}", mem::judge(&leak));
    let fd_leak = samples(1, |_| 14_000, |s| 29 + s / 4);
    assert_eq!(mem::judge(&fd_leak).1.len(), 1);
    let mut lives = flat.clone();
    lives.extend(samples(2, |_| 20_000, |_| 29));
    assert_eq!(mem::judge(&lives).1.len(), 1, "{:?}", mem::judge(&lives));
    let mut lives = flat;
    lives.extend(samples(2, |_| 14_100, |_| 40));
    assert_eq!(mem::judge(&lives).1.len(), 1);
}

// ---------------------------------------------------------------------------------------
// Replays: the wire format, the seeded generator, the arguments.
// ---------------------------------------------------------------------------------------

#[test]
fn requests_and_answers_round_trip_and_garbage_is_refused() {
    let r = Request {
        client: 1999,
        seq: 77,
        send_ns: T0,
    };
    assert_eq!(Request::decode(&r.encode()), Some(r));
    let a = Answer {
        request: r,
        rx_ns: T0 + 5,
        kernel_stamp: true,
        dst: vip(2),
        backend: "be7".into(),
    };
    assert_eq!(Answer::decode(&a.encode()), Some(a.clone()));
    let v6 = Answer {
        dst: "fd00:200::1".parse().expect("v6"),
        ..a.clone()
    };
    assert_eq!(Answer::decode(&v6.encode()), Some(v6));
    assert_eq!(Request::decode(b"ping"), None);
    assert_eq!(Answer::decode(b"be0"), None);
    assert_eq!(Answer::decode(&a.encode()[..40]), None);
}

#[test]
fn a_seed_replays_the_same_numbers_forever() {
    // Golden values: changing the generator would silently change every replay.
    let mut r = Rng::new(1234567);
    let v: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
    assert_eq!(
        v,
        [
            6457827717110365317,
            3203168211198807973,
            9817491932198370423
        ]
    );
    let (mut a, mut b) = (Rng::fork(42, 1), Rng::fork(42, 1));
    assert_eq!(a.below(1000), b.below(1000));
    assert_ne!(Rng::fork(42, 1).next_u64(), Rng::fork(42, 2).next_u64());
}

#[test]
fn operation_lists_and_durations_parse_or_say_why_not() {
    assert_eq!(
        OpKind::parse_list("add,remove,kill"),
        Ok(vec![OpKind::Add, OpKind::Remove, OpKind::Kill])
    );
    assert_eq!(OpKind::parse_list("all"), Ok(OpKind::ALL.to_vec()));
    let e = OpKind::parse_list("add,reboot").expect_err("unknown");
    assert!(e.contains("reboot") && e.contains("neigh"), "{e}");
    assert!(OpKind::parse_list("").is_err());
    assert_eq!(soak::parse_duration("1m30s"), Ok(Duration::from_secs(90)));
    assert_eq!(
        soak::parse_duration("100ms"),
        Ok(Duration::from_millis(100))
    );
    assert!(soak::parse_duration("5 minutes").is_err());
    assert!(soak::parse_duration("").is_err());
    assert_eq!(soak::format_duration(Duration::from_secs(300)), "5m");
    assert_eq!(soak::format_duration(Duration::from_millis(1500)), "1.5s");
}
