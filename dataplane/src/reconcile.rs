//! The reconcile loop's brain: `plan` plus draining of removed destinations and services (weight
//! 0 first, delete after a grace time) and the kernel's state kept in memory between full reads.
//!
//! `Reconciler` is a small state machine with time passed in; `reconcile` is the thin shell
//! that reads a dataplane when the reconciler asks for it, asks the reconciler, and applies the
//! answer.
//!
//! Incremental passes: reading IPVS back costs one dump per service (11 s at 10,000 services
//! under emulation), so the reconciler keeps a `View` of the kernel: the last full read,
//! updated with every op the kernel acknowledged since. A pass plans against that view and
//! sends only the difference. The whole table is read again (and any drift repaired) when the
//! drift check is due (`drift_check`, default 60 s), after any error (a refused op or a failed
//! read), and before the first pass.

use crate::backend::Dataplane;
use crate::error::DataplaneError;
use crate::model::{Destination, Protocol, Service, ServiceKey};
use crate::op::Op;
use crate::plan::{plan_view, Actual, Desired, View};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A destination of a service: `(service, address, port)`.
pub type DestId = (ServiceKey, IpAddr, u16);

/// Whether anyone besides Shoal may create IPVS services in this network namespace: what a
/// flush planned on the view kept in memory must be checked against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableOwnership {
    /// Others may (kube-proxy in IPVS mode next to a `hostNetwork` pod, an operator with
    /// `ipvsadm`): before a flush planned on the kept view, one list of the kernel's services
    /// must match the view, else the pass reads everything and plans again.
    #[default]
    Shared,
    /// Declared by the operator: Shoal alone creates IPVS services here (its own network
    /// namespace, a dedicated LB node). A flush goes out without the list, so a service
    /// someone else created since the last full read is flushed with Shoal's.
    Exclusive,
}

/// Whether a pass must list the kernel's services before sending `ops` (pure). Only a flush
/// can remove what Shoal does not know of, and only a pass that did not just read the whole
/// table can be wrong about what the kernel holds.
pub fn list_before_sending(ops: &[Op], full_read: bool, ownership: TableOwnership) -> bool {
    ownership == TableOwnership::Shared && !full_read && ops.contains(&Op::Flush)
}

/// How many changes in a row a due drift check gives way to (`Reconciler::read_before`).
/// Counted, not timed: a whole read can outlast the drift interval (seconds at 10,000
/// services), so a bound on lateness would stop every check from giving way.
pub const MAX_DRIFT_GIVE_WAYS: u32 = 8;

/// How often a reconciler reads the whole table back when nothing forces it earlier.
pub const DEFAULT_DRIFT_CHECK: Duration = Duration::from_secs(60);

/// Remembers which destinations and services are draining and until when, and what the
/// kernel holds.
#[derive(Debug, Clone)]
pub struct Reconciler {
    drain: Duration,
    /// Destination -> the instant its deletion is due, and the last step that still saw it
    /// undesired. An entry lives while the destination is still in the kernel and undesired.
    draining: BTreeMap<DestId, (Instant, u64)>,
    /// The same for removed services (every destination at weight 0, the VIP kept).
    draining_services: BTreeMap<ServiceKey, (Instant, u64)>,
    /// Services deleted without a drain (see `set_delete_at_once`).
    delete_at_once: BTreeSet<ServiceKey>,
    /// Protocols whose destinations are deleted without a drain (see `set_cut_protocols`).
    cut_protocols: BTreeSet<Protocol>,
    /// Steps taken, to tell the entries the current step saw from stale ones.
    steps: u64,
    /// The kernel as of the last full read, with every acknowledged op since applied to it.
    /// `None` = unknown (before the first pass, after an error): the next pass reads it all.
    view: Option<View>,
    /// When the view was last read whole from the kernel.
    last_full_read: Option<Instant>,
    drift_check: Duration,
    /// The last pass gave its drift check up to a change (`reconcile_until`): the next one
    /// plans on the kept view.
    drift_gave_way: bool,
    /// Drift checks given up in a row since the last full read.
    drift_gave_way_streak: u32,
    ownership: TableOwnership,
    /// Deletions in the last `step`'s answer whose drain had run out (the others repair drift
    /// or follow the desired table).
    drained: usize,
}

impl Reconciler {
    /// `drain` = how long a removed destination or service stays at weight 0 before
    /// deletion; zero deletes at once. The drift check starts at `DEFAULT_DRIFT_CHECK`.
    pub fn new(drain: Duration) -> Self {
        Reconciler {
            drain,
            draining: BTreeMap::new(),
            draining_services: BTreeMap::new(),
            delete_at_once: BTreeSet::new(),
            cut_protocols: BTreeSet::new(),
            steps: 0,
            view: None,
            last_full_read: None,
            drift_check: DEFAULT_DRIFT_CHECK,
            drift_gave_way: false,
            drift_gave_way_streak: 0,
            ownership: TableOwnership::Shared,
            drained: 0,
        }
    }

    /// Read the whole table back at least this often (zero: on every pass, as before views).
    pub fn with_drift_check(mut self, every: Duration) -> Self {
        self.drift_check = every;
        self
    }

    pub fn set_drift_check(&mut self, every: Duration) {
        self.drift_check = every;
    }

    pub fn drift_check(&self) -> Duration {
        self.drift_check
    }

    /// Declare who may create IPVS services here (default `Shared`: see `TableOwnership`).
    pub fn with_ownership(mut self, ownership: TableOwnership) -> Self {
        self.ownership = ownership;
        self
    }

    pub fn set_ownership(&mut self, ownership: TableOwnership) {
        self.ownership = ownership;
    }

    pub fn ownership(&self) -> TableOwnership {
        self.ownership
    }

    /// The ops to send now. Same as `plan`, except that a removed destination (of a service
    /// that stays) and a removed service are first set to weight 0 (every destination of the
    /// service) and deleted only once `drain` has passed; the VIP of a draining service stays
    /// on the interface until the last of its services is deleted. A destination or service
    /// that comes back while draining is simply restored by `plan`'s updates. Services in
    /// `delete_at_once` skip the drain. Pure: it does not touch the kept view (see `reconcile`
    /// for the incremental pass).
    pub fn step(&mut self, desired: &Desired, actual: &Actual, now: Instant) -> Vec<Op> {
        self.step_view(desired, &actual.view(), now)
    }

    /// `step` against a view of the kernel.
    pub fn step_view(&mut self, desired: &Desired, have: &View, now: Instant) -> Vec<Op> {
        let mut ops = plan_view(desired, have);
        self.delete_unowned_at_once(desired, have, &mut ops);
        self.drained = 0;
        if self.drain.is_zero() {
            self.draining.clear();
            self.draining_services.clear();
            return ops;
        }
        // Every draining destination comes back as a `DelDest` on every step: the answer is
        // filtered in place (no second buffer, no set of the ids seen), which matters while
        // tens of thousands drain (a rollout, or the scale benchmark's churn).
        self.steps = self.steps.wrapping_add(1);
        let (step, drain) = (self.steps, self.drain);
        let services = self.services_to_drain(&ops, have, now);
        let draining = &mut self.draining;
        let cut = &self.cut_protocols;
        let mut drained = services.ended;
        let mut out: Vec<Op> = Vec::with_capacity(ops.len());
        for op in ops {
            match &op {
                Op::DelDest(key, ..) if key.protocol().is_some_and(|p| cut.contains(&p)) => {
                    out.push(op);
                }
                Op::DelDest(key, addr, port) => {
                    let entry = draining
                        .entry((key.clone(), *addr, *port))
                        .or_insert_with(|| (due_after(now, drain), step));
                    entry.1 = step;
                    if now >= entry.0 {
                        drained += 1;
                        out.push(op);
                        continue;
                    }
                    let current = have.services.get(key).and_then(|s| {
                        s.destinations
                            .iter()
                            .find(|d| d.addr == *addr && d.port == *port)
                    });
                    if let Some(d) = current.filter(|d| d.weight != 0) {
                        out.push(Op::UpdateDest(key.clone(), zero_weight(d)));
                    }
                }
                Op::DelService(key) if services.waiting.contains(key) => {
                    zero_service(have, key, &mut out);
                }
                Op::Flush if !services.waiting.is_empty() => {
                    // Some services still drain: the others are deleted one by one.
                    for key in have.services.keys() {
                        if services.waiting.contains(key) {
                            zero_service(have, key, &mut out);
                        } else {
                            out.push(Op::DelService(key.clone()));
                        }
                    }
                }
                Op::DelVip(vip) if services.held_vips.contains(vip) => {}
                Op::DelVip(vip) if services.released_vips.contains(vip) => {
                    drained += 1;
                    out.push(op);
                }
                _ => out.push(op),
            }
        }
        out.shrink_to_fit();
        self.draining.retain(|_, (_, seen)| *seen == step);
        self.draining_services.retain(|_, (_, seen)| *seen == step);
        self.drained = drained;
        out
    }

    /// The services `ops` delete (one by one, or all at once by a flush), sorted into those
    /// that still drain and those whose drain ended (or that skip it), with their VIPs.
    fn services_to_drain(&mut self, ops: &[Op], have: &View, now: Instant) -> ServiceDrains {
        let (step, drain) = (self.steps, self.drain);
        let mut out = ServiceDrains::default();
        let flush = ops.contains(&Op::Flush);
        let deleted: Vec<&ServiceKey> = if flush {
            have.services.keys().collect()
        } else {
            ops.iter()
                .filter_map(|op| match op {
                    Op::DelService(k) => Some(k),
                    _ => None,
                })
                .collect()
        };
        for key in deleted {
            let at_once = self.delete_at_once.contains(key);
            let ended = at_once || {
                let entry = self
                    .draining_services
                    .entry(key.clone())
                    .or_insert_with(|| (due_after(now, drain), step));
                entry.1 = step;
                now >= entry.0
            };
            if at_once {
                continue;
            }
            if ended {
                out.ended += 1;
                out.released_vips.extend(key.vip());
            } else {
                out.held_vips.extend(key.vip());
                out.waiting.insert(key.clone());
            }
        }
        // A VIP stays while any of its services drains.
        out.released_vips.retain(|v| !out.held_vips.contains(v));
        out
    }

    /// Services to delete without a drain from now on (and no others): the node withholds
    /// services it may not serve (their source-range filter cannot be programmed, or the
    /// kernel refused their VIP), and those must stop at once, not drain. They are Shoal's
    /// even when the planner would not own them by their VIP.
    pub fn set_delete_at_once(&mut self, keys: BTreeSet<ServiceKey>) {
        self.delete_at_once = keys;
    }

    /// Adds a delete for each service set to go at once that the kernel holds, the table
    /// leaves out, and the plan leaves alone because its VIP is neither desired nor on the
    /// interface (a service whose IPv6 VIP the interface refused went in without it).
    fn delete_unowned_at_once(&self, desired: &Desired, have: &View, ops: &mut Vec<Op>) {
        if self.delete_at_once.is_empty() || ops.contains(&Op::Flush) {
            return;
        }
        let desired_keys: BTreeSet<&ServiceKey> = desired.services.iter().map(|s| &s.key).collect();
        let deleted: BTreeSet<&ServiceKey> = ops
            .iter()
            .filter_map(|op| match op {
                Op::DelService(k) => Some(k),
                _ => None,
            })
            .collect();
        let missing: Vec<Op> = self
            .delete_at_once
            .iter()
            .filter(|k| have.services.contains_key(*k))
            .filter(|k| !desired_keys.contains(k) && !deleted.contains(k))
            .map(|k| Op::DelService(k.clone()))
            .collect();
        ops.extend(missing);
    }

    /// Protocols whose destinations are deleted without a drain when the desired table leaves
    /// them out (and no others): the node cuts UDP, as kube-proxy does, since at weight 0 each
    /// datagram of a client already sent to a destination refreshes its IPVS entry and the
    /// client is never moved (a DNS forwarder was black-holed for a whole backend outage; an
    /// audit), and a backend removed from the table is usually going away. Deleted, the kernel
    /// expires such an entry at its next packet (`expire_nodest_conn`) and the packet after is
    /// scheduled afresh. A removed service still drains (its backends still serve).
    pub fn set_cut_protocols(&mut self, protocols: BTreeSet<Protocol>) {
        self.cut_protocols = protocols;
    }

    /// What the next pass reads before it plans (`now` its start). A due drift check may give
    /// way to a change up to `MAX_DRIFT_GIVE_WAYS` times in a row; then it reads whatever comes,
    /// so a stream of changes cannot put it off for good. The pass right after one that gave
    /// way plans on the kept view (it carries the change). Without a view the whole table must
    /// be read.
    pub fn read_before(&mut self, now: Instant) -> ReadBefore {
        let gave_way = std::mem::take(&mut self.drift_gave_way);
        match (&self.view, self.last_full_read) {
            (Some(_), Some(at)) => {
                if now.saturating_duration_since(at) < self.drift_check || gave_way {
                    ReadBefore::Nothing
                } else if self.drift_gave_way_streak < MAX_DRIFT_GIVE_WAYS {
                    ReadBefore::DriftCheck
                } else {
                    ReadBefore::Everything
                }
            }
            _ => ReadBefore::Everything,
        }
    }

    /// The drift check of this pass gave way to a change: the kept view stays, and the next
    /// pass plans on it (`read_before`).
    pub fn drift_check_gave_way(&mut self) {
        self.drift_gave_way = true;
        self.drift_gave_way_streak += 1;
    }

    /// The drift check due in this pass was put off before it began (the pass plans a change
    /// on the kept view instead); it counts against `MAX_DRIFT_GIVE_WAYS` like a check that
    /// gave way, and stays due.
    pub fn drift_check_put_off(&mut self) {
        self.drift_gave_way_streak += 1;
    }

    /// A full read of the kernel: it replaces the kept view.
    pub fn observed(&mut self, view: View, now: Instant) {
        self.view = Some(view);
        self.read_whole_at(now);
    }

    /// The kept view holds a whole read made at `now` (replaced, or patched by a drift check):
    /// the next check is due an interval later, and the count of checks put off starts again.
    fn read_whole_at(&mut self, now: Instant) {
        self.last_full_read = Some(now);
        self.drift_gave_way_streak = 0;
    }

    /// The ops to send now against the kept view, or `None` when there is no view (call
    /// `observed` first).
    pub fn step_kept(&mut self, desired: &Desired, now: Instant) -> Option<Vec<Op>> {
        let view = self.view.take()?;
        let ops = self.step_view(desired, &view, now);
        self.view = Some(view);
        Some(ops)
    }

    /// The kernel acknowledged every one of `ops`: the kept view follows.
    pub fn acknowledged(&mut self, ops: &[Op]) {
        if let Some(view) = &mut self.view {
            for op in ops {
                view.apply(op);
            }
            view.shrink_after(ops);
        }
    }

    /// How many of the last `step`'s ops delete a destination whose drain ran out.
    pub fn last_drained(&self) -> usize {
        self.drained
    }

    /// Something failed: the kernel's state is no longer known, the next pass reads it all.
    pub fn invalidate(&mut self) {
        self.view = None;
    }

    /// The kernel as the reconciler believes it is (`None` before a full read or after an error).
    pub fn view(&self) -> Option<&View> {
        self.view.as_ref()
    }

    /// True when `keys` (a fresh list of the kernel's services) are exactly the kept view's:
    /// nothing appeared or went since, so a flush planned on the view removes only what the
    /// view says.
    pub fn view_has_exactly(&self, keys: &[ServiceKey]) -> bool {
        let Some(view) = &self.view else {
            return false;
        };
        keys.len() == view.services.len() && keys.iter().all(|k| view.services.contains_key(k))
    }

    /// When `step` next has something to do even if nothing else changes.
    pub fn next_deadline(&self) -> Option<Instant> {
        let dests = self.draining.values().map(|(due, _)| *due);
        let services = self.draining_services.values().map(|(due, _)| *due);
        dests.chain(services).min()
    }

    /// Destinations and services currently draining and when each is due for deletion.
    pub fn draining(&self) -> impl Iterator<Item = Draining> + '_ {
        let services = self.draining_services.iter().map(|(k, (due, _))| Draining {
            service: k.clone(),
            destination: None,
            due: *due,
        });
        let dests = self.draining.iter().map(|((k, a, p), (due, _))| Draining {
            service: k.clone(),
            destination: Some((*a, *p)),
            due: *due,
        });
        services.chain(dests)
    }

    /// Takes up drains a previous process started (read back from where it kept them), so
    /// that a restart does not start them over. Each entry counts only if the first step
    /// still finds it undesired in the kernel, as any drain; a deadline further away than
    /// this reconciler's own drain (the setting was shortened) is brought in to it.
    pub fn resume(&mut self, drains: impl IntoIterator<Item = Draining>, now: Instant) {
        let latest = due_after(now, self.drain);
        for d in drains {
            let entry = (d.due.min(latest), self.steps);
            match d.destination {
                None => {
                    self.draining_services.insert(d.service, entry);
                }
                Some((addr, port)) => {
                    self.draining.insert((d.service, addr, port), entry);
                }
            }
        }
    }

    /// The VIPs of the services draining now (removed from the desired table, their
    /// destinations at weight 0 until the drain ends): the interface keeps them, and so
    /// should whatever brings clients to this node, or the drain serves nobody. A drain that
    /// has run out by `now` no longer counts (its deletion may still be in flight).
    pub fn draining_vips(&self, now: Instant) -> BTreeSet<IpAddr> {
        self.draining_services
            .iter()
            .filter(|(_, (due, _))| now < *due)
            .filter_map(|(k, _)| k.vip())
            .collect()
    }

    /// What still separates `have` (a read of the kernel) from `desired`, with a drain in
    /// progress told apart: the deletions that only wait for their drain (the destination, or
    /// every destination of the service, already at weight 0 in `have`; the VIP of such a
    /// service) are left out of `ops` and listed in `draining` instead. So `ops` is empty
    /// exactly when the kernel holds the desired state plus the entries draining. Pure.
    pub fn pending(&self, desired: &Desired, have: &View) -> Pending {
        let ops = plan_view(desired, have);
        let dest_at_zero = |k: &ServiceKey, addr: IpAddr, port: u16| {
            have.services.get(k).is_some_and(|s| {
                find_dest(&s.destinations, addr, port).is_some_and(|d| d.weight == 0)
            })
        };
        let service_at_zero = |k: &ServiceKey| {
            have.services
                .get(k)
                .is_some_and(|s| s.destinations.iter().all(|d| d.weight == 0))
        };
        let draining: Vec<Draining> = self
            .draining()
            .filter(|d| match d.destination {
                None => service_at_zero(&d.service),
                Some((addr, port)) => dest_at_zero(&d.service, addr, port),
            })
            .collect();
        let services: BTreeSet<&ServiceKey> = draining
            .iter()
            .filter(|d| d.destination.is_none())
            .map(|d| &d.service)
            .collect();
        let dests: BTreeSet<(&ServiceKey, IpAddr, u16)> = draining
            .iter()
            .filter_map(|d| d.destination.map(|(a, p)| (&d.service, a, p)))
            .collect();
        let vips: BTreeSet<IpAddr> = services.iter().filter_map(|k| k.vip()).collect();
        let mut out = Vec::new();
        for op in ops {
            match &op {
                Op::DelDest(k, a, p) if dests.contains(&(k, *a, *p)) => {}
                Op::DelService(k) if services.contains(k) => {}
                Op::DelVip(v) if vips.contains(v) => {}
                Op::Flush if !services.is_empty() => out.extend(
                    have.services
                        .keys()
                        .filter(|k| !services.contains(k))
                        .map(|k| Op::DelService(k.clone())),
                ),
                _ => out.push(op),
            }
        }
        Pending { ops: out, draining }
    }
}

/// A destination (of a service that stays) or a whole service kept at weight 0 until `due`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Draining {
    pub service: ServiceKey,
    /// `None`: the whole service drains (every destination at weight 0, its VIP kept).
    pub destination: Option<(IpAddr, u16)>,
    pub due: Instant,
}

/// See `Reconciler::pending`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// Ops still needed besides the deletions that wait for a drain.
    pub ops: Vec<Op>,
    /// Entries draining that the kernel holds at weight 0.
    pub draining: Vec<Draining>,
}

fn find_dest(dests: &[Destination], addr: IpAddr, port: u16) -> Option<&Destination> {
    dests
        .binary_search_by(|d| (d.addr, d.port).cmp(&(addr, port)))
        .ok()
        .map(|i| &dests[i])
}

/// What a pass reads before it plans (`Reconciler::read_before`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadBefore {
    /// Plan on the kept view.
    Nothing,
    /// The periodic drift check: read the whole table, but give way to a change.
    DriftCheck,
    /// Read the whole table whatever comes (no view, or a check that has given way enough).
    Everything,
}

/// What one step does with the services its plan deletes.
#[derive(Debug, Default)]
struct ServiceDrains {
    /// Still draining: their destinations go to weight 0, the deletion waits.
    waiting: BTreeSet<ServiceKey>,
    /// VIPs of waiting services: their `DelVip` waits too.
    held_vips: BTreeSet<IpAddr>,
    /// VIPs of services whose drain ended in this step (and of no waiting service).
    released_vips: BTreeSet<IpAddr>,
    /// Services whose drain ended in this step.
    ended: usize,
}

fn zero_weight(d: &Destination) -> Destination {
    Destination {
        weight: 0,
        ..d.clone()
    }
}

/// Every destination of `key` not yet at weight 0 is set to 0: no new connections, the
/// established ones are still forwarded.
fn zero_service(have: &View, key: &ServiceKey, out: &mut Vec<Op>) {
    if let Some(s) = have.services.get(key) {
        out.extend(
            s.destinations
                .iter()
                .filter(|d| d.weight != 0)
                .map(|d| Op::UpdateDest(key.clone(), zero_weight(d))),
        );
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
    /// Whether this pass read the whole table back (first pass, drift check, after an error).
    pub full_read: bool,
    /// How many of `ops` delete a destination or service whose drain ran out (or the VIP
    /// such a service held).
    pub drained: usize,
    /// The pass's drift check gave way to a change (`reconcile_until`'s `stop`): nothing was
    /// planned or sent, and the next pass (which should come at once) plans on the kept view.
    pub gave_way: bool,
}

/// The drift check: the kernel read one service at a time and compared with the kept view as
/// it comes, so that the check holds what differs (and a set of the keys seen), not a second
/// copy of the table. The view is patched only once the read is whole; a read that `stop`
/// ends leaves it as it was (false). Equal to replacing the view with a whole read.
fn drift_check(
    dp: &mut dyn Dataplane,
    rec: &mut Reconciler,
    now: Instant,
    stop: &dyn Fn() -> bool,
) -> Result<bool, DataplaneError> {
    let Some(kept) = rec.view.as_ref() else {
        read_all(dp, rec, now)?;
        return Ok(true);
    };
    let mut seen: BTreeSet<&ServiceKey> = BTreeSet::new();
    let mut differ: Vec<Service> = Vec::new();
    let read = dp.read_each_until(
        stop,
        &mut |s: Service| match kept.services.get_key_value(&s.key) {
            Some((key, have)) => {
                seen.insert(key);
                if *have != s {
                    differ.push(s);
                }
            }
            None => differ.push(s),
        },
    );
    let vips = match read {
        Ok(Some(vips)) => vips,
        Ok(None) => return Ok(false),
        Err(e) => {
            rec.invalidate();
            return Err(e);
        }
    };
    let gone: Vec<ServiceKey> = kept
        .services
        .keys()
        .filter(|k| !seen.contains(k))
        .cloned()
        .collect();
    drop(seen);
    if let Some(view) = rec.view.as_mut() {
        for key in &gone {
            view.services.remove(key);
        }
        for s in differ {
            view.services.insert(s.key.clone(), s);
        }
        view.vips = vips;
    }
    rec.read_whole_at(now);
    Ok(true)
}

fn read_all(
    dp: &mut dyn Dataplane,
    rec: &mut Reconciler,
    now: Instant,
) -> Result<(), DataplaneError> {
    // The old view goes first, and the new one is built as the dataplane is read: at 10,000
    // services the two views and a whole `Actual` would otherwise live together (~100 MiB).
    rec.invalidate();
    match dp.read_view() {
        Ok(view) => {
            rec.observed(view, now);
            Ok(())
        }
        Err(e) => {
            rec.invalidate();
            Err(e)
        }
    }
}

/// One pass: read the dataplane if the reconciler asks for it (else plan against its kept
/// view), compute the ops, apply them. A flush planned on a kept view is sent only after a
/// fresh list of services matches the view (else the pass reads everything and plans again),
/// unless the table is declared `TableOwnership::Exclusive`.
/// On failure the error (`DataplaneError::OpsRefused`) names the first op that failed and
/// each service a refused op changes; the others were still attempted, the view is dropped,
/// and the next pass reads the table and retries what is left.
pub fn reconcile(
    dp: &mut dyn Dataplane,
    rec: &mut Reconciler,
    desired: &Desired,
    now: Instant,
) -> Result<ReconcileReport, DataplaneError> {
    reconcile_until(dp, rec, desired, now, &|| false)
}

/// `reconcile`, whose drift check gives way to a change: when `stop` is already true as the
/// check falls due, this pass plans `desired` on the kept view and leaves the check for a
/// later one; when it turns true during the read (a newer desired table is waiting), the read
/// ends between two services and the pass returns at once with `gave_way`, sending nothing,
/// so the next pass brings the newer table in on the kept view instead of waiting for the
/// whole read (seconds at 10,000 services). `Reconciler::read_before` bounds how many times
/// in a row a check is put off.
pub fn reconcile_until(
    dp: &mut dyn Dataplane,
    rec: &mut Reconciler,
    desired: &Desired,
    now: Instant,
    stop: &dyn Fn() -> bool,
) -> Result<ReconcileReport, DataplaneError> {
    let mut full_read = false;
    match rec.read_before(now) {
        ReadBefore::Nothing => {}
        ReadBefore::Everything => {
            read_all(dp, rec, now)?;
            full_read = true;
        }
        // A change already waiting when the check is due (the one this pass carries) goes
        // first, in this pass, on the kept view; the check stays due for a later pass.
        ReadBefore::DriftCheck if stop() => rec.drift_check_put_off(),
        ReadBefore::DriftCheck => {
            if !drift_check(dp, rec, now, stop)? {
                rec.drift_check_gave_way();
                return Ok(ReconcileReport {
                    gave_way: true,
                    ..ReconcileReport::default()
                });
            }
            full_read = true;
        }
    }
    let mut ops = rec.step_kept(desired, now).unwrap_or_default();
    if list_before_sending(&ops, full_read, rec.ownership()) {
        let keys = dp.service_keys().inspect_err(|_| rec.invalidate())?;
        if !rec.view_has_exactly(&keys) {
            tracing::info!(
                "services changed behind Shoal's back; reading the table before a flush"
            );
            read_all(dp, rec, now)?;
            full_read = true;
            ops = rec.step_kept(desired, now).unwrap_or_default();
        }
    }
    if ops.is_empty() {
        return Ok(ReconcileReport {
            full_read,
            ..ReconcileReport::default()
        });
    }
    let done = dp.apply_all(&ops);
    let applied = done.ok;
    tracing::debug!(ops = ops.len(), applied, full_read, "dataplane reconciled");
    match done.into_error(&ops) {
        Some(e) => {
            rec.invalidate();
            Err(e)
        }
        None => {
            rec.acknowledged(&ops);
            Ok(ReconcileReport {
                applied,
                ops,
                full_read,
                drained: rec.last_drained(),
                gave_way: false,
            })
        }
    }
}

#[cfg(test)]
mod tests;
