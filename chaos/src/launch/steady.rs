//! `shoal-chaos steady`: every node started at once, then the same random loss on every link
//! for a long time, counting false deaths; the report goes to REPORT_DIR (steady.md,
//! steady.json).

use super::{in_ctl, prepare, LabArgs, Verdict, ADMIN_PORT, MESH_PORT};
use crate::steady::run::SteadyConfig;
use anyhow::{bail, Context};

#[derive(clap::Args, Clone, Debug)]
pub struct SteadyArgs {
    #[arg(long, default_value_t = 20)]
    pub nodes: usize,
    /// Percent of mesh packets dropped on arrival at every node.
    #[arg(long, default_value_t = 5)]
    pub loss_percent: u8,
    /// How long the loss is held once the cluster has formed, e.g. 60s, 1h.
    #[arg(long, default_value = "1h")]
    pub duration: String,
    #[command(flatten)]
    pub lab: LabArgs,
    #[arg(long, default_value_t = 100)]
    pub poll_interval_ms: u64,
    /// Every node started at once must list every other as alive within this.
    #[arg(long, default_value_t = 60_000)]
    pub startup_bound_ms: u64,
}

pub fn run(a: &SteadyArgs) -> anyhow::Result<Verdict> {
    let duration = crate::duration::parse(&a.duration)?;
    if a.loss_percent > 100 {
        bail!("--loss-percent must be 0..=100, got {}", a.loss_percent);
    }
    let replay = format!(
        "shoal-chaos steady --nodes {} --loss-percent {} --duration {}s{}",
        a.nodes,
        a.loss_percent,
        duration.as_secs(),
        if a.lab.insecure { " --insecure" } else { "" }
    );
    let mut p = prepare(a.nodes, &a.lab, crate::steady::NODE_LOG)?;
    let cfg = SteadyConfig {
        loss_percent: a.loss_percent,
        duration,
        poll_interval_ms: a.poll_interval_ms,
        startup_bound_ms: a.startup_bound_ms,
        mesh_port: MESH_PORT,
        admin_port: ADMIN_PORT,
        rules_path: p.rules.clone(),
        replay,
    };
    eprintln!(
        "lab {} ready: {} nodes; {}",
        p.lab.prefix(),
        a.nodes,
        cfg.replay
    );
    let (result, interrupted) = in_ctl(&mut p.lab, |lab, stop| {
        crate::steady::run::run(&cfg, lab, stop)
    })?;
    drop(p);
    let report = result?;
    let dir = &a.lab.report_dir;
    let md = report.to_markdown();
    std::fs::write(dir.join("steady.md"), &md)
        .with_context(|| format!("write {}", dir.display()))?;
    std::fs::write(
        dir.join("steady.json"),
        serde_json::to_string_pretty(&report)?,
    )
    .with_context(|| format!("write {}", dir.display()))?;
    print!("{md}");
    Ok(Verdict::of(report.passed(), interrupted))
}
