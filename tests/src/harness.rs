//! The real xlb object, loaded into the kernel (not attached), driven through
//! BPF_PROG_TEST_RUN, with its maps filled by the controller's own `Balancer`.

use aya::{
    Ebpf,
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use lb_common::PROG_XLB;
use xlb::{
    balancer::{AdoptReport, Balancer, DesiredService},
    dataplane::loader::{LoadOptions, load_xlb},
    dataplane::maps::DataPlane,
};

pub struct XlbHarness {
    pub ebpf: Ebpf,
    pub lb: Balancer,
}

/// What one run of the program did.
#[derive(Debug)]
pub struct RunResult {
    pub action: u32,
    pub output: Vec<u8>,
    pub duration_ns: u128,
}

/// `struct xdp_md` as BPF_PROG_TEST_RUN takes it in `ctx_in`.
fn xdp_md(len: usize, ingress_ifindex: u32) -> [u8; 24] {
    let mut md = [0u8; 24];
    // data = 0 (no metadata), data_end = len, data_meta = 0
    md[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
    md[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    md
}

impl XlbHarness {
    pub fn load(opts: &LoadOptions) -> Self {
        let mut ebpf = load_xlb(opts).unwrap_or_else(|e| panic!("loading the xlb object: {e:#}"));
        {
            let prog: &mut Xdp = ebpf
                .program_mut(PROG_XLB)
                .expect("program xlb in the object")
                .try_into()
                .expect("xlb is an XDP program");
            prog.load()
                .unwrap_or_else(|e| panic!("verifier rejected xlb: {e:#?}"));
        }
        let dp = DataPlane::from_ebpf(&mut ebpf).unwrap_or_else(|e| panic!("maps: {e}"));
        Self {
            ebpf,
            lb: Balancer::new(dp),
        }
    }

    /// Restarts the controller on the same maps, as a daemon restart does: the model is
    /// rebuilt by adopting what the maps hold for `desired`.
    pub fn restart(&mut self, desired: &[DesiredService]) -> AdoptReport {
        // `Balancer::adopt` takes the maps by value: park a tiny unpinned one meanwhile.
        let mut scratch = load_xlb(&LoadOptions {
            affinity_capacity: 16,
            maglev_slots: 16,
        })
        .unwrap_or_else(|e| panic!("scratch object: {e:#}"));
        let placeholder =
            Balancer::new(DataPlane::from_ebpf(&mut scratch).unwrap_or_else(|e| panic!("{e}")));
        let dp = std::mem::replace(&mut self.lb, placeholder).into_dataplane();
        let (lb, report) = Balancer::adopt(dp, desired).unwrap_or_else(|e| panic!("adopt: {e}"));
        self.lb = lb;
        report
    }

    pub fn prog(&self) -> &Xdp {
        self.ebpf
            .program(PROG_XLB)
            .expect("program xlb")
            .try_into()
            .expect("XDP")
    }

    /// Runs the program once on `input` as if received on `ingress_ifindex`.
    pub fn run(&self, input: &[u8], ingress_ifindex: u32) -> RunResult {
        run_once(self.prog(), input, ingress_ifindex)
    }
}

/// One BPF_PROG_TEST_RUN of `prog` on `input`.
pub fn run_once(prog: &Xdp, input: &[u8], ingress_ifindex: u32) -> RunResult {
    test_run(prog, input, ingress_ifindex, 1)
}

/// Runs `prog` `repeat` times on `input` in one call; returns ns per run as the kernel
/// measured it (the call's average). Later runs see the buffer the earlier ones rewrote.
pub fn run_repeat(prog: &Xdp, input: &[u8], ingress_ifindex: u32, repeat: u32) -> f64 {
    test_run(prog, input, ingress_ifindex, repeat).duration_ns as f64
}

fn test_run(prog: &Xdp, input: &[u8], ingress_ifindex: u32, repeat: u32) -> RunResult {
    try_test_run(prog, input, ingress_ifindex, repeat)
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN failed: {e:#?}"))
}

/// One BPF_PROG_TEST_RUN of `prog` on `input`, returning the kernel's refusal (e.g. a
/// frame shorter than an Ethernet header) instead of panicking.
pub fn try_run_once(
    prog: &Xdp,
    input: &[u8],
    ingress_ifindex: u32,
) -> Result<RunResult, aya::programs::ProgramError> {
    try_test_run(prog, input, ingress_ifindex, 1)
}

fn try_test_run(
    prog: &Xdp,
    input: &[u8],
    ingress_ifindex: u32,
    repeat: u32,
) -> Result<RunResult, aya::programs::ProgramError> {
    let mut out = vec![0u8; input.len() + 256];
    let ctx = xdp_md(input.len(), ingress_ifindex);
    let r = prog.test_run(TestRunOptions {
        data_in: Some(input),
        data_out: Some(&mut out),
        ctx_in: Some(&ctx),
        repeat,
        ..Default::default()
    })?;
    out.truncate(r.data_size_out as usize);
    Ok(RunResult {
        action: r.return_value,
        output: out,
        duration_ns: r.duration.as_nanos(),
    })
}

/// XDP verdicts (`enum xdp_action` of the kernel UAPI).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum XdpAction {
    Aborted = 0,
    Drop = 1,
    Pass = 2,
    Tx = 3,
    Redirect = 4,
}
