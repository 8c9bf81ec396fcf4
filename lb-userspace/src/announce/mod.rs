//! Announcing this node's VIPs to the network through an existing BGP daemon, tied to
//! whether the node can serve them (the policy, policy.rs).
//!
//! [`Announcer::sync`] makes the BGP daemon announce what the policy decided, and is
//! called on every change and periodically: it is level-triggered, so a BIRD restarted
//! with its VIPs disabled, or a protocol someone disabled by hand, is put right within a
//! period.
//! - `bird`: each VIP has a static protocol in BIRD's config named by
//!   `model::announce::bird_protocol` (`xlb_203_0_113_10`), written `disabled` so that a
//!   BIRD started without xlb announces nothing. A sync reads the state of every `xlb_*`
//!   protocol (`show protocols "xlb_*"`), enables the ones of announced VIPs and disables
//!   every other `xlb_*` protocol (VIPs withdrawn, or no longer configured). A missing
//!   protocol is reported with the config block to add.
//! - `command`: the `announce` or `withdraw` command runs when a VIP's outcome changes
//!   (and for every VIP at the first sync); a failed command is retried at the next sync.
//!
//! Nothing is withdrawn when the daemon stops or dies: the data plane keeps forwarding on
//! its pinned state, so the announcement stays with it (a dead node is withdrawn by BGP
//! and BFD); `xlb down` withdraws before it removes the data plane.
//!
//! Owns: talking to the announcer and the per-VIP outcome it reports. Must not touch: the
//! facts the policy is fed (the daemon's) or the data plane.

pub mod bird;
pub mod command;
pub mod policy;

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use serde::{Deserialize, Serialize};

pub use policy::{Decision, NodeFacts, Reason, ServiceFacts, decide};

use crate::model::{
    Announce, AnnounceKind,
    announce::{bird_protocol, bird_protocol_config, substitute},
};

/// The outcome of the last sync for one VIP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipAnnouncement {
    pub vip: IpAddr,
    /// What the policy wants.
    pub want: bool,
    /// Whether the announcer announces it now, as far as xlb knows (`None`: unknown —
    /// BIRD unreachable, or nothing announces: kind none).
    pub announced: Option<bool>,
    /// Why the policy wants what it wants.
    pub reason: Reason,
    /// Why the announcer does not do what the policy wants.
    pub error: Option<String>,
}

/// Prefix of every BIRD protocol xlb manages.
const BIRD_PREFIX: &str = "xlb_";

/// Tells the announcer what the policy decided.
pub enum Announcer {
    None,
    Bird(bird::Bird),
    Command {
        announce: Vec<String>,
        withdraw: Vec<String>,
        timeout: Duration,
        /// What the last successful command said for each VIP.
        done: BTreeMap<IpAddr, bool>,
    },
}

impl Announcer {
    pub fn new(a: &Announce, timeout: Duration) -> Self {
        match a {
            Announce::None => Announcer::None,
            Announce::Bird { socket } => Announcer::Bird(bird::Bird::new(socket, timeout)),
            Announce::Command { announce, withdraw } => Announcer::Command {
                announce: announce.clone(),
                withdraw: withdraw.clone(),
                timeout,
                done: BTreeMap::new(),
            },
        }
    }

    pub fn kind(&self) -> AnnounceKind {
        match self {
            Announcer::None => AnnounceKind::None,
            Announcer::Bird(_) => AnnounceKind::Bird,
            Announcer::Command { .. } => AnnounceKind::Command,
        }
    }

    /// Makes the announcer announce exactly the VIPs `decisions` want; the outcome per
    /// VIP, in the order of `decisions`.
    pub async fn sync(&mut self, decisions: &[Decision]) -> Vec<VipAnnouncement> {
        match self {
            Announcer::None => decisions.iter().map(|d| outcome(d, None, None)).collect(),
            Announcer::Bird(b) => sync_bird(b, decisions).await,
            Announcer::Command {
                announce,
                withdraw,
                timeout,
                done,
            } => {
                let mut out = Vec::new();
                for d in decisions {
                    let r = run_if_changed(done, d.vip, d.announce, announce, withdraw, *timeout);
                    let error = r.await.err();
                    out.push(outcome(d, done.get(&d.vip).copied(), error));
                }
                // VIPs no longer configured: withdraw the ones announced.
                let gone: Vec<IpAddr> = done
                    .keys()
                    .filter(|v| !decisions.iter().any(|d| d.vip == **v))
                    .copied()
                    .collect();
                for vip in gone {
                    if run_if_changed(done, vip, false, announce, withdraw, *timeout)
                        .await
                        .is_ok()
                    {
                        done.remove(&vip);
                    }
                }
                out
            }
        }
    }

    /// Withdraws `vips` whatever the policy says (`xlb down`, before the data plane
    /// goes); the errors, one per VIP that could not be withdrawn.
    pub async fn withdraw_all(&mut self, vips: &[IpAddr]) -> Vec<String> {
        let decisions: Vec<Decision> = vips
            .iter()
            .map(|v| Decision {
                vip: *v,
                announce: false,
                reason: Reason::NotAttached,
            })
            .collect();
        if let Announcer::Command { done, .. } = self {
            // Nothing is known of what earlier processes announced: withdraw each.
            for v in vips {
                done.insert(*v, true);
            }
        }
        self.sync(&decisions)
            .await
            .into_iter()
            .filter_map(|o| o.error.map(|e| format!("{}: {e}", o.vip)))
            .collect()
    }
}

fn outcome(d: &Decision, announced: Option<bool>, error: Option<String>) -> VipAnnouncement {
    VipAnnouncement {
        vip: d.vip,
        want: d.announce,
        announced,
        reason: d.reason.clone(),
        error,
    }
}

async fn sync_bird(b: &bird::Bird, decisions: &[Decision]) -> Vec<VipAnnouncement> {
    let states = match b.protocols(BIRD_PREFIX).await {
        Ok(s) => s,
        Err(e) => {
            let e = e.to_string();
            return decisions
                .iter()
                .map(|d| outcome(d, None, Some(e.clone())))
                .collect();
        }
    };
    let mut out = Vec::new();
    for d in decisions {
        let name = bird_protocol(d.vip);
        let o = match states.get(&name) {
            None => outcome(
                d,
                None,
                Some(format!(
                    "BIRD has no protocol {name}; add to its config: {}",
                    bird_protocol_config(d.vip)
                )),
            ),
            Some(up) if *up == d.announce => outcome(d, Some(*up), None),
            Some(up) => match b.set(&name, d.announce).await {
                Ok(()) => outcome(d, Some(d.announce), None),
                Err(e) => outcome(d, Some(*up), Some(e.to_string())),
            },
        };
        out.push(o);
    }
    // Protocols of VIPs no service uses any more.
    let ours: Vec<String> = decisions.iter().map(|d| bird_protocol(d.vip)).collect();
    for (name, _) in states.iter().filter(|(n, up)| **up && !ours.contains(n)) {
        if let Err(e) = b.set(name, false).await {
            log::warn!("withdrawing {name} (no service uses its VIP): {e}");
        }
    }
    out
}

/// Runs the announce or withdraw command for `vip` unless the last successful one
/// already said `up`.
async fn run_if_changed(
    done: &mut BTreeMap<IpAddr, bool>,
    vip: IpAddr,
    up: bool,
    announce: &[String],
    withdraw: &[String],
    timeout: Duration,
) -> Result<(), String> {
    if done.get(&vip) == Some(&up) {
        return Ok(());
    }
    let argv = substitute(if up { announce } else { withdraw }, vip);
    command::run(argv, timeout).await?;
    done.insert(vip, up);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(vip: &str, announce: bool) -> Decision {
        Decision {
            vip: vip.parse().unwrap(),
            announce,
            reason: if announce {
                Reason::Serving {
                    services: vec!["web".into()],
                }
            } else {
                Reason::Drained
            },
        }
    }

    /// The command announcer runs a command only when a VIP's outcome changes (every VIP
    /// at the first sync), retries a failed one, and withdraws a VIP no longer configured.
    #[tokio::test]
    async fn commands_run_on_changes_only() {
        let dir = std::env::temp_dir().join(format!("xlb-announce-cmd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log");
        let fail = dir.join("fail");
        let script = |verb: &str| {
            vec![
                "sh".to_string(),
                "-c".into(),
                format!(
                    "test -e {} && exit 1; echo {verb} $0 >> {}",
                    fail.display(),
                    log.display()
                ),
                "{prefix}".into(),
            ]
        };
        let mut a = Announcer::new(
            &Announce::Command {
                announce: script("announce"),
                withdraw: script("withdraw"),
            },
            Duration::from_secs(5),
        );
        let read = || std::fs::read_to_string(&log).unwrap_or_default();
        let out = a
            .sync(&[decision("192.0.2.1", true), decision("192.0.2.2", false)])
            .await;
        assert_eq!(read(), "announce 192.0.2.1/32\nwithdraw 192.0.2.2/32\n");
        assert_eq!(out[0].announced, Some(true));
        assert_eq!(out[1].announced, Some(false));
        // Nothing changed: nothing runs.
        a.sync(&[decision("192.0.2.1", true), decision("192.0.2.2", false)])
            .await;
        assert_eq!(read().lines().count(), 2);
        // A failing command is reported and retried.
        std::fs::write(&fail, "").unwrap();
        let out = a
            .sync(&[decision("192.0.2.1", false), decision("192.0.2.2", false)])
            .await;
        assert!(
            out[0]
                .error
                .as_deref()
                .is_some_and(|e| e.contains("failed")),
            "{out:?}"
        );
        assert_eq!(out[0].announced, Some(true), "still announced");
        std::fs::remove_file(&fail).unwrap();
        a.sync(&[decision("192.0.2.1", false), decision("192.0.2.2", false)])
            .await;
        assert!(read().ends_with("withdraw 192.0.2.1/32\n"), "{}", read());
        // 192.0.2.2 is announced, then its service goes: withdrawn.
        a.sync(&[decision("192.0.2.2", true)]).await;
        a.sync(&[]).await;
        assert!(
            read().ends_with("announce 192.0.2.2/32\nwithdraw 192.0.2.2/32\n"),
            "{}",
            read()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
