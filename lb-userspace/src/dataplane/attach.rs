//! Why an XDP attachment failed, in the operator's terms.
//!
//! `bpf_link_create` answers with an errno only (no extended ack), and the same errno can
//! have several causes, so after a failure the interface is looked at the way `ip -d link`
//! would (RTM_GETLINK: MTU, kind, XDP program attached) and the cause named with the ways
//! out: a missing interface, another XDP program already attached (which one, who holds
//! it, how to remove it), an MTU above what native XDP takes, a driver without native
//! XDP. This module only reads; it changes nothing.

use std::{fmt::Write as _, io};

use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage, LinkXdp, XdpAttached},
};
use rtnetlink::{
    packet_core::{NLM_F_REQUEST, NetlinkMessage, NetlinkPayload},
    sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE},
};

/// The largest MTU at which a veth takes a native XDP program without XDP-fragments
/// support (xlb's), with 4 KiB pages: `veth_xdp_set` refuses a *peer* MTU above
/// PAGE_SIZE − XDP headroom (256) − the aligned `skb_shared_info` (320) − the Ethernet
/// header (14). Measured on kernel 6.18 by the e2e start-up test (3506 attaches, 3507
/// does not).
pub const VETH_NATIVE_XDP_MAX_MTU: u32 = 3506;

/// What the kernel says about an interface, for diagnosing an attach failure.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interface {
    pub ifindex: u32,
    pub mtu: u32,
    /// The link kind (`veth`, `bridge`, …); `None` for hardware NICs.
    pub kind: Option<String>,
    /// An XDP program attached now: (program id, mode name).
    pub xdp: Option<(u32, &'static str)>,
}

/// Looks `ifname` up in the calling thread's network namespace (`None`: no such
/// interface).
pub fn interface(ifname: &str) -> io::Result<Option<Interface>> {
    let c = std::ffi::CString::new(ifname).map_err(io::Error::other)?;
    // SAFETY: a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if ifindex == 0 {
        return Ok(None);
    }
    let msg = get_link(ifindex)?;
    let mut out = Interface {
        ifindex,
        ..Interface::default()
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::Mtu(m) => out.mtu = *m,
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        out.kind = Some(match k {
                            InfoKind::Veth => "veth".to_string(),
                            other => other.to_string(),
                        });
                    }
                }
            }
            LinkAttribute::Xdp(xdp) => out.xdp = attached_program(xdp),
            _ => {}
        }
    }
    Ok(Some(out))
}

fn attached_program(xdp: &[LinkXdp]) -> Option<(u32, &'static str)> {
    let mut mode = None;
    let mut id = None;
    for a in xdp {
        match a {
            LinkXdp::Attached(XdpAttached::None) => return None,
            LinkXdp::Attached(m) => {
                mode = Some(match m {
                    XdpAttached::Driver => "native",
                    XdpAttached::SocketBuffer => "generic",
                    XdpAttached::Hardware => "offloaded",
                    _ => "several modes",
                })
            }
            LinkXdp::ProgId(p) | LinkXdp::DrvProgId(p) | LinkXdp::SkbProgId(p) if *p != 0 => {
                id = id.or(Some(*p))
            }
            _ => {}
        }
    }
    Some((id?, mode.unwrap_or("unknown mode")))
}

/// One RTM_GETLINK for `ifindex`, synchronously (start-up runs before any event loop
/// needs netlink).
fn get_link(ifindex: u32) -> io::Result<LinkMessage> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut query = LinkMessage::default();
    query.header.index = ifindex;
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetLink(query));
    req.header.flags = NLM_F_REQUEST;
    req.finalize();
    let mut buf = vec![0u8; req.buffer_len()];
    req.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let (reply, _) = socket.recv_from_full()?;
    let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply)
        .map_err(|e| io::Error::other(format!("decoding the kernel's link message: {e}")))?;
    match reply.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => Ok(m),
        NetlinkPayload::Error(e) => Err(e.to_io()),
        other => Err(io::Error::other(format!(
            "unexpected netlink answer {other:?}"
        ))),
    }
}

/// The errno at the bottom of an error chain, if any.
pub fn errno(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<io::Error>()
            && let Some(n) = io.raw_os_error()
        {
            return Some(n);
        }
        if let Some(s) = c.downcast_ref::<aya::sys::SyscallError>() {
            return s.io_error.raw_os_error();
        }
        cur = c.source();
    }
    None
}

/// The cause of a failed attachment of xlb to `ifname` (`generic`: skb mode), with what to
/// do, from the kernel's `errno` and the interface as it is now. Empty when nothing more
/// is known than the kernel's answer.
pub fn diagnose(ifname: &str, generic: bool, errno: Option<i32>) -> String {
    let iface = match interface(ifname) {
        Ok(Some(i)) => i,
        Ok(None) => {
            return format!(
                "interface {ifname} does not exist (in this network namespace); \
                 check daemon.interfaces"
            );
        }
        Err(e) => return format!("(inspecting {ifname} failed: {e})"),
    };
    if let Some((id, mode)) = iface.xdp {
        return another_program(ifname, id, mode);
    }
    match errno {
        Some(libc::ENODEV) => format!("interface {ifname} disappeared while xlb attached to it"),
        Some(libc::EBUSY | libc::EEXIST) => format!(
            "another XDP program holds {ifname} (the kernel reports it busy); \
             `ip -d link show dev {ifname}` and `bpftool net show dev {ifname}` show it"
        ),
        Some(libc::ERANGE) if !generic => mtu_too_large(ifname, &iface),
        Some(libc::EOPNOTSUPP) if !generic => format!(
            "the driver of {ifname}{} has no native XDP support: set daemon.xdp_mode = \
             \"generic\" in the config (slower, works on every interface)",
            kind_suffix(&iface)
        ),
        Some(libc::EINVAL) if !generic && iface.mtu > VETH_NATIVE_XDP_MAX_MTU => format!(
            "{}; or the driver of {ifname} has no native XDP support",
            mtu_too_large(ifname, &iface)
        ),
        Some(libc::EINVAL | libc::ENOTSUP) if !generic => format!(
            "if the driver of {ifname}{} has no native XDP support, set daemon.xdp_mode = \
             \"generic\" in the config",
            kind_suffix(&iface)
        ),
        _ => String::new(),
    }
}

fn kind_suffix(iface: &Interface) -> String {
    iface
        .kind
        .as_deref()
        .map(|k| format!(" ({k})"))
        .unwrap_or_default()
}

fn mtu_too_large(ifname: &str, iface: &Interface) -> String {
    let limit = if iface.kind.as_deref() == Some("veth") {
        format!(
            "veth takes native XDP up to an MTU of {VETH_NATIVE_XDP_MAX_MTU} (checked on its \
             peer: one 4 KiB page per frame; xlb's program does not take multi-buffer frames)"
        )
    } else {
        "native XDP takes frames of one page (about 3.5 KiB) on most drivers; xlb's \
         program does not take multi-buffer frames"
            .to_string()
    };
    format!(
        "the MTU of {ifname} ({}) is too large for native XDP: {limit}. Either lower the \
         MTU (`ip link set dev {ifname} mtu 1500`{}) or set daemon.xdp_mode = \"generic\" \
         in the config (no MTU limit, slower)",
        iface.mtu,
        if iface.kind.as_deref() == Some("veth") {
            ", and the same on its peer"
        } else {
            ""
        }
    )
}

/// Who holds an XDP program that is in the way, and how to remove it.
fn another_program(ifname: &str, id: u32, mode: &str) -> String {
    let name = aya::programs::loaded_programs()
        .filter_map(|p| p.ok())
        .find(|p| p.id() == id)
        .and_then(|p| p.name_as_str().map(str::to_string))
        .unwrap_or_default();
    let mut out = format!(
        "another XDP program is already attached to {ifname}: program {id}{} ({mode} mode); \
         xlb does not replace a program it did not attach. ",
        if name.is_empty() {
            String::new()
        } else {
            format!(" \"{name}\"")
        }
    );
    let link = aya::programs::loaded_links()
        .filter_map(|l| l.ok())
        .find(|l| l.program_id() == id);
    match link {
        Some(link) => {
            let holders = link_holders(link.id());
            let _ = write!(out, "It is held by bpf_link {}", link.id());
            if holders.is_empty() {
                let _ = write!(
                    out,
                    ", pinned in bpffs: remove that pin (`bpftool link show id {}`; if it is \
                     another xlb deployment, `xlb down --pin-dir DIR`)",
                    link.id()
                );
            } else {
                let _ = write!(
                    out,
                    " of {}: stop that process (or `xlb down` its deployment)",
                    holders.join(", ")
                );
            }
        }
        None => {
            let _ = write!(
                out,
                "Remove it with `ip link set dev {ifname} xdp off` (it was attached through \
                 netlink), then start xlb again"
            );
        }
    }
    out
}

/// Processes holding an fd of bpf_link `link_id` ("pid N (comm)"), from /proc/*/fdinfo.
fn link_holders(link_id: u32) -> Vec<String> {
    let needle = format!("link_id:\t{link_id}\n");
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for p in procs.filter_map(|e| e.ok()) {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fdinfo")) else {
            continue;
        };
        let holds = fds
            .filter_map(|e| e.ok())
            .any(|fd| std::fs::read_to_string(fd.path()).is_ok_and(|info| info.contains(&needle)));
        if holds {
            let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
            out.push(format!("pid {pid} ({})", comm.trim()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_interface_is_named() {
        let msg = diagnose("xlbnosuch0", false, Some(libc::ENODEV));
        assert!(msg.contains("xlbnosuch0 does not exist"), "{msg}");
    }

    #[test]
    fn loopback_is_found_with_its_mtu() {
        let lo = interface("lo").expect("netlink").expect("lo exists");
        assert!(lo.ifindex > 0 && lo.mtu > 0, "{lo:?}");
    }

    #[test]
    fn errno_is_found_through_the_chain() {
        let e = aya::sys::SyscallError {
            call: "bpf_link_create",
            io_error: io::Error::from_raw_os_error(libc::ERANGE),
        };
        assert_eq!(errno(&e), Some(libc::ERANGE));
    }
}
