//! Per-interval log statistics and log anomalies, on top of the template miner.
//!
//! The agent feeds every message with [`LogAnalyzer::handle_line`] and closes an interval
//! with [`LogAnalyzer::poll_interval`] (say every 10 s), which returns per-template counts,
//! the templates first seen in the interval with up to `samples_per_template` sample lines,
//! and anomaly records:
//!
//! - `NewTemplate`: a template never seen before, once the miner is past its learning
//!   period (`new_template_grace_lines`), at most `max_new_template_anomalies` an interval;
//! - `ErrorBurst`: the count of error-level lines (ERROR, FATAL, panic, Exception,
//!   Traceback, `level=error`, klog `E0101`, ...) jumps above its learned per-interval rate:
//!   a Poisson tail test against an exponentially weighted baseline, with a minimum count
//!   and ratio, and no second report until an interval is calm again.
//!
//! The running agent also takes new-template anomalies as they happen
//! ([`LogAnalyzer::take_anomalies`]) so they need not wait for the interval's end.

use std::collections::HashMap;

use serde::Deserialize;

use super::miner::{MatchResult, MinerConfig, TemplateMiner};

/// Analyzer settings. Read from JSON as the `analyzer` object of `node-agent run
/// --log-config`; absent fields take their defaults, unknown fields are an error.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnalyzerConfig {
    /// Template miner settings.
    pub miner: MinerConfig,
    /// Sample lines kept per new template.
    pub samples_per_template: usize,
    /// New templates sampled per interval (the rest are counted only).
    pub max_sampled_templates: usize,
    /// Lines the miner learns from before new templates are anomalies.
    pub new_template_grace_lines: u64,
    /// New-template anomalies per interval; more are counted as suppressed.
    pub max_new_template_anomalies: usize,
    /// Fewest error lines in an interval for a burst.
    pub burst_min_errors: u64,
    /// Fewest times the baseline rate for a burst.
    pub burst_factor: f64,
    /// Poisson tail probability under the baseline at which an interval is a burst.
    pub burst_tail_probability: f64,
    /// Baseline smoothing per interval.
    pub baseline_alpha: f64,
}

impl Default for AnalyzerConfig {
    fn default() -> Self {
        AnalyzerConfig {
            miner: MinerConfig::default(),
            samples_per_template: 3,
            max_sampled_templates: 100,
            new_template_grace_lines: 1000,
            max_new_template_anomalies: 10,
            burst_min_errors: 10,
            burst_factor: 4.0,
            burst_tail_probability: 1e-4,
            baseline_alpha: 0.1,
        }
    }
}

/// Kind of log anomaly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogAnomalyKind {
    /// A template not seen before.
    NewTemplate,
    /// Error-level lines well above their usual rate.
    ErrorBurst,
}

/// One log anomaly.
#[derive(Clone, Debug, PartialEq)]
pub struct LogAnomaly {
    /// What happened.
    pub kind: LogAnomalyKind,
    /// Time of the line (new template) or the interval's end (burst).
    pub ts_ms: i64,
    /// Score in `[0, 1]`.
    pub score: f64,
    /// The template, for new templates.
    pub template_id: Option<u64>,
    /// Its text.
    pub template: Option<String>,
    /// One readable sentence.
    pub explanation: String,
    /// Example lines (the new template's first line, or the burst's first error lines).
    pub samples: Vec<String>,
    /// What was seen: 1 line of the new template, or the interval's error-level lines.
    pub value: f64,
    /// What was expected: 0 lines of an unknown template, or the baseline error count.
    pub expected: f64,
    /// Largest unremarkable value: 0 for a new template, the burst threshold for errors.
    pub upper: f64,
}

/// Lines of one template in an interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateCount {
    /// Template id.
    pub template_id: u64,
    /// Template text at the end of the interval.
    pub template: String,
    /// Lines.
    pub count: u64,
}

/// A template first seen in the interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewTemplate {
    /// Template id.
    pub template_id: u64,
    /// Template text at the end of the interval.
    pub template: String,
    /// The first lines that matched it.
    pub samples: Vec<String>,
}

/// What one interval looked like.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IntervalReport {
    /// Interval start (the previous poll, or the first line).
    pub start_ms: i64,
    /// Interval end (this poll).
    pub end_ms: i64,
    /// Lines handled.
    pub lines: u64,
    /// Error-level lines.
    pub error_lines: u64,
    /// Per-template counts, most frequent first.
    pub counts: Vec<TemplateCount>,
    /// Templates first seen in the interval (up to `max_sampled_templates`).
    pub new_templates: Vec<NewTemplate>,
    /// Anomalies.
    pub anomalies: Vec<LogAnomaly>,
    /// Anomalies dropped by the per-interval limit.
    pub suppressed_anomalies: u64,
    /// Templates evicted by the miner so far.
    pub templates_evicted: u64,
}

/// Mines templates and turns them into interval reports. See the module documentation.
pub struct LogAnalyzer {
    cfg: AnalyzerConfig,
    miner: TemplateMiner,
    lines_seen: u64,
    start_ms: Option<i64>,
    counts: HashMap<u64, u64>,
    new_order: Vec<u64>,
    samples: HashMap<u64, Vec<String>>,
    lines: u64,
    error_lines: u64,
    error_samples: Vec<String>,
    anomalies: Vec<LogAnomaly>,
    new_anomalies: usize,
    suppressed: u64,
    error_rate: f64,
    intervals: u64,
    in_burst: bool,
}

impl LogAnalyzer {
    /// A fresh analyzer.
    pub fn new(cfg: AnalyzerConfig) -> Self {
        let miner = TemplateMiner::new(cfg.miner.clone());
        LogAnalyzer {
            cfg,
            miner,
            lines_seen: 0,
            start_ms: None,
            counts: HashMap::new(),
            new_order: Vec::new(),
            samples: HashMap::new(),
            lines: 0,
            error_lines: 0,
            error_samples: Vec::new(),
            anomalies: Vec::new(),
            new_anomalies: 0,
            suppressed: 0,
            error_rate: 0.0,
            intervals: 0,
            in_burst: false,
        }
    }

    /// The miner.
    pub fn miner(&self) -> &TemplateMiner {
        &self.miner
    }

    /// Handles one message seen at `ts_ms`.
    pub fn handle_line(&mut self, ts_ms: i64, line: &str) -> MatchResult {
        self.start_ms.get_or_insert(ts_ms);
        let res = self.miner.add(line);
        self.lines_seen += 1;
        self.lines += 1;
        if is_error_line(line) {
            self.error_lines += 1;
            if self.error_samples.len() < self.cfg.samples_per_template {
                self.error_samples.push(cut(line, 1024).to_string());
            }
        }
        *self.counts.entry(res.template_id).or_insert(0) += 1;
        if res.is_new && self.new_order.len() < self.cfg.max_sampled_templates {
            self.new_order.push(res.template_id);
            self.samples.insert(res.template_id, Vec::new());
        }
        if let Some(s) = self.samples.get_mut(&res.template_id)
            && s.len() < self.cfg.samples_per_template
        {
            s.push(cut(line, 1024).to_string());
        }
        if res.is_new && self.lines_seen > self.cfg.new_template_grace_lines {
            if self.new_anomalies < self.cfg.max_new_template_anomalies {
                self.new_anomalies += 1;
                self.anomalies.push(LogAnomaly {
                    kind: LogAnomalyKind::NewTemplate,
                    ts_ms,
                    score: 1.0,
                    template_id: Some(res.template_id),
                    template: Some(res.template.clone()),
                    explanation: format!(
                        "new log pattern after {} lines: {}",
                        self.lines_seen - 1,
                        cut(&res.template, 200)
                    ),
                    samples: vec![cut(line, 1024).to_string()],
                    value: 1.0,
                    expected: 0.0,
                    upper: 0.0,
                });
            } else {
                self.suppressed += 1;
            }
        }
        res
    }

    /// Takes the anomalies found so far in this interval (new templates; bursts are only
    /// known at the interval's end), so they can be reported without waiting for it.
    pub fn take_anomalies(&mut self) -> Vec<LogAnomaly> {
        std::mem::take(&mut self.anomalies)
    }

    /// Closes the interval at `now_ms` and reports it.
    pub fn poll_interval(&mut self, now_ms: i64) -> IntervalReport {
        let start_ms = self.start_ms.take().unwrap_or(now_ms);
        if let Some(burst) = self.check_burst(now_ms) {
            self.anomalies.push(burst);
        }
        let mut counts: Vec<TemplateCount> = self
            .counts
            .drain()
            .map(|(id, count)| TemplateCount {
                template_id: id,
                template: self.miner.template(id).unwrap_or_default(),
                count,
            })
            .collect();
        counts.sort_unstable_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then(a.template_id.cmp(&b.template_id))
        });
        let new_templates = self
            .new_order
            .drain(..)
            .map(|id| NewTemplate {
                template_id: id,
                template: self.miner.template(id).unwrap_or_default(),
                samples: self.samples.remove(&id).unwrap_or_default(),
            })
            .collect();
        self.samples.clear();
        let report = IntervalReport {
            start_ms,
            end_ms: now_ms,
            lines: self.lines,
            error_lines: self.error_lines,
            counts,
            new_templates,
            anomalies: std::mem::take(&mut self.anomalies),
            suppressed_anomalies: std::mem::take(&mut self.suppressed),
            templates_evicted: self.miner.evictions(),
        };
        self.lines = 0;
        self.error_lines = 0;
        self.error_samples.clear();
        self.new_anomalies = 0;
        report
    }

    fn check_burst(&mut self, now_ms: i64) -> Option<LogAnomaly> {
        let c = self.error_lines as f64;
        // Prior: one error line per interval, until a few intervals are known.
        let base = if self.intervals == 0 {
            1.0
        } else {
            self.error_rate.max(0.1)
        };
        let surprise = if c > base {
            c * (c / base).ln() - c + base
        } else {
            0.0
        };
        let p = (-surprise).exp();
        let burst = self.error_lines >= self.cfg.burst_min_errors
            && c >= self.cfg.burst_factor * base
            && p <= self.cfg.burst_tail_probability;
        // Learn the baseline, but a burst teaches it only a capped amount.
        let learned = c.min(2.0 * base + 1.0);
        self.error_rate = if self.intervals == 0 {
            learned
        } else {
            self.error_rate + self.cfg.baseline_alpha * (learned - self.error_rate)
        };
        self.intervals += 1;
        let report = burst && !self.in_burst;
        self.in_burst = burst;
        // The smallest count that passes the ratio and minimum tests (the Poisson test
        // may ask for more): what "unremarkable" ends at.
        let upper = (self.cfg.burst_factor * base)
            .max(self.cfg.burst_min_errors as f64)
            .ceil();
        report.then(|| LogAnomaly {
            kind: LogAnomalyKind::ErrorBurst,
            ts_ms: now_ms,
            score: (-p / self.cfg.burst_tail_probability).exp2().clamp(0.0, 1.0),
            template_id: None,
            template: None,
            explanation: format!(
                "{} error-level lines in the interval against about {:.1} usually (Poisson tail probability {:.1e})",
                self.error_lines, base, p
            ),
            samples: std::mem::take(&mut self.error_samples),
            value: c,
            expected: base,
            upper,
        })
    }
}

/// True for error-level lines: `ERROR`, `FATAL`, `CRITICAL`, `PANIC`, `SEVERE`, `panic:`,
/// `Exception`, `Traceback`, `level=error|fatal|panic|critical`, `[error]`/`[crit]`/...,
/// `"level":"error"`, and klog's `E0102 15:04:05` / `F0102` prefixes.
pub fn is_error_line(line: &str) -> bool {
    let b = line.as_bytes();
    if b.len() > 6
        && matches!(b[0], b'E' | b'F')
        && b[1..5].iter().all(u8::is_ascii_digit)
        && b[5] == b' '
    {
        return true;
    }
    for word in line.split(|c: char| !c.is_ascii_alphanumeric() && c != ':') {
        match word {
            "ERROR" | "ERR" | "FATAL" | "CRITICAL" | "CRIT" | "PANIC" | "SEVERE" | "EMERG"
            | "panic:" | "Traceback" => {
                return true;
            }
            w if w.ends_with("Exception") || w.ends_with("Exception:") => return true,
            _ => {}
        }
    }
    let lower = line.to_ascii_lowercase();
    [
        "level=error",
        "level=fatal",
        "level=panic",
        "level=critical",
        "\"level\":\"error\"",
        "\"level\":\"fatal\"",
    ]
    .iter()
    .any(|p| lower.contains(p))
        || ["[error]", "[crit]", "[alert]", "[emerg]", "[fatal]"]
            .iter()
            .any(|p| lower.contains(p))
}

fn cut(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
