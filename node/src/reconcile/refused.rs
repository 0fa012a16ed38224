//! Services the kernel refused to program (a scheduler whose module this kernel lacks): left
//! out of the dataplane, named, and tried again later, so that one Service that cannot be
//! programmed does not fail every pass. Before, every replica failed the same way, none
//! reported its head applied, and every VIP was withdrawn (a probe on real IPVS).
//! Pure: the pass hands in the desired services and the time.

use shoal_dataplane::{Service, ServiceKey};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A refused service is tried again after this, or at once when the table changes it.
pub const RETRY_AFTER: Duration = Duration::from_secs(60);

/// How many refusals (a service, or a VIP with every service on it) one pass may set aside
/// before it gives up and fails: each costs a whole read of the table and another try.
pub const MAX_PER_PASS: usize = 8;

#[derive(Debug, Default)]
pub struct Refused {
    by_key: BTreeMap<ServiceKey, Refusal>,
}

#[derive(Debug, Clone)]
struct Refusal {
    /// The service as the table asked for it when it was refused.
    asked: Service,
    error: String,
    at: Instant,
    /// Refused with its VIP (an IPv6 VIP where IPv6 is disabled): its service went into the
    /// kernel while its address did not, so it is deleted at once, not drained.
    with_vip: bool,
}

impl Refused {
    /// Forgets the refusals that are due a retry at `now`: the service is gone from the table,
    /// changed there, or was refused `RETRY_AFTER` ago.
    pub fn expire(&mut self, desired: &[Service], now: Instant) {
        // Every pass asks: the usual answer, nothing refused, needs no index of the table.
        if self.by_key.is_empty() {
            return;
        }
        let wanted: BTreeMap<&ServiceKey, &Service> = desired.iter().map(|s| (&s.key, s)).collect();
        self.by_key.retain(|key, r| {
            wanted.get(key).is_some_and(|s| **s == r.asked)
                && now.saturating_duration_since(r.at) < RETRY_AFTER
        });
    }

    /// Whether `key` is set aside.
    pub fn contains(&self, key: &ServiceKey) -> bool {
        self.by_key.contains_key(key)
    }

    /// Sets `service` aside for `error`.
    pub fn insert(&mut self, service: &Service, error: String, now: Instant) {
        self.set_aside(service, error, now, false);
    }

    /// Sets `service` aside because the kernel refused its VIP (`error`).
    pub fn insert_with_vip(&mut self, service: &Service, error: String, now: Instant) {
        self.set_aside(service, error, now, true);
    }

    fn set_aside(&mut self, service: &Service, error: String, now: Instant, with_vip: bool) {
        let refusal = Refusal {
            asked: service.clone(),
            error,
            at: now,
            with_vip,
        };
        self.by_key.insert(service.key.clone(), refusal);
    }

    /// The services set aside with their VIP: the kernel may hold them without it, and the
    /// planner, which owns a service by its VIP, would leave them there for good.
    pub fn refused_with_vip(&self) -> impl Iterator<Item = &ServiceKey> {
        self.by_key
            .iter()
            .filter(|(_, r)| r.with_vip)
            .map(|(k, _)| k)
    }

    /// Each service set aside, with the kernel's refusal (`tcp 203.0.113.1:80: ...`).
    pub fn listed(&self) -> Vec<String> {
        self.by_key
            .iter()
            .map(|(key, r)| format!("{key}: {}", r.error))
            .collect()
    }

    /// The services set aside.
    pub fn keys(&self) -> impl Iterator<Item = &ServiceKey> {
        self.by_key.keys()
    }

    /// When the first refusal is due a retry.
    pub fn next_retry(&self) -> Option<Instant> {
        self.by_key.values().map(|r| r.at + RETRY_AFTER).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_dataplane::model::{Protocol, SchedFlags};

    #[test]
    fn a_refusal_lasts_until_the_table_changes_the_service_or_the_retry_is_due() {
        let t0 = Instant::now();
        let asked = Service {
            key: ServiceKey::Addr {
                addr: [203, 0, 113, 1].into(),
                port: 80,
                protocol: Protocol::Tcp,
            },
            scheduler: "sed".into(),
            flags: SchedFlags::default(),
            persistence_timeout_s: 0,
            destinations: vec![],
        };
        let mut refused = Refused::default();
        refused.insert(&asked, "no scheduler".into(), t0);
        refused.expire(std::slice::from_ref(&asked), t0 + Duration::from_secs(59));
        assert!(refused.contains(&asked.key));
        assert_eq!(refused.listed(), [format!("{}: no scheduler", asked.key)]);
        assert_eq!(refused.next_retry(), Some(t0 + RETRY_AFTER));
        refused.expire(std::slice::from_ref(&asked), t0 + RETRY_AFTER);
        assert!(!refused.contains(&asked.key), "due a retry");

        refused.insert(&asked, "no scheduler".into(), t0);
        let changed = Service {
            scheduler: "rr".into(),
            ..asked.clone()
        };
        refused.expire(std::slice::from_ref(&changed), t0);
        assert!(!refused.contains(&asked.key), "the table changed it");

        refused.insert(&asked, "no scheduler".into(), t0);
        refused.expire(&[], t0);
        assert!(!refused.contains(&asked.key), "gone from the table");
        assert_eq!(refused.next_retry(), None);
    }
}
