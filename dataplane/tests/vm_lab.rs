//! Real IPVS, inside a VM booted from Debian's kernel (chaos/lab/vm/run.sh): this host's kernel
//! has no IPVS. One boot runs the whole suite (chaos/lab/vm/scenarios/suite.sh); each test
//! below checks one part of its output. Without qemu or the kernel package the tests print
//! "SKIPPED" and pass, except under CI=true, where they fail.
//!
//! Why this file is over 500 lines: one boot runs the whole suite, and each test here reads its
//! own part of that boot's output; they share the boot and its parsing.

use serde_json::Value;
use shoal_dataplane::model::*;
use shoal_dataplane::{Actual, Desired, Op};
use shoal_vmlab::{Boot, Profile, Share, Target};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The ipvs-lab example binary (cargo test builds examples next to the test binaries).
fn example_binary(name: &str) -> PathBuf {
    let bin = shoal_vmlab::target_dir().join("debug/examples").join(name);
    if bin.exists() {
        return bin;
    }
    shoal_vmlab::build(Profile::Debug, &[Target::example("shoal-dataplane", name)])
        .unwrap_or_else(|e| panic!("{e}"))
        .remove(0)
}

fn v4(s: &str) -> IpAddr {
    s.parse().expect("literal address")
}

fn dest(addr: &str, port: u16, forwarding: Forwarding, weight: u32) -> Destination {
    Destination {
        addr: v4(addr),
        port,
        forwarding,
        weight,
        upper_threshold: 0,
        lower_threshold: 0,
    }
}

fn tcp(vip: &str, port: u16) -> ServiceKey {
    ServiceKey::Addr {
        addr: v4(vip),
        port,
        protocol: Protocol::Tcp,
    }
}

const TUN: Forwarding = Forwarding::Tunnel(Tunnel::Ipip);

/// (a): tunnel, masq and route; mh, wrr, rr; tcp, udp and a fwmark service.
fn table_a() -> Desired {
    let mut udp_dests = vec![
        dest("198.18.0.11", 53, Forwarding::Masq, 2),
        dest("198.18.0.12", 53, Forwarding::Masq, 3),
    ];
    udp_dests[1].upper_threshold = 100;
    udp_dests[1].lower_threshold = 10;
    Desired {
        services: vec![
            Service {
                key: tcp("203.0.113.10", 80),
                scheduler: "mh".into(),
                flags: SchedFlags {
                    port: true,
                    fallback: false,
                },
                persistence_timeout_s: 0,
                destinations: vec![
                    dest("198.18.0.11", 80, TUN, 1),
                    dest("198.18.0.12", 80, TUN, 1),
                ],
            },
            Service {
                key: ServiceKey::Addr {
                    addr: v4("203.0.113.10"),
                    port: 53,
                    protocol: Protocol::Udp,
                },
                scheduler: "wrr".into(),
                flags: SchedFlags::default(),
                persistence_timeout_s: 0,
                destinations: udp_dests,
            },
            Service {
                key: tcp("203.0.113.20", 443),
                scheduler: "rr".into(),
                flags: SchedFlags::default(),
                persistence_timeout_s: 300,
                destinations: vec![
                    dest("198.18.0.11", 443, Forwarding::Route, 1),
                    dest("198.18.0.12", 443, Forwarding::Route, 1),
                ],
            },
            Service {
                key: ServiceKey::Fwmark {
                    mark: shoal_dataplane::plan::SHOAL_FWMARK_BASE + 1,
                    family: AddressFamily::Inet,
                },
                scheduler: "rr".into(),
                flags: SchedFlags::default(),
                persistence_timeout_s: 0,
                destinations: vec![dest("198.18.0.11", 0, TUN, 1)],
            },
        ],
    }
}

/// (c): one weight change (80 -> .12 weight 3), one removal (53 -> .12), one new service.
fn table_c() -> Desired {
    let mut t = table_a();
    t.services[0].destinations[1].weight = 3;
    t.services[1].destinations.truncate(1);
    t.services.push(Service {
        key: tcp("203.0.113.20", 8080),
        scheduler: "mh".into(),
        flags: SchedFlags {
            port: true,
            fallback: true,
        },
        persistence_timeout_s: 0,
        destinations: vec![
            dest("198.18.0.11", 8080, TUN, 1),
            dest("198.18.0.12", 8080, TUN, 1),
        ],
    });
    t
}

/// Draining: table c without backend .12 of the HTTP service.
fn table_drain() -> Desired {
    let mut t = table_c();
    t.services[0].destinations.truncate(1);
    t
}

/// Service draining: the drain table without the services of VIP 203.0.113.20 (443, 8080).
fn table_drain_svc() -> Desired {
    let mut t = table_drain();
    t.services
        .retain(|s| s.key.vip() != Some(v4("203.0.113.20")));
    t
}

/// The lines `ipvsadm -Sn` prints for a table (thresholds are not part of its output).
fn ipvsadm_lines(d: &Desired) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for s in &d.services {
        let svc = match &s.key {
            ServiceKey::Addr {
                addr,
                port,
                protocol,
            } => {
                let flag = match protocol {
                    Protocol::Tcp => "-t",
                    Protocol::Udp => "-u",
                    Protocol::Sctp => "--sctp-service",
                };
                match addr {
                    IpAddr::V4(a) => format!("{flag} {a}:{port}"),
                    IpAddr::V6(a) => format!("{flag} [{a}]:{port}"),
                }
            }
            ServiceKey::Fwmark { mark, .. } => format!("-f {mark}"),
        };
        let mut line = format!("-A {svc} -s {}", s.scheduler);
        if s.persistence_timeout_s > 0 {
            line.push_str(&format!(" -p {}", s.persistence_timeout_s));
        }
        let mut flags = Vec::new();
        if s.flags.fallback {
            flags.push("mh-fallback");
        }
        if s.flags.port {
            flags.push("mh-port");
        }
        if !flags.is_empty() {
            line.push_str(&format!(" -b {}", flags.join(",")));
        }
        out.insert(line);
        for d in &s.destinations {
            let (m, tail) = match d.forwarding {
                Forwarding::Tunnel(_) => ("-i", " --tun-type ipip"),
                Forwarding::Masq => ("-m", ""),
                Forwarding::Route => ("-g", ""),
            };
            out.insert(format!(
                "-a {svc} -r {} {m} -w {}{tail}",
                // ipvsadm -S brackets IPv6 destinations: `[2001:db8::1]:80`.
                std::net::SocketAddr::new(d.addr, d.port),
                d.weight
            ));
        }
    }
    out
}

const FOREIGN: &str = "10.96.0.1";

fn shoal_lines(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.contains(FOREIGN) && !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

struct Suite {
    share: Share,
}

impl Suite {
    fn out(&self, name: &str) -> String {
        self.share.out(name)
    }
    fn rc(&self, step: &str) -> String {
        self.out(&format!("{step}.rc")).trim().to_string()
    }
    fn assert_ok(&self, step: &str) {
        assert_eq!(
            self.rc(step),
            "0",
            "step {step} failed: {}\n{}",
            self.out(&format!("{step}.err")),
            self.out(&format!("{step}.out"))
        );
    }
    fn json(&self, step: &str) -> Value {
        self.assert_ok(step);
        serde_json::from_str(&self.out(&format!("{step}.out")))
            .unwrap_or_else(|e| panic!("{step}.out is not JSON: {e}"))
    }
    /// All ops of every pass of an `ipvs-lab apply` step.
    fn ops(&self, step: &str) -> Vec<Vec<Op>> {
        let v = self.json(step);
        v["passes"]
            .as_array()
            .expect("passes")
            .iter()
            .map(|p| serde_json::from_value(p["ops"].clone()).expect("ops"))
            .collect()
    }
}

fn write_json<T: serde::Serialize>(share: &Share, name: &str, v: &T) -> Result<(), String> {
    share.write(name, &serde_json::to_string_pretty(v).expect("json"))
}

/// Boot once for all tests in this file. None = skipped (not in CI, lab unavailable). A
/// failed boot is remembered, so the other tests report it instead of booting again.
fn suite() -> Option<&'static Suite> {
    static SUITE: OnceLock<Result<Option<Suite>, String>> = OnceLock::new();
    match SUITE.get_or_init(run_suite) {
        Ok(s) => s.as_ref(),
        Err(e) => panic!("{e}"),
    }
}

fn run_suite() -> Result<Option<Suite>, String> {
    if shoal_vmlab::available(&[]).is_none() {
        return Ok(None);
    }
    let share = Share::new(env!("CARGO_TARGET_TMPDIR"), "suite")?;
    share.add_bin(&example_binary("ipvs-lab"), "ipvs-lab")?;
    write_json(&share, "t_a.json", &table_a())?;
    write_json(&share, "t_c.json", &table_c())?;
    write_json(&share, "t_drain.json", &table_drain())?;
    write_json(&share, "t_drain_svc.json", &table_drain_svc())?;
    write_json(&share, "t_empty.json", &Desired::default())?;
    // Generous: a guest starved by a busy host took 300 s to reach its first step.
    share.boot(&Boot::new("suite.sh", 900))?;
    Ok(Some(Suite { share }))
}

#[test]
fn a_programs_a_table_and_ipvsadm_agrees() {
    let Some(s) = suite() else { return };
    s.assert_ok("a_apply");
    let shown = shoal_lines(&s.out("a_ipvsadm.txt"));
    assert_eq!(
        shown,
        ipvsadm_lines(&table_a()),
        "ipvsadm -Sn differs from the table"
    );
    let vips = s.out("a_shoal0.txt");
    assert!(
        vips.contains("203.0.113.10/32") && vips.contains("203.0.113.20/32"),
        "{vips}"
    );
    let sysctl = s.out("a_sysctl.txt");
    assert!(
        sysctl.contains("sloppy_tcp=1") && sysctl.contains("expire_nodest_conn=1"),
        "{sysctl}"
    );
    // A second pass over an unchanged kernel sends nothing.
    assert_eq!(s.ops("a_again"), vec![Vec::<Op>::new()]);
}

#[test]
fn b_tunnel_traffic_reaches_both_backends_and_bypasses_the_lb() {
    let Some(s) = suite() else { return };
    let fetched = s.out("b_fetch.txt");
    let answers: Vec<&str> = fetched.lines().collect();
    assert_eq!(answers.len(), 12, "{fetched}");
    assert!(
        !answers.contains(&"FAIL"),
        "some fetches failed:\n{fetched}"
    );
    assert!(
        answers.contains(&"backend-b1") && answers.contains(&"backend-b2"),
        "{fetched}"
    );
    let actual: Actual = serde_json::from_value(s.json("b_dump")).expect("dump");
    let http = actual
        .services
        .iter()
        .find(|o| o.service.key == tcp("203.0.113.10", 80))
        .expect("HTTP service in dump");
    assert!(
        http.stats.connections >= 12,
        "{:?}\n{}",
        http.stats,
        s.out("b_stats.txt")
    );
    assert!(http.stats.packets_in > 0, "{:?}", http.stats);
    assert_eq!(
        http.stats.packets_out, 0,
        "replies went through the LB: {:?}",
        http.stats
    );
}

#[test]
fn c_changes_are_applied_with_minimal_ops() {
    let Some(s) = suite() else { return };
    let passes = s.ops("c_apply");
    assert_eq!(passes.len(), 1);
    let got: BTreeSet<String> = passes[0].iter().map(|o| o.to_string()).collect();
    let a = table_a();
    let c = table_c();
    let want: BTreeSet<String> = [
        Op::UpdateDest(
            a.services[0].key.clone(),
            c.services[0].destinations[1].clone(),
        ),
        Op::DelDest(a.services[1].key.clone(), v4("198.18.0.12"), 53),
        Op::AddService(Service {
            destinations: vec![],
            ..c.services[4].clone()
        }),
        Op::AddDest(
            c.services[4].key.clone(),
            c.services[4].destinations[0].clone(),
        ),
        Op::AddDest(
            c.services[4].key.clone(),
            c.services[4].destinations[1].clone(),
        ),
    ]
    .iter()
    .map(|o| o.to_string())
    .collect();
    assert_eq!(got, want);
    assert_eq!(shoal_lines(&s.out("c_ipvsadm.txt")), ipvsadm_lines(&c));
    let report = s.json("c_apply");
    assert_eq!(report["messages_sent"], 5, "one netlink message per op");
}

#[test]
fn d_drift_is_repaired_at_the_next_pass() {
    let Some(s) = suite() else { return };
    let passes = s.ops("d_apply");
    let c = table_c();
    let restored = &c.services[4];
    let mut want = vec![Op::AddService(Service {
        destinations: vec![],
        ..restored.clone()
    })];
    want.extend(
        restored
            .destinations
            .iter()
            .map(|d| Op::AddDest(restored.key.clone(), d.clone())),
    );
    assert_eq!(passes, vec![want]);
    assert_eq!(shoal_lines(&s.out("d_ipvsadm.txt")), ipvsadm_lines(&c));
}

#[test]
fn e_foreign_services_are_never_touched() {
    let Some(s) = suite() else { return };
    let before = s.out("foreign_before.txt");
    assert!(before.contains("-A -t 10.96.0.1:80 -s rr"), "{before}");
    assert_eq!(s.out("foreign_after.txt"), before);
    for step in [
        "a_apply",
        "c_apply",
        "d_apply",
        "drain_apply",
        "drain_svc_apply",
        "drain_svc_back",
        "e_apply",
    ] {
        for pass in s.ops(step) {
            for op in pass {
                assert!(
                    !op.to_string().contains(FOREIGN),
                    "{step} touched a foreign service: {op}"
                );
            }
        }
    }
    // Emptying Shoal's table leaves exactly the foreign service and no VIPs.
    assert_eq!(shoal_lines(&s.out("e_ipvsadm.txt")), BTreeSet::new());
    assert_eq!(s.out("e_shoal0.txt").trim(), "");
}

/// Audit finding A on a real kernel: the destinations of removed services go to weight 0, and
/// the services and their VIP are deleted only after the drain (they were deleted at once).
#[test]
fn removed_services_drain_before_deletion() {
    let Some(s) = suite() else { return };
    let v = s.json("drain_svc_apply");
    let passes = v["passes"].as_array().expect("passes");
    let vip = v4("203.0.113.20");
    let before = table_drain();
    let removed: Vec<&Service> = before
        .services
        .iter()
        .filter(|s| s.key.vip() == Some(vip))
        .collect();
    let zeroed: Vec<Op> = removed
        .iter()
        .flat_map(|s| {
            s.destinations.iter().map(|d| {
                let mut d = d.clone();
                d.weight = 0;
                Op::UpdateDest(s.key.clone(), d)
            })
        })
        .collect();
    assert_eq!(zeroed.len(), 4);
    let first: Vec<Op> = serde_json::from_value(passes[0]["ops"].clone()).expect("ops");
    assert_eq!(
        first, zeroed,
        "weight 0 first, the services and their VIP kept"
    );
    let deleted = passes
        .iter()
        .find(|p| p["ops"].as_array().map(|o| !o.is_empty()).unwrap_or(false) && p != &&passes[0])
        .expect("a later pass deletes the services");
    let ops: Vec<Op> = serde_json::from_value(deleted["ops"].clone()).expect("ops");
    assert_eq!(
        ops,
        vec![
            Op::DelService(tcp("203.0.113.20", 443)),
            Op::DelService(tcp("203.0.113.20", 8080)),
            Op::DelVip(vip)
        ]
    );
    let at_ms = deleted["at_ms"].as_u64().expect("at_ms");
    assert!(
        at_ms >= 1500,
        "deleted after {at_ms} ms, before the 1500 ms drain"
    );
    assert_eq!(
        shoal_lines(&s.out("drain_svc_ipvsadm.txt")),
        ipvsadm_lines(&table_drain_svc())
    );
    assert_eq!(s.out("drain_svc_back.rc").trim(), "0");
}

#[test]
fn removed_backend_drains_before_deletion() {
    let Some(s) = suite() else { return };
    let v = s.json("drain_apply");
    let passes = v["passes"].as_array().expect("passes");
    let key = tcp("203.0.113.10", 80);
    let first: Vec<Op> = serde_json::from_value(passes[0]["ops"].clone()).expect("ops");
    let mut zero = table_c().services[0].destinations[1].clone();
    zero.weight = 0;
    assert_eq!(first, vec![Op::UpdateDest(key.clone(), zero)]);
    let deleted = passes
        .iter()
        .find(|p| p["ops"].as_array().map(|o| !o.is_empty()).unwrap_or(false) && p != &&passes[0])
        .expect("a later pass deletes the backend");
    let ops: Vec<Op> = serde_json::from_value(deleted["ops"].clone()).expect("ops");
    assert_eq!(ops, vec![Op::DelDest(key, v4("198.18.0.12"), 80)]);
    let at_ms = deleted["at_ms"].as_u64().expect("at_ms");
    assert!(
        at_ms >= 1500,
        "deleted after {at_ms} ms, before the 1500 ms drain"
    );
    assert_eq!(
        shoal_lines(&s.out("drain_ipvsadm.txt")),
        ipvsadm_lines(&table_drain())
    );
}

/// (g): a long-running reconciler plans against the kernel's state kept in memory; drift made
/// with ipvsadm behind its back is invisible to those passes and repaired by the periodic
/// full read (the drift check), with exactly the ops that undo it.
#[test]
fn g_drift_is_repaired_by_the_drift_check() {
    let Some(s) = suite() else { return };
    assert_eq!(
        s.rc("g_watch"),
        "0",
        "watch failed: {}\n{}",
        s.out("g_watch.err"),
        s.out("g_watch.out")
    );
    let lines: Vec<Value> = s
        .out("g_watch.out")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let ready = lines
        .iter()
        .position(|l| l.get("ready").is_some())
        .expect("the watch loaded the table");
    let passes = &lines[ready + 1..];
    assert!(
        passes.iter().all(|p| p.get("error").is_none()),
        "a pass failed: {passes:?}"
    );
    let mut repaired: Vec<Op> = Vec::new();
    for p in passes {
        let ops: Vec<Op> = serde_json::from_value(p["ops"].clone()).expect("ops");
        if ops.is_empty() {
            continue;
        }
        assert_eq!(
            p["full_read"], true,
            "a pass on the kept view sent {ops:?}: the desired table never changed"
        );
        repaired.extend(ops);
    }
    let drained = table_drain();
    let http = &drained.services[0];
    let restored = drained
        .services
        .iter()
        .find(|x| x.key == tcp("203.0.113.20", 8080))
        .expect("8080 in the table");
    let mut want = vec![
        Op::UpdateDest(http.key.clone(), http.destinations[0].clone()),
        Op::AddService(Service {
            destinations: vec![],
            ..restored.clone()
        }),
        Op::DelService(tcp("203.0.113.10", 9999)),
    ];
    want.extend(
        restored
            .destinations
            .iter()
            .map(|d| Op::AddDest(restored.key.clone(), d.clone())),
    );
    let key = |o: &Op| o.to_string();
    repaired.sort_by_key(key);
    want.sort_by_key(key);
    assert_eq!(repaired, want, "drift check repairs; passes: {passes:?}");
    assert_ne!(
        s.out("g_drifted.txt"),
        s.out("g_before.txt"),
        "no drift was made"
    );
    assert_eq!(s.out("g_ipvsadm.txt"), s.out("g_before.txt"));
    assert_eq!(
        shoal_lines(&s.out("g_ipvsadm.txt")),
        ipvsadm_lines(&drained)
    );
}

/// The passes of an `ipvs-lab watch ... --then` step after it switched to the second table.
fn passes_after_switch(s: &Suite, name: &str) -> Vec<(bool, Vec<Op>)> {
    let step = format!("{name}_watch");
    assert_eq!(
        s.rc(&step),
        "0",
        "watch failed: {}\n{}",
        s.out(&format!("{step}.err")),
        s.out(&format!("{step}.out"))
    );
    let lines: Vec<Value> = s
        .out(&format!("{step}.out"))
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert!(
        lines.iter().all(|p| p.get("error").is_none()),
        "a pass failed: {lines:?}"
    );
    lines
        .iter()
        .filter(|p| p["second_table"] == true)
        .map(|p| {
            let ops: Vec<Op> = serde_json::from_value(p["ops"].clone()).expect("ops");
            (p["full_read"] == true, ops)
        })
        .collect()
}

#[test]
fn h_a_late_foreign_service_is_flushed_only_when_the_table_is_declared_shoals() {
    let Some(s) = suite() else { return };
    let a = table_a();
    // Shared (default): the list before the flush differs from the view, so the pass reads
    // everything and deletes Shoal's services one by one; the late service stays.
    let passes = passes_after_switch(s, "h_shared");
    let (full_read, ops) = passes.first().expect("a pass on the empty table");
    assert!(
        *full_read,
        "the list must have sent the pass to a full read: {ops:?}"
    );
    assert!(!ops.contains(&Op::Flush), "{ops:?}");
    let deleted: BTreeSet<String> = ops
        .iter()
        .filter(|o| matches!(o, Op::DelService(_)))
        .map(|o| o.to_string())
        .collect();
    let want: BTreeSet<String> = a
        .services
        .iter()
        .map(|x| Op::DelService(x.key.clone()).to_string())
        .collect();
    assert_eq!(deleted, want);
    assert!(
        ops.iter().all(|o| !o.to_string().contains("10.96.0.2")),
        "{ops:?}"
    );
    assert!(
        passes[1..].iter().all(|(_, ops)| ops.is_empty()),
        "{passes:?}"
    );
    let left = s.out("h_shared_ipvsadm.txt");
    let services: Vec<&str> = left.lines().filter(|l| l.starts_with("-A")).collect();
    assert_eq!(services, vec!["-A -t 10.96.0.2:80 -s rr"], "{left}");
    // Declared exclusive: one bare flush on the kept view, no read; the late service goes too.
    let passes = passes_after_switch(s, "h_exclusive");
    let (full_read, ops) = passes.first().expect("a pass on the empty table");
    assert!(!*full_read, "{ops:?}");
    assert_eq!(
        ops.iter().filter(|o| **o == Op::Flush).count(),
        1,
        "{ops:?}"
    );
    assert!(
        ops.iter().all(|o| matches!(o, Op::Flush | Op::DelVip(_))),
        "{ops:?}"
    );
    let left = s.out("h_exclusive_ipvsadm.txt");
    assert!(!left.lines().any(|l| l.starts_with("-A")), "{left}");
}

/// (i): a change arriving during a drift check (a whole read: 2,000 services here, seconds at
/// 10,000) waits for one service's read, not the table's: the check gives way, the change
/// goes in on the kept view with one op and no read, and the check taken up again finds the
/// kernel equal to the view. Without the give-way the same change waits for the rest of the
/// read (timed beside it).
#[test]
fn i_a_drift_check_gives_way_to_a_change() {
    let Some(s) = suite() else { return };
    assert_eq!(
        s.rc("i_give_way"),
        "0",
        "give-way failed: {}",
        s.out("i_give_way.err")
    );
    let r = s.json("i_give_way");
    let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    assert_eq!(r["check_gave_way"], true, "{r}");
    assert_eq!(r["check_ops"], 0, "{r}");
    assert_eq!(r["change_full_read"], false, "{r}");
    assert_eq!(r["change_ops"], 1, "{r}");
    assert_eq!(r["check_again_full_read"], true, "{r}");
    assert_eq!(r["check_again_ops"], 0, "{r}");
    assert_eq!(r["view_matches_kernel"], true, "{r}");
    assert_eq!(
        (
            r["blocked_full_read"].clone(),
            r["blocked_gave_way"].clone()
        ),
        (Value::Bool(true), Value::Bool(false)),
        "{r}"
    );
    // The check ends a quarter of the way through the read; it must give way well before the
    // read would have ended (half the remaining time, generous for a starved guest).
    assert!(
        f("stop_to_return_ms") < (f("read_ms") - f("raise_after_ms")) / 2.0,
        "{r}"
    );
    eprintln!(
        "give-way: read {:.0} ms; change during the check applied {:.1} ms after it arrived \
         (the check returned in {:.1} ms), {:.0} ms behind a check that cannot give way",
        f("read_ms"),
        f("change_latency_ms"),
        f("stop_to_return_ms"),
        f("blocked_change_latency_ms"),
    );
}

#[test]
fn backend_init_prepares_once_and_is_idempotent() {
    let Some(s) = suite() else { return };
    s.assert_ok("init_b1");
    s.assert_ok("init_b1_again");
    let first = s.out("init_b1.out");
    assert!(
        first.contains("tunl0 up") && first.contains("203.0.113.10"),
        "{first}"
    );
    assert_eq!(
        s.out("init_b1_again.out").trim(),
        "",
        "second run changed something"
    );
    let sysctl = s.out("b1_sysctl.txt");
    for want in ["rp_filter = 0", "arp_ignore = 1", "arp_announce = 2"] {
        assert!(sysctl.contains(want), "{sysctl}");
    }
    assert!(s.out("b1_tunl0.txt").contains("203.0.113.20/32"));
}

const NODE_RULES: &str = r#"
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

/// The `shoal` binary: $SHOAL_BIN, else built from the node crate. None = it does not build
/// (yet); that is a skip outside CI and a failure in CI.
fn shoal_binary() -> Option<PathBuf> {
    match shoal_vmlab::shoal(Profile::Debug) {
        Ok(bin) => Some(bin),
        Err(e) => shoal_vmlab::skip(&format!("the shoal binary did not build: {e}")),
    }
}

/// The ipvsadm lines for what a node reports in /v1/dataplane.
fn lines_of_observed(v: &Value) -> BTreeSet<String> {
    let services: Vec<ObservedService> =
        serde_json::from_value(v["services"].clone()).expect("services in /v1/dataplane");
    ipvsadm_lines(&Desired {
        services: services
            .into_iter()
            .map(|o| Service {
                destinations: o.destinations.into_iter().map(|d| d.destination).collect(),
                ..o.service
            })
            .collect(),
    })
}

#[test]
fn f_shoal_node_programs_ipvs_and_reports_it() {
    if shoal_vmlab::available(&[]).is_none() {
        return;
    }
    let Some(shoal) = shoal_binary() else { return };
    let share = Share::new(env!("CARGO_TARGET_TMPDIR"), "node").expect("share dir");
    share.add_bin(&shoal, "shoal").expect("copy shoal");
    share.write("rules.toml", NODE_RULES).expect("rules");
    share
        .write("rules-one.toml", &node_rules_one())
        .expect("rules");
    let booted = share.boot(&Boot::new("node.sh", 600));
    let out = |n: &str| share.out(n);
    let context = || {
        format!(
            "logs in {}\nshoal log:\n{}",
            share.dir.display(),
            out("f_shoal.log")
        )
    };
    assert!(booted.is_ok(), "{}; {}", booted.unwrap_err(), context());
    assert_eq!(
        out("f_matched").trim(),
        "1",
        "never matched its table; {}",
        context()
    );
    let v: Value = serde_json::from_str(&out("f_dataplane.json")).expect("dataplane JSON");
    assert_eq!(v["kind"], "ipvs");
    assert_eq!(v["matches_table"], true);
    let shown = shoal_lines(&out("f_ipvsadm.txt"));
    assert!(!shown.is_empty(), "ipvsadm shows nothing");
    assert_eq!(
        shown,
        lines_of_observed(&v),
        "/v1/dataplane differs from ipvsadm"
    );
    assert!(
        shown.contains("-A -t 203.0.113.10:80 -s mh -b mh-fallback,mh-port"),
        "{shown:?}"
    );
    let fetched = out("f_fetch.txt");
    assert!(
        !fetched.contains("FAIL") && fetched.lines().count() == 6,
        "{fetched}"
    );
    assert_eq!(
        out("f_repaired").trim(),
        "1",
        "drift not repaired; {}",
        context()
    );
    assert_eq!(shoal_lines(&out("f_ipvsadm_after_drift.txt")), shown);

    // (h) Probes on real IPVS: the VIP interface deleted, a /24 added by hand, a scheduler
    // the kernel lacks.
    assert_eq!(
        out("h_relinked").trim(),
        "1",
        "VIPs not back after shoal0 was deleted; {}",
        context()
    );
    assert!(
        out("h_addrs.txt").contains("203.0.113.10/32"),
        "{}",
        out("h_addrs.txt")
    );
    assert_eq!(
        out("h_hand_address_left").trim(),
        "0",
        "the /24 added by hand stayed; {}",
        context()
    );
    assert_eq!(
        out("h_sloppy_tcp").trim(),
        "1",
        "sloppy_tcp not set again; {}",
        context()
    );
    let node: Value = serde_json::from_str(&out("h_node.json")).expect("node JSON");
    let refused = node["reconcile"]["refused"].to_string();
    assert!(
        refused.contains("tcp 203.0.113.11:80") && refused.contains("ip_vs_sed"),
        "{node}; {}",
        context()
    );
    assert_eq!(node["reconcile"]["last_ok"], true, "{node}");
    assert_eq!(out("h_readyz_rc").trim(), "0", "not ready: {}", context());
    assert_eq!(
        shoal_lines(&out("h_ipvsadm_refused.txt")),
        shown,
        "the others stay"
    );
    assert_eq!(out("h_back").trim(), "1", "{}", context());

    // (i) IPv6 disabled on shoal0 with an IPv6 service in the table: that service alone is set
    // aside, naming the sysctl; with IPv6 back, a change to it programs it.
    let node: Value = serde_json::from_str(&out("i_node.json")).expect("node JSON");
    let refused = node["reconcile"]["refused"].to_string();
    assert!(
        refused.contains("tcp [2001:db8::10]:80") && refused.contains("disable_ipv6"),
        "{node}; {}",
        context()
    );
    assert_eq!(node["reconcile"]["last_ok"], true, "{node}");
    assert_eq!(out("i_readyz_rc").trim(), "0", "not ready: {}", context());
    assert_eq!(
        shoal_lines(&out("i_ipvsadm_refused.txt")),
        shown,
        "the IPv4 service stays, the IPv6 one is not left in the kernel"
    );
    assert_eq!(out("i_six_programmed").trim(), "1", "{}", context());
    assert!(
        out("i_ipvsadm_six.txt").contains("[2001:db8::10]:80")
            && out("i_addrs.txt").contains("2001:db8::10/128"),
        "{}\n{}",
        out("i_ipvsadm_six.txt"),
        out("i_addrs.txt")
    );
    assert_eq!(out("i_back").trim(), "1", "{}", context());

    // The drain of the removed backend survived the restart: same deadline (in the wall clock)
    // before and after, about 5 s less left; the kernel still holds it at weight 0.
    assert_eq!(out("f_drain_seen").trim(), "1", "no drain; {}", context());
    assert_eq!(
        out("f_drain_resumed").trim(),
        "1",
        "no drain after the restart; {}",
        context()
    );
    let drain = |name: &str| -> Value {
        let v: Value = serde_json::from_str(&out(name)).expect("dataplane JSON");
        let d = v["draining"].as_array().expect("draining").clone();
        assert_eq!(d.len(), 1, "{name}: {d:?}");
        d[0].clone()
    };
    let (before, after) = (drain("f_drain_before.json"), drain("f_drain_after.json"));
    eprintln!("drain before the restart {before}; after {after}");
    assert_eq!(before["destination"], "198.18.0.12:80");
    assert_eq!(after["destination"], before["destination"]);
    let ms = |v: &Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
    let moved = ms(&after, "deadline_unix_ms").abs_diff(ms(&before, "deadline_unix_ms"));
    assert!(
        moved < 2_000,
        "the deadline moved by {moved} ms over the restart: {before} -> {after}; {}",
        context()
    );
    assert!(
        ms(&after, "remaining_ms") + 3_000 < ms(&before, "remaining_ms"),
        "the drain started over: {before} -> {after}"
    );
    let draining = shoal_lines(&out("f_ipvsadm_draining.txt"));
    assert!(
        draining
            .iter()
            .any(|l| l.contains("-r 198.18.0.12:80") && l.contains(" -w 0")),
        "{draining:?}"
    );

    // (g) Table changes while 4,000 foreign services make every drift check a read of seconds:
    // each change went in, and at least one found a check in progress that gave way to it
    // (the node reads again a second after each read: about two changes in three land in one,
    // so all eight missing is a chance of about 1 in 4,000).
    let changes: Vec<(u64, bool)> = out("g_latency_ms")
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let ms = f.get(1).and_then(|v| v.parse().ok()).expect("latency");
            (ms, f.get(2) == Some(&"1"))
        })
        .collect();
    assert_eq!(changes.len(), 8, "{changes:?}; {}", context());
    assert!(
        changes.iter().all(|(_, ok)| *ok),
        "a change never reached the kernel: {changes:?}; {}",
        context()
    );
    let reconciles = out("g_reconciles.txt");
    let gave_way: u64 = reconciles
        .lines()
        .find(|l| l.contains("result=\"gave_way\""))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        gave_way >= 1,
        "no drift check gave way to a change: {reconciles}; {}",
        context()
    );
    eprintln!(
        "changes during drift checks: applied after {:?} ms ({:?} ms with no foreign service); \
         {gave_way} checks gave way; a whole `ipvsadm -Ln` of the table took {} ms",
        changes.iter().map(|(ms, _)| ms).collect::<Vec<_>>(),
        out("g_idle_latency_ms")
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .collect::<Vec<_>>(),
        out("g_read_ms").trim()
    );
}

/// `NODE_RULES` without its second backend (the one that drains).
fn node_rules_one() -> String {
    let cut = NODE_RULES
        .rfind("[[service.backend]]")
        .expect("two backends");
    NODE_RULES[..cut].to_string()
}

fn percentile(mut xs: Vec<f64>, p: f64) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let idx = ((xs.len() as f64 - 1.0) * p).round() as usize;
    xs.get(idx).copied().unwrap_or(f64::NAN)
}

/// Median and p99 of a JSON column over the runs; a column of arrays is pooled.
fn column(runs: &[Value], k: &str) -> Vec<f64> {
    runs.iter()
        .flat_map(|r| match &r[k] {
            Value::Array(xs) => xs.iter().filter_map(Value::as_f64).collect::<Vec<_>>(),
            v => vec![v.as_f64().unwrap_or(f64::NAN)],
        })
        .collect()
}

fn summary(runs: &[Value], keys: &[&str]) -> String {
    keys.iter()
        .filter(|k| runs.iter().any(|r| !r[**k].is_null()))
        .map(|k| {
            let xs = column(runs, k);
            format!(
                "{k}: median {:.1} p99 {:.1} (n={})",
                percentile(xs.clone(), 0.5),
                percentile(xs.clone(), 0.99),
                xs.len()
            )
        })
        .collect::<Vec<_>>()
        .join("\n  ")
}

const BENCH_KEYS: [&str; 15] = [
    "shoal_load_ms",
    "ipvsadm_load_ms",
    "shoal_changes_ms",
    "shoal_change_ms",
    "shoal_drift_check_ms",
    "shoal_remove_ms",
    "shoal_remove_exclusive_ms",
    "ipvsadm_clear_ms",
    "ipvsadm_clear_empty_ms",
    "ipvsadm_remove_ms",
    "list_only_ms",
    "list_keys_ms",
    "list_full_ms",
    "vip_delete_ms",
    "shoal_reload_ms",
];

/// The benchmark of docs/benchmarks.md (dataplane section). Slow under TCG, so opt-in:
/// `SHOAL_BENCH_SERVICES=10000 SHOAL_BENCH_REPS=3 cargo test -p shoal-dataplane --test vm_lab -- --ignored --nocapture bench`
/// With `SHOAL_BENCH_BEFORE=/path/to/older/ipvs-lab` (and `SHOAL_BENCH_BEFORE_REPS`) that build
/// runs first in the same boot, for a before/after table.
#[test]
#[ignore]
fn bench_program_vs_ipvsadm_restore() {
    if shoal_vmlab::available(&[]).is_none() {
        return;
    }
    let n: usize = std::env::var("SHOAL_BENCH_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let m: usize = std::env::var("SHOAL_BENCH_DESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let sched = std::env::var("SHOAL_BENCH_SCHEDULER").unwrap_or_else(|_| "mh".into());
    let reps: usize = std::env::var("SHOAL_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let before_reps: usize = std::env::var("SHOAL_BENCH_BEFORE_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let settle_s: u64 = std::env::var("SHOAL_BENCH_SETTLE_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(130);
    let share = Share::new(env!("CARGO_TARGET_TMPDIR"), "bench").expect("share dir");
    // Timings are of an optimized build, as a node would run.
    let lab = shoal_vmlab::build(
        Profile::Release,
        &[Target::example("shoal-dataplane", "ipvs-lab")],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    share.add_bin(&lab[0], "ipvs-lab").expect("copy ipvs-lab");
    if let Ok(before) = std::env::var("SHOAL_BENCH_BEFORE") {
        share
            .add_bin(std::path::Path::new(&before), "ipvs-lab-before")
            .expect("copy the before build");
    }
    share
        .write(
            "bench.env",
            &format!(
                "N={n}\nM={m}\nREPS={reps}\nSCHED={sched}\nBEFORE_REPS={before_reps}\nSETTLE_S={settle_s}\n"
            ),
        )
        .expect("env");
    let mut b = Boot::new("bench.sh", 3000);
    b.memory_mb = 2048;
    share.boot(&b).unwrap_or_else(|e| panic!("{e}"));
    let out = |f: &str| share.out(f);
    // A step's JSON output, once its exit code says it ran.
    let step_json = |name: &str| -> Value {
        let rc = out(&format!("{name}.rc"));
        assert_eq!(
            rc.trim(),
            "0",
            "{name} failed: {}",
            out(&format!("{name}.err"))
        );
        serde_json::from_str(&out(&format!("{name}.json"))).expect("step JSON")
    };
    let v = step_json("bench");
    let runs = v["runs"].as_array().expect("runs").clone();
    for r in &runs {
        assert_eq!(r["shoal_loaded_services"], n);
        assert_eq!(r["ipvsadm_loaded_services"], n);
        assert_eq!(r["shoal_left_services"], 0);
        assert_eq!(
            r["shoal_change_ops"], 1,
            "a one-destination change must be one op"
        );
        assert_eq!(r["shoal_change_messages"], 1);
        assert_eq!(r["shoal_drift_check_ops"], 0, "the kept view was exact");
        if !r["shoal_remove_exclusive_ms"].is_null() {
            assert_eq!(r["shoal_left_services_exclusive"], 0);
        }
    }
    let ratio: Vec<f64> = column(&runs, "shoal_load_ms")
        .iter()
        .zip(column(&runs, "ipvsadm_load_ms"))
        .map(|(s, i)| s / i)
        .collect();
    // Removal against `ipvsadm -C` in the same rep, per rep.
    let per_rep = |k: &str| -> Vec<String> {
        column(&runs, k)
            .iter()
            .zip(column(&runs, "ipvsadm_clear_ms"))
            .map(|(s, c)| format!("{:.2}", s / c))
            .collect()
    };
    println!(
        "bench {n} services x {m} destinations, {reps} reps:\n  {}\n  load ratio shoal/ipvsadm: median {:.2} p99 {:.2}\n  removal / ipvsadm -C per rep: shared {:?}, exclusive {:?}\n  raw: {}",
        summary(&runs, &BENCH_KEYS),
        percentile(ratio.clone(), 0.5),
        percentile(ratio, 0.99),
        per_rep("shoal_remove_ms"),
        per_rep("shoal_remove_exclusive_ms"),
        share.out_path("bench.json").display()
    );
    let g = step_json("give-way");
    assert_eq!(g["check_gave_way"], true, "{g}");
    assert_eq!(g["change_ops"], 1, "{g}");
    assert_eq!(g["view_matches_kernel"], true, "{g}");
    println!("a change during a drift check: {g}");
    if std::env::var("SHOAL_BENCH_BEFORE").is_ok() {
        let b = step_json("bench-before");
        let runs = b["runs"].as_array().expect("runs").clone();
        println!(
            "before (same boot), {} reps:\n  {}\n  raw: {}",
            runs.len(),
            summary(&runs, &BENCH_KEYS),
            share.out_path("bench-before.json").display()
        );
    }
}
