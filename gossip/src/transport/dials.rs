//! How many gossip dials (outgoing QUIC + TLS handshakes) one node runs at once. Pure.
//!
//! Why: when a hundred nodes start at the same instant, each learns every member within a few
//! rounds and gossips to three random ones a round, so each dials dozens of peers at once. On a
//! machine (or a network) with less CPU than that, every handshake's latency grows past the
//! deadlines (1.5 s to accept, 5 s to dial), every one fails, is retried after its backoff, and
//! none completes: `gossip-bench parallel --nodes 100` never converged (docs/benchmarks.md). A
//! small budget keeps handshakes few and fast; gossip to a peer that has no connection yet
//! while the budget is spent is skipped (gossip picks other peers next round; connected peers
//! are not affected). Fetches and identity checks dial outside the budget: they are few.

/// Gossip dials one node keeps in flight at most.
pub(crate) const MAX_GOSSIP_DIALS: usize = 2;

/// Dials in flight against a limit.
#[derive(Debug)]
pub(crate) struct DialBudget {
    limit: usize,
    in_flight: usize,
}

impl DialBudget {
    pub(crate) fn new(limit: usize) -> Self {
        DialBudget {
            limit,
            in_flight: 0,
        }
    }

    /// Takes a slot for one dial, or `false` if all are taken. Every `true` must be followed by
    /// one [`DialBudget::give_back`].
    pub(crate) fn take(&mut self) -> bool {
        if self.in_flight >= self.limit {
            return false;
        }
        self.in_flight += 1;
        true
    }

    pub(crate) fn give_back(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn slots_run_out_and_come_back() {
        let mut b = DialBudget::new(2);
        assert!(b.take());
        assert!(b.take());
        assert!(!b.take(), "a third dial while two are in flight");
        b.give_back();
        assert!(b.take());
        assert!(!b.take());
    }

    #[test]
    fn a_zero_budget_never_dials_and_extra_returns_do_not_add_slots() {
        let mut b = DialBudget::new(0);
        assert!(!b.take());
        let mut b = DialBudget::new(1);
        b.give_back();
        b.give_back();
        assert!(b.take());
        assert!(!b.take());
    }

    proptest! {
        /// Whatever the order of takes and returns, in flight never exceeds the limit and never
        /// drops below zero, and a take fails exactly when the budget is full.
        #[test]
        fn never_over_the_limit(limit in 0usize..6, ops in proptest::collection::vec(any::<bool>(), 0..200)) {
            let mut b = DialBudget::new(limit);
            let mut held = 0usize;
            for take in ops {
                if take {
                    let full = held >= limit;
                    prop_assert_eq!(b.take(), !full);
                    if !full { held += 1; }
                } else if held > 0 {
                    b.give_back();
                    held -= 1;
                }
                prop_assert_eq!(b.in_flight(), held);
                prop_assert!(b.in_flight() <= limit);
            }
        }
    }
}
