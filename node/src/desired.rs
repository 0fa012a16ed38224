//! What this node's dataplane should hold: the rule table with health verdicts applied.
//!
//! Pure: a backend the mesh judges down keeps its entry at weight 0, so established flows
//! drain instead of being reset, and it gets its configured weight back when it recovers.

use crate::health::Verdicts;
use crate::table::RuleTable;
use shoal_dataplane::filter::SourceFilter;
use shoal_dataplane::model::{Destination, Service, ServiceKey};
use shoal_dataplane::Desired;

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

pub fn desired_state(table: &RuleTable, verdicts: &Verdicts) -> Desired {
    let services = table
        .services
        .iter()
        .map(|vs| {
            let mut destinations: Vec<Destination> = vs
                .backends
                .iter()
                .map(|b| Destination {
                    addr: b.address,
                    port: b.port,
                    forwarding: vs.forwarding,
                    weight: if verdicts.is_down(&vs.name, b.address, b.port) {
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
                key: ServiceKey::Addr {
                    addr: vs.vip,
                    port: vs.port,
                    protocol: vs.protocol,
                },
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
    }
}
