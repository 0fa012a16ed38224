//! What each simulated node knows of the others, spread as chitchat spreads it: every round a
//! node sends its whole table to a few random peers ([`FANOUT`]), each answers with its own, and
//! both keep, per member, the entry with the higher (generation, heartbeat). A member's heartbeat
//! rises once per round of its own, so hearing it advance, first- or second-hand, is what keeps
//! it alive in a node's view.
//!
//! So news of a member reaches N nodes in about log(N) rounds, not one, and a round costs
//! `FANOUT` messages per node, not N - 1 (the earlier all-to-all model was O(N^2) messages per
//! round). A table is shared (`Rc`) between the messages that carry it and copied only when
//! the node changes it after sending.

use super::node::Ad;
use rand::rngs::StdRng;
use rand::Rng;
use std::rc::Rc;

/// Peers each node gossips to per round (chitchat's default).
pub const FANOUT: usize = 3;

/// One member's entry as gossip carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Known {
    /// Start time of the member's process: rises on every restart.
    pub generation: u64,
    /// Rises once per gossip round of the member.
    pub beat: u64,
    pub ad: Rc<Ad>,
}

impl Known {
    fn key(&self) -> (u64, u64) {
        (self.generation, self.beat)
    }
}

/// A node's table, indexed by member; shared by the messages that carry it.
pub type Table = Rc<Vec<Option<Known>>>;

/// A node's gossip state: its table and when each entry last advanced (local time).
#[derive(Clone, Debug)]
pub struct Knowledge {
    me: usize,
    table: Table,
    /// When this node last saw each member's heartbeat advance.
    heard_ms: Vec<u64>,
    /// Some member's generation or ad changed since [`Knowledge::take_changed`].
    changed: bool,
}

impl Knowledge {
    /// A fresh process `me` of `nodes`, knowing nobody yet.
    pub fn new(me: usize, nodes: usize) -> Self {
        Knowledge {
            me,
            table: Rc::new(vec![None; nodes]),
            heard_ms: vec![0; nodes],
            changed: true,
        }
    }

    /// The table to send (shared, not copied).
    pub fn table(&self) -> Table {
        Rc::clone(&self.table)
    }

    pub fn entries(&self) -> impl Iterator<Item = (usize, &Known)> + '_ {
        self.table
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != self.me)
            .filter_map(|(i, k)| k.as_ref().map(|k| (i, k)))
    }

    pub fn get(&self, i: usize) -> Option<&Known> {
        self.table.get(i).and_then(Option::as_ref)
    }

    /// Ms since member `i`'s heartbeat last advanced here.
    pub fn age_ms(&self, i: usize, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.heard_ms[i])
    }

    /// This node's own entry for the next round: its heartbeat rises, its ad is shared when
    /// unchanged (so peers see an unchanged `Rc` and skip re-reading it).
    pub fn beat(&mut self, generation: u64, ad: Ad) {
        let me = self.me;
        let table = Rc::make_mut(&mut self.table);
        let next = match &table[me] {
            Some(k) if k.generation == generation && *k.ad == ad => Known {
                generation,
                beat: k.beat + 1,
                ad: Rc::clone(&k.ad),
            },
            Some(k) if k.generation == generation => Known {
                generation,
                beat: k.beat + 1,
                ad: Rc::new(ad),
            },
            _ => Known {
                generation,
                beat: 1,
                ad: Rc::new(ad),
            },
        };
        table[me] = Some(next);
    }

    /// Keeps every entry of `incoming` newer than ours; returns the members whose heartbeat
    /// advanced, as (index, generation, heartbeat).
    pub fn merge(&mut self, incoming: &[Option<Known>], now_ms: u64) -> Vec<(usize, u64, u64)> {
        let mut advanced = Vec::new();
        for (i, theirs) in incoming.iter().enumerate() {
            let Some(theirs) = theirs else { continue };
            if i == self.me {
                continue;
            }
            let ours = self.table.get(i).and_then(Option::as_ref);
            if ours.is_some_and(|o| o.key() >= theirs.key()) {
                continue;
            }
            let news = ours.is_none_or(|o| {
                o.generation != theirs.generation || !Rc::ptr_eq(&o.ad, &theirs.ad)
            });
            if news {
                self.changed = true;
            }
            Rc::make_mut(&mut self.table)[i] = Some(theirs.clone());
            self.heard_ms[i] = now_ms;
            advanced.push((i, theirs.generation, theirs.beat));
        }
        advanced
    }

    /// Whether some member's generation or ad changed since the last call.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }
}

/// `FANOUT` distinct random peers of `me` among `nodes` (fewer when there are fewer).
pub fn targets(rng: &mut StdRng, me: usize, nodes: usize) -> Vec<usize> {
    let others = nodes.saturating_sub(1);
    let mut out: Vec<usize> = Vec::with_capacity(FANOUT.min(others));
    while out.len() < FANOUT.min(others) {
        let mut t = rng.gen_range(0..others);
        if t >= me {
            t += 1;
        }
        if !out.contains(&t) {
            out.push(t);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn ad(caught_up: bool) -> Ad {
        Ad {
            caught_up,
            publishing: false,
            held: None,
            opinions: Vec::new(),
            down: Vec::new(),
        }
    }

    #[test]
    fn merge_keeps_newer_entries_and_reports_the_advanced_ones() {
        let mut a = Knowledge::new(0, 3);
        let mut b = Knowledge::new(1, 3);
        a.beat(10, ad(false));
        b.beat(20, ad(false));
        b.beat(20, ad(true));
        assert_eq!(a.merge(&b.table(), 5), vec![(1, 20, 2)]);
        assert!(a.take_changed());
        // The same table again: nothing newer, nothing changed.
        assert!(a.merge(&b.table(), 6).is_empty());
        assert!(!a.take_changed());
        assert_eq!(a.age_ms(1, 16), 11);
        // Its own entry is never overwritten by gossip.
        let before = a.get(0).cloned();
        b.merge(&a.table(), 7);
        b.beat(20, ad(true));
        a.merge(&b.table(), 8);
        assert_eq!(a.get(0).cloned(), before);
        // Second-hand news: c learns of a through b.
        let mut c = Knowledge::new(2, 3);
        assert_eq!(c.merge(&b.table(), 9).len(), 2);
        assert_eq!(c.get(0).map(|k| k.generation), Some(10));
    }

    #[test]
    fn an_unchanged_ad_is_shared_and_a_restart_replaces_the_entry() {
        let mut a = Knowledge::new(0, 2);
        let mut b = Knowledge::new(1, 2);
        a.beat(1, ad(true));
        b.merge(&a.table(), 1);
        b.take_changed();
        a.beat(1, ad(true));
        b.merge(&a.table(), 2);
        assert!(!b.take_changed(), "only the heartbeat advanced");
        let mut restarted = Knowledge::new(0, 2);
        restarted.beat(5, ad(false));
        assert_eq!(b.merge(&restarted.table(), 3), vec![(0, 5, 1)]);
        assert!(b.take_changed());
    }

    #[test]
    fn targets_are_distinct_others() {
        let mut rng = StdRng::seed_from_u64(1);
        for nodes in 1..8 {
            for me in 0..nodes {
                let t = targets(&mut rng, me, nodes);
                assert_eq!(t.len(), FANOUT.min(nodes - 1));
                assert!(t.iter().all(|&x| x != me && x < nodes));
                let mut d = t.clone();
                d.sort();
                d.dedup();
                assert_eq!(d.len(), t.len());
            }
        }
    }
}
