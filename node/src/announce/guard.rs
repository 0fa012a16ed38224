//! The watchdog: a small child process (`shoal announce-guard`) that withdraws this node's
//! announcements when shoal can no longer do it itself.
//!
//! Shoal writes one line to the guard's stdin on every announce step (every 100 ms): the VIPs it
//! holds on the L2 interface, or just `beat`. The guard withdraws (deletes Shoal's routes from
//! the BGP table, which makes BIRD withdraw them at once, and removes the L2 addresses) when
//! - no line came for `deadline` (shoal is frozen, e.g. SIGSTOP, or starved): a frozen shoal's
//!   BIRD would otherwise keep its sessions and BFD up and keep attracting traffic;
//! - stdin closes (shoal died, even by kill -9: the kernel closes the pipe).
//!
//! After a deadline withdraw it keeps listening: shoal announces again itself once it has
//! caught up (its own loop sees the stall and holds back first).

use super::l2;
use shoal_dataplane::route::RouteTable;
use std::collections::BTreeSet;
use std::io::BufRead;
use std::net::IpAddr;
use std::sync::mpsc;
use std::time::Duration;

/// What the guard must withdraw.
#[derive(Debug, Clone, Default)]
pub struct GuardTargets {
    pub table: Option<u32>,
    pub interface: Option<String>,
}

/// One line from shoal: the L2 VIPs it holds now (`l2 ip,ip`) or `beat`.
pub fn parse_line(line: &str) -> Option<BTreeSet<IpAddr>> {
    let rest = line.trim().strip_prefix("l2")?.trim();
    Some(
        rest.split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect(),
    )
}

/// The line shoal sends for the L2 VIPs it holds.
pub fn line(l2_held: &BTreeSet<IpAddr>) -> String {
    let list: Vec<String> = l2_held.iter().map(|ip| ip.to_string()).collect();
    format!("l2 {}\n", list.join(","))
}

fn withdraw(targets: &GuardTargets, l2_held: &BTreeSet<IpAddr>, why: &str) {
    if let Some(table) = targets.table {
        match RouteTable::open(table).and_then(|mut t| t.sync(&BTreeSet::new())) {
            Ok(n) => say(format_args!(
                "{why}: withdrew {n} route(s) from table {table}"
            )),
            Err(e) => say(format_args!("{why}: cannot withdraw routes: {e}")),
        }
    }
    if let Some(interface) = &targets.interface {
        match l2::remove_all(interface, l2_held) {
            Ok(n) => say(format_args!("{why}: removed {n} VIP(s) from {interface}")),
            Err(e) => say(format_args!("{why}: cannot remove VIPs: {e}")),
        }
    }
}

/// A line on stderr, if stderr is still there: `eprintln!` would panic without it and end
/// the watchdog, and a later death of shoal would then go unwithdrawn.
fn say(what: std::fmt::Arguments) {
    use std::io::Write;
    // Timed like shoal's own lines, so a withdrawal can be lined up with them (a probe could not).
    let at = crate::rfc3339(std::time::SystemTime::now());
    let _ = writeln!(std::io::stderr(), "{at} shoal-guard: {what}");
}

/// Runs until stdin closes.
pub fn run(targets: GuardTargets, deadline: Duration) {
    let (tx, rx) = mpsc::channel::<Option<String>>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            match line {
                Ok(l) => {
                    if tx.send(Some(l)).is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = tx.send(None);
    });
    let mut held = BTreeSet::new();
    let mut withdrawn = false;
    loop {
        match rx.recv_timeout(deadline) {
            Ok(Some(l)) => {
                if let Some(set) = parse_line(&l) {
                    held = set;
                }
                withdrawn = false;
            }
            Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                withdraw(&targets, &held, "shoal exited");
                return;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if !withdrawn {
                    withdraw(
                        &targets,
                        &held,
                        &format!("no beat from shoal for {} ms", deadline.as_millis()),
                    );
                    withdrawn = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        let set: BTreeSet<IpAddr> = [
            "203.0.113.1".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
        ]
        .into_iter()
        .collect();
        assert_eq!(parse_line(&line(&set)), Some(set));
        assert_eq!(parse_line(&line(&BTreeSet::new())), Some(BTreeSet::new()));
        assert_eq!(parse_line("beat"), None);
    }
}
