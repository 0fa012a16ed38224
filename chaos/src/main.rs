//! The `shoal-chaos` binary's edge: flags, lab setup, signals, report files, exit codes.
//!
//! Exit codes: 0 no violation, 1 violations found, 2 the harness failed, 130 interrupted.

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use shoal_chaos::lab::{self, Lab, NodeCommand, NodeSpec};
use shoal_chaos::report::RunReport;
use shoal_chaos::runner::{self, RunConfig};
use shoal_chaos::schedule::{Schedule, ScheduleConfig};
use shoal_chaos::steady::run::SteadyConfig;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "shoal-chaos",
    about = "Fault injection and invariant checks for Shoal"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// A short run (default 150 s), as in CI.
    Run(RunArgs),
    /// A long run (default 1 h).
    Soak(RunArgs),
    /// Every node started at once, then the same random loss on every link for a long time,
    /// counting false deaths (no other fault).
    Steady(SteadyArgs),
    /// Remove namespaces and folders left by runs that are no longer running.
    Cleanup {
        /// Also remove those of runs still in progress.
        #[arg(long)]
        all: bool,
    },
    /// The deterministic simulation: many seeds, or one seed replayed in detail.
    Sim {
        /// First seed.
        #[arg(long, default_value_t = 0)]
        first: u64,
        /// How many seeds (1 replays `--first` and prints everything it found).
        #[arg(long, default_value_t = 10_000)]
        seeds: u64,
        /// Build the nodes with a deliberate bug (adopt-older), to see the checkers catch it.
        #[arg(long)]
        bug_adopt_older: bool,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        #[command(flatten)]
        shape: SimShape,
    },
    /// Time to converge after a heal as a function of N (the simulation at several sizes).
    SimScale {
        /// Cluster sizes.
        #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
        nodes: Vec<usize>,
        /// Seeds per size, in the same order as `--nodes`.
        #[arg(long, value_delimiter = ',', default_value = "200,50,6")]
        seeds: Vec<u64>,
        #[arg(long, default_value_t = 0)]
        first: u64,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        #[command(flatten)]
        shape: SimShape,
    },
    /// Print the first episodes a seed draws, without running anything.
    Schedule {
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        #[arg(long, default_value_t = 20)]
        count: usize,
    },
}

/// The shape of each simulated seed.
#[derive(Args, Clone)]
struct SimShape {
    /// Simulated nodes (`sim` only; `sim-scale` takes a list).
    #[arg(long, default_value_t = 5)]
    sim_nodes: usize,
    /// Chaos-then-heal episodes per seed.
    #[arg(long, default_value_t = 1)]
    heals: usize,
    /// Simulated chaos before each heal (ms).
    #[arg(long, default_value_t = 6_000)]
    chaos_ms: u64,
    /// After each heal, everything must agree within this (simulated ms).
    #[arg(long, default_value_t = 5_000)]
    bound_ms: u64,
}

impl SimShape {
    fn config(&self, bug_adopt_older: bool) -> shoal_chaos::sim::SimConfig {
        use shoal_chaos::sim::{Bug, SimConfig};
        SimConfig {
            nodes: self.sim_nodes,
            heals: self.heals,
            chaos_ms: self.chaos_ms,
            convergence_bound_ms: self.bound_ms,
            bug: bug_adopt_older.then_some(Bug::AdoptOlder),
            ..SimConfig::default()
        }
    }
}

#[derive(Args, Clone)]
struct RunArgs {
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// e.g. 150s, 30m, 1h.
    #[arg(long)]
    duration: Option<String>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value = "chaos-report")]
    report_dir: PathBuf,
    /// The shoal binary (default: $SHOAL_BIN, else `shoal` next to this binary).
    #[arg(long)]
    shoal: Option<PathBuf>,
    /// Run the mesh without TLS (default: mutual TLS with `shoal certs init`).
    #[arg(long)]
    insecure: bool,
    #[arg(long, default_value_t = 500)]
    edit_interval_ms: u64,
    #[arg(long, default_value_t = 100)]
    poll_interval_ms: u64,
    /// A heal not converged within this is an I2 (or I3) violation.
    #[arg(long, default_value_t = 10_000)]
    convergence_bound_ms: u64,
    #[arg(long, default_value_t = 2_000)]
    convergence_target_ms: u64,
    /// Heal to agreed, correct health verdicts, else I5.
    #[arg(long, default_value_t = 15_000)]
    health_bound_ms: u64,
    /// Defaults: `ScheduleConfig::new` (1000..=4000 ms), so `shoal-chaos schedule` shows the same episodes.
    #[arg(long)]
    hold_ms_min: Option<u64>,
    #[arg(long)]
    hold_ms_max: Option<u64>,
    /// SHOAL_LOG for the nodes (their logs go to REPORT_DIR/logs).
    #[arg(long, default_value = "warn")]
    node_log: String,
    #[arg(long)]
    stop_on_violation: bool,
    /// Extra environment for every node, KEY=VALUE (repeatable), e.g. a fault switch.
    #[arg(long, value_parser = parse_env)]
    node_env: Vec<(String, String)>,
}

#[derive(Args, Clone)]
struct SteadyArgs {
    #[arg(long, default_value_t = 20)]
    nodes: usize,
    /// Percent of mesh packets dropped on arrival at every node.
    #[arg(long, default_value_t = 5)]
    loss_percent: u8,
    /// How long the loss is held once the cluster has formed, e.g. 60s, 1h.
    #[arg(long, default_value = "1h")]
    duration: String,
    #[arg(long, default_value = "chaos-report")]
    report_dir: PathBuf,
    #[arg(long)]
    shoal: Option<PathBuf>,
    #[arg(long)]
    insecure: bool,
    #[arg(long, default_value_t = 100)]
    poll_interval_ms: u64,
    /// Every node started at once must list every other as alive within this.
    #[arg(long, default_value_t = 60_000)]
    startup_bound_ms: u64,
    #[arg(long, value_parser = parse_env)]
    node_env: Vec<(String, String)>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHOAL_CHAOS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Run(a) => run(a, "run", Duration::from_secs(150)),
        Cmd::Soak(a) => run(a, "soak", Duration::from_secs(3600)),
        Cmd::Steady(a) => steady(a),
        Cmd::Cleanup { all } => {
            let removed = lab::cleanup::cleanup_leftovers(all);
            println!(
                "removed {} namespaces: {}",
                removed.len(),
                removed.join(" ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Sim {
            first,
            seeds,
            bug_adopt_older,
            threads,
            shape,
        } => Ok(sim(first, seeds, threads, &shape.config(bug_adopt_older))),
        Cmd::SimScale {
            nodes,
            seeds,
            first,
            threads,
            shape,
        } => sim_scale(&nodes, &seeds, first, threads, &shape.config(false)),
        Cmd::Schedule { seed, nodes, count } => {
            for e in Schedule::new(seed, ScheduleConfig::new(nodes)).take(count) {
                let faults: Vec<String> = e.faults.iter().map(|f| f.to_string()).collect();
                println!(
                    "{:>4}  hold {:>4} ms  {}",
                    e.index,
                    e.hold_ms,
                    faults.join(" + ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(2)
    })
}

fn sim(first: u64, seeds: u64, threads: usize, cfg: &shoal_chaos::sim::SimConfig) -> ExitCode {
    use shoal_chaos::sim;
    let started = std::time::Instant::now();
    if seeds == 1 {
        let o = sim::run_seed(first, cfg);
        println!(
            "seed {first}: {} nodes, {} faults, {} stamps, {} takeovers, {} messages, {} heals, converged after each in {:?} ms ({:.1} s)",
            cfg.nodes, o.faults, o.stamps, o.takeovers, o.messages, o.heals, o.convergence_ms,
            started.elapsed().as_secs_f64()
        );
        for v in &o.violations {
            println!("  {v}");
        }
        return if o.violations.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
    }
    let batch = sim::run_many(first, seeds, cfg, threads);
    let s = shoal_chaos::stats::summarize(&batch.convergence_ms);
    println!(
        "{seeds} seeds of {} nodes from {first} in {:.1} s: {} failed; {} heals, convergence after heal p50 {} ms, p99 {} ms, max {} ms; \
         {} publisher takeovers",
        cfg.nodes,
        started.elapsed().as_secs_f64(),
        batch.failed.len(),
        batch.heals,
        s.p50_ms,
        s.p99_ms,
        s.max_ms,
        batch.takeovers
    );
    for o in batch.failed.iter().take(20) {
        println!("seed {}: {}", o.seed, o.violations[0]);
    }
    if batch.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn default_shoal() -> PathBuf {
    if let Some(p) = std::env::var_os("SHOAL_BIN") {
        return PathBuf::from(p);
    }
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("shoal")))
        .unwrap_or_else(|| PathBuf::from("shoal"))
}

fn shoal_command(
    shoal: PathBuf,
    tls_root: Option<PathBuf>,
    rules: PathBuf,
    state_root: PathBuf,
    mesh_port: u16,
    admin_port: u16,
) -> NodeCommand {
    Box::new(move |spec: &NodeSpec<'_>| {
        let seeds: Vec<String> = spec
            .all_addrs
            .iter()
            .filter(|a| **a != spec.addr)
            .map(|a| format!("{a}:{mesh_port}"))
            .collect();
        let mut args = vec![
            "run".to_string(),
            "--node-id".into(),
            spec.id.to_string(),
            "--listen".into(),
            format!("{}:{mesh_port}", spec.addr),
            "--admin".into(),
            format!("{}:{admin_port}", spec.addr),
            "--cluster".into(),
            "chaos".into(),
            "--source".into(),
            "static".into(),
            "--rules".into(),
            rules.display().to_string(),
            "--dataplane".into(),
            "memory".into(),
            "--resync-interval-s".into(),
            "1".into(),
            // Kept across the node's restarts: the epoch file.
            "--state-dir".into(),
            state_root.join(spec.id).display().to_string(),
        ];
        if !seeds.is_empty() {
            args.push("--seeds".into());
            args.push(seeds.join(","));
        }
        match &tls_root {
            Some(root) => {
                args.push("--tls-dir".into());
                args.push(root.join(spec.id).display().to_string());
            }
            None => args.push("--insecure".into()),
        }
        (shoal.clone(), args)
    })
}

fn make_certs(shoal: &Path, out: &Path, nodes: usize) -> anyhow::Result<()> {
    let ids: Vec<String> = (0..nodes).map(lab::node_id).collect();
    let status = std::process::Command::new(shoal)
        .args(["certs", "init", "--out"])
        .arg(out)
        .args(["--cluster", "chaos", "--nodes", &ids.join(",")])
        .status()
        .with_context(|| format!("run {} certs init", shoal.display()))?;
    if !status.success() {
        bail!("{} certs init failed: {status}", shoal.display());
    }
    Ok(())
}

/// A lab ready to start: namespaces built, certificates made, nodes not started yet.
struct Prepared {
    lab: Lab,
    work: PathBuf,
    rules: PathBuf,
    tls: bool,
}

const MESH_PORT: u16 = 7946;
const ADMIN_PORT: u16 = 9100;

fn prepare(
    nodes: usize,
    insecure: bool,
    shoal: Option<PathBuf>,
    report_dir: &Path,
    node_log: &str,
    node_env: &[(String, String)],
) -> anyhow::Result<Prepared> {
    if !lab::sys::is_root() {
        bail!("the lab needs root (network namespaces, nftables)");
    }
    if !lab::sys::tools_present() {
        bail!("`ip` and `nft` are needed: apt-get install -y --no-install-recommends iproute2 nftables");
    }
    let shoal = shoal.unwrap_or_else(default_shoal);
    if !shoal.exists() {
        bail!("shoal binary {} not found (build it: cargo build -p shoal-node --bin shoal, or pass --shoal)", shoal.display());
    }
    let removed = lab::cleanup::cleanup_leftovers(false);
    if !removed.is_empty() {
        tracing::warn!(?removed, "removed leftovers of earlier runs");
    }
    let pid = std::process::id();
    let work = std::env::temp_dir().join(format!("shoal-chaos-{pid}"));
    std::fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
    std::fs::create_dir_all(report_dir)
        .with_context(|| format!("create {}", report_dir.display()))?;
    let tls_root = if insecure {
        None
    } else {
        let certs = work.join("certs");
        make_certs(&shoal, &certs, nodes)?;
        Some(certs)
    };
    let rules = work.join("rules.toml");
    let state_root = work.join("state");
    let command = shoal_command(
        shoal,
        tls_root,
        rules.clone(),
        state_root,
        MESH_PORT,
        ADMIN_PORT,
    );
    let mut lab = Lab::create(
        &format!("sc{pid}"),
        nodes,
        &report_dir.join("logs"),
        command,
    )?;
    lab.set_env("SHOAL_LOG", node_log);
    for (k, v) in node_env {
        lab.set_env(k, v);
    }
    Ok(Prepared {
        lab,
        work,
        rules,
        tls: !insecure,
    })
}

impl Drop for Prepared {
    fn drop(&mut self) {
        self.lab.teardown();
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

/// Runs `body` on a runtime whose threads live in the lab's control namespace; Ctrl-C or
/// SIGTERM turns the watch true. Returns the result and whether the run was interrupted.
fn in_ctl<'a, T, F>(
    lab: &'a mut Lab,
    body: impl FnOnce(&'a mut Lab, tokio::sync::watch::Receiver<bool>) -> F,
) -> anyhow::Result<(T, bool)>
where
    F: std::future::Future<Output = T> + 'a,
{
    // Every thread the runtime creates inherits the control namespace from this one.
    lab.enter_ctl()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    Ok(rt.block_on(async {
        tokio::spawn(async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            eprintln!("interrupted: stopping and removing the lab");
            let _ = stop_tx.send(true);
        });
        let r = body(lab, stop_rx.clone()).await;
        (r, *stop_rx.borrow())
    }))
}

fn run(a: RunArgs, verb: &str, default_duration: Duration) -> anyhow::Result<ExitCode> {
    let duration = match &a.duration {
        Some(d) => shoal_chaos::duration::parse(d)?,
        None => default_duration,
    };
    if a.nodes > lab::MAX_CHECKED_NODES {
        bail!(
            "nodes must be 1..={} for a fault run (the steady run takes more)",
            lab::MAX_CHECKED_NODES
        );
    }
    let mut p = prepare(
        a.nodes,
        a.insecure,
        a.shoal.clone(),
        &a.report_dir,
        &a.node_log,
        &a.node_env,
    )?;
    let replay = format!(
        "shoal-chaos {verb} --nodes {} --duration {}s --seed {}{}",
        a.nodes,
        duration.as_secs(),
        a.seed,
        if a.insecure { " --insecure" } else { "" }
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
    write_report(&a.report_dir, &report)?;
    print!("{}", report.to_markdown());
    Ok(if interrupted {
        ExitCode::from(130)
    } else if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn steady(a: SteadyArgs) -> anyhow::Result<ExitCode> {
    let duration = shoal_chaos::duration::parse(&a.duration)?;
    if a.loss_percent > 100 {
        bail!("--loss-percent must be 0..=100, got {}", a.loss_percent);
    }
    let replay = format!(
        "shoal-chaos steady --nodes {} --loss-percent {} --duration {}s{}",
        a.nodes,
        a.loss_percent,
        duration.as_secs(),
        if a.insecure { " --insecure" } else { "" }
    );
    let mut p = prepare(
        a.nodes,
        a.insecure,
        a.shoal.clone(),
        &a.report_dir,
        shoal_chaos::steady::NODE_LOG,
        &a.node_env,
    )?;
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
        shoal_chaos::steady::run::run(&cfg, lab, stop)
    })?;
    drop(p);
    let report = result?;
    let md = report.to_markdown();
    std::fs::write(a.report_dir.join("steady.md"), &md)
        .with_context(|| format!("write {}", a.report_dir.display()))?;
    std::fs::write(
        a.report_dir.join("steady.json"),
        serde_json::to_string_pretty(&report)?,
    )
    .with_context(|| format!("write {}", a.report_dir.display()))?;
    print!("{md}");
    Ok(if interrupted {
        ExitCode::from(130)
    } else if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn write_report(dir: &Path, report: &RunReport) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    std::fs::write(dir.join("report.json"), json).context("write report.json")?;
    std::fs::write(dir.join("report.md"), report.to_markdown()).context("write report.md")?;
    Ok(())
}

/// `sim-scale`: one row per cluster size, printed as it finishes, then the table.
fn sim_scale(
    nodes: &[usize],
    seeds: &[u64],
    first: u64,
    threads: usize,
    base: &shoal_chaos::sim::SimConfig,
) -> anyhow::Result<ExitCode> {
    use shoal_chaos::sim::scale;
    if nodes.len() != seeds.len() {
        bail!(
            "--seeds needs one count per --nodes size ({} sizes, {} counts)",
            nodes.len(),
            seeds.len()
        );
    }
    if let Some(n) = nodes.iter().find(|&&n| n < 2) {
        bail!("--nodes: a cluster needs at least 2 nodes, got {n}");
    }
    let mut rows = Vec::new();
    for (&n, &count) in nodes.iter().zip(seeds) {
        let row = scale::run_size(n, first, count, base, threads);
        print!("{}", scale::table(std::slice::from_ref(&row)));
        rows.push(row);
    }
    println!(
        "\n{} chaos-then-heal episodes per seed, {} ms of chaos each, bound {} ms after each heal, {threads} threads:\n",
        base.heals, base.chaos_ms, base.convergence_bound_ms
    );
    print!("{}", scale::table(&rows));
    Ok(if rows.iter().all(|r| r.violations == 0) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "shoal-chaos",
            "sim-scale",
            "--nodes",
            "10,1000",
            "--seeds",
            "3,1",
        ]);
        assert!(
            matches!(cli.map(|c| c.command), Ok(Cmd::SimScale { ref nodes, .. }) if nodes == &[10, 1000])
        );
    }
}
