//! `GET /v1/cluster`: the cluster-wide view, with as much of the health report as asked for
//! (`?health=all|problems|none`, `?service=NAME`): every checked backend by default, as before
//! the query existed, so that a client built against that keeps working.

use super::{publisher_source_error, ready_state, AdminError, AdminState};
use crate::health::report::{Selection, Shown};
use crate::health::HealthReport;
use crate::status::ClusterStatus;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClusterQuery {
    health: Option<Shown>,
    service: Option<String>,
}

impl ClusterQuery {
    fn parse(query: Result<Query<ClusterQuery>, QueryRejection>) -> Result<Selection, AdminError> {
        // The rejection's text names the field and, for `health`, the values it takes.
        let Query(q) = query.map_err(|e| AdminError::BadQuery(e.body_text()))?;
        Ok(Selection {
            shown: q.health.unwrap_or_default(),
            service: q.service,
        })
    }
}

pub(super) async fn cluster(
    State(s): State<AdminState>,
    query: Result<Query<ClusterQuery>, QueryRejection>,
) -> Result<Json<ClusterStatus<HealthReport>>, AdminError> {
    let selection = ClusterQuery::parse(query)?;
    s.mesh.wait_fresh().await;
    let (report, summary) = s.health.report_selected(&selection);
    let view = s.mesh.view();
    let mut status = ClusterStatus::from_view(&view, report);
    status.health_summary = Some(summary);
    let mut reports = crate::announce::reports(&s.mesh, &s.announce);
    for m in &mut status.members {
        m.announce = reports.remove(&m.id);
    }
    status.source_error = publisher_source_error(&s.mesh, status.publisher.as_deref());
    status.not_ready = ready_state(&s, &view).err();
    Ok(Json(status))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Uri;

    fn parse(q: &str) -> Result<Selection, AdminError> {
        let uri: Uri = format!("/v1/cluster?{q}").parse().unwrap();
        ClusterQuery::parse(Query::try_from_uri(&uri))
    }

    #[test]
    fn the_query_picks_what_the_health_report_lists() {
        assert_eq!(parse("").unwrap(), Selection::default());
        assert_eq!(parse("health=all").unwrap().shown, Shown::All);
        assert_eq!(parse("health=problems").unwrap().shown, Shown::Problems);
        let s = parse("health=none&service=web").unwrap();
        assert_eq!((s.shown, s.service.as_deref()), (Shown::None, Some("web")));
        for (bad, names) in [
            ("health=down", "health"),
            ("heath=none", "heath"),
            ("health=", "health"),
        ] {
            let Err(AdminError::BadQuery(why)) = parse(bad) else {
                panic!("{bad} was taken");
            };
            assert!(why.contains(names), "{bad}: {why}");
        }
    }
}
