//! The data plane's rare events (aya-log records, lb-ebpf `xlb/log.rs`): a drop reason's
//! first packet, a backend whose egress port is missing and a failed pin insert are each
//! reported once per second however many packets cause them; a hit, a miss and a
//! pass-through never reach the reporting code (its gates stay untouched).
//!
//! The records are read with aya-log's reader, as the daemon reads them, into a list.

use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aya::maps::{Array, MapData};
use aya_log::EbpfLogger;
use lb_common::{
    MAP_AFFINITY, Stat,
    affinity::table::{self, BUSY, Bucket},
    log_gate::{self, INSERT_FAILED},
    maps::MAP_LOG_GATE,
};
use xlb::{
    dataplane::loader::LoadOptions,
    model::{Protocol, Service},
    reconcile::inspect::affinity_key,
};
use xlb_tests::{
    enter_private_netns,
    fixtures::v4_later,
    harness::{XdpAction, XlbHarness},
    ifindex,
    packet::{arp_request, tcp_frame, v4},
    require_root, sh,
};

use super::{LO, backends};

/// The texts of the records read so far.
#[derive(Clone, Default)]
struct Records(Arc<Mutex<Vec<String>>>);

impl log::Log for Records {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        self.0.lock().unwrap().push(r.args().to_string());
    }
    fn flush(&self) {}
}

struct Events {
    h: XlbHarness,
    reader: EbpfLogger<Records>,
    records: Records,
    /// The interface of `noport`'s backend, not in `XLB_TX_PORTS`.
    veth: u32,
}

const WEB: &str = "203.0.113.10";
const NOPORT: &str = "203.0.113.61";
const DOWN: &str = "203.0.113.70";

impl Events {
    fn new() -> Self {
        require_root();
        enter_private_netns();
        sh("ip link add xlbe0 type veth peer name xlbe1");
        let veth = ifindex("xlbe0");
        let mut h = XlbHarness::load(&LoadOptions {
            affinity_capacity: 4096,
            maglev_slots: 1 << 16,
        });
        let svc = |name: &str, vip: &str| {
            let mut s = Service::new(name, vip.parse().expect("vip"), 80, Protocol::Tcp);
            s.table_size = 1021;
            s
        };
        h.add_service(svc("web", WEB), &backends(&["192.0.2.11"], LO))
            .expect("web");
        h.add_service(svc("noport", NOPORT), &backends(&["192.0.2.62"], veth))
            .expect("noport");
        h.add_service(svc("down", DOWN), &backends(&["192.0.2.71"], LO))
            .expect("down");
        h.set_healthy("down", "192.0.2.71".parse().unwrap(), false)
            .expect("unhealthy");
        let records = Records::default();
        let reader = EbpfLogger::init_with_logger(&mut h.ebpf, records.clone()).expect("AYA_LOGS");
        Self {
            h,
            reader,
            records,
            veth,
        }
    }

    /// Sends `frame` `n` times; every run must end in `want`.
    fn send(&self, frame: &[u8], n: usize, want: XdpAction) {
        for _ in 0..n {
            let r = self.h.run(frame, LO);
            assert_eq!(r.action, want as u32, "verdict");
        }
    }

    /// The records that arrived since the last call.
    fn take(&mut self) -> Vec<String> {
        self.reader.flush();
        std::mem::take(&mut *self.records.0.lock().unwrap())
    }

    fn gates(&self) -> Vec<u64> {
        let map = self.h.ebpf.map(MAP_LOG_GATE).expect("the gate map");
        let gates: Array<&MapData, u64> = Array::try_from(map).expect("an array");
        (0..log_gate::GATES)
            .map(|i| gates.get(&i, 0).expect("gate"))
            .collect()
    }

    fn backend_id(&self, service: &str) -> u32 {
        self.h.ctl.service(service).expect("service").backends[0].id
    }

    /// Sets the lock bit of the bucket `client` of `web` falls into, as a writer on
    /// another CPU holds it: a new client's insert there fails.
    fn hold_bucket_of(&mut self, client: IpAddr) {
        let key = affinity_key(self.h.ctl.service("web").expect("web"), client, 0).expect("key");
        let t = &self.h.dp().affinity;
        let place = table::place(&key, t.seed(), t.buckets());
        let fd = self
            .h
            .prog()
            .info()
            .expect("info")
            .map_ids()
            .expect("map ids")
            .expect("maps")
            .into_iter()
            .filter_map(|id| MapData::from_id(id).ok())
            .find(|m| {
                m.info()
                    .ok()
                    .and_then(|i| i.name_as_str().map(String::from))
                    == Some(MAP_AFFINITY.into())
            })
            .expect("the affinity table");
        let mut buckets: Array<MapData, Bucket> =
            Array::try_from(aya::maps::Map::Array(fd)).expect("buckets");
        let mut b = buckets.get(&place.bucket, 0).expect("bucket");
        b.val[0] |= BUSY;
        buckets.set(place.bucket, b, 0).expect("held");
    }
}

/// Thousands of packets of each event within a second give one record each; a second
/// later the next packets give one more; the records say which event, with its service,
/// backend and interface.
#[test]
fn each_event_is_reported_once_a_second_not_per_packet() {
    let mut ev = Events::new();
    let client = v4("198.51.100.7");
    ev.hold_bucket_of(client);
    let (noport, web) = (ev.backend_id("noport"), ev.backend_id("web"));
    let down = ev.h.service_id("down");
    let expected = vec![
        format!("xlb event {} 0 0", log_gate::gate(Stat::DropFragment)),
        format!(
            "xlb event {} {noport} {}",
            log_gate::gate(Stat::DropNoTxPort),
            ev.veth
        ),
        format!("xlb event {} {down} 0", log_gate::gate(Stat::DropNoBackend)),
        format!("xlb event {INSERT_FAILED} {} {web}", ev.h.service_id("web")),
    ];
    let burst = |ev: &Events| {
        let start = Instant::now();
        // A later UDP fragment to a VIP without a UDP service: no first fragment
        // tracked, no sole service of its protocol.
        ev.send(&v4_later(client, v4(WEB), 17, 7), 1000, XdpAction::Drop);
        ev.send(
            &tcp_frame(client, v4(NOPORT), 1000, 80),
            1000,
            XdpAction::Drop,
        );
        ev.send(
            &tcp_frame(client, v4(DOWN), 1000, 80),
            1000,
            XdpAction::Drop,
        );
        ev.send(&tcp_frame(client, v4(WEB), 1000, 80), 1000, XdpAction::Tx);
        let took = start.elapsed();
        assert!(took < Duration::from_millis(900), "a burst took {took:?}");
        start
    };
    let first = burst(&ev);
    let mut got = ev.take();
    got.sort();
    let mut want = expected.clone();
    want.sort();
    assert_eq!(got, want, "4,000 packets of four events within a second");
    // The same packets, still within the second of the first records: nothing more.
    std::thread::sleep(Duration::from_millis(100));
    burst(&ev);
    assert_eq!(
        ev.take(),
        Vec::<String>::new(),
        "a second burst within the second"
    );
    // A second later: one more each.
    std::thread::sleep(Duration::from_millis(1100).saturating_sub(first.elapsed()));
    burst(&ev);
    let mut got = ev.take();
    got.sort();
    assert_eq!(got, want, "the next second");
}

/// A hit, a miss (the pin written) and a pass-through never reach the reporting code:
/// no gate is taken, no record written.
#[test]
fn hits_misses_and_pass_throughs_report_nothing() {
    let mut ev = Events::new();
    for i in 0..200u32 {
        let c = IpAddr::from(std::net::Ipv4Addr::from(0xc633_6400 + i));
        // A miss (the pin is written), then hits.
        ev.send(&tcp_frame(c, v4(WEB), 1000, 80), 3, XdpAction::Tx);
        // Not a service; not IP.
        ev.send(
            &tcp_frame(c, v4("203.0.113.99"), 1000, 80),
            1,
            XdpAction::Pass,
        );
        ev.send(
            &arp_request(
                "198.51.100.1".parse().unwrap(),
                "198.51.100.2".parse().unwrap(),
            ),
            1,
            XdpAction::Pass,
        );
    }
    let stats = ev.h.dp().stats().expect("stats");
    assert_eq!(stats[Stat::Tx as usize], 600);
    assert_eq!(
        ev.gates(),
        vec![0; log_gate::GATES as usize],
        "a gate was taken"
    );
    assert_eq!(ev.take(), Vec::<String>::new());
    // The check can fail: one drop takes its gate.
    ev.send(
        &v4_later(v4("198.51.100.9"), v4(WEB), 17, 7),
        1,
        XdpAction::Drop,
    );
    assert_ne!(ev.gates()[log_gate::gate(Stat::DropFragment) as usize], 0);
    assert_eq!(ev.take().len(), 1);
}
