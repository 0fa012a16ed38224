//! The steady run's shell: starts every node at once, waits until the cluster has formed,
//! applies the same random loss on arrival at every node (so every link, both ways, loses that
//! share of mesh packets), then polls every node's live list until the time is up and reads the
//! nodes' logs for deaths. Must run inside the lab's control namespace.

use super::{deaths_in_log, formed, Tally};
use crate::lab::nft::Inbound;
use crate::lab::Lab;
use crate::observer::Observer;
use crate::runner::RunError;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::watch;

#[derive(Clone, Debug)]
pub struct SteadyConfig {
    pub loss_percent: u8,
    pub duration: Duration,
    pub poll_interval_ms: u64,
    pub startup_bound_ms: u64,
    pub mesh_port: u16,
    pub admin_port: u16,
    pub rules_path: PathBuf,
    /// The command line that repeats this run.
    pub replay: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct SteadyReport {
    pub command: String,
    pub nodes: usize,
    pub loss_percent: u8,
    pub planned_ms: u64,
    /// From the loss being applied to the end.
    pub elapsed_ms: u64,
    /// From the start of every node to every node listing every other as alive.
    pub formed_ms: u64,
    pub polls: Tally,
    /// "member judged dead" lines per node, written while the loss was on.
    pub deaths_logged: BTreeMap<String, usize>,
    /// Nodes whose process ended by itself.
    pub exited: Vec<String>,
    pub loadavg_start: String,
    pub loadavg_end: String,
}

impl SteadyReport {
    pub fn deaths(&self) -> usize {
        self.deaths_logged.values().sum()
    }

    pub fn passed(&self) -> bool {
        self.polls.clean() && self.deaths() == 0 && self.exited.is_empty()
    }

    pub fn to_markdown(&self) -> String {
        let mut s = format!(
            "# shoal-chaos steady run: {} nodes, {}% loss on every link\n\n`{}`\n\n",
            self.nodes, self.loss_percent, self.command
        );
        s.push_str(&format!(
            "- result: **{}**\n- formed (all nodes started at once) in {} ms\n- loss held for {:.1} s of {:.1} s planned\n\
             - polls: {} answers, {} with a member missing, {} failed; lowest live count {}\n\
             - deaths logged by the nodes: {} ({:?})\n- processes that exited: {:?}\n\
             - load average at start / end: {} / {}\n",
            if self.passed() { "no false death" } else { "FALSE DEATHS or failures" },
            self.formed_ms,
            self.elapsed_ms as f64 / 1000.0,
            self.planned_ms as f64 / 1000.0,
            self.polls.checks,
            self.polls.checks_missing,
            self.polls.polls_failed,
            self.polls.lowest_live.map_or("-".to_string(), |l| l.to_string()),
            self.deaths(),
            self.deaths_logged.iter().filter(|(_, n)| **n > 0).collect::<Vec<_>>(),
            self.exited,
            self.loadavg_start,
            self.loadavg_end,
        ));
        for (t, observer, missing) in &self.polls.first_misses {
            s.push_str(&format!("  - {t} ms: {observer} lacked {missing:?}\n"));
        }
        s
    }
}

/// The rules every node serves: one service, never edited (the run is about membership).
const RULES: &str = "[[service]]\nname = \"steady\"\nvip = \"203.0.113.1\"\nport = 80\n\
                     [[service.backend]]\naddress = \"198.18.1.1\"\n";

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn log_len(lab: &Lab, i: usize) -> u64 {
    std::fs::metadata(lab.log_path(i)).map_or(0, |m| m.len())
}

/// The part of node `i`'s log written after `from` bytes.
fn log_since(lab: &Lab, i: usize, from: u64) -> String {
    let bytes = std::fs::read(lab.log_path(i)).unwrap_or_default();
    let from = (from as usize).min(bytes.len());
    String::from_utf8_lossy(&bytes[from..]).into_owned()
}

/// One poll of every node: `(index, answer)`.
async fn poll_all(
    observer: &Observer,
    lab: &Lab,
    admin_port: u16,
) -> Vec<(usize, Option<Vec<String>>)> {
    let admins: Vec<String> = (0..lab.nodes())
        .map(|i| format!("{}:{admin_port}", lab.addr(i)))
        .collect();
    let answers = futures::future::join_all(admins.iter().map(|a| observer.alive(a))).await;
    answers
        .into_iter()
        .enumerate()
        .map(|(i, r)| (i, r.ok()))
        .collect()
}

/// Runs the whole steady run against a lab whose nodes are not started yet.
pub async fn run(
    cfg: &SteadyConfig,
    lab: &mut Lab,
    stop: watch::Receiver<bool>,
) -> Result<SteadyReport, RunError> {
    std::fs::write(&cfg.rules_path, RULES)
        .map_err(|e| RunError::Setup(format!("write {}: {e}", cfg.rules_path.display())))?;
    let observer = Observer::new(Duration::from_millis(1_000))
        .map_err(|e| RunError::Setup(format!("http client: {e}")))?;
    let expected: BTreeSet<String> = lab.ids().into_iter().collect();
    let interval = Duration::from_millis(cfg.poll_interval_ms);
    let t0 = Instant::now();
    for i in 0..lab.nodes() {
        lab.start(i)?;
    }
    let formed_ms = loop {
        if *stop.borrow() {
            return Err(RunError::Interrupted);
        }
        let answers = poll_all(&observer, lab, cfg.admin_port).await;
        let all: Option<Vec<Vec<String>>> = answers.into_iter().map(|(_, a)| a).collect();
        if all
            .as_ref()
            .is_some_and(|a| formed(a.iter().map(Vec::as_slice), &expected))
        {
            break t0.elapsed().as_millis() as u64;
        }
        if t0.elapsed() > Duration::from_millis(cfg.startup_bound_ms) {
            return Err(RunError::Setup(format!(
                "the cluster did not form within {} ms",
                cfg.startup_bound_ms
            )));
        }
        tokio::time::sleep(interval).await;
    };
    tracing::info!(formed_ms, "cluster formed; applying the loss");
    let offsets: Vec<u64> = (0..lab.nodes()).map(|i| log_len(lab, i)).collect();
    let rules = Inbound {
        cut_from: Vec::new(),
        loss_percent: Some(cfg.loss_percent),
    };
    for i in 0..lab.nodes() {
        lab.set_inbound(i, &rules, cfg.mesh_port)?;
    }
    let loadavg_start = loadavg();
    let t1 = Instant::now();
    let mut polls = Tally::default();
    let mut exited = Vec::new();
    let mut next_progress = Duration::from_secs(60);
    while t1.elapsed() < cfg.duration && !*stop.borrow() && exited.is_empty() {
        let started = Instant::now();
        for i in 0..lab.nodes() {
            if let Some(status) = lab.exited(i) {
                tracing::warn!(node = i, %status, "node exited by itself");
                exited.push(lab.ids()[i].clone());
            }
        }
        let t_ms = t1.elapsed().as_millis() as u64;
        for (i, answer) in poll_all(&observer, lab, cfg.admin_port).await {
            match answer {
                Some(alive) => polls.observe(t_ms, &lab.ids()[i], &alive, &expected),
                None => polls.failed_poll(),
            }
        }
        if t1.elapsed() >= next_progress {
            next_progress += Duration::from_secs(60);
            let deaths: usize = (0..lab.nodes())
                .map(|i| deaths_in_log(&log_since(lab, i, offsets[i])))
                .sum();
            eprintln!(
                "{:>5} s: {} answers, {} with a member missing, {} failed, lowest live {:?}, deaths logged {deaths}, load {}",
                t1.elapsed().as_secs(),
                polls.checks,
                polls.checks_missing,
                polls.polls_failed,
                polls.lowest_live,
                loadavg()
            );
        }
        let spent = started.elapsed();
        if spent < interval {
            tokio::time::sleep(interval - spent).await;
        }
    }
    let elapsed_ms = t1.elapsed().as_millis() as u64;
    let deaths_logged = (0..lab.nodes())
        .map(|i| {
            (
                lab.ids()[i].clone(),
                deaths_in_log(&log_since(lab, i, offsets[i])),
            )
        })
        .collect();
    Ok(SteadyReport {
        command: cfg.replay.clone(),
        nodes: lab.nodes(),
        loss_percent: cfg.loss_percent,
        planned_ms: cfg.duration.as_millis() as u64,
        elapsed_ms,
        formed_ms,
        polls,
        deaths_logged,
        exited,
        loadavg_start,
        loadavg_end: loadavg(),
    })
}
