//! `balance_factor` (lb_common::bound): a new client whose Maglev backend is over the
//! load bound goes to the backend of the next slot of its table that is not.
//!
//! Reads `XLB_BE_LOAD`, `XLB_MAGLEV` and `XLB_BACKENDS` only, and only on the path of a
//! new client of a service with a balance factor; must not touch the packet or pins.

use lb_common::{
    NO_BACKEND, ServiceValue, affinity,
    bound::{self, OVER_BOUND},
};

use super::maps::{BACKENDS, BE_LOAD, MAGLEV};

/// The backend for a new client of `svc` whose Maglev slot (within the service's table)
/// is `own`, holding backend `first`.
#[inline(always)]
pub fn under_bound(svc: &ServiceValue, own: u32, first: u32) -> u32 {
    let offset = svc.table_offset;
    let backend_at = |s: u32| match MAGLEV.get(offset + s) {
        Some(id) if *id != NO_BACKEND => match BACKENDS.get(*id) {
            Some(be) if affinity::takes_new_clients(be) => *id,
            _ => NO_BACKEND,
        },
        _ => NO_BACKEND,
    };
    let over = |id: u32| BE_LOAD.get(id).is_some_and(|f| *f & OVER_BOUND != 0);
    bound::probe(own, svc.table_size, first, backend_at, over).0
}
