//! The async loop: probe the backends assigned to this node, gossip the opinions, and turn
//! everyone's opinions into verdicts. All decisions are made by the pure modules; this file
//! only moves data between the board, the probes and the watch channels.
//!
//! One pass of the loop, run on every probe result, table change, and at least every
//! `POLL_INTERVAL` (membership and other nodes' keys have no change notification):
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
use super::prober::{Prober, Target};
use super::report::{self, HealthReport};
use super::result::ProbeResult;
use super::verdict::{evaluate, index_opinions, verdicts_of, BackendRef, Verdict, Verdicts};
use super::wire::{self, Observation};
use crate::table::{HealthCheck, RuleTable};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often membership and the other nodes' opinions are re-read.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How often an unchanged value is re-published just to refresh its probe times.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(10);

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

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
        if self.check.probe != check.probe {
            // A different probe asks a different question: start the opinion over.
            self.hysteresis = Hysteresis::new(unix_ms());
            self.next_due = now;
        } else if check.interval_ms < self.check.interval_ms {
            // A shorter interval applies now, not after the old one (an hour at most): a
            // backend that died meanwhile would stay up that long.
            let interval = Duration::from_millis(check.interval_ms.max(1));
            self.next_due = self.next_due.min(now + interval);
        }
        self.check = check.clone();
    }

    /// Long enough for a new checker to reach an opinion: max(rise, fall) probes plus one.
    fn handover(&self) -> Duration {
        let probes = self.check.rise.max(self.check.fall).max(1) as u64 + 1;
        Duration::from_millis(self.check.interval_ms.max(1).saturating_mul(probes))
    }
}

struct ProbeDone {
    backend: BackendRef,
    result: ProbeResult,
    elapsed: Duration,
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
        let mut published: BTreeMap<String, (String, Instant)> = BTreeMap::new();
        let mut verdict_since_ms: BTreeMap<BackendRef, u64> = BTreeMap::new();
        let mut current = Arc::new(Verdicts::default());
        let mut tables_open = true;
        let me = self.board.node_id();
        let mut warned: BTreeSet<(String, String)> = BTreeSet::new();

        loop {
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

            // 2. Due probes.
            for (b, duty) in duties.iter_mut() {
                if duty.in_flight || duty.released_at.is_some() || duty.next_due > now {
                    continue;
                }
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
                let (prober, tx, backend) = (prober.clone(), done_tx.clone(), b.clone());
                tokio::spawn(async move {
                    let started = Instant::now();
                    let result = prober.probe(&target).await;
                    let _ = tx.send(ProbeDone {
                        backend,
                        result,
                        elapsed: started.elapsed(),
                    });
                });
            }

            // 3. Publish this node's opinions, one value per service.
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
            for (service, observations) in values {
                let significant = wire::encode(
                    &observations
                        .iter()
                        .map(|o| Observation {
                            last_probe_ms: 0,
                            ..o.clone()
                        })
                        .collect::<Vec<_>>(),
                );
                let stale = match published.get(&service) {
                    Some((old, at)) => {
                        *old != significant || now.duration_since(*at) >= REFRESH_INTERVAL
                    }
                    None => true,
                };
                if stale {
                    self.board
                        .set_key(&wire::key_for(&service), &wire::encode(&observations));
                    fresh.insert(service, (significant, now));
                } else if let Some(kept) = published.remove(&service) {
                    fresh.insert(service, kept);
                }
            }
            for service in published.keys() {
                if !fresh.contains_key(service) {
                    self.board.delete_key(&wire::key_for(service));
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
            let mut judged = BTreeSet::new();
            for v in &evaluated {
                judged.insert(v.backend.clone());
                let was_down =
                    current.is_down(&v.backend.service, v.backend.address, v.backend.port);
                let is_down = v.verdict == Verdict::Down;
                if was_down != is_down {
                    self.metrics.verdict_changes.inc();
                    tracing::info!(
                        service = %v.backend.service, backend = %v.backend.address,
                        port = v.backend.port, verdict = ?v.verdict, basis = ?v.basis,
                        "health verdict changed"
                    );
                    verdict_since_ms.insert(v.backend.clone(), now_ms);
                } else {
                    verdict_since_ms.entry(v.backend.clone()).or_insert(now_ms);
                }
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
            let wake = earliest_due.map_or(now + POLL_INTERVAL, |d| d.min(now + POLL_INTERVAL));
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                Some(done) = done_rx.recv() => {
                    let mut pending = vec![done];
                    while let Ok(more) = done_rx.try_recv() {
                        pending.push(more);
                    }
                    for done in pending {
                        self.record(&mut duties, done);
                    }
                }
                changed = self.tables.changed(), if tables_open => {
                    // The sender is gone: keep the last table until cancelled.
                    tables_open = changed.is_ok();
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
        }

        for service in published.keys() {
            self.board.delete_key(&wire::key_for(service));
        }
    }

    fn record(&self, duties: &mut BTreeMap<BackendRef, Duty>, done: ProbeDone) {
        self.metrics
            .probes
            .get_or_create(&ProbeLabels {
                result: done.result.label().to_string(),
            })
            .inc();
        self.metrics
            .probe_duration_seconds
            .observe(done.elapsed.as_secs_f64());
        let Some(duty) = duties.get_mut(&done.backend) else {
            return;
        };
        duty.in_flight = false;
        let now_ms = unix_ms();
        duty.last_result = done.result;
        duty.last_probe_ms = now_ms;
        let (rise, fall) = (duty.check.rise, duty.check.fall);
        if duty
            .hysteresis
            .observe(done.result.is_success(), rise, fall, now_ms)
        {
            tracing::debug!(
                service = %done.backend.service, backend = %done.backend.address,
                port = done.backend.port, state = ?duty.hysteresis.state(), result = %done.result,
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
}
