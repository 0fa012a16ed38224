//! The lab's plumbing with plain processes: namespaces, bridge, addresses, nftables cuts and
//! loss on the mesh port, stop/continue/kill, and that everything goes away (also on panic)
//! while the root namespace stays exactly as it was. Needs root, `ip` and `nft`: skipped with a
//! SKIPPED line otherwise, unless CI=true, where it must run.

use shoal_chaos::lab::nft::Inbound;
use shoal_chaos::lab::{cleanup, sys, Lab, NodeCommand, NodeSpec};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

fn runnable() -> bool {
    let ok = sys::is_root() && sys::tools_present();
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true but the lab cannot run here (needs root, ip and nft)");
        }
        println!("SKIPPED lab test: needs root, `ip` and `nft` (apt-get install -y --no-install-recommends iproute2 nftables)");
    }
    ok
}

fn sleeper() -> NodeCommand {
    Box::new(|_: &NodeSpec<'_>| (PathBuf::from("sleep"), vec!["600".to_string()]))
}

fn root_state() -> String {
    let link = sys::ip(&["-o", "link", "show"]).unwrap_or_default();
    let addr = sys::ip(&["-o", "addr", "show"]).unwrap_or_default();
    let route = sys::ip(&["route", "show", "table", "all"]).unwrap_or_default();
    format!("{link}\n{addr}\n{route}")
}

/// Sends one datagram from namespace `from_ns` to `to` (bound in `to_ns`); true if it arrived.
fn udp_arrives(from_ns: &str, to_ns: &str, to: SocketAddr) -> bool {
    let to_ns = to_ns.to_string();
    let receiver = std::thread::spawn(move || {
        sys::enter_netns(&to_ns).unwrap();
        let sock = UdpSocket::bind(to).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(400)))
            .unwrap();
        let mut buf = [0u8; 16];
        sock.recv_from(&mut buf).is_ok()
    });
    std::thread::sleep(Duration::from_millis(100));
    let from_ns = from_ns.to_string();
    std::thread::spawn(move || {
        sys::enter_netns(&from_ns).unwrap();
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..3 {
            let _ = sock.send_to(b"ping", to);
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .join()
    .unwrap();
    receiver.join().unwrap()
}

fn proc_state(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit(')')
        .next()
        .and_then(|s| s.trim().chars().next())
        .unwrap_or('?')
}

fn ns_pids(ns: &str) -> Vec<u32> {
    sys::ip(&["netns", "pids", ns])
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[test]
fn lab_builds_cuts_and_cleans_up() {
    if !runnable() {
        return;
    }
    let before = root_state();
    let prefix = format!("sc{}", std::process::id());
    let logs = tempfile::tempdir().unwrap();
    let mut lab = Lab::create(&prefix, 3, logs.path(), sleeper()).unwrap();
    let names = cleanup::list_namespaces();
    for n in ["sw", "ctl", "n1", "n2", "n3"] {
        assert!(
            names.contains(&format!("{prefix}-{n}")),
            "{n} missing in {names:?}"
        );
    }
    for i in 0..3 {
        lab.start(i).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    let n1 = format!("{prefix}-n1");
    let n2 = format!("{prefix}-n2");
    assert_eq!(ns_pids(&n1).len(), 1, "one process in n1");

    // The bridge connects nodes; cuts and loss drop the mesh port only where packets arrive.
    let mesh: SocketAddr = "198.18.0.12:7946".parse().unwrap();
    let other: SocketAddr = "198.18.0.12:7000".parse().unwrap();
    assert!(udp_arrives(&n1, &n2, mesh), "n1 -> n2 over the bridge");
    let cut = Inbound {
        cut_from: vec![lab.addr(0)],
        loss_percent: None,
    };
    lab.set_inbound(1, &cut, 7946).unwrap();
    assert!(
        !udp_arrives(&n1, &n2, mesh),
        "cut n1 -> n2 on the mesh port"
    );
    assert!(udp_arrives(&n1, &n2, other), "other ports still flow");
    assert!(
        udp_arrives(&format!("{prefix}-n3"), &n2, mesh),
        "n3 -> n2 not cut"
    );
    lab.set_inbound(
        1,
        &Inbound {
            cut_from: vec![],
            loss_percent: Some(100),
        },
        7946,
    )
    .unwrap();
    assert!(
        !udp_arrives(&format!("{prefix}-n3"), &n2, mesh),
        "100% loss drops all"
    );
    lab.set_inbound(1, &Inbound::default(), 7946).unwrap();
    assert!(udp_arrives(&n1, &n2, mesh), "healed");
    // The control namespace reaches the nodes too.
    assert!(udp_arrives(lab.ctl_ns(), &n2, mesh), "ctl -> n2");

    // Stop, continue, kill, restart with a new incarnation.
    let pid = ns_pids(&n1)[0];
    lab.freeze(0).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(proc_state(pid), 'T');
    lab.thaw(0).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_ne!(proc_state(pid), 'T');
    lab.kill(0).unwrap();
    assert!(ns_pids(&n1).is_empty());
    lab.start(0).unwrap();
    assert_eq!(lab.incarnation(0), 2);

    drop(lab);
    let names = cleanup::list_namespaces();
    assert!(
        !names.iter().any(|n| n.starts_with(&format!("{prefix}-"))),
        "left: {names:?}"
    );
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists() || proc_state(pid) == 'Z');

    // A panic while the lab exists still removes it.
    let logs2 = logs.path().to_path_buf();
    let prefix2 = prefix.clone();
    let r = std::panic::catch_unwind(move || {
        let mut lab = Lab::create(&prefix2, 2, &logs2, sleeper()).unwrap();
        lab.start(0).unwrap();
        panic!("boom");
    });
    assert!(r.is_err());
    let names = cleanup::list_namespaces();
    assert!(
        !names.iter().any(|n| n.starts_with(&format!("{prefix}-"))),
        "left after panic: {names:?}"
    );

    // Leftovers of a harness that is gone are found and removed.
    sys::ip(&["netns", "add", "sc999999-n1"]).unwrap();
    let removed = cleanup::cleanup_leftovers(false);
    assert!(removed.contains(&"sc999999-n1".to_string()), "{removed:?}");

    assert_eq!(root_state(), before, "root namespace changed");
}
