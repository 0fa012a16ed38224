//! The lab: one network namespace per node on a bridge that lives in a namespace of its own,
//! plus a control namespace for the harness, and the node processes running in them.
//!
//! Every name carries the run's prefix (`sc<pid>`), so `shoal-chaos cleanup` can find what a
//! killed harness left behind. The root namespace is never touched: the bridge, veths and
//! addresses all live in the lab's namespaces. [`Lab`] removes everything it made when dropped
//! (normal end, error, panic); Ctrl-C is turned into a normal end by the binary.

pub mod cleanup;
pub mod nft;
pub mod sys;

use nft::Inbound;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use sys::{ip, LabError};

/// The control namespace's addresses: the harness, and the health service's two backends.
pub const CTL_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const CTL_DOWN_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);

/// The address of node `i` (0-based): 198.18.0.11, .12, ...
pub fn node_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 11 + i as u8)
}

/// The mesh id of node `i`: n1, n2, ...
pub fn node_id(i: usize) -> String {
    format!("n{}", i + 1)
}

/// The most nodes a lab holds (addresses .11 to .74). The fault runs use at most
/// [`MAX_CHECKED_NODES`]; the steady runs (`crate::steady`) more.
pub const MAX_NODES: usize = 64;

/// The most nodes the fault runs' checkers accept: they compare ids as strings, where n10 < n2.
pub const MAX_CHECKED_NODES: usize = 9;

/// What a node process is started with: the lab fills in where and who.
pub struct NodeSpec<'a> {
    pub index: usize,
    pub id: &'a str,
    pub addr: Ipv4Addr,
    pub all_addrs: &'a [Ipv4Addr],
}

/// Builds the program and arguments of one node.
pub type NodeCommand = Box<dyn Fn(&NodeSpec<'_>) -> (PathBuf, Vec<String>) + Send>;

struct Slot {
    id: String,
    ns: String,
    addr: Ipv4Addr,
    child: Option<Child>,
    incarnation: u32,
    frozen: bool,
    started: Option<std::time::Instant>,
}

pub struct Lab {
    prefix: String,
    bridge_ns: String,
    ctl_ns: String,
    slots: Vec<Slot>,
    command: NodeCommand,
    log_dir: PathBuf,
    env: Vec<(String, String)>,
    torn_down: bool,
}

impl Lab {
    /// Builds the namespaces, bridge and links for `nodes` nodes; starts no process. On error,
    /// what was already made is removed.
    pub fn create(
        prefix: &str,
        nodes: usize,
        log_dir: &Path,
        command: NodeCommand,
    ) -> Result<Lab, LabError> {
        if nodes == 0 || nodes > MAX_NODES {
            return Err(LabError::Config(format!(
                "nodes must be 1..={MAX_NODES}, got {nodes}"
            )));
        }
        std::fs::create_dir_all(log_dir).map_err(|e| LabError::Io {
            what: format!("create {}", log_dir.display()),
            source: e,
        })?;
        let slots = (0..nodes)
            .map(|i| Slot {
                id: node_id(i),
                ns: format!("{prefix}-{}", node_id(i)),
                addr: node_addr(i),
                child: None,
                incarnation: 0,
                frozen: false,
                started: None,
            })
            .collect();
        let mut lab = Lab {
            prefix: prefix.to_string(),
            bridge_ns: format!("{prefix}-sw"),
            ctl_ns: format!("{prefix}-ctl"),
            slots,
            command,
            log_dir: log_dir.to_path_buf(),
            env: Vec::new(),
            torn_down: false,
        };
        lab.build()?; // on error, Drop tears down the part that exists
        Ok(lab)
    }

    fn build(&mut self) -> Result<(), LabError> {
        let sw = self.bridge_ns.clone();
        ip(&["netns", "add", &sw])?;
        ip(&["-n", &sw, "link", "set", "lo", "up"])?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        let mut ends: Vec<(String, String, Vec<Ipv4Addr>)> = vec![(
            "ctl".into(),
            self.ctl_ns.clone(),
            vec![CTL_ADDR, CTL_DOWN_ADDR],
        )];
        for s in &self.slots {
            ends.push((s.id.clone(), s.ns.clone(), vec![s.addr]));
        }
        for (port, ns, addrs) in ends {
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
            for a in addrs {
                ip(&["-n", &ns, "addr", "add", &format!("{a}/15"), "dev", "eth0"])?;
            }
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn nodes(&self) -> usize {
        self.slots.len()
    }

    pub fn ids(&self) -> Vec<String> {
        self.slots.iter().map(|s| s.id.clone()).collect()
    }

    pub fn incarnation(&self, i: usize) -> u32 {
        self.slots[i].incarnation
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.slots[i].child.is_some()
    }

    /// How long node `i`'s current process has been running (zero if never started).
    pub fn uptime(&self, i: usize) -> std::time::Duration {
        self.slots[i]
            .started
            .map(|s| s.elapsed())
            .unwrap_or_default()
    }

    pub fn is_frozen(&self, i: usize) -> bool {
        self.slots[i].frozen
    }

    /// Environment given to every node process started from now on.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_string(), value.to_string()));
    }

    pub fn ctl_ns(&self) -> &str {
        &self.ctl_ns
    }

    /// Moves the calling thread into the control namespace. Threads it creates afterwards (a
    /// tokio runtime built next) live there too.
    pub fn enter_ctl(&self) -> Result<(), LabError> {
        sys::enter_netns(&self.ctl_ns)
    }

    /// Starts node `i` (again), counting a new incarnation. The node runs in its own process
    /// group, so the harness's Ctrl-C does not reach it and kill/stop reach only it.
    pub fn start(&mut self, i: usize) -> Result<(), LabError> {
        if self.slots[i].child.is_some() {
            return Err(LabError::Config(format!(
                "{} is already running",
                self.slots[i].id
            )));
        }
        let addrs: Vec<Ipv4Addr> = self.slots.iter().map(|s| s.addr).collect();
        let slot = &self.slots[i];
        let (program, args) = (self.command)(&NodeSpec {
            index: i,
            id: &slot.id,
            addr: slot.addr,
            all_addrs: &addrs,
        });
        let incarnation = slot.incarnation + 1;
        let log_path = self.log_dir.join(format!("{}.{incarnation}.log", slot.id));
        let log = File::create(&log_path).map_err(|e| LabError::Io {
            what: format!("create {}", log_path.display()),
            source: e,
        })?;
        let log_err = log.try_clone().map_err(|e| LabError::Io {
            what: "clone log handle".into(),
            source: e,
        })?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &slot.ns])
            .arg(&program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().map_err(|e| LabError::Io {
            what: format!("start {} in {}", program.display(), slot.ns),
            source: e,
        })?;
        let slot = &mut self.slots[i];
        slot.child = Some(child);
        slot.started = Some(std::time::Instant::now());
        slot.incarnation = incarnation;
        slot.frozen = false;
        Ok(())
    }

    /// `kill -9` of node `i` (also when frozen), waiting until it is gone.
    pub fn kill(&mut self, i: usize) -> Result<(), LabError> {
        let slot = &mut self.slots[i];
        if let Some(mut child) = slot.child.take() {
            sys::signal(child.id(), nix::sys::signal::Signal::SIGKILL)?;
            let _ = child.wait();
        }
        slot.frozen = false;
        Ok(())
    }

    /// SIGSTOP: the process stays, silent, until [`Lab::thaw`].
    pub fn freeze(&mut self, i: usize) -> Result<(), LabError> {
        let slot = &mut self.slots[i];
        if let Some(child) = &slot.child {
            sys::signal(child.id(), nix::sys::signal::Signal::SIGSTOP)?;
            slot.frozen = true;
        }
        Ok(())
    }

    pub fn thaw(&mut self, i: usize) -> Result<(), LabError> {
        let slot = &mut self.slots[i];
        if let Some(child) = &slot.child {
            sys::signal(child.id(), nix::sys::signal::Signal::SIGCONT)?;
        }
        slot.frozen = false;
        Ok(())
    }

    /// Whether node `i`'s process has exited on its own (it should not); reaps it if so.
    pub fn exited(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        let slot = &mut self.slots[i];
        let status = slot.child.as_mut()?.try_wait().ok()??;
        slot.child = None;
        Some(status)
    }

    /// Replaces what node `i`'s namespace drops on arrival.
    pub fn set_inbound(&self, i: usize, rules: &Inbound, mesh_port: u16) -> Result<(), LabError> {
        sys::nft(&self.slots[i].ns, &nft::script(mesh_port, rules))
    }

    pub fn addr(&self, i: usize) -> Ipv4Addr {
        self.slots[i].addr
    }

    /// The log file of node `i`'s current incarnation (stdout and stderr).
    pub fn log_path(&self, i: usize) -> PathBuf {
        let slot = &self.slots[i];
        self.log_dir
            .join(format!("{}.{}.log", slot.id, slot.incarnation))
    }

    /// Kills every process and removes every namespace (idempotent).
    pub fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        for i in 0..self.slots.len() {
            let _ = self.kill(i);
        }
        let mut names: Vec<String> = self.slots.iter().map(|s| s.ns.clone()).collect();
        names.push(self.ctl_ns.clone());
        names.push(self.bridge_ns.clone());
        for ns in names {
            cleanup::remove_namespace(&ns);
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}
