//! The publisher's loop: watch Services and EndpointSlices, translate, publish, write back.
//!
//! Thin shell around [`translate`](super::translate): watcher events update two caches, a
//! change arms a short debounce timer, and when it fires (and both kinds have been listed
//! once) the table is recomputed, sent if its content changed, statuses are written and new
//! problems reported. Cancellation drops the watch streams, which closes the connections.

use super::cache::ObjectCache;
use super::status::StatusWriter;
use super::translate::{self, Problem, Settings};
use super::KubernetesConfig;
use crate::table::RuleTable;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Bursts (a rollout touching many slices) collapse into one table; bounded so a single
/// change is still published quickly.
pub const DEBOUNCE_MS: u64 = 150;

pub async fn run_loop(
    client: Client,
    cfg: KubernetesConfig,
    out: watch::Sender<Option<RuleTable>>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let pools = super::vip::parse_pools(&cfg.vip_pools)?;
    let svc_api: Api<DynamicObject> =
        Api::all_with(client.clone(), &ApiResource::erase::<Service>(&()));
    let slice_api: Api<DynamicObject> =
        Api::all_with(client.clone(), &ApiResource::erase::<EndpointSlice>(&()));
    let strip = |o: &mut DynamicObject| o.metadata.managed_fields = None;
    let mut svc_events = watcher(svc_api, watcher::Config::default())
        .default_backoff()
        .map(move |e| e.map(|e| e.modify(strip)))
        .boxed();
    let mut slice_events = watcher(slice_api, watcher::Config::default())
        .default_backoff()
        .map(move |e| e.map(|e| e.modify(strip)))
        .boxed();

    let mut services: ObjectCache<Service> = ObjectCache::new("Service", "v1");
    let mut slices: ObjectCache<EndpointSlice> =
        ObjectCache::new("EndpointSlice", "discovery.k8s.io/v1");
    let instance = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "shoal".to_string());
    let mut writer = StatusWriter::new(client, instance);
    let mut due: Option<Instant> = None;
    tracing::info!(class = %cfg.load_balancer_class, pools = ?cfg.vip_pools, "kubernetes source started");

    loop {
        let ready = services.synced() && slices.synced();
        tokio::select! {
            _ = cancel.cancelled() => {
                tracing::info!("kubernetes source stopped: no longer publisher");
                return Ok(());
            }
            ev = svc_events.next() => match ev {
                Some(Ok(e)) => if services.apply(e) { arm(&mut due) },
                Some(Err(e)) => tracing::warn!(error = %e, "service watch error, retrying"),
                None => anyhow::bail!("service watch ended"),
            },
            ev = slice_events.next() => match ev {
                Some(Ok(e)) => if slices.apply(e) { arm(&mut due) },
                Some(Err(e)) => tracing::warn!(error = %e, "endpointslice watch error, retrying"),
                None => anyhow::bail!("endpointslice watch ended"),
            },
            _ = sleep_until(due), if ready && due.is_some() => {
                due = None;
                let svcs = services.objects();
                let t = translate::translate(&svcs, &slices.objects(), &Settings {
                    load_balancer_class: &cfg.load_balancer_class,
                    pools: &pools,
                });
                let mut problems: Vec<Problem> = t.problems;
                problems.extend(services.problems().cloned());
                problems.extend(slices.problems().cloned());
                problems.sort();
                let table = t.table;
                let count = table.services.len();
                let changed = out.send_if_modified(|cur| {
                    if cur.as_ref() == Some(&table) {
                        false
                    } else {
                        *cur = Some(table);
                        true
                    }
                });
                if changed {
                    tracing::info!(services = count, problems = problems.len(), "published rule table");
                }
                // Writes may be slow; the role can move meanwhile.
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = async {
                        writer.sync_statuses(&svcs, &t.vips).await;
                        writer.report(&problems).await;
                    } => {}
                }
            }
        }
    }
}

fn arm(due: &mut Option<Instant>) {
    due.get_or_insert_with(|| Instant::now() + Duration::from_millis(DEBOUNCE_MS));
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
