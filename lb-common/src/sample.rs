//! Source sampling: what the XDP program tells the controller about who sends the
//! packets of a service (issue 12, "see it").
//!
//! After a packet of a service is forwarded, a per-CPU countdown of the service
//! (`XLB_SAMPLE_CD`) is decremented; when it runs out, the packet is *sampled*: one
//! [`SourceSample`] goes to the ring buffer `XLB_SAMPLES` and the countdown restarts
//! from the service's period N (`XLB_SAMPLE_N`, written by the controller), jittered by
//! [`next_countdown`] so that traffic with a period of its own (round-robin clients)
//! cannot alias with N. N = 1 samples every packet (what the controller sets at low
//! rates); N = 0 samples nothing. The controller scales the samples by the service's
//! exact packet counter, so lost samples (a full ring) bias nothing but precision.
//!
//! Must not touch: maps (the program and the controller own them); this module only
//! defines the record and the arithmetic both sides share.

/// Bytes of the `XLB_SAMPLES` ring buffer (a power of two, whole pages). The controller
/// drains it every 100 ms; at its sample-rate target ([`TARGET_SAMPLES_PER_S`] per
/// service, capped over all services) 100 ms of samples fit many times over.
pub const SAMPLES_RING_BYTES: u32 = 1 << 22;

/// Samples per second per service the controller aims for: at 20,000 a 5-second
/// interval holds 100,000 samples, so a share's standard error is at most 0.16
/// percentage points (p = 0.5), and every packet is counted below 20,000 packets/s.
pub const TARGET_SAMPLES_PER_S: u64 = 20_000;

/// The largest period: one sample in 2^20 packets.
pub const MAX_PERIOD: u32 = 1 << 20;

/// `BPF_RB_NO_WAKEUP`: the controller polls the ring on a timer, so a sample never
/// pays for waking a reader.
pub const RB_NO_WAKEUP: u64 = 1;

/// One sampled packet, as the program writes it to `XLB_SAMPLES`. Host order unless
/// stated.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SourceSample {
    /// Client source address, network order ([`crate::Addr`]), whole (not masked).
    pub addr: crate::Addr,
    /// Service id.
    pub service_id: u32,
    /// Backend id the packet was sent to.
    pub backend_id: u32,
    /// The period the sample stands for (packets it represents, ≥ 1).
    pub weight: u32,
    /// Frame length in bytes (clamped to 65,535).
    pub len: u16,
    /// Client source port, network order.
    pub sport_be: u16,
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<SourceSample>() == 36);

/// The countdown after a sample at `period`, from a random `r`: uniform in
/// [period − k, period + k] with k = ⌊period / 4⌋ — mean exactly `period`, so a sample
/// stands for `period` packets, and no fixed stride (k = 0, a fixed stride, only below
/// 4, where aliasing cannot hide a source for long). Never 0 for `period` ≥ 1.
#[inline(always)]
pub fn next_countdown(period: u32, r: u32) -> u32 {
    let k = period >> 2;
    period - k + r % (2 * k + 1)
}

/// The period a controller sets for a service forwarding `pps` packets per second
/// when it aims for `target` samples per second: every packet below the target.
pub fn period_for(pps: f64, target: u64) -> u32 {
    // NaN and every rate up to the target: every packet.
    if pps.is_nan() || pps <= target as f64 {
        return 1;
    }
    let q = pps / target as f64;
    if q >= MAX_PERIOD as f64 {
        return MAX_PERIOD;
    }
    // A ceiling without std's `ceil` (this crate is no_std).
    let n = q as u32;
    if (n as f64) < q { n + 1 } else { n }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn countdowns_average_the_period_and_are_never_zero() {
        for period in [1u32, 2, 3, 4, 5, 7, 64, 1000, MAX_PERIOD] {
            let mut sum = 0u64;
            let n = 10_000u32;
            for r in 0..n {
                let c = next_countdown(period, r.wrapping_mul(2_654_435_761));
                assert!(c >= 1, "period {period}");
                sum += c as u64;
            }
            let mean = sum as f64 / n as f64;
            assert!(
                (mean - period as f64).abs() <= 0.005 * period as f64 + 0.01,
                "period {period}: mean {mean}"
            );
        }
    }

    #[test]
    fn periods_follow_the_rate() {
        assert_eq!(period_for(0.0, 20_000), 1);
        assert_eq!(period_for(19_999.0, 20_000), 1);
        assert_eq!(period_for(100_000.0, 20_000), 5);
        assert_eq!(period_for(100_001.0, 20_000), 6);
        assert_eq!(period_for(1e12, 20_000), MAX_PERIOD);
        assert_eq!(period_for(f64::NAN, 20_000), 1);
    }
}
