//! `shoal demo`: a local cluster on 127.0.0.1 that shows agreement, a publisher takeover, a
//! rules edit reaching every node, and a restart of the old publisher that does not move the
//! role back (the publisher is sticky). No root, no Kubernetes: the in-memory dataplane.

use crate::cli::DemoArgs;
use crate::commands::get_bytes;
use crate::status::ClusterStatus;
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

pub async fn run(args: &DemoArgs) -> anyhow::Result<()> {
    check_args(args)?;
    let dir = tempfile::Builder::new().prefix("shoal-demo-").tempdir()?;
    let exe = std::env::current_exe().context("locating the shoal binary")?;
    let service_port = args.base_port + SERVICE_OFFSET;

    step(&format!("workspace {}", dir.path().display()))?;
    let ids: Vec<String> = (1..=args.nodes).map(|i| format!("node-{i}")).collect();
    crate::commands::certs_init(&crate::cli::CertsInitArgs {
        out: dir.path().join("certs"),
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
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, demo_rules(service_port, 1))?;

    let peer = |i: usize| format!("127.0.0.1:{}", args.base_port + i as u16);
    let admin = |i: usize| format!("127.0.0.1:{}", args.base_port + ADMIN_OFFSET + i as u16);
    let mut nodes = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let seeds: Vec<String> = (0..args.nodes).filter(|j| *j != i).map(peer).collect();
        let child = spawn_node(&exe, dir.path(), id, &peer(i), &admin(i), &seeds, &rules)?;
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
    wait_until(|| all_applied(&nodes, None)).await?;
    done(&format!("converged in {} ms", t0.elapsed().as_millis()))?;
    print_status(&nodes[0].admin).await?;

    // Takeover: kill -9 the publisher.
    let before = cluster(&nodes[0].admin).await?;
    let old = before.publisher.clone().context("no publisher")?;
    let old_head = before.head_version().context("no head")?;
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
    wait_until(|| all_applied(&nodes, Some(&takeover.1))).await?;
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
    wait_until(|| all_applied(&nodes, Some(&new_head))).await?;
    done(&format!(
        "version {new_head} reached every live node in {} ms",
        edited_at.elapsed().as_millis()
    ))?;

    step(&format!("restart {old} (new generation)"))?;
    let restarted_at = Instant::now();
    let seeds: Vec<String> = (0..args.nodes).filter(|j| *j != idx).map(peer).collect();
    nodes[idx].child = Some(spawn_node(
        &exe,
        dir.path(),
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
        all_applied(&nodes, Some(&head)).await?;
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

    outln!("\nAdmin APIs (try /v1/cluster, /v1/table, /v1/dataplane, /metrics):")?;
    for n in &nodes {
        outln!("  {}: http://{}/v1/cluster", n.id, n.admin)?;
    }
    outln!("  shoal status --node {}", nodes[0].admin)?;
    outln!(
        "Rules file: {} (edit it and watch the version move)",
        rules.display()
    )?;
    if !args.exit_after {
        outln!("\nRunning until Ctrl-C.")?;
        tokio::signal::ctrl_c().await?;
    }
    step("stopping the nodes")?;
    for n in &mut nodes {
        if let Some(mut c) = n.child.take() {
            if let Some(pid) = c.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), c.wait()).await;
        }
    }
    Ok(())
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
    let mut cmd = Command::new(exe);
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
