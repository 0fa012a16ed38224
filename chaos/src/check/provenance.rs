//! I4: no node holds a table that no publisher published.
//!
//! Every (version, digest) pair seen anywhere (heads in `/v1/cluster`, tables in `/v1/table`)
//! must agree: one version, one digest. Every table read back must be exactly what some edit of
//! the workload wrote (its marker names the edit; its services must be that edit's). Applied
//! versions never seen as a head or table anywhere are counted as unverified, not flagged: polls
//! sample, and a version can come and go between two of them.

use super::{Invariant, Violation};
use crate::observation::{NodeObs, Ver};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Default)]
pub struct Provenance {
    digests: BTreeMap<Ver, String>,
    /// marker -> service names, for every edit the workload wrote.
    written: BTreeMap<u64, Vec<String>>,
    applied: BTreeSet<Ver>,
    pub checks: u64,
}

impl Provenance {
    /// Records an edit the workload wrote (before the file is renamed into place).
    pub fn wrote(&mut self, marker: u64, services: Vec<String>) {
        self.written.insert(marker, services);
    }

    fn pair(&mut self, version: &Ver, digest: &str, what: &str) -> Option<String> {
        self.checks += 1;
        match self.digests.get(version) {
            Some(known) if known != digest => Some(format!(
                "version {version} seen with digest {digest} in {what}, but {known} before"
            )),
            Some(_) => None,
            None => {
                self.digests.insert(version.clone(), digest.to_string());
                None
            }
        }
    }

    /// Checks one poll; returns every breach it shows.
    pub fn observe(&mut self, o: &NodeObs, node: &str, episode: Option<u64>) -> Vec<Violation> {
        let mut problems = Vec::new();
        if let (Some(v), Some(d)) = (&o.head, &o.head_digest) {
            problems.extend(self.pair(v, d, "a head"));
        }
        if let (Some(v), Some(d)) = (&o.table_version, &o.table_digest) {
            problems.extend(self.pair(v, d, "a table"));
            self.checks += 1;
            match o
                .table_marker
                .and_then(|m| self.written.get(&m).map(|s| (m, s)))
            {
                None => problems.push(format!(
                    "table {v} carries marker {:?}, which no edit wrote",
                    o.table_marker
                )),
                Some((m, services)) if *services != o.table_services => problems.push(format!(
                    "table {v} (edit {m}) lists {:?}, the edit wrote {:?}",
                    o.table_services, services
                )),
                Some(_) => {}
            }
        }
        if let Some(a) = &o.applied {
            self.applied.insert(a.clone());
        }
        problems
            .into_iter()
            .map(|detail| Violation {
                invariant: Invariant::I4,
                t_ms: o.t_ms,
                episode,
                node: Some(node.to_string()),
                detail,
            })
            .collect()
    }

    /// Applied versions never seen as a head or a table anywhere.
    pub fn unverified(&self) -> usize {
        self.applied
            .iter()
            .filter(|v| !self.digests.contains_key(v))
            .count()
    }

    /// The newest version seen anywhere (for I3).
    pub fn newest(&self) -> Option<&Ver> {
        self.digests.keys().next_back()
    }
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

    fn table_obs(version: Ver, digest: &str, marker: u64, services: &[&str]) -> NodeObs {
        NodeObs {
            table_version: Some(version),
            table_digest: Some(digest.into()),
            table_marker: Some(marker),
            table_services: services.iter().map(|s| s.to_string()).collect(),
            ..NodeObs::default()
        }
    }

    #[test]
    fn one_version_two_digests_is_flagged() {
        let mut p = Provenance::default();
        let head = NodeObs {
            head: Some(v(1)),
            head_digest: Some("aa".into()),
            ..NodeObs::default()
        };
        assert!(p.observe(&head, "n1", None).is_empty());
        let forged = NodeObs {
            head: Some(v(1)),
            head_digest: Some("bb".into()),
            ..NodeObs::default()
        };
        let found = p.observe(&forged, "n2", Some(4));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].invariant, Invariant::I4);
        assert_eq!(found[0].node.as_deref(), Some("n2"));
    }

    #[test]
    fn tables_must_be_written_edits() {
        let mut p = Provenance::default();
        p.wrote(5, vec!["health".into(), "marker".into()]);
        assert!(p
            .observe(&table_obs(v(1), "d1", 5, &["health", "marker"]), "n1", None)
            .is_empty());
        assert_eq!(
            p.observe(&table_obs(v(2), "d2", 6, &["health", "marker"]), "n1", None)
                .len(),
            1
        );
        assert_eq!(
            p.observe(&table_obs(v(3), "d3", 5, &["marker"]), "n1", None)
                .len(),
            1
        );
    }

    #[test]
    fn unseen_applied_versions_are_counted() {
        let mut p = Provenance::default();
        let o = NodeObs {
            applied: Some(v(9)),
            head: Some(v(1)),
            head_digest: Some("x".into()),
            ..NodeObs::default()
        };
        p.observe(&o, "n1", None);
        assert_eq!(p.unverified(), 1);
        assert_eq!(p.newest(), Some(&v(1)));
    }
}
