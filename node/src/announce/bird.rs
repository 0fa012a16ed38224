//! BIRD 2 as a supervised child: its config (generated, pure), start-up checks, and a thread
//! that keeps it running and never lets it outlive shoal.
//!
//! What BIRD does here: its kernel protocols learn the VIP host routes shoal writes into the
//! dedicated table (`bgp.table`), and every BGP session exports them with this node as the next
//! hop. Announcing or withdrawing a VIP is a route change in that table, never a config reload.
//! BFD runs on every session that has `bfd` on.
//!
//! It must not outlive shoal: BIRD is started through `setpriv --pdeathsig KILL` from a thread
//! that lives as long as the daemon (the death signal follows the thread that forked), and on
//! start-up a BIRD left by an earlier shoal (its pid file in the state dir) is killed first.

use super::settings::BgpSettings;
use super::{decide, BirdStatus};
use prometheus_client::metrics::counter::Counter;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const KERNEL4: &str = "shoal_kernel4";
pub const KERNEL6: &str = "shoal_kernel6";

/// BIRD's config for these settings.
pub fn config(s: &BgpSettings) -> String {
    let mut c = String::new();
    let _ = writeln!(
        c,
        "# Written by shoal on every start: do not edit. VIP routes come from kernel table {}.",
        s.table
    );
    c.push_str("log stderr { info, remote, warning, error, auth, fatal, bug };\n");
    if let Some(id) = s.router_id {
        let _ = writeln!(c, "router id {id};");
    }
    c.push_str("protocol device { scan time 10; }\n");
    for (name, family) in [(KERNEL4, "ipv4"), (KERNEL6, "ipv6")] {
        let _ = writeln!(
            c,
            "protocol kernel {name} {{\n  kernel table {};\n  learn;\n  scan time 5;\n  {family} {{ import where krt_source = {}; export none; }};\n}}",
            s.table,
            shoal_dataplane::route::SHOAL_RTPROT
        );
    }
    let _ = writeln!(
        c,
        "protocol bfd {{\n  interface \"*\" {{ min rx interval {ms} ms; min tx interval {ms} ms; idle tx interval 1000 ms; multiplier {m}; }};\n  multihop {{ min rx interval {ms} ms; min tx interval {ms} ms; multiplier {m}; }};\n}}",
        ms = s.bfd_interval_ms,
        m = s.bfd_multiplier
    );
    for p in &s.peers {
        let (family, kernel) = if p.address.is_ipv4() {
            ("ipv4", KERNEL4)
        } else {
            ("ipv6", KERNEL6)
        };
        let _ = writeln!(c, "protocol bgp {} {{", p.name);
        let _ = writeln!(c, "  local as {};", s.local_asn);
        let _ = writeln!(c, "  neighbor {} port {} as {};", p.address, p.port, p.asn);
        if let Some(pw) = &p.password {
            let _ = writeln!(c, "  password \"{pw}\";");
        }
        if p.hold_time_s == 0 {
            c.push_str("  hold time 0;\n  keepalive time 0;\n");
        } else {
            let _ = writeln!(
                c,
                "  hold time {};\n  keepalive time {};",
                p.hold_time_s,
                (p.hold_time_s / 3).max(1)
            );
        }
        c.push_str("  connect delay time 1;\n  connect retry time 1;\n  error wait time 1, 5;\n");
        if p.bfd {
            c.push_str("  bfd on;\n");
        }
        let _ = writeln!(
            c,
            "  {family} {{ import none; export where proto = \"{kernel}\"; next hop self; }};\n}}"
        );
    }
    c
}

/// The settings BIRD runs with: `router_id` filled in from the node's own address when it is
/// not set ([`super::settings::router_id`]).
pub fn resolved(
    s: &BgpSettings,
    node_addr: Option<std::net::IpAddr>,
) -> Result<BgpSettings, super::settings::SettingError> {
    let mut s = s.clone();
    s.router_id = Some(super::settings::router_id(&s, node_addr)?);
    Ok(s)
}

/// Files of one BIRD instance.
#[derive(Debug, Clone)]
pub struct Paths {
    pub config: PathBuf,
    pub control: PathBuf,
    pub pid: PathBuf,
}

impl Paths {
    pub fn new(dir: &Path) -> Self {
        Paths {
            config: dir.join("bird.conf"),
            control: super::settings::control_socket(dir),
            pid: dir.join("bird.pid"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    #[error("BGP mode needs BIRD 2 (Debian package `bird2`): `{0}` was not found (searched PATH, /usr/sbin, /sbin); set bgp.bird to its path")]
    Missing(String),
    #[error("`{bird} --version` failed: {detail}")]
    Version { bird: String, detail: String },
    #[error("BGP mode needs BIRD 2; `{bird}` is {version}")]
    WrongVersion { bird: String, version: String },
    #[error("cannot prepare BIRD's state dir {dir}: {source}")]
    StateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("BIRD rejected the generated config {config}: {detail}")]
    Config { config: PathBuf, detail: String },
    #[error("cannot start BIRD: {0}")]
    Spawn(std::io::Error),
    #[error(transparent)]
    Setting(super::settings::SettingError),
}

/// Finds the `bird` binary: a path as given, else PATH, /usr/sbin and /sbin.
pub fn resolve_binary(bird: &Path) -> Result<PathBuf, BirdError> {
    let name = bird.to_string_lossy().to_string();
    if name.contains('/') {
        return if bird.is_file() {
            Ok(bird.to_path_buf())
        } else {
            Err(BirdError::Missing(name))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(&name))
        .find(|p| p.is_file())
        .ok_or(BirdError::Missing(name))
}

/// Start-up checks: BIRD 2 is there, the state dir is usable, BIRD accepts the config (with
/// `bird -p`), kills a BIRD an earlier shoal left running. Writes the config. Returns the
/// binary's path.
pub fn prepare(s: &BgpSettings, paths: &Paths) -> Result<PathBuf, BirdError> {
    let bin = check(s, paths)?;
    kill_stale(paths);
    Ok(bin)
}

/// The checks of [`prepare`] that change nothing running: the control socket path fits a Unix
/// socket, BIRD 2 is there, the state dir is usable, BIRD accepts the config (`bird -p`).
/// Writes the config.
pub fn check(s: &BgpSettings, paths: &Paths) -> Result<PathBuf, BirdError> {
    super::settings::check_control_path(&s.state_dir, None).map_err(BirdError::Setting)?;
    let bin = resolve_binary(&s.bird)?;
    let out = Command::new(&bin)
        .arg("--version")
        .output()
        .map_err(|e| BirdError::Version {
            bird: bin.display().to_string(),
            detail: e.to_string(),
        })?;
    let version = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .trim()
    .to_string();
    if !version.contains("BIRD version 2.") && !version.contains("BIRD version 3.") {
        return Err(BirdError::WrongVersion {
            bird: bin.display().to_string(),
            version,
        });
    }
    let dir = &s.state_dir;
    std::fs::create_dir_all(dir).map_err(|source| BirdError::StateDir {
        dir: dir.clone(),
        source,
    })?;
    std::fs::write(&paths.config, config(s)).map_err(|source| BirdError::StateDir {
        dir: dir.clone(),
        source,
    })?;
    let out = Command::new(&bin)
        .arg("-p")
        .arg("-c")
        .arg(&paths.config)
        .output()
        .map_err(BirdError::Spawn)?;
    if !out.status.success() {
        return Err(BirdError::Config {
            config: paths.config.clone(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(bin)
}

/// Kills a BIRD an earlier shoal left running with this state dir (found by its pid file and
/// checked by its command line, so an unrelated process that reused the pid is left alone).
pub fn kill_stale(paths: &Paths) {
    let Ok(text) = std::fs::read_to_string(&paths.pid) else {
        return;
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return;
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    if !cmdline.contains("bird") || !cmdline.contains(&*paths.control.to_string_lossy()) {
        return;
    }
    tracing::warn!(pid, "killing a BIRD left running by an earlier shoal");
    let target = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL);
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until && std::path::Path::new(&format!("/proc/{pid}")).exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The running supervisor; stopping it stops BIRD.
pub struct Supervisor {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const RESTART_BACKOFF: Duration = Duration::from_secs(1);

impl Supervisor {
    /// Starts BIRD and restarts it (after 1 s) whenever it exits, or when it has not answered
    /// its control socket for [`decide::BIRD_HUNG`] (as `status`, the control socket's poll,
    /// says), until [`Supervisor::stop`]. `restarts` counts every restart.
    pub(crate) fn start(
        bin: PathBuf,
        paths: Paths,
        restarts: Counter,
        status: Arc<Mutex<BirdStatus>>,
    ) -> Result<Self, BirdError> {
        let stop = Arc::new(AtomicBool::new(false));
        let first = spawn_bird(&bin, &paths)?;
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("shoal-bird".into())
            .spawn(move || {
                supervise(
                    Running::new(first),
                    Restart {
                        bin,
                        paths,
                        restarts,
                    },
                    status,
                    flag,
                )
            })
            .map_err(BirdError::Spawn)?;
        Ok(Supervisor {
            stop,
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn spawn_bird(bin: &Path, paths: &Paths) -> Result<Child, BirdError> {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--pdeathsig", "KILL", "--"])
        .arg(bin)
        .arg("-f")
        .arg("-c")
        .arg(&paths.config)
        .arg("-s")
        .arg(&paths.control)
        .arg("-P")
        .arg(&paths.pid)
        .stdin(Stdio::null());
    // Its own process group: a signal to shoal's group (Ctrl-C, `timeout`, systemd's
    // control-group kill) reaches shoal, which withdraws and drains; BIRD went down at once
    // with it and was restarted mid-drain (an audit). It still dies with shoal (pdeathsig).
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd.spawn().map_err(BirdError::Spawn)?;
    tracing::info!(pid = child.id(), config = %paths.config.display(), "BIRD started");
    Ok(child)
}

/// The BIRD now running and when it started (a new BIRD gets the whole hung bound to answer).
struct Running {
    child: Child,
    started: Instant,
}

impl Running {
    fn new(child: Child) -> Self {
        Running {
            child,
            started: Instant::now(),
        }
    }

    /// Kills BIRD's whole process group (its own: see [`spawn_bird`]); SIGKILL also ends a
    /// stopped process.
    fn kill(&mut self) {
        let group = nix::unistd::Pid::from_raw(-(self.child.id() as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a restart needs.
struct Restart {
    bin: PathBuf,
    paths: Paths,
    restarts: Counter,
}

/// Runs on its own thread (the parent of BIRD for its whole life, see the module doc).
fn supervise(
    mut bird: Running,
    restart: Restart,
    status: Arc<Mutex<BirdStatus>>,
    stop: Arc<AtomicBool>,
) {
    loop {
        if stop.load(Ordering::SeqCst) {
            let pid = nix::unistd::Pid::from_raw(bird.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until {
                if let Ok(Some(_)) = bird.child.try_wait() {
                    tracing::info!("BIRD stopped");
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            bird.kill();
            return;
        }
        match bird.child.try_wait() {
            Ok(None) => {
                let now = Instant::now();
                let (since_answer, failed_polls) = {
                    let st = status.lock().unwrap_or_else(|p| p.into_inner());
                    (
                        now.saturating_duration_since(st.last_answer),
                        st.failed_polls,
                    )
                };
                let since_start = now.saturating_duration_since(bird.started);
                if !decide::bird_hung(since_answer, since_start, failed_polls) {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                // Stopped, deadlocked or without its socket: it would never come back.
                restart.restarts.inc();
                tracing::error!(
                    pid = bird.child.id(),
                    silent_s = since_answer.min(since_start).as_secs(),
                    failed_polls,
                    restarts = restart.restarts.get(),
                    "BIRD does not answer its control socket; killing and restarting it"
                );
                bird.kill();
            }
            Ok(Some(status)) => {
                restart.restarts.inc();
                tracing::error!(%status, restarts = restart.restarts.get(), "BIRD exited; restarting it");
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot watch BIRD");
                std::thread::sleep(RESTART_BACKOFF);
                continue;
            }
        }
        // BIRD is gone (exited, or killed above): start another until one runs.
        loop {
            std::thread::sleep(RESTART_BACKOFF);
            if stop.load(Ordering::SeqCst) {
                return;
            }
            match spawn_bird(&restart.bin, &restart.paths) {
                Ok(c) => {
                    bird = Running::new(c);
                    break;
                }
                Err(e) => tracing::error!(error = %e, "BIRD restart failed; retrying"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::announce::settings::Peer;

    fn settings() -> BgpSettings {
        BgpSettings {
            local_asn: 64512,
            router_id: Some("198.18.0.2".parse().unwrap()),
            table: 120,
            bird: "bird".into(),
            state_dir: "/tmp/x".into(),
            bfd_interval_ms: 100,
            bfd_multiplier: 3,
            peers: vec![
                Peer {
                    name: "peer1".into(),
                    address: "198.18.1.1".parse().unwrap(),
                    asn: 64500,
                    port: 179,
                    password: Some("s3cret".into()),
                    hold_time_s: 9,
                    bfd: true,
                },
                Peer {
                    name: "peer2".into(),
                    address: "2001:db8::1".parse().unwrap(),
                    asn: 64500,
                    port: 1179,
                    password: None,
                    hold_time_s: 0,
                    bfd: false,
                },
            ],
        }
    }

    #[test]
    fn config_has_one_session_per_peer_in_its_family() {
        let c = config(&settings());
        assert!(c.contains("router id 198.18.0.2;"));
        assert!(c.contains("kernel table 120;"));
        // Only Shoal's own routes (protocol 83) of the table are learned and exported: a route
        // someone else put in the table reached the router (an audit).
        assert_eq!(c.matches("import where krt_source = 83;").count(), 2);
        assert!(c.contains("neighbor 198.18.1.1 port 179 as 64500;"));
        assert!(c.contains("password \"s3cret\";"));
        assert!(c.contains(
            "ipv4 { import none; export where proto = \"shoal_kernel4\"; next hop self; };"
        ));
        assert!(c.contains("neighbor 2001:db8::1 port 1179 as 64500;"));
        assert!(c.contains(
            "ipv6 { import none; export where proto = \"shoal_kernel6\"; next hop self; };"
        ));
        assert_eq!(c.matches("bfd on;").count(), 1);
        assert!(c.contains("min rx interval 100 ms"));
        assert!(c.contains("multiplier 3;"));
        assert!(c.contains("hold time 0;"));
    }

    #[test]
    fn without_router_id_the_config_uses_the_nodes_ipv4_address() {
        let mut s = settings();
        s.router_id = None;
        let listen: std::net::IpAddr = "198.18.1.11".parse().unwrap();
        let c = config(&resolved(&s, Some(listen)).unwrap());
        assert!(c.contains("router id 198.18.1.11;"), "{c}");
        assert_eq!(c.matches("router id").count(), 1, "{c}");
        let e = resolved(&s, Some("0.0.0.0".parse().unwrap())).unwrap_err();
        assert!(e.to_string().contains("bgp.router_id"), "{e}");
        // A router id that is set wins over the node's address.
        let c = config(&resolved(&settings(), Some(listen)).unwrap());
        assert!(c.contains("router id 198.18.0.2;"), "{c}");
    }

    #[test]
    fn a_control_socket_path_over_the_unix_limit_is_refused_before_bird_runs() {
        let mut s = settings();
        s.bird = "/nonexistent/bird".into();
        s.state_dir = format!("/{}", "d".repeat(120)).into();
        let e = check(&s, &Paths::new(&s.state_dir)).unwrap_err();
        assert!(e.to_string().contains("bgp.state_dir"), "{e}");
    }

    #[test]
    fn a_missing_binary_is_named() {
        let e = resolve_binary(Path::new("no-such-bird-binary")).unwrap_err();
        assert!(e.to_string().contains("no-such-bird-binary"), "{e}");
        assert!(e.to_string().contains("bird2"), "{e}");
        assert!(resolve_binary(Path::new("/nonexistent/bird")).is_err());
    }
}
