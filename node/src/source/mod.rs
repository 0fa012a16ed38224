//! Rule sources: where the publisher learns the rule table from.
//!
//! A source runs only on the publisher, from the moment it gains the role until it loses it
//! (its cancellation token fires). It sends a complete, canonical table each time the content
//! changes; bad input is reported through [`SourceStatus`] and never replaces the last good table.

pub mod kubernetes;
pub mod settle;
pub mod static_file;

use crate::config::Source;
use crate::table::RuleTable;
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The application key under which the publisher gossips its source's current problem, so
/// that every node's `/v1/cluster` and `shoal status` say why the head stands still.
pub const ERROR_KEY: &str = "source_error";
/// How a publish failure starts when it is gossiped as the source's problem.
pub const PUBLISH_ERROR_PREFIX: &str = "cannot publish: ";
/// The most of a problem's message that is gossiped (a rules error names a line and a field).
const SHARED_ERROR_CHARS: usize = 512;

/// What the admin API shows about this node's source.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SourceState {
    /// Whether the source is running (only on the publisher).
    pub running: bool,
    /// The last problem with the input, if the newest input was rejected.
    pub last_error: Option<String>,
    /// Unix time (ms) of the last table the source produced.
    pub last_table_unix_ms: Option<u64>,
    /// Why the source's last table could not be published (the mesh refused to stamp it:
    /// the epoch file cannot be written, say); `null` once one is.
    pub publish_error: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct SourceStatus {
    state: Arc<Mutex<SourceState>>,
    /// Distinct problems with the input (`shoal_source_errors_total`): a bad, oversized,
    /// half-written or unreadable rules file, or a failing Kubernetes source.
    pub errors: Counter,
}

impl SourceStatus {
    pub fn get(&self) -> SourceState {
        self.lock().clone()
    }
    pub fn set_running(&self, running: bool) {
        self.lock().running = running;
    }
    pub fn record_error(&self, message: String) {
        let mut s = self.lock();
        if s.last_error.as_deref() != Some(message.as_str()) {
            self.errors.inc();
        }
        s.last_error = Some(message);
    }
    /// The input is usable again (the API server answers), though no new table came of it.
    pub fn clear_error(&self) {
        self.lock().last_error = None;
    }
    pub fn record_table(&self) {
        let mut s = self.lock();
        s.last_error = None;
        s.last_table_unix_ms = Some(crate::unix_ms());
    }
    /// The last publish failed with `error`, or (`None`) succeeded.
    pub fn record_publish(&self, error: Option<String>) {
        self.lock().publish_error = error;
    }
    /// A table was produced while part of the input still fails (one watched kind of the
    /// Kubernetes source): the problem stays shown, for it is why the table may be stale.
    pub fn record_table_despite_error(&self) {
        self.lock().last_table_unix_ms = Some(crate::unix_ms());
    }
    /// Gossips the source's current problem (or its end) when it changed since `shared`, the
    /// last one gossiped.
    pub fn share_error(&self, mesh: &shoal_gossip::Mesh<RuleTable>, shared: &mut Option<String>) {
        let now = {
            let s = self.lock();
            let publish = s
                .publish_error
                .as_ref()
                .map(|e| format!("{PUBLISH_ERROR_PREFIX}{e}"));
            s.last_error
                .clone()
                .or(publish)
                .map(|e| shortened(&e, SHARED_ERROR_CHARS))
        };
        if now == *shared {
            return;
        }
        match &now {
            Some(e) => mesh.set_app_key(ERROR_KEY, e),
            None => mesh.delete_app_key(ERROR_KEY),
        }
        *shared = now;
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, SourceState> {
        // A poisoned lock only means a panic elsewhere mid-update of plain fields.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `text` in at most `max` characters: whole, or its start and its end around " ... ". The
/// end is kept because that is where the reason is ("path: line 3: field: why"); cutting the
/// tail off left only a long path (an operator's probe).
fn shortened(text: &str, max: usize) -> String {
    const GAP: &str = " ... ";
    let n = text.chars().count();
    if n <= max {
        return text.to_string();
    }
    let keep = max.saturating_sub(GAP.len());
    let head = keep / 3;
    let tail = keep - head;
    let start: String = text.chars().take(head).collect();
    let end: String = text.chars().skip(n - tail).collect();
    format!("{start}{GAP}{end}")
}

/// How a source task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceExit {
    /// Cancelled (the role moved or the node stops).
    Stopped,
    /// Stopped with an error; the daemon restarts it after a backoff.
    Failed(String),
    /// This node cannot do the publisher's work (e.g. the API server refuses it): the daemon
    /// gives up the role so the next node can try.
    GaveUp(String),
}

/// Starts the configured source; it stops when `cancel` fires.
/// The Kubernetes source from start to exit, with its status kept up to date.
async fn kubernetes_duty(
    settings: crate::config::KubernetesSettings,
    out: watch::Sender<Option<RuleTable>>,
    status: SourceStatus,
    metrics: kubernetes::KubernetesMetrics,
    cancel: CancellationToken,
) -> SourceExit {
    let cfg = settings.to_source_config();
    status.set_running(true);
    let exit = match kubernetes::run(cfg, out, cancel, metrics, status.clone()).await {
        Ok(()) => SourceExit::Stopped,
        Err(e) => {
            let message = format!("{e:#}");
            tracing::error!(error = %message, "kubernetes source stopped");
            status.record_error(message.clone());
            match e {
                kubernetes::SourceError::GaveUp(reason) => SourceExit::GaveUp(reason),
                kubernetes::SourceError::Other(_) => SourceExit::Failed(message),
            }
        }
    };
    status.set_running(false);
    exit
}

pub fn spawn(
    source: &Source,
    out: watch::Sender<Option<RuleTable>>,
    status: SourceStatus,
    metrics: kubernetes::KubernetesMetrics,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<SourceExit> {
    match source.clone() {
        Source::Static { rules } => tokio::spawn(async move {
            static_file::run(rules, out, status, cancel).await;
            SourceExit::Stopped
        }),
        Source::Kubernetes(settings) => {
            // Its own OS thread and runtime: decoding a relist of 20,000 objects and
            // translating them is seconds of CPU that must never hold a worker of the runtime
            // that drives the mesh (a stalled control loop costs the node its role).
            let (done, exit) = tokio::sync::oneshot::channel();
            let spawned = std::thread::Builder::new()
                .name("shoal-k8s-source".into())
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(1)
                        .thread_name("shoal-k8s-worker")
                        .enable_all()
                        .build();
                    let exit = match runtime {
                        Ok(rt) => {
                            rt.block_on(kubernetes_duty(settings, out, status, metrics, cancel))
                        }
                        Err(e) => SourceExit::Failed(format!("starting the source's runtime: {e}")),
                    };
                    let _ = done.send(exit);
                });
            tokio::spawn(async move {
                match spawned {
                    Ok(_) => exit.await.unwrap_or(SourceExit::Stopped),
                    Err(e) => SourceExit::Failed(format!("starting the source's thread: {e}")),
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_error_keeps_its_end_where_the_reason_is() {
        let path = format!("/{}/rules.toml", "deep/".repeat(200));
        let error = format!("{path}: line 7: service[0].port: invalid value 65536");
        let short = shortened(&error, SHARED_ERROR_CHARS);
        assert_eq!(short.chars().count(), SHARED_ERROR_CHARS);
        assert!(
            short.ends_with("line 7: service[0].port: invalid value 65536"),
            "{short}"
        );
        assert!(
            short.starts_with("/deep/deep/") && short.contains(" ... "),
            "{short}"
        );
        assert_eq!(shortened("short", SHARED_ERROR_CHARS), "short");
        // Characters, not bytes: never cut inside one.
        let wide = "é".repeat(1_000);
        assert_eq!(shortened(&wide, 20).chars().count(), 20);
    }

    /// A table made while one watched kind fails keeps that kind's error shown (publishing
    /// cleared it, and `/v1/node` said all was well while EndpointSlices were refused).
    #[test]
    fn a_table_despite_an_error_keeps_the_error() {
        let status = SourceStatus::default();
        status.record_error("watching the API server: EndpointSlice: 403".into());
        status.record_table_despite_error();
        let s = status.get();
        assert!(s.last_error.as_deref().is_some_and(|e| e.contains("403")));
        assert!(s.last_table_unix_ms.is_some());
        status.record_table();
        assert_eq!(status.get().last_error, None);
        assert_eq!(status.errors.get(), 1);
    }
}
