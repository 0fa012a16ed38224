//! Issue #15 (node side) as a user meets it: real `shoal` processes attacked on loopback.
//! Bad rules files, huge flags, and the admin API's token, timeouts and connection cap.

mod common;

use common::{get, http_get, json_error, rules, write_rules, Cluster};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(30);

/// A GET with extra header lines; (status, body).
fn request(admin: SocketAddr, path: &str, headers: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {admin}\r\n{headers}\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

fn metric(admin: SocketAddr, line_start: &str) -> f64 {
    let (_, body) = http_get(admin, "/metrics").expect("metrics answer");
    body.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Whether the server closes `s` (EOF or reset) within `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 512];
    while start.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

/// Whether the server closed `s` (end of stream or an error), without waiting.
fn is_closed(mut s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 512];
    let closed = match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    s.set_nonblocking(false).unwrap();
    closed
}

/// Issue #15, broken behaviour 5: the node now refuses huge durations at start-up, naming the
/// flag, instead of panicking later inside the reconcile task.
#[test]
fn huge_durations_are_refused_at_start_naming_the_flag() {
    for (flag, field) in [
        ("--resync-interval-s", "resync_interval_s"),
        ("--drain-s", "drain_s"),
    ] {
        let out = std::process::Command::new(common::bin())
            .args(["run", "--insecure", "--node-id", "x", "--rules", "r.toml"])
            .args(["--listen", "127.0.0.1:1", "--admin", "127.0.0.1:1"])
            .args([flag, "18446744073709551615"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(field) && err.contains("outside"), "{err}");
    }
}

/// Issue #15, broken behaviour 4 end to end: an empty file (as `: > rules.toml` leaves it) is
/// refused, the node keeps serving the last table and says why; `no_services = true` empties it.
#[test]
fn an_empty_rules_file_keeps_the_last_table_until_it_says_no_services() {
    let c = Cluster::start(1, &rules(1), &[]);
    let admin = c.nodes[0].admin;
    c.wait_converged(LIMIT);
    std::fs::write(&c.rules, "").unwrap();
    let err = c.wait_for(LIMIT, "the empty file is rejected", || {
        get(admin, "/v1/node")?["source"]["last_error"]
            .as_str()
            .map(str::to_string)
    });
    assert!(err.contains("no_services = true"), "{err}");
    let table = get(admin, "/v1/table").unwrap();
    assert_eq!(table["table"]["services"].as_array().unwrap().len(), 2);
    assert!(metric(admin, "shoal_source_errors_total") >= 1.0);

    write_rules(&c.rules, "no_services = true\n");
    c.wait_for(LIMIT, "the explicitly empty table is published", || {
        let t = get(admin, "/v1/table")?;
        t["table"]["services"].as_array()?.is_empty().then_some(())
    });
}

/// Issue #15: a rules path to /dev/zero grew the publisher to 6.5 GB. Now it is refused
/// without being read, and the node stays small.
#[test]
fn a_rules_path_to_dev_zero_is_refused_without_reading_it() {
    let c = Cluster::start(1, &rules(1), &[]);
    let admin = c.nodes[0].admin;
    c.wait_converged(LIMIT);
    std::fs::remove_file(&c.rules).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &c.rules).unwrap();
    let err = c.wait_for(LIMIT, "/dev/zero is rejected", || {
        get(admin, "/v1/node")?["source"]["last_error"]
            .as_str()
            .map(str::to_string)
    });
    assert!(err.contains("not a regular file"), "{err}");
    std::thread::sleep(Duration::from_secs(2));
    let pid = c.nodes[0].child.as_ref().unwrap().id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(rss_kb < 512 * 1024, "RSS {rss_kb} kB");
    assert_eq!(
        get(admin, "/v1/table").unwrap()["table"]["services"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn the_admin_token_guards_v1_while_probes_and_metrics_stay_open() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    let token = "s3cret-token-0123456789";
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let c = Cluster::start(
        1,
        &rules(1),
        &["--admin-token-file", token_file.to_str().unwrap()],
    );
    let admin = c.nodes[0].admin;
    c.wait_for(LIMIT, "ready", || {
        (http_get(admin, "/readyz")?.0 == 200).then_some(())
    });
    assert_eq!(http_get(admin, "/healthz").unwrap().0, 200);
    assert_eq!(http_get(admin, "/metrics").unwrap().0, 200);
    for path in ["/v1/cluster", "/v1/table", "/v1/dataplane", "/v1/node"] {
        assert_eq!(http_get(admin, path).unwrap().0, 401, "{path}");
        let wrong = request(
            admin,
            path,
            "Authorization: Bearer s3cret-token-0123456780\r\n",
        );
        assert_eq!(wrong.unwrap().0, 401, "{path}");
        let right = request(admin, path, &format!("Authorization: Bearer {token}\r\n"));
        assert_eq!(right.unwrap().0, 200, "{path}");
        // The scheme's name is case-insensitive (RFC 9110); the token is not.
        let lower = request(admin, path, &format!("Authorization: bearer {token}\r\n"));
        assert_eq!(lower.unwrap().0, 200, "{path}");
        let upper = token.to_uppercase();
        let shouted = request(admin, path, &format!("Authorization: BEARER {upper}\r\n"));
        assert_eq!(shouted.unwrap().0, 401, "{path}");
    }
    assert!(metric(admin, "shoal_admin_refused_total{reason=\"unauthorized\"}") >= 8.0);
    // Which paths exist is told only with the token (an unknown one was a 404 without it).
    for path in ["/v1/nothere", "/v2/cluster", "/"] {
        assert_eq!(http_get(admin, path).unwrap().0, 401, "{path}");
        let right = request(admin, path, &format!("Authorization: Bearer {token}\r\n"));
        assert_eq!(right.unwrap().0, 404, "{path}");
    }

    // `shoal status` works with the token and explains the refusal without it.
    let status = |with_token: bool| {
        let mut cmd = std::process::Command::new(common::bin());
        cmd.args(["status", "--output", "json", "--node"])
            .arg(admin.to_string());
        if with_token {
            cmd.arg("--token-file").arg(&token_file);
        }
        cmd.env_remove("SHOAL_ADMIN_TOKEN_FILE").output().unwrap()
    };
    let ok = status(true);
    assert!(ok.status.success(), "{ok:?}");
    let cluster: Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(cluster["node"], "n1");
    let refused = status(false);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("401"), "{err}");

    // A bad token file is blamed on the flag that named it.
    let short = dir.path().join("short");
    std::fs::write(&short, "abc").unwrap();
    let out = std::process::Command::new(common::bin())
        .args(["status", "--node", &admin.to_string(), "--token-file"])
        .arg(&short)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--token-file"),
        "{err}"
    );
    assert!(!err.contains("admin_token_file"), "{err}");

    // A token rotated in its file (a Kubernetes Secret updated in place) is taken without a
    // restart; it was refused until one (an operator's probe). A file that turns invalid
    // keeps the token in use.
    let rotated = "r0tated-token-9876543210";
    std::fs::write(
        &token_file,
        format!(
            "{rotated}
"
        ),
    )
    .unwrap();
    let with = |t: &str| {
        request(
            admin,
            "/v1/node",
            &format!(
                "Authorization: Bearer {t}
"
            ),
        )
    };
    c.wait_for(LIMIT, "the rotated token accepted", || {
        (with(rotated)?.0 == 200).then_some(())
    });
    assert_eq!(with(token).unwrap().0, 401, "the old token still works");
    std::fs::write(&token_file, "short").unwrap();
    std::thread::sleep(shoal_node::admin::TOKEN_RELOAD_EVERY * 2);
    assert_eq!(
        with(rotated).unwrap().0,
        200,
        "an invalid file replaced the token"
    );
    assert!(c.logs().contains("keeping the token in use"));
}

/// Idle and slowloris connections were kept forever; now the header deadline closes them,
/// and past the connection cap new connections are closed at once.
#[test]
fn idle_slow_and_excess_admin_connections_are_closed() {
    let c = Cluster::start(1, &rules(1), &[]);
    let admin = c.nodes[0].admin;
    c.wait_converged(LIMIT);

    // Idle: connects and says nothing.
    let mut idle = TcpStream::connect(admin).unwrap();
    // Slowloris: a byte of headers every second, never finishing.
    let mut slow = TcpStream::connect(admin).unwrap();
    let start = Instant::now();
    let mut slow_closed = None;
    while start.elapsed() < Duration::from_secs(40) {
        if slow.write_all(b"X-Slow: a\r\n").is_err() {
            slow_closed = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let slow_closed = slow_closed.or_else(|| closed_within(&mut slow, Duration::from_secs(1)));
    assert!(
        slow_closed.is_some(),
        "a slowloris connection was kept 40 s"
    );
    let idle_closed = closed_within(&mut idle, Duration::from_secs(40));
    assert!(idle_closed.is_some(), "an idle connection was kept");
    eprintln!(
        "slowloris closed after {slow_closed:?}, idle after at most {:?}",
        start.elapsed()
    );
    assert!(
        metric(
            admin,
            "shoal_admin_refused_total{reason=\"header_timeout\"}"
        ) >= 1.0
    );

    // One source's share: 16 idle connections from 127.0.0.1 hold it, its next is closed at
    // once, and another source is still served (one client holding all 64 slots shut out the
    // kubelet's probes: the audit of 2026-12-06).
    let share = shoal_node::admin::MAX_CONNECTIONS_PER_SOURCE;
    let held: Vec<TcpStream> = (0..share).map(|_| connect_from(1, admin)).collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut extra = connect_from(1, admin);
    assert!(
        closed_within(&mut extra, Duration::from_secs(4)).is_some(),
        "a connection past its source's share was kept"
    );
    assert_eq!(
        healthz_from(2, admin),
        Some(200),
        "another source is shut out"
    );
    // The cap: four sources' shares hold every slot (idle). A fifth source is still served:
    // an idle connection of the largest holder makes way (four addresses holding every slot,
    // reconnecting as the header deadline closed them, kept the kubelet's probe out: a network
    // probe, 2026-12-07).
    let more: Vec<TcpStream> = (2..=4)
        .flat_map(|source| (0..share).map(move |_| connect_from(source, admin)))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        healthz_from(5, admin),
        Some(200),
        "a fifth source is shut out by four holding every slot"
    );
    std::thread::sleep(Duration::from_millis(200));
    let made_way = held.iter().chain(&more).filter(|s| is_closed(s)).count();
    assert_eq!(made_way, 1, "one idle connection makes way, no more");
    drop((held, more));
    // The node sees them closed at once (end of stream while it waits for headers); the
    // pause keeps their slots from counting below.
    std::thread::sleep(Duration::from_secs(1));
    // A source cannot grow past another by evicting it: with 64 sources holding one idle
    // connection each, a second one from any of them is closed at once.
    let one_each: Vec<TcpStream> = (1..=shoal_node::admin::MAX_CONNECTIONS as u8)
        .map(|source| connect_from(source, admin))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut extra = connect_from(7, admin);
    assert!(
        closed_within(&mut extra, Duration::from_secs(4)).is_some(),
        "a connection past the cap was kept"
    );
    drop(one_each);
    c.wait_for(
        LIMIT,
        "the API answers again once the holders are gone",
        || (http_get(admin, "/healthz")?.0 == 200).then_some(()),
    );
    for reason in ["source_cap", "connection_cap", "evicted_idle"] {
        assert!(
            metric(
                admin,
                &format!("shoal_admin_refused_total{{reason=\"{reason}\"}}")
            ) >= 1.0,
            "{reason}"
        );
    }
}

/// A connection to `admin` from 127.0.0.`source`.
fn connect_from(source: u8, admin: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, source], 0)).into())
        .unwrap();
    socket.connect(&admin.into()).unwrap();
    socket.into()
}

/// `GET /healthz` from 127.0.0.`source`: the status, if it answered.
fn healthz_from(source: u8, admin: SocketAddr) -> Option<u16> {
    let mut s = connect_from(source, admin);
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    answer.split_whitespace().nth(1)?.parse().ok()
}

/// Errors are JSON `{"error": ...}` everywhere (docs/admin-api.md), not only from handlers:
/// an unknown path and a method the API does not serve were empty bodies.
#[test]
fn unknown_paths_and_methods_get_json_errors() {
    let c = Cluster::start(1, &rules(1), &[]);
    let admin = c.nodes[0].admin;
    c.wait_converged(LIMIT);
    let error = json_error(admin, "/v1/nothing-here", 404);
    assert!(error.contains("/v1/nothing-here"), "{error}");
    // A method other than GET and HEAD is a 405 on a path the API serves, on one it does not,
    // and for CONNECT, whose target has no path (it was a 404 naming no endpoint).
    for (method, target) in [
        ("DELETE", "/v1/table"),
        ("POST", "/v1/nothing-here"),
        ("CONNECT", "127.0.0.1:22"),
    ] {
        let mut s = TcpStream::connect(admin).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "{method} {target} HTTP/1.0\r\nHost: {admin}\r\n\r\n").unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.0 405"), "{method}: {head}");
        assert!(
            head.to_ascii_lowercase().contains("allow: get,head"),
            "{method}: {head}"
        );
        let error: Value = serde_json::from_str(body).unwrap();
        assert!(
            error["error"].as_str().unwrap().contains(method),
            "{method}: {body}"
        );
    }
}

/// `shoal check | head -1` died with a panic and a backtrace (exit 101) when `head` closed the
/// pipe; the command now ends quietly once its reader has gone.
#[test]
fn a_command_whose_reader_goes_away_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.toml");
    let mut text = String::new();
    for i in 0..20_000 {
        text.push_str(&format!(
            "[[service]]\nname='s{i}'\nvip='203.0.113.1'\nport={}\n[[service.backend]]\naddress='198.18.1.1'\n",
            1 + i
        ));
    }
    write_rules(&path, &text);
    let mut child = std::process::Command::new(common::bin())
        .arg("check")
        .arg("--rules")
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 64];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {err}", out.status);
    assert!(!err.contains("panicked"), "{err}");
}

/// `shoal status`, `shoal table` and `shoal dataplane` read at most `MAX_ANSWER_BYTES` of an
/// answer (an endless one took gigabytes), and refuse an answer of the wrong shape instead of
/// printing it; `shoal dataplane` also refuses pages that never end.
#[test]
fn status_table_and_dataplane_refuse_endless_and_misshapen_answers() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for (i, conn) in listener.incoming().enumerate() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                if i < 3 {
                    // An endless JSON array, as fast as the client reads it.
                    let _ = conn
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n[");
                    let chunk = "1,".repeat(32 * 1024);
                    while conn.write_all(chunk.as_bytes()).is_ok() {}
                } else if i < 6 {
                    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
                } else {
                    // A dataplane page that names itself as the next one, forever.
                    let page = SELF_NAMING_PAGE;
                    let _ = write!(
                        conn,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{page}",
                        page.len()
                    );
                }
            });
        }
    });
    let run = |command: &str| {
        std::process::Command::new(common::bin())
            .args([command, "--node", &addr.to_string()])
            .env_remove("SHOAL_ADMIN_TOKEN_FILE")
            .output()
            .unwrap()
    };
    for command in ["status", "table", "dataplane"] {
        let out = run(command);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{command}: {err}");
        assert!(err.contains("more than"), "{command}: {err}");
    }
    for command in ["status", "table", "dataplane"] {
        let out = run(command);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{command}: {err}");
        assert!(err.contains("unexpected"), "{command}: {err}");
        assert!(out.stdout.is_empty(), "{command} printed {:?}", out.stdout);
    }
    let out = run("dataplane");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("not a Shoal node's paging"), "{err}");
    assert!(out.stdout.is_empty(), "printed {:?}", out.stdout);
}

/// A node that takes the connection and never answers (frozen, starved) is named as such
/// after the 5 s wait, and a closed port asks whether the node runs: an SRE's probe read a
/// bare "operation timed out" as a network problem, and "--node takes the admin address" as
/// the cause when the node was only down.
#[test]
fn a_silent_node_and_a_closed_port_are_told_apart() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let run = |node: std::net::SocketAddr| {
        let out = std::process::Command::new(common::bin())
            .args(["status", "--node", &node.to_string()])
            .env_remove("SHOAL_ADMIN_TOKEN_FILE")
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = run(addr);
    assert!(
        err.contains("did not answer within 5 s") && err.contains("frozen"),
        "{err}"
    );
    drop(silent);
    let err = run(closed);
    assert!(err.contains("is the node running"), "{err}");
}

/// The audit of 2026-12-06: a node whose pages came from a new read each time (another
/// snapshot id per page) had them merged, 40 services listed under a total of 10. Pages of
/// other reads, and pages that do not add up to the read's total, are refused.
#[test]
fn dataplane_pages_of_other_reads_or_not_adding_up_are_refused() {
    let page = |snapshot: &str, services: usize, next: &str| {
        format!(
            r#"{{"kind":"ipvs","snapshot":"{snapshot}","version":null,"head":null,"matches_table":true,"total":{{"services":{services},"destinations":0,"vips":0,"pending_ops":0,"draining":0}},"pending_ops":[],"draining":[],"withheld":[],"vips":[],"services":[],"next_offset":{next}}}"#
        )
    };
    let (a, b) = ("0123456789abcdef", "fedcba9876543210");
    // Two listings, two requests each: the second page of another read; a read whose pages
    // list none of the 3 services its total counts.
    let answers = [
        page(a, 3, "1"),
        page(b, 3, "null"),
        page(a, 3, "1"),
        page(a, 3, "null"),
    ];
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for (conn, body) in listener.incoming().zip(answers) {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    for says in ["not one listing", "list 0 services where its total says 3"] {
        let out = std::process::Command::new(common::bin())
            .args(["dataplane", "--node", &addr.to_string()])
            .env_remove("SHOAL_ADMIN_TOKEN_FILE")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{says}: {err}");
        assert!(out.stdout.is_empty(), "printed {:?}", out.stdout);
    }
}

const SELF_NAMING_PAGE: &str = r#"{"kind":"ipvs","snapshot":"0123456789abcdef","version":null,"head":null,"matches_table":true,"total":{"services":0,"destinations":0,"vips":0,"pending_ops":0,"draining":0},"pending_ops":[],"draining":[],"withheld":[],"vips":[],"services":[],"next_offset":0}"#;

/// `--node` as people give it: a pasted `http://` URL is the address (it became
/// `http://http://...`), a wrong scheme or a path is refused before any request, a server
/// that is not Shoal is said to be one (a 404 page was "did not answer with JSON"), and a
/// refused connection hints at the admin address (the gossip port is UDP).
#[test]
fn node_addresses_as_people_paste_them() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                let _ =
                    conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found");
            });
        }
    });
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let status = |node: &str| {
        let out = std::process::Command::new(common::bin())
            .args(["status", "--node", node])
            .env_remove("SHOAL_ADMIN_TOKEN_FILE")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{node}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = status(&format!("http://{addr}/"));
    assert!(
        err.contains(&format!("http://{addr}/v1/cluster?health=problems: 404")),
        "{err}"
    );
    assert!(err.contains("without a Shoal error"), "{err}");
    assert!(!err.contains("http://http://"), "{err}");
    let err = status(&format!("https://{addr}"));
    assert!(err.contains("plain HTTP"), "{err}");
    let err = status(&format!("{addr}/v1/cluster"));
    assert!(err.contains("has a path"), "{err}");
    let err = status("bogus");
    assert!(err.contains("host:port"), "{err}");
    let err = status(&closed.to_string());
    assert!(err.contains("--admin address"), "{err}");
}

/// A SHOAL_LOG that does not parse was silently replaced by the default, and logs written to
/// a file or a pipe (a container's log) carried colour escape codes.
#[test]
fn a_bad_log_filter_is_said_and_piped_logs_have_no_colour_codes() {
    let out = std::process::Command::new(common::bin())
        .args([
            "run",
            "--single-node",
            "--insecure",
            "--dataplane",
            "memory",
        ])
        .env("SHOAL_LOG", "info,[")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("SHOAL_LOG does not parse"), "{err}");
    assert!(!err.contains('\u{1b}'), "{err:?}");
}

/// An error that embeds its cause's text was printed with the cause once more
/// (`not a regular file (a character device): not a regular file (a character device)`).
#[test]
fn an_error_names_its_cause_once() {
    let out = std::process::Command::new(common::bin())
        .args(["run", "--config", "/dev/zero"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert_eq!(err.matches("not a regular file").count(), 1, "{err}");
}

/// The audit of 2026-12-06: a rules file's key holding an escape sequence (`"\u001b[2J"`, clear
/// the screen) reached the terminal raw through `shoal check`'s error. Everything the CLI
/// prints now has its control characters escaped.
#[test]
fn escape_sequences_in_what_the_cli_prints_are_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "\"\\u001b[2J\\u001b[31mPWNED\\u001b[0m\" = 1\n[[service]]\nname = \"a\"\nvip = \"203.0.113.1\"\nport = 80\n",
    )
    .unwrap();
    let out = std::process::Command::new(common::bin())
        .args(["check", "--rules"])
        .arg(&rules)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("PWNED"), "the key is named: {err}");
    assert!(
        !out.stderr.contains(&0x1b) && !out.stdout.contains(&0x1b),
        "a raw ESC was printed: {err}"
    );
}

/// A rejected rules file was visible only in the publisher's own `/v1/node`: `shoal status`
/// on any other node showed a head that stood still, without a reason. The publisher now
/// gossips its source's problem, and every node's `/v1/cluster` and `shoal status` show it
/// until the input is good again.
#[test]
fn every_node_says_why_the_publisher_rejected_its_input() {
    let c = Cluster::start(2, &rules(1), &[]);
    c.wait_converged(LIMIT);
    let view = get(c.nodes[0].admin, "/v1/cluster").unwrap();
    let publisher = view["publisher"].as_str().unwrap().to_string();
    let follower = c.nodes.iter().find(|n| n.id != publisher).unwrap().admin;
    assert!(view.get("source_error").is_none(), "{view}");
    write_rules(&c.rules, &rules(1).replace("port=80", "port=0"));
    let err = c.wait_for(LIMIT, "the follower shows the publisher's problem", || {
        get(follower, "/v1/cluster")?["source_error"]
            .as_str()
            .map(str::to_string)
    });
    assert!(err.contains("port"), "{err}");
    let out = std::process::Command::new(common::bin())
        .args(["status", "--node", &follower.to_string()])
        .env_remove("SHOAL_ADMIN_TOKEN_FILE")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("input rejected, last good table kept"),
        "{text}"
    );

    write_rules(&c.rules, &rules(2));
    c.wait_for(LIMIT, "the problem clears everywhere", || {
        get(follower, "/v1/cluster")?
            .get("source_error")
            .is_none()
            .then_some(())
    });
}

/// A taken admin port failed the start only after the node had joined the mesh (its peers
/// saw it come and go); the port is now bound before the mesh starts.
#[test]
fn a_taken_admin_port_fails_the_start_before_the_mesh() {
    let dir = tempfile::tempdir().unwrap();
    let rules_path = dir.path().join("rules.toml");
    write_rules(&rules_path, &rules(1));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = taken.local_addr().unwrap();
    let listen = format!("127.0.0.1:{}", common::free_udp_port());
    let out = std::process::Command::new(common::bin())
        .args(["run", "--insecure", "--single-node", "--node-id", "n1"])
        .args(["--dataplane", "memory", "--source", "static", "--rules"])
        .arg(&rules_path)
        .args(["--listen", &listen, "--admin", &admin.to_string()])
        .env("SHOAL_LOG", "info")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("cannot bind the admin API"), "{err}");
    assert!(!err.contains("joined the mesh"), "{err}");
    drop(taken);
}

/// Every metric a node exports is in docs/admin-api.md's reference (most were documented
/// nowhere until an outside audit listed them).
#[test]
fn every_exported_metric_is_documented() {
    let c = Cluster::start(1, &rules(1), &["--single-node"]);
    c.wait_converged(LIMIT);
    let (code, text) = http_get(c.nodes[0].admin, "/metrics").expect("metrics answer");
    assert_eq!(code, 200);
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/admin-api.md"))
            .expect("docs/admin-api.md");
    let mut missing = Vec::new();
    let mut seen = 0;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        seen += 1;
        // The names a scraper sees: counters end in `_total`, info metrics in `_info`.
        let documented = match kind {
            "counter" => format!("`{name}_total`"),
            "info" => format!("`{name}_info`"),
            _ => format!("`{name}`"),
        };
        if !docs.contains(&documented) {
            missing.push(documented);
        }
    }
    assert!(seen >= 30, "only {seen} metric families in:\n{text}");
    assert!(missing.is_empty(), "not in docs/admin-api.md: {missing:?}");
}

/// SIGHUP (`systemctl reload`, logrotate, a closed terminal) ended the node at once, without a
/// word, a withdraw or leaving the mesh: its default action. Now it is logged and ignored.
#[test]
fn sighup_is_logged_and_ignored() {
    let mut c = Cluster::start(1, &rules(1), &[]);
    let admin = c.nodes[0].admin;
    c.wait_for(LIMIT, "ready", || {
        (http_get(admin, "/readyz")?.0 == 200).then_some(())
    });
    c.signal(0, nix::sys::signal::Signal::SIGHUP);
    c.wait_for(LIMIT, "the SIGHUP logged", || {
        c.logs().contains("SIGHUP ignored").then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let exited = c.nodes[0]
        .child
        .as_mut()
        .expect("running")
        .try_wait()
        .unwrap();
    assert_eq!(exited, None, "the node ended on SIGHUP");
    assert_eq!(http_get(admin, "/readyz").unwrap().0, 200);
}

/// `shoal table` prints what `/v1/table` answers, and reads past the 64 MiB the other commands
/// stop at: a table `shoal check` and `shoal run` accept (313,262 services from a 31 MiB rules
/// file) answers 76.7 MB, and `shoal table` refused it (an operator's probe).
#[test]
fn shoal_table_prints_the_answer_even_past_64_mib() {
    let c = Cluster::start(1, &rules(1), &[]);
    let admin = c.nodes[0].admin;
    c.wait_converged(LIMIT);
    let answer = get(admin, "/v1/table").expect("a table");
    let table = |node: &str| {
        std::process::Command::new(common::bin())
            .args(["table", "--node", node])
            .env_remove("SHOAL_ADMIN_TOKEN_FILE")
            .output()
            .unwrap()
    };
    let out = table(&admin.to_string());
    assert!(out.status.success(), "{out:?}");
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, answer);

    // The same answer with its one service copied under other names, past 64 MiB.
    let service = answer["table"]["services"][0].clone();
    let one = serde_json::to_string(&service).unwrap().len();
    let copies = (70 << 20) / one + 1;
    let mut big = answer.clone();
    big["table"]["services"] = Value::Array(
        (0..copies)
            .map(|i| {
                let mut s = service.clone();
                s["name"] = Value::String(format!("svc-{i}"));
                s
            })
            .collect(),
    );
    let body = serde_json::to_vec(&big).unwrap();
    assert!(body.len() > 64 << 20);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((mut conn, _)) = listener.accept() {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(&body);
        }
    });
    let out = table(&addr.to_string());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        printed["table"]["services"].as_array().map(Vec::len),
        Some(copies)
    );
}

/// A follower's rules file is read only when it takes over, so a wrong one waited for a
/// failover to show: a missing one has been named at start (an audit), and one that does not
/// pass the checks is now too (an operator's probe). The start stops at a taken admin port,
/// just after the check.
#[test]
fn a_rules_file_that_fails_the_checks_is_named_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let start = |rules_path: &std::path::Path| {
        let out = std::process::Command::new(common::bin())
            .args(["run", "--insecure", "--single-node", "--node-id", "n1"])
            .args(["--dataplane", "memory", "--source", "static", "--rules"])
            .arg(rules_path)
            .args([
                "--listen",
                &format!("127.0.0.1:{}", common::free_udp_port()),
            ])
            .args(["--admin", &taken.local_addr().unwrap().to_string()])
            .env("SHOAL_LOG", "info")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let good = dir.path().join("good.toml");
    write_rules(&good, &rules(1));
    let bad = dir.path().join("bad.toml");
    write_rules(&bad, &rules(70_000));
    let missing = dir.path().join("missing.toml");
    let err = start(&bad);
    assert!(err.contains("does not pass the checks"), "{err}");
    assert!(err.contains("weight"), "{err}");
    assert!(start(&missing).contains("cannot read the rules file"));
    let err = start(&good);
    assert!(!err.contains("rules file"), "{err}");
}

/// With `--log-format json` a start that fails said so in a plain line, which log pipelines
/// that parse every line dropped (an operator's probe): the last word is a JSON line too.
#[test]
fn with_json_logs_a_failed_start_says_so_in_json() {
    let dir = tempfile::tempdir().unwrap();
    let rules_path = dir.path().join("rules.toml");
    write_rules(&rules_path, &rules(1));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = std::process::Command::new(common::bin())
        .args(["--log-format", "json", "run", "--insecure", "--single-node"])
        .args(["--node-id", "n1", "--dataplane", "memory", "--rules"])
        .arg(&rules_path)
        .args([
            "--listen",
            &format!("127.0.0.1:{}", common::free_udp_port()),
        ])
        .args(["--admin", &taken.local_addr().unwrap().to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for line in err.lines() {
        let parsed: Result<Value, _> = serde_json::from_str(line);
        assert!(parsed.is_ok(), "not JSON: {line}");
    }
    let last: Value = serde_json::from_str(err.lines().last().unwrap_or("null")).unwrap();
    assert_eq!(last["level"], "ERROR", "{err}");
    let why = last["fields"]["error"].as_str().unwrap_or_default();
    assert!(why.contains("cannot bind the admin API"), "{err}");
}

/// The `content-length` of a response's head.
fn content_length(head: &[u8]) -> Option<usize> {
    String::from_utf8_lossy(head)
        .to_ascii_lowercase()
        .lines()
        .find_map(|l| l.strip_prefix("content-length:")?.trim().parse().ok())
}

/// A response still being sent when its connection's lifetime (30 s) ends gets time to finish
/// (`RESPONSE_GRACE`, 60 s): a `/v1/table` of a few MB asked for at 27 s and read slowly was cut
/// 5 s after the lifetime with status 200 already sent, as `/v1/cluster` at 150,000 checked
/// backends was (a probe). An idle connection still closes at the lifetime.
#[test]
fn a_response_in_progress_outlives_the_connection_lifetime() {
    let mut text = String::new();
    for i in 0..16_000u32 {
        text.push_str(&format!(
            "[[service]]\nname = \"service-{i:05}\"\nvip = \"203.0.113.{}\"\nport = {}\n",
            i % 200 + 1,
            1_000 + i / 200
        ));
        for b in 0..4u32 {
            text.push_str(&format!(
                "[[service.backend]]\naddress = \"198.18.{}.{}\"\n",
                i / 250,
                (i % 250) + b
            ));
        }
    }
    let c = Cluster::start(1, &text, &["--single-node"]);
    let admin = c.nodes[0].admin;
    c.wait_for(LIMIT, "the table applied", || {
        let t = get(admin, "/v1/table")?;
        (t["table"]["services"].as_array()?.len() == 16_000).then_some(())
    });
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    // A small receive buffer, so the node's writes wait for this reader.
    socket.set_recv_buffer_size(32 * 1024).unwrap();
    socket.connect(&admin.into()).unwrap();
    let mut s: TcpStream = socket.into();
    let opened = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Kept busy (an idle connection is closed after the header timeout) until near the end of
    // its lifetime.
    while opened.elapsed() < Duration::from_secs(27) {
        write!(s, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut answer = Vec::new();
        let mut byte = [0u8; 1];
        while !answer.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut byte).unwrap(), 1, "closed early");
            answer.push(byte[0]);
        }
        let mut body = vec![0u8; content_length(&answer).unwrap_or(0)];
        s.read_exact(&mut body).unwrap();
        std::thread::sleep(Duration::from_secs(2));
    }
    write!(s, "GET /v1/table HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    // Read 16 KiB every 100 ms (160 KiB/s) until the body is complete or the node closes:
    // more than the node's send buffer (4 MiB at most) is still unsent 5 s past the lifetime.
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let body_len = loop {
        let n = s.read(&mut chunk).unwrap_or(0);
        if n == 0 {
            break None;
        }
        got.extend_from_slice(&chunk[..n]);
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let length = content_length(&got[..end]).expect("a content-length");
            if got.len() >= end + 4 + length {
                break Some(length);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let took = opened.elapsed();
    let length = body_len.unwrap_or_else(|| {
        panic!(
            "the answer was cut after {} bytes, {took:?} after the connection opened",
            got.len()
        )
    });
    assert!(
        length > 4 << 20,
        "a table of {length} bytes fits the node's send buffer: too small to test this"
    );
    assert!(
        took > Duration::from_secs(40),
        "the answer ended {took:?} after the connection opened: not past the lifetime and the 5 s an idle connection gets"
    );
    eprintln!("a {length}-byte table read in full, {took:?} after the connection opened");
}
