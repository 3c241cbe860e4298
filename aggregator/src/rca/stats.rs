//! Robust statistics for the RCA engine: quantiles by selection (O(n)), a short median
//! filter, single change points by standardized mean shift, sliding minima. All of it
//! works on finite `f64` slices (the scorer drops non-finite values first).
//!
//! Selection runs on integer keys ([`key`]): the bit pattern of an `f64` mapped so that
//! integer order is `f64::total_cmp` order. Comparing two `i64`s is a single instruction
//! where `total_cmp` needs bit twiddling on both sides first, and the key maps back to
//! the exact value, so the quantiles are the same numbers either way.

use std::collections::VecDeque;

/// The `f64::total_cmp` order as an `i64`: flips the magnitude bits of negative values.
/// Its own inverse ([`unkey`]).
#[inline]
pub fn key(x: f64) -> i64 {
    let b = x.to_bits() as i64;
    b ^ ((((b >> 63) as u64) >> 1) as i64)
}

/// The value of a [`key`].
#[inline]
pub fn unkey(k: i64) -> f64 {
    f64::from_bits((k ^ ((((k >> 63) as u64) >> 1) as i64)) as u64)
}

/// Quantiles `qs` (each in `[0, 1]`, ascending) of `xs`, using `scratch` as the work
/// buffer. Linear interpolation between order statistics. `xs` must be non-empty.
pub fn quantiles<const N: usize>(xs: &[f64], qs: [f64; N], scratch: &mut Vec<i64>) -> [f64; N] {
    scratch.clear();
    scratch.extend(xs.iter().map(|&x| key(x)));
    quantiles_of_keys(scratch, qs)
}

/// Quantiles of the values whose [`key`]s are `keys`, reordering `keys` in place.
pub fn quantiles_of_keys<const N: usize>(keys: &mut [i64], qs: [f64; N]) -> [f64; N] {
    let mut out = [0.0; N];
    if keys.is_empty() {
        return out;
    }
    let n = keys.len();
    // Select from the highest quantile down: each selection leaves everything below
    // its pivot in the prefix, so later (lower) selections work on a shrinking slice.
    let mut hi = n;
    for (i, q) in qs.iter().enumerate().rev() {
        let pos = q.clamp(0.0, 1.0) * (n - 1) as f64;
        let lo_idx = pos.floor() as usize;
        let frac = pos - lo_idx as f64;
        let lo_idx = lo_idx.min(n - 1);
        let end = hi.max(lo_idx + 1).min(n);
        let lo_val = unkey(*keys[..end].select_nth_unstable(lo_idx).1);
        let v = if frac > 0.0 && lo_idx + 1 < n {
            // The next order statistic is the minimum of everything above the pivot
            // (what lies past `end` is above an earlier, higher pivot).
            let next = unkey(keys[lo_idx + 1..].iter().copied().min().unwrap_or(i64::MAX));
            lo_val + frac * (next - lo_val)
        } else {
            lo_val
        };
        out[i] = v;
        hi = lo_idx + 1;
    }
    out
}

/// Median of `xs` (0 for an empty slice).
pub fn median(xs: &[f64], scratch: &mut Vec<i64>) -> f64 {
    quantiles(xs, [0.5], scratch)[0]
}

/// Running median over a centred window of 5 (3 next to the ends): removes spikes of
/// one or two points before change-point detection while keeping steps sharp.
pub fn median5(xs: &[f64], out: &mut Vec<f64>) {
    out.clear();
    let n = xs.len();
    if n < 5 {
        out.extend_from_slice(xs);
        return;
    }
    // Edges: median of 3 (the first and last points stay as they are).
    out.push(xs[0]);
    out.push(med3(xs[0], xs[1], xs[2]));
    // Branch-free min/max network (the values are finite): about 10x a 5-element sort.
    out.extend(xs.windows(5).map(|w| {
        let (a, b, c, d, e) = (w[0], w[1], w[2], w[3], w[4]);
        med3(e, a.min(b).max(c.min(d)), a.max(b).min(c.max(d)))
    }));
    out.push(med3(xs[n - 3], xs[n - 2], xs[n - 1]));
    out.push(xs[n - 1]);
}

fn med3(a: f64, b: f64, c: f64) -> f64 {
    a.min(b).max(a.max(b).min(c))
}

/// Noise sigma from first differences: MAD(diff) * 1.4826 / sqrt(2). Differences
/// cancel level shifts, so a step does not inflate the estimate the way a plain
/// standard deviation would. Two selections in one key buffer: the absolute deviations
/// are taken from the (reordered) differences, the same multiset.
pub fn diff_sigma(xs: &[f64], keys: &mut Vec<i64>) -> f64 {
    if xs.len() < 3 {
        return 0.0;
    }
    keys.clear();
    keys.extend(xs.windows(2).map(|w| key(w[1] - w[0])));
    let [med] = quantiles_of_keys(keys, [0.5]);
    for k in keys.iter_mut() {
        *k = key((unkey(*k) - med).abs());
    }
    let [mad] = quantiles_of_keys(keys, [0.5]);
    mad * 1.4826 / std::f64::consts::SQRT_2
}

/// The best single mean-shift change point in `ys[lo..hi]`: returns
/// `(index, statistic, shift)` where the statistic is
/// `|mean(left) - mean(right)| * sqrt(k (n - k) / n) / sigma` and `shift` is the mean
/// difference in sigmas. `prefix[i]` is the sum of `ys[..i]`. `buf` is a work buffer.
///
/// Two loops: the squared statistic of every split into `buf` (no branch, so the
/// compiler runs the divisions two or four at a time), then the first maximum. The
/// arithmetic per split is the same as one fused loop's, so is the answer.
pub fn best_split(
    prefix: &[f64],
    lo: usize,
    hi: usize,
    min_seg: usize,
    sigma: f64,
    buf: &mut Vec<f64>,
) -> Option<(usize, f64, f64)> {
    let n = hi.checked_sub(lo)?;
    if n < 2 * min_seg || sigma <= 0.0 {
        return None;
    }
    let base = prefix[lo];
    let total = prefix[hi] - base;
    let nf = n as f64;
    let diff_at = |k: usize, p: f64| {
        let left = p - base;
        let kf = k as f64;
        left / kf - (total - left) / (nf - kf)
    };
    // Maximize the squared statistic (no square root in the loop); one at the end.
    let ks = min_seg..=(n - min_seg);
    let window = &prefix[lo + min_seg..=lo + n - min_seg];
    buf.clear();
    buf.extend(ks.clone().zip(window).map(|(k, &p)| {
        let kf = k as f64;
        let diff = diff_at(k, p);
        diff * diff * (kf * (nf - kf) / nf)
    }));
    let mut best: Option<(usize, f64)> = None;
    for (i, &stat2) in buf.iter().enumerate() {
        if best.is_none_or(|(_, s)| stat2 > s) {
            best = Some((i, stat2));
        }
    }
    best.map(|(i, stat2)| {
        let k = min_seg + i;
        let diff = diff_at(k, window[i]).abs();
        (lo + k, stat2.sqrt() / sigma, diff / sigma)
    })
}

/// Sliding minimum and maximum over windows of `w` consecutive values: element `i`
/// describes `xs[i..i + w]`. Short windows (the scorer's 3 points) directly, longer ones
/// in O(n) with monotonic queues.
pub fn sliding_min_max(xs: &[f64], w: usize, mins: &mut Vec<f64>, maxs: &mut Vec<f64>) {
    mins.clear();
    maxs.clear();
    let w = w.max(1);
    if xs.len() < w {
        return;
    }
    if w <= 8 {
        for win in xs.windows(w) {
            let (mut lo, mut hi) = (win[0], win[0]);
            for &x in &win[1..] {
                lo = lo.min(x);
                hi = hi.max(x);
            }
            mins.push(lo);
            maxs.push(hi);
        }
        return;
    }
    let mut qmin: VecDeque<usize> = VecDeque::with_capacity(w + 1);
    let mut qmax: VecDeque<usize> = VecDeque::with_capacity(w + 1);
    for (i, &x) in xs.iter().enumerate() {
        while qmin.back().is_some_and(|&j| xs[j] >= x) {
            qmin.pop_back();
        }
        qmin.push_back(i);
        while qmax.back().is_some_and(|&j| xs[j] <= x) {
            qmax.pop_back();
        }
        qmax.push_back(i);
        if i + 1 >= w {
            let start = i + 1 - w;
            while qmin.front().is_some_and(|&j| j < start) {
                qmin.pop_front();
            }
            while qmax.front().is_some_and(|&j| j < start) {
                qmax.pop_front();
            }
            if let (Some(&a), Some(&b)) = (qmin.front(), qmax.front()) {
                mins.push(xs[a]);
                maxs.push(xs[b]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_match_sorting() {
        let xs: Vec<f64> = (0..101).rev().map(f64::from).collect();
        let mut s = Vec::new();
        assert_eq!(
            quantiles(&xs, [0.25, 0.5, 0.75], &mut s),
            [25.0, 50.0, 75.0]
        );
        let ys = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantiles(&ys, [0.25, 0.5, 0.75], &mut s), [1.75, 2.5, 3.25]);
        assert_eq!(median(&[7.0], &mut s), 7.0);
    }

    #[test]
    fn sliding_windows() {
        let xs = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0];
        let (mut mn, mut mx) = (Vec::new(), Vec::new());
        sliding_min_max(&xs, 3, &mut mn, &mut mx);
        assert_eq!(mn, [1.0, 1.0, 1.0, 1.0]);
        assert_eq!(mx, [4.0, 4.0, 5.0, 9.0]);
    }

    #[test]
    fn median5_removes_spike() {
        let xs = [1.0, 1.0, 1.0, 100.0, 1.0, 1.0, 1.0];
        let mut out = Vec::new();
        median5(&xs, &mut out);
        assert!(out.iter().all(|&v| v == 1.0));
        // Against sorting, every window of a scrambled sequence.
        let ys: Vec<f64> = (0..50).map(|i| f64::from((i * 37) % 11)).collect();
        median5(&ys, &mut out);
        assert_eq!(out.len(), ys.len());
        for i in 2..ys.len() - 2 {
            let mut w = ys[i - 2..i + 3].to_vec();
            w.sort_by(f64::total_cmp);
            assert_eq!(out[i], w[2], "at {i}");
        }
    }

    #[test]
    fn split_finds_step() {
        let ys: Vec<f64> = (0..100).map(|i| if i < 60 { 0.0 } else { 10.0 }).collect();
        let mut prefix = vec![0.0];
        for y in &ys {
            prefix.push(prefix.last().copied().unwrap_or(0.0) + y);
        }
        let (k, stat, shift) = best_split(&prefix, 0, 100, 5, 1.0, &mut Vec::new()).expect("split");
        assert_eq!(k, 60);
        assert!(stat > 40.0 && (shift - 10.0).abs() < 1e-9);
    }
}
