//! BGP mode end to end in network namespaces with real BIRD and real kernel routing: a router
//! namespace runs its own BIRD (multipath, BFD), three replicas each run shoal and its BIRD, and
//! the router's FIB (`ip route`, the independent reader) is checked after every event.
//! The memory dataplane is enough here (IPVS end to end is the VM lab's job).

mod announce_lab;

use announce_lab::*;
use nix::sys::signal::Signal;
use serde_json::Value;
use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

const VIP4: &str = "203.0.113.10";
const VIP6: &str = "2001:db8:113::10";
const CHECKED: &str = "203.0.113.20";
const CHURN: &str = "203.0.113.30";
const HEALTH_PORT: u16 = 18081;

fn rules(churn_port: Option<u16>) -> String {
    let mut r = format!(
        "[[service]]\nname='web'\nvip='{VIP4}'\nport=80\n[[service.backend]]\naddress='198.18.1.50'\n\n\
         [[service]]\nname='web6'\nvip='{VIP6}'\nport=80\n[[service.backend]]\naddress='2001:db8:1::50'\n\n\
         [[service]]\nname='checked'\nvip='{CHECKED}'\nport={HEALTH_PORT}\n[[service.backend]]\naddress='{ROUTER4}'\n\
         [service.health]\nkind='tcp'\ninterval_ms=200\ntimeout_ms=150\nrise=2\nfall=2\n"
    );
    if let Some(p) = churn_port {
        r.push_str(&format!(
            "\n[[service]]\nname='churn'\nvip='{CHURN}'\nport={p}\n[[service.backend]]\naddress='198.18.1.60'\n"
        ));
    }
    r
}

fn all_nodes() -> BTreeSet<String> {
    (0..3).map(node4).collect()
}

/// A TCP listener in the router namespace: the health-checked service's backend.
fn backend_up(lab: &Lab) -> std::process::Child {
    let script = format!(
        "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.bind(('{ROUTER4}',{HEALTH_PORT}))\ns.listen(64)\nwhile True:\n  c,_=s.accept()\n  c.close()\n"
    );
    Command::new("ip")
        .args(["netns", "exec", &lab.router_ns, "python3", "-c", &script])
        .spawn()
        .expect("python3 listener")
}

fn wait_hops(lab: &Lab, vip: &str, want: &BTreeSet<String>, limit: Duration) -> Duration {
    let start = Instant::now();
    lab.wait_for(limit, &format!("{vip} next hops {want:?}"), || {
        (lab.nexthops(vip) == *want).then_some(())
    });
    start.elapsed()
}

fn wait_hop_count(lab: &Lab, vip: &str, n: usize, limit: Duration) {
    lab.wait_for(limit, &format!("{vip} with {n} next hops"), || {
        (lab.nexthops(vip).len() == n).then_some(())
    });
}

/// Node `i`'s own announce report as its /v1/cluster shows it.
fn own_report(lab: &Lab, i: usize) -> Option<Value> {
    let c = lab.cluster(i)?;
    let id = format!("n{}", i + 1);
    c["members"]
        .as_array()?
        .iter()
        .find(|m| m["id"] == id.as_str())
        .cloned()
        .map(|m| serde_json::json!({"member": m, "head": c["head"]}))
}

#[test]
fn bgp_announces_with_ecmp_and_withdraws_on_every_kind_of_exit() {
    if !have_root() {
        eprintln!("SKIPPED: needs root for network namespaces (CI runs as root)");
        return;
    }
    let mut lab = Lab::new(3, &rules(None), false);
    lab.start_router_bird();
    let mut listener = backend_up(&lab);
    for i in 0..3 {
        lab.write_config(i, &lab.bgp_config(i));
    }
    lab.set_extra_args(&["--shutdown-drain-s", "2", "--drain-s", "3"]);
    for i in 0..3 {
        lab.spawn(i);
    }

    // 1. Once all are caught up: each VIP with 3 next hops, IPv4 and IPv6.
    wait_hops(&lab, VIP4, &all_nodes(), Duration::from_secs(60));
    wait_hop_count(&lab, VIP6, 3, Duration::from_secs(30));
    wait_hops(&lab, CHECKED, &all_nodes(), Duration::from_secs(30));
    eprintln!("all VIPs have 3 next hops");

    // A route someone else put into Shoal's table is not exported: only Shoal's own
    // (protocol 83) are (an audit saw 198.19.99.0/24 reach the router through BIRD).
    let foreign = "198.19.99.0/24";
    let added = Command::new("ip")
        .args(["-n", &lab.nodes[0].ns, "route", "add", foreign])
        .args(["via", ROUTER4, "table", "120", "proto", "static"])
        .status()
        .unwrap();
    assert!(added.success());
    // BIRD learns a table change at once (netlink) and rescans it every 5 s.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        lab.nexthops(foreign),
        BTreeSet::new(),
        "a foreign route was exported"
    );

    // /v1/cluster shows every member's mode, VIPs and BGP sessions (as BIRD reports them).
    lab.wait_for(
        Duration::from_secs(20),
        "reports with established sessions",
        || {
            let c = lab.cluster(0)?;
            let members = c["members"].as_array()?;
            let ok = members.len() == 3
                && members.iter().all(|m| {
                    let a = &m["announce"];
                    a["mode"] == "bgp"
                        && a["readiness"] == "ready"
                        && a["announced"].as_array().is_some_and(|v| v.len() == 3)
                        && a["bgp"].as_array().is_some_and(|s| {
                            s.len() == 2 && s.iter().all(|x| x["bgp_state"] == "Established")
                        })
                });
            ok.then_some(())
        },
    );
    let metrics = lab.http(0, "/metrics").unwrap_or_default();
    assert!(metrics.contains("shoal_announce_vips 3"), "{metrics}");
    assert!(
        metrics.contains("shoal_bgp_session_up{peer=\"peer1\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("shoal_bgp_session_up{peer=\"peer2\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("shoal_announce_changes_total"),
        "{metrics}"
    );
    // /v1/node answers for this node's announcements too, each session naming its peer.
    let node: Value =
        serde_json::from_str(&lab.http(0, "/v1/node").unwrap_or_default()).unwrap_or(Value::Null);
    let sessions = node["announce"]["bgp"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(sessions.len(), 2, "{node}");
    assert_eq!(sessions[0]["address"], ROUTER4, "{node}");
    assert_eq!(sessions[0]["asn"], ROUTER_ASN, "{node}");
    assert_eq!(sessions[1]["address"], ROUTER6, "{node}");
    assert_eq!(node["announce"]["readiness"], "ready", "{node}");

    // The same node's config started a second time on its host (another admin and gossip
    // port, no state folder): refused at start, naming the BIRD state folder and the holder.
    // It used to kill n1's BIRD as "left running", empty n1's routes and fight over the socket.
    let birds = lab.procs(0, "bird");
    let second = lab.second_instance(0, &["--listen", &format!("{}:7947", node4(0))]);
    assert!(!second.status.success(), "the second n1 ran");
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(
        said.contains("BIRD state folder") && said.contains(&lab.pid(0).unwrap().to_string()),
        "{said}"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(lab.procs(0, "bird"), birds, "n1's BIRD was touched");
    assert_eq!(lab.nexthops(VIP4), all_nodes(), "n1's routes were touched");

    // 2. All backends of a service down: its VIP is withdrawn from the router, and the reason
    //    is shown; back up: announced again.
    let _ = listener.kill();
    let _ = listener.wait();
    let t = wait_hops(&lab, CHECKED, &BTreeSet::new(), Duration::from_secs(30));
    eprintln!("backend down: {CHECKED} withdrawn after {t:?}");
    assert_eq!(lab.nexthops(VIP4), all_nodes(), "other VIPs stay");
    let r = own_report(&lab, 1).unwrap();
    assert_eq!(
        r["member"]["announce"]["withheld"][CHECKED], "no healthy backend",
        "{r}"
    );
    let mut listener = backend_up(&lab);
    let t = wait_hops(&lab, CHECKED, &all_nodes(), Duration::from_secs(30));
    eprintln!("backend up: {CHECKED} announced again after {t:?}");

    // 3. kill -9 of a replica: the router drops its next hop (BIRD dies with it; BFD).
    let killed_at = Instant::now();
    lab.kill9(0);
    let want: BTreeSet<String> = [node4(1), node4(2)].into_iter().collect();
    let t = wait_hops(&lab, VIP4, &want, Duration::from_secs(10));
    eprintln!(
        "kill -9: router at 2 next hops after {:?}",
        killed_at.elapsed()
    );
    let _ = t;
    wait_hop_count(&lab, VIP6, 2, Duration::from_secs(10));
    // Its BIRD died with it (PR_SET_PDEATHSIG) and so did the watchdog (its stdin closed).
    lab.wait_for(
        Duration::from_secs(10),
        "n1's BIRD and watchdog gone",
        || (lab.procs(0, "bird").is_empty() && lab.procs(0, "shoal").is_empty()).then_some(()),
    );
    // A BIRD left over from an earlier run (same state dir) is killed when shoal starts.
    let state = lab.path().join("bird-n1");
    sh(&[
        "ip",
        "netns",
        "exec",
        &lab.nodes[0].ns,
        "bird",
        "-c",
        &state.join("bird.conf").to_string_lossy(),
        "-s",
        &state.join("bird.ctl").to_string_lossy(),
        "-P",
        &state.join("bird.pid").to_string_lossy(),
    ]);
    let stale = lab.procs(0, "bird");
    assert_eq!(stale.len(), 1, "the stray BIRD runs");

    // 4. Restart it while the table keeps changing: it never appears as a next hop before it
    //    says its applied version is the head. Each sample reads the FIB first, then the node:
    //    a node the router already uses must already be caught up when asked right after.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let stop = stop.clone();
        let path = lab.rules.clone();
        std::thread::spawn(move || {
            let mut port = 2000u16;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                port += 1;
                let tmp = path.with_extension("tmp");
                std::fs::write(&tmp, rules(Some(port))).unwrap();
                std::fs::rename(&tmp, &path).unwrap();
                std::thread::sleep(Duration::from_millis(150));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    // One more seed that never answers keeps n1's mesh catching up for the start-up patience
    // (5 s) although it fetches and applies the head at once and its BGP sessions come up
    // after ~1 s: only the gate keeps it off the router meanwhile.
    lab.spawn_with(0, &["--seeds", "198.18.1.99:7946"]);
    let start = Instant::now();
    let mut samples = 0;
    let mut not_ready_samples = 0;
    loop {
        let hops = lab.nexthops(VIP4);
        // The replicas that follow the head keep their routes while the table changes.
        assert!(
            hops.contains(&node4(1)) && hops.contains(&node4(2)),
            "a caught-up replica withdrew during table changes: {hops:?}"
        );
        let in_fib = hops.contains(&node4(0));
        let report = own_report(&lab, 0);
        samples += 1;
        // The mesh's own facts, not the announce report (which the gate under test writes).
        let caught_up = report.as_ref().is_some_and(|r| {
            r["member"]["role"] != "catching-up" && !r["member"]["applied"].is_null()
        });
        if !caught_up {
            not_ready_samples += 1;
        }
        if in_fib {
            let r = report.expect("a node the router uses answers");
            assert!(
                r["member"]["role"] != "catching-up",
                "n1 is a next hop but its mesh is still catching up: {r}"
            );
            assert!(
                !r["member"]["applied"].is_null(),
                "n1 is a next hop but applied nothing: {r}"
            );
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            lab.dump_logs();
            panic!("restarted n1 never came back");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    churn.join().unwrap();
    eprintln!(
        "restart: n1 back after {:?}; {samples} samples, {not_ready_samples} while catching up",
        start.elapsed()
    );
    assert!(not_ready_samples > 0, "the catch-up was never observed");
    let birds = lab.procs(0, "bird");
    assert_eq!(birds.len(), 1, "one BIRD in n1's namespace: {birds:?}");
    assert!(!birds.contains(&stale[0]), "the stray BIRD was killed");
    wait_hops(&lab, VIP4, &all_nodes(), Duration::from_secs(30));

    // 5. SIGTERM: the next hop is withdrawn before the process exits, and the exit waits for
    //    the drain (2 s here).
    let sent = Instant::now();
    lab.signal(2, Signal::SIGTERM);
    let want: BTreeSet<String> = [node4(0), node4(1)].into_iter().collect();
    let mut withdrawn_at = None;
    let mut exited_at = None;
    while sent.elapsed() < Duration::from_secs(20) && exited_at.is_none() {
        if withdrawn_at.is_none() && lab.nexthops(VIP4) == want {
            withdrawn_at = Some(sent.elapsed());
        }
        if let Some(c) = lab.nodes[2].child.as_mut() {
            if let Ok(Some(_)) = c.try_wait() {
                exited_at = Some(sent.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    lab.nodes[2].child = None;
    let (w, x) = (withdrawn_at.expect("withdrawn"), exited_at.expect("exited"));
    eprintln!("SIGTERM: withdrawn after {w:?}, exited after {x:?}");
    assert!(w < x, "withdrawn {w:?} must come before the exit {x:?}");
    assert!(
        x >= Duration::from_secs(2),
        "the exit must wait for the 2 s drain: {x:?}"
    );
    lab.spawn(2);
    wait_hops(&lab, VIP4, &all_nodes(), Duration::from_secs(60));

    // 6. SIGSTOP: the frozen shoal's watchdog withdraws (its BIRD and BFD stay up), even
    //    after the watchdog itself was killed: shoal starts it again (an audit killed it and
    //    a frozen node then kept its routes).
    let node_pid = lab.pid(1).expect("n2 runs");
    let first = watchdog_of(node_pid).expect("n2's watchdog runs");
    // In a process group of its own: a signal to shoal's group is shoal's to handle.
    assert_eq!(process_group(first), Some(first));
    assert_eq!(
        process_group(node_pid),
        process_group(std::process::id() as i32)
    );
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(first), Signal::SIGKILL);
    lab.wait_for(
        Duration::from_secs(10),
        "n2's watchdog started again",
        || watchdog_of(node_pid).filter(|p| *p != first),
    );
    let frozen = Instant::now();
    lab.signal(1, Signal::SIGSTOP);
    let want: BTreeSet<String> = [node4(0), node4(2)].into_iter().collect();
    wait_hops(&lab, VIP4, &want, Duration::from_secs(10));
    eprintln!("SIGSTOP: withdrawn after {:?}", frozen.elapsed());
    lab.signal(1, Signal::SIGCONT);
    let t = wait_hops(&lab, VIP4, &all_nodes(), Duration::from_secs(30));
    eprintln!("SIGCONT: announced again after {t:?}");

    // 7. A service removed from the table drains (--drain-s 3): every replica keeps its VIP
    //    announced until the drain ends, so the flows the drain keeps still reach a replica,
    //    then withdraws it.
    wait_hops(&lab, CHURN, &all_nodes(), Duration::from_secs(30));
    let tmp = lab.rules.with_extension("tmp");
    std::fs::write(&tmp, rules(None)).unwrap();
    let removed = Instant::now();
    std::fs::rename(&tmp, &lab.rules).unwrap();
    lab.wait_for(
        Duration::from_secs(10),
        "n2 reporting the removed service's VIP as draining",
        || {
            let r = own_report(&lab, 1)?;
            let d = r["member"]["announce"]["draining"].as_array()?.clone();
            (d == vec![Value::from(CHURN)]).then_some(())
        },
    );
    while removed.elapsed() < Duration::from_millis(2000) {
        let hops = lab.nexthops(CHURN);
        if hops != all_nodes() {
            let reports: Vec<_> = (0..3).map(|i| own_report(&lab, i)).collect();
            panic!(
                "withdrawn {:?} after the removal, before the 3 s drain ended: {hops:?}; {reports:?}",
                removed.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_hops(&lab, CHURN, &BTreeSet::new(), Duration::from_secs(15));
    let gone = removed.elapsed();
    eprintln!("removed service: its VIP withdrawn {gone:?} after the removal (drain 3 s)");
    assert!(
        gone >= Duration::from_millis(2500),
        "withdrawn before the drain ended: {gone:?}"
    );
    assert_eq!(lab.nexthops(VIP4), all_nodes(), "other VIPs stay");

    // 8. A hung BIRD (stopped: the router's BFD drops n3 at once) is killed and started again
    //    once it has not answered its control socket for 20 s, and n3 comes back (an audit
    //    stopped it: n3 stayed out of service for good).
    let hung = lab.procs(2, "bird");
    assert_eq!(hung.len(), 1, "one BIRD in n3's namespace: {hung:?}");
    let frozen = Instant::now();
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(hung[0]), Signal::SIGSTOP);
    let want: BTreeSet<String> = [node4(0), node4(1)].into_iter().collect();
    wait_hops(&lab, VIP4, &want, Duration::from_secs(10));
    lab.wait_for(
        Duration::from_secs(15),
        "n3 saying BIRD does not answer",
        || {
            let r = own_report(&lab, 2)?;
            (r["member"]["announce"]["readiness"] == "bird-not-answering").then_some(())
        },
    );
    let t = wait_hops(&lab, VIP4, &all_nodes(), Duration::from_secs(60));
    let back = frozen.elapsed();
    eprintln!("hung BIRD: n3 back as a next hop {back:?} after its BIRD was stopped ({t:?} wait)");
    let now = lab.procs(2, "bird");
    assert_eq!(now.len(), 1, "one BIRD in n3's namespace: {now:?}");
    assert_ne!(now, hung, "the stopped BIRD was replaced");
    assert!(
        back >= Duration::from_secs(20),
        "restarted before 20 s: {back:?}"
    );
    let metrics = lab.http(2, "/metrics").unwrap_or_default();
    assert!(metrics.contains("shoal_bird_restarts_total 1"), "{metrics}");

    let _ = listener.kill();
    let _ = listener.wait();
}

/// The pid of the announce watchdog (`shoal announce-guard`) that `parent` started.
fn watchdog_of(parent: i32) -> Option<i32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // After the command's closing parenthesis: state, then the parent's pid.
            let ppid: i32 = stat
                .rsplit(')')
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).ok()?;
            (ppid == parent && cmdline.contains("announce-guard")).then_some(pid)
        })
}

/// The process group of `pid` (field 5 of /proc/PID/stat).
fn process_group(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

fn run_expecting_error(config: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(&path, config).unwrap();
    std::fs::write(dir.path().join("rules.toml"), "").unwrap();
    let out = Command::new(bin())
        .args([
            "run",
            "--insecure",
            "--single-node",
            "--listen",
            "127.0.0.1:1",
            "--admin",
            "127.0.0.1:1",
        ])
        .arg("--rules")
        .arg(dir.path().join("rules.toml"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn bad_bgp_config_is_refused_naming_the_field() {
    // With a router id: the node listens on 127.0.0.1, which cannot be one.
    let base = "announce = \"bgp\"\n[bgp]\nlocal_asn = 64512\nrouter_id = \"198.18.1.2\"\n[[bgp.peers]]\naddress = \"198.18.1.1\"\nasn = 64500\n";
    let e = run_expecting_error(&base.replace("router_id = \"198.18.1.2\"\n", ""));
    assert!(
        e.contains("bgp.router_id") && !e.contains("joined the mesh"),
        "{e}"
    );
    let e = run_expecting_error(&format!("{base}pasword = \"x\"\n"));
    assert!(e.contains("unknown field `pasword`"), "{e}");
    let e = run_expecting_error(&base.replace("asn = 64500", "asn = 4294967296"));
    assert!(
        e.contains("bgp.peers[0].asn") && e.contains("out of range"),
        "{e}"
    );
    let e = run_expecting_error(&base.replace("198.18.1.1", "224.0.0.1"));
    assert!(e.contains("bgp.peers[0].address"), "{e}");
    let e = run_expecting_error(&base.replace(
        "local_asn = 64512",
        "local_asn = 64512\nbird = \"no-such-bird\"",
    ));
    assert!(e.contains("no-such-bird") && e.contains("bird2"), "{e}");
    // A control socket path over the Unix limit: refused naming the setting.
    let long = format!("/tmp/{}", "d".repeat(100));
    let e = run_expecting_error(&base.replace(
        "local_asn = 64512",
        &format!("local_asn = 64512\nstate_dir = \"{long}\""),
    ));
    assert!(e.contains("bgp.state_dir") && e.contains("107"), "{e}");
    // Not BIRD 2, or a config BIRD rejects: refused before the node joins the mesh (the
    // error comes without the mesh's "joined the mesh" line).
    let dir = tempfile::tempdir().unwrap();
    let e = run_expecting_error(&base.replace(
        "local_asn = 64512",
        &format!(
            "local_asn = 64512\nbird = \"/bin/true\"\nstate_dir = \"{}\"",
            dir.path().display()
        ),
    ));
    assert!(
        e.contains("needs BIRD 2") && !e.contains("joined the mesh"),
        "{e}"
    );
    let picky = dir.path().join("picky-bird");
    std::fs::write(
        &picky,
        "#!/bin/sh\n[ \"$1\" = --version ] && { echo 'BIRD version 2.0.12'; exit 0; }\necho 'bird.conf:3:1 syntax error' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&picky, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let e = run_expecting_error(&base.replace(
        "local_asn = 64512",
        &format!(
            "local_asn = 64512\nbird = \"{}\"\nstate_dir = \"{}\"",
            picky.display(),
            dir.path().display()
        ),
    ));
    assert!(
        e.contains("BIRD rejected the generated config")
            && e.contains("syntax error")
            && !e.contains("joined the mesh"),
        "{e}"
    );
    let e = run_expecting_error("announce = \"l2\"\ninterface = \"nosuchif0\"\n");
    assert!(e.contains("interface `nosuchif0` does not exist"), "{e}");
    let e = run_expecting_error("announce = \"l2\"\n");
    assert!(e.contains("interface"), "{e}");
}

/// A `bird` that passes `--version` and `-p` but exits a second after each start without
/// opening its control socket (as BIRD does with `Socket path too long`).
fn crash_looping_bird(dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("fake-bird");
    std::fs::write(
        &path,
        "#!/bin/sh\ncase \"$1\" in\n  --version) echo 'BIRD version 2.0.12' >&2; exit 0;;\n  -p) exit 0;;\nesac\nsleep 1\necho 'bird: Socket path too long' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn bird_that_does_not_answer_makes_the_node_not_ready() {
    if !have_root() {
        eprintln!("SKIPPED: needs root for network namespaces (CI runs as root)");
        return;
    }
    let mut lab = Lab::new(1, &rules(None), false);
    let fake = crash_looping_bird(lab.path());
    let config = lab.bgp_config(0).replace(
        "[bgp]\n",
        &format!("[bgp]\nbird = \"{}\"\n", fake.display()),
    );
    lab.write_config(0, &config);
    lab.set_extra_args(&["--single-node"]);
    lab.spawn(0);
    let report = lab.wait_for(
        Duration::from_secs(30),
        "the report saying BIRD does not answer",
        || {
            let r = own_report(&lab, 0)?;
            let a = r["member"]["announce"].clone();
            (a["readiness"] == "bird-not-answering").then_some(a)
        },
    );
    assert!(
        report["bird"]
            .as_str()
            .is_some_and(|s| s.starts_with("not answering since")),
        "{report}"
    );
    assert_eq!(report["announced"], serde_json::json!([]), "{report}");
    assert!(lab.http(0, "/readyz").is_none(), "/readyz must not be 200");
    let metrics = lab.http(0, "/metrics").unwrap_or_default();
    assert!(metrics.contains("shoal_bird_up 0"), "{metrics}");
    assert!(metrics.contains("shoal_announce_vips 0"), "{metrics}");
    let restarts: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("shoal_bird_restarts_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(restarts >= 1, "{metrics}");
}
