//! `shoal dataplane`: everything one node's dataplane holds, read back from it, fetched page by
//! page from one kept read (`/v1/dataplane?snapshot=new`, then its id) so that the listing is
//! of one instant, and printed like `ipvsadm -Ln` or as one JSON document.

use super::{get_bytes, token};
use crate::admin::{DataplaneTotals, DrainingEntry};
use crate::cli::{DataplaneArgs, OutputFormat};
use crate::status::VersionRef;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use shoal_dataplane::ObservedService;
use std::fmt::Write;
use std::net::IpAddr;

/// Services asked for per page: the most a node serves in one.
const PAGE: usize = 1_000;
/// The most all pages together may add up to: a 10,000 x 10 table is about 41 MB of JSON, and a
/// rules file at its 32 MiB cap holds about 70,000 x 10 (~290 MB; 256 MiB refused one, the audit
/// of 2026-12-06); a node that never stops paging is cut off.
const MAX_TOTAL_BYTES: usize = 1 << 30;
/// The most pages read: 10 million services, far past any table a rules file or a cluster
/// holds, so that a node handing out tiny pages forever is cut off too.
const MAX_PAGES: usize = 10_000;

/// `/v1/dataplane` (`admin/dataplane.rs`): one page as it comes, and all pages merged.
#[derive(Debug, Deserialize, Serialize)]
struct Listing {
    kind: String,
    /// Absent from nodes older than `snapshot=new`.
    #[serde(default)]
    snapshot: Option<String>,
    version: Option<VersionRef>,
    head: Option<VersionRef>,
    matches_table: bool,
    /// The read may mix two tables (they changed during every read); absent otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    changing: bool,
    total: DataplaneTotals,
    pending_ops: Vec<serde_json::Value>,
    draining: Vec<DrainingEntry>,
    withheld: Vec<String>,
    vips: Vec<IpAddr>,
    services: Vec<ObservedService>,
    next_offset: Option<usize>,
}

fn page_of(bytes: &[u8], path: &str) -> anyhow::Result<Listing> {
    serde_json::from_slice(bytes)
        .with_context(|| format!("the node answered {path} with an unexpected document"))
}

pub async fn dataplane(args: &DataplaneArgs) -> anyhow::Result<()> {
    let listing = fetch(args).await?;
    match args.output {
        OutputFormat::Json => outln!("{}", serde_json::to_string_pretty(&listing)?)?,
        OutputFormat::Table => out!("{}", render(&listing))?,
    }
    Ok(())
}

/// Every page of one read, merged into the first.
async fn fetch(args: &DataplaneArgs) -> anyhow::Result<Listing> {
    let token = token(&args.node)?;
    let node = &args.node.node;
    let path = format!("/v1/dataplane?limit={PAGE}&snapshot=new");
    let bytes = get_bytes(node, &path, token.as_deref()).await?;
    let mut fetched = bytes.len();
    let mut all = page_of(&bytes, &path)?;
    if all.snapshot.is_none() && all.next_offset.is_some() {
        eprintln!(
            "warning: {node} keeps no read for paging (a version before `snapshot=new`): each \
             page is a read of its own, and a table changing meanwhile shows services twice or \
             not at all"
        );
    }
    let mut next = all.next_offset;
    let mut pages = 1;
    while let Some(offset) = next {
        pages += 1;
        if pages > MAX_PAGES {
            anyhow::bail!("{node} kept paging past {MAX_PAGES} pages");
        }
        let path = match &all.snapshot {
            Some(id) => format!("/v1/dataplane?snapshot={id}&offset={offset}&limit={PAGE}"),
            None => format!("/v1/dataplane?offset={offset}&limit={PAGE}"),
        };
        let bytes = get_bytes(node, &path, token.as_deref()).await?;
        fetched += bytes.len();
        if fetched > MAX_TOTAL_BYTES {
            anyhow::bail!("{node}'s pages add up to more than {MAX_TOTAL_BYTES} bytes");
        }
        let page = page_of(&bytes, &path)?;
        if all.snapshot.is_some() && page.snapshot != all.snapshot {
            anyhow::bail!(
                "{node} answered a page of read {:?} when asked for read {:?}: not one listing",
                page.snapshot.unwrap_or_default(),
                all.snapshot.unwrap_or_default()
            );
        }
        next = match page.next_offset {
            Some(after) if after <= offset => anyhow::bail!(
                "{node} named offset {after} as the page after offset {offset}: not a Shoal \
                 node's paging"
            ),
            after => after,
        };
        all.pending_ops.extend(page.pending_ops);
        all.draining.extend(page.draining);
        all.vips.extend(page.vips);
        all.services.extend(page.services);
    }
    all.next_offset = None;
    if all.services.len() != all.total.services {
        let said = format!(
            "{node}'s pages list {} services where its total says {}",
            all.services.len(),
            all.total.services
        );
        // Pages of separate reads (an older node) may differ from the first page's total when
        // the table changed meanwhile; pages of one kept read may not.
        anyhow::ensure!(all.snapshot.is_none(), "{said}: not one listing");
        eprintln!("warning: {said} (the table changed while it was paged)");
    }
    Ok(all)
}

fn render(l: &Listing) -> String {
    let mut out = String::new();
    let version = |v: &Option<VersionRef>| v.as_ref().map_or("none".into(), |v| v.to_string());
    let _ = writeln!(
        out,
        "dataplane:   {}, brought to {} (head {}): {}",
        l.kind,
        version(&l.version),
        version(&l.head),
        if l.matches_table {
            "matches the table"
        } else if l.changing {
            "not known: the table changed during every read"
        } else {
            "does not match the table"
        }
    );
    let t = &l.total;
    let _ = writeln!(
        out,
        "holds:       {} services, {} destinations, {} VIPs; {} pending ops, {} draining",
        t.services, t.destinations, t.vips, t.pending_ops, t.draining
    );
    for op in &l.pending_ops {
        let _ = writeln!(out, "pending:     {op}");
    }
    for d in &l.draining {
        let what = d.destination.as_deref().unwrap_or("(whole service)");
        let _ = writeln!(
            out,
            "draining:    {} {what}, {} ms left",
            d.service, d.remaining_ms
        );
    }
    for w in &l.withheld {
        let _ = writeln!(
            out,
            "withheld:    {w} (its source ranges cannot be programmed)"
        );
    }
    let _ = writeln!(out);
    for s in &l.services {
        let svc = &s.service;
        let _ = write!(out, "{} {}", svc.key, svc.scheduler);
        if svc.persistence_timeout_s > 0 {
            let _ = write!(out, " persistent {}", svc.persistence_timeout_s);
        }
        let _ = writeln!(out, "  connections {}", s.stats.connections);
        for d in &s.destinations {
            let dest = &d.destination;
            let addr = match dest.addr {
                IpAddr::V6(a) => format!("[{a}]:{}", dest.port),
                a => format!("{a}:{}", dest.port),
            };
            let _ = writeln!(
                out,
                "  -> {addr} {} weight {}  active {} inactive {}",
                dest.forwarding, dest.weight, d.active_connections, d.inactive_connections
            );
        }
    }
    out
}
