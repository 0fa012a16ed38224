//! When a publisher should give up: the API server refuses it or stays out of reach too long.
//!
//! Pure (time is an argument). The watch loop reports each answer from the API server: any
//! good answer clears the record; errors start a failure period. The publisher gives up when
//! the API server refuses it (401/403: RBAC, a wrong token) for [`Bounds::refused`], or answers
//! nothing useful for [`Bounds::unreachable`] (down, or a network policy drops the traffic).
//! Giving up lets the next node try: its network path or credentials may work.
//! [`hold_after_give_up`] says how long a node that gave up stays out of the election: it
//! doubles on each consecutive give-up so that a cluster where every node fails cycles slowly.

use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub refused: Duration,
    pub unreachable: Duration,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            refused: Duration::from_secs(5),
            unreachable: Duration::from_secs(30),
        }
    }
}

/// What went wrong with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// 401 or 403.
    Refused,
    /// Anything else: connection refused or reset, timeouts, 5xx.
    Other,
}

#[derive(Debug, Clone, Default)]
pub struct ApiHealth {
    failing_since: Option<Instant>,
    refused_since: Option<Instant>,
    last_error: String,
}

impl ApiHealth {
    /// A good answer (a list, a watch event, a successful write).
    pub fn on_ok(&mut self) {
        self.failing_since = None;
        self.refused_since = None;
    }

    pub fn on_error(&mut self, now: Instant, failure: Failure, message: String) {
        self.failing_since.get_or_insert(now);
        match failure {
            Failure::Refused => {
                self.refused_since.get_or_insert(now);
            }
            // A refusal period continues only while every answer is a refusal.
            Failure::Other => self.refused_since = None,
        }
        self.last_error = message;
    }

    /// `Some(reason)` once the publisher should give up the role.
    pub fn give_up(&self, now: Instant, bounds: &Bounds) -> Option<String> {
        if let Some(t) = self.refused_since {
            if now.saturating_duration_since(t) >= bounds.refused {
                return Some(format!(
                    "the API server refuses this node for {}s: {}",
                    now.saturating_duration_since(t).as_secs(),
                    self.last_error
                ));
            }
        }
        let t = self.failing_since?;
        (now.saturating_duration_since(t) >= bounds.unreachable).then(|| {
            format!(
                "no good answer from the API server for {}s: {}",
                now.saturating_duration_since(t).as_secs(),
                self.last_error
            )
        })
    }
}

/// How long a node stays out of the election after its `consecutive`-th give-up in a row
/// (1-based): 30 s, 60 s, 120 s, ... capped at 10 minutes.
pub fn hold_after_give_up(consecutive: u32) -> Duration {
    let base = Duration::from_secs(30);
    let cap = Duration::from_secs(600);
    base.saturating_mul(1u32 << consecutive.saturating_sub(1).min(8))
        .min(cap)
}

/// Backoff before restarting a source that failed `consecutive` times in a row (1-based):
/// 1 s, 2 s, 4 s, ... capped at 30 s.
pub fn restart_backoff(consecutive: u32) -> Duration {
    Duration::from_secs(1u64 << consecutive.saturating_sub(1).min(5)).min(Duration::from_secs(30))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn refusal_gives_up_after_its_bound_and_outage_after_its_own() {
        let b = Bounds::default();
        let t0 = Instant::now();
        let mut h = ApiHealth::default();
        assert_eq!(h.give_up(t0 + secs(100), &b), None, "no error, no give-up");
        h.on_error(t0, Failure::Refused, "403 Forbidden".into());
        assert_eq!(h.give_up(t0 + secs(4), &b), None);
        let reason = h.give_up(t0 + secs(5), &b).unwrap();
        assert!(
            reason.contains("refuses") && reason.contains("403"),
            "{reason}"
        );

        // A good answer in between starts over.
        h.on_ok();
        assert_eq!(h.give_up(t0 + secs(60), &b), None);

        // Connection errors: only after the longer bound; a refusal mixed in does not count
        // as a refusal period.
        let mut h = ApiHealth::default();
        h.on_error(t0, Failure::Refused, "403".into());
        h.on_error(t0 + secs(1), Failure::Other, "connection refused".into());
        assert_eq!(h.give_up(t0 + secs(29), &b), None);
        let reason = h.give_up(t0 + secs(30), &b).unwrap();
        assert!(reason.contains("connection refused"), "{reason}");
    }

    #[test]
    fn holds_and_backoffs_grow_and_are_capped() {
        assert_eq!(hold_after_give_up(1), secs(30));
        assert_eq!(hold_after_give_up(2), secs(60));
        assert_eq!(hold_after_give_up(50), secs(600));
        assert_eq!(restart_backoff(1), secs(1));
        assert_eq!(restart_backoff(3), secs(4));
        assert_eq!(restart_backoff(100), secs(30));
    }
}
