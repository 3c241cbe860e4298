//! Logs: the node agent's log intelligence, beside the metric collectors in the data path
//! (files → **`logs`** → events for `ship`).
//!
//! - [`discover`]: which files under the log directories to follow, and the pod /
//!   container each belongs to (from the path).
//! - [`tail`]: bounded, rotation-safe file tailing.
//! - [`formats`]: CRI, Docker `json-file` and app-JSON line parsing, partial-line joining.
//! - [`mask`] + [`miner`]: online template mining (Drain-style tree over masked tokens).
//! - [`analyzer`]: per-interval template counts, samples of new templates, and anomaly
//!   records for new templates and error-level bursts.
//! - [`pipeline`]: all of the above once per agent tick, within a byte budget, turned into
//!   samples and events (`collect/logs.rs` runs it as a collector).
//! - [`backtest`]: the same code over a whole file (`node-agent logs`).
//!
//! Everything is bounded: templates (LRU eviction, counted), tree fan-out, line length,
//! tokens per line, bytes per poll, files followed. Design notes: `docs/detection.md`.

pub mod analyzer;
pub mod backtest;
pub mod discover;
pub mod formats;
pub mod mask;
pub mod miner;
pub mod pipeline;
pub mod tail;

pub use analyzer::{AnalyzerConfig, IntervalReport, LogAnalyzer, LogAnomaly, LogAnomalyKind};
pub use discover::Origin;
pub use formats::{Assembler, LogFormat, Message};
pub use miner::{MatchResult, MinerConfig, TemplateMiner};
pub use pipeline::{LogConfig, LogInputs, LogPipeline, LogStats};
pub use tail::{FileTailer, TailConfig, TailSet};

#[cfg(test)]
mod tests;
