//! Writing back to the API server: `status.loadBalancer.ingress` and Events for problems.
//!
//! Only these verbs are used, matching the ClusterRole in manifests/: `update` on
//! `services/status` (a PUT carrying the resourceVersion we read, so a stale copy gets a
//! 409 and is retried on the next pass instead of clobbering a newer write), `patch` on
//! `shoalpools/status` (usage), and `create` on `events.k8s.io` events. Deciding what to
//! write is pure; [`StatusWriter`] does the calls.

use super::metrics::{EventLabels, KubernetesMetrics, PoolLabel, WriteLabels};
use super::pools::{self, PoolStatus};
use super::translate::{status_ips, ObjectId, Problem};
use k8s_openapi::api::core::v1::{
    LoadBalancerIngress, LoadBalancerStatus, ObjectReference, Service, ServiceStatus,
};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::Client;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Shown as the Event source; also the prefix of every annotation.
pub const REPORTING_CONTROLLER: &str = "shoal.io/lb";

/// `status.loadBalancer.ingress[].ipMode` Shoal writes (Kubernetes >= 1.30, KEP-1860).
///
/// `Proxy`, not `VIP`: with `VIP`, kube-proxy installs the address on every node and sends
/// traffic for it straight to the endpoints, so VIP traffic that reaches any node (including
/// in-cluster clients) would bypass Shoal. With `Proxy` kube-proxy leaves the VIP alone and
/// packets go to the LB replicas that announce it.
pub const IP_MODE: &str = "Proxy";

/// One `status.loadBalancer.ingress` entry.
fn ingress(vip: IpAddr) -> LoadBalancerIngress {
    LoadBalancerIngress {
        ip: Some(vip.to_string()),
        ip_mode: Some(IP_MODE.to_string()),
        ..Default::default()
    }
}

fn status_ip_modes(svc: &Service) -> Vec<Option<&str>> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|ing| ing.iter().map(|i| i.ip_mode.as_deref()).collect())
        .unwrap_or_default()
}

/// The Service with its status rewritten to show exactly `vips` (none: an empty
/// `loadBalancer`), or `None` when it already does. A status with another ipMode (written by
/// an older Shoal) is rewritten.
pub fn with_vips(svc: &Service, vips: &[IpAddr]) -> Option<Service> {
    // No mode at all is an API server that drops the field (before Kubernetes 1.30, or with
    // the LoadBalancerIPMode gate off): writing it again changes nothing there, and every
    // change to the Service wrote the status and sent a VipAssigned Event again (a probe).
    // A mode that is there and wrong (`VIP`, written by an earlier release) is rewritten.
    let modes_right = status_ip_modes(svc)
        .iter()
        .all(|m| m.is_none() || *m == Some(IP_MODE));
    if status_ips(svc) == vips && modes_right {
        let has_entries = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .is_some_and(|i| !i.is_empty());
        // Entries without a parsable IP (hostnames) are someone else's: leave them.
        if !vips.is_empty() || !has_entries {
            return None;
        }
    }
    let mut updated = svc.clone();
    let status = updated.status.get_or_insert_with(ServiceStatus::default);
    status.load_balancer = Some(LoadBalancerStatus {
        ingress: (!vips.is_empty()).then(|| vips.iter().copied().map(ingress).collect()),
    });
    Some(updated)
}

/// Event type for a reason: the informational ones are `Normal`, problems `Warning`.
pub fn event_type(reason: &str) -> &'static str {
    match reason {
        "VipAssigned" | "VipReleased" | "ExternalTrafficPolicyLocal" => "Normal",
        _ => "Warning",
    }
}

/// The longest object name the API server accepts (a DNS subdomain).
const NAME_LEN_MAX: usize = 253;

/// `<object>.<stamp>`, the object's name cut so that the whole stays a valid name: a slice's
/// name may itself be 253 characters long, and an Event the API server refuses is lost.
fn event_name(object: &str, stamp: &str) -> String {
    let room = NAME_LEN_MAX.saturating_sub(stamp.len() + 1);
    let cut: String = object.chars().take(room).collect();
    // A label may not end in '-' or '.' (the cut may leave one before our '.').
    let cut = cut.trim_end_matches(['-', '.']);
    format!("{cut}.{stamp}")
}

/// The `events.k8s.io/v1` Event describing `problem`.
pub fn event_for(problem: &Problem, reporting_instance: &str, now: Timestamp) -> Event {
    let o = &problem.object;
    let stamp = format!("{:x}", now.as_nanosecond() as u128);
    Event {
        metadata: ObjectMeta {
            name: Some(event_name(&o.name, &stamp)),
            namespace: Some(if o.namespace.is_empty() {
                "default".to_string()
            } else {
                o.namespace.clone()
            }),
            ..Default::default()
        },
        event_time: Some(MicroTime(now)),
        type_: Some(event_type(problem.reason).into()),
        reason: Some(problem.reason.to_string()),
        action: Some(
            match problem.reason {
                "VipAssigned" => "Assign",
                "VipReleased" => "Release",
                _ => "Translate",
            }
            .into(),
        ),
        // The API server caps notes at 1 kB.
        note: Some(problem.message.chars().take(1000).collect()),
        regarding: Some(ObjectReference {
            api_version: Some(o.api_version.to_string()),
            kind: Some(o.kind.to_string()),
            namespace: (!o.namespace.is_empty()).then(|| o.namespace.clone()),
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

fn list(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

pub struct StatusWriter {
    client: Client,
    reporting_instance: String,
    metrics: KubernetesMetrics,
    /// `namespace/name` -> (resourceVersion we wrote over, VIPs), so an unchanged object is
    /// not written again while the watch has not yet delivered our own update.
    written: BTreeMap<String, (Option<String>, Vec<IpAddr>)>,
    /// What each served Service showed after the last pass, to tell when one is deleted.
    showing: BTreeMap<String, (ObjectId, Vec<IpAddr>)>,
    pool_status: BTreeMap<String, PoolStatus>,
    /// Pools with a series in the pool gauges: a deleted pool's goes (the audit of 2026-12-06
    /// found deleted pools exported for good, and by former publishers too).
    gauged_pools: BTreeSet<String>,
    reported: BTreeSet<Problem>,
    /// Status writes of the last `sync_statuses` that failed (retried by the write loop).
    pub failed_writes: usize,
}

impl Drop for StatusWriter {
    /// Only the publisher exports the pool gauges ("zero elsewhere"): a node that stops
    /// publishing stops the writer, and its series go with it.
    fn drop(&mut self) {
        for pool in std::mem::take(&mut self.gauged_pools) {
            self.remove_pool_series(&pool);
        }
    }
}

impl StatusWriter {
    pub fn new(client: Client, reporting_instance: String, metrics: KubernetesMetrics) -> Self {
        StatusWriter {
            client,
            reporting_instance,
            metrics,
            written: BTreeMap::new(),
            showing: BTreeMap::new(),
            pool_status: BTreeMap::new(),
            gauged_pools: BTreeSet::new(),
            reported: BTreeSet::new(),
            failed_writes: 0,
        }
    }

    /// Brings every Service's status in line with `vips` (and clears those in `clear`);
    /// failures are logged and retried on the next pass. A changed status is also a Normal
    /// Event (`VipAssigned` / `VipReleased`), and so is a served Service that was deleted.
    /// At most `budget` writes per call, so that a first pass over thousands of Services does
    /// not hold up the next table; returns whether writes are left for another pass.
    pub async fn sync_statuses(
        &mut self,
        services: &[std::sync::Arc<Service>],
        vips: &BTreeMap<String, Vec<IpAddr>>,
        clear: &BTreeSet<String>,
        budget: usize,
    ) -> bool {
        let mut attempts = 0usize;
        let mut more = false;
        self.failed_writes = 0;
        self.written
            .retain(|k, _| vips.contains_key(k) || clear.contains(k));
        let mut present = BTreeSet::new();
        let mut notes = Vec::new();
        for svc in services.iter().map(|s| &**s) {
            let (Some(ns), Some(name)) = (&svc.metadata.namespace, &svc.metadata.name) else {
                continue;
            };
            let key = format!("{ns}/{name}");
            present.insert(key.clone());
            let want: &[IpAddr] = match vips.get(&key) {
                Some(v) => v,
                None if clear.contains(&key) => &[],
                None => continue,
            };
            let Some(updated) = with_vips(svc, want) else {
                if !want.is_empty() {
                    self.showing
                        .insert(key, (ObjectId::service(svc), want.to_vec()));
                }
                continue;
            };
            let rv = svc.metadata.resource_version.clone();
            if self.written.get(&key) == Some(&(rv.clone(), want.to_vec())) {
                continue;
            }
            if attempts >= budget {
                more = true;
                continue;
            }
            attempts += 1;
            let api: Api<Service> = Api::namespaced(self.client.clone(), ns);
            let before = status_ips(svc);
            match api
                .replace_status(name, &PostParams::default(), &updated)
                .await
            {
                Ok(_) => {
                    self.count_write("Service", "ok");
                    tracing::info!(service = %key, vips = %list(want), "wrote status.loadBalancer.ingress");
                    self.written.insert(key.clone(), (rv, want.to_vec()));
                    let object = ObjectId::service(svc);
                    if want.is_empty() {
                        self.showing.remove(&key);
                        notes.push(Problem {
                            object,
                            reason: "VipReleased",
                            message: format!("released {}", list(&before)),
                        });
                    } else {
                        self.showing
                            .insert(key.clone(), (object.clone(), want.to_vec()));
                        notes.push(Problem {
                            object,
                            reason: "VipAssigned",
                            message: format!("assigned {}", list(want)),
                        });
                    }
                }
                Err(e) => {
                    let conflict = matches!(&e, kube::Error::Api(r) if r.code == 409);
                    self.count_write("Service", if conflict { "conflict" } else { "error" });
                    self.failed_writes += 1;
                    tracing::warn!(service = %key, vips = %list(want), error = %e, "status write failed, will retry");
                }
            }
        }
        // Served Services that are gone: their addresses are free again.
        let gone: Vec<String> = self
            .showing
            .keys()
            .filter(|k| !present.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some((object, ips)) = self.showing.remove(&key) {
                notes.push(Problem {
                    object,
                    reason: "VipReleased",
                    message: format!("released {} (Service deleted)", list(&ips)),
                });
            }
        }
        for n in notes {
            self.send_event(&n).await;
        }
        more
    }

    /// Writes each ShoalPool's status when it changed since the last successful write.
    pub async fn sync_pools(&mut self, statuses: &BTreeMap<String, PoolStatus>) {
        let gone: Vec<String> = self
            .gauged_pools
            .iter()
            .filter(|p| !statuses.contains_key(*p))
            .cloned()
            .collect();
        for pool in gone {
            self.remove_pool_series(&pool);
            self.gauged_pools.remove(&pool);
        }
        self.gauged_pools.extend(statuses.keys().cloned());
        for (name, st) in statuses {
            self.metrics
                .pool_used
                .get_or_create(&PoolLabel { pool: name.clone() })
                .set(st.used as i64);
            self.metrics
                .pool_free
                .get_or_create(&PoolLabel { pool: name.clone() })
                .set(st.free as i64);
            if self.pool_status.get(name) == Some(st) {
                continue;
            }
            let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &pool_resource());
            let patch = serde_json::json!({"status": st});
            match api
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    self.count_write(pools::KIND, "ok");
                    self.pool_status.insert(name.clone(), st.clone());
                }
                Err(e) => {
                    self.count_write(pools::KIND, "error");
                    tracing::warn!(pool = %name, error = %e, "ShoalPool status write failed, will retry");
                }
            }
        }
        self.pool_status.retain(|k, _| statuses.contains_key(k));
    }

    fn remove_pool_series(&self, pool: &str) {
        let label = PoolLabel { pool: pool.into() };
        self.metrics.pool_used.remove(&label);
        self.metrics.pool_free.remove(&label);
    }

    fn count_write(&self, kind: &'static str, result: &'static str) {
        self.metrics
            .status_writes
            .get_or_create(&WriteLabels { kind, result })
            .inc();
    }

    async fn send_event(&self, p: &Problem) {
        let ev = event_for(p, &self.reporting_instance, Timestamp::now());
        let ns = ev.metadata.namespace.clone().unwrap_or_default();
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        let result = match api.create(&PostParams::default(), &ev).await {
            Ok(_) => "ok",
            Err(e) => {
                tracing::warn!(error = %e, reason = p.reason, "could not record Event");
                "error"
            }
        };
        self.metrics
            .events
            .get_or_create(&EventLabels {
                r#type: event_type(p.reason),
                reason: p.reason,
                result,
            })
            .inc();
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
            self.send_event(&p).await;
        }
    }
}

/// The ShoalPool resource, for untyped access.
pub fn pool_resource() -> ApiResource {
    ApiResource {
        group: pools::GROUP.into(),
        version: pools::VERSION.into(),
        api_version: format!("{}/{}", pools::GROUP, pools::VERSION),
        kind: pools::KIND.into(),
        plural: pools::PLURAL.into(),
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
        let updated = with_vips(&svc, &[vip]).expect("empty status needs a write");
        assert_eq!(status_ips(&updated), [vip]);
        assert!(with_vips(&updated, &[vip]).is_none());
        assert!(with_vips(&updated, &["203.0.113.5".parse().unwrap()]).is_some());
        let cleared = with_vips(&updated, &[]).expect("clearing needs a write");
        assert!(status_ips(&cleared).is_empty());
        assert!(with_vips(&cleared, &[]).is_none());
        assert!(with_vips(&svc, &[]).is_none(), "nothing to clear");
    }

    #[test]
    fn status_says_ip_mode_proxy_and_upgrades_an_old_vip_mode() {
        let vip: IpAddr = "203.0.113.4".parse().unwrap();
        let updated = with_vips(&Service::default(), &[vip]).unwrap();
        assert_eq!(status_ip_modes(&updated), [Some("Proxy")]);

        // What Shoal <= 0.1 wrote: same address, ipMode VIP. kube-proxy would short-circuit it.
        let old = Service {
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(vec![LoadBalancerIngress {
                        ip: Some(vip.to_string()),
                        ip_mode: Some("VIP".into()),
                        ..Default::default()
                    }]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let fixed = with_vips(&old, &[vip]).expect("an ipMode VIP status must be rewritten");
        assert_eq!(status_ips(&fixed), [vip]);
        assert_eq!(
            status_ip_modes(&fixed),
            [Some("Proxy")],
            "one entry, mode Proxy"
        );
        assert!(with_vips(&fixed, &[vip]).is_none());

        // An API server that drops ipMode (before 1.30) keeps the address without a mode:
        // written once, not again on every change to the Service.
        let mut dropped = fixed.clone();
        for i in dropped
            .status
            .as_mut()
            .and_then(|s| s.load_balancer.as_mut())
            .and_then(|lb| lb.ingress.as_mut())
            .into_iter()
            .flatten()
        {
            i.ip_mode = None;
        }
        assert!(with_vips(&dropped, &[vip]).is_none());
        assert!(with_vips(&dropped, &["203.0.113.5".parse().unwrap()]).is_some());

        // Dual-stack: every entry says Proxy.
        let v6: IpAddr = "2001:db8::4".parse().unwrap();
        let both = with_vips(&Service::default(), &[vip, v6]).unwrap();
        assert_eq!(status_ip_modes(&both), [Some("Proxy"), Some("Proxy")]);
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
        assert_eq!(ev.type_.as_deref(), Some("Warning"));
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

    /// A slice's name may be 253 characters: its Event's name must still be one the API
    /// server accepts (an audit saw 271-character names refused, the Events lost).
    #[test]
    fn event_names_stay_valid_for_the_longest_object_names() {
        let long = format!("{}-{}", "a".repeat(200), "b".repeat(52));
        assert_eq!(long.len(), 253);
        let mut p = Problem {
            object: ObjectId {
                kind: "EndpointSlice",
                api_version: "discovery.k8s.io/v1",
                namespace: "ns".into(),
                name: long.clone(),
                uid: None,
            },
            reason: "UnusableEndpoint",
            message: "m".into(),
        };
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let name = event_for(&p, "shoal-0", now).metadata.name.unwrap();
        assert_eq!(name.len(), 253, "{name}");
        assert!(name.starts_with(&long[..200]));
        // The regarding reference keeps the whole name.
        let r = event_for(&p, "shoal-0", now).regarding.unwrap();
        assert_eq!(r.name.as_deref(), Some(long.as_str()));
        // A cut that would leave "-." drops the dash.
        let stamp_len = name.len() - name.rfind('.').unwrap();
        p.object.name = format!("{}-{}", "a".repeat(253 - stamp_len), "b".repeat(20));
        let name = event_for(&p, "shoal-0", now).metadata.name.unwrap();
        assert!(!name.contains("-."), "{name}");
        assert!(name.len() <= 253);
        // Short names are whole.
        p.object.name = "web".into();
        let name = event_for(&p, "shoal-0", now).metadata.name.unwrap();
        assert!(name.starts_with("web."), "{name}");
    }
}
