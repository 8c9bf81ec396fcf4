//! Attached interfaces: the owner's picture of each configured interface
//! ([`Interfaces`]) and the task that keeps it in step with the kernel (issue 10,
//! fault 6): it follows link events (RTNLGRP_LINK) and looks every 10 s as a backstop.
//!
//! An attached interface that is deleted is shown detached, with why, and its backends
//! are re-resolved (the owner wakes the neighbour task). Re-created with the same name
//! (a new index), it gets a new attachment — the severed pinned link is replaced, the
//! maps and every pin are kept — and its backends are re-resolved; their MACs are kept
//! meanwhile (tasks/neigh.rs), so no pinned client moves.
//!
//! Owns: attach and detach at run time, the attachment state shown by status and
//! metrics. Must not touch: map contents, the controller.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use aya::Ebpf;
use futures::StreamExt as _;
use log::{info, warn};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::{MulticastGroup, packet_core::NetlinkPayload};
use tokio::sync::{mpsc::UnboundedSender, watch};

use super::Task;
use crate::{
    api::InterfaceStatus,
    daemon::command::Observation,
    dataplane::{maps::DataPlane, pin},
};

/// How often every configured interface is looked up even without events (lost
/// events: a netlink socket overrun).
const SWEEP: Duration = Duration::from_secs(10);

/// One configured interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attachment {
    Attached {
        ifindex: u32,
    },
    /// Not attached: `ifindex` is the interface's index when it exists (an attach to it
    /// failed: not retried until the index changes).
    Detached {
        ifindex: Option<u32>,
        why: String,
    },
}

/// The configured interfaces and how each is attached.
#[derive(Debug)]
pub struct Interfaces {
    pin_dir: PathBuf,
    generic: bool,
    list: BTreeMap<String, Attachment>,
}

/// The index of interface `name` now, if it exists.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

impl Interfaces {
    pub fn new(pin_dir: PathBuf, generic: bool) -> Self {
        Self {
            pin_dir,
            generic,
            list: BTreeMap::new(),
        }
    }

    /// Counts `name` as attached at its current index: at start-up, where the first look
    /// judges backends before the attachment, which comes last (if it fails, the start
    /// fails).
    pub fn expect(&mut self, name: &str) {
        if let Some(ifindex) = ifindex(name) {
            self.set(name, Attachment::Attached { ifindex });
        }
    }

    fn mode(&self) -> &'static str {
        if self.generic { "generic" } else { "native" }
    }

    /// Attaches xlb to `name` (a new link, or the program replaced through its pinned
    /// link, or a severed link replaced) and makes it a redirect target.
    pub fn attach(
        &mut self,
        name: &str,
        ebpf: &mut Ebpf,
        dp: &mut DataPlane,
        program_id: u32,
    ) -> anyhow::Result<()> {
        let Some(index) = ifindex(name) else {
            let why = "the interface does not exist".to_string();
            self.set(name, Attachment::Detached { ifindex: None, why });
            anyhow::bail!("interface {name} does not exist");
        };
        let attached = dp
            .add_tx_port(index)
            .map_err(anyhow::Error::from)
            .and_then(|()| Ok(pin::attach(ebpf, &self.pin_dir, name, self.generic)?));
        match attached {
            Ok(how) => {
                self.log_attached(name, index, program_id, &how);
                self.set(name, Attachment::Attached { ifindex: index });
                Ok(())
            }
            Err(e) => {
                let why = format!("attaching failed: {e:#}");
                self.set(
                    name,
                    Attachment::Detached {
                        ifindex: Some(index),
                        why,
                    },
                );
                Err(e)
            }
        }
    }

    fn log_attached(&self, name: &str, index: u32, program_id: u32, how: &pin::Attached) {
        let mode = self.mode();
        match how {
            pin::Attached::New => {
                info!("attached xlb (program {program_id}) to {name} (index {index}), {mode} XDP")
            }
            pin::Attached::Replaced => info!(
                "replaced the program on {name} atomically through its pinned link (program {program_id})"
            ),
            pin::Attached::Reattached => info!(
                "attached xlb (program {program_id}) to the re-created {name} (index {index}), \
                 {mode} XDP; maps and pins kept"
            ),
        }
    }

    fn set(&mut self, name: &str, a: Attachment) {
        self.list.insert(name.to_string(), a);
    }

    /// Detaches from `name` and forgets it (no longer configured).
    pub fn remove(&mut self, name: &str) -> anyhow::Result<()> {
        self.list.remove(name);
        if pin::pinned_links(&self.pin_dir).iter().any(|l| l == name) {
            pin::detach(&self.pin_dir, name)?;
        }
        info!("detached xlb from {name}: no longer in daemon.interfaces");
        Ok(())
    }

    /// The kernel deleted interface `index`: an attached interface with that index is
    /// detached now. Returns its name.
    pub fn gone(&mut self, index: u32) -> Option<String> {
        let name = self
            .list
            .iter()
            .find(|(_, a)| **a == Attachment::Attached { ifindex: index })
            .map(|(n, _)| n.clone())?;
        warn!("interface {name} (index {index}) was deleted: xlb is detached from it");
        let why = "the interface was deleted".to_string();
        self.set(&name, Attachment::Detached { ifindex: None, why });
        Some(name)
    }

    /// Follows what the kernel says about configured interface `name` (`now`: its index,
    /// `None`: it does not exist): detached when gone, attached anew when re-created.
    /// Returns whether its attachment changed (its backends need resolving again).
    pub fn follow(
        &mut self,
        name: &str,
        now: Option<u32>,
        ebpf: &mut Ebpf,
        dp: &mut DataPlane,
        program_id: u32,
    ) -> bool {
        let Some(current) = self.list.get(name).cloned() else {
            return false;
        };
        match (current, now) {
            (Attachment::Attached { ifindex }, Some(i)) if i == ifindex => false,
            (Attachment::Attached { ifindex }, None) => self.gone(ifindex).is_some(),
            (
                Attachment::Detached {
                    ifindex: Some(f), ..
                },
                Some(i),
            ) if i == f => false,
            (Attachment::Detached { .. }, None) => false,
            (_, Some(i)) => {
                info!("interface {name} exists (index {i}): attaching xlb to it");
                if let Err(e) = self.attach(name, ebpf, dp, program_id) {
                    warn!("{e:#}");
                }
                true
            }
        }
    }

    pub fn is_configured(&self, name: &str) -> bool {
        self.list.contains_key(name)
    }

    /// The index of `name` while xlb is attached to it.
    pub fn attached_index(&self, name: &str) -> Option<u32> {
        match self.list.get(name) {
            Some(Attachment::Attached { ifindex }) => Some(*ifindex),
            _ => None,
        }
    }

    /// The configured names, in name order.
    pub fn names(&self) -> Vec<String> {
        self.list.keys().cloned().collect()
    }

    /// Name of the attached interface with index `ifindex`.
    pub fn name_of(&self, ifindex: u32) -> Option<&str> {
        self.list
            .iter()
            .find(|(_, a)| **a == Attachment::Attached { ifindex })
            .map(|(n, _)| n.as_str())
    }

    /// Every configured interface as status shows it.
    pub fn statuses(&self) -> Vec<InterfaceStatus> {
        self.list
            .iter()
            .map(|(name, a)| match a {
                Attachment::Attached { ifindex } => InterfaceStatus {
                    name: name.clone(),
                    ifindex: Some(*ifindex),
                    attached: true,
                    note: None,
                },
                Attachment::Detached { ifindex, why } => InterfaceStatus {
                    name: name.clone(),
                    ifindex: *ifindex,
                    attached: false,
                    note: Some(why.clone()),
                },
            })
            .collect()
    }
}

/// The configured interface names, published by the owner (a reload may change them).
pub type Names = watch::Receiver<Arc<Vec<String>>>;

/// Follows link events; after each (and every [`SWEEP`], and when the names change)
/// tells the owner the current index of every configured interface. A deletion is
/// reported first as [`Observation::InterfaceGone`], so a re-creation that reuses the
/// index is still seen as one.
pub fn spawn(mut names: Names, tx: UnboundedSender<Observation>) -> Task {
    Task::spawn(async move {
        loop {
            let events = subscribe();
            if let Err(e) = &events {
                warn!(
                    "following link changes: {e}; looking every {}s",
                    SWEEP.as_secs()
                );
            }
            let mut events = events.ok();
            loop {
                sweep(&names, &tx);
                tokio::select! {
                    ev = next_event(&mut events) => match ev {
                        Some(Some(gone)) => {
                            let _ = tx.send(Observation::InterfaceGone { ifindex: gone });
                        }
                        Some(None) => {}
                        None => break,
                    },
                    _ = tokio::time::sleep(SWEEP) => {}
                    r = names.changed() => if r.is_err() { return },
                }
            }
            warn!("the link event stream ended; subscribing again");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

fn sweep(names: &Names, tx: &UnboundedSender<Observation>) {
    let list = names.borrow().clone();
    for name in list.iter() {
        let _ = tx.send(Observation::Interface {
            name: name.clone(),
            ifindex: ifindex(name),
        });
    }
}

type LinkMessages = futures::channel::mpsc::UnboundedReceiver<(
    rtnetlink::packet_core::NetlinkMessage<RouteNetlinkMessage>,
    rtnetlink::sys::SocketAddr,
)>;

/// The link event stream, with the connection task that feeds it.
struct Events {
    messages: LinkMessages,
    _connection: Task,
}

fn subscribe() -> std::io::Result<Events> {
    let (connection, _handle, messages) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Link])?;
    Ok(Events {
        messages,
        _connection: Task::spawn(connection),
    })
}

/// The next link event: `Some(Some(index))` a deletion, `Some(None)` any other change,
/// `None` the stream ended. Without a stream, never ready.
async fn next_event(events: &mut Option<Events>) -> Option<Option<u32>> {
    let Some(ev) = events else {
        return std::future::pending().await;
    };
    let (msg, _) = ev.messages.next().await?;
    Some(match msg.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)) => Some(m.header.index),
        _ => None,
    })
}
