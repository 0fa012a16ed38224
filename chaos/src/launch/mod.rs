//! The glue between `shoal-chaos`'s command line and a lab run: the flags every lab command
//! shares (`LabArgs`), building the lab (namespaces, certificates, the `shoal` command line of
//! each node), a runtime inside the lab's control namespace that turns Ctrl-C/SIGTERM into a
//! stop, and the verdict a run ends with. `faults` (run, soak), `steady` and `sim` (sim,
//! sim-scale) hold each command's own flags and its run.

pub mod faults;
pub mod sim;
pub mod steady;

use crate::lab::{self, Lab, NodeCommand, NodeSpec};
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The flags every lab command takes (flattened into `run`, `soak` and `steady`).
#[derive(clap::Args, Clone, Debug)]
pub struct LabArgs {
    /// Where the report and the nodes' logs (REPORT_DIR/logs) go.
    #[arg(long, default_value = "chaos-report")]
    pub report_dir: PathBuf,
    /// The shoal binary (default: $SHOAL_BIN, else `shoal` next to this binary).
    #[arg(long)]
    pub shoal: Option<PathBuf>,
    /// Run the mesh without TLS (default: mutual TLS with `shoal certs init`).
    #[arg(long)]
    pub insecure: bool,
    /// Extra environment for every node, KEY=VALUE (repeatable), e.g. a fault switch.
    #[arg(long, value_parser = parse_env)]
    pub node_env: Vec<(String, String)>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

/// How a lab run ended; the binary's exit code (0, 1, 130).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    Violations,
    Interrupted,
}

impl Verdict {
    fn of(passed: bool, interrupted: bool) -> Verdict {
        match (interrupted, passed) {
            (true, _) => Verdict::Interrupted,
            (false, true) => Verdict::Passed,
            (false, false) => Verdict::Violations,
        }
    }
}

impl From<Verdict> for ExitCode {
    fn from(v: Verdict) -> ExitCode {
        match v {
            Verdict::Passed => ExitCode::SUCCESS,
            Verdict::Violations => ExitCode::from(1),
            Verdict::Interrupted => ExitCode::from(130),
        }
    }
}

const MESH_PORT: u16 = 7946;
const ADMIN_PORT: u16 = 9100;

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
) -> NodeCommand {
    Box::new(move |spec: &NodeSpec<'_>| {
        let seeds: Vec<String> = spec
            .all_addrs
            .iter()
            .filter(|a| **a != spec.addr)
            .map(|a| format!("{a}:{MESH_PORT}"))
            .collect();
        let mut args = vec![
            "run".to_string(),
            "--node-id".into(),
            spec.id.to_string(),
            "--listen".into(),
            format!("{}:{MESH_PORT}", spec.addr),
            "--admin".into(),
            format!("{}:{ADMIN_PORT}", spec.addr),
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
        if seeds.is_empty() {
            // A node without seeds is refused unless it is a cluster of one.
            args.push("--single-node".into());
        } else {
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

/// A lab ready to start: namespaces built, certificates made, nodes not started yet. Dropping
/// it tears the lab down and removes its work folder.
struct Prepared {
    lab: Lab,
    work: PathBuf,
    rules: PathBuf,
    tls: bool,
}

/// Builds the lab for `nodes` nodes; `node_log` is the nodes' SHOAL_LOG.
fn prepare(nodes: usize, a: &LabArgs, node_log: &str) -> anyhow::Result<Prepared> {
    if !lab::sys::is_root() {
        bail!("the lab needs root (network namespaces, nftables)");
    }
    if !lab::sys::tools_present() {
        bail!("`ip` and `nft` are needed: apt-get install -y --no-install-recommends iproute2 nftables");
    }
    let shoal = a.shoal.clone().unwrap_or_else(default_shoal);
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
    std::fs::create_dir_all(&a.report_dir)
        .with_context(|| format!("create {}", a.report_dir.display()))?;
    let tls_root = if a.insecure {
        None
    } else {
        let certs = work.join("certs");
        make_certs(&shoal, &certs, nodes)?;
        Some(certs)
    };
    let rules = work.join("rules.toml");
    let command = shoal_command(shoal, tls_root, rules.clone(), work.join("state"));
    let mut lab = Lab::create(
        &format!("sc{pid}"),
        nodes,
        &a.report_dir.join("logs"),
        command,
    )?;
    lab.set_env("SHOAL_LOG", node_log);
    for (k, v) in &a.node_env {
        lab.set_env(k, v);
    }
    Ok(Prepared {
        lab,
        work,
        rules,
        tls: !a.insecure,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_env_is_key_equals_value() {
        assert_eq!(
            parse_env("SHOAL_FAULT=a=b"),
            Ok(("SHOAL_FAULT".into(), "a=b".into()))
        );
        assert_eq!(parse_env("K="), Ok(("K".into(), String::new())));
        assert!(parse_env("=v").is_err());
        assert!(parse_env("novalue").is_err());
    }

    #[test]
    fn verdict_is_the_exit_code() {
        assert_eq!(Verdict::of(true, false), Verdict::Passed);
        assert_eq!(Verdict::of(false, false), Verdict::Violations);
        assert_eq!(Verdict::of(true, true), Verdict::Interrupted);
        assert_eq!(ExitCode::from(Verdict::Violations), ExitCode::from(1));
    }
}
