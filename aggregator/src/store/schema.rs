//! The tables, as Arrow schemas, and the conversion of decoded wire batches into them.
//!
//! docs/schema.md documents these for users; keep the two in step.

use std::sync::{Arc, LazyLock};

use common::model::Batch;
use datafusion::arrow::array::{
    ArrayRef, DictionaryArray, Float64Array, Int32Array, StringArray, TimestampMillisecondArray,
    UInt64Array,
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
}

impl Table {
    /// Every stored table.
    pub const ALL: [Table; 3] = [Table::Samples, Table::Events, Table::Anomalies];

    /// SQL name, also the directory name under `tables/`.
    pub fn name(self) -> &'static str {
        match self {
            Table::Samples => "samples",
            Table::Events => "events",
            Table::Anomalies => "anomalies",
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
            Table::Anomalies => ANOMALIES.clone(),
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

static ANOMALIES: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("ts", ts_type(), false),
        Field::new("node", DataType::Utf8, false),
        Field::new("entity", DataType::Utf8, false),
        Field::new("metric", DataType::Utf8, false),
        Field::new("labels", DataType::Utf8, false),
        Field::new("score", DataType::Float64, false),
        Field::new("value", DataType::Float64, true),
        Field::new("expected", DataType::Float64, true),
        Field::new("lower", DataType::Float64, true),
        Field::new("upper", DataType::Float64, true),
        Field::new("detector", DataType::Utf8, false),
        Field::new("severity", DataType::Utf8, false),
        Field::new("explanation", DataType::Utf8, false),
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
    /// Rows for `anomalies` (absent when the batch had none).
    pub anomalies: Option<RecordBatch>,
    /// Sample count.
    pub n_samples: usize,
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
            Ok(Arc::new(DictionaryArray::<Int32Type>::try_new(keys.clone(), values)?))
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
            .map(|e| e.attrs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
            .collect();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(TimestampMillisecondArray::from_iter_values(ev.iter().map(|e| e.ts_ms)).with_timezone("UTC")),
            Arc::new(StringArray::from(vec![node; ev.len()])),
            Arc::new(StringArray::from_iter_values(ev.iter().map(|e| e.entity.as_str()))),
            Arc::new(StringArray::from_iter_values(ev.iter().map(|e| e.kind.as_str()))),
            Arc::new(StringArray::from_iter_values(ev.iter().map(|e| e.severity.as_str()))),
            Arc::new(StringArray::from_iter_values(ev.iter().map(|e| e.message.as_str()))),
            Arc::new(StringArray::from(attrs)),
        ];
        Some(RecordBatch::try_new(EVENTS.clone(), columns)?)
    };
    let anomalies = anomalies_batch(node, &batch.events)?;
    Ok(DecodedBatch { samples, events, anomalies, n_samples })
}

fn anomalies_batch(node: &str, events: &[common::model::Event]) -> Result<Option<RecordBatch>, ArrowError> {
    let rows: Vec<&common::model::Event> = events.iter().filter(|e| e.kind == ANOMALY_KIND).collect();
    if rows.is_empty() {
        return Ok(None);
    }
    let attr = |e: &common::model::Event, k: &str| -> Option<String> {
        e.attrs.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone())
    };
    let num = |e: &common::model::Event, k: &str| attr(e, k).and_then(|v| v.parse::<f64>().ok());
    let columns: Vec<ArrayRef> = vec![
        Arc::new(TimestampMillisecondArray::from_iter_values(rows.iter().map(|e| e.ts_ms)).with_timezone("UTC")),
        Arc::new(StringArray::from(vec![node; rows.len()])),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|e| e.entity.as_str()))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|e| attr(e, "metric").unwrap_or_default()))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|e| attr(e, "labels").unwrap_or_default()))),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|e| num(e, "score").unwrap_or(0.0).clamp(0.0, 1.0)))),
        Arc::new(Float64Array::from_iter(rows.iter().map(|e| num(e, "value")))),
        Arc::new(Float64Array::from_iter(rows.iter().map(|e| num(e, "expected")))),
        Arc::new(Float64Array::from_iter(rows.iter().map(|e| num(e, "lower")))),
        Arc::new(Float64Array::from_iter(rows.iter().map(|e| num(e, "upper")))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|e| attr(e, "detector").unwrap_or_default()))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|e| e.severity.as_str()))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|e| e.message.as_str()))),
    ];
    Ok(Some(RecordBatch::try_new(ANOMALIES.clone(), columns)?))
}

/// Builds the `nodes` table rows.
pub fn nodes_batch(rows: &[crate::store::state::NodeInfo]) -> Result<RecordBatch, ArrowError> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.node.as_str()))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.agent_version.as_str()))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.boot_id.as_str()))),
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.session))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.capabilities.join(",")))),
        Arc::new(TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.first_seen_ms)).with_timezone("UTC")),
        Arc::new(TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.last_seen_ms)).with_timezone("UTC")),
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.batches))),
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.samples))),
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
                    points: vec![Point { ts_ms: 1, value: 1.5 }, Point { ts_ms: 2, value: 2.5 }],
                },
                SeriesPoints {
                    key: SeriesKey::new("process/7", "proc.rss_bytes").with_label("comm", "sh"),
                    points: vec![Point { ts_ms: 1, value: 100.0 }],
                },
            ],
            events: vec![],
        };
        let decoded = to_arrow("n1", &batch).unwrap();
        let rb = decoded.samples.unwrap();
        assert_eq!(rb.num_rows(), 3);
        assert_eq!(decoded.n_samples, 3);
        assert!(decoded.events.is_none());
        let labels = rb.column(4).as_any().downcast_ref::<DictionaryArray<Int32Type>>().unwrap();
        let values = labels.values().as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(values.value(labels.keys().value(2) as usize), "comm=sh");
        assert_eq!(labels.keys().value(0), 0);
        assert!(rb.column(5).null_count() == 0);
    }
}
