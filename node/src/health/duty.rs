//! One backend this node checks: its check, its opinion (hysteresis), when it is due, and the
//! rules for an edited check, a stale opinion and a handover. A pure state machine; the
//! runner (`runner.rs`) owns the map of duties and starts the probes.

use super::hysteresis::Hysteresis;
use super::result::ProbeResult;
use super::verdict::BackendRef;
use super::wire::Observation;
use crate::table::HealthCheck;
use crate::unix_ms;
use std::time::Duration;
use tokio::time::Instant;

/// How much longer than its timeout a probe's success may take to be counted
/// ([`Duty::answered_too_late`]).
const LATE_SLACK: Duration = Duration::from_secs(1);

/// One backend this node checks (or recently checked and is handing over).
pub(super) struct Duty {
    pub(super) check: HealthCheck,
    pub(super) hysteresis: Hysteresis,
    pub(super) last_result: ProbeResult,
    pub(super) last_probe_ms: u64,
    /// When the opinion last took an answer (monotonic): see [`Duty::forget_if_stale`].
    pub(super) observed_at: Option<Instant>,
    pub(super) next_due: Instant,
    pub(super) in_flight: bool,
    /// When the last probe started, and the time between the last two starts: the interval,
    /// or longer while due probes wait for room (see [`Duty::forget_if_stale`]).
    pub(super) last_started: Option<Instant>,
    pub(super) pace: Option<Duration>,
    /// Set when this node stopped being a checker; the entry is dropped after the handover.
    pub(super) released_at: Option<Instant>,
    /// Counts the check's changes of question (probe kind, path, port...): a probe carries the
    /// one it asked, and an answer to an earlier question is not counted.
    pub(super) question: u64,
}

impl Duty {
    /// A backend just assigned to this node: no opinion yet, probed at `next_due`.
    pub(super) fn new(check: HealthCheck, next_due: Instant) -> Duty {
        Duty {
            check,
            hysteresis: Hysteresis::new(unix_ms()),
            last_result: ProbeResult::Pending,
            last_probe_ms: 0,
            observed_at: None,
            next_due,
            in_flight: false,
            last_started: None,
            pace: None,
            released_at: None,
            question: 0,
        }
    }

    /// A probe starts now: the next one is due an interval later (a steady cadence, but never
    /// a queue of probes missed while busy), and the pace is the time since the last start.
    pub(super) fn start(&mut self, now: Instant) {
        let interval = Duration::from_millis(self.check.interval_ms.max(1));
        self.next_due = (self.next_due + interval).max(now);
        if self.next_due == now {
            self.next_due = now + interval;
        }
        if let Some(last) = self.last_started {
            self.pace = Some(now.saturating_duration_since(last));
        }
        self.last_started = Some(now);
        self.in_flight = true;
    }

    pub(super) fn observation(&self, b: &BackendRef) -> Observation {
        Observation {
            address: b.address,
            port: b.port,
            state: self.hysteresis.state(),
            last_result: self.last_result,
            last_probe_ms: self.last_probe_ms,
            since_ms: self.hysteresis.since_ms(),
        }
    }

    /// Takes the table's (possibly edited) check for this backend.
    pub(super) fn adopt(&mut self, check: &HealthCheck, now: Instant) {
        if self.check.probe != check.probe || self.check.port != check.port {
            // A different probe asks a different question: start the opinion over.
            self.hysteresis = Hysteresis::new(unix_ms());
            self.last_result = ProbeResult::Pending;
            self.next_due = now;
            self.question += 1;
        } else if check.interval_ms < self.check.interval_ms {
            // A shorter interval applies now, not after the old one (an hour at most): a
            // backend that died meanwhile would stay up that long.
            let interval = Duration::from_millis(check.interval_ms.max(1));
            self.next_due = self.next_due.min(now + interval);
        }
        self.check = check.clone();
    }

    /// Counts the answer of a probe that asked `question`; `Some(opinion changed)`, or `None`
    /// when the check has changed since the probe started (a timeout of the old HTTP check
    /// arriving after an edit to a TCP check counted as the new check's first failure, so a
    /// backend went down after `fall - 1` of the new check's failures).
    pub(super) fn observe(
        &mut self,
        question: u64,
        result: ProbeResult,
        now_ms: u64,
    ) -> Option<bool> {
        if question != self.question {
            return None;
        }
        // A stale opinion starts over before it takes this answer, not at the runner's next
        // look: answers read after a stall (the probes in flight, read at the thawed runner's
        // first pass, before its stale check) made the opinion fresh again, and a thawed
        // checker kept its "up" from before the freeze, now with recent failures below `fall`,
        // for 125 of 200 dead backends, 20 s after the thaw (10,000 health keys, a probe).
        let reset = self.forget_if_stale(Instant::now());
        self.last_result = result;
        self.last_probe_ms = now_ms;
        self.observed_at = Some(Instant::now());
        let (rise, fall) = (self.check.rise, self.check.fall);
        let changed = self
            .hysteresis
            .observe(result.is_success(), rise, fall, now_ms);
        Some(reset || changed)
    }

    /// Whether a success that took `elapsed` says nothing about the backend now: a probe ends
    /// by its timeout, so an answer counted later than the timeout (and a second of slack for
    /// a busy runtime) was read after the process stalled with the probe in flight, and the
    /// connection it reports may be from long before. A probe caught such an "ok", from a
    /// connect made before a 14 s freeze, counted after the thaw as fresh: it outlived the
    /// opinion's reset and kept backends dead for seconds "up" at every node. Failures that
    /// late still count (the safe side).
    pub(super) fn answered_too_late(&self, result: ProbeResult, elapsed: Duration) -> bool {
        let limit = Duration::from_millis(self.check.timeout_ms).saturating_add(LATE_SLACK);
        result.is_success() && elapsed > limit
    }

    /// Starts the opinion over when it took no answer for longer than `fall` probes (plus one
    /// and a timeout) would take at the pace this node has kept them: the process was frozen
    /// or starved meanwhile, and the backend may have died and been drained by the other
    /// checkers. A checker thawed after 10 s kept its "up" from before, which tied the other
    /// checker's "down" (a tie is up), and put a backend every replica had drained back in
    /// service on every node for `fall - 1` intervals (a probe: 4 of 4 runs, 6.1 s with 3 s
    /// intervals). `Unknown` is not counted.
    ///
    /// The pace is the interval, or the time between the last two probe starts when that was
    /// longer: with more backends than the node probes in an interval, each waits its turn
    /// (48 s at 100,000 backends per node in a debug build), and a window of intervals reset
    /// every opinion before its `fall` failures came in, so that no backend ever went down (a
    /// probe, 50,000 to 300,000 backends). A freeze does not stretch the pace: the last two
    /// starts came before it.
    pub(super) fn forget_if_stale(&mut self, now: Instant) -> bool {
        let Some(at) = self.observed_at else {
            return false;
        };
        let interval = Duration::from_millis(self.check.interval_ms.max(1));
        let pace = self.pace.map_or(interval, |p| p.max(interval));
        let probes = self.check.fall.max(1).saturating_add(1);
        let stale_after = pace
            .saturating_mul(probes)
            .saturating_add(Duration::from_millis(self.check.timeout_ms));
        if now.saturating_duration_since(at) <= stale_after {
            return false;
        }
        self.hysteresis = Hysteresis::new(unix_ms());
        self.observed_at = None;
        true
    }

    /// Long enough for a new checker to reach an opinion: max(rise, fall) probes plus one.
    pub(super) fn handover(&self) -> Duration {
        let probes = self.check.rise.max(self.check.fall).max(1) as u64 + 1;
        Duration::from_millis(self.check.interval_ms.max(1).saturating_mul(probes))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::health::hysteresis::CheckState;
    use crate::table::Probe;

    /// A check with the defaults the tests of the health loop build on.
    pub(in crate::health) fn check(probe: Probe, interval_ms: u64) -> HealthCheck {
        HealthCheck {
            probe,
            interval_ms,
            timeout_ms: 500,
            rise: 2,
            fall: 3,
            port: None,
        }
    }

    /// An interval lowered from 600 s to 1 s waited out the old 600 s before the next probe.
    #[test]
    fn an_edited_check_takes_effect_at_once() {
        let now = Instant::now();
        let hour = now + Duration::from_secs(600);
        let mut d = Duty::new(check(Probe::Tcp, 600_000), hour);
        d.adopt(&check(Probe::Tcp, 1_000), now);
        assert_eq!(d.next_due, now + Duration::from_secs(1));
        assert_eq!(d.check.interval_ms, 1_000);
        // A longer interval keeps the probe already due (the next one follows the new pace).
        d.adopt(&check(Probe::Tcp, 5_000), now);
        assert_eq!(d.next_due, now + Duration::from_secs(1));
        // A different probe is due at once.
        let http = Probe::Http {
            path: "/".into(),
            expect_status: 200,
            tls: false,
            host: None,
        };
        d.adopt(&check(http, 5_000), now);
        assert_eq!(d.next_due, now);
    }

    /// An answer read after the opinion went stale starts it over first: a thawed checker's
    /// "up" from before the freeze does not survive its first late failure.
    #[test]
    fn an_answer_to_a_stale_opinion_counts_toward_a_new_one() {
        let mut d = Duty::new(check(Probe::Tcp, 1_000), Instant::now());
        for i in 0..2 {
            d.observe(d.question, ProbeResult::Ok, i);
        }
        assert_eq!(d.hysteresis.state(), CheckState::Up);
        // Frozen past the fall window: (3 + 1) x 1 s + 0.5 s.
        d.observed_at = Some(Instant::now() - Duration::from_secs(10));
        d.observe(d.question, ProbeResult::Refused, 10_000);
        assert_eq!(
            d.hysteresis.state(),
            CheckState::Unknown,
            "started over, then one failure"
        );
    }

    /// A success read after the process stalled with its probe in flight is not counted; a
    /// failure is.
    #[test]
    fn a_success_counted_after_its_timeout_is_too_late() {
        let d = Duty::new(check(Probe::Tcp, 1_000), Instant::now());
        let ms = Duration::from_millis;
        assert_eq!(d.check.timeout_ms, 500);
        assert!(!d.answered_too_late(ProbeResult::Ok, ms(3)));
        assert!(
            !d.answered_too_late(ProbeResult::Ok, ms(1_500)),
            "a busy runtime"
        );
        assert!(d.answered_too_late(ProbeResult::Ok, ms(1_501)));
        assert!(
            d.answered_too_late(ProbeResult::Ok, Duration::from_secs(14)),
            "a thaw"
        );
        assert!(!d.answered_too_late(ProbeResult::Refused, Duration::from_secs(14)));
        assert!(!d.answered_too_late(ProbeResult::Timeout, Duration::from_secs(14)));
    }

    /// An opinion that took no answer for longer than its fall window starts over; one that
    /// did is kept, and a fresh one has nothing to forget.
    #[test]
    fn an_opinion_older_than_its_fall_window_starts_over() {
        let now = Instant::now();
        let mut d = Duty::new(check(Probe::Tcp, 1_000), now);
        assert!(!d.forget_if_stale(now + Duration::from_secs(60)), "fresh");
        for i in 0..2 {
            d.observe(d.question, ProbeResult::Ok, i);
        }
        assert_eq!(d.hysteresis.state(), CheckState::Up);
        let at = d.observed_at.expect("observed");
        // fall 3: up to (3 + 1) intervals plus the timeout is not stale.
        assert!(!d.forget_if_stale(at + Duration::from_millis(4_500)));
        assert_eq!(d.hysteresis.state(), CheckState::Up);
        assert!(d.forget_if_stale(at + Duration::from_millis(4_501)));
        assert_eq!(d.hysteresis.state(), CheckState::Unknown);
        assert!(!d.forget_if_stale(at + Duration::from_secs(60)), "once");
        // The thawed checker's first failure does not make it up again, nor down yet.
        d.observe(d.question, ProbeResult::Refused, 9);
        assert_eq!(d.hysteresis.state(), CheckState::Unknown);
    }

    /// The audit of 2026-12-06: an HTTP check timing out was edited to a TCP check; the old
    /// probe's timeout, arriving after the edit, was the new check's first failure.
    #[test]
    fn an_answer_to_the_check_before_an_edit_is_not_counted() {
        let now = Instant::now();
        let mut d = Duty::new(check(Probe::Tcp, 1_000), now);
        d.check.fall = 2;
        let asked = d.question;
        assert_eq!(d.observe(asked, ProbeResult::Timeout, 1), Some(false));
        // Edited: another port is another question.
        let mut other_port = check(Probe::Tcp, 1_000);
        other_port.fall = 2;
        other_port.port = Some(9);
        d.adopt(&other_port, now);
        assert_eq!(d.last_result, ProbeResult::Pending);
        assert_eq!(d.observe(asked, ProbeResult::Timeout, 2), None);
        assert_eq!(d.last_result, ProbeResult::Pending);
        // The new check's own failures count from zero: two make it down.
        assert_eq!(d.observe(d.question, ProbeResult::Refused, 3), Some(false));
        assert_eq!(d.observe(d.question, ProbeResult::Refused, 4), Some(true));
        assert_eq!(d.hysteresis.state(), CheckState::Down);
    }

    /// Probes that wait for room stretch the window with them: with a probe every 10 s (1 s
    /// interval, fall 3), failures 10 s apart still add up to a down opinion (the first answer,
    /// before any pace is known, starts over once). A freeze stretches nothing: the last two
    /// starts came before it, and the opinion starts over.
    #[test]
    fn a_slow_pace_keeps_the_opinion_and_a_freeze_does_not() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut d = Duty::new(check(Probe::Tcp, 1_000), t0);
        for s in [0u64, 10, 20, 30] {
            let forgot = d.forget_if_stale(at(s));
            assert_eq!(forgot, s == 10, "at {s} s");
            d.start(at(s));
            d.in_flight = false;
            d.observe(d.question, ProbeResult::Refused, s * 1_000);
            d.observed_at = Some(at(s));
        }
        assert_eq!(
            d.hysteresis.state(),
            CheckState::Down,
            "three failures, 10 s apart"
        );
        assert_eq!(d.pace, Some(Duration::from_secs(10)));

        // At a 1 s pace a 10 s gap is a freeze: the opinion starts over.
        let mut d = Duty::new(check(Probe::Tcp, 1_000), t0);
        for s in [0u64, 1] {
            d.start(at(s));
            d.in_flight = false;
            d.observe(d.question, ProbeResult::Ok, s * 1_000);
            d.observed_at = Some(at(s));
        }
        assert_eq!(d.hysteresis.state(), CheckState::Up);
        assert!(d.forget_if_stale(at(11)));
        assert_eq!(d.hysteresis.state(), CheckState::Unknown);
    }
}
