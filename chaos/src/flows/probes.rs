//! New connections during a fault (`lab-flows probe`): each attempt's record, what a window of
//! attempts says (refused by a dead backend, or the path failing), when new connections
//! recovered after an event, and the fault times and phases of the lab's files.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// One attempt of `lab-flows probe`: a new connection that must be greeted by a backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeRecord {
    pub at_ms: u64,
    pub ok: bool,
    pub backend: String,
    pub error: String,
}

impl ProbeRecord {
    /// The attempt reached a host with nothing listening: the SYN was answered by a reset.
    /// In the lab that is the killed backend (its kernel still runs): the sign that a director
    /// sent a new connection to it. Timeouts and unreachable networks are the path's failures
    /// (no route while replicas withdraw, a stalled emulated guest), not the backend's.
    pub fn refused(&self) -> bool {
        !self.ok && self.error.contains("Connection refused")
    }
}

/// The probes from `from_ms` on, counted by outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeWindow {
    pub ok: usize,
    pub refused: usize,
    /// Failed otherwise: timeouts, unreachable, greetings that never came.
    pub other_failures: usize,
    /// Backends that greeted at least one attempt.
    pub greeted_by: BTreeSet<String>,
}

pub fn probes_from(records: &[ProbeRecord], from_ms: u64) -> ProbeWindow {
    let mut w = ProbeWindow::default();
    for r in records.iter().filter(|r| r.at_ms >= from_ms) {
        if r.ok {
            w.ok += 1;
            w.greeted_by.insert(r.backend.clone());
        } else if r.refused() {
            w.refused += 1;
        } else {
            w.other_failures += 1;
        }
    }
    w
}

/// One datagram of `lab-flows udp`: a client that keeps its source port (as a DNS forwarder
/// or a syslog sender does) sends one every interval and waits for the backend's echo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatagramRecord {
    pub at_ms: u64,
    pub client_port: u16,
    pub ok: bool,
    /// The backend that echoed it (empty when none did).
    pub backend: String,
    pub error: String,
}

/// What the UDP clients saw from `from_ms` on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatagramWindow {
    pub ok: usize,
    pub failed: usize,
    /// Backends that answered at least one datagram.
    pub answered_by: BTreeSet<String>,
    /// Client ports none of whose datagrams was answered: clients left on a dead backend.
    pub stuck: BTreeSet<u16>,
}

pub fn datagrams_from(records: &[DatagramRecord], from_ms: u64) -> DatagramWindow {
    let mut w = DatagramWindow::default();
    let mut answered: BTreeMap<u16, bool> = BTreeMap::new();
    for r in records.iter().filter(|r| r.at_ms >= from_ms) {
        let seen = answered.entry(r.client_port).or_insert(false);
        if r.ok {
            w.ok += 1;
            *seen = true;
            w.answered_by.insert(r.backend.clone());
        } else {
            w.failed += 1;
        }
    }
    w.stuck = answered
        .into_iter()
        .filter(|(_, ok)| !ok)
        .map(|(port, _)| port)
        .collect();
    w
}

/// The backend each client was on just before `before_ms`: its last answer before then.
pub fn datagram_backends(records: &[DatagramRecord], before_ms: u64) -> BTreeMap<u16, String> {
    let mut out = BTreeMap::new();
    for r in records.iter().filter(|r| r.ok && r.at_ms < before_ms) {
        out.insert(r.client_port, r.backend.clone());
    }
    out
}

/// What a series of probes says about an event at `event_ms`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeSummary {
    pub attempts: usize,
    pub failed: usize,
    pub failed_after_event: usize,
    /// Time from the event to the last failed attempt (0 if none failed after it).
    pub last_failure_after_event_ms: u64,
    /// Time from the event to the first success after the last failure (the outage as new
    /// connections see it); 0 when nothing failed after the event.
    pub recovered_after_event_ms: u64,
}

pub fn summarize_probes(records: &[ProbeRecord], event_ms: u64) -> ProbeSummary {
    let mut s = ProbeSummary {
        attempts: records.len(),
        failed: records.iter().filter(|r| !r.ok).count(),
        ..ProbeSummary::default()
    };
    let after: Vec<&ProbeRecord> = records.iter().filter(|r| r.at_ms >= event_ms).collect();
    s.failed_after_event = after.iter().filter(|r| !r.ok).count();
    if let Some(last_fail) = after.iter().filter(|r| !r.ok).map(|r| r.at_ms).max() {
        s.last_failure_after_event_ms = last_fail - event_ms;
        s.recovered_after_event_ms = after
            .iter()
            .filter(|r| r.ok && r.at_ms > last_fail)
            .map(|r| r.at_ms - event_ms)
            .min()
            .unwrap_or(u64::MAX);
    }
    s
}

/// Fault times from the lab's events file: lines `<unix ms> <phase> fault <who>`.
pub fn fault_times(events: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in events.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        if let [ms, phase, "fault", ..] = w.as_slice() {
            if let Ok(ms) = ms.parse() {
                out.entry(phase.to_string()).or_insert(ms);
            }
        }
    }
    out
}

/// The phase a probe file belongs to: `backend-probe-nofallback` -> `backend`.
pub fn probe_phase(name: &str) -> &str {
    name.split("-probe").next().unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_say_which_clients_stayed_stuck() {
        let d = |at_ms, client_port, backend: &str| DatagramRecord {
            at_ms,
            client_port,
            ok: !backend.is_empty(),
            backend: backend.into(),
            error: if backend.is_empty() {
                "timed out".into()
            } else {
                String::new()
            },
        };
        let recs = vec![
            d(100, 1, "b1"),
            d(100, 2, "b2"),
            d(200, 2, ""),
            d(300, 1, "b1"),
            d(300, 2, ""),
            d(400, 2, "b3"),
        ];
        let before = datagram_backends(&recs, 150);
        assert_eq!(before.get(&2).map(String::as_str), Some("b2"));
        let w = datagrams_from(&recs, 150);
        assert_eq!((w.ok, w.failed), (2, 2));
        assert!(w.stuck.is_empty(), "client 2 was moved to b3");
        let w = datagrams_from(&recs[..5], 150);
        assert_eq!(w.stuck, [2].into());
        assert_eq!(w.answered_by, ["b1".to_string()].into());
    }

    #[test]
    fn probes_say_when_new_connections_recovered() {
        let p = |at_ms, ok| ProbeRecord {
            at_ms,
            ok,
            backend: String::new(),
            error: String::new(),
        };
        let recs = vec![
            p(900, true),
            p(1000, true),
            p(1100, false),
            p(1200, true),
            p(1300, false),
            p(1400, true),
            p(1500, true),
        ];
        let s = summarize_probes(&recs, 1000);
        assert_eq!((s.attempts, s.failed, s.failed_after_event), (7, 2, 2));
        assert_eq!(s.last_failure_after_event_ms, 300);
        assert_eq!(s.recovered_after_event_ms, 400);
        assert_eq!(summarize_probes(&recs, 1350).failed_after_event, 0);
    }

    #[test]
    fn a_window_of_probes_tells_a_refusal_from_the_path_failing() {
        let p = |at_ms, backend: &str, error: &str| ProbeRecord {
            at_ms,
            ok: error.is_empty(),
            backend: backend.into(),
            error: error.into(),
        };
        let recs = vec![
            p(900, "", "connect: Connection refused (os error 111)"),
            p(1000, "b1", ""),
            p(1100, "", "connect: Connection refused (os error 111)"),
            p(1200, "", "connect: timeout"),
            p(1300, "", "connect: Network is unreachable (os error 101)"),
            p(1400, "b3", ""),
            p(1500, "b1", ""),
        ];
        let w = probes_from(&recs, 1000);
        assert_eq!((w.ok, w.refused, w.other_failures), (3, 1, 2));
        assert_eq!(w.greeted_by.iter().collect::<Vec<_>>(), ["b1", "b3"]);
        assert_eq!(probes_from(&recs, 1150).refused, 0);
        assert!(!recs[3].refused() && recs[2].refused() && !recs[1].refused());
    }
}
