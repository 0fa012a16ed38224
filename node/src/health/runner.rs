//! The async loop: probe the backends assigned to this node, gossip the opinions, and turn
//! everyone's opinions into verdicts. All decisions are made by the pure modules; this file
//! only moves data between the board, the probes and the watch channels.
//!
//! One pass of the loop, run on probe results, table changes, and at least every
//! `POLL_INTERVAL` (membership and other nodes' keys have no change notification), but no
//! sooner than twice the last pass's duration after it started (`PASS_GAP_FACTOR`):
//! 1. assignments: which backends `assign::checkers` gives this node in the current live view;
//!    new ones are probed at once, dropped ones keep being published (not probed) for a
//!    handover period so the verdict can use them until the new checkers have an opinion;
//! 2. start the probes that are due (one in flight per backend, one per interval);
//! 3. publish per-service values whose opinions or results changed (probe times alone are
//!    refreshed every `REFRESH_INTERVAL`);
//! 4. evaluate verdicts from every live member's values; publish them if they changed.

use super::assign::{backend_key, checkers};
use super::board::HealthBoard;
use super::hysteresis::Hysteresis;
use super::metrics::{HealthMetrics, ProbeLabels};
use super::prober::{LocalFailure, Prober, Target};
use super::report::{self, HealthReport};
use super::result::ProbeResult;
use super::verdict::{evaluate, index_opinions, verdicts_of, BackendRef, Verdict, Verdicts};
use super::wire::{self, Observation};
use crate::log_gate::LogGate;
use crate::table::{HealthCheck, RuleTable};
use crate::unix_ms;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often membership and the other nodes' opinions are re-read.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How often an unchanged value is re-published just to refresh its probe times.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(10);

/// A pass reads every backend of the table: at tens of thousands of backends one takes tens of
/// milliseconds, and with a probe finishing every few microseconds passes ran back to back on
/// a whole core. The next pass starts no sooner than this many times the last one's duration
/// after the last one started (at least [`PASS_GAP_MIN`]), so passes take at most half of the
/// runner's thread; results arriving meanwhile are taken together.
const PASS_GAP_FACTOR: u32 = 2;
/// The floor of that gap. Probes of backends assigned at different moments (every membership
/// change hands some over) finish spread over their interval, so with a floor of 5 ms a node
/// ran a pass per few results: at 900 backends 3.5 ms of CPU each, 100 a second, 36% of a
/// core after a few peer restarts against 15% with the probes still in step (a soak audit saw
/// the thread's CPU grow with the process's age). 50 ms keeps it near 20 passes a second, and
/// adds at most that to a verdict (seconds: `fall` x `interval_ms`).
const PASS_GAP_MIN: Duration = Duration::from_millis(50);

/// Verdict changes logged one by one per pass; more are counted in one line (all of them are
/// in the metric and `/v1/cluster`). 50,000 backends going down at once made 50,000 lines.
const VERDICT_LINES_PER_PASS: usize = 20;

/// One backend this node checks (or recently checked and is handing over).
struct Duty {
    check: HealthCheck,
    hysteresis: Hysteresis,
    last_result: ProbeResult,
    last_probe_ms: u64,
    next_due: Instant,
    in_flight: bool,
    /// Set when this node stopped being a checker; the entry is dropped after the handover.
    released_at: Option<Instant>,
    /// Counts the check's changes of question (probe kind, path, port...): a probe carries the
    /// one it asked, and an answer to an earlier question is not counted.
    question: u64,
}

impl Duty {
    fn observation(&self, b: &BackendRef) -> Observation {
        Observation {
            address: b.address,
            port: b.port,
            state: self.hysteresis.state(),
            last_result: self.last_result,
            last_probe_ms: self.last_probe_ms,
            since_ms: self.hysteresis.since_ms(),
        }
    }

    /// Takes the table's (possibly edited) check for this backend.
    fn adopt(&mut self, check: &HealthCheck, now: Instant) {
        if self.check.probe != check.probe || self.check.port != check.port {
            // A different probe asks a different question: start the opinion over.
            self.hysteresis = Hysteresis::new(unix_ms());
            self.last_result = ProbeResult::Pending;
            self.next_due = now;
            self.question += 1;
        } else if check.interval_ms < self.check.interval_ms {
            // A shorter interval applies now, not after the old one (an hour at most): a
            // backend that died meanwhile would stay up that long.
            let interval = Duration::from_millis(check.interval_ms.max(1));
            self.next_due = self.next_due.min(now + interval);
        }
        self.check = check.clone();
    }

    /// Counts the answer of a probe that asked `question`; `Some(opinion changed)`, or `None`
    /// when the check has changed since the probe started (a timeout of the old HTTP check
    /// arriving after an edit to a TCP check counted as the new check's first failure, so a
    /// backend went down after `fall - 1` of the new check's failures).
    fn observe(&mut self, question: u64, result: ProbeResult, now_ms: u64) -> Option<bool> {
        if question != self.question {
            return None;
        }
        self.last_result = result;
        self.last_probe_ms = now_ms;
        let (rise, fall) = (self.check.rise, self.check.fall);
        Some(
            self.hysteresis
                .observe(result.is_success(), rise, fall, now_ms),
        )
    }

    /// Long enough for a new checker to reach an opinion: max(rise, fall) probes plus one.
    fn handover(&self) -> Duration {
        let probes = self.check.rise.max(self.check.fall).max(1) as u64 + 1;
        Duration::from_millis(self.check.interval_ms.max(1).saturating_mul(probes))
    }
}

struct ProbeDone {
    backend: BackendRef,
    /// The duty's question when the probe started.
    question: u64,
    result: Result<ProbeResult, LocalFailure>,
    elapsed: Duration,
}

/// Probes in flight at once, at most: a quarter of the open-file limit (each probe holds a
/// socket), between 64 and 4,096. 50,000 probes started at once took every descriptor, and
/// the probes that got none failed as if their backends had.
fn max_in_flight() -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1_024, |(soft, _)| soft);
    usize::try_from(soft / 4)
        .unwrap_or(usize::MAX)
        .clamp(64, 4_096)
}

pub(crate) struct Runner {
    pub(crate) k: usize,
    pub(crate) board: Arc<dyn HealthBoard>,
    pub(crate) tables: super::TableFeed,
    pub(crate) metrics: HealthMetrics,
    pub(crate) verdicts_tx: watch::Sender<Arc<Verdicts>>,
    pub(crate) report: Arc<Mutex<Arc<HealthReport>>>,
    pub(crate) cancel: CancellationToken,
}

impl Runner {
    pub(crate) async fn run(mut self) {
        let prober = Arc::new(Prober::new());
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<ProbeDone>();
        let mut duties: BTreeMap<BackendRef, Duty> = BTreeMap::new();
        // By key (a service's chunk): what was last published and when.
        let mut published: BTreeMap<String, (String, Instant)> = BTreeMap::new();
        let mut verdict_since_ms: BTreeMap<BackendRef, u64> = BTreeMap::new();
        let mut current = Arc::new(Verdicts::default());
        let mut tables_open = true;
        let me = self.board.node_id();
        let mut warned: BTreeSet<(String, String)> = BTreeSet::new();
        let max_in_flight = max_in_flight();
        let mut in_flight = 0usize;
        let mut local_failures = LogGate::new(Duration::from_secs(10));

        loop {
            let pass_started = Instant::now();
            let head = self.tables.borrow_and_update().clone();
            let no_table = RuleTable::default();
            let table = head.as_ref().map_or(&no_table, |h| &h.doc);
            let live = self.board.live_members();
            let now = Instant::now();

            // 1. Assignments.
            let mut wanted: BTreeMap<BackendRef, HealthCheck> = BTreeMap::new();
            for service in &table.services {
                let Some(check) = &service.health else {
                    continue;
                };
                for b in &service.backends {
                    let key = backend_key(&service.name, b.address, b.port);
                    if checkers(&key, &live, self.k).contains(&me) {
                        let r = BackendRef {
                            service: service.name.clone(),
                            address: b.address,
                            port: b.port,
                        };
                        wanted.insert(r, check.clone());
                    }
                }
            }
            for (b, check) in &wanted {
                let duty = duties.entry(b.clone()).or_insert_with(|| Duty {
                    check: check.clone(),
                    hysteresis: Hysteresis::new(unix_ms()),
                    last_result: ProbeResult::Pending,
                    last_probe_ms: 0,
                    next_due: now,
                    in_flight: false,
                    released_at: None,
                    question: 0,
                });
                duty.adopt(check, now);
                if duty.released_at.take().is_some() {
                    duty.next_due = now;
                }
            }
            duties.retain(|b, duty| {
                if wanted.contains_key(b) {
                    return true;
                }
                let released = *duty.released_at.get_or_insert(now);
                now.duration_since(released) < duty.handover()
            });

            // 2. Due probes, as many as there is room for: the rest wait for the next pass
            // (their interval stretches; `shoal_health_probes_waiting` says by how many).
            // The longest overdue go first: in table order, the backends at the front took
            // the room again every interval and those at the back were never probed.
            let mut due: Vec<(Instant, BackendRef)> = duties
                .iter()
                .filter(|(_, d)| !d.in_flight && d.released_at.is_none() && d.next_due <= now)
                .map(|(b, d)| (d.next_due, b.clone()))
                .collect();
            let room = max_in_flight.saturating_sub(in_flight);
            let mut waiting = 0;
            if due.len() > room {
                due.select_nth_unstable_by_key(room, |(at, _)| *at);
                waiting = due.len() - room;
                due.truncate(room);
            }
            for (_, b) in due {
                let Some(duty) = duties.get_mut(&b) else {
                    continue;
                };
                in_flight += 1;
                let interval = Duration::from_millis(duty.check.interval_ms.max(1));
                // Keep a steady cadence, but never queue up probes missed while busy.
                duty.next_due = (duty.next_due + interval).max(now);
                if duty.next_due == now {
                    duty.next_due = now + interval;
                }
                duty.in_flight = true;
                let target = Target {
                    address: b.address,
                    port: duty.check.port.unwrap_or(b.port),
                    probe: duty.check.probe.clone(),
                    timeout: Duration::from_millis(duty.check.timeout_ms.max(1)),
                };
                let (prober, tx, backend) = (prober.clone(), done_tx.clone(), b);
                let question = duty.question;
                tokio::spawn(async move {
                    let started = Instant::now();
                    let result = prober.probe(&target).await;
                    let _ = tx.send(ProbeDone {
                        backend,
                        question,
                        result,
                        elapsed: started.elapsed(),
                    });
                });
            }

            self.metrics
                .probes_waiting
                .set(i64::try_from(waiting).unwrap_or(i64::MAX));

            // 3. Publish this node's opinions, one value per service (chunked).
            let mut values: BTreeMap<String, Vec<Observation>> = BTreeMap::new();
            for (b, duty) in &duties {
                values
                    .entry(b.service.clone())
                    .or_default()
                    .push(duty.observation(b));
            }
            // Only a change of opinion or result is news: the probe time alone is refreshed
            // every `REFRESH_INTERVAL`, which keeps gossip quiet while nothing changes.
            let mut fresh: BTreeMap<String, (String, Instant)> = BTreeMap::new();
            let chunked = values.into_iter().flat_map(|(service, observations)| {
                let chunks = wire::chunks(observations).into_iter().enumerate();
                chunks
                    .filter(|(_, chunk)| !chunk.is_empty())
                    .map(move |(i, chunk)| (wire::key_for(&service, i), chunk))
            });
            for (key, observations) in chunked {
                let significant = wire::encode(
                    &observations
                        .iter()
                        .map(|o| Observation {
                            last_probe_ms: 0,
                            ..o.clone()
                        })
                        .collect::<Vec<_>>(),
                );
                let stale = match published.get(&key) {
                    Some((old, at)) => {
                        *old != significant || now.duration_since(*at) >= REFRESH_INTERVAL
                    }
                    None => true,
                };
                if stale {
                    self.board.set_key(&key, &wire::encode(&observations));
                    fresh.insert(key, (significant, now));
                } else if let Some(kept) = published.remove(&key) {
                    fresh.insert(key, kept);
                }
            }
            for key in published.keys() {
                if !fresh.contains_key(key) {
                    self.board.delete_key(key);
                }
            }
            published = fresh;

            // 4. Verdicts from everyone's opinions.
            let raw = self.board.keys(wire::KEY_PREFIX);
            let mut decoded = Vec::with_capacity(raw.len());
            for (node, key, value) in &raw {
                let Some(service) = wire::service_of(key) else {
                    continue;
                };
                match wire::decode(value) {
                    Ok(obs) => decoded.push((node.clone(), service, obs)),
                    Err(error) => {
                        // Once per (node, key): a newer peer would otherwise flood the log.
                        if warned.insert((node.to_string(), key.clone())) {
                            tracing::warn!(%node, %key, %error, "ignoring an unreadable health value");
                        }
                    }
                }
            }
            let opinions = index_opinions(&live, decoded);
            let evaluated = evaluate(table, &live, self.k, &opinions, &current);
            let next = verdicts_of(&evaluated);
            let now_ms = unix_ms();
            let down = next.down().count();
            self.metrics.set_backends(evaluated.len() - down, down);
            let mut judged = BTreeSet::new();
            let mut changes = 0usize;
            for v in &evaluated {
                judged.insert(v.backend.clone());
                let was_down =
                    current.is_down(&v.backend.service, v.backend.address, v.backend.port);
                let is_down = v.verdict == Verdict::Down;
                if was_down != is_down {
                    self.metrics.verdict_changes.inc();
                    changes += 1;
                    if changes <= VERDICT_LINES_PER_PASS {
                        tracing::info!(
                            service = %v.backend.service, backend = %v.backend.address,
                            port = v.backend.port, verdict = ?v.verdict, basis = ?v.basis,
                            "health verdict changed"
                        );
                    }
                    verdict_since_ms.insert(v.backend.clone(), now_ms);
                } else {
                    verdict_since_ms.entry(v.backend.clone()).or_insert(now_ms);
                }
            }
            if changes > VERDICT_LINES_PER_PASS {
                tracing::info!(
                    more = changes - VERDICT_LINES_PER_PASS,
                    "more health verdicts changed in this pass than are logged one by one: \
                     see GET /v1/cluster"
                );
            }
            verdict_since_ms.retain(|b, _| judged.contains(b));
            if next != *current {
                current = Arc::new(next);
                self.verdicts_tx.send_replace(current.clone());
            }
            let built = report::build(&evaluated, &verdict_since_ms);
            *self.report.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(built);

            // 5. Wait for the next reason to run a pass.
            let earliest_due = duties
                .values()
                .filter(|d| !d.in_flight && d.released_at.is_none())
                .map(|d| d.next_due)
                .min();
            let gap = (pass_started.elapsed() * PASS_GAP_FACTOR).max(PASS_GAP_MIN);
            let next_pass = pass_started + gap;
            let wake = earliest_due
                .map_or(now + POLL_INTERVAL, |d| d.min(now + POLL_INTERVAL))
                .max(next_pass);
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                Some(done) = done_rx.recv() => {
                    in_flight = in_flight.saturating_sub(1);
                    self.record(&mut duties, done, &mut local_failures);
                    tokio::select! {
                        _ = self.cancel.cancelled() => break,
                        _ = tokio::time::sleep_until(next_pass) => {}
                    }
                    while let Ok(more) = done_rx.try_recv() {
                        in_flight = in_flight.saturating_sub(1);
                        self.record(&mut duties, more, &mut local_failures);
                    }
                }
                changed = self.tables.changed(), if tables_open => {
                    // The sender is gone: keep the last table until cancelled.
                    tables_open = changed.is_ok();
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
        }

        for key in published.keys() {
            self.board.delete_key(key);
        }
    }

    fn record(
        &self,
        duties: &mut BTreeMap<BackendRef, Duty>,
        done: ProbeDone,
        local_failures: &mut LogGate,
    ) {
        let label = match &done.result {
            Ok(result) => result.label(),
            Err(_) => "local_failure",
        };
        self.metrics
            .probes
            .get_or_create(&ProbeLabels {
                result: label.to_string(),
            })
            .inc();
        self.metrics
            .probe_duration_seconds
            .observe(done.elapsed.as_secs_f64());
        let Some(duty) = duties.get_mut(&done.backend) else {
            return;
        };
        duty.in_flight = false;
        let result = match done.result {
            Ok(result) => result,
            Err(failure) => {
                // No word on the backend: its opinion stands, the next probe is at its usual
                // time. Said at most every 10 s; the metric counts every one.
                if let Some(suppressed) = local_failures.allow(std::time::Instant::now()) {
                    tracing::warn!(
                        %failure, suppressed,
                        "a health probe could not be sent; the backend's state is kept"
                    );
                }
                return;
            }
        };
        if duty.observe(done.question, result, unix_ms()) == Some(true) {
            tracing::debug!(
                service = %done.backend.service, backend = %done.backend.address,
                port = done.backend.port, state = ?duty.hysteresis.state(), %result,
                "checker opinion changed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Probe;

    fn check(probe: Probe, interval_ms: u64) -> HealthCheck {
        HealthCheck {
            probe,
            interval_ms,
            timeout_ms: 500,
            rise: 2,
            fall: 3,
            port: None,
        }
    }

    fn duty(check: HealthCheck, next_due: Instant) -> Duty {
        Duty {
            check,
            hysteresis: Hysteresis::new(0),
            last_result: ProbeResult::Pending,
            last_probe_ms: 0,
            next_due,
            in_flight: false,
            released_at: None,
            question: 0,
        }
    }

    /// An interval lowered from 600 s to 1 s waited out the old 600 s before the next probe.
    #[test]
    fn an_edited_check_takes_effect_at_once() {
        let now = Instant::now();
        let hour = now + Duration::from_secs(600);
        let mut d = duty(check(Probe::Tcp, 600_000), hour);
        d.adopt(&check(Probe::Tcp, 1_000), now);
        assert_eq!(d.next_due, now + Duration::from_secs(1));
        assert_eq!(d.check.interval_ms, 1_000);
        // A longer interval keeps the probe already due (the next one follows the new pace).
        d.adopt(&check(Probe::Tcp, 5_000), now);
        assert_eq!(d.next_due, now + Duration::from_secs(1));
        // A different probe is due at once.
        let http = Probe::Http {
            path: "/".into(),
            expect_status: 200,
            tls: false,
            host: None,
        };
        d.adopt(&check(http, 5_000), now);
        assert_eq!(d.next_due, now);
    }

    /// The audit of 2026-12-06: an HTTP check timing out was edited to a TCP check; the old
    /// probe's timeout, arriving after the edit, was the new check's first failure.
    #[test]
    fn an_answer_to_the_check_before_an_edit_is_not_counted() {
        let now = Instant::now();
        let mut d = duty(check(Probe::Tcp, 1_000), now);
        d.check.fall = 2;
        let asked = d.question;
        assert_eq!(d.observe(asked, ProbeResult::Timeout, 1), Some(false));
        // Edited: another port is another question.
        let mut other_port = check(Probe::Tcp, 1_000);
        other_port.fall = 2;
        other_port.port = Some(9);
        d.adopt(&other_port, now);
        assert_eq!(d.last_result, ProbeResult::Pending);
        assert_eq!(d.observe(asked, ProbeResult::Timeout, 2), None);
        assert_eq!(d.last_result, ProbeResult::Pending);
        // The new check's own failures count from zero: two make it down.
        assert_eq!(d.observe(d.question, ProbeResult::Refused, 3), Some(false));
        assert_eq!(d.observe(d.question, ProbeResult::Refused, 4), Some(true));
        assert_eq!(
            d.hysteresis.state(),
            super::super::hysteresis::CheckState::Down
        );
    }
}
