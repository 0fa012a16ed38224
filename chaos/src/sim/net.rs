//! The simulated network: messages in flight ordered by delivery time, with seeded loss, delay
//! and directed cuts. No sockets, no clock: time is the number the simulation passes in.

use super::node::Msg;
use rand::rngs::StdRng;
use rand::Rng;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// The network's fault settings; the simulation changes them over time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Weather {
    /// Percent of messages lost.
    pub loss_percent: u32,
    /// Each message takes 1..=delay_ms_max ms.
    pub delay_ms_max: u64,
    /// Partitions in force; a message crossing any of them is dropped.
    pub partitions: Vec<Partition>,
}

/// One side of the nodes cut off from the rest (as a mask, so a check is O(1) at any N).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// `side[i]`: node `i` is on the cut-off side.
    pub side: Vec<bool>,
    /// Only messages from the side to the rest are dropped.
    pub one_way: bool,
}

impl Partition {
    fn cuts(&self, from: usize, to: usize) -> bool {
        let (f, t) = (self.side[from], self.side[to]);
        (f && !t) || (!self.one_way && t && !f)
    }
}

impl Weather {
    /// Whether a message from `from` to `to` is cut.
    pub fn cut(&self, from: usize, to: usize) -> bool {
        self.partitions.iter().any(|p| p.cuts(from, to))
    }
}

pub struct Net {
    /// (deliver at, sequence number for a stable order, message).
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    slots: Vec<Option<(usize, Msg)>>,
    free: Vec<usize>,
    seq: u64,
    pub weather: Weather,
    pub sent: u64,
    pub dropped: u64,
}

impl Net {
    pub fn new() -> Self {
        Net {
            queue: BinaryHeap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            seq: 0,
            weather: Weather {
                delay_ms_max: 5,
                ..Weather::default()
            },
            sent: 0,
            dropped: 0,
        }
    }

    /// Sends `msg` from `from` to `to` at `now_ms`, subject to the weather.
    pub fn send(&mut self, rng: &mut StdRng, now_ms: u64, from: usize, to: usize, msg: Msg) {
        self.sent += 1;
        if self.weather.cut(from, to)
            || (self.weather.loss_percent > 0 && rng.gen_range(0..100) < self.weather.loss_percent)
        {
            self.dropped += 1;
            return;
        }
        let at = now_ms + rng.gen_range(1..=self.weather.delay_ms_max.max(1));
        let slot = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some((to, msg));
                i
            }
            None => {
                self.slots.push(Some((to, msg)));
                self.slots.len() - 1
            }
        };
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, slot)));
    }

    /// The next message due at or before `now_ms`: (receiver, message).
    pub fn pop_due(&mut self, now_ms: u64) -> Option<(usize, Msg)> {
        let Reverse((at, _, _)) = self.queue.peek()?;
        if *at > now_ms {
            return None;
        }
        let Reverse((_, _, slot)) = self.queue.pop()?;
        self.free.push(slot);
        self.slots[slot].take()
    }
}

impl Default for Net {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_cuts_across_only_and_one_way_only_outwards() {
        let both = Partition {
            side: vec![true, false, false],
            one_way: false,
        };
        let out = Partition {
            one_way: true,
            ..both.clone()
        };
        assert!(both.cuts(0, 1) && both.cuts(1, 0) && !both.cuts(1, 2));
        assert!(out.cuts(0, 2) && !out.cuts(2, 0));
        let w = Weather {
            partitions: vec![out],
            ..Weather::default()
        };
        assert!(w.cut(0, 1) && !w.cut(1, 0));
    }
}
