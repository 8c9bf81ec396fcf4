//! The xlb program's size as the kernel sees it: the verifier's processed instruction
//! count, the translated (xlated) instructions and the JIT's bytes — of the object as
//! shipped and of the same object built without its diagnostics (lb-ebpf without the
//! `log` feature). A check that a data-plane change kept the verifier's work and the code
//! size where they were (run as root: `cargo run --release -p xlb-tests --example insns`).
use aya::programs::Xdp;
use lb_common::PROG_XLB;
use xlb::dataplane::loader::{LoadOptions, XLB_NOLOG_OBJECT, XLB_OBJECT};
use xlb_tests::harness::XlbHarness;

fn main() {
    // `--dump DIR`: also write each program's translated instructions (bpftool) there.
    let dump = std::env::args().skip_while(|a| a != "--dump").nth(1);
    for (name, object) in [("xlb", XLB_OBJECT), ("xlb-nolog", XLB_NOLOG_OBJECT)] {
        let h = XlbHarness::load_object(&LoadOptions::default(), object);
        let prog: &Xdp = h
            .ebpf
            .program(PROG_XLB)
            .expect("program xlb in the object")
            .try_into()
            .expect("xlb is an XDP program");
        let info = prog.info().expect("the loaded program's info");
        let xlated = info.size_translated();
        println!(
            "{name:<10} verified_insns={} xlated_insns={} jited_bytes={}",
            info.verified_instruction_count()
                .map_or("unknown".into(), |n| n.to_string()),
            xlated.map_or("unknown".into(), |b| (b / 8).to_string()),
            info.size_jitted()
        );
        if let Some(dir) = &dump {
            let out = std::process::Command::new("bpftool")
                .args(["prog", "dump", "xlated", "id", &info.id().to_string()])
                .output()
                .expect("bpftool");
            std::fs::write(format!("{dir}/{name}.xlated"), out.stdout).expect("write dump");
        }
    }
}
