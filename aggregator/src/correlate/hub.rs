//! Shared state between the correlation driver and the HTTP API: incidents, their latest
//! RCA, the service graph, and the live stream (a bounded broadcast: a slow subscriber
//! loses the oldest messages and is told how many; the driver never waits).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use datafusion::arrow::array::{
    ArrayRef, Float64Array, StringArray, TimestampMillisecondArray, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::graph::ServiceGraph;
use super::incidents::{Correlator, CorrelatorConfig, Incident};

/// One candidate cause, as served (the RCA engine's `Candidate`, fields we promise).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RcaCandidate {
    /// Component.
    pub target: String,
    /// `cpu`, `memory`, `disk`, `network`, `errors`, `crash`, ...
    pub kind: String,
    /// Score (higher is more likely).
    pub score: f64,
    /// Supporting evidence, as the engine gives it.
    #[serde(default)]
    pub evidence: Vec<Value>,
    /// Plain-English explanation.
    #[serde(default)]
    pub explanation: String,
    /// For `dependency`: the callee the symptoms most likely came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caused_by: Option<String>,
    /// When this component's first anomaly was seen, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onset_ms: Option<i64>,
}

/// The latest RCA of an incident.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RcaResult {
    /// Candidates, best first.
    pub ranking: Vec<RcaCandidate>,
    /// Onset the engine found, ms.
    pub onset_ms: Option<i64>,
    /// Wall time of the computation, ms.
    pub computed_at_ms: i64,
    /// How long the computation (queries + ranking) took, ms.
    pub duration_ms: u64,
    /// Components the engine looked at.
    pub components_considered: usize,
    /// Series, events and edges handed to it.
    pub inputs: RcaInputCounts,
    /// The incident revision it was computed for.
    pub revision: u64,
}

/// What an RCA was given.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct RcaInputCounts {
    /// Series.
    pub series: usize,
    /// Evidence events.
    pub events: usize,
    /// Call edges.
    pub edges: usize,
    /// Window start, ms.
    pub from_ms: i64,
    /// Window end, ms.
    pub to_ms: i64,
}

/// A message of the live stream: SSE `event:` name and JSON `data:`.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamMessage {
    /// `anomaly` or `incident`.
    pub event: &'static str,
    /// The payload.
    pub data: Value,
}

/// Everything the driver maintains.
#[derive(Debug)]
pub struct HubState {
    /// The correlation state machine (incidents live here).
    pub correlator: Correlator,
    /// Latest RCA per incident id.
    pub rca: BTreeMap<String, RcaResult>,
    /// Latest service graph and when it was built (wall ms).
    pub graph: ServiceGraph,
    /// When `graph` was built.
    pub graph_at_ms: Option<i64>,
    /// True once the start-up replay is done.
    pub ready: bool,
    /// Anomalies taken so far.
    pub anomalies_seen: u64,
}

struct Inner {
    state: Mutex<HubState>,
    tx: broadcast::Sender<StreamMessage>,
}

/// Handle to the shared state. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

impl Hub {
    /// A hub with an empty correlator; the stream keeps `stream_capacity` messages per
    /// subscriber.
    pub fn new(cfg: CorrelatorConfig, stream_capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(stream_capacity.max(1));
        Hub {
            inner: Arc::new(Inner {
                state: Mutex::new(HubState {
                    correlator: Correlator::new(cfg),
                    rca: BTreeMap::new(),
                    graph: ServiceGraph::default(),
                    graph_at_ms: None,
                    ready: false,
                    anomalies_seen: 0,
                }),
                tx,
            }),
        }
    }

    /// Locks the state (a poisoned lock is taken over: the state is still the best we have).
    pub fn lock(&self) -> MutexGuard<'_, HubState> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A new subscriber to the live stream.
    pub fn subscribe(&self) -> broadcast::Receiver<StreamMessage> {
        self.inner.tx.subscribe()
    }

    /// Sends to every subscriber; never waits (nobody listening is fine).
    pub fn publish(&self, msg: StreamMessage) {
        let _ = self.inner.tx.send(msg);
    }

    /// The `incidents` SQL table over the current incidents.
    pub fn incidents_table(&self) -> Result<MemTable, DataFusionError> {
        let st = self.lock();
        let rows: Vec<(&Incident, Option<&RcaCandidate>)> = st
            .correlator
            .incidents()
            .map(|i| (i, st.rca.get(&i.id).and_then(|r| r.ranking.first())))
            .collect();
        let schema = incidents_schema();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|(i, _)| i.id.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|(i, _)| i.status.as_str()),
            )),
            Arc::new(
                TimestampMillisecondArray::from_iter_values(
                    rows.iter().map(|(i, _)| i.opened_at_ms),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(
                TimestampMillisecondArray::from_iter_values(
                    rows.iter().map(|(i, _)| i.updated_at_ms),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(
                TimestampMillisecondArray::from_iter(rows.iter().map(|(i, _)| i.resolved_at_ms))
                    .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|(i, _)| {
                i.nodes.iter().cloned().collect::<Vec<_>>().join(",")
            }))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|(i, _)| {
                i.components.iter().cloned().collect::<Vec<_>>().join(",")
            }))),
            Arc::new(UInt64Array::from_iter_values(
                rows.iter().map(|(i, _)| i.anomaly_count),
            )),
            Arc::new(StringArray::from_iter(
                rows.iter().map(|(_, c)| c.map(|c| c.target.clone())),
            )),
            Arc::new(StringArray::from_iter(
                rows.iter().map(|(_, c)| c.map(|c| c.kind.clone())),
            )),
            Arc::new(Float64Array::from_iter(
                rows.iter().map(|(_, c)| c.map(|c| c.score)),
            )),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        MemTable::try_new(schema, vec![vec![batch]])
    }
}

/// Schema of the `incidents` SQL table.
pub fn incidents_schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("opened_at", ts.clone(), false),
        Field::new("updated_at", ts.clone(), false),
        Field::new("resolved_at", ts, true),
        Field::new("nodes", DataType::Utf8, false),
        Field::new("components", DataType::Utf8, false),
        Field::new("anomaly_count", DataType::UInt64, false),
        Field::new("top_target", DataType::Utf8, true),
        Field::new("top_kind", DataType::Utf8, true),
        Field::new("top_score", DataType::Float64, true),
    ]))
}

/// An incident as a list item of `GET /api/v1/incidents`.
pub fn incident_summary(i: &Incident, rca: Option<&RcaResult>) -> Value {
    let top = rca
        .and_then(|r| r.ranking.first())
        .map(|c| json!({ "target": c.target, "kind": c.kind, "score": c.score }));
    json!({
        "id": i.id,
        "status": i.status.as_str(),
        "opened_at_ms": i.opened_at_ms,
        "updated_at_ms": i.updated_at_ms,
        "resolved_at_ms": i.resolved_at_ms,
        "resolved_reason": i.resolved_reason,
        "first_anomaly_ms": i.first_anomaly_ms,
        "last_anomaly_ms": i.last_anomaly_ms,
        "nodes": i.nodes,
        "components": i.components,
        "anomaly_count": i.anomaly_count,
        "top_cause": top,
    })
}

/// An incident with its anomalies and RCA, for `GET /api/v1/incidents/{id}`.
pub fn incident_detail(i: &Incident, rca: Option<&RcaResult>) -> Value {
    let mut v = incident_summary(i, rca);
    if let Value::Object(m) = &mut v {
        m.insert("anomalies".into(), json!(i.anomalies));
        m.insert("dropped_anomalies".into(), json!(i.dropped_anomalies));
        m.insert(
            "rca_status".into(),
            json!(match rca {
                Some(r) if r.revision == i.revision => "current",
                Some(_) => "stale",
                None => "pending",
            }),
        );
        m.insert("rca".into(), json!(rca));
    }
    v
}
