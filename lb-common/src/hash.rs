//! The flow hash and the Maglev slot choice, shared by the XDP program and userspace.
//!
//! Requirements: identical on every balancer node (a fixed seed, explicit byte order, no
//! per-process randomness), cheap in eBPF (a few 64-bit multiplies, no loops, no tables),
//! and a full avalanche on 16-byte addresses so that clients differing in one bit, or
//! clients of a single /64 or /24, spread evenly over the Maglev slots.

use crate::{Addr, AffinityKey};

/// Seed of the flow hash. Fixed: two nodes with the same config must agree on every
/// client, so the seed is part of the on-the-wire contract, not a random value.
pub const FLOW_HASH_SEED: u64 = 0x6a09_e667_f3bc_c908;

/// Seeds of the two Maglev permutation hashes (offset and skip) of a backend address.
pub const MAGLEV_OFFSET_SEED: u64 = 0xbb67_ae85_84ca_a73b;
pub const MAGLEV_SKIP_SEED: u64 = 0x3c6e_f372_fe94_f82b;

const K1: u64 = 0x9e37_79b9_7f4a_7c15;
const K2: u64 = 0xc2b2_ae3d_27d4_eb4f;

/// MurmurHash3's 64-bit finalizer: every input bit affects every output bit with
/// probability close to 1/2.
#[inline(always)]
pub const fn fmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    z = (z ^ (z >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    z ^ (z >> 33)
}

/// Hash of 16 address bytes and one extra word under `seed`.
///
/// Each multiply-rotate step is a bijection of its running state, so two inputs that
/// differ only in `lo` (or only in `hi`) never collide before the finalizer.
#[inline(always)]
pub const fn hash_addr(addr: &[u8; 16], extra: u64, seed: u64) -> u64 {
    let lo = u64::from_le_bytes([
        addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
    ]);
    let hi = u64::from_le_bytes([
        addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15],
    ]);
    hash_words(lo, hi, extra, seed)
}

/// [`hash_addr`] of an [`Addr`]: the same value, without touching single bytes.
#[inline(always)]
pub const fn hash_addr_words(a: &Addr, extra: u64, seed: u64) -> u64 {
    // u32::from_le turns each word back into the value of its bytes read little-endian
    // (a no-op on bpfel and x86_64), so the hash is the same on every host.
    let lo = (u32::from_le(a[0]) as u64) | ((u32::from_le(a[1]) as u64) << 32);
    let hi = (u32::from_le(a[2]) as u64) | ((u32::from_le(a[3]) as u64) << 32);
    hash_words(lo, hi, extra, seed)
}

#[inline(always)]
const fn hash_words(lo: u64, hi: u64, extra: u64, seed: u64) -> u64 {
    let mut h = seed ^ extra.wrapping_mul(K2);
    h = (h ^ lo).wrapping_mul(K1).rotate_left(31);
    h = (h ^ hi).wrapping_mul(K2).rotate_left(29);
    fmix64(h)
}

/// The flow hash of an affinity key: service id, masked client address, source port
/// (non-zero only with `affinity = "none"`) and family.
#[inline(always)]
pub fn flow_hash(key: &AffinityKey) -> u32 {
    let extra = (key.service_id as u64)
        | ((u16::from_be(key.port_be) as u64) << 32)
        | ((key.family as u64) << 48);
    let h = hash_addr_words(&key.addr, extra, FLOW_HASH_SEED);
    (h ^ (h >> 32)) as u32
}

/// Slot of the Maglev table (size `table_size`) that decides a client with this hash.
#[inline(always)]
pub fn maglev_slot(hash: u32, table_size: u32) -> u32 {
    if table_size == 0 {
        0
    } else {
        hash % table_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FAMILY_V4, FAMILY_V6};

    fn key(addr: [u8; 16], family: u8) -> AffinityKey {
        AffinityKey {
            service_id: 3,
            addr: crate::addr_from_bytes(&addr),
            port_be: 0,
            family,
            _pad: 0,
        }
    }

    /// A fixed vector: changing the hash silently would make a rolling upgrade of a
    /// balancer fleet disagree about every client.
    #[test]
    fn flow_hash_is_stable() {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[198, 51, 100, 7]);
        let h = flow_hash(&key(a, FAMILY_V4));
        assert_eq!(h, flow_hash(&key(a, FAMILY_V4)));
        assert_eq!(h, 0x800f_e335, "flow hash changed: got {h:#010x}");
    }

    /// Avalanche: flipping any one input bit flips each output bit with probability ≈ 1/2.
    #[test]
    fn flow_hash_avalanche() {
        let mut worst: f64 = 0.0;
        let samples = 2000u32;
        for bit in 0..128 {
            let mut flips = [0u32; 32];
            for s in 0..samples {
                let mut a = [0u8; 16];
                a[..4].copy_from_slice(&s.wrapping_mul(2_654_435_761).to_le_bytes());
                a[12..].copy_from_slice(&s.to_be_bytes());
                let h1 = flow_hash(&key(a, FAMILY_V6));
                a[bit / 8] ^= 1 << (bit % 8);
                let h2 = flow_hash(&key(a, FAMILY_V6));
                let d = h1 ^ h2;
                for (o, f) in flips.iter_mut().enumerate() {
                    *f += (d >> o) & 1;
                }
            }
            for f in flips {
                let p = f as f64 / samples as f64;
                worst = worst.max((p - 0.5).abs());
            }
        }
        println!("flow hash avalanche: worst output-bit bias {worst:.3}");
        assert!(worst < 0.05, "output bit bias {worst} ≥ 0.05");
    }

    /// Consecutive IPv4 clients (one /16) spread evenly over 997 slots.
    #[test]
    fn flow_hash_spreads_sequential_clients() {
        let m = 997u32;
        let mut counts = vec![0u32; m as usize];
        let n = 65_536u32;
        for i in 0..n {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&[10, 1, (i >> 8) as u8, i as u8]);
            counts[maglev_slot(flow_hash(&key(a, FAMILY_V4)), m) as usize] += 1;
        }
        let mean = n as f64 / m as f64;
        let max = *counts.iter().max().unwrap() as f64;
        let min = *counts.iter().min().unwrap() as f64;
        println!("65536 sequential clients over {m} slots: min {min}, max {max}, mean {mean:.1}");
        // Binomial: σ ≈ 8.1 for mean 65.7, so ±6σ.
        assert!(max < mean + 50.0 && min > mean - 50.0);
    }
}
