//! `shoal demo`: a local cluster on 127.0.0.1 that shows agreement, a publisher takeover, a
//! rules edit reaching every node, and a restart of the old publisher that does not move the
//! role back (the publisher is sticky). No root, no Kubernetes: the in-memory dataplane.

use crate::cli::DemoArgs;
use crate::commands::get_bytes;
use crate::status::ClusterStatus;
use crate::stop_signals::{Hangup, StopSignals};
use anyhow::Context;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

const BACKENDS: [&str; 2] = ["127.0.0.2", "127.0.0.3"];
const WAIT_LIMIT: Duration = Duration::from_secs(30);

struct DemoNode {
    id: String,
    admin: String,
    child: Option<Child>,
}

/// The demo's ports, as offsets from `--base-port`: node `i` peers on `+i` and serves its
/// admin API on `+40+i`; the backends listen on `+80`.
const ADMIN_OFFSET: u16 = 40;
const SERVICE_OFFSET: u16 = 80;

/// Checks the demo's flags before anything starts, so that no port arithmetic can overflow.
fn check_args(args: &DemoArgs) -> anyhow::Result<()> {
    // The walkthrough kills the publisher and shows another take over: one node has no other.
    anyhow::ensure!(
        (2..=9).contains(&args.nodes),
        "--nodes must be 2 to 9 (the walkthrough needs a survivor to take over)"
    );
    let max_base = u16::MAX - SERVICE_OFFSET;
    anyhow::ensure!(
        (1..=max_base).contains(&args.base_port),
        "--base-port {} is outside 1-{max_base} (the demo uses up to {SERVICE_OFFSET} ports above it)",
        args.base_port
    );
    Ok(())
}

/// The demo's life: the walkthrough, then (without `--exit-after`) running until a signal.
/// SIGINT, SIGTERM or SIGHUP at any moment stop the nodes and remove the workspace; a failed
/// walkthrough stops them too but keeps the workspace for its logs.
pub async fn run(args: &DemoArgs) -> anyhow::Result<()> {
    check_args(args)?;
    let mut stop = StopSignals::install(Hangup::Stops)?;
    let dir = tempfile::Builder::new().prefix("shoal-demo-").tempdir()?;
    let mut nodes: Vec<DemoNode> = Vec::new();
    let interrupted = tokio::select! {
        done = walkthrough(args, dir.path(), &mut nodes) => match done {
            Ok(()) => None,
            Err(e) => {
                let dead = dead_nodes(&mut nodes, dir.path());
                stop_nodes(&mut nodes).await;
                let kept = dir.keep();
                anyhow::bail!(
                    "{e:#}\n{dead}the nodes' logs are kept in {} (with the demo's \
                     certificates; remove it when done)",
                    kept.display()
                );
            }
        },
        signal = stop.next() => Some(signal),
    };
    if let Some(signal) = interrupted {
        outln!()?;
        step(&format!("{signal}: stopping the nodes"))?;
        stop_nodes(&mut nodes).await;
        anyhow::bail!("stopped by {signal} before the walkthrough finished");
    }
    if !args.exit_after {
        outln!("\nRunning until Ctrl-C (or SIGTERM).")?;
        let signal = stop.next().await;
        outln!()?;
        step(&format!("{signal}: stopping the nodes"))?;
    } else {
        step("stopping the nodes")?;
    }
    stop_nodes(&mut nodes).await;
    Ok(())
}

/// The walkthrough itself; every node it starts goes into `nodes`, so that the caller can stop
/// them however this ends.
async fn walkthrough(args: &DemoArgs, dir: &Path, nodes: &mut Vec<DemoNode>) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the shoal binary")?;
    let service_port = args.base_port + SERVICE_OFFSET;

    step(&format!("workspace {}", dir.display()))?;
    let ids: Vec<String> = (1..=args.nodes).map(|i| format!("node-{i}")).collect();
    crate::commands::certs_init(&crate::cli::CertsInitArgs {
        out: dir.join("certs"),
        cluster: "demo".into(),
        nodes: ids.clone(),
        ca_days: shoal_gossip::certs::CA_DAYS_DEFAULT,
        node_days: shoal_gossip::certs::NODE_DAYS_DEFAULT,
    })?;

    let _backends = start_backends(service_port).await?;
    step(&format!(
        "two HTTP backends on {}:{service_port} and {}:{service_port}",
        BACKENDS[0], BACKENDS[1]
    ))?;
    let rules = dir.join("rules.toml");
    std::fs::write(&rules, demo_rules(service_port, 1))?;

    let peer = |i: usize| format!("127.0.0.1:{}", args.base_port + i as u16);
    let admin = |i: usize| format!("127.0.0.1:{}", args.base_port + ADMIN_OFFSET + i as u16);
    for (i, id) in ids.iter().enumerate() {
        let seeds: Vec<String> = (0..args.nodes).filter(|j| *j != i).map(peer).collect();
        let child = spawn_node(&exe, dir, id, &peer(i), &admin(i), &seeds, &rules)?;
        nodes.push(DemoNode {
            id: id.clone(),
            admin: admin(i),
            child: Some(child),
        });
    }
    step(&format!(
        "started {} nodes; waiting until every node applied the head",
        args.nodes
    ))?;
    let t0 = Instant::now();
    // A node that cannot start (a port taken, say) exits at once: say so now, not after the
    // wait's 30 s.
    loop {
        if let Some(dead) = first_exited(nodes) {
            anyhow::bail!("{dead} exited during start-up");
        }
        if all_applied(nodes, None).await.is_some() {
            break;
        }
        anyhow::ensure!(
            t0.elapsed() < WAIT_LIMIT,
            "the nodes did not converge within {} s",
            WAIT_LIMIT.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done(&format!("converged in {} ms", t0.elapsed().as_millis()))?;
    print_status(&nodes[0].admin).await?;

    // Takeover: kill -9 the publisher.
    // Read again until there is a publisher: on a starved host a node that missed its control
    // deadline steps back to catching up for a moment, and shows none meanwhile (the demo
    // once stopped here with "no publisher" beside a busy VM).
    let (old, old_head) = wait_until(|| async {
        let s = cluster(&nodes[0].admin).await.ok()?;
        Some((s.publisher.clone()?, s.head_version()?))
    })
    .await
    .context("no publisher with a head")?;
    let idx = nodes
        .iter()
        .position(|n| n.id == old)
        .context("publisher is not ours")?;
    step(&format!("kill -9 the publisher {old} (head {old_head})"))?;
    let killed_at = Instant::now();
    if let Some(mut c) = nodes[idx].child.take() {
        c.start_kill()?;
        let _ = c.wait().await;
    }
    let survivor = nodes
        .iter()
        .find(|n| n.child.is_some())
        .context("no survivor")?
        .admin
        .clone();
    let takeover = wait_until(|| async {
        let s = cluster(&survivor).await.ok()?;
        let p = s.publisher.clone()?;
        let head = s.head_version()?;
        (p != old && head.origin == p && head > old_head).then_some((p, head))
    })
    .await?;
    let takeover_ms = killed_at.elapsed().as_millis();
    wait_until(|| all_applied(nodes, Some(&takeover.1))).await?;
    done(&format!(
        "{} took over in {takeover_ms} ms with version {}; every live node applied it after {} ms",
        takeover.0,
        takeover.1,
        killed_at.elapsed().as_millis()
    ))?;

    // A rules edit: weight 1 -> 3 on the first backend.
    step("edit the rules: first backend weight 1 -> 3")?;
    let edited_at = Instant::now();
    std::fs::write(&rules, demo_rules(service_port, 3))?;
    let new_head = wait_until(|| async {
        let s = cluster(&survivor).await.ok()?;
        let head = s.head_version()?;
        (head > takeover.1).then_some(head)
    })
    .await?;
    wait_until(|| all_applied(nodes, Some(&new_head))).await?;
    done(&format!(
        "version {new_head} reached every live node in {} ms",
        edited_at.elapsed().as_millis()
    ))?;

    step(&format!("restart {old} (new generation)"))?;
    let restarted_at = Instant::now();
    let seeds: Vec<String> = (0..args.nodes).filter(|j| *j != idx).map(peer).collect();
    nodes[idx].child = Some(spawn_node(
        &exe,
        dir,
        &old,
        &peer(idx),
        &admin(idx),
        &seeds,
        &rules,
    )?);
    // The restarted node has the lowest id, but the publisher is sticky: it catches up and
    // follows; the role does not move and no new version is stamped.
    let settled = wait_until(|| async {
        let s = cluster(&nodes[idx].admin).await.ok()?;
        let me = s.members.iter().find(|m| m.id == old)?;
        (me.role == "follower").then_some(())?;
        let p = s.publisher.clone()?;
        let head = s.head_version()?;
        (head == new_head).then_some(())?;
        all_applied(nodes, Some(&head)).await?;
        Some(p)
    })
    .await?;
    done(&format!(
        "{old} rejoined and every node applied the head in {} ms",
        restarted_at.elapsed().as_millis()
    ))?;
    done(&format!(
        "settled: {settled} still publishes (sticky), head {new_head} unchanged, every node applied it"
    ))?;
    print_status(&nodes[0].admin).await?;
    if args.exit_after {
        // The nodes stop next: no invitation to try them.
        return Ok(());
    }

    outln!("\nAdmin APIs (try /v1/cluster, /v1/table, /v1/dataplane, /metrics):")?;
    for n in nodes.iter() {
        outln!("  {}: http://{}/v1/cluster", n.id, n.admin)?;
    }
    outln!("  shoal status --node {}", nodes[0].admin)?;
    outln!(
        "Rules file: {} (edit it and watch the version move)",
        rules.display()
    )?;
    Ok(())
}

/// SIGTERM to every node at once, up to 5 s for them to leave the mesh, then SIGKILL.
async fn stop_nodes(nodes: &mut [DemoNode]) {
    let mut children: Vec<Child> = nodes.iter_mut().filter_map(|n| n.child.take()).collect();
    for c in &children {
        if let Some(pid) = c.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    for c in &mut children {
        if tokio::time::timeout_at(deadline, c.wait()).await.is_err() {
            let _ = c.kill().await;
        }
    }
}

/// The first node that has exited although the walkthrough did not stop it.
fn first_exited(nodes: &mut [DemoNode]) -> Option<String> {
    nodes.iter_mut().find_map(|n| {
        let status = n.child.as_mut()?.try_wait().ok()??;
        Some(format!("{} ({status})", n.id))
    })
}

/// Each node that exited on its own, with the end of its log: why the walkthrough failed.
fn dead_nodes(nodes: &mut [DemoNode], dir: &Path) -> String {
    let mut out = String::new();
    for n in nodes.iter_mut() {
        let Some(Ok(Some(status))) = n.child.as_mut().map(|c| c.try_wait()) else {
            continue;
        };
        let log = std::fs::read_to_string(dir.join(format!("{}.log", n.id))).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(3).collect();
        out.push_str(&format!("{} exited ({status}); its log ends:\n", n.id));
        for line in tail.into_iter().rev() {
            out.push_str(&format!("    {line}\n"));
        }
    }
    out
}

fn spawn_node(
    exe: &Path,
    dir: &Path,
    id: &str,
    listen: &str,
    admin: &str,
    seeds: &[String],
    rules: &Path,
) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{id}.log")))?;
    let tls: PathBuf = dir.join("certs").join(id);
    // kill_on_drop needs the demo to run its drops: a demo killed with SIGKILL (or crashed)
    // left its nodes running for good, holding the ports the next demo wants (an operator's
    // probe). Started through `setpriv --pdeathsig TERM` (as BIRD is), each node gets the
    // SIGTERM it stops cleanly on when the demo's thread that started it is gone (that thread
    // lives as long as the runtime). Without setpriv (not util-linux), as before.
    let with_setpriv = setpriv_available();
    let mut cmd = if with_setpriv {
        let mut c = Command::new("setpriv");
        c.args(["--pdeathsig", "TERM", "--"]).arg(exe);
        c
    } else {
        Command::new(exe)
    };
    cmd.arg("run")
        .args(["--node-id", id, "--listen", listen, "--admin", admin])
        .args(["--cluster", "demo", "--dataplane", "memory"])
        .arg("--tls-dir")
        .arg(&tls)
        .arg("--rules")
        .arg(rules)
        .arg("--state-dir")
        .arg(dir.join("state").join(id));
    if !seeds.is_empty() {
        cmd.arg("--seeds").arg(seeds.join(","));
    }
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    cmd.spawn().with_context(|| format!("starting {id}"))
}

/// Whether `setpriv` (util-linux) runs here.
fn setpriv_available() -> bool {
    std::process::Command::new("setpriv")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn demo_rules(port: u16, first_weight: u32) -> String {
    format!(
        r#"# Generated by `shoal demo`; edit me.
# The demo's backends are loopback aliases on this one host.
loopback_backends = true

[[service]]
name = "web"
vip = "203.0.113.10"
port = {port}
scheduler = "mh"
forwarding = "tunnel"

[[service.backend]]
address = "{b0}"
weight = {first_weight}

[[service.backend]]
address = "{b1}"
weight = 1

[service.health]
kind = "http"
path = "/healthz"
interval_ms = 500
timeout_ms = 300
rise = 2
fall = 2

[[service]]
name = "dns"
vip = "203.0.113.53"
port = 53
protocol = "udp"
scheduler = "wrr"

[[service.backend]]
address = "{b0}"
weight = 2
"#,
        b0 = BACKENDS[0],
        b1 = BACKENDS[1],
    )
}

/// Tiny HTTP backends on loopback aliases, so health checks have something real to probe.
async fn start_backends(port: u16) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut tasks = Vec::new();
    for addr in BACKENDS {
        let sock = SocketAddr::new(addr.parse()?, port);
        let listener = tokio::net::TcpListener::bind(sock)
            .await
            .with_context(|| format!("binding demo backend {sock}"))?;
        let app = axum::Router::new()
            .route("/healthz", axum::routing::get(|| async { "ok\n" }))
            .route(
                "/",
                axum::routing::get(move || async move { format!("hello from {addr}\n") }),
            );
        tasks.push(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
    }
    Ok(tasks)
}

async fn cluster(admin: &str) -> anyhow::Result<ClusterStatus> {
    Ok(serde_json::from_slice(
        &get_bytes(admin, "/v1/cluster", None).await?,
    )?)
}

/// Every running node has applied `head` (or, without one, the head it sees), and every
/// running node's view says so of every other.
async fn all_applied(nodes: &[DemoNode], head: Option<&crate::status::VersionRef>) -> Option<()> {
    let running: Vec<&DemoNode> = nodes.iter().filter(|n| n.child.is_some()).collect();
    for n in &running {
        let s = cluster(&n.admin).await.ok()?;
        let h = s.head_version()?;
        if head.is_some_and(|want| &h != want) {
            return None;
        }
        for other in &running {
            let m = s.members.iter().find(|m| m.id == other.id)?;
            if !m.alive || m.applied.as_ref() != Some(&h) {
                return None;
            }
        }
    }
    Some(())
}

async fn wait_until<T, F, Fut>(mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    let mut dots = 0;
    loop {
        if let Some(v) = f().await {
            if dots > 0 {
                eprintln!();
            }
            return Ok(v);
        }
        if start.elapsed() > WAIT_LIMIT {
            anyhow::bail!(
                "gave up after {} s; see the node logs",
                WAIT_LIMIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if start.elapsed().as_millis() / 1000 > dots {
            dots += 1;
            eprint!(".");
        }
    }
}

async fn print_status(admin: &str) -> anyhow::Result<()> {
    outln!()?;
    out!("{}", cluster(admin).await?.render())?;
    outln!()?;
    Ok(())
}

fn step(s: &str) -> std::io::Result<()> {
    outln!("==> {s}")
}

fn done(s: &str) -> std::io::Result<()> {
    outln!("    {s}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(nodes: usize, base_port: u16) -> DemoArgs {
        DemoArgs {
            nodes,
            base_port,
            exit_after: true,
        }
    }

    #[test]
    fn flags_that_would_overflow_a_port_are_refused_naming_the_flag() {
        assert!(check_args(&args(3, 17900)).is_ok());
        assert!(check_args(&args(9, u16::MAX - SERVICE_OFFSET)).is_ok());
        for bad in [0, u16::MAX - SERVICE_OFFSET + 1, u16::MAX] {
            let err = check_args(&args(3, bad)).unwrap_err().to_string();
            assert!(
                err.contains("--base-port") && err.contains("outside"),
                "{err}"
            );
        }
        assert!(check_args(&args(2, 17900)).is_ok());
        // One node: the walkthrough's takeover would have no survivor.
        for bad in [0, 1, 10, usize::MAX] {
            let err = check_args(&args(bad, 17900)).unwrap_err().to_string();
            assert!(err.contains("--nodes"), "{err}");
        }
    }
}
