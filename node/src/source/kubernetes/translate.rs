//! Services + EndpointSlices -> rule table, desired statuses and a list of problems.
//!
//! Pure: the same objects give the same table on any replica that happens to be publisher.
//! A Service is ours when `spec.type` is `LoadBalancer` and `spec.loadBalancerClass` equals
//! the configured class. Each of its ports becomes one virtual service named
//! `namespace/name:port-name` (the port number when unnamed) per IP family of the Service
//! (`spec.ipFamilies`; the second family's names end in `@IPv6` or `@IPv4`). Backends are the
//! ready, serving, non-terminating endpoints of the family's EndpointSlices whose port has the
//! same name and protocol, or, when none is ready, the serving terminating ones; the slice
//! already carries the resolved number of a named `targetPort`. Anything wrong with one object becomes a [`Problem`] and only that object
//! (or that port) is left out: the rest of the table is still published.

use super::annotations::{self, ServiceSettings};
use super::pools::Pool;
use super::vip::{self, Claim, Family};
use crate::table::{Backend, RuleTable, VirtualService};
use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use shoal_dataplane::model::{Forwarding, Protocol};
use std::borrow::Borrow;
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
    /// VIPs each served Service should show in `status.loadBalancer.ingress`, by
    /// `namespace/name`, primary family first.
    pub vips: BTreeMap<String, Vec<IpAddr>>,
    /// Services whose status must show no address: ours without a VIP, and Services that
    /// left the class (no longer `LoadBalancer`) still showing an address from our pools.
    pub clear: BTreeSet<String>,
    pub problems: Vec<Problem>,
}

pub struct Settings<'a> {
    pub load_balancer_class: &'a str,
    pub pools: &'a [Pool],
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

/// A Service that stopped being a `LoadBalancer` (its class is ours or was cleared with the
/// type) but still shows an address from one of our pools: we wrote it, we clear it.
fn left_the_class(svc: &Service, cfg: &Settings) -> bool {
    let Some(spec) = svc.spec.as_ref() else {
        return false;
    };
    let class_ok = spec
        .load_balancer_class
        .as_deref()
        .is_none_or(|c| c == cfg.load_balancer_class);
    spec.type_.as_deref() != Some("LoadBalancer")
        && class_ok
        && status_ips(svc)
            .iter()
            .any(|ip| cfg.pools.iter().any(|p| p.contains(ip)))
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

/// `spec.ipFamilies` in order; without it the family of the request, else IPv4 (the API
/// server always fills the field, objects written by hand may not).
fn families(svc: &Service, settings: &ServiceSettings) -> Vec<Family> {
    let mut out: Vec<Family> = Vec::new();
    let listed = svc.spec.as_ref().and_then(|s| s.ip_families.as_ref());
    for f in listed.into_iter().flatten() {
        let f = match f.as_str() {
            "IPv4" => Family::V4,
            "IPv6" => Family::V6,
            _ => continue,
        };
        if !out.contains(&f) {
            out.push(f);
        }
    }
    if out.is_empty() {
        out = settings.requested_vips.iter().map(Family::of).collect();
        out.dedup();
    }
    if out.is_empty() {
        out.push(Family::V4);
    }
    out
}

fn ports_of(svc: &Service) -> BTreeSet<(String, u16)> {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                u16::try_from(p.port).unwrap_or(0),
            )
        })
        .collect()
}

/// `sessionAffinity: ClientIP` is honoured by a scheduler that hashes the client address
/// only: `mh` without `mh-port` (what ClientIP turns the default into) or `sh`; each replica
/// then picks the same backend for a client, with no timeout (`timeoutSeconds` is not used:
/// the mapping lasts as long as the set of endpoints). Anything else is reported.
fn affinity_problem(svc: &Service, settings: &ServiceSettings) -> Option<String> {
    let spec = svc.spec.as_ref()?;
    if spec.session_affinity.as_deref() != Some("ClientIP") {
        return None;
    }
    let hashes_client = match settings.scheduler.as_str() {
        "mh" => !settings.flags.mh_port,
        "sh" => true,
        _ => false,
    };
    (!hashes_client).then(|| {
        format!(
            "sessionAffinity ClientIP needs a scheduler that hashes the client address only \
             (shoal.io/scheduler=mh without shoal.io/mh-port, or sh); scheduler {} mh-port {} \
             does not keep a client on one endpoint",
            settings.scheduler, settings.flags.mh_port
        )
    })
}

/// The legacy annotation kube-proxy and cloud providers still read when
/// `spec.loadBalancerSourceRanges` is empty (comma-separated CIDRs).
pub const SOURCE_RANGES_ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";

/// `spec.loadBalancerSourceRanges` (else the legacy annotation) as networks, host bits
/// cleared (the API server accepts `192.0.2.7/24`), sorted; ranges of both families are kept
/// and each VIP uses those of its own family (a VIP with none of its family accepts nobody).
fn source_ranges(svc: &Service) -> Result<Vec<ipnet::IpNet>, String> {
    let from_spec = svc
        .spec
        .as_ref()
        .and_then(|s| s.load_balancer_source_ranges.as_ref())
        .filter(|r| !r.is_empty());
    let entries: Vec<&str> = match from_spec {
        Some(list) => list.iter().map(|r| r.trim()).collect(),
        None => svc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SOURCE_RANGES_ANNOTATION))
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|r| !r.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
    };
    if entries.len() > crate::rules::MAX_SOURCE_RANGES {
        return Err(format!(
            "{} loadBalancerSourceRanges; at most {}",
            entries.len(),
            crate::rules::MAX_SOURCE_RANGES
        ));
    }
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let net: ipnet::IpNet = entry.parse().map_err(|_| {
            format!("loadBalancerSourceRanges entry {entry:?} is not a network in CIDR form")
        })?;
        out.push(net.trunc());
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Takes owned objects or references (the watch loop passes references into its caches, so
/// nothing is cloned per pass).
pub fn translate<S: Borrow<Service>, E: Borrow<EndpointSlice>>(
    services: &[S],
    slices: &[E],
    cfg: &Settings,
) -> Translation {
    let mut problems = Vec::new();
    let mut clear = BTreeSet::new();
    let mut ours: Vec<(&Service, ServiceSettings, String)> = Vec::new();
    for svc in services.iter().map(Borrow::borrow) {
        let id = ObjectId::service(svc);
        if id.name.is_empty() || id.namespace.is_empty() {
            continue;
        }
        if !is_ours(svc, cfg.load_balancer_class) {
            if left_the_class(svc, cfg) {
                clear.insert(key_of(&id.namespace, &id.name));
            }
            continue;
        }
        let empty = BTreeMap::new();
        let ann = svc.metadata.annotations.as_ref().unwrap_or(&empty);
        let lb_ip = svc
            .spec
            .as_ref()
            .and_then(|s| s.load_balancer_ip.as_deref());
        match annotations::parse(ann, lb_ip) {
            Ok(mut settings) => {
                let key = key_of(&id.namespace, &id.name);
                let client_ip = svc
                    .spec
                    .as_ref()
                    .and_then(|s| s.session_affinity.as_deref())
                    == Some("ClientIP");
                if client_ip && !ann.contains_key(annotations::MH_PORT) {
                    // One client, one backend: hash the client address only.
                    settings.flags.mh_port = false;
                }
                if let Some(message) = affinity_problem(svc, &settings) {
                    problems.push(Problem {
                        object: id.clone(),
                        reason: "SessionAffinityNotHonored",
                        message,
                    });
                }
                match source_ranges(svc) {
                    Ok(ranges) => settings.source_ranges = ranges,
                    Err(message) => {
                        // Leaving a bad range out would widen who may connect (and none at
                        // all means everyone): the Service is not published until it is fixed.
                        problems.push(Problem {
                            object: id,
                            reason: "InvalidSourceRange",
                            message: format!("not published: {message}"),
                        });
                        continue;
                    }
                }
                let spec = svc.spec.as_ref();
                if spec.and_then(|s| s.external_traffic_policy.as_deref()) == Some("Local") {
                    problems.push(Problem {
                        object: id.clone(),
                        reason: "ExternalTrafficPolicyLocal",
                        message: "externalTrafficPolicy Local: Shoal tunnels packets to every \
                                  ready endpoint (not only those on the receiving node) and \
                                  the endpoints see the client's own address already, so Local \
                                  changes nothing here; healthCheckNodePort is not used"
                            .into(),
                    });
                }
                ours.push((svc, settings, key));
            }
            // The status is left alone: fixing the typo brings the Service back as it was.
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
            namespace: svc.metadata.namespace.clone().unwrap_or_default(),
            created_s: svc
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second())
                .unwrap_or(i64::MAX),
            families: families(svc, settings),
            requested: settings.requested_vips.clone(),
            current: status_ips(svc),
            sharing_key: settings.sharing_key.clone(),
            ports: ports_of(svc),
        })
        .collect();
    let assignment = vip::assign(&claims, cfg.pools);

    // Slices by owning Service; slices without the label belong to nobody we serve.
    let mut by_service: BTreeMap<String, Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices.iter().map(Borrow::borrow) {
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
        for p in assignment.problems.get(key).into_iter().flatten() {
            problems.push(Problem {
                object: id.clone(),
                reason: match p {
                    vip::VipProblem::Conflict { .. } => "VipConflict",
                    vip::VipProblem::NotInPool { .. } => "VipNotInPool",
                    vip::VipProblem::FamilyNotServed { .. } => "VipFamilyNotServed",
                    _ => "VipUnavailable",
                },
                message: p.to_string(),
            });
        }
        let Some(assigned) = assignment.vips.get(key) else {
            clear.insert(key.clone());
            continue;
        };
        vips.insert(key.clone(), assigned.clone());
        let svc_slices = by_service.get(key).map(Vec::as_slice).unwrap_or(&[]);
        for (i, &vip) in assigned.iter().enumerate() {
            let ranges = &settings.source_ranges;
            if !ranges.is_empty() && !ranges.iter().any(|r| r.addr().is_ipv4() == vip.is_ipv4()) {
                problems.push(Problem {
                    object: id.clone(),
                    reason: "SourceRangesFamily",
                    message: format!(
                        "loadBalancerSourceRanges has no {} network: nobody may connect to {vip}",
                        Family::of(&vip).name()
                    ),
                });
            }
            let ctx = PortContext {
                id: &id,
                settings,
                vip,
                // The primary family keeps the plain name; the second family is suffixed.
                suffix: if i == 0 {
                    String::new()
                } else {
                    format!("@{}", Family::of(&vip).name())
                },
            };
            let ports = svc.spec.as_ref().and_then(|s| s.ports.as_ref());
            for port in ports.into_iter().flatten() {
                if let Some(vs) =
                    ctx.virtual_service(key, port, svc_slices, &mut problems, &mut bad_slices)
                {
                    table.services.push(vs);
                }
            }
        }
    }
    problems.extend(bad_slices);
    problems.sort();
    problems.dedup();
    table.canonicalize();
    Translation {
        table,
        vips,
        clear,
        problems,
    }
}

struct PortContext<'a> {
    id: &'a ObjectId,
    settings: &'a ServiceSettings,
    vip: IpAddr,
    suffix: String,
}

impl PortContext<'_> {
    /// One port of one family; `None` (with a problem) when the port cannot be served.
    fn virtual_service(
        &self,
        key: &str,
        port: &ServicePort,
        svc_slices: &[&EndpointSlice],
        problems: &mut Vec<Problem>,
        bad_slices: &mut BTreeSet<Problem>,
    ) -> Option<VirtualService> {
        let (id, settings, vip) = (self.id, self.settings, self.vip);
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
            return None;
        };
        // Ready endpoints; serving-but-terminating ones only when no ready one is left (as
        // kube-proxy does), so connections keep a home while a rollout replaces every pod.
        let mut ready = BTreeSet::new();
        let mut terminating = BTreeSet::new();
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
                let is_ready = c.and_then(|c| c.ready).unwrap_or(true);
                let serving = c.and_then(|c| c.serving).unwrap_or(is_ready);
                let is_terminating = c.and_then(|c| c.terminating).unwrap_or(false);
                let bucket = match (
                    is_ready && serving && !is_terminating,
                    serving && is_terminating,
                ) {
                    (true, _) => &mut ready,
                    (false, true) => &mut terminating,
                    (false, false) => continue,
                };
                for addr in &ep.addresses {
                    match addr.parse::<IpAddr>() {
                        Ok(address) if address.is_ipv4() == vip.is_ipv4() => {
                            bucket.insert(Backend {
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
        let backends = if ready.is_empty() { terminating } else { ready };
        let service = VirtualService {
            name: format!("{key}:{port_label}{}", self.suffix),
            vip,
            port: port_num,
            protocol,
            scheduler: settings.scheduler.clone(),
            flags: settings.flags,
            forwarding: settings.forwarding,
            backends: backends.into_iter().collect(),
            health: settings.health.clone(),
            source_ranges: settings.source_ranges.clone(),
        };
        // The rules file's validator: what it refuses is not published from a Service either.
        if let Err(e) = crate::validate::service(&service, crate::validate::Allow::default()) {
            problems.push(Problem {
                object: id.clone(),
                reason: "InvalidService",
                message: format!(
                    "port {port_label}: {:?}: {}, port not published",
                    e.field, e.message
                ),
            });
            return None;
        }
        Some(service)
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
        let pools = [
            crate::source::kubernetes::pools::from_cidrs(&["203.0.113.0/24".into()], "default")
                .unwrap(),
            crate::source::kubernetes::pools::from_cidrs(&["2001:db8::/64".into()], "default")
                .unwrap(),
        ];
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
        assert_eq!(t.vips["default/web"], [vs.vip]);
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

    /// The rules file's validator runs on every translated port: a loopback endpoint (which
    /// the rules file refuses) does not reach the dataplane from a Service either.
    #[test]
    fn translated_ports_go_through_the_shared_validator() {
        let t = run(
            &[svc("lo", &[("", 80)], &[])],
            &[slice("lo", "a", ("", 80), &[("127.0.0.1", None)])],
        );
        assert!(t.table.services.is_empty(), "{:?}", t.table);
        assert!(
            t.problems
                .iter()
                .any(|p| p.reason == "InvalidService" && p.message.contains("127.0.0.1")),
            "{:?}",
            t.problems
        );
    }

    #[test]
    fn source_ranges_reach_every_port_and_family_and_bad_ones_fail_closed() {
        let mut s = svc("web", &[("http", 80), ("https", 443)], &[]);
        let spec = s.spec.as_mut().unwrap();
        spec.load_balancer_source_ranges =
            Some(vec!["198.51.100.7/24".into(), " 192.0.2.0/25".into()]);
        spec.ip_families = Some(vec!["IPv4".into(), "IPv6".into()]);
        let t = run(&[s.clone()], &[]);
        assert_eq!(t.table.services.len(), 4, "two ports x two families");
        for vs in &t.table.services {
            let got: Vec<String> = vs.source_ranges.iter().map(|r| r.to_string()).collect();
            assert_eq!(got, ["192.0.2.0/25", "198.51.100.0/24"], "{}", vs.name);
        }
        // The IPv6 VIP has no range of its family: it accepts nobody, and the owner is told.
        let reasons: Vec<_> = t.problems.iter().map(|p| p.reason).collect();
        assert_eq!(reasons, ["SourceRangesFamily"], "{:?}", t.problems);

        // The legacy annotation when the field is empty.
        let mut legacy = svc(
            "old",
            &[("", 80)],
            &[(SOURCE_RANGES_ANNOTATION, "192.0.2.0/24, 198.51.100.0/24")],
        );
        legacy.spec.as_mut().unwrap().load_balancer_source_ranges = Some(vec![]);
        let t = run(&[legacy], &[]);
        assert_eq!(t.table.services[0].source_ranges.len(), 2);

        // A bad entry: not published at all (leaving it out would widen access).
        s.spec.as_mut().unwrap().load_balancer_source_ranges =
            Some(vec!["192.0.2.0/24".into(), "192.0.2.300/24".into()]);
        let t = run(&[s, svc("other", &[("", 80)], &[])], &[]);
        assert_eq!(t.table.services.len(), 1);
        assert_eq!(t.table.services[0].name, "default/other:80");
        assert!(t.table.services[0].source_ranges.is_empty());
        assert_eq!(t.problems[0].reason, "InvalidSourceRange");
        assert!(
            t.problems[0].message.contains("192.0.2.300/24"),
            "{:?}",
            t.problems
        );
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
        assert_eq!(t.vips["default/kept"][0].to_string(), "203.0.113.200");
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

    fn with_conditions(
        mut s: EndpointSlice,
        ready: bool,
        serving: bool,
        terminating: bool,
    ) -> EndpointSlice {
        for ep in &mut s.endpoints {
            ep.conditions = Some(EndpointConditions {
                ready: Some(ready),
                serving: Some(serving),
                terminating: Some(terminating),
            });
        }
        s
    }

    #[test]
    fn terminating_endpoints_serve_only_when_no_ready_one_is_left() {
        let s = svc("roll", &[("", 80)], &[]);
        let old = with_conditions(
            slice("roll", "old", ("", 80), &[("198.18.0.1", None)]),
            false,
            true,
            true,
        );
        let gone = with_conditions(
            slice("roll", "gone", ("", 80), &[("198.18.0.3", None)]),
            false,
            false,
            true,
        );
        let new = slice("roll", "new", ("", 80), &[("198.18.0.2", Some(true))]);
        let addrs = |t: &Translation| -> Vec<String> {
            t.table.services[0]
                .backends
                .iter()
                .map(|b| b.address.to_string())
                .collect()
        };
        let t = run(std::slice::from_ref(&s), &[old.clone(), gone.clone(), new]);
        assert_eq!(addrs(&t), ["198.18.0.2"]);
        let t = run(&[s], &[old, gone]);
        assert_eq!(
            addrs(&t),
            ["198.18.0.1"],
            "serving terminating endpoint as fallback"
        );
    }

    #[test]
    fn dual_stack_and_ipv6_only_services_get_a_vip_and_backends_per_family() {
        let mut ds = svc("ds", &[("http", 80)], &[]);
        ds.spec.as_mut().unwrap().ip_families = Some(vec!["IPv6".into(), "IPv4".into()]);
        let mut v6 = svc("v6", &[("http", 80)], &[]);
        v6.spec.as_mut().unwrap().ip_families = Some(vec!["IPv6".into()]);
        let mut slices = vec![slice("ds", "v4", ("http", 80), &[("198.18.0.1", None)])];
        for (svc_name, addr) in [("ds", "2001:db8:1::1"), ("v6", "2001:db8:1::2")] {
            let mut s6 = slice(svc_name, "v6", ("http", 80), &[(addr, None)]);
            s6.address_type = "IPv6".into();
            slices.push(s6);
        }
        let t = run(&[ds, v6], &slices);
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        let got: Vec<(String, bool, String)> = t
            .table
            .services
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    s.vip.is_ipv6(),
                    s.backends[0].address.to_string(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    "default/ds:http".to_string(),
                    true,
                    "2001:db8:1::1".to_string()
                ),
                (
                    "default/ds:http@IPv4".to_string(),
                    false,
                    "198.18.0.1".to_string()
                ),
                (
                    "default/v6:http".to_string(),
                    true,
                    "2001:db8:1::2".to_string()
                ),
            ]
        );
        assert_eq!(t.vips["default/ds"].len(), 2);
    }

    #[test]
    fn statuses_to_clear_and_notes_about_affinity_and_local() {
        let status = |s: &mut Service, ip: &str| {
            s.status = Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(vec![LoadBalancerIngress {
                        ip: Some(ip.into()),
                        ..Default::default()
                    }]),
                }),
                ..Default::default()
            })
        };
        // Left the class: now a ClusterIP Service, still showing our address.
        let mut left = svc("left", &[("", 80)], &[]);
        left.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
        left.spec.as_mut().unwrap().load_balancer_class = None;
        status(&mut left, "203.0.113.20");
        // Another controller's LoadBalancer: never touched.
        let mut theirs = svc("theirs", &[("", 80)], &[]);
        theirs.spec.as_mut().unwrap().load_balancer_class = None;
        status(&mut theirs, "203.0.113.21");
        // Ours but its request is outside every pool: shows nothing.
        let mut outside = svc("outside", &[("", 80)], &[("shoal.io/vip", "192.0.2.1")]);
        status(&mut outside, "192.0.2.1");
        let mut sticky = svc("sticky", &[("", 80)], &[("shoal.io/scheduler", "rr")]);
        sticky.spec.as_mut().unwrap().session_affinity = Some("ClientIP".into());
        let mut ok_sticky = svc("ok-sticky", &[("", 80)], &[]);
        ok_sticky.spec.as_mut().unwrap().session_affinity = Some("ClientIP".into());
        let mut local = svc("local", &[("", 80)], &[]);
        local.spec.as_mut().unwrap().external_traffic_policy = Some("Local".into());
        let t = run(&[left, theirs, outside, sticky, ok_sticky, local], &[]);
        let clear: Vec<&str> = t.clear.iter().map(String::as_str).collect();
        assert_eq!(clear, ["default/left", "default/outside"]);
        let reasons: Vec<(&str, &str)> = t
            .problems
            .iter()
            .map(|p| (p.object.name.as_str(), p.reason))
            .collect();
        assert_eq!(
            reasons,
            [
                ("local", "ExternalTrafficPolicyLocal"),
                ("outside", "VipNotInPool"),
                ("sticky", "SessionAffinityNotHonored"),
            ]
        );
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
