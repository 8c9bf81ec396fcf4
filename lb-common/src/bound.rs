//! `balance_factor`: bounded-load consistent hashing for new clients (issue 12; after
//! Mirrokni, Thorup and Zadimoghaddam, "Consistent Hashing with Bounded Loads", SODA
//! 2018; HAProxy's `hash-balance-factor`; Envoy's bounded-load ring hash).
//!
//! The controller measures each backend's packets over the last second and flags, in
//! `XLB_BE_LOAD`, every backend of a service with a balance factor that carries more
//! than factor × its fair share (its weight over the weights of the backends that take
//! new clients) of the service's packets. A *new* client — one the affinity table does
//! not pin: a miss, an expiry, a re-pin — whose Maglev backend is flagged goes to the
//! backend of the first of the next [`PROBES`] slots of its service's table that is not
//! flagged; when all are, it stays with its Maglev backend. Pinned clients never move
//! because of the bound. The sequence (the following slots of the client's own Maglev
//! table) is deterministic and keeps the weights' proportions.
//!
//! The XDP program and `xlb explain` both run [`probe`]. Must not touch: maps.

use crate::NO_BACKEND;

/// Slots after a client's own that are tried when its backend is over the bound.
pub const PROBES: u32 = 8;

/// A backend's flag in `XLB_BE_LOAD`: over the bound right now.
pub const OVER_BOUND: u32 = 1;

/// The backend a new client gets: `first` (the backend of its Maglev `slot`) unless
/// `over(first)`; then the backend of the first of the next [`PROBES`] slots (wrapping in
/// a table of `table_size`) that `backend_at` gives (`NO_BACKEND`: none, or one that
/// takes no new clients) and that is not `over`. Returns the backend and how many slots
/// on it was found (0: its own).
#[inline(always)]
pub fn probe(
    slot: u32,
    table_size: u32,
    first: u32,
    backend_at: impl Fn(u32) -> u32,
    over: impl Fn(u32) -> bool,
) -> (u32, u32) {
    if !over(first) {
        return (first, 0);
    }
    let mut i = 1;
    while i <= PROBES {
        let mut s = slot + i;
        if s >= table_size {
            s -= table_size;
        }
        let id = backend_at(s);
        if id != NO_BACKEND && !over(id) {
            return (id, i);
        }
        i += 1;
    }
    (first, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_bound_backends_are_skipped_in_slot_order() {
        let table = [0u32, 1, 0, 2, 1, 0, 2];
        let at = |s: u32| table[s as usize];
        assert_eq!(probe(0, 7, 0, at, |_| false), (0, 0));
        assert_eq!(probe(0, 7, 0, at, |b| b == 0), (1, 1));
        assert_eq!(probe(5, 7, 0, at, |b| b == 0), (2, 1));
        // Wraps around the table; a slot without a usable backend is passed over.
        assert_eq!(
            probe(
                6,
                7,
                2,
                |s| if s == 0 { NO_BACKEND } else { at(s) },
                |b| b == 2
            ),
            (1, 2)
        );
        // Everyone over: the client keeps its own backend.
        assert_eq!(probe(0, 7, 0, at, |_| true), (0, 0));
    }
}
