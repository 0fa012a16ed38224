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
}
