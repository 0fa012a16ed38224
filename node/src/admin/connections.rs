//! The admin API's connection slots: at most [`super::MAX_CONNECTIONS`] at once, at most
//! [`MAX_CONNECTIONS_PER_SOURCE`] from one address, and when every slot is taken a newcomer
//! may take the place of an idle connection from a source holding more than its own.
//!
//! Why the eviction: the caps alone let four addresses holding 16 idle connections each (and
//! reconnecting as the header deadline closed them) refuse every other client, the kubelet's
//! liveness probe included, which then restarts the pod (a network probe, 2026-12-07). An idle
//! connection (no request in progress: a fresh one that has sent nothing yet, or a keep-alive
//! one between requests) loses nothing when closed, and taking it from the source holding the
//! most keeps the slots shared out: a newcomer from a new address always gets in, while a
//! source can never grow past another by evicting it. A connection busy with a request is
//! never closed for a newcomer, nor one whose task has not run yet: a burst of accepts (the
//! accept loop runs before the tasks it spawned) evicted connections whose request had arrived
//! but was not read yet, resetting about a quarter of the probes of a client among 1,000
//! churning addresses (a network probe); the accept loop now also yields after each accept.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// Connections one source address may hold at once: a quarter of the slots.
pub const MAX_CONNECTIONS_PER_SOURCE: usize = super::MAX_CONNECTIONS / 4;

/// Why a connection was turned away (its `shoal_admin_refused_total` reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Its source holds [`MAX_CONNECTIONS_PER_SOURCE`] already.
    SourceCap,
    /// Every slot is taken and none may be given to it.
    ConnectionCap,
}

/// One open connection, as the choice of an eviction sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Open {
    pub id: u64,
    pub source: IpAddr,
    pub opened: Instant,
    pub idle: bool,
}

/// The connection a newcomer from `newcomer` takes the place of when every slot is taken: an
/// idle one whose source holds more connections than the newcomer's, from the source holding
/// the most, the oldest of those. `None` when there is none.
pub(crate) fn victim(open: &[Open], newcomer: IpAddr) -> Option<u64> {
    let mut held: HashMap<IpAddr, usize> = HashMap::new();
    for c in open {
        *held.entry(c.source).or_default() += 1;
    }
    let newcomer_holds = held.get(&newcomer).copied().unwrap_or(0);
    open.iter()
        .filter(|c| c.idle && held[&c.source] > newcomer_holds)
        .max_by(|a, b| {
            held[&a.source]
                .cmp(&held[&b.source])
                .then(b.opened.cmp(&a.opened))
                .then(b.id.cmp(&a.id))
        })
        .map(|c| c.id)
}

/// The open connections, shared by the accept loop and the connections' tasks.
#[derive(Clone, Default)]
pub(crate) struct Connections {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    open: HashMap<u64, Entry>,
}

struct Entry {
    source: IpAddr,
    opened: Instant,
    in_request: Arc<AtomicUsize>,
    started: Arc<AtomicBool>,
    evict: CancellationToken,
}

/// A connection's slot, given back when dropped.
pub(crate) struct Slot {
    inner: Arc<Mutex<Inner>>,
    id: u64,
    /// Requests in progress on this connection (the connection's service counts them).
    pub in_request: Arc<AtomicUsize>,
    /// Set by the connection's task when it first runs, just before it reads the request:
    /// until then the connection is not idle but unread.
    pub started: Arc<AtomicBool>,
    /// Cancelled when a newcomer takes this connection's place.
    pub evict: CancellationToken,
}

/// Whether a slot was taken by closing an idle connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admitted {
    Free,
    Evicted,
}

impl Connections {
    /// A slot for a connection from `source` (taking an idle one's place if every slot is
    /// taken), or why not.
    pub(crate) fn admit(&self, source: IpAddr, now: Instant) -> Result<(Slot, Admitted), Refused> {
        let mut inner = lock(&self.inner);
        let from_source = inner.open.values().filter(|e| e.source == source).count();
        if from_source >= MAX_CONNECTIONS_PER_SOURCE {
            return Err(Refused::SourceCap);
        }
        let mut admitted = Admitted::Free;
        if inner.open.len() >= super::MAX_CONNECTIONS {
            let open: Vec<Open> = inner
                .open
                .iter()
                .map(|(&id, e)| Open {
                    id,
                    source: e.source,
                    opened: e.opened,
                    idle: e.started.load(Ordering::SeqCst)
                        && e.in_request.load(Ordering::SeqCst) == 0,
                })
                .collect();
            let id = victim(&open, source).ok_or(Refused::ConnectionCap)?;
            if let Some(gone) = inner.open.remove(&id) {
                gone.evict.cancel();
            }
            admitted = Admitted::Evicted;
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let entry = Entry {
            source,
            opened: now,
            in_request: Arc::default(),
            started: Arc::default(),
            evict: CancellationToken::new(),
        };
        let slot = Slot {
            inner: self.inner.clone(),
            id,
            in_request: entry.in_request.clone(),
            started: entry.started.clone(),
            evict: entry.evict.clone(),
        };
        inner.open.insert(id, entry);
        Ok((slot, admitted))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.inner).open.remove(&self.id);
    }
}

/// Counts one request in progress on a connection while it lives.
pub(crate) struct InRequest(Arc<AtomicUsize>);

impl InRequest {
    pub(crate) fn enter(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        InRequest(count.clone())
    }
}

impl Drop for InRequest {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([198, 18, 0, n])
    }

    fn fill(conns: &Connections, sources: &[u8], per_source: usize, t0: Instant) -> Vec<Slot> {
        let mut slots = Vec::new();
        for (i, &s) in sources.iter().enumerate() {
            for j in 0..per_source {
                let at = t0 + Duration::from_millis((i * per_source + j) as u64);
                let slot = conns.admit(ip(s), at).expect("a free slot").0;
                slot.started.store(true, Ordering::SeqCst);
                slots.push(slot);
            }
        }
        slots
    }

    /// Accepted in a burst, before their tasks ran: their requests may be waiting unread.
    #[test]
    fn a_connection_whose_task_has_not_run_is_never_evicted() {
        let conns = Connections::default();
        let t0 = Instant::now();
        let held = fill(&conns, &[1, 2, 3, 4], MAX_CONNECTIONS_PER_SOURCE, t0);
        for s in &held {
            s.started.store(false, Ordering::SeqCst);
        }
        assert_eq!(conns.admit(ip(5), t0).err(), Some(Refused::ConnectionCap));
        held[3].started.store(true, Ordering::SeqCst);
        assert_eq!(
            conns.admit(ip(5), t0).map(|(_, how)| how).ok(),
            Some(Admitted::Evicted)
        );
        assert!(held[3].evict.is_cancelled());
    }

    #[test]
    fn a_source_gets_its_share_and_others_keep_theirs() {
        let conns = Connections::default();
        let t0 = Instant::now();
        let held = fill(&conns, &[1], MAX_CONNECTIONS_PER_SOURCE, t0);
        assert_eq!(conns.admit(ip(1), t0).err(), Some(Refused::SourceCap));
        let other = conns.admit(ip(2), t0).expect("another source");
        assert_eq!(other.1, Admitted::Free);
        drop(held);
        assert!(conns.admit(ip(1), t0).is_ok());
        drop(other);
        // Nothing is kept for a source once its connections are gone.
        assert!(lock(&conns.inner).open.is_empty());
    }

    /// Four sources holding their shares (every slot) no longer shut out a fifth: the oldest
    /// idle connection of a source at its share makes way, and is told so.
    #[test]
    fn a_new_source_takes_an_idle_place_when_every_slot_is_taken() {
        let conns = Connections::default();
        let t0 = Instant::now();
        let held = fill(&conns, &[1, 2, 3, 4], MAX_CONNECTIONS_PER_SOURCE, t0);
        let (probe, how) = conns.admit(ip(5), t0).expect("the fifth source gets in");
        assert_eq!(how, Admitted::Evicted);
        assert!(
            held[0].evict.is_cancelled(),
            "the oldest idle one makes way"
        );
        assert_eq!(held.iter().filter(|s| s.evict.is_cancelled()).count(), 1);
        drop(probe);
    }

    #[test]
    fn a_connection_in_a_request_is_never_evicted() {
        let conns = Connections::default();
        let t0 = Instant::now();
        let held = fill(&conns, &[1, 2, 3, 4], MAX_CONNECTIONS_PER_SOURCE, t0);
        let busy: Vec<InRequest> = held
            .iter()
            .map(|s| InRequest::enter(&s.in_request))
            .collect();
        assert_eq!(conns.admit(ip(5), t0).err(), Some(Refused::ConnectionCap));
        drop(busy);
        assert!(conns.admit(ip(5), t0).is_ok());
    }

    /// A source cannot grow past another by evicting it: 64 sources holding one each leave
    /// no room to a 65th connection from one of them, only to a new source.
    #[test]
    fn a_source_never_evicts_one_holding_no_more_than_it() {
        let conns = Connections::default();
        let t0 = Instant::now();
        let sources: Vec<u8> = (1..=super::super::MAX_CONNECTIONS as u8).collect();
        let held = fill(&conns, &sources, 1, t0);
        assert_eq!(conns.admit(ip(1), t0).err(), Some(Refused::ConnectionCap));
        assert!(held.iter().all(|s| !s.evict.is_cancelled()));
        assert!(conns.admit(ip(200), t0).is_ok());
    }

    proptest! {
        /// The victim is idle, from a source holding the most among the idle candidates and
        /// more than the newcomer's, and no such connection is older.
        #[test]
        fn the_victim_is_the_oldest_idle_of_the_largest_source(
            conns in proptest::collection::vec((0u8..6, 0u64..50, any::<bool>()), 0..40),
            newcomer in 0u8..7,
        ) {
            let t0 = Instant::now();
            let open: Vec<Open> = conns
                .iter()
                .enumerate()
                .map(|(i, &(s, at, idle))| Open {
                    id: i as u64,
                    source: ip(s),
                    opened: t0 + Duration::from_millis(at),
                    idle,
                })
                .collect();
            let held = |s: IpAddr| open.iter().filter(|c| c.source == s).count();
            let mine = held(ip(newcomer));
            let eligible: Vec<&Open> =
                open.iter().filter(|c| c.idle && held(c.source) > mine).collect();
            match victim(&open, ip(newcomer)) {
                None => prop_assert!(eligible.is_empty()),
                Some(id) => {
                    let v = open.iter().find(|c| c.id == id).unwrap();
                    prop_assert!(v.idle && held(v.source) > mine);
                    let most = eligible.iter().map(|c| held(c.source)).max().unwrap();
                    prop_assert_eq!(held(v.source), most);
                    prop_assert!(eligible
                        .iter()
                        .filter(|c| held(c.source) == most)
                        .all(|c| c.opened >= v.opened));
                }
            }
        }
    }
}
