//! `XLB_SVC_FAST`, the direct-mapped copy of the services map the XDP program looks at
//! first (`lb_common::FastService`): written in place, through the mmapped array, under
//! its sequence word — the controller is its only writer.
//!
//! Owns: the mapping and the writer's side of the sequence protocol. Must not touch the
//! services hash itself ([`super::maps`] writes it, before this copy).

use std::sync::atomic::{AtomicU32, Ordering, fence};

use aya::maps::MapData;
use lb_common::{
    FAST_SERVICE_SLOTS, FastService, SVC_F_VIP_MARKER, ServiceKey, ServiceValue, fast_slot,
};

use super::affinity::{Mapping, TableError};

/// The mapped array.
pub struct FastServices {
    map: Mapping,
}

impl FastServices {
    pub fn new(map: &MapData) -> Result<Self, TableError> {
        let (map, entries) = Mapping::new(map, lb_common::MAP_SVC_FAST)?;
        assert_eq!(entries, FAST_SERVICE_SLOTS, "XLB_SVC_FAST's size is fixed");
        Ok(Self { map })
    }

    fn slot(&self, key: &ServiceKey) -> *mut FastService {
        // SAFETY: fast_slot() < FAST_SERVICE_SLOTS, the array's size.
        unsafe { (self.map.ptr as *mut FastService).add(fast_slot(key) as usize) }
    }

    /// Copies `key → value` into its slot, unless another key holds the slot (that
    /// service is then found through the hash only). VIP markers are not copied (the
    /// program never asks for them here).
    pub fn set(&mut self, key: &ServiceKey, value: &ServiceValue) {
        if value.flags & SVC_F_VIP_MARKER != 0 {
            return;
        }
        let e = self.slot(key);
        // SAFETY: a live slot; we are its only writer.
        let cur = unsafe { std::ptr::addr_of!((*e).key).read_volatile() };
        if cur.family != 0 && cur != *key {
            return;
        }
        self.write(e, key, value);
    }

    /// Empties `key`'s slot when it holds `key`.
    pub fn remove(&mut self, key: &ServiceKey) {
        let e = self.slot(key);
        // SAFETY: as in `set`.
        let cur = unsafe { std::ptr::addr_of!((*e).key).read_volatile() };
        if cur == *key {
            self.write(e, &ServiceKey::default(), &ServiceValue::default());
        }
    }

    /// The sequence protocol's writer: odd, data, even (see `lb_common::FastService`).
    fn write(&self, e: *mut FastService, key: &ServiceKey, value: &ServiceValue) {
        // SAFETY: a live slot of the mapping; `seq` is its first, 4-aligned word.
        let seq = unsafe { AtomicU32::from_ptr(e as *mut u32) };
        let odd = seq.load(Ordering::Relaxed) | 1;
        seq.store(odd, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        // SAFETY: as above.
        unsafe {
            std::ptr::addr_of_mut!((*e).key).write_volatile(*key);
            std::ptr::addr_of_mut!((*e).value).write_volatile(*value);
        }
        seq.store(odd.wrapping_add(1), Ordering::Release);
    }
}
