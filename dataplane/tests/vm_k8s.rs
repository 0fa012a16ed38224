//! What the Kubernetes overlays rely on, on a real kernel with IPVS (the VM lab,
//! chaos/lab/vm/scenarios/k8s.sh, one boot): start-up under a read-only /proc/sys, kube-proxy's
//! IPVS services and `kube-ipvs0` addresses surviving Shoal in the host namespace, and
//! `backend-init --pool` serving a VIP allocated after the backend started. Without qemu or the
//! kernel package the tests print "SKIPPED" and pass, except under CI=true, where they fail.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn lab() -> PathBuf {
    repo().join("chaos/lab/vm/run.sh")
}

fn in_ci() -> bool {
    std::env::var("CI").map(|v| v == "true").unwrap_or(false)
}

fn skip_or_fail(why: &str) -> Option<Run> {
    if in_ci() {
        panic!("VM lab required in CI: {why}");
    }
    eprintln!("SKIPPED: {why}");
    None
}

const RULES1: &str = r#"
[[service]]
name = "web"
vip = "203.0.113.10"
port = 80
protocol = "tcp"
scheduler = "mh"
mh_port = true
forwarding = "tunnel"

[[service.backend]]
address = "198.18.0.11"

[[service.backend]]
address = "198.18.0.12"
"#;

/// RULES1 plus a VIP of the same pool that did not exist when the backends were prepared.
fn rules2() -> String {
    format!(
        "{RULES1}{}",
        RULES1
            .replace("name = \"web\"", "name = \"late\"")
            .replace("203.0.113.10", "203.0.113.77")
    )
}

struct Run {
    dir: PathBuf,
}

impl Run {
    fn out(&self, name: &str) -> String {
        fs::read_to_string(self.dir.join("out").join(name)).unwrap_or_default()
    }
    fn rc(&self, name: &str) -> String {
        self.out(&format!("{name}.rc")).trim().to_string()
    }
    fn context(&self) -> String {
        format!(
            "logs in {}\nshoal log:\n{}",
            self.dir.display(),
            self.out("k_shoal.log")
        )
    }
    fn lines(&self, name: &str) -> BTreeSet<String> {
        self.out(name)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }
}

/// The `shoal` binary: $SHOAL_BIN, else built from the node crate.
fn shoal_binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("SHOAL_BIN") {
        return Some(PathBuf::from(p));
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let ok = Command::new(cargo)
        .args(["build", "-p", "shoal-node", "--bin", "shoal"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("shoal");
    (ok && bin.exists()).then_some(bin)
}

/// One boot for every test in this file; a failed boot is reported by each test.
fn run() -> Option<&'static Run> {
    static RUN: OnceLock<Result<Option<Run>, String>> = OnceLock::new();
    match RUN.get_or_init(boot) {
        Ok(r) => r.as_ref(),
        Err(e) => panic!("{e}"),
    }
}

fn boot() -> Result<Option<Run>, String> {
    match Command::new("bash").arg(lab()).arg("--check").output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            return Ok(skip_or_fail(&format!(
                "VM lab unavailable: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )))
        }
        Err(e) => return Ok(skip_or_fail(&format!("cannot run the VM lab: {e}"))),
    }
    let Some(shoal) = shoal_binary() else {
        return Ok(skip_or_fail("the shoal binary did not build"));
    };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("vm-k8s-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("bin")).map_err(|e| format!("share dir: {e}"))?;
    fs::copy(&shoal, dir.join("bin/shoal")).map_err(|e| format!("copy shoal: {e}"))?;
    fs::write(dir.join("rules1.toml"), RULES1).map_err(|e| e.to_string())?;
    fs::write(dir.join("rules2.toml"), rules2()).map_err(|e| e.to_string())?;
    let status = Command::new("bash")
        .arg(lab())
        .arg("--share")
        .arg(&dir)
        .arg("--scenario")
        .arg(repo().join("chaos/lab/vm/scenarios/k8s.sh"))
        .args(["--timeout", "400"])
        .status()
        .map_err(|e| format!("run the VM lab: {e}"))?;
    if !status.success() {
        let console = fs::read_to_string(dir.join("console.log")).unwrap_or_default();
        let log = fs::read_to_string(dir.join("scenario.log")).unwrap_or_default();
        return Err(format!(
            "VM run failed ({status}); logs in {}\nconsole:\n{console}\nscenario:\n{log}",
            dir.display()
        ));
    }
    Ok(Some(Run { dir }))
}

#[test]
fn read_only_proc_sys_names_each_sysctl_and_the_init_container_fixes_it() {
    let Some(r) = run() else { return };
    // Under a read-only /proc/sys, `shoal run` exits with an error naming both keys that
    // differ (and not the one that is already right), and saying what to do.
    assert_ne!(
        r.rc("k_ro_run"),
        "0",
        "must fail: {}",
        r.out("k_ro_run.log")
    );
    assert_ne!(r.rc("k_ro_run"), "124", "must fail fast, not hang");
    let log = r.out("k_ro_run.log");
    for want in [
        "net.ipv4.vs.sloppy_tcp=1 (is 0): /proc/sys is read-only here",
        "net.ipv4.vs.expire_nodest_conn=1 (is 0): /proc/sys is read-only here",
        "shoal sysctls",
        "securityContext.sysctls",
    ] {
        assert!(log.contains(want), "{want:?} missing from:\n{log}");
    }
    assert!(!log.contains("conn_reuse_mode=1 (is"), "{log}");
    // `--check` under the read-only mount: the same two differ.
    assert_ne!(r.rc("k_check_before"), "0");
    let before = r.out("k_check_before.txt");
    assert!(
        before.contains("net.ipv4.vs.sloppy_tcp=1 (is 0)"),
        "{before}"
    );
    assert!(
        before.contains("net.ipv4.vs.conn_reuse_mode=1 (ok)"),
        "{before}"
    );
    // The privileged init container's command writes them and says what it changed.
    assert_eq!(r.rc("k_sysctls"), "0", "{}", r.out("k_sysctls.txt"));
    let set = r.lines("k_sysctls.txt");
    assert_eq!(
        set,
        BTreeSet::from([
            "net.ipv4.vs.sloppy_tcp=1 (was 0)".to_string(),
            "net.ipv4.vs.expire_nodest_conn=1 (was 0)".to_string(),
            "net.ipv4.vs.conn_reuse_mode=1 (already)".to_string(),
        ])
    );
    assert_eq!(r.rc("k_check_after"), "0", "{}", r.out("k_check_after.txt"));
    // And the node then starts under the read-only mount and programs its table.
    assert_eq!(r.out("k_matched1").trim(), "1", "{}", r.context());
}

#[test]
fn kube_proxy_services_and_kube_ipvs0_survive_reconcile_resync_and_cleanup() {
    let Some(r) = run() else { return };
    let before = r.lines("k_kube_before.txt");
    for want in [
        "-A -t 198.19.0.1:443 -s rr",
        "-a -t 198.19.0.1:443 -r 198.18.0.11:6443 -m -w 1",
        "-A -u 198.19.0.10:53 -s rr",
        "-A -t 198.18.0.1:30080 -s rr",
        "198.19.0.1/32",
        "198.19.0.10/32",
    ] {
        assert!(before.contains(want), "set-up lacks {want:?}: {before:?}");
    }
    // Shoal programmed its own service next to them...
    let running = r.out("k_ipvsadm_running.txt");
    assert!(
        running.contains("-A -t 203.0.113.77:80 -s mh"),
        "{running}\n{}",
        r.context()
    );
    // ...and kube-proxy's state is identical while running, after resyncs and after cleanup.
    for (when, file) in [
        ("while running", "k_kube_running.txt"),
        ("after two resyncs", "k_kube_resynced.txt"),
        ("after cleanup on exit", "k_kube_after.txt"),
    ] {
        assert_eq!(r.lines(file), before, "kube-proxy state changed {when}");
    }
    // Cleanup removed exactly Shoal's part.
    assert_eq!(r.out("k_exit").trim(), "0", "{}", r.context());
    let after = r.out("k_ipvsadm_after.txt");
    assert!(
        !after.contains("203.0.113."),
        "Shoal's services left: {after}"
    );
    assert!(
        !r.out("k_shoal0_after.txt").contains("203.0.113."),
        "VIPs left on shoal0: {}",
        r.out("k_shoal0_after.txt")
    );
}

#[test]
fn backend_init_pool_serves_a_vip_allocated_after_the_backend_started() {
    let Some(r) = run() else { return };
    for b in ["b1", "b2"] {
        assert_eq!(
            r.rc(&format!("k_init_{b}")),
            "0",
            "{}",
            r.out(&format!("k_init_{b}.txt"))
        );
        let init = r.out(&format!("k_init_{b}.txt"));
        for want in [
            "local route 203.0.113.0/24 on lo",
            "check: route get 203.0.113.1 -> local: pool 203.0.113.0/24 is accepted by this pod (ok)",
            "check: tunl0 is up (ok)",
            "check: sysctls read back: net.ipv4.conf.all.rp_filter=0",
        ] {
            assert!(init.contains(want), "{b}: {want:?} missing from:\n{init}");
        }
        // A rerun changes nothing and still checks.
        let again = r.out(&format!("k_init_again_{b}.txt"));
        assert!(
            again.contains("already prepared: nothing to change"),
            "{again}"
        );
        assert!(
            again.contains("check: route get 203.0.113.1 -> local"),
            "{again}"
        );
        // The independent reader: iproute2 shows the local route.
        let routes = r.out(&format!("k_routes_{b}.txt"));
        assert!(routes.contains("local 203.0.113.0/24 dev lo"), "{routes}");
    }
    let first = r.out("k_fetch10.txt");
    assert!(
        !first.contains("FAIL") && first.lines().count() == 4,
        "{first}\n{}",
        r.context()
    );
    assert_eq!(r.out("k_matched2").trim(), "1", "{}", r.context());
    // 203.0.113.77 was in no table when the backends ran backend-init; every fetch is answered
    // by one of them.
    let late = r.out("k_fetch77.txt");
    let answers: Vec<&str> = late.lines().collect();
    assert_eq!(answers.len(), 6, "{late}");
    assert!(!late.contains("FAIL"), "{late}\n{}", r.context());
    assert!(
        answers
            .iter()
            .all(|a| *a == "backend-b1" || *a == "backend-b2"),
        "{late}"
    );
}
