//! The log collector: runs the agent's log path ([`crate::logs::pipeline`]) once per
//! collection tick, beside the metric collectors, so its samples and events travel in the
//! same batches (container and file logs → **`logs`** → detection and `ship`).
//!
//! It reads within a byte budget per tick and never waits on anything but local files,
//! so it cannot hold up the other collectors for long. Samples appear when a reporting
//! interval closes; events (new templates, anomalies) through [`Collector::drain_events`].

use std::time::Instant;

use common::model::{Event, SeriesKey};

use super::{CollectError, Collector};
use crate::logs::{LogInputs, LogPipeline, LogStats};
use crate::telemetry::AgentMetrics;

/// See the module documentation.
pub struct LogCollector {
    pipeline: LogPipeline,
    metrics: AgentMetrics,
    events: Vec<Event>,
    published: LogStats,
}

impl LogCollector {
    /// A collector following `inputs`, reporting its own health into `metrics`.
    pub fn new(inputs: LogInputs, metrics: AgentMetrics) -> Self {
        LogCollector {
            pipeline: LogPipeline::new(inputs),
            metrics,
            events: Vec::new(),
            published: LogStats::default(),
        }
    }

    /// Moves the pipeline's totals to `/metrics` (counters by their increase).
    fn publish(&mut self) {
        let s = self.pipeline.stats().clone();
        let p = &self.published;
        let m = &self.metrics;
        m.log_files_followed.set(s.files_followed as i64);
        m.log_files_over_limit.set(s.files_over_limit as i64);
        m.log_sources.set(s.sources as i64);
        m.log_templates.set(s.templates as i64);
        let inc = |c: &prometheus::IntCounter, now: u64, before: u64| {
            c.inc_by(now.saturating_sub(before));
        };
        inc(&m.log_lines_read, s.lines_read, p.lines_read);
        inc(&m.log_bytes_read, s.bytes_read, p.bytes_read);
        inc(&m.log_bytes_skipped, s.bytes_skipped, p.bytes_skipped);
        inc(
            &m.log_templates_evicted,
            s.templates_evicted,
            p.templates_evicted,
        );
        let dropped = |reason: &str| m.log_lines_dropped.with_label_values(&[reason]);
        inc(&dropped("too_long"), s.lines_truncated, p.lines_truncated);
        inc(
            &dropped("over_budget"),
            s.template_events_dropped,
            p.template_events_dropped,
        );
        let anomalies = |kind: &str| m.log_anomalies.with_label_values(&[kind]);
        let new_templates = s
            .new_template_anomalies
            .saturating_sub(p.new_template_anomalies);
        let bursts = s
            .error_burst_anomalies
            .saturating_sub(p.error_burst_anomalies);
        anomalies("new_template").inc_by(new_templates);
        anomalies("error_burst").inc_by(bursts);
        // Log anomalies are anomalies too: one total for all detectors.
        m.anomalies.inc_by(new_templates + bursts);
        self.published = s;
    }
}

impl Collector for LogCollector {
    fn name(&self) -> &'static str {
        "logs"
    }

    fn collect(
        &mut self,
        mono: Instant,
        out: &mut Vec<(SeriesKey, f64)>,
    ) -> Result<(), CollectError> {
        // Events carry their own time and collectors are not handed the tick's wall
        // time, so read it here (the samples are still stamped by the caller).
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let errors = self.pipeline.tick(mono, now_ms, out, &mut self.events);
        self.publish();
        match errors.into_iter().next() {
            Some((path, e)) => Err(CollectError::io(&path, e)),
            None => Ok(()),
        }
    }

    fn drain_events(&mut self, out: &mut Vec<Event>) {
        out.append(&mut self.events);
    }
}
