//! End to end on a real kernel (docs/e2e-lab.md): one boot of the VM lab
//! (chaos/lab/vm/scenarios/e2e.sh) with a BIRD router doing ECMP + BFD, three `shoal run
//! --dataplane ipvs` replicas, three IPIP backends and a keepalived VRRP pair; 120 checked
//! long-lived connections per phase. Each test below checks one phase of that boot's output.
//! Without qemu, the kernel package, BIRD or keepalived the tests print "SKIPPED" and pass,
//! except under CI=true, where they fail.
//!
//! Not in CI yet: every test is `--ignored`. On the 2-core machine shared by several builds
//! the emulated guest got a fraction of a core and the three debug-build replicas missed their
//! 100 ms announce steps (the mesh and the announcements flapped), so no run was clean enough
//! to gate CI on. Run them with:
//! `cargo test -p shoal-chaos --test vm_e2e -- --ignored --skip data_path --nocapture`
//!
//! The data-path benchmark boots separately (see docs/benchmarks.md):
//! `cargo test -p shoal-chaos --test vm_e2e -- --ignored --nocapture data_path`

use shoal_chaos::flows::{fault_times, summarize_probes, FlowsReport, ProbeRecord};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const INSTALL: &str = "bash scripts/install-deps.sh (qemu-system-x86, linux-image-6.1.0-56-amd64, \
     busybox-static, ipvsadm, kmod, bird2, keepalived)";

/// The guest reads the clock through the TSC (vDSO) instead of an emulated timer chip: tokio
/// reads the clock all the time, and every emulated read is a trip through qemu.
const KERNEL_ARGS: &str = "clocksource=tsc tsc=reliable";

/// Health check of the lab's services: TCP every 500 ms, down after 2 failures.
const HEALTH_BOUND_MS: u64 = 500 * 2 + 400;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn in_ci() -> bool {
    std::env::var("CI").map(|v| v == "true").unwrap_or(false)
}

/// None (after saying why) when the lab cannot run here and we are not in CI.
fn lab_available() -> Option<()> {
    let out = Command::new("bash")
        .arg(repo().join("chaos/lab/vm/run.sh"))
        .arg("--check")
        .output();
    let mut why = match out {
        Ok(o) if o.status.success() => String::new(),
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
        Err(e) => format!("cannot run the VM lab: {e}"),
    };
    for tool in ["bird", "birdc", "keepalived"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            why.push_str(&format!(" {tool} missing;"));
        }
    }
    if why.is_empty() {
        return Some(());
    }
    if in_ci() {
        panic!("VM lab required in CI but unavailable: {why}");
    }
    eprintln!("SKIPPED: VM lab unavailable ({why}); install with: {INSTALL}");
    None
}

/// The `shoal` binary: $SHOAL_BIN, else built from the node crate.
fn shoal_binary() -> PathBuf {
    if let Ok(p) = std::env::var("SHOAL_BIN") {
        return PathBuf::from(p);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "-p", "shoal-node", "--bin", "shoal"]);
    // The variables cargo sets for this test would change build scripts' fingerprints and
    // rebuild half the tree: build with the environment the outer cargo had.
    for (k, _) in std::env::vars() {
        if k == "OUT_DIR"
            || (k.starts_with("CARGO_") && !matches!(k.as_str(), "CARGO_HOME" | "CARGO_TARGET_DIR"))
        {
            build.env_remove(k);
        }
    }
    let status = build.status().expect("run cargo build");
    assert!(status.success(), "building shoal failed");
    let flows = PathBuf::from(env!("CARGO_BIN_EXE_lab-flows"));
    flows.parent().expect("target dir").join("shoal")
}

/// The rules the replicas serve: the checked flows (mh with the default fallback, rr, and mh
/// without fallback as the old default's control) and the data-path services (tunnel, NAT).
pub const RULES: &str = r#"
[[service]]
name = "flows"
vip = "203.0.113.10"
port = 9000
scheduler = "mh"
[service.health]
kind = "tcp"
interval_ms = 500
timeout_ms = 400
rise = 2
fall = 2
[[service.backend]]
address = "198.18.1.31"
[[service.backend]]
address = "198.18.1.32"
[[service.backend]]
address = "198.18.1.33"

[[service]]
name = "flows-rr"
vip = "203.0.113.10"
port = 9001
scheduler = "rr"
[[service.backend]]
address = "198.18.1.31"
[[service.backend]]
address = "198.18.1.32"
[[service.backend]]
address = "198.18.1.33"

[[service]]
name = "flows-nofallback"
vip = "203.0.113.10"
port = 9002
scheduler = "mh"
mh_fallback = false
[service.health]
kind = "tcp"
interval_ms = 500
timeout_ms = 400
rise = 2
fall = 2
[[service.backend]]
address = "198.18.1.31"
[[service.backend]]
address = "198.18.1.32"
[[service.backend]]
address = "198.18.1.33"

[[service]]
name = "http-tun"
vip = "203.0.113.10"
port = 8080
scheduler = "mh"
[[service.backend]]
address = "198.18.1.31"
[[service.backend]]
address = "198.18.1.32"
[[service.backend]]
address = "198.18.1.33"

[[service]]
name = "http-nat"
vip = "203.0.113.10"
port = 8081
scheduler = "mh"
forwarding = "masq"
[[service.backend]]
address = "198.18.1.31"
[[service.backend]]
address = "198.18.1.32"
[[service.backend]]
address = "198.18.1.33"
"#;

/// What one boot left in its share folder.
pub struct Run {
    dir: PathBuf,
    faults: BTreeMap<String, u64>,
}

impl Run {
    fn out(&self, name: &str) -> PathBuf {
        self.dir.join("out").join(name)
    }

    fn report(&self, phase: &str) -> FlowsReport {
        let path = self.out(&format!("{phase}.json"));
        let text = fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}\n{}",
                path.display(),
                self.context(&format!("{phase}.log"))
            )
        });
        let r: FlowsReport = serde_json::from_str(&text).expect("flows report");
        eprintln!("{}", r.one_line());
        r
    }

    fn probes(&self, name: &str) -> Vec<ProbeRecord> {
        let text = fs::read_to_string(self.out(&format!("{name}.json")))
            .unwrap_or_else(|e| panic!("{name}: {e}\n{}", self.context("events.txt")));
        serde_json::from_str(&text).expect("probe records")
    }

    fn fault(&self, phase: &str) -> u64 {
        *self
            .faults
            .get(phase)
            .unwrap_or_else(|| panic!("no fault of {phase}\n{}", self.context("events.txt")))
    }

    /// The events, the end of the live view and the named log, for failure messages.
    fn context(&self, log: &str) -> String {
        let read = |n: &str| fs::read_to_string(self.out(n)).unwrap_or_default();
        let live = read("live.log");
        let tail: Vec<&str> = live.lines().rev().take(15).collect();
        format!(
            "share {}\nevents:\n{}\nlive (last lines):\n{}\n{log}:\n{}",
            self.dir.display(),
            read("events.txt"),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            read(log)
        )
    }

    /// Every connection survived; prints the figures.
    fn assert_all_survived(&self, phase: &str) -> FlowsReport {
        let r = self.report(phase);
        assert!(
            r.conns >= 100,
            "{phase}: only {} connections\n{}",
            r.conns,
            self.context("")
        );
        let failed: Vec<_> = r
            .records
            .iter()
            .filter(|c| c.outcome != shoal_chaos::flows::Outcome::Ok)
            .take(5)
            .collect();
        assert!(
            failed.is_empty(),
            "{phase}: {}\nfirst failures: {failed:?}\n{}",
            r.one_line(),
            self.context("")
        );
        r
    }
}

fn boot(phases: &str, env_extra: &str, tag: &str) -> Option<Run> {
    lab_available()?;
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("vm-e2e-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("bin")).expect("share dir");
    fs::copy(shoal_binary(), dir.join("bin/shoal")).expect("copy shoal");
    fs::copy(env!("CARGO_BIN_EXE_lab-flows"), dir.join("bin/lab-flows")).expect("copy lab-flows");
    // Debug binaries are >90 MB, mostly debug info; the guest loads them over 9p.
    for b in ["shoal", "lab-flows"] {
        let _ = Command::new("strip").arg(dir.join("bin").join(b)).status();
    }
    fs::write(dir.join("rules.toml"), RULES).expect("rules");
    let announce = std::env::var("SHOAL_E2E_ANNOUNCE").unwrap_or_else(|_| "bgp".into());
    fs::write(
        dir.join("e2e.env"),
        format!("PHASES=\"{phases}\"\nCONNS=120\nAFTER_S=8\nANNOUNCE={announce}\n{env_extra}"),
    )
    .expect("env");
    let status = Command::new("bash")
        .arg(repo().join("chaos/lab/vm/run.sh"))
        .arg("--share")
        .arg(&dir)
        .arg("--scenario")
        .arg(repo().join("chaos/lab/vm/scenarios/e2e.sh"))
        .args(["--timeout", "1200", "--memory", "1536"])
        .args(["--kernel-args", KERNEL_ARGS])
        .status()
        .expect("run the VM lab");
    let events = fs::read_to_string(dir.join("out/events.txt")).unwrap_or_default();
    let run = Run {
        faults: fault_times(&events),
        dir,
    };
    assert!(
        status.success() && events.contains(" ready"),
        "the VM lab did not get ready (exit {status})\n{}\nscenario log:\n{}",
        run.context("r1.log"),
        fs::read_to_string(run.dir.join("scenario.log")).unwrap_or_default()
    );
    let summary = Command::new(env!("CARGO_BIN_EXE_lab-flows"))
        .arg("summary")
        .arg("--dir")
        .arg(run.dir.join("out"))
        .output()
        .expect("lab-flows summary");
    eprintln!("{}", String::from_utf8_lossy(&summary.stdout));
    Some(run)
}

/// The CI boot: every failure scenario, the controls and the keepalived peer run.
fn run() -> Option<&'static Run> {
    static RUN: OnceLock<Option<Run>> = OnceLock::new();
    RUN.get_or_init(|| {
        boot(
            "kill9 stop term rolling add control-rr control-nosloppy backend keepalived",
            "",
            "ci",
        )
    })
    .as_ref()
}

#[test]
#[ignore = "VM lab end to end: minutes of TCG; run with --ignored on a machine that is not busy (docs/e2e-lab.md)"]
fn kill9_of_a_replica_loses_no_connection() {
    let Some(run) = run() else { return };
    let r = run.assert_all_survived("kill9");
    eprintln!(
        "kill -9: stall p50 {} ms p99 {} ms max {} ms (goal p99 <= 1000 ms)",
        r.stall.p50_ms, r.stall.p99_ms, r.stall.max_ms
    );
}

#[test]
#[ignore = "VM lab end to end: minutes of TCG; run with --ignored on a machine that is not busy (docs/e2e-lab.md)"]
fn sigstop_of_a_replica_loses_no_connection() {
    let Some(run) = run() else { return };
    run.assert_all_survived("stop");
}

#[test]
#[ignore = "VM lab end to end: minutes of TCG; run with --ignored on a machine that is not busy (docs/e2e-lab.md)"]
fn sigterm_of_a_replica_loses_no_connection() {
    let Some(run) = run() else { return };
    run.assert_all_survived("term");
}

#[test]
#[ignore = "VM lab end to end: minutes of TCG; run with --ignored on a machine that is not busy (docs/e2e-lab.md)"]
fn rolling_restart_of_all_replicas_loses_no_connection() {
    let Some(run) = run() else { return };
    run.assert_all_survived("rolling");
}

#[test]
#[ignore = "VM lab end to end: minutes of TCG; run with --ignored on a machine that is not busy (docs/e2e-lab.md)"]
fn a_replica_added_under_load_loses_no_connection() {
    let Some(run) = run() else { return };
    run.assert_all_survived("add");
}

/// The controls are measurements, but they must show that flows really moved between
/// replicas: with rr (the design Shoal comes from) or without sloppy_tcp, moved flows break.
/// If they did not, the lab would not be testing what it claims.
#[test]
#[ignore = "VM lab end to end: minutes of TCG; run with --ignored on a machine that is not busy (docs/e2e-lab.md)"]
fn controls_without_mh_or_sloppy_tcp_lose_moved_connections() {
    let Some(run) = run() else { return };
    for phase in ["control-rr", "control-nosloppy"] {
        let r = run.report(phase);
        let lost = r.conns - r.ok;
        eprintln!(
            "{phase}: {lost} of {} connections lost ({:.0}%)",
            r.conns,
            100.0 * lost as f64 / r.conns.max(1) as f64
        );
        assert!(
            r.conns >= 100 && lost > 0,
            "{phase}: no connection lost: did the kill move any flow?\n{}",
            run.context("")
        );
    }
}

/// Scenario 5: a backend dies under load. With the default (mh + fallback) new connections
/// avoid it within the health bound and connections to the other backends are untouched;
/// with `mh_fallback = false` (the old default) new connections keep failing.
#[test]
#[ignore = "VM lab end to end: minutes of TCG; run with --ignored on a machine that is not busy (docs/e2e-lab.md)"]
fn a_dead_backend_is_avoided_within_the_health_bound() {
    let Some(run) = run() else { return };
    let fault = run.fault("backend");
    let r = run.report("backend");
    assert!(r.conns >= 100, "{}", r.one_line());
    assert_eq!(
        r.lost_excluding_backend("b2"),
        0,
        "connections to the other backends broke\n{}",
        run.context("")
    );
    let fallback = summarize_probes(&run.probes("backend-probe"), fault);
    let old = summarize_probes(&run.probes("backend-probe-nofallback"), fault);
    eprintln!(
        "new connections after the backend's death: with fallback {fallback:?}; without {old:?}"
    );
    // The verdict needs fall x interval plus a timeout, then one reconcile on every replica.
    let bound_ms = HEALTH_BOUND_MS + 5_000;
    assert!(
        fallback.last_failure_after_event_ms <= bound_ms,
        "new connections still failed {} ms after the backend died (bound {bound_ms} ms)\n{}",
        fallback.last_failure_after_event_ms,
        run.context("")
    );
    assert!(
        fallback.attempts > 50,
        "too few probes: {fallback:?}\n{}",
        run.context("backend-probe.log")
    );
}

/// keepalived + VRRP between two replicas, the classic setup: a measurement side by side with
/// Shoal's kill -9 figures (docs/e2e-lab.md).
#[test]
#[ignore = "VM lab end to end: minutes of TCG; run with --ignored on a machine that is not busy (docs/e2e-lab.md)"]
fn keepalived_peer_run_is_measured() {
    let Some(run) = run() else { return };
    let fault = run.fault("keepalived");
    let r = run.report("keepalived");
    let p = summarize_probes(&run.probes("keepalived-probe"), fault);
    eprintln!(
        "keepalived: {} of {} long-lived connections lost; new connections failed for {} ms after the master's death ({p:?})",
        r.conns - r.ok,
        r.conns,
        p.recovered_after_event_ms
    );
    assert!(
        r.conns >= 100,
        "{}\n{}",
        r.one_line(),
        run.context("keepalived-k1.log")
    );
    assert!(
        p.attempts > 50,
        "{p:?}\n{}",
        run.context("keepalived-k2.log")
    );
}

/// Data-path figures in one boot (docs/benchmarks.md): small HTTP requests through one replica
/// in tunnel vs NAT mode vs straight to a backend, keep-alive and not.
#[test]
#[ignore]
fn data_path() {
    let secs: u64 = std::env::var("SHOAL_BENCH_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let Some(run) = boot("bench", &format!("BENCH_S={secs}\n"), "bench") else {
        return;
    };
    let mut rows = Vec::new();
    for mode in ["ka", "close"] {
        for path in ["tun", "nat", "direct"] {
            let name = format!("bench-{path}-{mode}.json");
            let text = fs::read_to_string(run.out(&name))
                .unwrap_or_else(|e| panic!("{name}: {e}\n{}", run.context("bench.log")));
            let v: serde_json::Value = serde_json::from_str(&text).expect("bench json");
            rows.push((path, mode, v));
        }
    }
    for (path, mode, v) in &rows {
        eprintln!(
            "{path:<7} {mode:<6} {:>8.0} req/s {:>8.0} conn/s {:>7.0} us guest CPU/req  errors {}",
            v["req_per_s"].as_f64().unwrap_or(0.0),
            v["conn_per_s"].as_f64().unwrap_or(0.0),
            v["guest_busy_us_per_req"].as_f64().unwrap_or(0.0),
            v["errors"]
        );
    }
}
