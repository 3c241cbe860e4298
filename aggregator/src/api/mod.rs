//! HTTP API (axum): SQL, health and the aggregator's own metrics.
//!
//! Data path: the last step: operators and the dashboard read what [`crate::store`] holds
//! through [`crate::query`].

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use crate::metrics::Metrics;
use crate::query::{QueryError, QueryLimits, QuerySource, routes};
use crate::store::Store;

impl QuerySource for Store {
    fn session_context(&self) -> Result<datafusion::prelude::SessionContext, QueryError> {
        Store::session_context(self)
            .map_err(|e| QueryError::Server(format!("cannot open the tables: {e}")))
    }
}

/// The whole HTTP surface.
pub fn router(store: Store, metrics: Metrics, limits: QueryLimits) -> anyhow::Result<Router> {
    let sql = routes(Arc::new(store.clone()), limits, &metrics.registry)?;
    let metrics_route = {
        let metrics = metrics.clone();
        get(move || {
            let body = metrics.render();
            async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body) }
        })
    };
    let anomalies = Router::new()
        .route("/api/v1/anomalies", get(list_anomalies))
        .with_state(store);
    Ok(Router::new()
        .route(
            "/healthz",
            get(|| async { (StatusCode::OK, "ok\n").into_response() }),
        )
        .route("/metrics", metrics_route)
        .merge(sql)
        .merge(anomalies))
}

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

fn bad_request(msg: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({ "error": msg.into() })),
    )
        .into_response()
}

/// Milliseconds since the epoch from RFC 3339 or a plain integer.
fn parse_time(name: &str, text: &str) -> Result<i64, String> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    parse_rfc3339_ms(text).ok_or_else(|| format!("{name}: {text:?} is neither RFC 3339 (2026-11-22T20:00:00Z) nor milliseconds since the epoch"))
}

/// A small RFC 3339 parser (UTC `Z` or `±HH:MM` offsets, optional fraction).
fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        std::str::from_utf8(b.get(r)?).ok()?.parse().ok()
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b'T' || b[10] == b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d, h, mi, sec) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut pos = 19;
    let mut frac_ms = 0i64;
    if b.get(pos) == Some(&b'.') {
        let start = pos + 1;
        pos = start;
        while b.get(pos).is_some_and(u8::is_ascii_digit) {
            pos += 1;
        }
        let digits = std::str::from_utf8(&b[start..pos]).ok()?;
        let padded: String = digits
            .chars()
            .chain(std::iter::repeat('0'))
            .take(3)
            .collect();
        frac_ms = padded.parse().ok()?;
    }
    let offset_min = match b.get(pos)? {
        b'Z' | b'z' if pos + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if b.len() == pos + 6 && b[pos + 3] == b':' => {
            let m = num(pos + 1..pos + 3)? * 60 + num(pos + 4..pos + 6)?;
            if *sign == b'+' { m } else { -m }
        }
        _ => return None,
    };
    // Days from civil (Howard Hinnant).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + h) * 60 + mi - offset_min) * 60_000 + sec * 1000 + frac_ms)
}

fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

async fn list_anomalies(State(store): State<Store>, Query(p): Query<AnomalyParams>) -> Response {
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
    let offset = p.offset.unwrap_or(0);
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
    let ctx = match Store::session_context(&store) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_parses_like_the_calendar() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ms("2026-11-22T20:00:00Z"),
            Some(1_795_377_600_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-22T20:00:00.5Z"),
            Some(1_795_377_600_500)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-22T21:00:00+01:00"),
            Some(1_795_377_600_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2000-02-29T00:00:00Z"),
            Some(951_782_400_000)
        );
        assert_eq!(parse_rfc3339_ms("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
        assert_eq!(parse_time("since", "12345"), Ok(12345));
    }

    #[test]
    fn quotes_cannot_escape_a_string_literal() {
        assert_eq!(sql_string("a' OR '1'='1"), "'a'' OR ''1''=''1'");
    }
}
