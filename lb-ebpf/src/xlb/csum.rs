//! Internet checksum arithmetic (RFC 1071, incremental updates per RFC 1624): updates on
//! 16-bit words in host order (the caller converts from and to the wire), and whole sums
//! of words loaded in native order ([`finish`]) for the headers `encap` and `toobig` write.
//!
//! Pure arithmetic: must not touch the packet or any map.

/// The checksum `csum` after one 16-bit word it covers changed from `old` to `new`:
/// HC' = ~(~HC + ~m + m') (RFC 1624, eqn. 3).
#[inline(always)]
pub fn replace16(csum: u16, old: u16, new: u16) -> u16 {
    let sum = (!csum as u32) + (!old as u32 & 0xffff) + new as u32;
    !fold(sum)
}

/// Adds the carries of a 32-bit one's-complement sum back into its low 16 bits.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The Internet checksum field of a one's-complement sum `sum` of 32-bit words loaded in
/// native order from wire bytes (RFC 1071 §2(B): the sum is byte-order independent, so
/// the result is stored back in native order as it is).
#[inline(always)]
pub fn finish(sum: u64) -> u16 {
    let s = (sum & 0xffff_ffff) + (sum >> 32);
    let s = (s & 0xffff_ffff) + (s >> 32);
    !fold(s as u32)
}
