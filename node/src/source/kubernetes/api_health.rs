//! When a publisher should give up: the API server refuses it or stays out of reach too long.
//!
//! Pure (time is an argument). The watch loop reports each answer from the API server, per
//! watched kind (Service, EndpointSlice, ShoalPool): a good answer clears that kind's record
//! only; errors start a failure period for their kind. The publisher gives up when the API
//! server refuses any one kind (401/403: RBAC, a wrong token) for [`Bounds::refused`], or
//! answers nothing useful about any one kind for [`Bounds::unreachable`] (down, or a network
//! policy drops the traffic). Per kind, because one kind's events would otherwise hide another
//! kind that keeps failing (a Role missing EndpointSlices while Services change: the table
//! would go stale for good). A watch the API server stays silent on for [`Bounds::silent`]
//! ([`silent_for`]) is such a failure too. Giving up lets the next node try: its network path
//! or credentials may work. [`hold_after_give_up`] says how long a node that gave up stays out
//! of the election: it doubles on each consecutive give-up so that a cluster where every node
//! fails cycles slowly.

use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub refused: Duration,
    pub unreachable: Duration,
    /// Nothing at all from the API server about one watched kind for this long (no event, no
    /// bookmark, no end of a watch) counts as a failure of that kind, and its watch is started
    /// anew (a relist). Each watch asks the server to end it after half of this
    /// ([`watch_timeout_secs`]), so a healthy server is heard from at least that often even
    /// when nothing changes. Watch timeouts are whole seconds, so below 2 s healthy watches
    /// would look silent.
    pub silent: Duration,
    /// A list (all its pages) of one kind that has not finished after this long is a failure
    /// the publisher gives the role up for: an API server whose `continue` token led back to
    /// the first page kept the publisher on its last table, 21 list requests a second, with
    /// no error at all (a probe). The largest clusters' lists take seconds.
    pub list: Duration,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            refused: Duration::from_secs(5),
            unreachable: Duration::from_secs(30),
            silent: Duration::from_secs(60),
            list: Duration::from_secs(120),
        }
    }
}

/// `Some(reason)` when a list of `kind` begun at `since` has not finished by `now`.
pub fn list_overdue(kind: &str, since: Instant, now: Instant, bounds: &Bounds) -> Option<String> {
    let took = now.saturating_duration_since(since);
    (took >= bounds.list).then(|| {
        format!(
            "the list of {kind} has not finished after {}s: the API server's pages do not end \
             (a continue token that leads back?)",
            took.as_secs()
        )
    })
}

/// The `timeoutSeconds` of each watch request: half the silence bound, so that a healthy
/// server ends (or, with its watch cache, bookmarks) every watch well before a quiet kind
/// looks silent. kube's watcher also drops a watch that sends nothing for this plus 5 s.
pub fn watch_timeout_secs(bounds: &Bounds) -> u32 {
    u32::try_from(bounds.silent.as_secs() / 2)
        .unwrap_or(u32::MAX)
        .max(1)
}

/// `Some(how long)` when a watched kind last heard from at `last_heard` has been silent past
/// the bound.
pub fn silent_for(last_heard: Instant, now: Instant, bounds: &Bounds) -> Option<Duration> {
    let quiet = now.saturating_duration_since(last_heard);
    (quiet >= bounds.silent).then_some(quiet)
}

/// What went wrong with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// 401 or 403.
    Refused,
    /// Anything else: connection refused or reset, timeouts, 5xx, a silent watch.
    Other,
}

/// The failure record of one kind.
#[derive(Debug, Clone)]
struct Failing {
    since: Instant,
    refused_since: Option<Instant>,
    last_error: String,
    /// When the last error came.
    last_at: Instant,
}

#[derive(Debug, Clone, Default)]
pub struct ApiHealth {
    /// Only kinds whose last answer was an error.
    failing: BTreeMap<&'static str, Failing>,
}

impl ApiHealth {
    /// A good answer about `kind` (a list, a watch event). Says nothing about other kinds, and
    /// status writes are not reported here at all: a write that works does not make a watch
    /// that fails work.
    pub fn on_ok(&mut self, kind: &'static str) {
        self.failing.remove(kind);
    }

    pub fn on_error(
        &mut self,
        kind: &'static str,
        now: Instant,
        failure: Failure,
        message: String,
    ) {
        let f = self.failing.entry(kind).or_insert(Failing {
            since: now,
            refused_since: None,
            last_error: String::new(),
            last_at: now,
        });
        f.last_at = now;
        match failure {
            Failure::Refused => {
                f.refused_since.get_or_insert(now);
            }
            // A refusal period continues only while every answer is a refusal.
            Failure::Other => f.refused_since = None,
        }
        f.last_error = message;
    }

    /// Kinds whose collection the API server answered with a success status after their last
    /// error are failing no longer: kube's watcher yields nothing for a re-watch that works
    /// until an object changes, so one watch error on a quiet kind (an API server restart, an
    /// etcd leader change) made a healthy publisher give up its role 30 s later, and blips a
    /// little over 30 s apart moved the role every time (a probe). Returns the kinds recovered.
    pub fn recover(&mut self, answered: &[(&'static str, Instant)]) -> Vec<&'static str> {
        let recovered: Vec<&'static str> = answered
            .iter()
            .filter(|(kind, at)| self.failing.get(kind).is_some_and(|f| *at > f.last_at))
            .map(|(kind, _)| *kind)
            .collect();
        for kind in &recovered {
            self.failing.remove(kind);
        }
        recovered
    }

    /// No watched kind is failing.
    pub fn all_ok(&self) -> bool {
        self.failing.is_empty()
    }

    /// `Some(reason)` once the publisher should give up the role: some kind has been refused
    /// or failing past its bound. The reason names the kind.
    pub fn give_up(&self, now: Instant, bounds: &Bounds) -> Option<String> {
        let past = |t: Instant, bound: Duration| {
            let d = now.saturating_duration_since(t);
            (d >= bound).then_some(d.as_secs())
        };
        let refused = self.failing.iter().find_map(|(kind, f)| {
            let secs = past(f.refused_since?, bounds.refused)?;
            Some(format!(
                "the API server refuses this node for {secs}s: {kind}: {}",
                f.last_error
            ))
        });
        refused.or_else(|| {
            self.failing.iter().find_map(|(kind, f)| {
                let secs = past(f.since, bounds.unreachable)?;
                Some(format!(
                    "no good answer from the API server for {secs}s: {kind}: {}",
                    f.last_error
                ))
            })
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
        h.on_error("Service", t0, Failure::Refused, "403 Forbidden".into());
        assert_eq!(h.give_up(t0 + secs(4), &b), None);
        let reason = h.give_up(t0 + secs(5), &b).unwrap();
        assert!(
            reason.contains("refuses") && reason.contains("Service: 403"),
            "{reason}"
        );

        // A good answer in between starts over.
        h.on_ok("Service");
        assert!(h.all_ok());
        assert_eq!(h.give_up(t0 + secs(60), &b), None);

        // Connection errors: only after the longer bound; a refusal mixed in does not count
        // as a refusal period.
        let mut h = ApiHealth::default();
        h.on_error("Service", t0, Failure::Refused, "403".into());
        h.on_error(
            "Service",
            t0 + secs(1),
            Failure::Other,
            "connection refused".into(),
        );
        assert_eq!(h.give_up(t0 + secs(29), &b), None);
        let reason = h.give_up(t0 + secs(30), &b).unwrap();
        assert!(reason.contains("Service: connection refused"), "{reason}");
    }

    /// A kind answered with a success status after its last error (a re-watch that works on
    /// a quiet kind, which yields no event) is failing no longer; an answer from before the
    /// last error, or about another kind, changes nothing.
    #[test]
    fn a_success_after_the_last_error_ends_the_failure() {
        let b = Bounds::default();
        let t0 = Instant::now();
        let mut h = ApiHealth::default();
        h.on_error("ShoalPool", t0 + secs(1), Failure::Other, "500".into());
        let before = [("ShoalPool", t0), ("Service", t0 + secs(2))];
        assert_eq!(h.recover(&before), Vec::<&str>::new());
        assert!(h.give_up(t0 + secs(31), &b).is_some(), "still failing");
        assert_eq!(h.recover(&[("ShoalPool", t0 + secs(2))]), vec!["ShoalPool"]);
        assert!(h.all_ok());
        assert_eq!(h.give_up(t0 + secs(60), &b), None);
    }

    #[test]
    fn one_failing_kind_gives_up_while_another_answers() {
        let b = Bounds::default();
        let t0 = Instant::now();
        let mut h = ApiHealth::default();
        // RBAC without EndpointSlices: every slice request refused, Services fine throughout.
        for s in 0..=5 {
            h.on_error(
                "EndpointSlice",
                t0 + secs(s),
                Failure::Refused,
                "403".into(),
            );
            h.on_ok("Service");
        }
        assert_eq!(h.give_up(t0 + secs(4), &b), None);
        let reason = h.give_up(t0 + secs(5), &b).unwrap();
        assert!(reason.contains("EndpointSlice: 403"), "{reason}");

        // A good answer of the failing kind clears it; one of another kind does not.
        h.on_ok("EndpointSlice");
        assert_eq!(h.give_up(t0 + secs(60), &b), None);
        h.on_error("ShoalPool", t0, Failure::Other, "connection reset".into());
        h.on_ok("Service");
        h.on_ok("EndpointSlice");
        assert!(!h.all_ok());
        let reason = h.give_up(t0 + secs(30), &b).unwrap();
        assert!(reason.contains("ShoalPool: connection reset"), "{reason}");
        h.on_ok("ShoalPool");
        assert!(h.all_ok());

        // A refusal of one kind and an outage of another: each is timed on its own.
        h.on_error("Service", t0, Failure::Other, "timeout".into());
        h.on_error(
            "EndpointSlice",
            t0 + secs(10),
            Failure::Refused,
            "401".into(),
        );
        assert_eq!(h.give_up(t0 + secs(14), &b), None);
        assert!(h
            .give_up(t0 + secs(15), &b)
            .unwrap()
            .contains("EndpointSlice: 401"));
    }

    #[test]
    fn silence_past_its_bound_counts_as_a_failure() {
        let b = Bounds::default();
        let t0 = Instant::now();
        assert_eq!(silent_for(t0, t0 + secs(59), &b), None);
        assert_eq!(silent_for(t0, t0 + secs(61), &b), Some(secs(61)));
        // A clock that went backwards is no silence.
        assert_eq!(silent_for(t0 + secs(5), t0, &b), None);
        // Watches end (or are bookmarked) twice per bound on a healthy server.
        assert_eq!(watch_timeout_secs(&b), 30);
        let tiny = Bounds {
            silent: Duration::from_millis(1500),
            ..b
        };
        assert_eq!(watch_timeout_secs(&tiny), 1);

        // The loop reports a silent kind as a failure; with no good answer after it (the
        // restarted watch hangs too) the publisher gives up once the outage bound has passed.
        let mut h = ApiHealth::default();
        let noticed = t0 + secs(60);
        h.on_error(
            "EndpointSlice",
            noticed,
            Failure::Other,
            "silent for 60s".into(),
        );
        h.on_ok("Service");
        assert_eq!(h.give_up(noticed + secs(29), &b), None);
        let reason = h.give_up(noticed + secs(30), &b).unwrap();
        assert!(reason.contains("EndpointSlice: silent"), "{reason}");
        // The restarted watch lists: the kind answers again.
        h.on_ok("EndpointSlice");
        assert_eq!(h.give_up(noticed + secs(30), &b), None);
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
