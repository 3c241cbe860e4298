//! RCA engine benchmark: one incident over 1 h of 1 s data from 500 components with
//! 10 metrics each (18M points), the size the engine is budgeted for (≤ 1 s).
//!
//! Run: `cargo bench -p benches --bench rca`.
//!
//! Measures `aggregator::rca::rank` with onset detection (no window: the per-series
//! change-point pass runs too), with a given window, single-threaded, and a plain read
//! pass over the same points as the yardstick (the printed ratio is from one run). Before criterion runs, prints
//! one timed run of each and the winner, so the figure and its correctness show
//! together.

use std::hint::black_box;
use std::time::{Duration, Instant};

use aggregator::rca::{CallEdge, RcaConfig, RcaInput, SeriesData, rank};
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};

const COMPONENTS: usize = 500;
const METRICS: [&str; 10] = [
    "cpu.usage_pct",
    "cpu.throttled_pct",
    "mem.used_bytes",
    "mem.rss_bytes",
    "disk.read_bytes_per_s",
    "disk.write_bytes_per_s",
    "net.tcp_retrans_per_s",
    "http.latency_ms",
    "http.errors_per_s",
    "proc.running",
];
const POINTS: usize = 3600;
const T0: i64 = 1_714_556_000_000;
/// The fault: a CPU hog on component 417 at 50 min, latency climbing its callers.
const ROOT: usize = 417;
const FAULT: usize = 3000;

fn incident() -> RcaInput {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut noise = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    // A call tree: component i calls 2i+1 and 2i+2, so the root's ancestors are the
    // path from it up to component 0.
    let edges: Vec<CallEdge> = (1..COMPONENTS)
        .map(|i| CallEdge {
            caller: format!("svc-{:03}", (i - 1) / 2),
            callee: format!("svc-{i:03}"),
        })
        .collect();
    let mut ancestors = vec![ROOT];
    while let Some(&a) = ancestors.last().filter(|&&a| a > 0) {
        ancestors.push((a - 1) / 2);
    }
    let mut series = Vec::with_capacity(COMPONENTS * METRICS.len());
    for c in 0..COMPONENTS {
        let depth = ancestors.iter().position(|&a| a == c);
        for (m, metric) in METRICS.iter().enumerate() {
            let base = 10.0 + (c * 7 + m * 13) as f64 % 90.0;
            let points = (0..POINTS)
                .map(|i| {
                    let mut v = base * (1.0 + 0.05 * noise());
                    if c == ROOT && *metric == "cpu.usage_pct" && i >= FAULT {
                        v += 60.0;
                    }
                    if depth.is_some_and(|d| *metric == "http.latency_ms" && i >= FAULT + d) {
                        v += 50.0;
                    }
                    (T0 + i as i64 * 1000, v)
                })
                .collect();
            series.push(SeriesData {
                component: format!("svc-{c:03}"),
                metric: (*metric).to_string(),
                points,
            });
        }
    }
    RcaInput {
        series,
        edges,
        window: None,
        events: Vec::new(),
    }
}

fn bench_rca(c: &mut Criterion) {
    let detect = incident();
    let windowed = RcaInput {
        window: Some((T0 + (FAULT as i64 - 60) * 1000, T0 + POINTS as i64 * 1000)),
        ..detect.clone()
    };
    let cfg = RcaConfig::default();
    let points = (COMPONENTS * METRICS.len() * POINTS) as u64;
    for (name, input) in [("onset detection", &detect), ("window given", &windowed)] {
        let start = Instant::now();
        let r = rank(input, &cfg);
        let took = start.elapsed();
        let top = r.ranking.first();
        println!(
            "rca {name}: {points} points in {:.3} s; top = {} ({}, {:.2}), onset {:?}",
            took.as_secs_f64(),
            top.map_or("none", |c| c.target.as_str()),
            top.map_or("-", |c| c.kind.as_str()),
            top.map_or(0.0, |c| c.score),
            r.onset_ms.map(|o| (o - T0) / 1000),
        );
        assert_eq!(top.map(|c| c.target.as_str()), Some("svc-417"));
    }

    // The same-run yardstick: one pass that reads every point once (what any engine
    // has to pay at least), timed alternately with the single-threaded engine, so the
    // ratio holds even when other work on the machine moves both.
    let one_thread = RcaConfig {
        threads: 1,
        ..RcaConfig::default()
    };
    let (mut t_rank, mut t_pass) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..3 {
        let start = Instant::now();
        black_box(rank(black_box(&detect), &one_thread));
        t_rank += start.elapsed();
        let start = Instant::now();
        black_box(read_pass(black_box(&detect)));
        t_pass += start.elapsed();
    }
    println!(
        "rca one thread: {:.3} s per rank, one read pass {:.3} s: rank = {:.1} read passes",
        t_rank.as_secs_f64() / 3.0,
        t_pass.as_secs_f64() / 3.0,
        t_rank.as_secs_f64() / t_pass.as_secs_f64().max(1e-9),
    );

    let mut group = c.benchmark_group("rca");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Elements(points));
    group.bench_function("rank/500x10x3600/detect", |b| {
        b.iter(|| rank(black_box(&detect), &cfg))
    });
    group.bench_function("rank/500x10x3600/window", |b| {
        b.iter(|| rank(black_box(&windowed), &cfg))
    });
    group.bench_function("rank/500x10x3600/detect/1-thread", |b| {
        b.iter(|| rank(black_box(&detect), &one_thread))
    });
    group.bench_function("read-pass/500x10x3600", |b| {
        b.iter(|| read_pass(black_box(&detect)))
    });
    group.finish();
}

/// Reads every point once: per series the sum of values and the last timestamp.
fn read_pass(input: &RcaInput) -> f64 {
    input
        .series
        .iter()
        .map(|s| {
            let (sum, last) = s
                .points
                .iter()
                .fold((0.0, 0i64), |(a, _), &(t, v)| (a + v, t));
            sum + last as f64
        })
        .sum()
}

criterion_group!(benches, bench_rca);
criterion_main!(benches);
