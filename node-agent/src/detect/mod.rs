//! Streaming anomaly detection: the second stage of the node agent's data path
//! (`collect` → **`detect`** → `ship`).
//!
//! Sans-IO: a [`SeriesDetector`] is a plain struct of fixed size (no heap, under 1 KiB) that
//! is fed one `(timestamp, value)` at a time and scores it at once, using only the past. The
//! caller passes the timestamps; nothing here reads a clock or a file. [`DetectorBank`] keeps
//! one detector per series key under a hard bound, evicting the least recently updated.
//!
//! Per sample, in order:
//! 1. **Baseline**: a robust damped-free Holt level + trend (Huber-clipped updates), on top of
//!    an additive seasonal profile (period configured, found by autocorrelation on the first
//!    64 samples, or daily by wall clock), and a slow reference level for drift.
//! 2. **Three raw detectors**, each giving a "surprise" `-ln p` under its null model:
//!    `robust_residual` (one-step residual / robust scale: spikes), `change_point`
//!    (two-sided CUSUM of the drift residual: level shifts, trend changes, seasonal breaks)
//!    and `variance` (likelihood-ratio CUSUM on residual differences: noise changes).
//! 3. **Calibration**: per detector, a streaming peaks-over-threshold (generalised Pareto)
//!    fit of the surprise tail turns the raw statistic into a tail probability learned from
//!    this series, so a spiky-but-normal series stops alerting on its usual spikes. The
//!    anomaly score is `2^(-p / false_alarm_rate)`, in `[0, 1]`, 0.5 at the configured rate.
//! 4. **Episodes**: hysteresis, minimum duration and a per-series token bucket turn scores
//!    into at most one [`AnomalyStart`] per episode.
//! 5. **Adaptation**: a confirmed change point re-bases the levels, a confirmed variance
//!    change re-bases the scale, so the new regime becomes normal.
//!
//! [`backtest`] runs the same code over a CSV file (the `node-agent detect` command).
//! The design, state layout and quality figures are in `docs/detection.md`.

pub mod backtest;
mod bank;
mod config;
mod series;
mod stats;

pub use bank::DetectorBank;
pub use config::{ConfigError, DetectConfig};
pub use series::{AnomalyStart, Observation, SeriesDetector};

#[cfg(test)]
mod tests;
