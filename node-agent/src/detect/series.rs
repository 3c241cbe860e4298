//! One series' detector: fixed-size state, scored on arrival, causal.
//!
//! See the module doc in `detect/mod.rs` for the pipeline, and `docs/detection.md` for the
//! reasoning behind each constant. The constants below are deliberately not configuration:
//! they were chosen once, from first principles and the synthetic harness, for all series.

use super::config::DetectConfig;
use super::stats::{self, Shape, TAIL_U, Tail};

/// Recent deseasonalised values kept for re-basing and for the period search.
const RING: usize = 64;
/// Seasonal profile resolution (bins per period, linear interpolation between centres).
const NBINS: usize = 64;
/// Fast level smoothing (one-step forecast).
const ALPHA: f64 = 0.25;
/// Trend smoothing (Holt, in the error-correction form `b += BETA * e`).
const BETA: f64 = 0.01;
/// Slow reference level and trend for drift detection: a critically damped Holt with a
/// time constant of about 100 samples. It has its own trend: integrating the fast trend's
/// noise would make the reference wander by several scales.
const ALPHA_SLOW: f64 = 0.02;
const BETA_SLOW: f64 = 1e-4;
/// Scale smoothing (time constant about 50 samples).
const ALPHA_SCALE: f64 = 0.02;
/// The drift residual's scale learns four times slower and from residuals clipped at
/// three scales: a drift must not be able to teach the scale that it is normal before the
/// change-point detector has seen it (it can grow at most 1.4% a sample).
const ALPHA_SLOW_SCALE: f64 = 0.005;
const SLOW_SCALE_CLIP: f64 = 3.0;
/// Level updates see residuals clipped to this many scales (Huber), so a spike moves the
/// baseline by at most `ALPHA * HUBER` scales.
const HUBER: f64 = 3.0;
/// Scale updates see absolute residuals clipped to this many scales.
const SCALE_CLIP: f64 = 4.0;
/// CUSUM reference (half the smallest shift of interest, in scales) and input clip: one
/// spike adds at most `CUSUM_CLIP - CUSUM_K`, far below an alert, a shift adds it per sample.
const CUSUM_K: f64 = 0.5;
const CUSUM_CLIP: f64 = 4.0;
/// Variance CUSUM: log-likelihood ratio of "scale doubled" on standardised residual
/// differences, `z²(1 - 1/4)/2 - ln 2`, with `z²` clipped so one spike cannot fire it.
const VAR_GAIN: f64 = 0.375;
const VAR_COST: f64 = std::f64::consts::LN_2;
const VAR_CLIP: f64 = 9.0;
/// Learning rate of the drift residual's autocorrelation (memory about 500 samples), and
/// its largest value used (a random walk's would be 1 and whiten every change away).
const AC_ALPHA: f64 = 0.002;
const AC_MAX: f64 = 0.95;
const AC_PRIOR: f64 = 200.0;
/// Seasonal profile learning rate per period (each bin forgets in about 3 periods).
const SEASON_GAMMA: f64 = 0.3;
/// Mean absolute deviation to standard deviation for a normal distribution.
const MEAN_ABS_TO_SIGMA: f64 = 1.253_314_137_315_500_3;
/// Samples before the robust clipping starts (the scale must exist first).
const YOUNG: u32 = 32;
/// Values are clamped to this for the state (f32 ring and profile stay finite).
const MAX_ABS: f64 = 1e30;
/// Already-anomalous samples feed the tail calibration with a weight that grows with how
/// often this series alerts (`(flag_rate / FLAG_RATE_NORMAL)²`, at least
/// `MIN_ANOMALOUS_WEIGHT`): recurring "anomalies" become normal after a few dozen, one-off
/// ones (a step flags a handful of samples) stay rare.
const FLAG_RATE_NORMAL: f32 = 0.04;
const MIN_ANOMALOUS_WEIGHT: f32 = 0.01;
const FLAG_RATE_DECAY: f32 = 1.0 / 1024.0;
/// Samples over which that weight starts from 1 and falls to the flag-rate rule.
const YOUNG_TAIL: f32 = 400.0;
/// Longest automatic daily period, in samples (a step of about 9 s or more). Finer series
/// change too little from one sample to the next over a day for the profile to matter (the
/// trend follows the daily swing) and would take days to learn it. It is also the longest
/// period behind a change-point gate (see `cp_gate`).
const SEASON_GATE_MAX_PERIOD: i64 = 10_000;
/// Largest lag of the slow reference behind an unmodelled daily swing, per unit of the
/// swing's amplitude, that the change-point detector runs with (see `decide_season`),
/// and the fastest reference it may take for that; past it the detector waits instead.
const SEASON_LAG_MAX: f64 = 0.01;
const REF_ALPHA_MAX: f64 = 0.15;
/// Gate tests a daily profile needs before it is first applied.
const GATE_MIN_ON: u16 = 64;
/// Daily period, for the wall-clock seasonal profile.
const DAY_MS: i64 = 86_400_000;
/// Epoch milliseconds below this (1973-03-03) are taken as indexes, not wall-clock times.
const EPOCH_MIN_MS: i64 = 100_000_000_000;

const N_DET: usize = 3;
const DETECTORS: [&str; N_DET] = ["robust_residual", "change_point", "variance"];
/// Null rates per sample of events over `TAIL_U` (prior for the tail fit): exactly e^-3 for
/// the normal surprise; for the CUSUMs, excursions peaking over 3, about 1 in 120 samples
/// by Siegmund's approximation (the peaks' excesses are then about Exp(1) as well).
const PRIOR_PU: [f64; N_DET] = [0.049_787, 0.008, 0.008];
/// How each tail learns its shape: the residual has an event every sample and learns it
/// from its own tail events; a CUSUM has one per excursion, too few to reshape its tail
/// quickly without learning a drift as normal.
const SHAPE: [Shape; N_DET] = [Shape::Learned, Shape::Null, Shape::Learned];
const SPIKE: usize = 0;
const CHANGE: usize = 1;
const VARIANCE: usize = 2;

const SEASON_UNDECIDED: u8 = 0;
const SEASON_NONE: u8 = 1;
const SEASON_ON: u8 = 2;

/// What one sample looked like to its series' detector.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// Calibrated anomaly score in `[0, 1]` (0 during warm-up, for flat series and for
    /// non-finite values).
    pub score: f64,
    /// One-step forecast of this sample from the past only.
    pub expected: f64,
    /// Lower end of the normal range (where the spike detector's score would reach 0.5).
    pub lower: f64,
    /// Upper end of the normal range.
    pub upper: f64,
    /// Set only on the sample that opens a reported anomaly episode.
    pub anomaly: Option<AnomalyStart>,
    /// True while a reported episode is open (including its first sample).
    pub in_anomaly: bool,
}

/// The opening of an anomaly episode, with enough context for an operator to see why.
#[derive(Clone, Debug, PartialEq)]
pub struct AnomalyStart {
    /// Which detector dominated: `"robust_residual"`, `"change_point"` or `"variance"`.
    pub detector: &'static str,
    /// Score of the opening sample, in `[0, 1]`.
    pub score: f64,
    /// Forecast of the opening sample.
    pub expected: f64,
    /// Normal range, low end.
    pub lower: f64,
    /// Normal range, high end.
    pub upper: f64,
    /// The observed value.
    pub value: f64,
    /// One readable sentence.
    pub explanation: String,
}

/// Episode state: hysteresis, minimum duration, token-bucket rate limit.
#[derive(Clone, Copy, Debug)]
struct Episode {
    open: bool,
    reported: bool,
    hot: u16,
    cool: u16,
    tokens: f32,
    token_ts: i64,
    suppressed: u32,
}

impl Episode {
    /// Advances one sample; true when a reported episode opens on it.
    fn step(&mut self, cfg: &DetectConfig, ts_ms: i64, score: f64) -> bool {
        if !self.open {
            self.hot = if score >= cfg.open_threshold {
                self.hot.saturating_add(1)
            } else {
                0
            };
            if u32::from(self.hot) < cfg.min_duration.max(1) {
                return false;
            }
            self.open = true;
            self.hot = 0;
            self.cool = 0;
            let hours = ts_ms.saturating_sub(self.token_ts) as f64 / 3.6e6;
            if hours > 0.0 {
                let refill = (hours * cfg.max_episodes_per_hour) as f32;
                self.tokens = (self.tokens + refill).min(cfg.episode_burst as f32);
                self.token_ts = ts_ms;
            }
            self.reported = self.tokens >= 1.0;
            if self.reported {
                self.tokens -= 1.0;
            } else {
                self.suppressed = self.suppressed.saturating_add(1);
            }
            self.reported
        } else {
            self.cool = if score < cfg.close_threshold {
                self.cool.saturating_add(1)
            } else {
                0
            };
            if u32::from(self.cool) >= cfg.close_after.max(1) {
                self.open = false;
                self.reported = false;
                self.cool = 0;
            }
            false
        }
    }
}

/// Streaming detector for one series. Fixed size, no heap: `size_of::<SeriesDetector>()`
/// is all its memory (see `docs/detection.md` for the layout).
#[derive(Clone, Debug)]
pub struct SeriesDetector {
    n: u32,
    season: u8,
    nbins: u8,
    ring_pos: u8,
    run_len: u16,
    var_run: u16,
    /// The change-point detector stays off until this sample count: the first period of an
    /// unseeded seasonal profile (at most `SEASON_GATE_MAX` samples), when the trend
    /// still follows the seasonal swing and its curvature would look like drift.
    cp_gate: u32,
    /// Sample count when the season started (its learning rates decay from there).
    season_start: u32,
    /// A daily profile assumed from the wall clock (not found in the data) is applied from
    /// the start but kept only while it predicts: from its second period on, the mean
    /// square of the series' changes over a lag, with and without the profile's change
    /// over the same lag removed (`gate_with`, `gate_without`), decide, with hysteresis.
    /// A profile learned from a series with no daily cycle is only its first day's noise,
    /// trends and anomalies replayed, and would turn them into false alarms a day later.
    season_gated: bool,
    season_applied: bool,
    gate_n: u16,
    gate_with: f32,
    gate_without: f32,
    last_ts: i64,
    interval_ms: i64,
    period_ms: i64,
    origin_ms: i64,
    /// Ring values are stored as `f32` offsets from this, re-anchored when the level moves far.
    anchor: f64,
    /// Fast level and trend (deseasonalised), slow reference level.
    lf: f64,
    trend: f64,
    ls: f64,
    trend_slow: f64,
    /// Level the seasonal profile is learned against: trend-free, averaging over about one
    /// period, so it cannot follow the seasonal swing and hide it from the profile.
    lseason: f64,
    trend_season: f64,
    /// Mean absolute error of the profile fit (clips what one sample can teach the profile).
    abs_season: f64,
    /// Exponentially weighted mean absolute fast and slow residuals.
    abs_f: f64,
    abs_s: f64,
    /// Smallest non-zero step seen: the series' resolution (a scale floor).
    quantum: f64,
    last_x: f64,
    prev_ef: f32,
    /// Previous standardised drift residual, and the exponentially weighted lag-1
    /// products and squares that give its autocorrelation `phi`.
    prev_zs: f32,
    ac_xy: f32,
    ac_xx: f32,
    /// The same for the one-step residual (`prev_ef`), for the spike detector.
    acf_xy: f32,
    acf_xx: f32,
    /// Trend when the current CUSUM excursion began, restored by a quick re-base (a step
    /// kicks the trend, and a kicked trend would drift the new level away).
    trend_before: f32,
    /// The slow trend before the change-point detector adopted a ramp's slope, and that
    /// ramp's direction relative to it (0: no ramp adopted).
    trend_base: f32,
    ramp_dir: i8,
    /// Until `ref_until`, the slow reference runs with this smoothing (critically damped)
    /// instead of `ALPHA_SLOW`: fast enough that an unmodelled daily swing does not look
    /// like drift (see `decide_season`).
    ref_alpha: f32,
    ref_until: u32,
    /// Sample count when the daily profile was last applied or withdrawn.
    drift_start: u32,
    /// Sample count when the ramp was adopted.
    ramp_at: u32,
    /// A chain of step re-bases (each within `RING` samples of the last): when it began,
    /// the slow trend before it, and the last re-base. The slow reference learns a ramp
    /// that was re-based as a series of steps; a change against that learned slope may be
    /// the ramp's end (see `rebase_level`).
    chain_at: u32,
    last_rebase: u32,
    chain_base: f32,
    cusum_pos: f32,
    cusum_neg: f32,
    var_cusum: f32,
    /// Peaks of the current CUSUM excursions, learned by the tails when they end.
    cusum_peak: f32,
    var_peak: f32,
    /// Short average of clipped squared standardised differences (≈1 when calm).
    var_ew: f32,
    /// Recent fraction of samples at or above the open threshold.
    flag_rate: f32,
    /// Half-width of the normal range, in scales.
    band_z: f32,
    tails: [Tail; N_DET],
    episode: Episode,
    ring: [f32; RING],
    /// Seasonal profile once the season is decided; before that, the first sample deltas
    /// (the interval estimate), so the space is not paid twice.
    bins: [f32; NBINS],
}

impl SeriesDetector {
    /// A fresh detector; it learns for `cfg.warmup` samples before scoring.
    pub fn new(cfg: &DetectConfig) -> Self {
        let burst = if cfg.episode_burst.is_finite() {
            cfg.episode_burst.max(0.0) as f32
        } else {
            1.0
        };
        SeriesDetector {
            n: 0,
            season: SEASON_UNDECIDED,
            nbins: 0,
            ring_pos: 0,
            run_len: 0,
            var_run: 0,
            cp_gate: 0,
            season_start: 0,
            season_gated: false,
            season_applied: false,
            gate_n: 0,
            gate_with: 0.0,
            gate_without: 0.0,
            last_ts: 0,
            interval_ms: 0,
            period_ms: 0,
            origin_ms: 0,
            anchor: 0.0,
            lf: 0.0,
            trend: 0.0,
            ls: 0.0,
            trend_slow: 0.0,
            lseason: 0.0,
            trend_season: 0.0,
            abs_season: 0.0,
            abs_f: 0.0,
            abs_s: 0.0,
            quantum: f64::INFINITY,
            last_x: 0.0,
            prev_ef: 0.0,
            prev_zs: 0.0,
            ac_xy: 0.0,
            ac_xx: 1.0,
            acf_xy: 0.0,
            acf_xx: 1.0,
            trend_before: 0.0,
            trend_base: 0.0,
            ramp_dir: 0,
            ramp_at: 0,
            chain_at: 0,
            last_rebase: 0,
            chain_base: 0.0,
            drift_start: 0,
            ref_alpha: 0.0,
            ref_until: 0,
            cusum_pos: 0.0,
            cusum_neg: 0.0,
            var_cusum: 0.0,
            cusum_peak: 0.0,
            var_peak: 0.0,
            var_ew: 1.0,
            flag_rate: 0.0,
            band_z: 4.0,
            tails: [Tail::default(); N_DET],
            episode: Episode {
                open: false,
                reported: false,
                hot: 0,
                cool: 0,
                tokens: burst,
                token_ts: i64::MIN,
                suppressed: 0,
            },
            ring: [0.0; RING],
            bins: [0.0; NBINS],
        }
    }

    /// Samples learned so far (non-finite values are not counted).
    pub fn samples(&self) -> u32 {
        self.n
    }

    /// The seasonal period in milliseconds, once one is in use.
    pub fn season_period_ms(&self) -> Option<i64> {
        (self.season == SEASON_ON).then_some(self.period_ms)
    }

    /// Episodes that opened past the rate limit and were not reported.
    pub fn suppressed_episodes(&self) -> u32 {
        self.episode.suppressed
    }

    /// Scores one sample, then learns from it. `ts_ms` is the sample's wall-clock time in
    /// milliseconds (only differences and time of day are used). Never panics; a non-finite
    /// `value` scores 0 and leaves the state untouched.
    pub fn observe(&mut self, cfg: &DetectConfig, ts_ms: i64, value: f64) -> Observation {
        if !value.is_finite() {
            return self.quiet(ts_ms);
        }
        let x = value.clamp(-MAX_ABS, MAX_ABS);
        if self.n == 0 {
            self.start(ts_ms, x);
            return Observation {
                score: 0.0,
                expected: x,
                lower: x,
                upper: x,
                anomaly: None,
                in_anomaly: false,
            };
        }
        self.track_time(ts_ms);
        let season = self.season_at(ts_ms);
        let d = x - season;
        let floor = self.floor(cfg);
        let sig_f = (self.abs_f * MEAN_ABS_TO_SIGMA).max(floor);
        let sig_s = (self.abs_s * MEAN_ABS_TO_SIGMA).max(sig_f);
        let e_f = d - (self.lf + self.trend);
        let e_s = d - (self.ls + self.trend_slow);
        // The one-step residual of an autocorrelated series (a random walk, AR noise) is
        // itself correlated: part of it is predictable from the last one, and a spike must
        // stand out from the rest, the innovation, whose scale is √(1 - φ²) of the
        // residual's. The last residual counts at most `HUBER` scales, so a spike does not
        // forecast a large part of itself onto the next sample. For uncorrelated noise
        // φ = 0 and this is the plain residual.
        let phi_f = self.phi_fast();
        let carry = phi_f * f64::from(self.prev_ef).clamp(-HUBER * sig_f, HUBER * sig_f);
        let innov_scale = (1.0 - phi_f * phi_f).sqrt();
        let z_f = finite_z((e_f - carry) / (sig_f * innov_scale));
        let z_s = finite_z(e_s / sig_s);
        let z_v = finite_z((e_f - f64::from(self.prev_ef)) / (std::f64::consts::SQRT_2 * sig_f));
        let warm = self.n >= cfg.warmup;

        // Raw statistics: the past and this sample, nothing later.
        let zv2 = (z_v * z_v).min(VAR_CLIP);
        self.var_ew += 0.2 * (zv2 as f32 - self.var_ew);
        if warm && self.n >= self.cp_gate {
            // An autocorrelated series (a random walk, AR noise about a slow level) wanders
            // off its slow level for long stretches as a matter of course: the CUSUM sees
            // its innovations, `(z - phi z_prev) / sqrt(1 - phi²)`, so the wander is no
            // more extreme than its own increments (for uncorrelated noise phi ≈ 0 and this
            // is `z`).
            let phi = self.phi();
            let zw = (z_s - phi * f64::from(self.prev_zs)) / (1.0 - phi * phi).sqrt();
            let zc = zw.clamp(-CUSUM_CLIP, CUSUM_CLIP);
            self.cusum_pos = (self.cusum_pos + (zc - CUSUM_K) as f32).max(0.0);
            self.cusum_neg = (self.cusum_neg + (-zc - CUSUM_K) as f32).max(0.0);
            if self.cusum_pos.max(self.cusum_neg) > 0.0 {
                if self.run_len == 0 {
                    self.trend_before = self.trend as f32;
                }
                self.run_len = self.run_len.saturating_add(1);
            } else {
                self.run_len = 0;
            }
        }
        if warm {
            self.var_cusum = (self.var_cusum + (VAR_GAIN * zv2 - VAR_COST) as f32).max(0.0);
            self.var_run = if self.var_cusum > 0.0 {
                self.var_run.saturating_add(1)
            } else {
                0
            };
        }
        let surprise = [
            if z_f.abs() > 1.9 {
                stats::normal_surprise(z_f)
            } else {
                0.0
            },
            f64::from(self.cusum_pos.max(self.cusum_neg)),
            f64::from(self.var_cusum),
        ];

        // Calibration: tail probability per detector, Bonferroni over detectors.
        let mut det_score = [0.0f64; N_DET];
        let mut score = 0.0;
        let mut which = SPIKE;
        let mut p_best = 1.0;
        if warm {
            for i in 0..N_DET {
                if surprise[i] > TAIL_U {
                    let p = (self.tails[i].tail_prob(surprise[i], PRIOR_PU[i], SHAPE[i])
                        * N_DET as f64)
                        .min(1.0);
                    let s = (-p / cfg.false_alarm_rate).exp2();
                    det_score[i] = if s.is_nan() { 0.0 } else { s.clamp(0.0, 1.0) };
                    if det_score[i] > score {
                        score = det_score[i];
                        which = i;
                        p_best = p;
                    }
                }
            }
        }

        let expected = self.lf + self.trend + season + carry;
        let half = f64::from(self.band_z) * sig_f * innov_scale;
        let (lower, upper) = (expected - half, expected + half);
        let opened = warm && self.episode.step(cfg, ts_ms, score);
        let anomaly = opened.then(|| {
            let run = match which {
                CHANGE => self.run_len,
                VARIANCE => self.var_run,
                _ => 1,
            };
            AnomalyStart {
                detector: DETECTORS[which],
                score,
                expected,
                lower,
                upper,
                value,
                explanation: explain(
                    which,
                    value,
                    expected,
                    lower,
                    upper,
                    z_f,
                    run,
                    self.var_ew,
                    p_best,
                ),
            }
        });

        self.learn(cfg, x, d, e_f, e_s, sig_f, sig_s, warm, &surprise, score);
        if warm && det_score[CHANGE] >= cfg.open_threshold {
            self.rebase_level(d, sig_s);
        }
        if warm
            && det_score[VARIANCE] >= cfg.open_threshold
            && det_score[VARIANCE] >= det_score[CHANGE]
        {
            self.rebase_scale();
        }
        self.n = self.n.saturating_add(1);
        if self.season == SEASON_UNDECIDED && self.n as usize >= RING {
            self.decide_season(cfg, ts_ms);
        }
        if self.n.is_multiple_of(32) || self.n == cfg.warmup {
            self.update_band(cfg);
        }
        Observation {
            score,
            expected,
            lower,
            upper,
            anomaly,
            in_anomaly: self.episode.open && self.episode.reported,
        }
    }

    /// The internal state in one line, for tracing a series in the quality harness
    /// (`DETECT_TRACE` in `benches/src/bin/detect_quality.rs`); not a stable format.
    #[doc(hidden)]
    pub fn debug_state(&self, ts_ms: i64) -> String {
        format!(
            "season {:.3} applied {} lf {:.3} ls {:.3} trend {:.4} trend_slow {:.4} lseason {:.3} \
             abs_f {:.3} abs_s {:.3} cusum+ {:.2} cusum- {:.2} var {:.2} phi {:.2} open {} ramp {} at {} base {:.4}",
            self.season_at(ts_ms),
            self.season_applied,
            self.lf,
            self.ls,
            self.trend,
            self.trend_slow,
            self.lseason,
            self.abs_f,
            self.abs_s,
            self.cusum_pos,
            self.cusum_neg,
            self.var_cusum,
            self.phi(),
            self.episode.open,
            self.ramp_dir,
            self.ramp_at,
            self.trend_base
        )
    }

    /// Lag-1 autocorrelation of the standardised drift residual, in `[0, AC_MAX]`, shrunk
    /// towards 0 while few samples back it (`AC_PRIOR` pseudo-samples): a young series'
    /// estimate is noisy, and an overestimate would hide a real drift.
    fn phi(&self) -> f64 {
        self.shrunk_autocorrelation(self.ac_xy, self.ac_xx)
    }

    /// Lag-1 autocorrelation of the one-step residual, like [`Self::phi`].
    fn phi_fast(&self) -> f64 {
        self.shrunk_autocorrelation(self.acf_xy, self.acf_xx)
    }

    /// `xy / xx` shrunk towards 0 by `AC_PRIOR` pseudo-samples, in `[0, AC_MAX]`.
    fn shrunk_autocorrelation(&self, xy: f32, xx: f32) -> f64 {
        let r = f64::from(xy) / f64::from(xx).max(1e-9);
        let n = f64::from(self.n);
        let r = r * n / (n + AC_PRIOR);
        if r.is_finite() {
            r.clamp(0.0, AC_MAX)
        } else {
            0.0
        }
    }

    /// The observation for a sample that cannot be scored.
    fn quiet(&self, ts_ms: i64) -> Observation {
        let (expected, half) = if self.n == 0 {
            (0.0, 0.0)
        } else {
            let sig = (self.abs_f * MEAN_ABS_TO_SIGMA).max(1e-300);
            (
                self.lf + self.trend + self.season_at(ts_ms),
                f64::from(self.band_z) * sig,
            )
        };
        Observation {
            score: 0.0,
            expected,
            lower: expected - half,
            upper: expected + half,
            anomaly: None,
            in_anomaly: self.episode.open && self.episode.reported,
        }
    }

    fn start(&mut self, ts_ms: i64, x: f64) {
        self.n = 1;
        self.last_ts = ts_ms;
        self.anchor = x;
        self.lf = x;
        self.ls = x;
        self.lseason = x;
        self.last_x = x;
        self.episode.token_ts = ts_ms;
        self.push_ring(x);
    }

    fn track_time(&mut self, ts_ms: i64) {
        let delta = ts_ms.saturating_sub(self.last_ts);
        if self.season == SEASON_UNDECIDED {
            let slot = (self.n - 1) as usize;
            if slot < NBINS {
                self.bins[slot] = if delta > 0 {
                    delta.min(1 << 24) as f32
                } else {
                    0.0
                };
            }
        }
        self.last_ts = ts_ms;
    }

    /// Smallest meaningful scale: configured floors and half the series' resolution.
    fn floor(&self, cfg: &DetectConfig) -> f64 {
        let mut f = cfg.min_abs_scale.max(cfg.min_rel_scale * self.lf.abs());
        if self.quantum.is_finite() {
            f = f.max(0.5 * self.quantum);
        }
        if f.is_nan() { 1e-300 } else { f.max(1e-300) }
    }

    #[allow(clippy::too_many_arguments)]
    fn learn(
        &mut self,
        cfg: &DetectConfig,
        x: f64,
        d: f64,
        e_f: f64,
        e_s: f64,
        sig_f: f64,
        sig_s: f64,
        warm: bool,
        surprise: &[f64; N_DET],
        score: f64,
    ) {
        // What this sample may teach the seasonal profile: an anomaly taught to it would be
        // replayed as one a period later.
        let mut w_season = 1.0f32;
        if warm {
            let flagged = score >= cfg.open_threshold;
            self.flag_rate += FLAG_RATE_DECAY * (f32::from(u8::from(flagged)) - self.flag_rate);
            // A young series has no history to call its tail events rare by: until it has
            // one, they teach the calibration almost as normal ones do, so a heavy-tailed
            // series alerts on its first big values, not on every one of its first hundreds.
            let youth = (1.0 - self.n as f32 / YOUNG_TAIL).max(0.0);
            let w_anomalous = (self.flag_rate / FLAG_RATE_NORMAL)
                .powi(2)
                .max(youth)
                .clamp(MIN_ANOMALOUS_WEIGHT, 1.0);
            let w = if flagged { w_anomalous } else { 1.0 };
            if flagged || self.episode.open {
                w_season = w_anomalous;
            }
            for tail in &mut self.tails {
                tail.count(1.0);
            }
            self.tails[SPIKE].event(surprise[SPIKE], w);
            // CUSUM excursions are learned once, by their peak, when they end; an excursion
            // that reached the alert level is learned as anomalous.
            for (i, peak) in [
                (CHANGE, &mut self.cusum_peak),
                (VARIANCE, &mut self.var_peak),
            ] {
                *peak = peak.max(surprise[i] as f32);
                if surprise[i] <= 0.0 && *peak > 0.0 {
                    let p = cfg.false_alarm_rate * (1.0 / cfg.open_threshold).log2() / N_DET as f64;
                    let alerting =
                        f64::from(*peak) >= self.tails[i].quantile(p, PRIOR_PU[i], SHAPE[i]);
                    self.tails[i].event(f64::from(*peak), if alerting { w_anomalous } else { 1.0 });
                    *peak = 0.0;
                }
            }
        }
        let young = self.n < YOUNG;
        let n = f64::from(self.n);
        let (ef_c, es_c) = if young {
            (e_f, e_s)
        } else {
            (
                e_f.clamp(-HUBER * sig_f, HUBER * sig_f),
                e_s.clamp(-HUBER * sig_s, HUBER * sig_s),
            )
        };
        let trend = self.trend;
        self.lf += trend + ALPHA * ef_c;
        self.trend += BETA * ef_c;
        let (a_slow, b_slow) = if self.n < self.ref_until {
            let a = f64::from(self.ref_alpha);
            (a, a * a / 4.0)
        } else {
            (ALPHA_SLOW, BETA_SLOW)
        };
        self.ls += self.trend_slow + a_slow.max(1.0 / n) * es_c;
        self.trend_slow += b_slow * es_c;
        let (af, as_) = if young {
            (e_f.abs(), e_s.abs())
        } else {
            (
                e_f.abs().min(SCALE_CLIP * sig_f),
                e_s.abs().min(SLOW_SCALE_CLIP * sig_s),
            )
        };
        self.abs_f += ALPHA_SCALE.max(1.0 / n) * (af - self.abs_f);
        // The drift residual's scale averages afresh from the last switch of the daily
        // profile (see `gate`).
        let n_drift = f64::from(self.n.saturating_sub(self.drift_start)).max(1.0);
        self.abs_s += ALPHA_SLOW_SCALE.max(1.0 / n_drift) * (as_ - self.abs_s);
        let step = (x - self.last_x).abs();
        if step > 0.0 && step < self.quantum {
            self.quantum = step;
        }
        self.last_x = x;
        // Autocorrelation of the one-step residual, from calm samples only, like the
        // drift residual's below.
        let zf = (e_f / sig_f).clamp(-SCALE_CLIP, SCALE_CLIP);
        let zf_prev = (f64::from(self.prev_ef) / sig_f).clamp(-SCALE_CLIP, SCALE_CLIP);
        if !(warm && score >= cfg.open_threshold) {
            let w = AC_ALPHA.max(1.0 / n.max(1.0)) as f32;
            self.acf_xy += w * ((zf * zf_prev) as f32 - self.acf_xy);
            self.acf_xx += w * ((zf * zf) as f32 - self.acf_xx);
        }
        self.prev_ef = e_f.clamp(-1e30, 1e30) as f32;
        // Autocorrelation from calm samples only (clipped), so a change does not teach it.
        let zs = (e_s / sig_s).clamp(-SLOW_SCALE_CLIP, SLOW_SCALE_CLIP);
        if !(warm && score >= cfg.open_threshold) {
            let w = AC_ALPHA.max(1.0 / n.max(1.0)) as f32;
            self.ac_xy += w * ((zs * f64::from(self.prev_zs)) as f32 - self.ac_xy);
            self.ac_xx += w * ((zs * zs) as f32 - self.ac_xx);
        }
        self.prev_zs = zs as f32;
        if self.season == SEASON_ON {
            self.learn_season(x, d, f64::from(w_season));
        }
        if (self.lf - self.anchor).abs() > 1e5 * sig_f {
            self.reanchor();
        }
        self.push_ring(d);
    }

    fn push_ring(&mut self, d: f64) {
        self.ring[self.ring_pos as usize] = (d - self.anchor) as f32;
        self.ring_pos = ((self.ring_pos as usize + 1) % RING) as u8;
    }

    /// The ring value `age` samples back (0 = the latest), absolute.
    fn ring_back(&self, age: usize) -> f64 {
        let idx = (self.ring_pos as usize + RING - 1 - age % RING) % RING;
        f64::from(self.ring[idx]) + self.anchor
    }

    fn ring_len(&self) -> usize {
        (self.n as usize).min(RING)
    }

    fn reanchor(&mut self) {
        let shift = self.lf - self.anchor;
        for v in &mut self.ring {
            *v = (f64::from(*v) - shift) as f32;
        }
        self.anchor = self.lf;
    }

    /// A confirmed change point: the levels jump to the (trend-corrected) median of the
    /// recent samples that lie beyond the old level on the side of the change (up to 9: the
    /// CUSUM's own start is a poor guess when it was already off zero before the change),
    /// and the CUSUMs restart.
    fn rebase_level(&mut self, d: f64, sig_s: f64) {
        let up = self.cusum_pos >= self.cusum_neg;
        let mut buf = [0.0f64; 9];
        let mut m = 0;
        for (age, slot) in buf.iter_mut().enumerate().take(self.ring_len()) {
            let v = self.ring_back(age);
            let beyond = if up {
                v - (self.ls - age as f64 * self.trend_slow)
            } else {
                self.ls - age as f64 * self.trend_slow - v
            };
            if age > 0 && beyond < 0.5 * sig_s {
                break;
            }
            *slot = v;
            m += 1;
        }
        let m = m.max(1);
        let dir: i8 = if up { 1 } else { -1 };
        // Which recent samples the slope is fitted on: the changed ones, or, for a change
        // against a ramp adopted earlier, everything since it was adopted.
        let against_ramp = self.ramp_dir == -dir;
        // A chain of step re-bases: the slow reference learned their slope as it went (a
        // ramp re-based step by step). A change against the slope it learned since the
        // chain began may be that ramp's end, tested like an adopted ramp's, with the
        // ramp's own slope fitted.
        let chained = self.ramp_dir == 0
            && self.last_rebase > 0
            && self.n.saturating_sub(self.last_rebase) <= RING as u32;
        if !chained {
            self.chain_at = self.n;
            self.chain_base = self.trend_slow as f32;
        }
        let against_chain = chained
            && self.n < self.ref_until
            && f64::from(dir) * (self.trend_slow - f64::from(self.chain_base)) < 0.0;
        self.last_rebase = self.n;
        let span = if against_ramp {
            (self.n.saturating_sub(self.ramp_at) as usize + 1).min(self.ring_len())
        } else if against_chain {
            (self.n.saturating_sub(self.chain_at) as usize + 1).min(self.ring_len())
        } else {
            m
        };
        // A ramp or a step? A slope over those samples that differs from the current
        // trend by more than three standard errors is a new trend; anything else is a step,
        // and whatever trend the step taught the fast level is undone.
        let mut ramp = None;
        if span >= 5 {
            let mut seg = [0.0f64; RING];
            for (age, v) in seg.iter_mut().enumerate().take(span) {
                *v = self.ring_back(age);
            }
            let seg = &seg[..span];
            let (at_now, b) = line_fit(seg);
            let slope = -b; // the segment runs backwards in time
            let n_seg = span as f64;
            let se = sig_s * (12.0 / (n_seg * (n_seg * n_seg - 1.0))).sqrt();
            // Against a ramp: has it ended (a leak restarted, a fill levelled off), or was
            // its slope a little off and it goes on? The ramp followed by the old trend,
            // with the best break, against one line through it all.
            let ended = if against_ramp {
                let sse_line: f64 = seg
                    .iter()
                    .enumerate()
                    .map(|(age, &v)| (v - (at_now + b * age as f64)).powi(2))
                    .sum();
                let hinge = hinge_fit(seg, f64::from(self.trend_base), self.trend_slow);
                hinge
                    .filter(|&(_, sse)| sse < sse_line)
                    .map(|(level, _)| level)
            } else if against_chain {
                let sse_line: f64 = seg
                    .iter()
                    .enumerate()
                    .map(|(age, &v)| (v - (at_now + b * age as f64)).powi(2))
                    .sum();
                // The break costs a parameter: the hinge must beat the line by more than
                // a 3-sigma residual's worth.
                hinge_fit_free(seg, f64::from(self.chain_base))
                    .filter(|&(_, sse)| sse + 9.0 * sig_s * sig_s < sse_line)
                    .map(|(level, _)| level)
            } else {
                None
            };
            if let Some(level) = ended.filter(|_| against_chain) {
                self.trend_slow = f64::from(self.chain_base);
                self.trend = self.trend_slow;
                self.last_rebase = 0;
                ramp = Some(level);
            } else if let Some(level) = ended {
                self.trend_slow = f64::from(self.trend_base);
                self.trend = self.trend_slow;
                self.ramp_dir = 0;
                ramp = Some(level);
            } else if slope.is_finite() && (slope - self.trend_slow).abs() > 3.0 * se {
                if self.ramp_dir == 0 {
                    self.trend_base = self.trend_slow as f32;
                }
                self.ramp_dir = if slope > f64::from(self.trend_base) {
                    1
                } else {
                    -1
                };
                self.ramp_at = self.n;
                self.trend = slope;
                self.trend_slow = slope;
                ramp = Some(at_now);
            }
        }
        if ramp.is_none() {
            self.trend = f64::from(self.trend_before);
        }
        for (age, v) in buf[..m].iter_mut().enumerate() {
            *v += age as f64 * self.trend_slow;
        }
        // A ramp's level is its line's value now; a step's the median of its samples.
        let level = ramp.unwrap_or_else(|| median(&mut buf[..m]));
        if level.is_finite() {
            // The profile's level takes the new level, not just the jump: the slow
            // reference followed part of the change before it was confirmed (a ramp
            // re-based step by step, a shift's first samples), the profile's own level,
            // with its memory of two periods, did not, and the gap was learned into the
            // profile as a daily shape for days and replayed a day later. A profile not
            // applied (a series with no daily cycle, or its first day) is learned against
            // its own level and the raw series, whose re-based level includes the swing at
            // this time of day: past its first day its level moves by the jump, else the
            // shift is learned as shape and the gate may then apply that shape and replay
            // it. In its first day its level stays put (see `learn_season`).
            if self.season_applied {
                self.lseason = level;
            } else if self.season == SEASON_ON
                && self.n.saturating_sub(self.season_start) as i64 * self.interval_ms
                    >= self.period_ms
            {
                self.lseason += level - self.ls;
            }
            self.lf = level;
            self.ls = level;
            self.prev_ef = (d - level).clamp(-1e30, 1e30) as f32;
        }
        self.cusum_pos = 0.0;
        self.cusum_neg = 0.0;
        self.run_len = 0;
    }

    /// A confirmed variance change: the scales jump to the recent noise level.
    fn rebase_scale(&mut self) {
        let factor = f64::from(self.var_ew).max(1.0).sqrt();
        self.abs_f *= factor;
        self.abs_s *= factor;
        self.var_cusum = 0.0;
        self.var_run = 0;
        self.var_ew = 1.0;
    }

    /// Half-width of the normal range: the residual (in scales) at which the spike
    /// detector's calibrated score reaches 0.5.
    fn update_band(&mut self, cfg: &DetectConfig) {
        let p = cfg.false_alarm_rate / N_DET as f64;
        let s = self.tails[SPIKE].quantile(p, PRIOR_PU[SPIKE], SHAPE[SPIKE]);
        let z = stats::normal_z_for_surprise(s);
        self.band_z = if z.is_finite() {
            z.clamp(1.0, 50.0) as f32
        } else {
            4.0
        };
    }

    /// Position of `ts_ms` in the profile: (lower bin, upper bin, weight of the upper).
    fn phase(&self, ts_ms: i64) -> (usize, usize, f64) {
        let nb = self.nbins as usize;
        let within = ts_ms
            .wrapping_sub(self.origin_ms)
            .rem_euclid(self.period_ms.max(1));
        let pos = within as f64 / self.period_ms.max(1) as f64 * nb as f64 - 0.5;
        let lo = pos.floor();
        let w = pos - lo;
        let i0 = (lo as i64).rem_euclid(nb as i64) as usize;
        (i0, (i0 + 1) % nb, w)
    }

    fn season_at(&self, ts_ms: i64) -> f64 {
        if self.season != SEASON_ON || !self.season_applied {
            return 0.0;
        }
        let (i0, i1, w) = self.phase(ts_ms);
        (1.0 - w) * f64::from(self.bins[i0]) + w * f64::from(self.bins[i1])
    }

    fn learn_season(&mut self, x: f64, d: f64, w_learn: f64) {
        let per_period = self.period_ms as f64 / self.interval_ms.max(1) as f64;
        // Running means while young (every sample of the first period counts fully), then
        // exponential forgetting.
        let age = f64::from(self.n.saturating_sub(self.season_start));
        // The profile's reference level is a Holt of its own with a time constant of about
        // two periods (critically damped), so it follows real trends, which would otherwise be
        // learned as a seasonal shape, but not the seasonal swing itself, which would then be
        // learned only in part and out of phase.
        // During the first period it stays put: a running mean over part of a period would
        // follow the swing and bend the first profile, which every later period inherits.
        // The first profile then holds that level's offset, removed when it is centred.
        let a = (0.5 / per_period).clamp(2.5e-4, 0.025);
        let gamma = SEASON_GAMMA.max(1.0 / ((age / per_period).floor() + 1.0));
        let (i0, i1, w) = self.phase(self.last_ts);
        let current = (1.0 - w) * f64::from(self.bins[i0]) + w * f64::from(self.bins[i1]);
        // `d` is `x - current` while the profile is applied; the profile's own level always
        // learns from the deseasonalised value.
        let _ = d;
        let err = (x - current) - (self.lseason + self.trend_season);
        if age >= per_period {
            self.lseason += self.trend_season + a * err;
            self.trend_season += 0.25 * a * a * err;
        }
        let raw = (x - self.lseason) - current;
        // Changes over a lag of up to the ring's length (a quarter period at most): levels,
        // level shifts and slow trends cancel, the daily swing does not. Tested once the
        // lag reaches back into the second period only (the first pass was still learning
        // the profile that its values were deseasonalised with).
        let lag = gate_lag(per_period);
        if self.season_gated && age >= per_period + lag as f64 {
            let past_ts = self
                .last_ts
                .saturating_sub(self.interval_ms.saturating_mul(lag as i64));
            let (j0, j1, wp) = self.phase(past_ts);
            let past_profile =
                (1.0 - wp) * f64::from(self.bins[j0]) + wp * f64::from(self.bins[j1]);
            let applied_then = if self.season_applied {
                past_profile
            } else {
                0.0
            };
            let past_x = self.ring_back(lag - 1) + applied_then;
            let dx = x - past_x;
            self.gate(per_period, dx - (current - past_profile), dx, current);
        }
        // The first period learns the shape unclipped: the clip is for anomalies in an
        // already sketched profile, not for the profile itself.
        let err = if self.abs_season > 0.0 && age >= per_period {
            let bound = SCALE_CLIP * MEAN_ABS_TO_SIGMA * self.abs_season;
            raw.clamp(-bound, bound)
        } else {
            raw
        };
        self.abs_season += 0.01 * (err.abs() - self.abs_season);
        // Each bin sees `per_bin` samples a period through a tent of interpolation weights
        // (sum of squares about 2/3 of that): normalise so a period teaches `gamma` of the gap.
        let per_bin = per_period / self.nbins as f64;
        if age < per_period {
            // First pass: a running mean per nearest bin. Gradient steps on the
            // interpolated profile would push each bin to make up for its unlearned
            // neighbour and start the profile with a ripple.
            let (k, frac) = if w < 0.5 {
                (i0, w + 0.5)
            } else {
                (i1, w - 0.5)
            };
            let seen = (frac * per_bin).floor().min(age);
            let target = x - self.lseason;
            self.bins[k] += ((target - f64::from(self.bins[k])) / (seen + 1.0)) as f32;
        } else {
            let g = w_learn * gamma / (per_bin * 2.0 / 3.0).max(1.0);
            self.bins[i0] += (g * (1.0 - w) * err) as f32;
            self.bins[i1] += (g * w * err) as f32;
        }
        // Keep the profile centred; the levels take the mean, so forecasts do not move.
        // Not during the first period: unvisited bins would take a share of the mean.
        if (self.n.is_multiple_of(256) && age >= per_period) || age == per_period.floor() {
            let nb = self.nbins as usize;
            let mean = self.bins[..nb].iter().map(|&b| f64::from(b)).sum::<f64>() / nb as f64;
            for b in &mut self.bins[..nb] {
                *b = (f64::from(*b) - mean) as f32;
            }
            if self.season_applied {
                self.lf += mean;
                self.ls += mean;
            }
            self.lseason += mean;
        }
    }

    /// Out-of-sample test of a gated profile on the series' changes over a lag: withdraws
    /// it once it adds to their mean square (it replays noise; a flat stretch of a real
    /// cycle leaves the square as it is), applies it again once it removes a fifth.
    /// Switching moves the levels by the profile's current value, so forecasts do not jump.
    fn gate(&mut self, per_period: f64, with: f64, without: f64, current: f64) {
        self.gate_n = self.gate_n.saturating_add(1);
        let w = (1.0 / f64::from(self.gate_n)).max(2.0 / per_period);
        self.gate_with += (w * ((with * with).min(1e30) - f64::from(self.gate_with))) as f32;
        self.gate_without +=
            (w * ((without * without).min(1e30) - f64::from(self.gate_without))) as f32;
        let ratio = f64::from(self.gate_with) / f64::from(self.gate_without).max(1e-300);
        let turn_on = !self.season_applied && self.gate_n >= GATE_MIN_ON && ratio < 0.8;
        let turn_off = self.season_applied && self.gate_n >= 256 && ratio > 1.05;
        if turn_on {
            // The levels followed the raw series, the slow one well behind the swing: take
            // the profile's own level, the one it was learned against.
            self.season_applied = true;
            self.lf = self.lseason;
            self.ls = self.lseason;
            self.trend = self.trend_season;
            self.trend_slow = self.trend_season;
        } else if turn_off {
            self.season_applied = false;
            self.lf += current;
            self.ls += current;
        }
        if turn_on || turn_off {
            // The drift residual's scale described the other model's errors (without the
            // profile: the unmodelled swing, several noise scales wide), and would blind
            // the change-point detector for hundreds of samples: it averages afresh from
            // here, starting from what it was.
            self.drift_start = self.n;
            self.cusum_pos = 0.0;
            self.cusum_neg = 0.0;
            self.run_len = 0;
            self.prev_ef = 0.0;
        }
    }

    /// Decides the season once the ring is full: configured, found by autocorrelation, or
    /// daily by wall clock; seeds the profile from the ring when it holds two periods.
    fn decide_season(&mut self, cfg: &DetectConfig, ts_ms: i64) {
        self.season = SEASON_NONE;
        let n_deltas = (self.n as usize - 1).min(NBINS);
        let mut deltas = self.bins;
        let deltas = &mut deltas[..n_deltas];
        deltas.sort_unstable_by(f32::total_cmp);
        let first_pos = deltas.iter().position(|&v| v > 0.0).unwrap_or(deltas.len());
        let valid = &deltas[first_pos..];
        self.bins = [0.0; NBINS];
        if valid.is_empty() {
            return;
        }
        let interval = (valid[valid.len() / 2].round() as i64).max(1);
        self.interval_ms = interval;
        let mut ordered = [0.0f64; RING];
        for (i, v) in ordered.iter_mut().enumerate() {
            *v = self.ring_back(RING - 1 - i);
        }
        // Without a season, the warm-up's line is the best first guess of the trend.
        let (_, slope) = line_fit(&ordered);
        if slope.is_finite() {
            self.trend = slope;
            self.trend_slow = slope;
        }
        let period = match cfg.season_len {
            1 => return,
            0 => match acf_period(&ordered) {
                Some(p) => p as i64,
                None if ts_ms >= EPOCH_MIN_MS
                    && interval <= 1_800_000
                    && DAY_MS / interval <= SEASON_GATE_MAX_PERIOD =>
                {
                    DAY_MS / interval
                }
                None => return,
            },
            p => i64::from(p),
        };
        if period < 2 {
            return;
        }
        // From here on a season is in use. A long one starts with no trend: 64 samples of
        // it say nothing about the trend, only about the seasonal slope of the moment.
        let is_daily = cfg.season_len == 0 && period == DAY_MS / interval && ts_ms >= EPOCH_MIN_MS;
        self.period_ms = if is_daily {
            DAY_MS
        } else {
            period.saturating_mul(interval)
        };
        self.nbins = period.min(NBINS as i64) as u8;
        // With one bin per sample, put the samples on the bin centres.
        self.origin_ms = if period <= NBINS as i64 {
            ts_ms - interval / 2
        } else {
            0
        };
        self.season = SEASON_ON;
        self.season_start = self.n;
        self.season_gated = is_daily;
        self.lseason = self.ls;
        self.abs_season = self.abs_s;
        if period as usize * 2 <= RING {
            self.season_applied = true;
            self.seed_season(&ordered, period as usize);
        } else if is_daily {
            // An assumed daily profile is not applied before it has shown it predicts (the
            // gate, from its second day on): the series is modelled as it is meanwhile,
            // with the warm-up's trend. While it is learned, an applied profile would be a
            // lagged copy of the series itself and hide spikes and shifts in it.
            self.season_applied = false;
            // Until then a real daily swing is unmodelled. The slow reference (a critically
            // damped Holt) lags a curve of amplitude A and period P by about
            // A (2π/P)² / BETA_SLOW: at P = 1440 (1-minute steps) a swing of 20 noise
            // scales is 4 scales of drift and would fire the change-point detector all
            // day, at P = 8640 (10 s) 0.1 scales, harmless. Where the lag is large, the
            // slow reference runs faster until the gate can first apply the profile, just
            // enough to keep the lag at `SEASON_LAG_MAX` (1-minute steps: about 0.09 instead
            // of 0.02, a memory of 20 samples, still a few times the fast level's); where
            // even that is not enough (5-minute steps), the change-point detector waits.
            let lag_per_amplitude = (std::f64::consts::TAU / period as f64).powi(2) / BETA_SLOW;
            if lag_per_amplitude > SEASON_LAG_MAX {
                let first_gate =
                    period as f64 + gate_lag(period as f64) as f64 + GATE_MIN_ON as f64;
                let until = self.n.saturating_add(first_gate as u32);
                let beta = (std::f64::consts::TAU / period as f64).powi(2) / SEASON_LAG_MAX;
                let alpha = 2.0 * beta.sqrt();
                if alpha <= REF_ALPHA_MAX {
                    self.ref_alpha = alpha as f32;
                    self.ref_until = until;
                } else {
                    self.cp_gate = until;
                }
            }
        } else {
            // A configured long season is applied from the start; 64 samples of it say
            // nothing about the trend, only the seasonal slope of the moment, and its
            // first period's curvature would look like drift.
            self.season_applied = true;
            self.trend = 0.0;
            self.trend_slow = 0.0;
            if period <= SEASON_GATE_MAX_PERIOD {
                self.cp_gate = self.n.saturating_add(period as u32);
            }
        }
    }

    /// Seeds the profile (one bin per sample) from the ring by a joint least-squares fit of
    /// a line plus one offset per phase (a plain line over a non-whole number of periods
    /// would take part of the season for a trend), and re-bases levels, trends and scales.
    fn seed_season(&mut self, ordered: &[f64; RING], period: usize) {
        // The latest sample (index RING-1) is at phase bin 0.
        let bin_of = |i: usize| (period * RING - (RING - 1 - i)) % period;
        let mut count = [0.0f64; NBINS];
        let mut mean_t = [0.0f64; NBINS];
        let mut mean_y = [0.0f64; NBINS];
        for (i, &y) in ordered.iter().enumerate() {
            let k = bin_of(i);
            count[k] += 1.0;
            mean_t[k] += i as f64;
            mean_y[k] += y;
        }
        for k in 0..period {
            mean_t[k] /= count[k].max(1.0);
            mean_y[k] /= count[k].max(1.0);
        }
        let (mut sxy, mut sxx) = (0.0, 0.0);
        for (i, &y) in ordered.iter().enumerate() {
            let k = bin_of(i);
            sxy += (i as f64 - mean_t[k]) * (y - mean_y[k]);
            sxx += (i as f64 - mean_t[k]).powi(2);
        }
        let b = if sxx > 0.0 { sxy / sxx } else { 0.0 };
        let mut offset = [0.0f64; NBINS];
        for ((o, &y), &t) in offset.iter_mut().zip(&mean_y).zip(&mean_t).take(period) {
            *o = y - b * t;
        }
        let a = offset[..period].iter().sum::<f64>() / period as f64;
        for (bin, &o) in self.bins.iter_mut().zip(&offset).take(period) {
            *bin = (o - a) as f32;
        }
        let mut abs_sum = 0.0;
        for (i, &y) in ordered.iter().enumerate() {
            abs_sum += (y - offset[bin_of(i)] - b * i as f64).abs();
        }
        // Residuals of a fit with period + 1 parameters understate the noise.
        let dof = (RING as f64 / (RING - period - 1).max(1) as f64).sqrt();
        let level = a + b * (RING - 1) as f64;
        self.lf = level;
        self.ls = level;
        self.lseason = level;
        self.trend = b;
        self.trend_slow = b;
        self.trend_season = b;
        self.abs_f = abs_sum / RING as f64 * dof;
        self.abs_s = self.abs_f;
        self.abs_season = self.abs_f;
        // The ring now holds deseasonalised values.
        for age in 0..RING {
            let idx = (self.ring_pos as usize + RING - 1 - age) % RING;
            self.ring[idx] -= self.bins[(period * RING - age) % period];
        }
    }
}

/// Lag of the daily profile's gate test, in samples: a quarter period, at most the ring.
fn gate_lag(per_period: f64) -> usize {
    (per_period / 4.0).clamp(1.0, RING as f64) as usize
}

/// A ramp that ended: `v[age]` (newest first) follows `slope_after` up to a break `k`
/// samples back and `slope_before` before it, through a level fitted by least squares.
/// Returns the level now and the sum of squared errors at the best break, `None` when
/// `v` is empty.
fn hinge_fit(v: &[f64], slope_after: f64, slope_before: f64) -> Option<(f64, f64)> {
    let n = v.len() as f64;
    let mut best: Option<(f64, f64)> = None;
    for k in 0..v.len() {
        // Value now minus the value `age` samples back, under this break.
        let drop = |age: usize| {
            let a = age.min(k) as f64;
            let b = age.saturating_sub(k) as f64;
            slope_after * a + slope_before * b
        };
        let level = v
            .iter()
            .enumerate()
            .map(|(age, &x)| x + drop(age))
            .sum::<f64>()
            / n;
        let sse: f64 = v
            .iter()
            .enumerate()
            .map(|(age, &x)| (x + drop(age) - level).powi(2))
            .sum();
        if sse.is_finite() && best.is_none_or(|(_, b)| sse < b) {
            best = Some((level, sse));
        }
    }
    best
}

/// Like [`hinge_fit`], with the slope before the break fitted (least squares) instead of
/// given: a ramp of unknown slope, then `slope_after` up to now. `(level now, SSE)` of the
/// best break, which is at least 2 samples from either end.
fn hinge_fit_free(v: &[f64], slope_after: f64) -> Option<(f64, f64)> {
    let n = v.len() as f64;
    let mut best: Option<(f64, f64)> = None;
    for k in 2..v.len().saturating_sub(2) {
        // y = x + slope_after * min(age, k) = level - s * max(age - k, 0).
        let (mut su, mut sy, mut suu, mut suy, mut syy) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for (age, &x) in v.iter().enumerate() {
            let y = x + slope_after * age.min(k) as f64;
            let u = age.saturating_sub(k) as f64;
            su += u;
            sy += y;
            suu += u * u;
            suy += u * y;
            syy += y * y;
        }
        let var_u = suu - su * su / n;
        if var_u <= 0.0 {
            continue;
        }
        let cov = suy - su * sy / n;
        let slope = cov / var_u;
        let level = (sy - slope * su) / n;
        let sse = (syy - sy * sy / n) - cov * slope;
        if sse.is_finite() && best.is_none_or(|(_, b)| sse < b) {
            best = Some((level, sse.max(0.0)));
        }
    }
    best
}

/// Least-squares line `a + b i` over `i = 0..len`.
fn line_fit(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean_i = (n - 1.0) / 2.0;
    let mean_v = v.iter().sum::<f64>() / n;
    let mut sxy = 0.0;
    let mut sxx = 0.0;
    for (i, &y) in v.iter().enumerate() {
        let di = i as f64 - mean_i;
        sxy += di * (y - mean_v);
        sxx += di * di;
    }
    let b = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    (mean_v - b * mean_i, b)
}

/// A period of 4–32 samples with a clear autocorrelation peak (preceded by a dip) in the
/// detrended, winsorised history, preferring the fundamental over its multiples.
fn acf_period(ordered: &[f64; RING]) -> Option<u32> {
    let (a, b) = line_fit(ordered);
    let mut y = [0.0f64; RING];
    for (i, v) in y.iter_mut().enumerate() {
        *v = ordered[i] - (a + b * i as f64);
    }
    let mut abs = y.map(f64::abs);
    let mad = median(&mut abs);
    let clip = if mad > 0.0 {
        4.0 * 1.4826 * mad
    } else {
        f64::INFINITY
    };
    for v in &mut y {
        *v = v.clamp(-clip, clip);
    }
    if !y.iter().any(|&v| v != 0.0) || y.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let mut r = [0.0f64; 34];
    for (lag, slot) in r.iter_mut().enumerate().skip(1) {
        let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
        for i in 0..RING - lag {
            sxy += y[i] * y[i + lag];
            sxx += y[i] * y[i];
            syy += y[i + lag] * y[i + lag];
        }
        *slot = if sxx > 0.0 && syy > 0.0 {
            sxy / (sxx * syy).sqrt()
        } else {
            0.0
        };
    }
    let mut best = 0.0f64;
    let mut candidates = [0usize; 32];
    let mut n_cand = 0;
    for lag in 4..=32 {
        let dip = r[1..lag].iter().cloned().fold(f64::INFINITY, f64::min);
        if r[lag] >= 0.5 && r[lag] >= r[lag - 1] && r[lag] >= r[lag + 1] && dip <= r[lag] - 0.3 {
            candidates[n_cand] = lag;
            n_cand += 1;
            best = best.max(r[lag]);
        }
    }
    candidates[..n_cand]
        .iter()
        .find(|&&lag| r[lag] >= 0.85 * best)
        .map(|&lag| lag as u32)
}

/// Median of a small slice (sorts it). NaN-free input assumed; NaNs sort last.
fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        0.5 * (v[mid - 1] + v[mid])
    }
}

fn finite_z(z: f64) -> f64 {
    if z.is_nan() { 0.0 } else { z.clamp(-1e6, 1e6) }
}

/// A number in at most about 4 significant digits, for sentences.
pub(crate) fn fmt_num(x: f64) -> String {
    let a = x.abs();
    if a == 0.0 {
        return "0".to_string();
    }
    if !(1e-3..1e7).contains(&a) {
        return format!("{x:.3e}");
    }
    let decimals = (3 - a.log10().floor() as i32).clamp(0, 6) as usize;
    let s = format!("{x:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[allow(clippy::too_many_arguments)]
fn explain(
    which: usize,
    value: f64,
    expected: f64,
    lower: f64,
    upper: f64,
    z: f64,
    run: u16,
    var_ew: f32,
    p: f64,
) -> String {
    let dir = if value >= expected { "above" } else { "below" };
    let (v, e, lo, hi) = (
        fmt_num(value),
        fmt_num(expected),
        fmt_num(lower),
        fmt_num(upper),
    );
    let tail = format!("calibrated tail probability {p:.1e}");
    match which {
        CHANGE => format!(
            "value {v} has been {dir} the expected {e} (normal range {lo} to {hi}) for {run} samples; \
             level shift or trend change (change_point, {tail})"
        ),
        VARIANCE => format!(
            "value {v} against the expected {e} (normal range {lo} to {hi}); the noise grew about {:.1}x \
             over the last {run} samples (variance, {tail})",
            f64::from(var_ew).max(1.0).sqrt()
        ),
        _ => {
            let far = if value > upper || value < lower {
                "far "
            } else {
                ""
            };
            format!(
                "value {v} is {far}{dir} the expected {e} (normal range {lo} to {hi}), {:.1} scales off \
                 (robust_residual, {tail})",
                z.abs()
            )
        }
    }
}
