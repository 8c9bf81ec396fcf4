//! Adoption: [`Programmed`] read back from the maps, so a restarted daemon continues
//! where the last one stopped (ids, generations, table regions, last known health and
//! links) and reconcile writes only differences.
//!
//! Owns: the reading. Must not touch: matching to desired services (reconcile) or writes.

use lb_common::{BE_F_DRAINING, BE_F_HEALTHY};

use super::{Health, Link, Programmed, ProgrammedBackend, ProgrammedService};
use crate::{
    dataplane::maps::{DataPlane, MapsError},
    model::addr_from_words,
};

/// Everything the maps hold: services (unnamed: the maps hold no names) with their
/// backends and tables, and backends no service owns.
pub fn adopt(dp: &DataPlane) -> Result<Programmed, MapsError> {
    let services = dp.service_entries()?;
    let mut backends = dp.backend_entries()?;
    let mut out = Programmed::empty(dp.maglev_capacity());
    out.egress = dp.egress_entries()?.into_iter().collect();
    for (key, value) in services {
        let table = dp.read_maglev(value.table_offset, value.table_size)?;
        let mut own: Vec<ProgrammedBackend> = backends
            .iter()
            .filter(|(_, b)| b.service_id == value.id)
            .map(|(id, b)| programmed_backend(*id, b))
            .collect();
        own.sort_by_key(|b| b.address);
        backends.retain(|(_, b)| b.service_id != value.id);
        out.services.push(ProgrammedService {
            name: None,
            id: value.id,
            key,
            value,
            previous_table: table.clone(),
            table,
            members: None,
            tunnel_source: dp.tunnel_source(value.id)?,
            backends: own,
        });
    }
    out.orphans = backends.into_iter().map(|(id, _)| id).collect();
    Ok(out)
}

/// A backend entry as programmed. Its health is the HEALTHY bit when the link was known;
/// an unresolved backend has the bit clear whatever its health, so it is Unknown. (A
/// resolved backend not yet checked when the last daemon stopped also has the bit clear:
/// it comes back Down and needs `rise` passes rather than one.)
fn programmed_backend(id: u32, b: &lb_common::Backend) -> ProgrammedBackend {
    let resolved = b.mac != [0; 6];
    let health = match (b.flags & BE_F_HEALTHY != 0, resolved) {
        (true, _) => Health::Up,
        (false, true) => Health::Down,
        (false, false) => Health::Unknown,
    };
    ProgrammedBackend {
        id,
        address: addr_from_words(&b.addr, b.family),
        weight: 0,
        generation: b.generation,
        health,
        link: resolved.then_some(Link {
            mac: b.mac,
            src_mac: b.src_mac,
            ifindex: b.ifindex,
        }),
        draining: b.flags & BE_F_DRAINING != 0,
        value: *b,
    }
}
