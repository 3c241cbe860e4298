//! Behaviour tests for the detectors: each states a promise from the issue and can fail.

use super::backtest::{self, parse_timestamp};
use super::*;

/// Deterministic normal samples (splitmix64 + Box-Muller), so tests never flake.
struct Noise(u64);

impl Noise {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

const T0: i64 = 1_700_000_000_000;

/// Runs `values` at `step_ms` through one detector; returns observations.
fn run(cfg: &DetectConfig, step_ms: i64, values: &[f64]) -> Vec<Observation> {
    let mut det = SeriesDetector::new(cfg);
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| det.observe(cfg, T0 + i as i64 * step_ms, v))
        .collect()
}

fn episodes(obs: &[Observation], from: usize) -> Vec<usize> {
    obs.iter()
        .enumerate()
        .skip(from)
        .filter(|(_, o)| o.anomaly.is_some())
        .map(|(i, _)| i)
        .collect()
}

fn first_flag(obs: &[Observation], from: usize) -> Option<usize> {
    obs.iter()
        .enumerate()
        .skip(from)
        .find(|(_, o)| o.in_anomaly)
        .map(|(i, _)| i - from)
}

#[test]
fn state_is_at_most_one_kib_and_heap_free() {
    let size = std::mem::size_of::<SeriesDetector>();
    assert!(size <= 1024, "SeriesDetector is {size} bytes");
}

#[test]
fn step_of_ten_sigma_is_detected_within_three_samples() {
    let mut rng = Noise(1);
    let mut v: Vec<f64> = (0..600).map(|_| 50.0 + rng.normal()).collect();
    for x in &mut v[400..] {
        *x += 10.0;
    }
    let obs = run(&DetectConfig::default(), 1000, &v);
    let delay = first_flag(&obs, 400).expect("step not detected");
    assert!(delay <= 3, "delay {delay}");
    // One episode for one step: re-basing makes the new level normal.
    let eps = episodes(&obs, 400);
    assert_eq!(eps.len(), 1, "episodes at {eps:?}");
    assert!(
        obs[450..].iter().all(|o| !o.in_anomaly),
        "still anomalous long after the step"
    );
    assert!(
        (obs[599].expected - 60.0).abs() < 1.0,
        "did not adapt: {}",
        obs[599].expected
    );
}

#[test]
fn gaussian_noise_gives_few_false_episodes() {
    let cfg = DetectConfig::default();
    let mut total = 0;
    for seed in 0..5 {
        let mut rng = Noise(100 + seed);
        let v: Vec<f64> = (0..10_000).map(|_| 20.0 + 3.0 * rng.normal()).collect();
        let obs = run(&cfg, 1000, &v);
        let eps = episodes(&obs, 0);
        assert!(
            eps.len() <= 3,
            "seed {seed}: {} false episodes at {eps:?}",
            eps.len()
        );
        total += eps.len();
        assert!(obs.iter().all(|o| (0.0..=1.0).contains(&o.score)));
    }
    assert!(total <= 8, "{total} false episodes over 50,000 samples");
}

fn daily(step_ms: i64, days: usize, seed: u64) -> Vec<f64> {
    let per_day = (86_400_000 / step_ms) as usize;
    let mut rng = Noise(seed);
    (0..per_day * days)
        .map(|i| {
            let phase = (i % per_day) as f64 / per_day as f64 * std::f64::consts::TAU;
            100.0 + 40.0 * phase.sin() + 15.0 * (2.0 * phase).cos() + 2.0 * rng.normal()
        })
        .collect()
}

#[test]
fn daily_seasonality_at_one_and_five_minutes_is_not_flagged() {
    let cfg = DetectConfig::default();
    for (step, days) in [(60_000, 5), (300_000, 14)] {
        let per_day = (86_400_000 / step) as usize;
        let v = daily(step, days, 7);
        let obs = run(&cfg, step, &v);
        // The first day learns the profile; after it, no more than the configured false
        // alarm rate allows for (about 0.3 per 1,000 samples over three detectors).
        let eps = episodes(&obs, per_day);
        let allowed = 1 + (v.len() - per_day) / 5000;
        assert!(eps.len() <= allowed, "step {step}: episodes at {eps:?}");
        assert!(
            episodes(&obs, 0).len() <= allowed + 1,
            "step {step}: first day"
        );
    }
}

#[test]
fn level_change_on_a_daily_series_is_not_replayed_a_day_later() {
    // A 1-minute daily series whose level rises by 24 noise scales over an hour on day 3
    // and stays there: reported when it happens, not again when the profile comes round.
    let step = 60_000;
    let cfg = DetectConfig::default();
    for (seed, size) in [(11, 0.4), (12, -0.4), (13, 0.3)] {
        let mut v = daily(step, 6, seed);
        let start = 1440 * 3 + 500;
        for (i, x) in v.iter_mut().enumerate().skip(start) {
            *x += 2.0 * size * (i - start).min(60) as f64;
        }
        let obs = run(&cfg, step, &v);
        assert!(
            first_flag(&obs, start).is_some_and(|d| d <= 30),
            "seed {seed}: ramp not reported"
        );
        let later: Vec<usize> = episodes(&obs, start + 200)
            .into_iter()
            .filter(|&i| i < start + 1440 + 300)
            .collect();
        assert!(later.is_empty(), "seed {seed}: replayed at {later:?}");
    }
}

#[test]
fn seasonal_break_is_detected() {
    let step = 300_000;
    let mut v = daily(step, 14, 9);
    // On day 10 the daily rise does not come: the value stays at the night level for 3 hours.
    let start = 288 * 10;
    let hold = v[start - 1];
    for x in &mut v[start..start + 36] {
        *x = hold;
    }
    let obs = run(&DetectConfig::default(), step, &v);
    assert!(
        episodes(&obs[..start], 288).is_empty(),
        "false alarms before the break"
    );
    let delay = first_flag(&obs, start).expect("seasonal break not detected");
    assert!(delay <= 24, "delay {delay}");
}

#[test]
fn cpu_hog_jump_is_flagged_within_three_samples() {
    let mut rng = Noise(3);
    let mut v: Vec<f64> = (0..400)
        .map(|_| (5.0 + 1.5 * rng.normal()).clamp(0.0, 100.0))
        .collect();
    for x in &mut v[300..360] {
        *x = (99.0 + 0.5 * rng.normal()).min(100.0);
    }
    let obs = run(&DetectConfig::default(), 1000, &v);
    let delay = first_flag(&obs, 300).expect("hog not detected");
    assert!(delay <= 3, "delay {delay}");
    assert!(episodes(&obs, 0).len() <= 3);
}

#[test]
fn slow_memory_leak_ramp_is_flagged_within_thirty_samples() {
    let mut rng = Noise(4);
    // 2 GB ± 5 MB, then +2 MB per second.
    let mut v: Vec<f64> = (0..900).map(|_| 2.0e9 + 5.0e6 * rng.normal()).collect();
    for (k, x) in v[600..].iter_mut().enumerate() {
        *x += 2.0e6 * k as f64;
    }
    let obs = run(&DetectConfig::default(), 1000, &v);
    assert!(
        episodes(&obs[..600], 0).is_empty(),
        "false alarm before the leak"
    );
    let delay = first_flag(&obs, 600).expect("leak not detected");
    assert!(delay <= 30, "delay {delay}");
}

#[test]
fn ramp_that_levels_off_is_not_reported_again_and_again() {
    // A fill that stops: +5 MB/s for 60 s, then the new level holds for 40 minutes.
    let mut rng = Noise(6);
    let mut level = 2.0e9;
    let v: Vec<f64> = (0..3000)
        .map(|i| {
            if (600..660).contains(&i) {
                level += 5.0e6;
            }
            level + 5.0e6 * rng.normal()
        })
        .collect();
    let obs = run(&DetectConfig::default(), 1000, &v);
    assert!(
        first_flag(&obs, 600).is_some_and(|d| d <= 30),
        "ramp missed"
    );
    // The ramp is re-based a few times before its slope shows, and its end may be
    // reported too (it is a change of trend); soon after it the held level is normal, not
    // a ramp that goes on and is re-based again and again.
    let eps = episodes(&obs, 600);
    assert!(eps.len() <= 5, "episodes at {eps:?}");
    assert!(episodes(&obs, 700).is_empty(), "episodes at {eps:?}");
    assert!(
        (obs[2999].expected - level).abs() < 2.0e7,
        "did not settle: expected {} for {level}",
        obs[2999].expected
    );
}

#[test]
fn steady_trend_is_learned_not_flagged() {
    let mut rng = Noise(5);
    let v: Vec<f64> = (0..5000)
        .map(|i| 10.0 + 0.05 * i as f64 + rng.normal())
        .collect();
    let obs = run(&DetectConfig::default(), 1000, &v);
    let eps = episodes(&obs, 0);
    assert!(eps.len() <= 1, "episodes at {eps:?}");
}

#[test]
fn spike_is_flagged_at_once_and_recurring_spikes_stop_alerting() {
    let mut rng = Noise(6);
    let mut v: Vec<f64> = (0..20_000).map(|_| 10.0 + rng.normal()).collect();
    v[500] += 12.0;
    let obs = run(&DetectConfig::default(), 1000, &v);
    assert_eq!(first_flag(&obs, 500), Some(0));
    let detector = obs[500].anomaly.as_ref().map(|a| a.detector);
    assert_eq!(detector, Some("robust_residual"));

    // Spiky but normal: a 6σ spike every 40 samples becomes this series' habit once it
    // has a history (in its first few hundred samples, tail events teach the calibration
    // almost as normal ones: it has no history yet to call them rare by).
    let mut v: Vec<f64> = (0..20_000).map(|_| 10.0 + rng.normal()).collect();
    for i in (1000..v.len()).step_by(40) {
        v[i] += 6.0;
    }
    let cfg = DetectConfig {
        max_episodes_per_hour: 1e9,
        episode_burst: 1e9,
        ..DetectConfig::default()
    };
    let obs = run(&cfg, 1000, &v);
    let early = episodes(&obs[..3000], 1000).len();
    let late = episodes(&obs[18_000..], 0).len();
    // The residual's tail learns its shape from its own tail events, so a new habit
    // alerts a couple of times (not dozens) before it is learned.
    assert!(early >= 2, "the first spikes should alert ({early})");
    assert!(
        late <= 3,
        "habitual spikes still alert: {late} episodes in the last 2,000 samples"
    );
}

#[test]
fn flat_and_non_finite_series_score_zero_never_nan() {
    let cfg = DetectConfig::default();
    let obs = run(&cfg, 1000, &[42.0; 500]);
    assert!(obs.iter().all(|o| o.score == 0.0 && o.anomaly.is_none()));
    assert!(obs.iter().all(|o| o.expected == 42.0));

    let mut det = SeriesDetector::new(&cfg);
    let weird = [
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::MAX,
        -f64::MAX,
        1e300,
        f64::MIN_POSITIVE,
        0.0,
        -0.0,
    ];
    for i in 0..3000i64 {
        let v = weird[(i as usize * 7) % weird.len()];
        let o = det.observe(&cfg, i * 1000, v);
        assert!((0.0..=1.0).contains(&o.score), "score {}", o.score);
        assert!(
            !o.expected.is_nan() && !o.lower.is_nan() && !o.upper.is_nan(),
            "{o:?}"
        );
        if !v.is_finite() {
            assert_eq!(o.score, 0.0);
        }
    }
    // Timestamps going backwards, repeating, or extreme do not panic either.
    for (i, ts) in [i64::MIN, i64::MAX, 0, 0, -5, i64::MAX].iter().enumerate() {
        let o = det.observe(&cfg, *ts, i as f64);
        assert!((0.0..=1.0).contains(&o.score));
    }
    // A flat series that finally moves is noticed.
    let mut v = vec![3.0; 300];
    v.extend([50.0; 10]);
    let obs = run(&cfg, 1000, &v);
    assert!(obs[300].score > 0.9);
}

#[test]
fn non_finite_values_leave_the_state_untouched() {
    let cfg = DetectConfig::default();
    let mut rng = Noise(8);
    let v: Vec<f64> = (0..300).map(|_| 5.0 + rng.normal()).collect();
    let mut a = SeriesDetector::new(&cfg);
    let mut b = SeriesDetector::new(&cfg);
    for (i, &x) in v.iter().enumerate() {
        let ts = i as i64 * 1000;
        a.observe(&cfg, ts, x);
        b.observe(&cfg, ts, x);
        if i % 10 == 0 {
            assert_eq!(b.observe(&cfg, ts, f64::NAN).score, 0.0);
        }
    }
    let (oa, ob) = (a.observe(&cfg, 300_000, 9.0), b.observe(&cfg, 300_000, 9.0));
    assert_eq!(oa, ob);
}

#[test]
fn hysteresis_min_duration_and_rate_limit_bound_the_episodes() {
    let mut rng = Noise(9);
    let mut v: Vec<f64> = (0..3000).map(|_| rng.normal()).collect();
    // Twenty isolated 15σ spikes in 20 minutes.
    let spikes: Vec<usize> = (0..20).map(|k| 200 + 60 * k).collect();
    for &i in &spikes {
        v[i] += 15.0;
    }
    let cfg = DetectConfig::default();
    let mut det = SeriesDetector::new(&cfg);
    let obs: Vec<_> = v
        .iter()
        .enumerate()
        .map(|(i, &x)| det.observe(&cfg, i as i64 * 1000, x))
        .collect();
    let n_eps = episodes(&obs, 0).len();
    // Burst of 5 and 12 per hour: about 5 + 12 * (20 min / 60 min) = 9.
    assert!((5..=10).contains(&n_eps), "{n_eps} episodes reported");
    assert!(
        det.suppressed_episodes() as usize >= 20 - n_eps - 1,
        "suppressed {}",
        det.suppressed_episodes()
    );

    // Minimum duration 3: single spikes no longer open episodes, a shift still does.
    let cfg = DetectConfig {
        min_duration: 3,
        ..DetectConfig::default()
    };
    let mut v: Vec<f64> = (0..1000).map(|_| rng.normal()).collect();
    v[300] += 15.0;
    for x in &mut v[600..] {
        *x += 20.0;
    }
    let obs = run(&cfg, 1000, &v);
    let eps = episodes(&obs, 0);
    assert_eq!(eps.len(), 1, "episodes at {eps:?}");
    assert!((600..=605).contains(&eps[0]));
}

#[test]
fn anomaly_carries_explanation_and_range() {
    let mut rng = Noise(10);
    let mut v: Vec<f64> = (0..300).map(|_| 12.0 + rng.normal()).collect();
    v[250] = 97.3;
    let obs = run(&DetectConfig::default(), 1000, &v);
    let a = obs[250].anomaly.as_ref().expect("no anomaly");
    assert!(a.lower < a.expected && a.expected < a.upper);
    assert!(a.upper < 97.3 && a.lower > 5.0, "{a:?}");
    assert!((0.5..=1.0).contains(&a.score));
    assert_eq!(a.value, 97.3);
    assert!(
        a.explanation
            .starts_with("value 97.3 is far above the expected 12"),
        "{}",
        a.explanation
    );
}

#[test]
fn variance_increase_is_detected() {
    let mut rng = Noise(11);
    let mut v: Vec<f64> = (0..1200).map(|_| 30.0 + rng.normal()).collect();
    for x in &mut v[800..900] {
        *x = 30.0 + 3.0 * rng.normal();
    }
    let obs = run(&DetectConfig::default(), 1000, &v);
    assert!(episodes(&obs[..800], 0).is_empty());
    let delay = first_flag(&obs, 800).expect("variance change not detected");
    assert!(delay <= 15, "delay {delay}");
}

#[test]
fn short_period_is_found_with_index_timestamps() {
    // Hourly data with a daily cycle, timestamped 1, 2, 3, ... (seconds), like Yahoo A1.
    let mut rng = Noise(12);
    let v: Vec<f64> = (0..2000)
        .map(|i| {
            500.0
                + 200.0 * ((i % 24) as f64 / 24.0 * std::f64::consts::TAU).sin()
                + 10.0 * rng.normal()
        })
        .collect();
    let cfg = DetectConfig::default();
    let mut det = SeriesDetector::new(&cfg);
    let mut obs = Vec::new();
    for (i, &x) in v.iter().enumerate() {
        obs.push(det.observe(&cfg, (i as i64 + 1) * 1000, x));
    }
    assert_eq!(det.season_period_ms(), Some(24_000));
    let eps = episodes(&obs, 0);
    assert!(eps.len() <= 1, "episodes at {eps:?}");
}

#[test]
fn bank_is_bounded_and_evicts_least_recently_updated() {
    let mut bank = DetectorBank::new(DetectConfig::default(), 3);
    for t in 0..10 {
        for key in ["a", "b", "c"] {
            bank.observe(&key, t * 1000, 1.0);
        }
    }
    assert_eq!((bank.len(), bank.evictions()), (3, 0));
    bank.observe(&"a", 11_000, 1.0);
    bank.observe(&"d", 11_000, 1.0); // evicts "b", the least recently updated
    assert_eq!((bank.len(), bank.evictions()), (3, 1));
    assert!(bank.get(&"b").is_none());
    assert_eq!(bank.get(&"a").map(|d| d.samples()), Some(11));
    assert_eq!(bank.get(&"d").map(|d| d.samples()), Some(1));
    bank.observe(&"e", 12_000, 1.0); // evicts "c"
    assert!(bank.get(&"c").is_none() && bank.get(&"a").is_some());
    let mut tiny = DetectorBank::new(DetectConfig::default(), 0);
    tiny.observe(&1u32, 0, 1.0);
    tiny.observe(&2u32, 0, 1.0);
    assert_eq!((tiny.len(), tiny.evictions()), (1, 1));
}

#[test]
fn timestamps_parse_in_the_usual_shapes() {
    let base = 1_704_067_200_000; // 2024-01-01T00:00:00Z
    for s in [
        "2024-01-01T00:00:00Z",
        "2024-01-01 00:00:00",
        "2024-01-01T00:00",
        "2024-01-01",
        "2024/01/01 00:00:00",
        "2024-01-01T01:00:00+01:00",
        "2023-12-31T19:00:00-0500",
        "1704067200",
        "1704067200.0",
        "1704067200000",
        " 2024-01-01T00:00:00.000000000Z ",
    ] {
        assert_eq!(parse_timestamp(s), Some(base), "{s}");
    }
    assert_eq!(parse_timestamp("2024-01-01T00:00:00.25Z"), Some(base + 250));
    assert_eq!(parse_timestamp("12"), Some(12_000));
    for bad in [
        "",
        "yesterday",
        "2024-13-01",
        "2024-02-30",
        "2024-01-01T25:00",
        "2024-01-01T00:00:00Q",
        "nan",
        "1e400",
    ] {
        assert_eq!(parse_timestamp(bad), None, "{bad}");
    }
}

#[test]
fn backtest_echoes_rows_and_names_bad_lines() {
    let input = "timestamp,value\n\n2024-01-01 00:00:00,1.5\n\"2024-01-01 00:01:00\",2,ignored\n1704067320,nan\n";
    let mut out = Vec::new();
    let n = backtest::run(input, &DetectConfig::default(), &mut out).expect("backtest");
    assert_eq!(n, 3);
    let text = String::from_utf8(out).expect("utf8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "timestamp,value,anomaly_score");
    assert_eq!(lines[1], "2024-01-01 00:00:00,1.5,0.000000");
    assert_eq!(lines[2], "2024-01-01 00:01:00,2,0.000000");
    assert_eq!(lines[3], "1704067320,nan,0.000000");

    let err = backtest::parse_csv("timestamp,value\n2024-01-01,1\n2024-01-02,abc\n")
        .expect_err("bad value");
    assert_eq!(err.line, 3);
    assert!(
        err.to_string().starts_with("line 3: value is not a number"),
        "{err}"
    );
    let err = backtest::parse_csv("1,1\nfoo,2\n").expect_err("bad timestamp");
    assert_eq!(err.line, 2);
    let err = backtest::parse_csv("1,1\n2\n").expect_err("one column");
    assert_eq!(err.line, 2);
    assert_eq!(backtest::parse_csv("").map(|r| r.len()), Ok(0));
}

#[test]
fn config_reads_from_json_and_validates() {
    let cfg: DetectConfig =
        serde_json::from_str(r#"{"warmup": 10, "season_len": 1}"#).expect("json");
    assert_eq!(cfg.warmup, 10);
    assert_eq!(cfg.season_len, 1);
    assert_eq!(
        cfg.false_alarm_rate,
        DetectConfig::default().false_alarm_rate
    );
    assert!(serde_json::from_str::<DetectConfig>(r#"{"warmpu": 10}"#).is_err());
    assert!(cfg.validate().is_ok());
    let bad = DetectConfig {
        close_threshold: 0.9,
        ..DetectConfig::default()
    };
    assert_eq!(bad.validate().map_err(|e| e.field), Err("close_threshold"));
}
