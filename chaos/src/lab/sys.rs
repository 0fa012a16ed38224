//! The lab's system calls and commands: `ip`, `nft`, signals, setns. Thin; no decisions.

use std::io::Write;
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("`{cmd}` failed: {stderr}")]
    Command { cmd: String, stderr: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("signal {signal} to pid {pid}: {errno}")]
    Signal {
        pid: u32,
        signal: String,
        errno: nix::errno::Errno,
    },
    #[error("lab setup: {0}")]
    Config(String),
}

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, LabError> {
    let cmd_text = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| LabError::Io {
            what: format!("run {cmd_text}"),
            source: e,
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(|e| LabError::Io {
            what: format!("write to {cmd_text}"),
            source: e,
        })?;
    }
    let out = child.wait_with_output().map_err(|e| LabError::Io {
        what: format!("wait for {cmd_text}"),
        source: e,
    })?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: cmd_text,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip ARGS`.
pub fn ip(args: &[&str]) -> Result<String, LabError> {
    run("ip", args, None)
}

/// Loads an nft script into namespace `ns`.
pub fn nft(ns: &str, script: &str) -> Result<(), LabError> {
    run("ip", &["netns", "exec", ns, "nft", "-f", "-"], Some(script)).map(|_| ())
}

/// Whether `ip` and `nft` are installed.
pub fn tools_present() -> bool {
    let ok = |p: &str, a: &str| {
        Command::new(p)
            .arg(a)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    ok("ip", "-V") && ok("nft", "--version")
}

pub fn signal(pid: u32, signal: nix::sys::signal::Signal) -> Result<(), LabError> {
    let target = nix::unistd::Pid::from_raw(pid as i32);
    match nix::sys::signal::kill(target, signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(errno) => Err(LabError::Signal {
            pid,
            signal: signal.as_str().to_string(),
            errno,
        }),
    }
}

/// Moves the calling thread into the named network namespace.
pub fn enter_netns(ns: &str) -> Result<(), LabError> {
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).map_err(|e| LabError::Io {
        what: format!("open {path}"),
        source: e,
    })?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|errno| LabError::Io {
        what: format!("setns {path}"),
        source: std::io::Error::from(errno),
    })
}

/// Whether this process may build namespaces (root, or CAP_SYS_ADMIN in practice).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
