//! Root-cause analysis: ranks the components most likely to have caused an incident.
//!
//! Where it sits: after the store and correlation. The online path (API) reads the
//! incident's series, the call graph (learned from eBPF TCP connections) and the
//! evidence events from the store and calls [`rank`]; the offline path
//! (`aggregator rca`) reads the same three things from CSV files through
//! [`parse_wide_csv`] and [`parse_edges_csv`]. Both run the same engine.
//!
//! The engine is sans-IO and deterministic: no clock, no files, no model. It is plain
//! arithmetic over the input, so the same input gives the same ranking byte for byte.
//!
//! Pipeline (see `docs/rca.md`):
//! 1. [`onset`]: find when the incident started (or take the given window).
//! 2. [`score`]: per series, a robust z-score of the anomalous period against the
//!    baseline, its direction and its own onset; per component, a strength built from
//!    its strongest series (resource saturation counts more than latency) and events.
//! 3. [`graph`]: symptoms propagate from callees to callers, so a caller whose only
//!    anomalies are latency/errors while one of its callees is anomalous is demoted.
//! 4. [`explain`]: one plain-English paragraph per candidate.

mod classify;
mod csv;
mod explain;
mod graph;
mod host;
mod onset;
mod score;
mod stats;
#[cfg(test)]
mod tests;

pub use classify::{MetricClass, classify_metric};
pub use csv::{TimestampError, parse_edges_csv, parse_timestamp, parse_wide_csv};

/// One metric of one component over time.
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesData {
    pub component: String,
    pub metric: String,
    /// `(timestamp ms, value)`, sorted by timestamp. Unsorted input is sorted (a copy)
    /// by [`rank`]; non-finite values are ignored.
    pub points: Vec<(i64, f64)>,
}

/// A call from `caller` to `callee` (call direction; symptoms travel the other way).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallEdge {
    pub caller: String,
    pub callee: String,
}

/// Something that happened to a component: `kind` is e.g. `oom_kill`, `crash`,
/// `restart`, `error_burst`, `anomaly`. `score` is a confidence in `(0, 1]`; values
/// above 1 count as 1, and zero, negative or non-finite scores count as 1 ("unscored").
#[derive(Clone, Debug, PartialEq)]
pub struct EvidenceEvent {
    pub component: String,
    pub ts_ms: i64,
    pub kind: String,
    pub detail: String,
    pub score: f64,
}

/// Everything the engine looks at for one incident.
#[derive(Clone, Debug, Default)]
pub struct RcaInput {
    pub series: Vec<SeriesData>,
    /// Caller -> callee. May be empty: then no propagation reasoning is done.
    pub edges: Vec<CallEdge>,
    /// The incident window in ms (inclusive). Data before `window.0` is the baseline.
    /// `None`: the onset is detected from the data and the window runs to the end.
    pub window: Option<(i64, i64)>,
    pub events: Vec<EvidenceEvent>,
}

/// Tuning knobs. The defaults are what the tests and `docs/rca.md` describe.
#[derive(Clone, Debug)]
pub struct RcaConfig {
    /// Series beyond this many (in input order) are ignored.
    pub max_series: usize,
    /// Longer series are decimated by an even stride down to this many points.
    pub max_points_per_series: usize,
    /// A series needs this many baseline points to be scored.
    pub min_baseline_points: usize,
    /// A deviation must hold for this many consecutive points to count, so a single
    /// spike (or `persist_points - 1` of them) never makes a series anomalous.
    pub persist_points: usize,
    /// Robust z (deviations in baseline IQRs) above which a series is anomalous.
    pub min_z: f64,
    /// A series' own onset is where its sustained deviation first reaches
    /// `max(min_z, onset_frac * peak)`.
    pub onset_frac: f64,
    /// Robust z mapped to 0.5 by the saturating strength curve `z / (z + z_half)`.
    pub z_half: f64,
    /// Robust z values are capped here (flat baselines give huge ones).
    pub z_cap: f64,
    /// Scale floor relative to the baseline level, so a flat baseline does not divide
    /// by zero and a 1% wiggle on a flat line is not infinitely surprising.
    pub rel_eps: f64,
    /// Change-point statistic (standardized mean shift) a series must reach to take
    /// part in onset detection.
    pub cp_threshold: f64,
    /// ... and its mean shift, in noise sigmas.
    pub cp_min_shift: f64,
    /// Shortest segment on either side of a change point, in points.
    pub cp_min_segment: usize,
    /// Change points within this span of each other count as one incident; the onset
    /// is the earliest change point of the densest such cluster.
    pub onset_cluster_ms: i64,
    /// A series whose own change point lies up to this long before the onset, and
    /// whose deviation keeps growing into the incident (a leak, a filling disk), is
    /// judged against the baseline before its own change, with that earlier onset.
    pub precursor_lookback_ms: i64,
    /// A callee explains a caller's symptom if it turned anomalous no later than this
    /// after the caller (sampling jitter); widened to 3 sample intervals if coarser.
    pub propagation_slack_ms: i64,
    /// Lag (ms) behind the earliest component at which the timing penalty is 63% spent.
    pub timing_scale_ms: f64,
    /// Largest share of the score the timing penalty can take.
    pub timing_weight: f64,
    /// Multiplier on symptom evidence explained by an anomalous callee.
    pub explain_factor: f64,
    /// Largest share of the score taken from a component that explains none of the
    /// other anomalous components (graph mode only).
    pub root_weight: f64,
    /// Candidates returned, best first.
    pub max_candidates: usize,
    /// Evidence items per candidate.
    pub max_evidence: usize,
    /// Components named `<host_prefix><node>` are whole nodes, and `<x>@<node>` runs on
    /// one (`correlate::component`'s naming); `None` turns the node-level rules off.
    pub host_prefix: Option<String>,
    /// Multiplier on a node-level series anomalous on every node that reports it.
    pub common_mode_factor: f64,
    /// A process on a node with cause evidence at least this strong explains the node's
    /// anomalies (multiplied by `explain_factor`).
    pub containment_min: f64,
    /// Scale floor, in the metric's own unit, for percentages (`*_pct`, `percent`): a
    /// move of a fraction of a percentage point is not an anomaly whatever the baseline.
    pub pct_floor: f64,
    /// Scale floor of memory metrics (not percentages), relative to the baseline level.
    pub mem_rel_floor: f64,
    /// Scale floor of memory metrics in bytes (a name with the token `bytes`): a couple
    /// of MiB more is not memory pressure on any machine this runs on.
    pub mem_bytes_floor: f64,
    /// A component's onset (and its symptoms' onset) is the earliest of its items at
    /// least this share of its strongest (of its strongest symptom).
    pub onset_share: f64,
    /// Share of the remaining score a root gains from the strongest symptom of a caller
    /// it explains (graph mode).
    pub corroboration: f64,
    /// Worker threads for the per-series pass; 0 = available parallelism (at most 8).
    /// The result does not depend on it.
    pub threads: usize,
}

impl Default for RcaConfig {
    fn default() -> Self {
        Self {
            max_series: 50_000,
            max_points_per_series: 100_000,
            min_baseline_points: 10,
            persist_points: 3,
            min_z: 3.0,
            onset_frac: 0.1,
            z_half: 5.0,
            z_cap: 1000.0,
            rel_eps: 0.01,
            cp_threshold: 8.0,
            cp_min_shift: 3.0,
            cp_min_segment: 10,
            onset_cluster_ms: 300_000,
            precursor_lookback_ms: 1_800_000,
            propagation_slack_ms: 5_000,
            timing_scale_ms: 10_000.0,
            timing_weight: 0.3,
            explain_factor: 0.35,
            root_weight: 0.15,
            max_candidates: 10,
            max_evidence: 5,
            host_prefix: Some("host@".to_string()),
            common_mode_factor: 0.3,
            containment_min: 0.5,
            pct_floor: 1.0,
            mem_rel_floor: 0.05,
            mem_bytes_floor: 4.0 * 1024.0 * 1024.0,
            corroboration: 0.3,
            onset_share: 0.7,
            threads: 0,
        }
    }
}

/// The result: candidates best first.
#[derive(serde::Serialize, Clone, Debug)]
pub struct Ranking {
    pub ranking: Vec<Candidate>,
    /// Start of the anomalous period: `window.0` if given, else the detected onset
    /// (`None` when nothing changed).
    pub onset_ms: Option<i64>,
    /// Distinct components with series or events.
    pub components_considered: usize,
}

/// One ranked component.
#[derive(serde::Serialize, Clone, Debug)]
pub struct Candidate {
    pub target: String,
    /// `cpu`, `memory`, `disk`, `network`, `errors`, `crash`, `dependency` or `unknown`.
    pub kind: String,
    /// In `[0, 1]`; absolute (a weak incident gives low scores), not normalized.
    pub score: f64,
    pub evidence: Vec<Evidence>,
    pub explanation: String,
    /// For `dependency`: the callee the symptoms most likely came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caused_by: Option<String>,
    /// When this component's first anomaly was seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub onset_ms: Option<i64>,
}

/// One piece of evidence: a series (or an event) and how far it moved.
#[derive(serde::Serialize, Clone, Debug)]
pub struct Evidence {
    /// `component:metric`, or `component:event.<kind>` for events.
    pub series: String,
    pub at_ms: i64,
    /// The sustained anomalous level (for events: the event's score).
    pub value: f64,
    /// Median of the baseline.
    pub baseline: f64,
    /// Robust z-score: `|value - median(baseline)| / IQR(baseline)` (floored).
    pub deviation: f64,
    pub note: String,
}

/// Errors from the CSV readers. Lines and columns are 1-based.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RcaError {
    #[error("empty input: no header line")]
    Empty,
    #[error("line {line}: the header needs a timestamp column and at least one series column")]
    NoSeriesColumns { line: usize },
    #[error(
        "line {line}, column 1: the first column must be the timestamp (`timestamp`, `time` or `ts`), found {found:?}"
    )]
    MissingTimestamp { line: usize, found: String },
    #[error("line {line}, column {column}: empty column name")]
    EmptyColumnName { line: usize, column: usize },
    #[error("line {line}, column {column}: duplicate column {name:?} (first at column {first})")]
    DuplicateColumn {
        line: usize,
        column: usize,
        first: usize,
        name: String,
    },
    #[error("line {line}: too many columns ({found}, at most {max})")]
    TooManyColumns {
        line: usize,
        found: usize,
        max: usize,
    },
    #[error("line {line}: expected {expected} fields, found {found}")]
    Ragged {
        line: usize,
        expected: usize,
        found: usize,
    },
    #[error("line {line}, column {column}: unterminated quoted field")]
    Unterminated { line: usize, column: usize },
    #[error("line {line}, column {column} ({name}): not a number: {value:?}")]
    NotNumeric {
        line: usize,
        column: usize,
        name: String,
        value: String,
    },
    #[error(
        "line {line}, column {column} ({name}): {value:?} is out of range (|v| > 1e18 or infinite)"
    )]
    OutOfRange {
        line: usize,
        column: usize,
        name: String,
        value: String,
    },
    #[error("line {line}, column {column}: bad timestamp {value:?}: {source}")]
    BadTimestamp {
        line: usize,
        column: usize,
        value: String,
        source: TimestampError,
    },
    #[error("no data rows after the header")]
    NoRows,
    #[error("line {line}: an edge needs two non-empty fields `caller,callee`")]
    BadEdge { line: usize },
}

/// Ranks the likely root causes of one incident. Never panics, allocates in proportion
/// to the (capped) input, and is deterministic.
pub fn rank(input: &RcaInput, cfg: &RcaConfig) -> Ranking {
    score::rank(input, cfg)
}
