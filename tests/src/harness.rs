//! The real xlb object, loaded into the kernel (not attached), driven through
//! BPF_PROG_TEST_RUN, with its maps filled by the controller's own map API: a
//! [`Controller`] (edits → reconcile → apply), exactly as the daemon fills them.

use std::net::IpAddr;

use aya::{
    Ebpf,
    programs::{SchedClassifier, TestRun as _, TestRunOptions, Xdp},
};
use lb_common::{
    FAMILY_V4, FAMILY_V6, PROG_XLB, addr_from_bytes, prefix_mask,
    tunnel::{Egress, PROG_PROBE, TunnelSource},
};
use xlb::{
    dataplane::loader::{LoadOptions, XLB_OBJECT, load_object_sampling},
    dataplane::maps::DataPlane,
    model::{Backend, Desired, Edit, Health, Link, Service},
    reconcile::{
        control::{ControlError, Controller},
        inspect::Explanation,
    },
};

pub struct XlbHarness {
    pub ebpf: Ebpf,
    /// The daemon's controller on these maps.
    pub ctl: Controller,
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
        Self::load_object(opts, XLB_OBJECT)
    }

    /// [`XlbHarness::load`] with source sampling compiled in or out (benchmarks).
    pub fn load_sampling(opts: &LoadOptions, sampling: bool) -> Self {
        Self::load_object_sampling(opts, XLB_OBJECT, sampling)
    }

    /// [`Self::load`] of another build of the balancer (`XLB_NOLOG_OBJECT`).
    pub fn load_object(opts: &LoadOptions, object: &[u8]) -> Self {
        Self::load_object_sampling(opts, object, true)
    }

    fn load_object_sampling(opts: &LoadOptions, object: &[u8], sampling: bool) -> Self {
        let mut ebpf = load_object_sampling(opts, object, sampling)
            .unwrap_or_else(|e| panic!("loading the xlb object: {e:#}"));
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
        let ctl = Controller::new(dp).unwrap_or_else(|e| panic!("adopting fresh maps: {e}"));
        Self { ebpf, ctl }
    }

    /// Restarts the controller on the same maps, as a daemon restart does: the maps are
    /// adopted (ids, generations, tables; the durable generation counter), observations
    /// start empty, and `desired` is reconciled with every backend seen up over `links`.
    pub fn restart(&mut self, desired: Desired, links: &[(IpAddr, Option<Link>)]) {
        self.ctl.restart().unwrap_or_else(|e| panic!("adopt: {e}"));
        for s in desired.services() {
            for b in &s.backends {
                let link = links
                    .iter()
                    .find(|(a, _)| *a == b.address)
                    .and_then(|(_, l)| *l);
                self.observe(&s.name, b.address, link);
            }
        }
        self.ctl
            .set_desired(desired)
            .unwrap_or_else(|e| panic!("reconcile after restart: {e}"));
    }

    pub fn dp(&self) -> &DataPlane {
        &self.ctl.dp
    }

    pub fn dp_mut(&mut self) -> &mut DataPlane {
        &mut self.ctl.dp
    }

    /// The daemon's view of one backend: reached over `link` (None: unresolved) and seen
    /// healthy by a first passed check, as the daemon's first look records it.
    fn observe(&mut self, service: &str, address: IpAddr, link: Option<Link>) {
        self.ctl.observed.links.insert(address, link);
        self.ctl
            .observed
            .health
            .insert((service.to_string(), address), Health::Up);
    }

    /// Adds `svc` with these backends (weight 1 unless `svc` lists them already).
    pub fn add_service(
        &mut self,
        mut svc: Service,
        backends: &[(IpAddr, Option<Link>)],
    ) -> Result<(), ControlError> {
        for (a, link) in backends {
            self.observe(&svc.name, *a, *link);
            if svc.backend(*a).is_none() {
                svc.backends.push(Backend::new(*a));
            }
        }
        self.edit(Edit::ServiceAdd {
            service: Box::new(svc),
        })
    }

    pub fn add_backend(
        &mut self,
        service: &str,
        address: IpAddr,
        weight: u32,
        link: Option<Link>,
    ) -> Result<(), ControlError> {
        self.observe(service, address, link);
        self.edit(Edit::BackendAdd {
            service: service.into(),
            address,
            weight,
        })
    }

    pub fn remove_backend(&mut self, service: &str, address: IpAddr) -> Result<(), ControlError> {
        self.edit(Edit::BackendRemove {
            service: service.into(),
            address,
        })
    }

    pub fn set_draining(
        &mut self,
        service: &str,
        address: IpAddr,
        on: bool,
    ) -> Result<(), ControlError> {
        let (service, address) = (service.to_string(), address);
        self.edit(if on {
            Edit::BackendDrain { service, address }
        } else {
            Edit::BackendUndrain { service, address }
        })
    }

    /// A health check's verdict, as the daemon records it.
    pub fn set_healthy(
        &mut self,
        service: &str,
        address: IpAddr,
        up: bool,
    ) -> Result<(), ControlError> {
        let h = if up { Health::Up } else { Health::Down };
        self.ctl
            .observe(|o| {
                o.health.insert((service.to_string(), address), h);
            })
            .map(drop)
    }

    pub fn edit(&mut self, edit: Edit) -> Result<(), ControlError> {
        self.ctl.edit(&edit).map(drop)
    }

    pub fn explain(
        &self,
        service: &str,
        client: IpAddr,
        port: u16,
    ) -> Result<Explanation, ControlError> {
        self.ctl.explain(service, client, port)
    }

    /// The id of a programmed service (index of its counters).
    pub fn service_id(&self, name: &str) -> u32 {
        self.ctl.service(name).unwrap_or_else(|e| panic!("{e}")).id
    }

    pub fn prog(&self) -> &Xdp {
        self.ebpf
            .program(PROG_XLB)
            .expect("program xlb")
            .try_into()
            .expect("XDP")
    }

    /// The daemon's reading of egress interface `ifindex` (MTU, addresses), which a
    /// tunnel service's backends behind it need to be usable; `None`: not read yet.
    pub fn observe_egress(&mut self, ifindex: u32, egress: Option<Egress>) {
        self.ctl
            .observe(|o| {
                match egress {
                    Some(e) => o.egress.insert(ifindex, e),
                    None => o.egress.remove(&ifindex),
                };
            })
            .unwrap_or_else(|e| panic!("egress observation: {e}"));
    }

    /// Service `name` again with `tunnel_source = source` (a runtime change is a remove
    /// and an add, as `xlb service remove` + `add` do): its backends keep their links.
    pub fn set_tunnel_source(&mut self, name: &str, source: Option<&str>) {
        let mut spec = self
            .ctl
            .desired
            .service(name)
            .unwrap_or_else(|| panic!("no service {name}"))
            .clone();
        spec.tunnel_source = source.map(|p| p.parse().expect("tunnel_source prefix"));
        self.edit(Edit::ServiceRemove { name: name.into() })
            .expect("service remove");
        for b in &spec.backends {
            self.ctl
                .observed
                .health
                .insert((name.to_string(), b.address), Health::Up);
        }
        self.edit(Edit::ServiceAdd {
            service: Box::new(spec),
        })
        .unwrap_or_else(|e| panic!("service add with tunnel_source: {e}"));
    }

    /// `XLB_EGRESS[ifindex] := egress`, or removes the entry (`None`), behind the
    /// controller's back: what the data plane meets when an interface changed before the
    /// daemon noticed.
    pub fn set_egress(&mut self, ifindex: u32, egress: Option<Egress>) {
        self.dp_mut()
            .set_egress(ifindex, egress.as_ref())
            .unwrap_or_else(|e| panic!("XLB_EGRESS: {e}"));
    }

    /// Runs the health-probe TC program (`xlb_probe`, loaded on first use) once on
    /// `frame` with `skb->mark = mark`, as a probe leaving through `lo`.
    pub fn run_probe(&mut self, frame: &[u8], mark: u32) -> RunResult {
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(PROG_PROBE)
            .expect("program xlb_probe in the object")
            .try_into()
            .expect("xlb_probe is a TC program");
        if prog.fd().is_err() {
            prog.load()
                .unwrap_or_else(|e| panic!("verifier rejected xlb_probe: {e:#?}"));
        }
        // struct __sk_buff (192 bytes): only `mark` (offset 8) set.
        let mut skb = [0u8; 192];
        skb[8..12].copy_from_slice(&mark.to_ne_bytes());
        let mut out = vec![0u8; frame.len() + 256];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&skb),
                repeat: 1,
                ..Default::default()
            })
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of xlb_probe failed: {e:#?}"));
        out.truncate(r.data_size_out as usize);
        RunResult {
            action: r.return_value,
            output: out,
            duration_ns: r.duration.as_nanos(),
        }
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

/// The `TunnelSource` of `tunnel_source = "NET/LEN"`, as the controller writes it.
pub fn tunnel_source(net: IpAddr, len: u8) -> TunnelSource {
    let (family, bytes, width) = match net {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            (FAMILY_V4, b, 32)
        }
        IpAddr::V6(a) => (FAMILY_V6, a.octets(), 128),
    };
    let m = prefix_mask(len, family);
    let full = prefix_mask(width, family);
    let base = addr_from_bytes(&bytes);
    TunnelSource {
        base: std::array::from_fn(|i| base[i] & m[i]),
        host_mask: std::array::from_fn(|i| !m[i] & full[i]),
        family,
        prefix_len: len,
        _pad: [0; 2],
    }
}
