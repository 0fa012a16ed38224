//! What `/v1/cluster` and `shoal status` show about health: per service, per backend, the
//! verdict, since when, why, and each checker's last word; and the counts, so that a client
//! can ask for the backends that need a look only (at 300,000 checked backends the whole
//! report is over 100 MB).

use super::hysteresis::CheckState;
use super::judged::Judged;
use super::result::ProbeResult;
use super::verdict::{BackendVerdict, Basis, Verdict};
use serde::Serialize;
use shoal_gossip::version::NodeId;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

/// Serializes as `{"<service>": {"<addr>:<port>": BackendReport}}` (IPv6 in brackets).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct HealthReport {
    /// Service name -> backend socket address -> its verdict. Services without a health check
    /// are absent (always up).
    pub services: BTreeMap<String, BTreeMap<String, BackendReport>>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BackendReport {
    pub address: IpAddr,
    pub port: u16,
    pub verdict: Verdict,
    /// When this node's verdict last changed, or when it first judged the backend.
    pub since_unix_ms: u64,
    pub basis: Basis,
    /// The assigned checkers, best-ranked first, each with its last gossiped opinion.
    pub checkers: Vec<CheckerReport>,
    /// Live members that are not assigned but still publish an opinion (handing over).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub former_checkers: Vec<CheckerReport>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CheckerReport {
    pub node: String,
    pub state: CheckState,
    pub last_result: ProbeResult,
    /// When its last probe finished, as last gossiped: refreshed on every change of state or
    /// result and otherwise every 10 s. 0 before the first.
    pub last_probe_unix_ms: u64,
    /// When its state last changed; 0 when it has not reported yet.
    pub since_unix_ms: u64,
}

/// Which backends a report lists (`/v1/cluster?health=`, `shoal status --health`: the same
/// lowercase names in both).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Shown {
    /// Every checked backend.
    #[default]
    All,
    /// Those down, and those up that some assigned checker does not report up (yet).
    Problems,
    /// None: the counts only.
    None,
}

impl Shown {
    /// The name the query and the command line take.
    pub fn name(self) -> &'static str {
        match self {
            Shown::All => "all",
            Shown::Problems => "problems",
            Shown::None => "none",
        }
    }
}

/// What a report covers and lists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    pub shown: Shown,
    /// One service only (by name); every checked service when `None`.
    pub service: Option<String>,
}

/// The counts over the services a report covers, whatever it lists.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize, Serialize)]
pub struct HealthSummary {
    /// Which backends `health` lists.
    pub shown: Shown,
    /// Health-checked services covered (with at least one backend).
    pub services: usize,
    pub backends: usize,
    pub up: usize,
    pub down: usize,
    /// Up, but some assigned checker does not report up: down or not sure yet on that
    /// checker, or no opinion from it (counted in `up` too).
    pub in_doubt: usize,
}

/// Up, with every assigned checker's opinion up.
fn settled_up(v: &BackendVerdict) -> bool {
    v.verdict == Verdict::Up
        && v.checkers.iter().all(|c| {
            v.opinions
                .iter()
                .any(|(who, o)| who == c && o.state == CheckState::Up)
        })
}

/// Builds the report of what `selection` asks for from the verdicts and the times they last
/// changed, and the counts over the services it covers.
pub fn build(judged: &Judged, selection: &Selection) -> (HealthReport, HealthSummary) {
    let mut summary = HealthSummary {
        shown: selection.shown,
        ..HealthSummary::default()
    };
    let mut services: BTreeMap<String, BTreeMap<String, BackendReport>> = BTreeMap::new();
    let covered = judged.services.iter().filter(|s| {
        let name = s.verdicts.first().map(|v| v.backend.service.as_str());
        // Every verdict of a judged service names it; an empty one covers no backend.
        name.is_some()
            && selection
                .service
                .as_deref()
                .is_none_or(|want| name == Some(want))
    });
    for s in covered {
        summary.services += 1;
        for (v, since) in s.verdicts.iter().zip(&s.since_ms) {
            summary.backends += 1;
            let settled = settled_up(v);
            match v.verdict {
                Verdict::Up => summary.up += 1,
                Verdict::Down => summary.down += 1,
            }
            summary.in_doubt += usize::from(v.verdict == Verdict::Up && !settled);
            let listed = match selection.shown {
                Shown::All => true,
                Shown::Problems => !settled,
                Shown::None => false,
            };
            if listed {
                insert(&mut services, v, *since);
            }
        }
    }
    (HealthReport { services }, summary)
}

/// Adds `v`'s entry (judged `since`) under its service.
fn insert(
    services: &mut BTreeMap<String, BTreeMap<String, BackendReport>>,
    v: &BackendVerdict,
    since: u64,
) {
    let opinion = |n: &NodeId| {
        let o = v.opinions.iter().find(|(who, _)| who == n).map(|(_, o)| o);
        CheckerReport {
            node: n.to_string(),
            state: o.map_or(CheckState::Unknown, |o| o.state),
            last_result: o.map_or(ProbeResult::Pending, |o| o.last_result),
            last_probe_unix_ms: o.map_or(0, |o| o.last_probe_ms),
            since_unix_ms: o.map_or(0, |o| o.since_ms),
        }
    };
    let socket = SocketAddr::new(v.backend.address, v.backend.port);
    let report = BackendReport {
        address: v.backend.address,
        port: v.backend.port,
        verdict: v.verdict,
        since_unix_ms: since,
        basis: v.basis,
        checkers: v.checkers.iter().map(opinion).collect(),
        former_checkers: v
            .opinions
            .iter()
            .filter(|(n, _)| !v.checkers.contains(n))
            .map(|(n, _)| opinion(n))
            .collect(),
    };
    services
        .entry(v.backend.service.clone())
        .or_default()
        .insert(socket.to_string(), report);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::judged::JudgedService;
    use crate::health::verdict::{BackendRef, BackendVerdict};
    use crate::health::wire::Observation;
    use std::sync::Arc;

    #[test]
    fn shape_matches_the_admin_api() {
        let backend = BackendRef {
            service: "web".into(),
            address: "::1".parse().unwrap(),
            port: 8080,
        };
        let seen = Observation {
            address: backend.address,
            port: 8080,
            state: CheckState::Down,
            last_result: ProbeResult::Status(503),
            last_probe_ms: 7,
            since_ms: 5,
        };
        let v = BackendVerdict {
            backend: backend.clone(),
            at: (backend.address, 80, shoal_dataplane::model::Protocol::Tcp),
            verdict: Verdict::Down,
            basis: Basis::Checkers { up: 0, down: 1 },
            checkers: vec![NodeId::new("a"), NodeId::new("b")],
            opinions: vec![(NodeId::new("a"), seen)],
        };
        let judged = Judged {
            services: vec![Arc::new(JudgedService {
                verdicts: vec![v],
                since_ms: vec![42],
            })],
        };
        let json = serde_json::to_value(build(&judged, &Selection::default()).0).unwrap();
        let b = &json["web"]["[::1]:8080"];
        assert_eq!(b["verdict"], "down");
        assert_eq!(b["since_unix_ms"], 42);
        assert_eq!(b["basis"]["from"], "checkers");
        assert_eq!(b["checkers"][0]["last_result"], "status 503");
        assert_eq!(b["checkers"][1]["state"], "unknown");
        assert_eq!(b["checkers"][1]["last_result"], "pending");
        assert!(b.get("former_checkers").is_none());
    }

    /// A verdict on `service`'s backend `last_octet`, checked by a and b, with a's opinion.
    fn verdict_on(
        service: &str,
        last_octet: u8,
        verdict: Verdict,
        a: CheckState,
    ) -> BackendVerdict {
        let address: IpAddr = [198, 18, 0, last_octet].into();
        let seen = Observation {
            address,
            port: 80,
            state: a,
            last_result: ProbeResult::Ok,
            last_probe_ms: 7,
            since_ms: 5,
        };
        let b_seen = Observation {
            state: CheckState::Up,
            ..seen.clone()
        };
        BackendVerdict {
            backend: BackendRef {
                service: service.into(),
                address,
                port: 80,
            },
            at: (address, 80, shoal_dataplane::model::Protocol::Tcp),
            verdict,
            basis: Basis::Previous,
            checkers: vec![NodeId::new("a"), NodeId::new("b")],
            opinions: vec![(NodeId::new("a"), seen), (NodeId::new("b"), b_seen)],
        }
    }

    #[test]
    fn the_query_and_the_command_line_name_what_is_shown_alike() {
        use clap::ValueEnum;
        for shown in Shown::value_variants() {
            let on_the_wire = serde_json::to_value(shown).unwrap();
            let flag = shown.to_possible_value().unwrap();
            assert_eq!(on_the_wire, shown.name());
            assert_eq!(flag.get_name(), shown.name());
        }
    }

    #[test]
    fn problems_are_the_backends_down_or_not_reported_up_by_every_checker() {
        let service = |verdicts: Vec<BackendVerdict>| {
            let since_ms = vec![1; verdicts.len()];
            Arc::new(JudgedService { verdicts, since_ms })
        };
        let mut unheard = verdict_on("web", 4, Verdict::Up, CheckState::Up);
        unheard.opinions.remove(1);
        let judged = Judged {
            services: vec![
                service(vec![
                    verdict_on("web", 1, Verdict::Up, CheckState::Up),
                    verdict_on("web", 2, Verdict::Up, CheckState::Unknown),
                    verdict_on("web", 3, Verdict::Down, CheckState::Down),
                    unheard,
                ]),
                service(vec![verdict_on("db", 9, Verdict::Up, CheckState::Up)]),
                service(vec![]),
            ],
        };
        let listed = |shown, service: Option<&str>| {
            let selection = Selection {
                shown,
                service: service.map(str::to_string),
            };
            let (report, summary) = build(&judged, &selection);
            let names: Vec<String> = report
                .services
                .iter()
                .flat_map(|(s, b)| b.keys().map(move |k| format!("{s} {k}")))
                .collect();
            (names, summary)
        };
        let (all, summary) = listed(Shown::All, None);
        assert_eq!(all.len(), 5);
        let counts = (summary.services, summary.backends, summary.up, summary.down);
        assert_eq!((counts, summary.in_doubt), ((2, 5, 4, 1), 2));
        let (problems, same) = listed(Shown::Problems, None);
        assert_eq!(
            problems,
            [
                "web 198.18.0.2:80",
                "web 198.18.0.3:80",
                "web 198.18.0.4:80"
            ]
        );
        assert_eq!((same.shown, same.backends), (Shown::Problems, 5));
        let (none, same) = listed(Shown::None, None);
        assert!(none.is_empty());
        assert_eq!((same.up, same.down, same.in_doubt), (4, 1, 2));
        let (db, only_db) = listed(Shown::All, Some("db"));
        assert_eq!(db, ["db 198.18.0.9:80"]);
        assert_eq!((only_db.services, only_db.backends, only_db.up), (1, 1, 1));
        let (nothing, unknown) = listed(Shown::All, Some("nope"));
        assert!(nothing.is_empty());
        assert_eq!(unknown.backends, 0);
    }
}
