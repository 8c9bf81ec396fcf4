//! Packet-access helpers shared by the XDP programs of this crate.
#![no_std]

use aya_ebpf::programs::XdpContext;

/// EtherTypes as they sit in the frame, read as a native `u16` (network order bytes).
pub const ETH_P_IP: u16 = 0x0800u16.to_be();
pub const ETH_P_IPV6: u16 = 0x86DDu16.to_be();
pub const ETH_P_8021Q: u16 = 0x8100u16.to_be();
pub const ETH_P_8021AD: u16 = 0x88A8u16.to_be();

/// Pointer to a `T` at `offset` bytes into the frame, or `None` when the frame is too
/// short. This check is what the verifier proves every access against.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// A native `u32` from `base + offset`, where the caller has bounds-checked it.
///
/// Packet fields are only 2-byte aligned (the Ethernet header is 14 bytes). The x86_64
/// and arm64 JITs load unaligned words natively and the verifier allows it without
/// BPF_F_STRICT_ALIGNMENT, so one load replaces four byte loads and shifts.
///
/// # Safety
/// `base + offset .. base + offset + 4` must be readable (bounds-checked packet data or
/// a map value).
#[inline(always)]
pub unsafe fn load_u32(base: *const u8, offset: usize) -> u32 {
    // SAFETY: the caller guarantees the range; see above on alignment.
    unsafe { (base.add(offset) as *const u32).read() }
}

/// Stores a native `u32` at `base + offset`, which the caller has bounds-checked (see
/// [`load_u32`] on alignment).
///
/// # Safety
/// `base + offset .. base + offset + 4` must be writable, bounds-checked packet data.
#[inline(always)]
pub unsafe fn store_u32(base: *mut u8, offset: usize, value: u32) {
    // SAFETY: the caller guarantees the range.
    unsafe { (base.add(offset) as *mut u32).write(value) }
}
