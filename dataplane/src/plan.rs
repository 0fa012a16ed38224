//! The pure diff: which operations turn the kernel's actual state into the desired table.
//!
//! Ownership rule: Shoal manages a service when its key is desired, when its VIP is desired or
//! sits on Shoal's interface (`shoal0`), or, for firewall-mark services (which have no VIP), when
//! its mark lies in Shoal's fwmark block (`SHOAL_FWMARK_BASE`, masked by `SHOAL_FWMARK_MASK`).
//! Everything else (kube-proxy's services, an operator's) is foreign: never updated or deleted.
//!
//! The planner works on a `View` (services by key, VIPs): built from a full read of the kernel
//! (`Actual::view`), or kept in memory by the reconciler between full reads and updated with
//! the ops the kernel acknowledged (`View::apply`).

use crate::model::{Destination, ObservedService, Service, ServiceKey};
use crate::op::Op;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Shoal's block of firewall marks: `mark & SHOAL_FWMARK_MASK == SHOAL_FWMARK_BASE`.
/// A fwmark service outside this block is Shoal's only while it is desired, so marks for
/// Shoal's fwmark services should be taken from this block (else a removed one is left behind).
pub const SHOAL_FWMARK_BASE: u32 = 0x5e00_0000;
pub const SHOAL_FWMARK_MASK: u32 = 0xffff_0000;

pub fn is_shoal_fwmark(mark: u32) -> bool {
    mark & SHOAL_FWMARK_MASK == SHOAL_FWMARK_BASE
}

/// The table Shoal wants on this node. The VIPs are the addresses of the address-keyed services.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    pub services: Vec<Service>,
}

impl Desired {
    pub fn vips(&self) -> BTreeSet<IpAddr> {
        self.services.iter().filter_map(|s| s.key.vip()).collect()
    }

    /// Services by key with destinations sorted and de-duplicated by `(addr, port)`.
    /// A key given twice keeps its last entry; a destination given twice keeps its last entry.
    pub fn normalized(&self) -> BTreeMap<ServiceKey, Service> {
        self.services
            .iter()
            .map(|s| (s.key.clone(), normalize(s)))
            .collect()
    }
}

/// `s` itself when its destinations are already sorted and unique by `(addr, port)` (what the
/// node builds), else `normalize(s)`: planning a large table clones nothing it need not.
pub fn normalized_cow(s: &Service) -> Cow<'_, Service> {
    let sorted = s
        .destinations
        .windows(2)
        .all(|w| (w[0].addr, w[0].port) < (w[1].addr, w[1].port));
    if sorted {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(normalize(s))
    }
}

/// Sort and de-duplicate a service's destinations so equality means "same kernel entries".
pub fn normalize(s: &Service) -> Service {
    let mut by_addr: BTreeMap<(IpAddr, u16), Destination> = BTreeMap::new();
    for d in &s.destinations {
        by_addr.insert((d.addr, d.port), d.clone());
    }
    Service {
        destinations: by_addr.into_values().collect(),
        ..s.clone()
    }
}

/// What the kernel holds: every IPVS service (Shoal's and foreign ones) and the VIPs on `shoal0`.
/// In each `ObservedService`, `destinations` is authoritative; `service.destinations` mirrors it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actual {
    pub services: Vec<ObservedService>,
    pub vips: BTreeSet<IpAddr>,
}

impl Actual {
    /// Plain services (without counters) by key, destinations sorted.
    pub fn services_by_key(&self) -> BTreeMap<ServiceKey, Service> {
        self.services
            .iter()
            .map(|o| {
                let s = Service {
                    destinations: o
                        .destinations
                        .iter()
                        .map(|d| d.destination.clone())
                        .collect(),
                    ..o.service.clone()
                };
                (o.service.key.clone(), normalize(&s))
            })
            .collect()
    }
}

/// The kernel's state as the planner sees it: services by key (destinations sorted, no
/// counters) and the VIPs on Shoal's interface. The reconciler keeps one between full reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    pub services: BTreeMap<ServiceKey, Service>,
    pub vips: BTreeSet<IpAddr>,
}

impl Actual {
    /// What the planner needs of this read-back.
    pub fn view(&self) -> View {
        View {
            services: self.services_by_key(),
            vips: self.vips.clone(),
        }
    }

    /// The same view, built by moving this read's destinations instead of copying them: each
    /// service's read is freed as its entry is built, so a full read of a large table never
    /// holds the read and a copy of it together (the reconciler's drift check).
    pub fn into_view(self) -> View {
        let services = self
            .services
            .into_iter()
            .map(|o| {
                let s = Service {
                    destinations: o.destinations.into_iter().map(|d| d.destination).collect(),
                    ..without_destinations_owned(o.service)
                };
                (s.key.clone(), normalize_owned(s))
            })
            .collect();
        View {
            services,
            vips: self.vips,
        }
    }
}

/// `normalize` without the copy: sorts in place, a destination given twice keeps its last entry.
fn normalize_owned(mut s: Service) -> Service {
    let clean = s
        .destinations
        .windows(2)
        .all(|w| (w[0].addr, w[0].port) < (w[1].addr, w[1].port));
    if !clean {
        // Reversed, a stable sort puts the last of equal entries first, which dedup keeps.
        s.destinations.reverse();
        s.destinations.sort_by_key(|d| (d.addr, d.port));
        s.destinations.dedup_by_key(|d| (d.addr, d.port));
        s.destinations.shrink_to_fit();
    }
    s
}

fn without_destinations_owned(mut s: Service) -> Service {
    s.destinations = Vec::new();
    s
}

impl View {
    /// The state after the kernel acknowledged `op`, the way the kernel applies it: an added
    /// service starts without destinations, an updated one keeps them, a flush removes every
    /// service. An op the kernel would refuse (an update of a missing entry) changes nothing;
    /// the reconciler never calls this for an op that failed.
    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::AddService(s) => {
                self.services.insert(s.key.clone(), without_destinations(s));
            }
            Op::UpdateService(s) => {
                if let Some(cur) = self.services.get_mut(&s.key) {
                    *cur = Service {
                        destinations: std::mem::take(&mut cur.destinations),
                        ..without_destinations(s)
                    };
                }
            }
            Op::DelService(k) => {
                self.services.remove(k);
            }
            Op::Flush => self.services.clear(),
            Op::AddDest(k, d) | Op::UpdateDest(k, d) => {
                if let Some(cur) = self.services.get_mut(k) {
                    match find_dest(&cur.destinations, d.addr, d.port) {
                        Ok(i) => cur.destinations[i] = d.clone(),
                        Err(i) => cur.destinations.insert(i, d.clone()),
                    }
                }
            }
            Op::DelDest(k, addr, port) => {
                if let Some(cur) = self.services.get_mut(k) {
                    if let Ok(i) = find_dest(&cur.destinations, *addr, *port) {
                        cur.destinations.remove(i);
                    }
                }
            }
            Op::AddVip(v) => {
                self.vips.insert(*v);
            }
            Op::DelVip(v) => {
                self.vips.remove(v);
            }
        }
    }

    /// Gives back the spare capacity `apply` left in the services `ops` added destinations to
    /// (one insert at a time doubles a `Vec`: a view built from a first pass held 60% more
    /// than the same content read whole).
    pub fn shrink_after(&mut self, ops: &[Op]) {
        let mut last: Option<&ServiceKey> = None;
        for op in ops {
            let Op::AddDest(k, _) = op else { continue };
            if last == Some(k) {
                continue;
            }
            last = Some(k);
            if let Some(s) = self.services.get_mut(k) {
                s.destinations.shrink_to_fit();
            }
        }
    }
}

/// Position of `(addr, port)` in destinations sorted by `(addr, port)`.
fn find_dest(dests: &[Destination], addr: IpAddr, port: u16) -> Result<usize, usize> {
    dests.binary_search_by(|d| (d.addr, d.port).cmp(&(addr, port)))
}

/// True when Shoal may change or delete `key` given this desired table and these VIPs on shoal0.
pub fn is_managed(
    key: &ServiceKey,
    desired: &BTreeSet<IpAddr>,
    on_interface: &BTreeSet<IpAddr>,
) -> bool {
    match key {
        ServiceKey::Addr { addr, .. } => desired.contains(addr) || on_interface.contains(addr),
        ServiceKey::Fwmark { mark, .. } => is_shoal_fwmark(*mark),
    }
}

fn same_service_settings(a: &Service, b: &Service) -> bool {
    a.scheduler == b.scheduler
        && a.flags == b.flags
        && a.persistence_timeout_s == b.persistence_timeout_s
}

fn without_destinations(s: &Service) -> Service {
    Service {
        destinations: Vec::new(),
        ..s.clone()
    }
}

/// The minimal operations turning `actual` into `desired`, touching only managed services.
///
/// Order: VIPs added, services added or updated (each followed by its destination adds and
/// updates), destinations deleted, services deleted, VIPs deleted: new paths exist before old
/// ones go. A deleted service takes its destinations with it, so they get no `DelDest`.
/// When nothing is desired and every service in the kernel is Shoal's, the deletes become one
/// `Flush` (see `plan_view`).
pub fn plan(desired: &Desired, actual: &Actual) -> Vec<Op> {
    plan_view(desired, &actual.view())
}

/// `plan` against a `View` (a full read, or the reconciler's view kept in memory).
///
/// Flush rule: with an empty desired table, and at least two services in `have`, all of them
/// managed, the `DelService` ops are replaced by one `Flush` (one message instead of one per
/// service, what `ipvsadm -C` sends). The reconciler confirms against a fresh list of services
/// before it sends a flush planned on a view kept in memory.
pub fn plan_view(desired: &Desired, have: &View) -> Vec<Op> {
    let want = wanted(desired);
    let want_vips = desired.vips();
    let mut ops = Vec::new();

    for vip in want_vips.difference(&have.vips) {
        ops.push(Op::AddVip(*vip));
    }

    // Both sides are sorted by key: one merge pass, no map built (10,000 services plan in a
    // few milliseconds, most of them equal and skipped).
    let mut dest_deletes = Vec::new();
    let mut deletes: Vec<&ServiceKey> = Vec::new();
    let mut have_iter = have.services.iter().peekable();
    for (key, svc) in &want {
        let svc: &Service = svc;
        let mut current = None;
        while let Some((hk, hs)) = have_iter.peek() {
            match (*hk).cmp(key) {
                Ordering::Less => {
                    deletes.push(hk);
                    have_iter.next();
                }
                Ordering::Equal => {
                    current = Some(*hs);
                    have_iter.next();
                    break;
                }
                Ordering::Greater => break,
            }
        }
        match current {
            None => {
                ops.push(Op::AddService(without_destinations(svc)));
                for d in &svc.destinations {
                    ops.push(Op::AddDest((*key).clone(), d.clone()));
                }
            }
            Some(current) if current == svc => {}
            Some(current) => plan_service(svc, current, &mut ops, &mut dest_deletes),
        }
    }
    deletes.extend(have_iter.map(|(k, _)| k));
    ops.extend(dest_deletes);

    let deletes: Vec<&ServiceKey> = deletes
        .into_iter()
        .filter(|key| is_managed(key, &want_vips, &have.vips))
        .collect();
    if want.is_empty() && deletes.len() >= 2 && deletes.len() == have.services.len() {
        ops.push(Op::Flush);
    } else {
        ops.extend(deletes.into_iter().map(|k| Op::DelService(k.clone())));
    }

    for vip in have.vips.difference(&want_vips) {
        ops.push(Op::DelVip(*vip));
    }
    ops
}

/// The desired services sorted by key, each normalized; a key given twice keeps its last
/// entry (as `Desired::normalized`). Borrows when the table is already sorted and clean.
fn wanted(desired: &Desired) -> Vec<(&ServiceKey, Cow<'_, Service>)> {
    let sorted = desired.services.windows(2).all(|w| w[0].key < w[1].key);
    if sorted {
        return desired
            .services
            .iter()
            .map(|s| (&s.key, normalized_cow(s)))
            .collect();
    }
    let by_key: BTreeMap<&ServiceKey, &Service> =
        desired.services.iter().map(|s| (&s.key, s)).collect();
    by_key
        .into_iter()
        .map(|(k, s)| (k, normalized_cow(s)))
        .collect()
}

/// Ops turning `current` into `svc` (same key, different content).
fn plan_service(svc: &Service, current: &Service, ops: &mut Vec<Op>, dest_deletes: &mut Vec<Op>) {
    let key = &svc.key;
    if !same_service_settings(svc, current) {
        ops.push(Op::UpdateService(without_destinations(svc)));
    }
    let old: BTreeMap<(IpAddr, u16), &Destination> = current
        .destinations
        .iter()
        .map(|d| ((d.addr, d.port), d))
        .collect();
    for d in &svc.destinations {
        match old.get(&(d.addr, d.port)) {
            None => ops.push(Op::AddDest(key.clone(), d.clone())),
            Some(o) if *o != d => ops.push(Op::UpdateDest(key.clone(), d.clone())),
            Some(_) => {}
        }
    }
    let new: BTreeSet<(IpAddr, u16)> = svc.destinations.iter().map(|d| (d.addr, d.port)).collect();
    for (addr, port) in old.keys() {
        if !new.contains(&(*addr, *port)) {
            dest_deletes.push(Op::DelDest(key.clone(), *addr, *port));
        }
    }
}
