//! What the Kubernetes overlays rely on, on a real kernel with IPVS (the VM lab,
//! chaos/lab/vm/scenarios/k8s.sh, one boot): start-up under a read-only /proc/sys, kube-proxy's
//! IPVS services and `kube-ipvs0` addresses surviving Shoal in the host namespace,
//! `backend-init --pool` serving a VIP allocated after the backend started, and a terminating
//! endpoint drained through the Kubernetes source (the tests' fake API server runs in the
//! guest). Without qemu or the kernel package the tests print "SKIPPED" and pass, except under
//! CI=true, where they fail.

use serde_json::{json, Value};
use shoal_vmlab::{Boot, Profile, Share, Target};
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

/// The API objects of the drain step: a pool, the Service `web/flows` asking for
/// 203.0.113.20 (no health check: only the endpoints' state decides), its EndpointSlice with
/// both backends ready, then with b1 serving but terminating (as while its pod shuts down).
fn drain_objects() -> Vec<(&'static str, Value)> {
    let slice = |b1: Value| {
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": "web", "name": "flows-x",
                         "labels": {"kubernetes.io/service-name": "flows"}},
            "addressType": "IPv4",
            "ports": [{"name": "flows", "port": 7000, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["198.18.0.11"], "conditions": b1},
                {"addresses": ["198.18.0.12"],
                 "conditions": {"ready": true, "serving": true, "terminating": false}},
            ],
        })
    };
    vec![
        (
            "1-pool.json",
            json!({
                "apiVersion": "shoal.io/v1alpha1", "kind": "ShoalPool",
                "metadata": {"name": "lab", "uid": "uid-pool-lab",
                             "creationTimestamp": "2026-01-01T00:00:00Z"},
                "spec": {"addresses": ["203.0.113.0/24"], "autoAssign": true},
            }),
        ),
        (
            "2-service.json",
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"namespace": "web", "name": "flows", "uid": "uid-web-flows",
                             "creationTimestamp": "2026-01-01T00:00:00Z",
                             "annotations": {"shoal.io/vip": "203.0.113.20",
                                             "shoal.io/health-check": "none"}},
                "spec": {"type": "LoadBalancer", "loadBalancerClass": "shoal.io/lb",
                         "ports": [{"name": "flows", "port": 7000, "protocol": "TCP"}]},
            }),
        ),
        (
            "3-slice-ready.json",
            slice(json!({"ready": true, "serving": true, "terminating": false})),
        ),
        (
            "4-slice-terminating.json",
            slice(json!({"ready": false, "serving": true, "terminating": true})),
        ),
    ]
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
    // Separate cargo calls: built with `shoal`, lab-flows' crate would turn on the gossip
    // fault hooks in it, and the example would bring the dev-dependencies' features.
    let mut helpers = Vec::new();
    for t in [
        Target::bin("shoal-chaos", "lab-flows"),
        Target::example("shoal-node", "fake-apiserver"),
    ] {
        match shoal_vmlab::build(Profile::Debug, &[t]) {
            Ok(mut b) => helpers.push(b.remove(0)),
            Err(e) => return Ok(shoal_vmlab::skip(&format!("{} did not build: {e}", t.name))),
        }
    }
    let share = Share::new(env!("CARGO_TARGET_TMPDIR"), "k8s")?;
    share.add_bin(&shoal, "shoal")?;
    share.add_bin(&helpers[0], "lab-flows")?;
    share.add_bin(&helpers[1], "fake-apiserver")?;
    share.write("rules1.toml", RULES1)?;
    share.write("rules2.toml", &rules2())?;
    std::fs::create_dir_all(share.dir.join("k8s")).map_err(|e| e.to_string())?;
    for (name, object) in drain_objects() {
        share.write(&format!("k8s/{name}"), &object.to_string())?;
    }
    share.boot(&Boot::new("k8s.sh", 600))?;
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

/// Unix ms stamped by the scenario (`lab-flows now`).
fn stamp(r: &Run, name: &str) -> u64 {
    let text = r.out(&format!("k_t_{name}"));
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("stamp {name}: {text:?}\n{}", drain_context(r)))
}

fn drain_context(r: &Run) -> String {
    format!(
        "logs in {}\nerrors: {}\nshoal log (end):\n{}",
        r.share.dir.display(),
        r.out("k_drain_errors.txt"),
        shoal_vmlab::tail(&r.out("k_drain_shoal.log"), 30)
    )
}

fn report(r: &Run, set: &str) -> Value {
    let text = r.out(&format!("k_flows_{set}.json"));
    serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "{set} report: {e}: {text:?}\n{}\n{}",
            r.out(&format!("k_flows_{set}.log")),
            drain_context(r)
        )
    })
}

/// The drain (issue #13 item 6; docs/kubernetes-services.md): default 30 s with the Kubernetes
/// source, b1's endpoint turns terminating while b2 is ready.
const DRAIN_MS: u64 = 30_000;

#[test]
fn a_terminating_endpoint_drains_open_connections_then_is_removed() {
    let Some(r) = run() else { return };
    assert_eq!(r.out("k_drain_errors.txt"), "", "{}", drain_context(r));
    let dest_line = |file: &str| -> String {
        r.out(file)
            .lines()
            .find(|l| l.contains("-r 198.18.0.11:7000"))
            .unwrap_or("")
            .to_string()
    };
    // Both destinations at weight 1, then b1 at weight 0 (still there), then gone.
    assert!(dest_line("k_drain_ipvs_before.txt").ends_with("-w 1"));
    assert!(
        dest_line("k_drain_ipvs_weight0.txt").ends_with("-w 0"),
        "{}",
        r.out("k_drain_ipvs_weight0.txt")
    );
    assert!(
        dest_line("k_drain_ipvs_finish_done.txt").ends_with("-w 0"),
        "the destination must stay while the finishing connections close: {}",
        r.out("k_drain_ipvs_finish_done.txt")
    );
    assert_eq!(dest_line("k_drain_ipvs_removed.txt"), "");
    assert!(r
        .out("k_drain_ipvs_removed.txt")
        .contains("-r 198.18.0.12:7000"));

    let (weight0, removed) = (stamp(r, "weight0"), stamp(r, "removed"));
    let drained_ms = removed.saturating_sub(weight0);
    // The stamps are taken by polling (every 250 ms, each step a process start under
    // emulation): a little under the drain is the drain; far more is a deletion that came late.
    assert!(
        (DRAIN_MS - 3_000..DRAIN_MS + 60_000).contains(&drained_ms),
        "weight 0 -> deleted took {drained_ms} ms, drain is {DRAIN_MS} ms"
    );

    let (finish, outlast) = (report(r, "finish"), report(r, "outlast"));
    // The connections were spread over both backends before the change (mh with ports).
    for b in ["b1", "b2"] {
        let n: u64 = [&finish, &outlast]
            .iter()
            .map(|rep| rep["per_backend"][b].as_u64().unwrap_or(0))
            .sum();
        assert!(n > 0, "no connection on {b}: {finish}\n{outlast}");
    }
    for rep in [&finish, &outlast] {
        // 16 connections over random source ports: all on b2 is a 1-in-65,536 chance.
        assert!(
            rep["per_backend"]["b1"].as_u64().unwrap_or(0) > 0,
            "no connection on b1 in {}",
            rep["label"]
        );
    }

    // (a) Connections open on the terminating backend keep working and finish within the drain:
    // every "finish" connection, b1's included, ended ok, before the destination went.
    assert_eq!(finish["conns"], 16, "{}", finish["lost"]);
    assert_eq!(finish["ok"], 16, "lost: {}", finish["lost"]);
    let finish_done = stamp(r, "finish_done");
    assert!(
        finish_done < removed && finish_done - weight0 < DRAIN_MS,
        "finished {} ms after weight 0, removed after {drained_ms} ms",
        finish_done - weight0
    );

    // (b) New connections during the drain all go to b2.
    let probes: Vec<Value> = serde_json::from_str(&r.out("k_drain_probe.json")).unwrap_or_default();
    assert!(probes.len() >= 5, "{}", r.out("k_drain_probe.log"));
    for p in &probes {
        assert!(
            p["ok"] == true && p["backend"] == "b2",
            "a new connection during the drain: {p}"
        );
    }

    // (c) After the drain the destination is deleted and, with expire_nodest_conn=1 (what
    // `shoal sysctls` sets), the connections still open on it are cut at their next packet;
    // they streamed through the whole drain first. b2's connections are untouched.
    let records = outlast["records"].as_array().expect("records");
    assert_eq!(records.len(), 16);
    for rec in records {
        let on_b1 = rec["backend"] == "b1";
        if !on_b1 {
            assert_eq!(rec["outcome"], "ok", "{rec}");
            continue;
        }
        assert_ne!(
            rec["outcome"], "ok",
            "a connection to the deleted destination went on: {rec}"
        );
        let failed_at = rec["failed_at_ms"].as_u64().unwrap_or(0);
        assert!(
            failed_at >= weight0 + DRAIN_MS - 3_000,
            "cut {} ms after weight 0, before the drain ended: {rec}",
            failed_at as i64 - weight0 as i64
        );
        assert!(
            rec["stall_ms"].as_u64().unwrap_or(u64::MAX) < 10_000,
            "it stalled during the drain: {rec}"
        );
    }
    assert_eq!(r.out("k_drain_exit").trim(), "0", "{}", drain_context(r));
}
