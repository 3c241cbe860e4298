//! The aggregator's own metrics, served on `/metrics` (Prometheus text format).

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Every metric the aggregator keeps about itself. Cheap to clone (handles).
#[derive(Clone)]
pub struct Metrics {
    /// Where they are registered.
    pub registry: Registry,
    /// Batches by outcome: stored, duplicate, rejected.
    pub batches: IntCounterVec,
    /// Samples stored.
    pub samples: IntCounter,
    /// Bytes of batch payloads received.
    pub payload_bytes: IntCounter,
    /// Connections by outcome: accepted, refused_tls, refused_hello, shed.
    pub connections: IntCounterVec,
    /// Connections open now.
    pub connections_open: IntGauge,
    /// Rows in memory (hot + being flushed).
    pub hot_rows: IntGauge,
    /// Flushes to Parquet done.
    pub flushes: IntCounter,
    /// Flushes that failed (retried).
    pub flush_errors: IntCounter,
    /// Rows written to Parquet.
    pub flushed_rows: IntCounter,
    /// Parquet files listed in the manifest.
    pub parquet_files: IntGauge,
}

impl Metrics {
    /// Creates and registers everything on a fresh registry.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("static metric definition");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric name");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("static metric definition");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric name");
            g
        };
        let counter_vec = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label])
                .expect("static metric definition");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric name");
            c
        };
        Metrics {
            batches: counter_vec(
                "aggregator_batches_total",
                "Batches received, by outcome.",
                "outcome",
            ),
            samples: counter("aggregator_samples_stored_total", "Samples made durable."),
            payload_bytes: counter(
                "aggregator_payload_bytes_total",
                "Compressed batch bytes received.",
            ),
            connections: counter_vec(
                "aggregator_connections_total",
                "Node connections, by outcome.",
                "outcome",
            ),
            connections_open: gauge("aggregator_connections_open", "Node connections open now."),
            hot_rows: gauge(
                "aggregator_hot_rows",
                "Rows held in memory, not yet in Parquet.",
            ),
            flushes: counter(
                "aggregator_flushes_total",
                "Flushes of hot data to Parquet.",
            ),
            flush_errors: counter(
                "aggregator_flush_errors_total",
                "Failed flushes (retried later).",
            ),
            flushed_rows: counter("aggregator_flushed_rows_total", "Rows written to Parquet."),
            parquet_files: gauge("aggregator_parquet_files", "Parquet files in the manifest."),
            registry,
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let encoder = prometheus::TextEncoder::new();
        // Encoding our own registered families into a String cannot fail.
        let _ = encoder.encode_utf8(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
