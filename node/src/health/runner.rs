//! The async loop: probe the backends assigned to this node, gossip the opinions, and turn
//! everyone's opinions into verdicts. All decisions are made by the pure modules; this file
//! only moves data between the board, the probes and the watch channels.
//!
//! One pass of the loop, run on probe results, table changes, and at least every
//! `POLL_INTERVAL` (membership and other nodes' keys have no change notification), but no
//! sooner than twice the last pass's duration after it started (`PASS_GAP_FACTOR`):
//! 1. assignments: which backends `assign::checkers` gives this node in the current live view
//!    (worked out again only when the table or the live set changed); new ones are probed at
//!    once, dropped ones keep being published (not probed) for a handover period so the
//!    verdict can use them until the new checkers have an opinion;
//! 2. start the probes that are due (one in flight per backend, one per interval);
//! 3. publish per-service values whose opinions or results changed (probe times alone are
//!    refreshed every `REFRESH_INTERVAL`; a value is encoded only when it is sent);
//! 4. judge again the services whose gossiped values moved (values are decoded when they
//!    change: `gossiped`), or every service when the live set or the table changed or the last
//!    pass changed a verdict (`judged`); publish the verdicts if they changed. The admin API's
//!    report is built from the kept verdicts when it is asked for.

use super::assign::Assignment;
use super::board::HealthBoard;
use super::duty::Duty;
use super::gossiped::GossipedValues;
use super::judged::{Judged, JudgedService};
use super::metrics::{HealthMetrics, ProbeLabels};
use super::prober::{LocalFailure, Prober, Target};
use super::result::ProbeResult;
use super::returns::Returns;
use super::verdict::{index_opinions, verdicts_of, BackendRef, Verdicts};
use super::wire::{self, Observation};
use crate::log_gate::LogGate;
use crate::table::{HealthCheck, RuleTable};
use crate::unix_ms;
use std::collections::{BTreeMap, BTreeSet, HashMap};
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

/// The time a probe waits for its answer: the check's `timeout_ms`, at least
/// [`crate::validate::HEALTH_TIMEOUT_MS_MIN`] (1 ms flapped a healthy backend: a probe).
fn probe_timeout_ms(timeout_ms: u64) -> u64 {
    timeout_ms.max(crate::validate::HEALTH_TIMEOUT_MS_MIN)
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
    pub(crate) judged: Arc<Mutex<Arc<Judged>>>,
    pub(crate) cancel: CancellationToken,
}

impl Runner {
    pub(crate) async fn run(mut self) {
        let prober = Arc::new(Prober::new());
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<ProbeDone>();
        let mut duties: BTreeMap<BackendRef, Duty> = BTreeMap::new();
        // By key (a service's chunk): what was last published and when.
        let mut published: BTreeMap<String, (Vec<Observation>, Instant)> = BTreeMap::new();
        let mut current = Arc::new(Verdicts::default());
        let mut tables_open = true;
        let me = self.board.node_id();
        let mut warned: BTreeSet<(String, String)> = BTreeSet::new();
        let max_in_flight = max_in_flight();
        let mut in_flight = 0usize;
        let mut local_failures = LogGate::new(Duration::from_secs(10));
        // Probes waiting for room: said at most once a minute (the metric has every pass).
        let mut behind = LogGate::new(Duration::from_secs(60));
        // What the last pass worked from, so that a pass redoes only what its inputs changed:
        // the checkers of each backend (kept while the live set stays), the backends this node
        // checks (while the table and the live set stay), the decoded opinions (per value).
        let mut assignment = Assignment::default();
        let mut last_head = None;
        let mut wanted: BTreeMap<BackendRef, HealthCheck> = BTreeMap::new();
        let mut gossiped = GossipedValues::default();
        // The verdicts by service, and where each health-checked service is in the table.
        let mut by_service: BTreeMap<String, Arc<JudgedService>> = BTreeMap::new();
        let mut positions: HashMap<String, usize> = HashMap::new();
        let mut judge_again = true;
        let no_table = RuleTable::default();
        // Members back after this node saw them gone: their opinions from before do not count.
        let mut returns = Returns::default();

        loop {
            let pass_started = Instant::now();
            let head = self.tables.borrow_and_update().clone();
            let table = head.as_ref().map_or(&no_table, |h| &h.doc);
            let live = self.board.live_members();
            returns.follow(&live, unix_ms());
            let now = Instant::now();
            let roster_changed = assignment.follow(&live, self.k);
            let table_changed = !same_head(&head, &last_head);
            last_head = head.clone();

            // 1. Assignments: which backends this node checks moves only with the table and
            // the live set.
            if table_changed || roster_changed {
                wanted = checked_here(table, &mut assignment, &me);
                for (b, check) in &wanted {
                    let duty = duties
                        .entry(b.clone())
                        .or_insert_with(|| Duty::new(check.clone(), now));
                    duty.adopt(check, now);
                    if duty.released_at.take().is_some() {
                        duty.next_due = now;
                    }
                }
            }
            let mut forgotten = 0;
            // Not the duties being handed over: they are not probed any more, and their opinion
            // serves until the new checkers have theirs (it was dropped before the handover
            // ended whenever rise > fall, with a line blaming a freeze: a probe).
            for duty in duties.values_mut().filter(|d| d.released_at.is_none()) {
                forgotten += usize::from(duty.forget_if_stale(now));
            }
            if forgotten > 0 {
                tracing::info!(
                    forgotten,
                    "health opinions that took no answer for longer than their checks' fall window started over (this process was frozen or starved, or their probes began to wait for room)"
                );
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
                if let Some(suppressed) = behind.allow(now.into_std()) {
                    let overdue = due.iter().map(|(at, _)| now.saturating_duration_since(*at));
                    tracing::warn!(
                        waiting,
                        in_flight_max = max_in_flight,
                        overdue_ms = overdue.max().unwrap_or_default().as_millis() as u64,
                        suppressed,
                        "health checks are behind: more probes are due than this node runs at once, so their intervals stretch and a dead backend takes longer to go down (fewer checked backends, longer intervals, more replicas or a higher open-file limit catch up)"
                    );
                }
            }
            for (_, b) in due {
                let Some(duty) = duties.get_mut(&b) else {
                    continue;
                };
                in_flight += 1;
                duty.start(now);
                let target = Target {
                    address: b.address,
                    port: duty.check.port.unwrap_or(b.port),
                    probe: duty.check.probe.clone(),
                    timeout: Duration::from_millis(probe_timeout_ms(duty.check.timeout_ms)),
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

            // 3. Publish this node's opinions, one value per service (chunked). Only a change of
            // opinion or result is news: the probe time alone is refreshed every
            // `REFRESH_INTERVAL`, which keeps gossip quiet while nothing changes. A value is
            // encoded only when it is sent.
            let mut fresh: BTreeMap<String, (Vec<Observation>, Instant)> = BTreeMap::new();
            for (service, observations) in observations_by_service(&duties) {
                for (i, chunk) in wire::chunks(observations).into_iter().enumerate() {
                    if chunk.is_empty() {
                        continue;
                    }
                    let key = wire::key_for(service, i);
                    let stale = match published.get(&key) {
                        Some((old, at)) => {
                            !same_but_probe_times(old, &chunk)
                                || now.duration_since(*at) >= REFRESH_INTERVAL
                        }
                        None => true,
                    };
                    if stale {
                        self.board.set_key(&key, &wire::encode(&chunk));
                        fresh.insert(key, (chunk, now));
                    } else if let Some(kept) = published.remove(&key) {
                        fresh.insert(key, kept);
                    }
                }
            }
            for key in published.keys() {
                if !fresh.contains_key(key) {
                    self.board.delete_key(key);
                }
            }
            published = fresh;

            // 4. Verdicts from everyone's opinions: of every service when the live set or the
            // table changed, else of the services whose gossiped values moved (a service's
            // verdicts depend on nothing else). A pass that changed a verdict is followed by one
            // judging everything (rule step 3 reads the previous verdicts), after which the same
            // inputs give the same verdicts.
            let read = self.board.keys(wire::KEY_PREFIX);
            let moved = gossiped.update(read, |node, key, error| {
                // Once per (node, key): a newer peer would otherwise flood the log.
                if warned.insert((node.to_string(), key.to_string())) {
                    tracing::warn!(%node, %key, %error, "ignoring an unreadable health value");
                }
            });
            let everything = roster_changed || table_changed || judge_again;
            if everything || !moved.is_empty() {
                if table_changed {
                    positions = table
                        .services
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| s.health.is_some())
                        .map(|(i, s)| (s.name.clone(), i))
                        .collect();
                }
                let fresh = |(node, service, said)| {
                    let said = returns.fresh(&node, said);
                    (node, service, said)
                };
                let (opinions, names): (_, Vec<&String>) = if everything {
                    let opinions = index_opinions(&live, gossiped.opinions().map(fresh));
                    by_service.retain(|name, _| positions.contains_key(name));
                    (opinions, positions.keys().collect())
                } else {
                    let opinions = index_opinions(&live, gossiped.opinions_of(&moved).map(fresh));
                    let names = moved.iter().filter(|n| positions.contains_key(*n));
                    (opinions, names.collect())
                };
                let now_ms = unix_ms();
                let mut changes = 0usize;
                for name in names {
                    let service = &table.services[positions[name]];
                    let before = by_service.get(name).map(Arc::as_ref);
                    let (judged, changed) = JudgedService::judge(
                        service,
                        &mut assignment,
                        &opinions,
                        &current,
                        before,
                        now_ms,
                    );
                    for v in changed.iter().map(|&i| &judged.verdicts[i]) {
                        self.metrics.verdict_changes.inc();
                        changes += 1;
                        if changes <= VERDICT_LINES_PER_PASS {
                            tracing::info!(
                                service = %v.backend.service, backend = %v.backend.address,
                                port = v.backend.port, verdict = ?v.verdict, basis = ?v.basis,
                                "health verdict changed"
                            );
                        }
                    }
                    by_service.insert(name.clone(), Arc::new(judged));
                }
                if table_changed {
                    assignment.sweep();
                }
                if changes > VERDICT_LINES_PER_PASS {
                    tracing::info!(
                        more = changes - VERDICT_LINES_PER_PASS,
                        "more health verdicts changed in this pass than are logged one by one: \
                         see GET /v1/cluster"
                    );
                }
                let all = by_service.values().flat_map(|j| j.verdicts.iter());
                let next = verdicts_of(all.clone());
                let down = next.down().count();
                self.metrics.set_backends(all.count() - down, down);
                judge_again = next != *current;
                if judge_again {
                    current = Arc::new(next);
                    self.verdicts_tx.send_replace(current.clone());
                }
                let judged = Judged {
                    services: by_service.values().cloned().collect(),
                };
                *self.judged.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(judged);
            }

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
            // Counted after a stall: the opinion stands (and starts over if stale).
            Ok(result) if duty.answered_too_late(result, done.elapsed) => return,
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

/// Each service's observations by this node, from its duties (sorted by service, so one walk).
fn observations_by_service(duties: &BTreeMap<BackendRef, Duty>) -> Vec<(&str, Vec<Observation>)> {
    let mut out: Vec<(&str, Vec<Observation>)> = Vec::new();
    for (b, duty) in duties {
        match out.last_mut() {
            Some((service, observations)) if *service == b.service => {
                observations.push(duty.observation(b));
            }
            _ => out.push((&b.service, vec![duty.observation(b)])),
        }
    }
    out
}

/// Whether two values say the same but for when their probes finished.
fn same_but_probe_times(a: &[Observation], b: &[Observation]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(a, b)| {
            Observation {
                last_probe_ms: b.last_probe_ms,
                ..a.clone()
            } == *b
        })
}

/// Whether two heads are the same table (the same shared document, not an equal one: a new
/// head is a pass's cue to read the table again).
fn same_head(
    a: &Option<Arc<shoal_gossip::Stamped<RuleTable>>>,
    b: &Option<Arc<shoal_gossip::Stamped<RuleTable>>>,
) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// The backends of `table` with a health check whose checkers in the live set `assignment`
/// follows include `me`, with their checks.
fn checked_here(
    table: &RuleTable,
    assignment: &mut Assignment,
    me: &shoal_gossip::version::NodeId,
) -> BTreeMap<BackendRef, HealthCheck> {
    let mut wanted = BTreeMap::new();
    for service in &table.services {
        let Some(check) = &service.health else {
            continue;
        };
        for b in &service.backends {
            let backend = BackendRef {
                service: service.name.clone(),
                address: b.address,
                port: b.port,
            };
            if assignment.checkers(&backend).contains(me) {
                wanted.insert(backend, check.clone());
            }
        }
    }
    wanted
}

#[cfg(test)]
mod tests {
    use super::super::duty::tests::check;
    use super::*;
    use crate::table::Probe;

    fn duty(check: HealthCheck, next_due: Instant) -> Duty {
        Duty::new(check, next_due)
    }

    fn backend(service: &str, last: u8) -> BackendRef {
        BackendRef {
            service: service.into(),
            address: std::net::IpAddr::from([198, 18, 0, last]),
            port: 80,
        }
    }

    /// Services whose names extend one another stay apart, each with its own backends in order.
    #[test]
    fn observations_are_grouped_by_service() {
        let now = Instant::now();
        let duties: BTreeMap<BackendRef, Duty> = [
            backend("web", 2),
            backend("web-2", 1),
            backend("web", 1),
            backend("db", 9),
        ]
        .into_iter()
        .map(|b| (b, duty(check(Probe::Tcp, 1_000), now)))
        .collect();
        let grouped: Vec<(&str, Vec<u8>)> = observations_by_service(&duties)
            .into_iter()
            .map(|(s, o)| {
                let lasts = o.iter().map(|o| match o.address {
                    std::net::IpAddr::V4(a) => a.octets()[3],
                    std::net::IpAddr::V6(_) => 0,
                });
                (s, lasts.collect())
            })
            .collect();
        assert_eq!(
            grouped,
            [("db", vec![9]), ("web", vec![1, 2]), ("web-2", vec![1])]
        );
    }

    /// A value whose probe times alone moved is not news; any other field is.
    #[test]
    fn only_probe_times_are_not_news() {
        let now = Instant::now();
        let b = backend("web", 1);
        let mut d = duty(check(Probe::Tcp, 1_000), now);
        let before = vec![d.observation(&b)];
        d.last_probe_ms = 99;
        assert!(same_but_probe_times(&before, &[d.observation(&b)]));
        d.last_result = ProbeResult::Refused;
        assert!(!same_but_probe_times(&before, &[d.observation(&b)]));
        assert!(!same_but_probe_times(&before, &[]));
    }

    #[test]
    fn a_probe_waits_at_least_the_floor() {
        assert_eq!(probe_timeout_ms(1), 50);
        assert_eq!(probe_timeout_ms(49), 50);
        assert_eq!(probe_timeout_ms(500), 500);
    }
}
