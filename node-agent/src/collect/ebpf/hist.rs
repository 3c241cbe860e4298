//! Log2 histograms read from kernel maps → per-interval percentiles (sans-IO).
//!
//! The kernel only adds to its histograms; each tick the collector takes the difference to
//! the previous read ([`delta`]) and summarises the interval as p50, p99, mean and a rate.
//! Percentiles interpolate linearly inside the log2 bucket that holds the rank, so they are
//! exact to within that bucket (a factor of two) and never outside the observed range of
//! buckets.

use ebpf_common::{LOG2_SLOTS, Log2Hist};

/// `cur - prev`, slot by slot (saturating: a map entry recreated in between counts from
/// zero).
pub fn delta(cur: &Log2Hist, prev: Option<&Log2Hist>) -> Log2Hist {
    let Some(prev) = prev else {
        return *cur;
    };
    let mut res = Log2Hist::ZERO;
    let recreated = cur.slots.iter().zip(&prev.slots).any(|(c, p)| c < p);
    if recreated {
        return *cur;
    }
    for idx in 0..LOG2_SLOTS {
        res.slots[idx] = cur.slots[idx] - prev.slots[idx];
    }
    res.sum_us = cur.sum_us.saturating_sub(prev.sum_us);
    res
}

/// Number of values in the histogram.
pub fn count(h: &Log2Hist) -> u64 {
    h.slots.iter().sum()
}

/// Bounds `[lo, hi)` of slot `idx`, µs.
fn bounds(idx: usize) -> (f64, f64) {
    if idx == 0 {
        (0.0, 2.0)
    } else {
        let lo = (1u64 << idx) as f64;
        (lo, lo * 2.0)
    }
}

/// The `q` quantile (0..=1), µs, or `None` for an empty histogram.
pub fn quantile(h: &Log2Hist, q: f64) -> Option<f64> {
    let total = count(h);
    if total == 0 {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
    let mut before = 0u64;
    for (idx, &n) in h.slots.iter().enumerate() {
        if n == 0 {
            continue;
        }
        if (before + n) as f64 >= rank {
            let (lo, hi) = bounds(idx);
            let frac = (rank - before as f64) / n as f64;
            return Some(lo + frac * (hi - lo));
        }
        before += n;
    }
    // Rounding: the rank is the last value.
    let last = h.slots.iter().rposition(|&n| n > 0)?;
    Some(bounds(last).1)
}

/// One interval's summary.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    /// Values in the interval.
    pub count: u64,
    /// Median, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// Mean, µs (exact: the kernel keeps the sum).
    pub mean_us: f64,
}

/// Summarises an interval's histogram; `None` when it is empty.
pub fn summarize(h: &Log2Hist) -> Option<Summary> {
    let n = count(h);
    if n == 0 {
        return None;
    }
    Some(Summary {
        count: n,
        p50_us: quantile(h, 0.5)?.round(),
        p99_us: quantile(h, 0.99)?.round(),
        mean_us: (h.sum_us as f64 / n as f64).round(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values: &[u64]) -> Log2Hist {
        let mut h = Log2Hist::ZERO;
        for &v in values {
            h.slots[ebpf_common::log2_slot(v)] += 1;
            h.sum_us += v;
        }
        h
    }

    #[test]
    fn quantiles_stay_within_the_right_bucket() {
        // 98 values of ~10 µs (slot 3: 8..16) and 2 of ~5000 µs (slot 12: 4096..8192).
        let mut values = vec![10; 98];
        values.extend([5000, 5000]);
        let h = hist(&values);
        let p50 = quantile(&h, 0.5).unwrap();
        assert!((8.0..16.0).contains(&p50), "p50 {p50}");
        let p99 = quantile(&h, 0.99).unwrap();
        assert!((4096.0..8192.0).contains(&p99), "p99 {p99}");
        let s = summarize(&h).unwrap();
        assert_eq!(s.count, 100);
        assert_eq!(s.mean_us, ((98 * 10 + 10000) as f64 / 100.0).round());
    }

    #[test]
    fn empty_and_single_values() {
        assert_eq!(quantile(&Log2Hist::ZERO, 0.5), None);
        assert_eq!(summarize(&Log2Hist::ZERO), None);
        let h = hist(&[0]);
        let q = quantile(&h, 0.99).unwrap();
        assert!((0.0..=2.0).contains(&q));
        let h = hist(&[u64::MAX / 4]);
        assert!(quantile(&h, 0.5).unwrap() >= (1u64 << 31) as f64);
    }

    #[test]
    fn delta_subtracts_and_survives_recreation() {
        let a = hist(&[1, 10, 100]);
        let b = hist(&[1, 10, 100, 100, 1000]);
        let d = delta(&b, Some(&a));
        assert_eq!(count(&d), 2);
        assert_eq!(d.sum_us, 1100);
        assert_eq!(delta(&b, None), b);
        // The entry was removed and recreated: the new counts are the interval.
        let fresh = hist(&[5]);
        assert_eq!(delta(&fresh, Some(&b)), fresh);
    }
}
