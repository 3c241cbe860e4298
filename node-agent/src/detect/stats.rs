//! Small numeric pieces of the detectors: normal tail surprise and the streaming
//! peaks-over-threshold tail that calibrates every raw detector.
//!
//! All functions are total: any `f64` in, a finite or ±∞ (never NaN) number out, no panics.

/// Surprises at or below this are "body", above it "tail" (Exp(1) null: 5% of samples).
pub(crate) const TAIL_U: f64 = 3.0;
/// Memory of the tail estimate: counts decay by `1 - 1/TAIL_MEMORY` per sample.
const TAIL_DECAY: f32 = 1.0 - 1.0 / 4096.0;
/// Prior weight (pseudo-samples) for the exceedance rate, never decayed.
const PRIOR_SAMPLES: f64 = 200.0;
/// Prior weight (pseudo-excesses) for the shape of the tail: Exp(1), i.e. GPD(ξ=0, β=1).
const PRIOR_EXCESSES: f64 = 30.0;
/// Largest excess that enters the moments, so one extreme value cannot own the fit (the
/// second moment is otherwise at its mercy).
const MAX_EXCESS: f64 = 15.0;

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
                            + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    if x >= 0.0 {
        if t == 0.0 { f64::NEG_INFINITY } else { t.ln() + poly }
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
    if !(s > 0.0) {
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

/// Streaming generalised-Pareto fit of the upper tail of a surprise statistic, by the
/// method of moments on exponentially decayed sums of the excesses over [`TAIL_U`], with a
/// fixed prior so that it starts out as the analytic null and learns the real tail.
///
/// The rate is per sample: [`Tail::count`] is called once per sample, [`Tail::excess`] with
/// each independent event (every sample for the residual detector, the peak of each finished
/// excursion for the CUSUMs, whose consecutive values are not independent and would otherwise
/// teach the fit an ongoing drift before it could alert).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Tail {
    n: f32,
    n_exc: f32,
    sum: f32,
    sum2: f32,
}

/// Fitted tail: `P(S > s) = p_u · (1 + ξ (s - u) / β)^(-1/ξ)` for `s > u`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TailFit {
    pub p_u: f64,
    pub xi: f64,
    pub beta: f64,
}

impl Tail {
    /// One more sample (weight `w`), decaying the memory.
    pub(crate) fn count(&mut self, w: f32) {
        self.n = self.n * TAIL_DECAY + w;
        self.n_exc *= TAIL_DECAY;
        self.sum *= TAIL_DECAY;
        self.sum2 *= TAIL_DECAY;
    }

    /// One event of height `s` (weight `w`: 1 for normal events, less for events already
    /// judged anomalous, so that rare events stay rare).
    pub(crate) fn excess(&mut self, s: f64, w: f32) {
        if s > TAIL_U {
            let y = (s - TAIL_U).min(MAX_EXCESS) as f32;
            self.n_exc += w;
            self.sum += w * y;
            self.sum2 += w * y * y;
        }
    }

    /// Current fit, blended with the prior (exceedance rate `prior_pu`, Exp(1) excesses).
    pub(crate) fn fit(&self, prior_pu: f64) -> TailFit {
        let p_u = (self.n_exc as f64 + PRIOR_SAMPLES * prior_pu) / (self.n as f64 + PRIOR_SAMPLES);
        let k = self.n_exc as f64 + PRIOR_EXCESSES;
        let m = (self.sum as f64 + PRIOR_EXCESSES) / k;
        let v = ((self.sum2 as f64 + 2.0 * PRIOR_EXCESSES) / k - m * m).max(1e-9);
        // Exponential-or-heavier tails only: a light fitted tail would make the far tail
        // overconfident, and the far tail is exactly where alerts are decided.
        let xi = (0.5 * (1.0 - m * m / v)).clamp(0.0, 0.5);
        let beta = (m * (1.0 - xi)).max(1e-3);
        TailFit { p_u: p_u.clamp(1e-9, 1.0), xi, beta }
    }

    /// `P(S > s)`; only meaningful for `s > TAIL_U` (below it, returns at least `p_u`).
    pub(crate) fn tail_prob(&self, s: f64, prior_pu: f64) -> f64 {
        let f = self.fit(prior_pu);
        let y = (s - TAIL_U).max(0.0);
        let p = if f.xi < 1e-4 {
            f.p_u * (-y / f.beta).exp()
        } else {
            f.p_u * (1.0 + f.xi * y / f.beta).powf(-1.0 / f.xi)
        };
        if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) }
    }

    /// The surprise whose tail probability is `p` (the inverse of [`Tail::tail_prob`]).
    pub(crate) fn quantile(&self, p: f64, prior_pu: f64) -> f64 {
        let f = self.fit(prior_pu);
        if !(p > 0.0) || p >= f.p_u {
            return TAIL_U;
        }
        let r = f.p_u / p;
        let y = if f.xi < 1e-4 { f.beta * r.ln() } else { f.beta / f.xi * (r.powf(f.xi) - 1.0) };
        TAIL_U + y.min(1e6)
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
    fn tail_learns_heavier_tail() {
        let mut t = Tail::default();
        let prior = t.tail_prob(10.0, 0.05);
        assert!((prior - 0.05 * (-7.0f64).exp()).abs() < 1e-6);
        // Excesses with mean 3 (three times the prior's): the tail must get fatter.
        let mut x = 1u64;
        for _ in 0..20_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let u = ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            let s = if u < 0.1 { TAIL_U - 3.0 * (u / 0.1).ln() } else { u };
            t.count(1.0);
            t.excess(s, 1.0);
        }
        let learned = t.tail_prob(10.0, 0.05);
        assert!(learned > 20.0 * prior, "{learned} vs {prior}");
        let q = t.quantile(learned, 0.05);
        assert!((q - 10.0).abs() < 1e-6, "{q}");
    }
}
