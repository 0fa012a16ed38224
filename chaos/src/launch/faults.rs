//! `shoal-chaos run` and `soak`: a seeded fault schedule against real nodes, with every
//! invariant checked after each heal; the report goes to REPORT_DIR (report.json, report.md).

use super::{in_ctl, prepare, LabArgs, Verdict, ADMIN_PORT, MESH_PORT};
use crate::lab;
use crate::report::RunReport;
use crate::runner::{self, RunConfig};
use crate::schedule::ScheduleConfig;
use anyhow::{bail, Context};
use std::path::Path;
use std::time::Duration;

#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    #[arg(long, default_value_t = 5)]
    pub nodes: usize,
    /// e.g. 150s, 30m, 1h.
    #[arg(long)]
    pub duration: Option<String>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[command(flatten)]
    pub lab: LabArgs,
    #[arg(long, default_value_t = 500)]
    pub edit_interval_ms: u64,
    #[arg(long, default_value_t = 100)]
    pub poll_interval_ms: u64,
    /// A heal not converged within this is an I2 (or I3) violation.
    #[arg(long, default_value_t = 10_000)]
    pub convergence_bound_ms: u64,
    #[arg(long, default_value_t = 2_000)]
    pub convergence_target_ms: u64,
    /// Heal to agreed, correct health verdicts, else I5.
    #[arg(long, default_value_t = 15_000)]
    pub health_bound_ms: u64,
    /// Defaults: `ScheduleConfig::new` (1000..=4000 ms), so `shoal-chaos schedule` shows the same episodes.
    #[arg(long)]
    pub hold_ms_min: Option<u64>,
    #[arg(long)]
    pub hold_ms_max: Option<u64>,
    /// SHOAL_LOG for the nodes (their logs go to REPORT_DIR/logs).
    #[arg(long, default_value = "warn")]
    pub node_log: String,
    #[arg(long)]
    pub stop_on_violation: bool,
}

/// One run; `verb` (run, soak) names it in the replay line, `default_duration` applies when
/// `--duration` is not given.
pub fn run(a: &RunArgs, verb: &str, default_duration: Duration) -> anyhow::Result<Verdict> {
    let duration = match &a.duration {
        Some(d) => crate::duration::parse(d)?,
        None => default_duration,
    };
    if a.nodes > lab::MAX_CHECKED_NODES {
        bail!(
            "nodes must be 1..={} for a fault run (the steady run takes more)",
            lab::MAX_CHECKED_NODES
        );
    }
    let mut p = prepare(a.nodes, &a.lab, &a.node_log)?;
    let replay = format!(
        "shoal-chaos {verb} --nodes {} --duration {}s --seed {}{}",
        a.nodes,
        duration.as_secs(),
        a.seed,
        if a.lab.insecure { " --insecure" } else { "" }
    );
    let mut schedule = ScheduleConfig::new(a.nodes);
    schedule.hold_ms_min = a.hold_ms_min.unwrap_or(schedule.hold_ms_min);
    schedule.hold_ms_max = a
        .hold_ms_max
        .unwrap_or(schedule.hold_ms_max)
        .max(schedule.hold_ms_min);
    let cfg = RunConfig {
        seed: a.seed,
        duration,
        mesh_port: MESH_PORT,
        admin_port: ADMIN_PORT,
        rules_path: p.rules.clone(),
        edit_interval_ms: a.edit_interval_ms,
        poll_interval_ms: a.poll_interval_ms,
        convergence_bound_ms: a.convergence_bound_ms,
        convergence_target_ms: a.convergence_target_ms,
        health_bound_ms: a.health_bound_ms,
        startup_bound_ms: 60_000,
        health_port: 8080,
        schedule,
        replay,
        tls: p.tls,
        stop_on_violation: a.stop_on_violation,
    };
    eprintln!(
        "lab {} ready: {} nodes; {}",
        p.lab.prefix(),
        a.nodes,
        cfg.replay
    );
    let (result, interrupted) = in_ctl(&mut p.lab, |lab, stop| runner::run(&cfg, lab, stop))?;
    drop(p);
    let report = result?;
    write_report(&a.lab.report_dir, &report)?;
    print!("{}", report.to_markdown());
    Ok(Verdict::of(report.passed(), interrupted))
}

fn write_report(dir: &Path, report: &RunReport) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    std::fs::write(dir.join("report.json"), json).context("write report.json")?;
    std::fs::write(dir.join("report.md"), report.to_markdown()).context("write report.md")?;
    Ok(())
}
