//! Writing back to the API server: `status.loadBalancer.ingress` and Events for problems.
//!
//! Only two verbs are used, matching the ClusterRole in manifests/: `update` on
//! `services/status` (a PUT carrying the resourceVersion we read, so a stale copy gets a
//! 409 and is retried on the next pass instead of clobbering a newer write) and `create` on
//! `events.k8s.io` events. Deciding what to write is pure; [`StatusWriter`] does the calls.

use super::translate::{status_ips, Problem};
use k8s_openapi::api::core::v1::{
    LoadBalancerIngress, LoadBalancerStatus, ObjectReference, Service, ServiceStatus,
};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Shown as the Event source; also the prefix of every annotation.
pub const REPORTING_CONTROLLER: &str = "shoal.io/lb";

/// The Service with its status rewritten to show exactly `vip`, or `None` when it already does.
pub fn with_vip(svc: &Service, vip: IpAddr) -> Option<Service> {
    if status_ips(svc) == [vip] {
        return None;
    }
    let mut updated = svc.clone();
    let status = updated.status.get_or_insert_with(ServiceStatus::default);
    status.load_balancer = Some(LoadBalancerStatus {
        ingress: Some(vec![LoadBalancerIngress {
            ip: Some(vip.to_string()),
            // The VIP is a real address on the LB replicas: in-cluster clients should send
            // their traffic to it too rather than short-cutting through kube-proxy.
            ip_mode: Some("VIP".to_string()),
            ..Default::default()
        }]),
    });
    Some(updated)
}

/// The `events.k8s.io/v1` Event describing `problem`.
pub fn event_for(problem: &Problem, reporting_instance: &str, now: Timestamp) -> Event {
    let o = &problem.object;
    let stamp = now.as_nanosecond() as u128;
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{}.{:x}", o.name, stamp)),
            namespace: Some(o.namespace.clone()),
            ..Default::default()
        },
        event_time: Some(MicroTime(now)),
        type_: Some("Warning".into()),
        reason: Some(problem.reason.to_string()),
        action: Some("Translate".into()),
        // The API server caps notes at 1 kB.
        note: Some(problem.message.chars().take(1000).collect()),
        regarding: Some(ObjectReference {
            api_version: Some(o.api_version.to_string()),
            kind: Some(o.kind.to_string()),
            namespace: Some(o.namespace.clone()),
            name: Some(o.name.clone()),
            uid: o.uid.clone(),
            ..Default::default()
        }),
        reporting_controller: Some(REPORTING_CONTROLLER.into()),
        reporting_instance: Some(reporting_instance.chars().take(128).collect()),
        ..Default::default()
    }
}

/// Problems present now that were not present on the previous pass: each is reported once
/// while it lasts, and again if it goes away and comes back.
pub fn new_problems<'a>(previous: &BTreeSet<Problem>, current: &'a [Problem]) -> Vec<&'a Problem> {
    current.iter().filter(|p| !previous.contains(p)).collect()
}

pub struct StatusWriter {
    client: Client,
    reporting_instance: String,
    /// `namespace/name` -> (resourceVersion we wrote over, VIP), so an unchanged object is
    /// not written again while the watch has not yet delivered our own update.
    written: BTreeMap<String, (Option<String>, IpAddr)>,
    reported: BTreeSet<Problem>,
}

impl StatusWriter {
    pub fn new(client: Client, reporting_instance: String) -> Self {
        StatusWriter {
            client,
            reporting_instance,
            written: BTreeMap::new(),
            reported: BTreeSet::new(),
        }
    }

    /// Brings every served Service's status in line with `vips`; failures are logged and
    /// retried on the next pass.
    pub async fn sync_statuses(&mut self, services: &[Service], vips: &BTreeMap<String, IpAddr>) {
        self.written.retain(|k, _| vips.contains_key(k));
        for svc in services {
            let (Some(ns), Some(name)) = (&svc.metadata.namespace, &svc.metadata.name) else {
                continue;
            };
            let key = format!("{ns}/{name}");
            let Some(&vip) = vips.get(&key) else { continue };
            let Some(updated) = with_vip(svc, vip) else {
                continue;
            };
            let rv = svc.metadata.resource_version.clone();
            if self.written.get(&key) == Some(&(rv.clone(), vip)) {
                continue;
            }
            let api: Api<Service> = Api::namespaced(self.client.clone(), ns);
            match api
                .replace_status(name, &PostParams::default(), &updated)
                .await
            {
                Ok(_) => {
                    tracing::info!(service = %key, %vip, "wrote status.loadBalancer.ingress");
                    self.written.insert(key, (rv, vip));
                }
                Err(e) => {
                    tracing::warn!(service = %key, %vip, error = %e, "status write failed, will retry");
                }
            }
        }
    }

    /// Logs and records an Event for each problem that is new since the last pass.
    pub async fn report(&mut self, problems: &[Problem]) {
        let fresh: Vec<Problem> = new_problems(&self.reported, problems)
            .into_iter()
            .cloned()
            .collect();
        self.reported = problems.iter().cloned().collect();
        for p in fresh {
            tracing::warn!(
                kind = p.object.kind,
                namespace = %p.object.namespace,
                name = %p.object.name,
                reason = p.reason,
                "{}",
                p.message
            );
            let ev = event_for(&p, &self.reporting_instance, Timestamp::now());
            let api: Api<Event> = Api::namespaced(self.client.clone(), &p.object.namespace);
            if let Err(e) = api.create(&PostParams::default(), &ev).await {
                tracing::warn!(error = %e, reason = p.reason, "could not record Event");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::kubernetes::translate::ObjectId;

    #[test]
    fn status_is_rewritten_only_when_it_differs() {
        let vip: IpAddr = "203.0.113.4".parse().unwrap();
        let svc = Service::default();
        let updated = with_vip(&svc, vip).expect("empty status needs a write");
        assert_eq!(status_ips(&updated), [vip]);
        assert!(with_vip(&updated, vip).is_none());
        assert!(with_vip(&updated, "203.0.113.5".parse().unwrap()).is_some());
    }

    #[test]
    fn events_point_at_the_object_and_problems_report_once() {
        let p = Problem {
            object: ObjectId {
                kind: "Service",
                api_version: "v1",
                namespace: "ns".into(),
                name: "web".into(),
                uid: Some("u1".into()),
            },
            reason: "VipConflict",
            message: "x".repeat(5000),
        };
        let ev = event_for(&p, "shoal-0", Timestamp::UNIX_EPOCH);
        let r = ev.regarding.unwrap();
        assert_eq!(
            (r.kind.as_deref(), r.name.as_deref(), r.uid.as_deref()),
            (Some("Service"), Some("web"), Some("u1"))
        );
        assert_eq!(ev.note.unwrap().len(), 1000);
        assert_eq!(ev.metadata.namespace.as_deref(), Some("ns"));

        let mut seen = BTreeSet::new();
        assert_eq!(new_problems(&seen, std::slice::from_ref(&p)).len(), 1);
        seen.insert(p.clone());
        assert!(new_problems(&seen, std::slice::from_ref(&p)).is_empty());
    }
}
