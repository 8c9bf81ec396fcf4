//! The neighbour rule (issue 10, fault 5): a transient keeps the last known MAC, a real
//! failure takes the backend out, a changed MAC applies at once.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use super::*;

const BACKEND: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 11));

fn link(last: u8, ifindex: u32) -> Link {
    Link {
        mac: [2, 0, 0, 0, 0, last],
        src_mac: [2, 0, 0, 0, 1, 1],
        ifindex,
    }
}

/// `lo` configured and counted as attached (it exists everywhere).
fn ifaces() -> (Interfaces, u32) {
    let mut i = Interfaces::new(PathBuf::from("/nonexistent"), false);
    i.expect("lo");
    let index = i.attached_index("lo").expect("lo exists");
    (i, index)
}

fn resolved(l: Link) -> Resolution {
    Resolution::Resolved {
        link: l,
        ifname: "lo".into(),
        next_hop: BACKEND,
    }
}

fn unresolved(failed: bool) -> Resolution {
    Resolution::Unresolved {
        ifindex: 1,
        ifname: "lo".into(),
        next_hop: BACKEND,
        reason: "no neighbour entry; ARP started".into(),
        failed,
    }
}

#[test]
fn a_transient_keeps_the_last_mac_until_the_grace_ends() {
    let (ifs, lo) = ifaces();
    let mut book = NeighBook::default();
    let t0 = Instant::now();
    let l = link(1, lo);
    assert_eq!(book.observe(BACKEND, &resolved(l), &ifs, t0), Some(l));
    // The entry was deleted, the kernel re-resolves: the MAC is kept.
    assert_eq!(book.observe(BACKEND, &unresolved(false), &ifs, t0), Some(l));
    let note = book.note(BACKEND).unwrap().problem.clone().unwrap();
    assert!(note.contains("last known MAC is kept"), "{note}");
    let almost = t0 + NEIGH_GRACE - Duration::from_millis(1);
    assert_eq!(
        book.observe(BACKEND, &unresolved(false), &ifs, almost),
        Some(l)
    );
    // Resolved again within the grace: nothing changed, the next transient starts over.
    assert_eq!(book.observe(BACKEND, &resolved(l), &ifs, almost), Some(l));
    let t1 = almost + Duration::from_secs(1);
    assert_eq!(book.observe(BACKEND, &unresolved(false), &ifs, t1), Some(l));
    // Unresolved for the whole grace: out, and a later transient does not bring the old
    // MAC back.
    assert_eq!(
        book.observe(BACKEND, &unresolved(false), &ifs, t1 + NEIGH_GRACE),
        None
    );
    let later = t1 + NEIGH_GRACE + Duration::from_millis(10);
    assert_eq!(book.observe(BACKEND, &unresolved(false), &ifs, later), None);
    assert_eq!(book.observe(BACKEND, &resolved(l), &ifs, later), Some(l));
}

#[test]
fn a_failed_entry_takes_the_backend_out_at_once() {
    let (ifs, lo) = ifaces();
    let mut book = NeighBook::default();
    let t0 = Instant::now();
    book.observe(BACKEND, &resolved(link(1, lo)), &ifs, t0);
    assert_eq!(book.observe(BACKEND, &unresolved(true), &ifs, t0), None);
    let note = book.note(BACKEND).unwrap().problem.clone().unwrap();
    assert!(!note.contains("kept"), "{note}");
}

#[test]
fn a_changed_mac_applies_at_once() {
    let (ifs, lo) = ifaces();
    let mut book = NeighBook::default();
    let t0 = Instant::now();
    book.observe(BACKEND, &resolved(link(1, lo)), &ifs, t0);
    assert_eq!(
        book.observe(BACKEND, &resolved(link(2, lo)), &ifs, t0),
        Some(link(2, lo))
    );
}

#[test]
fn never_resolved_is_out_and_a_route_gone_is_a_transient() {
    let (ifs, lo) = ifaces();
    let mut book = NeighBook::default();
    let t0 = Instant::now();
    assert_eq!(book.observe(BACKEND, &unresolved(false), &ifs, t0), None);
    let l = link(1, lo);
    book.observe(BACKEND, &resolved(l), &ifs, t0);
    let gone = Resolution::NoRoute {
        reason: "route lookup failed: network unreachable".into(),
    };
    assert_eq!(book.observe(BACKEND, &gone, &ifs, t0), Some(l));
}

#[test]
fn an_interface_not_attached_now_is_a_transient_one_not_configured_is_not() {
    let (ifs, lo) = ifaces();
    let mut book = NeighBook::default();
    let t0 = Instant::now();
    let l = link(1, lo);
    book.observe(BACKEND, &resolved(l), &ifs, t0);
    // Re-created `lo` with another index, not attached yet: keep the last link.
    let moved = resolved(link(1, lo + 1000));
    assert_eq!(book.observe(BACKEND, &moved, &ifs, t0), Some(l));
    let note = book.note(BACKEND).unwrap().problem.clone().unwrap();
    assert!(note.contains("not attached to now"), "{note}");
    // Reached through an interface that is not configured at all: a misconfiguration.
    let mut other = NeighBook::default();
    let elsewhere = Resolution::Resolved {
        link: link(1, 999),
        ifname: "eth9".into(),
        next_hop: BACKEND,
    };
    assert_eq!(other.observe(BACKEND, &elsewhere, &ifs, t0), None);
    let note = other.note(BACKEND).unwrap().problem.clone().unwrap();
    assert!(note.contains("not in daemon.interfaces"), "{note}");
}

#[test]
fn a_seeded_link_survives_a_transient_at_start_up() {
    let (ifs, lo) = ifaces();
    let mut book = NeighBook::default();
    let l = link(7, lo);
    book.seed(BACKEND, l);
    let t0 = Instant::now();
    assert_eq!(book.observe(BACKEND, &unresolved(false), &ifs, t0), Some(l));
}
