//! How one fetch of the head runs over its ordered sources (`spread::sources`): a hedged race.
//! Pure: time is an argument; the shell (`mesh/shell.rs`) does the I/O and reports what happened.
//!
//! The first source is asked at once. While no source asked so far has begun to send the
//! document, the next source is asked too every `hedge_ms` (at most [`MAX_IN_FLIGHT`] requests
//! at once), and one that fails ("not held", refused, timed out) makes the next one due at once.
//! So a parent in the spread tree that is slow to get its own copy, or a holder that went silent
//! during a network cut, costs `hedge_ms` instead of the answer timeout (2 s).
//!
//! Once a source begins to send, no more are asked and the requests that have not begun are
//! dropped (a parent that gets its copy later would send a second one for nothing). The fetch
//! fails when every source has failed or been dropped; the core then retries with a fresh list.

/// At most this many requests of one fetch wait for an answer at once.
pub const MAX_IN_FLIGHT: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attempt {
    NotAsked,
    Asked,
    Sending,
    Over,
}

/// What the shell does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Ask source `i` (an index into the fetch's sources), then call [`Race::step`] again.
    Ask(usize),
    /// Wait for a report, or until this time (ms), then call [`Race::step`] again.
    WaitUntil(u64),
    /// Wait for a report ([`Race::sending`] or [`Race::failed`]).
    Wait,
    /// Every source failed: the fetch is over without a copy.
    GiveUp,
}

/// The state of one hedged fetch.
#[derive(Clone, Debug)]
pub struct Race {
    attempts: Vec<Attempt>,
    hedge_ms: u64,
    /// When the next source may be asked even though others are still waiting for an answer;
    /// `None`: at once.
    next_due_ms: Option<u64>,
}

impl Race {
    /// A race over `sources` sources, asking the next one after `hedge_ms` without a sender.
    pub fn new(sources: usize, hedge_ms: u64) -> Self {
        Race {
            attempts: vec![Attempt::NotAsked; sources],
            hedge_ms,
            next_due_ms: None,
        }
    }

    fn count(&self, state: Attempt) -> usize {
        self.attempts.iter().filter(|a| **a == state).count()
    }

    /// What to do at `now_ms`.
    pub fn step(&mut self, now_ms: u64) -> Step {
        let sending = self.count(Attempt::Sending);
        let in_flight = self.count(Attempt::Asked) + sending;
        let next = self.attempts.iter().position(|a| *a == Attempt::NotAsked);
        if sending > 0 {
            return Step::Wait;
        }
        match next {
            None if in_flight == 0 => Step::GiveUp,
            None => Step::Wait,
            Some(_) if in_flight >= MAX_IN_FLIGHT => Step::Wait,
            Some(i) => match self.next_due_ms {
                Some(due) if in_flight > 0 && now_ms < due => Step::WaitUntil(due),
                _ => {
                    self.attempts[i] = Attempt::Asked;
                    self.next_due_ms = Some(now_ms.saturating_add(self.hedge_ms));
                    Step::Ask(i)
                }
            },
        }
    }

    /// Source `i` began to send the document. Returns the requests to drop: those still
    /// waiting for an answer.
    pub fn sending(&mut self, i: usize) -> Vec<usize> {
        if self.attempts.get(i) != Some(&Attempt::Asked) {
            return Vec::new();
        }
        self.attempts[i] = Attempt::Sending;
        let mut dropped = Vec::new();
        for (j, a) in self.attempts.iter_mut().enumerate() {
            if *a == Attempt::Asked {
                *a = Attempt::Over;
                dropped.push(j);
            }
        }
        dropped
    }

    /// Source `i` failed (or its copy did not decode): the next source is due at once.
    pub fn failed(&mut self, i: usize) {
        if let Some(a @ (Attempt::Asked | Attempt::Sending)) = self.attempts.get_mut(i) {
            *a = Attempt::Over;
            self.next_due_ms = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_quick_first_source_is_the_only_one_asked() {
        let mut race = Race::new(3, 300);
        assert_eq!(race.step(0), Step::Ask(0));
        assert_eq!(race.step(0), Step::WaitUntil(300));
        assert!(race.sending(0).is_empty());
        assert_eq!(race.step(1_000), Step::Wait);
    }

    #[test]
    fn a_silent_source_is_hedged_and_dropped_once_another_sends() {
        let mut race = Race::new(4, 300);
        assert_eq!(race.step(0), Step::Ask(0));
        assert_eq!(race.step(299), Step::WaitUntil(300));
        assert_eq!(race.step(300), Step::Ask(1));
        assert_eq!(race.step(400), Step::WaitUntil(600));
        assert_eq!(race.step(600), Step::Ask(2));
        // Three wait for an answer: no fourth.
        assert_eq!(race.step(5_000), Step::Wait);
        assert_eq!(race.sending(2), vec![0, 1]);
        assert_eq!(race.step(5_000), Step::Wait);
        // The sender fails mid-way: the last source, at once.
        race.failed(2);
        assert_eq!(race.step(5_001), Step::Ask(3));
        race.failed(3);
        assert_eq!(race.step(5_002), Step::GiveUp);
    }

    #[test]
    fn a_failure_makes_the_next_source_due_at_once() {
        let mut race = Race::new(3, 300);
        assert_eq!(race.step(0), Step::Ask(0));
        assert_eq!(race.step(100), Step::WaitUntil(300));
        race.failed(0);
        assert_eq!(race.step(100), Step::Ask(1));
        race.failed(1);
        assert_eq!(race.step(100), Step::Ask(2));
        race.failed(2);
        assert_eq!(race.step(100), Step::GiveUp);
        assert_eq!(Race::new(0, 300).step(0), Step::GiveUp);
    }

    #[derive(Clone, Debug)]
    enum Event {
        Advance(u64),
        Sending(usize),
        Failed(usize),
    }

    fn arb_event() -> impl Strategy<Value = Event> {
        prop_oneof![
            (0u64..500).prop_map(Event::Advance),
            (0usize..8).prop_map(Event::Sending),
            (0usize..8).prop_map(Event::Failed),
        ]
    }

    proptest! {
        /// Sources are asked in order, each once, never more than MAX_IN_FLIGHT waiting at
        /// once, never while one sends; the race gives up only when nothing is in flight, and
        /// when every request has failed it always ends (asks the next or gives up).
        #[test]
        fn asks_in_order_once_bounded_and_ends(
            sources in 0usize..8, hedge_ms in 1u64..1_000,
            events in proptest::collection::vec(arb_event(), 0..60),
        ) {
            let mut race = Race::new(sources, hedge_ms);
            let mut now = 0u64;
            let mut asked: Vec<usize> = Vec::new();
            let mut open: Vec<usize> = Vec::new();
            let mut sending: Option<usize> = None;
            let mut gave_up = false;
            for event in events {
                loop {
                    match race.step(now) {
                        Step::Ask(i) => {
                            prop_assert!(!gave_up);
                            prop_assert_eq!(i, asked.len(), "asked out of order");
                            prop_assert!(sending.is_none(), "asked while one sends");
                            asked.push(i);
                            open.push(i);
                            prop_assert!(open.len() <= MAX_IN_FLIGHT);
                        }
                        Step::WaitUntil(t) => {
                            prop_assert!(t > now && !open.is_empty());
                            prop_assert!(t <= now + hedge_ms);
                            break;
                        }
                        Step::Wait => {
                            prop_assert!(!open.is_empty());
                            break;
                        }
                        Step::GiveUp => {
                            prop_assert!(open.is_empty());
                            prop_assert_eq!(asked.len(), sources);
                            gave_up = true;
                            break;
                        }
                    }
                }
                match event {
                    Event::Advance(ms) => now += ms,
                    Event::Sending(i) => {
                        let dropped = race.sending(i);
                        if sending.is_none() && open.contains(&i) {
                            sending = Some(i);
                            let mut expect: Vec<usize> =
                                open.iter().copied().filter(|j| *j != i).collect();
                            expect.sort();
                            prop_assert_eq!(dropped, expect);
                            open = vec![i];
                        } else {
                            prop_assert!(dropped.is_empty());
                        }
                    }
                    Event::Failed(i) => {
                        race.failed(i);
                        open.retain(|j| *j != i);
                        if sending == Some(i) {
                            sending = None;
                        }
                    }
                }
            }
            // Every open request fails: the race then asks the rest, one at a time, and ends.
            let mut guard = 0;
            loop {
                guard += 1;
                prop_assert!(guard < 100);
                for i in std::mem::take(&mut open) {
                    race.failed(i);
                }
                match race.step(now) {
                    Step::Ask(i) => open.push(i),
                    Step::GiveUp => break,
                    other => prop_assert!(false, "stuck: {:?}", other),
                }
            }
        }
    }
}
