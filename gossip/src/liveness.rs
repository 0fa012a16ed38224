//! Liveness of one member as one observer judges it, from the heartbeat values gossip shows:
//! pure, time as a number. The replica core runs [`Beats::alive`] at every control tick (25 ms)
//! instead of waiting for chitchat's own liveness pass, which runs once per gossip round
//! (100 ms, later under load): a takeover that needs several members judged dead (a `halves`
//! cut leaves the smaller side waiting for every lower id across the cut) waited for the
//! slowest of several such passes.
//!
//! The rule is chitchat 0.11's phi accrual (phi = time since the heartbeat last advanced /
//! smoothed mean interval; dead above the threshold; alive only once an interval was seen), with
//! two changes, both about not blaming a member for time that was not its own:
//! - *The observer's own pauses do not count.* Time this node's control loop lost (a tick later
//!   than `pause_allowance_ms`: the process was frozen or starved) is taken off a member's
//!   silence and off the interval it falls in. A guest-wide stall stops every member's clock
//!   alike; the observer sees it as its own pause, so nobody is judged dead for it (the VM lab's
//!   starved guest judged live replicas dead when only gaps were capped, see docs/chaos.md).
//! - *An outage is not an interval.* The window is cleared when the member is judged dead (as
//!   chitchat does) and the gap that spans the outage is not added either: chitchat adds it (up to
//!   `max_interval`), so a member back from a 1.4 s cut had a mean of ~300 ms and its next death
//!   took seconds to see.

use std::collections::VecDeque;

/// The detector's settings (from [`crate::Timing`]).
#[derive(Clone, Debug, PartialEq)]
pub struct LivenessTiming {
    pub phi_threshold: f64,
    /// A member another live member reports dead (`replica/report.rs`) is judged dead here
    /// once its phi passes this lower bar.
    pub confirm_phi: f64,
    /// Prior mean interval (additive smoothing with weight 5, as chitchat).
    pub prior_interval_ms: u64,
    /// Longer intervals are not averaged in.
    pub max_interval_ms: u64,
    /// At most this many intervals are averaged (the newest).
    pub window: usize,
    /// A control tick later than this after the previous one is the observer's own pause: the
    /// excess does not count against members.
    pub pause_allowance_ms: u64,
}

impl From<&crate::Timing> for LivenessTiming {
    fn from(t: &crate::Timing) -> Self {
        LivenessTiming {
            phi_threshold: t.liveness_phi_threshold,
            confirm_phi: t.liveness_confirm_phi,
            prior_interval_ms: t.initial_interval_ms,
            max_interval_ms: (t.gossip_interval_ms * 20).max(2_000),
            window: 1_000,
            pause_allowance_ms: t.gossip_interval_ms.max(4 * t.control_tick_ms),
        }
    }
}

/// Weight of the prior mean, in intervals (chitchat's additive smoothing).
const PRIOR_WEIGHT: f64 = 5.0;

/// One member's heartbeat as this observer saw it advance.
#[derive(Clone, Debug, PartialEq)]
pub struct Beats {
    beat: u64,
    /// When the heartbeat last advanced, and the observer's lost time then.
    advanced_ms: u64,
    lost_at_advance_ms: u64,
    intervals: VecDeque<u64>,
    sum_ms: u64,
    /// Judged dead since the last advance: the next gap is an outage, not an interval.
    outage: bool,
}

impl Beats {
    /// First sight of a member at heartbeat `beat`.
    pub fn new(beat: u64, now_ms: u64, lost_ms: u64) -> Self {
        Beats {
            beat,
            advanced_ms: now_ms,
            lost_at_advance_ms: lost_ms,
            intervals: VecDeque::new(),
            sum_ms: 0,
            outage: false,
        }
    }

    /// The heartbeat read now; `lost_ms` is the observer's lost time so far (it only grows).
    pub fn observe(&mut self, beat: u64, now_ms: u64, lost_ms: u64, t: &LivenessTiming) {
        if beat <= self.beat {
            return;
        }
        let lost = lost_ms.saturating_sub(self.lost_at_advance_ms);
        let interval = now_ms.saturating_sub(self.advanced_ms).saturating_sub(lost);
        if !self.outage && interval <= t.max_interval_ms {
            self.intervals.push_back(interval);
            self.sum_ms += interval;
            while self.intervals.len() > t.window.max(1) {
                if let Some(old) = self.intervals.pop_front() {
                    self.sum_ms -= old;
                }
            }
        }
        self.outage = false;
        self.beat = beat;
        self.advanced_ms = now_ms;
        self.lost_at_advance_ms = lost_ms;
    }

    /// Time since the heartbeat last advanced, the observer's lost time taken off.
    pub fn silence_ms(&self, now_ms: u64, lost_ms: u64) -> u64 {
        let lost = lost_ms.saturating_sub(self.lost_at_advance_ms);
        self.age_ms(now_ms).saturating_sub(lost)
    }

    /// Time since the heartbeat last advanced, as the clock says.
    pub fn age_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.advanced_ms)
    }

    /// The smoothed mean interval.
    pub fn mean_ms(&self, t: &LivenessTiming) -> f64 {
        (self.sum_ms as f64 + PRIOR_WEIGHT * t.prior_interval_ms as f64)
            / (self.intervals.len() as f64 + PRIOR_WEIGHT)
    }

    /// Silence over the mean interval; `None` until an interval was seen since the last death.
    pub fn phi(&self, now_ms: u64, lost_ms: u64, t: &LivenessTiming) -> Option<f64> {
        if self.intervals.is_empty() {
            return None;
        }
        Some(self.silence_ms(now_ms, lost_ms) as f64 / self.mean_ms(t).max(1.0))
    }

    /// Alive: an interval was seen since the last death, and phi is at most the threshold.
    pub fn alive(&self, now_ms: u64, lost_ms: u64, t: &LivenessTiming) -> bool {
        self.alive_given(false, now_ms, lost_ms, t)
    }

    /// Alive, and not reported dead by a peer (`reported`) while silent past the confirm bar.
    pub fn alive_given(
        &self,
        reported: bool,
        now_ms: u64,
        lost_ms: u64,
        t: &LivenessTiming,
    ) -> bool {
        let bar = if reported {
            t.confirm_phi.min(t.phi_threshold)
        } else {
            t.phi_threshold
        };
        self.phi(now_ms, lost_ms, t).is_some_and(|phi| phi <= bar)
    }

    /// The member was judged dead: forget its intervals, and do not count the outage as one.
    pub fn mark_dead(&mut self) {
        self.intervals.clear();
        self.sum_ms = 0;
        self.outage = true;
    }
}

/// The observer's lost time after a tick `gap_ms` after the previous one.
pub fn lost_after_tick(lost_ms: u64, gap_ms: u64, t: &LivenessTiming) -> u64 {
    lost_ms + gap_ms.saturating_sub(t.pause_allowance_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t() -> LivenessTiming {
        LivenessTiming {
            phi_threshold: 8.0,
            confirm_phi: 5.0,
            prior_interval_ms: 100,
            max_interval_ms: 2_000,
            window: 1_000,
            pause_allowance_ms: 100,
        }
    }

    /// Beats every `every_ms` from 0 to `until_ms`, observed with no lost time.
    fn steady(every_ms: u64, until_ms: u64) -> Beats {
        let mut b = Beats::new(0, 0, 0);
        let mut beat = 0;
        let mut now = every_ms;
        while now <= until_ms {
            beat += 1;
            b.observe(beat, now, 0, &t());
            now += every_ms;
        }
        b
    }

    #[test]
    fn alive_only_after_an_interval() {
        let mut b = Beats::new(7, 0, 0);
        assert!(!b.alive(0, 0, &t()), "heard once: not judged alive yet");
        b.observe(8, 100, 0, &t());
        assert!(b.alive(100, 0, &t()));
    }

    #[test]
    fn dead_after_threshold_times_the_mean() {
        let b = steady(100, 2_000);
        // mean 100 ms: alive at 800 ms of silence, dead just after.
        assert!(b.alive(2_000 + 800, 0, &t()));
        assert!(!b.alive(2_000 + 825, 0, &t()));
    }

    #[test]
    fn the_observers_own_pause_does_not_count() {
        let b = steady(100, 2_000);
        // 1.5 s later, but this observer was frozen 1.4 s of it (lost 1,400 ms).
        assert!(b.alive(3_500, 1_400, &t()));
        assert!(!b.alive(3_500, 0, &t()));
    }

    #[test]
    fn an_outage_is_not_an_interval() {
        let mut b = steady(100, 2_000);
        b.mark_dead();
        // Back 1.4 s later: not alive on one beat, alive on the next, mean still ~100 ms.
        b.observe(100, 3_400, 0, &t());
        assert!(!b.alive(3_400, 0, &t()));
        b.observe(101, 3_500, 0, &t());
        assert!(b.alive(3_500, 0, &t()));
        assert!((b.mean_ms(&t()) - 100.0).abs() < 1e-9);
        assert!(!b.alive(3_500 + 825, 0, &t()));
    }

    #[test]
    fn a_pause_inside_an_interval_is_taken_off_it() {
        let mut b = steady(100, 1_000);
        b.observe(11, 2_100, 1_000, &t());
        assert!((b.mean_ms(&t()) - 100.0).abs() < 1e-9);
    }

    #[test]
    fn long_gaps_are_left_out_and_the_window_is_bounded() {
        let mut b = Beats::new(0, 0, 0);
        b.observe(1, 3_000, 0, &t());
        assert!(!b.alive(3_000, 0, &t()), "a 3 s gap is not an interval");
        let small = LivenessTiming { window: 3, ..t() };
        for i in 2..10 {
            b.observe(i, 3_000 + (i - 1) * 50, 0, &small);
        }
        assert_eq!(b.intervals.len(), 3);
        assert_eq!(b.sum_ms, 150);
    }

    #[test]
    fn lost_time_counts_only_the_excess() {
        assert_eq!(lost_after_tick(10, 25, &t()), 10);
        assert_eq!(lost_after_tick(10, 1_100, &t()), 1_010);
    }

    proptest! {
        /// Longer silence never makes a dead member alive.
        #[test]
        fn judgement_is_monotone_in_silence(
            gaps in proptest::collection::vec(1u64..400, 1..40), a in 0u64..5_000, b in 0u64..5_000,
        ) {
            let mut beats = Beats::new(0, 0, 0);
            let mut now = 0;
            for (i, g) in gaps.iter().enumerate() {
                now += g;
                beats.observe(i as u64 + 1, now, 0, &t());
            }
            let (short, long) = (a.min(b), a.max(b));
            if !beats.alive(now + short, 0, &t()) {
                prop_assert!(!beats.alive(now + long, 0, &t()));
            }
        }

        /// A stall of the whole machine (the observer and the member stop alike, for any
        /// length) never gets a member that was alive judged dead.
        #[test]
        fn a_guest_wide_stall_kills_nobody(
            gaps in proptest::collection::vec(1u64..300, 1..40),
            stall in 0u64..30_000, since_beat in 0u64..300,
            // The default threshold (`Timing::liveness_phi_threshold`) and chitchat's.
            phi in prop_oneof![Just(4.5), Just(8.0)],
        ) {
            let t = LivenessTiming { phi_threshold: phi, ..t() };
            let mut beats = Beats::new(0, 0, 0);
            let mut now = 0;
            for (i, g) in gaps.iter().enumerate() {
                now += g;
                beats.observe(i as u64 + 1, now, 0, &t);
            }
            let before = now + since_beat;
            prop_assume!(beats.alive(before, 0, &t));
            // The observer's next tick comes `stall` late: all of it beyond the allowance is
            // its own lost time.
            let lost = lost_after_tick(0, stall + t.pause_allowance_ms, &t);
            prop_assert!(beats.alive(before + stall, lost, &t));
        }

        /// A member silent longer than the threshold times its largest possible mean while the
        /// observer ran is dead.
        #[test]
        fn a_silent_member_is_judged_dead(
            gaps in proptest::collection::vec(1u64..2_000, 1..40), extra in 1u64..1_000,
        ) {
            let mut beats = Beats::new(0, 0, 0);
            let mut now = 0;
            for (i, g) in gaps.iter().enumerate() {
                now += g;
                beats.observe(i as u64 + 1, now, 0, &t());
            }
            let bound = (t().phi_threshold * 2_000.0) as u64;
            prop_assert!(!beats.alive(now + bound + extra, 0, &t()));
        }
    }
}
