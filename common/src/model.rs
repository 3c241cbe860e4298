//! The record model: series of samples and discrete events, as collectors produce them.
//!
//! A series is identified by `node + entity + metric + labels`. The node is implied by the
//! batch that carries it (a node only ever writes its own records), so [`SeriesKey`] holds
//! the rest. Entities name what was measured: `host`, `process/<pid>`, `cgroup/<path>`,
//! `disk/<dev>`, `net/<iface>`, `fs/<mountpoint>`; docs/schema.md lists them with metrics.

use serde::{Deserialize, Serialize};

/// What identifies a series within one node.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SeriesKey {
    /// The measured thing: `host`, `process/1234`, `cgroup/system.slice/ssh.service`, ...
    pub entity: String,
    /// Metric name, dotted: `cpu.usage_pct`, `mem.rss_bytes`, ...
    pub metric: String,
    /// Extra dimensions, sorted by key, keys unique (e.g. `comm=nginx`).
    pub labels: Vec<(String, String)>,
}

impl SeriesKey {
    /// A key without labels.
    pub fn new(entity: impl Into<String>, metric: impl Into<String>) -> Self {
        SeriesKey {
            entity: entity.into(),
            metric: metric.into(),
            labels: Vec::new(),
        }
    }

    /// Adds a label, keeping labels sorted and keys unique (a repeated key replaces).
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let key = key.into();
        let value = value.into();
        match self.labels.binary_search_by(|(k, _)| k.as_str().cmp(&key)) {
            Ok(idx) => self.labels[idx].1 = value,
            Err(idx) => self.labels.insert(idx, (key, value)),
        }
        self
    }

    /// Labels rendered as `k=v,k2=v2` (the `labels` column of the `samples` table).
    pub fn labels_text(&self) -> String {
        let mut out = String::new();
        for (idx, (k, v)) in self.labels.iter().enumerate() {
            if idx > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push('=');
            out.push_str(v);
        }
        out
    }
}

/// One measurement: a value of a series at a time (milliseconds since the Unix epoch).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Milliseconds since the Unix epoch, UTC.
    pub ts_ms: i64,
    /// The value. Any f64, NaN and infinities included, round-trips bit for bit.
    pub value: f64,
}

/// A series and its points in one batch, oldest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeriesPoints {
    /// Which series.
    pub key: SeriesKey,
    /// Its points, in time order.
    pub points: Vec<Point>,
}

/// How bad an event is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Severity {
    /// Informational: a process started, a connection closed.
    Info,
    /// Worth a look: an anomaly, a retransmit burst.
    Warning,
    /// Something broke: an OOM kill, a crash loop.
    Critical,
}

impl Severity {
    /// Lower-case name, as stored in the `events` table.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// A discrete happening on a node: process exec/exit, OOM kill, anomaly, remediation result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Milliseconds since the Unix epoch, UTC.
    pub ts_ms: i64,
    /// What it happened to (same naming as [`SeriesKey::entity`]).
    pub entity: String,
    /// Dotted kind: `agent.started`, `process.exec`, `oom.kill`, `anomaly`, ...
    pub kind: String,
    /// How bad.
    pub severity: Severity,
    /// One human-readable line.
    pub message: String,
    /// Structured details, sorted by key.
    pub attrs: Vec<(String, String)>,
}

/// Everything one node sends in one batch: series with their points, and events.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// Series and points. A key appears at most once per batch.
    pub series: Vec<SeriesPoints>,
    /// Events, in time order.
    pub events: Vec<Event>,
}

impl Batch {
    /// Number of samples (points over all series).
    pub fn n_samples(&self) -> usize {
        self.series.iter().map(|s| s.points.len()).sum()
    }
}
