//! Pure tests of reconcile and of edit validation (no maps, no root).

use std::{collections::BTreeMap, net::IpAddr};

use lb_common::{BE_F_HEALTHY, NO_BACKEND};
use proptest::prelude::*;

use super::*;
use crate::model::{Backend, Edit, FieldError, HealthInitial, HealthKind, Protocol, Service};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn link(a: IpAddr) -> Link {
    let o = match a {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    };
    Link {
        mac: [2, 0xbe, 0, 0, o[o.len() - 2], o[o.len() - 1]],
        src_mac: [2, 0x1b, 0, 0, 0, 1],
        ifindex: 1,
    }
}

fn svc(name: &str, vip: &str, port: u16, backends: &[&str]) -> Service {
    let mut s = Service::new(name, ip(vip), port, Protocol::Tcp);
    s.table_size = 1021;
    s.backends = backends.iter().map(|a| Backend::new(ip(a))).collect();
    s
}

/// Every backend of `d` resolved and up.
fn all_up(d: &Desired) -> Observed {
    let mut o = Observed::default();
    for s in d.services() {
        for b in &s.backends {
            o.health.insert((s.name.clone(), b.address), Health::Up);
            o.links.insert(b.address, Some(link(b.address)));
        }
    }
    o
}

const CAPACITY: u32 = 1 << 16;

/// What must not depend on history: per service its settings, its backends by address
/// (weight, health, draining, usable) and its Maglev table by backend address.
type View = BTreeMap<
    String,
    (
        ServiceValueView,
        Vec<(IpAddr, u32, Health, bool, bool)>,
        Vec<Option<IpAddr>>,
    ),
>;
type ServiceValueView = (ServiceKey, u32, u32, u64, u8);

fn view(p: &Programmed) -> View {
    p.services
        .iter()
        .map(|s| {
            let v = &s.value;
            let settings = (
                s.key,
                v.flags,
                v.table_size,
                v.idle_timeout_ns,
                v.prefix_len,
            );
            let backends = s
                .backends
                .iter()
                .map(|b| (b.address, b.weight, b.health, b.draining, b.usable()))
                .collect();
            let table = s
                .table
                .iter()
                .map(|id| {
                    (*id != NO_BACKEND).then(|| s.backend_by_id(*id).expect("table id").address)
                })
                .collect();
            (s.name.clone().expect("named"), (settings, backends, table))
        })
        .collect()
}

fn scratch(d: &Desired, o: &Observed) -> Programmed {
    let mut alloc = Generations::starting_at(1);
    reconcile(d, o, &Programmed::empty(CAPACITY), &mut alloc)
        .expect("from scratch")
        .0
}

/// Applies `edits` one by one (invalid ones are refused and change nothing), reconciling
/// after each; returns the final desired state and what is programmed.
fn step_by_step(base: &[Service], edits: &[Edit]) -> (Desired, Programmed, Vec<Plan>) {
    let mut d = Desired::from_services(base);
    let mut alloc = Generations::starting_at(1);
    let mut p = reconcile(&d, &all_up(&d), &Programmed::empty(CAPACITY), &mut alloc)
        .expect("base")
        .0;
    let mut plans = Vec::new();
    for e in edits {
        let mut next = d.clone();
        if next.apply(e).is_err() {
            continue;
        }
        let (np, plan) = reconcile(&next, &all_up(&next), &p, &mut alloc).expect("reconcile");
        check_plan_order(&plan, &p, &np);
        plans.push(plan);
        p = np;
        d = next;
    }
    (d, p, plans)
}

/// The write-order rules of the module docs, checked on one plan.
fn check_plan_order(plan: &Plan, before: &Programmed, after: &Programmed) {
    let ops = &plan.0;
    if let Some(i) = ops
        .iter()
        .position(|o| matches!(o, MapOp::NextGeneration(_)))
    {
        assert_eq!(i, 0, "the generation counter is persisted first: {ops:?}");
    }
    for (i, op) in ops.iter().enumerate() {
        let MapOp::Slots { table, .. } = op else {
            continue;
        };
        // Every backend a new slot points to was made usable before (or already was).
        for id in table.iter().filter(|id| **id != NO_BACKEND) {
            let written_before = ops[..i].iter().any(|o| {
                matches!(o, MapOp::Backend { id: b, value } if b == id && value.flags & BE_F_HEALTHY != 0)
            });
            let was_usable = before
                .services
                .iter()
                .flat_map(|s| &s.backends)
                .any(|b| b.id == *id && b.usable());
            assert!(
                written_before || was_usable,
                "slot points to backend {id} before it is usable: {ops:?}"
            );
        }
        // Nothing that leaves the table is cleared or made unusable before the slots.
        for later in &ops[..i] {
            if let MapOp::Backend { id, value } = later {
                assert!(
                    value.flags & BE_F_HEALTHY != 0
                        || !before.services.iter().any(|s| s.table.contains(id)),
                    "backend {id} made unusable before the slots changed: {ops:?}"
                );
            }
        }
    }
    // Generations are never reused by a new backend.
    let old: Vec<(u32, u32)> = before
        .services
        .iter()
        .flat_map(|s| s.backends.iter().map(|b| (b.id, b.generation)))
        .collect();
    for b in after.services.iter().flat_map(|s| &s.backends) {
        if !old.contains(&(b.id, b.generation)) {
            assert!(
                old.iter().all(|(_, g)| *g < b.generation),
                "generation {} issued again",
                b.generation
            );
        }
    }
}

fn base() -> Vec<Service> {
    vec![
        svc(
            "web",
            "203.0.113.10",
            80,
            &["192.0.2.11", "192.0.2.12", "192.0.2.13"],
        ),
        svc("dns", "203.0.113.10", 53, &["192.0.2.11", "192.0.2.14"]),
    ]
}

#[test]
fn edits_one_by_one_equal_the_final_config_from_scratch() {
    let extra = {
        let mut s = svc("api", "203.0.113.20", 443, &["192.0.2.21", "192.0.2.22"]);
        s.backends[1].weight = 3;
        s
    };
    let edits = vec![
        Edit::BackendAdd {
            service: "web".into(),
            address: ip("192.0.2.14"),
            weight: 2,
        },
        Edit::BackendDrain {
            service: "web".into(),
            address: ip("192.0.2.12"),
        },
        Edit::BackendRemove {
            service: "web".into(),
            address: ip("192.0.2.11"),
        },
        Edit::ServiceAdd {
            service: Box::new(extra),
        },
        Edit::BackendWeight {
            service: "api".into(),
            address: ip("192.0.2.21"),
            weight: 4,
        },
        Edit::ServiceRemove { name: "dns".into() },
        Edit::BackendAdd {
            service: "web".into(),
            address: ip("192.0.2.11"),
            weight: 1,
        },
        Edit::BackendUndrain {
            service: "web".into(),
            address: ip("192.0.2.12"),
        },
    ];
    let (d, p, plans) = step_by_step(&base(), &edits);
    assert_eq!(plans.len(), edits.len(), "every edit was valid");
    assert_eq!(view(&p), view(&scratch(&d, &all_up(&d))));
    // The re-added backend got a new generation: its old clients are not inherited.
    let first = step_by_step(&base(), &[]).1;
    let old = first
        .service("web")
        .unwrap()
        .backend(ip("192.0.2.11"))
        .unwrap();
    let new = p.service("web").unwrap().backend(ip("192.0.2.11")).unwrap();
    assert!(new.generation > old.generation);
}

/// One generator of edits over a small world: three service names, a pool of backend
/// addresses; many edits are invalid (and must change nothing).
fn edit_strategy() -> impl Strategy<Value = Edit> {
    let name = prop::sample::select(vec!["web", "dns", "api"]);
    let addr = (11u8..=18).prop_map(|i| IpAddr::from([192, 0, 2, i]));
    let weight = prop_oneof![Just(0u32), 1u32..5, Just(70_000)];
    prop_oneof![
        (name.clone(), addr.clone(), weight.clone()).prop_map(|(s, a, w)| Edit::BackendAdd {
            service: s.into(),
            address: a,
            weight: w
        }),
        (name.clone(), addr.clone()).prop_map(|(s, a)| Edit::BackendRemove {
            service: s.into(),
            address: a
        }),
        (name.clone(), addr.clone()).prop_map(|(s, a)| Edit::BackendDrain {
            service: s.into(),
            address: a
        }),
        (name.clone(), addr.clone()).prop_map(|(s, a)| Edit::BackendUndrain {
            service: s.into(),
            address: a
        }),
        (name.clone(), addr.clone(), weight).prop_map(|(s, a, w)| Edit::BackendWeight {
            service: s.into(),
            address: a,
            weight: w
        }),
        name.clone()
            .prop_map(|s| Edit::ServiceRemove { name: s.into() }),
        (name, 1u16..4, prop::collection::vec(addr, 0..4)).prop_map(|(s, port, addrs)| {
            let mut svc = svc(s, "203.0.113.30", port, &[]);
            svc.backends = addrs.into_iter().map(Backend::new).collect();
            Edit::ServiceAdd {
                service: Box::new(svc),
            }
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any sequence of edits, reconciled after each, ends where the final intent
    /// reconciled from scratch ends (ids and generations aside), and every plan keeps the
    /// write order.
    #[test]
    fn any_edit_sequence_equals_the_final_config_from_scratch(
        edits in prop::collection::vec(edit_strategy(), 0..24)
    ) {
        let (d, p, _) = step_by_step(&base(), &edits);
        prop_assert_eq!(view(&p), view(&scratch(&d, &all_up(&d))));
        // A state file of the result replays to the same intent.
        let (again, warnings) = Desired::replay(&base(), &d.diff(&base()));
        prop_assert!(warnings.is_empty(), "{:?}", warnings);
        prop_assert_eq!(again, d);
    }
}

/// Every rejection names its field.
#[test]
fn invalid_edits_name_their_field_and_change_nothing() {
    let d = Desired::from_services(&base());
    let mut dup = svc("api", "203.0.113.10", 80, &[]);
    let cases: Vec<(Edit, &str)> = vec![
        (
            Edit::BackendAdd {
                service: "nosuch".into(),
                address: ip("192.0.2.20"),
                weight: 1,
            },
            "service",
        ),
        (
            Edit::BackendAdd {
                service: "web".into(),
                address: ip("192.0.2.11"),
                weight: 1,
            },
            "address",
        ),
        (
            Edit::BackendAdd {
                service: "web".into(),
                address: ip("192.0.2.20"),
                weight: 0,
            },
            "weight",
        ),
        (
            Edit::BackendAdd {
                service: "web".into(),
                address: ip("2001:db8::1"),
                weight: 1,
            },
            "address",
        ),
        (
            Edit::BackendAdd {
                service: "web".into(),
                address: ip("fe80::1"),
                weight: 1,
            },
            "address",
        ),
        (
            Edit::BackendRemove {
                service: "web".into(),
                address: ip("192.0.2.99"),
            },
            "address",
        ),
        (
            Edit::BackendDrain {
                service: "nosuch".into(),
                address: ip("192.0.2.11"),
            },
            "service",
        ),
        (
            Edit::BackendWeight {
                service: "web".into(),
                address: ip("192.0.2.11"),
                weight: 65536,
            },
            "weight",
        ),
        (
            Edit::ServiceRemove {
                name: "nosuch".into(),
            },
            "name",
        ),
        (
            Edit::ServiceAdd {
                service: Box::new(dup.clone()),
            },
            "port",
        ),
        (
            Edit::ServiceAdd {
                service: Box::new(svc("web", "203.0.113.99", 80, &[])),
            },
            "name",
        ),
    ];
    dup.idle_timeout = std::time::Duration::from_millis(50);
    dup.port = 81;
    let short = (
        Edit::ServiceAdd {
            service: Box::new(dup),
        },
        "idle_timeout",
    );
    for (edit, field) in cases.iter().chain([&short]) {
        let mut after = d.clone();
        let errors: Vec<FieldError> = after.apply(edit).expect_err("invalid");
        assert!(
            errors.iter().any(|e| e.field == *field),
            "{edit:?}: {errors:?} does not name {field}"
        );
        assert!(
            errors
                .iter()
                .all(|e| !e.field.is_empty() && !e.message.is_empty())
        );
        assert_eq!(after, d, "{edit:?} changed the state");
    }
}

/// The table and usable rules of the module docs, backend by backend.
#[test]
fn table_membership_follows_health_initial_drain_and_link() {
    let mut s = svc(
        "web",
        "203.0.113.10",
        80,
        &[
            "192.0.2.1",
            "192.0.2.2",
            "192.0.2.3",
            "192.0.2.4",
            "192.0.2.5",
            "192.0.2.6",
        ],
    );
    s.backends[4].draining = true;
    let d = Desired::from_services(&[s.clone()]);
    let mut o = all_up(&d);
    let k = |a: &str| ("web".to_string(), ip(a));
    o.health.remove(&k("192.0.2.2")); // never checked: Unknown
    o.health.insert(k("192.0.2.3"), Health::Down);
    o.links.insert(ip("192.0.2.6"), None); // neighbour not resolved
    let p = scratch(&d, &o);
    let ps = p.service("web").unwrap();
    let state = |a: &str| {
        let b = ps.backend(ip(a)).unwrap();
        (b.usable(), ps.table.contains(&b.id))
    };
    assert_eq!(state("192.0.2.1"), (true, true), "up");
    assert_eq!(
        state("192.0.2.2"),
        (false, false),
        "unknown, initial checked (issue 10 fault 4)"
    );
    assert_eq!(state("192.0.2.3"), (false, false), "down");
    assert_eq!(state("192.0.2.5"), (true, false), "draining keeps its pins");
    assert_eq!(state("192.0.2.6"), (false, false), "no link");

    // initial = "up", and kind none: unknown backends take clients.
    for change in [
        |s: &mut Service| s.health.initial = HealthInitial::Up,
        |s: &mut Service| s.health.kind = HealthKind::None,
    ] {
        let mut s2 = s.clone();
        change(&mut s2);
        let d2 = Desired::from_services(&[s2]);
        let p2 = scratch(&d2, &o);
        let ps2 = p2.service("web").unwrap();
        let b = ps2.backend(ip("192.0.2.2")).unwrap();
        assert!(b.usable() && ps2.table.contains(&b.id));
    }
}

/// A restart: what the maps hold (names unknown) is matched to the same intent; ids,
/// generations, tables, health and links are kept and nothing but the VIP set is written.
#[test]
fn adoption_keeps_everything_and_writes_nothing() {
    let d = Desired::from_services(&base());
    let first = scratch(&d, &all_up(&d));
    let mut adopted = first.clone();
    for s in &mut adopted.services {
        s.name = None;
        s.previous_table = s.table.clone();
        for b in &mut s.backends {
            b.weight = 0;
        }
    }
    adopted.vips = None;
    let mut alloc = Generations::starting_at(adopted.max_generation() + 1);
    // No observation yet: the daemon has not checked anything.
    let (p, plan) = reconcile(&d, &Observed::default(), &adopted, &mut alloc).unwrap();
    assert!(
        plan.0.iter().all(|op| matches!(op, MapOp::Vips(_))),
        "{:?}",
        plan.0
    );
    assert_eq!(view(&p), view(&first));
    for (a, b) in p.services.iter().zip(&first.services) {
        assert_eq!((a.id, a.table_offset()), (b.id, b.table_offset()));
        let gens = |s: &ProgrammedService| {
            s.backends
                .iter()
                .map(|b| (b.id, b.generation))
                .collect::<Vec<_>>()
        };
        assert_eq!(gens(a), gens(b));
    }
    // An adopted service whose table size changed starts afresh in a new region, and
    // the old one is removed with its pins.
    let mut bigger = base();
    bigger[0].table_size = 2039;
    let (p, plan) = reconcile(
        &Desired::from_services(&bigger),
        &all_up(&d),
        &adopted,
        &mut alloc,
    )
    .unwrap();
    let old = adopted
        .services
        .iter()
        .find(|s| s.key == service_key(&base()[0]))
        .unwrap();
    assert!(plan.0.contains(&MapOp::RemoveService { key: old.key }));
    assert!(
        plan.0
            .contains(&MapOp::FlushAffinity { service_id: old.id })
    );
    assert_ne!(
        p.service("web").unwrap().id,
        old.id,
        "not reused in the same plan"
    );
}

/// failback = "rebalance": a backend that comes back from Down gets its slots' clients
/// back (a Rebalance op after its slots are written); sticky does not.
#[test]
fn recovery_rebalances_only_with_failback_rebalance() {
    for (failback, want) in [(Failback::Rebalance, true), (Failback::Sticky, false)] {
        let mut s = svc("web", "203.0.113.10", 80, &["192.0.2.1", "192.0.2.2"]);
        s.failback = failback;
        let d = Desired::from_services(&[s]);
        let mut o = all_up(&d);
        o.health
            .insert(("web".into(), ip("192.0.2.2")), Health::Down);
        let mut alloc = Generations::starting_at(1);
        let (p, _) = reconcile(&d, &o, &Programmed::empty(CAPACITY), &mut alloc).unwrap();
        o.health.insert(("web".into(), ip("192.0.2.2")), Health::Up);
        let (_, plan) = reconcile(&d, &o, &p, &mut alloc).unwrap();
        let slots = plan
            .0
            .iter()
            .position(|op| matches!(op, MapOp::Slots { .. }));
        let re = plan
            .0
            .iter()
            .position(|op| matches!(op, MapOp::Rebalance { .. }));
        assert_eq!(re.is_some(), want, "{failback:?}: {:?}", plan.0);
        if let (Some(s), Some(r)) = (slots, re) {
            assert!(s < r);
        }
        // Unknown → Up (a new backend's first pass) is no recovery.
        let mut o2 = all_up(&d);
        o2.health.remove(&("web".into(), ip("192.0.2.2")));
        let (p2, _) = reconcile(&d, &o2, &Programmed::empty(CAPACITY), &mut alloc).unwrap();
        let (_, plan) = reconcile(&d, &all_up(&d), &p2, &mut alloc).unwrap();
        assert!(
            !plan
                .0
                .iter()
                .any(|op| matches!(op, MapOp::Rebalance { .. }))
        );
    }
}

/// Maglev space and ids run out with a clear error, and nothing is planned.
#[test]
fn out_of_space_is_an_error() {
    let mut s = svc("web", "203.0.113.10", 80, &["192.0.2.1"]);
    s.table_size = 65537;
    let d = Desired::from_services(&[s]);
    let mut alloc = Generations::starting_at(1);
    let e = reconcile(&d, &all_up(&d), &Programmed::empty(1000), &mut alloc).unwrap_err();
    assert!(
        e.to_string()
            .contains("no room for a Maglev table of 65537"),
        "{e}"
    );
}

/// A health change of one backend rebuilds only its own service's Maglev table; the
/// others reuse theirs (their members did not change), and the result is what a build
/// from scratch gives.
#[test]
fn unchanged_members_reuse_their_table() {
    let d = Desired::from_services(&[
        svc("a", "10.0.0.1", 80, &["192.0.2.1", "192.0.2.2"]),
        svc("b", "10.0.0.2", 80, &["192.0.2.3", "192.0.2.4"]),
        svc("c", "10.0.0.3", 80, &["192.0.2.5", "192.0.2.6"]),
    ]);
    let mut obs = all_up(&d);
    let mut alloc = Generations::starting_at(1);
    let (p1, _) = reconcile(&d, &obs, &Programmed::empty(CAPACITY), &mut alloc).unwrap();
    let built = || TABLES_BUILT.with(|n| n.get());
    let before = built();
    let (p2, plan) = reconcile(&d, &obs, &p1, &mut alloc).unwrap();
    assert_eq!(
        (built() - before, plan.0.len()),
        (0, 0),
        "nothing changed: no build"
    );
    obs.health
        .insert(("b".into(), ip("192.0.2.3")), Health::Down);
    let before = built();
    let (p3, _) = reconcile(&d, &obs, &p2, &mut alloc).unwrap();
    assert_eq!(built() - before, 1, "only service b's table is rebuilt");
    let (fresh, _) = reconcile(&d, &obs, &Programmed::empty(CAPACITY), &mut alloc).unwrap();
    assert_eq!(view(&p3), view(&fresh));
}

/// Issue 13, tunnel mode: the service value says tunnel (and the tunnel_source flag),
/// `XLB_TUN_SRC` is written before the service value (zeros without a tunnel_source) and
/// cleared when the service goes; the egress entry of a tunnel backend's interface is
/// written before the backend is usable and removed when no tunnel backend uses it; a
/// tunnel backend without an egress address of its family is not usable.
#[test]
fn tunnel_services_write_their_source_and_egress_in_order() {
    use lb_common::{MODE_TUNNEL, SVC_F_TUNNEL_SOURCE, tunnel::TunnelSource};

    let mut s = svc("t", "203.0.113.10", 80, &["192.0.2.11", "2001:db8:2::11"]);
    s.forwarding = crate::model::Forwarding::Tunnel;
    let d = Desired::from_services(std::slice::from_ref(&s));
    let mut o = all_up(&d);
    // Interface 1 has an IPv4 address only: the 4in6 backend has no outer source.
    o.egress.insert(
        1,
        tunnel::egress_value(1500, Some("192.0.2.1".parse().unwrap()), None),
    );
    let mut alloc = Generations::starting_at(1);
    let empty = Programmed::empty(CAPACITY);
    let (p, plan) = reconcile(&d, &o, &empty, &mut alloc).unwrap();
    let ps = p.service("t").unwrap();
    assert_eq!(ps.value.mode, MODE_TUNNEL);
    assert_eq!(ps.value.flags & SVC_F_TUNNEL_SOURCE, 0);
    assert!(ps.backend(ip("192.0.2.11")).unwrap().usable());
    assert!(
        !ps.backend(ip("2001:db8:2::11")).unwrap().usable(),
        "no IPv6 address on the egress interface"
    );
    let pos = |f: &dyn Fn(&MapOp) -> bool| plan.0.iter().position(f).expect("op in plan");
    let src = pos(
        &|o| matches!(o, MapOp::TunnelSource { value, .. } if *value == TunnelSource::default()),
    );
    let svc_op = pos(&|o| matches!(o, MapOp::Service { .. }));
    let egress = pos(&|o| {
        matches!(
            o,
            MapOp::Egress {
                ifindex: 1,
                value: Some(_)
            }
        )
    });
    let usable =
        pos(&|o| matches!(o, MapOp::Backend { value, .. } if value.flags & BE_F_HEALTHY != 0));
    assert!(src < svc_op && egress < usable, "{plan:?}");

    // A tunnel_source: the flag and the prefix; no egress address needed.
    let mut s2 = s.clone();
    s2.backends.remove(0);
    s2.tunnel_source = Some("2001:db8:99::/64".parse().unwrap());
    let d2 = Desired::from_services(&[s2]);
    let (p2, plan2) = reconcile(&d2, &o, &p, &mut alloc).unwrap();
    let ps2 = p2.service("t").unwrap();
    assert_ne!(ps2.value.flags & SVC_F_TUNNEL_SOURCE, 0);
    assert_eq!(ps2.tunnel_source.family, lb_common::FAMILY_V6);
    assert!(ps2.backend(ip("2001:db8:2::11")).unwrap().usable());
    assert!(plan2.0.iter().any(
        |o| matches!(o, MapOp::TunnelSource { value, .. } if value.family == lb_common::FAMILY_V6)
    ));

    // The tunnel_source dropped: the flag goes first, the entry is zeroed after it.
    let mut back = s.clone();
    back.backends.remove(0);
    let d_back = Desired::from_services(&[back]);
    let mut o_v6 = o.clone();
    o_v6.egress.insert(
        1,
        tunnel::egress_value(1500, None, Some("2001:db8:1::1".parse().unwrap())),
    );
    let (_, plan_back) = reconcile(&d_back, &o_v6, &p2, &mut alloc.clone()).unwrap();
    let svc_at = plan_back
        .0
        .iter()
        .position(
            |o| matches!(o, MapOp::Service { value, .. } if value.flags & SVC_F_TUNNEL_SOURCE == 0),
        )
        .expect("service value without the flag");
    let zero_at = plan_back
        .0
        .iter()
        .position(
            |o| matches!(o, MapOp::TunnelSource { value, .. } if *value == TunnelSource::default()),
        )
        .expect("zeroed source");
    assert!(svc_at < zero_at, "{plan_back:?}");

    // Gone: its source cleared, the egress entry removed (last).
    let (p3, plan3) = reconcile(&Desired::default(), &o, &p2, &mut alloc).unwrap();
    assert!(p3.egress.is_empty());
    assert!(plan3.0.iter().any(
        |o| matches!(o, MapOp::TunnelSource { value, .. } if *value == TunnelSource::default())
    ));
    assert!(
        matches!(
            plan3.0.last(),
            Some(MapOp::Egress {
                ifindex: 1,
                value: None
            })
        ),
        "{plan3:?}"
    );

    // An egress interface not read yet: not usable (the data plane would drop).
    let mut o4 = all_up(&d);
    o4.egress.clear();
    let (p4, _) = reconcile(&d, &o4, &empty, &mut Generations::starting_at(1)).unwrap();
    assert!(
        p4.service("t")
            .unwrap()
            .backends
            .iter()
            .all(|b| !b.usable())
    );
    // DSR services need no egress entry.
    let dsr = Desired::from_services(&[svc("d", "203.0.113.10", 80, &["192.0.2.11"])]);
    let (p5, plan5) = reconcile(
        &dsr,
        &all_up(&dsr),
        &empty,
        &mut Generations::starting_at(1),
    )
    .unwrap();
    assert!(p5.egress.is_empty() && p5.service("d").unwrap().backends[0].usable());
    assert!(!plan5.0.iter().any(|o| matches!(o, MapOp::Egress { .. })));
}

/// Finding 4 of the tunnel trial: a DSR backend whose route has a gateway was put in the
/// table (its frames looped balancer <-> router); now it is not usable and not in the
/// Maglev table, and a tunnel backend behind the same gateway still is.
#[test]
fn a_dsr_backend_behind_a_gateway_is_kept_out_of_the_table() {
    let mut tun = svc("tun", "203.0.113.11", 80, &["10.71.3.11", "10.71.4.12"]);
    tun.forwarding = crate::model::Forwarding::Tunnel;
    let d = Desired::from_services(&[
        svc("dsr", "203.0.113.10", 80, &["10.71.3.11", "10.71.4.12"]),
        tun,
    ]);
    let mut o = all_up(&d);
    o.egress.insert(
        1,
        super::tunnel::egress_value(1500, Some("10.71.2.2".parse().unwrap()), None),
    );
    assert!(o.set_gateway(ip("10.71.4.12"), Some(ip("10.71.2.1"))));
    let p = scratch(&d, &o);
    let v = view(&p);
    let (_, backends, table) = &v["dsr"];
    let usable: Vec<(IpAddr, bool)> = backends.iter().map(|b| (b.0, b.4)).collect();
    assert_eq!(
        usable,
        [(ip("10.71.3.11"), true), (ip("10.71.4.12"), false)]
    );
    assert!(table.iter().all(|b| *b == Some(ip("10.71.3.11"))));
    let (_, backends, _) = &v["tun"];
    assert!(backends.iter().all(|b| b.4), "{backends:?}");
}
