//! Which backend a flow goes to: the affinity table (lookup, judge, refresh, pin
//! writes) in front of the service's Maglev table; and rule 5, what happens when there
//! is no backend. The rules themselves live in `lb_common::affinity` (shared with
//! `explain`, `affinity list` and the counts); this module runs them on the maps.
//!
//! Reads `XLB_AFFINITY`, `XLB_AFF_KEYS`, `XLB_SVC_IDLE`, `XLB_MAGLEV`, `XLB_BACKENDS`;
//! writes pins and the service's and backends' pin counters. Must not touch the packet:
//! it sees only the parsed [`Flow`], and forwarding is the caller's next step.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use lb_common::{
    AffinityKey, Backend, FAMILY_V4, FAMILY_V6, NO_BACKEND, SVC_F_BOUNDED, SVC_F_PASS_NO_BACKEND,
    ServiceStats, ServiceValue, Stat,
    affinity::{
        self, Verdict,
        table::{self, Bucket, Found, Place, Written},
    },
};

use super::{
    bound, log,
    maps::{AFF_KEYS, AFFINITY, AFFINITY_BUCKETS, AFFINITY_SEED, BACKENDS, MAGLEV, SVC_IDLE},
    natsrc,
    parse::Flow,
    stats,
};

/// The backend chosen for a packet and its id (the index of `XLB_BACKENDS`).
pub struct Target {
    pub be: &'static Backend,
    pub id: u32,
}

/// The affinity key of `flow`'s client under `svc` — keyed on address and port when the
/// client is in the service's `nat_sources`. Every path that looks a client up (packets,
/// ICMP errors about them) takes its key from here.
#[inline(always)]
pub fn client_key(svc: &ServiceValue, flow: &Flow) -> AffinityKey {
    let listed = natsrc::listed(svc, flow);
    affinity::key_for(svc, &flow.saddr, flow.sport, flow.family, listed)
}

/// The backend of `flow` under `svc`: the client's live pin, else the Maglev slot of
/// its key (and the pin is written). `Ok(None)`: no usable backend (see
/// [`no_backend`]); `Err`: a map index out of range, which the loader rules out.
#[inline(always)]
pub fn backend(
    svc: &ServiceValue,
    ss: &mut ServiceStats,
    flow: &Flow,
) -> Result<Option<Target>, ()> {
    let key = client_key(svc, flow);
    // SAFETY: a helper without side effects.
    let now_ns = unsafe { bpf_ktime_get_coarse_ns() };
    let now = table::units(now_ns);
    let place = table::place(&key, AFFINITY_SEED.load(), AFFINITY_BUCKETS.load());
    let Some(bucket) = AFFINITY.get_ptr_mut(place.bucket) else {
        return Err(());
    };

    // SAFETY: a live bucket of the table.
    let write = match unsafe { table::find(bucket, place.tag) } {
        Found::Hit { slot, val } => {
            let id = table::backend_of(val);
            let be = BACKENDS.get(id);
            match (affinity::judge_word(svc, key.service_id, val, be, now), be) {
                (Verdict::Live { refresh }, Some(be)) => {
                    if refresh {
                        refresh_pin(&key, bucket, &place, slot, val, now_ns);
                    }
                    ss.hits += 1;
                    return Ok(Some(Target { be, id }));
                }
                (Verdict::Expired, _) => ss.expiries += 1,
                _ => ss.repins += 1,
            }
            true
        }
        Found::None => {
            ss.misses += 1;
            true
        }
        // Another CPU is writing the client's slot: Maglev decides this packet alone.
        Found::Busy => {
            ss.misses += 1;
            false
        }
    };
    let pin = Pin {
        place,
        bucket,
        now,
        now_ns,
        write,
    };
    Ok(hashed(svc, &key, pin))
}

/// Refreshes a live pin; when this hit establishes an IPv4 client, its cold key (whole
/// key and creation second) is written now, its first second later than its pin.
#[inline(always)]
fn refresh_pin(
    key: &AffinityKey,
    bucket: *mut Bucket,
    place: &Place,
    slot: usize,
    val: u64,
    now_ns: u64,
) {
    let now = table::units(now_ns);
    if key.family == FAMILY_V4
        && table::becomes_established(val, now)
        && let Some(cold) = AFF_KEYS.get_ptr_mut(place.bucket)
    {
        let c = table::ColdKey {
            pinned_s: table::first_second(val, now_ns),
            ..table::cold_of(key, now_ns)
        };
        // SAFETY: the same live bucket of the table and of its keys; a lost race only
        // skips this write (the next hit tries again).
        unsafe { table::establish(bucket, cold, slot, val, now, &c) };
    } else {
        // SAFETY: a live bucket of the table; a lost race only skips this refresh.
        unsafe { table::refresh(bucket, slot, val, now) };
    }
}

/// Where and when [`hashed`] writes the pin.
struct Pin {
    place: Place,
    bucket: *mut Bucket,
    now: u32,
    now_ns: u64,
    /// False when the slot was busy: decide without writing.
    write: bool,
}

/// The Maglev slot decides; the entry is (re)written. `None`: the slot holds no backend
/// that takes new clients.
#[inline(always)]
fn hashed(svc: &ServiceValue, key: &AffinityKey, pin: Pin) -> Option<Target> {
    let own = affinity::slot(key, svc.table_size);
    let slot = svc.table_offset + own;
    let id = match MAGLEV.get(slot) {
        Some(id) if *id != NO_BACKEND => *id,
        _ => return None,
    };
    let id = if svc.flags & SVC_F_BOUNDED != 0 {
        bound::under_bound(svc, own, id)
    } else {
        id
    };
    let be = match BACKENDS.get(id) {
        Some(be) if affinity::takes_new_clients(be) => be,
        // The controller removes a backend from the table before clearing its healthy
        // bit, so this is only a transient of a concurrent update.
        _ => return None,
    };
    if pin.write {
        write_pin(key, &pin, id, be);
    }
    Some(Target { be, id })
}

/// Writes `key`'s pin to backend `id` (admission: `table::write`) and counts it.
#[inline(always)]
fn write_pin(key: &AffinityKey, pin: &Pin, id: u32, be: &Backend) {
    let Some(cold) = AFF_KEYS.get_ptr_mut(pin.place.bucket) else {
        return;
    };
    let idle_of = |service: u32| SVC_IDLE.get(service).copied().unwrap_or(0);
    // IPv6 tags are fingerprints: the whole key goes into the cold keys at once.
    // IPv4 tags are the whole key: nothing more until the client is established.
    let c = table::cold_of(key, pin.now_ns);
    let c = (key.family == FAMILY_V6).then_some(&c);
    // SAFETY: the same live bucket of the table and of its keys. A busy bucket only
    // costs the next packet a miss.
    let w = unsafe {
        table::write(
            pin.bucket,
            cold,
            pin.place.tag,
            c,
            table::pack(id, be.generation, false, pin.now),
            pin.now,
            idle_of,
        )
    };
    match w {
        Written::Pinned { .. } => stats::backend_pinned(id),
        Written::Busy => log::insert_failed(key.service_id, id),
    }
}

/// Rule 5: no healthy backend: drop (default) or pass to the local stack.
#[inline(always)]
pub fn no_backend(svc: &ServiceValue, ss: &mut ServiceStats) -> Result<u32, ()> {
    ss.no_backend += 1;
    if svc.flags & SVC_F_PASS_NO_BACKEND != 0 {
        stats::pass(Stat::PassNoBackend)
    } else {
        log::no_backend(svc.id);
        stats::drop(Stat::DropNoBackend)
    }
}
