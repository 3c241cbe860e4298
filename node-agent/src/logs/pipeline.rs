//! The running agent's log path, one call per collection tick: discover files
//! ([`super::discover`]), read what is new within a byte budget ([`super::tail`]), join
//! partial container lines ([`super::formats`]), mine and analyze per source
//! ([`super::analyzer`]), and turn each closed interval into samples and events for the
//! batcher (`collect/logs.rs` wires it in as a collector).
//!
//! Never blocks collection for long: each tick reads at most `max_bytes_per_tick` bytes
//! in all and `max_bytes_per_file` per file (the rest waits for the next tick; files are
//! served round robin so a busy one cannot starve the others), and a reader that lags by
//! more than `max_lag_bytes` jumps to the end of its file. Bounded state: `max_files`
//! files, one analyzer per source with at most `max_templates_per_source` templates,
//! `max_template_series` count series per source per interval, `max_new_template_events`
//! `log.template.new` events per interval. Records: `docs/detection.md`.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::model::{Event, SeriesKey, Severity};
use serde::Deserialize;

use super::analyzer::{AnalyzerConfig, IntervalReport, LogAnalyzer, LogAnomaly, LogAnomalyKind};
use super::discover::{self, Origin};
use super::formats::{Assembler, LogFormat};
use super::tail::{FileTailer, TailConfig};

/// Tunables of the agent's log path. Read from JSON by `node-agent run --log-config`;
/// absent fields take their defaults, unknown fields are an error.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Most files followed at once; more found by discovery are left out (counted).
    pub max_files: usize,
    /// Most bytes read from one file per tick.
    pub max_bytes_per_file: usize,
    /// Most bytes read from all files per tick.
    pub max_bytes_per_tick: usize,
    /// Longest line kept, bytes; longer ones are cut (counted).
    pub max_line_len: usize,
    /// Unread bytes past which a file's reader jumps to its end (counted).
    pub max_lag_bytes: u64,
    /// Seconds between scans of the log directories.
    pub rescan_secs: u64,
    /// Directory entries one scan may visit.
    pub max_scan_entries: usize,
    /// Templates kept per source (caps `analyzer.miner.max_templates`).
    pub max_templates_per_source: usize,
    /// `log.template.count` series per source per interval (the busiest; the rest are
    /// summed under `template=other`).
    pub max_template_series: usize,
    /// `log.template.new` events per interval over all sources (the rest are counted).
    pub max_new_template_events: usize,
    /// Bytes kept of each sample line and template in events.
    pub sample_bytes: usize,
    /// Miner and anomaly settings, per source.
    pub analyzer: AnalyzerConfig,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            max_files: 256,
            max_bytes_per_file: 256 * 1024,
            max_bytes_per_tick: 2 * 1024 * 1024,
            max_line_len: 16 * 1024,
            max_lag_bytes: 16 * 1024 * 1024,
            rescan_secs: 10,
            max_scan_entries: 20_000,
            max_templates_per_source: 1_000,
            max_template_series: 20,
            max_new_template_events: 50,
            sample_bytes: 512,
            analyzer: AnalyzerConfig::default(),
        }
    }
}

impl LogConfig {
    /// Checks ranges (for configs read from users).
    pub fn validate(&self) -> Result<(), LogConfigError> {
        let err = |field| Err(LogConfigError { field });
        if self.max_files == 0 {
            return err("max_files");
        }
        if self.max_bytes_per_file == 0 || self.max_bytes_per_tick == 0 {
            return err("max_bytes_per_file / max_bytes_per_tick");
        }
        if self.max_line_len == 0 {
            return err("max_line_len");
        }
        if self.rescan_secs == 0 {
            return err("rescan_secs");
        }
        if self.max_templates_per_source == 0 || self.analyzer.miner.max_templates == 0 {
            return err("max_templates_per_source / analyzer.miner.max_templates");
        }
        let sim = self.analyzer.miner.similarity;
        if !(sim.is_finite() && (0.0..=1.0).contains(&sim)) {
            return err("analyzer.miner.similarity");
        }
        let a = &self.analyzer;
        let in_range = a.burst_factor.is_finite()
            && a.burst_factor >= 1.0
            && a.burst_tail_probability > 0.0
            && a.burst_tail_probability < 1.0
            && a.baseline_alpha > 0.0
            && a.baseline_alpha <= 1.0;
        if !in_range {
            return err("analyzer.burst_factor / burst_tail_probability / baseline_alpha");
        }
        Ok(())
    }
}

/// A log setting out of its range.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("log config: {field} out of range")]
pub struct LogConfigError {
    /// The field(s) at fault.
    pub field: &'static str,
}

/// What the agent follows and how often it reports.
#[derive(Clone, Debug, PartialEq)]
pub struct LogInputs {
    /// Directories scanned for container (and other `*.log`) files.
    pub dirs: Vec<PathBuf>,
    /// Plain files always followed, whether they exist yet or not.
    pub files: Vec<PathBuf>,
    /// Which process writes some of `files` (path, command name): their records carry
    /// a `comm` label, so they are attributed to that process, not to the host.
    pub file_owners: Vec<(PathBuf, String)>,
    /// Length of one reporting interval (the agent uses its batch interval, so an
    /// interval's records travel in the batch closed on the same tick).
    pub interval: Duration,
    /// The collection tick, to decide which tick closes an interval.
    pub tick: Duration,
    /// Tunables.
    pub cfg: LogConfig,
}

/// Running totals, for the agent's `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Files followed now.
    pub files_followed: usize,
    /// Files found by the last scan but left out by `max_files`.
    pub files_over_limit: usize,
    /// Sources (analyzers) now.
    pub sources: usize,
    /// Templates kept over all sources now.
    pub templates: usize,
    /// Physical lines read.
    pub lines_read: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Lines cut to `max_line_len` (the rest of each was dropped).
    pub lines_truncated: u64,
    /// Bytes jumped over by lagging readers.
    pub bytes_skipped: u64,
    /// Messages mined (after joining partial lines).
    pub messages: u64,
    /// Templates evicted by the miners.
    pub templates_evicted: u64,
    /// `log.template.new` events dropped by `max_new_template_events`.
    pub template_events_dropped: u64,
    /// New-template anomalies reported.
    pub new_template_anomalies: u64,
    /// Error-burst anomalies reported.
    pub error_burst_anomalies: u64,
    /// Read errors (other than a vanished or unreadable file).
    pub read_errors: u64,
}

struct Followed {
    tailer: FileTailer,
    assembler: Assembler,
    entity: String,
    /// A `--log-file`: kept even while missing, never removed by a scan.
    pinned: bool,
    /// Tailer totals already added to the stats.
    seen_bytes: u64,
    seen_lines: u64,
    seen_truncated: u64,
    seen_skipped: u64,
}

struct Source {
    origin: Origin,
    analyzer: LogAnalyzer,
    files: usize,
}

/// The agent's log path. See the module documentation.
pub struct LogPipeline {
    inputs: LogInputs,
    tail_cfg: TailConfig,
    analyzer_cfg: AnalyzerConfig,
    files: Vec<Followed>,
    sources: HashMap<String, Source>,
    last_scan: Option<Instant>,
    interval_start: Option<Instant>,
    next_file: usize,
    lines: Vec<String>,
    stats: LogStats,
    evicted_by_gone: u64,
}

impl LogPipeline {
    /// A pipeline following `inputs` (nothing is read before the first tick).
    pub fn new(inputs: LogInputs) -> Self {
        let cfg = &inputs.cfg;
        let tail_cfg = TailConfig {
            max_bytes_per_poll: cfg.max_bytes_per_file.max(1),
            max_line_len: cfg.max_line_len.max(1),
            from_start: false,
            max_lag_bytes: cfg.max_lag_bytes,
        };
        let mut analyzer_cfg = cfg.analyzer.clone();
        analyzer_cfg.miner.max_templates = analyzer_cfg
            .miner
            .max_templates
            .min(cfg.max_templates_per_source)
            .max(1);
        analyzer_cfg.miner.max_line_len = analyzer_cfg.miner.max_line_len.min(cfg.max_line_len);
        let mut p = LogPipeline {
            inputs,
            tail_cfg,
            analyzer_cfg,
            files: Vec::new(),
            sources: HashMap::new(),
            last_scan: None,
            interval_start: None,
            next_file: 0,
            lines: Vec::new(),
            stats: LogStats::default(),
            evicted_by_gone: 0,
        };
        let pinned: Vec<PathBuf> = p.inputs.files.clone();
        for path in pinned {
            if p.files.len() >= p.inputs.cfg.max_files {
                p.stats.files_over_limit += 1;
                continue;
            }
            let origin = match p.inputs.file_owners.iter().find(|(f, _)| *f == path) {
                Some((_, comm)) => Origin::file_of(&path, comm),
                None => Origin::file(&path),
            };
            // Existing content is history: start at the end, like `tail -F`.
            p.follow(path, origin, false, true);
        }
        p
    }

    /// Totals so far.
    pub fn stats(&self) -> &LogStats {
        &self.stats
    }

    /// One tick at monotonic `mono` and wall time `now_ms`: scans when due, reads, mines,
    /// and appends samples (only when an interval closes) and events. Returns the read
    /// errors of the tick by file; a vanished or unreadable file is not an error.
    pub fn tick(
        &mut self,
        mono: Instant,
        now_ms: i64,
        values: &mut Vec<(SeriesKey, f64)>,
        events: &mut Vec<Event>,
    ) -> Vec<(PathBuf, io::Error)> {
        let rescan = Duration::from_secs(self.inputs.cfg.rescan_secs.max(1));
        match self.last_scan {
            Some(t) if mono.saturating_duration_since(t) < rescan => {}
            previous => {
                // The first scan's files hold history: start at their end. Files that
                // appear later are new containers: read them from their start.
                self.rescan(previous.is_some());
                self.last_scan = Some(mono);
            }
        }
        let errors = self.read(now_ms);
        let sample_bytes = self.inputs.cfg.sample_bytes;
        for src in self.sources.values_mut() {
            for a in src.analyzer.take_anomalies() {
                self.stats.new_template_anomalies += 1;
                events.push(anomaly_event(&src.origin, &a, sample_bytes));
            }
        }
        let start = *self.interval_start.get_or_insert(mono);
        if mono.saturating_duration_since(start) + self.inputs.tick / 2 >= self.inputs.interval {
            self.interval_start = Some(mono);
            self.close_interval(now_ms, values, events);
        }
        self.stats.files_followed = self.files.len();
        self.stats.sources = self.sources.len();
        self.stats.templates = self
            .sources
            .values()
            .map(|s| s.analyzer.miner().len())
            .sum();
        errors
    }

    fn follow(&mut self, path: PathBuf, origin: Origin, from_start: bool, pinned: bool) {
        let entity = origin.entity.clone();
        let src = self
            .sources
            .entry(entity.clone())
            .or_insert_with(|| Source {
                origin,
                analyzer: LogAnalyzer::new(self.analyzer_cfg.clone()),
                files: 0,
            });
        src.files += 1;
        let cfg = TailConfig {
            from_start,
            ..self.tail_cfg.clone()
        };
        self.files.push(Followed {
            tailer: FileTailer::new(path, cfg),
            assembler: Assembler::new(LogFormat::Auto, self.tail_cfg.max_line_len),
            entity,
            pinned,
            seen_bytes: 0,
            seen_lines: 0,
            seen_truncated: 0,
            seen_skipped: 0,
        });
    }

    fn rescan(&mut self, from_start: bool) {
        if self.inputs.dirs.is_empty() {
            return;
        }
        let exclude: HashSet<PathBuf> = self
            .files
            .iter()
            .filter(|f| f.pinned)
            .map(|f| {
                let p = f.tailer.path();
                std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
            })
            .collect();
        let found = discover::scan(
            &self.inputs.dirs,
            &exclude,
            self.inputs.cfg.max_scan_entries,
        );
        let wanted: HashSet<&PathBuf> = found.files.iter().map(|(p, _)| p).collect();
        // Gone files: their readers have had a whole rescan period to drain them.
        let mut gone = Vec::new();
        self.files.retain(|f| {
            let keep = f.pinned || wanted.contains(&f.tailer.path().to_path_buf());
            if !keep {
                gone.push(f.entity.clone());
            }
            keep
        });
        for entity in gone {
            if let Some(src) = self.sources.get_mut(&entity) {
                src.files = src.files.saturating_sub(1);
            }
        }
        let followed: HashSet<PathBuf> = self
            .files
            .iter()
            .map(|f| f.tailer.path().to_path_buf())
            .collect();
        let mut over = 0;
        for (path, origin) in found.files {
            if followed.contains(&path) {
                continue;
            }
            if self.files.len() >= self.inputs.cfg.max_files {
                over += 1;
                continue;
            }
            self.follow(path, origin, from_start, false);
        }
        self.stats.files_over_limit = over;
        if over > 0 || found.incomplete {
            tracing::debug!(
                over,
                incomplete = found.incomplete,
                "log discovery hit its limits"
            );
        }
    }

    fn read(&mut self, now_ms: i64) -> Vec<(PathBuf, io::Error)> {
        let mut errors = Vec::new();
        let n = self.files.len();
        if n == 0 {
            return errors;
        }
        let mut budget = self.inputs.cfg.max_bytes_per_tick.max(1);
        let mut lines = std::mem::take(&mut self.lines);
        let first = self.next_file % n;
        // Start one file further each tick, so under a tight budget every file gets
        // its turn at the head of the queue.
        self.next_file = (first + 1) % n;
        for k in 0..n {
            if budget == 0 {
                break;
            }
            let f = &mut self.files[(first + k) % n];
            lines.clear();
            if let Err(e) = f.tailer.poll_limited(&mut lines, budget)
                && !matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
                )
            {
                self.stats.read_errors += 1;
                errors.push((f.tailer.path().to_path_buf(), e));
            }
            let st = f.tailer.stats();
            let read = st.bytes_read.saturating_sub(f.seen_bytes);
            budget = budget.saturating_sub(usize::try_from(read).unwrap_or(usize::MAX));
            self.stats.bytes_read += read;
            self.stats.lines_read += st.lines.saturating_sub(f.seen_lines);
            self.stats.lines_truncated += st.truncated_lines.saturating_sub(f.seen_truncated);
            self.stats.bytes_skipped += st.skipped_bytes.saturating_sub(f.seen_skipped);
            (f.seen_bytes, f.seen_lines) = (st.bytes_read, st.lines);
            (f.seen_truncated, f.seen_skipped) = (st.truncated_lines, st.skipped_bytes);
            let Some(src) = self.sources.get_mut(&f.entity) else {
                continue;
            };
            for line in lines.drain(..) {
                if let Some(msg) = f.assembler.push(0, &line) {
                    self.stats.messages += 1;
                    src.analyzer.handle_line(now_ms, &msg.text);
                }
            }
        }
        self.lines = lines;
        errors
    }

    fn close_interval(
        &mut self,
        now_ms: i64,
        values: &mut Vec<(SeriesKey, f64)>,
        events: &mut Vec<Event>,
    ) {
        let cfg = &self.inputs.cfg;
        let mut event_budget = cfg.max_new_template_events;
        let mut entities: Vec<&String> = self.sources.keys().collect();
        // Sorted so the event budget goes to the same sources in the same order each time.
        entities.sort();
        let entities: Vec<String> = entities.into_iter().cloned().collect();
        for entity in entities {
            let Some(src) = self.sources.get_mut(&entity) else {
                continue;
            };
            let report = src.analyzer.poll_interval(now_ms);
            for a in &report.anomalies {
                match a.kind {
                    LogAnomalyKind::NewTemplate => self.stats.new_template_anomalies += 1,
                    LogAnomalyKind::ErrorBurst => self.stats.error_burst_anomalies += 1,
                }
            }
            let dropped = interval_records(
                &src.origin,
                &report,
                src.analyzer.miner().len(),
                cfg,
                &mut event_budget,
                values,
                events,
            );
            self.stats.template_events_dropped += dropped;
        }
        // Sources whose files are all gone report one last interval, then go.
        self.sources.retain(|_, s| {
            if s.files == 0 {
                self.evicted_by_gone += s.analyzer.miner().evictions();
            }
            s.files > 0
        });
        let live: u64 = self
            .sources
            .values()
            .map(|s| s.analyzer.miner().evictions())
            .sum();
        self.stats.templates_evicted = self.evicted_by_gone + live;
    }
}

/// The records of one source's closed interval: `log.lines`, `log.errors`,
/// `log.templates`, up to `max_template_series` `log.template.count{template=<id>}` (the
/// rest summed under `template=other`), a `log.template.new` event per new template
/// while `event_budget` lasts, and an `anomaly` event per anomaly. Returns the
/// `log.template.new` events dropped for want of budget.
pub fn interval_records(
    origin: &Origin,
    report: &IntervalReport,
    templates_kept: usize,
    cfg: &LogConfig,
    event_budget: &mut usize,
    values: &mut Vec<(SeriesKey, f64)>,
    events: &mut Vec<Event>,
) -> u64 {
    let key = |metric: &str| SeriesKey {
        entity: origin.entity.clone(),
        metric: metric.to_string(),
        labels: origin.labels(),
    };
    values.push((key("log.lines"), report.lines as f64));
    values.push((key("log.errors"), report.error_lines as f64));
    values.push((key("log.templates"), templates_kept as f64));
    // `counts` is sorted busiest first.
    let mut other = 0;
    for (idx, c) in report.counts.iter().enumerate() {
        if idx < cfg.max_template_series {
            let k = key("log.template.count").with_label("template", c.template_id.to_string());
            values.push((k, c.count as f64));
        } else {
            other += c.count;
        }
    }
    if other > 0 {
        let k = key("log.template.count").with_label("template", "other");
        values.push((k, other as f64));
    }
    let mut dropped = 0;
    for t in &report.new_templates {
        if *event_budget == 0 {
            dropped += 1;
            continue;
        }
        *event_budget -= 1;
        let count = report
            .counts
            .iter()
            .find(|c| c.template_id == t.template_id)
            .map_or(0, |c| c.count);
        let mut attrs = origin.attrs();
        attrs.push(("count".into(), count.to_string()));
        attrs.push(("template".into(), cut(&t.template, cfg.sample_bytes).into()));
        attrs.push(("template_id".into(), t.template_id.to_string()));
        for (i, s) in t.samples.iter().enumerate() {
            attrs.push((format!("sample_{}", i + 1), cut(s, cfg.sample_bytes).into()));
        }
        attrs.sort();
        events.push(Event {
            ts_ms: report.end_ms,
            entity: origin.entity.clone(),
            kind: "log.template.new".into(),
            severity: Severity::Info,
            message: format!(
                "new log template {} ({count} lines): {}",
                t.template_id,
                cut(&t.template, 200)
            ),
            attrs,
        });
    }
    for a in &report.anomalies {
        events.push(anomaly_event(origin, a, cfg.sample_bytes));
    }
    dropped
}

/// A log anomaly as an `anomaly` event with the same attributes as the metric
/// detectors' (they become a row of the aggregator's `anomalies` table), plus the
/// template, a sample line and the source's attribution.
pub fn anomaly_event(origin: &Origin, a: &LogAnomaly, sample_bytes: usize) -> Event {
    let (metric, detector, key) = match a.kind {
        LogAnomalyKind::NewTemplate => {
            let id = a.template_id.map_or_else(String::new, |id| id.to_string());
            let key = SeriesKey {
                entity: origin.entity.clone(),
                metric: "log.template.count".into(),
                labels: origin.labels(),
            }
            .with_label("template", id);
            ("log.template.count", "log.new_template", key)
        }
        LogAnomalyKind::ErrorBurst => {
            let key = SeriesKey {
                entity: origin.entity.clone(),
                metric: "log.errors".into(),
                labels: origin.labels(),
            };
            ("log.errors", "log.error_burst", key)
        }
    };
    let sample = a.samples.first().map(|s| cut(s, sample_bytes));
    let message = match (a.kind, sample) {
        (LogAnomalyKind::ErrorBurst, Some(s)) => format!(
            "{} {metric}: {}; first: {}",
            origin.entity,
            a.explanation,
            cut(s, 200)
        ),
        _ => format!("{} {metric}: {}", origin.entity, a.explanation),
    };
    let mut attrs = origin.attrs();
    attrs.extend([
        ("detector".to_string(), detector.to_string()),
        ("expected".to_string(), format!("{}", a.expected)),
        ("labels".to_string(), key.labels_text()),
        ("lower".to_string(), "0".to_string()),
        ("metric".to_string(), metric.to_string()),
        ("score".to_string(), format!("{:.4}", a.score)),
        ("upper".to_string(), format!("{}", a.upper)),
        ("value".to_string(), format!("{}", a.value)),
    ]);
    if let Some(s) = sample {
        attrs.push(("sample".into(), s.to_string()));
    }
    if let (Some(id), Some(t)) = (a.template_id, &a.template) {
        attrs.push(("template_id".into(), id.to_string()));
        attrs.push(("template".into(), cut(t, sample_bytes).to_string()));
    }
    attrs.sort();
    let severity = match a.kind {
        LogAnomalyKind::ErrorBurst if a.score >= 0.99 => Severity::Critical,
        _ => Severity::Warning,
    };
    Event {
        ts_ms: a.ts_ms,
        entity: origin.entity.clone(),
        kind: "anomaly".into(),
        severity,
        message,
        attrs,
    }
}

fn cut(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
