//! Pacing of this node's own gossip rounds: at most one round's Syn per peer per minimum gap.
//!
//! Why: chitchat's gossip timer is a tokio interval, which bursts. A process frozen or starved
//! for 15 s ran its ~150 missed rounds back to back when it resumed, each a Syn to every peer,
//! and every peer answered each one with the whole delta a node that far behind needs (50 KB,
//! 1-14 ms to build, dozens of times within 0.3 s). Their gossip loops fell behind, and the
//! heartbeats they carry for each other with them: the two healthy peers judged each other dead
//! in 9 of 12 thaws at 10,000 health keys, 2 of 12 with this (docs/internals/gossip.md,
//! Transport). One Syn per peer per gap turns the burst into one round; a round lost this way is
//! gossip's usual loss.
//!
//! Exchanges the mesh asks for itself (a new head's announcement to the spread tree, a death
//! report, a contact, the leave: `gossip_now` in `mesh/directed.rs`) are granted ahead and never
//! paced: they are why a head reaches every node fast and a death is seen everywhere at once.
//!
//! Pure: time is passed in.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A grant the Syn it was for never used (chitchat dropped the command) lapses after this.
const GRANT_LAPSES: Duration = Duration::from_secs(1);
/// At most this many grants are kept per peer (pushes asked for at once).
const MAX_GRANTS: u32 = 4;
/// The maps are pruned of what no longer counts once they hold this many peers.
const PRUNE_ABOVE: usize = 256;

#[derive(Debug)]
pub(crate) struct SynPacer {
    min_gap: Duration,
    /// When a Syn last went to each peer.
    last: HashMap<SocketAddr, Instant>,
    /// Syns the mesh asked for, per peer: how many, and when the last was asked.
    granted: HashMap<SocketAddr, (u32, Instant)>,
}

impl SynPacer {
    pub(crate) fn new(min_gap: Duration) -> Self {
        SynPacer {
            min_gap,
            last: HashMap::new(),
            granted: HashMap::new(),
        }
    }

    /// The mesh asks for an exchange with `peer` now: its Syn goes out whatever the gap.
    pub(crate) fn grant(&mut self, peer: SocketAddr, now: Instant) {
        let entry = self.granted.entry(peer).or_insert((0, now));
        *entry = ((entry.0 + 1).min(MAX_GRANTS), now);
        if self.granted.len() > PRUNE_ABOVE {
            self.granted
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < GRANT_LAPSES);
        }
    }

    /// Whether a Syn to `peer` goes out now (and is counted as sent). A grant is used only by a
    /// Syn within the gap: one due anyway leaves it to the exchange it was asked for.
    pub(crate) fn admit(&mut self, peer: SocketAddr, now: Instant) -> bool {
        let due = self
            .last
            .get(&peer)
            .is_none_or(|at| now.saturating_duration_since(*at) >= self.min_gap);
        if !due && !self.take_grant(peer, now) {
            return false;
        }
        self.last.insert(peer, now);
        if self.last.len() > PRUNE_ABOVE {
            let gap = self.min_gap;
            self.last
                .retain(|_, at| now.saturating_duration_since(*at) < gap);
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

    const GAP: Duration = Duration::from_millis(25);

    #[test]
    fn a_burst_of_rounds_sends_one_syn_per_peer() {
        let mut p = SynPacer::new(GAP);
        let t0 = Instant::now();
        // 150 missed rounds run back to back, 0.1 ms apart, each a Syn to two peers.
        let mut sent = [0; 2];
        for round in 0..150u32 {
            let now = t0 + Duration::from_micros(100 * u64::from(round));
            for (i, n) in sent.iter_mut().enumerate() {
                *n += u32::from(p.admit(addr(i as u16), now));
            }
        }
        assert_eq!(sent, [1, 1]);
        // The next round on time goes out.
        assert!(p.admit(addr(0), t0 + Duration::from_millis(100)));
    }

    #[test]
    fn rounds_on_time_are_never_paced() {
        let mut p = SynPacer::new(GAP);
        let t0 = Instant::now();
        for round in 0..100u64 {
            assert!(p.admit(addr(0), t0 + Duration::from_millis(100 * round)));
        }
    }

    #[test]
    fn an_exchange_the_mesh_asks_for_goes_out_right_after_a_round() {
        let mut p = SynPacer::new(GAP);
        let t0 = Instant::now();
        assert!(p.admit(addr(0), t0));
        let soon = t0 + Duration::from_millis(3);
        p.grant(addr(0), soon);
        p.grant(addr(0), soon);
        assert!(p.admit(addr(0), soon), "first grant");
        assert!(p.admit(addr(0), soon), "second grant");
        assert!(!p.admit(addr(0), soon), "grants used up, within the gap");
        assert!(p.admit(addr(1), soon), "another peer is paced on its own");
    }

    #[test]
    fn a_round_due_anyway_leaves_the_grant_to_the_exchange_asked_for() {
        let mut p = SynPacer::new(GAP);
        let t0 = Instant::now();
        assert!(p.admit(addr(0), t0));
        let next = t0 + Duration::from_millis(100);
        p.grant(addr(0), next);
        assert!(p.admit(addr(0), next), "the round, on time");
        assert!(
            p.admit(addr(0), next),
            "the exchange asked for, right after it"
        );
        assert!(!p.admit(addr(0), next), "nothing more within the gap");
    }

    #[test]
    fn a_grant_never_used_lapses() {
        let mut p = SynPacer::new(GAP);
        let t0 = Instant::now();
        p.grant(addr(0), t0);
        assert!(p.admit(addr(0), t0 + GRANT_LAPSES + GAP));
        assert!(!p.admit(addr(0), t0 + GRANT_LAPSES + GAP + Duration::from_millis(1)));
    }

    proptest! {
        /// Whatever the pattern of rounds and grants: every granted Syn goes out, rounds go out
        /// at most once per gap and peer (plus one per grant), and the maps stay bounded.
        #[test]
        fn grants_pass_and_rounds_are_bounded(
            events in prop::collection::vec((0u16..300, 0u64..5_000, any::<bool>()), 1..400),
        ) {
            let mut p = SynPacer::new(GAP);
            let t0 = Instant::now();
            let mut events = events;
            events.sort_by_key(|e| e.1);
            let mut sent: HashMap<SocketAddr, Vec<u64>> = HashMap::new();
            let mut grants: HashMap<SocketAddr, u64> = HashMap::new();
            for (peer, at_us, grant) in events {
                let now = t0 + Duration::from_micros(at_us * 10);
                let peer = addr(peer);
                if grant {
                    p.grant(peer, now);
                    prop_assert!(p.admit(peer, now), "a granted Syn is paced");
                    *grants.entry(peer).or_default() += 1;
                } else if p.admit(peer, now) {
                    sent.entry(peer).or_default().push(at_us * 10);
                }
                prop_assert!(p.last.len() <= PRUNE_ABOVE + 1);
                prop_assert!(p.granted.len() <= PRUNE_ABOVE + 1);
            }
            // A grant a due Syn left unused may let one round through within the gap.
            for (peer, times) in &sent {
                let span = times.last().unwrap_or(&0) - times.first().unwrap_or(&0);
                let max = span / GAP.as_micros() as u64 + 1 + grants.get(peer).unwrap_or(&0);
                prop_assert!(times.len() as u64 <= max, "{} rounds in {span} us", times.len());
            }
        }
    }
}
