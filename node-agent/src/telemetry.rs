//! The agent's own health: Prometheus metrics and `/healthz` on the metrics port.

use std::net::SocketAddr;

use axum::Router;
use axum::http::header;
use axum::routing::get;
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Every metric the agent keeps about itself. Cheap to clone.
#[derive(Clone)]
pub struct AgentMetrics {
    registry: Registry,
    /// Samples collected.
    pub samples_collected: IntCounter,
    /// Collector errors, by collector.
    pub collector_errors: IntCounterVec,
    /// 1 while a collector runs, 0 when disabled.
    pub collector_up: IntGaugeVec,
    /// Time one tick of all collectors takes.
    pub collect_seconds: Histogram,
    /// Batches written to the network (resends included).
    pub batches_sent: IntCounter,
    /// Batches acked.
    pub batches_acked: IntCounter,
    /// Batches shed from a full outbox.
    pub batches_shed: IntCounter,
    /// Samples in shed batches.
    pub samples_shed: IntCounter,
    /// Batches refused by the aggregator.
    pub batches_nacked: IntCounter,
    /// Payload bytes written (resends included).
    pub payload_bytes_sent: IntCounter,
    /// Payload bytes of batches built (each batch once).
    pub payload_bytes_built: IntCounter,
    /// Samples in batches built.
    pub samples_built: IntCounter,
    /// Batches waiting for an ack.
    pub outbox_batches: IntGauge,
    /// Bytes waiting for an ack.
    pub outbox_bytes: IntGauge,
    /// Bytes in the on-disk spool.
    pub spool_bytes: IntGauge,
    /// Damaged spool segments quarantined at start.
    pub spool_quarantined: IntCounter,
    /// Spool appends that failed (batch kept in memory only).
    pub spool_write_errors: IntGauge,
    /// Anomaly episodes opened.
    pub anomalies: IntCounter,
    /// Series with detector state.
    pub detected_series: IntGauge,
    /// 1 while connected to the aggregator.
    pub connected: IntGauge,
    /// Failed connection attempts.
    pub connect_failures: IntCounter,
    /// Agent CPU time (user+sys), seconds.
    pub process_cpu_seconds: prometheus::Gauge,
    /// Agent resident memory, bytes.
    pub process_rss_bytes: IntGauge,
    /// Log files followed now.
    pub log_files_followed: IntGauge,
    /// Log files found but not followed because of the file limit.
    pub log_files_over_limit: IntGauge,
    /// Log sources (containers, files) with an analyzer.
    pub log_sources: IntGauge,
    /// Log templates kept over all sources.
    pub log_templates: IntGauge,
    /// Log templates evicted by the per-source bound.
    pub log_templates_evicted: IntCounter,
    /// Physical log lines read.
    pub log_lines_read: IntCounter,
    /// Log bytes read.
    pub log_bytes_read: IntCounter,
    /// Log lines dropped whole or in part, by reason (`too_long`: cut to the maximum
    /// length; `over_budget`: `log.template.new` events past the per-interval limit).
    pub log_lines_dropped: IntCounterVec,
    /// Log bytes jumped over by readers lagging past their limit.
    pub log_bytes_skipped: IntCounter,
    /// Log anomalies reported, by kind (`new_template`, `error_burst`).
    pub log_anomalies: IntCounterVec,
}

impl AgentMetrics {
    /// Creates and registers everything.
    pub fn new() -> Self {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("static metric definition");
                registry
                    .register(Box::new(m.clone()))
                    .expect("unique metric name");
                m
            }};
        }
        registry
            .register(Box::new(crate::collect::ebpf::EVENTS_DROPPED.clone()))
            .expect("unique metric name");
        AgentMetrics {
            samples_collected: reg!(IntCounter::new(
                "agent_samples_collected_total",
                "Samples collected."
            )),
            collector_errors: reg!(IntCounterVec::new(
                Opts::new("agent_collector_errors_total", "Collector errors."),
                &["collector"]
            )),
            collector_up: reg!(IntGaugeVec::new(
                Opts::new("agent_collector_up", "1 while the collector runs."),
                &["collector"]
            )),
            collect_seconds: reg!(Histogram::with_opts(
                HistogramOpts::new("agent_collect_seconds", "Duration of one collection tick.")
                    .buckets(vec![
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0
                    ])
            )),
            batches_sent: reg!(IntCounter::new(
                "agent_batches_sent_total",
                "Batches written to the aggregator, resends included."
            )),
            batches_acked: reg!(IntCounter::new(
                "agent_batches_acked_total",
                "Batches acked as durable."
            )),
            batches_shed: reg!(IntCounter::new(
                "agent_batches_shed_total",
                "Batches dropped because the outbox was full."
            )),
            samples_shed: reg!(IntCounter::new(
                "agent_samples_shed_total",
                "Samples in dropped batches."
            )),
            batches_nacked: reg!(IntCounter::new(
                "agent_batches_nacked_total",
                "Batches the aggregator refused."
            )),
            payload_bytes_sent: reg!(IntCounter::new(
                "agent_payload_bytes_sent_total",
                "Batch payload bytes written, resends included."
            )),
            payload_bytes_built: reg!(IntCounter::new(
                "agent_payload_bytes_built_total",
                "Batch payload bytes encoded."
            )),
            samples_built: reg!(IntCounter::new(
                "agent_samples_built_total",
                "Samples encoded into batches."
            )),
            outbox_batches: reg!(IntGauge::new(
                "agent_outbox_batches",
                "Batches waiting for an ack."
            )),
            outbox_bytes: reg!(IntGauge::new(
                "agent_outbox_bytes",
                "Payload bytes waiting for an ack."
            )),
            spool_bytes: reg!(IntGauge::new(
                "agent_spool_bytes",
                "Bytes in the on-disk spool."
            )),
            spool_quarantined: reg!(IntCounter::new(
                "agent_spool_quarantined_segments_total",
                "Damaged spool segments quarantined at start."
            )),
            spool_write_errors: reg!(IntGauge::new(
                "agent_spool_write_errors_total",
                "Spool appends that failed; those batches were kept in memory only."
            )),
            anomalies: reg!(IntCounter::new(
                "agent_anomalies_total",
                "Anomaly episodes opened by the on-node detectors."
            )),
            detected_series: reg!(IntGauge::new(
                "agent_detected_series",
                "Series with detector state."
            )),
            connected: reg!(IntGauge::new(
                "agent_connected",
                "1 while connected to the aggregator."
            )),
            connect_failures: reg!(IntCounter::new(
                "agent_connect_failures_total",
                "Failed or lost connections."
            )),
            process_cpu_seconds: reg!(prometheus::Gauge::new(
                "agent_process_cpu_seconds",
                "Agent CPU time, user+system."
            )),
            process_rss_bytes: reg!(IntGauge::new(
                "agent_process_resident_bytes",
                "Agent resident memory."
            )),
            log_files_followed: reg!(IntGauge::new(
                "agent_log_files_followed",
                "Log files followed."
            )),
            log_files_over_limit: reg!(IntGauge::new(
                "agent_log_files_over_limit",
                "Log files found at the last scan but not followed (file limit)."
            )),
            log_sources: reg!(IntGauge::new(
                "agent_log_sources",
                "Log sources (containers, files) being mined."
            )),
            log_templates: reg!(IntGauge::new(
                "agent_log_templates",
                "Log templates kept, over all sources."
            )),
            log_templates_evicted: reg!(IntCounter::new(
                "agent_log_templates_evicted_total",
                "Log templates evicted by the per-source template limit."
            )),
            log_lines_read: reg!(IntCounter::new(
                "agent_log_lines_read_total",
                "Physical log lines read."
            )),
            log_bytes_read: reg!(IntCounter::new(
                "agent_log_bytes_read_total",
                "Log bytes read."
            )),
            log_lines_dropped: reg!(IntCounterVec::new(
                Opts::new(
                    "agent_log_lines_dropped_total",
                    "Log lines lost whole or in part: too_long (cut to the maximum length), over_budget (new-template events past the per-interval limit)."
                ),
                &["reason"]
            )),
            log_bytes_skipped: reg!(IntCounter::new(
                "agent_log_bytes_skipped_total",
                "Log bytes jumped over because a reader lagged past its limit."
            )),
            log_anomalies: reg!(IntCounterVec::new(
                Opts::new(
                    "agent_log_anomalies_total",
                    "Log anomalies reported, by kind."
                ),
                &["kind"]
            )),
            registry,
        }
    }

    /// Refreshes the agent's own CPU and RSS from /proc/self/stat.
    pub fn refresh_self(&self) {
        let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
            return;
        };
        // Fields after the parenthesised comm; utime and stime are fields 14 and 15, rss 24.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            return;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let num = |idx: usize| {
            fields
                .get(idx)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // SAFETY: sysconf only reads a configuration value.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        if ticks > 0 {
            self.process_cpu_seconds
                .set((num(11) + num(12)) / ticks as f64);
        }
        self.process_rss_bytes
            .set((num(21) * page.max(0) as f64) as i64);
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        self.refresh_self();
        let mut out = String::new();
        let _ = prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves `/metrics` and `/healthz` until `shutdown` fires.
pub async fn serve(
    addr: SocketAddr,
    metrics: AgentMetrics,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind metrics on {addr}: {e}"))?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move || {
                let body = metrics.render();
                async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body) }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await?;
    Ok(())
}
