//! The verdict counters: every packet ends in exactly one `XLB_STATS` slot (its verdict
//! and reason, `Stat`), through [`verdict`], [`pass`] or [`drop`]; and access to the
//! per-service and per-backend counters.
//!
//! Must not decide anything: callers pick the verdict, this module only counts it.

use aya_ebpf::bindings::xdp_action::{XDP_DROP, XDP_PASS};
use lb_common::{ServiceStats, Stat};

use super::maps::{BE_STATS, STATS, SVC_STATS};

/// Counts `stat` and returns `action`.
#[inline(always)]
pub fn verdict(stat: Stat, action: u32) -> Result<u32, ()> {
    if let Some(c) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
    Ok(action)
}

/// XDP_PASS, counted as `stat`.
#[inline(always)]
pub fn pass(stat: Stat) -> Result<u32, ()> {
    verdict(stat, XDP_PASS)
}

/// XDP_DROP, counted as `stat`.
#[inline(always)]
pub fn drop(stat: Stat) -> Result<u32, ()> {
    verdict(stat, XDP_DROP)
}

/// This CPU's counters of service `id`; `Err` when `id` is out of range (the caller
/// aborts: the controller never hands out such an id).
#[inline(always)]
pub fn service(id: u32) -> Result<&'static mut ServiceStats, ()> {
    match SVC_STATS.get_ptr_mut(id) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        Some(ss) => Ok(unsafe { &mut *ss }),
        None => Err(()),
    }
}

/// Counts a pin written for backend `id`.
#[inline(always)]
pub fn backend_pinned(id: u32) {
    if let Some(bs) = BE_STATS.get_ptr_mut(id) {
        // SAFETY: per-CPU slot.
        unsafe { (*bs).pins += 1 };
    }
}

/// Counts one packet of `len` bytes sent to backend `id`.
#[inline(always)]
pub fn backend_sent(id: u32, len: u64) {
    if let Some(bs) = BE_STATS.get_ptr_mut(id) {
        // SAFETY: per-CPU slot.
        let bs = unsafe { &mut *bs };
        bs.packets += 1;
        bs.bytes += len;
    }
}
