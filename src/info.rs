//! What `resnet-edge info` reports about a model: shapes, size, cost, and the optimised plan.

use std::collections::BTreeMap;

use tract_core::internal::*;
use tract_core::ops::cnn::Conv;
use tract_core::ops::einsum::EinSum;
use tract_core::ops::konst::Const;
use tract_core::ops::source::TypedSource;

use crate::model::resnet::ResNetLayout;
use crate::model::{LoadedModel, SourceKind};
use crate::plan::Plan;
use crate::precision::Precision;
use crate::preprocess::Layout;
use crate::transform::rewrite::{self, RewriteReport};
use crate::Result;

#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    pub model: String,
    pub source: SourceKind,
    pub arch: Option<String>,
    /// Whose key layout a state_dict follows (`torchvision` or `article`); none for ONNX.
    pub resnet_layout: Option<ResNetLayout>,
    pub layout: Layout,
    pub batch: usize,
    pub input_shape: Vec<usize>,
    pub output_shape: Vec<usize>,
    /// Weight values in the BN-folded graph (folding turns each BN into one bias per channel).
    pub parameters: usize,
    /// Multiply-accumulates of the convolutions and matmuls, for one image.
    pub macs_per_image: u64,
    /// Op name -> count in the optimised plan tract will run.
    pub ops: BTreeMap<String, usize>,
    /// Ops in the optimised plan that come from a BatchNormalization node (0 once all folded).
    pub batchnorm_ops: usize,
    pub batchnorm_nodes_in_source: usize,
    pub batchnorm_folded: usize,
    /// What runs: f32, f16 or int8.
    pub precision: Precision,
    /// Why: the request, what the file stores, the CPU's FP16 support.
    pub precision_reason: String,
    pub precision_requested: Precision,
    /// What the file stores: f32, f16 (an f16 artifact) or int8 (an int8 artifact).
    pub weights_precision: Precision,
    /// The speed rewrites applied, and how many places each changed.
    pub rewrites: RewriteReport,
}

impl ModelInfo {
    pub fn new(loaded: &LoadedModel, plan: &Plan) -> Result<ModelInfo> {
        let model = &loaded.model;
        let batch = loaded.input_shape.first().copied().unwrap_or(1).max(1);
        let mut parameters = 0;
        let mut macs = 0u64;
        for node in model.nodes() {
            macs += node_macs(model, node).unwrap_or(0);
            // Our rewritten convs (Winograd's transformed kernels, int8 packed weights) count
            // as the kernels they stand for.
            if let Some((params, _)) = rewrite::conv_equivalent(model, node) {
                parameters += params;
                continue;
            }
            if let Some(k) = node.op_as::<Const>() {
                let v = k.val();
                let numeric = v.datum_type().is_float()
                    || [i8::datum_type(), i32::datum_type()].contains(&v.datum_type());
                if numeric && v.len() > 1 && !is_quantisation_param(model, node) {
                    parameters += v.len();
                }
            }
        }
        let optimized = plan.model();
        let mut ops = BTreeMap::new();
        for node in optimized.nodes() {
            *ops.entry(node.op.name().to_string()).or_insert(0) += 1;
        }
        let batchnorm_ops = optimized
            .nodes()
            .iter()
            .filter(|n| n.op_as::<Const>().is_none() && n.op_as::<TypedSource>().is_none())
            .filter(|n| {
                loaded.batchnorm_nodes.iter().any(|bn| {
                    n.name == *bn
                        || n.name
                            .strip_prefix(bn.as_str())
                            .is_some_and(|r| r.starts_with('.'))
                })
            })
            .count();
        let output_shape = optimized
            .output_fact(0)
            .ok()
            .and_then(|f| f.shape.as_concrete().map(|s| s.to_vec()))
            .unwrap_or_default();
        Ok(ModelInfo {
            model: loaded.path.display().to_string(),
            source: loaded.kind,
            arch: loaded.arch.as_ref().map(|a| a.arch_name()),
            resnet_layout: loaded.arch.as_ref().map(|a| a.layout),
            layout: loaded.layout,
            batch,
            input_shape: loaded.input_shape.clone(),
            output_shape,
            parameters,
            macs_per_image: macs / batch as u64,
            ops,
            batchnorm_ops,
            batchnorm_nodes_in_source: loaded.batchnorm_nodes.len(),
            batchnorm_folded: loaded.batchnorm_folded,
            precision: loaded.precision.run,
            precision_reason: loaded.precision.reason.clone(),
            precision_requested: loaded.precision.requested,
            weights_precision: loaded.precision.weights,
            rewrites: loaded.rewrites.clone(),
        })
    }
}

/// Whether the constant `node` only feeds quantised convs/matmuls as a zero point or scale
/// (their inputs 3 to 8): quantisation parameters, not weights.
fn is_quantisation_param(model: &TypedModel, node: &TypedNode) -> bool {
    let quantised = |n: &TypedNode| {
        n.op_as::<Conv>().is_some_and(|c| c.q_params.is_some())
            || n.op_as::<EinSum>().is_some_and(|e| e.q_params.is_some())
    };
    let successors = &node.outputs[0].successors;
    !successors.is_empty()
        && successors
            .iter()
            .all(|s| s.slot >= 3 && quantised(model.node(s.node)))
}

/// Multiply-accumulates of a conv (output elements x kernel taps per output) or an einsum
/// (product of all axis sizes), for the whole batch; other ops count as free.
pub(crate) fn node_macs(model: &TypedModel, node: &TypedNode) -> Option<u64> {
    if let Some((_, direct)) = rewrite::conv_equivalent(model, node) {
        return Some(direct);
    }
    let facts = model.node_input_facts(node.id).ok()?;
    if let Some(conv) = node.op_as::<Conv>() {
        let out = model
            .outlet_fact(OutletId::new(node.id, 0))
            .ok()?
            .shape
            .as_concrete()?
            .iter()
            .product::<usize>();
        let kernel = facts.get(1)?.shape.as_concrete()?.iter().product::<usize>();
        return Some((out * kernel / conv.output_channels().max(1)) as u64);
    }
    if let Some(einsum) = node.op_as::<EinSum>() {
        let output = model.outlet_fact(OutletId::new(node.id, 0)).ok()?;
        let mut product = 1u64;
        for axis in einsum.axes.iter_all_axes() {
            // An axis only the output has (a broadcast unit axis) is sized there.
            let size = match axis
                .inputs
                .iter()
                .enumerate()
                .find_map(|(i, p)| p.first().map(|&p| (i, p)))
            {
                Some((input, pos)) => facts.get(input)?.shape.get(pos)?,
                None => output.shape.get(*axis.outputs.first()?.first()?)?,
            };
            product *= size.to_usize().ok()? as u64;
        }
        return Some(product);
    }
    None
}
