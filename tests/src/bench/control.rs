//! `bench control`: how soon the data plane uses a change made with
//! `xlb backend drain|undrain|remove|add`, in the network-namespace lab with the real
//! daemon, the real XDP program attached (native mode on veth) and real UDP traffic.
//!
//! Each change is timed three ways:
//! * command: the CLI's own duration (spawn `nsenter` + `xlb`, control socket, daemon work,
//!   state file), from spawning until the process has exited;
//! * maps: a thread polls the pinned maps the XDP program reads, the way it reads them for a
//!   client without an affinity entry (service → Maglev slot of the probe client → backend),
//!   from before the command starts; the instant it first sees the new state is compared
//!   with the instant the command returned (negative: the state was live before the
//!   command returned);
//! * traffic: after the command returns, UDP requests from fresh client addresses (never
//!   seen before, so no affinity entry: the Maglev table decides) whose slot belongs to the
//!   changed backend, until an answer comes from where the new state sends it. The time is
//!   taken when that answer arrives, so it includes one request round trip (measured alone
//!   as the probe floor); answers still showing the old state are counted as stale.
//!
//! For the breakdown of the command's time it also measures a read-only CLI call
//! (`xlb explain`) and the same controller (edit → reconcile → apply) changes applied in process to the real maps.

use std::{
    collections::{BTreeMap, VecDeque},
    fs::File,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use aya::maps::{Array, HashMap, Map, MapData};
use lb_common::{
    BE_F_HEALTHY, Backend, FAMILY_V4, MAP_BACKENDS, MAP_MAGLEV, MAP_SERVICES, NO_BACKEND,
    PROTO_UDP, ServiceKey, ServiceValue, flow_hash,
    maglev::{self, MaglevBackend},
    maglev_slot,
};
use serde_json::json;
use xlb::{
    dataplane::loader::LoadOptions,
    model::{Link, Protocol, Service, addr_bytes, addr_from_words, addr_words},
    reconcile::inspect::affinity_key_for,
};

use super::Samples;
use crate::{
    harness::XlbHarness,
    lab::{self, Lab, LabOptions, UDP_PORT, VIP4, service_block},
};

/// Changes of each kind.
const CHANGES: usize = 20;
const BACKENDS: usize = 4;
/// Client addresses in the lab; every probe uses a fresh one.
const CLIENTS: usize = 800;
const BASELINE_PROBES: usize = 20;
const PROBE_TIMEOUT: Duration = Duration::from_millis(200);
const GIVE_UP: Duration = Duration::from_secs(2);
const GOAL_MS: f64 = 20.0;
const SERVICE: &str = "bench";
const KINDS: [&str; 4] = ["drain", "undrain", "remove", "add"];

/// The pinned maps the XDP program reads, opened through their pins like any tool.
struct Pinned {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    maglev: Array<MapData, u32>,
    backends: Array<MapData, Backend>,
    key: ServiceKey,
}

impl Pinned {
    fn open(lab: &Lab) -> Self {
        let open = |name: &str| {
            let path = lab.pin_dir.join("maps").join(name);
            MapData::from_pin(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
        };
        let (addr, family) = addr_words(IpAddr::V4(VIP4));
        Self {
            services: HashMap::try_from(Map::HashMap(open(MAP_SERVICES))).expect("hash"),
            maglev: Array::try_from(Map::Array(open(MAP_MAGLEV))).expect("array"),
            backends: Array::try_from(Map::Array(open(MAP_BACKENDS))).expect("array"),
            key: ServiceKey {
                addr,
                port_be: UDP_PORT.to_be(),
                proto: PROTO_UDP,
                family,
            },
        }
    }

    fn service(&self) -> ServiceValue {
        self.services.get(&self.key, 0).expect("bench service")
    }

    /// Where the data plane sends a client without an affinity entry whose Maglev slot is
    /// `slot`: the same lookups as the XDP program (service, slot, backend entry).
    fn decide(&self, slot: u32) -> Option<IpAddr> {
        let svc = self.services.get(&self.key, 0).ok()?;
        let id = self.maglev.get(&(svc.table_offset + slot), 0).ok()?;
        if id == NO_BACKEND {
            return None;
        }
        let b = self.backends.get(&id, 0).ok()?;
        (b.flags & BE_F_HEALTHY != 0).then(|| addr_from_words(&b.addr, b.family))
    }
}

/// Allows the calling thread (and the processes it starts) on every CPU.
fn unpin() {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in 0..libc::CPU_SETSIZE as usize {
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            panic!("sched_setaffinity: {}", std::io::Error::last_os_error());
        }
    }
}

/// The thread's current network namespace, to come back to.
fn current_netns() -> File {
    File::open("/proc/thread-self/ns/net").expect("open own netns")
}

fn set_netns(f: &File) {
    // SAFETY: a valid namespace fd; setns only affects this thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        panic!("setns back: {}", std::io::Error::last_os_error());
    }
}

/// One measured change.
#[derive(Default)]
struct Change {
    command_ms: f64,
    /// Map state visible, relative to the command's return (negative: before it).
    maps_ms: f64,
    /// First answer from the new state, after the return.
    traffic_ms: f64,
    stale: usize,
    lost: usize,
}

pub fn run() {
    crate::require_root();
    // Earlier parts of `all` pin the main thread to one CPU; the lab's daemon, CLI and
    // servers inherit this thread's affinity, so give them every CPU, as in a real setup.
    unpin();
    let t_setup = Instant::now();
    let mut lab = Lab::new(LabOptions {
        backends: BACKENDS,
        clients_v4: CLIENTS,
        clients_v6: 1,
    });
    let addrs: Vec<IpAddr> = lab.backends.iter().map(|b| IpAddr::V4(b.addr4)).collect();
    let names: Vec<String> = lab.backends.iter().map(|b| b.name.clone()).collect();
    let backends: Vec<(IpAddr, u32)> = addrs.iter().map(|a| (*a, 1)).collect();
    lab.write_config(&service_block(
        SERVICE,
        &VIP4.to_string(),
        UDP_PORT,
        "udp",
        "health = { kind = \"none\" }",
        &backends,
    ));
    lab.start_servers();
    lab.start_daemon();
    let setup_s = t_setup.elapsed().as_secs_f64();

    let pinned = Pinned::open(&lab);
    let sv = pinned.service();
    // The client → slot mapping, with the controller's affinity key code (as `explain`).
    let mut spec = Service::new(SERVICE, IpAddr::V4(VIP4), UDP_PORT, Protocol::Udp);
    spec.table_size = sv.table_size;
    let slot_of = |c: IpAddr| {
        let key = affinity_key_for(sv.id, &spec, c, 0).expect("v4 client");
        assert_eq!(key.family, FAMILY_V4);
        maglev_slot(flow_hash(&key), sv.table_size)
    };
    // Who owns each slot with all backends in the table, predicted with the controller's
    // Maglev code and checked against what the daemon wrote.
    let members: Vec<MaglevBackend> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| MaglevBackend {
            id: i as u32,
            addr: addr_bytes(*a).0,
            weight: 1,
        })
        .collect();
    let full = maglev::build(&members, sv.table_size).expect("table");

    // Fresh probe clients: a few for the floor, the rest by the backend owning their slot.
    let mut clients: VecDeque<IpAddr> = lab.clients4.iter().copied().collect();
    let baseline: Vec<IpAddr> = clients.drain(..BASELINE_PROBES).collect();
    let mut pools: Vec<VecDeque<IpAddr>> = vec![VecDeque::new(); BACKENDS];
    for c in clients {
        let slot = slot_of(c);
        let owner = full[slot as usize] as usize;
        assert_eq!(
            pinned.decide(slot),
            Some(addrs[owner]),
            "the pinned table disagrees with maglev::build for client {c}"
        );
        pools[owner].push_back(c);
    }

    let home = current_netns();
    lab::enter(&lab.client.path());
    let vip = SocketAddr::new(IpAddr::V4(VIP4), UDP_PORT);
    let ask = |c: IpAddr| lab::udp_request(c, vip, PROBE_TIMEOUT);

    // The probe floor: one request from a fresh client, no change.
    let mut floor = Samples::default();
    for c in &baseline {
        let t = Instant::now();
        let r = ask(*c);
        assert!(r.is_ok(), "baseline probe from {c}: {r:?}");
        floor.0.push(t.elapsed().as_secs_f64() * 1e3);
    }

    // The CLI floor: a read-only command through the same path (nsenter, xlb, socket).
    let mut cli_floor = Samples::default();
    for c in &baseline {
        let t = Instant::now();
        lab.xlb(&["explain", SERVICE, &c.to_string()]);
        cli_floor.0.push(t.elapsed().as_secs_f64() * 1e3);
    }

    let mut results: BTreeMap<&str, Vec<Change>> = BTreeMap::new();
    let t_run = Instant::now();
    for round in 0..CHANGES {
        let x = round % BACKENDS;
        let addr = addrs[x].to_string();
        for kind in KINDS {
            // drain/remove: the clients of x must leave it; undrain/add: come back to it.
            let to_x = matches!(kind, "undrain" | "add");
            let is_new = |b: Option<IpAddr>| {
                if to_x {
                    b == Some(addrs[x])
                } else {
                    b.is_some() && b != Some(addrs[x])
                }
            };
            let answer_new = |r: &Result<String, String>| match r {
                Ok(name) if to_x => *name == names[x],
                Ok(name) => *name != names[x],
                Err(_) => false,
            };
            let mut next = || {
                pools[x]
                    .pop_front()
                    .unwrap_or_else(|| panic!("out of fresh clients for backend {x}"))
            };
            let first = next();
            let slot = slot_of(first);
            assert!(
                !is_new(pinned.decide(slot)),
                "{kind} {addr}: new state before the command"
            );
            let mut cmd: Vec<&str> = vec!["backend", kind, SERVICE, &addr];
            if kind == "add" {
                cmd.extend(["--weight", "1"]);
            }
            let mut ch = Change::default();
            let (t_start, t_ret, t_vis) = std::thread::scope(|s| {
                let poller = s.spawn(|| {
                    let deadline = Instant::now() + GIVE_UP;
                    loop {
                        if is_new(pinned.decide(slot)) {
                            return Some(Instant::now());
                        }
                        if Instant::now() > deadline {
                            return None;
                        }
                        std::thread::sleep(Duration::from_micros(100));
                    }
                });
                let t_start = Instant::now();
                lab.xlb(&cmd);
                let t_ret = Instant::now();
                // Traffic: fresh clients of x until one is answered by the new state.
                let mut c = first;
                loop {
                    let r = ask(c);
                    if answer_new(&r) {
                        ch.traffic_ms = t_ret.elapsed().as_secs_f64() * 1e3;
                        break;
                    }
                    match r {
                        Ok(_) => ch.stale += 1,
                        Err(_) => ch.lost += 1,
                    }
                    assert!(
                        t_ret.elapsed() < GIVE_UP,
                        "{kind} {addr}: the data plane did not use the new state within {GIVE_UP:?}"
                    );
                    c = next();
                }
                // One more fresh client: the new state must stay.
                let r = ask(next());
                if !answer_new(&r) {
                    match r {
                        Ok(_) => ch.stale += 1,
                        Err(_) => ch.lost += 1,
                    }
                }
                let t_vis = poller.join().expect("poller");
                (t_start, t_ret, t_vis)
            });
            let t_vis = t_vis.unwrap_or_else(|| {
                panic!("{kind} {addr}: the pinned maps never showed the new state")
            });
            let ms = |a: Instant, b: Instant| {
                if a >= b {
                    (a - b).as_secs_f64() * 1e3
                } else {
                    -((b - a).as_secs_f64() * 1e3)
                }
            };
            ch.command_ms = ms(t_ret, t_start);
            ch.maps_ms = ms(t_vis, t_ret);
            results.entry(kind).or_default().push(ch);
        }
    }
    let run_s = t_run.elapsed().as_secs_f64();
    set_netns(&home);

    let apply = apply_times(&addrs);

    println!(
        "xlb control plane: `xlb backend drain|undrain|remove|add` → data plane, in the lab \
         (real daemon, XDP native on veth, {BACKENDS} backends, one UDP service, M = {}, \
         health checks off)",
        sv.table_size
    );
    println!(
        "{CHANGES} changes of each kind, interleaved (drain, undrain, remove, add one backend, \
         rotating over the backends); times in ms"
    );
    println!();
    println!(
        "{:<8} | {:>26} | {:>5} | {:>17}",
        "change", "after return → new answer", "stale", "command (CLI)"
    );
    println!(
        "{:<8} | {:>7} {:>8} {:>9} | {:>5} | {:>7} {:>9}",
        "", "median", "max", "goal", "", "median", "max"
    );
    let mut json = serde_json::Map::new();
    let mut all_met = true;
    let mut breakdown = Vec::new();
    for kind in KINDS {
        let v = &results[kind];
        let col = |f: fn(&Change) -> f64| Samples(v.iter().map(f).collect());
        let (cmd, maps, traffic) = (
            col(|c| c.command_ms),
            col(|c| c.maps_ms),
            col(|c| c.traffic_ms),
        );
        let since_start = col(|c| c.command_ms + c.maps_ms);
        // Max of a column that may be negative.
        let hi = |s: &Samples| s.0.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let stale: usize = v.iter().map(|c| c.stale).sum();
        let lost: usize = v.iter().map(|c| c.lost).sum();
        let met = traffic.max() <= GOAL_MS;
        all_met &= met;
        println!(
            "{kind:<8} | {:>7.2} {:>8.2} {:>9} | {:>5} | {:>7.2} {:>9.2}",
            traffic.median(),
            traffic.max(),
            if met { "met" } else { "MISSED" },
            stale,
            cmd.median(),
            cmd.max(),
        );
        breakdown.push((
            kind,
            apply[kind].clone(),
            since_start.clone(),
            maps.clone(),
            hi(&maps),
        ));
        json.insert(
            kind.to_string(),
            json!({
                "n": v.len(),
                "median_ms": traffic.median(),
                "max_ms": traffic.max(),
                "min_ms": traffic.min(),
                "goal_ms": GOAL_MS,
                "goal_met": met,
                "command_ms": cmd.median(),
                "command_min_ms": cmd.min(),
                "command_max_ms": cmd.max(),
                "apply_in_process_ms": apply[kind].median(),
                "apply_in_process_max_ms": apply[kind].max(),
                "maps_visible_after_start_median_ms": since_start.median(),
                "maps_visible_after_return_median_ms": maps.median(),
                "maps_visible_after_return_min_ms": maps.min(),
                "maps_visible_after_return_max_ms": hi(&maps),
                "stale_answers": stale,
                "lost_probes": lost,
            }),
        );
    }
    println!(
        "after return → new answer: from the command's return until the first UDP answer from \
         the new state (fresh client addresses whose slot belongs to the changed backend); it \
         includes that request's round trip. Goal ≤ {GOAL_MS} ms, applied to the max: {}",
        if all_met { "met" } else { "MISSED" }
    );
    println!(
        "stale: answers after the return still from the old state (fresh clients; pinned \
         clients of a drained backend stay there by design)"
    );
    println!(
        "probe round trip alone (fresh client, no change): median {:.2} ms, max {:.2} ms",
        floor.median(),
        floor.max()
    );
    println!();
    println!("Where the command's time goes (ms, medians unless stated):");
    println!(
        "{:<8} | {:>16} | {:>18} | {:>27}",
        "change", "apply in-process", "probe slot visible", "visible − return"
    );
    println!(
        "{:<8} | {:>16} | {:>18} | {:>9} {:>8} {:>8}",
        "", "(controller)", "after cmd start", "median", "min", "max"
    );
    for (kind, apply, start, maps, maps_hi) in &breakdown {
        println!(
            "{kind:<8} | {:>16.2} | {:>18.2} | {:>9.2} {:>8.2} {:>8.2}",
            apply.median(),
            start.median(),
            maps.median(),
            maps.min(),
            maps_hi
        );
    }
    println!(
        "apply: the daemon's map update alone (Controller::edit: drain / remove / \
         add_backend on the real maps, same service and backends, in process, no CLI); it \
         writes the changed Maglev slots with BPF_MAP_UPDATE_BATCH"
    );
    println!(
        "visible: a thread polling the pinned maps every ~0.1 ms as the XDP program reads them \
         (service → slot of the probe client → backend) from before the command, so late by up \
         to a poll period plus the poller's wake-up; negative = live before the command \
         returned: the daemon writes the maps, then saves its state file (write + fsync), then \
         answers"
    );
    println!(
        "CLI floor: a read-only `xlb explain` the same way (nsenter + xlb + socket): median \
         {:.2} ms, max {:.2} ms; `add` also resolves the backend's neighbour before applying \
         (up to 1 s if ARP is slow; cached in the lab, so it does not show here)",
        cli_floor.median(),
        cli_floor.max()
    );
    println!(
        "lab setup {setup_s:.1} s, {} changes in {run_s:.1} s",
        CHANGES * KINDS.len()
    );

    json.insert(
        "cli_floor_ms".into(),
        json!({"median": cli_floor.median(), "min": cli_floor.min(), "max": cli_floor.max(), "n": cli_floor.0.len()}),
    );
    json.insert(
        "probe_floor_ms".into(),
        json!({"median": floor.median(), "min": floor.min(), "max": floor.max(), "n": floor.0.len()}),
    );
    json.insert(
        "method".into(),
        json!(
            "lab with the real daemon; median_ms/max_ms: from `xlb backend ...` returning to the \
             first UDP answer from the new state (fresh client addresses whose Maglev slot belongs \
             to the changed backend), including one request round trip (probe_floor_ms); \
             maps_visible_*: pinned-map poller (every ~0.1 ms), relative to the command's start or \
             return; command_ms: CLI duration (nsenter + xlb); apply_in_process_ms: the same \
             controller edit on the real maps without CLI or daemon; cli_floor_ms: `xlb explain`"
        ),
    );
    super::write_json("control", &serde_json::Value::Object(json));
}

/// The daemon's own map update for each kind of change, without CLI or daemon: the same
/// controller edits on the real maps (object loaded into the kernel, not attached), same
/// service and backends as the lab.
fn apply_times(addrs: &[IpAddr]) -> BTreeMap<&'static str, Samples> {
    let addrs = addrs.to_vec();
    std::thread::spawn(move || {
        crate::enter_private_netns();
        let mut h = XlbHarness::load(&LoadOptions {
            affinity_capacity: 65_536,
            ..LoadOptions::default()
        });
        let link = |i: usize| Link {
            mac: [0x02, 0xbe, 0, 0, 0, i as u8],
            src_mac: [0x02, 0x1b, 0, 0, 0, 1],
            ifindex: 1,
        };
        let backends: Vec<(IpAddr, Option<Link>)> = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| (*a, Some(link(i))))
            .collect();
        h.add_service(
            Service::new(SERVICE, IpAddr::V4(VIP4), UDP_PORT, Protocol::Udp),
            &backends,
        )
        .expect("service");
        let mut out: BTreeMap<&'static str, Samples> = BTreeMap::new();
        for round in 0..CHANGES {
            let x = round % addrs.len();
            let a = addrs[x];
            for kind in KINDS {
                let t = Instant::now();
                match kind {
                    "drain" => h.set_draining(SERVICE, a, true),
                    "undrain" => h.set_draining(SERVICE, a, false),
                    "remove" => h.remove_backend(SERVICE, a),
                    _ => h.add_backend(SERVICE, a, 1, Some(link(x))),
                }
                .unwrap_or_else(|e| panic!("{kind} {a}: {e}"));
                out.entry(kind)
                    .or_default()
                    .0
                    .push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        out
    })
    .join()
    .expect("apply timing thread")
}
