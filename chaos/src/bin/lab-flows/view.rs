//! What a lab run shows people: the one-line view of roles and announcements, and the
//! summary table of a finished run's output folder.

use anyhow::Context;
use shoal_chaos::flows::{FlowsReport, ProbeRecord};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// `r1:publisher/ready[1] r2:follower/ready[1] ...` (`[n]` = VIPs announced), or why not.
pub(crate) async fn announce_view(client: &reqwest::Client, admins: &[SocketAddr]) -> String {
    let mut v = None;
    for admin in admins {
        let url = format!("http://{admin}/v1/cluster");
        if let Ok(r) = client.get(&url).send().await {
            if let Ok(json) = r.json::<serde_json::Value>().await {
                v = Some(json);
                break;
            }
        }
    }
    let Some(v) = v else {
        return "(no node answering)".into();
    };
    let mut out = Vec::new();
    for m in v["members"].as_array().into_iter().flatten() {
        let id = m["id"].as_str().unwrap_or("?");
        let role = m["role"].as_str().unwrap_or("?");
        if !m["alive"].as_bool().unwrap_or(false) {
            out.push(format!("{id}:gone"));
            continue;
        }
        let a = &m["announce"];
        let word = match a["readiness"].as_str() {
            Some(r) => format!(
                "{id}:{role}/{r}[{}]",
                a["announced"].as_array().map(|x| x.len()).unwrap_or(0)
            ),
            None => format!("{id}:{role}"),
        };
        out.push(word);
    }
    out.join(" ")
}

/// Reads every flows report and probe series in `dir` (in the order the phases ran).
pub(crate) fn summary(dir: &Path) -> anyhow::Result<String> {
    let events = std::fs::read_to_string(dir.join("events.txt")).unwrap_or_default();
    let faults = shoal_chaos::flows::fault_times(&events);
    let mut order: Vec<String> = Vec::new();
    for line in events.lines() {
        if let Some(phase) = line.split_whitespace().nth(1) {
            if !order.iter().any(|p| p == phase) {
                order.push(phase.to_string());
            }
        }
    }
    let mut reports = Vec::new();
    let mut probes = Vec::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    let rank = |p: &PathBuf| {
        let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        let phase = shoal_chaos::flows::probe_phase(stem);
        order.iter().position(|o| o == phase).unwrap_or(usize::MAX)
    };
    names.sort_by_key(|p| (rank(p), p.clone()));
    for path in names {
        let text = std::fs::read_to_string(&path)?;
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if stem.contains("-probe") {
            if let Ok(recs) = serde_json::from_str::<Vec<ProbeRecord>>(&text) {
                probes.push((stem.to_string(), recs));
            }
        } else if let Ok(r) = serde_json::from_str::<FlowsReport>(&text) {
            reports.push(r);
        }
    }
    Ok(shoal_chaos::flows::render_summary(
        &reports, &probes, &faults,
    ))
}
