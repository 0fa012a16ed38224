//! Services + EndpointSlices -> rule table, desired statuses and a list of problems.
//!
//! Pure: the same objects give the same table on any replica that happens to be publisher.
//! A Service is ours when `spec.type` is `LoadBalancer` and `spec.loadBalancerClass` equals
//! the configured class. Each of its ports becomes one virtual service named
//! `namespace/name:port-name` (the port number when unnamed). Backends are the ready,
//! serving, non-terminating endpoints of the Service's EndpointSlices whose port has the
//! same name and protocol; the slice already carries the resolved number of a named
//! `targetPort`. Anything wrong with one object becomes a [`Problem`] and only that object
//! (or that port) is left out: the rest of the table is still published.

use super::annotations::{self, ServiceSettings};
use super::vip::{self, Claim};
use crate::table::{Backend, RuleTable, VirtualService};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use shoal_dataplane::model::{Forwarding, Protocol};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// The label the EndpointSlice controller puts on every slice it manages.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Which object a problem is about, enough to build an Event's `regarding` reference.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId {
    pub kind: &'static str,
    pub api_version: &'static str,
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
}

impl ObjectId {
    pub fn service(svc: &Service) -> Self {
        ObjectId {
            kind: "Service",
            api_version: "v1",
            namespace: svc.metadata.namespace.clone().unwrap_or_default(),
            name: svc.metadata.name.clone().unwrap_or_default(),
            uid: svc.metadata.uid.clone(),
        }
    }
    pub fn slice(slice: &EndpointSlice) -> Self {
        ObjectId {
            kind: "EndpointSlice",
            api_version: "discovery.k8s.io/v1",
            namespace: slice.metadata.namespace.clone().unwrap_or_default(),
            name: slice.metadata.name.clone().unwrap_or_default(),
            uid: slice.metadata.uid.clone(),
        }
    }
}

/// Something wrong with one object; the shell turns each into an Event and a log line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Problem {
    pub object: ObjectId,
    /// PascalCase, as Kubernetes Event reasons are.
    pub reason: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Translation {
    /// Canonical (sorted) table.
    pub table: RuleTable,
    /// VIP each served Service should show in `status.loadBalancer.ingress`, by `namespace/name`.
    pub vips: BTreeMap<String, IpAddr>,
    pub problems: Vec<Problem>,
}

pub struct Settings<'a> {
    pub load_balancer_class: &'a str,
    pub pools: &'a [IpNet],
}

fn key_of(ns: &str, name: &str) -> String {
    format!("{ns}/{name}")
}

/// Whether this Service is one Shoal should serve.
pub fn is_ours(svc: &Service, load_balancer_class: &str) -> bool {
    svc.spec.as_ref().is_some_and(|s| {
        s.type_.as_deref() == Some("LoadBalancer")
            && s.load_balancer_class.as_deref() == Some(load_balancer_class)
    })
}

/// Addresses in `status.loadBalancer.ingress` that parse as IPs.
pub fn status_ips(svc: &Service) -> Vec<IpAddr> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|ing| {
            ing.iter()
                .filter_map(|i| i.ip.as_deref().and_then(|ip| ip.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

fn parse_protocol(p: Option<&str>) -> Option<Protocol> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        "SCTP" => Some(Protocol::Sctp),
        _ => None,
    }
}

pub fn translate(services: &[Service], slices: &[EndpointSlice], cfg: &Settings) -> Translation {
    let mut problems = Vec::new();
    let mut ours: Vec<(&Service, ServiceSettings, String)> = Vec::new();
    for svc in services
        .iter()
        .filter(|s| is_ours(s, cfg.load_balancer_class))
    {
        let id = ObjectId::service(svc);
        if id.name.is_empty() || id.namespace.is_empty() {
            continue;
        }
        let empty = BTreeMap::new();
        let ann = svc.metadata.annotations.as_ref().unwrap_or(&empty);
        let lb_ip = svc
            .spec
            .as_ref()
            .and_then(|s| s.load_balancer_ip.as_deref());
        match annotations::parse(ann, lb_ip) {
            Ok(settings) => {
                let key = key_of(&id.namespace, &id.name);
                ours.push((svc, settings, key));
            }
            Err(e) => problems.push(Problem {
                object: id,
                reason: "InvalidAnnotation",
                message: format!("not published: {e}"),
            }),
        }
    }

    let claims: Vec<Claim> = ours
        .iter()
        .map(|(svc, settings, key)| Claim {
            key: key.clone(),
            created_s: svc
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second())
                .unwrap_or(i64::MAX),
            requested: settings.requested_vip,
            current: status_ips(svc),
        })
        .collect();
    let assignment = vip::assign(&claims, cfg.pools);

    // Slices by owning Service; slices without the label belong to nobody we serve.
    let mut by_service: BTreeMap<String, Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        let labels = slice.metadata.labels.as_ref();
        if let (Some(ns), Some(svc)) = (
            slice.metadata.namespace.as_deref(),
            labels.and_then(|l| l.get(SERVICE_NAME_LABEL)),
        ) {
            by_service.entry(key_of(ns, svc)).or_default().push(slice);
        }
    }

    let mut table = RuleTable::default();
    let mut vips = BTreeMap::new();
    let mut bad_slices = BTreeSet::new();
    for (svc, settings, key) in &ours {
        let id = ObjectId::service(svc);
        if let Some(p) = assignment.problems.get(key) {
            problems.push(Problem {
                object: id.clone(),
                reason: match p {
                    vip::VipProblem::Conflict { .. } => "VipConflict",
                    _ => "VipUnavailable",
                },
                message: p.to_string(),
            });
        }
        let Some(&vip) = assignment.vips.get(key) else {
            continue;
        };
        vips.insert(key.clone(), vip);
        let svc_slices = by_service.get(key).map(Vec::as_slice).unwrap_or(&[]);
        let ports = svc.spec.as_ref().and_then(|s| s.ports.as_ref());
        for port in ports.into_iter().flatten() {
            let port_label = port.name.clone().unwrap_or_else(|| port.port.to_string());
            let (Some(protocol), Ok(port_num)) = (
                parse_protocol(port.protocol.as_deref()),
                u16::try_from(port.port),
            ) else {
                problems.push(Problem {
                    object: id.clone(),
                    reason: "InvalidPort",
                    message: format!(
                        "port {port_label}: protocol {:?} port {} not supported, port not published",
                        port.protocol, port.port
                    ),
                });
                continue;
            };
            let mut backends = BTreeSet::new();
            let mut mismatched = BTreeSet::new();
            for slice in svc_slices {
                let family_ok = match slice.address_type.as_str() {
                    "IPv4" => vip.is_ipv4(),
                    "IPv6" => vip.is_ipv6(),
                    _ => false,
                };
                if !family_ok {
                    continue;
                }
                let matching = slice.ports.iter().flatten().find(|p| {
                    p.name.as_deref().unwrap_or("") == port.name.as_deref().unwrap_or("")
                        && parse_protocol(p.protocol.as_deref()) == Some(protocol)
                });
                let Some(target) = matching.and_then(|p| p.port) else {
                    continue;
                };
                let Ok(target) = u16::try_from(target) else {
                    bad_slices.insert(Problem {
                        object: ObjectId::slice(slice),
                        reason: "MalformedEndpointSlice",
                        message: format!("port {target} out of range, slice skipped"),
                    });
                    continue;
                };
                if target == 0 {
                    continue;
                }
                let tunnel_like = matches!(
                    settings.forwarding,
                    Forwarding::Tunnel(_) | Forwarding::Route
                );
                if tunnel_like && target != port_num {
                    mismatched.insert(target);
                    continue;
                }
                for ep in &slice.endpoints {
                    let c = ep.conditions.as_ref();
                    let ready = c.and_then(|c| c.ready).unwrap_or(true);
                    let serving = c.and_then(|c| c.serving).unwrap_or(ready);
                    let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
                    if !(ready && serving && !terminating) {
                        continue;
                    }
                    for addr in &ep.addresses {
                        match addr.parse::<IpAddr>() {
                            Ok(address) if address.is_ipv4() == vip.is_ipv4() => {
                                backends.insert(Backend {
                                    address,
                                    port: target,
                                    weight: 1,
                                });
                            }
                            _ => {
                                bad_slices.insert(Problem {
                                    object: ObjectId::slice(slice),
                                    reason: "MalformedEndpointSlice",
                                    message: format!(
                                        "address {addr:?} is not an {} address, endpoint skipped",
                                        slice.address_type
                                    ),
                                });
                            }
                        }
                    }
                }
            }
            if !mismatched.is_empty() {
                problems.push(Problem {
                    object: id.clone(),
                    reason: "TargetPortMismatch",
                    message: format!(
                        "port {port_label}: tunnel and route forwarding keep the destination port, \
                         so targetPort must equal port {port_num}, got {mismatched:?}; \
                         those endpoints are left out (use shoal.io/forwarding=masq to translate ports)"
                    ),
                });
            }
            table.services.push(VirtualService {
                name: format!("{key}:{port_label}"),
                vip,
                port: port_num,
                protocol,
                scheduler: settings.scheduler.clone(),
                flags: settings.flags,
                forwarding: settings.forwarding,
                backends: backends.into_iter().collect(),
                health: settings.health.clone(),
            });
        }
    }
    problems.extend(bad_slices);
    problems.sort();
    problems.dedup();
    table.canonicalize();
    Translation {
        table,
        vips,
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        LoadBalancerIngress, LoadBalancerStatus, ServicePort, ServiceSpec, ServiceStatus,
    };
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use proptest::prelude::*;

    const CLASS: &str = "shoal.io/lb";

    fn svc(name: &str, ports: &[(&str, i32)], ann: &[(&str, &str)]) -> Service {
        Service {
            metadata: ObjectMeta {
                namespace: Some("default".into()),
                name: Some(name.into()),
                uid: Some(format!("uid-{name}")),
                annotations: Some(
                    ann.iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("LoadBalancer".into()),
                load_balancer_class: Some(CLASS.into()),
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, p)| ServicePort {
                            name: (!n.is_empty()).then(|| n.to_string()),
                            port: *p,
                            protocol: Some("TCP".into()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn slice(
        svc: &str,
        suffix: &str,
        port: (&str, i32),
        eps: &[(&str, Option<bool>)],
    ) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some("default".into()),
                name: Some(format!("{svc}-{suffix}")),
                labels: Some([(SERVICE_NAME_LABEL.to_string(), svc.to_string())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: eps
                .iter()
                .map(|(a, ready)| Endpoint {
                    addresses: vec![a.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ports: Some(vec![EndpointPort {
                name: (!port.0.is_empty()).then(|| port.0.to_string()),
                port: Some(port.1),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
        }
    }

    fn run(services: &[Service], slices: &[EndpointSlice]) -> Translation {
        let pools = vip::parse_pools(&["203.0.113.0/24".into()]).unwrap();
        translate(
            services,
            slices,
            &Settings {
                load_balancer_class: CLASS,
                pools: &pools,
            },
        )
    }

    #[test]
    fn one_service_two_slices() {
        let t = run(
            &[svc(
                "web",
                &[("http", 80)],
                &[("shoal.io/vip", "203.0.113.10")],
            )],
            &[
                slice(
                    "web",
                    "a",
                    ("http", 80),
                    &[("198.18.0.3", Some(true)), ("198.18.0.9", Some(false))],
                ),
                slice("web", "b", ("http", 80), &[("198.18.0.2", None)]),
            ],
        );
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        assert_eq!(t.table.services.len(), 1);
        let vs = &t.table.services[0];
        assert_eq!(vs.name, "default/web:http");
        assert_eq!(vs.vip, "203.0.113.10".parse::<IpAddr>().unwrap());
        let addrs: Vec<String> = vs.backends.iter().map(|b| b.address.to_string()).collect();
        assert_eq!(addrs, ["198.18.0.2", "198.18.0.3"]);
        assert_eq!(t.vips["default/web"], vs.vip);
    }

    #[test]
    fn other_classes_and_types_are_ignored() {
        let mut other = svc("other", &[("", 80)], &[]);
        other.spec.as_mut().unwrap().load_balancer_class = Some("metallb".into());
        let mut cluster_ip = svc("cip", &[("", 80)], &[]);
        cluster_ip.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
        let t = run(&[other, cluster_ip], &[]);
        assert_eq!(t.table, RuleTable::default());
        assert!(t.problems.is_empty());
    }

    #[test]
    fn named_target_port_resolved_through_the_slice_and_masq_translates() {
        // Service port 80 -> targetPort "web" resolved to 8080 in the slice.
        let s = svc("app", &[("http", 80)], &[("shoal.io/forwarding", "masq")]);
        let t = run(
            &[s],
            &[slice("app", "x", ("http", 8080), &[("198.18.0.5", None)])],
        );
        assert_eq!(t.table.services[0].backends[0].port, 8080);
        // With tunnel forwarding the same slice is refused with a reason.
        let s = svc("app", &[("http", 80)], &[]);
        let t = run(
            &[s],
            &[slice("app", "x", ("http", 8080), &[("198.18.0.5", None)])],
        );
        assert!(t.table.services[0].backends.is_empty());
        assert_eq!(t.problems[0].reason, "TargetPortMismatch");
    }

    #[test]
    fn a_bad_service_is_skipped_and_the_rest_published() {
        let t = run(
            &[
                svc("bad", &[("", 80)], &[("shoal.io/scheduler", "fastest")]),
                svc("good", &[("", 80)], &[]),
            ],
            &[slice(
                "good",
                "a",
                ("", 80),
                &[("198.18.0.7", None), ("not-an-ip", None)],
            )],
        );
        assert_eq!(t.table.services.len(), 1);
        assert_eq!(t.table.services[0].name, "default/good:80");
        assert_eq!(t.table.services[0].backends.len(), 1);
        let reasons: Vec<_> = t
            .problems
            .iter()
            .map(|p| (p.object.name.as_str(), p.reason))
            .collect();
        assert!(
            reasons.contains(&("bad", "InvalidAnnotation")),
            "{reasons:?}"
        );
        assert!(
            reasons.contains(&("good-a", "MalformedEndpointSlice")),
            "{reasons:?}"
        );
    }

    #[test]
    fn existing_status_is_kept() {
        let mut s = svc("kept", &[("", 80)], &[]);
        s.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![LoadBalancerIngress {
                    ip: Some("203.0.113.200".into()),
                    ..Default::default()
                }]),
            }),
            ..Default::default()
        });
        let t = run(&[s], &[]);
        assert_eq!(t.vips["default/kept"].to_string(), "203.0.113.200");
    }

    #[test]
    fn same_vip_twice_is_a_conflict_problem() {
        let t = run(
            &[
                svc("a", &[("", 80)], &[("shoal.io/vip", "203.0.113.1")]),
                svc("b", &[("", 81)], &[("shoal.io/vip", "203.0.113.1")]),
            ],
            &[],
        );
        assert_eq!(t.table.services.len(), 1);
        assert_eq!(t.problems.len(), 1);
        assert_eq!(t.problems[0].reason, "VipConflict");
    }

    proptest! {
        /// Input order never changes the output, and table names are unique.
        #[test]
        fn order_independent(n in 1usize..6, ready in proptest::collection::vec(any::<Option<bool>>(), 6), rot in 0usize..6) {
            let services: Vec<Service> = (0..n).map(|i| svc(&format!("s{i}"), &[("p", 80), ("q", 443)], &[])).collect();
            let slices: Vec<EndpointSlice> = (0..n).map(|i| {
                let addr = format!("198.18.0.{i}");
                slice(&format!("s{i}"), "a", ("p", 80), &[(addr.as_str(), ready[i])])
            }).collect();
            let a = run(&services, &slices);
            let mut s2 = services.clone();
            s2.rotate_left(rot % n);
            let mut l2 = slices.clone();
            l2.reverse();
            prop_assert_eq!(&run(&s2, &l2), &a);
            let names: BTreeSet<_> = a.table.services.iter().map(|s| &s.name).collect();
            prop_assert_eq!(names.len(), a.table.services.len());
            prop_assert_eq!(a.table.services.len(), 2 * n);
        }
    }
}
