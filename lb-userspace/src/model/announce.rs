//! How a node announces its VIPs to the network (the `[announce]` table): through an
//! existing BGP daemon — xlb does not speak BGP. A VIP is announced while this node can
//! serve it and withdrawn otherwise; the rules are in `crate::announce`.
//!
//! Owns: the announcer's description ([`Announce`], [`AnnounceKind`] and its name table),
//! the BIRD protocol name of a VIP, and command-line substitution. Must not touch: sockets,
//! processes, the policy.

use std::{net::IpAddr, path::PathBuf};

use crate::named_enum;

named_enum! {
    /// Who tells the network about this node's VIPs.
    pub enum AnnounceKind {
        /// Nobody (routes are static, or managed elsewhere).
        None = "none",
        /// BIRD 2: one static protocol per VIP, enabled or disabled through its control
        /// socket.
        Bird = "bird",
        /// A command per change (`announce` / `withdraw`), e.g. an ExaBGP or GoBGP client.
        Command = "command",
    }
}

/// The announcer, with the settings of its kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Announce {
    #[default]
    None,
    Bird {
        /// BIRD's control socket (`bird -s`, Debian's default `/run/bird/bird.ctl`).
        socket: PathBuf,
    },
    Command {
        /// Program and arguments run to announce one VIP; `{vip}` and `{prefix}` are
        /// replaced by the VIP (`203.0.113.10`) and its host prefix (`203.0.113.10/32`).
        announce: Vec<String>,
        /// Likewise, to withdraw one VIP.
        withdraw: Vec<String>,
    },
}

impl Announce {
    pub fn kind(&self) -> AnnounceKind {
        match self {
            Announce::None => AnnounceKind::None,
            Announce::Bird { .. } => AnnounceKind::Bird,
            Announce::Command { .. } => AnnounceKind::Command,
        }
    }
}

/// The placeholders a command line may carry.
pub const PLACEHOLDERS: [&str; 2] = ["{vip}", "{prefix}"];

/// The BIRD static protocol that announces `vip`: `xlb_` and the address with every
/// character but letters and digits as `_` (`xlb_203_0_113_10`, `xlb_2001_db8__10`). It
/// depends on the address alone, so the BIRD config can be written from the xlb config.
pub fn bird_protocol(vip: IpAddr) -> String {
    let text: String = vip
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("xlb_{text}")
}

/// The BIRD config block for `vip`: a static protocol, disabled until xlb enables it
/// (so a BIRD that starts without xlb announces nothing).
pub fn bird_protocol_config(vip: IpAddr) -> String {
    let (channel, len) = if vip.is_ipv4() {
        ("ipv4", 32)
    } else {
        ("ipv6", 128)
    };
    format!(
        "protocol static {} {{ disabled; {channel}; route {vip}/{len} blackhole; }}",
        bird_protocol(vip)
    )
}

/// `argv` with the placeholders replaced for `vip`.
pub fn substitute(argv: &[String], vip: IpAddr) -> Vec<String> {
    let len = if vip.is_ipv4() { 32 } else { 128 };
    argv.iter()
        .map(|a| {
            a.replace("{vip}", &vip.to_string())
                .replace("{prefix}", &format!("{vip}/{len}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_names_depend_on_the_address_alone() {
        assert_eq!(
            bird_protocol("203.0.113.10".parse().unwrap()),
            "xlb_203_0_113_10"
        );
        assert_eq!(
            bird_protocol("2001:db8::10".parse().unwrap()),
            "xlb_2001_db8__10"
        );
        assert_eq!(
            bird_protocol_config("2001:db8::10".parse().unwrap()),
            "protocol static xlb_2001_db8__10 { disabled; ipv6; route 2001:db8::10/128 blackhole; }"
        );
    }

    #[test]
    fn placeholders_are_replaced() {
        let argv = vec![
            "exabgpcli".into(),
            "announce route {prefix} next-hop self".into(),
            "{vip}".into(),
        ];
        assert_eq!(
            substitute(&argv, "192.0.2.1".parse().unwrap()),
            vec![
                "exabgpcli",
                "announce route 192.0.2.1/32 next-hop self",
                "192.0.2.1"
            ]
        );
    }
}
