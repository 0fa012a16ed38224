//! Rate-limited warnings: an attack must not turn the log into a second flood. Pure.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// At most one warning per kind every `every`; the ones in between are counted and the next
/// warning says how many were suppressed. (The metrics count every event.)
#[derive(Debug)]
pub(crate) struct WarnGate {
    every: Duration,
    kinds: HashMap<&'static str, (Instant, u64)>,
}

impl WarnGate {
    pub(crate) fn new(every: Duration) -> Self {
        WarnGate {
            every,
            kinds: HashMap::new(),
        }
    }

    /// `Some(suppressed since the last warning)` when a warning of `kind` may be logged now.
    pub(crate) fn allow(&mut self, kind: &'static str, now: Instant) -> Option<u64> {
        match self.kinds.get_mut(kind) {
            Some((last, suppressed)) if now.saturating_duration_since(*last) < self.every => {
                *suppressed += 1;
                None
            }
            Some((last, suppressed)) => {
                let n = *suppressed;
                *last = now;
                *suppressed = 0;
                Some(n)
            }
            None => {
                self.kinds.insert(kind, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_period_with_the_count_of_the_rest() {
        let t = Instant::now();
        let mut gate = WarnGate::new(Duration::from_secs(10));
        assert_eq!(gate.allow("a", t), Some(0));
        assert_eq!(gate.allow("a", t + Duration::from_secs(1)), None);
        assert_eq!(gate.allow("a", t + Duration::from_secs(2)), None);
        assert_eq!(gate.allow("b", t + Duration::from_secs(2)), Some(0));
        assert_eq!(gate.allow("a", t + Duration::from_secs(10)), Some(2));
        assert_eq!(gate.allow("a", t + Duration::from_secs(11)), None);
    }
}
