//! The publisher's duty: while this node holds the role, run the source and publish every
//! table it produces; stand down when the source cannot use its input, the epoch file cannot be
//! written, or another publisher this node cannot see stamps over its tables.
//!
//! The gates that decide when to republish, contest or give up are plain state machines with
//! time as an argument (unit tests below); the loop is the shell around them.

use crate::config::Source;
use crate::metrics::NodeMetrics;
use crate::source::{self, SourceExit, SourceStatus};
use crate::table::RuleTable;
use shoal_gossip::{Mesh, Role};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The publisher duty's cause of standing down (`Mesh::stand_down`): its Kubernetes source
/// cannot use the API server, it cannot write its epoch file, or another publisher it cannot
/// see stamps over its tables ([`Contest`]).
const SOURCE_STAND_DOWN: &str = "source";
/// How long a publisher may fail to write its epoch file before it stands down, so another
/// node publishes (an unwritable state folder kept the role and published nothing; an audit).
const PUBLISH_GIVE_UP: Duration = Duration::from_secs(10);

/// Since when the publishes have failed for the epoch file (time as an argument).
#[derive(Debug, Default)]
struct EpochFileFailing {
    since: Option<tokio::time::Instant>,
}

impl EpochFileFailing {
    /// Notes a failed publish; true once the epoch file has failed every publish for
    /// `PUBLISH_GIVE_UP`. Other failures (a document too large, the role moving) are not this
    /// node's storage and would fail on any publisher: they reset nothing and give up nothing.
    fn gives_up(&mut self, error: &shoal_gossip::PublishError, now: tokio::time::Instant) -> bool {
        if !matches!(error, shoal_gossip::PublishError::EpochFile { .. }) {
            return false;
        }
        let since = *self.since.get_or_insert(now);
        now.saturating_duration_since(since) >= PUBLISH_GIVE_UP
    }
}
const PUBLISH_RETRY: Duration = Duration::from_millis(500);

/// At most one republish (the source's table stamped again because the head is not this
/// process's own stamp, `Mesh::needs_republish`) per this interval. The core already makes a
/// republish settle the head (its stamp ranks above it, or it is refused); this bounds what a
/// defect there, or two nodes that each take themselves for the publisher, could cost: the
/// audit's wrapped stamp republished 30,000 times in 20 s.
const MIN_REPUBLISH_INTERVAL: Duration = PUBLISH_RETRY;

/// Spaces republishes at least `MIN_REPUBLISH_INTERVAL` apart (time as an argument).
#[derive(Debug, Default)]
struct RepublishGate {
    last: Option<tokio::time::Instant>,
}

impl RepublishGate {
    /// Whether a republish may go now; if so, counts it.
    fn allow(&mut self, now: tokio::time::Instant) -> bool {
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < MIN_REPUBLISH_INTERVAL)
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}

/// Republishes over heads another node stamped, this many within [`CONTEST_WINDOW`], mean a
/// publisher this node cannot see stamps too: a partial partition (two nodes cut from each
/// other, both reaching a third) after one of them restarted, so that neither can hear the
/// other's new process first-hand, and each re-stamped the other's heads, about three a second,
/// for as long as the cut lasted (an audit). The node stands down then, held as a source's
/// give-up, so a node both sides can see publishes; a takeover or a healed partition
/// republishes over a foreign head once or twice.
const CONTEST_REPUBLISHES: usize = 4;
const CONTEST_WINDOW: Duration = Duration::from_secs(20);

/// The republishes over other nodes' heads within [`CONTEST_WINDOW`] (time as an argument).
#[derive(Debug, Default)]
struct Contest {
    over_foreign: std::collections::VecDeque<tokio::time::Instant>,
}

impl Contest {
    /// Notes a republish over a head another node stamped; true once that made
    /// [`CONTEST_REPUBLISHES`] within [`CONTEST_WINDOW`].
    fn contested(&mut self, now: tokio::time::Instant) -> bool {
        self.over_foreign
            .retain(|at| now.saturating_duration_since(*at) < CONTEST_WINDOW);
        self.over_foreign.push_back(now);
        self.over_foreign.len() >= CONTEST_REPUBLISHES
    }
}

/// Runs the source while this node is the publisher and publishes every table it produces.
pub(crate) async fn publisher_duty(
    mesh: Mesh<RuleTable>,
    source_config: Source,
    status: SourceStatus,
    (metrics, source_metrics): (NodeMetrics, source::kubernetes::KubernetesMetrics),
    cancel: CancellationToken,
) {
    let mut roles = mesh.role_watch();
    let mut failures = 0u32;
    let mut give_ups = 0u32;
    loop {
        // Wait for the role.
        loop {
            if *roles.borrow_and_update() == Role::Publisher {
                break;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = roles.changed() => if r.is_err() { return },
            }
        }
        tracing::info!("this node is now the publisher; starting the source");
        metrics.takeovers.inc();
        let duty = cancel.child_token();
        let (tx, mut tables) = watch::channel(None);
        let task = source::spawn(
            &source_config,
            tx,
            status.clone(),
            source_metrics.clone(),
            duty.clone(),
        );
        let mut pending: Option<RuleTable> = None;
        let mut shared_error = None;
        let mut retry = tokio::time::interval(PUBLISH_RETRY);
        let mut heads = mesh.subscribe();
        let mut republish = RepublishGate::default();
        let mut contest = Contest::default();
        let mut publish_error: Option<String> = None;
        let mut epoch_file_failing = EpochFileFailing::default();
        let mut gave_up: Option<String> = None;
        loop {
            if gave_up.is_some() {
                break;
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                r = roles.changed() => {
                    if r.is_err() || *roles.borrow_and_update() != Role::Publisher {
                        tracing::info!("lost the publisher role; stopping the source");
                        break;
                    }
                }
                r = tables.changed() => {
                    if r.is_err() { break }
                    pending = tables.borrow_and_update().clone();
                }
                r = heads.changed() => {
                    if r.is_err() { break }
                    heads.borrow_and_update();
                }
                _ = retry.tick() => {}
            }
            // The head is not the table this process last stamped: another node's (two
            // publishers during a split, a simultaneous start), or this id's from an earlier
            // process (a stale member back after a restart with a wiped state folder), or an
            // earlier term's. Stamp the source's table again so that it is the head. Checked
            // at every wake (the retry tick included), not only when the held document changes:
            // the head a publisher sees may never be adopted before it is superseded.
            if pending.is_none()
                && tables.borrow().is_some()
                && mesh.needs_republish()
                && republish.allow(tokio::time::Instant::now())
            {
                let view = mesh.view();
                let head = view.head.map(|h| h.version);
                let foreign = head.as_ref().filter(|h| h.origin != view.self_id);
                match foreign {
                    Some(h) if contest.contested(tokio::time::Instant::now()) => {
                        gave_up = Some(format!(
                            "another publisher, {}, stamped over this node's tables {} times \
                             in {} s (last {h}) and this node does not see it as the publisher: \
                             a partial partition? standing down so that a node both can see \
                             publishes",
                            h.origin,
                            CONTEST_REPUBLISHES,
                            CONTEST_WINDOW.as_secs()
                        ));
                        continue;
                    }
                    _ => {}
                }
                pending = tables.borrow().clone();
                tracing::info!(
                    head = ?head.map(|h| h.to_string()),
                    "the head is not this publisher's own stamp; republishing the source's table"
                );
            }
            status.share_error(&mesh, &mut shared_error);
            if let Some(table) = pending.take() {
                // Moved into the mesh, not copied (at 10,000 Services a copy of the table is
                // tens of MiB); a failed publish retries with the source's newest table.
                let services = table.services.len();
                match mesh.publish(table) {
                    Ok(version) => {
                        metrics.publishes.inc();
                        publish_error = None;
                        epoch_file_failing = EpochFileFailing::default();
                        status.record_publish(None);
                        tracing::info!(%version, services, "published");
                    }
                    Err(e) => {
                        let now = tokio::time::Instant::now();
                        if epoch_file_failing.gives_up(&e, now) {
                            gave_up = Some(format!(
                                "this node cannot publish for {} s: {e}",
                                PUBLISH_GIVE_UP.as_secs()
                            ));
                        }
                        // Retried at the next wake (every PUBLISH_RETRY at least); the same
                        // error is logged once, not at every retry.
                        let message = e.to_string();
                        if publish_error.as_deref() != Some(message.as_str()) {
                            tracing::warn!(error = %message, "publish failed; will retry");
                        } else {
                            tracing::debug!(error = %message, "publish failed again; will retry");
                        }
                        // Shown in /v1/node and gossiped as the source's problem, so every
                        // node's status says why the head stands still (an audit found only
                        // this log line).
                        status.record_publish(Some(message.clone()));
                        publish_error = Some(message);
                        pending = tables.borrow().clone();
                    }
                }
            }
        }
        duty.cancel();
        status.record_publish(None);
        // Only the publisher's problem is the cluster's; a later publisher shares its own.
        if shared_error.is_some() {
            mesh.delete_app_key(source::ERROR_KEY);
        }
        let mut exit = task.await.unwrap_or(SourceExit::Stopped);
        if cancel.is_cancelled() {
            return;
        }
        // Standing down for the epoch file or a contested role is not the API server's doing:
        // not counted in `shoal_kubernetes_stand_downs_total`, held as long as a source's
        // give-up.
        let not_the_api = gave_up.is_some();
        if let Some(reason) = gave_up {
            exit = SourceExit::GaveUp(reason);
        }
        // A failing source restarts after a backoff; one that cannot reach its API server
        // passes the role on for a while (longer each time in a row) so the next node tries.
        let pause = match exit {
            SourceExit::Stopped => {
                (failures, give_ups) = (0, 0);
                continue;
            }
            SourceExit::Failed(_) => {
                failures += 1;
                source_metrics.source_restarts.inc();
                source::kubernetes::api_health::restart_backoff(failures)
            }
            SourceExit::GaveUp(reason) => {
                give_ups += 1;
                if !not_the_api {
                    source_metrics.stand_downs.inc();
                }
                let hold = source::kubernetes::api_health::hold_after_give_up(give_ups);
                tracing::warn!(%reason, hold_s = hold.as_secs(), "standing down from the publisher role");
                mesh.stand_down(SOURCE_STAND_DOWN, Some(&reason));
                hold
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        mesh.stand_down(SOURCE_STAND_DOWN, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// F1 (audit): a republish loop logged 30,197 times in ~20 s. However often the publisher
    /// is woken with a head that is not its own, republishes stay `MIN_REPUBLISH_INTERVAL`
    /// apart.
    #[test]
    fn republishes_are_spaced_however_often_the_publisher_wakes() {
        let start = tokio::time::Instant::now();
        let mut gate = RepublishGate::default();
        let allowed = (0..20_000u64)
            .filter(|ms| gate.allow(start + Duration::from_millis(ms / 1_000)))
            .count();
        // 20,000 wakes over 20 ms: one republish.
        assert_eq!(allowed, 1);
        let mut gate = RepublishGate::default();
        let allowed = (0..20_000u64)
            .filter(|ms| gate.allow(start + Duration::from_millis(*ms)))
            .count();
        // 20 s of a wake every ms: one per interval.
        assert_eq!(allowed as u128, 20_000 / MIN_REPUBLISH_INTERVAL.as_millis());
    }

    /// Republishes over other nodes' heads as a takeover or a healed partition makes them
    /// (once or twice) never contest the role; the war of a partial partition (one every
    /// 0.3-1 s) does within a few seconds, and republishes spread wider than the window never.
    #[test]
    fn only_repeated_republishes_over_foreign_heads_contest_the_role() {
        let start = tokio::time::Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut contest = Contest::default();
        assert!(!contest.contested(at(0)));
        assert!(!contest.contested(at(600)));
        let mut contest = Contest::default();
        let war: Vec<bool> = (0..6).map(|i| contest.contested(at(i * 500))).collect();
        assert_eq!(war, [false, false, false, true, true, true]);
        let mut contest = Contest::default();
        let spread = CONTEST_WINDOW.as_millis() as u64 / (CONTEST_REPUBLISHES as u64 - 1) + 1;
        assert!((0..50).all(|i| !contest.contested(at(i * spread))));
    }

    /// A publisher whose epoch file fails every publish for `PUBLISH_GIVE_UP` stands down (an
    /// audit: it kept the role and published nothing); other failures never make it give up.
    #[test]
    fn only_a_lasting_epoch_file_failure_gives_the_role_up() {
        let start = tokio::time::Instant::now();
        let epoch_file = shoal_gossip::PublishError::EpochFile {
            path: "/state/epoch".into(),
            detail: "Not a directory (os error 20)".into(),
        };
        let too_large = shoal_gossip::PublishError::TooLarge {
            size_bytes: 2,
            max_bytes: 1,
        };
        let mut failing = EpochFileFailing::default();
        assert!(!failing.gives_up(&too_large, start + PUBLISH_GIVE_UP * 5));
        assert!(!failing.gives_up(&epoch_file, start));
        assert!(!failing.gives_up(&epoch_file, start + PUBLISH_GIVE_UP / 2));
        assert!(!failing.gives_up(&too_large, start + PUBLISH_GIVE_UP * 2));
        assert!(failing.gives_up(&epoch_file, start + PUBLISH_GIVE_UP));
    }
}
