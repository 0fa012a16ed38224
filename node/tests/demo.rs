//! The README's first command: `shoal demo` walks through convergence, takeover, an edit and a
//! restart (which leaves the role where it is), and exits cleanly with `--exit-after`.

use std::process::Command;

#[test]
fn the_demo_runs_its_walkthrough() {
    let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["demo", "--exit-after", "--base-port", "19500"])
        .output()
        .expect("run shoal demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    for step in [
        "converged in",
        "took over in",
        "reached every live node",
        "rejoined and every node applied the head",
        // Sticky publisher: node-1's restart does not move the role back.
        "settled: node-2 still publishes (sticky)",
        "publisher:   node-2",
    ] {
        assert!(stdout.contains(step), "missing {step:?} in:\n{stdout}");
    }
    // It stops next: no invitation to try the nodes or edit the rules file (a probe).
    assert!(!stdout.contains("edit it and watch"), "{stdout}");
}

/// The audit of 2026-12-06: SIGTERM or SIGHUP to the demo (or Ctrl-C in its first seconds)
/// left its nodes running under init, holding their ports, and its workspace (with the CA
/// key) on disk. Now a signal at any moment stops the nodes and removes the workspace.
#[test]
fn a_signal_during_the_walkthrough_stops_the_nodes_and_removes_the_workspace() {
    use std::time::{Duration, Instant};
    let base = 19560u16;
    let (mut demo, lines, workspace) = start_demo(base);
    let admin = |i: u16| std::net::SocketAddr::from(([127, 0, 0, 1], base + 40 + i));
    // Signal once the first node's admin API answers: the nodes are up, the walkthrough is not
    // done.
    let start = Instant::now();
    while std::net::TcpStream::connect(admin(0)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "node-1 never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(demo.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = demo.wait().unwrap();
    assert!(
        rest.iter()
            .any(|l| l.contains("SIGTERM: stopping the nodes")),
        "{rest:?}"
    );
    // Signalled before its end (the usual case), the walkthrough is a failure; a machine
    // fast enough to finish it first makes it the normal stop of a finished demo.
    let finished = rest.iter().any(|l| l.contains("Running until Ctrl-C"));
    assert_eq!(status.success(), finished, "{rest:?}");
    for i in 0..3 {
        assert!(
            std::net::TcpStream::connect(admin(i)).is_err(),
            "node-{} still answers after the demo ended",
            i + 1
        );
    }
    assert!(!workspace.exists(), "{} left behind", workspace.display());
}

/// A demo killed with SIGKILL runs none of its clean-up: its nodes ran on under init, holding
/// the ports the next demo wants (an operator's probe). Each node now gets a SIGTERM from the
/// kernel when the demo is gone (`setpriv --pdeathsig`, util-linux, which CI installs).
#[test]
fn a_demo_killed_with_sigkill_takes_its_nodes_with_it() {
    use std::time::{Duration, Instant};
    let base = 19620u16;
    let (mut demo, _, workspace) = start_demo(base);
    let admin = |i: u16| std::net::SocketAddr::from(([127, 0, 0, 1], base + 40 + i));
    let start = Instant::now();
    while (0..3).any(|i| std::net::TcpStream::connect(admin(i)).is_err()) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the nodes never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    demo.kill().unwrap();
    demo.wait().unwrap();
    let killed = Instant::now();
    while (0..3).any(|i| std::net::TcpStream::connect(admin(i)).is_ok()) {
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "a node still answers 15 s after its demo was killed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The workspace is the demo's to remove, and a SIGKILL leaves it: this test does.
    let _ = std::fs::remove_dir_all(workspace);
}

/// `shoal demo` on `base`, read up to the line that says its nodes are started: the demo, the
/// rest of its output and its workspace.
fn start_demo(
    base: u16,
) -> (
    std::process::Child,
    std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    std::path::PathBuf,
) {
    use std::io::{BufRead, BufReader};
    let mut demo = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["demo", "--base-port", &base.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start shoal demo");
    let mut lines = BufReader::new(demo.stdout.take().unwrap()).lines();
    let mut workspace = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(dir) = line.strip_prefix("==> workspace ") {
            workspace = Some(std::path::PathBuf::from(dir));
        }
        if line.starts_with("==> started") {
            break;
        }
    }
    (
        demo,
        lines,
        workspace.expect("the demo names its workspace"),
    )
}
