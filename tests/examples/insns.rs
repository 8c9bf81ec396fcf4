//! The xlb program's size as the kernel sees it: the verifier's processed instruction
//! count, the translated (xlated) instructions and the JIT's bytes. A check that a
//! data-plane change kept the verifier's work and the code size where they were (run as
//! root: `cargo run --release -p xlb-tests --example insns`).
use aya::programs::Xdp;
use lb_common::PROG_XLB;
use xlb::dataplane::loader::LoadOptions;
use xlb_tests::harness::XlbHarness;

fn main() {
    let h = XlbHarness::load(&LoadOptions::default());
    let prog: &Xdp = h
        .ebpf
        .program(PROG_XLB)
        .expect("program xlb in the object")
        .try_into()
        .expect("xlb is an XDP program");
    let info = prog.info().expect("the loaded program's info");
    let xlated = info.size_translated();
    println!(
        "verified_insns={} xlated_insns={} jited_bytes={}",
        info.verified_instruction_count()
            .map_or("unknown".into(), |n| n.to_string()),
        xlated.map_or("unknown".into(), |b| (b / 8).to_string()),
        info.size_jitted()
    );
}
