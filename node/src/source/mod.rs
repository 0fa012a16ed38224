//! Rule sources: where the publisher learns the rule table from.
//!
//! A source runs only on the publisher, from the moment it gains the role until it loses it
//! (its cancellation token fires). It sends a complete, canonical table each time the content
//! changes; bad input is reported through [`SourceStatus`] and never replaces the last good table.

pub mod kubernetes;
pub mod static_file;

use crate::config::Source;
use crate::table::RuleTable;
use serde::Serialize;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the admin API shows about this node's source.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SourceState {
    /// Whether the source is running (only on the publisher).
    pub running: bool,
    /// The last problem with the input, if the newest input was rejected.
    pub last_error: Option<String>,
    /// Unix time (ms) of the last table the source produced.
    pub last_table_unix_ms: Option<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct SourceStatus(Arc<Mutex<SourceState>>);

impl SourceStatus {
    pub fn get(&self) -> SourceState {
        self.lock().clone()
    }
    pub fn set_running(&self, running: bool) {
        self.lock().running = running;
    }
    pub fn record_error(&self, message: String) {
        self.lock().last_error = Some(message);
    }
    pub fn record_table(&self) {
        let mut s = self.lock();
        s.last_error = None;
        s.last_table_unix_ms = Some(crate::unix_ms());
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, SourceState> {
        // A poisoned lock only means a panic elsewhere mid-update of plain fields.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Starts the configured source; it stops when `cancel` fires.
pub fn spawn(
    source: &Source,
    out: watch::Sender<Option<RuleTable>>,
    status: SourceStatus,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    match source.clone() {
        Source::Static { rules } => tokio::spawn(static_file::run(rules, out, status, cancel)),
        Source::Kubernetes(settings) => tokio::spawn(async move {
            let cfg = kubernetes::KubernetesConfig {
                load_balancer_class: settings.lb_class,
                vip_pools: settings.vip_pools,
                kubeconfig: settings.kubeconfig,
            };
            status.set_running(true);
            if let Err(e) = kubernetes::run(cfg, out, cancel).await {
                tracing::error!(error = %format!("{e:#}"), "kubernetes source stopped");
                status.record_error(format!("{e:#}"));
            }
            status.set_running(false);
        }),
    }
}
