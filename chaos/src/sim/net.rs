//! The simulated network: messages in flight ordered by delivery time, with seeded loss, delay
//! and directed cuts. No sockets, no clock: time is the number the simulation passes in.

use super::node::Msg;
use rand::rngs::StdRng;
use rand::Rng;
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

/// The network's fault settings; the simulation changes them over time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Weather {
    /// Percent of messages lost.
    pub loss_percent: u32,
    /// Each message takes 1..=delay_ms_max ms.
    pub delay_ms_max: u64,
    /// Directed pairs (from, to) whose messages are dropped.
    pub cuts: BTreeSet<(usize, usize)>,
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
        if self.weather.cuts.contains(&(from, to))
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
