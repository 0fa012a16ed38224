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
    // Checks an earlier boot's share folder again instead of booting (for working on the checks).
    if let Ok(dir) = std::env::var("SHOAL_VM_RECHECK") {
        let share = Share { dir: dir.into() };
        return Ok(Some(Run { share }));
    }
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
    // Refused before anything changed (the audit of 2026-12-06: a 0.0.0.0/0 pool made every
    // address local; a multicast VIP stayed on tunl0 after the final check failed).
    for (n, says) in [
        (1, "wider than a /8"),
        (2, "holds 198.18.0.11, an address of eth0"),
        (
            3,
            "--vip 224.0.0.1: not a unicast address a VIP can be (multicast)",
        ),
    ] {
        let out = r.out(&format!("k_refused{n}.txt"));
        assert!(
            out.contains(says) && out.trim_end().ends_with('1'),
            "{n}: {says:?} and exit 1 expected:\n{out}"
        );
    }
    let state = r.out("k_refused_state.txt");
    // Only the kernel's own local routes, and tunl0 neither up nor holding the multicast VIP.
    for changed in [
        "local 0.0.0.0/0",
        "local default",
        "local 198.18.0.0/24",
        "inet 224.0.0.1",
        "UP",
    ] {
        assert!(
            !state.contains(changed),
            "a refused init changed b1 ({changed:?}):\n{state}"
        );
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

/// The guest's uptime and Unix time read side by side: Unix ms = uptime ms + offset.
fn clock_offset_ms(r: &Run) -> i64 {
    let text = r.out("k_drain_clock");
    let v: Vec<f64> = text
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(v.len(), 3, "k_drain_clock: {text:?}\n{}", drain_context(r));
    v[1] as i64 - ((v[0] + v[2]) * 500.0) as i64
}

/// Uptime (s) of the first sample of A in `state`, and of the sample just before it.
fn first(samples: &[(f64, String)], state: &str, after: f64) -> Option<(f64, f64)> {
    let i = samples.iter().position(|(t, s)| *t > after && s == state)?;
    Some((samples[i].0, samples[i.saturating_sub(1)].0))
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
const DRAIN_MS: i64 = 30_000;

#[test]
fn a_terminating_endpoint_drains_open_connections_then_is_removed() {
    let Some(r) = run() else { return };
    assert_eq!(r.out("k_drain_errors.txt"), "", "{}", drain_context(r));
    let dest_line = |file: &str| -> String {
        r.out(file)
            .lines()
            .find(|l| l.contains("-r 198.18.0.11:7000 "))
            .unwrap_or("")
            .to_string()
    };
    // Both destinations at weight 1, then b1 at weight 0 (still there), then gone.
    assert!(dest_line("k_drain_ipvs_before.txt").contains(" -w 1"));
    assert!(
        dest_line("k_drain_ipvs_weight0.txt").contains(" -w 0"),
        "{}",
        r.out("k_drain_ipvs_weight0.txt")
    );
    assert_eq!(dest_line("k_drain_ipvs_removed.txt"), "");
    assert!(r
        .out("k_drain_ipvs_removed.txt")
        .contains("-r 198.18.0.12:7000 "));

    // When b1 went to weight 0 and when it went, from the 0.25 s samples (uptime, seconds).
    let samples: Vec<(f64, String)> = r
        .out("k_drain_samples.txt")
        .lines()
        .filter_map(|l| {
            let (t, s) = l.split_once(' ')?;
            Some((t.parse().ok()?, s.to_string()))
        })
        .collect();
    let (w0, before_w0) = first(&samples, "0", 0.0).expect("no weight-0 sample");
    let (gone, _) = first(&samples, "gone", w0).expect("no sample without b1");
    assert!(
        samples
            .iter()
            .all(|(t, s)| *t < w0 || *t >= gone || s == "0"),
        "b1 left weight 0 during the drain: {samples:?}"
    );
    // Weight 0 came between `before_w0` and `w0`; the deletion before `gone`.
    let drained_ms = ((gone - before_w0) * 1000.0) as i64;
    assert!(
        (DRAIN_MS - 1_000..DRAIN_MS + 60_000).contains(&drained_ms),
        "weight 0 -> deleted took at most {drained_ms} ms, the drain is {DRAIN_MS} ms"
    );
    // The last sample that still saw b1 (at weight 0).
    let last_w0 = samples
        .iter()
        .filter(|(t, s)| *t < gone && s == "0")
        .map(|(t, _)| *t)
        .fold(w0, f64::max);
    let offset = clock_offset_ms(r);
    let unix = |uptime_s: f64| (uptime_s * 1000.0) as i64 + offset;
    // Samples are 0.25 s apart on an idle guest and seconds apart on a starved one: the bounds
    // below only use what the samples prove. Deleted no earlier than `before_w0` + drain.
    let deleted_not_before = unix(before_w0) + DRAIN_MS;

    let (finish, outlast) = (report(r, "finish"), report(r, "outlast"));
    // The connections were spread over both backends before the change (mh with ports).
    for rep in [&finish, &outlast] {
        // 16 connections over random source ports: all on one backend is a 1-in-32,768 chance.
        for b in ["b1", "b2"] {
            assert!(
                rep["per_backend"][b].as_u64().unwrap_or(0) > 0,
                "no connection on {b} in {}",
                rep["label"]
            );
        }
    }

    // (a) Connections open on the terminating backend keep working and finish within the drain:
    // every "finish" connection, b1's included, ended ok, before the destination went.
    assert_eq!(finish["conns"], 16, "{}", finish["lost"]);
    assert_eq!(finish["ok"], 16, "lost: {}", finish["lost"]);
    let ended = finish["ended_ms"].as_i64().expect("ended_ms");
    assert!(
        ended < deleted_not_before - 2_000,
        "the finishing connections ended {} ms after weight 0, b1 was gone after {drained_ms} ms",
        ended - unix(w0)
    );

    // (b) New connections during the drain all go to b2 (an attempt may time out while the
    // emulated guest is starved; none may reach b1).
    let probes: Vec<Value> = serde_json::from_str(&r.out("k_drain_probe.json")).unwrap_or_default();
    let answered: Vec<&Value> = probes.iter().filter(|p| p["ok"] == true).collect();
    assert!(
        probes.len() >= 5 && answered.len() * 5 >= probes.len() * 4,
        "{}",
        r.out("k_drain_probe.json")
    );
    for p in &answered {
        assert_eq!(p["backend"], "b2", "a new connection during the drain: {p}");
    }

    // (c) After the drain the destination is deleted and, with expire_nodest_conn=1 (what
    // `shoal sysctls` sets), the connections still open on it are cut at their next packet
    // (IPVS schedules it again, to b2, which resets it); they streamed through the whole
    // drain first. b2's connections are untouched.
    let records = outlast["records"].as_array().expect("records");
    assert_eq!(records.len(), 16);
    for rec in records {
        if rec["backend"] != "b1" {
            assert_eq!(rec["outcome"], "ok", "{rec}");
            continue;
        }
        assert_ne!(
            rec["outcome"], "ok",
            "a connection to the deleted destination went on: {rec}"
        );
        let failed_at = rec["failed_at_ms"].as_i64().unwrap_or(0);
        assert!(
            failed_at >= deleted_not_before.max(unix(last_w0)) - 2_000,
            "cut {} ms after weight 0, before the drain ended: {rec}",
            failed_at - unix(w0)
        );
    }
    assert_eq!(r.out("k_drain_exit").trim(), "0", "{}", drain_context(r));
}
