//! Detector settings: what an operator may tune. Everything else is a documented constant
//! in `series.rs`, chosen once for all series rather than per data set.

use serde::Deserialize;

/// Settings shared by every series of a bank. Read from JSON by `node-agent detect --config`;
/// absent fields take their defaults, unknown fields are an error.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectConfig {
    /// Samples each series learns from before it may score above 0 or alert.
    pub warmup: u32,
    /// Season length in samples. 0 = auto: a period of 4–32 samples found by
    /// autocorrelation over the first 64 samples, else a daily profile by wall-clock time
    /// when timestamps are real epoch times with a step between about 9 s and 30 minutes.
    /// 1 = no seasonality.
    pub season_len: u32,
    /// Per-sample tail probability (after calibration, over all detectors) at which the
    /// score is 0.5: roughly the fraction of normal samples expected to reach 0.5.
    pub false_alarm_rate: f64,
    /// Score at or above which a sample counts towards opening an episode.
    pub open_threshold: f64,
    /// Score below which a sample counts towards closing an open episode (hysteresis).
    pub close_threshold: f64,
    /// Consecutive samples at or above `open_threshold` needed to open an episode.
    pub min_duration: u32,
    /// Consecutive samples below `close_threshold` needed to close an episode.
    pub close_after: u32,
    /// Sustained number of reported episodes per hour per series (token bucket refill).
    /// Episodes past the budget are tracked but not reported, and counted.
    pub max_episodes_per_hour: f64,
    /// Token bucket size: episodes that may be reported back to back.
    pub episode_burst: f64,
    /// Smallest scale, as a fraction of the level: changes smaller than this are never
    /// significant. Keeps flat and near-flat series quiet.
    pub min_rel_scale: f64,
    /// Smallest scale in the series' own unit (0 = none).
    pub min_abs_scale: f64,
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            warmup: 64,
            season_len: 0,
            false_alarm_rate: 1e-4,
            open_threshold: 0.5,
            close_threshold: 0.2,
            min_duration: 1,
            close_after: 3,
            max_episodes_per_hour: 12.0,
            episode_burst: 5.0,
            min_rel_scale: 1e-5,
            min_abs_scale: 0.0,
        }
    }
}

/// A setting out of its range.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("detector config: {field} {problem}")]
pub struct ConfigError {
    /// The field at fault.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl DetectConfig {
    /// Checks ranges. Detectors never panic on a bad config (they just behave oddly), so
    /// this is for the edges that read configs from users.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, problem| Err(ConfigError { field, problem });
        if !(self.false_alarm_rate > 0.0 && self.false_alarm_rate < 1.0) {
            return err("false_alarm_rate", "must be in (0, 1)");
        }
        if !(self.open_threshold > 0.0 && self.open_threshold <= 1.0) {
            return err("open_threshold", "must be in (0, 1]");
        }
        if !(self.close_threshold >= 0.0 && self.close_threshold <= self.open_threshold) {
            return err("close_threshold", "must be in [0, open_threshold]");
        }
        if self.min_duration == 0 {
            return err("min_duration", "must be at least 1");
        }
        if self.close_after == 0 {
            return err("close_after", "must be at least 1");
        }
        if !(self.max_episodes_per_hour >= 0.0 && self.max_episodes_per_hour.is_finite()) {
            return err("max_episodes_per_hour", "must be a finite number >= 0");
        }
        if !(self.episode_burst >= 1.0 && self.episode_burst.is_finite()) {
            return err("episode_burst", "must be a finite number >= 1");
        }
        if !(self.min_rel_scale >= 0.0 && self.min_rel_scale.is_finite()) {
            return err("min_rel_scale", "must be a finite number >= 0");
        }
        if !(self.min_abs_scale >= 0.0 && self.min_abs_scale.is_finite()) {
            return err("min_abs_scale", "must be a finite number >= 0");
        }
        Ok(())
    }
}
