//! Tests of the SQL endpoint over real HTTP/1.1 on 127.0.0.1 (axum's own server; the
//! client is a hand-written HTTP/1.1 exchange over a `TcpStream`) against an in-memory
//! `samples` table shaped like the store's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{
    ArrayRef, DictionaryArray, Float64Array, TimestampMillisecondArray,
};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::run::run_checked;
use super::*;

/// 2026-11-22T20:41:03.123Z
const T0_MS: i64 = 1_795_380_063_123;

fn dict(values: &[&str]) -> ArrayRef {
    Arc::new(
        values
            .iter()
            .copied()
            .collect::<DictionaryArray<Int32Type>>(),
    )
}

fn samples_schema() -> SchemaRef {
    let dict_type = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
    Arc::new(Schema::new(vec![
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("node", dict_type.clone(), false),
        Field::new("entity", dict_type.clone(), false),
        Field::new("metric", dict_type.clone(), false),
        Field::new("labels", dict_type, false),
        Field::new("value", DataType::Float64, true),
    ]))
}

/// One batch of `samples`: row `i` has `ts = T0 + offset_s[i] seconds`.
fn samples_batch(rows: &[(i64, &str, &str, f64)]) -> RecordBatch {
    let ts: Vec<i64> = rows.iter().map(|r| T0_MS + r.0 * 1000).collect();
    let nodes: Vec<&str> = rows.iter().map(|r| r.1).collect();
    let metrics: Vec<&str> = rows.iter().map(|r| r.2).collect();
    let entities = vec!["host"; rows.len()];
    let labels = vec![""; rows.len()];
    let values: Vec<f64> = rows.iter().map(|r| r.3).collect();
    RecordBatch::try_new(
        samples_schema(),
        vec![
            Arc::new(TimestampMillisecondArray::from(ts).with_timezone("UTC")),
            dict(&nodes),
            dict(&entities),
            dict(&metrics),
            dict(&labels),
            Arc::new(Float64Array::from(values)),
        ],
    )
    .unwrap()
}

/// Nine samples in two partitions of two and one batches.
fn samples_partitions() -> Vec<Vec<RecordBatch>> {
    vec![
        vec![
            samples_batch(&[
                (0, "web-1", "cpu", 0.5),
                (1, "web-2", "cpu", 0.25),
                (2, "db-1", "cpu", 0.75),
            ]),
            samples_batch(&[(3, "web-1", "cpu", 1.5), (4, "web-1", "mem", 100.0)]),
        ],
        vec![samples_batch(&[
            (5, "web-2", "cpu", 0.125),
            (6, "db-1", "mem", 2048.0),
            (7, "db-1", "cpu", 0.25),
            (8, "web-2", "mem", 512.0),
        ])],
    ]
}

fn samples_ctx() -> SessionContext {
    let ctx = SessionContext::new();
    let table = MemTable::try_new(samples_schema(), samples_partitions()).unwrap();
    ctx.register_table("samples", Arc::new(table)).unwrap();
    ctx
}

struct Samples;

impl QuerySource for Samples {
    fn session_context(&self) -> Result<SessionContext, QueryError> {
        Ok(samples_ctx())
    }
}

struct Server {
    addr: SocketAddr,
    registry: prometheus::Registry,
}

async fn serve(limits: QueryLimits) -> Server {
    let registry = prometheus::Registry::new();
    let app: axum::Router = routes(Arc::new(Samples), limits, &registry).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server { addr, registry }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!(
                "body is not JSON ({err}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `error` message of a JSON error body, checking the shape on the way.
    fn error(&self) -> String {
        assert_eq!(self.header("content-type"), Some("application/json"));
        let body = self.json();
        let fields = body.as_object().unwrap();
        assert_eq!(fields.len(), 1, "error body has only `error`: {body}");
        fields["error"].as_str().unwrap().to_owned()
    }
}

/// POSTs `body` to `/api/v1/sql` over HTTP/1.1 and reads the whole reply.
async fn post(server: &Server, body: &[u8], accept: Option<&str>) -> Reply {
    let mut request = format!(
        "POST /api/v1/sql HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        server.addr,
        body.len()
    );
    if let Some(accept) = accept {
        request.push_str(&format!("Accept: {accept}\r\n"));
    }
    request.push_str("\r\n");
    exchange(server, &request, body).await
}

/// Sends one HTTP/1.1 request (`head` ends with the blank line) and reads the reply.
async fn exchange(server: &Server, head: &str, body: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();

    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = std::str::from_utf8(&raw[..head_end]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|line| {
            let (key, value) = line.split_once(':').unwrap();
            (key.trim().to_owned(), value.trim().to_owned())
        })
        .collect();
    let mut body = raw[head_end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n").unwrap();
        let size_text = std::str::from_utf8(&raw[..line_end]).unwrap();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&raw[line_end + 2..line_end + 2 + size]);
        raw = &raw[line_end + 2 + size + 2..];
    }
}

async fn post_sql(server: &Server, sql: &str) -> Reply {
    let body = serde_json::to_vec(&json!({ "sql": sql })).unwrap();
    post(server, &body, None).await
}

fn outcome_count(server: &Server, outcome: &str) -> u64 {
    server
        .registry
        .gather()
        .iter()
        .find(|family| family.name() == "aggregator_sql_queries_total")
        .unwrap()
        .get_metric()
        .iter()
        .find(|metric| metric.get_label()[0].value() == outcome)
        .unwrap()
        .get_counter()
        .get_value() as u64
}

#[tokio::test]
async fn group_by_returns_correct_numbers() {
    let server = serve(QueryLimits::default()).await;
    let reply = post_sql(
        &server,
        "SELECT node, count(*) AS n, sum(value) AS total, max(ts) AS last \
         FROM samples WHERE metric = 'cpu' GROUP BY node ORDER BY node",
    )
    .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(
        reply.json()["rows"],
        json!([
            ["db-1", 2, 1.0, "2026-11-22T20:41:10.123Z"],
            ["web-1", 2, 2.0, "2026-11-22T20:41:06.123Z"],
            ["web-2", 2, 0.375, "2026-11-22T20:41:08.123Z"],
        ])
    );
    assert_eq!(outcome_count(&server, "ok"), 1);
}

#[tokio::test]
async fn json_shape_is_exact() {
    let server = serve(QueryLimits::default()).await;
    let reply = post_sql(
        &server,
        "SELECT ts, node, value FROM samples WHERE metric = 'mem' ORDER BY ts LIMIT 2",
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header(TRUNCATED_HEADER), Some("false"));
    assert_eq!(
        reply.json(),
        json!({
            "columns": [
                {"name": "ts", "type": "Timestamp(ms, \"UTC\")"},
                {"name": "node", "type": "Dictionary(Int32, Utf8)"},
                {"name": "value", "type": "Float64"},
            ],
            "rows": [
                ["2026-11-22T20:41:07.123Z", "web-1", 100.0],
                ["2026-11-22T20:41:09.123Z", "db-1", 2048.0],
            ],
            "truncated": false,
        })
    );
}

#[tokio::test]
async fn json_values_of_every_kind() {
    let server = serve(QueryLimits::default()).await;
    let reply = post_sql(
        &server,
        "SELECT 42 AS i, -7 AS neg, 1.5 AS f, 'say \"hi\"\n' AS s, true AS b, NULL AS n, \
         CAST('NaN' AS DOUBLE) AS nan, CAST('inf' AS DOUBLE) AS inf, \
         CAST('-inf' AS DOUBLE) AS ninf, CAST(0.1 AS REAL) AS r, \
         CAST(12.50 AS DECIMAL(6, 2)) AS d, DATE '2026-11-22' AS day, \
         arrow_cast(1, 'Timestamp(Second, None)') AS ts_s, \
         arrow_cast(-1, 'Timestamp(Nanosecond, Some(\"+02:00\"))') AS ts_ns, \
         CAST(NULL AS TIMESTAMP) AS ts_null, [1, 2] AS list",
    )
    .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let body = reply.json();
    assert_eq!(
        body["rows"],
        json!([[
            42,
            -7,
            1.5,
            "say \"hi\"\n",
            true,
            null,
            "NaN",
            "Infinity",
            "-Infinity",
            0.1,
            12.5,
            "2026-11-22",
            "1970-01-01T00:00:01Z",
            "1969-12-31T23:59:59.999999999Z",
            null,
            "[1, 2]"
        ]])
    );
    // The decimal keeps its digits on the wire.
    let text = String::from_utf8(reply.body.clone()).unwrap();
    assert!(text.contains(",12.50,"), "{text}");
    assert_eq!(body["columns"][0], json!({"name": "i", "type": "Int64"}));
}

#[tokio::test]
async fn arrow_ipc_decodes_to_the_same_rows() {
    let server = serve(QueryLimits::default()).await;
    let sql = "SELECT ts, node, metric, value FROM samples ORDER BY ts";
    let body = serde_json::to_vec(&json!({ "sql": sql })).unwrap();
    let reply = post(&server, &body, Some("application/vnd.apache.arrow.stream")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some(ARROW_STREAM_MEDIA_TYPE));
    assert_eq!(reply.header(TRUNCATED_HEADER), Some("false"));

    let reader = StreamReader::try_new(reply.body.as_slice(), None).unwrap();
    let schema = reader.schema();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    let got = concat_batches(&schema, &batches).unwrap();

    let expected = run_query(&samples_ctx(), sql, &QueryLimits::default())
        .await
        .unwrap();
    let expected = concat_batches(&expected.schema, &expected.batches).unwrap();
    assert_eq!(got.num_rows(), 9);
    assert_eq!(got, expected);
    let values = got
        .column(3)
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap();
    assert_eq!(values.value(0), 0.5);
    assert_eq!(values.value(8), 512.0);
}

#[tokio::test]
async fn arrow_ipc_carries_the_schema_with_zero_rows() {
    let server = serve(QueryLimits::default()).await;
    let body = serde_json::to_vec(&json!({ "sql": "SELECT node, value FROM samples WHERE false" }))
        .unwrap();
    let accept = "application/json;q=0.5, application/vnd.apache.arrow.stream";
    let reply = post(&server, &body, Some(accept)).await;
    assert_eq!(reply.status, 200);
    let reader = StreamReader::try_new(reply.body.as_slice(), None).unwrap();
    let schema = reader.schema();
    assert_eq!(schema.field(0).name(), "node");
    assert_eq!(schema.field(1).data_type(), &DataType::Float64);
    let n_rows: usize = reader.map(|batch| batch.unwrap().num_rows()).sum();
    assert_eq!(n_rows, 0);
}

#[tokio::test]
async fn refused_statements_are_400_with_the_reason() {
    let server = serve(QueryLimits::default()).await;
    let cases = [
        (
            "CREATE TABLE t (x INT)",
            "only queries are allowed; got CREATE TABLE",
        ),
        (
            "INSERT INTO samples VALUES (1)",
            "only queries are allowed; got INSERT",
        ),
        (
            "DROP TABLE samples",
            "only queries are allowed; got DROP TABLE",
        ),
        (
            "COPY samples TO '/tmp/x.parquet'",
            "only queries are allowed; got COPY",
        ),
        (
            "SET datafusion.execution.batch_size = 1",
            "only queries are allowed; got SET",
        ),
        (
            "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
            "only queries are allowed; got CREATE EXTERNAL TABLE",
        ),
        (
            "SELECT * FROM '/etc/passwd'",
            "file and URL access is not allowed; got table name \"/etc/passwd\"",
        ),
        (
            "SELECT * FROM \"file:///etc/passwd\"",
            "file and URL access is not allowed; got table name \"file:///etc/passwd\"",
        ),
        (
            "SELECT 1; SELECT 2",
            "exactly one statement is allowed; got 2",
        ),
        (
            "DELETE FROM samples",
            "only queries are allowed; got DELETE",
        ),
        (
            "UPDATE samples SET value = 0",
            "only queries are allowed; got UPDATE",
        ),
        (
            "CREATE VIEW v AS SELECT 1",
            "only queries are allowed; got CREATE VIEW",
        ),
        (
            "EXPLAIN CREATE TABLE t (x INT)",
            "EXPLAIN: only queries are allowed; got CREATE TABLE",
        ),
        (
            "SELECT 1 INTO t",
            "only queries are allowed; got SELECT INTO",
        ),
        ("SHOW TABLES", "only queries are allowed; got SHOW TABLES"),
        ("BEGIN", "only queries are allowed; got START TRANSACTION"),
    ];
    for (sql, expected) in cases {
        let reply = post_sql(&server, sql).await;
        assert_eq!(reply.status, 400, "{sql}");
        assert_eq!(reply.error(), expected, "{sql}");
    }
    assert_eq!(outcome_count(&server, "refused"), cases.len() as u64);
    assert_eq!(outcome_count(&server, "ok"), 0);
}

#[tokio::test]
async fn bad_sql_is_400_with_datafusion_message() {
    let server = serve(QueryLimits::default()).await;

    let reply = post_sql(&server, "SELEC node FROM samples").await;
    assert_eq!(reply.status, 400);
    let msg = reply.error();
    assert!(msg.starts_with("SQL error: ParserError"), "{msg}");
    assert!(msg.contains("SELEC"), "{msg}");

    let reply = post_sql(&server, "SELECT nope FROM samples").await;
    assert_eq!(reply.status, 400);
    let msg = reply.error();
    assert!(msg.contains("No field named nope"), "{msg}");

    let reply = post_sql(&server, "SELECT * FROM missing_table").await;
    assert_eq!(reply.status, 400);
    assert!(reply.error().contains("missing_table"));

    let reply = post_sql(&server, "SELECT value + 'x' FROM samples").await;
    assert_eq!(reply.status, 400);

    // Errors raised while executing, caused by the data: still the caller's to fix.
    let reply = post_sql(&server, "SELECT CAST(node AS INT) FROM samples").await;
    assert_eq!(reply.status, 400);
    assert!(reply.error().contains("web-1") || reply.error().contains("db-1"));

    let reply = post_sql(&server, "SELECT count(*) / (count(*) - 9) FROM samples").await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.error().to_lowercase().contains("divide by zero"),
        "{}",
        reply.error()
    );

    let reply = post_sql(&server, "").await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.error(), "no SQL statement given");

    assert_eq!(outcome_count(&server, "bad_request"), 7);
}

#[tokio::test]
async fn malformed_body_is_400_json() {
    let server = serve(QueryLimits::default()).await;
    let cases: [(&[u8], &str); 5] = [
        (b"{\"sql\": ", "invalid JSON body: EOF while parsing"),
        (b"not json", "invalid JSON body: expected ident"),
        (
            b"{\"query\": \"SELECT 1\"}",
            "missing field `sql` in the JSON body",
        ),
        (
            b"{\"sql\": 1}",
            "field `sql` of the JSON body must be a string",
        ),
        (b"[\"SELECT 1\"]", "the JSON body must be an object"),
    ];
    for (body, expected) in cases {
        let reply = post(&server, body, None).await;
        assert_eq!(reply.status, 400);
        let msg = reply.error();
        assert!(msg.starts_with(expected), "{msg}");
    }
}

#[tokio::test]
async fn other_methods_get_405_json() {
    let server = serve(QueryLimits::default()).await;
    let head = format!(
        "GET /api/v1/sql HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        server.addr
    );
    let reply = exchange(&server, &head, b"").await;
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("allow"), Some("POST"));
    assert!(reply.error().starts_with("use POST"));
}

#[tokio::test]
async fn rows_beyond_max_rows_are_cut() {
    let limits = QueryLimits {
        max_rows: 4,
        ..QueryLimits::default()
    };
    let server = serve(limits.clone()).await;
    let reply = post_sql(&server, "SELECT value FROM samples ORDER BY value").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header(TRUNCATED_HEADER), Some("true"));
    let body = reply.json();
    assert_eq!(body["rows"], json!([[0.125], [0.25], [0.25], [0.5]]));
    assert_eq!(body["truncated"], json!(true));

    // Exactly max_rows rows: nothing was cut.
    let reply = post_sql(&server, "SELECT value FROM samples ORDER BY value LIMIT 4").await;
    assert_eq!(reply.json()["truncated"], json!(false));
    assert_eq!(reply.json()["rows"].as_array().unwrap().len(), 4);

    // Unordered scan across several batches and partitions: the cut lands inside a batch.
    let output = run_query(&samples_ctx(), "SELECT * FROM samples", &limits)
        .await
        .unwrap();
    assert!(output.truncated);
    assert_eq!(output.n_rows(), 4);
    let output = run_query(
        &samples_ctx(),
        "SELECT * FROM samples",
        &QueryLimits {
            max_rows: 9,
            ..limits
        },
    )
    .await
    .unwrap();
    assert!(!output.truncated);
    assert_eq!(output.n_rows(), 9);
}

#[tokio::test]
async fn slow_query_times_out_with_503() {
    let server = serve(QueryLimits {
        timeout: Duration::from_millis(100),
        ..QueryLimits::default()
    })
    .await;
    let started = std::time::Instant::now();
    let reply = post_sql(&server, "SELECT sum(value) FROM range(100000000000)").await;
    assert_eq!(reply.status, 503);
    assert!(
        reply.error().contains("time limit of 100ms"),
        "{}",
        reply.error()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(outcome_count(&server, "timeout"), 1);
}

#[tokio::test]
async fn too_long_sql_is_413() {
    let server = serve(QueryLimits {
        max_sql_len: 20,
        ..QueryLimits::default()
    })
    .await;
    let reply = post_sql(&server, "SELECT 1 + 1 + 1 + 1 + 1").await;
    assert_eq!(reply.status, 413);
    assert_eq!(reply.error(), "SQL is 24 bytes long; the limit is 20 bytes");
}

#[tokio::test]
async fn source_failure_is_500() {
    struct Broken;
    impl QuerySource for Broken {
        fn session_context(&self) -> Result<SessionContext, QueryError> {
            Err(QueryError::Server("manifest unreadable".to_owned()))
        }
    }
    let registry = prometheus::Registry::new();
    let app: axum::Router = routes(Arc::new(Broken), QueryLimits::default(), &registry).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let server = Server { addr, registry };
    let reply = post_sql(&server, "SELECT 1").await;
    assert_eq!(reply.status, 500);
    assert_eq!(reply.error(), "manifest unreadable");
    assert_eq!(outcome_count(&server, "error"), 1);
    // Registering the metrics twice on one registry is an error, not a panic.
    assert!(routes::<()>(Arc::new(Samples), QueryLimits::default(), &server.registry).is_err());
}

#[test]
fn read_only_check_lets_queries_through() {
    for sql in [
        "SELECT 1",
        "select node, avg(value) from samples group by node",
        "WITH x AS (SELECT 1 AS a) SELECT a FROM x",
        "VALUES (1), (2)",
        "SELECT 1 UNION ALL SELECT 2",
        "(SELECT 1) EXCEPT (SELECT 2)",
        "EXPLAIN SELECT * FROM samples",
        "EXPLAIN ANALYZE SELECT * FROM samples",
        "SELECT * FROM information_schema.tables",
        "SELECT * FROM samples;",
        "SELECT * FROM (SELECT * FROM samples WHERE value IN (SELECT 1)) s",
    ] {
        assert!(
            check_read_only(sql).is_ok(),
            "{sql}: {:?}",
            check_read_only(sql)
        );
    }
}

#[test]
fn read_only_check_refuses_writes_anywhere() {
    let refusal = |sql: &str| match check_read_only(sql) {
        Err(QueryError::Refused(msg)) => msg,
        other => panic!("{sql}: expected a refusal, got {other:?}"),
    };
    assert_eq!(
        refusal("WITH x AS (INSERT INTO t VALUES (1)) SELECT 1"),
        "only queries are allowed; got INSERT"
    );
    assert_eq!(
        refusal("EXPLAIN ANALYZE INSERT INTO samples VALUES (1)"),
        "EXPLAIN: only queries are allowed; got INSERT"
    );
    assert_eq!(
        refusal("SELECT * FROM samples UNION SELECT * FROM 'data.parquet'"),
        "file and URL access is not allowed; got table name \"data.parquet\""
    );
    assert_eq!(
        refusal("RESET datafusion.execution.batch_size"),
        "only queries are allowed; got RESET"
    );
    assert_eq!(
        refusal("TRUNCATE samples"),
        "only queries are allowed; got TRUNCATE"
    );
    assert!(matches!(
        check_read_only(" ;; "),
        Err(QueryError::BadRequest(_))
    ));
    assert!(matches!(
        check_read_only("SELECT (((("),
        Err(QueryError::Invalid(_))
    ));
    // Deep nesting hits the parser's recursion limit: an error, not a stack overflow.
    let deep = format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000));
    assert!(matches!(
        check_read_only(&deep),
        Err(QueryError::Invalid(_))
    ));
}

/// The second line of defence alone (no `check_read_only`): a default context refuses
/// to read a file named as a table.
#[tokio::test]
async fn datafusion_alone_does_not_read_files() {
    let err = samples_ctx()
        .sql("SELECT * FROM '/etc/passwd'")
        .await
        .unwrap_err();
    assert!(matches!(
        QueryError::from_datafusion(err),
        QueryError::Invalid(_)
    ));
    let output = run_checked(
        &samples_ctx(),
        "CREATE TABLE t AS SELECT 1",
        &QueryLimits::default(),
    )
    .await;
    match output {
        Err(QueryError::Invalid(msg)) => assert!(msg.contains("DDL not supported"), "{msg}"),
        other => panic!("expected DDL refusal, got {other:?}"),
    }
}

#[test]
fn datafusion_errors_are_classified() {
    use datafusion::arrow::error::ArrowError;
    let cases: Vec<(DataFusionError, u16)> = vec![
        (DataFusionError::Plan("bad".into()), 400),
        (DataFusionError::Execution("bad".into()), 400),
        (
            DataFusionError::ArrowError(Box::new(ArrowError::DivideByZero), None),
            400,
        ),
        (
            DataFusionError::Context(
                "while scanning".into(),
                Box::new(DataFusionError::ArrowError(
                    Box::new(ArrowError::CastError("x".into())),
                    None,
                )),
            ),
            400,
        ),
        (DataFusionError::IoError(std::io::Error::other("disk")), 500),
        (DataFusionError::ResourcesExhausted("memory".into()), 500),
        (DataFusionError::External("s3".into()), 500),
        (
            DataFusionError::Context(
                "reading partition".into(),
                Box::new(DataFusionError::IoError(std::io::Error::other("disk"))),
            ),
            500,
        ),
        (
            DataFusionError::Shared(Arc::new(DataFusionError::ResourcesExhausted("m".into()))),
            500,
        ),
    ];
    for (err, status) in cases {
        let text = err.to_string();
        let classified = QueryError::from_datafusion(err);
        assert_eq!(classified.status().as_u16(), status, "{text}");
    }
}

/// 100k rows of the samples shape encode to valid JSON with every row; prints the time
/// (debug builds are unoptimised for this crate, so the bound here is loose).
#[test]
fn encodes_100k_rows() {
    let n_rows = 100_000;
    let nodes: Vec<String> = (0..n_rows).map(|i| format!("node-{}", i % 50)).collect();
    let node_refs: Vec<&str> = nodes.iter().map(String::as_str).collect();
    let batch = RecordBatch::try_new(
        samples_schema(),
        vec![
            Arc::new(
                TimestampMillisecondArray::from(
                    (0..n_rows as i64).map(|i| T0_MS + i).collect::<Vec<_>>(),
                )
                .with_timezone("UTC"),
            ),
            dict(&node_refs),
            dict(&vec!["host"; n_rows]),
            dict(&vec!["cpu"; n_rows]),
            dict(&vec!["core=0"; n_rows]),
            Arc::new(Float64Array::from(
                (0..n_rows).map(|i| i as f64 / 3.0).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap();
    let output = QueryOutput {
        schema: samples_schema(),
        batches: vec![batch.slice(0, 60_000), batch.slice(60_000, 40_000)],
        truncated: false,
    };
    let started = std::time::Instant::now();
    let json = output.to_json().unwrap();
    let elapsed = started.elapsed();
    eprintln!(
        "encoded {n_rows} rows, {} bytes, in {elapsed:?}",
        json.len()
    );
    assert!(elapsed < Duration::from_secs(5));
    let body: Value = serde_json::from_slice(&json).unwrap();
    let rows = body["rows"].as_array().unwrap();
    assert_eq!(rows.len(), n_rows);
    assert_eq!(
        rows[60_001],
        json!([
            "2026-11-22T20:42:03.124Z",
            "node-1",
            "host",
            "cpu",
            "core=0",
            60_001.0 / 3.0
        ])
    );
    let ipc = output.to_arrow_ipc().unwrap();
    let reader = StreamReader::try_new(ipc.as_slice(), None).unwrap();
    let n_decoded: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(n_decoded, n_rows);
}
