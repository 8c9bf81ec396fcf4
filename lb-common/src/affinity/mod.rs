//! The affinity rules, written once: which key a packet has, and what an affinity entry
//! decides. The XDP program, `xlb explain`, `xlb affinity list` and the pinned-client
//! counts all call these functions, so no two views of one client can disagree.
//!
//! Everything here is `#[inline(always)]`, loop-free and branch-light so the verifier
//! accepts it inside the XDP program; it never touches a map (callers look entries up).
//!
//! The rules (README, "How affinity decisions are made"):
//! 1. key = (service, source address masked to the service prefix, family), plus the
//!    source port when the service has `affinity = "none"`;
//! 2. an entry decides when its backend still exists, belongs to the key's service, has
//!    the entry's generation and is usable (healthy bit), and the entry is idle no longer
//!    than `idle_timeout`. Draining backends keep the healthy bit: drain keeps pins;
//! 3. otherwise the Maglev slot decides and the entry is rewritten (a *re-pin* when the
//!    backend was the reason, an *expiry* when idleness was);
//! 4. a live entry's `last_seen` is refreshed when it is older than the service's
//!    refresh period ([`refresh_period_ns`]), not on every packet.
//!
//! Where entries live and how they are read and written concurrently: [`table`].

pub mod table;

use crate::{
    Addr, AffinityKey, AffinityValue, BE_F_HEALTHY, Backend, SVC_F_AFFINITY_NONE, ServiceValue,
    flow_hash, maglev_slot,
};

/// The longest refresh period: an entry of a busy client is written at most this often
/// (the affinity table is shared by all CPUs; a write per packet would bounce its cache
/// lines between them).
pub const MAX_REFRESH_NS: u64 = 1_000_000_000;

/// The shortest `idle_timeout` a service may have (100 ms), for the validator.
///
/// Why this value: idleness is measured with `bpf_ktime_get_coarse_ns()`, which advances
/// once per scheduler tick — 4 ms at HZ=250 (this machine), 10 ms at HZ=100, the coarsest
/// common setting. A client is guaranteed to keep its pin while its gaps stay below
/// `idle_timeout − refresh − one tick` = ¾·idle_timeout − tick ([`refresh_period_ns`]).
/// At 100 ms that is 65 ms even at HZ=100: the clock step costs at most a tenth of the
/// timeout. Below it the tick dominates and the timeout would not mean what it says.
pub const MIN_IDLE_TIMEOUT_NS: u64 = 100_000_000;

/// The longest `idle_timeout` a service may have, for the validator: the affinity table
/// stamps entries in units of 2^20 ns ([`table::TIME_SHIFT`]) and compares idle times as
/// 31-bit differences ([`table::MAX_IDLE_UNITS`]), so (2^31 − 1) · 2^20 ns ≈ 26.06 days is
/// the longest idleness it can tell from a wrapped clock; a longer timeout would silently
/// act as that. The limit is the whole hours below it: 625 h (26 days and 1 hour).
pub const MAX_IDLE_TIMEOUT_NS: u64 = 625 * 3_600 * 1_000_000_000;
const _: () = assert!(MAX_IDLE_TIMEOUT_NS <= (table::MAX_IDLE_UNITS as u64) << table::TIME_SHIFT);
const _: () = assert!(table::timeout_units(MAX_IDLE_TIMEOUT_NS) < table::MAX_IDLE_UNITS);

/// How often a live entry's `last_seen_ns` is refreshed for a service with this
/// `idle_timeout`: a quarter of it, at most [`MAX_REFRESH_NS`]. The controller stores it
/// in [`ServiceValue::refresh_ns`].
///
/// Why a quarter: `last_seen` lags the client's last packet by up to the refresh period
/// plus one gap between packets, so a client expires only after a gap longer than
/// `idle_timeout − refresh` (¾ of it); a whole second (the old fixed period) made every
/// client of an `idle_timeout` ≤ 1 s expire while still sending.
pub const fn refresh_period_ns(idle_timeout_ns: u64) -> u32 {
    let q = idle_timeout_ns / 4;
    if q > MAX_REFRESH_NS {
        MAX_REFRESH_NS as u32
    } else {
        q as u32
    }
}

/// The affinity key of a packet from `saddr` (network order, [`Addr`]) and source port
/// `sport_be` (network order) of `family` to the service `svc`.
#[inline(always)]
pub fn key(svc: &ServiceValue, saddr: &Addr, sport_be: u16, family: u8) -> AffinityKey {
    let m = &svc.src_mask;
    AffinityKey {
        service_id: svc.id,
        addr: [
            saddr[0] & m[0],
            saddr[1] & m[1],
            saddr[2] & m[2],
            saddr[3] & m[3],
        ],
        port_be: if svc.flags & SVC_F_AFFINITY_NONE != 0 {
            sport_be
        } else {
            0
        },
        family,
        _pad: 0,
    }
}

/// The slot of `key` within its service's Maglev table of `table_size` slots (add the
/// service's `table_offset` for the index in `XLB_MAGLEV`).
#[inline(always)]
pub fn slot(key: &AffinityKey, table_size: u32) -> u32 {
    maglev_slot(flow_hash(key), table_size)
}

/// Why an entry no longer decides because of its backend (counted as a re-pin).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repin {
    /// No backend entry under that id any more (cleared or out of range).
    Gone,
    /// The id now holds a backend of another service.
    OtherService,
    /// The id was reused for another backend (a new generation).
    Generation,
    /// The backend lost its healthy bit (unhealthy, or its neighbour is unresolved).
    Unusable,
}

/// What an existing entry decides for the next packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The entry decides; `refresh`: write `last_seen_ns = now`.
    Live { refresh: bool },
    /// Idle longer than `idle_timeout`: Maglev decides again (an expiry).
    Expired,
    /// The backend is no longer this client's to keep: Maglev decides again (a re-pin).
    Repin(Repin),
}

/// Judges `entry` (found under `key`) against the backend entry its `backend_id` points
/// to (`None` when out of range) at time `now` (`bpf_ktime_get_coarse_ns` clock): the
/// same rule as [`judge_word`] on the table's value word, which keeps the generation's
/// low [`table::GEN_BITS`] bits and time in [`table::units`].
#[inline(always)]
pub fn judge(
    svc: &ServiceValue,
    key: &AffinityKey,
    entry: &AffinityValue,
    backend: Option<&Backend>,
    now: u64,
) -> Verdict {
    let word = table::pack(
        entry.backend_id,
        entry.backend_gen,
        false,
        table::units(entry.last_seen_ns),
    );
    judge_word(svc, key.service_id, word, backend, table::units(now))
}

/// Judges the table's value `word` of a key of service `service_id` against the backend
/// entry its backend id points to, at `now` (table units).
///
/// Two checks guard the identity of the backend, on purpose (defence in depth):
/// - the generation: backend ids index a fixed array and are reused; each use carries a
///   generation that is never issued twice while the pinned state lives (the durable
///   counter in `XLB_META`), so a pin never follows an id to its next backend. The entry
///   keeps the generation's low 18 bits: an id would have to be reused exactly 2^18
///   (262,144) generations later, within the same service, while the entry stayed live;
/// - the service: a pin never crosses services even on a path that reissues a
///   generation — state adopted from a release that predates the durable counter
///   re-derived generations from the backends array and could reissue a removed
///   backend's (id, generation) to another service; this check makes that harmless.
#[inline(always)]
pub fn judge_word(
    svc: &ServiceValue,
    service_id: u32,
    word: u64,
    backend: Option<&Backend>,
    now: u32,
) -> Verdict {
    let be = match backend {
        Some(be) if be.generation != 0 => be,
        _ => return Verdict::Repin(Repin::Gone),
    };
    if be.service_id != service_id {
        return Verdict::Repin(Repin::OtherService);
    }
    if be.generation & table::GEN_MASK != table::generation_of(word) {
        return Verdict::Repin(Repin::Generation);
    }
    if be.flags & BE_F_HEALTHY == 0 {
        return Verdict::Repin(Repin::Unusable);
    }
    let idle = table::idle_units(now, table::time_of(word));
    if idle > table::timeout_units(svc.idle_timeout_ns) {
        return Verdict::Expired;
    }
    Verdict::Live {
        refresh: idle > svc.refresh_ns >> table::TIME_SHIFT
            || table::becomes_established(word, now),
    }
}

/// Can a new client be pinned to this backend (the one its Maglev slot holds)?
#[inline(always)]
pub fn takes_new_clients(be: &Backend) -> bool {
    be.flags & BE_F_HEALTHY != 0
}

/// The entry written when `backend_id` (holding `be`) is chosen at `now`.
#[inline(always)]
pub fn pin(backend_id: u32, be: &Backend, now: u64) -> AffinityValue {
    AffinityValue {
        backend_id,
        backend_gen: be.generation,
        pinned_ns: now,
        last_seen_ns: now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BE_F_DRAINING, FAMILY_V4, prefix_mask};

    const SEC: u64 = 1_000_000_000;

    fn svc(idle_timeout_ns: u64) -> ServiceValue {
        ServiceValue {
            id: 3,
            idle_timeout_ns,
            refresh_ns: refresh_period_ns(idle_timeout_ns),
            src_mask: prefix_mask(24, FAMILY_V4),
            prefix_len: 24,
            ..Default::default()
        }
    }

    fn backend(service_id: u32, generation: u32, flags: u8) -> Backend {
        Backend {
            service_id,
            generation,
            flags,
            ..Default::default()
        }
    }

    fn entry(generation: u32, last_seen_ns: u64) -> AffinityValue {
        AffinityValue {
            backend_id: 9,
            backend_gen: generation,
            pinned_ns: 0,
            last_seen_ns,
        }
    }

    #[test]
    fn key_masks_the_prefix_and_keeps_the_port_only_for_affinity_none() {
        let mut s = svc(SEC);
        let a = [u32::from_ne_bytes([198, 51, 100, 7]), 0, 0, 0];
        let k = key(&s, &a, 4242u16.to_be(), FAMILY_V4);
        assert_eq!(k.addr[0], u32::from_ne_bytes([198, 51, 100, 0]));
        assert_eq!((k.service_id, k.port_be, k.family), (3, 0, FAMILY_V4));
        s.flags |= SVC_F_AFFINITY_NONE;
        assert_eq!(
            key(&s, &a, 4242u16.to_be(), FAMILY_V4).port_be,
            4242u16.to_be()
        );
    }

    #[test]
    fn every_verdict() {
        let s = svc(500_000_000);
        let k = key(&s, &[1, 0, 0, 0], 0, FAMILY_V4);
        // Within one 2^30 ns "second" of the admission rule, so no verdict below is a
        // refresh for becoming established.
        let now = 10 * (1 << 30) + 600_000_000;
        let ok = backend(3, 7, BE_F_HEALTHY);
        let fresh = entry(7, now - 1_000_000);
        assert_eq!(
            judge(&s, &k, &fresh, Some(&ok), now),
            Verdict::Live { refresh: false }
        );
        let drained = backend(3, 7, BE_F_HEALTHY | BE_F_DRAINING);
        assert_eq!(
            judge(&s, &k, &fresh, Some(&drained), now),
            Verdict::Live { refresh: false },
            "drain keeps pins"
        );
        let cases = [
            (None, Verdict::Repin(Repin::Gone)),
            (Some(backend(0, 0, 0)), Verdict::Repin(Repin::Gone)),
            (
                Some(backend(4, 7, BE_F_HEALTHY)),
                Verdict::Repin(Repin::OtherService),
            ),
            (
                Some(backend(3, 8, BE_F_HEALTHY)),
                Verdict::Repin(Repin::Generation),
            ),
            (
                Some(backend(3, 7, BE_F_DRAINING)),
                Verdict::Repin(Repin::Unusable),
            ),
        ];
        for (be, want) in cases {
            assert_eq!(judge(&s, &k, &fresh, be.as_ref(), now), want, "{be:?}");
        }
        let idle = |ns| judge(&s, &k, &entry(7, now - ns), Some(&ok), now);
        // Table time units are 2^20 ns: each boundary holds within one unit (≈1 ms).
        assert_eq!(idle(120_000_000), Verdict::Live { refresh: false });
        assert_eq!(idle(128_000_000), Verdict::Live { refresh: true });
        assert_eq!(idle(498_000_000), Verdict::Live { refresh: true });
        assert_eq!(idle(503_000_000), Verdict::Expired);
        // Generations compare on the bits the table keeps.
        let big = backend(3, 7 + (1 << 18), BE_F_HEALTHY);
        assert_eq!(
            judge(&s, &k, &fresh, Some(&big), now),
            Verdict::Live { refresh: false }
        );
    }

    #[test]
    fn refresh_period_is_a_quarter_capped_at_a_second() {
        assert_eq!(refresh_period_ns(500_000_000), 125_000_000);
        assert_eq!(refresh_period_ns(4 * SEC), SEC as u32);
        assert_eq!(refresh_period_ns(600 * SEC), SEC as u32);
        assert_eq!(refresh_period_ns(u64::MAX), SEC as u32);
        // At the minimum, a client with gaps of ¾ of the timeout minus a 10 ms tick stays.
        let r = refresh_period_ns(MIN_IDLE_TIMEOUT_NS) as u64;
        assert!(MIN_IDLE_TIMEOUT_NS - r - 10_000_000 >= 65_000_000);
    }
}
