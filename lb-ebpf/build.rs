use which::which;

/// Rebuild the eBPF object when bpf-linker changes (e.g. after `cargo xtask setup`).
fn main() {
    let bpf_linker = which("bpf-linker").expect(
        "bpf-linker not found in PATH: run `cargo xtask setup` (it builds bpf-linker against rustc's LLVM)",
    );
    println!("cargo:rerun-if-changed={}", bpf_linker.to_str().unwrap());
}
