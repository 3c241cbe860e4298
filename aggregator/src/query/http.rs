//! `POST /api/v1/sql`: the axum route, its metrics and content negotiation.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use datafusion::prelude::SessionContext;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};

use super::encode::ARROW_STREAM_MEDIA_TYPE;
use super::run::{precheck, run_checked};
use super::{QueryError, QueryLimits};

/// Where the SQL endpoint gets the tables it queries.
///
/// The store implements this by registering its current hot and Parquet tables into a
/// fresh [`SessionContext`] per query, so a query sees one consistent set of tables.
/// Implementations must not call `SessionContext::enable_url_table`: that lets any query
/// read any file the server can.
pub trait QuerySource: Send + Sync + 'static {
    /// A context with the tables to query. Called once per request, on a blocking
    /// thread, so listing Parquet files here is fine.
    fn session_context(&self) -> Result<SessionContext, QueryError>;
}

/// Response header telling Arrow IPC clients whether rows were cut (`true`/`false`); the
/// JSON body carries the same flag as `truncated`.
pub const TRUNCATED_HEADER: &str = "x-query-truncated";

/// Serves `POST /api/v1/sql`.
///
/// Request: a JSON object `{"sql": "..."}` (the `Content-Type` is not checked, so
/// `curl -d` works). Response: JSON rows (see [`super::encode`]) or, when `Accept` names
/// `application/vnd.apache.arrow.stream`, an Arrow IPC stream. Errors are
/// `{"error": "..."}` with the status from [`QueryError::status`]: 400 for a malformed
/// body, a refused statement or bad SQL, 413 for SQL longer than the limit, 503 for a
/// timeout, 500 for server faults.
///
/// Registers `aggregator_sql_queries_total{outcome}` and `aggregator_sql_query_seconds`
/// on `registry`; fails if they are already registered there.
pub fn routes<S>(
    source: Arc<dyn QuerySource>,
    limits: QueryLimits,
    registry: &Registry,
) -> Result<Router<S>, prometheus::Error>
where
    S: Clone + Send + Sync + 'static,
{
    let state = Arc::new(SqlState {
        source,
        limits,
        metrics: SqlMetrics::register(registry)?,
    });
    Ok(Router::new()
        .route(
            "/api/v1/sql",
            post(handle_sql).fallback(|| async {
                let msg = "use POST with a JSON body {\"sql\": \"...\"}";
                let body = serde_json::json!({ "error": msg });
                (
                    StatusCode::METHOD_NOT_ALLOWED,
                    [(header::ALLOW, "POST")],
                    Json(body),
                )
            }),
        )
        .with_state(state))
}

struct SqlState {
    source: Arc<dyn QuerySource>,
    limits: QueryLimits,
    metrics: SqlMetrics,
}

struct SqlMetrics {
    queries: IntCounterVec,
    seconds: Histogram,
}

const OUTCOMES: [&str; 5] = ["ok", "bad_request", "refused", "timeout", "error"];

impl SqlMetrics {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let queries = IntCounterVec::new(
            Opts::new(
                "aggregator_sql_queries_total",
                "SQL requests answered, by outcome.",
            ),
            &["outcome"],
        )?;
        // Every outcome shows up (at 0) before it first happens.
        for outcome in OUTCOMES {
            queries.with_label_values(&[outcome]);
        }
        let seconds = Histogram::with_opts(
            HistogramOpts::new(
                "aggregator_sql_query_seconds",
                "Time to answer a SQL request, encoding included.",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
        )?;
        registry.register(Box::new(queries.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        Ok(SqlMetrics { queries, seconds })
    }
}

async fn handle_sql(
    State(state): State<Arc<SqlState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let res = answer(&state, &headers, body).await;
    state
        .metrics
        .seconds
        .observe(started.elapsed().as_secs_f64());
    let outcome = match &res {
        Ok(_) => "ok",
        Err(err) => err.outcome(),
    };
    state.metrics.queries.with_label_values(&[outcome]).inc();
    match res {
        Ok(response) => response,
        Err(err) => {
            match &err {
                QueryError::Server(_) => tracing::warn!(error = %err, "SQL request failed"),
                _ => tracing::debug!(outcome, error = %err, "SQL request rejected"),
            }
            err.into_response()
        }
    }
}

async fn answer(
    state: &SqlState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, QueryError> {
    let body = body.map_err(|rejection| QueryError::BadRequest(rejection.body_text()))?;
    let sql = sql_from_body(&body)?;
    precheck(&sql, &state.limits)?;

    let source = Arc::clone(&state.source);
    let ctx = tokio::task::spawn_blocking(move || source.session_context())
        .await
        .map_err(|err| QueryError::Server(format!("building the query context failed: {err}")))??;
    let output = run_checked(&ctx, &sql, &state.limits).await?;
    tracing::debug!(
        n_rows = output.n_rows(),
        truncated = output.truncated,
        "SQL query answered"
    );

    let truncated = HeaderValue::from_static(if output.truncated { "true" } else { "false" });
    if wants_arrow(headers) {
        let body = output.to_arrow_ipc()?;
        Ok((
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(ARROW_STREAM_MEDIA_TYPE),
                ),
                (header::HeaderName::from_static(TRUNCATED_HEADER), truncated),
            ],
            body,
        )
            .into_response())
    } else {
        let body = output.to_json()?;
        Ok((
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                (header::HeaderName::from_static(TRUNCATED_HEADER), truncated),
            ],
            body,
        )
            .into_response())
    }
}

fn sql_from_body(body: &[u8]) -> Result<String, QueryError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|err| QueryError::BadRequest(format!("invalid JSON body: {err}")))?;
    let serde_json::Value::Object(mut fields) = value else {
        return Err(QueryError::BadRequest(
            "the JSON body must be an object like {\"sql\": \"SELECT ...\"}".to_owned(),
        ));
    };
    match fields.remove("sql") {
        Some(serde_json::Value::String(sql)) => Ok(sql),
        Some(_) => Err(QueryError::BadRequest(
            "field `sql` of the JSON body must be a string".to_owned(),
        )),
        None => Err(QueryError::BadRequest(
            "missing field `sql` in the JSON body".to_owned(),
        )),
    }
}

/// True when any `Accept` header names the Arrow stream media type (parameters and
/// q-values are not weighed: asking for Arrow at all gets Arrow).
fn wants_arrow(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT).iter().any(|value| {
        value.to_str().is_ok_and(|text| {
            text.split(',').any(|range| {
                range
                    .split(';')
                    .next()
                    .is_some_and(|media| media.trim().eq_ignore_ascii_case(ARROW_STREAM_MEDIA_TYPE))
            })
        })
    })
}
