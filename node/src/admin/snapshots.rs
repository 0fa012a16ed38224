//! Whole reads kept for a while under an id, so that a client pages through one read instead
//! of paying a new one per page (a read of 10,000 IPVS services takes seconds under
//! emulation), and so that every page comes from the same instant: pages of separate reads
//! skip or repeat entries when the table changes between them.
//!
//! Bounded both ways: a read is kept for `ttl` after it was taken, and at most `max` are kept,
//! so clients that never come back cost a few reads' memory for a minute at most. When room
//! is needed the read used least lately goes: a client taking a new read every second pushes
//! out its own earlier reads, not the one another client is paging through. No I/O and no
//! clock of its own: the caller passes `now`.

use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Snapshots<T> {
    kept: Vec<Kept<T>>,
    ttl: Duration,
    max: usize,
}

struct Kept<T> {
    id: String,
    taken: Instant,
    used: Instant,
    value: Arc<T>,
}

impl<T> Snapshots<T> {
    pub fn new(ttl: Duration, max: usize) -> Self {
        Snapshots {
            kept: Vec::new(),
            ttl,
            max: max.max(1),
        }
    }

    /// Keeps `value`, read at `taken`, under `id`.
    pub fn keep(&mut self, id: String, value: Arc<T>, taken: Instant) {
        self.expire(taken);
        while self.kept.len() >= self.max {
            let Some((least, _)) = self.kept.iter().enumerate().min_by_key(|(_, k)| k.used) else {
                break;
            };
            self.kept.swap_remove(least);
        }
        self.kept.push(Kept {
            id,
            taken,
            used: taken,
            value,
        });
    }

    /// The read kept under `id` and its age, unless it expired or was pushed out.
    pub fn get(&mut self, id: &str, now: Instant) -> Option<(Arc<T>, Duration)> {
        self.expire(now);
        let k = self.kept.iter_mut().find(|k| k.id == id)?;
        k.used = now;
        Some((k.value.clone(), now.saturating_duration_since(k.taken)))
    }

    /// Drops the reads whose time is up (also done by `keep` and `get`).
    pub fn expire(&mut self, now: Instant) {
        let ttl = self.ttl;
        self.kept
            .retain(|k| now.saturating_duration_since(k.taken) < ttl);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_read_is_served_under_its_id_until_its_time_is_up() {
        let t0 = Instant::now();
        let mut s = Snapshots::new(TTL, 4);
        s.keep("a".into(), Arc::new(1), t0);
        let (value, age) = s.get("a", t0 + ms(59_999)).expect("kept");
        assert_eq!((*value, age), (1, ms(59_999)));
        assert!(s.get("a", t0 + TTL).is_none(), "kept past its time");
        assert!(s.get("b", t0).is_none(), "an id never given");
    }

    #[test]
    fn the_read_used_least_lately_goes_first_when_too_many_are_kept() {
        let t0 = Instant::now();
        let mut s = Snapshots::new(TTL, 3);
        s.keep("paged".into(), Arc::new(0), t0);
        // One client takes a new read every 100 ms while another pages through "paged".
        for i in 1..=20u64 {
            s.keep(format!("poll{i}"), Arc::new(i), t0 + ms(100 * i));
            assert!(s.get("paged", t0 + ms(100 * i + 50)).is_some(), "page {i}");
        }
        assert!(s.get("poll20", t0 + ms(2_100)).is_some());
        assert!(s.get("poll19", t0 + ms(2_100)).is_some());
        assert!(
            s.get("poll18", t0 + ms(2_100)).is_none(),
            "more than 3 kept"
        );
        // Left alone, the paged read is the least used one and goes next.
        s.keep("a".into(), Arc::new(21), t0 + ms(2_200));
        s.keep("b".into(), Arc::new(22), t0 + ms(2_300));
        assert!(s.get("paged", t0 + ms(2_400)).is_none());
    }

    #[test]
    fn an_expired_read_does_not_count_against_the_limit() {
        let t0 = Instant::now();
        let mut s = Snapshots::new(TTL, 2);
        s.keep("a".into(), Arc::new(1), t0);
        s.keep("b".into(), Arc::new(2), t0 + ms(30_000));
        // "a" has expired by now: keeping "c" makes room by dropping it, not "b".
        s.keep("c".into(), Arc::new(3), t0 + ms(60_000));
        assert_eq!(*s.get("b", t0 + ms(60_001)).unwrap().0, 2);
        assert_eq!(*s.get("c", t0 + ms(60_001)).unwrap().0, 3);
    }

    #[test]
    fn a_page_in_flight_keeps_its_read_after_eviction() {
        let t0 = Instant::now();
        let mut s = Snapshots::new(TTL, 1);
        s.keep("a".into(), Arc::new(vec![1, 2, 3]), t0);
        let (in_flight, _) = s.get("a", t0).expect("kept");
        s.keep("b".into(), Arc::new(vec![4]), t0);
        assert!(s.get("a", t0).is_none());
        assert_eq!(
            *in_flight,
            vec![1, 2, 3],
            "a handler still holds what it was given"
        );
    }
}
