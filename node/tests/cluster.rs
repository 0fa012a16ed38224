//! The node as separate processes: convergence, edits, takeover, freeze, bad rules, readiness.

mod common;

use common::{get, head_id, http_get, rules, write_rules, Cluster};
use nix::sys::signal::Signal;
use serde_json::Value;
use std::time::{Duration, Instant};

const CONVERGE: Duration = Duration::from_secs(20);

fn version(v: &Value) -> (u64, u64, String) {
    (
        v["epoch"].as_u64().unwrap(),
        v["seq"].as_u64().unwrap(),
        v["origin"].as_str().unwrap().to_string(),
    )
}

#[test]
fn five_nodes_converge_and_every_status_agrees() {
    let c = Cluster::start(5, &rules(1), &[]);
    // The lowest id publishes.
    c.wait_converged_on("n1", CONVERGE);
    let views: Vec<Value> = c
        .nodes
        .iter()
        .map(|n| get(n.admin, "/v1/cluster").unwrap())
        .collect();
    for v in &views {
        assert_eq!(v["publisher"], "n1");
        assert_eq!(head_id(&v["head"]), head_id(&views[0]["head"]));
        let ids: Vec<&str> = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["n1", "n2", "n3", "n4", "n5"]);
    }
    // Every node's dataplane holds the table.
    for n in &c.nodes {
        let dp = get(n.admin, "/v1/dataplane").unwrap();
        assert_eq!(dp["matches_table"], true, "{dp}");
        assert_eq!(dp["services"].as_array().unwrap().len(), 2);
    }
    // `shoal status` (the CLI) from another node shows the same members and head.
    let out = std::process::Command::new(common::bin())
        .args(["status", "--output", "json", "--node"])
        .arg(c.nodes[3].admin.to_string())
        .output()
        .unwrap();
    assert!(out.status.success());
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(head_id(&cli["head"]), head_id(&views[0]["head"]));
    let table = std::process::Command::new(common::bin())
        .args(["status", "--node"])
        .arg(c.nodes[2].admin.to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("publisher:   n1"), "{text}");
    assert_eq!(text.matches("alive").count(), 5, "{text}");
}

#[test]
fn a_rules_edit_reaches_every_node_as_a_new_version() {
    let c = Cluster::start(3, &rules(1), &[]);
    let first = c.wait_converged_on("n1", CONVERGE);
    write_rules(&c.rules, &rules(5));
    let second = c.wait_for(CONVERGE, "a newer head", || {
        let h = c.wait_converged(CONVERGE);
        (version(&h) > version(&first)).then_some(h)
    });
    assert_eq!(
        version(&second).0,
        version(&first).0,
        "same publisher, same epoch"
    );
    assert_eq!(version(&second).1, version(&first).1 + 1);
    for n in &c.nodes {
        let t = get(n.admin, "/v1/table").unwrap();
        let web = t["table"]["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "web")
            .unwrap()
            .clone();
        assert_eq!(web["backends"][0]["weight"], 5);
        let dp = get(n.admin, "/v1/dataplane").unwrap();
        assert_eq!(dp["matches_table"], true);
    }
}

#[test]
fn kill9_of_the_publisher_leads_to_a_takeover_with_a_newer_version() {
    let mut c = Cluster::start(3, &rules(1), &[]);
    let first = c.wait_converged_on("n1", CONVERGE);
    let killed = Instant::now();
    c.kill9(0);
    let head = c.wait_for(CONVERGE, "n2 publishes a newer version", || {
        let v = get(c.nodes[1].admin, "/v1/cluster")?;
        (v["publisher"] == "n2" && v["head"]["origin"] == "n2").then(|| head_id(&v["head"]))
    });
    let took = killed.elapsed();
    assert!(version(&head) > version(&first));
    assert!(
        version(&head).0 > version(&first).0,
        "a new publisher takes a new epoch"
    );
    let converged = c.wait_converged(CONVERGE);
    assert_eq!(converged, head);
    let v = get(c.nodes[2].admin, "/v1/cluster").unwrap();
    let n1 = &v["members"].as_array().unwrap()[0];
    assert_eq!(n1["id"], "n1");
    assert_eq!(n1["alive"], false);
    eprintln!("takeover observed after {took:?}");
}

#[test]
fn a_frozen_node_is_marked_dead_and_catches_up_when_continued() {
    let c = Cluster::start(3, &rules(1), &[]);
    let first = c.wait_converged_on("n1", CONVERGE);
    c.signal(2, Signal::SIGSTOP);
    c.wait_for(CONVERGE, "n3 marked dead by n1", || {
        let v = get(c.nodes[0].admin, "/v1/cluster")?;
        let n3 = v["members"]
            .as_array()?
            .iter()
            .find(|m| m["id"] == "n3")?
            .clone();
        (n3["alive"] == false).then_some(())
    });
    // A new version while n3 is frozen.
    write_rules(&c.rules, &rules(7));
    let newer = c.wait_for(CONVERGE, "a newer head on n1", || {
        let v = get(c.nodes[0].admin, "/v1/cluster")?;
        (version(&v["head"]) > version(&first)).then(|| head_id(&v["head"]))
    });
    c.signal(2, Signal::SIGCONT);
    let head = c.wait_converged(CONVERGE);
    assert_eq!(head, newer, "{}", c.logs());
}

/// A publisher frozen until another took over answers the requests that queued up during
/// the freeze only after its first step since: it answered them as "publisher" from what it
/// knew before the freeze (an SRE's probe: 11 double claims in its polls).
#[test]
fn a_thawed_publisher_answers_from_a_fresh_view() {
    let c = Cluster::start(2, &rules(1), &[]);
    c.wait_converged_on("n1", CONVERGE);
    c.signal(0, Signal::SIGSTOP);
    c.wait_for(CONVERGE, "n2 takes over", || {
        let v = get(c.nodes[1].admin, "/v1/cluster")?;
        (v["publisher"] == "n2").then_some(())
    });
    // Queued in the frozen node's accept backlog, answered after the thaw.
    let admin = c.nodes[0].admin;
    let queued: Vec<_> = ["/v1/cluster", "/metrics"]
        .into_iter()
        .map(|path| std::thread::spawn(move || http_get(admin, path)))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    c.signal(0, Signal::SIGCONT);
    let answers: Vec<_> = queued.into_iter().map(|t| t.join().unwrap()).collect();
    let (_, cluster) = answers[0].clone().expect("the thawed node answers");
    let v: serde_json::Value = serde_json::from_str(&cluster).expect("JSON");
    assert_ne!(v["publisher"], "n1", "answered from before the freeze: {v}");
    let (_, metrics) = answers[1].clone().expect("the thawed node answers");
    assert!(
        metrics.contains("shoal_is_publisher 0"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("is_publisher"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn a_broken_rules_file_is_refused_and_the_last_good_table_stays() {
    let c = Cluster::start(2, &rules(1), &[]);
    let first = c.wait_converged_on("n1", CONVERGE);
    write_rules(&c.rules, "[[service]]\nname='web'\nvip='203.0.113.10'\nport=80\n[[service.backend]]\naddress='not-an-ip'\n");
    let err = c.wait_for(CONVERGE, "the publisher reports the error", || {
        let n = get(c.nodes[0].admin, "/v1/node")?;
        n["source"]["last_error"].as_str().map(str::to_string)
    });
    assert!(err.contains("line 6"), "{err}");
    assert!(err.contains("address"), "{err}");
    std::thread::sleep(Duration::from_secs(1));
    let now = c.wait_converged(CONVERGE);
    assert_eq!(now, first, "the last good table stays in force");
    // `shoal check` names the same problem.
    let out = std::process::Command::new(common::bin())
        .arg("check")
        .arg("--rules")
        .arg(&c.rules)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 6"), "{stderr}");
}

#[test]
fn readyz_is_200_only_once_the_head_is_applied() {
    let mut c = Cluster::start(1, &rules(1), &[]);
    c.wait_converged(CONVERGE);
    let (code, body) = http_get(c.nodes[0].admin, "/readyz").unwrap();
    assert_eq!(code, 200, "{body}");
    let (code, metrics) = http_get(c.nodes[0].admin, "/metrics").unwrap();
    assert_eq!(code, 200);
    for name in [
        "shoal_applied_is_head 1",
        "shoal_is_publisher 1",
        "shoal_reconciles_total{result=\"ok\"}",
        "shoal_health_verdict_changes_total",
        concat!(
            "shoal_build_info{version=\"",
            env!("CARGO_PKG_VERSION"),
            "\",commit=\"",
            env!("SHOAL_COMMIT"),
            "\"} 1"
        ),
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    // Restarted alone without a rules file, the node has no head: not ready.
    c.kill9(0);
    std::fs::remove_file(&c.rules).unwrap();
    c.spawn(0);
    let (code, body) = c.wait_for(CONVERGE, "readyz says why there is no table", || {
        http_get(c.nodes[0].admin, "/readyz")
            .filter(|(_, body)| body.contains("the publisher's input is rejected"))
    });
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("no rule table"), "{body}");
    assert!(body.contains("rules"), "{body}");
    write_rules(&c.rules, &rules(3));
    c.wait_for(CONVERGE, "ready once the rules appear", || {
        let (code, _) = http_get(c.nodes[0].admin, "/readyz")?;
        (code == 200).then_some(())
    });
}

#[test]
fn run_refuses_to_start_without_tls_material() {
    let out = std::process::Command::new(common::bin())
        .args([
            "run",
            "--node-id",
            "x",
            "--listen",
            "127.0.0.1:1",
            "--admin",
            "127.0.0.1:2",
            "--rules",
            "r.toml",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--insecure"), "{stderr}");
}

/// The names of the services a node holds (`/v1/table`), sorted.
fn services(c: &Cluster, i: usize) -> Option<Vec<String>> {
    let t = get(c.nodes[i].admin, "/v1/table")?;
    let mut names: Vec<String> = t["table"]["services"]
        .as_array()?
        .iter()
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    Some(names)
}

/// F2 (audit): after a restart of every other node with no state, a frozen node came back with
/// a head this publisher's id had stamped in its earlier process (a greater version, another
/// table). The publisher took it for its own and never stamped its source's table again: the
/// whole cluster ran a table its rules file no longer held, ready and silent. Now a head not
/// stamped by this process is republished over.
#[test]
fn a_stale_head_from_an_earlier_process_of_the_publisher_is_republished_over() {
    const WEB_ONLY: &str = "[[service]]\nname='web'\nvip='203.0.113.10'\nport=80\n\n[[service.backend]]\naddress='198.18.1.10'\n";
    let mut c = Cluster::start(4, &rules(1), &[]);
    let first = c.wait_converged_on("n1", CONVERGE);
    // An edit: the stale head n4 will hold is 1.2@n1 (web and dns), above the fresh 1.1@n1.
    write_rules(&c.rules, &rules(2));
    let stale = c.wait_for(CONVERGE, "the edit on every node", || {
        let h = c.wait_converged(CONVERGE);
        (version(&h) > version(&first)).then_some(h)
    });
    c.signal(3, Signal::SIGSTOP);
    for i in 0..3 {
        c.kill9(i);
    }
    write_rules(&c.rules, WEB_ONLY);
    // n1 first: all three wait out the startup patience for n4, and the first caught up
    // publishes and keeps the role; this test needs that to be n1, the stale head's origin.
    c.spawn(0);
    std::thread::sleep(Duration::from_secs(1));
    for i in 1..3 {
        c.spawn(i);
    }
    let fresh = c.wait_for(CONVERGE, "the fresh cluster publishes web only", || {
        let v = get(c.nodes[0].admin, "/v1/cluster")?;
        let h = head_id(&v["head"]);
        (v["publisher"] == "n1" && !h.is_null() && services(&c, 0)? == ["web"]).then_some(h)
    });
    assert!(
        version(&fresh) < version(&stale),
        "the stale head must rank above: {fresh} {stale}"
    );
    c.signal(3, Signal::SIGCONT);
    let head = c.wait_for(
        CONVERGE,
        "every node on a web-only head above the stale one",
        || {
            let h = c.wait_converged(CONVERGE);
            let web_only = (0..4).all(|i| services(&c, i).is_some_and(|s| s == ["web"]));
            (version(&h) > version(&stale) && web_only).then_some(h)
        },
    );
    assert_eq!(head["origin"], "n1");
    // And it stays there: nothing republishes in a loop, nothing brings the stale table back.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(c.wait_converged(CONVERGE), head);
    let republished = std::fs::read_to_string(&c.nodes[0].log)
        .unwrap()
        .matches("republishing")
        .count();
    assert!(
        republished <= 3,
        "republished {republished} times\n{}",
        c.logs()
    );
}

/// Found by an audit: with the rules file rejected, the publisher n1 was killed and n2 took the
/// role, but could not stamp, so the head's origin stayed n1. n1's next process held that head,
/// took it for its own and took the role back (half a second without a publisher, a takeover
/// more). Now n2 keeps the role it claims, stamped or not.
#[test]
fn a_restarted_publisher_does_not_take_the_role_back_from_one_yet_to_stamp() {
    let mut c = Cluster::start(3, &rules(1), &[]);
    let first = c.wait_converged_on("n1", CONVERGE);
    write_rules(&c.rules, "[[service]]\nname='web'\nport=80\n");
    c.wait_for(CONVERGE, "n1 rejects the rules file", || {
        let n = get(c.nodes[0].admin, "/v1/node")?;
        n["source"]["last_error"].as_str().map(|_| ())
    });
    c.kill9(0);
    c.wait_for(CONVERGE, "n2 takes the role", || {
        let v = get(c.nodes[1].admin, "/v1/cluster")?;
        (v["publisher"] == "n2").then_some(())
    });
    c.spawn(0);
    c.wait_for(CONVERGE, "n1's new process caught up", || {
        let v = get(c.nodes[0].admin, "/v1/node")?;
        (v["role"] == "follower" || v["role"] == "publisher").then_some(())
    });
    // Long enough for the old rule to move the role (it did within a second).
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(4) {
        for i in 0..3 {
            if let Some(v) = get(c.nodes[i].admin, "/v1/cluster") {
                assert_eq!(v["publisher"], "n2", "seen by n{}\n{}", i + 1, c.logs());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        c.wait_converged(CONVERGE),
        first,
        "the last good table stays"
    );
}

/// Found by an audit: a publisher sent SIGTERM went on saying `shoal_is_publisher 1` until it
/// had left (0.1-0.65 s, beside its successor's 1). It hands the role on at the signal now.
#[test]
fn a_publisher_told_to_stop_hands_the_role_on_before_it_leaves() {
    let c = Cluster::start(2, &rules(1), &[]);
    c.wait_converged_on("n1", CONVERGE);
    c.signal(0, Signal::SIGTERM);
    let is_publisher = |i: usize| -> Option<bool> {
        let (_, body) = http_get(c.nodes[i].admin, "/metrics")?;
        body.lines()
            .find_map(|l| l.strip_prefix("shoal_is_publisher "))
            .map(|v| v.trim() == "1")
    };
    // n1 still answers (it lingers to spread its leave) and no longer publishes.
    c.wait_for(
        Duration::from_secs(5),
        "n1, still running, is no publisher",
        || (!is_publisher(0)?).then_some(()),
    );
    c.wait_for(CONVERGE, "n2 publishes", || is_publisher(1)?.then_some(()));
}
