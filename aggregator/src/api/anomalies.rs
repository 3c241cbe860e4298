//! `GET /api/v1/anomalies`: stored anomalies, newest first.
//!
//! Response shape predates the other list endpoints and is kept as it was:
//! `{"anomalies": [...], "next_offset": N|null}`.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{AppState, bad_request, parse_time, sql_string};
use crate::query::{QueryError, QueryLimits};
use crate::store::Store;

/// Parameters of `GET /api/v1/anomalies`.
#[derive(Debug, Deserialize)]
pub struct AnomalyParams {
    /// Only anomalies at or after this time: RFC 3339 (`2026-11-22T20:00:00Z`) or ms since
    /// the epoch. Default: the last hour.
    pub since: Option<String>,
    /// Only anomalies before this time (same forms).
    pub until: Option<String>,
    /// Only this node.
    pub node: Option<String>,
    /// Only this entity.
    pub entity: Option<String>,
    /// Only anomalies scoring at least this (0..=1).
    pub min_score: Option<f64>,
    /// Page size, 1..=1000 (default 100).
    pub limit: Option<usize>,
    /// Rows to skip (for the next page).
    pub offset: Option<usize>,
}

pub(super) async fn list_anomalies(
    State(app): State<AppState>,
    params: Result<Query<AnomalyParams>, QueryRejection>,
) -> Response {
    let Query(p) = match params {
        Ok(p) => p,
        Err(e) => return bad_request(e.body_text()),
    };
    let store = &app.store;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let since = match p
        .since
        .as_deref()
        .map(|t| parse_time("since", t))
        .transpose()
    {
        Ok(v) => v.unwrap_or(now - 3_600_000),
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
    let limit = p.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return bad_request(format!("limit must be between 1 and 1000, got {limit}"));
    }
    if let Some(s) = p.min_score
        && !(0.0..=1.0).contains(&s)
    {
        return bad_request(format!("min_score must be between 0 and 1, got {s}"));
    }
    if let Some(u) = until
        && since >= u
    {
        return bad_request(format!("since ({since}) must be before until ({u})"));
    }
    let offset = p.offset.unwrap_or(0);
    if offset > 10_000_000 {
        return bad_request(format!("offset must be at most 10000000, got {offset}"));
    }
    let mut filters = vec![format!("ts >= to_timestamp_millis({since})")];
    if let Some(u) = until {
        filters.push(format!("ts < to_timestamp_millis({u})"));
    }
    if let Some(n) = &p.node {
        filters.push(format!("node = {}", sql_string(n)));
    }
    if let Some(e) = &p.entity {
        filters.push(format!("entity = {}", sql_string(e)));
    }
    if let Some(s) = p.min_score {
        filters.push(format!("score >= {s}"));
    }
    let sql = format!(
        "SELECT ts, node, entity, metric, labels, score, value, expected, lower, upper, detector, severity, explanation \
         FROM anomalies WHERE {} ORDER BY ts DESC, node, entity LIMIT {} OFFSET {offset}",
        filters.join(" AND "),
        limit + 1
    );
    let ctx = match Store::session_context(store) {
        Ok(c) => c,
        Err(e) => return QueryError::Server(e.to_string()).into_response(),
    };
    let out = match crate::query::run_query(&ctx, &sql, &QueryLimits::default()).await {
        Ok(o) => o,
        Err(e) => return e.into_response(),
    };
    let json = match out.to_json() {
        Ok(j) => j,
        Err(e) => return e.into_response(),
    };
    let parsed: serde_json::Value = serde_json::from_slice(&json).unwrap_or_default();
    let names: Vec<String> = parsed["columns"]
        .as_array()
        .map(|c| {
            c.iter()
                .map(|c| c["name"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default();
    let mut rows: Vec<serde_json::Value> = parsed["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    let obj: serde_json::Map<String, serde_json::Value> = names
                        .iter()
                        .cloned()
                        .zip(r.as_array().cloned().unwrap_or_default())
                        .collect();
                    serde_json::Value::Object(obj)
                })
                .collect()
        })
        .unwrap_or_default();
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next_offset = more.then_some(offset + limit);
    Json(serde_json::json!({ "anomalies": rows, "next_offset": next_offset })).into_response()
}
