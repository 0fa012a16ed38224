//! The cluster-wide status document (`GET /v1/cluster`) and its rendering for `shoal status`.
//!
//! Any node produces it from its own view of the mesh; the CLI reads it back with the same types.

use crate::health::report::{HealthSummary, Shown};
use serde::{Deserialize, Serialize};
use shoal_gossip::{ClusterView, Role, Version};
use std::fmt::Write;

/// Ordered like [`Version`]: epoch, then seq, then origin.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VersionRef {
    pub epoch: u64,
    pub seq: u64,
    pub origin: String,
}

impl From<&Version> for VersionRef {
    fn from(v: &Version) -> Self {
        VersionRef {
            epoch: v.epoch,
            seq: v.seq,
            origin: v.origin.to_string(),
        }
    }
}

impl std::fmt::Display for VersionRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}@{}", self.epoch, self.seq, self.origin)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Head {
    pub epoch: u64,
    pub seq: u64,
    pub origin: String,
    pub digest: String,
    pub size_bytes: u64,
    pub holders: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    pub alive: bool,
    pub role: String,
    pub generation: u64,
    pub applied: Option<VersionRef>,
    pub held: Option<VersionRef>,
    pub listen: String,
    pub admin: Option<String>,
    pub last_seen_ms: Option<u64>,
    /// What it announces and why not the rest (absent when it announces nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<crate::announce::Report>,
    /// Why the member passes on the publisher role (e.g. the API server refuses it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stand_down: Option<String>,
    /// Dead, and known to the answering node only from its peers' gossip (it died before that
    /// node heard it first-hand, e.g. before that node joined).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub relayed: bool,
    /// Not alive because it left on purpose (SIGTERM, a scale-down), not because it died.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub left: bool,
    /// Not alive, but not judged yet: heard, and no heartbeat interval seen since (a node's
    /// first answers after its start); shown as `unknown`, counted neither alive nor dead.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unjudged: bool,
}

/// `H` is the health report's type: the node serializes its own (`HealthReport`: a report of
/// 300,000 backends copied into a `serde_json::Value` first took several times its size), the
/// CLI reads any into a `Value`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus<H = serde_json::Value> {
    /// The node that answered.
    pub node: String,
    pub publisher: Option<String>,
    pub head: Option<Head>,
    pub members: Vec<Member>,
    /// Per service and backend: the shared health verdict and who checks it.
    #[serde(default)]
    pub health: H,
    /// The counts over the services `health` covers, and which of their backends it lists
    /// (absent from nodes older than `?health=`, which list every one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_summary: Option<HealthSummary>,
    /// Why the publisher rejected its newest input (a rules file that fails the checks, an
    /// unreachable API server), while it does; the last good table stays in force meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_error: Option<String>,
    /// Why the node that answered does not serve, as its `/readyz` says (absent when it does):
    /// its own row shows only a role, and "catching-up" hid e.g. a refused duplicate id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_ready: Option<String>,
}

pub fn role_name(role: &Role) -> &'static str {
    match role {
        Role::Publisher => "publisher",
        Role::Follower => "follower",
        Role::CatchingUp => "catching-up",
    }
}

impl<H> ClusterStatus<H> {
    pub fn from_view(view: &ClusterView, health: H) -> Self {
        ClusterStatus {
            node: view.self_id.to_string(),
            publisher: view.publisher.as_ref().map(|p| p.to_string()),
            head: view.head.as_ref().map(|h| Head {
                epoch: h.version.epoch,
                seq: h.version.seq,
                origin: h.version.origin.to_string(),
                digest: h.digest.clone(),
                size_bytes: h.size_bytes,
                holders: h.holders.iter().map(|n| n.to_string()).collect(),
            }),
            members: view
                .members
                .iter()
                .map(|m| Member {
                    id: m.id.to_string(),
                    alive: m.alive,
                    role: role_name(&m.role).to_string(),
                    generation: m.generation,
                    applied: m.applied.as_ref().map(VersionRef::from),
                    held: m.held.as_ref().map(VersionRef::from),
                    listen: m.listen.to_string(),
                    admin: m.metadata.get("admin").cloned(),
                    last_seen_ms: m.last_seen_ms,
                    announce: None,
                    stand_down: m.stand_down.clone(),
                    relayed: m.relayed,
                    left: m.left,
                    unjudged: m.unjudged,
                })
                .collect(),
            health,
            health_summary: None,
            source_error: None,
            not_ready: None,
        }
    }
}

impl ClusterStatus {
    /// The head as a version, for comparisons with members' applied versions.
    pub fn head_version(&self) -> Option<VersionRef> {
        self.head.as_ref().map(|h| VersionRef {
            epoch: h.epoch,
            seq: h.seq,
            origin: h.origin.clone(),
        })
    }

    /// A readable table for `shoal status`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let head = match &self.head {
            Some(h) => format!(
                "{}.{}@{} digest {} ({} bytes)",
                h.epoch,
                h.seq,
                h.origin,
                short(&h.digest),
                h.size_bytes
            ),
            None => "none".to_string(),
        };
        match &self.not_ready {
            Some(why) => writeln!(out, "answered by: {} (not ready: {why})", self.node),
            None => writeln!(out, "answered by: {}", self.node),
        }
        .ok();
        let _ = writeln!(
            out,
            "publisher:   {}",
            self.publisher.as_deref().unwrap_or("none")
        );
        let _ = writeln!(out, "head:        {head}");
        if let Some(e) = &self.source_error {
            // A refused stamp is not the input's fault; and with no head there is no good
            // table to keep (an audit read both as wrong).
            let what = if e.starts_with(crate::source::PUBLISH_ERROR_PREFIX) {
                "the head stands still"
            } else if self.head.is_none() {
                "input rejected, no table yet"
            } else {
                "input rejected, last good table kept"
            };
            let _ = writeln!(out, "source:      {what}: {e}");
        }
        let _ = writeln!(out);
        let head_version = self.head_version();
        let rows: Vec<[String; 7]> = self
            .members
            .iter()
            .map(|m| {
                let applied = match (&m.applied, &head_version) {
                    // What it applied before it died: applies nothing now (an audit read a
                    // dead member's "(head)" as healthy).
                    (Some(a), _) if !m.alive => format!("{a} (when last seen)"),
                    (Some(a), Some(h)) if a == h => format!("{a} (head)"),
                    (Some(a), _) => format!("{a} (behind)"),
                    (None, _) => "-".to_string(),
                };
                [
                    m.id.clone(),
                    match (m.alive, m.left, m.unjudged) {
                        (true, _, _) => "alive",
                        (false, true, _) => "left",
                        (false, false, true) => "unknown",
                        (false, false, false) => "dead",
                    }
                    .to_string(),
                    // A dead member holds no role; the last one gossiped (a dead publisher
                    // read as "follower") would mislead.
                    if m.alive { m.role.clone() } else { "-".into() },
                    m.generation.to_string(),
                    applied,
                    m.admin.clone().unwrap_or_else(|| "-".into()),
                    m.last_seen_ms
                        .map(|ms| format!("{ms} ms"))
                        .unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        let header = [
            "NODE",
            "STATE",
            "ROLE",
            "GENERATION",
            "APPLIED",
            "ADMIN",
            "LAST SEEN",
        ];
        render_rows(&mut out, &header, &rows);
        self.render_announce(&mut out);
        if let Some(summary) = &self.health_summary {
            render_health_summary(&mut out, summary);
        }
        if let Some(services) = self.health.as_object().filter(|s| !s.is_empty()) {
            let _ = writeln!(out);
            let mut rows = Vec::new();
            for (service, backends) in services {
                for (backend, info) in backends.as_object().into_iter().flatten() {
                    let checkers = info["checkers"]
                        .as_array()
                        .map(|cs| {
                            cs.iter()
                                .map(|c| {
                                    format!(
                                        "{}:{}",
                                        c["node"].as_str().unwrap_or("?"),
                                        c["state"].as_str().unwrap_or("?")
                                    )
                                })
                                .collect::<Vec<_>>()
                                .join(" ")
                        })
                        .unwrap_or_default();
                    rows.push([
                        service.clone(),
                        backend.clone(),
                        info["verdict"].as_str().unwrap_or("?").to_string(),
                        info["since_unix_ms"]
                            .as_u64()
                            .map(|s| format!("{}s ago", crate::unix_ms().saturating_sub(s) / 1000))
                            .unwrap_or_else(|| "-".into()),
                        checkers,
                    ]);
                }
            }
            render_rows(
                &mut out,
                &["SERVICE", "BACKEND", "VERDICT", "SINCE", "CHECKERS"],
                &rows,
            );
        }
        out
    }
}

/// One line of counts, and what the table under it leaves out.
fn render_health_summary(out: &mut String, s: &HealthSummary) {
    if s.backends == 0 {
        return;
    }
    let _ = writeln!(out);
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let _ = write!(
        out,
        "HEALTH: {} checked backend{} in {} service{}: {} up, {} down",
        s.backends,
        plural(s.backends),
        s.services,
        plural(s.services),
        s.up,
        s.down
    );
    if s.in_doubt > 0 {
        let _ = write!(
            out,
            "; {} of those up not reported up by every checker",
            s.in_doubt
        );
    }
    let _ = writeln!(out);
    match s.shown {
        Shown::Problems if s.down + s.in_doubt == 0 => {
            let _ = writeln!(out, "(every backend up; `--health all` lists them)");
        }
        Shown::Problems => {
            let _ = writeln!(
                out,
                "(listed: those down or in doubt; `--health all` lists every one)"
            );
        }
        Shown::None => {
            let _ = writeln!(out, "(`--health problems` or `all` lists backends)");
        }
        Shown::All => {}
    }
}

impl ClusterStatus {
    /// Per member: mode, readiness, what it announces, BGP sessions, withheld VIPs and why.
    fn render_announce(&self, out: &mut String) {
        let rows: Vec<[String; 5]> = self
            .members
            .iter()
            .filter_map(|m| {
                let a = m.announce.as_ref()?;
                let mode = match (&a.mode, &a.interface) {
                    (crate::announce::decide::Mode::L2, Some(i)) => format!("l2 on {i}"),
                    (crate::announce::decide::Mode::L2, None) => "l2".to_string(),
                    // What it announces reaches no router: say so beside the mode, since
                    // ANNOUNCED lists what the node offers (an audit read it as reaching).
                    (crate::announce::decide::Mode::Bgp, _)
                        if a.bird.is_none() && !a.bgp.iter().any(|s| s.up()) =>
                    {
                        "bgp (no session up)".to_string()
                    }
                    (crate::announce::decide::Mode::Bgp, _) => "bgp".to_string(),
                };
                let list = |v: &mut dyn Iterator<Item = String>| {
                    let v: Vec<String> = v.collect();
                    if v.is_empty() {
                        "-".to_string()
                    } else {
                        v.join(" ")
                    }
                };
                Some([
                    m.id.clone(),
                    mode,
                    list(&mut a.announced.iter().map(|ip| {
                        if a.draining.contains(ip) {
                            format!("{ip} (draining)")
                        } else {
                            ip.to_string()
                        }
                    })),
                    list(&mut a.withheld.iter().map(|(ip, why)| format!("{ip} ({why})"))),
                    match &a.bird {
                        // BIRD does not answer: the sessions it reported are not known.
                        Some(why) => format!("BIRD {why}"),
                        // A session that is not up says why, as far as BIRD says.
                        None => list(&mut a.bgp.iter().map(|s| {
                            let info = s.info.trim();
                            if s.up() || info.is_empty() {
                                format!("{}:{}", s.peer(), s.bgp_state)
                            } else {
                                format!("{}:{} ({info})", s.peer(), s.bgp_state)
                            }
                        })),
                    },
                ])
            })
            .collect();
        if rows.is_empty() {
            return;
        }
        let _ = writeln!(out);
        render_rows(
            out,
            &["NODE", "ANNOUNCE", "ANNOUNCED", "WITHHELD", "BGP SESSIONS"],
            &rows,
        );
    }
}

fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

fn render_rows<const N: usize>(out: &mut String, header: &[&str; N], rows: &[[String; N]]) {
    let mut widths: [usize; N] = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |out: &mut String, cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths.iter())
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", parts.join("  ").trim_end());
    };
    line(out, header.to_vec());
    for row in rows {
        line(out, row.iter().map(String::as_str).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cluster of one publisher, `n1`, announcing as `report` says.
    fn one_member(report: crate::announce::Report, source_error: Option<&str>) -> ClusterStatus {
        ClusterStatus {
            node: "n1".into(),
            publisher: Some("n1".into()),
            head: None,
            members: vec![Member {
                id: "n1".into(),
                alive: true,
                role: "publisher".into(),
                generation: 1,
                applied: None,
                held: None,
                listen: "198.18.1.11:7946".into(),
                admin: None,
                last_seen_ms: Some(0),
                stand_down: None,
                announce: Some(report),
                relayed: false,
                left: false,
                unjudged: false,
            }],
            health: serde_json::Value::Null,
            health_summary: None,
            source_error: source_error.map(str::to_string),
            not_ready: None,
        }
    }

    #[test]
    fn status_shows_what_each_member_announces() {
        let report: crate::announce::Report = serde_json::from_value(serde_json::json!({
            "mode": "bgp",
            "readiness": "ready",
            "announced": ["203.0.113.10", "203.0.113.30"],
            "draining": ["203.0.113.30"],
            "withheld": {"203.0.113.20": "no healthy backend"},
            "bgp": [
                {"name": "peer1", "state": "up", "bgp_state": "Established", "info": "",
                 "address": "198.18.1.1", "asn": 64500},
                {"name": "peer2", "state": "start", "bgp_state": "Active",
                 "info": "Socket: No route to host"}
            ]
        }))
        .unwrap();
        let status = one_member(
            report,
            Some("rules.toml: line 4: service[0].port: must be 1-65535"),
        );
        let text = status.render();
        assert!(text.contains("ANNOUNCED"), "{text}");
        assert!(text.contains("203.0.113.20 (no healthy backend)"), "{text}");
        // The peer's address and ASN beside BIRD's protocol name (an audit: the name alone
        // did not say which router); a member that reported the name alone is shown so.
        assert!(
            text.contains("peer1 (198.18.1.1 AS64500):Established "),
            "{text}"
        );
        // The audit of 2026-12-06: why a session is down, and what only drains, were in the
        // JSON report but not in the table.
        assert!(
            text.contains("peer2:Active (Socket: No route to host)"),
            "{text}"
        );
        assert!(text.contains("203.0.113.30 (draining)"), "{text}");
        // No head yet: no good table to keep (an audit).
        assert!(
            text.contains("input rejected, no table yet: rules.toml: line 4"),
            "{text}"
        );
        let back: ClusterStatus =
            serde_json::from_str(&serde_json::to_string(&status).unwrap()).unwrap();
        assert_eq!(back.members[0].announce, status.members[0].announce);
    }

    /// A head `epoch.1@n1`.
    fn head_at(epoch: u64) -> Head {
        Head {
            epoch,
            seq: 1,
            origin: "n1".into(),
            digest: "ab".repeat(32),
            size_bytes: 10,
            holders: vec![],
        }
    }

    #[test]
    fn status_tells_a_rejected_input_from_a_refused_stamp() {
        let report = || {
            serde_json::from_value::<crate::announce::Report>(serde_json::json!({
                "mode": "bgp", "readiness": "ready", "announced": []
            }))
            .unwrap()
        };
        let mut status = one_member(report(), Some("rules.toml: line 4: bad"));
        status.head = Some(head_at(3));
        let text = status.render();
        assert!(
            text.contains("source:      input rejected, last good table kept: rules.toml"),
            "{text}"
        );
        let mut status = one_member(
            report(),
            Some("cannot publish: cannot record the stamped epoch in /s/epoch: Not a directory"),
        );
        status.head = Some(head_at(3));
        let text = status.render();
        assert!(
            text.contains("source:      the head stands still: cannot publish: cannot record"),
            "{text}"
        );
        assert!(!text.contains("input rejected"), "{text}");
    }

    #[test]
    fn status_says_when_no_bgp_session_is_up() {
        let report = |states: &[&str]| {
            let bgp: Vec<_> = states
                .iter()
                .enumerate()
                .map(|(i, st)| {
                    serde_json::json!({"name": format!("peer{}", i + 1), "state": "up",
                                       "bgp_state": st, "info": ""})
                })
                .collect();
            serde_json::from_value::<crate::announce::Report>(serde_json::json!({
                "mode": "bgp", "readiness": "ready", "announced": ["203.0.113.10"], "bgp": bgp
            }))
            .unwrap()
        };
        let text = one_member(report(&["Active", "Connect"]), None).render();
        assert!(text.contains("bgp (no session up)"), "{text}");
        let text = one_member(report(&["Active", "Established"]), None).render();
        assert!(!text.contains("no session up"), "{text}");
        let text = one_member(report(&[]), None).render();
        assert!(text.contains("bgp (no session up)"), "{text}");
    }

    /// A dead publisher was listed with role "follower" (the last role it gossiped).
    #[test]
    fn a_dead_member_is_shown_without_a_role() {
        let report: crate::announce::Report = serde_json::from_value(serde_json::json!({
            "mode": "bgp", "readiness": "ready", "announced": []
        }))
        .unwrap();
        let mut status = one_member(report, None);
        let mut dead = status.members[0].clone();
        dead.id = "n0".into();
        dead.alive = false;
        dead.role = "follower".into();
        // What it applied before it died, the head: not shown as "(head)", which read healthy.
        let head = VersionRef {
            epoch: 4,
            seq: 1,
            origin: "n1".into(),
        };
        dead.applied = Some(head.clone());
        status.members.insert(0, dead);
        status.head = Some(head_at(4));
        let text = status.render();
        assert!(text.contains("4.1@n1 (when last seen)"), "{text}");
        let row = |id: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("{id} ")))
                .unwrap_or_default()
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
        };
        assert_eq!(row("n0"), ["n0", "dead", "-"], "{text}");
        assert_eq!(row("n1"), ["n1", "alive", "publisher"], "{text}");
        // One that left on purpose says so (a leave looked like a crash).
        status.members[0].left = true;
        let text = status.render();
        let row = text
            .lines()
            .find(|l| l.starts_with("n0 "))
            .unwrap_or_default();
        assert!(row.split_whitespace().nth(1) == Some("left"), "{text}");
    }

    #[test]
    fn status_shows_a_bird_that_does_not_answer() {
        let report: crate::announce::Report = serde_json::from_value(serde_json::json!({
            "mode": "bgp",
            "readiness": "bird-not-answering",
            "announced": [],
            "withheld": {"203.0.113.10": "BIRD is not answering its control socket"},
            "bird": "not answering since 2026-12-05T15:20:03Z: Connection refused (os error 111)"
        }))
        .unwrap();
        let status = one_member(report, None);
        let text = status.render();
        assert!(
            text.contains("BIRD not answering since 2026-12-05T15:20:03Z: Connection refused"),
            "{text}"
        );
        assert!(
            text.contains("203.0.113.10 (BIRD is not answering its control socket)"),
            "{text}"
        );
    }
}
