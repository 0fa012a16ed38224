//! The in-process twin of the kernel: same contract as IPVS, including its refusals
//! (EEXIST, ESRCH, ENOENT), so planner bugs show up in tests as errors, not silent fixes.

use crate::backend::Dataplane;
use crate::error::DataplaneError;
use crate::model::{Destination, ObservedDestination, ObservedService, Service, ServiceKey, Stats};
use crate::op::Op;
use crate::plan::{Actual, View};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

/// A service without destinations, and its destinations by `(addr, port)`.
type Entry = (Service, BTreeMap<(IpAddr, u16), Destination>);

#[derive(Debug, Default)]
struct State {
    services: BTreeMap<ServiceKey, Entry>,
    vips: BTreeSet<IpAddr>,
    fail_next: Option<i32>,
    /// The schedulers this twin's kernel has (`None`: every one).
    schedulers: Option<BTreeSet<String>>,
    /// IPv6 is disabled on the twin's VIP interface: adding an IPv6 VIP is refused (EACCES).
    ipv6_disabled: bool,
    reads: u64,
    lists: u64,
}

/// Clones share one state, so a test can keep a handle to inspect it or inject drift while the
/// node owns another.
#[derive(Clone, Debug, Default)]
pub struct MemoryDataplane {
    state: Arc<Mutex<State>>,
}

impl MemoryDataplane {
    pub fn new() -> Self {
        Self::default()
    }

    /// A twin that already holds services Shoal does not own (as kube-proxy's would be).
    pub fn with_foreign(services: Vec<Service>) -> Self {
        let dp = Self::new();
        for s in services {
            dp.insert_service(s);
        }
        dp
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in another test thread must not hide this twin's state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drift injection: put a service (with destinations) in place behind Shoal's back.
    pub fn insert_service(&self, s: Service) {
        let dests = s
            .destinations
            .iter()
            .map(|d| ((d.addr, d.port), d.clone()))
            .collect();
        let bare = Service {
            destinations: Vec::new(),
            ..s
        };
        self.lock().services.insert(bare.key.clone(), (bare, dests));
    }

    /// Drift injection: remove a service behind Shoal's back. Returns whether it existed.
    pub fn remove_service(&self, key: &ServiceKey) -> bool {
        self.lock().services.remove(key).is_some()
    }

    /// Drift injection: add or remove a VIP on the interface.
    pub fn set_vip(&self, vip: IpAddr, present: bool) {
        let mut st = self.lock();
        if present {
            st.vips.insert(vip);
        } else {
            st.vips.remove(&vip);
        }
    }

    /// From now on only these schedulers exist: adding or changing a service to another is
    /// refused with ENOENT, as by a kernel without that scheduler's module.
    pub fn only_schedulers(&self, names: &[&str]) {
        self.lock().schedulers = Some(names.iter().map(|n| n.to_string()).collect());
    }

    /// IPv6 disabled (`true`) or enabled again on the twin's VIP interface; disabling it drops
    /// the IPv6 VIPs held, as the kernel does.
    pub fn set_ipv6_disabled(&self, disabled: bool) {
        let mut st = self.lock();
        st.ipv6_disabled = disabled;
        if disabled {
            st.vips.retain(|v| v.is_ipv4());
        }
    }

    /// The next `apply` fails with this errno (one shot), to test error paths.
    pub fn fail_next(&self, errno: i32) {
        self.lock().fail_next = Some(errno);
    }

    /// How many lists of service keys (`Dataplane::service_keys`, the check before a flush)
    /// were made so far.
    pub fn lists(&self) -> u64 {
        self.lock().lists
    }

    /// How many full reads (`Dataplane::read`) were made so far.
    pub fn reads(&self) -> u64 {
        self.lock().reads
    }

    /// The current services (with destinations, sorted), without counters.
    pub fn services(&self) -> Vec<Service> {
        self.lock()
            .services
            .values()
            .map(|(s, d)| Service {
                destinations: d.values().cloned().collect(),
                ..s.clone()
            })
            .collect()
    }

    pub fn vips(&self) -> BTreeSet<IpAddr> {
        self.lock().vips.clone()
    }
}

fn apply_to(st: &mut State, op: &Op) -> Result<(), i32> {
    let known = |scheduler: &str| st.schedulers.as_ref().is_none_or(|k| k.contains(scheduler));
    match op {
        Op::AddService(s) => {
            if st.services.contains_key(&s.key) {
                return Err(libc::EEXIST);
            }
            if !known(&s.scheduler) {
                return Err(libc::ENOENT);
            }
            let bare = Service {
                destinations: Vec::new(),
                ..s.clone()
            };
            let dests = s
                .destinations
                .iter()
                .map(|d| ((d.addr, d.port), d.clone()))
                .collect();
            st.services.insert(s.key.clone(), (bare, dests));
        }
        Op::UpdateService(s) => {
            // The kernel looks the service up before the scheduler.
            let scheduler_known = known(&s.scheduler);
            let (cur, _) = st.services.get_mut(&s.key).ok_or(libc::ESRCH)?;
            if !scheduler_known {
                return Err(libc::ENOENT);
            }
            *cur = Service {
                destinations: Vec::new(),
                ..s.clone()
            };
        }
        Op::DelService(k) => {
            st.services.remove(k).ok_or(libc::ESRCH)?;
        }
        Op::Flush => st.services.clear(),
        Op::AddDest(k, d) => {
            let (_, dests) = st.services.get_mut(k).ok_or(libc::ESRCH)?;
            if dests.contains_key(&(d.addr, d.port)) {
                return Err(libc::EEXIST);
            }
            dests.insert((d.addr, d.port), d.clone());
        }
        Op::UpdateDest(k, d) => {
            let (_, dests) = st.services.get_mut(k).ok_or(libc::ESRCH)?;
            let cur = dests.get_mut(&(d.addr, d.port)).ok_or(libc::ENOENT)?;
            *cur = d.clone();
        }
        Op::DelDest(k, addr, port) => {
            let (_, dests) = st.services.get_mut(k).ok_or(libc::ESRCH)?;
            dests.remove(&(*addr, *port)).ok_or(libc::ENOENT)?;
        }
        Op::AddVip(a) => {
            if a.is_ipv6() && st.ipv6_disabled {
                return Err(libc::EACCES);
            }
            if !st.vips.insert(*a) {
                return Err(libc::EEXIST);
            }
        }
        Op::DelVip(a) => {
            if !st.vips.remove(a) {
                return Err(libc::EADDRNOTAVAIL);
            }
        }
    }
    Ok(())
}

impl Dataplane for MemoryDataplane {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn read(&mut self) -> Result<Actual, DataplaneError> {
        let mut st = self.lock();
        st.reads += 1;
        let services = st
            .services
            .values()
            .map(|(s, d)| {
                let destinations: Vec<Destination> = d.values().cloned().collect();
                ObservedService {
                    destinations: destinations
                        .iter()
                        .map(|d| ObservedDestination {
                            destination: d.clone(),
                            active_connections: 0,
                            inactive_connections: 0,
                            stats: Stats::default(),
                        })
                        .collect(),
                    service: Service {
                        destinations,
                        ..s.clone()
                    },
                    stats: Stats::default(),
                }
            })
            .collect();
        Ok(Actual {
            services,
            vips: st.vips.clone(),
        })
    }

    fn read_view(&mut self) -> Result<View, DataplaneError> {
        self.lock().reads += 1;
        Ok(View {
            services: self
                .services()
                .into_iter()
                .map(|s| (s.key.clone(), s))
                .collect(),
            vips: self.vips(),
        })
    }

    fn read_each_until(
        &mut self,
        stop: &dyn Fn() -> bool,
        each: &mut dyn FnMut(Service),
    ) -> Result<Option<BTreeSet<IpAddr>>, DataplaneError> {
        if stop() {
            return Ok(None);
        }
        let mut st = self.lock();
        st.reads += 1;
        for (s, d) in st.services.values() {
            if stop() {
                return Ok(None);
            }
            each(Service {
                destinations: d.values().cloned().collect(),
                ..s.clone()
            });
        }
        Ok(Some(st.vips.clone()))
    }

    fn service_keys(&mut self) -> Result<Vec<ServiceKey>, DataplaneError> {
        let mut st = self.lock();
        st.lists += 1;
        Ok(st.services.keys().cloned().collect())
    }

    fn apply(&mut self, op: &Op) -> Result<(), DataplaneError> {
        let mut st = self.lock();
        if let Some(errno) = st.fail_next.take() {
            return Err(op.refused(errno));
        }
        apply_to(&mut st, op).map_err(|errno| op.refused(errno))
    }
}
