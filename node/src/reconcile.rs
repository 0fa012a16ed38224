//! The reconcile loop: bring this node's dataplane to the head, then report it applied.
//!
//! Runs on a new head, on a health verdict change, on the drain deadline the planner asks for,
//! and every resync interval (which repairs drift: entries changed behind Shoal's back). Only a
//! pass at least one resync interval after the last full read (or after an error) reads the
//! whole table back; the others plan against the reconciler's view of the kernel.
//! The dataplane is synchronous (netlink), so each pass runs on the blocking pool.

use crate::desired::{cut_protocols, desired_state, source_filters};
use crate::drains_file;
use crate::health::Verdicts;
use crate::metrics::{NodeMetrics, OpLabel, ResultLabel};
use crate::table::RuleTable;
pub use refused::Refused;
use serde::Serialize;
use shoal_dataplane::filter::{reconcile_filter, FilterChange, Firewall, SourceFilter};
use shoal_dataplane::{
    reconcile, reconcile_until, Actual, Dataplane, DataplaneError, Desired, Draining, Op, Pending,
    Reconciler, ServiceKey,
};
use shoal_gossip::{Mesh, Version};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The dataplane and its planner state, shared by the loop and the admin API's read-back.
pub struct Programmer {
    pub dataplane: Box<dyn Dataplane>,
    pub reconciler: Reconciler,
    /// Source ranges (nftables or memory), reconciled in the same pass.
    pub firewall: Box<dyn Firewall>,
    /// Services the kernel refused, left out until their retry.
    pub refused: Refused,
}

/// The programmer behind one lock. Reconcile passes come first: a pass that waits for the lock
/// says so (`passes_waiting`), and the admin API's read-back, which holds the lock for a whole
/// read (seconds at 10,000 services), gives way between two services and reads again after
/// the pass.
#[derive(Clone)]
pub struct SharedProgrammer {
    programmer: Arc<Mutex<Programmer>>,
    passes_waiting: Arc<AtomicUsize>,
    /// The dataplane's kind, known without the lock (a handler asking it waited for a whole
    /// read-back or pass).
    kind: &'static str,
}

/// How many times an admin read-back gives way to a pass before it reads to the end whatever
/// waits (so a stream of passes cannot starve it).
const ADMIN_READ_GIVES_WAY: usize = 3;

impl SharedProgrammer {
    pub fn new(
        dataplane: Box<dyn Dataplane>,
        firewall: Box<dyn Firewall>,
        drain: Duration,
    ) -> Self {
        let mut reconciler = Reconciler::new(drain);
        reconciler.set_cut_protocols(cut_protocols());
        Self::from_programmer(Programmer {
            dataplane,
            reconciler,
            firewall,
            refused: Refused::default(),
        })
    }

    pub fn from_programmer(p: Programmer) -> Self {
        SharedProgrammer {
            kind: p.dataplane.kind(),
            programmer: Arc::new(Mutex::new(p)),
            passes_waiting: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Programmer> {
        self.programmer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lock, for a reconcile pass: a read-back holding it gives way.
    fn lock_for_pass(&self) -> std::sync::MutexGuard<'_, Programmer> {
        self.passes_waiting.fetch_add(1, Ordering::SeqCst);
        let guard = self.lock();
        self.passes_waiting.fetch_sub(1, Ordering::SeqCst);
        guard
    }

    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// How often a pass reads the whole table back (and repairs drift); passes in between plan
    /// against the reconciler's view of the kernel.
    pub fn set_drift_check(&self, every: Duration) {
        self.lock().reconciler.set_drift_check(every);
    }

    /// Whether Shoal alone creates IPVS services here (removal then flushes without listing).
    pub fn set_ownership(&self, ownership: shoal_dataplane::TableOwnership) {
        self.lock().reconciler.set_ownership(ownership);
    }

    /// Takes up drains a previous process started (see `Reconciler::resume`).
    pub fn resume_drains(&self, drains: Vec<Draining>) {
        self.lock().reconciler.resume(drains, Instant::now());
    }

    /// The drains in progress, asked from the blocking pool: asked on the runtime, a worker
    /// waited for as long as an admin read-back held the lock (seconds at 10,000 services),
    /// and the mesh's control loop, on the same workers, stalled meanwhile. `None` if the
    /// blocking task did not finish (nothing is known then, not "no drains").
    pub async fn drains(&self) -> Option<Vec<Draining>> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.lock().reconciler.draining().collect())
            .await
            .ok()
    }

    /// Reads back what the dataplane holds and what still separates it from `desired`, with
    /// the drains in progress told apart (`Reconciler::pending`), under one lock so the two
    /// agree (blocking: call from the blocking pool).
    /// The read gives way to a reconcile pass waiting for the lock (up to
    /// `ADMIN_READ_GIVES_WAY` times), then starts again once the pass has the lock.
    pub fn read_pending_blocking(
        &self,
        desired: &Desired,
    ) -> Result<(Actual, Pending), DataplaneError> {
        let mut gave_way = 0;
        loop {
            let mut p = self.lock();
            let patient = gave_way < ADMIN_READ_GIVES_WAY;
            let stop = || patient && self.passes_waiting.load(Ordering::SeqCst) > 0;
            if let Some(actual) = p.dataplane.read_until(&stop)? {
                let pending = p.reconciler.pending(desired, &actual.view());
                return Ok((actual, pending));
            }
            drop(p);
            gave_way += 1;
            // The pass takes the lock next (it counts itself out once it holds it), and this
            // read waits on the lock until the pass is done.
            while self.passes_waiting.load(Ordering::SeqCst) > 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    pub async fn read_pending(
        &self,
        desired: Desired,
    ) -> Result<(Actual, Pending), DataplaneError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.read_pending_blocking(&desired))
            .await
            .unwrap_or_else(|e| Err(join_error(e)))
    }

    /// One pass: the source filters, then read, plan, apply (see [`program`]); its drift
    /// check gives way when `stop` turns true.
    pub async fn reconcile(
        &self,
        desired: Desired,
        filters: Vec<SourceFilter>,
        stop: impl Fn() -> bool + Send + 'static,
    ) -> Result<Pass, DataplaneError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut p = this.lock_for_pass();
            program(&mut p, desired, &filters, Instant::now(), &stop)
        })
        .await
        .unwrap_or_else(|e| Err(join_error(e)))
    }

    /// Removes everything this node programmed (`--cleanup-on-exit`), without draining.
    pub async fn clear(&self) -> Result<usize, DataplaneError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut p = this.lock_for_pass();
            p.reconciler = Reconciler::new(Duration::ZERO);
            let Programmer {
                dataplane,
                reconciler,
                firewall,
                ..
            } = &mut *p;
            let empty = Desired { services: vec![] };
            let report = reconcile(dataplane.as_mut(), reconciler, &empty, Instant::now());
            let filter = reconcile_filter(firewall.as_mut(), &[]);
            let removed = usize::from(filter? == FilterChange::Removed);
            Ok(report?.ops.len() + removed)
        })
        .await
        .unwrap_or_else(|e| Err(join_error(e)))
    }
}

mod refused;

/// One pass, synchronous: the source filters first, then the IPVS table.
///
/// The filter goes first so that a restricted service is never programmed before its filter.
/// When the filter cannot be programmed (no nf_tables module, no permission), the services with
/// source ranges are withheld, fail closed: left out of the desired table and deleted at once
/// (no drain) if the kernel holds them, since they must not be served unfiltered. Every other
/// service is programmed as usual and the pass succeeds, carrying the filter's error; the next
/// pass retries. A node whose table restricts nothing never needs nftables (`reconcile_filter`
/// does not fail when there is nothing to enforce). The error of the IPVS part fails the pass.
/// A service whose ops the kernel refuses (a scheduler it has no module for, a value it
/// rejects), or whose IPv6 VIP it cannot hold (IPv6 disabled on the interface), is set aside:
/// left out of the desired table, named in the pass, and tried again when the table changes it
/// or after `refused::RETRY_AFTER`; the pass goes on without it (the services of a refused
/// VIP, which went into IPVS before their address was refused, are deleted at once). Any other
/// refusal (another VIP op, a service no longer wanted, a destination deleted behind Shoal's
/// back, no permission, a shortage) fails the pass as before, and the next one reads the
/// kernel again.
/// A drift check due in this pass gives way when `stop` turns true (`Pass::gave_way`).
pub fn program(
    p: &mut Programmer,
    mut desired: Desired,
    filters: &[SourceFilter],
    now: Instant,
    stop: &dyn Fn() -> bool,
) -> Result<Pass, DataplaneError> {
    let Programmer {
        dataplane,
        reconciler,
        firewall,
        refused,
    } = p;
    let filter = reconcile_filter(firewall.as_mut(), filters);
    let withheld = match &filter {
        Ok(_) => BTreeSet::new(),
        Err(_) => restricted(filters),
    };
    desired.services.retain(|s| !withheld.contains(&s.key));
    refused.expire(&desired.services, now);
    let at_once = |refused: &Refused| -> BTreeSet<ServiceKey> {
        withheld
            .iter()
            .chain(refused.refused_with_vip())
            .cloned()
            .collect()
    };
    reconciler.set_delete_at_once(at_once(refused));
    desired.services.retain(|s| !refused.contains(&s.key));
    let mut set_aside = 0;
    let report = loop {
        let e = match reconcile_until(dataplane.as_mut(), reconciler, &desired, now, stop) {
            Ok(report) => break report,
            Err(e) => e,
        };
        let DataplaneError::OpsRefused {
            services,
            vips,
            other: false,
            ..
        } = &e
        else {
            return Err(e);
        };
        // Each service refused for what it asks, and every service on a VIP refused so.
        let asked: Vec<(&shoal_dataplane::Service, &String, bool)> = desired
            .services
            .iter()
            .filter_map(|s| match services.get(&s.key) {
                Some(why) => Some((s, why, false)),
                None => s
                    .key
                    .vip()
                    .and_then(|vip| vips.get(&vip))
                    .map(|why| (s, why, true)),
            })
            .collect();
        let wanted = |key: &ServiceKey| asked.iter().any(|(s, ..)| &s.key == key);
        let on = |vip: &IpAddr| asked.iter().any(|(s, ..)| s.key.vip() == Some(*vip));
        let tries = services.len() + vips.len();
        if asked.is_empty()
            || !services.keys().all(wanted)
            || !vips.keys().all(on)
            || set_aside + tries > refused::MAX_PER_PASS
        {
            return Err(e);
        }
        for (s, why, with_vip) in asked {
            if with_vip {
                refused.insert_with_vip(s, why.clone(), now);
            } else {
                refused.insert(s, why.clone(), now);
            }
        }
        set_aside += tries;
        reconciler.set_delete_at_once(at_once(refused));
        desired.services.retain(|s| !refused.contains(&s.key));
    };
    Ok(Pass {
        gave_way: report.gave_way,
        drained: report.drained,
        ops: report.ops,
        deadline: [reconciler.next_deadline(), refused.next_retry()]
            .into_iter()
            .flatten()
            .min(),
        draining_vips: reconciler.draining_vips(now),
        filter,
        unprogrammed: withheld.iter().chain(refused.keys()).cloned().collect(),
        withheld: withheld.into_iter().collect(),
        refused: refused.listed(),
    })
}

/// The services whose traffic the source filters restrict.
fn restricted(filters: &[SourceFilter]) -> BTreeSet<ServiceKey> {
    filters
        .iter()
        .filter(|f| !f.ranges.is_empty())
        .map(|f| ServiceKey::Addr {
            addr: f.vip,
            port: f.port,
            protocol: f.protocol,
        })
        .collect()
}

/// What one pass did.
pub struct Pass {
    /// Its drift check gave way to a head or verdict that arrived during the read: nothing
    /// was sent, the next pass (at once) brings the change in on the kept view.
    pub gave_way: bool,
    pub ops: Vec<Op>,
    /// How many of `ops` delete a destination or service whose drain ran out.
    pub drained: usize,
    pub deadline: Option<Instant>,
    /// VIPs of the services removed from the table that still drain here: announced until
    /// their drain ends, so that the flows the drain keeps still reach this node.
    pub draining_vips: BTreeSet<IpAddr>,
    /// What changed in the source filter, or why it could not be programmed.
    pub filter: Result<FilterChange, DataplaneError>,
    /// Services left out of the dataplane because their source filter failed.
    pub withheld: Vec<ServiceKey>,
    /// Services the kernel refused, left out until their retry, each with the refusal.
    pub refused: Vec<String>,
    /// The keys of both: the services not in the dataplane (their VIPs are not announced).
    pub unprogrammed: BTreeSet<ServiceKey>,
}

/// Why a pass on the head already applied changed something, for its log lines: deletions at
/// the end of a drain, a health verdict that changed, or else drift (entries changed behind
/// Shoal's back). Counts of ops; the ones not explained by a drain are put down to the health
/// change when there was one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResyncCause {
    pub drained: usize,
    pub health: usize,
    pub drift: usize,
}

pub fn resync_cause(ops: usize, drained: usize, verdicts_changed: bool) -> ResyncCause {
    let drained = drained.min(ops);
    let rest = ops - drained;
    if verdicts_changed {
        ResyncCause {
            drained,
            health: rest,
            drift: 0,
        }
    } else {
        ResyncCause {
            drained,
            health: 0,
            drift: rest,
        }
    }
}

fn join_error(e: tokio::task::JoinError) -> DataplaneError {
    DataplaneError::Io {
        context: "dataplane task".into(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// The last pass, for the admin API.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReconcileState {
    pub last_unix_ms: Option<u64>,
    pub last_ok: Option<bool>,
    pub last_error: Option<String>,
    pub last_ops: usize,
    pub applied: Option<crate::status::VersionRef>,
    pub passes: u64,
    /// Passes failed since the last one that succeeded.
    pub failed_in_a_row: u32,
    /// When the first of those failed (`None` while the last pass succeeded): a node whose
    /// passes keep failing does not serve what its table says
    /// (`announce::decide::dataplane_failing`).
    #[serde(skip)]
    pub failing_since: Option<Instant>,
    /// Why the source-range filter could not be programmed in the last pass that got that far
    /// (`None`: programmed, or not needed).
    pub source_filter_error: Option<String>,
    /// Services left out of the dataplane because of that error (`tcp 203.0.113.1:80`):
    /// those with source ranges, which must not be served unfiltered.
    pub withheld: Vec<String>,
    /// Services the kernel refused, each with its refusal (`tcp 203.0.113.1:80: ...`): left
    /// out of the dataplane, tried again every minute and when the table changes them.
    pub refused: Vec<String>,
    /// VIPs of removed services still draining here ([`Pass::draining_vips`]).
    pub draining_vips: BTreeSet<IpAddr>,
    /// [`Pass::unprogrammed`]: what `withheld` and `refused` name, as keys.
    #[serde(skip)]
    pub unprogrammed: BTreeSet<ServiceKey>,
}

impl ReconcileState {
    /// How long this node's passes have kept failing, when that makes its dataplane count as
    /// failing (`announce::decide::dataplane_failing`): what both the announce gate and
    /// `/readyz` ask.
    pub fn failing(&self, now: Instant) -> Option<Duration> {
        let failing_for = self.failing_since.map(|t| now.duration_since(t));
        crate::announce::decide::dataplane_failing(failing_for, self.failed_in_a_row)
            .then(|| failing_for.unwrap_or_default())
    }
}

#[derive(Clone, Default)]
pub struct ReconcileStatus(Arc<Mutex<ReconcileState>>);

impl ReconcileStatus {
    pub fn get(&self) -> ReconcileState {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn update(&self, f: impl FnOnce(&mut ReconcileState)) {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Seconds between full resyncs when `resync_interval_s` is not set.
pub const DEFAULT_RESYNC_INTERVAL_S: u64 = 10;

pub struct LoopSettings {
    pub resync_interval: Duration,
    /// Deliberate bug for the chaos harness's own test (`SHOAL_FAULT=applied-goes-back`).
    pub fault: Option<Fault>,
    /// Where the drains in progress are kept for the next process (`crate::drains_file`).
    pub drains_file: Option<std::path::PathBuf>,
}

/// Faults a node can be started with, so the chaos harness can prove it catches a broken node.
/// Only a binary built with the `fault-injection` feature (the chaos CI build) reads them, from
/// the `SHOAL_FAULT` environment variable; the release binary never does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// On a resync pass, report the version applied before the head again, as a node that
    /// went back to an older table would: invariant I1 (applied never decreases) must fire.
    AppliedGoesBack,
}

impl Fault {
    #[cfg(not(feature = "fault-injection"))]
    pub fn from_env() -> Option<Fault> {
        None
    }

    #[cfg(feature = "fault-injection")]
    pub fn from_env() -> Option<Fault> {
        match std::env::var("SHOAL_FAULT").ok()?.as_str() {
            "applied-goes-back" => Some(Fault::AppliedGoesBack),
            other => {
                tracing::error!(fault = other, "unknown SHOAL_FAULT ignored");
                None
            }
        }
    }
}

const RETRY_AFTER_ERROR: Duration = Duration::from_secs(1);

pub async fn run(
    mesh: Mesh<RuleTable>,
    programmer: SharedProgrammer,
    mut verdicts: watch::Receiver<Arc<Verdicts>>,
    settings: LoopSettings,
    metrics: NodeMetrics,
    status: ReconcileStatus,
    cancel: CancellationToken,
) {
    // A resync pass reads the whole table back; head and health changes in between are planned
    // against the kept view, so their cost follows the change, not the table.
    programmer.set_drift_check(settings.resync_interval);
    let mut drains_kept = settings.drains_file.clone().map(drains_file::Keeper::new);
    let mut drains_warn = crate::log_gate::LogGate::new(Duration::from_secs(60));
    let mut heads = mesh.subscribe();
    let mut next_pass = tokio::time::Instant::now();
    let mut applied: Option<Version> = None;
    let mut before_head: Option<Version> = None;
    if let Some(fault) = settings.fault {
        tracing::warn!(
            ?fault,
            "FAULT INJECTION ENABLED: this node misbehaves on purpose"
        );
    }
    loop {
        // `changed` marks the verdicts seen: remember that they woke this pass.
        let mut verdicts_changed = false;
        tokio::select! {
            _ = cancel.cancelled() => break,
            r = heads.changed() => if r.is_err() { break },
            r = verdicts.changed() => if r.is_err() { break } else { verdicts_changed = true },
            _ = tokio::time::sleep_until(next_pass) => {}
        }
        let head = heads.borrow_and_update().clone();
        let Some(head) = head else {
            next_pass = later(tokio::time::Instant::now(), settings.resync_interval);
            continue;
        };
        let verdicts_changed = verdicts_changed || verdicts.has_changed().unwrap_or(false);
        let judged = verdicts.borrow_and_update().clone();
        let desired = desired_state(&head.doc, &judged);
        let filters = source_filters(&head.doc);
        // A drift check (a whole read: seconds at 10,000 services) never holds a change back:
        // one this pass carries (a new head or verdict) puts a due check off and goes in on
        // the kept view in this pass; one arriving during the read makes it give way, and the
        // next pass brings it in.
        let carries_change = applied.as_ref() != Some(&head.version) || verdicts_changed;
        let news = news_since(&heads, &verdicts, &cancel);
        let stop = move || carries_change || news();
        let started = Instant::now();
        let result = programmer.reconcile(desired, filters, stop).await;
        metrics
            .reconcile_seconds
            .observe(started.elapsed().as_secs_f64());
        let mut wake = later(tokio::time::Instant::now(), settings.resync_interval);
        match result {
            Ok(Pass { gave_way: true, .. }) => {
                metrics
                    .reconciles
                    .get_or_create(&ResultLabel { result: "gave_way" })
                    .inc();
                tracing::debug!("drift check gave way to a change; planning it on the kept view");
                next_pass = tokio::time::Instant::now();
                continue;
            }
            Ok(Pass {
                gave_way: false,
                ops,
                drained,
                deadline,
                draining_vips,
                filter,
                withheld,
                refused,
                unprogrammed,
            }) => {
                metrics.services_refused.set(refused.len() as i64);
                if refused != status.get().refused {
                    if refused.is_empty() {
                        tracing::info!("no service refused by the kernel any more");
                    } else {
                        tracing::error!(
                            refused = ?refused,
                            "the kernel refused these services: they are not programmed, the others are; retrying every minute and when the table changes them"
                        );
                    }
                }
                let filter_error = filter.as_ref().err().map(|e| e.to_string());
                let withheld: Vec<String> = withheld.iter().map(|k| k.to_string()).collect();
                metrics.services_withheld.set(withheld.len() as i64);
                metrics
                    .source_filter_ok
                    .set(i64::from(filter_error.is_none()));
                let before = status.get().source_filter_error;
                match (&filter_error, &before) {
                    (Some(e), before) if before.as_ref() != Some(e) => {
                        tracing::error!(
                            error = %e,
                            withheld = ?withheld,
                            "source-range filter failed: services with source_ranges are not \
                             programmed (fail closed), the others are; retrying"
                        );
                    }
                    (None, Some(_)) => {
                        tracing::info!("source-range filter programmed again; no service withheld");
                    }
                    _ => {}
                }
                if filter_error.is_some() {
                    wake = wake.min(later(tokio::time::Instant::now(), RETRY_AFTER_ERROR));
                }
                match filter.unwrap_or(FilterChange::Unchanged) {
                    FilterChange::Unchanged => {}
                    FilterChange::Replaced { rules } => {
                        tracing::info!(rules, "source-range filter rebuilt");
                        metrics
                            .reconcile_ops
                            .get_or_create(&OpLabel {
                                op: "replace_filter",
                            })
                            .inc();
                    }
                    FilterChange::Removed => {
                        tracing::info!("source-range filter removed (nothing restricted)");
                        metrics
                            .reconcile_ops
                            .get_or_create(&OpLabel {
                                op: "remove_filter",
                            })
                            .inc();
                    }
                }
                metrics
                    .reconciles
                    .get_or_create(&ResultLabel { result: "ok" })
                    .inc();
                for op in &ops {
                    metrics
                        .reconcile_ops
                        .get_or_create(&OpLabel { op: op_name(op) })
                        .inc();
                }
                let resync_pass = applied.as_ref() == Some(&head.version);
                if !resync_pass {
                    tracing::info!(version = %head.version, ops = ops.len(), "applied");
                    before_head = applied.clone();
                } else if !ops.is_empty() {
                    let cause = resync_cause(ops.len(), drained, verdicts_changed);
                    if cause.drained > 0 {
                        tracing::info!(
                            entries = cause.drained,
                            "drain over; destinations or services deleted"
                        );
                    }
                    if cause.health > 0 {
                        tracing::info!(ops = cause.health, "health verdicts changed; applied");
                    }
                    if cause.drift > 0 {
                        tracing::warn!(
                            ops = cause.drift,
                            "dataplane drifted from the head; repaired"
                        );
                    }
                }
                let reported = match (&settings.fault, &before_head) {
                    (Some(Fault::AppliedGoesBack), Some(older)) if resync_pass => older.clone(),
                    _ => head.version.clone(),
                };
                mesh.set_applied(&reported);
                metrics.applied_epoch.set(head.version.epoch as i64);
                metrics.applied_seq.set(head.version.seq as i64);
                applied = Some(head.version.clone());
                status.update(|s| {
                    s.last_unix_ms = Some(crate::unix_ms());
                    s.last_ok = Some(true);
                    s.last_error = None;
                    s.failed_in_a_row = 0;
                    s.failing_since = None;
                    s.last_ops = ops.len();
                    s.applied = Some((&reported).into());
                    s.passes += 1;
                    s.source_filter_error = filter_error;
                    s.withheld = withheld;
                    s.refused = refused;
                    s.draining_vips = draining_vips;
                    s.unprogrammed = unprogrammed;
                });
                if let Some(keeper) = &mut drains_kept {
                    if let Some(at) = keep_drains(keeper, &programmer, &mut drains_warn).await {
                        wake = wake.min(tokio::time::Instant::from_std(at));
                    }
                }
                if let Some(d) = deadline {
                    let d = tokio::time::Instant::from_std(d);
                    wake = wake.min(d);
                }
            }
            Err(e) => {
                metrics
                    .reconciles
                    .get_or_create(&ResultLabel { result: "error" })
                    .inc();
                tracing::error!(version = %head.version, error = %e, "reconcile failed; retrying");
                status.update(|s| {
                    s.last_unix_ms = Some(crate::unix_ms());
                    s.last_ok = Some(false);
                    s.last_error = Some(e.to_string());
                    s.passes += 1;
                    s.failed_in_a_row = s.failed_in_a_row.saturating_add(1);
                    s.failing_since.get_or_insert_with(Instant::now);
                });
                wake = later(tokio::time::Instant::now(), RETRY_AFTER_ERROR);
            }
        }
        next_pass = wake;
    }
}

/// True from the moment a head or verdict newer than the ones the receivers have seen arrives
/// (or either sender is gone, or the node shuts down): what a drift check gives way to. Call it
/// after the pass's values were marked seen; the clones keep that mark.
fn news_since<H, V>(
    heads: &watch::Receiver<H>,
    verdicts: &watch::Receiver<V>,
    cancel: &CancellationToken,
) -> impl Fn() -> bool + Send + 'static
where
    H: Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    let (heads, verdicts, cancel) = (heads.clone(), verdicts.clone(), cancel.clone());
    move || {
        heads.has_changed().unwrap_or(true)
            || verdicts.has_changed().unwrap_or(true)
            || cancel.is_cancelled()
    }
}

/// Writes the drains in progress for the next process when they changed (at most every
/// `drains_file::WRITE_INTERVAL`); returns when to look again if a change has to wait.
async fn keep_drains(
    keeper: &mut drains_file::Keeper,
    programmer: &SharedProgrammer,
    warn: &mut crate::log_gate::LogGate,
) -> Option<Instant> {
    let drains = programmer.drains().await?;
    let now = Instant::now();
    match keeper.check(&drains, now) {
        drains_file::Write::Unchanged => None,
        drains_file::Write::At(at) => Some(at),
        drains_file::Write::Now => {
            let saved = drains_file::to_saved(drains.clone(), now, crate::unix_ms());
            let path = keeper.path().to_path_buf();
            let stored = tokio::task::spawn_blocking(move || drains_file::store(&path, &saved))
                .await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("{e}")));
            match stored {
                Ok(()) => {
                    keeper.wrote(drains, now);
                    None
                }
                Err(e) => {
                    if let Some(suppressed) = warn.allow(now) {
                        tracing::warn!(
                            error = format!("{e:#}"),
                            suppressed,
                            "cannot keep the drains for the next run; a restart drains them again in full"
                        );
                    }
                    keeper.failed(now);
                    now.checked_add(drains_file::WRITE_INTERVAL)
                }
            }
        }
    }
}

/// `now + after`, without the panic of `Instant + Duration` on overflow: a delay too long to
/// represent becomes "in a year" (config bounds keep real settings far below that).
fn later(now: tokio::time::Instant, after: Duration) -> tokio::time::Instant {
    const YEAR: Duration = Duration::from_secs(365 * 86_400);
    now.checked_add(after.min(YEAR)).unwrap_or(now)
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::AddService(_) => "add_service",
        Op::UpdateService(_) => "update_service",
        Op::DelService(_) => "del_service",
        Op::Flush => "flush",
        Op::AddDest(..) => "add_dest",
        Op::UpdateDest(..) => "update_dest",
        Op::DelDest(..) => "del_dest",
        Op::AddVip(_) => "add_vip",
        Op::DelVip(_) => "del_vip",
    }
}

#[cfg(test)]
mod tests;
