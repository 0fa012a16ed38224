//! The pure diff: which operations turn the kernel's actual state into the desired table.
//!
//! Ownership rule: Shoal manages a service when its key is desired, when its VIP is desired or
//! sits on Shoal's interface (`shoal0`), or, for firewall-mark services (which have no VIP), when
//! its mark lies in Shoal's fwmark block (`SHOAL_FWMARK_BASE`, masked by `SHOAL_FWMARK_MASK`).
//! Everything else (kube-proxy's services, an operator's) is foreign: never updated or deleted.

use crate::model::{Destination, ObservedService, Service, ServiceKey};
use crate::op::Op;
use serde::{Deserialize, Serialize};
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
pub fn plan(desired: &Desired, actual: &Actual) -> Vec<Op> {
    let want = desired.normalized();
    let have = actual.services_by_key();
    let want_vips = desired.vips();
    let mut ops = Vec::new();

    for vip in want_vips.difference(&actual.vips) {
        ops.push(Op::AddVip(*vip));
    }

    let mut dest_deletes = Vec::new();
    for (key, svc) in &want {
        match have.get(key) {
            None => {
                ops.push(Op::AddService(without_destinations(svc)));
                for d in &svc.destinations {
                    ops.push(Op::AddDest(key.clone(), d.clone()));
                }
            }
            Some(current) => {
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
                let new: BTreeSet<(IpAddr, u16)> =
                    svc.destinations.iter().map(|d| (d.addr, d.port)).collect();
                for (addr, port) in old.keys() {
                    if !new.contains(&(*addr, *port)) {
                        dest_deletes.push(Op::DelDest(key.clone(), *addr, *port));
                    }
                }
            }
        }
    }
    ops.extend(dest_deletes);

    for key in have.keys() {
        if !want.contains_key(key) && is_managed(key, &want_vips, &actual.vips) {
            ops.push(Op::DelService(key.clone()));
        }
    }

    for vip in actual.vips.difference(&want_vips) {
        ops.push(Op::DelVip(*vip));
    }
    ops
}
