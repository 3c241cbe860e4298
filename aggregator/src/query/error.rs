//! Errors of the SQL endpoint and how each one maps to an HTTP status.
//!
//! The rule: whatever the caller can fix by changing the request is a 4xx with the
//! precise reason (DataFusion's own message for bad SQL); only failures of the server's
//! own resources (disk, object store, memory, a DataFusion bug or panic) are a 500.

use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;

/// Why a SQL request was not answered.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The statement is valid SQL but not a query (DDL, DML, COPY, SET, file access, ...).
    /// 400.
    #[error("{0}")]
    Refused(String),
    /// The request itself is malformed: bad JSON, missing `sql` field, empty SQL. 400.
    #[error("{0}")]
    BadRequest(String),
    /// DataFusion rejected the query while parsing, planning or executing it because of
    /// the query itself (syntax error, unknown table or column, type error, failed cast,
    /// division by zero). Carries DataFusion's message. 400.
    #[error("{0}")]
    Invalid(String),
    /// The query ran longer than [`QueryLimits::timeout`](super::QueryLimits::timeout).
    ///
    /// 503 Service Unavailable: the server refuses to spend more time on this query.
    /// Not 408, which means the *client* was too slow to send its request (and which
    /// browsers and proxies retry on their own).
    #[error("query exceeded the time limit of {0:?}; narrow the time range or add a LIMIT")]
    Timeout(Duration),
    /// The SQL text is longer than [`QueryLimits::max_sql_len`](super::QueryLimits::max_sql_len).
    /// 413 Payload Too Large.
    #[error("SQL is {len} bytes long; the limit is {max} bytes")]
    TooLong {
        /// Length of the submitted SQL in bytes.
        len: usize,
        /// The configured limit in bytes.
        max: usize,
    },
    /// The server failed: I/O, object store, exhausted resources, a DataFusion internal
    /// error or a panic while running the query, or the table source could not build a
    /// context. 500.
    #[error("{0}")]
    Server(String),
}

impl QueryError {
    /// Classifies a DataFusion error: caused by the query (400) or by the server (500).
    pub fn from_datafusion(err: DataFusionError) -> Self {
        let msg = err.strip_backtrace();
        if is_server_fault(&err) {
            QueryError::Server(msg)
        } else {
            QueryError::Invalid(msg)
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            QueryError::Refused(_) | QueryError::BadRequest(_) | QueryError::Invalid(_) => {
                StatusCode::BAD_REQUEST
            }
            QueryError::Timeout(_) => StatusCode::SERVICE_UNAVAILABLE,
            QueryError::TooLong { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            QueryError::Server(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `outcome` label of `aggregator_sql_queries_total` for this error.
    pub fn outcome(&self) -> &'static str {
        match self {
            QueryError::Refused(_) => "refused",
            QueryError::BadRequest(_) | QueryError::Invalid(_) | QueryError::TooLong { .. } => {
                "bad_request"
            }
            QueryError::Timeout(_) => "timeout",
            QueryError::Server(_) => "error",
        }
    }
}

/// True when the root cause is the server's resources rather than the query.
///
/// DataFusion wraps errors in `Context`, `Diagnostic`, `Shared` and Arrow's `External`;
/// `find_root` walks through all of them. A `Collection` is judged by its first error,
/// as DataFusion's own Display does.
fn is_server_fault(err: &DataFusionError) -> bool {
    match err.find_root() {
        DataFusionError::IoError(_)
        | DataFusionError::ObjectStore(_)
        | DataFusionError::ParquetError(_)
        | DataFusionError::ResourcesExhausted(_)
        | DataFusionError::External(_)
        | DataFusionError::ExecutionJoin(_)
        | DataFusionError::Internal(_) => true,
        DataFusionError::ArrowError(arrow, _) => matches!(
            **arrow,
            ArrowError::IoError(..) | ArrowError::ExternalError(_) | ArrowError::MemoryError(_)
        ),
        DataFusionError::Collection(errs) => errs.first().is_some_and(is_server_fault),
        _ => false,
    }
}

impl IntoResponse for QueryError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::json!({ "error": self.to_string() });
        (status, Json(body)).into_response()
    }
}
