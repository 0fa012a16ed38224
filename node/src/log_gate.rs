//! Rate-limited warnings: an attacker who repeats a refused request must not flood the log.
//!
//! Pure: time is an argument. The first event logs; later ones within `every` are counted and
//! the next allowed line says how many were suppressed.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct LogGate {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogGate {
    pub const fn new(every: Duration) -> Self {
        LogGate {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(suppressed since the last line)` when a line may be logged now, else `None`.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_with_the_count_of_the_rest() {
        let mut g = LogGate::new(Duration::from_secs(10));
        let t = Instant::now();
        assert_eq!(g.allow(t), Some(0));
        for i in 1..=5 {
            assert_eq!(g.allow(t + Duration::from_secs(i)), None);
        }
        assert_eq!(g.allow(t + Duration::from_secs(10)), Some(5));
        assert_eq!(g.allow(t + Duration::from_secs(11)), None);
    }
}
