//! I2, I3 and I5 on a snapshot: the latest poll of every live node, taken after a heal.
//! I2 here: every live node names the same live publisher, which stamped the head everyone
//! holds and applied (the publisher is sticky, so it need not be the lowest id).
//!
//! The runner calls [`assess`] on each new snapshot until it answers `Converged` or the bound
//! passes; the last `NotYet` reason becomes the violation. Also here: [`takeover`], which says
//! when the nodes cut off from a lost publisher have agreed on a new one.

use super::Invariant;
use crate::observation::{NodeObs, Ver};
use std::collections::BTreeMap;

/// What the snapshot must show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expect<'a> {
    /// Ids of the nodes that run and are reachable, sorted.
    pub live: &'a [String],
    /// The marker of the last edit written (the workload pauses until convergence).
    pub last_marker: u64,
    /// The newest version any running node applied since it started: none may be lost.
    pub applied_best: Option<&'a Ver>,
    /// Health verdicts that must hold once any are reported ("service|addr:port" -> verdict).
    pub health: &'a BTreeMap<String, String>,
}

/// The answer for one snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Assessment {
    /// Everyone agrees; `health_agreed` is false while verdicts still differ or are missing.
    Converged {
        head: Ver,
        health_agreed: bool,
        health_reason: String,
    },
    /// Not yet, and which invariant would break if it stayed so.
    NotYet {
        invariant: Invariant,
        reason: String,
    },
}

/// Judges a snapshot (one entry per live node: its id and its latest poll).
pub fn assess(snapshot: &[(String, &NodeObs)], expect: &Expect<'_>) -> Assessment {
    let not_yet = |invariant, reason: String| Assessment::NotYet { invariant, reason };
    if snapshot.len() != expect.live.len() {
        return not_yet(
            Invariant::I2,
            format!(
                "{} of {} live nodes answer",
                snapshot.len(),
                expect.live.len()
            ),
        );
    }
    // The publisher is sticky (the head's origin keeps the role while it lives), so it need not
    // be the lowest id: every node must name the same one, a live one, which stamped the head.
    let Some((_, first)) = snapshot.first() else {
        return not_yet(Invariant::I2, "no live node".into());
    };
    let Some(publisher) = first.publisher.as_ref().filter(|p| expect.live.contains(p)) else {
        return not_yet(
            Invariant::I2,
            format!("publisher {:?} is not a live node", first.publisher),
        );
    };
    for (id, o) in snapshot {
        if o.publisher.as_ref() != Some(publisher) {
            return not_yet(
                Invariant::I2,
                format!(
                    "{id} sees publisher {:?}, {} sees {publisher}",
                    o.publisher, snapshot[0].0
                ),
            );
        }
        if o.alive != expect.live {
            return not_yet(Invariant::I2, format!("{id} sees alive {:?}", o.alive));
        }
    }
    let (first_id, first) = &snapshot[0];
    let Some(head) = first.head.clone() else {
        return not_yet(Invariant::I2, format!("{first_id} has no head"));
    };
    if head.origin != *publisher {
        return not_yet(
            Invariant::I2,
            format!("head {head} was not stamped by the publisher {publisher}"),
        );
    }
    for (id, o) in snapshot {
        if o.head.as_ref() != Some(&head) || o.head_digest != first.head_digest {
            return not_yet(
                Invariant::I2,
                format!(
                    "{id} has head {:?}, {first_id} has {head}",
                    o.head.as_ref().map(|v| v.to_string())
                ),
            );
        }
        if o.applied.as_ref() != Some(&head) || !o.matches_table {
            return not_yet(
                Invariant::I2,
                format!(
                    "{id} dataplane at {:?} (matches_table {}), head {head}",
                    o.applied.as_ref().map(|v| v.to_string()),
                    o.matches_table
                ),
            );
        }
    }
    if let Some(best) = expect.applied_best {
        if head < *best {
            return not_yet(
                Invariant::I3,
                format!(
                    "converged head {head} is older than {best}, applied before by a running node"
                ),
            );
        }
    }
    for (id, o) in snapshot {
        if o.table_version.as_ref() != Some(&head) || o.table_marker != Some(expect.last_marker) {
            return not_yet(
                Invariant::I3,
                format!(
                    "{id} table at {:?} carries edit {:?}, last edit written is {}",
                    o.table_version.as_ref().map(|v| v.to_string()),
                    o.table_marker,
                    expect.last_marker
                ),
            );
        }
    }
    let (health_agreed, health_reason) = health(snapshot, expect.health);
    Assessment::Converged {
        head,
        health_agreed,
        health_reason,
    }
}

fn health(snapshot: &[(String, &NodeObs)], expected: &BTreeMap<String, String>) -> (bool, String) {
    for (id, o) in snapshot {
        if o.health != *expected {
            return (
                false,
                format!("{id} health {:?}, expected {:?}", o.health, expected),
            );
        }
    }
    (true, String::new())
}

/// After the publisher `old` was cut off: the new publisher once every node in `orphans` (the
/// running nodes that can no longer reach `old`) names the same one, other than `old`.
pub fn takeover(orphans: &[(String, &NodeObs)], old: &str) -> Option<String> {
    let first = orphans.first()?.1.publisher.clone()?;
    if first == old {
        return None;
    }
    orphans
        .iter()
        .all(|(_, o)| o.publisher.as_deref() == Some(first.as_str()))
        .then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: u64) -> Ver {
        Ver {
            epoch: 1,
            seq: s,
            origin: "n1".into(),
        }
    }

    fn good(id: &str) -> (String, NodeObs) {
        (
            id.to_string(),
            NodeObs {
                publisher: Some("n1".into()),
                head: Some(v(3)),
                head_digest: Some("d".into()),
                alive: vec!["n1".into(), "n2".into()],
                applied: Some(v(3)),
                matches_table: true,
                table_version: Some(v(3)),
                table_marker: Some(7),
                health: BTreeMap::from([("h|a".to_string(), "up".to_string())]),
                ..NodeObs::default()
            },
        )
    }

    fn run(nodes: &[(String, NodeObs)], newest: Option<&Ver>) -> Assessment {
        let live = vec!["n1".to_string(), "n2".to_string()];
        let health = BTreeMap::from([("h|a".to_string(), "up".to_string())]);
        let snap: Vec<(String, &NodeObs)> = nodes.iter().map(|(i, o)| (i.clone(), o)).collect();
        assess(
            &snap,
            &Expect {
                live: &live,
                last_marker: 7,
                applied_best: newest,
                health: &health,
            },
        )
    }

    fn invariant(a: Assessment) -> Option<Invariant> {
        match a {
            Assessment::NotYet { invariant, .. } => Some(invariant),
            Assessment::Converged { .. } => None,
        }
    }

    #[test]
    fn agreement_converges() {
        let nodes = [good("n1"), good("n2")];
        assert_eq!(
            run(&nodes, Some(&v(2))),
            Assessment::Converged {
                head: v(3),
                health_agreed: true,
                health_reason: String::new()
            }
        );
    }

    #[test]
    fn each_disagreement_is_caught() {
        let mut nodes = [good("n1"), good("n2")];
        nodes[1].1.publisher = Some("n2".into());
        assert_eq!(invariant(run(&nodes, None)), Some(Invariant::I2));

        let mut nodes = [good("n1"), good("n2")];
        nodes[1].1.applied = Some(v(2));
        assert_eq!(invariant(run(&nodes, None)), Some(Invariant::I2));

        let mut nodes = [good("n1"), good("n2")];
        nodes[0].1.matches_table = false;
        assert_eq!(invariant(run(&nodes, None)), Some(Invariant::I2));

        let nodes = [good("n1")];
        assert_eq!(invariant(run(&nodes, None)), Some(Invariant::I2));

        // A running node applied a version newer than the converged head: it got lost.
        let nodes = [good("n1"), good("n2")];
        assert_eq!(invariant(run(&nodes, Some(&v(4)))), Some(Invariant::I3));

        // The last edit never made it.
        let mut nodes = [good("n1"), good("n2")];
        nodes[0].1.table_marker = Some(6);
        nodes[1].1.table_marker = Some(6);
        assert_eq!(invariant(run(&nodes, None)), Some(Invariant::I3));

        // Health disagrees: converged, but not agreed.
        let mut nodes = [good("n1"), good("n2")];
        nodes[1].1.health.insert("h|a".into(), "down".into());
        assert!(matches!(
            run(&nodes, None),
            Assessment::Converged {
                health_agreed: false,
                ..
            }
        ));
    }

    #[test]
    fn takeover_needs_every_orphan_on_one_new_publisher() {
        let (_, mut a) = good("n2");
        let (_, mut b) = good("n3");
        assert_eq!(
            takeover(&[("n2".into(), &a), ("n3".into(), &b)], "n1"),
            None
        );
        a.publisher = Some("n2".into());
        assert_eq!(
            takeover(&[("n2".into(), &a), ("n3".into(), &b)], "n1"),
            None
        );
        b.publisher = Some("n2".into());
        assert_eq!(
            takeover(&[("n2".into(), &a), ("n3".into(), &b)], "n1"),
            Some("n2".into())
        );
    }
}
