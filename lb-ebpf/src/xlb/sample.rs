//! Source sampling (lb_common::sample): one packet in N of each service goes to the
//! `XLB_SAMPLES` ring buffer with its source, backend and length, for `xlb top`, the
//! load shares and the heavy-source warning.
//!
//! Cost on the path of a packet that is not sampled: one per-CPU array slot decremented
//! (`XLB_SAMPLE_CD`; the service's per-CPU counters, which the packet writes anyway, have
//! no free word left). A sampled packet also reads the period (`XLB_SAMPLE_N`), draws a
//! random number and copies 36 bytes into the ring without waking the reader.
//!
//! Reads the packet's parsed [`Flow`] and the chosen backend only; must not decide
//! anything about the packet (it runs after the backend is chosen and changes nothing).

use aya_ebpf::{Global, helpers::bpf_get_prandom_u32, programs::XdpContext};
use lb_common::sample::{RB_NO_WAKEUP, SourceSample, next_countdown};

use super::{
    maps::{SAMPLE_CD, SAMPLE_N, SAMPLES},
    parse::Flow,
};

/// 0: the program is loaded without sampling (the verifier removes the code; the
/// benchmarks measure the cost this way). Set by the loader, read-only data.
#[unsafe(no_mangle)]
pub static SAMPLING: Global<u32> = Global::new(1);

/// Counts one packet of service `service_id` from `flow` sent to backend `backend_id`;
/// when its countdown runs out, the packet is sampled.
#[inline(always)]
pub fn packet(ctx: &XdpContext, service_id: u32, flow: &Flow, backend_id: u32) {
    if SAMPLING.load() == 0 {
        return;
    }
    let Some(cd) = SAMPLE_CD.get_ptr_mut(service_id) else {
        return;
    };
    // SAFETY: this CPU's slot; nothing else on this CPU runs meanwhile.
    let left = unsafe { *cd };
    if left > 1 {
        // SAFETY: as above.
        unsafe { *cd = left - 1 };
        return;
    }
    let period = match SAMPLE_N.get(service_id) {
        Some(n) if *n != 0 => *n,
        // Off: the countdown stays spent, so the period is looked at again next packet.
        _ => return,
    };
    // SAFETY: a helper without side effects.
    let r = unsafe { bpf_get_prandom_u32() };
    // SAFETY: as above.
    unsafe { *cd = next_countdown(period, r) };
    let len = ctx.data_end() - ctx.data();
    let s = SourceSample {
        addr: flow.saddr,
        service_id,
        backend_id,
        weight: period,
        len: if len > 0xffff { 0xffff } else { len as u16 },
        sport_be: flow.sport,
        family: flow.family,
        _pad: [0; 3],
    };
    // A full ring loses the sample: the controller scales by the exact packet counter.
    let _ = SAMPLES.output::<SourceSample>(&s, RB_NO_WAKEUP);
}
