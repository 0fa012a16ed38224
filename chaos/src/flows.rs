//! Long-lived flows for the VM lab (`lab-flows`): the byte sequence each connection sends and
//! expects back, the stall tracker, and the report of a run. Pure: bytes, offsets and times in
//! milliseconds come in as arguments; the binary in src/bin/lab-flows/ does the sockets.

use crate::stats::{summarize, Summary};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Byte `offset` of connection `conn`'s sequence: a keyed hash of (conn, offset / 8), so a lost,
/// duplicated or reordered chunk never lines up with the expected bytes again.
pub fn seq_byte(conn: u64, offset: u64) -> u8 {
    let word = splitmix64(conn.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (offset / 8));
    (word >> ((offset % 8) * 8)) as u8
}

/// Fills `buf` with the sequence of `conn` starting at `offset`.
pub fn fill(conn: u64, offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = seq_byte(conn, offset + i as u64);
    }
}

/// Index (within `got`) of the first byte that differs from the sequence at `offset`.
pub fn first_mismatch(conn: u64, offset: u64, got: &[u8]) -> Option<usize> {
    got.iter()
        .enumerate()
        .find(|(i, b)| **b != seq_byte(conn, offset + *i as u64))
        .map(|(i, _)| i)
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The stall of one connection: the longest time it had bytes in flight and received nothing.
/// A healthy connection's stall is about one round trip; a failover shows as one long stall.
#[derive(Debug, Clone, Default)]
pub struct StallTracker {
    sent: u64,
    received: u64,
    /// Since when bytes have been outstanding without progress (ms).
    waiting_since_ms: Option<u64>,
    max_stall_ms: u64,
    /// When the longest finished stall began (ms).
    max_stall_from_ms: u64,
}

impl StallTracker {
    pub fn on_sent(&mut self, bytes: u64, now_ms: u64) {
        if self.sent == self.received && bytes > 0 {
            self.waiting_since_ms = Some(now_ms);
        }
        self.sent += bytes;
    }

    pub fn on_received(&mut self, bytes: u64, now_ms: u64) {
        if bytes == 0 {
            return;
        }
        if let Some(since) = self.waiting_since_ms {
            let stall = now_ms.saturating_sub(since);
            if stall > self.max_stall_ms {
                self.max_stall_ms = stall;
                self.max_stall_from_ms = since;
            }
        }
        self.received += bytes;
        self.waiting_since_ms = (self.received < self.sent).then_some(now_ms);
    }

    /// The stall going on now (0 when nothing is outstanding).
    pub fn current_stall_ms(&self, now_ms: u64) -> u64 {
        self.waiting_since_ms
            .map(|s| now_ms.saturating_sub(s))
            .unwrap_or(0)
    }

    /// The longest stall so far, counting one still going on.
    pub fn max_stall_ms(&self, now_ms: u64) -> u64 {
        self.max_stall_ms.max(self.current_stall_ms(now_ms))
    }

    /// When the longest stall so far began (0: none yet), counting one still going on.
    pub fn max_stall_from_ms(&self, now_ms: u64) -> u64 {
        match self.waiting_since_ms {
            Some(since) if self.current_stall_ms(now_ms) > self.max_stall_ms => since,
            _ => self.max_stall_from_ms,
        }
    }

    pub fn sent(&self) -> u64 {
        self.sent
    }

    pub fn received(&self) -> u64 {
        self.received
    }
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every byte came back in order and the server closed after our close.
    Ok,
    /// Never established (or no greeting from the backend).
    ConnectFailed,
    /// Reset by a peer (a replica without the connection, or a dead backend's host).
    Reset,
    /// Closed by the other side before all bytes came back.
    Eof,
    /// A byte came back that was not the one sent: lost, duplicated or reordered data.
    Corrupt,
    /// Bytes outstanding with no progress until the drain deadline.
    Stuck,
    /// Any other socket error.
    Error,
}

/// One connection's record in a run's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnRecord {
    pub id: u64,
    /// The backend that greeted the connection ("" if none did).
    pub backend: String,
    pub local_port: u16,
    pub outcome: Outcome,
    pub sent: u64,
    pub received: u64,
    pub stall_ms: u64,
    /// Unix time (ms) the longest stall began (which fault caused it); 0 when none.
    #[serde(default)]
    pub stall_from_ms: u64,
    /// Unix time (ms) the connection failed, if it did.
    pub failed_at_ms: Option<u64>,
    pub error: String,
}

/// The report of one `lab-flows run`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowsReport {
    pub label: String,
    pub target: String,
    pub started_ms: u64,
    pub ended_ms: u64,
    pub conns: usize,
    pub ok: usize,
    /// Connections lost, by outcome (everything but `ok`).
    pub lost: BTreeMap<Outcome, usize>,
    /// Connections per backend (all outcomes).
    pub per_backend: BTreeMap<String, usize>,
    /// Stall of each connection that ended ok: p50/p99/max.
    pub stall: Summary,
    pub bytes_verified: u64,
    pub records: Vec<ConnRecord>,
}

impl FlowsReport {
    pub fn new(
        label: &str,
        target: &str,
        started_ms: u64,
        ended_ms: u64,
        records: Vec<ConnRecord>,
    ) -> Self {
        let mut lost = BTreeMap::new();
        let mut per_backend = BTreeMap::new();
        let mut stalls = Vec::new();
        for r in &records {
            *per_backend.entry(r.backend.clone()).or_insert(0) += 1;
            if r.outcome == Outcome::Ok {
                stalls.push(r.stall_ms);
            } else {
                *lost.entry(r.outcome).or_insert(0) += 1;
            }
        }
        FlowsReport {
            label: label.to_string(),
            target: target.to_string(),
            started_ms,
            ended_ms,
            conns: records.len(),
            ok: stalls.len(),
            lost,
            per_backend,
            stall: summarize(&stalls),
            bytes_verified: records.iter().map(|r| r.received).sum(),
            records,
        }
    }

    /// Connections whose backend is not `backend` that did not end ok.
    pub fn lost_excluding_backend(&self, backend: &str) -> usize {
        self.records
            .iter()
            .filter(|r| r.backend != backend && r.outcome != Outcome::Ok)
            .count()
    }

    /// One line for logs and the live view.
    pub fn one_line(&self) -> String {
        let lost: usize = self.lost.values().sum();
        format!(
            "{}: {} conns, {} ok, {} lost {:?}, stall p50 {} ms p99 {} ms max {} ms",
            self.label,
            self.conns,
            self.ok,
            lost,
            self.lost,
            self.stall.p50_ms,
            self.stall.p99_ms,
            self.stall.max_ms
        )
    }
}

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

/// The summary table printed at the end of a lab run: one row per flows report, then one per
/// probe series (new connections) measured from its phase's fault.
pub fn render_summary(
    reports: &[FlowsReport],
    probes: &[(String, Vec<ProbeRecord>)],
    faults: &BTreeMap<String, u64>,
) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:<18} {:>6} {:>6} {:>6} {:>9} {:>9} {:>9}  {}\n",
        "long-lived flows",
        "conns",
        "ok",
        "lost",
        "stall p50",
        "stall p99",
        "stall max",
        "lost by kind"
    ));
    for r in reports {
        let lost: usize = r.lost.values().sum();
        let kinds: Vec<String> = r.lost.iter().map(|(k, n)| format!("{k:?}={n}")).collect();
        out.push_str(&format!(
            "{:<18} {:>6} {:>6} {:>6} {:>6} ms {:>6} ms {:>6} ms  {}\n",
            r.label,
            r.conns,
            r.ok,
            lost,
            r.stall.p50_ms,
            r.stall.p99_ms,
            r.stall.max_ms,
            kinds.join(" ")
        ));
    }
    if !probes.is_empty() {
        out.push_str(&format!(
            "\n{:<26} {:>8} {:>14} {:>22} {:>20}\n",
            "new connections", "attempts", "failed (all)", "failed after fault", "recovered after"
        ));
    }
    for (name, recs) in probes {
        let fault = faults.get(probe_phase(name)).copied().unwrap_or(0);
        let s = summarize_probes(recs, fault);
        let recovered = if s.failed_after_event == 0 {
            "no failure".to_string()
        } else if s.recovered_after_event_ms == u64::MAX {
            "never".to_string()
        } else {
            format!("{} ms", s.recovered_after_event_ms)
        };
        out.push_str(&format!(
            "{:<26} {:>8} {:>14} {:>22} {:>20}\n",
            name, s.attempts, s.failed, s.failed_after_event, recovered
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sequences_differ_per_connection_and_offset() {
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        fill(1, 0, &mut a);
        fill(2, 0, &mut b);
        assert_ne!(a, b);
        fill(1, 8, &mut b);
        assert_ne!(a, b);
        assert_eq!(first_mismatch(1, 0, &a), None);
        // A duplicated chunk (replay of offset 0 at offset 64) is caught.
        assert!(first_mismatch(1, 64, &a).is_some());
    }

    #[test]
    fn stall_is_time_without_progress_while_bytes_are_out() {
        let mut t = StallTracker::default();
        t.on_sent(10, 1000);
        t.on_received(10, 1003);
        assert_eq!(t.max_stall_ms(1003), 3);
        // Idle time with nothing outstanding is no stall.
        assert_eq!(t.max_stall_ms(5000), 3);
        t.on_sent(10, 5000);
        t.on_sent(10, 5050);
        assert_eq!(t.current_stall_ms(5900), 900);
        t.on_received(5, 5900);
        t.on_received(15, 5910);
        assert_eq!(t.max_stall_ms(6000), 900);
        assert_eq!(t.max_stall_from_ms(6000), 5000);
        assert_eq!((t.sent(), t.received()), (30, 30));
    }

    #[test]
    fn report_counts_outcomes_and_backends() {
        let rec = |id, backend: &str, outcome, stall_ms| ConnRecord {
            id,
            backend: backend.into(),
            local_port: 40000 + id as u16,
            outcome,
            sent: 100,
            received: 100,
            stall_ms,
            stall_from_ms: 0,
            failed_at_ms: None,
            error: String::new(),
        };
        let r = FlowsReport::new(
            "t",
            "203.0.113.10:9000",
            0,
            1,
            vec![
                rec(0, "b1", Outcome::Ok, 10),
                rec(1, "b2", Outcome::Ok, 700),
                rec(2, "b2", Outcome::Reset, 0),
                rec(3, "b3", Outcome::Eof, 0),
            ],
        );
        assert_eq!((r.conns, r.ok), (4, 2));
        assert_eq!(r.lost[&Outcome::Reset], 1);
        assert_eq!(r.per_backend["b2"], 2);
        assert_eq!(r.stall.max_ms, 700);
        assert_eq!(r.lost_excluding_backend("b3"), 1);
        assert_eq!(r.lost_excluding_backend("b2"), 1);
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

    #[test]
    fn summary_names_each_phase_and_the_recovery_of_new_connections() {
        let events =
            "1000 kill9 start\n5000 kill9 fault r1\n9000 kill9 end\n20000 backend fault b2\n";
        let faults = fault_times(events);
        assert_eq!(faults["kill9"], 5000);
        assert_eq!(faults["backend"], 20000);
        assert_eq!(probe_phase("backend-probe-nofallback"), "backend");
        let p = |at_ms, ok| ProbeRecord {
            at_ms,
            ok,
            backend: String::new(),
            error: String::new(),
        };
        let probes = vec![
            (
                "backend-probe".to_string(),
                vec![p(19000, true), p(20500, false), p(21000, true)],
            ),
            (
                "backend-probe-nofallback".to_string(),
                vec![p(20500, false)],
            ),
        ];
        let table = render_summary(&[], &probes, &faults);
        assert!(table.contains("1000 ms"), "{table}");
        assert!(table.contains("never"), "{table}");
    }

    proptest! {
        #[test]
        fn any_corruption_is_found(conn in 0u64..1000, offset in 0u64..100_000, at in 0usize..256, flip in 1u8..=255) {
            let mut buf = vec![0u8; 256];
            fill(conn, offset, &mut buf);
            prop_assert_eq!(first_mismatch(conn, offset, &buf), None);
            buf[at] ^= flip;
            prop_assert_eq!(first_mismatch(conn, offset, &buf), Some(at));
        }
    }
}
