//! Which incoming handshakes get a slot. Pure; time is an argument.
//!
//! Address validation (QUIC Retry) happens before this: a source that gets here has proven it
//! receives packets at its address, so limits per source IP mean something. Rules:
//! - at most `max_in_flight` handshakes at once;
//! - the last `reserve_for_known` of those slots only for known sources (IPs that completed an
//!   authenticated handshake before), so members can always reconnect during a flood;
//! - per unknown source IP: at most `per_source_in_flight` at once and a token bucket of
//!   `per_source_per_s` handshakes a second (burst `per_source_burst`).

use super::bucket::{Bucket, Rate};
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// Limits of [`Admission`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Limits {
    pub max_in_flight: usize,
    pub reserve_for_known: usize,
    pub per_source_in_flight: usize,
    pub per_source_per_s: f64,
    pub per_source_burst: f64,
}

/// Why a handshake was refused (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Every slot open to this source is taken.
    Full,
    /// This source already has its share of handshakes in flight.
    SourceBusy,
    /// This source started too many handshakes lately.
    SourceRate,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Full => "full",
            Refusal::SourceBusy => "source_busy",
            Refusal::SourceRate => "source_rate",
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Source {
    in_flight: usize,
    handshakes: Bucket,
}

impl Limits {
    fn per_source(&self) -> Rate {
        Rate {
            per_s: self.per_source_per_s,
            burst: self.per_source_burst,
        }
    }
}

/// Handshake slots in use, per source and in total.
#[derive(Debug)]
pub(crate) struct Admission {
    limits: Limits,
    in_flight: usize,
    sources: HashMap<IpAddr, Source>,
}

/// Past this many tracked sources, idle ones with a full bucket are forgotten.
const MAX_SOURCES: usize = 4_096;

impl Admission {
    pub(crate) fn new(limits: Limits) -> Self {
        Admission {
            limits,
            in_flight: 0,
            sources: HashMap::new(),
        }
    }

    /// Takes a slot for a handshake from `ip`, or says why not. Every `Ok` must be followed by
    /// one [`Admission::finish`] for the same `ip`.
    pub(crate) fn admit(&mut self, ip: IpAddr, known: bool, now: Instant) -> Result<(), Refusal> {
        let l = self.limits;
        let open_slots = if known {
            l.max_in_flight
        } else {
            l.max_in_flight.saturating_sub(l.reserve_for_known)
        };
        if self.in_flight >= open_slots {
            return Err(Refusal::Full);
        }
        if self.sources.len() >= MAX_SOURCES {
            self.forget_idle(now);
        }
        let source = self.sources.entry(ip).or_insert(Source {
            in_flight: 0,
            handshakes: Bucket::full(l.per_source(), now),
        });
        if !known {
            if source.in_flight >= l.per_source_in_flight {
                return Err(Refusal::SourceBusy);
            }
            if !source.handshakes.take(l.per_source(), now) {
                return Err(Refusal::SourceRate);
            }
        }
        source.in_flight += 1;
        self.in_flight += 1;
        Ok(())
    }

    /// Gives back the slot of a handshake from `ip` (done, failed or timed out).
    pub(crate) fn finish(&mut self, ip: IpAddr) {
        if let Some(source) = self.sources.get_mut(&ip) {
            if source.in_flight > 0 {
                source.in_flight -= 1;
                self.in_flight = self.in_flight.saturating_sub(1);
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn forget_idle(&mut self, now: Instant) {
        let rate = self.limits.per_source();
        self.sources
            .retain(|_, s| s.in_flight > 0 || !s.handshakes.is_full(rate, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    const LIMITS: Limits = Limits {
        max_in_flight: 8,
        reserve_for_known: 3,
        per_source_in_flight: 2,
        per_source_per_s: 4.0,
        per_source_burst: 4.0,
    };

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn one_source_gets_its_share_and_others_still_get_in() {
        let now = Instant::now();
        let mut a = Admission::new(LIMITS);
        assert_eq!(a.admit(ip(2), false, now), Ok(()));
        assert_eq!(a.admit(ip(2), false, now), Ok(()));
        assert_eq!(a.admit(ip(2), false, now), Err(Refusal::SourceBusy));
        assert_eq!(a.admit(ip(3), false, now), Ok(()));
        a.finish(ip(2));
        a.finish(ip(2));
        // Burst of 4 used (2) + 2 more, then the rate limit bites until tokens refill.
        assert_eq!(a.admit(ip(2), false, now), Ok(()));
        a.finish(ip(2));
        assert_eq!(a.admit(ip(2), false, now), Ok(()));
        a.finish(ip(2));
        assert_eq!(a.admit(ip(2), false, now), Err(Refusal::SourceRate));
        let later = now + Duration::from_millis(300);
        assert_eq!(a.admit(ip(2), false, later), Ok(()));
    }

    #[test]
    fn the_reserve_is_for_known_sources() {
        let now = Instant::now();
        let mut a = Admission::new(LIMITS);
        for last in 10..15 {
            assert_eq!(a.admit(ip(last), false, now), Ok(()));
        }
        assert_eq!(a.admit(ip(20), false, now), Err(Refusal::Full));
        for _ in 0..2 {
            assert_eq!(a.admit(ip(21), true, now), Ok(()));
        }
        // Known sources are not held to the per-source share.
        assert_eq!(a.admit(ip(21), true, now), Ok(()));
        assert_eq!(a.admit(ip(22), true, now), Err(Refusal::Full));
        assert_eq!(a.in_flight(), 8);
    }

    proptest! {
        /// Whatever the sequence, slots in flight never exceed the limits, and finishing every
        /// admitted handshake gives all of them back.
        #[test]
        fn limits_hold(ops in proptest::collection::vec((0u8..6, any::<bool>(), any::<bool>(), 0u64..400), 1..200)) {
            let start = Instant::now();
            let mut a = Admission::new(LIMITS);
            let mut held: Vec<IpAddr> = Vec::new();
            let mut t = start;
            for (last, known, finish, dt) in ops {
                t += Duration::from_millis(dt);
                if finish && !held.is_empty() {
                    let ip = held.remove(0);
                    a.finish(ip);
                } else if a.admit(ip(last), known, t).is_ok() {
                    held.push(ip(last));
                }
                prop_assert!(a.in_flight() <= LIMITS.max_in_flight);
                prop_assert_eq!(a.in_flight(), held.len());
            }
            for ip in held.drain(..) {
                a.finish(ip);
            }
            prop_assert_eq!(a.in_flight(), 0);
        }
    }
}
