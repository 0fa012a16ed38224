//! A cluster of real `shoal` processes on 127.0.0.1 for integration tests.
#![allow(dead_code)]

pub mod backend;

use serde_json::Value;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub struct Node {
    pub id: String,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub child: Option<Child>,
    pub log: PathBuf,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
    pub rules: PathBuf,
    pub extra_args: Vec<String>,
}

/// A port free a moment ago (TCP and UDP), below the kernel's ephemeral range (32768 and up):
/// a port the kernel picked (`bind(0)`) could be handed to another test's outbound connection
/// before the node bound it, and the node then failed to start (`cannot bind the admin API`).
/// Unique within this process; processes start at different places (by pid).
fn free_port() -> u16 {
    const FIRST: u32 = 10_000;
    const COUNT: u32 = 22_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7_919) % COUNT;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (start + n) % COUNT) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
}

pub fn free_udp_port() -> u16 {
    free_port()
}

pub fn free_tcp_port() -> u16 {
    free_port()
}

/// Prints the last `lines` lines of every `*.log` file in `dir` (a failing test's evidence).
pub fn dump_logs(dir: &Path, lines: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.path().extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let mut tail: Vec<&str> = text.lines().rev().take(lines).collect();
            tail.reverse();
            eprintln!(
                "--- {} (last lines)\n{}",
                entry.path().display(),
                tail.join("\n")
            );
        }
    }
}

impl Cluster {
    /// Starts `n` nodes (ids n1..nN) sharing one rules file, with TLS from `shoal certs init`.
    pub fn start(n: usize, rules: &str, extra_args: &[&str]) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("shoal-it-")
            .tempdir()
            .unwrap();
        let rules_path = dir.path().join("rules.toml");
        std::fs::write(&rules_path, rules).unwrap();
        let ids: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
        let out = Command::new(bin())
            .args([
                "certs",
                "init",
                "--cluster",
                "it",
                "--nodes",
                &ids.join(","),
            ])
            .arg("--out")
            .arg(dir.path().join("certs"))
            .output()
            .unwrap();
        assert!(out.status.success(), "certs init: {out:?}");
        let nodes = ids
            .iter()
            .map(|id| Node {
                id: id.clone(),
                listen: SocketAddr::from(([127, 0, 0, 1], free_udp_port())),
                admin: SocketAddr::from(([127, 0, 0, 1], free_tcp_port())),
                child: None,
                log: dir.path().join(format!("{id}.log")),
            })
            .collect();
        let mut cluster = Cluster {
            dir,
            nodes,
            rules: rules_path,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster
    }

    pub fn spawn(&mut self, i: usize) {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| n.listen.to_string())
            .collect();
        let node = &self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("run")
            .args([
                "--node-id",
                &node.id,
                "--cluster",
                "it",
                "--dataplane",
                "memory",
            ])
            .arg("--listen")
            .arg(node.listen.to_string())
            .arg("--admin")
            .arg(node.admin.to_string())
            .arg("--tls-dir")
            .arg(self.dir.path().join("certs").join(&node.id))
            .arg("--rules")
            .arg(&self.rules)
            .arg("--resync-interval-s")
            .arg("1")
            .args(&self.extra_args)
            .env("SHOAL_LOG", "info,shoal_gossip=debug,quinn=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if !seeds.is_empty() {
            cmd.arg("--seeds").arg(seeds.join(","));
        } else if !self.extra_args.iter().any(|a| a == "--single-node") {
            // A node without seeds is refused unless it is a cluster of one.
            cmd.arg("--single-node");
        }
        let child = cmd.spawn().expect("start shoal");
        self.nodes[i].child = Some(child);
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal(&self, i: usize, sig: nix::sys::signal::Signal) {
        let pid = self.nodes[i].child.as_ref().expect("running").id();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
    }

    pub fn running(&self) -> impl Iterator<Item = (usize, &Node)> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.child.is_some())
    }

    pub fn index_of(&self, id: &str) -> usize {
        self.nodes.iter().position(|n| n.id == id).unwrap()
    }

    pub fn logs(&self) -> String {
        let mut all = String::new();
        for n in &self.nodes {
            let text = std::fs::read_to_string(&n.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            all.push_str(&format!("---- {} (last 40 lines)\n", n.id));
            for l in tail.into_iter().rev() {
                all.push_str(l);
                all.push('\n');
            }
        }
        all
    }

    /// The head every running node has applied, once they all agree.
    pub fn wait_converged(&self, limit: Duration) -> Value {
        let running: Vec<usize> = self.running().map(|(i, _)| i).collect();
        self.wait_for(limit, "all running nodes applied one head", || {
            let mut head = None;
            for &i in &running {
                let c = get(self.nodes[i].admin, "/v1/cluster")?;
                let h = head_id(&c["head"]);
                if h.is_null() {
                    return None;
                }
                let me = c["members"]
                    .as_array()?
                    .iter()
                    .find(|m| m["id"] == self.nodes[i].id.as_str())?
                    .clone();
                let applied = &me["applied"];
                if applied["epoch"] != h["epoch"]
                    || applied["seq"] != h["seq"]
                    || applied["origin"] != h["origin"]
                {
                    return None;
                }
                let alive = c["members"]
                    .as_array()?
                    .iter()
                    .filter(|m| m["alive"] == true)
                    .count();
                if alive != running.len() {
                    return None;
                }
                match &head {
                    None => head = Some(h),
                    Some(prev) if *prev != h => return None,
                    _ => {}
                }
            }
            head
        })
    }

    /// Like [`Cluster::wait_converged`], on a head stamped by `origin`.
    pub fn wait_converged_on(&self, origin: &str, limit: Duration) -> Value {
        self.wait_for(
            limit,
            &format!("convergence on a head from {origin}"),
            || {
                let h = self.wait_converged(limit);
                (h["origin"] == origin).then_some(h)
            },
        )
    }

    pub fn wait_for<T>(&self, limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            if start.elapsed() > limit {
                panic!(
                    "timed out after {limit:?} waiting for: {what}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                // A frozen child cannot die of SIGKILL until it is continued? It can; but
                // continue it first so no stopped process is left behind.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(c.id() as i32),
                    nix::sys::signal::Signal::SIGCONT,
                );
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// The binary under test: cargo's build of `shoal`, or `$SHOAL_BIN` (scripts/attack-probe.sh
/// runs the suites against the release binary that way).
pub fn bin() -> String {
    std::env::var("SHOAL_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_shoal").to_string())
}

/// GET a JSON document from an admin API; None on any failure (the caller retries).
pub fn get(admin: SocketAddr, path: &str) -> Option<Value> {
    let (code, body) = http_get(admin, path)?;
    if code != 200 {
        return None;
    }
    serde_json::from_str(&body).ok()
}

/// A minimal blocking HTTP/1.0 GET, so tests need no async runtime.
pub fn http_get(admin: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&admin, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {admin}\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// The `error` of a JSON error answer to `path`, which must come with status `code`.
pub fn json_error(admin: SocketAddr, path: &str, code: u16) -> String {
    let (got, body) = http_get(admin, path).expect("an answer");
    assert_eq!(got, code, "{path}: {body}");
    let error: Value = serde_json::from_str(&body).expect("a JSON body");
    error["error"].as_str().expect("an error").to_string()
}

pub fn write_rules(path: &Path, text: &str) {
    // Write then rename, as editors do, so the source never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

pub fn rules(weight: u32) -> String {
    format!(
        "[[service]]\nname='web'\nvip='203.0.113.10'\nport=80\n\n[[service.backend]]\naddress='198.18.1.10'\nweight={weight}\n\n[[service.backend]]\naddress='198.18.1.11'\n\n[[service]]\nname='dns'\nvip='203.0.113.53'\nport=53\nprotocol='udp'\nscheduler='wrr'\n\n[[service.backend]]\naddress='198.18.1.20'\nweight=2\n"
    )
}

/// The identity of a head: version and digest (holders change as nodes fetch it).
pub fn head_id(head: &Value) -> Value {
    if head.is_null() {
        return Value::Null;
    }
    serde_json::json!({
        "epoch": head["epoch"], "seq": head["seq"], "origin": head["origin"], "digest": head["digest"]
    })
}
