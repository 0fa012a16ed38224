//! A lab of network namespaces for the announce tests: a router namespace holding a bridge (and,
//! for BGP, its own BIRD with multipath and BFD), one namespace per replica running `shoal` (and
//! its BIRD), and optionally a client namespace on the same bridge.
//!
//! Every name carries a per-process prefix so parallel runs never collide; everything is
//! removed on drop (processes are killed by pid first, then the namespaces deleted).
//!
//! Why this file is over 500 lines: one lab (namespaces, bridge, BIRD, replicas) whose setup and
//! teardown steps depend on each other; the tests that use it are in their own files.
#![allow(dead_code)]

use serde_json::Value;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../common/netns.rs"]
mod netns;
pub use netns::*;

pub const ROUTER4: &str = "198.18.1.1";
pub const ROUTER6: &str = "2001:db8:1::1";
pub const CLIENT4: &str = "198.18.1.100";
pub const CLIENT6: &str = "2001:db8:1::100";
pub const ROUTER_ASN: u32 = 64500;
pub const NODE_ASN: u32 = 64512;

pub fn node4(i: usize) -> String {
    format!("198.18.1.{}", 11 + i)
}
pub fn node6(i: usize) -> String {
    format!("2001:db8:1::{}", 11 + i)
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_shoal")
}

pub struct LabNode {
    pub id: String,
    pub ns: String,
    /// The node's interface towards the bridge (inside its namespace).
    pub dev: String,
    pub addr4: String,
    pub addr6: String,
    pub child: Option<Child>,
    pub log: PathBuf,
    pub config: PathBuf,
}

impl LabNode {
    /// `shoal run` in this node's namespace with its id, the lab's cluster name and the
    /// memory dataplane; the caller adds the rest.
    fn run_command(&self) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, bin(), "run"]).args([
            "--node-id",
            &self.id,
            "--cluster",
            "it",
            "--dataplane",
            "memory",
        ]);
        cmd
    }
}

pub struct Lab {
    pub prefix: String,
    pub dir: tempfile::TempDir,
    pub router_ns: String,
    pub bridge: String,
    pub client_ns: Option<String>,
    pub nodes: Vec<LabNode>,
    pub rules: PathBuf,
    router_bird: Option<Child>,
    extra_args: Vec<String>,
}

impl Lab {
    /// Builds the namespaces: router with the bridge, `n` replicas, and a client if asked.
    pub fn new(n: usize, rules: &str, with_client: bool) -> Lab {
        // Labs of one test binary run in parallel: each gets its own names.
        static LABS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let k = LABS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let prefix = match k {
            0 => format!("sa{}", std::process::id() % 100_000),
            k => format!("sa{}x{k}", std::process::id() % 100_000),
        };
        let dir = tempfile::Builder::new()
            .prefix("shoal-announce-")
            .tempdir()
            .unwrap();
        let rules_path = dir.path().join("rules.toml");
        std::fs::write(&rules_path, rules).unwrap();
        let router_ns = format!("{prefix}r");
        let bridge = format!("{prefix}br");
        let mut lab = Lab {
            prefix: prefix.clone(),
            dir,
            router_ns: router_ns.clone(),
            bridge: bridge.clone(),
            client_ns: None,
            nodes: vec![],
            rules: rules_path,
            router_bird: None,
            extra_args: vec![],
        };
        add_ns(&router_ns);
        sh(&[
            "ip", "-n", &router_ns, "link", "add", &bridge, "type", "bridge",
        ]);
        add_addrs(
            &router_ns,
            &bridge,
            &format!("{ROUTER4}/24"),
            &format!("{ROUTER6}/64"),
        );
        for i in 0..n {
            let ns = format!("{prefix}n{}", i + 1);
            let dev = format!("{prefix}e{}", i + 1);
            lab.attach(
                &ns,
                &dev,
                &node4(i),
                &node6(i),
                &format!("{prefix}b{}", i + 1),
            );
            lab.nodes.push(LabNode {
                id: format!("n{}", i + 1),
                ns: ns.clone(),
                dev,
                addr4: node4(i),
                addr6: node6(i),
                child: None,
                log: lab.dir.path().join(format!("n{}.log", i + 1)),
                config: lab.dir.path().join(format!("n{}.toml", i + 1)),
            });
        }
        if with_client {
            let ns = format!("{prefix}c");
            lab.attach(
                &ns,
                &format!("{prefix}ec"),
                CLIENT4,
                CLIENT6,
                &format!("{prefix}bc"),
            );
            lab.client_ns = Some(ns);
        }
        lab
    }

    /// A namespace with a veth to the bridge and the given addresses.
    fn attach(&self, ns: &str, dev: &str, a4: &str, a6: &str, bridge_port: &str) {
        add_ns(ns);
        sh(&[
            "ip",
            "link",
            "add",
            dev,
            "netns",
            ns,
            "type",
            "veth",
            "peer",
            "name",
            bridge_port,
            "netns",
            &self.router_ns,
        ]);
        sh(&[
            "ip",
            "-n",
            &self.router_ns,
            "link",
            "set",
            bridge_port,
            "master",
            &self.bridge,
        ]);
        sh(&[
            "ip",
            "-n",
            &self.router_ns,
            "link",
            "set",
            bridge_port,
            "up",
        ]);
        add_addrs(ns, dev, &format!("{a4}/24"), &format!("{a6}/64"));
    }

    /// Starts the router's BIRD: one eBGP session per replica and family, BFD, multipath.
    pub fn start_router_bird(&mut self) {
        let mut conf = format!(
            "router id {ROUTER4};\nprotocol device {{}}\n\
             protocol kernel {{ merge paths yes; ipv4 {{ import none; export all; }}; }}\n\
             protocol kernel {{ merge paths yes; ipv6 {{ import none; export all; }}; }}\n\
             protocol bfd {{ interface \"*\" {{ min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }}; }}\n\
             template bgp lb {{ local as {ROUTER_ASN}; bfd on; hold time 9; connect delay time 1; connect retry time 1; error wait time 1, 5; }}\n"
        );
        for (i, n) in self.nodes.iter().enumerate() {
            conf.push_str(&format!(
                "protocol bgp {id}v4 from lb {{ neighbor {a4} as {NODE_ASN}; ipv4 {{ import all; export none; }}; }}\n\
                 protocol bgp {id}v6 from lb {{ neighbor {a6} as {NODE_ASN}; ipv6 {{ import all; export none; }}; }}\n",
                id = n.id,
                a4 = node4(i),
                a6 = node6(i),
            ));
        }
        let path = self.dir.path().join("router.conf");
        std::fs::write(&path, conf).unwrap();
        let log = std::fs::File::create(self.dir.path().join("router-bird.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.router_ns, "bird", "-f", "-c"])
            .arg(&path)
            .arg("-s")
            .arg(self.dir.path().join("router.ctl"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the router's BIRD");
        self.router_bird = Some(child);
    }

    /// Writes node `i`'s config file (`announce` settings) and remembers extra flags.
    pub fn write_config(&self, i: usize, text: &str) {
        std::fs::write(&self.nodes[i].config, text).unwrap();
    }

    /// The `[bgp]` config of node `i` peering with the router over IPv4 and IPv6.
    pub fn bgp_config(&self, i: usize) -> String {
        format!(
            "announce = \"bgp\"\n[bgp]\nlocal_asn = {NODE_ASN}\nrouter_id = \"{}\"\nstate_dir = \"{}\"\n\
             [[bgp.peers]]\naddress = \"{ROUTER4}\"\nasn = {ROUTER_ASN}\n\
             [[bgp.peers]]\naddress = \"{ROUTER6}\"\nasn = {ROUTER_ASN}\n",
            node4(i),
            self.dir.path().join(format!("bird-n{}", i + 1)).display()
        )
    }

    pub fn set_extra_args(&mut self, args: &[&str]) {
        self.extra_args = args.iter().map(|s| s.to_string()).collect();
    }

    /// Starts node `i` with more flags than the others get.
    pub fn spawn_with(&mut self, i: usize, extra: &[&str]) {
        let saved = self.extra_args.clone();
        self.extra_args.extend(extra.iter().map(|s| s.to_string()));
        self.spawn(i);
        self.extra_args = saved;
    }

    pub fn spawn(&mut self, i: usize) {
        let seeds: Vec<String> = (0..self.nodes.len())
            .filter(|j| *j != i)
            .map(|j| format!("{}:7946", node4(j)))
            .collect();
        let node = &self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap();
        let mut cmd = node.run_command();
        cmd.args(["--listen", &format!("{}:7946", node.addr4)])
            .args(["--admin", "127.0.0.1:9100", "--insecure"])
            .arg("--rules")
            .arg(&self.rules)
            .arg("--config")
            .arg(&node.config)
            .args(["--resync-interval-s", "1"])
            .args(&self.extra_args)
            .env("SHOAL_LOG", "info,quinn=warn,chitchat=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if !seeds.is_empty() {
            cmd.arg("--seeds").arg(seeds.join(","));
        } else if !self.extra_args.iter().any(|a| a == "--single-node") {
            // A node without seeds is refused unless it is a cluster of one.
            cmd.arg("--single-node");
        }
        // `ip netns exec` execs the program: the child's pid is shoal's.
        self.nodes[i].child = Some(cmd.spawn().expect("start shoal"));
    }

    /// Runs node `i`'s command line once more beside it (admin on 127.0.0.1:9101, plus
    /// `extra`) and waits for it to end (killed after 60 s): a second instance of the node.
    pub fn second_instance(&self, i: usize, extra: &[&str]) -> std::process::Output {
        let node = &self.nodes[i];
        let mut child = node
            .run_command()
            .args(["--admin", "127.0.0.1:9101", "--insecure", "--single-node"])
            .arg("--rules")
            .arg(&self.rules)
            .arg("--config")
            .arg(&node.config)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the second instance");
        let until = Instant::now() + Duration::from_secs(60);
        while child.try_wait().ok().flatten().is_none() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child
            .wait_with_output()
            .expect("the second instance's output")
    }

    /// How long node `i` took to exit, if it did within `limit`; it is no longer tracked after.
    pub fn exited_within(&mut self, i: usize, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        let mut child = self.nodes[i].child.take()?;
        while start.elapsed() < limit {
            if let Ok(Some(_)) = child.try_wait() {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        None
    }

    pub fn pid(&self, i: usize) -> Option<i32> {
        self.nodes[i].child.as_ref().map(|c| c.id() as i32)
    }

    pub fn signal(&self, i: usize, sig: nix::sys::signal::Signal) {
        if let Some(pid) = self.pid(i) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
        }
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Pids of processes named `comm` in node `i`'s namespace.
    pub fn procs(&self, i: usize, comm: &str) -> Vec<i32> {
        let pids = Command::new("ip")
            .args(["netns", "pids", &self.nodes[i].ns])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        pids.split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == comm)
            })
            .collect()
    }

    /// The router FIB's next hops for `vip` (empty when it has no route): the independent reader.
    pub fn nexthops(&self, vip: &str) -> BTreeSet<String> {
        let family = if vip.contains(':') { "-6" } else { "-4" };
        let out = Command::new("ip")
            .args(["-n", &self.router_ns, family, "-j", "route", "show", vip])
            .output()
            .unwrap();
        let routes: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let mut hops = BTreeSet::new();
        for r in routes.as_array().into_iter().flatten() {
            if let Some(g) = r["gateway"].as_str() {
                hops.insert(g.to_string());
            }
            for h in r["nexthops"].as_array().into_iter().flatten() {
                if let Some(g) = h["gateway"].as_str() {
                    hops.insert(g.to_string());
                }
            }
        }
        hops
    }

    /// HTTP GET on node `i`'s admin API, from inside its namespace.
    pub fn http(&self, i: usize, path: &str) -> Option<String> {
        let script = format!(
            "exec 3<>/dev/tcp/127.0.0.1/9100 && printf 'GET {path} HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n' >&3 && timeout 3 cat <&3"
        );
        let out = Command::new("ip")
            .args(["netns", "exec", &self.nodes[i].ns, "bash", "-c", &script])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (head, body) = text.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.0 200")
            .then(|| body.to_string())
            .or_else(|| head.starts_with("HTTP/1.1 200").then(|| body.to_string()))
    }

    pub fn cluster(&self, i: usize) -> Option<Value> {
        serde_json::from_str(&self.http(i, "/v1/cluster")?).ok()
    }

    /// Waits until `f` returns Some, panicking with the logs after `limit`.
    pub fn wait_for<T>(&self, limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            if start.elapsed() > limit {
                self.dump_logs();
                panic!("timed out after {limit:?} waiting for {what}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn dump_logs(&self) {
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else {
            return;
        };
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "log") {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(40)..];
                eprintln!(
                    "--- {} (last lines)\n{}",
                    e.path().display(),
                    tail.join("\n")
                );
            }
        }
        eprintln!(
            "--- router FIB\n{}",
            String::from_utf8_lossy(
                &Command::new("ip")
                    .args(["-n", &self.router_ns, "route"])
                    .output()
                    .map(|o| o.stdout)
                    .unwrap_or_default()
            )
        );
    }

    pub fn write_rules(&self, text: &str) {
        let tmp = self.rules.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.rules).unwrap();
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.signal(i, nix::sys::signal::Signal::SIGCONT);
            self.kill9(i);
        }
        if let Some(mut c) = self.router_bird.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Whatever is left inside (BIRDs, watchdogs, listeners): kill by pid, then delete.
        let mut all: Vec<String> = self.nodes.iter().map(|n| n.ns.clone()).collect();
        all.push(self.router_ns.clone());
        all.extend(self.client_ns.clone());
        for _ in 0..2 {
            for ns in &all {
                let pids = Command::new("ip")
                    .args(["netns", "pids", ns])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                    .unwrap_or_default();
                for p in pids
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(p),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for ns in &all {
            sh_quiet(&["ip", "netns", "del", ns]);
        }
    }
}

/// Parses an IP for comparisons.
pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
