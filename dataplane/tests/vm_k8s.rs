//! What the Kubernetes overlays rely on, on a real kernel with IPVS (the VM lab,
//! chaos/lab/vm/scenarios/k8s.sh, one boot): start-up under a read-only /proc/sys, kube-proxy's
//! IPVS services and `kube-ipvs0` addresses surviving Shoal in the host namespace, and
//! `backend-init --pool` serving a VIP allocated after the backend started. Without qemu or the
//! kernel package the tests print "SKIPPED" and pass, except under CI=true, where they fail.

use shoal_vmlab::{Boot, Profile, Share};
use std::collections::BTreeSet;
use std::sync::OnceLock;

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
    share: Share,
}

impl Run {
    fn out(&self, name: &str) -> String {
        self.share.out(name)
    }
    fn rc(&self, name: &str) -> String {
        self.out(&format!("{name}.rc")).trim().to_string()
    }
    fn context(&self) -> String {
        format!(
            "logs in {}\nshoal log:\n{}",
            self.share.dir.display(),
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

/// One boot for every test in this file; a failed boot is reported by each test.
fn run() -> Option<&'static Run> {
    static RUN: OnceLock<Result<Option<Run>, String>> = OnceLock::new();
    match RUN.get_or_init(boot) {
        Ok(r) => r.as_ref(),
        Err(e) => panic!("{e}"),
    }
}

fn boot() -> Result<Option<Run>, String> {
    if shoal_vmlab::available(&[]).is_none() {
        return Ok(None);
    }
    let shoal = match shoal_vmlab::shoal(Profile::Debug) {
        Ok(bin) => bin,
        Err(e) => {
            return Ok(shoal_vmlab::skip(&format!(
                "the shoal binary did not build: {e}"
            )))
        }
    };
    let share = Share::new(env!("CARGO_TARGET_TMPDIR"), "k8s")?;
    share.add_bin(&shoal, "shoal")?;
    share.write("rules1.toml", RULES1)?;
    share.write("rules2.toml", &rules2())?;
    share.boot(&Boot::new("k8s.sh", 400))?;
    Ok(Some(Run { share }))
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
