//! The xlb XDP balancer: IP affinity with a bucketed affinity table in front of Maglev.
//!
//! Per packet: parse → VIP pre-filter → service lookup → affinity lookup (one 64-byte
//! bucket) → (miss) Maglev slot → backend → pin written → rewrite MACs (DSR) or
//! encapsulate (tunnel) → XDP_TX or XDP_REDIRECT. Everything not owned by a service leaves with XDP_PASS, unchanged.
//! Every packet increments exactly one counter of `XLB_STATS` (its verdict and reason).
//!
//! The same object holds `xlb_probe`, the TC program that encapsulates the daemon's
//! health probes of tunnel backends (module `probe`), sharing the maps.
//!
//! This file is the entry and the path between the modules of [`xlb`], one per concern
//! (parse, service, balance, forward; stats and maps shared). Every function on the path
//! is `#[inline(always)]`: the program is one function after inlining, which keeps the
//! verifier's work and the per-packet cost where they were measured (README, Benchmarks).
#![no_std]
#![no_main]

mod xlb;

use aya_ebpf::{
    bindings::xdp_action::XDP_ABORTED,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use lb_common::Stat;
use xlb::{
    balance, forward, frag, icmp,
    parse::{self, Parsed},
    probe, sample, service, stats,
};

// Inlined into the entry aya's macro wraps it in (see `try_xlb`: a BPF-to-BPF call per
// packet costs ≈8 ns).
#[xdp]
#[inline(always)]
pub fn xlb(ctx: XdpContext) -> u32 {
    match try_xlb(&ctx) {
        Ok(action) => action,
        Err(()) => XDP_ABORTED,
    }
}

/// The path of a packet, one module per step; nothing climbs back up. `Err` only for a
/// map index out of range (XDP_ABORTED), which the loader and controller rule out.
///
/// Inlined on purpose: once the path grew past LLVM's inlining threshold, it became a
/// BPF-to-BPF call whose `Result` travels through the stack, which cost every packet
/// ≈8 ns (pass-through 25 → 33 ns, hit 68 → 79, `cargo xtask bench micro`).
#[inline(always)]
fn try_xlb(ctx: &XdpContext) -> Result<u32, ()> {
    let (flow, svc) = match parse::packet(ctx) {
        Parsed::Flow(flow) => match service::of(&flow) {
            Some(svc) => (flow, svc),
            None => return stats::pass(Stat::PassNotService),
        },
        Parsed::Fragment(later) => match frag::later(&later) {
            Some(found) => found,
            None => {
                return service::not_balanceable(&later.daddr, later.family, Stat::DropFragment);
            }
        },
        Parsed::Pass(stat) => return stats::pass(stat),
        Parsed::Icmp(at) => return icmp::handle(ctx, &at),
        Parsed::Unbalanceable {
            daddr,
            family,
            reason,
        } => return service::not_balanceable(&daddr, family, reason),
    };
    if let Some(id) = flow.first_fragment {
        frag::track(&flow, id);
    }
    let ss = stats::service(svc.id)?;
    match balance::backend(&svc, ss, &flow)? {
        Some(to) => {
            sample::packet(ctx, svc.id, &flow, to.id);
            forward::to_backend(ctx, &svc, ss, &flow.saddr, to, false)
        }
        None => balance::no_backend(&svc, ss),
    }
}

/// The health-probe TC program (`lb_common::tunnel::PROG_PROBE`, module `probe`): probes
/// of tunnel backends leave encapsulated as their traffic does; every other packet passes.
#[classifier]
pub fn xlb_probe(ctx: TcContext) -> i32 {
    probe::handle(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
