//! HTTP API (axum): SQL, health, the aggregator's own metrics and the dashboard API.
//!
//! Data path: the last step: operators and the dashboard read what [`crate::store`] holds
//! through [`crate::query`], and what [`crate::correlate`] derived (incidents, RCA, the
//! service graph) through its [`Hub`]. Endpoints and shapes: `docs/api.md`; the
//! machine-readable spec is served at `/api/v1/openapi.json`.
//!
//! - `anomalies`: `GET /api/v1/anomalies`;
//! - `dashboard`: nodes, services, graph, series;
//! - `incidents`: incidents and their RCA;
//! - `stream`: Server-Sent Events;
//! - `openapi`: the spec.
//!
//! Conventions: bad parameters are a 4xx with `{"error": "<message>"}`; times are RFC 3339
//! or ms since the epoch; lists are `{"items": [...], "total": N, "limit": L, "offset": O}`.

mod anomalies;
mod dashboard;
mod incidents;
mod openapi;
mod stream;

use std::sync::Arc;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use axum::{Json, Router};
use datafusion::prelude::SessionContext;

use crate::correlate::Hub;
use crate::correlate::incidents::CorrelatorConfig;
use crate::metrics::Metrics;
use crate::query::{QueryError, QueryLimits, QuerySource, routes};
use crate::store::Store;

pub use anomalies::AnomalyParams;

impl QuerySource for Store {
    fn session_context(&self) -> Result<datafusion::prelude::SessionContext, QueryError> {
        Store::session_context(self)
            .map_err(|e| QueryError::Server(format!("cannot open the tables: {e}")))
    }
}

/// The SQL endpoint's tables: the store's, plus `incidents` from the correlator.
struct ApiSource {
    store: Store,
    hub: Hub,
}

impl QuerySource for ApiSource {
    fn session_context(&self) -> Result<SessionContext, QueryError> {
        let ctx = Store::session_context(&self.store)
            .map_err(|e| QueryError::Server(format!("cannot open the tables: {e}")))?;
        let incidents = self
            .hub
            .incidents_table()
            .map_err(|e| QueryError::Server(format!("cannot build the incidents table: {e}")))?;
        ctx.register_table("incidents", Arc::new(incidents))
            .map_err(|e| QueryError::Server(format!("cannot register the incidents table: {e}")))?;
        Ok(ctx)
    }
}

/// What the dashboard handlers share.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) store: Store,
    pub(crate) hub: Hub,
}

/// The whole HTTP surface, with an idle correlation hub (no incidents unless a
/// [`crate::correlate::Driver`] feeds one: use [`router_with_hub`] for that).
pub fn router(store: Store, metrics: Metrics, limits: QueryLimits) -> anyhow::Result<Router> {
    router_with_hub(
        store,
        metrics,
        limits,
        Hub::new(CorrelatorConfig::default(), 1024),
    )
}

/// The dashboard routes: path and handler, one table so the OpenAPI test sees them all.
/// All are GET-only: another method is a 405 with a message.
fn dashboard_routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/api/v1/anomalies", get(anomalies::list_anomalies)),
        ("/api/v1/nodes", get(dashboard::list_nodes)),
        ("/api/v1/services", get(dashboard::list_services)),
        ("/api/v1/graph", get(dashboard::graph)),
        ("/api/v1/series", get(dashboard::series)),
        ("/api/v1/incidents", get(incidents::list_incidents)),
        ("/api/v1/incidents/{id}", get(incidents::get_incident)),
        ("/api/v1/stream", get(stream::stream)),
        ("/api/v1/openapi.json", get(openapi::spec)),
    ]
    .into_iter()
    .map(|(path, route)| (path, route.fallback(get_only)))
    .collect()
}

async fn get_only() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, "GET")],
        Json(serde_json::json!({ "error": "this endpoint answers GET only" })),
    )
        .into_response()
}

/// Paths nobody serves: a 404 with a message naming the way to the list of endpoints.
async fn no_such_path(uri: axum::http::Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no endpoint at {}; the endpoints are listed in /api/v1/openapi.json",
            uri.path()
        ),
    )
}

/// Every path the router serves (for the OpenAPI completeness test).
pub fn route_paths() -> Vec<&'static str> {
    let mut paths = vec!["/healthz", "/metrics", "/api/v1/sql"];
    paths.extend(dashboard_routes().into_iter().map(|(p, _)| p));
    paths
}

/// The OpenAPI 3.0 document served at `/api/v1/openapi.json`.
pub fn openapi_spec() -> &'static str {
    openapi::SPEC
}

/// The whole HTTP surface over `store`, with incidents, RCA and the live stream from `hub`.
pub fn router_with_hub(
    store: Store,
    metrics: Metrics,
    limits: QueryLimits,
    hub: Hub,
) -> anyhow::Result<Router> {
    let source = ApiSource {
        store: store.clone(),
        hub: hub.clone(),
    };
    let sql = routes(Arc::new(source), limits, &metrics.registry)?;
    let metrics_route = {
        let metrics = metrics.clone();
        get(move || {
            let body = metrics.render();
            async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body) }
        })
    };
    let mut dashboard = Router::new();
    for (path, handler) in dashboard_routes() {
        dashboard = dashboard.route(path, handler);
    }
    let dashboard = dashboard.with_state(AppState { store, hub });
    Ok(Router::new()
        .route(
            "/healthz",
            get(|| async { (StatusCode::OK, "ok\n").into_response() }),
        )
        .route("/metrics", metrics_route)
        .merge(sql)
        .merge(dashboard)
        .fallback(no_such_path))
}

pub(crate) fn bad_request(msg: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, msg)
}

/// A 400 with a message (small, so `Result`s carrying it stay small).
#[derive(Debug)]
pub(crate) struct BadRequest(pub(crate) String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        bad_request(self.0)
    }
}

pub(crate) fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": msg.into() }))).into_response()
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `limit` (1..=1000, default 100) and `offset` (default 0) checked.
pub(crate) fn page(
    limit: Option<usize>,
    offset: Option<usize>,
) -> Result<(usize, usize), BadRequest> {
    let limit = limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(BadRequest(format!(
            "limit must be between 1 and 1000, got {limit}"
        )));
    }
    let offset = offset.unwrap_or(0);
    if offset > 10_000_000 {
        return Err(BadRequest(format!(
            "offset must be at most 10000000, got {offset}"
        )));
    }
    Ok((limit, offset))
}

/// `since`/`until` parsed, with defaults; `since` must be before `until`.
pub(crate) fn time_range(
    since: Option<&str>,
    until: Option<&str>,
    default_since: i64,
    default_until: i64,
) -> Result<(i64, i64), BadRequest> {
    let since = match since.map(|t| parse_time("since", t)).transpose() {
        Ok(v) => v.unwrap_or(default_since),
        Err(e) => return Err(BadRequest(e)),
    };
    let until = match until.map(|t| parse_time("until", t)).transpose() {
        Ok(v) => v.unwrap_or(default_until),
        Err(e) => return Err(BadRequest(e)),
    };
    if since >= until {
        return Err(BadRequest(format!(
            "since ({since}) must be before until ({until})"
        )));
    }
    Ok((since, until))
}

/// A list response: `{"items": [...], "total": N, "limit": L, "offset": O}`.
pub(crate) fn list_response(
    items: Vec<serde_json::Value>,
    limit: usize,
    offset: usize,
) -> Response {
    let total = items.len();
    let page: Vec<serde_json::Value> = items.into_iter().skip(offset).take(limit).collect();
    Json(serde_json::json!({ "items": page, "total": total, "limit": limit, "offset": offset }))
        .into_response()
}

/// Milliseconds since the epoch from RFC 3339 or a plain integer.
pub(crate) fn parse_time(name: &str, text: &str) -> Result<i64, String> {
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

pub(crate) fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
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
