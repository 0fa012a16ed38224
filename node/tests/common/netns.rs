//! Network namespaces for the root-only lab tests (`announce_lab`, `source_ranges.rs`): running
//! `ip`, making a namespace and putting addresses on an interface, one way for every lab.
#![allow(dead_code)]

use std::process::{Command, Stdio};

/// Runs a command, panics with its output when it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Like [`sh`] but ignores failures (cleanup).
pub fn sh_quiet(args: &[&str]) {
    let _ = Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

pub fn have_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// A new namespace `ns` with loopback up, IPv6 addresses usable at once (no duplicate address
/// detection) and no reverse-path filter.
pub fn add_ns(ns: &str) {
    sh(&["ip", "netns", "add", ns]);
    for kv in [
        "net.ipv6.conf.all.accept_dad=0",
        "net.ipv6.conf.default.accept_dad=0",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
    ] {
        sh(&["ip", "netns", "exec", ns, "sysctl", "-qw", kv]);
    }
    sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
}

/// Puts `v4` and `v6` (each with its prefix length: `198.18.1.11/24`) on `dev` in `ns` and
/// brings `dev` up.
pub fn add_addrs(ns: &str, dev: &str, v4: &str, v6: &str) {
    sh(&["ip", "-n", ns, "addr", "add", v4, "dev", dev]);
    sh(&["ip", "-n", ns, "addr", "add", v6, "dev", dev, "nodad"]);
    sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
}
