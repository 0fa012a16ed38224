//! Pacing of this node's own gossip rounds: per peer, a bucket of [`BURST`] Syns that refills
//! at one per gossip round.
//!
//! Why: chitchat's gossip timer is a tokio interval, which bursts. A process frozen or starved
//! for 15 s ran its ~150 missed rounds back to back when it resumed, each a Syn to every peer,
//! and every peer answered each one with the whole delta a node that far behind needs (50 KB,
//! 1-14 ms to build, dozens of times within 0.3 s). Their gossip loops fell behind, and the
//! heartbeats they carry for each other with them: the two healthy peers judged each other dead
//! in 15 of 18 thaws at 10,000 health keys (docs/internals/gossip.md, Transport). Chitchat never
//! runs more rounds than its interval allows over time, so the bucket holds back only a burst:
//! a few rounds late by a few milliseconds (a busy host) all go out, a freeze's backlog does not.
//! A round held back is gossip's usual loss.
//!
//! Exchanges the mesh asks for itself (a new head's announcement to the spread tree, a death
//! report, a contact, the leave: `gossip_now` in `mesh/directed.rs`) are granted ahead and never
//! paced: they are why a head reaches every node fast and a death is seen everywhere at once.
//!
//! Pure: time is passed in.

use super::bucket::{Bucket, Rate};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Syns a peer's bucket holds: rounds that may go out back to back.
pub(crate) const BURST: f64 = 3.0;
/// A grant the Syn it was for never used (chitchat dropped the command) lapses after this.
const GRANT_LAPSES: Duration = Duration::from_secs(1);
/// At most this many grants are kept per peer (pushes asked for at once).
const MAX_GRANTS: u32 = 4;
/// The maps are pruned of what no longer counts once they hold this many peers.
const PRUNE_ABOVE: usize = 256;

#[derive(Debug)]
pub(crate) struct SynPacer {
    /// [`BURST`] Syns, one back per gossip round.
    rate: Rate,
    buckets: HashMap<SocketAddr, Bucket>,
    /// Syns the mesh asked for, per peer: how many, and when the last was asked.
    granted: HashMap<SocketAddr, (u32, Instant)>,
}

impl SynPacer {
    pub(crate) fn new(refill_every: Duration) -> Self {
        SynPacer {
            rate: Rate {
                per_s: 1.0 / refill_every.max(Duration::from_millis(1)).as_secs_f64(),
                burst: BURST,
            },
            buckets: HashMap::new(),
            granted: HashMap::new(),
        }
    }

    /// The mesh asks for an exchange with `peer` now: its Syn goes out whatever the bucket holds.
    pub(crate) fn grant(&mut self, peer: SocketAddr, now: Instant) {
        let entry = self.granted.entry(peer).or_insert((0, now));
        *entry = ((entry.0 + 1).min(MAX_GRANTS), now);
        if self.granted.len() > PRUNE_ABOVE {
            self.granted
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < GRANT_LAPSES);
        }
    }

    /// Whether a Syn to `peer` goes out now. It takes one from the peer's bucket, or, with the
    /// bucket empty, a grant: a Syn the bucket lets out anyway leaves the grant to the exchange
    /// it was asked for.
    pub(crate) fn admit(&mut self, peer: SocketAddr, now: Instant) -> bool {
        let rate = self.rate;
        let from_bucket = self
            .buckets
            .entry(peer)
            .or_insert_with(|| Bucket::full(rate, now))
            .take(rate, now);
        if !from_bucket && !self.take_grant(peer, now) {
            return false;
        }
        if self.buckets.len() > PRUNE_ABOVE {
            self.buckets.retain(|_, b| !b.is_full(rate, now));
        }
        true
    }

    fn take_grant(&mut self, peer: SocketAddr, now: Instant) -> bool {
        let Some((count, at)) = self.granted.get_mut(&peer) else {
            return false;
        };
        let live = now.saturating_duration_since(*at) < GRANT_LAPSES;
        *count = count.saturating_sub(1);
        if !live || *count == 0 {
            self.granted.remove(&peer);
        }
        live
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(i: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 10_000 + i))
    }

    const ROUND: Duration = Duration::from_millis(100);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Sends `peer` its whole burst at `at`.
    fn spend_burst(p: &mut SynPacer, peer: SocketAddr, at: Instant) {
        for _ in 0..BURST as u32 {
            assert!(p.admit(peer, at));
        }
    }

    #[test]
    fn a_freezes_backlog_of_rounds_sends_one_burst_per_peer() {
        let mut p = SynPacer::new(ROUND);
        let t0 = Instant::now();
        // 150 missed rounds run back to back, 0.1 ms apart, each a Syn to two peers.
        let mut sent = [0; 2];
        for round in 0..150u32 {
            let now = t0 + Duration::from_micros(100 * u64::from(round));
            for (i, n) in sent.iter_mut().enumerate() {
                *n += u32::from(p.admit(addr(i as u16), now));
            }
        }
        // The burst and what 15 ms refilled: nothing.
        assert_eq!(sent, [BURST as u32, BURST as u32]);
        assert!(!p.admit(addr(0), t0 + ms(20)));
        // A round after a round's time goes out.
        assert!(p.admit(addr(0), t0 + ms(101)));
    }

    #[test]
    fn rounds_on_time_or_a_little_late_are_never_paced() {
        let mut p = SynPacer::new(ROUND);
        let t0 = Instant::now();
        for round in 0..100u64 {
            assert!(p.admit(addr(0), t0 + ROUND * round as u32));
        }
        // A busy host: every third round 90 ms late, the two after it catching up at once.
        let t1 = t0 + ROUND * 100;
        for round in 0..300u64 {
            let late = if round % 3 == 0 { ms(90) } else { ms(0) };
            let due = t1 + ROUND * (round as u32 - round as u32 % 3) + late;
            assert!(p.admit(addr(0), due), "round {round}");
        }
    }

    #[test]
    fn an_exchange_the_mesh_asks_for_goes_out_with_the_bucket_empty() {
        let mut p = SynPacer::new(ROUND);
        let t0 = Instant::now();
        spend_burst(&mut p, addr(0), t0);
        assert!(!p.admit(addr(0), t0), "bucket empty");
        let soon = t0 + ms(3);
        p.grant(addr(0), soon);
        p.grant(addr(0), soon);
        assert!(p.admit(addr(0), soon), "first grant");
        assert!(p.admit(addr(0), soon), "second grant");
        assert!(!p.admit(addr(0), soon), "grants used up, bucket empty");
        assert!(p.admit(addr(1), soon), "another peer has its own bucket");
    }

    #[test]
    fn a_round_the_bucket_lets_out_leaves_the_grant_to_the_exchange_asked_for() {
        let mut p = SynPacer::new(ROUND);
        let t0 = Instant::now();
        spend_burst(&mut p, addr(0), t0);
        let next = t0 + ROUND;
        p.grant(addr(0), next);
        assert!(p.admit(addr(0), next), "the round, on time");
        assert!(
            p.admit(addr(0), next),
            "the exchange asked for, right after it"
        );
        assert!(!p.admit(addr(0), next), "nothing more");
    }

    #[test]
    fn a_grant_never_used_lapses() {
        let mut p = SynPacer::new(ROUND);
        let t0 = Instant::now();
        spend_burst(&mut p, addr(0), t0);
        p.grant(addr(0), t0);
        let later = t0 + GRANT_LAPSES;
        // Refilled by then.
        spend_burst(&mut p, addr(0), later);
        assert!(!p.admit(addr(0), later), "the grant lapsed");
    }

    proptest! {
        /// Whatever the pattern of rounds and grants: every granted Syn goes out; beyond the
        /// grants, a peer gets at most a burst plus one Syn per round of time; the maps stay
        /// bounded.
        #[test]
        fn grants_pass_and_rounds_are_bounded(
            events in prop::collection::vec((0u16..300, 0u64..5_000, any::<bool>()), 1..400),
        ) {
            let mut p = SynPacer::new(ROUND);
            let t0 = Instant::now();
            let mut events = events;
            events.sort_by_key(|e| e.1);
            let mut sent: HashMap<SocketAddr, Vec<u64>> = HashMap::new();
            let mut grants: HashMap<SocketAddr, u64> = HashMap::new();
            for (peer, at_ms, grant) in events {
                let now = t0 + ms(at_ms);
                let peer = addr(peer);
                if grant {
                    p.grant(peer, now);
                    prop_assert!(p.admit(peer, now), "a granted Syn is paced");
                    *grants.entry(peer).or_default() += 1;
                } else if p.admit(peer, now) {
                    sent.entry(peer).or_default().push(at_ms);
                }
                prop_assert!(p.buckets.len() <= PRUNE_ABOVE + 1);
                prop_assert!(p.granted.len() <= PRUNE_ABOVE + 1);
            }
            // A grant the bucket left unused may let one more round through.
            let round_ms = ROUND.as_millis() as u64;
            for (peer, times) in &sent {
                let span = times.last().unwrap_or(&0) - times.first().unwrap_or(&0);
                let max = BURST as u64 + span / round_ms + grants.get(peer).unwrap_or(&0);
                prop_assert!(times.len() as u64 <= max, "{} rounds in {span} ms", times.len());
            }
        }
    }
}
