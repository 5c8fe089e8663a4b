//! Activation ranges from calibration runs, and the three ways to turn them into a clipping
//! range: min/max, a percentile of |x|, or the range that minimises the expected quantisation
//! error (the MSE criterion of Banner et al., "Post training 4-bit quantization of convolutional
//! networks for rapid-deployment", NeurIPS 2019, section 3, evaluated on a histogram).

use std::fmt;
use std::str::FromStr;

/// How a tensor's clipping range is chosen from what calibration saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// The observed min and max: nothing clips, outliers widen the step.
    MinMax,
    /// Clip at a percentile of the observed values (`QuantizeOptions::percentile`).
    Percentile,
    /// Clip where clipping error plus rounding error is smallest.
    Mse,
}

impl FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Method, String> {
        match s.to_ascii_lowercase().as_str() {
            "minmax" => Ok(Method::MinMax),
            "percentile" => Ok(Method::Percentile),
            "mse" => Ok(Method::Mse),
            other => Err(format!(
                "unknown calibration method {other:?} (expected minmax, percentile or mse)"
            )),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Method::MinMax => "minmax",
            Method::Percentile => "percentile",
            Method::Mse => "mse",
        })
    }
}

/// Histogram resolution: fine enough that bin width is well below one int8 step (1/255 of the
/// range) for every candidate clip the MSE search tries.
pub const BINS: usize = 2048;

/// What calibration saw of one tensor: its range (first pass) and, for the clipping methods, a
/// histogram over that range (second pass).
#[derive(Clone, Debug)]
pub struct Observer {
    pub min: f32,
    pub max: f32,
    pub count: u64,
    hist: Vec<u64>,
}

impl Default for Observer {
    fn default() -> Self {
        Observer {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            count: 0,
            hist: vec![],
        }
    }
}

impl Observer {
    /// First pass: widen the range. Non-finite values are skipped (they would poison it).
    pub fn observe_range(&mut self, values: &[f32]) {
        for &v in values.iter().filter(|v| v.is_finite()) {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
        self.count += values.len() as u64;
    }

    /// The range with 0 inside: zero must be exactly representable (conv padding is zero).
    pub fn range(&self) -> (f32, f32) {
        if self.min > self.max {
            return (0.0, 0.0);
        }
        (self.min.min(0.0), self.max.max(0.0))
    }

    /// Second pass: count values into [`BINS`] bins over [`Observer::range`].
    pub fn observe_histogram(&mut self, values: &[f32]) {
        let (lo, hi) = self.range();
        if self.hist.is_empty() {
            self.hist = vec![0; BINS];
        }
        let width = (hi - lo) / BINS as f32;
        if width <= 0.0 {
            return;
        }
        for &v in values.iter().filter(|v| v.is_finite()) {
            let bin = (((v - lo) / width) as usize).min(BINS - 1);
            self.hist[bin] += 1;
        }
    }

    /// The clipping range `method` picks.
    pub fn clip_range(&self, method: Method, percentile: f64) -> (f32, f32) {
        let (lo, hi) = self.range();
        let total: u64 = self.hist.iter().sum();
        if method == Method::MinMax || total == 0 || hi <= lo {
            return (lo, hi);
        }
        let width = (hi - lo) / BINS as f32;
        let edge = |bin: usize| lo + width * bin as f32;
        let zero_bin = ((-lo / width).round() as usize).min(BINS);
        match method {
            Method::MinMax => (lo, hi),
            Method::Percentile => {
                // Clip both tails so that at most (100 - p)% of the values fall outside.
                let tail = ((1.0 - percentile / 100.0) * total as f64 / 2.0).max(0.0) as u64;
                let mut seen = 0;
                let mut top = BINS;
                while top > zero_bin && seen + self.hist[top - 1] <= tail {
                    seen += self.hist[top - 1];
                    top -= 1;
                }
                seen = 0;
                let mut bottom = 0;
                while bottom < zero_bin && seen + self.hist[bottom] <= tail {
                    seen += self.hist[bottom];
                    bottom += 1;
                }
                (edge(bottom).min(0.0), edge(top).max(0.0))
            }
            Method::Mse => {
                // Shrink both ends by the same fraction of the range (log-spaced from 1 down
                // to 1/100); keep the best.
                let mut best = (f64::INFINITY, lo, hi);
                for step in 0..200 {
                    let f = 0.01f32.powf(step as f32 / 199.0);
                    let (clo, chi) = (lo * f, hi * f);
                    let err = self.expected_error(clo, chi);
                    if err < best.0 {
                        best = (err, clo, chi);
                    }
                }
                (best.1, best.2)
            }
        }
    }

    /// Expected squared error of quantising the histogram's values to 256 levels on
    /// [`clo`, `chi`]: clipped values cost their distance to the edge, others step^2 / 12.
    fn expected_error(&self, clo: f32, chi: f32) -> f64 {
        let (lo, hi) = self.range();
        let width = ((hi - lo) / BINS as f32) as f64;
        let step = ((chi - clo) as f64 / 255.0).max(f64::MIN_POSITIVE);
        let rounding = step * step / 12.0;
        self.hist
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(bin, &n)| {
                let centre = lo as f64 + width * (bin as f64 + 0.5);
                let err = if centre > chi as f64 {
                    (centre - chi as f64).powi(2)
                } else if centre < clo as f64 {
                    (clo as f64 - centre).powi(2)
                } else {
                    rounding
                };
                err * n as f64
            })
            .sum()
    }
}

/// Affine uint8 parameters for a clipping range that contains 0: `x = scale * (q - zero_point)`.
pub fn u8_params(lo: f32, hi: f32) -> (f32, u8) {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    if hi - lo <= f32::EPSILON * hi.abs().max(1.0) {
        // A constant-zero tensor: any scale represents it; 1 keeps the arithmetic tame.
        return (1.0, 0);
    }
    let scale = (hi - lo) / 255.0;
    let zero_point = (-lo / scale).round().clamp(0.0, 255.0) as u8;
    (scale, zero_point)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(values: &[f32]) -> Observer {
        let mut o = Observer::default();
        o.observe_range(values);
        o.observe_histogram(values);
        o
    }

    #[test]
    fn minmax_includes_zero_and_ignores_nan() {
        let o = observed(&[1.0, 3.0, f32::NAN, 2.0]);
        assert_eq!(o.clip_range(Method::MinMax, 99.99), (0.0, 3.0));
    }

    #[test]
    fn percentile_drops_a_lone_outlier() {
        let mut values: Vec<f32> = (0..10_000).map(|i| (i % 100) as f32 / 100.0).collect();
        values.push(50.0);
        let (lo, hi) = observed(&values).clip_range(Method::Percentile, 99.9);
        assert_eq!(lo, 0.0);
        assert!(hi > 0.95 && hi < 1.1, "{hi}");
    }

    /// Mean squared error of quantising `values` to 256 levels on [lo, hi].
    fn quant_error(values: &[f32], lo: f32, hi: f32) -> f64 {
        let (scale, zp) = u8_params(lo, hi);
        values
            .iter()
            .map(|&v| {
                let q = (v / scale + zp as f32).round().clamp(0.0, 255.0);
                ((q - zp as f32) * scale - v) as f64
            })
            .map(|e| e * e)
            .sum::<f64>()
            / values.len() as f64
    }

    #[test]
    fn mse_keeps_a_uniform_range_and_beats_minmax_on_a_heavy_tail() {
        let uniform: Vec<f32> = (0..10_000).map(|i| i as f32 / 10_000.0).collect();
        let (_, hi) = observed(&uniform).clip_range(Method::Mse, 99.99);
        assert!(hi > 0.99, "uniform data should keep its range, got {hi}");
        // Laplace(0, 1) by inverse CDF on a regular grid: a heavy two-sided tail.
        let n = 200_000;
        let laplace: Vec<f32> = (1..n)
            .map(|i| {
                let u = i as f64 / n as f64 - 0.5;
                (-u.signum() * (1.0 - 2.0 * u.abs()).ln()) as f32
            })
            .collect();
        let o = observed(&laplace);
        let (mlo, mhi) = o.clip_range(Method::Mse, 99.99);
        let (lo, hi) = o.clip_range(Method::MinMax, 99.99);
        assert!(
            mhi < hi && mlo > lo,
            "the tail should be clipped: {mlo}..{mhi}"
        );
        let (mse, minmax) = (
            quant_error(&laplace, mlo, mhi),
            quant_error(&laplace, lo, hi),
        );
        assert!(mse < minmax, "mse range error {mse} vs minmax {minmax}");
    }

    #[test]
    fn u8_params_represent_zero_exactly() {
        let (scale, zp) = u8_params(-1.0, 3.0);
        assert!((scale - 4.0 / 255.0).abs() < 1e-7);
        assert_eq!(zp, 64);
        assert_eq!(u8_params(0.0, 0.0), (1.0, 0));
        assert_eq!(u8_params(0.0, 2.55).1, 0);
    }
}
