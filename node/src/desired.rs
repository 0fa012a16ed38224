//! What this node's dataplane should hold: the rule table with health verdicts applied.
//!
//! Pure: a backend the mesh judges down keeps its entry at weight 0, so established flows
//! drain instead of being reset, and it gets its configured weight back when it recovers.
//! Except in a UDP service: there a flow never ends by itself (each datagram refreshes its
//! IPVS entry, so a client that keeps its source port stays on a backend at weight 0 for as
//! long as it sends), so a down backend is left out, and the reconciler deletes a UDP
//! destination the table leaves out without a drain ([`cut_protocols`]), whether judged down
//! or removed from the rules, as kube-proxy does: its clients are scheduled afresh at their
//! next datagram.

use crate::health::Verdicts;
use crate::table::{RuleTable, VirtualService};
use shoal_dataplane::filter::SourceFilter;
use shoal_dataplane::model::{Destination, Protocol, Service, ServiceKey};
use shoal_dataplane::Desired;
use std::collections::BTreeSet;

/// The source ranges of every restricted VIP/port of the table.
pub fn source_filters(table: &RuleTable) -> Vec<SourceFilter> {
    table
        .services
        .iter()
        .filter(|vs| !vs.source_ranges.is_empty())
        .map(|vs| SourceFilter {
            vip: vs.vip,
            protocol: vs.protocol,
            port: vs.port,
            ranges: vs.source_ranges.clone(),
        })
        .collect()
}

/// The protocols whose destinations the reconciler deletes without a drain when the desired
/// table leaves them out (`Reconciler::set_cut_protocols`): UDP, whose flows never end by
/// themselves.
pub fn cut_protocols() -> BTreeSet<Protocol> {
    CUT_PROTOCOLS.into()
}

const CUT_PROTOCOLS: [Protocol; 1] = [Protocol::Udp];

/// Whether a down backend of `vs` is cut (left out, so deleted at once) rather than kept at
/// weight 0.
fn cuts_down_backends(vs: &VirtualService) -> bool {
    CUT_PROTOCOLS.contains(&vs.protocol)
}

/// The dataplane's key of a table service.
pub(crate) fn key_of(vs: &VirtualService) -> ServiceKey {
    ServiceKey::Addr {
        addr: vs.vip,
        port: vs.port,
        protocol: vs.protocol,
    }
}

pub fn desired_state(table: &RuleTable, verdicts: &Verdicts) -> Desired {
    let services = table
        .services
        .iter()
        .map(|vs| {
            let cut = cuts_down_backends(vs);
            let mut destinations: Vec<Destination> = vs
                .backends
                .iter()
                .filter(|b| !(cut && verdicts.is_down_in(vs, b.address, b.port)))
                .map(|b| Destination {
                    addr: b.address,
                    port: b.port,
                    forwarding: vs.forwarding,
                    weight: if verdicts.is_down_in(vs, b.address, b.port) {
                        0
                    } else {
                        b.weight
                    },
                    upper_threshold: 0,
                    lower_threshold: 0,
                })
                .collect();
            destinations.sort_by_key(|d| (d.addr, d.port));
            Service {
                key: key_of(vs),
                scheduler: vs.scheduler.clone(),
                flags: vs.flags,
                persistence_timeout_s: 0,
                destinations,
            }
        })
        .collect();
    Desired { services }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::BackendRef;
    use crate::table::{Backend, VirtualService};
    use shoal_dataplane::model::{Forwarding, Protocol, SchedFlags, Tunnel};

    fn table() -> RuleTable {
        RuleTable {
            services: vec![VirtualService {
                name: "web".into(),
                vip: "203.0.113.10".parse().unwrap(),
                port: 80,
                protocol: Protocol::Tcp,
                scheduler: "mh".into(),
                flags: SchedFlags {
                    port: true,
                    fallback: false,
                },
                forwarding: Forwarding::Tunnel(Tunnel::Ipip),
                backends: vec![
                    Backend {
                        address: "198.18.1.11".parse().unwrap(),
                        port: 80,
                        weight: 3,
                    },
                    Backend {
                        address: "198.18.1.10".parse().unwrap(),
                        port: 80,
                        weight: 2,
                    },
                ],
                health: None,
                source_ranges: vec![],
            }],
        }
    }

    #[test]
    fn a_down_backend_keeps_its_entry_at_weight_zero() {
        let down = Verdicts::from_down([BackendRef {
            service: "web".into(),
            address: "198.18.1.11".parse().unwrap(),
            port: 80,
        }]);
        let d = desired_state(&table(), &down);
        let dests = &d.services[0].destinations;
        assert_eq!(dests.len(), 2);
        assert_eq!(dests[0].addr.to_string(), "198.18.1.10");
        assert_eq!(dests[0].weight, 2);
        assert_eq!(dests[1].weight, 0);
        let up = desired_state(&table(), &Verdicts::default());
        assert_eq!(up.services[0].destinations[1].weight, 3);
        assert_eq!(
            up.services[0].key,
            ServiceKey::Addr {
                addr: "203.0.113.10".parse().unwrap(),
                port: 80,
                protocol: Protocol::Tcp
            }
        );
        assert!(!cut_protocols().contains(&Protocol::Tcp), "tcp drains");
    }

    /// A UDP backend judged down is left out and cut at once: at weight 0 a client that keeps
    /// its source port stayed on it for the whole outage (an audit: 153 of 154 datagrams lost).
    #[test]
    fn a_down_udp_backend_is_left_out_and_cut() {
        let mut t = table();
        t.services[0].protocol = Protocol::Udp;
        let down = Verdicts::from_down([BackendRef {
            service: "web".into(),
            address: "198.18.1.11".parse().unwrap(),
            port: 80,
        }]);
        let d = desired_state(&t, &down);
        let dests = &d.services[0].destinations;
        assert_eq!(dests.len(), 1);
        assert_eq!(
            (dests[0].addr.to_string(), dests[0].weight),
            ("198.18.1.10".into(), 2)
        );
        assert!(cut_protocols().contains(&Protocol::Udp), "deleted at once");
        // Up again: back at its weight.
        let up = desired_state(&t, &Verdicts::default());
        assert_eq!(up.services[0].destinations.len(), 2);
    }
}
