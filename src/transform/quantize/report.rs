//! What `quantize` reports about an artifact against its float model on held-out images:
//! top-1 agreement, top-5 overlap, logit cosine similarity, the layers with the worst
//! signal-to-quantisation-noise ratio, and sizes.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;
use tract_onnx::pb::{tensor_proto::DataType, ModelProto};

use super::qlinear::{Analysis, QKind};
use super::Method;
use crate::topk::top_k;

/// The float model's weight bytes (`float_only`), or every initializer's bytes.
pub fn weight_bytes(proto: &ModelProto, float_only: bool) -> u64 {
    let Some(graph) = proto.graph.as_ref() else {
        return 0;
    };
    graph
        .initializer
        .iter()
        .filter(|t| !float_only || t.data_type == DataType::Float as i32)
        .map(|t| {
            let elems: i64 = t.dims.iter().product();
            let size = match DataType::try_from(t.data_type) {
                Ok(DataType::Float | DataType::Int32) => 4,
                Ok(DataType::Float16) => 2,
                Ok(DataType::Double | DataType::Int64) => 8,
                _ => 1,
            };
            elems.max(0) as u64 * size
        })
        .sum()
}

/// Signal-to-quantisation-noise ratio of one layer's output over the evaluation images.
#[derive(Clone, Debug, Serialize)]
pub struct LayerSqnr {
    pub layer: String,
    pub sqnr_db: f64,
}

/// Inputs to the report besides the per-image comparisons.
pub struct Summary {
    pub model: PathBuf,
    pub artifact: PathBuf,
    pub method: Method,
    pub calibration_images: usize,
    pub eval_images: usize,
    pub held_out: bool,
    pub float_weight_bytes: u64,
    pub int8_weight_bytes: u64,
    pub artifact_bytes: u64,
    pub kept_f32: Vec<String>,
    pub quantised_layers: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct QuantReport {
    pub model: PathBuf,
    pub artifact: PathBuf,
    pub precision: &'static str,
    pub method: Method,
    pub calibration_images: usize,
    pub eval_images: usize,
    /// Whether the evaluation images were kept out of calibration.
    pub held_out: bool,
    /// Share of evaluation images whose top-1 class is the float model's.
    pub top1_agreement: f64,
    /// Mean share of the float model's top-5 classes found in the artifact's top-5.
    pub top5_overlap: f64,
    /// Mean cosine similarity of the logits.
    pub mean_cosine: f64,
    pub min_cosine: f64,
    /// The five layers with the lowest SQNR, worst first.
    pub worst_layers: Vec<LayerSqnr>,
    pub quantised_layers: usize,
    /// Layers left in float (`--keep-f32`).
    pub kept_f32: Vec<String>,
    pub float_weight_bytes: u64,
    pub int8_weight_bytes: u64,
    pub artifact_bytes: u64,
    /// `int8_weight_bytes / float_weight_bytes`.
    pub weight_ratio: f64,
}

/// Running sums over evaluation images.
pub struct Accumulator {
    layers: Vec<(String, f64, f64)>,
    images: usize,
    top1_same: usize,
    top5_overlap: f64,
    cosine_sum: f64,
    cosine_min: f64,
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        return if na == nb { 1.0 } else { 0.0 };
    }
    dot / (na * nb)
}

impl Accumulator {
    pub fn new(analysis: &Analysis) -> Accumulator {
        Accumulator {
            layers: analysis
                .ops
                .iter()
                .filter(|o| o.kind == QKind::Conv)
                .map(|o| (o.name.clone(), 0.0, 0.0))
                .collect(),
            images: 0,
            top1_same: 0,
            top5_overlap: 0.0,
            cosine_sum: 0.0,
            cosine_min: f64::INFINITY,
        }
    }

    /// `logits` and `observed` (in `analysis.observed` order) of the float model; `quant`:
    /// logits then one probe per conv (in `analysis.ops` order).
    pub fn add(
        &mut self,
        analysis: &Analysis,
        logits: &[f32],
        observed: &[&[f32]],
        quant: &[Vec<f32>],
    ) {
        let (f, q) = (logits, &quant[0]);
        let (tf, tq) = (top_k(f, 5), top_k(q, 5));
        self.images += 1;
        if tf.first().map(|t| t.0) == tq.first().map(|t| t.0) {
            self.top1_same += 1;
        }
        let shared = tf
            .iter()
            .filter(|(c, _)| tq.iter().any(|(d, _)| d == c))
            .count();
        self.top5_overlap += shared as f64 / tf.len().max(1) as f64;
        let c = cosine(f, q);
        self.cosine_sum += c;
        self.cosine_min = self.cosine_min.min(c);
        let convs = analysis.ops.iter().filter(|o| o.kind == QKind::Conv);
        for ((op, layer), probe) in convs.zip(self.layers.iter_mut()).zip(&quant[1..]) {
            let Some(ix) = analysis.observed.iter().position(|n| *n == op.output) else {
                continue;
            };
            let reference = observed[ix];
            for (r, p) in reference.iter().zip(probe) {
                layer.1 += (*r as f64).powi(2);
                layer.2 += (*r as f64 - *p as f64).powi(2);
            }
        }
    }

    pub fn finish(self, s: Summary) -> QuantReport {
        let n = self.images.max(1) as f64;
        let mut layers: Vec<LayerSqnr> = self
            .layers
            .into_iter()
            .map(|(layer, signal, noise)| LayerSqnr {
                layer,
                sqnr_db: if noise > 0.0 {
                    10.0 * (signal / noise).log10()
                } else {
                    f64::INFINITY
                },
            })
            .collect();
        layers.sort_by(|a, b| a.sqnr_db.total_cmp(&b.sqnr_db));
        layers.truncate(5);
        QuantReport {
            model: s.model,
            artifact: s.artifact,
            precision: "int8",
            method: s.method,
            calibration_images: s.calibration_images,
            eval_images: s.eval_images,
            held_out: s.held_out,
            top1_agreement: self.top1_same as f64 / n,
            top5_overlap: self.top5_overlap / n,
            mean_cosine: self.cosine_sum / n,
            min_cosine: if self.images == 0 {
                0.0
            } else {
                self.cosine_min
            },
            worst_layers: layers,
            quantised_layers: s.quantised_layers,
            kept_f32: s.kept_f32,
            float_weight_bytes: s.float_weight_bytes,
            int8_weight_bytes: s.int8_weight_bytes,
            artifact_bytes: s.artifact_bytes,
            weight_ratio: s.int8_weight_bytes as f64 / s.float_weight_bytes.max(1) as f64,
        }
    }
}

impl fmt::Display for QuantReport {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        writeln!(
            f,
            "{} -> {} (int8, {} calibration, {} images)",
            self.model.display(),
            self.artifact.display(),
            self.method,
            self.calibration_images
        )?;
        let held = if self.held_out {
            "held-out"
        } else {
            "calibration (too few to hold out)"
        };
        writeln!(f, "against f32 on {} {held} images:", self.eval_images)?;
        writeln!(
            f,
            "  top-1 agreement    {:.1}%",
            100.0 * self.top1_agreement
        )?;
        writeln!(f, "  top-5 overlap      {:.1}%", 100.0 * self.top5_overlap)?;
        writeln!(
            f,
            "  logit cosine       mean {:.5}, min {:.5}",
            self.mean_cosine, self.min_cosine
        )?;
        writeln!(f, "worst layers by SQNR:")?;
        for l in &self.worst_layers {
            writeln!(f, "  {:>7.2} dB  {}", l.sqnr_db, l.layer)?;
        }
        let kept = if self.kept_f32.is_empty() {
            "none".to_string()
        } else {
            self.kept_f32.join(", ")
        };
        writeln!(
            f,
            "layers: {} int8, kept in f32: {kept}",
            self.quantised_layers
        )?;
        write!(
            f,
            "weights: {:.2} MB f32 -> {:.2} MB int8 ({:.2}x); artifact {:.2} MB",
            self.float_weight_bytes as f64 / 1e6,
            self.int8_weight_bytes as f64 / 1e6,
            self.weight_ratio,
            self.artifact_bytes as f64 / 1e6
        )
    }
}
