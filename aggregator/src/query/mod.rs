//! SQL over the stored telemetry: `POST /api/v1/sql`.
//!
//! Sits after `store/` on the data path: the store hands over a DataFusion
//! [`SessionContext`](datafusion::prelude::SessionContext) with its hot and Parquet tables
//! (through [`QuerySource`]); this module checks that the SQL is a single read-only query,
//! runs it under [`QueryLimits`] and encodes the answer as JSON rows or an Arrow IPC
//! stream.
//!
//! - `check`: the read-only check on the parsed SQL (first line of defence);
//! - `run`: limits, timeout, bounded collection of rows;
//! - `encode`: JSON and Arrow IPC encoders;
//! - `error`: [`QueryError`] and its HTTP statuses;
//! - `http`: the axum route and its Prometheus metrics.

mod check;
mod encode;
mod error;
mod http;
mod run;
#[cfg(test)]
mod tests;

pub use check::check_read_only;
pub use encode::ARROW_STREAM_MEDIA_TYPE;
pub use error::QueryError;
pub use http::{QuerySource, TRUNCATED_HEADER, routes};
pub use run::{QueryLimits, QueryOutput, run_query};
