//! Test support for xlb's root-only tiers: packet builders, the XDP harness and
//! environment guards. Test functions panic with a message rather than return Result.

pub mod bench;
pub mod fixtures;
pub mod fuzz;
pub mod harness;
pub mod lab;
pub mod lab_ecmp;
pub mod lab_tunnel;
pub mod packet;
pub mod soak;

use std::process::Command;

/// Panics loudly unless running as root: these tiers must never be skipped silently.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "this test needs root (BPF_PROG_TEST_RUN, network namespaces): run `sudo cargo xtask test`"
        );
    }
}

/// Moves the calling thread into a new, empty network namespace. It disappears when the
/// thread exits (libtest runs each test on its own thread), so nothing is left behind even
/// when the test panics. Child processes started from this thread (`ip`, servers) inherit it.
pub fn enter_private_netns() {
    // SAFETY: unshare only affects the calling thread's namespaces.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        panic!(
            "unshare(CLONE_NEWNET) failed: {}",
            std::io::Error::last_os_error()
        );
    }
    sh("ip link set lo up");
}

/// Runs a shell command, panicking with its output if it fails.
pub fn sh(cmd: &str) -> String {
    lab::run(Command::new("sh").arg("-c").arg(cmd))
}

/// Interface index of `name` in the calling thread's network namespace.
pub fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).expect("interface name");
    // SAFETY: a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert!(i != 0, "interface {name} not found");
    i
}
