//! Small numeric pieces of the detectors: normal tail surprise and the streaming
//! peaks-over-threshold tail that calibrates every raw detector.
//!
//! All functions are total: any `f64` in, a finite or ±∞ (never NaN) number out, no panics.

/// Surprises at or below this are "body", above it "tail" (Exp(1) null: 5% of samples).
pub(crate) const TAIL_U: f64 = 3.0;
/// The tail is measured at three levels of the surprise, `TAIL_U + k·KNOT_STEP`.
const KNOT_STEP: f64 = 3.0;
/// Memory of the counts at the two lower knots and at the top knot (rarer, so longer).
const DECAY_LOW: f32 = 1.0 - 1.0 / 4096.0;
const DECAY_TOP: f32 = 1.0 - 1.0 / 16384.0;
/// Prior weight at each knot, in pseudo-events at the null rate ([`Shape::Null`]).
const PRIOR_EVENTS: f64 = 1.0;
/// [`Shape::Learned`]: prior weight of the rate at the first knot, in pseudo-samples at
/// the null rate, and of each step up the tail (the chance that an event past one knot
/// also passes the next), in pseudo-events at the null's `e^-KNOT_STEP`.
const PRIOR_SAMPLES: f64 = 100.0;
const PRIOR_STEP_EVENTS: f64 = 4.0;

/// How the tail's shape is shrunk towards the null.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    /// One pseudo-event at the null rate at every knot: the higher knots stay at the null
    /// until about `1 / p_null` samples have been seen. For statistics with few
    /// independent events (a CUSUM's excursion peaks), where a handful must not reshape
    /// the tail.
    Null,
    /// The rate at the first knot, then the conditional chance of each step up, each
    /// shrunk with a few pseudo-events: the shape is learned from the events past the
    /// knot below, so a heavy-tailed statistic with an event every sample (the one-step
    /// residual of Laplace or spiky-but-normal noise) is recognised after a few dozen tail
    /// events instead of tens of thousands of samples.
    Learned,
}
/// Bounds on the log-slope of the extrapolated tail: never lighter than 1.5× the null
/// (so a calm series does not become hair-trigger), never flatter than 0.15 (so a huge
/// surprise still alerts however spiky the series).
const SLOPE_MIN: f64 = -1.5;
const SLOPE_MAX: f64 = -0.15;

/// `ln(erfc(x))` for any `x`, without underflow for large `x` (Chebyshev fit from
/// Numerical Recipes, fractional error of `erfc` below 1.2e-7).
pub(crate) fn ln_erfc(x: f64) -> f64 {
    if x.is_nan() {
        return 0.0;
    }
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    if x >= 0.0 {
        if t == 0.0 {
            f64::NEG_INFINITY
        } else {
            t.ln() + poly
        }
    } else {
        (2.0 - t * poly.exp()).ln()
    }
}

/// `-ln P(|Z| >= |z|)` for a standard normal `Z`: 0 at z = 0, about z²/2 for large z.
pub(crate) fn normal_surprise(z: f64) -> f64 {
    let s = -ln_erfc(z.abs() / std::f64::consts::SQRT_2);
    if s.is_nan() { 0.0 } else { s.max(0.0) }
}

/// Inverse of [`normal_surprise`] for `s >= 0`: fixed-point steps on the asymptotic form
/// `s = z²/2 + ln z + ln √(π/2)`, then Newton steps on the exact function.
pub(crate) fn normal_z_for_surprise(s: f64) -> f64 {
    // Also catches NaN.
    if s.is_nan() || s <= 0.0 {
        return 0.0;
    }
    let s = s.min(1e6);
    let mut z = (2.0 * s).sqrt().max(1.0);
    for _ in 0..3 {
        let inner = 2.0 * (s - z.ln() - 0.225_791_352_644_727_4);
        z = if inner > 1.0 { inner.sqrt() } else { 1.0 };
    }
    // Two Newton steps on the exact function: d/dz -ln erfc(z/√2) = √(2/π) e^(s(z) - z²/2).
    for _ in 0..2 {
        let sz = normal_surprise(z);
        let slope = (2.0 / std::f64::consts::PI).sqrt() * (sz - 0.5 * z * z).exp();
        if slope.is_finite() && slope > 0.0 {
            z = (z - (sz - s) / slope).max(0.0);
        }
    }
    z
}

/// Streaming, count-based peaks-over-threshold tail of a surprise statistic.
///
/// Decayed counts of events above three levels (3, 6, 9) give the tail's log-rate at each,
/// shrunk towards the detector's null with one pseudo-event per level (a Gamma prior); the
/// log survival function is interpolated linearly between them and extrapolated beyond the
/// top one with the top segment's slope: an exponential-tail (Gumbel-domain) POT model whose
/// decay rate is learned. Counts, unlike moments, give every event a bounded influence, so a
/// handful of outliers cannot flip the fit, while a series that is spiky all the time moves
/// the counts and learns that its spikes are normal.
///
/// The rate is per sample: [`Tail::count`] is called once per sample, [`Tail::event`] with
/// each independent event (every sample for the residual detector, the peak of each finished
/// excursion for the CUSUMs, whose consecutive values are not independent and would otherwise
/// teach the fit an ongoing drift before it could alert).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Tail {
    n_low: f32,
    n_top: f32,
    above: [f32; 3],
}

impl Tail {
    /// One more sample (weight `w`), decaying the memory.
    pub(crate) fn count(&mut self, w: f32) {
        self.n_low = self.n_low * DECAY_LOW + w;
        self.n_top = self.n_top * DECAY_TOP + w;
        self.above[0] *= DECAY_LOW;
        self.above[1] *= DECAY_LOW;
        self.above[2] *= DECAY_TOP;
    }

    /// One event of height `s` (weight `w`: 1 for normal events, less for events already
    /// judged anomalous, so that rare events stay rare).
    pub(crate) fn event(&mut self, s: f64, w: f32) {
        for (k, above) in self.above.iter_mut().enumerate() {
            if s > TAIL_U + k as f64 * KNOT_STEP {
                *above += w;
            }
        }
    }

    /// Log-rates at the three knots and the slope past the top one; `prior_pu` is the null
    /// rate at the first knot (the null tail is `prior_pu · e^-(s-3)`).
    fn knots(&self, prior_pu: f64, shape: Shape) -> ([f64; 3], f64) {
        if shape == Shape::Learned {
            return self.learned_knots(prior_pu);
        }
        let mut ln_rate = [0.0; 3];
        for (k, slot) in ln_rate.iter_mut().enumerate() {
            let p_null = prior_pu * (-(k as f64) * KNOT_STEP).exp();
            let n = f64::from(if k == 2 { self.n_top } else { self.n_low });
            *slot = ((f64::from(self.above[k]) + PRIOR_EVENTS) / (n + PRIOR_EVENTS / p_null)).ln();
        }
        // Survival is non-increasing: enforce it on the estimates too.
        ln_rate[1] = ln_rate[1].min(ln_rate[0]);
        ln_rate[2] = ln_rate[2].min(ln_rate[1]);
        let slope = ((ln_rate[2] - ln_rate[1]) / KNOT_STEP).clamp(SLOPE_MIN, SLOPE_MAX);
        (ln_rate, slope)
    }

    /// [`Shape::Learned`] knots.
    fn learned_knots(&self, prior_pu: f64) -> ([f64; 3], f64) {
        let step_null = (-KNOT_STEP).exp();
        let n_low = f64::from(self.n_low);
        let a = self.above.map(f64::from);
        let p0 = (a[0] + PRIOR_SAMPLES * prior_pu) / (n_low + PRIOR_SAMPLES);
        let c1 = (a[1] + PRIOR_STEP_EVENTS * step_null) / (a[0] + PRIOR_STEP_EVENTS);
        // The top knot remembers longer: compare it with the knot below over its window.
        let window = if n_low > 0.0 {
            f64::from(self.n_top) / n_low
        } else {
            1.0
        };
        let c2 = (a[2] + PRIOR_STEP_EVENTS * step_null) / (a[1] * window + PRIOR_STEP_EVENTS);
        // Each step up the tail is at least the null's: the statistics are standardised by
        // a scale estimated from a few dozen recent samples, whose error only ever makes
        // the tail heavier than the null's, so a lighter one is a handful of tail events
        // that happened to stop short, and trusting it turns the next 3.5σ residual into
        // a 4σ alarm.
        let c1 = c1.clamp(step_null, 1.0);
        let c2 = c2.clamp(step_null, 1.0);
        let ln0 = p0.min(1.0).ln();
        let ln1 = ln0 + c1.ln();
        let ln2 = ln1 + c2.ln();
        let slope = (c2.ln() / KNOT_STEP).clamp(SLOPE_MIN, SLOPE_MAX);
        ([ln0, ln1, ln2], slope)
    }

    /// `P(S > s)` per sample; meaningful for `s >= TAIL_U`.
    pub(crate) fn tail_prob(&self, s: f64, prior_pu: f64, shape: Shape) -> f64 {
        let (ln_rate, slope) = self.knots(prior_pu, shape);
        let ln_p = if s >= TAIL_U + 2.0 * KNOT_STEP {
            ln_rate[2] + slope * (s - TAIL_U - 2.0 * KNOT_STEP)
        } else {
            let pos = ((s - TAIL_U) / KNOT_STEP).max(0.0);
            let k = (pos.floor() as usize).min(1);
            let frac = pos - k as f64;
            ln_rate[k] + frac * (ln_rate[k + 1] - ln_rate[k])
        };
        let p = ln_p.exp();
        if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) }
    }

    /// The surprise whose tail probability is `p` (the inverse of [`Tail::tail_prob`]).
    pub(crate) fn quantile(&self, p: f64, prior_pu: f64, shape: Shape) -> f64 {
        let (ln_rate, slope) = self.knots(prior_pu, shape);
        let ln_p = p.max(1e-300).ln();
        if ln_p >= ln_rate[0] {
            return TAIL_U;
        }
        for k in 0..2 {
            if ln_p >= ln_rate[k + 1] {
                let span = ln_rate[k + 1] - ln_rate[k];
                let frac = if span < 0.0 {
                    (ln_p - ln_rate[k]) / span
                } else {
                    0.0
                };
                return TAIL_U + (k as f64 + frac) * KNOT_STEP;
            }
        }
        (TAIL_U + 2.0 * KNOT_STEP + (ln_p - ln_rate[2]) / slope).min(1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erfc_surprise_matches_known_values() {
        // P(|Z| > 1.96) = 0.05, P(|Z| > 3) = 0.0027, P(|Z| > 5) = 5.733e-7.
        assert!((normal_surprise(1.96) - (1.0f64 / 0.05).ln()).abs() < 1e-3);
        assert!((normal_surprise(3.0) - (1.0f64 / 0.002_699_8).ln()).abs() < 1e-3);
        assert!((normal_surprise(-5.0) - (1.0f64 / 5.733e-7).ln()).abs() < 1e-3);
        assert_eq!(normal_surprise(0.0), 0.0);
        assert!(normal_surprise(1e300).is_infinite());
        assert_eq!(normal_surprise(f64::NAN), 0.0);
    }

    #[test]
    fn z_for_surprise_inverts() {
        for z in [2.0, 3.0, 4.0, 6.0, 10.0, 30.0] {
            let back = normal_z_for_surprise(normal_surprise(z));
            assert!((back - z).abs() / z < 0.02, "{z} -> {back}");
        }
    }

    #[test]
    fn tail_starts_at_the_null_and_learns_a_heavier_tail() {
        let mut t = Tail::default();
        let prior = t.tail_prob(10.0, 0.05, Shape::Null);
        assert!(
            (prior - 0.05 * (-7.0f64).exp()).abs() / prior < 1e-6,
            "{prior}"
        );
        // One sample in ten is a surprise of 3 + Exp(mean 3): three times the null's.
        let mut x = 1u64;
        let mut uniform = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        for _ in 0..40_000 {
            let u = uniform();
            let s = if u < 0.1 {
                TAIL_U - 3.0 * (u / 0.1).ln()
            } else {
                u
            };
            t.count(1.0);
            t.event(s, 1.0);
        }
        let learned = t.tail_prob(10.0, 0.05, Shape::Null);
        let truth = 0.1 * (-7.0f64 / 3.0).exp();
        assert!(
            learned / truth > 0.5 && learned / truth < 2.0,
            "{learned} vs {truth}"
        );
        let q = t.quantile(learned, 0.05, Shape::Null);
        assert!((q - 10.0).abs() < 1e-6, "{q}");
        for s in [3.5, 5.0, 7.0, 9.5, 14.0] {
            let back = t.quantile(t.tail_prob(s, 0.05, Shape::Null), 0.05, Shape::Null);
            assert!((back - s).abs() < 1e-6, "{s} -> {back}");
        }
    }

    #[test]
    fn an_outlier_does_not_flip_the_tail() {
        // The null exactly (surprise ~ Exp(1)), with and without one big outlier.
        let mut x = 7u64;
        let mut uniform = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        let (mut clean, mut dirty) = (Tail::default(), Tail::default());
        for i in 0..4000 {
            let s = -uniform().ln();
            for t in [&mut clean, &mut dirty] {
                t.count(1.0);
                t.event(s, 1.0);
            }
            if i == 1000 {
                dirty.event(14.0, 1.0);
            }
        }
        let (a, b) = (
            clean.quantile(1e-5, 0.05, Shape::Null),
            dirty.quantile(1e-5, 0.05, Shape::Null),
        );
        assert!((a - 11.5).abs() < 1.5, "clean threshold {a}");
        assert!(
            (b - a).abs() < 1.5,
            "one outlier moved the threshold from {a} to {b}"
        );
    }

    #[test]
    fn learned_shape_recognises_a_heavy_tail_within_a_thousand_samples() {
        // One sample in ten is a surprise of 3 + Exp(mean 3), as above: after 1000
        // samples the learned shape is within a factor 3 of the truth at s = 10, the null
        // shape still orders of magnitude below it; on the null both agree.
        let mut x = 3u64;
        let mut uniform = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        let (mut heavy, mut calm) = (Tail::default(), Tail::default());
        for _ in 0..1000 {
            let u = uniform();
            let s = if u < 0.1 {
                TAIL_U - 3.0 * (u / 0.1).ln()
            } else {
                u
            };
            heavy.count(1.0);
            heavy.event(s, 1.0);
            calm.count(1.0);
            calm.event(-uniform().ln(), 1.0);
        }
        let truth = 0.1 * (-7.0f64 / 3.0).exp();
        let learned = heavy.tail_prob(10.0, 0.05, Shape::Learned);
        assert!(
            learned / truth > 1.0 / 3.0 && learned / truth < 3.0,
            "{learned} vs {truth}"
        );
        assert!(heavy.tail_prob(10.0, 0.05, Shape::Null) < truth / 10.0);
        let null = 0.05 * (-7.0f64).exp();
        let calm_p = calm.tail_prob(10.0, 0.05, Shape::Learned);
        assert!(
            calm_p / null > 0.2 && calm_p / null < 5.0,
            "{calm_p} vs {null}"
        );
    }
}
