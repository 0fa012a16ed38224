//! A token bucket: up to `burst` tokens, refilled at `per_s` a second. One per key in the
//! transport's two limits, incoming handshakes per source IP (`admission.rs`) and this node's
//! own gossip rounds per peer (`pace.rs`). Pure: time is passed in.

use std::time::Instant;

/// How fast a bucket refills and how much it holds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Rate {
    pub per_s: f64,
    pub burst: f64,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Bucket {
    /// Tokens held at `at`, before the refill since.
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket: what a key never seen gets.
    pub(crate) fn full(rate: Rate, now: Instant) -> Self {
        Bucket {
            tokens: rate.burst,
            at: now,
        }
    }

    /// The tokens held now.
    pub(crate) fn held(&self, rate: Rate, now: Instant) -> f64 {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * rate.per_s;
        (self.tokens + refill).min(rate.burst)
    }

    /// Full now: nothing to remember about its key.
    pub(crate) fn is_full(&self, rate: Rate, now: Instant) -> bool {
        self.held(rate, now) >= rate.burst
    }

    /// Takes a token if one is held now.
    pub(crate) fn take(&mut self, rate: Rate, now: Instant) -> bool {
        let held = self.held(rate, now);
        if held < 1.0 {
            return false;
        }
        *self = Bucket {
            tokens: held - 1.0,
            at: now,
        };
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    const RATE: Rate = Rate {
        per_s: 10.0,
        burst: 3.0,
    };

    #[test]
    fn a_burst_then_one_per_refill() {
        let t0 = Instant::now();
        let mut b = Bucket::full(RATE, t0);
        for _ in 0..3 {
            assert!(b.take(RATE, t0));
        }
        assert!(!b.take(RATE, t0));
        assert!(!b.take(RATE, t0 + Duration::from_millis(99)));
        assert!(b.take(RATE, t0 + Duration::from_millis(101)));
        assert!(!b.is_full(RATE, t0 + Duration::from_millis(101)));
        assert!(b.is_full(RATE, t0 + Duration::from_millis(400)));
    }

    proptest! {
        /// Over any span, the tokens taken are at most the burst plus the refill.
        #[test]
        fn takes_are_bounded(gaps in prop::collection::vec(0u64..300, 1..200)) {
            let t0 = Instant::now();
            let mut b = Bucket::full(RATE, t0);
            let (mut now, mut taken) = (t0, 0u64);
            for gap in gaps {
                now += Duration::from_millis(gap);
                taken += u64::from(b.take(RATE, now));
                let held = b.held(RATE, now);
                prop_assert!((0.0..=RATE.burst).contains(&held));
            }
            let span_s = now.duration_since(t0).as_secs_f64();
            prop_assert!(taken as f64 <= RATE.burst + span_s * RATE.per_s + 1e-9);
        }
    }
}
