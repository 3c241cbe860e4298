//! The dashboard API over a real store in a temp dir: batches go in through
//! `Store::ingest` (as ingest would hand them over, minus QUIC), the correlation driver is
//! stepped by hand with its own `now`, and requests go over real HTTP/1.1 on 127.0.0.1
//! (axum's server; a hand-written client over a `TcpStream`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use aggregator::correlate::incidents::CorrelatorConfig;
use aggregator::correlate::{Driver, DriverConfig, Hub, StreamMessage};
use aggregator::metrics::Metrics;
use aggregator::query::QueryLimits;
use aggregator::store::{Store, StoreConfig, schema};
use aggregator::wal::WalEntry;
use common::codec;
use common::model::{Batch, Event, Point, SeriesKey, SeriesPoints, Severity};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("api-test-{tag}-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn event(ts_ms: i64, entity: &str, kind: &str, attrs: &[(&str, &str)]) -> Event {
    let mut attrs: Vec<(String, String)> = attrs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    attrs.sort();
    Event {
        ts_ms,
        entity: entity.into(),
        kind: kind.into(),
        severity: Severity::Warning,
        message: format!("{kind} on {entity}"),
        attrs,
    }
}

fn anomaly(ts_ms: i64, pid: u32, comm: &str, metric: &str) -> Event {
    event(
        ts_ms,
        &format!("process/{pid}"),
        "anomaly",
        &[
            ("metric", metric),
            ("labels", &format!("comm={comm}")),
            ("score", "0.97"),
            ("value", "95"),
            ("expected", "5"),
            ("lower", "0"),
            ("upper", "20"),
            ("detector", "ewma"),
        ],
    )
}

/// A process series: `n` points one second apart from `t0`, `f(i)` each.
fn proc_series(
    pid: u32,
    comm: &str,
    metric: &str,
    t0: i64,
    n: i64,
    f: impl Fn(i64) -> f64,
) -> SeriesPoints {
    SeriesPoints {
        key: SeriesKey::new(format!("process/{pid}"), metric).with_label("comm", comm),
        points: (0..n)
            .map(|i| Point {
                ts_ms: t0 + i * 1000,
                value: f(i),
            })
            .collect(),
    }
}

struct World {
    store: Store,
    hub: Hub,
    driver: Driver,
    addr: SocketAddr,
    /// Timestamp of the first anomaly.
    t_fault: i64,
    _dir: PathBuf,
}

async fn ingest(store: &Store, node: &str, seq: u64, batch: Batch) {
    let decoded = schema::to_arrow(node, &batch).unwrap();
    let entry = WalEntry::Batch {
        node: node.into(),
        session: 1,
        seq,
        received_ms: now_ms(),
        payload: codec::encode_batch(&batch),
    };
    store.ingest(entry, decoded).await.unwrap();
}

async fn hello(store: &Store, node: &str) {
    store
        .record_hello(WalEntry::Hello {
            node: node.into(),
            agent_version: "0.1.0".into(),
            boot_id: format!("boot-{node}"),
            session: 1,
            capabilities: vec!["host".into(), "process".into(), "ebpf".into()],
            received_ms: now_ms(),
        })
        .await
        .unwrap();
}

/// Two nodes: `checkout` on n1 calls `payments` on n2 (10.0.0.1 → 10.0.0.2:8080);
/// payments' CPU goes up and it gets OOM-killed; both raise anomalies 20 s apart.
async fn world() -> World {
    let dir = temp_dir("world");
    let (store, _) = Store::open(StoreConfig::new(dir.clone()), Metrics::new()).unwrap();
    hello(&store, "n1").await;
    hello(&store, "n2").await;
    let t0 = now_ms() - 300_000;
    let t_fault = t0 + 240_000;
    let n = 280;
    ingest(
        &store,
        "n2",
        1,
        Batch {
            series: vec![
                proc_series(200, "payments", "proc.cpu_pct", t0, n, |i| {
                    if i >= 230 { 95.0 } else { 5.0 + (i % 3) as f64 }
                }),
                proc_series(200, "payments", "proc.rss_bytes", t0, n, |i| 1e8 + i as f64),
            ],
            events: vec![
                event(
                    t0 + 100_000,
                    "process/200",
                    "tcp.close",
                    &[
                        ("comm", "payments"),
                        ("direction", "in"),
                        ("saddr", "10.0.0.2"),
                        ("sport", "8080"),
                        ("daddr", "10.0.0.1"),
                        ("dport", "40000"),
                        ("retransmits", "0"),
                        ("reset", "none"),
                        ("bytes_sent", "100"),
                        ("bytes_received", "100"),
                    ],
                ),
                anomaly(t_fault, 200, "payments", "proc.cpu_pct"),
                event(
                    t_fault + 5_000,
                    "process/200",
                    "oom.kill",
                    &[("comm", "payments"), ("pid", "200")],
                ),
            ],
        },
    )
    .await;
    ingest(
        &store,
        "n1",
        1,
        Batch {
            series: vec![proc_series(100, "checkout", "proc.cpu_pct", t0, n, |_| 3.0)],
            events: vec![
                event(
                    t0 + 99_000,
                    "process/100",
                    "tcp.connect",
                    &[
                        ("comm", "checkout"),
                        ("saddr", "10.0.0.1"),
                        ("sport", "40000"),
                        ("daddr", "10.0.0.2"),
                        ("dport", "8080"),
                        ("result", "ok"),
                        ("latency_us", "250"),
                        ("reset", "none"),
                    ],
                ),
                event(
                    t0 + 100_000,
                    "process/100",
                    "tcp.close",
                    &[
                        ("comm", "checkout"),
                        ("direction", "out"),
                        ("saddr", "10.0.0.1"),
                        ("sport", "40000"),
                        ("daddr", "10.0.0.2"),
                        ("dport", "8080"),
                        ("retransmits", "2"),
                        ("reset", "received"),
                    ],
                ),
                anomaly(t_fault + 20_000, 100, "checkout", "proc.cpu_pct"),
            ],
        },
    )
    .await;

    let hub = Hub::new(CorrelatorConfig::default(), 64);
    let mut driver = Driver::new(store.clone(), hub.clone(), DriverConfig::default());
    let report = driver.tick(now_ms()).await.unwrap();
    assert_eq!(report.anomalies, 2);
    assert!(report.rcas >= 1);
    let app = aggregator::api::router_with_hub(
        store.clone(),
        Metrics::new(),
        QueryLimits::default(),
        hub.clone(),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    World {
        store,
        hub,
        driver,
        addr,
        t_fault,
        _dir: dir,
    }
}

/// One GET over HTTP/1.1: status and JSON body (Null when the body is not JSON).
async fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"),
    )
    .await
}

async fn post_sql(addr: SocketAddr, sql: &str) -> (u16, Value) {
    let body = json!({ "sql": sql }).to_string();
    request(addr, "POST", "/api/v1/sql", "application/json", &body).await
}

/// Sends one whole HTTP/1.1 request and reads the answer to the end: status and JSON body
/// (Null when the body is not JSON).
async fn exchange(addr: SocketAddr, req: String) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// Reads the stream until `needle` shows up (20 s at most between reads).
async fn read_until(s: &mut TcpStream, seen: &mut String, needle: &str) {
    let mut buf = [0u8; 4096];
    while !seen.contains(needle) {
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
            .await
            .expect("stream went quiet")
            .unwrap();
        assert!(n > 0, "stream closed; got {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

/// Asserts a 4xx with a non-empty `{"error": ...}`.
async fn assert_bad(addr: SocketAddr, path: &str, status: u16) {
    let (got, body) = get(addr, path).await;
    assert_eq!(got, status, "{path}: {body}");
    let msg = body["error"].as_str().unwrap_or("");
    assert!(!msg.is_empty(), "{path}: no error message in {body}");
}

fn items(body: &Value) -> Vec<Value> {
    body["items"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_report_health_and_reject_bad_paging() {
    let w = world().await;
    let (status, body) = get(w.addr, "/api/v1/nodes").await;
    assert_eq!(status, 200, "{body}");
    let list = items(&body);
    assert_eq!(body["total"], 2);
    let n2 = list.iter().find(|n| n["node"] == "n2").unwrap();
    assert_eq!(n2["status"], "up");
    assert_eq!(n2["capabilities"], json!(["host", "process", "ebpf"]));
    assert_eq!(n2["anomalies_last_hour"], 1);
    assert_eq!(n2["open_incidents"], 1);
    assert!(n2["samples"].as_u64().unwrap() > 0);
    let (_, page) = get(w.addr, "/api/v1/nodes?limit=1&offset=1").await;
    assert_eq!(items(&page).len(), 1);
    assert_eq!(page["total"], 2);
    assert_bad(w.addr, "/api/v1/nodes?limit=0", 400).await;
    assert_bad(w.addr, "/api/v1/nodes?limit=abc", 400).await;
    assert_bad(w.addr, "/api/v1/nodes?status=sleepy", 400).await;
    assert_bad(w.addr, "/api/v1/nodes?bogus=1", 400).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_and_graph_show_who_calls_whom() {
    let w = world().await;
    let (status, body) = get(w.addr, "/api/v1/services").await;
    assert_eq!(status, 200, "{body}");
    let list = items(&body);
    let payments = list
        .iter()
        .find(|s| s["component"] == "payments@n2")
        .unwrap_or_else(|| panic!("no payments@n2 in {body}"));
    assert_eq!(payments["kind"], "process");
    assert_eq!(payments["anomaly_count"], 1);
    assert_eq!(payments["calls_in"], 1);
    assert_eq!(payments["nodes"], json!(["n2"]));
    assert_bad(w.addr, "/api/v1/services?since=yesterday", 400).await;

    let (status, g) = get(w.addr, "/api/v1/graph").await;
    assert_eq!(status, 200, "{g}");
    let edges = g["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 1, "{g}");
    let e = &edges[0];
    assert_eq!(e["caller"], "checkout@n1");
    assert_eq!(e["callee"], "payments@n2");
    assert_eq!(e["resolved_by"], "listener");
    assert_eq!(e["connections"], 1);
    assert_eq!(e["resets"], 1);
    assert_eq!(e["retransmits"], 2);
    assert_eq!(e["mean_connect_latency_us"], 250.0);
    assert_eq!(e["addresses"], json!(["10.0.0.2:8080"]));
    // A range before the data has no edges.
    let (_, empty) = get(w.addr, "/api/v1/graph?since=0&until=1000").await;
    assert_eq!(empty["edges"], json!([]));
    assert_bad(w.addr, "/api/v1/graph?since=2000&until=1000", 400).await;
    assert_bad(w.addr, "/api/v1/graph?nodes=1", 400).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anomalies_keep_their_shape() {
    let w = world().await;
    let (status, body) = get(w.addr, "/api/v1/anomalies").await;
    assert_eq!(status, 200, "{body}");
    let list = body["anomalies"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["entity"], "process/100", "newest first");
    assert!(body.get("next_offset").is_some());
    assert_bad(w.addr, "/api/v1/anomalies?limit=5000", 400).await;
    assert_bad(w.addr, "/api/v1/anomalies?min_score=2", 400).await;
    assert_bad(w.addr, "/api/v1/anomalies?limit=x", 400).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_group_related_anomalies_and_carry_rca() {
    let mut w = world().await;
    let (status, body) = get(w.addr, "/api/v1/incidents").await;
    assert_eq!(status, 200, "{body}");
    let list = items(&body);
    assert_eq!(
        list.len(),
        1,
        "graph neighbours on two nodes make one incident: {body}"
    );
    let inc = &list[0];
    assert_eq!(inc["status"], "open");
    assert_eq!(inc["anomaly_count"], 2);
    assert_eq!(inc["nodes"], json!(["n1", "n2"]));
    assert_eq!(inc["components"], json!(["checkout@n1", "payments@n2"]));
    assert_eq!(inc["first_anomaly_ms"], w.t_fault);
    assert!(inc.get("top_cause").is_some());
    for k in ["opened_at_ms", "updated_at_ms", "resolved_at_ms"] {
        assert!(inc.get(k).is_some(), "{k} missing");
    }
    let id = inc["id"].as_str().unwrap().to_string();

    let (status, detail) = get(w.addr, &format!("/api/v1/incidents/{id}")).await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["anomalies"].as_array().unwrap().len(), 2);
    let rca = &detail["rca"];
    assert!(rca["ranking"].is_array(), "{detail}");
    for k in ["onset_ms", "computed_at_ms", "duration_ms"] {
        assert!(rca.get(k).is_some(), "rca.{k} missing: {rca}");
    }
    assert!(rca["inputs"]["series"].as_u64().unwrap() >= 3, "{rca}");
    assert!(
        rca["inputs"]["events"].as_u64().unwrap() >= 3,
        "oom + 2 anomalies: {rca}"
    );
    assert_eq!(rca["inputs"]["edges"], 1);
    assert_eq!(
        rca["ranking"][0]["target"], "payments@n2",
        "CPU saturation and an OOM kill on the callee: {rca}"
    );
    assert_eq!(detail["top_cause"]["target"], "payments@n2");
    for c in rca["ranking"].as_array().unwrap() {
        for k in ["target", "kind", "score", "evidence", "explanation"] {
            assert!(c.get(k).is_some(), "candidate.{k} missing: {c}");
        }
    }

    let (_, open) = get(w.addr, "/api/v1/incidents?status=open").await;
    assert_eq!(open["total"], 1);
    let (_, resolved) = get(w.addr, "/api/v1/incidents?status=resolved").await;
    assert_eq!(resolved["total"], 0);
    let (_, later) = get(
        w.addr,
        &format!("/api/v1/incidents?since={}", now_ms() + 60_000),
    )
    .await;
    assert_eq!(later["total"], 0);

    // SQL sees the incidents table.
    let (status, rows) = post_sql(
        w.addr,
        "SELECT id, status, anomaly_count, nodes FROM incidents",
    )
    .await;
    assert_eq!(status, 200, "{rows}");
    assert_eq!(rows["rows"][0][0], json!(id));
    assert_eq!(rows["rows"][0][2], 2);
    assert_eq!(rows["rows"][0][3], "n1,n2");

    // Quiet for the quiet period: resolved.
    w.driver.tick(now_ms() + 130_000).await.unwrap();
    let (_, detail) = get(w.addr, &format!("/api/v1/incidents/{id}")).await;
    assert_eq!(detail["status"], "resolved");
    assert_eq!(detail["resolved_reason"], "quiet");
    assert!(detail["resolved_at_ms"].is_i64());

    // A restart rebuilds the same incident from the stored anomalies.
    let hub = Hub::new(CorrelatorConfig::default(), 16);
    let mut again = Driver::new(w.store.clone(), hub.clone(), DriverConfig::default());
    again.replay(now_ms()).await.unwrap();
    let ids: Vec<String> = hub
        .lock()
        .correlator
        .incidents()
        .map(|i| i.id.clone())
        .collect();
    assert_eq!(ids, vec![id.clone()]);

    assert_bad(w.addr, "/api/v1/incidents?status=maybe", 400).await;
    assert_bad(w.addr, "/api/v1/incidents?limit=1001", 400).await;
    assert_bad(w.addr, "/api/v1/incidents?since=soon", 400).await;
    assert_bad(w.addr, "/api/v1/incidents/inc-does-not-exist", 404).await;
    let long = "x".repeat(300);
    assert_bad(w.addr, &format!("/api/v1/incidents/{long}"), 400).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_are_served_raw_or_downsampled() {
    let w = world().await;
    let base = "/api/v1/series?node=n2&entity=process/200&metric=proc.cpu_pct";
    let (status, body) = get(w.addr, &format!("{base}&labels=comm%3Dpayments")).await;
    assert_eq!(status, 200, "{body}");
    let s = &items(&body)[0];
    assert_eq!(s["labels"], "comm=payments");
    assert_eq!(s["points"].as_array().unwrap().len(), 280);
    assert_eq!(body["step_ms"], Value::Null);
    let (_, down) = get(w.addr, &format!("{base}&step=10s")).await;
    let pts = items(&down)[0]["points"].as_array().unwrap().clone();
    assert!((28..=30).contains(&pts.len()), "{} buckets", pts.len());
    assert_eq!(pts[0].as_array().unwrap().len(), 4, "ts, avg, min, max");
    assert_eq!(down["step_ms"], 10_000);
    let (_, none) = get(w.addr, &format!("{base}&labels=comm%3Dnobody")).await;
    assert_eq!(none["items"], json!([]));
    assert_bad(w.addr, "/api/v1/series?node=n2&entity=host", 400).await;
    assert_bad(w.addr, &format!("{base}&step=5x"), 400).await;
    assert_bad(w.addr, &format!("{base}&step=1s&since=0"), 400).await;
    assert_bad(w.addr, &format!("{base}&until=nope"), 400).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_sends_anomalies_and_incidents_and_tells_laggards() {
    let mut w = world().await;
    assert_bad(w.addr, "/api/v1/stream?events=gossip", 400).await;

    let mut s = TcpStream::connect(w.addr).await.unwrap();
    s.write_all(b"GET /api/v1/stream HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    let mut seen = String::new();
    read_until(&mut s, &mut seen, "event: ready").await;
    assert!(seen.contains("text/event-stream"));

    // A new anomaly on n2: an `anomaly` event and an incident update.
    ingest(
        &w.store,
        "n2",
        2,
        Batch {
            series: vec![],
            events: vec![anomaly(
                w.t_fault + 40_000,
                200,
                "payments",
                "proc.rss_bytes",
            )],
        },
    )
    .await;
    w.driver.tick(now_ms()).await.unwrap();
    read_until(&mut s, &mut seen, "event: anomaly").await;
    read_until(&mut s, &mut seen, "\"change\":\"updated\"").await;
    assert!(seen.contains("event: incident"));

    // A subscriber that does not read loses the oldest messages and is told.
    let mut slow = w.hub.subscribe();
    for i in 0..20_000 {
        w.hub.publish(StreamMessage {
            event: "anomaly",
            data: json!({ "i": i }),
        });
    }
    assert!(matches!(
        slow.recv().await,
        Err(tokio::sync::broadcast::error::RecvError::Lagged(_))
    ));
    read_until(&mut s, &mut seen, "event: lagged").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_covers_every_route() {
    let w = world().await;
    let (status, spec) = get(w.addr, "/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(spec["openapi"], "3.0.3");
    let parsed: Value = serde_json::from_str(aggregator::api::openapi_spec()).unwrap();
    assert_eq!(parsed, spec);
    let paths = spec["paths"].as_object().unwrap();
    for route in aggregator::api::route_paths() {
        assert!(
            paths.contains_key(route),
            "{route} is not in the OpenAPI spec"
        );
    }
    assert_eq!(
        paths.len(),
        aggregator::api::route_paths().len(),
        "no stale paths"
    );
    // Every $ref resolves.
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    if k == "$ref" {
                        out.extend(v.as_str().map(str::to_string));
                    }
                    refs(v, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&spec, &mut all);
    for r in all {
        let name = r.trim_start_matches("#/components/schemas/");
        assert!(
            spec["components"]["schemas"].get(name).is_some(),
            "dangling {r}"
        );
    }
    // The SQL endpoint and health are still there.
    let (status, _) = post_sql(w.addr, "SELECT 1").await;
    assert_eq!(status, 200);
    let (status, _) = post_sql(w.addr, "DROP TABLE incidents").await;
    assert_eq!(status, 400);
}

/// A raw request: method, path, content type and body; status and JSON body.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    ctype: &str,
    body: &str,
) -> (u16, Value) {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    exchange(addr, req).await
}

/// Every /api/v1 endpoint answers bad input with a 4xx and `{"error": "<message>"}`:
/// unknown and malformed parameters on each, another method than the one it serves,
/// paths nobody serves, and the SQL endpoint's malformed bodies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_bad_input_with_a_message() {
    let w = world().await;
    // An unknown parameter and a malformed value, per GET endpoint.
    let cases = [
        ("/api/v1/anomalies?since=later", 400),
        ("/api/v1/anomalies?until=x", 400),
        ("/api/v1/anomalies?since=2000&until=1000", 400),
        ("/api/v1/anomalies?offset=-1", 400),
        ("/api/v1/anomalies?offset=99999999999", 400),
        ("/api/v1/anomalies?min_score=NaN", 400),
        ("/api/v1/nodes?offset=x", 400),
        ("/api/v1/services?limit=0", 400),
        ("/api/v1/services?bogus=1", 400),
        ("/api/v1/graph?since=x", 400),
        ("/api/v1/graph?bogus=1", 400),
        ("/api/v1/series", 400),
        ("/api/v1/series?bogus=1", 400),
        ("/api/v1/incidents?bogus=1", 400),
        ("/api/v1/incidents?offset=x", 400),
        ("/api/v1/stream?bogus=1", 400),
        ("/api/v1/stream?events=", 400),
    ];
    for (path, status) in cases {
        assert_bad(w.addr, path, status).await;
    }
    // Another method.
    for path in [
        "/api/v1/anomalies",
        "/api/v1/nodes",
        "/api/v1/services",
        "/api/v1/graph",
        "/api/v1/series",
        "/api/v1/incidents",
        "/api/v1/incidents/inc-1",
        "/api/v1/stream",
        "/api/v1/openapi.json",
    ] {
        let (status, body) = request(w.addr, "POST", path, "application/json", "{}").await;
        assert_eq!(status, 405, "POST {path}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|m| !m.is_empty()),
            "POST {path}: no message in {body}"
        );
    }
    // Paths nobody serves.
    for path in ["/api/v1/nope", "/api/v1/incidents/a/b", "/api/v2/nodes"] {
        assert_bad(w.addr, path, 404).await;
    }
    // The SQL endpoint: wrong method, malformed or empty bodies, a refused statement.
    let (status, body) = get(w.addr, "/api/v1/sql").await;
    assert_eq!(status, 405, "{body}");
    assert!(body["error"].as_str().is_some_and(|m| !m.is_empty()));
    for (ctype, payload) in [
        ("application/json", "{not json"),
        ("application/json", ""),
        ("application/json", "{}"),
        ("application/json", "{\"sql\": 5}"),
        ("application/json", "{\"sql\": \"\"}"),
        ("application/json", "{\"sql\": \"SELEC 1\"}"),
        ("application/json", "{\"sql\": \"DELETE FROM anomalies\"}"),
        (
            "application/json",
            "{\"sql\": \"SELECT * FROM no_such_table\"}",
        ),
    ] {
        let (status, body) = request(w.addr, "POST", "/api/v1/sql", ctype, payload).await;
        assert!(
            (400..500).contains(&status),
            "POST /api/v1/sql {payload:?}: {status} {body}"
        );
        assert!(
            body["error"].as_str().is_some_and(|m| !m.is_empty()),
            "POST /api/v1/sql {payload:?}: no message in {body}"
        );
    }
}
