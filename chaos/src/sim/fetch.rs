//! One simulated fetch of the head, run by the shipping hedged race (`shoal_gossip::hedge::Race`)
//! exactly as `gossip/src/mesh/fetch.rs` runs it: the first source at once, the next one too
//! every `hedge_ms` while none sends (at most `MAX_IN_FLIGHT` waiting), the next at once when
//! one fails, the rest dropped once one sends. The simulated parts are only the transport's:
//! a request not answered within `answer_ms` fails (the real fetch's answer timeout), and an
//! answer carries the whole document at once (it begins to send and ends in one message).

use shoal_gossip::head::HeldAd;
use shoal_gossip::hedge::{Race, Step};

/// A fetch in flight.
#[derive(Clone, Debug)]
pub struct Fetching {
    pub wanted: HeldAd,
    /// The sources, in the core's order (node indices).
    sources: Vec<usize>,
    race: Race,
    /// Per source: the answer deadline while its request waits.
    waiting: Vec<Option<u64>>,
    /// When the race wants to be asked again (`Step::WaitUntil`).
    wake_ms: Option<u64>,
    answer_ms: u64,
}

/// What the node does after a fetch event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Moves {
    /// Sources to send a request to now.
    pub ask: Vec<usize>,
    /// The race is over: every source failed (`Some(false)`), or one sent the head
    /// (`Some(true)`, the caller adopts it).
    pub done: Option<bool>,
}

impl Fetching {
    /// Starts a race over `sources`; returns it and its first moves.
    pub fn start(
        wanted: HeldAd,
        sources: Vec<usize>,
        hedge_ms: u64,
        answer_ms: u64,
        now_ms: u64,
    ) -> (Self, Moves) {
        let n = sources.len();
        let mut f = Fetching {
            wanted,
            sources,
            race: Race::new(n, hedge_ms),
            waiting: vec![None; n],
            wake_ms: None,
            answer_ms,
        };
        let moves = f.run(now_ms);
        (f, moves)
    }

    /// Whether anything is due at `now_ms` (a hedge or an answer deadline).
    pub fn due(&self, now_ms: u64) -> bool {
        self.wake_ms.is_some_and(|w| now_ms >= w)
            || self.waiting.iter().flatten().any(|&d| now_ms >= d)
    }

    /// Expires unanswered requests and lets the race ask more.
    pub fn poll(&mut self, now_ms: u64) -> Moves {
        for (i, d) in self.waiting.iter_mut().enumerate() {
            if d.is_some_and(|d| now_ms >= d) {
                *d = None;
                self.race.failed(i);
            }
        }
        self.run(now_ms)
    }

    /// Source `from` answered: with the wanted head (`served`), or not.
    pub fn answer(&mut self, from: usize, served: bool, now_ms: u64) -> Moves {
        let Some(i) =
            (0..self.sources.len()).find(|&i| self.sources[i] == from && self.waiting[i].is_some())
        else {
            // Not asked, or dropped: the real fetch aborted that request.
            return Moves::default();
        };
        self.waiting[i] = None;
        if served {
            for j in self.race.sending(i) {
                self.waiting[j] = None;
            }
            return Moves {
                ask: Vec::new(),
                done: Some(true),
            };
        }
        self.race.failed(i);
        self.run(now_ms)
    }

    fn run(&mut self, now_ms: u64) -> Moves {
        let mut moves = Moves::default();
        loop {
            match self.race.step(now_ms) {
                Step::Ask(i) => {
                    self.waiting[i] = Some(now_ms + self.answer_ms);
                    moves.ask.push(self.sources[i]);
                }
                Step::WaitUntil(at) => {
                    self.wake_ms = Some(at);
                    break;
                }
                Step::Wait => {
                    self.wake_ms = None;
                    break;
                }
                Step::GiveUp => {
                    moves.done = Some(false);
                    break;
                }
            }
        }
        moves
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_gossip::version::{NodeId, Version};

    fn head() -> HeldAd {
        HeldAd {
            version: Version::new(1, 1, NodeId::new("n1")),
            digest: "d".into(),
            size_bytes: 1,
        }
    }

    #[test]
    fn silent_sources_are_hedged_then_time_out() {
        let (mut f, m) = Fetching::start(head(), vec![7, 8, 9, 4], 300, 2_000, 0);
        assert_eq!(m.ask, vec![7]);
        assert!(!f.due(299));
        assert_eq!(f.poll(300).ask, vec![8]);
        assert_eq!(f.poll(600).ask, vec![9]);
        // Three wait: no fourth until one fails.
        assert!(!f.due(1_999));
        assert_eq!(f.poll(2_000).ask, vec![4]);
        // A late answer from a source that timed out is ignored.
        assert_eq!(f.answer(7, true, 2_001), Moves::default());
        let done = f.answer(4, true, 2_002);
        assert_eq!(done.done, Some(true));
    }

    #[test]
    fn not_held_moves_on_at_once_and_the_last_failure_gives_up() {
        let (mut f, m) = Fetching::start(head(), vec![1, 2], 300, 2_000, 0);
        assert_eq!(m.ask, vec![1]);
        assert_eq!(f.answer(1, false, 10).ask, vec![2]);
        let last = f.answer(2, false, 20);
        assert_eq!(last.done, Some(false));
    }

    #[test]
    fn a_sender_drops_the_others() {
        let (mut f, _) = Fetching::start(head(), vec![1, 2, 3], 100, 2_000, 0);
        f.poll(100);
        assert_eq!(f.answer(2, true, 150).done, Some(true));
        // The dropped request's answer is ignored.
        assert_eq!(f.answer(1, true, 160), Moves::default());
    }
}
