//! The report of a `lab-flows run` (how each connection ended, counted per outcome and per
//! backend, with the stalls of those that ended ok), and the summary table printed at the end of
//! a lab run, which puts those reports next to the probe series (`probes.rs`).

use super::probes::{probe_phase, summarize_probes, ProbeRecord};
use crate::stats::{summarize, Summary};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
    use crate::flows::probes::fault_times;
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
}
