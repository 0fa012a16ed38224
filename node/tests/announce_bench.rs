//! Withdraw-latency benchmark (ignored by `cargo test`; run by scripts/announce-bench.sh):
//! in the BGP lab, how long after kill -9, SIGSTOP and SIGTERM of a replica the router's FIB
//! loses its next hop; in the L2 lab, how long after kill -9 of a VIP's owner the client's
//! neighbour entry points at the new owner. `ANNOUNCE_BENCH_TRIALS` trials each (default 20);
//! prints p50/p90/p99/max per event.

mod announce_lab;

use announce_lab::*;
use nix::sys::signal::Signal;
use serde_json::Value;
use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

const VIP: &str = "203.0.113.10";

fn trials() -> usize {
    std::env::var("ANNOUNCE_BENCH_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20)
}

fn rules() -> String {
    format!("[[service]]\nname='web'\nvip='{VIP}'\nport=80\n[[service.backend]]\naddress='198.18.1.50'\n")
}

fn summary(name: &str, mut ms: Vec<f64>) {
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let q = |p: f64| ms[((ms.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "RESULT {name}: n={} p50={:.0} ms p90={:.0} ms p99={:.0} ms max={:.0} ms min={:.0} ms",
        ms.len(),
        q(0.5),
        q(0.9),
        q(0.99),
        ms[ms.len() - 1],
        ms[0]
    );
}

fn all(n: usize) -> BTreeSet<String> {
    (0..n).map(node4).collect()
}

/// Polls the router's FIB until `node`'s next hop for the VIP is gone; returns when.
fn until_gone(lab: &Lab, node: &str, limit: Duration) -> Option<Instant> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if !lab.nexthops(VIP).contains(node) {
            return Some(Instant::now());
        }
    }
    None
}

#[test]
#[ignore]
fn bench_bgp_withdraw_latency() {
    let n = trials();
    let mut lab = Lab::new(3, &rules(), false);
    lab.start_router_bird();
    for i in 0..3 {
        lab.write_config(i, &lab.bgp_config(i));
    }
    lab.set_extra_args(&["--shutdown-drain-s", "1"]);
    for i in 0..3 {
        lab.spawn(i);
    }
    let settle = |lab: &Lab| {
        lab.wait_for(Duration::from_secs(60), "3 next hops", || {
            (lab.nexthops(VIP) == all(3)).then_some(())
        })
    };
    settle(&lab);
    let events: Vec<String> = std::env::var("ANNOUNCE_BENCH_EVENTS")
        .unwrap_or_else(|_| "kill -9,SIGSTOP,SIGTERM,node freeze".into())
        .split(',')
        .map(str::to_string)
        .collect();
    for event in events.iter().map(String::as_str) {
        let mut ms = Vec::new();
        for t in 0..n {
            let k = t % 3;
            let node = node4(k);
            let at = Instant::now();
            // "node freeze": shoal, its watchdog and its BIRD all stop (a hung node): only
            // BFD can tell the router.
            let frozen: Vec<i32> = match event {
                "node freeze" => {
                    let mut p = lab.procs(k, "bird");
                    p.extend(lab.procs(k, "shoal"));
                    p
                }
                _ => vec![],
            };
            match event {
                "kill -9" => lab.signal(k, Signal::SIGKILL),
                "SIGSTOP" => lab.signal(k, Signal::SIGSTOP),
                "SIGTERM" => lab.signal(k, Signal::SIGTERM),
                "node freeze" => {
                    for p in &frozen {
                        let _ =
                            nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), Signal::SIGSTOP);
                    }
                }
                other => panic!("unknown event {other}"),
            }
            let gone = until_gone(&lab, &node, Duration::from_secs(30)).expect("withdrawn");
            ms.push(gone.duration_since(at).as_secs_f64() * 1000.0);
            match event {
                "SIGSTOP" => lab.signal(k, Signal::SIGCONT),
                "node freeze" => {
                    for p in &frozen {
                        let _ =
                            nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), Signal::SIGCONT);
                    }
                }
                _ => {
                    if let Some(mut c) = lab.nodes[k].child.take() {
                        let _ = c.wait();
                    }
                    lab.spawn(k);
                }
            }
            settle(&lab);
        }
        summary(&format!("bgp {event} -> router drops the next hop"), ms);
    }
}

fn mac_of(lab: &Lab, i: usize) -> String {
    let out = sh(&[
        "ip",
        "-n",
        &lab.nodes[i].ns,
        "-j",
        "link",
        "show",
        "dev",
        &lab.nodes[i].dev,
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v[0]["address"].as_str().unwrap().to_lowercase()
}

fn neigh(lab: &Lab, vip: &str) -> Option<String> {
    let ns = lab.client_ns.as_ref().unwrap();
    let out = Command::new("ip")
        .args(["-n", ns, "-j", "neigh", "show", vip])
        .output()
        .ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v.as_array()?
        .iter()
        .find_map(|e| e["lladdr"].as_str().map(|s| s.to_lowercase()))
}

/// The owner of the VIP once all `live` members report ready, asking node `asked`.
fn owner(lab: &Lab, asked: usize, live: usize) -> Option<usize> {
    let c = lab.cluster(asked)?;
    let members = c["members"].as_array()?;
    let ready = members
        .iter()
        .filter(|m| m["announce"]["readiness"] == "ready")
        .count();
    if ready != live {
        return None;
    }
    let owners: Vec<usize> = members
        .iter()
        .filter(|m| {
            m["announce"]["announced"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == VIP))
        })
        .filter_map(|m| m["id"].as_str()?[1..].parse::<usize>().ok().map(|i| i - 1))
        .collect();
    (owners.len() == 1).then(|| owners[0])
}

#[test]
#[ignore]
fn bench_l2_failover() {
    let n = trials();
    let mut lab = Lab::new(3, &rules(), true);
    let ns = lab.client_ns.clone().unwrap();
    let dev = format!("{}ec", lab.prefix);
    sh(&[
        "ip",
        "-n",
        &ns,
        "route",
        "add",
        "203.0.113.0/24",
        "dev",
        &dev,
    ]);
    for i in 0..3 {
        let text = format!("announce = \"l2\"\ninterface = \"{}\"\n", lab.nodes[i].dev);
        lab.write_config(i, &text);
    }
    for i in 0..3 {
        lab.spawn(i);
    }
    let macs: Vec<String> = (0..3).map(|i| mac_of(&lab, i)).collect();
    let mut ms = Vec::new();
    for _ in 0..n {
        let old = lab.wait_for(Duration::from_secs(60), "one owner", || {
            owner(&lab, 0, 3).or_else(|| owner(&lab, 1, 3))
        });
        let script = format!("echo x > /dev/udp/{VIP}/9");
        lab.wait_for(Duration::from_secs(10), "the entry at the owner", || {
            sh(&["ip", "netns", "exec", &ns, "bash", "-c", &script]);
            (neigh(&lab, VIP).as_deref() == Some(macs[old].as_str())).then_some(())
        });
        let at = Instant::now();
        lab.signal(old, Signal::SIGKILL);
        lab.wait_for(Duration::from_secs(30), "the entry to move", || {
            neigh(&lab, VIP).filter(|m| *m != macs[old])
        });
        ms.push(at.elapsed().as_secs_f64() * 1000.0);
        if let Some(mut c) = lab.nodes[old].child.take() {
            let _ = c.wait();
        }
        lab.spawn(old);
    }
    summary(
        "l2 kill -9 of the owner -> client's neighbour entry at the new owner",
        ms,
    );
}
