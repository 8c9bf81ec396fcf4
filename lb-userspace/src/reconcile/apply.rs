//! Executes a [`Plan`] against the maps, in the plan's order.
//!
//! Owns: the translation of each [`MapOp`] into `DataPlane` calls. Must not touch: what
//! to write (reconcile decided) or the order (the plan's).

use crate::dataplane::maps::{DataPlane, MapsError};

use super::{MapOp, Plan, inspect};

/// What executing a plan did besides writing entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Affinity entries removed with removed services.
    pub flushed: usize,
    /// `(service id, backend id, clients unpinned)` per failback rebalance.
    pub rebalanced: Vec<(u32, u32, usize)>,
    /// Map operations executed.
    pub ops: usize,
}

/// Runs every operation in order; stops at the first failure (the caller re-reads the
/// maps to know where it stopped).
pub fn apply(plan: &Plan, dp: &mut DataPlane) -> Result<Applied, MapsError> {
    let mut done = Applied::default();
    for op in &plan.0 {
        match op {
            MapOp::NextGeneration(next) => persist_generation(dp, *next)?,
            MapOp::ResetBackendStats(id) => dp.reset_backend_stats(*id)?,
            MapOp::ResetServiceStats(id) => dp.reset_service_stats(*id)?,
            MapOp::Backend { id, value } => dp.set_backend(*id, value)?,
            MapOp::Slots { offset, table, old } => {
                dp.write_maglev(*offset, table, old.as_deref())?;
            }
            MapOp::Service { key, value } => dp.set_service(key, value)?,
            MapOp::RemoveService { key } => dp.remove_service(key)?,
            MapOp::Vips(vips) => dp.set_vips(vips)?,
            MapOp::NatSources(list) => dp.set_nat_sources(list)?,
            MapOp::TunnelSource { service_id, value } => {
                dp.set_tunnel_source(*service_id, value)?
            }
            MapOp::Egress { ifindex, value } => dp.set_egress(*ifindex, value.as_ref())?,
            MapOp::FlushAffinity { service_id } => {
                done.flushed += dp.affinity_flush(Some(*service_id))?;
            }
            MapOp::Rebalance {
                service_id,
                backend_id,
                table,
            } => {
                let n = inspect::rebalance(dp, *service_id, *backend_id, table)?;
                done.rebalanced.push((*service_id, *backend_id, n));
            }
        }
        done.ops += 1;
    }
    Ok(done)
}

/// Moves the durable counter up to `next` (never down).
fn persist_generation(dp: &mut DataPlane, next: u32) -> Result<(), MapsError> {
    let current = dp.meta()?.next_generation.max(1);
    if next > current {
        dp.reserve_generations(next - current)?;
    }
    Ok(())
}
