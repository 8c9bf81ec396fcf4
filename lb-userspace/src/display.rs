//! Human-readable output of the CLI (the `--json` output is the API's result as is).

use std::fmt::Write as _;

use crate::api;

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn rate(pps: f64) -> String {
    if pps >= 1e6 {
        format!("{:.2}M", pps / 1e6)
    } else if pps >= 1e3 {
        format!("{:.1}k", pps / 1e3)
    } else {
        format!("{pps:.0}")
    }
}

fn bits(bps: f64) -> String {
    if bps >= 1e9 {
        format!("{:.2} Gb/s", bps / 1e9)
    } else if bps >= 1e6 {
        format!("{:.1} Mb/s", bps / 1e6)
    } else if bps >= 1e3 {
        format!("{:.1} kb/s", bps / 1e3)
    } else {
        format!("{bps:.0} b/s")
    }
}

/// The configured interfaces, each detached one with why.
fn interfaces(s: &api::Status) -> String {
    if s.attachments.is_empty() {
        return s.interfaces.join(", ");
    }
    let shown: Vec<String> = s
        .attachments
        .iter()
        .map(|a| match (&a.note, a.attached) {
            (_, true) => a.name.clone(),
            (Some(why), false) => format!("{} (DETACHED: {why})", a.name),
            (None, false) => format!("{} (DETACHED)", a.name),
        })
        .collect();
    shown.join(", ")
}

/// `xlb status`.
pub fn status(s: &api::Status) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "xlb {}  program {}  {} XDP on {}",
        s.version,
        s.program_id,
        s.attach_mode,
        interfaces(s)
    );
    for svc in &s.services {
        let port = if svc.port == 0 {
            "*".to_string()
        } else {
            svc.port.to_string()
        };
        let _ = writeln!(
            o,
            "\nservice {}  {}:{}/{}  {}  affinity {} /{}  idle {}  failback {}  M={}  health {}  pinned {}",
            svc.name,
            svc.vip,
            port,
            svc.protocol,
            match &svc.tunnel_source {
                Some(p) => format!("{} from {p}", svc.forwarding),
                None => svc.forwarding.clone(),
            },
            svc.affinity,
            svc.prefix,
            svc.idle_timeout,
            svc.failback,
            svc.table_size,
            svc.health,
            svc.pinned_clients
        );
        let _ = writeln!(
            o,
            "  {:<40} {:>6} {:<10} {:<9} {:>7} {:>8} {:>7} {:>7}  link",
            "backend", "weight", "health", "draining", "table", "pinned", "load", "fair"
        );
        if !svc.nat_sources.is_empty() {
            let _ = writeln!(o, "  nat_sources: {}", svc.nat_sources.join(", "));
        }
        for b in &svc.backends {
            let link = link_column(b);
            let _ = writeln!(
                o,
                "  {:<40} {:>6} {:<10} {:<9} {:>7} {:>8} {:>7} {:>7}  {}",
                b.address.to_string(),
                b.weight,
                b.health,
                if b.draining { "yes" } else { "no" },
                pct(b.table_share),
                b.pinned_clients,
                pct(b.load_share),
                pct(b.weight_share),
                if b.over_bound {
                    format!("{link}  OVER BOUND")
                } else {
                    link
                }
            );
        }
        if let Some(f) = svc.balance_factor {
            let _ = writeln!(
                o,
                "  balance_factor {f}: new clients avoid backends above {f} × their fair share"
            );
        }
        if let Some(i) = svc.load_imbalance {
            let _ = writeln!(
                o,
                "  load over the last {}s: imbalance {i:.2} (largest load share / its fair share)",
                svc.load_interval_s
            );
        }
        if let Some(h) = &svc.heavy_source {
            let _ = writeln!(o, "  WARNING: {}", h.note);
        }
    }
    if s.services.is_empty() {
        let _ = writeln!(o, "\nno services");
    }
    announce(&mut o, &s.announce);
    o
}

/// `xlb top`.
pub fn top(t: &api::Top) -> String {
    let mut o = String::new();
    for svc in &t.services {
        let _ = writeln!(
            o,
            "service {}: {} pkt/s, {} over the last {}s ({} samples, 1 in {})",
            svc.name,
            rate(svc.packets_per_s),
            bits(svc.bits_per_s),
            svc.interval_s,
            svc.samples,
            svc.sample_period
        );
        let _ = writeln!(
            o,
            "  {:<43} {:>9} {:>12} {:>7}  backend",
            t.by, "pkt/s", "bits/s", "share"
        );
        for s in &svc.sources {
            let backend = match (s.backend, s.backends) {
                (Some(b), 1) => b.to_string(),
                (Some(b), n) => format!("{b} (+{} more)", n - 1),
                (None, _) => "-".to_string(),
            };
            let _ = writeln!(
                o,
                "  {:<43} {:>9} {:>12} {:>7}  {}",
                s.source,
                rate(s.packets_per_s),
                bits(s.bits_per_s),
                pct(s.share),
                backend
            );
        }
        if svc.sources.is_empty() {
            let _ = writeln!(o, "  no packets");
        }
    }
    if t.services.is_empty() {
        let _ = writeln!(o, "no services");
    }
    o
}

/// The `[announce]` part of `xlb status`: one line per VIP, with why.
fn announce(o: &mut String, a: &api::AnnounceStatus) {
    let node = if a.node_drained {
        "node drained (`xlb node undrain` to announce again)"
    } else {
        "node in service"
    };
    if a.kind == "none" || a.kind.is_empty() {
        let _ = writeln!(
            o,
            "\nannounce: none (no [announce] table: xlb announces no VIP); {node}"
        );
        return;
    }
    let synced = a.synced_age_s.map_or_else(
        || "not synced yet".to_string(),
        |s| format!("synced {s:.1} s ago"),
    );
    let _ = writeln!(
        o,
        "\nannounce: {} {}; {node}; {synced}",
        a.kind,
        a.target.as_deref().unwrap_or("")
    );
    let _ = writeln!(o, "  {:<40} {:<10} why", "vip", "state");
    for v in &a.vips {
        let pending = match (v.state.as_str(), v.want) {
            ("announced", false) => " (withdrawing)",
            ("withdrawn", true) => " (announcing)",
            _ => "",
        };
        let _ = writeln!(
            o,
            "  {:<40} {:<10} {}{pending}",
            v.vip.to_string(),
            v.state,
            v.reason
        );
        if let Some(e) = &v.error {
            let _ = writeln!(o, "  {:<40} error: {e}", "");
        }
    }
}

/// `xlb stats`.
pub fn stats(s: &api::Stats) -> String {
    let mut o = String::new();
    for svc in &s.services {
        let _ = writeln!(
            o,
            "service {}: {} packets, {} bytes, {} pkt/s, {}; hits {}, misses {}, re-pins {}, expiries {}, no backend {}, ICMP errors {}",
            svc.name,
            svc.packets,
            svc.bytes,
            rate(svc.packets_per_s),
            bits(svc.bits_per_s),
            svc.hits,
            svc.misses,
            svc.repins,
            svc.expiries,
            svc.no_backend,
            svc.icmp_errors
        );
        let _ = writeln!(
            o,
            "  {:<40} {:>12} {:>14} {:>9} {:>12} {:>10}",
            "backend", "packets", "bytes", "pkt/s", "rate", "pins"
        );
        for b in &svc.backends {
            let _ = writeln!(
                o,
                "  {:<40} {:>12} {:>14} {:>9} {:>12} {:>10}",
                b.address.to_string(),
                b.packets,
                b.bytes,
                rate(b.packets_per_s),
                bits(b.bits_per_s),
                b.pins
            );
        }
    }
    let _ = writeln!(o, "\npackets by verdict and reason (all interfaces):");
    for (name, n) in &s.packets {
        let _ = writeln!(o, "  {name:<24} {n:>14}");
    }
    o
}

/// The link column of a backend: its next hop, and why it takes no traffic when it
/// takes none (not resolved, failing its checks, or resolved and healthy but unusable:
/// no outer source, a DSR backend behind a gateway).
fn link_column(b: &api::BackendStatus) -> String {
    match (&b.mac, &b.interface, &b.note) {
        (Some(mac), Some(i), Some(n)) => format!("{mac} via {i}: {n}"),
        (Some(mac), Some(i), None) => format!("{mac} via {i}"),
        (_, _, Some(n)) => format!("unresolved: {n}"),
        _ => "unresolved".to_string(),
    }
}

/// `xlb explain`.
pub fn explain(e: &api::Explain) -> String {
    let mut o = String::new();
    let backend = e
        .backend
        .map_or_else(|| "none".to_string(), |b| b.to_string());
    match e.decision.as_str() {
        "pinned" => {
            let _ = writeln!(
                o,
                "{} → {backend}: pinned (entry {} age {:.1}s, idle {:.1}s)",
                e.client,
                e.key,
                e.pinned_age_s.unwrap_or(0.0),
                e.idle_s.unwrap_or(0.0)
            );
        }
        "hashed" => {
            let why = match e.reason.as_deref() {
                Some("expired") => "its entry is idle longer than idle_timeout",
                Some("backend_unusable") => "its pinned backend is unhealthy or gone",
                _ => "no affinity entry",
            };
            let _ = writeln!(o, "{} → {backend}: hashed ({why})", e.client);
        }
        _ if e.unusable.is_empty() => {
            let _ = writeln!(
                o,
                "{} → no backend: the service has no healthy backend",
                e.client
            );
        }
        _ => {
            let _ = writeln!(
                o,
                "{} → no backend: the backends that pass their checks cannot take traffic",
                e.client
            );
            for u in &e.unusable {
                let _ = writeln!(o, "  {u}");
            }
        }
    }
    let _ = write!(
        o,
        "  key {}, Maglev slot {} holds {}",
        e.key,
        e.slot,
        e.slot_backend
            .map_or_else(|| "nothing".to_string(), |b| b.to_string())
    );
    if let Some(prev) = e.previous_slot_backend {
        let _ = write!(o, " (held {prev} before the last change)");
    }
    let _ = writeln!(o);
    if let Some(b) = e.over_bound_backend {
        let _ = writeln!(
            o,
            "  load bound: its Maglev backend {b} is over balance_factor × its fair share; \
             a new client goes to the next backend of its slots that is not"
        );
    }
    if let Some(p) = &e.nat_source {
        let _ = writeln!(
            o,
            "  nat_sources {p}: keyed on address and source port (each connection decided alone)"
        );
    }
    if e.forwarding == "tunnel" {
        match (e.backend, e.outer_source) {
            (Some(b), Some(src)) => {
                let _ = writeln!(o, "  tunnel: encapsulated {src} → {b}");
            }
            (Some(b), None) => {
                let _ = writeln!(
                    o,
                    "  tunnel: no outer source for {b} (its egress interface has no address of \
                     its family): dropped"
                );
            }
            _ => {}
        }
    }
    o
}

/// `xlb affinity list`.
pub fn affinity(l: &api::AffinityList) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<12} {:<44} {:>6} {:<40} {:>9} {:>9}",
        "service", "client", "port", "backend", "age", "idle"
    );
    for e in &l.entries {
        let backend = e
            .backend
            .map_or_else(|| "(gone)".to_string(), |b| b.to_string());
        let _ = writeln!(
            o,
            "{:<12} {:<44} {:>6} {:<40} {:>8.1}s {:>8.1}s{}",
            e.service,
            e.client,
            e.port,
            backend,
            e.age_s,
            e.idle_s,
            if e.expired { " expired" } else { "" }
        );
    }
    let _ = writeln!(o, "{} of {} entries", l.entries.len(), l.total);
    o
}

/// Any command that only says what it did.
pub fn done(result: &serde_json::Value) -> String {
    if let Some(d) = result.get("done").and_then(|d| d.as_str()) {
        format!("{d}\n")
    } else if let Some(n) = result.get("removed") {
        format!("removed {n} affinity entries\n")
    } else {
        format!("{result}\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finding 8 of the tunnel trial: the text status left out why a resolved backend
    /// takes no traffic (only the JSON had it).
    #[test]
    fn status_text_says_why_a_resolved_backend_is_not_usable() {
        let mut b = api::BackendStatus {
            address: "10.71.4.12".parse().unwrap(),
            weight: 1,
            health: "healthy".into(),
            healthy: true,
            draining: false,
            resolved: true,
            mac: Some("02:00:00:00:00:01".into()),
            interface: Some("lbr".into()),
            note: None,
            table_share: 0.0,
            pinned_clients: 0,
            health_transitions: 0,
            last_check_ms: None,
            load_share: 0.0,
            weight_share: 0.0,
            over_bound: false,
        };
        assert_eq!(link_column(&b), "02:00:00:00:00:01 via lbr");
        let why = "DSR needs the backend on a directly connected network (route via \
                   10.71.2.1 on lbr); use forwarding = \"tunnel\"";
        b.note = Some(why.into());
        assert_eq!(link_column(&b), format!("02:00:00:00:00:01 via lbr: {why}"));
    }

    /// `xlb explain` named "no healthy backend" when the backends were healthy but not
    /// usable; now it lists them with why.
    #[test]
    fn explain_says_why_healthy_backends_are_not_used() {
        let mut e = api::Explain {
            service: "web".into(),
            client: "10.72.0.1".parse().unwrap(),
            key: "10.72.0.1/32".into(),
            decision: "no_backend".into(),
            reason: None,
            backend: None,
            pinned_age_s: None,
            idle_s: None,
            slot: 7,
            slot_backend: None,
            previous_slot_backend: None,
            nat_source: None,
            over_bound_backend: None,
            forwarding: "tunnel".into(),
            outer_source: None,
            unusable: vec![],
        };
        assert!(explain(&e).contains("the service has no healthy backend"));
        e.unusable = vec![
            "10.71.3.11: its egress interface (lbr) has no global IPv4 address \
                           to be the outer source of the tunnel"
                .into(),
        ];
        let text = explain(&e);
        assert!(!text.contains("no healthy backend"), "{text}");
        assert!(
            text.contains("pass their checks cannot take traffic"),
            "{text}"
        );
        assert!(
            text.contains("10.71.3.11: its egress interface (lbr)"),
            "{text}"
        );
    }
}
