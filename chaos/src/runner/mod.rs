//! The run loop: workload, episodes of faults, polls, checks, timings. The shell around the
//! pure parts (schedule, checkers, report); it must run inside the lab's control namespace.
//!
//! Each tick polls every running node, feeds I1 and I4, and writes a workload edit when one is
//! due. An episode injects its faults, holds them (timing a publisher takeover if the publisher
//! was cut off), heals them, pauses the workload and ticks until [`assess`] says the cluster
//! converged (I2, I3) and agrees on health (I5), or a bound passes (a violation).

use crate::check::convergence::{assess, takeover, Assessment, Expect};
use crate::check::monotonic::Monotonic;
use crate::check::provenance::Provenance;
use crate::check::{Invariant, Violation};
use crate::effects;
use crate::lab::nft::Inbound;
use crate::lab::{node_id, Lab, CTL_ADDR, CTL_DOWN_ADDR};
use crate::observation::NodeObs;
use crate::observer::Observer;
use crate::report::{EpisodeRecord, Found, RunReport};
use crate::schedule::{Episode, Fault, Schedule, ScheduleConfig};
use crate::stats::summarize;
use crate::workload::{self, HealthBackends, MARKER_MODULO};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::watch;

mod episode;

#[derive(Clone, Debug)]
pub struct RunConfig {
    pub seed: u64,
    pub duration: Duration,
    pub mesh_port: u16,
    pub admin_port: u16,
    pub rules_path: PathBuf,
    pub edit_interval_ms: u64,
    pub poll_interval_ms: u64,
    pub convergence_bound_ms: u64,
    pub convergence_target_ms: u64,
    pub health_bound_ms: u64,
    pub startup_bound_ms: u64,
    pub health_port: u16,
    pub schedule: ScheduleConfig,
    /// The command line that replays this run.
    pub replay: String,
    pub tls: bool,
    /// Stop after the first violation instead of running on.
    pub stop_on_violation: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Lab(#[from] crate::lab::sys::LabError),
    #[error("{0}")]
    Setup(String),
    #[error("interrupted")]
    Interrupted,
}

struct Run<'a> {
    cfg: &'a RunConfig,
    lab: &'a mut Lab,
    observer: Observer,
    t0: Instant,
    latest: Vec<Option<NodeObs>>,
    mono: Monotonic,
    prov: Provenance,
    edits: u64,
    next_edit_at_ms: u64,
    paused: bool,
    health: HealthBackends,
    expected_health: BTreeMap<String, String>,
    violations: Vec<Violation>,
    polls_ok: u64,
    polls_failed: u64,
    convergence_checks: u64,
    episode: Option<u64>,
    stop: watch::Receiver<bool>,
}

impl<'a> Run<'a> {
    fn record(&mut self, v: Violation) {
        tracing::warn!(violation = %v, "VIOLATION");
        self.violations.push(v);
    }

    fn now_ms(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }

    fn interrupted(&self) -> bool {
        *self.stop.borrow()
    }

    fn write_edit(&mut self) -> Result<(), RunError> {
        let n = self.edits;
        let text = workload::rules_toml(self.cfg.seed, n, &self.health);
        // Known before it can be read, so I4 never sees a table ahead of its record.
        self.prov.wrote(
            n % MARKER_MODULO,
            workload::expected_services(self.cfg.seed, n),
        );
        workload::write_atomically(&self.cfg.rules_path, &text).map_err(|e| {
            RunError::Setup(format!("write {}: {e}", self.cfg.rules_path.display()))
        })?;
        self.edits += 1;
        Ok(())
    }

    fn last_marker(&self) -> u64 {
        (self.edits.saturating_sub(1)) % MARKER_MODULO
    }

    /// One poll of every running, unfrozen node; feeds I1 and I4; writes an edit when due.
    async fn tick(&mut self) -> Result<(), RunError> {
        let started = Instant::now();
        if self.interrupted() {
            return Err(RunError::Interrupted);
        }
        if !self.paused && self.now_ms() >= self.next_edit_at_ms {
            self.write_edit()?;
            self.next_edit_at_ms = self.now_ms() + self.cfg.edit_interval_ms;
        }
        for i in 0..self.lab.nodes() {
            if let Some(status) = self.lab.exited(i) {
                let v = Violation {
                    invariant: Invariant::I2,
                    t_ms: self.now_ms(),
                    episode: self.episode,
                    node: Some(node_id(i)),
                    detail: format!("process exited by itself ({status}); see its log"),
                };
                self.record(v);
                // Bring it back so the run goes on, unless it dies right at start.
                if self.lab.uptime(i) > Duration::from_secs(2) {
                    self.lab.start(i)?;
                }
            }
        }
        let targets: Vec<(usize, u32, String)> = (0..self.lab.nodes())
            .filter(|&i| self.lab.is_running(i) && !self.lab.is_frozen(i))
            .map(|i| {
                (
                    i,
                    self.lab.incarnation(i),
                    format!("{}:{}", self.lab.addr(i), self.cfg.admin_port),
                )
            })
            .collect();
        let polls = futures::future::join_all(
            targets
                .iter()
                .map(|(_, _, admin)| self.observer.poll(admin)),
        )
        .await;
        let t_ms = self.now_ms();
        for ((i, incarnation, _), result) in targets.into_iter().zip(polls) {
            // A node restarted while the poll was in flight: the answer is stale.
            if self.lab.incarnation(i) != incarnation {
                continue;
            }
            match result {
                Ok(mut o) => {
                    self.polls_ok += 1;
                    o.t_ms = t_ms;
                    o.node = i;
                    o.incarnation = incarnation;
                    let id = node_id(i);
                    if let Some(v) =
                        self.mono
                            .observe(&id, incarnation, o.applied.as_ref(), t_ms, self.episode)
                    {
                        self.record(v);
                    }
                    let found = self.prov.observe(&o, &id, self.episode);
                    for v in found {
                        self.record(v);
                    }
                    self.latest[i] = Some(o);
                }
                Err(e) => {
                    self.polls_failed += 1;
                    tracing::debug!(node = i, error = %e, "poll failed");
                    self.latest[i] = None;
                }
            }
        }
        let spent = started.elapsed();
        let interval = Duration::from_millis(self.cfg.poll_interval_ms);
        if spent < interval {
            tokio::time::sleep(interval - spent).await;
        }
        Ok(())
    }

    /// Fresh polls (taken at or after `since_ms`) of the given nodes, in node order.
    fn snapshot(&self, nodes: &[usize], since_ms: u64) -> Vec<(String, &NodeObs)> {
        nodes
            .iter()
            .filter_map(|&i| {
                let o = self.latest[i].as_ref()?;
                (o.t_ms >= since_ms && o.incarnation == self.lab.incarnation(i))
                    .then(|| (node_id(i), o))
            })
            .collect()
    }

    /// The publisher most polled nodes name right now.
    fn current_publisher(&self) -> Option<String> {
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for o in self.latest.iter().flatten() {
            if let Some(p) = &o.publisher {
                *votes.entry(p.as_str()).or_default() += 1;
            }
        }
        votes
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map(|(p, _)| p.to_string())
    }
}

/// Accepts and drops connections: the health service's "up" backend.
async fn serve_up_backend(port: u16) -> Result<(), RunError> {
    let listener = tokio::net::TcpListener::bind((CTL_ADDR, port))
        .await
        .map_err(|e| RunError::Setup(format!("bind {CTL_ADDR}:{port}: {e}")))?;
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            drop(sock);
        }
    });
    Ok(())
}

/// Runs the whole schedule against a lab whose nodes are not started yet. `stop` turning true
/// (Ctrl-C) ends the run early with [`RunError::Interrupted`].
pub async fn run(
    cfg: &RunConfig,
    lab: &mut Lab,
    stop: watch::Receiver<bool>,
) -> Result<RunReport, RunError> {
    serve_up_backend(cfg.health_port).await?;
    let health = HealthBackends {
        up: CTL_ADDR,
        down: CTL_DOWN_ADDR,
        port: cfg.health_port,
    };
    let expected_health = BTreeMap::from([
        (
            format!("{}|{}:{}", workload::HEALTH_SERVICE, health.up, health.port),
            "up".to_string(),
        ),
        (
            format!(
                "{}|{}:{}",
                workload::HEALTH_SERVICE,
                health.down,
                health.port
            ),
            "down".to_string(),
        ),
    ]);
    let observer = Observer::new(Duration::from_millis(400))
        .map_err(|e| RunError::Setup(format!("http client: {e}")))?;
    let started_unix_ms = shoal_node::unix_ms();
    let n = lab.nodes();
    let mut run = Run {
        cfg,
        lab,
        observer,
        t0: Instant::now(),
        latest: vec![None; n],
        mono: Monotonic::default(),
        prov: Provenance::default(),
        edits: 0,
        next_edit_at_ms: 0,
        paused: false,
        health,
        expected_health,
        violations: Vec::new(),
        polls_ok: 0,
        polls_failed: 0,
        convergence_checks: 0,
        episode: None,
        stop,
    };
    run.write_edit()?;
    for i in 0..n {
        run.lab.start(i)?;
    }
    // The cluster must form (and health land) before faults mean anything.
    run.paused = true;
    let (c, _) = run
        .converge(0, cfg.startup_bound_ms, cfg.startup_bound_ms)
        .await?;
    run.paused = false;
    tracing::info!(formed_ms = ?c, "cluster formed");
    let mut records = Vec::new();
    let mut faults_by_kind: BTreeMap<String, u64> = BTreeMap::new();
    let mut episodes = 0;
    let mut outcome = Ok(());
    for e in Schedule::new(cfg.seed, cfg.schedule.clone()) {
        if run.t0.elapsed() >= cfg.duration {
            break;
        }
        if cfg.stop_on_violation && !run.violations.is_empty() {
            break;
        }
        for f in &e.faults {
            *faults_by_kind.entry(f.kind().to_string()).or_default() += 1;
        }
        episodes += 1;
        let mut rec = EpisodeRecord::default();
        let r = run.episode(&e, &mut rec).await;
        records.push(rec);
        if let Err(err) = r {
            outcome = Err(err);
            break;
        }
    }
    let elapsed_ms = run.now_ms();
    let conv: Vec<u64> = records.iter().filter_map(|r| r.convergence_ms).collect();
    let health_ms: Vec<u64> = records.iter().filter_map(|r| r.health_ms).collect();
    let take: Vec<u64> = records.iter().filter_map(|r| r.takeover_ms).collect();
    let report = RunReport {
        seed: cfg.seed,
        nodes: n,
        command: cfg.replay.clone(),
        planned_ms: cfg.duration.as_millis() as u64,
        elapsed_ms,
        started_unix_ms,
        tls: cfg.tls,
        episodes,
        faults_total: faults_by_kind.values().sum(),
        faults_by_kind,
        edits_written: run.edits,
        polls_ok: run.polls_ok,
        polls_failed: run.polls_failed,
        checks: BTreeMap::from([
            ("I1 applied never decreases".to_string(), run.mono.checks),
            (
                "I2/I3/I5 convergence snapshots".to_string(),
                run.convergence_checks,
            ),
            ("I4 provenance".to_string(), run.prov.checks),
        ]),
        violations: run
            .violations
            .iter()
            .map(|v| Found {
                seed: cfg.seed,
                replay: format!(
                    "{} (episode {}, {} ms in)",
                    cfg.replay,
                    v.episode.map_or("-".into(), |e| e.to_string()),
                    v.t_ms
                ),
                violation: v.clone(),
            })
            .collect(),
        convergence_bound_ms: cfg.convergence_bound_ms,
        convergence_target_ms: cfg.convergence_target_ms,
        convergence: summarize(&conv),
        health_agreement: summarize(&health_ms),
        takeover: summarize(&take),
        unverified_applied: run.prov.unverified(),
        episode_log: records,
    };
    match outcome {
        Ok(()) => Ok(report),
        Err(RunError::Interrupted) => Ok(report),
        Err(e) => Err(e),
    }
}
