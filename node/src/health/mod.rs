//! Shared backend health: each backend is probed by a few replicas, the opinions travel in
//! gossip, and every replica computes the same up/down verdict from its view.
//!
//! Pure core: `assign` (who checks what), `hysteresis` (one checker's opinion), `duty` (one
//! checked backend: its check, opinion and timing), `verdict` (the shared decision), `wire`
//! (gossip encoding), `gossiped` (the opinions read, decoded once), `judged` (the verdicts kept,
//! per service), `report` (what the admin API shows). Shell: `prober` (TCP/HTTP probes),
//! `runner` (the loop), `board` (the mesh trait) with `mesh_board` and the in-memory twin
//! `memory_board`. Not here: turning verdicts into dataplane weights
//! (the daemon does that from `HealthHandle::verdicts`). See docs/health.md.

pub mod assign;
pub mod board;
mod duty;
pub mod gossiped;
pub mod hysteresis;
pub mod judged;
pub mod memory_board;
pub mod mesh_board;
pub mod metrics;
pub mod prober;
pub mod report;
pub mod result;
pub mod returns;
pub mod runner;
pub mod verdict;
pub mod wire;

pub use board::HealthBoard;
pub use hysteresis::CheckState;
pub use memory_board::{MemoryBoard, MemoryCluster};
pub use mesh_board::MeshBoard;
pub use report::HealthReport;
pub use result::ProbeResult;
pub use verdict::{BackendRef, Verdict, Verdicts};

use crate::table::RuleTable;
use prometheus_client::registry::Registry;
use shoal_gossip::Stamped;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// K: how many live members probe each backend.
    pub checkers_per_backend: usize,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            checkers_per_backend: 2,
        }
    }
}

/// What the daemon and the admin API hold on to. Cheap to clone.
#[derive(Clone)]
pub struct HealthHandle {
    verdicts: watch::Receiver<Arc<Verdicts>>,
    judged: Arc<Mutex<Arc<judged::Judged>>>,
}

impl HealthHandle {
    /// Changes only when some backend's verdict changes.
    pub fn verdicts(&self) -> watch::Receiver<Arc<Verdicts>> {
        self.verdicts.clone()
    }

    /// The latest per-backend view, built from the verdicts as the runner last judged them: a
    /// pass (at least every 100 ms) judges again what a change of the gossiped opinions, the
    /// live set or the table touches.
    pub fn report(&self) -> HealthReport {
        self.report_selected(&report::Selection::default()).0
    }

    /// [`Self::report`] of what `selection` asks for, with the counts over what it covers.
    pub fn report_selected(
        &self,
        selection: &report::Selection,
    ) -> (HealthReport, report::HealthSummary) {
        let judged = self
            .judged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        report::build(&judged, selection)
    }
}

/// The tables the runner checks: the mesh's head as it is (`Mesh::subscribe`), shared, not
/// copied (at 10,000 Services a copy of the table is tens of MiB on every replica).
pub type TableFeed = watch::Receiver<Option<Arc<Stamped<RuleTable>>>>;

/// A table that did not come from the mesh (tests, benchmarks), as the feed carries it.
pub fn unstamped(doc: RuleTable) -> Arc<Stamped<RuleTable>> {
    Arc::new(Stamped {
        version: shoal_gossip::Version {
            epoch: 0,
            seq: 0,
            origin: shoal_gossip::NodeId::new(""),
        },
        digest: String::new(),
        size_bytes: 0,
        doc,
    })
}

/// Lowers this thread's priority (nice 9): with more backends than the CPU can probe in their
/// interval, the probes took every cycle the process (or its pod's CPU limit) had, the
/// mesh's heartbeats went out late and live members were judged dead, which moved checks and
/// the publisher role and made more work (a probe: 17 false deaths in 2 minutes at 32,000
/// checked backends on three replicas, none of them stalled). Membership comes first; the
/// probes take what is left, and fall behind as `shoal_health_probes_waiting` says.
fn yield_to_the_mesh() {
    use thread_priority::{set_current_thread_priority, ThreadPriority, ThreadPriorityValue};
    // 25 of 0-99 is nice 9 under the normal policies (the crate maps the range onto nice).
    let lower = ThreadPriorityValue::try_from(25u8).map(ThreadPriority::Crossplatform);
    match lower.map(set_current_thread_priority) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = ?e, "cannot lower the health checks' thread priority"),
        Err(e) => tracing::warn!(error = ?e, "no such thread priority"),
    }
}

/// Starts the health runner on a thread of its own; it stops (and withdraws this node's
/// opinions) when `cancel` fires. Metrics are registered into `registry`.
///
/// Its own thread, as the admin API has: at tens of thousands of backends a pass and the
/// probes' completions keep a runtime busy, and on the daemon's runtime they starved the mesh's
/// control loop past its stall bound (one Service of 50,000 checked endpoints made the
/// publisher lose and retake its role every few seconds). The operating system shares the
/// CPU between threads; a runtime would make the control loop wait behind every probe.
pub fn spawn(
    cfg: HealthConfig,
    board: Arc<dyn HealthBoard>,
    tables: TableFeed,
    registry: &mut Registry,
    cancel: CancellationToken,
) -> std::io::Result<HealthHandle> {
    let metrics = metrics::HealthMetrics::register(registry);
    let (verdicts_tx, verdicts_rx) = watch::channel(Arc::new(Verdicts::default()));
    let judged = Arc::new(Mutex::new(Arc::new(judged::Judged::default())));
    let runner = runner::Runner {
        k: cfg.checkers_per_backend.max(1),
        board,
        tables,
        metrics,
        verdicts_tx,
        judged: judged.clone(),
        cancel,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("shoal-health".into())
        .spawn(move || {
            yield_to_the_mesh();
            rt.block_on(runner.run())
        })?;
    Ok(HealthHandle {
        verdicts: verdicts_rx,
        judged,
    })
}
