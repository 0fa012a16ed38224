//! What the translation reads from one Service's spec and status: whether it is ours, its
//! families, ports, protocol, session affinity and source ranges.

use super::Settings;
use crate::source::kubernetes::annotations::ServiceSettings;
use crate::source::kubernetes::vip::Family;
use k8s_openapi::api::core::v1::Service;
use shoal_dataplane::model::Protocol;
use std::collections::BTreeSet;
use std::net::IpAddr;

/// Whether this Service is one Shoal should serve.
pub fn is_ours(svc: &Service, load_balancer_class: &str) -> bool {
    svc.spec.as_ref().is_some_and(|s| {
        s.type_.as_deref() == Some("LoadBalancer")
            && s.load_balancer_class.as_deref() == Some(load_balancer_class)
    })
}

/// A Service that stopped being a `LoadBalancer` (its class is ours or was cleared with the
/// type) but still shows an address from one of our pools: we wrote it, we clear it.
pub(super) fn left_the_class(svc: &Service, cfg: &Settings) -> bool {
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

pub(super) fn parse_protocol(p: Option<&str>) -> Option<Protocol> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        "SCTP" => Some(Protocol::Sctp),
        _ => None,
    }
}

/// `spec.ipFamilies` in order; without it the family of the request, else IPv4 (the API
/// server always fills the field, objects written by hand may not).
pub(super) fn families(svc: &Service, settings: &ServiceSettings) -> Vec<Family> {
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

pub(super) fn ports_of(svc: &Service) -> BTreeSet<(String, u16)> {
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
/// only: `mh` without `mh-port` (what ClientIP turns the default into) or `sh` without
/// `sh-port`; each replica then picks the same backend for a client, with no timeout
/// (`timeoutSeconds` is not used: the mapping lasts as long as the set of endpoints). Anything
/// else is reported.
pub(super) fn affinity_problem(svc: &Service, settings: &ServiceSettings) -> Option<String> {
    let spec = svc.spec.as_ref()?;
    if spec.session_affinity.as_deref() != Some("ClientIP") {
        return None;
    }
    let hashes_client = match settings.scheduler.as_str() {
        "mh" | "sh" => !settings.flags.port,
        _ => false,
    };
    (!hashes_client).then(|| {
        format!(
            "sessionAffinity ClientIP needs a scheduler that hashes the client address only \
             (shoal.io/scheduler=mh without shoal.io/mh-port, or sh without shoal.io/sh-port); \
             scheduler {} with the port flag {} does not keep a client on one endpoint",
            settings.scheduler, settings.flags.port
        )
    })
}

/// The legacy annotation kube-proxy and cloud providers still read when
/// `spec.loadBalancerSourceRanges` is empty (comma-separated CIDRs).
pub const SOURCE_RANGES_ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";

/// `spec.loadBalancerSourceRanges` (else the legacy annotation) as networks, host bits
/// cleared (the API server accepts `192.0.2.7/24`), sorted; ranges of both families are kept
/// and each VIP uses those of its own family (a VIP with none of its family accepts nobody).
pub(super) fn source_ranges(svc: &Service) -> Result<Vec<ipnet::IpNet>, String> {
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
