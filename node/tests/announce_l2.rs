//! L2 mode end to end in network namespaces: three replicas and a client on one bridge. The
//! client's own tools are the independent reader: `arping` and `ndisc6` (who answers for a
//! VIP) and its kernel's neighbour table (where its packets for the VIP go).

mod announce_lab;

use announce_lab::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

const VIPS4: [&str; 3] = ["203.0.113.10", "203.0.113.11", "203.0.113.12"];
const VIP6: &str = "2001:db8:113::10";

fn rules() -> String {
    let mut r = String::new();
    for (k, vip) in VIPS4.iter().enumerate() {
        r.push_str(&format!(
            "[[service]]\nname='s{k}'\nvip='{vip}'\nport=80\n[[service.backend]]\naddress='198.18.1.50'\n\n"
        ));
    }
    r.push_str(&format!(
        "[[service]]\nname='s6'\nvip='{VIP6}'\nport=80\n[[service.backend]]\naddress='2001:db8:1::50'\n"
    ));
    r
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

fn client_dev(lab: &Lab) -> String {
    format!("{}ec", lab.prefix)
}

/// MACs that answer an ARP request for `vip` from the client (several answers are all listed).
fn arp_answers(lab: &Lab, vip: &str) -> BTreeSet<String> {
    let ns = lab.client_ns.as_ref().unwrap();
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "arping",
            "-c",
            "2",
            "-w",
            "2",
            "-I",
            &client_dev(lab),
            vip,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| Some(l.split_once('[')?.1.split_once(']')?.0.to_lowercase()))
        .collect()
}

/// MACs that answer a neighbour solicitation for `vip` from the client.
fn nd_answers(lab: &Lab, vip: &str) -> BTreeSet<String> {
    let ns = lab.client_ns.as_ref().unwrap();
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "ndisc6",
            "-m",
            "-r",
            "2",
            "-w",
            "500",
            vip,
            &client_dev(lab),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("Target link-layer address:"))
        .map(|m| m.trim().to_lowercase())
        .collect()
}

/// The client's neighbour entry for `vip` (its MAC), if any.
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

/// Owner of every VIP by the members' reports, once each VIP has exactly one.
fn owners(lab: &Lab, asked: usize, live: usize) -> Option<BTreeMap<String, String>> {
    let c = lab.cluster(asked)?;
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let members = c["members"].as_array()?;
    let mut reports = 0;
    for m in members {
        let Some(a) = m["announce"].as_object() else {
            continue;
        };
        if a["readiness"] == "ready" {
            reports += 1;
        }
        for ip in a["announced"].as_array()? {
            let ip = ip.as_str()?.to_string();
            if out.insert(ip, m["id"].as_str()?.to_string()).is_some() {
                return None; // two owners
            }
        }
    }
    (reports == live && out.len() == VIPS4.len() + 1).then_some(out)
}

#[test]
fn l2_one_owner_per_vip_answers_and_a_new_owner_takes_over() {
    if !have_root() {
        eprintln!("SKIPPED: needs root for network namespaces (CI runs as root)");
        return;
    }
    let mut lab = Lab::new(3, &rules(), true);
    let ns = lab.client_ns.clone().unwrap();
    let dev = client_dev(&lab);
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
    sh(&[
        "ip",
        "-n",
        &ns,
        "-6",
        "route",
        "add",
        "2001:db8:113::/64",
        "dev",
        &dev,
    ]);
    for i in 0..3 {
        let text = format!("announce = \"l2\"\ninterface = \"{}\"\n", lab.nodes[i].dev);
        lab.write_config(i, &text);
    }
    // As the IPVS dataplane does (on its dummy `shoal0`; this kernel has no dummy driver, lo
    // serves the same purpose), every replica holds every VIP locally: without arp_ignore on
    // the L2 interface, every replica's kernel would answer ARP for every VIP.
    for i in 0..3 {
        let ns = lab.nodes[i].ns.clone();
        for vip in VIPS4 {
            sh(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{vip}/32"),
                "dev",
                "lo",
            ]);
        }
        sh(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{VIP6}/128"),
            "dev",
            "lo",
            "nodad",
        ]);
    }
    lab.set_extra_args(&["--shutdown-drain-s", "2"]);
    for i in 0..3 {
        lab.spawn(i);
    }
    let macs: Vec<String> = (0..3).map(|i| mac_of(&lab, i)).collect();
    let index_of = |id: &str| id[1..].parse::<usize>().unwrap() - 1;

    let owned = lab.wait_for(Duration::from_secs(60), "one owner per VIP", || {
        owners(&lab, 0, 3)
    });
    eprintln!("owners: {owned:?}");
    let distinct: BTreeSet<&String> = owned.values().collect();
    assert!(
        distinct.len() >= 2,
        "VIPs spread over the replicas: {owned:?}"
    );

    // Each VIP is answered by exactly one replica: its owner.
    for vip in VIPS4 {
        let answers = lab.wait_for(Duration::from_secs(10), "an ARP answer", || {
            let a = arp_answers(&lab, vip);
            (!a.is_empty()).then_some(a)
        });
        let want: BTreeSet<String> = [macs[index_of(&owned[vip])].clone()].into();
        assert_eq!(answers, want, "ARP answers for {vip}");
    }
    let answers = nd_answers(&lab, VIP6);
    let want: BTreeSet<String> = [macs[index_of(&owned[VIP6])].clone()].into();
    assert_eq!(answers, want, "NDP answers for {VIP6}");

    // SIGTERM of an owner: it reports draining, another member takes its VIPs over (the
    // client's entry moves) before the process exits, and the exit waits for the drain.
    let vip = VIPS4[1];
    let o = index_of(&owned[vip]);
    touch(&ns, vip);
    lab.wait_for(Duration::from_secs(5), "the client's entry", || {
        (neigh(&lab, vip).as_deref() == Some(macs[o].as_str())).then_some(())
    });
    let sent = Instant::now();
    lab.signal(o, nix::sys::signal::Signal::SIGTERM);
    let (mut moved, mut exited) = (None, None);
    while sent.elapsed() < Duration::from_secs(20) && exited.is_none() {
        if moved.is_none() && neigh(&lab, vip).is_some_and(|m| m != macs[o]) {
            moved = Some(sent.elapsed());
        }
        if let Some(c) = lab.nodes[o].child.as_mut() {
            if let Ok(Some(_)) = c.try_wait() {
                exited = Some(sent.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    lab.nodes[o].child = None;
    let (m, x) = (moved.expect("taken over"), exited.expect("exited"));
    eprintln!("SIGTERM of an owner: taken over after {m:?}, exited after {x:?}");
    assert!(
        m < x && x >= Duration::from_secs(2),
        "moved {m:?}, exited {x:?}"
    );
    lab.spawn(o);
    let owned = lab.wait_for(Duration::from_secs(60), "one owner per VIP again", || {
        owners(&lab, 0, 3)
    });

    // The client's neighbour entry points at the owner; kill the owner: it points at the new
    // owner within the mesh's failure detection plus the takeover.
    let vip = VIPS4[0];
    let old = index_of(&owned[vip]);
    touch(&ns, vip);
    lab.wait_for(Duration::from_secs(5), "the client's entry", || {
        (neigh(&lab, vip).as_deref() == Some(macs[old].as_str())).then_some(())
    });
    let killed = Instant::now();
    lab.kill9(old);
    let new_mac = lab.wait_for(
        Duration::from_secs(10),
        "the client's entry to move",
        || neigh(&lab, vip).filter(|m| *m != macs[old]),
    );
    let took = killed.elapsed();
    eprintln!("kill -9 of the owner: the client's entry moved after {took:?}");
    let survivor = (0..3).find(|i| *i != old).unwrap();
    let owned = lab.wait_for(Duration::from_secs(20), "new owners", || {
        owners(&lab, survivor, 2)
    });
    let new = index_of(&owned[vip]);
    assert_ne!(new, old);
    assert_eq!(new_mac, macs[new], "the entry points at the new owner");
    // The dead replica's VIPs were removed by its watchdog: one answer only.
    for vip in VIPS4 {
        let answers = arp_answers(&lab, vip);
        let want: BTreeSet<String> = [macs[index_of(&owned[vip])].clone()].into();
        assert_eq!(answers, want, "ARP answers for {vip} after the failover");
    }

    // IPv6: the new owner's unsolicited neighbour advertisement moves the client's entry too.
    let old6 = index_of(&owned[VIP6]);
    touch(&ns, VIP6);
    lab.wait_for(Duration::from_secs(5), "the client's IPv6 entry", || {
        (neigh(&lab, VIP6).as_deref() == Some(macs[old6].as_str())).then_some(())
    });
    let killed = Instant::now();
    lab.kill9(old6);
    let last = (0..3).find(|i| *i != old && *i != old6).unwrap();
    lab.wait_for(
        Duration::from_secs(10),
        "the client's IPv6 entry to move",
        || (neigh(&lab, VIP6).as_deref() == Some(macs[last].as_str())).then_some(()),
    );
    eprintln!(
        "kill -9 of the IPv6 owner: the client's entry moved after {:?}",
        killed.elapsed()
    );
    assert_eq!(nd_answers(&lab, VIP6), [macs[last].clone()].into());

    // A second stop signal ends the drain: with a 60 s drain, SIGTERM and then SIGINT stop the
    // node at once (only SIGKILL did: a probe).
    lab.set_extra_args(&["--shutdown-drain-s", "60"]);
    lab.spawn(old);
    lab.wait_for(Duration::from_secs(20), "the restarted node ready", || {
        owners(&lab, last, 2)
    });
    lab.signal(old, nix::sys::signal::Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(1_000));
    let child = lab.nodes[old].child.as_mut().expect("running");
    assert!(
        matches!(child.try_wait(), Ok(None)),
        "drains after the first SIGTERM"
    );
    lab.signal(old, nix::sys::signal::Signal::SIGINT);
    let exited = lab
        .exited_within(old, Duration::from_secs(15))
        .expect("a second stop signal ends the 60 s drain");
    eprintln!("second stop signal: exited after {exited:?}");
}

/// Sends one UDP datagram from the client to the VIP, so the client's kernel resolves it.
fn touch(ns: &str, vip: &str) {
    let script = format!("echo x > /dev/udp/{vip}/9");
    sh(&["ip", "netns", "exec", ns, "bash", "-c", &script]);
}
