//! shoal-vmlab: the host side of the VM lab (`chaos/lab/vm/run.sh`: Debian's kernel under
//! qemu with real IPVS), shared by the test suites that boot it (`dataplane/tests/vm_lab.rs`,
//! `dataplane/tests/vm_k8s.rs`, `chaos/tests/vm_e2e.rs`).
//!
//! Owns: whether the lab can run here (skip outside CI, fail in CI), building the binaries that
//! go into the guest, the share folder (the guest's `/mnt/host`), one boot and reading what the
//! scenario left in `out/`. Does not own the scenarios (`chaos/lab/vm/scenarios/*.sh`) nor what
//! a suite checks. Only std: test support must not slow the workspace's build.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What `run.sh` needs, for the skip message.
pub const INSTALL: &str =
    "bash scripts/install-deps.sh (qemu-system-x86, linux-image-6.1.0-56-amd64, \
     busybox-static, ipvsadm, kmod, iproute2, cpio; bird2 and keepalived for the end-to-end lab)";

/// The repository's root: the checkout of the running test (cargo sets `CARGO_MANIFEST_DIR` to
/// its package when it runs it), else this crate's own. The compile-time path alone is wrong
/// when `target/` was copied from another checkout: cargo reuses the compiled harness, and the
/// lab would build and boot the other checkout's binaries and scenarios.
pub fn repo() -> PathBuf {
    if let Ok(dir) = std::env::var("CARGO_MANIFEST_DIR") {
        if let Some(root) = Path::new(&dir)
            .ancestors()
            .find(|d| d.join("chaos/lab/vm/run.sh").is_file())
        {
            return root.to_path_buf();
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../..")
}

/// `chaos/lab/vm/run.sh`.
pub fn run_sh() -> PathBuf {
    repo().join("chaos/lab/vm/run.sh")
}

/// A scenario script under `chaos/lab/vm/scenarios/`.
pub fn scenario(name: &str) -> PathBuf {
    repo().join("chaos/lab/vm/scenarios").join(name)
}

pub fn in_ci() -> bool {
    std::env::var("CI").map(|v| v == "true").unwrap_or(false)
}

/// `Some(())` when the lab can boot here and every host tool in `tools` is on the PATH (they
/// go into the initramfs). Otherwise: a panic under CI=true, else "SKIPPED: why" and `None`.
pub fn available(tools: &[&str]) -> Option<()> {
    let mut why = match Command::new("bash").arg(run_sh()).arg("--check").output() {
        Ok(o) if o.status.success() => String::new(),
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
        Err(e) => format!("cannot run {}: {e}", run_sh().display()),
    };
    for tool in tools {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            let _ = write!(why, " {tool} missing;");
        }
    }
    if why.is_empty() {
        return Some(());
    }
    skip(&format!(
        "VM lab unavailable ({why}); install with: {INSTALL}"
    ))
}

/// Says why a suite cannot run: a panic in CI, "SKIPPED" (and `None`) elsewhere.
pub fn skip<T>(why: &str) -> Option<T> {
    if in_ci() {
        panic!("VM lab required in CI: {why}");
    }
    eprintln!("SKIPPED: {why}");
    None
}

/// The cargo profile a guest binary is built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    Debug,
    Release,
}

impl Profile {
    fn dir(self) -> &'static str {
        match self {
            Profile::Debug => "debug",
            Profile::Release => "release",
        }
    }
}

/// One binary for the guest: a package's `bin` or `example` target.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    pub package: &'a str,
    pub name: &'a str,
    pub example: bool,
}

impl<'a> Target<'a> {
    pub fn bin(package: &'a str, name: &'a str) -> Self {
        Target {
            package,
            name,
            example: false,
        }
    }
    pub fn example(package: &'a str, name: &'a str) -> Self {
        Target {
            package,
            name,
            example: true,
        }
    }
}

/// The target directory (`target/`) of the running test binary (`target/<profile>/deps/x`).
pub fn target_dir() -> PathBuf {
    if let Ok(d) = std::env::var("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("test binary path");
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| repo().join("target"))
}

/// Builds `targets` in `profile` (one cargo call; a no-op when they are up to date) and returns
/// their paths, in order. The variables cargo sets for the running test would change build
/// scripts' fingerprints and rebuild half the tree: cargo runs with the outer environment.
pub fn build(profile: Profile, targets: &[Target]) -> Result<Vec<PathBuf>, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build").current_dir(repo());
    if profile == Profile::Release {
        cmd.arg("--release");
    }
    for t in targets {
        cmd.args([
            "-p",
            t.package,
            if t.example { "--example" } else { "--bin" },
            t.name,
        ]);
    }
    for (k, _) in std::env::vars() {
        if set_by_cargo_for_the_test(&k) {
            cmd.env_remove(k);
        }
    }
    let status = cmd.status().map_err(|e| format!("cargo build: {e}"))?;
    if !status.success() {
        return Err(format!(
            "cargo build ({profile:?}) of {targets:?} failed: {status}"
        ));
    }
    let dir = target_dir().join(profile.dir());
    Ok(targets
        .iter()
        .map(|t| {
            if t.example {
                dir.join("examples").join(t.name)
            } else {
                dir.join(t.name)
            }
        })
        .collect())
}

/// Variables cargo sets when it runs a test (not the user's own settings such as
/// CARGO_INCREMENTAL or CARGO_HOME, which must reach the inner build unchanged).
fn set_by_cargo_for_the_test(name: &str) -> bool {
    name == "OUT_DIR"
        || name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_BIN_EXE_")
        || matches!(
            name,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_CRATE_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "CARGO_RUSTC_CURRENT_DIR"
        )
}

/// The `shoal` binary for the guest: `$SHOAL_BIN`, else built in `profile`.
pub fn shoal(profile: Profile) -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("SHOAL_BIN") {
        return Ok(PathBuf::from(p));
    }
    let mut built = build(profile, &[Target::bin("shoal-node", "shoal")])?;
    Ok(built.remove(0))
}

/// How to boot: the scenario and qemu's limits.
#[derive(Clone, Debug)]
pub struct Boot {
    pub scenario: PathBuf,
    pub timeout_s: u64,
    pub memory_mb: u64,
    /// Extra kernel command-line words (`--kernel-args`).
    pub kernel_args: String,
}

impl Boot {
    pub fn new(scenario_name: &str, timeout_s: u64) -> Self {
        Boot {
            scenario: scenario(scenario_name),
            timeout_s,
            memory_mb: 1024,
            kernel_args: String::new(),
        }
    }
}

/// A share folder: the guest's `/mnt/host` and working directory; `bin/` is first on its PATH,
/// the scenario writes `out/`.
#[derive(Debug)]
pub struct Share {
    pub dir: PathBuf,
}

impl Share {
    /// A fresh `<tmp>/vm-<tag>-<pid>` (pass the test's `env!("CARGO_TARGET_TMPDIR")`).
    pub fn new(tmp: &str, tag: &str) -> Result<Share, String> {
        let dir = Path::new(tmp).join(format!("vm-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("bin")).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Share { dir })
    }

    /// Copies a binary to `bin/<name>`, stripped (the guest loads it over 9p).
    pub fn add_bin(&self, from: &Path, name: &str) -> Result<(), String> {
        let to = self.dir.join("bin").join(name);
        fs::copy(from, &to)
            .map_err(|e| format!("copy {} to {}: {e}", from.display(), to.display()))?;
        let _ = Command::new("strip").arg(&to).status();
        Ok(())
    }

    /// Writes a file in the share (rules, tables, settings of the run).
    pub fn write(&self, name: &str, text: &str) -> Result<(), String> {
        let path = self.dir.join(name);
        fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Boots the lab and runs the scenario to its end. `Err` (with the console's and the
    /// scenario log's tails) when the VM gave no result or the scenario exited non-zero.
    pub fn boot(&self, b: &Boot) -> Result<(), String> {
        let mut cmd = Command::new("bash");
        cmd.arg(run_sh())
            .arg("--share")
            .arg(&self.dir)
            .arg("--scenario")
            .arg(&b.scenario)
            .args(["--timeout", &b.timeout_s.to_string()])
            .args(["--memory", &b.memory_mb.to_string()]);
        if !b.kernel_args.is_empty() {
            cmd.args(["--kernel-args", &b.kernel_args]);
        }
        let status = cmd.status().map_err(|e| format!("run the VM lab: {e}"))?;
        if status.success() {
            return Ok(());
        }
        Err(format!(
            "VM run of {} failed ({status}); logs in {}\nconsole (end):\n{}\nscenario log (end):\n{}",
            b.scenario.display(),
            self.dir.display(),
            tail(&self.file("console.log"), 40),
            tail(&self.file("scenario.log"), 60)
        ))
    }

    /// A file of the share ("" when missing).
    pub fn file(&self, name: &str) -> String {
        fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    /// A file the scenario wrote in `out/` ("" when missing).
    pub fn out(&self, name: &str) -> String {
        self.file(&format!("out/{name}"))
    }

    pub fn out_path(&self, name: &str) -> PathBuf {
        self.dir.join("out").join(name)
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_is_the_workspace_root() {
        assert!(repo().join("chaos/lab/vm/run.sh").exists());
        assert!(scenario("e2e.sh").exists());
    }

    #[test]
    fn only_what_cargo_sets_for_a_test_is_dropped() {
        for k in [
            "CARGO_PKG_NAME",
            "CARGO_MANIFEST_DIR",
            "OUT_DIR",
            "CARGO_BIN_EXE_lab-flows",
        ] {
            assert!(set_by_cargo_for_the_test(k), "{k}");
        }
        for k in [
            "CARGO_INCREMENTAL",
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO",
            "PATH",
        ] {
            assert!(!set_by_cargo_for_the_test(k), "{k}");
        }
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
        assert_eq!(tail("", 5), "");
    }
}
