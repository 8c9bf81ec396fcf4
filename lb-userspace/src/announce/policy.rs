//! When a VIP is announced: the policy, as a pure function of what the node knows.
//!
//! A VIP is announced while the program is attached, the node is not drained, and at
//! least one service on the VIP can serve — has a usable backend (healthy, its neighbour
//! known: what the data plane forwards to, draining or not: a draining backend still
//! serves its pinned clients). A service without one counts as not serving whatever its
//! `no_backend` says: passing its packets to the local stack is not serving them. A VIP
//! shared by several services is withdrawn only when none of them can serve.
//!
//! Owns: the rule and the reason given for each outcome. Must not touch: how an outcome is
//! told to the network (bird.rs, command.rs), where the facts come from (the daemon).

use std::{collections::BTreeMap, fmt, net::IpAddr};

use serde::{Deserialize, Serialize};

/// What the policy needs to know about one service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceFacts {
    pub name: String,
    pub vip: IpAddr,
    /// Backends the data plane can forward to now.
    pub usable: usize,
    pub backends: usize,
}

/// What the policy needs to know about the node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// The XDP program is attached on every configured interface.
    pub attached: bool,
    /// `xlb node drain`.
    pub drained: bool,
    pub services: Vec<ServiceFacts>,
}

/// Why a VIP is announced or not (in the order the policy checks them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Announced: these services can serve.
    Serving { services: Vec<String> },
    /// Withdrawn: the node is drained.
    Drained,
    /// Withdrawn: the program is not attached.
    NotAttached,
    /// Withdrawn: no service on the VIP has a usable backend (each service with its
    /// usable and total backends).
    NoUsableBackend {
        services: Vec<(String, usize, usize)>,
    },
}

impl Reason {
    /// The reason's name in the API (`serving`, `drained`, `not_attached`,
    /// `no_usable_backend`).
    pub fn code(&self) -> &'static str {
        match self {
            Reason::Serving { .. } => "serving",
            Reason::Drained => "drained",
            Reason::NotAttached => "not_attached",
            Reason::NoUsableBackend { .. } => "no_usable_backend",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Serving { services } => write!(f, "served by {}", services.join(", ")),
            Reason::Drained => f.write_str("node drained"),
            Reason::NotAttached => f.write_str("the XDP program is not attached"),
            Reason::NoUsableBackend { services } => {
                let each: Vec<String> = services
                    .iter()
                    .map(|(n, u, t)| format!("{n} {u}/{t}"))
                    .collect();
                write!(f, "no service has a healthy backend ({})", each.join(", "))
            }
        }
    }
}

/// The policy's outcome for one VIP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub vip: IpAddr,
    pub announce: bool,
    pub reason: Reason,
}

/// One decision per VIP of the node's services, in address order.
pub fn decide(node: &NodeFacts) -> Vec<Decision> {
    let mut by_vip: BTreeMap<IpAddr, Vec<&ServiceFacts>> = BTreeMap::new();
    for s in &node.services {
        by_vip.entry(s.vip).or_default().push(s);
    }
    by_vip
        .into_iter()
        .map(|(vip, services)| {
            let reason = if node.drained {
                Reason::Drained
            } else if !node.attached {
                Reason::NotAttached
            } else {
                serving(&services)
            };
            Decision {
                vip,
                announce: matches!(reason, Reason::Serving { .. }),
                reason,
            }
        })
        .collect()
}

fn serving(services: &[&ServiceFacts]) -> Reason {
    let names: Vec<String> = services
        .iter()
        .filter(|s| s.usable > 0)
        .map(|s| s.name.clone())
        .collect();
    if names.is_empty() {
        Reason::NoUsableBackend {
            services: services
                .iter()
                .map(|s| (s.name.clone(), s.usable, s.backends))
                .collect(),
        }
    } else {
        Reason::Serving { services: names }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, vip: &str, usable: usize, backends: usize) -> ServiceFacts {
        ServiceFacts {
            name: name.into(),
            vip: vip.parse().unwrap(),
            usable,
            backends,
        }
    }

    fn node(services: Vec<ServiceFacts>) -> NodeFacts {
        NodeFacts {
            attached: true,
            drained: false,
            services,
        }
    }

    #[test]
    fn a_vip_is_announced_while_one_of_its_services_can_serve() {
        let d = decide(&node(vec![
            svc("web", "192.0.2.1", 0, 3),
            svc("dns", "192.0.2.1", 1, 3),
            svc("solo", "192.0.2.2", 0, 1),
            svc("v6", "2001:db8::1", 2, 2),
        ]));
        let got: Vec<(String, bool)> = d.iter().map(|d| (d.vip.to_string(), d.announce)).collect();
        assert_eq!(
            got,
            vec![
                ("192.0.2.1".into(), true),
                ("192.0.2.2".into(), false),
                ("2001:db8::1".into(), true)
            ]
        );
        assert_eq!(
            d[0].reason,
            Reason::Serving {
                services: vec!["dns".into()]
            }
        );
        assert_eq!(
            d[1].reason.to_string(),
            "no service has a healthy backend (solo 0/1)"
        );
    }

    #[test]
    fn a_service_without_backends_does_not_serve() {
        let d = decide(&node(vec![svc("empty", "192.0.2.1", 0, 0)]));
        assert!(!d[0].announce);
    }

    #[test]
    fn drained_or_detached_withdraws_everything() {
        let mut n = node(vec![svc("web", "192.0.2.1", 3, 3)]);
        assert!(decide(&n)[0].announce);
        n.drained = true;
        assert_eq!(decide(&n)[0].reason, Reason::Drained);
        n.drained = false;
        n.attached = false;
        assert_eq!(decide(&n)[0].reason, Reason::NotAttached);
        assert!(!decide(&n)[0].announce);
    }
}
