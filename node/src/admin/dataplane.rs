//! `GET /v1/dataplane`: what this node's dataplane holds, read back from it, summarised and
//! paged. Every request reads the dataplane back whole, unless it names a read kept for its
//! pages: `?snapshot=new` keeps the read it takes (see [`super::snapshots`]) and answers its
//! id, and the pages after it name that id (`?snapshot=<id>`) and are served from it, without
//! reading again. Keeping is asked for, not done for every request: a monitor polling the first
//! page would otherwise hold megabytes of reads nobody pages through.

use super::{AdminError, AdminState};
use crate::desired::desired_state;
use crate::status::VersionRef;
use crate::table::RuleTable;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use shoal_dataplane::{Draining, ObservedService, Op};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Services in one page by default, and at most.
pub const DATAPLANE_PAGE_DEFAULT: usize = 100;
pub const DATAPLANE_PAGE_MAX: usize = 1_000;
/// How long a read stays available to its pages, and how many reads are kept at once.
pub const SNAPSHOT_TTL: Duration = Duration::from_secs(60);
pub const SNAPSHOTS_KEPT: usize = 4;

/// One whole read-back and what it was compared with, as it was when read.
pub struct DataplaneRead {
    kind: &'static str,
    version: Option<VersionRef>,
    head: Option<VersionRef>,
    withheld: Vec<String>,
    vips: Vec<IpAddr>,
    services: Vec<ObservedService>,
    pending_ops: Vec<Op>,
    draining: Vec<Draining>,
    /// The head, the applied version or the verdicts changed during every one of
    /// [`READ_ATTEMPTS`] reads: this one may mix two of them.
    changing: bool,
}

/// Reads taken before a read whose inputs changed while it ran is answered as it is.
const READ_ATTEMPTS: usize = 4;

#[derive(Serialize)]
pub(super) struct DataplaneResponse {
    kind: &'static str,
    /// The kept read these lists are a page of: pass it back (`?snapshot=`) for the next
    /// pages. `None` when nothing was kept (not asked for, or this page holds the whole read).
    snapshot: Option<String>,
    /// How long ago that read was taken.
    snapshot_age_ms: u64,
    /// The table version this node's dataplane had last been brought to (its applied
    /// version) when it was read.
    version: Option<VersionRef>,
    /// The newest version this node had adopted then, which the dataplane is brought to.
    head: Option<VersionRef>,
    /// True when what the dataplane held equals the head's table with health applied, plus
    /// the entries draining (a drain in progress is not a mismatch).
    matches_table: bool,
    /// Present (true) when the table, the applied version or the verdicts changed during
    /// every one of four reads (a table changing several times a second): the read may mix
    /// two of them, so `matches_table` is false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    changing: bool,
    /// Totals over the whole read-back; the lists below are one page of it.
    total: DataplaneTotals,
    /// Operations that would bring the dataplane to the table (empty when it matches),
    /// besides the deletions that wait for a drain; at most one page of them.
    pending_ops: Vec<Op>,
    /// Removed destinations and services held at weight 0 until their drain ends (one page).
    draining: Vec<DrainingEntry>,
    /// Services with source ranges left out because their filter cannot be programmed.
    withheld: Vec<String>,
    /// The VIPs and services of this page (`offset`, `limit`).
    vips: Vec<IpAddr>,
    services: Vec<ObservedService>,
    /// The `offset` of the next page; `None` on the last one.
    next_offset: Option<usize>,
}

/// Also what `shoal dataplane` reads back.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct DataplaneTotals {
    pub(crate) services: usize,
    pub(crate) destinations: usize,
    pub(crate) vips: usize,
    pub(crate) pending_ops: usize,
    pub(crate) draining: usize,
}

/// One entry of a drain in progress (also what `shoal dataplane` reads back).
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DrainingEntry {
    /// `tcp 203.0.113.1:80`.
    pub(crate) service: String,
    /// `198.18.0.3:80`; `null` when the whole service drains (every destination at weight 0,
    /// its VIP kept).
    pub(crate) destination: Option<String>,
    /// When it is deleted (Unix ms) and how long from now (0 once due: the next pass).
    pub(crate) deadline_unix_ms: u64,
    pub(crate) remaining_ms: u64,
}

impl DrainingEntry {
    fn new(d: &Draining, now: Instant, now_unix_ms: u64) -> Self {
        let remaining = d.due.saturating_duration_since(now);
        let overdue = now.saturating_duration_since(d.due);
        let ms = |t: Duration| u64::try_from(t.as_millis()).unwrap_or(u64::MAX);
        DrainingEntry {
            service: d.service.to_string(),
            destination: d.destination.map(|(addr, port)| match addr {
                IpAddr::V4(a) => format!("{a}:{port}"),
                IpAddr::V6(a) => format!("[{a}]:{port}"),
            }),
            deadline_unix_ms: now_unix_ms
                .saturating_add(ms(remaining))
                .saturating_sub(ms(overdue)),
            remaining_ms: ms(remaining),
        }
    }
}

/// `?offset=N&limit=M[&snapshot=new|ID]` (services, VIPs and pending ops are paged alike).
/// Another parameter is a 400 naming it: a mistyped `ofset=` served the first page as if it
/// were the one asked for (a network probe, 2026-12-07).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Page {
    offset: Option<usize>,
    limit: Option<usize>,
    snapshot: Option<String>,
}

/// What `snapshot` asks for.
#[derive(Debug, PartialEq, Eq)]
enum Snapshot {
    /// No keeping: this request's own read, as every request before `snapshot` existed.
    None,
    /// Read, and keep the read for the pages after this one.
    New,
    /// A page of the read kept under this id.
    Kept(String),
}

/// The ids [`new_snapshot_id`] gives out.
const SNAPSHOT_ID_LEN: usize = 16;

impl Page {
    /// The page asked for and the read it is to come from, or why it cannot be served.
    fn parse(query: Result<Query<Page>, QueryRejection>) -> Result<(Page, Snapshot), AdminError> {
        let Query(page) = query.map_err(|e| AdminError::BadQuery(e.body_text()))?;
        if page.limit == Some(0) {
            // An empty page would name itself as the next one: a client following
            // `next_offset` would ask for it forever.
            return Err(AdminError::BadQuery(format!(
                "limit: must be 1 to {DATAPLANE_PAGE_MAX}"
            )));
        }
        let snapshot = page.snapshot()?;
        Ok((page, snapshot))
    }

    fn snapshot(&self) -> Result<Snapshot, AdminError> {
        match self.snapshot.as_deref() {
            None => Ok(Snapshot::None),
            Some("new") => Ok(Snapshot::New),
            Some(id)
                if id.len() == SNAPSHOT_ID_LEN && id.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                Ok(Snapshot::Kept(id.to_string()))
            }
            Some(other) => Err(AdminError::BadQuery(format!(
                "snapshot: expected `new` or the {SNAPSHOT_ID_LEN} hex digits an earlier page \
                 named, got {:?}",
                other.chars().take(40).collect::<String>()
            ))),
        }
    }

    fn range(&self, len: usize) -> std::ops::Range<usize> {
        let limit = self
            .limit
            .unwrap_or(DATAPLANE_PAGE_DEFAULT)
            .min(DATAPLANE_PAGE_MAX);
        let start = self.offset.unwrap_or(0).min(len);
        start..start.saturating_add(limit).min(len)
    }
}

fn new_snapshot_id() -> String {
    format!(
        "{:0width$x}",
        rand::random::<u64>(),
        width = SNAPSHOT_ID_LEN
    )
}

/// What a read-back is compared with and labelled by; a read is one instant only when these
/// were the same before and after it.
struct Inputs {
    head: Option<Arc<shoal_gossip::Stamped<RuleTable>>>,
    verdicts: Arc<crate::health::Verdicts>,
    applied: Option<VersionRef>,
}

impl Inputs {
    fn now(s: &AdminState) -> Inputs {
        // The applied version first: it never passes the head, which only moves forward, so
        // read in this order the two never show a dataplane ahead of its head.
        let applied = s.reconcile.get().applied;
        Inputs {
            head: s.mesh.current(),
            verdicts: s.health.verdicts().borrow().clone(),
            applied,
        }
    }

    fn same_as(&self, later: &Inputs) -> bool {
        let version = |i: &Inputs| i.head.as_ref().map(|h| h.version.clone());
        version(self) == version(later)
            && Arc::ptr_eq(&self.verdicts, &later.verdicts)
            && self.applied == later.applied
    }
}

/// Reads the dataplane back whole and compares it with the head's table and the verdicts.
/// A reconcile pass can run while it reads (the read gives way to one), so a read whose
/// inputs changed meanwhile is taken again: one answer said `version` 100.2 with `head` 100.1
/// and `matches_table` true over 100.1's weights, another a mismatch whose pending ops would
/// have rolled back a table already applied (a probe, 10-19 of 67-81 reads under churn).
async fn read(s: &AdminState) -> Result<DataplaneRead, AdminError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let before = Inputs::now(s);
        let desired = match &before.head {
            Some(h) => desired_state(&h.doc, &before.verdicts),
            None => desired_state(&RuleTable::default(), &before.verdicts),
        };
        let (actual, pending) = s.programmer.read_pending(desired).await?;
        let reconcile = s.reconcile.get();
        let changing = !before.same_as(&Inputs::now(s));
        if changing && attempt < READ_ATTEMPTS {
            continue;
        }
        return Ok(DataplaneRead {
            kind: s.programmer.kind(),
            version: before.applied,
            head: before.head.as_ref().map(|h| (&h.version).into()),
            withheld: reconcile.withheld,
            vips: actual.vips.into_iter().collect(),
            services: actual.services,
            pending_ops: pending.ops,
            draining: pending.draining,
            changing,
        });
    }
}

pub(super) async fn dataplane(
    State(s): State<AdminState>,
    query: Result<Query<Page>, QueryRejection>,
) -> Result<Json<DataplaneResponse>, AdminError> {
    let (page, wanted) = Page::parse(query)?;
    let lock = || s.snapshots.lock().unwrap_or_else(|p| p.into_inner());
    if let Snapshot::Kept(id) = &wanted {
        let found = lock().get(id, Instant::now());
        let Some((read, age)) = found else {
            return Err(AdminError::SnapshotGone {
                id: id.clone(),
                ttl_s: SNAPSHOT_TTL.as_secs(),
                kept: SNAPSHOTS_KEPT,
            });
        };
        return Ok(Json(page_of(&read, &page, Some(id.clone()), age)));
    }
    let read = Arc::new(read(&s).await?);
    let mut first = page_of(&read, &page, None, Duration::ZERO);
    // A read that fits in one page needs no keeping: nobody will ask for the next.
    if wanted == Snapshot::New && first.next_offset.is_some() {
        let id = new_snapshot_id();
        lock().keep(id.clone(), read, Instant::now());
        first.snapshot = Some(id);
    }
    Ok(Json(first))
}

fn page_of(
    read: &DataplaneRead,
    page: &Page,
    id: Option<String>,
    age: Duration,
) -> DataplaneResponse {
    let total = DataplaneTotals {
        services: read.services.len(),
        destinations: read.services.iter().map(|s| s.destinations.len()).sum(),
        vips: read.vips.len(),
        pending_ops: read.pending_ops.len(),
        draining: read.draining.len(),
    };
    let longest = total
        .services
        .max(total.vips)
        .max(total.pending_ops)
        .max(total.draining);
    let range = page.range(longest);
    let cut = |len: usize| range.start.min(len)..range.end.min(len);
    let (now, now_unix_ms) = (Instant::now(), crate::unix_ms());
    DataplaneResponse {
        kind: read.kind,
        snapshot: id,
        snapshot_age_ms: u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
        version: read.version.clone(),
        head: read.head.clone(),
        // Before its first table a node has nothing to match: an empty dataplane there said
        // true, which a readiness wait would take for "programmed" (the audit of 2026-12-06).
        matches_table: total.pending_ops == 0 && read.head.is_some() && !read.changing,
        changing: read.changing,
        pending_ops: read.pending_ops[cut(total.pending_ops)].to_vec(),
        draining: read.draining[cut(total.draining)]
            .iter()
            .map(|d| DrainingEntry::new(d, now, now_unix_ms))
            .collect(),
        withheld: read.withheld.clone(),
        vips: read.vips[cut(total.vips)].to_vec(),
        services: read.services[cut(total.services)].to_vec(),
        next_offset: (range.end < longest).then_some(range.end),
        total,
    }
}

/// The reads kept for their pages.
pub type DataplaneSnapshots = super::snapshots::Snapshots<DataplaneRead>;

pub fn snapshots() -> Arc<Mutex<DataplaneSnapshots>> {
    Arc::new(Mutex::new(DataplaneSnapshots::new(
        SNAPSHOT_TTL,
        SNAPSHOTS_KEPT,
    )))
}

/// Drops expired reads on time, not only at the next request: a read of 10,000 services holds
/// megabytes that a client who never came back should not keep.
pub(super) async fn expire_snapshots(
    kept: Arc<Mutex<DataplaneSnapshots>>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(SNAPSHOT_TTL / 6);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => kept.lock().unwrap_or_else(|p| p.into_inner()).expire(Instant::now()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_dataplane::model::{Protocol, ServiceKey};

    /// A draining entry says what drains and when it goes, in the wall clock.
    #[test]
    fn a_draining_entry_has_its_deadline() {
        let now = Instant::now();
        let key = ServiceKey::Addr {
            addr: "2001:db8::1".parse().unwrap(),
            port: 443,
            protocol: Protocol::Tcp,
        };
        let d = Draining {
            service: key.clone(),
            destination: Some(("2001:db8::9".parse().unwrap(), 443)),
            due: now + Duration::from_millis(2_500),
        };
        assert_eq!(
            DrainingEntry::new(&d, now, 1_000_000),
            DrainingEntry {
                service: "tcp [2001:db8::1]:443".into(),
                destination: Some("[2001:db8::9]:443".into()),
                deadline_unix_ms: 1_002_500,
                remaining_ms: 2_500,
            }
        );
        let late = Draining {
            service: key,
            destination: None,
            due: now,
        };
        let e = DrainingEntry::new(&late, now + Duration::from_secs(1), 1_000_000);
        assert_eq!((e.deadline_unix_ms, e.remaining_ms), (999_000, 0));
        assert_eq!(e.destination, None);
    }

    fn read_of(vips: usize) -> DataplaneRead {
        DataplaneRead {
            kind: "memory",
            version: None,
            head: None,
            withheld: vec![],
            vips: (0..vips)
                .map(|i| IpAddr::from([203, 0, 113, i as u8]))
                .collect(),
            services: vec![],
            pending_ops: vec![],
            draining: vec![],
            changing: false,
        }
    }

    /// The audit of 2026-12-06: a node with no table yet and an empty dataplane said it
    /// matched the table; a wait for `"matches_table":true` took that for "programmed".
    #[test]
    fn no_head_matches_nothing() {
        let page = Page {
            offset: None,
            limit: None,
            snapshot: None,
        };
        let mut read = read_of(0);
        assert!(!page_of(&read, &page, None, Duration::ZERO).matches_table);
        read.head = Some(VersionRef::from(&shoal_gossip::Version::new(
            1,
            1,
            shoal_gossip::version::NodeId::new("n1"),
        )));
        assert!(page_of(&read, &page, None, Duration::ZERO).matches_table);
        read.changing = true;
        assert!(!page_of(&read, &page, None, Duration::ZERO).matches_table);
    }

    /// Pages of one read cover it exactly once, whatever the limit, and the last one says so.
    #[test]
    fn the_pages_of_a_read_cover_it_once() {
        let read = read_of(250);
        for limit in [1, 90, 100, 249, 250, 5_000] {
            let mut seen = Vec::new();
            let mut offset = Some(0);
            while let Some(o) = offset {
                let page = Page {
                    offset: Some(o),
                    limit: Some(limit),
                    snapshot: None,
                };
                let r = page_of(&read, &page, None, Duration::ZERO);
                assert!(r.vips.len() <= limit.min(DATAPLANE_PAGE_MAX));
                seen.extend(r.vips);
                offset = r.next_offset;
            }
            assert_eq!(seen, read.vips, "limit {limit}");
        }
        let past = Page {
            offset: Some(usize::MAX),
            limit: Some(usize::MAX),
            snapshot: None,
        };
        let r = page_of(&read, &past, None, Duration::ZERO);
        assert!(r.vips.is_empty() && r.next_offset.is_none());
    }

    #[test]
    fn a_snapshot_id_is_what_the_pages_name() {
        let id = new_snapshot_id();
        assert_eq!(id.len(), SNAPSHOT_ID_LEN);
        let query = |q: &str| {
            let uri = format!("/v1/dataplane?{q}").parse().expect("uri");
            Page::parse(Query::try_from_uri(&uri))
        };
        let asked = |q: &str| query(q).map(|(_, snapshot)| snapshot);
        assert_eq!(
            asked(&format!("snapshot={id}")).ok(),
            Some(Snapshot::Kept(id.clone()))
        );
        assert_eq!(asked("snapshot=new").ok(), Some(Snapshot::New));
        assert_eq!(asked("offset=3").ok(), Some(Snapshot::None));
        let Err(AdminError::BadQuery(why)) = query("ofset=3") else {
            panic!("an unknown parameter accepted");
        };
        assert!(why.contains("unknown field `ofset`"), "{why}");
        for bad in [
            "snapshot=",
            "snapshot=xyz",
            "snapshot=NEW",
            &format!("snapshot={id}0"),
        ] {
            let Err(AdminError::BadQuery(why)) = query(bad) else {
                panic!("{bad} accepted");
            };
            assert!(why.starts_with("snapshot:"), "{why}");
        }
    }
}
