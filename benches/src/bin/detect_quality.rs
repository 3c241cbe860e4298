//! `detect-quality`: quality and cost of the node agent's edge intelligence.
//!
//! `cargo run --release -p benches --bin detect-quality` (hooked to `cargo xtask bench
//! detect`). Everything is generated or read deterministically, so two runs give the same
//! quality figures (timings vary with the machine):
//!
//! 1. **Detection quality** on synthetic labelled series: normal behaviour (noise, trend,
//!    daily seasonality at 1 and 5 minutes, spiky-but-normal, random walk, CPU-like,
//!    heavy-tailed, quantised counts, hourly data with index timestamps) with injected
//!    spikes, level shifts, trend changes, seasonal breaks, variance changes and CPU hogs.
//!    Event-level scoring: a labelled window counts as detected if a reported episode is
//!    open in it (or within `TOLERANCE` samples after it); an episode that starts outside
//!    every window (plus tolerance) is a false positive. Delay = first flagged sample minus
//!    window start, in samples.
//! 2. **Cost**: ns per sample per series over 10,000 series, bytes of state per series
//!    (`size_of`, no heap, and the resident memory actually added), CPU share of one core
//!    for 10,000 series at one sample a second.
//! 3. **Log template grouping accuracy** (LogPAI's definition) on the labelled logs in
//!    `benches/data/logs` (written by `generate.py` there), through the same code as
//!    `node-agent logs`.
//!
//! Prints a table and writes `target/detect-quality.json`.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use node_agent::detect::{DetectConfig, DetectorBank, SeriesDetector};
use node_agent::logs::{LogFormat, MinerConfig, backtest};
use serde_json::json;

/// Samples after a window's end in which a detection still counts.
const TOLERANCE: usize = 3;
const T0: i64 = 1_700_000_000_000;

/// splitmix64: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
    fn laplace(&mut self) -> f64 {
        let u = self.uniform() - 0.5;
        -u.signum() * (1.0 - 2.0 * u.abs()).ln() / std::f64::consts::SQRT_2
    }
    fn poisson(&mut self, lambda: f64) -> f64 {
        let l = (-lambda).exp();
        let (mut k, mut p) = (0.0, 1.0);
        loop {
            p *= self.uniform();
            if p <= l {
                return k;
            }
            k += 1.0;
        }
    }
    fn sign(&mut self) -> f64 {
        if self.uniform() < 0.5 { -1.0 } else { 1.0 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    Spike,
    LevelShift,
    TrendChange,
    SeasonalBreak,
    VarianceChange,
    CpuHog,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Spike => "spike",
            Kind::LevelShift => "level_shift",
            Kind::TrendChange => "trend_change",
            Kind::SeasonalBreak => "seasonal_break",
            Kind::VarianceChange => "variance_change",
            Kind::CpuHog => "cpu_hog",
        }
    }
}

struct Window {
    start: usize,
    end: usize,
    kind: Kind,
}

/// One labelled series.
struct Case {
    base: &'static str,
    step_ms: i64,
    /// Index timestamps (1, 2, 3, ... seconds), like Yahoo's A1 set.
    index_ts: bool,
    seed: u64,
    values: Vec<f64>,
    windows: Vec<Window>,
}

/// Normal behaviour of a base: level, noise and seasonal parts kept apart so anomalies
/// can act on them.
struct Base {
    name: &'static str,
    step_ms: i64,
    len: usize,
    /// Samples before the first anomaly (warm-up, and a first period for daily profiles).
    quiet: usize,
    /// Noise scale the anomaly sizes refer to.
    sigma: f64,
    kinds: &'static [Kind],
    index_ts: bool,
}

const GENERIC: &[Kind] = &[
    Kind::Spike,
    Kind::LevelShift,
    Kind::TrendChange,
    Kind::VarianceChange,
];
const SEASONAL: &[Kind] = &[
    Kind::Spike,
    Kind::LevelShift,
    Kind::TrendChange,
    Kind::VarianceChange,
    Kind::SeasonalBreak,
];
const CPU: &[Kind] = &[
    Kind::Spike,
    Kind::CpuHog,
    Kind::LevelShift,
    Kind::TrendChange,
];

fn bases() -> Vec<Base> {
    let b = |name, step_ms, len, quiet, sigma, kinds, index_ts| Base {
        name,
        step_ms,
        len,
        quiet,
        sigma,
        kinds,
        index_ts,
    };
    vec![
        b("noise_1s", 1_000, 3_000, 200, 2.0, GENERIC, false),
        b("trend_1m", 60_000, 3_000, 200, 1.0, GENERIC, false),
        b(
            "daily_1m",
            60_000,
            7 * 1440,
            1440 + 300,
            2.0,
            SEASONAL,
            false,
        ),
        b("daily_5m", 300_000, 21 * 288, 2 * 288, 2.0, SEASONAL, false),
        b("spiky_1s", 1_000, 4_000, 300, 1.0, GENERIC, false),
        b("random_walk_1m", 60_000, 3_000, 300, 1.0, GENERIC, false),
        b("cpu_1s", 1_000, 3_000, 200, 1.5, CPU, false),
        b("heavy_tail_1m", 60_000, 3_000, 300, 1.0, GENERIC, false),
        b(
            "counts_10s",
            10_000,
            3_000,
            300,
            3.0f64.sqrt(),
            GENERIC,
            false,
        ),
        b("hourly_index", 3_600_000, 2_000, 200, 10.0, SEASONAL, true),
    ]
}

/// The seasonal component of a base at sample `i`.
fn season(base: &Base, i: usize) -> f64 {
    match base.name {
        "daily_1m" | "daily_5m" => {
            let per_day = (86_400_000 / base.step_ms) as usize;
            let phase = (i % per_day) as f64 / per_day as f64 * std::f64::consts::TAU;
            40.0 * phase.sin() + 15.0 * (2.0 * phase).cos()
        }
        "hourly_index" => {
            let phase = (i % 24) as f64 / 24.0 * std::f64::consts::TAU;
            200.0 * phase.sin() + 60.0 * (3.0 * phase).cos()
        }
        _ => 0.0,
    }
}

fn generate(base: &Base, seed: u64) -> Case {
    let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ base.len as u64);
    let s = base.sigma;
    // Anomalies: 5 per series, evenly spread after the quiet period with some jitter.
    let n_anom = 5;
    let span = (base.len - base.quiet) / n_anom;
    let mut windows = Vec::new();
    for k in 0..n_anom {
        let start = base.quiet + k * span + (rng.uniform() * span as f64 * 0.3) as usize;
        let kind = base.kinds[(seed as usize + k) % base.kinds.len()];
        let len = match kind {
            Kind::Spike => 1,
            Kind::LevelShift => 10,
            Kind::TrendChange => 70,
            Kind::SeasonalBreak => {
                if base.name == "daily_1m" {
                    180
                } else {
                    36
                }
            }
            Kind::VarianceChange => 80,
            Kind::CpuHog => 60,
        };
        windows.push(Window {
            start,
            end: start + len,
            kind,
        });
    }
    // Per-window sizes.
    let sizes: Vec<f64> = windows
        .iter()
        .map(|w| match w.kind {
            Kind::Spike => rng.range(6.0, 10.0) * rng.sign(),
            Kind::LevelShift => rng.range(4.0, 8.0) * rng.sign(),
            Kind::TrendChange => rng.range(0.3, 0.5) * rng.sign(),
            Kind::VarianceChange => rng.range(3.0, 5.0),
            _ => 0.0,
        })
        .collect();
    let mut level = 0.0;
    let mut ar = 0.0;
    let mut values = Vec::with_capacity(base.len);
    // Anomaly sizes are in units of the noise where they happen. For counts that is the
    // Poisson rate's own √λ, which a trend change or level shift raises (3 + 30–50 after a
    // trend change: four times the starting √3); sized on the starting noise, later
    // "6σ" spikes there were 1.5–2 local standard deviations, and each window's noise is
    // fixed at its start so a ramp does not grow with itself.
    let local_sigma = |level: f64| match base.name {
        "counts_10s" => (3.0 + f64::abs(level)).max(0.1).sqrt(),
        _ => s,
    };
    let mut window_sigma = vec![s; windows.len()];
    let mut var_sigma = s;
    for i in 0..base.len {
        let mut noise_mult = 1.0;
        let mut extra = 0.0;
        let mut season_i = season(base, i);
        let mut hog = false;
        for ((w, &size), ws) in windows.iter().zip(&sizes).zip(&mut window_sigma) {
            if i == w.start {
                *ws = local_sigma(level);
            }
            let s = *ws;
            match w.kind {
                Kind::Spike if i == w.start => extra += size * s,
                Kind::LevelShift if i == w.start => level += size * s,
                // A ramp for 60 samples, then the new level holds.
                Kind::TrendChange if i >= w.start && i < w.start + 60 => level += size * s,
                Kind::SeasonalBreak if i >= w.start && i < w.end => {
                    season_i = season(base, w.start)
                }
                Kind::VarianceChange if i >= w.start && i < w.end => {
                    noise_mult = size;
                    var_sigma = s;
                }
                Kind::CpuHog if i >= w.start && i < w.end => hog = true,
                _ => {}
            }
        }
        let v = match base.name {
            "noise_1s" => 50.0 + level + extra + noise_mult * s * rng.normal(),
            "trend_1m" => 100.0 + 0.02 * i as f64 + level + extra + noise_mult * s * rng.normal(),
            "daily_1m" | "daily_5m" | "hourly_index" => {
                500.0 + season_i + level + extra + noise_mult * s * rng.normal()
            }
            "spiky_1s" => {
                // Spiky but normal: 2% of samples jump 3-5σ up.
                let habit = if rng.uniform() < 0.02 {
                    rng.range(3.0, 5.0) * s
                } else {
                    0.0
                };
                20.0 + level + extra + habit + noise_mult * s * rng.normal()
            }
            "random_walk_1m" => {
                ar = 0.95 * ar + noise_mult * s * rng.normal();
                200.0 + ar + level + extra
            }
            "cpu_1s" => {
                if hog {
                    (97.0 + 1.5 * rng.normal()).clamp(0.0, 100.0)
                } else {
                    (5.0 + level.abs() + extra.abs() + noise_mult * s * rng.normal())
                        .clamp(0.0, 100.0)
                }
            }
            "heavy_tail_1m" => 30.0 + level + extra + noise_mult * s * rng.laplace(),
            "counts_10s" => {
                let lambda = (3.0 + level.abs()).max(0.1);
                let mut x = rng.poisson(lambda);
                if noise_mult > 1.0 {
                    x = (x + noise_mult * var_sigma * rng.normal()).round().max(0.0);
                }
                x + extra.abs().round()
            }
            _ => unreachable!("unknown base"),
        };
        values.push(v);
    }
    Case {
        base: base.name,
        step_ms: base.step_ms,
        index_ts: base.index_ts,
        seed,
        values,
        windows,
    }
}

#[derive(Default, Clone)]
struct Score {
    windows: usize,
    detected: usize,
    episodes: usize,
    true_episodes: usize,
    false_episodes: usize,
    samples: usize,
    delays: Vec<usize>,
    /// False-positive episodes by the detector that opened them.
    false_by_detector: std::collections::BTreeMap<&'static str, usize>,
}

impl Score {
    fn add(&mut self, o: &Score) {
        self.windows += o.windows;
        self.detected += o.detected;
        self.episodes += o.episodes;
        self.true_episodes += o.true_episodes;
        self.false_episodes += o.false_episodes;
        self.samples += o.samples;
        self.delays.extend(&o.delays);
        for (k, v) in &o.false_by_detector {
            *self.false_by_detector.entry(k).or_default() += v;
        }
    }
    fn precision(&self) -> f64 {
        if self.episodes == 0 {
            1.0
        } else {
            self.true_episodes as f64 / self.episodes as f64
        }
    }
    fn recall(&self) -> f64 {
        if self.windows == 0 {
            1.0
        } else {
            self.detected as f64 / self.windows as f64
        }
    }
    fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }
    fn median_delay(&self) -> Option<f64> {
        median(&self.delays)
    }
}

fn median(v: &[usize]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_unstable();
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m] as f64
    } else {
        (v[m - 1] + v[m]) as f64 / 2.0
    })
}

/// `DETECT_TRACE=base:seed:from:to` prints the detector's state on those samples of one
/// case, e.g. `daily_1m:1:3250:3270`.
fn parse_trace(spec: &str) -> Option<(&str, u64, usize, usize)> {
    let mut f = spec.split(':');
    let base = f.next()?;
    let seed = f.next()?.parse().ok()?;
    let from = f.next()?.parse().ok()?;
    let to = f.next()?.parse().ok()?;
    Some((base, seed, from, to))
}

/// Runs the agent's detector over a case; scores it overall and per anomaly kind.
fn evaluate(case: &Case, cfg: &DetectConfig) -> (Score, HashMap<Kind, Score>) {
    let mut det = SeriesDetector::new(cfg);
    let trace_var = std::env::var("DETECT_TRACE").ok();
    let trace = trace_var.as_deref().and_then(parse_trace);
    let mut opened_by: HashMap<usize, &'static str> = HashMap::new();
    let flags: Vec<bool> = case
        .values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let ts = if case.index_ts {
                (i as i64 + 1) * 1000
            } else {
                T0 + i as i64 * case.step_ms
            };
            let obs = det.observe(cfg, ts, v);
            if trace.is_some_and(|(base, seed, from, to)| {
                base == case.base && seed == case.seed && (from..to).contains(&i)
            }) {
                println!(
                    "{i} x {v:.3} expected {:.3} score {:.3} {}",
                    obs.expected,
                    obs.score,
                    det.debug_state(ts)
                );
            }
            if let Some(a) = &obs.anomaly {
                opened_by.insert(i, a.detector);
            }
            obs.in_anomaly
        })
        .collect();
    // Episodes: maximal runs of flagged samples.
    let mut episodes = Vec::new();
    let mut i = 0;
    while i < flags.len() {
        if flags[i] {
            let start = i;
            while i < flags.len() && flags[i] {
                i += 1;
            }
            episodes.push((start, i));
        } else {
            i += 1;
        }
    }
    let mut total = Score {
        samples: case.values.len(),
        episodes: episodes.len(),
        ..Score::default()
    };
    let mut per_kind: HashMap<Kind, Score> = HashMap::new();
    for w in &case.windows {
        let k = per_kind.entry(w.kind).or_default();
        k.windows += 1;
        total.windows += 1;
        let hit = (w.start..(w.end + TOLERANCE).min(flags.len())).find(|&j| flags[j]);
        if let Some(j) = hit {
            k.detected += 1;
            total.detected += 1;
            k.delays.push(j - w.start);
            total.delays.push(j - w.start);
        } else if std::env::var_os("DETECT_QUALITY_FP").is_some() {
            println!(
                "MISS {} seed {} {} at {}..{}",
                case.base,
                case.seed,
                w.kind.name(),
                w.start,
                w.end
            );
        }
    }
    for &(s, e) in &episodes {
        let matched = case
            .windows
            .iter()
            .find(|w| s < w.end + TOLERANCE && e > w.start);
        match matched {
            Some(w) => {
                total.true_episodes += 1;
                per_kind.entry(w.kind).or_default().true_episodes += 1;
            }
            None => {
                total.false_episodes += 1;
                let by = opened_by.get(&s).copied().unwrap_or("?");
                if std::env::var_os("DETECT_QUALITY_FP").is_some() {
                    // The nearest window before the episode: most false episodes are
                    // after-effects of a real change.
                    let prev = case.windows.iter().rfind(|w| w.start <= s);
                    let (kind, ago) =
                        prev.map_or(("-", 0), |w| (w.kind.name(), s.saturating_sub(w.end)));
                    println!(
                        "FP {} seed {} at {s}..{e} by {by}; {ago} samples after {kind}",
                        case.base, case.seed
                    );
                }
                *total.false_by_detector.entry(by).or_default() += 1;
            }
        }
    }
    (total, per_kind)
}

/// Resident memory of this process, bytes.
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

struct Cost {
    ns_per_sample: f64,
    bank_ns_per_sample: f64,
    state_bytes: usize,
    rss_bytes_per_series: Option<f64>,
    bank_rss_bytes_per_series: Option<f64>,
    cpu_percent_10k_at_1s: f64,
    series: usize,
    steps: usize,
}

fn cost(cfg: &DetectConfig) -> Cost {
    let (n_series, steps) = (10_000usize, 1_000usize);
    let mut rng = Rng(42);
    let table: Vec<f64> = (0..8192).map(|_| rng.normal()).collect();
    let before = rss_bytes();
    let mut dets: Vec<SeriesDetector> = (0..n_series).map(|_| SeriesDetector::new(cfg)).collect();
    // Touch every page so the resident size is real.
    let mut acc = 0.0;
    for (i, d) in dets.iter_mut().enumerate() {
        acc += d.observe(cfg, T0, 50.0 + i as f64).score;
    }
    let after = rss_bytes();
    let start = Instant::now();
    for step in 1..steps {
        let ts = T0 + step as i64 * 1000;
        for (i, d) in dets.iter_mut().enumerate() {
            let x = 50.0 + (i % 100) as f64 + 2.0 * table[(i.wrapping_mul(7919) + step) & 8191];
            acc += d.observe(cfg, ts, x).score;
        }
    }
    let ns = start.elapsed().as_nanos() as f64 / (n_series * (steps - 1)) as f64;
    black_box(acc);
    let rss_per = before
        .zip(after)
        .map(|(b, a)| a.saturating_sub(b) as f64 / n_series as f64);
    drop(dets);

    let before = rss_bytes();
    let mut bank: DetectorBank<u64> = DetectorBank::new(cfg.clone(), n_series);
    for key in 0..n_series as u64 {
        acc += bank.observe(&key, T0, 50.0).score;
    }
    let after = rss_bytes();
    let start = Instant::now();
    let bank_steps = steps / 4;
    for step in 1..bank_steps {
        let ts = T0 + step as i64 * 1000;
        for key in 0..n_series as u64 {
            let x = 50.0
                + (key % 100) as f64
                + 2.0 * table[((key as usize).wrapping_mul(7919) + step) & 8191];
            acc += bank.observe(&key, ts, x).score;
        }
    }
    let bank_ns = start.elapsed().as_nanos() as f64 / (n_series * (bank_steps - 1)) as f64;
    black_box(acc);
    let bank_rss = before
        .zip(after)
        .map(|(b, a)| a.saturating_sub(b) as f64 / n_series as f64);
    Cost {
        ns_per_sample: ns,
        bank_ns_per_sample: bank_ns,
        state_bytes: std::mem::size_of::<SeriesDetector>(),
        rss_bytes_per_series: rss_per,
        bank_rss_bytes_per_series: bank_rss,
        cpu_percent_10k_at_1s: bank_ns * n_series as f64 / 1e9 * 100.0,
        series: n_series,
        steps,
    }
}

/// LogPAI grouping accuracy: the fraction of lines in predicted groups whose line set is
/// exactly one ground-truth event's line set.
fn grouping_accuracy(predicted: &[u64], truth: &[String]) -> f64 {
    let mut pred_groups: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, &p) in predicted.iter().enumerate() {
        pred_groups.entry(p).or_default().push(i);
    }
    let mut truth_sizes: HashMap<&str, usize> = HashMap::new();
    for t in truth {
        *truth_sizes.entry(t.as_str()).or_default() += 1;
    }
    let mut correct = 0;
    for lines in pred_groups.values() {
        let first = truth[lines[0]].as_str();
        if lines.iter().all(|&i| truth[i] == first) && truth_sizes[first] == lines.len() {
            correct += lines.len();
        }
    }
    correct as f64 / predicted.len().max(1) as f64
}

struct LogResult {
    name: String,
    lines: usize,
    events: usize,
    templates: usize,
    accuracy: f64,
    lines_per_sec: f64,
}

fn logs_quality() -> Vec<LogResult> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/logs");
    let mut out = Vec::new();
    for name in ["hdfs", "nginx", "kubelet", "app_json", "sshd", "spring_cri"] {
        let (Ok(text), Ok(events)) = (
            std::fs::read_to_string(dir.join(format!("{name}.log"))),
            std::fs::read_to_string(dir.join(format!("{name}.events"))),
        ) else {
            eprintln!("missing benches/data/logs/{name}.log or .events; run generate.py there");
            continue;
        };
        let truth: Vec<String> = events.lines().map(str::to_string).collect();
        let start = Instant::now();
        let (rows, miner) = backtest::mine_text(&text, LogFormat::Auto, &MinerConfig::default());
        let secs = start.elapsed().as_secs_f64();
        let resolved = backtest::resolve(&rows, &miner);
        let predicted: Vec<u64> = resolved.iter().map(|r| r.1).collect();
        assert_eq!(
            predicted.len(),
            truth.len(),
            "{name}: lines and labels differ in number"
        );
        let mut distinct: Vec<u64> = predicted.clone();
        distinct.sort_unstable();
        distinct.dedup();
        let mut events: Vec<&String> = truth.iter().collect();
        events.sort_unstable();
        events.dedup();
        out.push(LogResult {
            name: name.to_string(),
            lines: truth.len(),
            events: events.len(),
            templates: distinct.len(),
            accuracy: grouping_accuracy(&predicted, &truth),
            lines_per_sec: truth.len() as f64 / secs.max(1e-9),
        });
    }
    out
}

fn fmt_opt(x: Option<f64>) -> String {
    x.map_or("-".to_string(), |v| format!("{v:.1}"))
}

fn main() -> anyhow::Result<()> {
    let cfg = DetectConfig::default();
    let seeds = 0..4u64;
    let mut total = Score::default();
    let mut by_kind: HashMap<Kind, Score> = HashMap::new();
    let mut by_base: Vec<(&'static str, Score)> = Vec::new();
    for base in bases() {
        let mut s = Score::default();
        for seed in seeds.clone() {
            let case = generate(&base, seed + 1);
            let (score, kinds) = evaluate(&case, &cfg);
            s.add(&score);
            for (k, ks) in kinds {
                by_kind.entry(k).or_default().add(&ks);
            }
            debug_assert_eq!(case.base, base.name);
        }
        total.add(&s);
        by_base.push((base.name, s));
    }

    println!("== detection quality (synthetic, event level, tolerance {TOLERANCE} samples) ==");
    println!(
        "{:<18} {:>7} {:>8} {:>8} {:>6} {:>6} {:>6} {:>7} {:>10}",
        "series", "windows", "detected", "FP eps", "prec", "recall", "F1", "delay", "FP/10k"
    );
    let by_detector = |s: &Score| {
        s.false_by_detector
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (name, s) in &by_base {
        println!(
            "{:<18} {:>7} {:>8} {:>8} {:>6.3} {:>6.3} {:>6.3} {:>7} {:>10.2}  {}",
            name,
            s.windows,
            s.detected,
            s.false_episodes,
            s.precision(),
            s.recall(),
            s.f1(),
            fmt_opt(s.median_delay()),
            s.false_episodes as f64 * 1e4 / s.samples as f64,
            by_detector(s)
        );
    }
    println!(
        "{:<18} {:>7} {:>8} {:>8} {:>6.3} {:>6.3} {:>6.3} {:>7} {:>10.2}  {}",
        "ALL",
        total.windows,
        total.detected,
        total.false_episodes,
        total.precision(),
        total.recall(),
        total.f1(),
        fmt_opt(total.median_delay()),
        total.false_episodes as f64 * 1e4 / total.samples as f64,
        by_detector(&total)
    );
    // The table's precision counts every episode that overlaps a window as a true
    // positive, so a detector that flickers inside a window gains by it. Per window: each
    // detected window once, against the false episodes.
    let window_precision =
        total.detected as f64 / (total.detected + total.false_episodes).max(1) as f64;
    let window_f1 = if window_precision + total.recall() > 0.0 {
        2.0 * window_precision * total.recall() / (window_precision + total.recall())
    } else {
        0.0
    };
    println!(
        "per-window precision {window_precision:.3}, F1 {window_f1:.3} (each detected window once)"
    );
    println!();
    println!(
        "{:<18} {:>7} {:>8} {:>6} {:>7}",
        "anomaly kind", "windows", "detected", "recall", "delay"
    );
    let mut kinds: Vec<_> = by_kind.iter().collect();
    kinds.sort_by_key(|(k, _)| **k);
    for (k, s) in &kinds {
        println!(
            "{:<18} {:>7} {:>8} {:>6.3} {:>7}",
            k.name(),
            s.windows,
            s.detected,
            s.recall(),
            fmt_opt(s.median_delay())
        );
    }

    // Quick iterations on the detectors need only the quality figures.
    if std::env::var_os("DETECT_QUALITY_ONLY").is_some() {
        return Ok(());
    }
    let c = cost(&cfg);
    println!();
    println!(
        "== cost ({} series x {} steps, this build) ==",
        c.series, c.steps
    );
    println!(
        "ns per sample per series      {:>10.1}  (SeriesDetector)",
        c.ns_per_sample
    );
    println!(
        "ns per sample per series      {:>10.1}  (DetectorBank<u64>, with lookup)",
        c.bank_ns_per_sample
    );
    println!(
        "state bytes per series        {:>10}  (size_of, no heap)",
        c.state_bytes
    );
    println!(
        "resident bytes per series     {:>10}  (measured, detectors alone)",
        fmt_opt(c.rss_bytes_per_series)
    );
    println!(
        "resident bytes per series     {:>10}  (measured, in a DetectorBank)",
        fmt_opt(c.bank_rss_bytes_per_series)
    );
    println!(
        "CPU % of one core, 10k @ 1 s  {:>10.2}",
        c.cpu_percent_10k_at_1s
    );

    let logs = logs_quality();
    println!();
    println!("== log template grouping accuracy (LogPAI definition) ==");
    println!(
        "{:<12} {:>6} {:>7} {:>10} {:>9} {:>12}",
        "set", "lines", "events", "templates", "accuracy", "lines/s"
    );
    for l in &logs {
        println!(
            "{:<12} {:>6} {:>7} {:>10} {:>9.3} {:>12.0}",
            l.name, l.lines, l.events, l.templates, l.accuracy, l.lines_per_sec
        );
    }
    let mean_ga = logs.iter().map(|l| l.accuracy).sum::<f64>() / logs.len().max(1) as f64;
    println!(
        "{:<12} {:>6} {:>7} {:>10} {:>9.3}",
        "MEAN", "", "", "", mean_ga
    );

    let report = json!({
        "detection": {
            "tolerance_samples": TOLERANCE,
            "windows": total.windows,
            "detected": total.detected,
            "episodes": total.episodes,
            "false_episodes": total.false_episodes,
            "precision": total.precision(),
            "recall": total.recall(),
            "f1": total.f1(),
            "median_delay_samples": total.median_delay(),
            "false_episodes_per_10k_samples": total.false_episodes as f64 * 1e4 / total.samples as f64,
            "false_episodes_by_detector": total.false_by_detector,
            "per_window_precision": window_precision,
            "per_window_f1": window_f1,
            "by_series": by_base.iter().map(|(n, s)| json!({
                "series": n, "windows": s.windows, "detected": s.detected, "false_episodes": s.false_episodes,
                "precision": s.precision(), "recall": s.recall(), "f1": s.f1(), "median_delay_samples": s.median_delay(),
            })).collect::<Vec<_>>(),
            "by_kind": kinds.iter().map(|(k, s)| json!({
                "kind": k.name(), "windows": s.windows, "detected": s.detected, "recall": s.recall(),
                "median_delay_samples": s.median_delay(),
            })).collect::<Vec<_>>(),
        },
        "cost": {
            "series": c.series,
            "steps": c.steps,
            "ns_per_sample_per_series": c.ns_per_sample,
            "bank_ns_per_sample_per_series": c.bank_ns_per_sample,
            "state_bytes_per_series": c.state_bytes,
            "resident_bytes_per_series": c.rss_bytes_per_series,
            "bank_resident_bytes_per_series": c.bank_rss_bytes_per_series,
            "cpu_percent_one_core_10k_series_at_1s": c.cpu_percent_10k_at_1s,
        },
        "logs": {
            "mean_grouping_accuracy": mean_ga,
            "sets": logs.iter().map(|l| json!({
                "set": l.name, "lines": l.lines, "events": l.events, "templates": l.templates,
                "grouping_accuracy": l.accuracy, "lines_per_sec": l.lines_per_sec,
            })).collect::<Vec<_>>(),
        },
        "targets": {
            "ns_per_sample_max": 2000, "state_bytes_max": 1024, "f1_min": 0.9,
            "median_delay_max": 3, "grouping_accuracy_min": 0.95,
        },
    });
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    std::fs::create_dir_all(&target)?;
    let path = target.join("detect-quality.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!();
    println!("wrote {}", path.display());
    Ok(())
}
