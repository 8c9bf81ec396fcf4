//! The data plane's rare events in the daemon's log (issue 15): with
//! `RUST_LOG=info,xlb::xdp=debug`, fragments dropped at a VIP without pause give one
//! log line per second, not one per packet, in the words `xlb stats` uses; after a SIGKILL
//! and a restart (adoption, the program replaced through its link) the new daemon logs
//! the new program's events.

use std::{
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use xlb_tests::lab::{Lab, LabOptions, UDP_PORT};

const LINE: &str = "xlb::xdp] drop_fragment: a fragment addressed to a VIP was dropped";

/// Sends 3,000-byte UDP datagrams (three fragments each: the client may fragment) to
/// the VIP every 20 ms for `d`; returns how many were sent.
fn fragments_for(lab: &Lab, d: Duration) -> usize {
    let src = SocketAddr::new(lab.clients4[0], 0);
    let dst = SocketAddr::new(Lab::vip4(1), UDP_PORT);
    lab.client.run(|| {
        let s = UdpSocket::bind(src).expect("bind");
        let dont: libc::c_int = libc::IP_PMTUDISC_DONT;
        // SAFETY: a valid socket and option value.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                (&dont as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "IP_MTU_DISCOVER");
        let start = Instant::now();
        let mut n = 0;
        while start.elapsed() < d {
            s.send_to(&[0x5a; 3000], dst).expect("send");
            n += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        n
    })
}

fn lines(lab: &Lab) -> usize {
    lab.daemon_log()
        .lines()
        .filter(|l| l.contains(LINE))
        .count()
}

fn fragments_dropped(lab: &Lab) -> u64 {
    let s = lab.xlb_json(&["stats"]);
    s["packets"]
        .as_array()
        .expect("packets")
        .iter()
        .find(|p| p[0] == "drop_fragment")
        .and_then(|p| p[1].as_u64())
        .expect("drop_fragment counter")
}

#[test]
fn data_plane_events_reach_the_log_once_a_second_also_after_a_restart() {
    let mut lab = Lab::new(LabOptions {
        clients_v4: 1,
        clients_v6: 1,
        backends: 1,
    });
    lab.log_filter = "info,xlb::xdp=debug".into();
    let vip = Lab::vip4(1).to_string();
    // A TCP service only: the UDP datagrams' later fragments find neither a first
    // fragment's ports (the first one is to no service) nor the VIP's only UDP service,
    // so each is dropped as drop_fragment (a fragment of a balanced flow is not).
    lab.write_config(&lab.service_toml(
        "web",
        &vip,
        UDP_PORT,
        "tcp",
        4,
        "health = { kind = \"none\" }\n",
    ));
    lab.start_servers();
    lab.start_daemon();
    assert_eq!(lines(&lab), 0, "{}", lab.daemon_log());

    // 2.5 s of fragments: reports at about 0, 1 and 2 s — three lines for hundreds of drops.
    let sent = fragments_for(&lab, Duration::from_millis(2500));
    std::thread::sleep(Duration::from_millis(300));
    let dropped = fragments_dropped(&lab);
    assert!(
        dropped >= 2 * sent as u64,
        "{dropped} fragments dropped of {sent} datagrams"
    );
    assert_eq!(
        lines(&lab),
        3,
        "{dropped} drops in 2.5 s:\n{}",
        lab.daemon_log()
    );
    println!("{sent} datagrams, {dropped} fragments dropped in 2.5 s: 3 log lines:");
    for l in lab.daemon_log().lines().filter(|l| l.contains(LINE)) {
        println!("  {l}");
    }

    // SIGKILL, restart (adoption): the new program's events reach the new daemon's log.
    lab.kill_daemon();
    lab.start_daemon();
    std::thread::sleep(Duration::from_millis(1100));
    fragments_for(&lab, Duration::from_millis(500));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lines(&lab), 4, "after the restart:\n{}", lab.daemon_log());
}
