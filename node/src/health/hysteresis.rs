//! One checker's opinion of one backend: a rise/fall state machine fed probe outcomes.
//!
//! A checker starts `Unknown` (its opinion is not counted by the verdict yet); `rise` successes
//! in a row make it `Up`, `fall` failures in a row make it `Down`. A flapping backend therefore
//! cannot change the opinion more often than once per `min(rise, fall)` probes.

use serde::{Deserialize, Serialize};

/// A checker's settled opinion of a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckState {
    /// Not enough probes yet to say; the verdict ignores it.
    Unknown,
    Up,
    Down,
}

/// Rise/fall hysteresis for one (checker, backend) pair. Time is passed in, never read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hysteresis {
    state: CheckState,
    ok_in_row: u32,
    failed_in_row: u32,
    since_ms: u64,
}

impl Hysteresis {
    pub fn new(now_ms: u64) -> Self {
        Hysteresis {
            state: CheckState::Unknown,
            ok_in_row: 0,
            failed_in_row: 0,
            since_ms: now_ms,
        }
    }

    pub fn state(&self) -> CheckState {
        self.state
    }

    /// When the state last changed (unix ms, or creation time while `Unknown`).
    pub fn since_ms(&self) -> u64 {
        self.since_ms
    }

    /// Feeds one probe outcome; returns true when the state changed. `rise`/`fall` of 0 act as 1.
    pub fn observe(&mut self, success: bool, rise: u32, fall: u32, now_ms: u64) -> bool {
        let target = if success {
            self.ok_in_row = self.ok_in_row.saturating_add(1);
            self.failed_in_row = 0;
            (self.ok_in_row >= rise.max(1)).then_some(CheckState::Up)
        } else {
            self.failed_in_row = self.failed_in_row.saturating_add(1);
            self.ok_in_row = 0;
            (self.failed_in_row >= fall.max(1)).then_some(CheckState::Down)
        };
        match target {
            Some(next) if next != self.state => {
                self.state = next;
                self.since_ms = now_ms;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rises_and_falls_after_counts() {
        let mut h = Hysteresis::new(0);
        assert!(!h.observe(true, 2, 3, 1));
        assert_eq!(h.state(), CheckState::Unknown);
        assert!(h.observe(true, 2, 3, 2));
        assert_eq!((h.state(), h.since_ms()), (CheckState::Up, 2));
        assert!(!h.observe(false, 2, 3, 3));
        assert!(!h.observe(false, 2, 3, 4));
        assert!(h.observe(false, 2, 3, 5));
        assert_eq!((h.state(), h.since_ms()), (CheckState::Down, 5));
        assert!(!h.observe(false, 2, 3, 6));
        assert!(!h.observe(true, 2, 3, 7));
        assert!(h.observe(true, 2, 3, 8));
        assert_eq!(h.state(), CheckState::Up);
    }

    #[test]
    fn zero_counts_act_as_one() {
        let mut h = Hysteresis::new(0);
        assert!(h.observe(false, 0, 0, 1));
        assert_eq!(h.state(), CheckState::Down);
        assert!(h.observe(true, 0, 0, 2));
        assert_eq!(h.state(), CheckState::Up);
    }

    proptest! {
        /// Each change is preceded by at least `rise` (or `fall`) equal outcomes in a row, so a
        /// flapping backend cannot flip the opinion faster than the counts allow.
        #[test]
        fn changes_need_a_full_run(outcomes in prop::collection::vec(any::<bool>(), 0..200), rise in 1u32..5, fall in 1u32..5) {
            let mut h = Hysteresis::new(0);
            for (i, &ok) in outcomes.iter().enumerate() {
                let changed = h.observe(ok, rise, fall, i as u64);
                if changed {
                    let need = if ok { rise } else { fall } as usize;
                    prop_assert!(i + 1 >= need);
                    prop_assert!(outcomes[i + 1 - need..=i].iter().all(|&o| o == ok));
                    prop_assert_eq!(h.state(), if ok { CheckState::Up } else { CheckState::Down });
                }
            }
        }

        /// Strict alternation never settles once rise and fall are both above one.
        #[test]
        fn alternation_never_changes_a_settled_state(rise in 2u32..6, fall in 2u32..6, n in 0usize..100) {
            let mut h = Hysteresis::new(0);
            for i in 0..rise { h.observe(true, rise, fall, i as u64); }
            prop_assert_eq!(h.state(), CheckState::Up);
            for i in 0..n {
                prop_assert!(!h.observe(i % 2 == 0, rise, fall, 100 + i as u64));
            }
        }
    }
}
