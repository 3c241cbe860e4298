//! `GET /api/v1/incidents` and `GET /api/v1/incidents/{id}`.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{AppState, bad_request, error, list_response, page, parse_time};
use crate::correlate::hub::{incident_detail, incident_summary};
use crate::correlate::incidents::Status;

/// Parameters of `GET /api/v1/incidents`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentParams {
    /// Only incidents with anomalies at or after this time.
    pub since: Option<String>,
    /// Only incidents with anomalies before this time.
    pub until: Option<String>,
    /// `open`, `resolved` or `all` (default).
    pub status: Option<String>,
    /// Page size, 1..=1000 (default 100).
    pub limit: Option<usize>,
    /// Items to skip.
    pub offset: Option<usize>,
}

pub(super) async fn list_incidents(
    State(app): State<AppState>,
    params: Result<Query<IncidentParams>, QueryRejection>,
) -> Response {
    let Query(p) = match params {
        Ok(p) => p,
        Err(e) => return bad_request(e.body_text()),
    };
    let (limit, offset) = match page(p.limit, p.offset) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let since = match p
        .since
        .as_deref()
        .map(|t| parse_time("since", t))
        .transpose()
    {
        Ok(v) => v,
        Err(e) => return bad_request(e),
    };
    let until = match p
        .until
        .as_deref()
        .map(|t| parse_time("until", t))
        .transpose()
    {
        Ok(v) => v,
        Err(e) => return bad_request(e),
    };
    if let (Some(s), Some(u)) = (since, until)
        && s >= u
    {
        return bad_request(format!("since ({s}) must be before until ({u})"));
    }
    let status = match p.status.as_deref() {
        None | Some("all") => None,
        Some("open") => Some(Status::Open),
        Some("resolved") => Some(Status::Resolved),
        Some(other) => {
            return bad_request(format!(
                "status must be one of open, resolved, all; got {other:?}"
            ));
        }
    };
    let items = {
        let st = app.hub.lock();
        let mut list: Vec<_> = st
            .correlator
            .incidents()
            .filter(|i| status.is_none_or(|s| i.status == s))
            .filter(|i| since.is_none_or(|s| i.last_anomaly_ms >= s))
            .filter(|i| until.is_none_or(|u| i.first_anomaly_ms < u))
            .collect();
        list.sort_by(|a, b| {
            b.opened_at_ms
                .cmp(&a.opened_at_ms)
                .then_with(|| a.id.cmp(&b.id))
        });
        list.into_iter()
            .map(|i| incident_summary(i, st.rca.get(&i.id)))
            .collect()
    };
    list_response(items, limit, offset)
}

pub(super) async fn get_incident(
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let Path(id) = match id {
        Ok(id) => id,
        Err(e) => return bad_request(e.body_text()),
    };
    if id.is_empty() || id.len() > 200 {
        return bad_request("incident id must be 1 to 200 characters");
    }
    let st = app.hub.lock();
    match st.correlator.get(&id) {
        Some(inc) => Json(incident_detail(inc, st.rca.get(&id))).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no incident with id {id:?}")),
    }
}
