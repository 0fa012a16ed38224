//! Services + EndpointSlices -> rule table, desired statuses and a list of problems.
//!
//! Pure: the same objects give the same table on any replica that happens to be publisher.
//! A Service is ours when `spec.type` is `LoadBalancer` and `spec.loadBalancerClass` equals
//! the configured class. Each of its ports becomes one virtual service named
//! `namespace/name:port-name` (the port number when unnamed) per IP family of the Service
//! (`spec.ipFamilies`; the second family's names end in `@IPv6` or `@IPv4`). Backends are the
//! ready, serving, non-terminating endpoints of the family's EndpointSlices whose port has the
//! same name and protocol, or, when none is ready, the serving terminating ones; the slice
//! already carries the resolved number of a named `targetPort`. Anything wrong with one object
//! becomes a [`Problem`] and only that object (that port, that endpoint) is left out: the rest
//! of the table is still published.

use super::annotations::{self, ServiceSettings};
use super::pools::Pool;
use super::slice::Slice;
use super::vip::{self, Claim, Family};
use crate::table::{Backend, RuleTable, VirtualService};
use k8s_openapi::api::core::v1::{Service, ServicePort};
use shoal_dataplane::model::Forwarding;
use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

mod spec;
use spec::{affinity_problem, families, left_the_class, parse_protocol, ports_of, source_ranges};
pub use spec::{is_ours, status_ips, SOURCE_RANGES_ANNOTATION};

/// The label the EndpointSlice controller puts on every slice it manages.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The most backends one Service may make (each port times its endpoints, every family): a
/// Service of 300 ports and one EndpointSlice of 1,000 endpoints (95 KB of JSON) made 300,000
/// backends and 1.7 GiB on every replica, past the pod's memory limit (a probe). A rules file
/// is bounded by its size; this bounds what one object can cost. A Service past it is not
/// published, with an Event, and the others are.
pub const MAX_BACKENDS_PER_SERVICE: usize = 50_000;

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
    pub fn slice(slice: &Slice) -> Self {
        ObjectId {
            kind: "EndpointSlice",
            api_version: "discovery.k8s.io/v1",
            namespace: slice.namespace.clone().unwrap_or_default(),
            name: slice.name.clone().unwrap_or_default(),
            uid: slice.uid.clone(),
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

/// Takes owned objects or references (the watch loop passes references into its caches, so
/// nothing is cloned per pass).
pub fn translate<S: Borrow<Service>, E: Borrow<Slice>>(
    services: &[S],
    slices: &[E],
    cfg: &Settings,
) -> Translation {
    let mut problems = Vec::new();
    let mut clear = BTreeSet::new();
    let mut ours: Vec<(&Service, ServiceSettings, String)> = Vec::new();
    // Ours but refused until fixed: they keep their status addresses from others.
    let mut unpublished: Vec<&Service> = Vec::new();
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
                if client_ip
                    && !ann.contains_key(annotations::MH_PORT)
                    && !ann.contains_key(annotations::SH_PORT)
                {
                    // One client, one backend: hash the client address only.
                    settings.flags.port = false;
                }
                let ignored = annotations::ignored_without_checks(ann);
                if !ignored.is_empty() {
                    problems.push(Problem {
                        object: id.clone(),
                        reason: "IgnoredAnnotation",
                        message: format!(
                            "{}=none turns health checks off: {} take no effect",
                            annotations::HEALTH_CHECK,
                            ignored.join(", ")
                        ),
                    });
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
                        unpublished.push(svc);
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
                if settings.forwarding == Forwarding::Masq {
                    // Published as asked; the same warning `shoal check` gives a rules file.
                    problems.push(Problem {
                        object: id.clone(),
                        reason: "MasqNeedsSymmetricReplies",
                        message: "shoal.io/forwarding=masq: each reply must come back through \
                                  the replica that forwarded the request (the endpoints' route \
                                  to the clients must point at it, and net.ipv4.ip_forward = 1 \
                                  there); behind ECMP with several replicas, replies through \
                                  another replica are dropped"
                            .into(),
                    });
                }
                ours.push((svc, settings, key));
            }
            // The status is left alone: fixing the typo brings the Service back as it was.
            Err(e) => {
                problems.push(Problem {
                    object: id,
                    reason: "InvalidAnnotation",
                    message: format!("not published: {e}"),
                });
                unpublished.push(svc);
            }
        }
    }

    let claims: Vec<Claim> = ours
        .iter()
        .map(|(svc, settings, key)| Claim {
            key: key.clone(),
            namespace: svc.metadata.namespace.clone().unwrap_or_default(),
            created_s: created_s(svc),
            families: families(svc, settings),
            requested: settings.requested_vips.clone(),
            current: status_ips(svc),
            sharing_key: settings.sharing_key.clone(),
            ports: ports_of(svc),
            unpublished: false,
        })
        .chain(unpublished.iter().map(|svc| unpublished_claim(svc)))
        .collect();
    let assignment = vip::assign(&claims, cfg.pools);
    // Every replica holds every VIP: an endpoint at one would send that port's packets back
    // into the replicas instead of to a pod.
    let all_vips: BTreeSet<IpAddr> = assignment.vips.values().flatten().copied().collect();

    // Slices by owning Service; slices without the label belong to nobody we serve.
    let mut by_service: BTreeMap<String, Vec<&Slice>> = BTreeMap::new();
    for slice in slices.iter().map(Borrow::borrow) {
        if let (Some(ns), Some(svc)) = (slice.namespace.as_deref(), slice.service_name.as_deref()) {
            by_service.entry(key_of(ns, svc)).or_default().push(slice);
        }
    }

    // An unpublished Service whose address a published one took shows it no longer.
    for svc in &unpublished {
        let id = ObjectId::service(svc);
        let key = key_of(&id.namespace, &id.name);
        for p in assignment.problems.get(&key).into_iter().flatten() {
            clear.insert(key.clone());
            problems.push(Problem {
                object: id.clone(),
                reason: "VipConflict",
                message: format!("{p}; its status no longer shows it"),
            });
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
                    vip::VipProblem::NotInPool { .. } | vip::VipProblem::NetworkAddress { .. } => {
                        "VipNotInPool"
                    }
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
        let svc_slices = by_service.get(key).map(Vec::as_slice).unwrap_or(&[]);
        if let Some(why) = duplicate_port(svc) {
            // As the rules file refuses two services at one VIP, port and protocol; the
            // dataplane merged them silently (a probe). The status is left alone.
            problems.push(Problem {
                object: id.clone(),
                reason: "DuplicatePort",
                message: format!("not published: {why}"),
            });
            continue;
        }
        let mut made: Vec<VirtualService> = Vec::new();
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
                all_vips: &all_vips,
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
                    made.push(vs);
                }
            }
        }
        let backends: usize = made.iter().map(|vs| vs.backends.len()).sum();
        if backends > MAX_BACKENDS_PER_SERVICE {
            problems.push(Problem {
                object: id.clone(),
                reason: "TooManyBackends",
                message: format!(
                    "not published: its {} ports and their endpoints make {backends} backends, \
                     more than the {MAX_BACKENDS_PER_SERVICE} one Service may have",
                    made.len()
                ),
            });
            continue;
        }
        vips.insert(key.clone(), assigned.clone());
        table.services.extend(made);
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

/// Seconds since the epoch of `metadata.creationTimestamp`; unknown counts as newest.
fn created_s(svc: &Service) -> i64 {
    svc.metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or(i64::MAX)
}

/// The claim of a Service that is not published: what its status shows, nothing asked.
fn unpublished_claim(svc: &Service) -> Claim {
    let id = ObjectId::service(svc);
    let current = status_ips(svc);
    let mut families: Vec<Family> = Vec::new();
    for f in current.iter().map(Family::of) {
        if !families.contains(&f) {
            families.push(f);
        }
    }
    Claim {
        key: key_of(&id.namespace, &id.name),
        created_s: created_s(svc),
        families,
        requested: Vec::new(),
        current,
        // Read raw: the annotations may be what is wrong with it. Sharers keep sharing.
        sharing_key: svc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(annotations::ALLOW_SHARED_IP))
            .cloned(),
        ports: ports_of(svc),
        namespace: id.namespace,
        unpublished: true,
    }
}

struct PortContext<'a> {
    id: &'a ObjectId,
    settings: &'a ServiceSettings,
    vip: IpAddr,
    all_vips: &'a BTreeSet<IpAddr>,
    suffix: String,
}

impl PortContext<'_> {
    /// Why `address` cannot be a backend of any port, if it cannot.
    fn unusable(&self, address: IpAddr) -> Option<String> {
        if self.all_vips.contains(&address) {
            return Some(
                "is a VIP of a Service Shoal serves (every replica holds it), not a pod".into(),
            );
        }
        crate::validate::not_unicast(address)
            .map(|why| format!("is not a unicast address a backend can use ({why})"))
    }

    /// One port of one family; `None` (with a problem) when the port cannot be served.
    fn virtual_service(
        &self,
        key: &str,
        port: &ServicePort,
        svc_slices: &[&Slice],
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
            let matching = slice.ports.iter().find(|p| {
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
                let is_ready = ep.ready.unwrap_or(true);
                let serving = ep.serving.unwrap_or(is_ready);
                let is_terminating = ep.terminating.unwrap_or(false);
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
                            // One endpoint no packet should go to is left out, not the whole
                            // port (the rules file refuses such a backend at its line).
                            if let Some(why) = self.unusable(address) {
                                bad_slices.insert(Problem {
                                    object: ObjectId::slice(slice),
                                    reason: "UnusableEndpoint",
                                    message: format!("address {address} {why}, endpoint skipped"),
                                });
                                continue;
                            }
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
            // tcp and http probes speak TCP: a UDP or SCTP port is checked only through a
            // health port (shoal.io/health-port); otherwise the endpoints' readiness alone
            // decides (a TCP probe of a UDP-only backend drained every one of them).
            health: settings
                .health
                .clone()
                .filter(|h| protocol == shoal_dataplane::model::Protocol::Tcp || h.port.is_some()),
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

/// Why the Service's ports cannot all be served: two with one number and protocol (one VIP
/// port, two sets of backends), or one name twice (the slices' ports are matched by name).
fn duplicate_port(svc: &Service) -> Option<String> {
    let ports = svc.spec.as_ref().and_then(|s| s.ports.as_ref())?;
    let mut numbers = BTreeMap::new();
    let mut names = BTreeSet::new();
    for p in ports {
        let protocol = p.protocol.as_deref().unwrap_or("TCP");
        if let Some(other) = numbers.insert((p.port, protocol), p.name.as_deref().unwrap_or("")) {
            return Some(format!(
                "port {}/{protocol} is listed twice (named {:?} and {:?})",
                p.port,
                other,
                p.name.as_deref().unwrap_or("")
            ));
        }
        if let Some(name) = p.name.as_deref() {
            if !names.insert(name) {
                return Some(format!("port name {name:?} is used twice"));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests;
