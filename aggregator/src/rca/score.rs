//! Scoring for the RCA engine: the driver behind [`super::rank`].
//!
//! Per series (in parallel, independent of thread count): a robust z-score of the
//! anomalous period against the baseline, `|x - median(baseline)| / IQR(baseline)`
//! floored at `rel_eps` of the level, taken as the largest deviation *sustained* for
//! `persist_points` consecutive points so a lone spike never wins; plus the direction
//! and the series' own onset. Per component: the strongest cause evidence (own
//! resources rising, crashes, OOM kills) and the strongest symptom evidence (latency,
//! errors, anything else), the symptom part demoted when [`super::graph`] finds an
//! anomalous callee that explains it, then timing and graph factors.

use std::collections::BTreeMap;

use super::classify::{MetricClass, classify_event, classify_metric, event_weight, inverted};
use super::onset::{Scratch, change_point, cluster_onset};
use super::stats::{quantiles, sliding_min_max};
use super::{Candidate, Evidence, Ranking, RcaConfig, RcaInput};
use super::{explain, graph, host};

/// What one anomalous series says.
#[derive(Clone, Debug)]
pub struct SeriesEval {
    pub series: usize,
    pub z: f64,
    pub up: bool,
    pub at_ms: i64,
    pub value: f64,
    pub baseline: f64,
    pub onset_ms: i64,
    pub class: MetricClass,
    /// Own resource rising (or a crash metric): points at this component.
    pub cause: bool,
    /// Class weight times the saturating strength of `z`, in `[0, 1]`.
    pub weighted: f64,
    /// Node-level and anomalous on every node ([`super::host`]): discounted.
    pub shared: bool,
}

/// One piece of a component's evidence: a series or an event.
#[derive(Clone, Debug)]
pub enum Item {
    Series(SeriesEval),
    Event {
        /// The first (earliest) of the events this item stands for.
        event: usize,
        /// Repeated lifecycle events (a crash loop's exits) are one item: how many.
        count: usize,
        class: MetricClass,
        cause: bool,
        weighted: f64,
    },
}

impl Item {
    pub fn weighted(&self) -> f64 {
        match self {
            Item::Series(e) => e.weighted,
            Item::Event { weighted, .. } => *weighted,
        }
    }
    pub fn cause(&self) -> bool {
        match self {
            Item::Series(e) => e.cause,
            Item::Event { cause, .. } => *cause,
        }
    }
    pub fn class(&self) -> MetricClass {
        match self {
            Item::Series(e) => e.class,
            Item::Event { class, .. } => *class,
        }
    }
    /// A level below normal: a series that fell, an `*_low` event. A component whose
    /// symptoms are all falls may be starved by a failing caller.
    pub fn fall(&self, events: &[super::EvidenceEvent]) -> bool {
        match self {
            Item::Series(e) => !e.up,
            Item::Event { event, .. } => events
                .get(*event)
                .is_some_and(|e| e.kind.to_ascii_lowercase().ends_with("_low")),
        }
    }
    /// Discounts this evidence (node-level evidence explained elsewhere).
    pub fn scale(&mut self, factor: f64) {
        match self {
            Item::Series(e) => e.weighted *= factor,
            Item::Event { weighted, .. } => *weighted *= factor,
        }
    }
}

/// A component and everything the engine concluded about it.
#[derive(Clone, Debug, Default)]
pub struct Comp {
    pub name: String,
    pub items: Vec<Item>,
    pub onset_ms: Option<i64>,
    /// When its first *symptom* was seen: what a callee must precede to explain it (a
    /// weak early wobble of its own resources does not make its errors its own).
    pub symptom_onset_ms: Option<i64>,
    /// Best cause / symptom evidence before graph reasoning.
    pub cause: f64,
    pub symptom: f64,
    pub strength: f64,
    /// The anomalous callee (transitive) its symptoms are put down to, or with
    /// `upstream`, the failing caller it gets fewer requests from.
    pub explained_by: Option<usize>,
    /// `explained_by` is a caller: all this component's evidence is levels falling.
    pub upstream: bool,
    /// Anomalous callers (transitive) that turned anomalous no earlier than it did.
    pub explains: Vec<usize>,
    pub score: f64,
    pub kind: &'static str,
    /// The kind (and the explanation's lead) comes from cause evidence.
    pub lead_cause: bool,
    /// Strongest symptom of a caller it explains (graph mode).
    pub corroboration: f64,
    /// Node-level evidence discounted by [`super::host`], and why.
    pub discount: Option<host::Discount>,
}

impl Comp {
    pub fn anomalous(&self) -> bool {
        !self.items.is_empty()
    }
    /// The item the kind comes from and the one the explanation leads with.
    pub fn lead_item(&self) -> Option<&Item> {
        best_item(&self.items, self.lead_cause).or_else(|| best_item(&self.items, !self.lead_cause))
    }
}

/// Cause evidence names the kind when it is at least this share of the symptom
/// evidence: a CPU hog's own latency may deviate more than its CPU, but the CPU is
/// the cause.
const CAUSE_PREFERENCE: f64 = 0.6;

pub fn rank(input: &RcaInput, cfg: &RcaConfig) -> Ranking {
    let series = &input.series[..input.series.len().min(cfg.max_series)];

    // Components, sorted by name so every later tie-break is by name for free.
    let mut names: Vec<&str> = series
        .iter()
        .map(|s| s.component.as_str())
        .chain(input.events.iter().map(|e| e.component.as_str()))
        .collect();
    names.sort_unstable();
    names.dedup();
    let comp_index: BTreeMap<&str, usize> =
        names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let comp_of = |name: &str| comp_index.get(name).copied().unwrap_or(0);
    let components_considered = names.len();

    let window = input.window.map(|(a, b)| (a.min(b), a.max(b)));
    let hi = window.map_or(i64::MAX, |w| w.1);
    let threads = thread_count(cfg, series.iter().map(|s| s.points.len()).sum());

    // Per-series change points: they find the onset when no window is given, and
    // precursors (slow changes that began before the onset) in both modes.
    let cps = par_map(series.len(), threads, |i, s| {
        extract(&series[i].points, hi, cfg.max_points_per_series, s);
        let (ts, xs) = (std::mem::take(&mut s.ts), std::mem::take(&mut s.xs));
        let cp = change_point(&ts, &xs, cfg, s);
        (s.ts, s.xs) = (ts, xs);
        cp
    });
    let onset = match window {
        Some((a, _)) => Some(a),
        None => {
            let mut points: Vec<(i64, usize)> = cps
                .iter()
                .enumerate()
                .filter_map(|(i, cp)| cp.map(|t| (t, comp_of(&series[i].component))))
                .collect();
            points.extend(input.events.iter().filter_map(|e| {
                let (_, cause) = classify_event(&e.kind, &e.detail);
                cause.then(|| (e.ts_ms, comp_of(&e.component)))
            }));
            cluster_onset(&mut points, names.len(), cfg.onset_cluster_ms)
        }
    };
    let Some(onset) = onset else {
        return Ranking {
            ranking: Vec::new(),
            onset_ms: None,
            components_considered,
        };
    };

    let evals = par_map(series.len(), threads, |i, s| {
        extract(&series[i].points, hi, cfg.max_points_per_series, s);
        evaluate(i, &series[i].metric, onset, cps[i], cfg, s)
    });
    let interval = median_interval(&evals);
    let slack = cfg.propagation_slack_ms.max(interval.saturating_mul(3));

    let mut comps: Vec<Comp> = names
        .iter()
        .map(|n| Comp {
            name: (*n).to_string(),
            kind: "unknown",
            ..Comp::default()
        })
        .collect();
    for (eval, _) in evals.into_iter().flatten() {
        let c = comp_of(&series[eval.series].component);
        comps[c].items.push(Item::Series(eval));
    }
    // Lifecycle events (crash, exit, restart, kill, refused connections, OOM kills) of
    // one kind on one component are one item whose confidence grows with each
    // repetition, `1 - prod(1 - confidence)`: a process that crashes again and again
    // is surer to be the cause than one that crashed once. Other events count one by one.
    let mut repeated: BTreeMap<(usize, String), (usize, usize, Vec<f64>)> = BTreeMap::new();
    for (i, e) in input.events.iter().enumerate() {
        if e.ts_ms < onset.saturating_sub(slack) || e.ts_ms > hi {
            continue;
        }
        let (class, cause) = classify_event(&e.kind, &e.detail);
        let confidence = if e.score.is_finite() && e.score > 0.0 {
            e.score.min(1.0)
        } else {
            1.0
        };
        let c = comp_of(&e.component);
        if cause && (class == MetricClass::Crash || class == MetricClass::Memory) {
            let entry =
                repeated
                    .entry((c, e.kind.to_ascii_lowercase()))
                    .or_insert((i, 0, Vec::new()));
            let first = &input.events[entry.0];
            if (e.ts_ms, &e.detail) < (first.ts_ms, &first.detail) {
                entry.0 = i;
            }
            entry.1 += 1;
            entry.2.push(confidence);
            continue;
        }
        comps[c].items.push(Item::Event {
            event: i,
            count: 1,
            class,
            cause,
            weighted: event_weight(&e.kind) * confidence,
        });
    }
    for ((c, _), (first, count, mut confidences)) in repeated {
        // Sorted, so the product does not depend on the input order.
        confidences.sort_by(f64::total_cmp);
        let miss: f64 = confidences.iter().map(|p| 1.0 - p).product();
        let e = &input.events[first];
        let (class, cause) = classify_event(&e.kind, &e.detail);
        comps[c].items.push(Item::Event {
            event: first,
            count,
            class,
            cause,
            weighted: event_weight(&e.kind) * (1.0 - miss),
        });
    }
    host::discount(&mut comps, input, cfg);
    for c in &mut comps {
        let onset_of = |i: &Item| match i {
            Item::Series(e) => e.onset_ms,
            Item::Event { event, .. } => input.events[*event].ts_ms,
        };
        // When its main evidence began: items weaker than `onset_share` of its strongest
        // (a stray anomaly of the noise before the fault) do not set its clock, for the
        // timing factor nor for explain-away.
        let top = c.items.iter().map(Item::weighted).fold(0.0, f64::max);
        let top_symptom = best(&c.items, false);
        c.onset_ms = c
            .items
            .iter()
            .filter(|i| i.weighted() >= cfg.onset_share * top)
            .map(onset_of)
            .min();
        c.symptom_onset_ms = c
            .items
            .iter()
            .filter(|i| !i.cause() && i.weighted() >= cfg.onset_share * top_symptom)
            .map(onset_of)
            .min();
        c.cause = best(&c.items, true);
        c.symptom = best(&c.items, false);
        c.strength = c.cause.max(c.symptom);
    }

    let graph_mode = graph::analyse(&mut comps, &input.edges, &input.events, slack);
    // Strongest symptom among the explained callers of each component.
    let corroboration: Vec<f64> = comps
        .iter()
        .enumerate()
        .map(|(ci, c)| {
            c.explains
                .iter()
                .filter(|&&a| comps[a].explained_by == Some(ci))
                .map(|&a| comps[a].symptom)
                .fold(0.0, f64::max)
        })
        .collect();
    for (c, k) in comps.iter_mut().zip(corroboration) {
        c.corroboration = k;
    }

    // The lag is measured from the earliest component whose evidence stands on its own:
    // a node's shared or contained anomalies (often build noise that came first) do not
    // set the clock for everyone else.
    let earliest = comps
        .iter()
        .filter(|c| c.discount.is_none())
        .filter_map(|c| c.onset_ms)
        .min()
        .or_else(|| comps.iter().filter_map(|c| c.onset_ms).min());
    let n_anomalous = comps.iter().filter(|c| c.anomalous()).count();
    for c in comps.iter_mut().filter(|c| c.anomalous()) {
        let symptom = if c.explained_by.is_some() {
            c.symptom * cfg.explain_factor
        } else {
            c.symptom
        };
        let (a, b) = if c.cause >= symptom {
            (c.cause, symptom)
        } else {
            (symptom, c.cause)
        };
        // Two independent kinds of evidence corroborate; the second counts half.
        let mut strength = a + (1.0 - a) * 0.5 * b;
        // The symptoms of the callers it explains corroborate a root (the common callee
        // of several failing callers), the more so the stronger they are; a victim gets
        // nothing for its own callers.
        if c.explained_by.is_none() {
            strength += (1.0 - strength) * cfg.corroboration * c.corroboration;
        }
        let lag = match (c.onset_ms, earliest) {
            // Discounted components may come before `earliest`: no bonus for that.
            (Some(o), Some(e)) => (o.saturating_sub(e)).max(0) as f64,
            _ => 0.0,
        };
        let tf = 1.0 - cfg.timing_weight * (1.0 - (-lag / cfg.timing_scale_ms.max(1.0)).exp());
        let gf = if graph_mode && n_anomalous > 1 {
            let frac = c.explains.len() as f64 / (n_anomalous - 1) as f64;
            1.0 - cfg.root_weight * (1.0 - frac.min(1.0))
        } else {
            1.0
        };
        c.score = clamp01(strength * tf * gf);
        c.lead_cause = c.cause > 0.0 && c.cause >= CAUSE_PREFERENCE * symptom;
        c.kind = if c.lead_cause {
            best_item(&c.items, true).map_or("unknown", |i| i.class().kind())
        } else if c.explained_by.is_some() {
            "dependency"
        } else {
            best_item(&c.items, false).map_or("unknown", |i| symptom_kind(i.class()))
        };
    }

    let mut order: Vec<usize> = (0..comps.len()).filter(|&i| comps[i].anomalous()).collect();
    order.sort_by(|&a, &b| {
        comps[b]
            .score
            .total_cmp(&comps[a].score)
            .then_with(|| comps[a].name.cmp(&comps[b].name))
    });
    order.truncate(cfg.max_candidates);

    let ranking = order
        .iter()
        .enumerate()
        .map(|(rank_pos, &ci)| {
            let c = &comps[ci];
            Candidate {
                target: c.name.clone(),
                kind: c.kind.to_string(),
                score: round4(c.score),
                evidence: evidence_list(c, &comps, input, cfg),
                explanation: explain::paragraph(rank_pos, ci, &comps, input, graph_mode),
                caused_by: (c.kind == "dependency")
                    .then(|| c.explained_by.map(|d| comps[d].name.clone()))
                    .flatten(),
                onset_ms: c.onset_ms,
            }
        })
        .collect();
    Ranking {
        ranking,
        onset_ms: Some(onset),
        components_considered,
    }
}

/// Symptom classes as a kind: latency is reported as `network`; a resource *falling*
/// (a caller idling while it waits) says nothing about which resource is at fault.
fn symptom_kind(class: MetricClass) -> &'static str {
    match class {
        MetricClass::Latency | MetricClass::Errors | MetricClass::Crash => class.kind(),
        _ => "unknown",
    }
}

fn best(items: &[Item], cause: bool) -> f64 {
    best_item(items, cause).map_or(0.0, Item::weighted)
}

fn best_item(items: &[Item], cause: bool) -> Option<&Item> {
    // Ties go to the first item, i.e. input order, which is deterministic.
    items
        .iter()
        .filter(|i| i.cause() == cause)
        .fold(None, |acc: Option<&Item>, i| match acc {
            Some(a) if a.weighted() >= i.weighted() => Some(a),
            _ => Some(i),
        })
}

fn clamp01(x: f64) -> f64 {
    if x.is_finite() {
        x.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// Four decimals: enough to rank, and stable across platforms' last-bit differences.
fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

fn evidence_list(c: &Comp, comps: &[Comp], input: &RcaInput, cfg: &RcaConfig) -> Vec<Evidence> {
    let mut items: Vec<&Item> = c.items.iter().collect();
    items.sort_by(|a, b| b.weighted().total_cmp(&a.weighted()));
    items
        .into_iter()
        .take(cfg.max_evidence)
        .map(|i| match i {
            Item::Series(e) => {
                let s = &input.series[e.series];
                let verb = if e.up { "rose" } else { "fell" };
                let role = if let Some(host::Discount::Contained { by }) = &c.discount {
                    format!("node-level, explained by {} on this node", comps[*by].name)
                } else if e.shared {
                    "node-level, the same on every node".to_string()
                } else if e.cause {
                    format!("{} pressure: own resource", e.class.kind())
                } else if let Some(d) = c.explained_by {
                    let who = if c.upstream { "caller" } else { "callee" };
                    format!("symptom, explained by {who} {}", comps[d].name)
                } else {
                    "symptom".to_string()
                };
                Evidence {
                    series: format!("{}:{}", s.component, s.metric),
                    at_ms: e.at_ms,
                    value: e.value,
                    baseline: e.baseline,
                    deviation: round4(e.z),
                    note: format!("{verb} ({role}); onset {}", explain::clock(e.onset_ms)),
                }
            }
            Item::Event { event, count, .. } => {
                let ev = &input.events[*event];
                let what = if *count > 1 {
                    format!("{} {} events, the first", count, ev.kind)
                } else {
                    format!("{} event", ev.kind)
                };
                Evidence {
                    series: format!("{}:event.{}", ev.component, ev.kind),
                    at_ms: ev.ts_ms,
                    value: ev.score,
                    baseline: 0.0,
                    deviation: 0.0,
                    note: if ev.detail.is_empty() {
                        what
                    } else {
                        format!("{what}: {}", ev.detail)
                    },
                }
            }
        })
        .collect()
}

/// Copies the usable points of a series into `s.ts` / `s.xs`: finite values, sorted
/// by time (last value wins on equal timestamps), up to `hi`, decimated to at most
/// `max_points` by an even stride.
fn extract(points: &[(i64, f64)], hi: i64, max_points: usize, s: &mut Scratch) {
    s.ts.clear();
    s.xs.clear();
    let sorted = points.windows(2).all(|w| w[0].0 < w[1].0);
    let src: &[(i64, f64)] = if sorted {
        points
    } else {
        s.pts.clear();
        s.pts.extend_from_slice(points);
        s.pts.sort_by_key(|p| p.0);
        // After a stable sort, the last of equal timestamps is the latest reported.
        let mut w = 0;
        for r in 0..s.pts.len() {
            if w > 0 && s.pts[w - 1].0 == s.pts[r].0 {
                s.pts[w - 1] = s.pts[r];
            } else {
                s.pts[w] = s.pts[r];
                w += 1;
            }
        }
        s.pts.truncate(w);
        &s.pts
    };
    let end = src.partition_point(|p| p.0 <= hi);
    let src = &src[..end];
    let stride = src.len().div_ceil(max_points.max(1)).max(1);
    s.ts.reserve(src.len().div_ceil(stride));
    s.xs.reserve(src.len().div_ceil(stride));
    if stride == 1 && src.iter().all(|p| p.1.is_finite()) {
        // The usual case: every point, all finite; two straight copies.
        s.ts.extend(src.iter().map(|p| p.0));
        s.xs.extend(src.iter().map(|p| p.1));
        return;
    }
    for &(t, v) in src.iter().step_by(stride) {
        if v.is_finite() {
            s.ts.push(t);
            s.xs.push(v);
        }
    }
}

/// Scores one series (already in `s.ts` / `s.xs`) against the baseline before
/// `onset`, or before its own change point `cp` when that is a precursor. Returns the
/// evaluation if it is anomalous, and the mean sample interval.
fn evaluate(
    idx: usize,
    metric: &str,
    onset: i64,
    cp: Option<i64>,
    cfg: &RcaConfig,
    s: &mut Scratch,
) -> Option<(SeriesEval, i64)> {
    let n = s.ts.len();
    let interval = match (s.ts.first(), s.ts.last()) {
        (Some(&a), Some(&b)) if n > 1 => (b.saturating_sub(a)) / (n as i64 - 1),
        _ => 0,
    };
    let split = s.ts.partition_point(|&t| t < onset);
    if let Some(c) =
        cp.filter(|&c| c < onset && onset.saturating_sub(c) <= cfg.precursor_lookback_ms)
    {
        let early = s.ts.partition_point(|&t| t < c);
        if let Some(e) = eval_from(idx, metric, early, cfg, s) {
            // `s.b` now holds the deviations from `early` on: a precursor's deviation
            // must keep growing past the onset (a step that merely persists is not one).
            let k = split - early;
            let (pre, post) = (&s.b[..k], &s.b[k..]);
            let abs_median = |xs: &[f64], keys: &mut Vec<i64>| {
                keys.clear();
                keys.extend(xs.iter().map(|x| super::stats::key(x.abs())));
                super::stats::quantiles_of_keys(keys, [0.5])[0]
            };
            if !post.is_empty() {
                let pre_m = abs_median(pre, &mut s.k);
                let post_m = abs_median(post, &mut s.k);
                if post_m >= 1.5 * pre_m && post_m >= cfg.min_z {
                    return Some((e, interval));
                }
            }
        }
    }
    eval_from(idx, metric, split, cfg, s).map(|e| (e, interval))
}

/// Scores `s.xs[split..]` against the baseline `s.xs[..split]`. Leaves the signed
/// deviations of the anomalous part in `s.b`.
fn eval_from(
    idx: usize,
    metric: &str,
    split: usize,
    cfg: &RcaConfig,
    s: &mut Scratch,
) -> Option<SeriesEval> {
    let n = s.ts.len();
    if split < cfg.min_baseline_points.max(1) || split >= n {
        return None;
    }
    let [q25, med, q75] = quantiles(&s.xs[..split], [0.25, 0.5, 0.75], &mut s.k);
    let anom = &s.xs[split..];
    let mut level = med.abs().max(q25.abs()).max(q75.abs());
    if level == 0.0 {
        // A baseline of constant zero (error counts): any sustained change is 1/rel_eps.
        level = anom.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    }
    let class = classify_metric(metric);
    let floor = if is_percentage(metric) {
        cfg.pct_floor
    } else if class == MetricClass::Memory {
        // A process's memory moves by a few percent as it serves requests (allocator
        // arenas, caches, a few more threads while requests queue): pressure is a
        // change well past that, and, in bytes, past a few MiB.
        let bytes = metric
            .to_ascii_lowercase()
            .split(|c: char| !c.is_ascii_alphanumeric())
            .any(|t| t == "bytes");
        let abs = if bytes { cfg.mem_bytes_floor } else { 0.0 };
        (cfg.mem_rel_floor * level).max(abs)
    } else {
        0.0
    };
    let scale = (q75 - q25).max(cfg.rel_eps * level).max(floor);
    if scale.is_nan() || scale <= 0.0 || !scale.is_finite() {
        return None;
    }
    s.b.clear();
    s.b.extend(anom.iter().map(|x| (x - med) / scale));
    let p = cfg.persist_points.max(1).min(s.b.len());
    sliding_min_max(&s.b, p, &mut s.c, &mut s.d);
    let (mins, maxs) = (&s.c, &s.d);
    let (mut up_i, mut up) = (0usize, f64::NEG_INFINITY);
    let (mut dn_i, mut dn) = (0usize, f64::NEG_INFINITY);
    for (i, (&lo, &hi)) in mins.iter().zip(maxs.iter()).enumerate() {
        if lo > up {
            (up_i, up) = (i, lo);
        }
        if -hi > dn {
            (dn_i, dn) = (i, -hi);
        }
    }
    let is_up = up >= dn;
    let (best_i, raw) = if is_up { (up_i, up) } else { (dn_i, dn) };
    if !raw.is_finite() || raw < cfg.min_z {
        return None;
    }
    let z = raw.min(cfg.z_cap);
    let threshold = cfg.min_z.max(cfg.onset_frac * z);
    let first = if is_up {
        mins.iter().position(|&v| v >= threshold)
    } else {
        maxs.iter().position(|&v| -v >= threshold)
    }
    .unwrap_or(best_i);
    let pressure_up = is_up != inverted(metric);
    let cause = class == MetricClass::Crash || (class.is_resource() && pressure_up);
    let weight = if cause {
        1.0
    } else {
        match class {
            MetricClass::Errors => 0.8,
            MetricClass::Latency => 0.7,
            _ => 0.5,
        }
    };
    let ts_anom = &s.ts[split..];
    Some(SeriesEval {
        series: idx,
        z,
        up: is_up,
        at_ms: ts_anom[best_i],
        value: med + if is_up { raw } else { -raw } * scale,
        baseline: med,
        onset_ms: ts_anom[first],
        class,
        cause,
        weighted: weight * z / (z + cfg.z_half.max(f64::MIN_POSITIVE)),
        shared: false,
    })
}

/// `cpu_pct`, `mem.used_percent`, `psi_io_some_pct`: values in percentage points.
fn is_percentage(metric: &str) -> bool {
    metric
        .to_ascii_lowercase()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|t| t == "pct" || t == "percent" || t == "percentage")
}

fn median_interval(evals: &[Option<(SeriesEval, i64)>]) -> i64 {
    let mut iv: Vec<i64> = evals.iter().flatten().map(|(_, i)| *i).collect();
    if iv.is_empty() {
        return 0;
    }
    let mid = iv.len() / 2;
    *iv.select_nth_unstable(mid).1
}

fn thread_count(cfg: &RcaConfig, total_points: usize) -> usize {
    // Below ~200k points a thread costs more than it saves.
    if total_points < 200_000 {
        return 1;
    }
    if cfg.threads > 0 {
        return cfg.threads.min(64);
    }
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
}

/// `f(i)` for `i in 0..n`, in contiguous chunks over `threads` threads, results in index
/// order (so the output never depends on scheduling). Falls back to the calling
/// thread if a thread cannot be started.
fn par_map<T: Send, F: Fn(usize, &mut Scratch) -> T + Sync>(
    n: usize,
    threads: usize,
    f: F,
) -> Vec<T> {
    let threads = threads.clamp(1, n.max(1));
    let run = |lo: usize, hi: usize| {
        let mut s = Scratch::default();
        (lo..hi).map(|i| f(i, &mut s)).collect::<Vec<T>>()
    };
    if threads == 1 {
        return run(0, n);
    }
    let chunk = n.div_ceil(threads);
    std::thread::scope(|scope| {
        let run = &run;
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (lo, hi) = ((t * chunk).min(n), ((t + 1) * chunk).min(n));
                (
                    lo,
                    hi,
                    std::thread::Builder::new()
                        .spawn_scoped(scope, move || run(lo, hi))
                        .ok(),
                )
            })
            .collect();
        let mut out = Vec::with_capacity(n);
        for (lo, hi, h) in handles {
            match h.map(|h| h.join()) {
                Some(Ok(v)) => out.extend(v),
                Some(Err(panic)) => std::panic::resume_unwind(panic),
                None => out.extend(run(lo, hi)),
            }
        }
        out
    })
}
