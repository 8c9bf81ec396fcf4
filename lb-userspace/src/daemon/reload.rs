//! `xlb reload` and SIGHUP: re-read the config file, replay the runtime edits on top,
//! reconcile. Only the clients the difference implies move (reconcile writes only what
//! differs). A config with errors is refused whole — nothing changes, the error goes
//! back to `xlb reload` (exit 2) or to the log (SIGHUP).
//!
//! Daemon settings, key by key:
//! - applied: `interfaces` (attach to new ones, detach from removed ones), `metrics`
//!   (the server moves to the new address, or stops), `socket_group` (the socket's group
//!   and mode, and the peer check), `icmp_echo` (the VIP markers rewritten);
//! - refused with "restart needed": `socket`, `affinity_capacity` (a restart migrates
//!   the table), `state_file`;
//! - refused for good: `pin_dir` (it names the deployment: another one is another
//!   daemon), `xdp_mode` (the pinned links keep their mode, also across a restart:
//!   `xlb down` and start again).
//!
//! Order: the config is parsed and judged, a changed metrics address bound, the new
//! backends get their first look (look.rs); then new interfaces are attached, the intent
//! reconciled (a failure undoes the attachments: nothing changed), removed interfaces
//! detached, the metrics server moved, the socket group changed, the state file saved.
//!
//! Owns: judging a new config against the running one and applying it. Must not touch:
//! the reconcile rules, sockets other than through server.rs.

use std::{collections::BTreeSet, path::Path};

use log::{info, warn};

use super::{
    command::{Pending, Reload, Reply},
    look,
    owner::{Owner, answer, control_error, runtime, usage},
    server::{self, Access},
};
use crate::{
    api::Response,
    config::{self, Config, DaemonConfig},
    model::{Desired, Service},
};

/// The daemon settings that changed but cannot change while the daemon runs, each as
/// `daemon.KEY: why` (empty: every change can be applied).
pub fn refused(old: &DaemonConfig, new: &DaemonConfig) -> Vec<String> {
    let restart = "cannot change while the daemon runs (restart needed)";
    let mut out = Vec::new();
    let mut check = |changed: bool, key: &str, why: &str| {
        if changed {
            out.push(format!("daemon.{key}: {why}"));
        }
    };
    check(
        config::normalize(&old.pin_dir) != config::normalize(&new.pin_dir),
        "pin_dir",
        "names the deployment: another pin_dir is another daemon (start one for it)",
    );
    check(
        old.xdp_mode != new.xdp_mode,
        "xdp_mode",
        "the pinned links keep their mode (also across a restart): `xlb down` and start again",
    );
    check(old.socket != new.socket, "socket", restart);
    check(
        old.affinity_capacity != new.affinity_capacity,
        "affinity_capacity",
        "cannot change while the daemon runs (restart needed: the start migrates the table)",
    );
    check(old.state_file != new.state_file, "state_file", restart);
    out
}

/// The new config's services with `edits` (the runtime changes) replayed on top.
pub fn replay(new: &Config, edits: &[crate::model::Edit]) -> (Desired, Vec<String>) {
    Desired::replay(&new.services, edits)
}

/// One line saying what a reload changes in the intent.
pub fn summary(before: &Desired, after: &Desired) -> String {
    let names = |d: &Desired| {
        d.services()
            .map(|s| s.name.clone())
            .collect::<BTreeSet<_>>()
    };
    let (old, new) = (names(before), names(after));
    let added = new.difference(&old).count();
    let removed = old.difference(&new).count();
    let changed = new
        .intersection(&old)
        .filter(|n| before.service(n) != after.service(n))
        .count();
    let backends = |d: &Desired| -> BTreeSet<(String, std::net::IpAddr)> {
        d.services()
            .flat_map(|s: &Service| s.backends.iter().map(|b| (s.name.clone(), b.address)))
            .collect()
    };
    let (ob, nb) = (backends(before), backends(after));
    format!(
        "services: {added} added, {removed} removed, {changed} changed; backends: {} added, {} removed",
        nb.difference(&ob).count(),
        ob.difference(&nb).count()
    )
}

/// Reads and judges the config at `path` against the running one.
fn prepare(path: &Path, running: &Config, desired: &Desired) -> Result<Reload, String> {
    let cfg = config::load(path).map_err(|e| e.to_string())?;
    let refusals = refused(&running.daemon, &cfg.daemon);
    if !refusals.is_empty() {
        return Err(refusals.join("\n"));
    }
    let edits = desired.diff(&running.services);
    let (desired, _) = replay(&cfg, &edits);
    Ok(Reload {
        cfg,
        desired,
        metrics: None,
    })
}

impl Owner {
    /// Starts a reload: the config is read and judged now; the new backends get their
    /// first look; [`Owner::apply_reload`] finishes when it is done.
    pub(super) fn reload(&mut self, reply: Reply) {
        let path = self.st.cfg.path.clone();
        let mut reload = match prepare(&path, &self.st.cfg, &self.st.ctl.desired) {
            Ok(r) => r,
            Err(e) => {
                warn!(
                    "reload of {} refused, nothing changed:\n{e}",
                    path.display()
                );
                return answer(
                    reply,
                    usage(format!("reload refused, nothing changed:\n{e}")),
                );
            }
        };
        if reload.cfg.daemon.metrics != self.st.cfg.daemon.metrics {
            match server::bind_metrics(reload.cfg.daemon.metrics) {
                Ok(l) => reload.metrics = Some(l),
                Err(e) => {
                    warn!(
                        "reload of {} refused, nothing changed: {e:#}",
                        path.display()
                    );
                    return answer(
                        reply,
                        runtime(format!("reload refused, nothing changed: {e:#}")),
                    );
                }
            }
        }
        let added = look::added_between(&self.st.ctl.desired, &reload.desired);
        let then = Pending::Reload {
            reload: Box::new(reload),
            reply,
        };
        let tx = self.io.observations.clone();
        look::spawn(self.io.resolver.clone(), added, then, tx);
    }

    /// Applies a judged reload whose new backends had their first look.
    pub(super) fn apply_reload(&mut self, r: Reload) -> Response {
        let old = self.st.cfg.daemon.clone();
        let before = self.st.ctl.desired.clone();
        let attached = match self.attach_new(&old, &r.cfg.daemon) {
            Ok(a) => a,
            Err(e) => return runtime(format!("reload refused, nothing changed: {e:#}")),
        };
        // The edits as they are now (one may have come in during the first look).
        let edits = before.diff(&self.st.cfg.services);
        let (desired, warnings) = replay(&r.cfg, &edits);
        let applied = match self.st.ctl.set_desired(desired) {
            Ok(a) => a,
            Err(e) => {
                self.undo_attach(&attached);
                warn!("reload refused, nothing changed: {e}");
                return control_error(e);
            }
        };
        self.applied(&applied);
        self.detach_removed(&old, &r.cfg.daemon);
        if let Some(listener) = r.metrics {
            self.io.metrics.start(listener);
        }
        self.regroup(&old, &r.cfg.daemon);
        self.echo(&old, &r.cfg.daemon);
        let what = summary(&before, &self.st.ctl.desired);
        self.st.cfg = r.cfg;
        if let Err(e) = self.persist() {
            // The file still holds the edits against the old config; replayed on the new
            // one at the next start they give what runs now.
            warn!("reload: saving the state file failed: {e:#}");
        }
        self.after_change();
        self.report(&what, &warnings)
    }

    fn report(&self, what: &str, warnings: &[String]) -> Response {
        let path = self.st.cfg.path.display();
        info!("reloaded {path}: {what}");
        for w in warnings {
            warn!("reload: {w}");
        }
        let mut done = format!("reloaded {path}: {what}");
        for w in warnings {
            done.push_str(&format!("\nskipped a runtime change: {w}"));
        }
        Response::ok(serde_json::json!({ "done": done, "warnings": warnings }))
    }

    /// Attaches to the interfaces `new` adds; on a failure detaches those attached here.
    fn attach_new(
        &mut self,
        old: &DaemonConfig,
        new: &DaemonConfig,
    ) -> anyhow::Result<Vec<String>> {
        let mut done = Vec::new();
        for name in new
            .interfaces
            .iter()
            .filter(|n| !old.interfaces.contains(n))
        {
            let st = &mut self.st;
            if let Err(e) = st
                .ifaces
                .attach(name, &mut st.ebpf, &mut st.ctl.dp, st.program_id)
            {
                self.undo_attach(&done);
                return Err(e);
            }
            done.push(name.clone());
        }
        Ok(done)
    }

    fn undo_attach(&mut self, names: &[String]) {
        for name in names {
            if let Err(e) = self.st.ifaces.remove(name) {
                warn!("undoing the attachment to {name}: {e:#}");
            }
        }
    }

    fn detach_removed(&mut self, old: &DaemonConfig, new: &DaemonConfig) {
        for name in old
            .interfaces
            .iter()
            .filter(|n| !new.interfaces.contains(n))
        {
            if let Err(e) = self.st.ifaces.remove(name) {
                warn!("detaching from {name}: {e:#}");
            }
        }
        let names = std::sync::Arc::new(self.st.ifaces.names());
        self.io.names.send_replace(names);
    }

    /// A changed `icmp_echo`: the VIP markers say the new answer.
    fn echo(&mut self, old: &DaemonConfig, new: &DaemonConfig) {
        if old.icmp_echo == new.icmp_echo {
            return;
        }
        let reply = new.icmp_echo == config::IcmpEcho::Reply;
        if let Err(e) = self.st.ctl.dp.set_icmp_echo(reply) {
            warn!(
                "reload: setting icmp_echo = {:?}: {e}",
                crate::model::Named::name(new.icmp_echo)
            );
        }
    }

    /// A changed `socket_group`: the socket's group and mode, then the peer check.
    fn regroup(&mut self, old: &DaemonConfig, new: &DaemonConfig) {
        if old.socket_group == new.socket_group {
            return;
        }
        let access = Access::of(new);
        if let Err(e) = server::set_mode(&new.socket, &access) {
            warn!("reload: {e:#}");
        }
        info!("control socket: {}", access.describe());
        self.io.access.send_replace(access);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::{SocketGroup, XdpMode},
        model::{Backend, Edit, Protocol},
    };

    fn daemon() -> DaemonConfig {
        DaemonConfig::new(vec!["lo".into()])
    }

    #[test]
    fn live_keys_apply_the_others_are_refused_by_name() {
        let old = daemon();
        let mut live = daemon();
        live.interfaces.push("eth1".into());
        live.metrics = None;
        live.socket_group = Some(SocketGroup {
            name: "adm".into(),
            gid: Some(4),
        });
        assert_eq!(refused(&old, &live), Vec::<String>::new());
        let mut dead = daemon();
        dead.pin_dir = "/sys/fs/bpf/other".into();
        dead.xdp_mode = XdpMode::Generic;
        dead.socket = "/run/other.sock".into();
        dead.affinity_capacity = 1024;
        dead.state_file = "/tmp/s.json".into();
        let keys: Vec<String> = refused(&old, &dead)
            .iter()
            .map(|r| r.split(':').next().unwrap().to_string())
            .collect();
        assert_eq!(
            keys,
            [
                "daemon.pin_dir",
                "daemon.xdp_mode",
                "daemon.socket",
                "daemon.affinity_capacity",
                "daemon.state_file"
            ]
        );
        // Another spelling of the same pin_dir is no change.
        let mut same = daemon();
        same.pin_dir = format!("{}/./", old.pin_dir.display()).into();
        assert!(refused(&old, &same).is_empty());
    }

    fn web(backends: &[&str]) -> Service {
        let mut s = Service::new("web", "203.0.113.10".parse().unwrap(), 80, Protocol::Tcp);
        s.backends = backends
            .iter()
            .map(|a| Backend::new(a.parse().unwrap()))
            .collect();
        s
    }

    /// The runtime edits stay on top of the new config: a runtime-added backend is kept,
    /// one the config now has anyway is not doubled, and the summary counts the rest.
    #[test]
    fn runtime_edits_are_replayed_on_the_new_config() {
        let old = vec![web(&["192.0.2.1", "192.0.2.2"])];
        let mut running = Desired::from_services(&old);
        let add = Edit::BackendAdd {
            service: "web".into(),
            address: "192.0.2.9".parse().unwrap(),
            weight: 3,
        };
        running.apply(&add).unwrap();
        running.apply(&Edit::NodeDrain).unwrap();
        let edits = running.diff(&old);
        let mut cfg = Config {
            path: "/x.toml".into(),
            daemon: daemon(),
            announce: crate::model::Announce::None,
            services: vec![web(&["192.0.2.1", "192.0.2.3"])],
        };
        let (next, warnings) = replay(&cfg, &edits);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(
            next.node_drained(),
            "a drained node stays drained across a reload"
        );
        let s = next.service("web").unwrap();
        let addrs: Vec<String> = s.backends.iter().map(|b| b.address.to_string()).collect();
        assert_eq!(addrs, ["192.0.2.1", "192.0.2.3", "192.0.2.9"]);
        assert_eq!(s.backend("192.0.2.9".parse().unwrap()).unwrap().weight, 3);
        assert_eq!(
            summary(&running, &next),
            "services: 0 added, 0 removed, 1 changed; backends: 1 added, 1 removed"
        );
        cfg.services.clear();
        let (next, warnings) = replay(&cfg, &edits);
        assert!(next.is_empty() && warnings.len() == 1, "{warnings:?}");
    }
}
