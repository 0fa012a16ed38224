//! The gossiped opinions as the runner last read them, each value decoded once.
//!
//! A pass reads every value of every live member, but values change one at a time (a checker's
//! change of opinion, or its refresh every 10 s): decoding them all on every pass was a tenth
//! of the runner's CPU at 900 backends. Pure: the runner hands in what the board gave it.

use super::wire::{self, Observation, WireError};
use shoal_gossip::version::NodeId;
use std::cmp::Ordering;
use std::collections::BTreeSet;

/// One value: who gossips it under which key, its text, and its observations (`None`:
/// unreadable).
#[derive(Debug)]
struct Value {
    node: NodeId,
    key: String,
    text: String,
    observations: Option<Vec<Observation>>,
}

/// Sorted by (node, key), as the board lists them, so that a pass matches what it reads
/// against what it kept in one walk, and the opinions come out in the board's order.
#[derive(Debug, Default)]
pub struct GossipedValues {
    values: Vec<Value>,
}

impl GossipedValues {
    /// Takes the values read now, `(node, key, value)` as `HealthBoard::keys` gives them:
    /// decodes the new and changed ones (`unreadable` hears of those that do not decode) and
    /// forgets the ones gone. Returns the services with a value new, changed or gone.
    pub fn update(
        &mut self,
        mut read: Vec<(NodeId, String, String)>,
        mut unreadable: impl FnMut(&NodeId, &str, &WireError),
    ) -> BTreeSet<String> {
        let by_id = |a: &(NodeId, String, String), b: &(NodeId, String, String)| {
            (&a.0, &a.1).cmp(&(&b.0, &b.1))
        };
        if !read.is_sorted_by(|a, b| by_id(a, b) != Ordering::Greater) {
            read.sort_by(by_id);
        }
        let mut changed = BTreeSet::new();
        let mut moved = |key: &str| {
            if let Some(service) = wire::service_of(key) {
                if !changed.contains(service) {
                    changed.insert(service.to_string());
                }
            }
        };
        let mut kept = std::mem::take(&mut self.values).into_iter().peekable();
        for (node, key, text) in read {
            // Values kept that sort before this one are gone.
            while let Some(gone) = kept.next_if(|v| (&v.node, &v.key) < (&node, &key)) {
                moved(&gone.key);
            }
            let value = match kept.next_if(|v| v.node == node && v.key == key) {
                Some(v) if v.text == text => v,
                _ => {
                    moved(&key);
                    let observations = wire::decode(&text)
                        .map_err(|error| unreadable(&node, &key, &error))
                        .ok();
                    Value {
                        node,
                        key,
                        text,
                        observations,
                    }
                }
            };
            self.values.push(value);
        }
        for gone in kept {
            moved(&gone.key);
        }
        changed
    }

    /// [`Self::opinions`] of the given services only.
    pub fn opinions_of<'a>(
        &'a self,
        services: &'a BTreeSet<String>,
    ) -> impl Iterator<Item = (NodeId, &'a str, Vec<Observation>)> {
        self.opinions()
            .filter(move |(_, service, _)| services.contains(*service))
    }

    /// `(node, service, observations)` for every readable value, as `index_opinions` takes them.
    pub fn opinions(&self) -> impl Iterator<Item = (NodeId, &str, Vec<Observation>)> {
        self.values.iter().filter_map(|v| {
            Some((
                v.node.clone(),
                wire::service_of(&v.key)?,
                v.observations.clone()?,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::hysteresis::CheckState;
    use crate::health::result::ProbeResult;

    fn value(port: u16, state: CheckState) -> String {
        wire::encode(&[Observation {
            address: "198.18.0.1".parse().unwrap(),
            port,
            state,
            last_result: ProbeResult::Ok,
            last_probe_ms: 1,
            since_ms: 1,
        }])
    }

    fn read(values: &[(&str, &str, &str)]) -> Vec<(NodeId, String, String)> {
        values
            .iter()
            .map(|(n, k, v)| (NodeId::new(*n), k.to_string(), v.to_string()))
            .collect()
    }

    fn services(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    proptest::proptest! {
        /// Over any sequence of reads, in any order: the services reported are exactly those
        /// with a value that differs from the last read's, and the opinions are a decode of all
        /// the values read, in (node, key) order.
        #[test]
        fn kept_values_are_always_a_decode_of_the_last_read(
            reads in proptest::collection::vec(
                proptest::collection::btree_map((0u8..3, 0u8..3), 0u8..3, 0..9), 1..10),
            reverse in proptest::collection::vec(proptest::bool::ANY, 10),
        ) {
            let text = |v: u8| {
                let state = [CheckState::Up, CheckState::Down, CheckState::Unknown][v as usize];
                value(80, state)
            };
            let mut values = GossipedValues::default();
            let mut last = std::collections::BTreeMap::new();
            for (i, read) in reads.into_iter().enumerate() {
                let mut listed: Vec<_> = read
                    .iter()
                    .map(|((n, k), v)| (NodeId::new(format!("n{n}")), wire::key_for(&format!("s{k}"), 0), text(*v)))
                    .collect();
                if reverse[i] {
                    listed.reverse();
                }
                let changed = values.update(listed.clone(), |_, _, _| {});
                let moved: BTreeSet<String> = last
                    .iter()
                    .chain(read.iter())
                    .filter(|(id, v)| last.get(*id) != Some(*v) || read.get(*id) != Some(*v))
                    .map(|((_, k), _)| format!("s{k}"))
                    .collect();
                proptest::prop_assert_eq!(changed, moved);
                listed.sort();
                let expected: Vec<_> = listed
                    .iter()
                    .map(|(n, k, v)| (n.clone(), wire::service_of(k).unwrap().to_string(), wire::decode(v).unwrap()))
                    .collect();
                let got: Vec<_> = values.opinions().map(|(n, s, o)| (n, s.to_string(), o)).collect();
                proptest::prop_assert_eq!(got, expected);
                last = read;
            }
        }
    }

    /// The services whose values are new, changed or gone, and the opinions always those a
    /// decode of everything read now gives.
    #[test]
    fn decodes_what_changed_and_forgets_what_went() {
        let (up, down) = (value(80, CheckState::Up), value(80, CheckState::Down));
        let (a, b) = (wire::key_for("web", 0), wire::key_for("db", 0));
        let mut values = GossipedValues::default();
        let mut bad = Vec::new();
        let mut update = |values: &mut GossipedValues, r: &[(&str, &str, &str)]| {
            values.update(read(r), |n, k, _| bad.push((n.to_string(), k.to_string())))
        };
        let web = services(&["web"]);
        assert_eq!(
            update(&mut values, &[("n1", &a, &up), ("n2", &a, &up)]),
            web
        );
        assert!(update(&mut values, &[("n1", &a, &up), ("n2", &a, &up)]).is_empty());
        assert_eq!(
            update(&mut values, &[("n1", &a, &up), ("n2", &a, &down)]),
            web
        );
        // One gone, one new: as many values as before, both services moved.
        assert_eq!(
            update(&mut values, &[("n1", &a, &up), ("n2", &b, &down)]),
            services(&["db", "web"])
        );
        let seen: Vec<_> = values
            .opinions()
            .map(|(n, s, o)| (n.to_string(), s.to_string(), o[0].state))
            .collect();
        assert_eq!(
            seen,
            [
                ("n1".to_string(), "web".to_string(), CheckState::Up),
                ("n2".to_string(), "db".to_string(), CheckState::Down)
            ]
        );
        let db = services(&["db"]);
        assert_eq!(
            values.opinions_of(&db).map(|(n, ..)| n).collect::<Vec<_>>(),
            [NodeId::new("n2")]
        );
        assert_eq!(update(&mut values, &[("n1", &a, &up)]), db);
        assert_eq!(values.opinions().count(), 1);
        // An unreadable value is heard of once, counts as a change, and gives no opinion.
        let garbage = [("n1", a.as_str(), up.as_str()), ("n3", &a, "garbage")];
        assert_eq!(update(&mut values, &garbage), web);
        assert!(update(&mut values, &garbage).is_empty());
        assert_eq!(values.opinions().count(), 1);
        assert_eq!(bad, [("n3".to_string(), a.clone())]);
    }
}
