//! `/readyz`'s decision, apart from the handler: whether this node may be sent traffic, and
//! the most important reason when it may not.

use crate::status::VersionRef;

/// What this node's own announce report adds to `/readyz`: a BGP node whose BIRD does not
/// answer its control socket (past the grace of `announce::decide::bird_answering`) cannot be
/// announcing anything, so it is not ready. Other announce reasons (stalled, draining) are
/// transient or already covered by the mesh's readiness.
pub(super) fn announce_ready(report: Option<&crate::announce::Report>) -> Result<(), String> {
    use crate::announce::decide::Readiness;
    match report {
        Some(r) if r.readiness == Readiness::BirdNotAnswering => Err(format!(
            "BIRD is not answering its control socket ({})",
            r.bird.as_deref().unwrap_or("no answer")
        )),
        _ => Ok(()),
    }
}

/// What a publisher that cannot stamp adds to `/readyz`: its source's tables no longer spread
/// (every epoch above the head is used, `Mesh::stamp_refusal`), which nothing else would show
/// while every node still runs the old head.
pub(super) fn publisher_ready(stamp_refusal: Option<&str>) -> Result<(), String> {
    match stamp_refusal {
        Some(why) => Err(format!("this publisher cannot publish: {why}")),
        None => Ok(()),
    }
}

/// What failing reconcile passes add to `/readyz` (the rule of
/// `announce::decide::dataplane_failing`): a node that applied its head once, and whose passes
/// have failed ever since, does not serve what the table says.
pub(super) fn dataplane_ready(
    state: &crate::reconcile::ReconcileState,
    now: std::time::Instant,
) -> Result<(), String> {
    match state.failing(now) {
        Some(failing_for) => Err(format!(
            "its last {} reconcile passes failed, for {} s: {}",
            state.failed_in_a_row,
            failing_for.as_secs(),
            state.last_error.as_deref().unwrap_or("no error kept")
        )),
        None => Ok(()),
    }
}

/// `/readyz`'s answer: `Ok` with what this node serves, or `Err` with the most important
/// reason it does not (the order of `announce::decide::readiness`). Applying the head is not
/// enough: a node still listening to the mesh may not have heard yet what would refuse it,
/// such as an older live process with its id.
pub(super) fn readiness(
    role: &shoal_gossip::RoleReason,
    head: Option<&VersionRef>,
    applied: Option<&VersionRef>,
) -> Result<String, String> {
    use shoal_gossip::{Role, RoleReason};
    match (role, head, applied) {
        (RoleReason::DuplicateId { other_at, .. }, _, _) => Err(format!(
            "an older live process at {other_at} has this node id"
        )),
        (RoleReason::AwaitingSeeds, _, _) => Err(
            "none of the seeds has answered since start (a cluster of one runs with --single-node)"
                .into(),
        ),
        (_, None, _) => Err("no rule table yet".into()),
        (r, Some(_), _) if r.role() == Role::CatchingUp => Err("catching up with the mesh".into()),
        (_, Some(h), Some(a)) if h == a => Ok(format!("applied {h}")),
        (_, Some(h), a) => Err(format!(
            "head is {h}, applied {}",
            a.map(|a| a.to_string()).unwrap_or_else(|| "nothing".into())
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_gossip::{NodeId, RoleReason};

    fn v(seq: u64) -> VersionRef {
        VersionRef {
            epoch: 1,
            seq,
            origin: "n1".into(),
        }
    }

    #[test]
    fn ready_only_when_caught_up_and_the_head_is_applied() {
        let follows = RoleReason::Follows {
            publisher: NodeId::new("n1"),
        };
        assert_eq!(
            readiness(&follows, Some(&v(2)), Some(&v(2))),
            Ok("applied 1.2@n1".into())
        );
        assert_eq!(
            readiness(&RoleReason::Incumbent, Some(&v(2)), Some(&v(2))),
            Ok("applied 1.2@n1".into())
        );
        // Applied, but the mesh has not been heard long enough: a duplicate of this id may
        // not be known yet (the flake of attack_probe's duplicate test).
        assert_eq!(
            readiness(&RoleReason::CatchingUp, Some(&v(2)), Some(&v(2))),
            Err("catching up with the mesh".into())
        );
        assert_eq!(
            readiness(&follows, Some(&v(3)), Some(&v(2))),
            Err("head is 1.3@n1, applied 1.2@n1".into())
        );
        assert_eq!(
            readiness(&follows, Some(&v(3)), None),
            Err("head is 1.3@n1, applied nothing".into())
        );
    }

    #[test]
    fn a_publisher_that_cannot_stamp_is_not_ready() {
        assert_eq!(publisher_ready(None), Ok(()));
        let why = publisher_ready(Some("no epoch left to stamp with")).unwrap_err();
        assert!(
            why.contains("cannot publish") && why.contains("no epoch left"),
            "{why}"
        );
    }

    #[test]
    fn a_bgp_node_whose_bird_does_not_answer_is_not_ready() {
        let report = |readiness: &str, bird: Option<&str>| -> crate::announce::Report {
            serde_json::from_value(serde_json::json!({
                "mode": "bgp",
                "readiness": readiness,
                "announced": [],
                "bird": bird,
            }))
            .unwrap()
        };
        assert_eq!(announce_ready(None), Ok(()));
        assert_eq!(announce_ready(Some(&report("ready", None))), Ok(()));
        // One failed poll is within the grace: the report says so, readiness stays.
        let slow = report(
            "ready",
            Some("not answering since 2026-12-05T15:20:09Z: timed out"),
        );
        assert_eq!(announce_ready(Some(&slow)), Ok(()));
        let down = report(
            "bird-not-answering",
            Some("not answering since 2026-12-05T15:20:03Z: Connection refused"),
        );
        let why = announce_ready(Some(&down)).unwrap_err();
        assert!(
            why.contains("BIRD") && why.contains("since 2026-12-05T15:20:03Z"),
            "{why}"
        );
    }

    #[test]
    fn the_most_important_reason_comes_first() {
        let dup = RoleReason::DuplicateId {
            other_generation: 7,
            other_at: "198.18.0.2:7946".parse().unwrap(),
        };
        let why = readiness(&dup, Some(&v(2)), Some(&v(2))).unwrap_err();
        assert!(why.contains("198.18.0.2:7946"), "{why}");
        let why = readiness(&RoleReason::AwaitingSeeds, None, None).unwrap_err();
        assert!(why.contains("seeds"), "{why}");
        assert_eq!(
            readiness(&RoleReason::CatchingUp, None, None),
            Err("no rule table yet".into())
        );
    }
}
