//! From a model's output row to the best classes: softmax and top-k.

/// Softmax in f64 for stability (max subtracted first), returned as f32 probabilities.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exps: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| (e / sum) as f32).collect()
}

/// The `k` highest scores as `(class, score)`, best first; ties keep the lower class first.
pub fn top_k(scores: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut ranked: Vec<(usize, f32)> = scores.iter().copied().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.truncate(k);
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_matches_hand_computation() {
        // e^0, e^1, e^2 normalised: 0.09003057, 0.24472847, 0.66524096
        let p = softmax(&[1000.0, 1001.0, 1002.0]);
        for (got, want) in p.iter().zip([0.09003057, 0.24472847, 0.66524096]) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
    }

    #[test]
    fn top_k_orders_by_score_then_class() {
        assert_eq!(
            top_k(&[0.1, 0.5, 0.5, 0.2], 3),
            vec![(1, 0.5), (2, 0.5), (3, 0.2)]
        );
        assert_eq!(top_k(&[0.1], 5), vec![(0, 0.1)]);
    }
}
