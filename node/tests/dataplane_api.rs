//! `GET /v1/dataplane` and `shoal dataplane` as a user meets them: real `shoal` processes on
//! loopback, a table large enough to page, and pages that must come from one read while the
//! table changes. (Hostile answers to the CLI are in hardening.rs, with `status` and `table`.)

mod common;

use common::{get, json_error, write_rules, Cluster};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(30);

/// The keys of the services of one `/v1/dataplane` answer (a page, or the CLI's whole listing).
fn service_keys(answer: &Value) -> Vec<String> {
    answer["services"]
        .as_array()
        .expect("services")
        .iter()
        .map(|s| s["service"]["key"].to_string())
        .collect()
}

fn many_services(n: usize) -> String {
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&format!(
            "[[service]]\nname='s{i:03}'\nvip='203.0.113.{}'\nport={}\n[[service.backend]]\naddress='198.18.1.1'\n",
            1 + i % 200,
            1000 + i
        ));
    }
    text
}

/// `/v1/dataplane` answered 41 MB for 10k services; now it summarises and pages.
#[test]
fn the_dataplane_read_back_is_paged() {
    let c = Cluster::start(1, &many_services(250), &[]);
    let admin = c.nodes[0].admin;
    c.wait_converged(LIMIT);
    let first = get(admin, "/v1/dataplane").unwrap();
    assert_eq!(first["total"]["services"], 250, "{}", first["total"]);
    assert_eq!(first["total"]["destinations"], 250);
    assert_eq!(first["matches_table"], true);
    assert_eq!(first["services"].as_array().unwrap().len(), 100);
    assert_eq!(first["next_offset"], 100);
    let mut seen = 0;
    let mut offset = Some(0);
    while let Some(o) = offset {
        let page = get(admin, &format!("/v1/dataplane?offset={o}&limit=90")).unwrap();
        seen += page["services"].as_array().unwrap().len();
        offset = page["next_offset"].as_u64();
    }
    assert_eq!(seen, 250);
    let huge = get(admin, "/v1/dataplane?limit=100000").unwrap();
    assert_eq!(huge["services"].as_array().unwrap().len(), 250);
    assert!(
        huge["snapshot"].is_null(),
        "a whole read in one page is not kept"
    );
    // An empty page would name itself as the next one, forever: refused, as JSON.
    for (query, names) in [("limit=0", "limit"), ("offset=abc", "offset")] {
        let error = json_error(admin, &format!("/v1/dataplane?{query}"), 400);
        assert!(error.contains(names), "{error}");
    }
}

/// `shoal dataplane` lists every page of one read (1,250 services: two pages of 1,000 at most)
/// as one document, or like `ipvsadm -Ln`.
#[test]
fn the_cli_lists_a_nodes_dataplane_from_all_pages_of_one_read() {
    let c = Cluster::start(1, &many_services(1_250), &[]);
    let admin = c.nodes[0].admin.to_string();
    c.wait_converged(LIMIT);
    let cli = |output: &str| {
        let out = std::process::Command::new(common::bin())
            .args(["dataplane", "--output", output, "--node", &admin])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let json: Value = serde_json::from_str(&cli("json")).unwrap();
    assert_eq!(json["total"]["services"], 1_250);
    assert_eq!(json["matches_table"], true);
    let keys = service_keys(&json);
    let distinct: BTreeSet<&String> = keys.iter().collect();
    assert_eq!((keys.len(), distinct.len()), (1_250, 1_250));
    assert!(json["next_offset"].is_null());
    let text = cli("table");
    assert!(text.contains("matches the table"), "{text}");
    assert!(text.contains("1250 services, 1250 destinations"), "{text}");
    assert_eq!(text.matches("-> 198.18.1.1:").count(), 1_250);
    assert!(text.contains("tcp 203.0.113.1:1000 "), "{text}");
}

/// With `?snapshot=new` the pages after the first come from the first page's read: they were
/// each a whole read of their own, seconds apiece at 10,000 IPVS services, and pages of
/// separate reads skip or repeat services when the table changes between them.
#[test]
fn pages_come_from_one_read_while_the_table_changes() {
    let c = Cluster::start(1, &many_services(250), &[]);
    let admin = c.nodes[0].admin;
    let before = c.wait_converged(LIMIT);
    let first = get(admin, "/v1/dataplane?limit=90&snapshot=new").unwrap();
    let id = first["snapshot"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 16, "{id}");
    let mut seen = service_keys(&first);

    // 100 services go away while the client is between two pages.
    write_rules(&c.rules, &many_services(150));
    c.wait_for(LIMIT, "the smaller table applied", || {
        let head = c.wait_converged(LIMIT);
        (head != before).then_some(())
    });
    let fresh = get(admin, "/v1/dataplane?limit=1").unwrap();
    assert_eq!(fresh["total"]["services"], 150, "{}", fresh["total"]);
    assert!(fresh["snapshot"].is_null(), "kept without being asked to");

    let mut offset = first["next_offset"].as_u64();
    let mut last_age = 0;
    while let Some(o) = offset {
        let page = get(
            admin,
            &format!("/v1/dataplane?snapshot={id}&offset={o}&limit=90"),
        )
        .unwrap();
        assert_eq!(page["snapshot"], id.as_str());
        assert_eq!(page["total"]["services"], 250, "a page of another read");
        let age = page["snapshot_age_ms"].as_u64().unwrap();
        assert!(age >= last_age, "{age} after {last_age}");
        last_age = age;
        seen.extend(service_keys(&page));
        offset = page["next_offset"].as_u64();
    }
    let distinct: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(
        (seen.len(), distinct.len()),
        (250, 250),
        "each service once"
    );

    // A read nobody took, and a name that is not one: 410 and 400, as JSON that says why.
    let error = json_error(admin, "/v1/dataplane?snapshot=0123456789abcdef", 410);
    assert!(error.contains("start again with `snapshot=new`"), "{error}");
    let error = json_error(admin, "/v1/dataplane?snapshot=../../etc", 400);
    assert!(error.starts_with("snapshot:"), "{error}");
}

/// The services of [`many_services`], each backend at `weight`.
fn weighted_services(n: usize, weight: u32) -> String {
    many_services(n).replace(
        "address='198.18.1.1'\n",
        &format!("address='198.18.1.1'\nweight={weight}\n"),
    )
}

fn version_of(v: &Value) -> Option<(u64, u64)> {
    Some((v["epoch"].as_u64()?, v["seq"].as_u64()?))
}

/// Every answer describes one instant while the table changes several times a second: a
/// dataplane is never brought to a version newer than the head it is compared with. A read
/// that a reconcile pass overtook paired `version` 100.2 with `head` 100.1 and 100.1's
/// weights, `matches_table` true (a probe: 10-19 of 67-81 answers at 1,000 services).
#[test]
fn each_answer_is_one_instant_while_the_table_changes() {
    let c = Cluster::start(1, &weighted_services(1_000, 1), &[]);
    let admin = c.nodes[0].admin;
    c.wait_converged(LIMIT);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, rules) = (stop.clone(), c.rules.clone());
        std::thread::spawn(move || {
            let mut weight = 2;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                write_rules(&rules, &weighted_services(1_000, weight));
                weight += 1;
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    let start = std::time::Instant::now();
    let (mut answers, mut newer) = (0, Vec::new());
    while start.elapsed() < Duration::from_secs(15) {
        let Some(a) = get(admin, "/v1/dataplane?limit=1") else {
            continue;
        };
        answers += 1;
        if let (Some(v), Some(h)) = (version_of(&a["version"]), version_of(&a["head"])) {
            if v > h {
                newer.push(format!("version {v:?} head {h:?}"));
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = writer.join();
    assert!(answers >= 20, "only {answers} answers");
    assert!(newer.is_empty(), "{} of {answers}: {newer:?}", newer.len());
}
