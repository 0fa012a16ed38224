//! End to end on a real kernel (docs/e2e-lab.md): the VM lab (chaos/lab/vm/scenarios/e2e.sh)
//! with a BIRD router doing ECMP + BFD, three `shoal run --dataplane ipvs --announce bgp`
//! replicas, three IPIP backends and a keepalived VRRP pair; 120 checked long-lived
//! connections per phase. Each test checks one phase of a boot's output. Without qemu, the
//! kernel package, BIRD or keepalived the tests print "SKIPPED" and pass, except under CI=true,
//! where they fail.
//!
//! CI runs the short boot (`ci_*`: kill -9 of a replica, then a backend killed under load).
//! The long boot (every phase, controls, keepalived) and the data-path benchmark are
//! `--ignored`:
//! `cargo test -p shoal-chaos --test vm_e2e -- --ignored --skip data_path --nocapture`
//! `SHOAL_BENCH_S=15 cargo test -p shoal-chaos --test vm_e2e -- --ignored --nocapture data_path`
//!
//! The long boot and the benchmark run release builds of `shoal` and `lab-flows`, the CI boot
//! the debug builds cargo test has made; `SHOAL_E2E_PROFILE=debug|release` overrides,
//! `SHOAL_BIN` gives a `shoal`. `SHOAL_E2E_RECHECK=DIR` checks an earlier boot's share folder
//! again instead of booting.

use shoal_chaos::flows::{
    datagram_backends, datagrams_from, fault_times, probes_from, summarize_probes, DatagramRecord,
    FlowsReport, Outcome, ProbeRecord,
};
use shoal_vmlab::{Boot, Profile, Share, Target};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

/// The guest reads the clock through the TSC (vDSO) instead of an emulated timer chip: tokio
/// reads the clock all the time, and every emulated read is a trip through qemu.
const KERNEL_ARGS: &str = "clocksource=tsc tsc=reliable";

/// Health check of the lab's services: TCP every 500 ms, timeout 400 ms, down after 2 failures.
const HEALTH_BOUND_MS: u64 = 500 * 2 + 400;

/// The replicas' rules (also read by chaos/lab/vm/e2e-demo.sh).
const RULES: &str = include_str!("../lab/vm/e2e-rules.toml");

/// What one boot left in its share folder.
struct Run {
    share: Share,
    faults: BTreeMap<String, u64>,
}

impl Run {
    fn load(&self, phase: &str) -> FlowsReport {
        let text = self.share.out(&format!("{phase}.json"));
        serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "{phase}.json: {e}\n{}",
                self.context(&format!("{phase}.log"))
            )
        })
    }

    fn report(&self, phase: &str) -> FlowsReport {
        let r = self.load(phase);
        eprintln!("{}", r.one_line());
        r
    }

    fn probes(&self, name: &str) -> Vec<ProbeRecord> {
        serde_json::from_str(&self.share.out(&format!("{name}.json"))).unwrap_or_else(|e| {
            panic!("{name}.json: {e}\n{}", self.context(&format!("{name}.log")))
        })
    }

    fn datagrams(&self, name: &str) -> Vec<DatagramRecord> {
        serde_json::from_str(&self.share.out(&format!("{name}.json"))).unwrap_or_else(|e| {
            panic!("{name}.json: {e}\n{}", self.context(&format!("{name}.log")))
        })
    }

    fn fault(&self, phase: &str) -> u64 {
        *self
            .faults
            .get(phase)
            .unwrap_or_else(|| panic!("no fault of {phase}\n{}", self.context("scenario.log")))
    }

    /// Connections of `phase` the faulty director carried just before the fault: the
    /// ESTABLISHED entries of its IPVS connection table (`ipvsadm -Lnc`, saved by the scenario)
    /// for `target` whose client port is one of the phase's connections (the table still
    /// lists earlier phases' connections).
    fn carried(&self, phase: &str, target: &str) -> usize {
        let ports: std::collections::BTreeSet<String> = self
            .load(phase)
            .records
            .iter()
            .map(|r| format!("198.18.0.2:{}", r.local_port))
            .collect();
        self.share
            .out(&format!("{phase}-victim-conns.txt"))
            .lines()
            .filter(|l| l.contains(target) && l.contains("ESTABLISHED"))
            .filter(|l| l.split_whitespace().any(|w| ports.contains(w)))
            .count()
    }

    /// The events, the end of the live view and the named log, for failure messages.
    fn context(&self, log: &str) -> String {
        let live = self.share.out("live.log");
        format!(
            "share {}\nevents:\n{}\nlive (last lines):\n{}\n{log}:\n{}",
            self.share.dir.display(),
            self.share.out("events.txt"),
            shoal_vmlab::tail(&live, 15),
            shoal_vmlab::tail(&self.share.out(log), 40)
        )
    }

    /// Every connection survived, and the fault really moved some of them (the faulty replica
    /// carried them); prints the figures.
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
            .filter(|c| c.outcome != Outcome::Ok)
            .take(5)
            .collect();
        assert!(
            failed.is_empty(),
            "{phase}: {}\nfirst failures: {failed:?}\n{}",
            r.one_line(),
            self.context("")
        );
        let moved = self.carried(phase, "203.0.113.10:9000");
        eprintln!(
            "{phase}: {} of {} survived; the faulty replica carried {moved}; stall p50 {} ms p99 {} ms max {} ms",
            r.ok, r.conns, r.stall.p50_ms, r.stall.p99_ms, r.stall.max_ms
        );
        assert!(
            moved >= 10,
            "{phase}: the faulty replica carried only {moved} connections: the fault moved \
             (almost) nothing, so this run proves nothing\n{}",
            self.context(&format!("{phase}-victim-conns.txt"))
        );
        r
    }
}

/// The binaries for the guest: `shoal` and `lab-flows` in the profile `SHOAL_E2E_PROFILE`
/// names ("debug" or "release"), else `default`.
fn binaries(default: Profile) -> (std::path::PathBuf, std::path::PathBuf) {
    let profile = match std::env::var("SHOAL_E2E_PROFILE").as_deref() {
        Ok("debug") => Profile::Debug,
        Ok("release") => Profile::Release,
        _ => default,
    };
    // Two cargo calls: built together, `shoal` would get the features shoal-chaos turns on in
    // its dependencies (the gossip fault hooks); alone it is the binary a user builds.
    let build = |t: Target| {
        shoal_vmlab::build(profile, &[t])
            .unwrap_or_else(|e| panic!("{e}"))
            .remove(0)
    };
    let shoal = std::env::var("SHOAL_BIN")
        .map(Into::into)
        .unwrap_or_else(|_| build(Target::bin("shoal-node", "shoal")));
    (shoal, build(Target::bin("shoal-chaos", "lab-flows")))
}

fn boot(phases: &str, env_extra: &str, tag: &str, profile: Profile) -> Option<Run> {
    // Checks an earlier boot's share folder again instead of booting (for working on the checks).
    if let Ok(dir) = std::env::var("SHOAL_E2E_RECHECK") {
        let share = Share { dir: dir.into() };
        let faults = fault_times(&share.out("events.txt"));
        return Some(Run { share, faults });
    }
    shoal_vmlab::available(&["bird", "birdc", "keepalived"])?;
    let (shoal, flows) = binaries(profile);
    let share = Share::new(env!("CARGO_TARGET_TMPDIR"), &format!("e2e-{tag}")).expect("share");
    share.add_bin(&shoal, "shoal").expect("shoal");
    share.add_bin(&flows, "lab-flows").expect("lab-flows");
    share.write("rules.toml", RULES).expect("rules");
    let announce = std::env::var("SHOAL_E2E_ANNOUNCE").unwrap_or_else(|_| "bgp".into());
    share
        .write(
            "e2e.env",
            &format!("PHASES=\"{phases}\"\nCONNS=120\nAFTER_S=8\nANNOUNCE={announce}\n{env_extra}"),
        )
        .expect("env");
    let mut b = Boot::new("e2e.sh", 1800);
    b.memory_mb = 1536;
    b.kernel_args = KERNEL_ARGS.into();
    let before = host_uptime();
    let booted = share.boot(&b);
    let after = host_uptime();
    let events = share.out("events.txt");
    let run = Run {
        faults: fault_times(&events),
        share,
    };
    assert!(
        booted.is_ok() && events.contains(" ready"),
        "the VM lab did not get ready: {}\n{}",
        booted.err().unwrap_or_default(),
        run.context("r1.log")
    );
    let summary = std::process::Command::new(&flows)
        .arg("summary")
        .arg("--dir")
        .arg(run.share.dir.join("out"))
        .output()
        .expect("lab-flows summary");
    eprintln!(
        "{}\nhost uptime before: {before}\nhost uptime after:  {after}",
        String::from_utf8_lossy(&summary.stdout)
    );
    Some(run)
}

/// The host's `uptime` (its load is part of every figure: the guest is emulated).
fn host_uptime() -> String {
    std::process::Command::new("uptime")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The CI boot: kill -9 of a replica, then a backend killed under load. Debug binaries (cargo
/// test has built them already; the release build would add minutes to CI): with the lab's
/// 512 MB code cache they keep up (two clean boots of this pair on the busy host, docs/e2e-lab.md).
fn short() -> Option<&'static Run> {
    static RUN: OnceLock<Option<Run>> = OnceLock::new();
    RUN.get_or_init(|| boot("kill9 backend removal refused", "", "ci", Profile::Debug))
        .as_ref()
}

/// The long boot: every failure scenario, the controls and the keepalived peer run.
fn full() -> Option<&'static Run> {
    static RUN: OnceLock<Option<Run>> = OnceLock::new();
    RUN.get_or_init(|| {
        boot(
            "kill9 stop term rolling add control-rr control-nosloppy backend removal refused keepalived",
            "",
            "full",
            Profile::Release,
        )
    })
    .as_ref()
}

/// Scenario 1: kill -9 of a replica (shoal and its BIRD) loses no connection.
fn check_kill9(run: &Run) {
    let r = run.assert_all_survived("kill9");
    eprintln!(
        "kill -9: stall p50 {} ms p99 {} ms max {} ms (goal p99 <= 1000 ms)",
        r.stall.p50_ms, r.stall.p99_ms, r.stall.max_ms
    );
}

/// Scenario 5: a backend dies under load. With the default (mh + fallback) new connections
/// avoid it within the health bound and connections to the other backends are untouched;
/// with `mh_fallback = false` (the old default) new connections keep failing.
fn check_backend(run: &Run) {
    let fault = run.fault("backend");
    let r = run.report("backend");
    assert!(r.conns >= 100, "{}", r.one_line());
    let on_b2 = r.per_backend.get("b2").copied().unwrap_or(0);
    assert!(on_b2 > 0, "no connection on b2: {}", r.one_line());
    assert_eq!(
        r.lost_excluding_backend("b2"),
        0,
        "connections to the other backends broke\n{}",
        run.context("")
    );
    let probes = run.probes("backend-probe");
    let fallback = summarize_probes(&probes, fault);
    let nofallback = run.probes("backend-probe-nofallback");
    let old = summarize_probes(&nofallback, fault);
    eprintln!(
        "new connections after the backend's death: with fallback {fallback:?}; without {old:?}"
    );
    assert!(
        fallback.attempts > 50,
        "too few probes: {fallback:?}\n{}",
        run.context("backend-probe.log")
    );
    // The verdict needs fall x interval plus a timeout, then one reconcile on every replica;
    // a busy machine's emulated guest gets 5 s of slack.
    let bound_ms = HEALTH_BOUND_MS + 5_000;
    // After the bound no new connection may reach the dead backend: its kernel answers a SYN
    // with a reset, so such an attempt is refused. Attempts that time out or find no route are
    // the emulated guest stalling as a whole (every replica withdraws, docs/e2e-lab.md), which
    // no director can prevent: they are counted, not failed on. Enough attempts must get
    // through for the check to mean something: were one slot in three still b2's, 20
    // attempts would all miss it with odds of (2/3)^20, about 1 in 3,000.
    let after = probes_from(&probes, fault + bound_ms);
    eprintln!("new connections from the bound on: {after:?}");
    assert_eq!(
        after.refused,
        0,
        "new connections still reached the dead backend after {bound_ms} ms: {after:?}\n{}",
        run.context("backend-probe.log")
    );
    assert!(
        after.ok >= 20
            && after.greeted_by.contains("b1")
            && after.greeted_by.contains("b3")
            && !after.greeted_by.contains("b2"),
        "new connections did not recover after the backend died: {after:?}\n{}",
        run.context("backend-probe.log")
    );
    // The control: without the fallback, new connections to the dead backend's slots keep
    // reaching it after the bound (else the probes would not see what the fallback changes).
    let control = probes_from(&nofallback, fault + bound_ms);
    assert!(
        control.refused > 0,
        "mh without fallback: nothing reached the dead backend after {bound_ms} ms: {control:?}\n{}",
        run.context("backend-probe-nofallback.log")
    );
    // sh over the source port, with the fallback its rules get by default: the dead backend had
    // slots (probes greeted by it before the fault), and after the bound they go elsewhere.
    // Without the fallback sh keeps sending those slots to the weight-0 destination.
    let sh = run.probes("backend-probe-sh");
    let before: BTreeSet<&str> = sh
        .iter()
        .filter(|r| r.ok && r.at_ms < fault)
        .map(|r| r.backend.as_str())
        .collect();
    let sh_after = probes_from(&sh, fault + bound_ms);
    eprintln!("sh: greeted before the fault by {before:?}; from the bound on {sh_after:?}");
    assert!(
        before.contains("b2"),
        "sh: no probe reached b2 before the fault, so the check means nothing: {before:?}\n{}",
        run.context("backend-probe-sh.log")
    );
    assert!(
        sh_after.refused == 0
            && sh_after.ok >= 20
            && sh_after.greeted_by.contains("b1")
            && sh_after.greeted_by.contains("b3")
            && !sh_after.greeted_by.contains("b2"),
        "sh with fallback: new connections still reached the dead backend, or did not recover, \
         after {bound_ms} ms: {sh_after:?}\n{}",
        run.context("backend-probe-sh.log")
    );
    // UDP clients that keep their source port: those on the dead backend are answered by the
    // others from the health bound on. At weight 0 IPVS kept them there for as long as they
    // sent (every datagram refreshes the entry; an audit lost 153 of 154 datagrams per such
    // client over 46 s); a down UDP backend is now deleted, and the kernel moves them at their
    // next datagram.
    check_udp_clients_leave_b2(run, "backend-udp", fault, bound_ms);
}

/// The clients of `file` (a `lab-flows udp` report) that b2 answered before `fault` are
/// answered by the others from `fault + bound_ms` on, and every client is answered.
fn check_udp_clients_leave_b2(run: &Run, file: &str, fault: u64, bound_ms: u64) {
    let udp = run.datagrams(file);
    let on = datagram_backends(&udp, fault);
    let on_b2: Vec<u16> = on
        .iter()
        .filter(|(_, b)| b.as_str() == "b2")
        .map(|(port, _)| *port)
        .collect();
    let after = datagrams_from(&udp, fault + bound_ms);
    let log = format!("{file}.log");
    eprintln!(
        "{file}: {} clients answered before the fault, {} of them on b2 {on_b2:?}; from the \
         bound on {} answered, {} not, by {:?}, clients never answered {:?}",
        on.len(),
        on_b2.len(),
        after.ok,
        after.failed,
        after.answered_by,
        after.stuck
    );
    // 24 clients hashed over 3 backends: none on b2 has odds of (2/3)^24, about 1 in 17,000.
    assert!(
        on.len() >= 20 && !on_b2.is_empty(),
        "{file}: too few clients answered before the fault, or none on b2: the check means \
         nothing\n{}",
        run.context(&log)
    );
    assert!(
        after.stuck.is_empty() && !after.answered_by.contains("b2") && after.ok > 0,
        "{file}: clients left on b2 after {bound_ms} ms: {:?} (answered by {:?})\n{}",
        after.stuck,
        after.answered_by,
        run.context(&log)
    );
}

/// A backend removed from a UDP service's rules while the replicas drain removals (30 s): its
/// clients are answered by the others within a table change's reach, not kept on it for the
/// drain (b2 still serves: a client it still answers was never moved).
fn check_removal(run: &Run) {
    // The file is read at the second poll after its rename (250 ms each), published and
    // applied by every replica; a busy machine's emulated guest gets 5 s of slack.
    check_udp_clients_leave_b2(run, "removal-udp", run.fault("removal"), 1_000 + 5_000);
}

/// A service every replica's kernel refuses (no `ip_vs_sed` in the lab) on a VIP of its own:
/// the router must get no route to that VIP, while the VIP beside it keeps all three replicas;
/// the same service with a scheduler the kernel has is announced by all three. Before, each
/// replica announced the refused service's VIP and the router sent its flows to kernels with
/// no service for them.
fn check_refused(run: &Run) {
    let hops = |f: &str| run.share.out(f).trim().to_string();
    run.fault("refused");
    for i in 1..=3 {
        let node: serde_json::Value =
            serde_json::from_str(&run.share.out(&format!("refused-announce-r{i}.json")))
                .unwrap_or_else(|e| {
                    panic!("r{i}'s /v1/node: {e}\n{}", run.context("scenario.log"))
                });
        let refused = node["reconcile"]["refused"].to_string();
        assert!(
            refused.contains("tcp 203.0.113.11:9000") && refused.contains("ip_vs_sed"),
            "r{i} did not set the service aside: {refused}"
        );
        assert_eq!(
            node["announce"]["withheld"]["203.0.113.11"], "none of its services is programmed here",
            "r{i}'s announce report: {}",
            node["announce"]
        );
    }
    let context = || run.context("r1.log");
    assert_eq!(
        hops("refused-hops-refused.txt"),
        "-",
        "routed while refused\n{}",
        context()
    );
    assert_eq!(hops("refused-hops-vip.txt"), "11 12 13", "{}", context());
    assert_eq!(
        hops("refused-hops-programmed.txt"),
        "11 12 13",
        "{}",
        context()
    );
}

#[test]
fn ci_a_vip_whose_services_the_kernel_refuses_is_not_announced() {
    let Some(run) = short() else { return };
    check_refused(run);
}

#[test]
fn ci_kill9_of_a_replica_loses_no_connection() {
    let Some(run) = short() else { return };
    check_kill9(run);
}

#[test]
fn ci_a_dead_backend_is_avoided_within_the_health_bound() {
    let Some(run) = short() else { return };
    check_backend(run);
}

#[test]
fn ci_a_udp_backend_removed_from_the_rules_loses_its_clients_at_once() {
    let Some(run) = short() else { return };
    check_removal(run);
}

#[test]
#[ignore = "VM lab end to end, every phase: ~6 min of TCG (docs/e2e-lab.md)"]
fn kill9_of_a_replica_loses_no_connection() {
    let Some(run) = full() else { return };
    check_kill9(run);
}

#[test]
#[ignore = "VM lab end to end, every phase: ~6 min of TCG (docs/e2e-lab.md)"]
fn sigstop_of_a_replica_loses_no_connection() {
    let Some(run) = full() else { return };
    run.assert_all_survived("stop");
}

#[test]
#[ignore = "VM lab end to end, every phase: ~6 min of TCG (docs/e2e-lab.md)"]
fn sigterm_of_a_replica_loses_no_connection() {
    let Some(run) = full() else { return };
    run.assert_all_survived("term");
}

#[test]
#[ignore = "VM lab end to end, every phase: ~6 min of TCG (docs/e2e-lab.md)"]
fn rolling_restart_of_all_replicas_loses_no_connection() {
    let Some(run) = full() else { return };
    run.assert_all_survived("rolling");
}

#[test]
#[ignore = "VM lab end to end, every phase: ~6 min of TCG (docs/e2e-lab.md)"]
fn a_replica_added_under_load_loses_no_connection() {
    let Some(run) = full() else { return };
    run.assert_all_survived("add");
}

/// The controls are measurements, but they must show that flows really moved between
/// replicas: with rr (the design Shoal comes from) or without sloppy_tcp, moved flows break.
/// If they did not, the lab would not be testing what it claims.
#[test]
#[ignore = "VM lab end to end, every phase: ~6 min of TCG (docs/e2e-lab.md)"]
fn controls_without_mh_or_sloppy_tcp_lose_moved_connections() {
    let Some(run) = full() else { return };
    for (phase, target) in [
        ("control-rr", "203.0.113.10:9001"),
        ("control-nosloppy", "203.0.113.10:9000"),
    ] {
        let r = run.report(phase);
        let lost = r.conns - r.ok;
        eprintln!(
            "{phase}: {lost} of {} connections lost ({:.0}%); the killed replica carried {}",
            r.conns,
            100.0 * lost as f64 / r.conns.max(1) as f64,
            run.carried(phase, target)
        );
        assert!(
            r.conns >= 100 && lost > 0,
            "{phase}: no connection lost: did the kill move any flow?\n{}",
            run.context("")
        );
    }
}

#[test]
#[ignore = "VM lab end to end, every phase: ~6 min of TCG (docs/e2e-lab.md)"]
fn a_dead_backend_is_avoided_within_the_health_bound() {
    let Some(run) = full() else { return };
    check_backend(run);
}

#[test]
#[ignore = "VM lab end to end, every phase: ~6 min of TCG (docs/e2e-lab.md)"]
fn a_udp_backend_removed_from_the_rules_loses_its_clients_at_once() {
    let Some(run) = full() else { return };
    check_removal(run);
}

/// keepalived + VRRP between two directors, the classic setup: a measurement side by side with
/// Shoal's kill -9 figures (docs/e2e-lab.md).
#[test]
#[ignore = "VM lab end to end, every phase: ~6 min of TCG (docs/e2e-lab.md)"]
fn keepalived_peer_run_is_measured() {
    let Some(run) = full() else { return };
    let fault = run.fault("keepalived");
    let r = run.report("keepalived");
    let p = summarize_probes(&run.probes("keepalived-probe"), fault);
    eprintln!(
        "keepalived: {} of {} long-lived connections lost (the master carried {}); new connections failed for {} ms after the master's death ({p:?})",
        r.conns - r.ok,
        r.conns,
        run.carried("keepalived", "203.0.113.20:9000"),
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
#[ignore = "data-path benchmark (docs/benchmarks.md)"]
fn data_path() {
    let secs: u64 = std::env::var("SHOAL_BENCH_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let Some(run) = boot(
        "bench",
        &format!("BENCH_S={secs}\n"),
        "bench",
        Profile::Release,
    ) else {
        return;
    };
    for mode in ["ka", "close"] {
        for path in ["tun", "nat", "direct"] {
            let name = format!("bench-{path}-{mode}.json");
            let v: serde_json::Value = serde_json::from_str(&run.share.out(&name))
                .unwrap_or_else(|e| panic!("{name}: {e}\n{}", run.context("bench.log")));
            eprintln!(
                "{path:<7} {mode:<6} {:>8.0} req/s {:>8.0} conn/s {:>7.0} us guest CPU/req  errors {}",
                v["req_per_s"].as_f64().unwrap_or(0.0),
                v["conn_per_s"].as_f64().unwrap_or(0.0),
                v["guest_busy_us_per_req"].as_f64().unwrap_or(0.0),
                v["errors"]
            );
        }
    }
}
