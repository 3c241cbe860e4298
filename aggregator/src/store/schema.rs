//! The tables, as Arrow schemas, and the conversion of decoded wire batches into them.
//!
//! docs/schema.md documents these for users; keep the two in step.

use std::sync::{Arc, LazyLock};

use common::model::Batch;
use datafusion::arrow::array::{
    ArrayRef, DictionaryArray, Float64Array, Int32Array, Int64Array, StringArray,
    TimestampMillisecondArray, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;

/// The record kinds, one DataFusion table each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Metric samples.
    Samples,
    /// Discrete events.
    Events,
    /// Anomalies detected on the nodes (events of kind `anomaly`, with their fields as columns).
    Anomalies,
    /// Process lifecycle from eBPF (`process.exec`, `process.exit`, `oom.kill` events).
    ProcessEvents,
    /// TCP connections from eBPF (`tcp.connect`, `tcp.close` events).
    TcpConnections,
}

impl Table {
    /// Every stored table.
    pub const ALL: [Table; 5] = [
        Table::Samples,
        Table::Events,
        Table::Anomalies,
        Table::ProcessEvents,
        Table::TcpConnections,
    ];

    /// SQL name, also the directory name under `tables/`.
    pub fn name(self) -> &'static str {
        match self {
            Table::Samples => "samples",
            Table::Events => "events",
            Table::Anomalies => "anomalies",
            Table::ProcessEvents => "process_events",
            Table::TcpConnections => "tcp_connections",
        }
    }

    /// Parses a directory/SQL name.
    pub fn from_name(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Arrow schema.
    pub fn schema(self) -> SchemaRef {
        match self {
            Table::Samples => SAMPLES.clone(),
            Table::Events => EVENTS.clone(),
            Table::Anomalies | Table::ProcessEvents | Table::TcpConnections => event_table(self)
                .map(|t| t.schema.clone())
                .unwrap_or_else(|| EVENTS.clone()),
        }
    }
}

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

fn dict_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

static SAMPLES: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("ts", ts_type(), false),
        Field::new("node", dict_type(), false),
        Field::new("entity", dict_type(), false),
        Field::new("metric", dict_type(), false),
        Field::new("labels", dict_type(), false),
        Field::new("value", DataType::Float64, false),
    ]))
});

static EVENTS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("ts", ts_type(), false),
        Field::new("node", DataType::Utf8, false),
        Field::new("entity", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("severity", DataType::Utf8, false),
        Field::new("message", DataType::Utf8, false),
        Field::new("attrs", DataType::Utf8, false),
    ]))
});

/// Event kind that carries an anomaly; its attrs are the `anomalies` columns.
pub const ANOMALY_KIND: &str = "anomaly";

/// Schema of the `nodes` table (built from the live registry at query time).
pub fn nodes_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("node", DataType::Utf8, false),
        Field::new("agent_version", DataType::Utf8, false),
        Field::new("boot_id", DataType::Utf8, false),
        Field::new("session", DataType::UInt64, false),
        Field::new("capabilities", DataType::Utf8, false),
        Field::new("first_seen", ts_type(), false),
        Field::new("last_seen", ts_type(), false),
        Field::new("batches", DataType::UInt64, false),
        Field::new("samples", DataType::UInt64, false),
    ]))
}

/// A wire batch as Arrow, ready for the hot store.
#[derive(Clone, Debug)]
pub struct DecodedBatch {
    /// Rows for `samples` (absent when the batch had none).
    pub samples: Option<RecordBatch>,
    /// Rows for `events` (absent when the batch had none).
    pub events: Option<RecordBatch>,
    /// Rows for the event-derived tables (`anomalies`, `process_events`, ...).
    pub derived: Vec<(Table, RecordBatch)>,
    /// Sample count.
    pub n_samples: usize,
}

impl DecodedBatch {
    /// Arrow memory held (what ingest counts against its in-flight budget).
    pub fn memory_size(&self) -> usize {
        self.samples
            .iter()
            .chain(&self.events)
            .map(RecordBatch::get_array_memory_size)
            .sum::<usize>()
            + self
                .derived
                .iter()
                .map(|(_, b)| b.get_array_memory_size())
                .sum::<usize>()
    }
}

/// Converts a decoded wire batch of `node` into Arrow record batches.
///
/// String columns are dictionaries whose values are per-series: the wire batch already
/// interned its keys, so each row only costs a 4-byte key.
pub fn to_arrow(node: &str, batch: &Batch) -> Result<DecodedBatch, ArrowError> {
    let n_samples = batch.n_samples();
    let samples = if n_samples == 0 {
        None
    } else {
        let mut ts = Vec::with_capacity(n_samples);
        let mut values = Vec::with_capacity(n_samples);
        let mut keys = Vec::with_capacity(n_samples);
        let mut entities = Vec::with_capacity(batch.series.len());
        let mut metrics = Vec::with_capacity(batch.series.len());
        let mut labels = Vec::with_capacity(batch.series.len());
        for (idx, s) in batch.series.iter().enumerate() {
            entities.push(s.key.entity.as_str());
            metrics.push(s.key.metric.as_str());
            labels.push(s.key.labels_text());
            for p in &s.points {
                ts.push(p.ts_ms);
                values.push(p.value);
                keys.push(idx as i32);
            }
        }
        let keys = Int32Array::from(keys);
        let dict = |values: ArrayRef| -> Result<ArrayRef, ArrowError> {
            Ok(Arc::new(DictionaryArray::<Int32Type>::try_new(
                keys.clone(),
                values,
            )?))
        };
        let node_col: ArrayRef = Arc::new(DictionaryArray::<Int32Type>::try_new(
            Int32Array::from(vec![0; n_samples]),
            Arc::new(StringArray::from(vec![node])),
        )?);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(TimestampMillisecondArray::from(ts).with_timezone("UTC")),
            node_col,
            dict(Arc::new(StringArray::from(entities)))?,
            dict(Arc::new(StringArray::from(metrics)))?,
            dict(Arc::new(StringArray::from(labels)))?,
            Arc::new(Float64Array::from(values)),
        ];
        Some(RecordBatch::try_new(SAMPLES.clone(), columns)?)
    };
    let events = if batch.events.is_empty() {
        None
    } else {
        let ev = &batch.events;
        let attrs: Vec<String> = ev
            .iter()
            .map(|e| {
                e.attrs
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(
                TimestampMillisecondArray::from_iter_values(ev.iter().map(|e| e.ts_ms))
                    .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from(vec![node; ev.len()])),
            Arc::new(StringArray::from_iter_values(
                ev.iter().map(|e| e.entity.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                ev.iter().map(|e| e.kind.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                ev.iter().map(|e| e.severity.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                ev.iter().map(|e| e.message.as_str()),
            )),
            Arc::new(StringArray::from(attrs)),
        ];
        Some(RecordBatch::try_new(EVENTS.clone(), columns)?)
    };
    let mut derived = Vec::new();
    for def in EVENT_TABLES.iter() {
        if let Some(rb) = event_rows(def, node, &batch.events)? {
            derived.push((def.table, rb));
        }
    }
    Ok(DecodedBatch {
        samples,
        events,
        derived,
        n_samples,
    })
}

/// Where a column of an event-derived table comes from.
#[derive(Clone, Copy, Debug)]
enum Source {
    /// An attribute, as text.
    Text(&'static str),
    /// An attribute, as an integer (absent or unparsable: null).
    Int(&'static str),
    /// An attribute, as a float (absent or unparsable: null).
    Float(&'static str),
    /// The event's kind.
    Kind,
    /// The event's severity.
    Severity,
    /// The event's message.
    Message,
}

/// A table made of the events of some kinds, their attributes spread into columns.
/// Every such table starts with `ts, node, entity`.
pub struct EventTable {
    /// Which table.
    pub table: Table,
    /// Event kinds that land in it.
    pub kinds: &'static [&'static str],
    columns: Vec<(&'static str, Source)>,
    schema: SchemaRef,
}

fn event_table_def(
    table: Table,
    kinds: &'static [&'static str],
    columns: Vec<(&'static str, Source)>,
) -> EventTable {
    let mut fields = vec![
        Field::new("ts", ts_type(), false),
        Field::new("node", DataType::Utf8, false),
        Field::new("entity", DataType::Utf8, false),
    ];
    for (name, src) in &columns {
        fields.push(match src {
            Source::Text(_) => Field::new(*name, DataType::Utf8, true),
            Source::Int(_) => Field::new(*name, DataType::Int64, true),
            Source::Float(_) => Field::new(*name, DataType::Float64, true),
            Source::Kind | Source::Severity | Source::Message => {
                Field::new(*name, DataType::Utf8, false)
            }
        });
    }
    EventTable {
        table,
        kinds,
        columns,
        schema: Arc::new(Schema::new(fields)),
    }
}

static EVENT_TABLES: LazyLock<Vec<EventTable>> = LazyLock::new(|| {
    use Source::*;
    let attribution = [
        ("cgroup", Text("cgroup")),
        ("pod_uid", Text("pod_uid")),
        ("container_id", Text("container_id")),
        ("runtime", Text("runtime")),
    ];
    let mut process = vec![
        ("kind", Kind),
        ("pid", Int("pid")),
        ("ppid", Int("ppid")),
        ("uid", Int("uid")),
        ("comm", Text("comm")),
        ("filename", Text("filename")),
        ("exit_code", Int("exit_code")),
        ("signal", Int("signal")),
        ("core_dumped", Text("core_dumped")),
        ("lifetime_ms", Int("lifetime_ms")),
        ("trigger_pid", Int("trigger_pid")),
        ("trigger_comm", Text("trigger_comm")),
    ];
    process.extend(attribution);
    process.extend([("severity", Severity), ("message", Message)]);
    let mut tcp = vec![
        ("kind", Kind),
        ("pid", Int("pid")),
        ("comm", Text("comm")),
        ("saddr", Text("saddr")),
        ("sport", Int("sport")),
        ("daddr", Text("daddr")),
        ("dport", Int("dport")),
        ("direction", Text("direction")),
        ("result", Text("result")),
        ("connect_latency_us", Int("latency_us")),
        ("duration_ms", Int("duration_ms")),
        ("bytes_sent", Int("bytes_sent")),
        ("bytes_received", Int("bytes_received")),
        ("retransmits", Int("retransmits")),
        ("reset", Text("reset")),
        ("srtt_us", Int("srtt_us")),
    ];
    tcp.extend(attribution);
    tcp.extend([("severity", Severity), ("message", Message)]);
    vec![
        event_table_def(
            Table::Anomalies,
            &[ANOMALY_KIND],
            vec![
                ("metric", Text("metric")),
                ("labels", Text("labels")),
                ("score", Float("score")),
                ("value", Float("value")),
                ("expected", Float("expected")),
                ("lower", Float("lower")),
                ("upper", Float("upper")),
                ("detector", Text("detector")),
                ("severity", Severity),
                ("explanation", Message),
            ],
        ),
        event_table_def(
            Table::ProcessEvents,
            &["process.exec", "process.exit", "oom.kill"],
            process,
        ),
        event_table_def(Table::TcpConnections, &["tcp.connect", "tcp.close"], tcp),
    ]
});

/// The definition of an event-derived table.
pub fn event_table(table: Table) -> Option<&'static EventTable> {
    EVENT_TABLES.iter().find(|t| t.table == table)
}

fn event_rows(
    def: &EventTable,
    node: &str,
    events: &[common::model::Event],
) -> Result<Option<RecordBatch>, ArrowError> {
    let rows: Vec<&common::model::Event> = events
        .iter()
        .filter(|e| def.kinds.contains(&e.kind.as_str()))
        .collect();
    if rows.is_empty() {
        return Ok(None);
    }
    let attr = |e: &common::model::Event, k: &str| -> Option<String> {
        e.attrs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(
            TimestampMillisecondArray::from_iter_values(rows.iter().map(|e| e.ts_ms))
                .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from(vec![node; rows.len()])),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|e| e.entity.as_str()),
        )),
    ];
    for (_, src) in &def.columns {
        let col: ArrayRef = match src {
            Source::Text(k) => Arc::new(StringArray::from_iter(rows.iter().map(|e| attr(e, k)))),
            Source::Int(k) => Arc::new(Int64Array::from_iter(
                rows.iter()
                    .map(|e| attr(e, k).and_then(|v| v.parse::<i64>().ok())),
            )),
            Source::Float(k) => Arc::new(Float64Array::from_iter(
                rows.iter()
                    .map(|e| attr(e, k).and_then(|v| v.parse::<f64>().ok())),
            )),
            Source::Kind => Arc::new(StringArray::from_iter_values(
                rows.iter().map(|e| e.kind.as_str()),
            )),
            Source::Severity => Arc::new(StringArray::from_iter_values(
                rows.iter().map(|e| e.severity.as_str()),
            )),
            Source::Message => Arc::new(StringArray::from_iter_values(
                rows.iter().map(|e| e.message.as_str()),
            )),
        };
        columns.push(col);
    }
    Ok(Some(RecordBatch::try_new(def.schema.clone(), columns)?))
}

/// Builds the `nodes` table rows.
pub fn nodes_batch(rows: &[crate::store::state::NodeInfo]) -> Result<RecordBatch, ArrowError> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.node.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.agent_version.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.boot_id.as_str()),
        )),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.session),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.capabilities.join(",")),
        )),
        Arc::new(
            TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.first_seen_ms))
                .with_timezone("UTC"),
        ),
        Arc::new(
            TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.last_seen_ms))
                .with_timezone("UTC"),
        ),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.batches),
        )),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.samples),
        )),
    ];
    RecordBatch::try_new(nodes_schema(), columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::model::{Point, SeriesKey, SeriesPoints};
    use datafusion::arrow::array::Array;

    #[test]
    fn samples_rows_follow_series_order() {
        let batch = Batch {
            series: vec![
                SeriesPoints {
                    key: SeriesKey::new("host", "cpu.usage_pct"),
                    points: vec![
                        Point {
                            ts_ms: 1,
                            value: 1.5,
                        },
                        Point {
                            ts_ms: 2,
                            value: 2.5,
                        },
                    ],
                },
                SeriesPoints {
                    key: SeriesKey::new("process/7", "proc.rss_bytes").with_label("comm", "sh"),
                    points: vec![Point {
                        ts_ms: 1,
                        value: 100.0,
                    }],
                },
            ],
            events: vec![],
        };
        let decoded = to_arrow("n1", &batch).unwrap();
        let rb = decoded.samples.unwrap();
        assert_eq!(rb.num_rows(), 3);
        assert_eq!(decoded.n_samples, 3);
        assert!(decoded.events.is_none());
        let labels = rb
            .column(4)
            .as_any()
            .downcast_ref::<DictionaryArray<Int32Type>>()
            .unwrap();
        let values = labels
            .values()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(values.value(labels.keys().value(2) as usize), "comm=sh");
        assert_eq!(labels.keys().value(0), 0);
        assert!(rb.column(5).null_count() == 0);
    }

    #[test]
    fn ebpf_and_anomaly_events_fill_their_own_tables() {
        use common::model::{Event, Severity};
        let ev = |kind: &str, attrs: &[(&str, &str)]| Event {
            ts_ms: 5,
            entity: "process/42".into(),
            kind: kind.into(),
            severity: Severity::Info,
            message: "m".into(),
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let batch = Batch {
            series: vec![],
            events: vec![
                ev(
                    "process.exec",
                    &[
                        ("comm", "true"),
                        ("pid", "42"),
                        ("ppid", "7"),
                        ("pod_uid", "abc"),
                    ],
                ),
                ev(
                    "tcp.close",
                    &[
                        ("daddr", "10.0.0.1"),
                        ("dport", "443"),
                        ("bytes_sent", "1000"),
                        ("pid", "42"),
                    ],
                ),
                ev(
                    "anomaly",
                    &[
                        ("metric", "cpu.usage_pct"),
                        ("score", "0.9"),
                        ("value", "97"),
                    ],
                ),
                ev("agent.started", &[]),
            ],
        };
        let decoded = to_arrow("n1", &batch).unwrap();
        assert_eq!(decoded.events.unwrap().num_rows(), 4);
        let tables: Vec<Table> = decoded.derived.iter().map(|(t, _)| *t).collect();
        assert_eq!(
            tables,
            vec![
                Table::Anomalies,
                Table::ProcessEvents,
                Table::TcpConnections
            ]
        );
        let proc_rb = &decoded.derived[1].1;
        assert_eq!(proc_rb.schema(), Table::ProcessEvents.schema());
        let ppid = proc_rb
            .column_by_name("ppid")
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(ppid.value(0), 7);
        let exit = proc_rb.column_by_name("exit_code").unwrap();
        assert!(exit.is_null(0));
        let tcp = &decoded.derived[2].1;
        let dport = tcp
            .column_by_name("dport")
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(dport.value(0), 443);
    }
}
