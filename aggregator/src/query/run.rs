//! Running one query under limits: length, read-only check, time and row count.

use std::time::Duration;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::Result as DfResult;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::SessionContext;
use tokio::task::JoinHandle;

use super::{QueryError, check_read_only};

/// Bounds on one SQL request.
#[derive(Debug, Clone)]
pub struct QueryLimits {
    /// Rows returned at most; the rest is cut and the answer says `"truncated": true`.
    pub max_rows: usize,
    /// Wall-clock time for planning and execution together.
    pub timeout: Duration,
    /// Length of the SQL text in bytes.
    pub max_sql_len: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            max_rows: 100_000,
            timeout: Duration::from_secs(30),
            max_sql_len: 64 * 1024,
        }
    }
}

/// The answer to a query: its schema and at most `max_rows` rows.
#[derive(Debug, Clone)]
pub struct QueryOutput {
    /// Schema of the result, also when there are no rows.
    pub schema: SchemaRef,
    /// The rows, in the order DataFusion produced them.
    pub batches: Vec<RecordBatch>,
    /// True when the query produced more than `max_rows` rows and the rest was dropped.
    pub truncated: bool,
}

impl QueryOutput {
    /// Number of rows held.
    pub fn n_rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// Checks `sql` (length, then [`check_read_only`]) and runs it on `ctx` within `limits`.
///
/// The query runs in its own task so that a panic inside DataFusion becomes a
/// [`QueryError::Server`] instead of taking the caller down, and so that on a
/// multi-threaded runtime the timeout answers on time even while the query hogs its
/// worker thread. On timeout, or when the returned future is dropped (the client went
/// away), the task is aborted; it stops at its next yield point. DataFusion yields
/// whenever a scan produces a batch, but an operator that multiplies rows in memory
/// (a large cross join) can run on well past the timeout before it yields.
pub async fn run_query(
    ctx: &SessionContext,
    sql: &str,
    limits: &QueryLimits,
) -> Result<QueryOutput, QueryError> {
    precheck(sql, limits)?;
    run_checked(ctx, sql, limits).await
}

/// The checks that need no tables: cheap, so the HTTP handler runs them before it asks
/// the store for a context.
pub(super) fn precheck(sql: &str, limits: &QueryLimits) -> Result<(), QueryError> {
    if sql.len() > limits.max_sql_len {
        return Err(QueryError::TooLong {
            len: sql.len(),
            max: limits.max_sql_len,
        });
    }
    check_read_only(sql)
}

/// [`run_query`] after [`precheck`] passed.
pub(super) async fn run_checked(
    ctx: &SessionContext,
    sql: &str,
    limits: &QueryLimits,
) -> Result<QueryOutput, QueryError> {
    let ctx = ctx.clone();
    let sql = sql.to_owned();
    let max_rows = limits.max_rows;
    let mut task = AbortOnDrop(tokio::spawn(
        async move { execute(&ctx, &sql, max_rows).await },
    ));
    match tokio::time::timeout(limits.timeout, &mut task.0).await {
        Err(_elapsed) => Err(QueryError::Timeout(limits.timeout)),
        Ok(Ok(res)) => res,
        Ok(Err(join_err)) if join_err.is_panic() => {
            tracing::error!(error = %join_err, "SQL query panicked");
            Err(QueryError::Server(
                "the query failed inside the engine (panic); this is a bug".to_owned(),
            ))
        }
        Ok(Err(join_err)) => Err(QueryError::Server(format!("query task failed: {join_err}"))),
    }
}

/// Aborts the query task when the caller stops waiting for it.
struct AbortOnDrop(JoinHandle<Result<QueryOutput, QueryError>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn execute(
    ctx: &SessionContext,
    sql: &str,
    max_rows: usize,
) -> Result<QueryOutput, QueryError> {
    // Second line of defence after `check_read_only`: the planner refuses DDL, DML and
    // statements in the logical plan, whatever the parser let through.
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let df = ctx
        .sql_with_options(sql, options)
        .await
        .map_err(QueryError::from_datafusion)?;
    let mut stream = df
        .execute_stream()
        .await
        .map_err(QueryError::from_datafusion)?;
    let schema = stream.schema();

    // Pull batches only until `max_rows` rows are held plus one more row to know whether
    // anything was cut; dropping the stream then cancels the rest of the plan.
    let mut batches = Vec::new();
    let mut n_rows = 0;
    let mut truncated = false;
    while let Some(batch) = next_batch(&mut stream).await {
        let batch = batch.map_err(QueryError::from_datafusion)?;
        if batch.num_rows() == 0 {
            continue;
        }
        if n_rows == max_rows {
            truncated = true;
            break;
        }
        let n_take = batch.num_rows().min(max_rows - n_rows);
        n_rows += n_take;
        if n_take < batch.num_rows() {
            batches.push(batch.slice(0, n_take));
            truncated = true;
            break;
        }
        batches.push(batch);
    }
    Ok(QueryOutput {
        schema,
        batches,
        truncated,
    })
}

/// `StreamExt::next` without depending on `futures`: `poll_next` comes from the `Stream`
/// supertrait of `RecordBatchStream`.
async fn next_batch(stream: &mut SendableRecordBatchStream) -> Option<DfResult<RecordBatch>> {
    std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)).await
}
