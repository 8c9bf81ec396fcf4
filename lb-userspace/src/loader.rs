//! The embedded XDP objects.

/// The xlb balancer object, built by build.rs from lb-ebpf.
pub static XLB_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb"));
/// Programs used only by benchmarks (trivial pass, reflector, forwarder, sink).
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb-bench-progs"));
