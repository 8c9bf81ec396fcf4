//! Rare events, reported through aya-log for the daemon's log (debug level): a drop (the
//! first of each reason within a second), a backend whose egress port is missing from
//! `XLB_TX_PORTS`, a new client's pin that could not be written.
//!
//! Every report passes its event's gate first (`lb_common::log_gate`): at most one record
//! per event per second across all CPUs, decided by one compare-and-swap, so a flood of
//! drops costs a call, a read of one shared word and no record per packet. Only the paths
//! of those events call this module; a hit and a pass-through never do (the README's
//! Benchmarks compare them against the object built without the `log` feature, where
//! every function here is empty).
//!
//! One record site for every event (`xlb event GATE A B`, see `lb_common::log_gate`),
//! in one function the program calls rather than inlines: each site of an aya-log record
//! costs the verifier hundreds of instructions (every byte of its text is a store), and
//! the words are the daemon's to choose (lb-userspace `dataplane::events`), in the names
//! `xlb stats` uses.
//!
//! Owns `XLB_LOG_GATE` and aya-log's `AYA_LOGS`; must not decide or count anything.

use lb_common::{Stat, log_gate};

/// A packet to a VIP dropped for `reason` (fragment, truncated L4 header, IPv6
/// extension header).
#[inline(always)]
pub fn unbalanceable(reason: Stat) {
    report(log_gate::gate(reason), 0, 0);
}

/// A tunnel-mode packet dropped for `reason` (`DropNoEgress`, `DropTooBig`).
#[inline(always)]
pub fn tunnel_drop(reason: Stat) {
    report(log_gate::gate(reason), 0, 0);
}

/// A packet of service `service` dropped: no backend takes it.
#[inline(always)]
pub fn no_backend(service: u32) {
    report(log_gate::gate(Stat::DropNoBackend), service, 0);
}

/// A packet for backend `backend` dropped: its egress interface `ifindex` is not in
/// `XLB_TX_PORTS`.
#[inline(always)]
pub fn no_tx_port(backend: u32, ifindex: u32) {
    report(log_gate::gate(Stat::DropNoTxPort), backend, ifindex);
}

/// A new client of service `service` could not be pinned to backend `backend` (its
/// bucket or slot was held by another writer); Maglev decided this packet alone.
#[inline(always)]
pub fn insert_failed(service: u32, backend: u32) {
    report(log_gate::INSERT_FAILED, service, backend);
}

/// Event `gate` with its two words, unless this second's record of it is out already.
/// The gate is read here, inline (a flood of one drop reason pays a read and the clock,
/// no call); only a due event calls the record site.
#[cfg(feature = "log")]
#[inline(always)]
fn report(gate: u32, a: u32, b: u32) {
    let Some(p) = super::maps::LOG_GATE.get_ptr(gate) else {
        return;
    };
    // SAFETY: a helper without side effects; a live 8-aligned slot of the array, shared
    // with other CPUs (a stale read only delays or repeats the compare-and-swap's check).
    let (now, last) = unsafe {
        (
            aya_ebpf::helpers::bpf_ktime_get_coarse_ns(),
            core::ptr::read_volatile(p),
        )
    };
    if log_gate::due(last, now) {
        xlb_report(gate, a, b, last, now);
    }
}

/// The one record site, a global BPF function: the verifier checks it once, on its own,
/// instead of once per call site (it takes and returns only scalars, as global
/// functions must). The event is recorded when this caller claims the gate.
#[cfg(feature = "log")]
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn xlb_report(gate: u32, a: u32, b: u32, last: u64, now: u64) -> u32 {
    let Some(p) = super::maps::LOG_GATE.get_ptr_mut(gate) else {
        return 0;
    };
    // SAFETY: a live 8-aligned slot of the array.
    if unsafe { log_gate::claim(p, last, now) } {
        aya_log_ebpf::debug!((), "xlb event {} {} {}", gate, a, b);
    }
    0
}

/// The build without diagnostics: no record, no gate.
#[cfg(not(feature = "log"))]
#[inline(always)]
fn report(_gate: u32, _a: u32, _b: u32) {}
