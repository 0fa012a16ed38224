//! The admin API's share of connections per source address: one client holding every slot
//! shut out the kubelet's probes and Prometheus (the audit of 2026-12-06), so no source gets
//! more than [`MAX_CONNECTIONS_PER_SOURCE`] of the [`super::MAX_CONNECTIONS`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Connections one source address may hold at once: a quarter of the slots.
pub const MAX_CONNECTIONS_PER_SOURCE: usize = super::MAX_CONNECTIONS / 4;

/// Open connections per source address.
#[derive(Clone, Default)]
pub(crate) struct PerSource {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One connection's place in its source's share, given back when dropped.
pub(crate) struct SourceSlot {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    source: IpAddr,
}

impl PerSource {
    /// A place for one more connection from `source`, unless it holds its share already.
    pub(crate) fn try_take(&self, source: IpAddr) -> Option<SourceSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let held = open.entry(source).or_insert(0);
        if *held >= MAX_CONNECTIONS_PER_SOURCE {
            return None;
        }
        *held += 1;
        Some(SourceSlot {
            open: self.open.clone(),
            source,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = open.get_mut(&self.source) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                open.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_its_share_and_others_keep_theirs() {
        let per = PerSource::default();
        let a: IpAddr = "198.18.0.1".parse().unwrap();
        let b: IpAddr = "198.18.0.2".parse().unwrap();
        let held: Vec<SourceSlot> = (0..MAX_CONNECTIONS_PER_SOURCE)
            .map(|_| per.try_take(a).unwrap())
            .collect();
        assert!(per.try_take(a).is_none());
        let other = per.try_take(b);
        assert!(other.is_some());
        drop(held);
        assert!(per.try_take(a).is_some());
        drop(other);
        // Nothing is kept for a source once its connections are gone.
        assert!(per.open.lock().unwrap().is_empty());
    }
}
