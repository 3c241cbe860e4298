//! Onset detection for the RCA engine: when did the incident start? Used by
//! [`super::score`] when the caller gives no window.
//!
//! Per series, the earliest significant mean-shift change point (binary segmentation
//! towards the left, on a median-filtered copy so single spikes do not count); then,
//! over all series and cause events, the earliest change point of the densest cluster
//! of components changing together. A stray change long before the incident does not
//! drag the onset back, and the root, which changes a little before its victims, is
//! still inside the cluster.

use super::RcaConfig;
use super::stats::{best_split, diff_sigma, median, median5};

/// Work buffers, one set per worker thread.
#[derive(Default)]
pub struct Scratch {
    pub ts: Vec<i64>,
    pub xs: Vec<f64>,
    /// Selection keys (`stats::key`).
    pub k: Vec<i64>,
    pub b: Vec<f64>,
    pub c: Vec<f64>,
    pub d: Vec<f64>,
    pub pts: Vec<(i64, f64)>,
}

/// The earliest significant change point of one series (`ts`, `xs` sorted, finite),
/// as a timestamp.
pub fn change_point(ts: &[i64], xs: &[f64], cfg: &RcaConfig, s: &mut Scratch) -> Option<i64> {
    let n = xs.len();
    let min_seg = cfg.cp_min_segment.max(2);
    if n < 2 * min_seg {
        return None;
    }
    let mut sigma = diff_sigma(xs, &mut s.k);
    // A perfectly flat series has no noise; judge its steps against a 1% floor of its
    // level so that a step on it is a change and a constant is not. |median| is at most
    // max |x|: when the noise already clears the floor at that bound, the median (one
    // more selection) cannot change sigma and is not computed.
    let max_abs = xs.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    if !(cfg.rel_eps >= 0.0 && sigma >= cfg.rel_eps * max_abs) {
        let mut level = median(xs, &mut s.k).abs();
        if level == 0.0 {
            level = max_abs;
        }
        sigma = sigma.max(cfg.rel_eps * level);
    }
    if sigma.is_nan() || sigma <= 0.0 || !sigma.is_finite() {
        return None;
    }
    median5(xs, &mut s.c);
    let ys = &s.c;
    s.d.clear();
    s.d.push(0.0);
    let mut acc = 0.0;
    for y in ys {
        acc += y;
        s.d.push(acc);
    }
    let prefix = &s.d;
    let significant =
        |(_, stat, shift): (usize, f64, f64)| stat >= cfg.cp_threshold && shift >= cfg.cp_min_shift;
    let mut found =
        best_split(prefix, 0, n, min_seg, sigma, &mut s.b).filter(|&b| significant(b))?;
    // Look left for an earlier change: a pulse's end edge or the middle of a ramp can
    // win the first split, and the onset is the earliest edge. Three rounds at most.
    for _ in 0..3 {
        match best_split(prefix, 0, found.0, min_seg, sigma, &mut s.b).filter(|&b| significant(b)) {
            Some(b) => found = b,
            None => break,
        }
    }
    ts.get(found.0).copied()
}

/// The onset from `(timestamp, component)` change points: the earliest start of a
/// `cluster_ms` span holding at least 80% of the most distinct components any such
/// span holds. `n_components` bounds the component indices.
pub fn cluster_onset(
    cps: &mut [(i64, usize)],
    n_components: usize,
    cluster_ms: i64,
) -> Option<i64> {
    if cps.is_empty() {
        return None;
    }
    cps.sort_unstable();
    let span = cluster_ms.max(0);
    let counts_at = |counts: &mut Vec<u32>| -> Vec<usize> {
        counts.iter_mut().for_each(|c| *c = 0);
        let mut distinct = 0usize;
        let mut out = Vec::with_capacity(cps.len());
        let mut j = 0;
        for i in 0..cps.len() {
            if i > 0 {
                let c = &mut counts[cps[i - 1].1];
                *c -= 1;
                if *c == 0 {
                    distinct -= 1;
                }
            }
            while j < cps.len() && cps[j].0 <= cps[i].0.saturating_add(span) {
                let c = &mut counts[cps[j].1];
                if *c == 0 {
                    distinct += 1;
                }
                *c += 1;
                j += 1;
            }
            out.push(distinct);
        }
        out
    };
    let mut counts = vec![0u32; n_components];
    if cps.iter().any(|&(_, c)| c >= n_components) {
        return None;
    }
    let per_start = counts_at(&mut counts);
    let best = per_start.iter().copied().max().unwrap_or(0);
    let need = (best * 4).div_ceil(5).max(1);
    per_start.iter().position(|&c| c >= need).map(|i| cps[i].0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ignores_stray_early_change() {
        let mut cps = vec![
            (0, 9),
            (1_000_000, 0),
            (1_001_000, 1),
            (1_002_000, 2),
            (1_003_000, 3),
        ];
        assert_eq!(cluster_onset(&mut cps, 10, 120_000), Some(1_000_000));
    }

    #[test]
    fn change_point_of_pulse_is_its_start() {
        let xs: Vec<f64> = (0..300)
            .map(|i| {
                if (100..200).contains(&i) {
                    50.0
                } else {
                    10.0 + (i % 3) as f64
                }
            })
            .collect();
        let ts: Vec<i64> = (0..300).map(|i| i * 1000).collect();
        let cfg = RcaConfig::default();
        let mut s = Scratch::default();
        assert_eq!(change_point(&ts, &xs, &cfg, &mut s), Some(100_000));
    }
}
