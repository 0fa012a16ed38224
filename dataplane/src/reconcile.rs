//! The reconcile loop's brain: `plan` plus draining (weight 0 first, delete after a grace time).
//!
//! `Reconciler` is a small state machine with time passed in; `reconcile` is the thin shell
//! that reads a dataplane, asks the reconciler, and applies the answer.

use crate::backend::Dataplane;
use crate::error::DataplaneError;
use crate::model::ServiceKey;
use crate::op::Op;
use crate::plan::{plan, Actual, Desired};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

type DestId = (ServiceKey, IpAddr, u16);

/// Remembers which destinations are draining and since when.
#[derive(Debug, Clone)]
pub struct Reconciler {
    drain: Duration,
    /// Destination -> the instant its deletion is due. An entry lives while the destination is
    /// still in the kernel and still undesired.
    draining: BTreeMap<DestId, Instant>,
}

impl Reconciler {
    /// `drain` = how long a removed destination stays at weight 0 before deletion; zero
    /// deletes at once.
    pub fn new(drain: Duration) -> Self {
        Reconciler {
            drain,
            draining: BTreeMap::new(),
        }
    }

    /// The ops to send now. Same as `plan`, except that a destination removed from a service
    /// that stays is first set to weight 0 and deleted only once `drain` has passed. A
    /// destination that comes back while draining is simply restored by `plan`'s update.
    pub fn step(&mut self, desired: &Desired, actual: &Actual, now: Instant) -> Vec<Op> {
        let ops = plan(desired, actual);
        if self.drain.is_zero() {
            self.draining.clear();
            return ops;
        }
        let have = actual.services_by_key();
        let mut seen: BTreeSet<DestId> = BTreeSet::new();
        let mut out = Vec::with_capacity(ops.len());
        for op in ops {
            let Op::DelDest(key, addr, port) = &op else {
                out.push(op);
                continue;
            };
            let id = (key.clone(), *addr, *port);
            let due = *self
                .draining
                .entry(id.clone())
                .or_insert_with(|| due_after(now, self.drain));
            seen.insert(id);
            if now >= due {
                out.push(op);
                continue;
            }
            let current = have.get(key).and_then(|s| {
                s.destinations
                    .iter()
                    .find(|d| d.addr == *addr && d.port == *port)
            });
            if let Some(d) = current {
                if d.weight != 0 {
                    let mut zero = d.clone();
                    zero.weight = 0;
                    out.push(Op::UpdateDest(key.clone(), zero));
                }
            }
        }
        self.draining.retain(|id, _| seen.contains(id));
        out
    }

    /// When `step` next has something to do even if nothing else changes.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.draining.values().min().copied()
    }

    /// Destinations currently draining and when each is due for deletion.
    pub fn draining(&self) -> impl Iterator<Item = (&ServiceKey, IpAddr, u16, Instant)> {
        self.draining.iter().map(|((k, a, p), t)| (k, *a, *p, *t))
    }
}

/// `now + drain` without the overflow panic of `Instant + Duration`: drains are capped at
/// ten years, which is as good as never for a destination at weight 0.
fn due_after(now: Instant, drain: Duration) -> Instant {
    const TEN_YEARS: Duration = Duration::from_secs(10 * 365 * 86_400);
    now.checked_add(drain.min(TEN_YEARS)).unwrap_or(now)
}

/// What one reconcile pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    /// Ops successfully applied.
    pub applied: usize,
    /// Every op sent, in order.
    pub ops: Vec<Op>,
}

/// Read the dataplane, compute the ops, apply them. On failure the error names the first op
/// that failed; the others were still attempted, and the next pass retries what is left.
pub fn reconcile(
    dp: &mut dyn Dataplane,
    rec: &mut Reconciler,
    desired: &Desired,
    now: Instant,
) -> Result<ReconcileReport, DataplaneError> {
    let actual = dp.read()?;
    let ops = rec.step(desired, &actual, now);
    if ops.is_empty() {
        return Ok(ReconcileReport::default());
    }
    let (applied, err) = dp.apply_all(&ops);
    tracing::debug!(ops = ops.len(), applied, "dataplane reconciled");
    match err {
        Some(e) => Err(e),
        None => Ok(ReconcileReport { applied, ops }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryDataplane;
    use crate::model::{Destination, Forwarding, Protocol, SchedFlags, Service, Tunnel};

    fn desired(backends: &[u8]) -> Desired {
        Desired {
            services: vec![Service {
                key: ServiceKey::Addr {
                    addr: "203.0.113.1".parse().unwrap(),
                    port: 80,
                    protocol: Protocol::Tcp,
                },
                scheduler: "mh".into(),
                flags: SchedFlags::default(),
                persistence_timeout_s: 0,
                destinations: backends
                    .iter()
                    .map(|b| Destination {
                        addr: IpAddr::from([198, 18, 0, *b]),
                        port: 80,
                        forwarding: Forwarding::Tunnel(Tunnel::Ipip),
                        weight: 1,
                        upper_threshold: 0,
                        lower_threshold: 0,
                    })
                    .collect(),
            }],
        }
    }

    /// Issue #15, broken behaviour 5: `now + drain` panicked for a huge drain.
    #[test]
    fn a_huge_drain_does_not_overflow() {
        let mut dp = MemoryDataplane::new();
        let mut rec = Reconciler::new(Duration::MAX);
        let now = Instant::now();
        reconcile(&mut dp, &mut rec, &desired(&[1, 2]), now).unwrap();
        let report = reconcile(&mut dp, &mut rec, &desired(&[1]), now).unwrap();
        assert!(
            matches!(&report.ops[..], [Op::UpdateDest(_, d)] if d.weight == 0),
            "{:?}",
            report.ops
        );
        assert!(rec.next_deadline().unwrap() > now + Duration::from_secs(365 * 86_400));
    }
}
