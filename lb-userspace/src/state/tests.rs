//! The state file: round trips, binding to the deployment, format 1 upgrades, `down`.

use std::ffi::OsString;

use super::*;
use crate::{
    config::default_state_file,
    model::{Backend, Protocol},
};

fn svc(name: &str, vip: &str, backends: &[&str]) -> Service {
    let mut s = Service::new(name, vip.parse().unwrap(), 80, Protocol::Tcp);
    s.backends = backends
        .iter()
        .map(|a| Backend::new(a.parse().unwrap()))
        .collect();
    s
}

fn base() -> Vec<Service> {
    vec![
        svc("a", "10.0.0.1", &["10.1.0.1", "10.1.0.2"]),
        svc("b", "10.0.0.2", &["10.1.0.3"]),
    ]
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A scratch directory removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(what: &str) -> Self {
        let d = std::env::temp_dir().join(format!("xlb-state-{what}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        Self(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Whatever runtime changes are made, storing their difference and replaying it on the
/// config gives back exactly what the daemon ran.
#[test]
fn diff_then_replay_round_trips() {
    let base = base();
    let mut now = Desired::from_services(&base);
    for e in [
        Edit::BackendAdd {
            service: "a".into(),
            address: ip("10.1.0.9"),
            weight: 3,
        },
        Edit::BackendRemove {
            service: "a".into(),
            address: ip("10.1.0.1"),
        },
        Edit::BackendDrain {
            service: "a".into(),
            address: ip("10.1.0.2"),
        },
        Edit::BackendWeight {
            service: "a".into(),
            address: ip("10.1.0.2"),
            weight: 7,
        },
        Edit::ServiceRemove { name: "b".into() },
        Edit::ServiceAdd {
            service: Box::new(svc("c", "10.0.0.3", &["10.1.0.4"])),
        },
        Edit::NodeDrain,
    ] {
        now.apply(&e).unwrap_or_else(|err| panic!("{e:?}: {err:?}"));
    }
    let edits = now.diff(&base);
    assert_eq!(edits.last(), Some(&Edit::NodeDrain));
    let (again, w) = Desired::replay(&base, &edits);
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(again, now);
    assert!(again.node_drained());
    // Undrained: nothing about the node is stored.
    now.apply(&Edit::NodeUndrain).unwrap();
    assert!(!now.diff(&base).contains(&Edit::NodeDrain));
    // A changed service setting is a replacement; nothing changed: nothing stored.
    let mut changed = Desired::from_services(&base);
    let mut a = changed.service("a").unwrap().clone();
    a.idle_timeout = std::time::Duration::from_secs(5);
    changed
        .apply(&Edit::ServiceRemove { name: "a".into() })
        .unwrap();
    changed
        .apply(&Edit::ServiceAdd {
            service: Box::new(a),
        })
        .unwrap();
    let (again, _) = Desired::replay(&base, &changed.diff(&base));
    assert_eq!(again, changed);
    assert!(Desired::from_services(&base).diff(&base).is_empty());
}

fn xlb_millionths(x: f64) -> crate::model::Millionths {
    crate::model::Millionths::from_f64(x).unwrap()
}

/// `xlb service set` is stored as itself (not as a replacement of the service, which
/// would drop and re-add it), and replays to the same state; the saved JSON names it.
#[test]
fn service_set_is_stored_as_a_service_set() {
    let base = base();
    let mut now = Desired::from_services(&base);
    let set = Edit::ServiceSet {
        service: "a".into(),
        nat_sources: Some(vec!["198.51.100.0/24".parse().unwrap()]),
        balance_factor: Some(xlb_millionths(1.25)),
        tunnel_source: None,
    };
    now.apply(&set).unwrap();
    now.apply(&Edit::BackendDrain {
        service: "a".into(),
        address: ip("10.1.0.2"),
    })
    .unwrap();
    let edits = now.diff(&base);
    assert_eq!(edits[0], set, "{edits:?}");
    assert!(matches!(edits[1], Edit::BackendDrain { .. }), "{edits:?}");
    let (again, w) = Desired::replay(&base, &edits);
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(again, now);
    let json = serde_json::to_string(&set).unwrap();
    assert_eq!(
        json,
        r#"{"service_set":{"service":"a","nat_sources":["198.51.100.0/24"],"balance_factor":1.25}}"#
    );
    // The validator refuses a list of the other family.
    let bad = Edit::ServiceSet {
        service: "a".into(),
        nat_sources: Some(vec!["2001:db8::/32".parse().unwrap()]),
        balance_factor: None,
        tunnel_source: None,
    };
    let err = now.apply(&bad).unwrap_err();
    assert!(err[0].field.starts_with("nat_sources"), "{err:?}");
    // A factor of 1 is refused; 0 turns it off and is stored so.
    let one = Edit::ServiceSet {
        service: "a".into(),
        nat_sources: None,
        balance_factor: Some(xlb_millionths(1.0)),
        tunnel_source: None,
    };
    assert_eq!(now.apply(&one).unwrap_err()[0].field, "balance_factor");
    let off = Edit::ServiceSet {
        service: "a".into(),
        nat_sources: None,
        balance_factor: Some(xlb_millionths(0.0)),
        tunnel_source: None,
    };
    now.apply(&off).unwrap();
    assert_eq!(now.service("a").unwrap().balance_factor, None);
}

/// `xlb service set --tunnel-source`: stored as a service set ("none" clears it),
/// replayed to the same state; refused on a service that is not in tunnel mode.
#[test]
fn tunnel_source_is_set_and_stored_as_a_service_set() {
    use crate::model::{Forwarding, edit::TunnelSourceSet};
    let mut base = base();
    base[0].forwarding = Forwarding::Tunnel;
    let mut now = Desired::from_services(&base);
    let set = Edit::ServiceSet {
        service: "a".into(),
        nat_sources: None,
        balance_factor: None,
        tunnel_source: Some("10.99.0.0/24".parse().unwrap()),
    };
    now.apply(&set).unwrap();
    assert_eq!(
        now.service("a").unwrap().tunnel_source,
        Some("10.99.0.0/24".parse().unwrap())
    );
    let edits = now.diff(&base);
    assert_eq!(edits, std::slice::from_ref(&set));
    assert_eq!(
        serde_json::to_string(&set).unwrap(),
        r#"{"service_set":{"service":"a","tunnel_source":"10.99.0.0/24"}}"#
    );
    let (again, w) = Desired::replay(&base, &edits);
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(again, now);
    let none = Edit::ServiceSet {
        service: "a".into(),
        nat_sources: None,
        balance_factor: None,
        tunnel_source: Some(TunnelSourceSet(None)),
    };
    now.apply(&none).unwrap();
    assert_eq!(now.service("a").unwrap().tunnel_source, None);
    assert!(now.diff(&base).is_empty());
    // Host bits are refused when parsed; a DSR service refuses a tunnel_source.
    assert!(
        "10.99.0.1/24"
            .parse::<TunnelSourceSet>()
            .unwrap_err()
            .contains("10.99.0.0/24")
    );
    let mut dsr = Desired::from_services(&self::base());
    let err = dsr
        .apply(&Edit::ServiceSet {
            service: "a".into(),
            nat_sources: None,
            balance_factor: None,
            tunnel_source: Some("10.99.0.0/24".parse().unwrap()),
        })
        .unwrap_err();
    assert_eq!(err[0].field, "tunnel_source", "{err:?}");
}

#[test]
fn edits_that_no_longer_fit_the_config_are_skipped_with_a_warning() {
    let edits = vec![
        Edit::BackendRemove {
            service: "a".into(),
            address: ip("10.9.9.9"),
        },
        Edit::BackendDrain {
            service: "zz".into(),
            address: ip("10.1.0.1"),
        },
        Edit::ServiceRemove {
            name: "gone".into(),
        },
    ];
    let (d, w) = Desired::replay(&base(), &edits);
    assert_eq!(w.len(), 3, "{w:?}");
    assert!(w[0].contains("10.9.9.9") && w[1].contains("zz") && w[2].contains("gone"));
    assert_eq!(d, Desired::from_services(&base()));
}

#[test]
fn save_is_atomic_and_load_reports_bad_files() {
    let dir = Dir::new("save");
    let pin = Path::new("/sys/fs/bpf/xlb-test");
    let path = dir.0.join("sub/state.json");
    assert_eq!(
        load(&path, pin).unwrap(),
        Saved::default(),
        "missing = empty"
    );
    let mut now = Desired::from_services(&base());
    now.apply(&Edit::BackendDrain {
        service: "a".into(),
        address: ip("10.1.0.1"),
    })
    .unwrap();
    let edits = now.diff(&base());
    save(&path, pin, &edits).unwrap();
    let saved = load(&path, pin).unwrap();
    assert_eq!(saved.format, FORMAT);
    assert_eq!(saved.content, Content::Edits(edits));
    let text = fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("\"pin_dir\": \"/sys/fs/bpf/xlb-test\""),
        "{text}"
    );
    // No temporary file is left next to it.
    let names: Vec<_> = fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![OsString::from("state.json")]);
    fs::write(&path, "{ half").unwrap();
    let e = load(&path, pin).unwrap_err().to_string();
    assert!(e.contains("state.json") && e.contains("not valid"), "{e}");
    fs::write(&path, r#"{"format": 7, "ops": []}"#).unwrap();
    let e = load(&path, pin).unwrap_err().to_string();
    assert!(e.contains("format 7"), "{e}");
}

/// Issue 10, fault 10: saved changes belong to the deployment (pin_dir) that wrote them;
/// another deployment is refused with what to set, and the file is left as it was.
#[test]
fn a_state_file_is_refused_by_another_deployment() {
    let dir = Dir::new("owner");
    let path = dir.0.join("state.json");
    let mine = Path::new("/sys/fs/bpf/xlb-a");
    let edits = vec![Edit::ServiceRemove { name: "b".into() }];
    save(&path, mine, &edits).unwrap();
    let before = fs::read(&path).unwrap();
    let e = load(&path, Path::new("/sys/fs/bpf/xlb-b")).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, StateError::OtherDeployment { .. }), "{msg}");
    assert!(
        msg.contains("/sys/fs/bpf/xlb-a")
            && msg.contains("/sys/fs/bpf/xlb-b")
            && msg.contains("daemon.state_file"),
        "{msg}"
    );
    assert_eq!(fs::read(&path).unwrap(), before);
    // The same directory spelled differently is the same deployment.
    assert!(load(&path, Path::new("/sys/fs/bpf/./xlb-a/")).is_ok());
    // Default paths differ per deployment; the default pin_dir keeps the old path.
    assert_eq!(
        default_state_file(Path::new("/sys/fs/bpf/xlb")),
        Path::new("/var/lib/xlb/state.json")
    );
    assert_eq!(
        default_state_file(Path::new("/sys/fs/bpf/lab/1/")),
        Path::new("/var/lib/xlb/deployments/sys/fs/bpf/lab/1/state.json")
    );
    assert_ne!(
        default_state_file(Path::new("/sys/fs/bpf/a")),
        default_state_file(Path::new("/sys/fs/bpf/b"))
    );
}

/// Format 1 (no pin_dir, `ops`) is read and converted without losing anything: a
/// service add that replaced a config service, a backend add that re-weighted, drains.
#[test]
fn format_1_files_are_upgraded() {
    let dir = Dir::new("v1");
    let path = dir.0.join("state.json");
    let replaced = serde_json::to_value(svc("b", "10.0.0.2", &["10.1.0.8"])).unwrap();
    let added = serde_json::to_value(svc("c", "10.0.0.3", &["10.1.0.4"])).unwrap();
    let v1 = serde_json::json!({"format": 1, "ops": [
        {"op": "service_add", "service": replaced},
        {"op": "service_add", "service": added},
        {"op": "backend_add", "service": "a", "address": "10.1.0.1", "weight": 5},
        {"op": "backend_add", "service": "a", "address": "10.1.0.7", "weight": 2},
        {"op": "backend_remove", "service": "a", "address": "10.1.0.2"},
        {"op": "drain", "service": "a", "address": "10.1.0.7"},
    ]});
    fs::write(&path, v1.to_string()).unwrap();
    let saved = load(&path, Path::new("/sys/fs/bpf/xlb")).unwrap();
    assert_eq!((saved.format, saved.len()), (1, 6));
    let (d, w) = saved.replay(&base());
    assert!(w.is_empty(), "{w:?}");
    let a = d.service("a").unwrap();
    let weights: Vec<(IpAddr, u32, bool)> = a
        .backends
        .iter()
        .map(|b| (b.address, b.weight, b.draining))
        .collect();
    assert_eq!(
        weights,
        [(ip("10.1.0.1"), 5, false), (ip("10.1.0.7"), 2, true)]
    );
    assert_eq!(
        d.service("b").unwrap().backends,
        [Backend::new(ip("10.1.0.8"))]
    );
    assert!(d.service("c").is_some());
    // Written back as format 2, it replays to the same state.
    save(&path, Path::new("/sys/fs/bpf/xlb"), &d.diff(&base())).unwrap();
    let again = load(&path, Path::new("/sys/fs/bpf/xlb")).unwrap();
    assert_eq!(again.format, FORMAT);
    assert_eq!(again.replay(&base()).0, d);
}

/// `xlb down` moves the deployment's state file to FILE.bak (replacing an older one) and
/// leaves another deployment's alone.
#[test]
fn move_aside_keeps_one_backup() {
    let dir = Dir::new("down");
    let path = dir.0.join("state.json");
    let pin = Path::new("/sys/fs/bpf/xlb-a");
    assert_eq!(move_aside(&path, pin).unwrap(), MovedAside::Nothing);
    let bak = dir.0.join("state.json.bak");
    fs::write(&bak, "old backup").unwrap();
    save(&path, pin, &[Edit::ServiceRemove { name: "a".into() }]).unwrap();
    assert_eq!(move_aside(&path, pin).unwrap(), MovedAside::To(bak.clone()));
    assert!(!path.exists());
    assert!(fs::read_to_string(&bak).unwrap().contains("service_remove"));
    save(&path, pin, &[]).unwrap();
    assert!(matches!(
        move_aside(&path, Path::new("/sys/fs/bpf/other")).unwrap(),
        MovedAside::NotOurs { .. }
    ));
    assert!(path.exists());
}
