//! Scenario tests for the RCA engine: deterministic synthetic incidents (seeded noise,
//! 1 s samples) run through one `check` helper, plus the CSV readers on hostile input.

use super::*;

const T0: i64 = 1_714_556_000_000; // 2024-05-01T09:33:20Z
const N: usize = 900; // 15 min of 1 s samples
const FAULT: usize = 600; // the fault starts 10 min in

/// Deterministic noise in [-1, 1] (xorshift), summed to look roughly normal.
struct Noise(u64);
impl Noise {
    fn new(seed: u64) -> Self {
        Noise(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
    fn normal(&mut self) -> f64 {
        (self.uniform() + self.uniform() + self.uniform()) * 0.58
    }
}

fn seed_of(s: &str) -> u64 {
    s.bytes().fold(1469598103934665603u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(1099511628211)
    })
}

/// A series around `base` with noise `sd`.
fn flat(component: &str, metric: &str, base: f64, sd: f64) -> SeriesData {
    let mut noise = Noise::new(seed_of(component) ^ seed_of(metric));
    SeriesData {
        component: component.into(),
        metric: metric.into(),
        points: (0..N)
            .map(|i| (T0 + i as i64 * 1000, (base + sd * noise.normal()).max(0.0)))
            .collect(),
    }
}

/// A normal service: cpu, memory, latency, errors.
fn service(name: &str, latency_ms: f64) -> Vec<SeriesData> {
    vec![
        flat(name, "cpu.usage_pct", 20.0, 2.0),
        flat(name, "mem.used_bytes", 500e6, 2e6),
        flat(name, "http.latency_ms", latency_ms, latency_ms * 0.05),
        flat(name, "http.errors_per_s", 0.5, 0.3),
    ]
}

#[derive(Clone, Copy)]
enum Effect {
    /// Add `delta` from index `at` on.
    Step { at: usize, delta: f64 },
    /// Add `per_s * (i - at)` from `at` on.
    Ramp { at: usize, per_s: f64 },
    /// Set to `value` on `[from, to)`.
    Hold { from: usize, to: usize, value: f64 },
}

struct Scenario {
    series: Vec<SeriesData>,
    edges: Vec<CallEdge>,
    events: Vec<EvidenceEvent>,
    window: Option<(i64, i64)>,
}

impl Scenario {
    fn new(services: &[(&str, f64)], edges: &[(&str, &str)]) -> Self {
        Scenario {
            series: services.iter().flat_map(|(n, l)| service(n, *l)).collect(),
            edges: edges
                .iter()
                .map(|(a, b)| CallEdge {
                    caller: (*a).into(),
                    callee: (*b).into(),
                })
                .collect(),
            events: Vec::new(),
            window: None,
        }
    }
    fn effect(mut self, component: &str, metric: &str, effect: Effect) -> Self {
        let s = self
            .series
            .iter_mut()
            .find(|s| s.component == component && s.metric == metric)
            .expect("scenario names an existing series");
        for (i, p) in s.points.iter_mut().enumerate() {
            match effect {
                Effect::Step { at, delta } if i >= at => p.1 += delta,
                Effect::Ramp { at, per_s } if i >= at => p.1 += per_s * (i - at) as f64,
                Effect::Hold { from, to, value } if (from..to).contains(&i) => p.1 = value,
                _ => {}
            }
        }
        self
    }
    fn series(mut self, s: SeriesData) -> Self {
        self.series.push(s);
        self
    }
    fn event(mut self, component: &str, at: usize, kind: &str, detail: &str) -> Self {
        self.events.push(EvidenceEvent {
            component: component.into(),
            ts_ms: T0 + at as i64 * 1000,
            kind: kind.into(),
            detail: detail.into(),
            score: 1.0,
        });
        self
    }
    fn window(mut self, from: usize, to: usize) -> Self {
        self.window = Some((T0 + from as i64 * 1000, T0 + to as i64 * 1000));
        self
    }
    fn no_graph(mut self) -> Self {
        self.edges.clear();
        self
    }
    fn input(&self) -> RcaInput {
        RcaInput {
            series: self.series.clone(),
            edges: self.edges.clone(),
            window: self.window,
            events: self.events.clone(),
        }
    }
}

/// Runs the engine and checks the winner and its kind; returns the ranking for more
/// checks. On failure prints the whole ranking.
fn check(name: &str, sc: &Scenario, target: &str, kind: &str) -> Ranking {
    let r = rank(&sc.input(), &RcaConfig::default());
    let dump = serde_json::to_string_pretty(&r).unwrap_or_default();
    if std::env::var_os("RCA_DUMP").is_some() {
        eprintln!("== {name}\n{dump}");
    }
    let top = r.ranking.first();
    assert_eq!(
        top.map(|c| c.target.as_str()),
        Some(target),
        "{name}: wrong root\n{dump}"
    );
    assert_eq!(
        top.map(|c| c.kind.as_str()),
        Some(kind),
        "{name}: wrong kind\n{dump}"
    );
    for w in r.ranking.windows(2) {
        assert!(w[0].score >= w[1].score, "{name}: not sorted\n{dump}");
    }
    for c in &r.ranking {
        assert!(
            (0.0..=1.0).contains(&c.score),
            "{name}: score out of range\n{dump}"
        );
        assert!(
            !c.explanation.is_empty() && !c.evidence.is_empty(),
            "{name}: empty candidate\n{dump}"
        );
    }
    if let (Some(a), Some(b)) = (r.ranking.first(), r.ranking.get(1)) {
        assert!(
            a.score > b.score,
            "{name}: the root must win outright\n{dump}"
        );
    }
    r
}

fn at(i: usize) -> i64 {
    T0 + i as i64 * 1000
}

fn kind_of<'a>(r: &'a Ranking, target: &str) -> Option<&'a Candidate> {
    r.ranking.iter().find(|c| c.target == target)
}

/// frontend -> checkout -> payments; a CPU hog on payments, latency climbing the chain.
fn cpu_hog_chain() -> Scenario {
    Scenario::new(
        &[("frontend", 80.0), ("checkout", 50.0), ("payments", 20.0)],
        &[("frontend", "checkout"), ("checkout", "payments")],
    )
    .effect(
        "payments",
        "cpu.usage_pct",
        Effect::Step {
            at: FAULT,
            delta: 77.0,
        },
    )
    .effect(
        "payments",
        "http.latency_ms",
        Effect::Step {
            at: FAULT + 1,
            delta: 60.0,
        },
    )
    .effect(
        "checkout",
        "http.latency_ms",
        Effect::Step {
            at: FAULT + 2,
            delta: 65.0,
        },
    )
    .effect(
        "frontend",
        "http.latency_ms",
        Effect::Step {
            at: FAULT + 3,
            delta: 70.0,
        },
    )
    .effect(
        "frontend",
        "http.errors_per_s",
        Effect::Step {
            at: FAULT + 5,
            delta: 4.0,
        },
    )
}

#[test]
fn rca_scenarios() {
    // (name, scenario, expected root, expected kind)
    let diamond = Scenario::new(
        &[
            ("frontend", 80.0),
            ("left", 40.0),
            ("right", 40.0),
            ("db", 10.0),
        ],
        &[
            ("frontend", "left"),
            ("frontend", "right"),
            ("left", "db"),
            ("right", "db"),
        ],
    )
    .effect(
        "db",
        "cpu.usage_pct",
        Effect::Step {
            at: FAULT,
            delta: 70.0,
        },
    )
    .effect(
        "db",
        "http.latency_ms",
        Effect::Step {
            at: FAULT,
            delta: 30.0,
        },
    )
    .effect(
        "left",
        "http.latency_ms",
        Effect::Step {
            at: FAULT + 1,
            delta: 35.0,
        },
    )
    .effect(
        "right",
        "http.latency_ms",
        Effect::Step {
            at: FAULT + 1,
            delta: 35.0,
        },
    )
    .effect(
        "frontend",
        "http.latency_ms",
        Effect::Step {
            at: FAULT + 2,
            delta: 40.0,
        },
    );
    let cases: Vec<(&str, Scenario, &str, &str)> = vec![
        (
            "cpu hog on a leaf in a chain",
            cpu_hog_chain(),
            "payments",
            "cpu",
        ),
        (
            "memory leak, latency follows late",
            Scenario::new(
                &[("web", 60.0), ("cart", 30.0), ("redis", 5.0)],
                &[("web", "cart"), ("cart", "redis")],
            )
            .effect(
                "cart",
                "mem.used_bytes",
                Effect::Ramp {
                    at: 300,
                    per_s: 2e6,
                },
            )
            .effect(
                "cart",
                "http.latency_ms",
                Effect::Ramp {
                    at: 700,
                    per_s: 1.0,
                },
            )
            .effect(
                "web",
                "http.latency_ms",
                Effect::Ramp {
                    at: 701,
                    per_s: 1.0,
                },
            ),
            "cart",
            "memory",
        ),
        (
            "network delay on a callee",
            Scenario::new(
                &[("frontend", 80.0), ("orders", 40.0), ("db", 8.0)],
                &[("frontend", "orders"), ("orders", "db")],
            )
            .effect(
                "db",
                "http.latency_ms",
                Effect::Step {
                    at: FAULT,
                    delta: 200.0,
                },
            )
            .effect(
                "orders",
                "http.latency_ms",
                Effect::Step {
                    at: FAULT,
                    delta: 200.0,
                },
            )
            .effect(
                "frontend",
                "http.latency_ms",
                Effect::Step {
                    at: FAULT + 1,
                    delta: 200.0,
                },
            ),
            "db",
            "network",
        ),
        (
            "error burst in a callee",
            Scenario::new(
                &[("api", 30.0), ("auth", 10.0), ("users", 10.0)],
                &[("api", "auth"), ("api", "users")],
            )
            .effect(
                "auth",
                "http.errors_per_s",
                Effect::Step {
                    at: FAULT,
                    delta: 40.0,
                },
            )
            .effect(
                "api",
                "http.errors_per_s",
                Effect::Step {
                    at: FAULT + 1,
                    delta: 40.0,
                },
            )
            .event("auth", FAULT + 2, "error_burst", "500s from /login"),
            "auth",
            "errors",
        ),
        (
            "crash with restart events",
            Scenario::new(&[("web", 40.0), ("cache", 2.0)], &[("web", "cache")])
                .series(flat("cache", "up", 1.0, 0.0))
                .effect(
                    "cache",
                    "up",
                    Effect::Hold {
                        from: FAULT,
                        to: FAULT + 20,
                        value: 0.0,
                    },
                )
                .effect(
                    "cache",
                    "cpu.usage_pct",
                    Effect::Hold {
                        from: FAULT,
                        to: FAULT + 20,
                        value: 0.0,
                    },
                )
                .effect(
                    "web",
                    "http.errors_per_s",
                    Effect::Hold {
                        from: FAULT,
                        to: FAULT + 20,
                        value: 25.0,
                    },
                )
                .event("cache", FAULT, "crash", "exit code 139")
                .event("cache", FAULT + 20, "restart", "restarted by kubelet"),
            "cache",
            "crash",
        ),
        (
            "fan-out: one of four callees saturates its disk",
            Scenario::new(
                &[
                    ("frontend", 90.0),
                    ("a", 20.0),
                    ("b", 20.0),
                    ("c", 20.0),
                    ("d", 20.0),
                ],
                &[
                    ("frontend", "a"),
                    ("frontend", "b"),
                    ("frontend", "c"),
                    ("frontend", "d"),
                ],
            )
            .series(flat("c", "disk.io_util_pct", 15.0, 3.0))
            .series(flat("a", "disk.io_util_pct", 15.0, 3.0))
            .effect(
                "c",
                "disk.io_util_pct",
                Effect::Step {
                    at: FAULT,
                    delta: 80.0,
                },
            )
            .effect(
                "c",
                "http.latency_ms",
                Effect::Step {
                    at: FAULT + 2,
                    delta: 150.0,
                },
            )
            .effect(
                "frontend",
                "http.latency_ms",
                Effect::Step {
                    at: FAULT + 3,
                    delta: 150.0,
                },
            ),
            "c",
            "disk",
        ),
        ("diamond: shared database on cpu", diamond, "db", "cpu"),
        (
            "no graph: cpu hog",
            cpu_hog_chain().no_graph(),
            "payments",
            "cpu",
        ),
        (
            "noisy baseline, a single spike must not win",
            Scenario::new(&[("search", 50.0), ("index", 20.0)], &[("search", "index")])
                .series(flat("noisy", "cpu.usage_pct", 40.0, 15.0))
                .effect(
                    "noisy",
                    "cpu.usage_pct",
                    Effect::Hold {
                        from: 700,
                        to: 701,
                        value: 100_000.0,
                    },
                )
                .effect(
                    "search",
                    "cpu.usage_pct",
                    Effect::Hold {
                        from: 650,
                        to: 651,
                        value: 1000.0,
                    },
                )
                .effect(
                    "index",
                    "mem.used_bytes",
                    Effect::Step {
                        at: FAULT,
                        delta: 1.5e9,
                    },
                )
                .effect(
                    "search",
                    "http.latency_ms",
                    Effect::Step {
                        at: FAULT + 4,
                        delta: 40.0,
                    },
                ),
            "index",
            "memory",
        ),
        (
            "window given",
            cpu_hog_chain().window(FAULT - 30, N),
            "payments",
            "cpu",
        ),
        (
            "oom kill event only",
            Scenario::new(&[("web", 40.0), ("worker", 10.0)], &[("web", "worker")])
                .effect(
                    "web",
                    "http.latency_ms",
                    Effect::Step {
                        at: FAULT + 1,
                        delta: 30.0,
                    },
                )
                .event("worker", FAULT, "oom_kill", "worker killed at 2 GiB"),
            "worker",
            "memory",
        ),
    ];
    for (name, sc, target, kind) in &cases {
        check(name, sc, target, kind);
    }
}

#[test]
fn chain_victims_point_at_the_root() {
    let r = check("cpu hog chain", &cpu_hog_chain(), "payments", "cpu");
    for victim in ["checkout", "frontend"] {
        let c = kind_of(&r, victim).expect("victim is listed");
        assert_eq!(c.kind, "dependency", "{victim}");
        assert_eq!(c.caused_by.as_deref(), Some("payments"), "{victim}");
        assert!(c.explanation.contains("payments"), "{}", c.explanation);
    }
    let top = &r.ranking[0];
    assert!(
        top.explanation
            .starts_with("payments is the most likely cause"),
        "{}",
        top.explanation
    );
    assert!(
        top.explanation.contains("cpu.usage_pct rose to"),
        "{}",
        top.explanation
    );
    assert!(
        top.explanation.contains("before any other component"),
        "{}",
        top.explanation
    );
    assert!(
        top.explanation.contains("checkout and frontend"),
        "{}",
        top.explanation
    );
    assert_eq!(top.evidence[0].series, "payments:cpu.usage_pct");
    assert!(top.evidence[0].deviation > 10.0);
    assert_eq!(top.onset_ms, Some(at(FAULT)));
}

#[test]
fn onset_detection_matches_the_fault() {
    let r = check("cpu hog chain", &cpu_hog_chain(), "payments", "cpu");
    let onset = r.onset_ms.expect("an onset");
    assert!(
        (onset - at(FAULT)).abs() <= 5_000,
        "onset {onset} vs {}",
        at(FAULT)
    );
    let given = check(
        "window",
        &cpu_hog_chain().window(FAULT - 60, N),
        "payments",
        "cpu",
    );
    assert_eq!(given.onset_ms, Some(at(FAULT - 60)));
    assert_eq!(given.ranking[0].onset_ms, r.ranking[0].onset_ms);
}

#[test]
fn spike_component_is_not_a_candidate() {
    let sc = Scenario::new(&[("a", 20.0)], &[])
        .series(flat("noisy", "cpu.usage_pct", 40.0, 15.0))
        .effect(
            "noisy",
            "cpu.usage_pct",
            Effect::Hold {
                from: 700,
                to: 701,
                value: 100_000.0,
            },
        )
        .effect(
            "a",
            "cpu.usage_pct",
            Effect::Step {
                at: FAULT,
                delta: 60.0,
            },
        );
    let r = check("spike", &sc, "a", "cpu");
    assert!(kind_of(&r, "noisy").is_none(), "{r:?}");
    let onset = r.onset_ms.expect("onset");
    assert!((onset - at(FAULT)).abs() <= 5_000);
}

#[test]
fn quiet_data_gives_no_candidates() {
    let sc = Scenario::new(&[("a", 20.0), ("b", 30.0)], &[("a", "b")]);
    let r = rank(&sc.input(), &RcaConfig::default());
    assert!(r.ranking.is_empty(), "{r:?}");
    assert_eq!(r.onset_ms, None);
    assert_eq!(r.components_considered, 2);
    // Degenerate inputs: nothing at all, empty series, window before all data.
    let empty = rank(&RcaInput::default(), &RcaConfig::default());
    assert!(empty.ranking.is_empty() && empty.components_considered == 0);
    let mut odd = cpu_hog_chain().input();
    odd.series.push(SeriesData {
        component: "x".into(),
        metric: "cpu".into(),
        points: vec![],
    });
    odd.series.push(SeriesData {
        component: "y".into(),
        metric: "cpu".into(),
        points: vec![(5, f64::NAN), (1, f64::INFINITY), (3, 1.0), (3, 2.0)],
    });
    odd.window = Some((T0 - 1_000_000, T0 - 500_000));
    assert!(rank(&odd, &RcaConfig::default()).ranking.is_empty());
}

#[test]
fn deterministic_across_runs_and_threads() {
    // Big enough (50 components x 5 metrics x 900 points) for the threaded path.
    let mut sc = cpu_hog_chain();
    for i in 0..47 {
        sc.series.extend(service(&format!("svc-{i:02}"), 30.0));
        sc.series
            .push(flat(&format!("svc-{i:02}"), "disk.read_bytes", 1e6, 1e5));
    }
    let input = sc.input();
    let one = RcaConfig {
        threads: 1,
        ..RcaConfig::default()
    };
    let two = RcaConfig {
        threads: 2,
        ..RcaConfig::default()
    };
    let a = serde_json::to_string(&rank(&input, &one)).unwrap_or_default();
    let b = serde_json::to_string(&rank(&input, &two)).unwrap_or_default();
    let c = serde_json::to_string(&rank(&input, &two)).unwrap_or_default();
    assert_eq!(a, b);
    assert_eq!(b, c);
    assert!(a.contains("\"target\":\"payments\""));
    // Input order does not matter either.
    let mut shuffled = input.clone();
    shuffled.series.reverse();
    shuffled.edges.reverse();
    let d = serde_json::to_string(&rank(&shuffled, &one)).unwrap_or_default();
    let top = |s: &str| {
        s.split("\"target\":")
            .nth(1)
            .map(|t| t.chars().take(12).collect::<String>())
    };
    assert_eq!(top(&a), top(&d));
}

#[test]
fn metric_names_map_to_kinds() {
    let cases = [
        ("cpu.usage_pct", "cpu"),
        ("container_cpu_cfs_throttled_seconds_total", "cpu"),
        ("sched.runq_latency_us", "cpu"),
        ("mem.used_bytes", "memory"),
        ("container_memory_working_set_bytes", "memory"),
        ("mem.available_bytes", "memory"),
        ("disk.read_bytes_per_s", "disk"),
        ("psi.io.some_avg10", "disk"),
        ("fsync_duration_ms", "disk"),
        ("net.tcp_retrans_per_s", "network"),
        ("latency-90", "network"),
        ("http.latency_ms", "network"),
        ("packet_loss_pct", "network"),
        ("http.errors_per_s", "errors"),
        ("grpc_5xx", "errors"),
        ("exception_count", "errors"),
        ("restart_count", "crash"),
        ("up", "crash"),
        ("conn_refused", "crash"),
        ("conn_reset_errors", "errors"),
        ("conn_failures", "errors"),
        ("backup_size", "unknown"),
        ("workload", "unknown"),
    ];
    for (name, kind) in cases {
        assert_eq!(classify_metric(name).kind(), kind, "{name}");
    }
    assert!(!classify_metric("http.latency_ms").is_resource());
    assert!(classify_metric("net.tcp_retrans_per_s").is_resource());
    // Connect latency is a symptom the caller sees, not its own saturation.
    assert!(!classify_metric("conn_latency_us").is_resource());
}

// ---- CSV ----

#[test]
fn wide_csv_round_trip_through_the_engine() {
    let sc = cpu_hog_chain();
    let mut text = String::from("timestamp");
    for s in &sc.series {
        text.push_str(&format!(",{}:{}", s.component, s.metric));
    }
    text.push('\n');
    for i in 0..N {
        // Unix seconds with a fraction on every other row, to exercise that path.
        text.push_str(&format!("{}", (T0 + i as i64 * 1000) / 1000));
        for s in &sc.series {
            text.push_str(&format!(",{}", s.points[i].1));
        }
        text.push('\n');
    }
    let series = parse_wide_csv(&text).expect("valid csv");
    assert_eq!(series.len(), sc.series.len());
    assert_eq!(series[0].points[0].0, T0);
    let edges =
        parse_edges_csv("caller,callee\nfrontend,checkout\ncheckout,payments\n").expect("edges");
    let r = rank(
        &RcaInput {
            series,
            edges,
            window: None,
            events: vec![],
        },
        &RcaConfig::default(),
    );
    assert_eq!(r.ranking[0].target, "payments");
}

#[test]
fn wide_csv_forms_and_gaps() {
    let text = "\u{feff}time,\"a:cpu\",b_latency-90,c\r\n\
                2024-05-01T10:00:00Z,1,2,3\r\n\
                2024-05-01 10:00:01.5+00:00,,NaN,4\r\n\
                \r\n\
                1714557602,5, null ,6\n";
    let s = parse_wide_csv(text).expect("valid");
    assert_eq!(
        s.iter()
            .map(|s| (s.component.as_str(), s.metric.as_str()))
            .collect::<Vec<_>>(),
        [("a", "cpu"), ("b", "latency-90"), ("c", "value")]
    );
    let t = 1_714_557_600_000;
    assert_eq!(s[0].points, [(t, 1.0), (t + 2000, 5.0)]);
    assert_eq!(s[1].points, [(t, 2.0)]);
    assert_eq!(s[2].points, [(t, 3.0), (t + 1500, 4.0), (t + 2000, 6.0)]);
    // Unsorted rows are sorted; the later of two equal timestamps wins.
    let s = parse_wide_csv("ts,x:y\n3000,3\n1000,1\n3000,4\n").expect("valid");
    assert_eq!(s[0].points, [(1_000_000, 1.0), (3_000_000, 4.0)]);
}

#[test]
fn timestamps() {
    let cases: [(&str, Result<i64, TimestampError>); 12] = [
        ("1714557600", Ok(1_714_557_600_000)),
        ("1714557600.25", Ok(1_714_557_600_250)),
        ("1714557600000", Ok(1_714_557_600_000)),
        ("1714557600000000", Ok(1_714_557_600_000)),
        ("1714557600000000000", Ok(1_714_557_600_000)),
        ("2024-05-01T10:00:00Z", Ok(1_714_557_600_000)),
        ("2024-05-01T12:00:00+02:00", Ok(1_714_557_600_000)),
        ("2024-05-01T10:00:00.123456Z", Ok(1_714_557_600_123)),
        ("2024-02-30T00:00:00Z", Err(TimestampError::OutOfRange)),
        ("yesterday", Err(TimestampError::Format)),
        ("", Err(TimestampError::Empty)),
        ("1e300", Err(TimestampError::OutOfRange)),
    ];
    for (text, want) in cases {
        assert_eq!(parse_timestamp(text), want, "{text:?}");
    }
    assert_eq!(
        parse_timestamp("99999999999999999999999"),
        Err(TimestampError::OutOfRange)
    );
    assert_eq!(parse_timestamp("2024-05-01"), Ok(1_714_521_600_000));
}

#[test]
fn hostile_csv_gives_typed_errors() {
    use RcaError as E;
    let cases: Vec<(&str, RcaError)> = vec![
        ("", E::Empty),
        ("\n \n\r\n", E::Empty),
        (
            "a:cpu,b:cpu\n1,2\n",
            E::MissingTimestamp {
                line: 1,
                found: "a:cpu".into(),
            },
        ),
        ("timestamp\n1\n", E::NoSeriesColumns { line: 1 }),
        ("timestamp,a:cpu\n", E::NoRows),
        (
            "timestamp,a:cpu,\n1,2,3\n",
            E::EmptyColumnName { line: 1, column: 3 },
        ),
        (
            "timestamp,:cpu\n1,2\n",
            E::EmptyColumnName { line: 1, column: 2 },
        ),
        (
            "timestamp,a:cpu,a_cpu\n1,2,3\n",
            E::DuplicateColumn {
                line: 1,
                column: 3,
                first: 2,
                name: "a_cpu".into(),
            },
        ),
        (
            "timestamp,a:cpu\n1,2\n2,3,4\n",
            E::Ragged {
                line: 3,
                expected: 2,
                found: 3,
            },
        ),
        (
            "timestamp,a:cpu,b:cpu\n1,2\n",
            E::Ragged {
                line: 2,
                expected: 3,
                found: 2,
            },
        ),
        (
            "timestamp,a:cpu\n1,lots\n",
            E::NotNumeric {
                line: 2,
                column: 2,
                name: "a:cpu".into(),
                value: "lots".into(),
            },
        ),
        (
            "timestamp,a:cpu\n1,1e400\n",
            E::OutOfRange {
                line: 2,
                column: 2,
                name: "a:cpu".into(),
                value: "1e400".into(),
            },
        ),
        (
            "timestamp,a:cpu\n1,-inf\n",
            E::OutOfRange {
                line: 2,
                column: 2,
                name: "a:cpu".into(),
                value: "-inf".into(),
            },
        ),
        (
            "timestamp,a:cpu\n1,123456789012345678901234567890\n",
            E::OutOfRange {
                line: 2,
                column: 2,
                name: "a:cpu".into(),
                value: "123456789012345678901234567890".into(),
            },
        ),
        (
            "timestamp,a:cpu\nsoon,1\n",
            E::BadTimestamp {
                line: 2,
                column: 1,
                value: "soon".into(),
                source: TimestampError::Format,
            },
        ),
        (
            "timestamp,a:cpu\n99999999999999999999999,1\n",
            E::BadTimestamp {
                line: 2,
                column: 1,
                value: "99999999999999999999999".into(),
                source: TimestampError::OutOfRange,
            },
        ),
        (
            "timestamp,\"a:cpu\n1,2\n",
            E::Unterminated { line: 1, column: 2 },
        ),
    ];
    for (text, want) in cases {
        assert_eq!(parse_wide_csv(text), Err(want), "{text:?}");
    }
    // Every error renders with its position.
    let e = parse_wide_csv("timestamp,a:cpu\n1,2\n2,x\n")
        .err()
        .map(|e| e.to_string());
    assert_eq!(
        e.as_deref(),
        Some("line 3, column 2 (a:cpu): not a number: \"x\"")
    );
    // Arbitrary bytes never panic.
    let mut noise = Noise::new(7);
    for len in 0..300 {
        let junk: String = (0..len)
            .map(|_| {
                let alphabet = b"0123456789,:.\"\n\r-eE ta";
                alphabet[((noise.uniform() + 1.0) * 100.0) as usize % alphabet.len()] as char
            })
            .collect();
        let _ = parse_wide_csv(&format!("timestamp,a:b\n{junk}"));
        let _ = parse_wide_csv(&junk);
        let _ = parse_edges_csv(&junk);
    }
}

#[test]
fn edges_csv() {
    let e =
        parse_edges_csv("# graph\nfrontend,checkout,120\n\"check,out\",payments\n").expect("valid");
    assert_eq!(
        e,
        [
            CallEdge {
                caller: "frontend".into(),
                callee: "checkout".into()
            },
            CallEdge {
                caller: "check,out".into(),
                callee: "payments".into()
            },
        ]
    );
    assert_eq!(parse_edges_csv("source,target\n").expect("header only"), []);
    assert_eq!(parse_edges_csv("").expect("empty"), []);
    assert_eq!(
        parse_edges_csv("a,b\nc\n"),
        Err(RcaError::BadEdge { line: 2 })
    );
    assert_eq!(parse_edges_csv("a,\n"), Err(RcaError::BadEdge { line: 1 }));
}

/// Two nodes of one machine: `payments@n2` leaks memory while the host-wide memory of
/// both nodes rises (the shared machine) a few seconds *before* it, and the host of
/// `payments`' node saturates on memory too.
fn leak_on_shared_machine() -> Scenario {
    let mut sc = Scenario::new(
        &[("frontend@n1", 80.0), ("payments@n2", 20.0)],
        &[("frontend@n1", "payments@n2")],
    );
    for node in ["host@n1", "host@n2"] {
        sc = sc
            .series(flat(node, "mem_used_pct", 30.0, 0.5))
            .series(flat(node, "load_1m", 1.0, 0.1));
    }
    sc.effect(
        "host@n1",
        "mem_used_pct",
        Effect::Step {
            at: FAULT - 5,
            delta: 20.0,
        },
    )
    .effect(
        "host@n2",
        "mem_used_pct",
        Effect::Step {
            at: FAULT - 5,
            delta: 20.0,
        },
    )
    .effect(
        "payments@n2",
        "mem.used_bytes",
        Effect::Ramp {
            at: FAULT,
            per_s: 20e6,
        },
    )
    .effect(
        "frontend@n1",
        "http.latency_ms",
        Effect::Step {
            at: FAULT + 20,
            delta: 40.0,
        },
    )
    .window(FAULT - 10, N - 1)
}

#[test]
fn shared_and_contained_node_anomalies_do_not_win() {
    let sc = leak_on_shared_machine();
    let r = check("leak on a shared machine", &sc, "payments@n2", "memory");
    let (h1, h2) = (kind_of(&r, "host@n1"), kind_of(&r, "host@n2"));
    assert!(
        h1.is_some() && h2.is_some(),
        "both hosts stay candidates: {r:?}"
    );
    let top = r.ranking[0].score;
    for h in [h1, h2].into_iter().flatten() {
        assert!(h.score < 0.5 * top, "{} not discounted: {r:?}", h.target);
    }
    // Without the node-level rules the hosts (earlier, memory saturating) win: the
    // rules, not the data, decide this.
    let off = RcaConfig {
        host_prefix: None,
        ..RcaConfig::default()
    };
    let r = rank(&sc.input(), &off);
    assert!(
        r.ranking
            .first()
            .is_some_and(|c| c.target.starts_with("host@")),
        "{r:?}"
    );
}

#[test]
fn a_node_alone_in_its_anomaly_stays_a_cause() {
    // Only host@n1's memory rises, nothing of its own on n1 explains it: the node is
    // the cause (a process the agent does not see, the kernel).
    let mut sc = Scenario::new(
        &[("frontend@n1", 80.0), ("payments@n2", 20.0)],
        &[("frontend@n1", "payments@n2")],
    );
    for node in ["host@n1", "host@n2"] {
        sc = sc.series(flat(node, "mem_used_pct", 30.0, 0.5));
    }
    let sc = sc
        .effect(
            "host@n1",
            "mem_used_pct",
            Effect::Step {
                at: FAULT,
                delta: 40.0,
            },
        )
        .effect(
            "frontend@n1",
            "http.latency_ms",
            Effect::Step {
                at: FAULT + 3,
                delta: 40.0,
            },
        )
        .window(FAULT - 10, N - 1);
    check("node alone", &sc, "host@n1", "memory");
}

#[test]
fn a_fraction_of_a_percentage_point_is_not_an_anomaly() {
    // cpu_pct 1.5 -> 2.0 on a flat baseline: 50 deviations by the relative floor, none
    // by the percentage floor; the real cause (a memory ramp) wins.
    let sc = Scenario::new(&[("a", 20.0), ("b", 20.0)], &[])
        .series(flat("a", "cpu_pct", 1.5, 0.001))
        .effect(
            "a",
            "cpu_pct",
            Effect::Step {
                at: FAULT - 5,
                delta: 0.5,
            },
        )
        .effect(
            "b",
            "mem.used_bytes",
            Effect::Ramp {
                at: FAULT,
                per_s: 1e6,
            },
        )
        .window(FAULT - 10, N - 1);
    let r = check("sub-point cpu", &sc, "b", "memory");
    assert!(kind_of(&r, "a").is_none(), "{r:?}");
}

#[test]
fn anomaly_events_are_classified_by_their_metric_and_direction() {
    use super::classify::classify_event;
    // The path in the detail names a CPU hog scenario; the metric is log lines.
    assert_eq!(
        classify_event(
            "anomaly",
            "log.lines on n2 log/file/x/chain-cpu-hog-payments/ledger.log: low"
        ),
        (MetricClass::Unknown, false)
    );
    assert_eq!(
        classify_event("anomaly", "proc.write_bytes_per_s on n2 process/7: high"),
        (MetricClass::Disk, true)
    );
    // The same resource below what was expected is a symptom (fewer requests).
    assert_eq!(
        classify_event("anomaly_low", "proc.write_bytes_per_s on n2 process/7: low"),
        (MetricClass::Disk, false)
    );
    // "No space left on device" in a service's log: its disk, cause evidence.
    assert_eq!(
        classify_event("disk_exhausted", "its log says so: ERROR cannot write"),
        (MetricClass::Disk, true)
    );
    assert_eq!(super::classify::event_weight("disk_exhausted"), 0.85);
}

#[test]
fn a_callee_starved_by_its_failing_caller_is_a_victim() {
    // frontend -> checkout -> ledger; checkout's CPU saturates; ledger gets fewer
    // requests: its CPU falls, and its log lines are below what was expected, a
    // little *before* checkout's CPU anomaly is detected.
    let sc = Scenario::new(
        &[("frontend", 80.0), ("checkout", 50.0), ("ledger", 10.0)],
        &[("frontend", "checkout"), ("checkout", "ledger")],
    )
    .effect(
        "checkout",
        "cpu.usage_pct",
        Effect::Step {
            at: FAULT + 3,
            delta: 70.0,
        },
    )
    .effect(
        "ledger",
        "cpu.usage_pct",
        Effect::Step {
            at: FAULT,
            delta: -15.0,
        },
    )
    .effect(
        "frontend",
        "http.latency_ms",
        Effect::Step {
            at: FAULT + 3,
            delta: 80.0,
        },
    )
    .event(
        "ledger",
        FAULT,
        "anomaly_low",
        "log.lines on n2 log/file/ledger.log",
    )
    .window(FAULT - 5, N - 1);
    let r = check("starved callee", &sc, "checkout", "cpu");
    let ledger = kind_of(&r, "ledger");
    assert_eq!(
        ledger.map(|c| (c.kind.as_str(), c.caused_by.as_deref())),
        Some(("dependency", Some("checkout"))),
        "{r:?}"
    );
    assert!(
        ledger.is_some_and(|c| c.explanation.contains("fewer requests")),
        "{r:?}"
    );
}

/// web -> {cart, catalog} -> db; db drops connections: its own evidence is one weak
/// anomaly event, both callers log errors, and cart's CPU wobbles a little (handling
/// the errors) *before* the errors start.
fn lossy_db() -> Scenario {
    Scenario::new(
        &[
            ("web", 80.0),
            ("cart", 40.0),
            ("catalog", 40.0),
            ("db", 10.0),
        ],
        &[
            ("web", "cart"),
            ("web", "catalog"),
            ("cart", "db"),
            ("catalog", "db"),
        ],
    )
    .event(
        "db",
        FAULT,
        "anomaly",
        "proc.write_bytes_per_s on n3 process/9: above",
    )
    .effect(
        "cart",
        "cpu.usage_pct",
        Effect::Step {
            at: FAULT - 2,
            delta: 12.0,
        },
    )
    .effect(
        "cart",
        "http.errors_per_s",
        Effect::Step {
            at: FAULT + 2,
            delta: 30.0,
        },
    )
    .effect(
        "catalog",
        "http.errors_per_s",
        Effect::Step {
            at: FAULT + 2,
            delta: 30.0,
        },
    )
    .window(FAULT - 5, N - 1)
}

#[test]
fn the_common_callee_of_failing_callers_is_corroborated() {
    let sc = lossy_db();
    let r = check("lossy db", &sc, "db", "disk");
    // cart's errors are put down to db even though cart's CPU moved first.
    assert!(
        kind_of(&r, "cart").is_some_and(|c| c
            .evidence
            .iter()
            .any(|e| e.series == "cart:http.errors_per_s"
                && e.note.contains("explained by callee db"))),
        "{r:?}"
    );
    // Without the callers' corroboration, cart's own CPU wobble out-ranks db's one
    // weak anomaly.
    let off = RcaConfig {
        corroboration: 0.0,
        ..RcaConfig::default()
    };
    let r = rank(&sc.input(), &off);
    assert_eq!(
        r.ranking.first().map(|c| c.target.as_str()),
        Some("cart"),
        "{r:?}"
    );
}

#[test]
fn a_few_mib_more_is_not_memory_pressure() {
    // Every service of a delayed chain holds a few more threads and buffers while
    // requests queue: 0.6 MiB -> 2 MiB of cgroup memory on the caller, 12 deviations of a
    // tight baseline. The leaf's connection pile-up (fds) is what is left.
    let sc = Scenario::new(
        &[("frontend", 80.0), ("ledger", 10.0)],
        &[("frontend", "ledger")],
    )
    .series(flat("frontend", "cgroup_mem_bytes", 0.6e6, 1e3))
    .series(flat("ledger", "fds", 20.0, 1.0))
    .effect(
        "frontend",
        "cgroup_mem_bytes",
        Effect::Step {
            at: FAULT - 3,
            delta: 1.4e6,
        },
    )
    .effect(
        "ledger",
        "fds",
        Effect::Step {
            at: FAULT,
            delta: 30.0,
        },
    )
    .effect(
        "frontend",
        "http.latency_ms",
        Effect::Step {
            at: FAULT + 1,
            delta: 400.0,
        },
    )
    .window(FAULT - 5, N - 1);
    let r = check("small memory rise", &sc, "ledger", "unknown");
    assert!(
        !r.ranking
            .iter()
            .flat_map(|c| &c.evidence)
            .any(|e| e.series == "frontend:cgroup_mem_bytes"),
        "{r:?}"
    );
}

#[test]
fn a_stray_early_anomaly_does_not_set_a_components_clock() {
    // frontend -> ledger; ledger fails (errors), frontend's errors follow a second
    // later; frontend also had one weak unrelated anomaly 9 s before the fault.
    let sc = Scenario::new(
        &[("frontend", 80.0), ("ledger", 10.0)],
        &[("frontend", "ledger")],
    )
    .event(
        "frontend",
        FAULT - 9,
        "anomaly",
        "sched.runq_wakeups_per_s on n1: above",
    )
    .event(
        "frontend",
        FAULT - 9,
        "anomaly",
        "log.templates on n1: above",
    )
    .effect(
        "ledger",
        "http.errors_per_s",
        Effect::Step {
            at: FAULT,
            delta: 40.0,
        },
    )
    .effect(
        "frontend",
        "http.errors_per_s",
        Effect::Step {
            at: FAULT + 1,
            delta: 40.0,
        },
    )
    .window(FAULT - 5, N - 1);
    let r = check("stray early anomaly", &sc, "ledger", "errors");
    assert!(
        kind_of(&r, "frontend").is_some_and(|c| c
            .evidence
            .iter()
            .any(|e| e.note.contains("explained by callee ledger"))),
        "{r:?}"
    );
    let off = RcaConfig {
        onset_share: 0.0,
        ..RcaConfig::default()
    };
    let r = rank(&sc.input(), &off);
    assert_eq!(
        r.ranking.first().map(|c| c.target.as_str()),
        Some("frontend"),
        "{r:?}"
    );
}
