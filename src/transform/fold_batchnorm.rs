//! Fold ONNX `BatchNormalization` nodes into the convolution that feeds them.
//!
//! tract folds BN into a conv during its own declutter only in some cases (not for 1x1 convs at
//! batch > 1, which it turns into matmuls first), so a BN left in the graph costs a full extra
//! pass over the activations. Folding on the ONNX protobuf, before tract parses it, makes the
//! result independent of batch size and of tract's rule order.
//!
//! For `y = gamma * (conv(x) + b - mean) / sqrt(var + eps) + beta` with `s = gamma / sqrt(var +
//! eps)`: `W'[o] = W[o] * s[o]` and `b'[o] = (b[o] - mean[o]) * s[o] + beta[o]` (Ioffe & Szegedy,
//! 2015, section 3: in inference BN is a fixed per-channel affine map).

use std::collections::HashMap;

use tract_onnx::data_resolver::ModelDataResolver;
use tract_onnx::pb::{tensor_proto::DataLocation, GraphProto, NodeProto, TensorProto};
use tract_onnx::prelude::*;

/// ONNX's default `epsilon` for BatchNormalization (operator spec, all opsets).
const ONNX_BN_DEFAULT_EPSILON: f32 = 1e-5;

/// What [`fold_batchnorm`] did: how many BN nodes it folded and which it had to leave, by name.
#[derive(Debug, Default, Clone)]
pub struct FoldReport {
    pub folded: usize,
    pub left: Vec<String>,
}

/// Fold every `Conv -> BatchNormalization` pair of `graph` whose parameters are initializers.
///
/// `model_dir` is where external-data files live. A BN that cannot be folded (not fed by a conv
/// used only by it, parameters not constant, training mode) is left and named in the report.
pub fn fold_batchnorm(
    graph: &mut GraphProto,
    provider: &dyn ModelDataResolver,
    model_dir: Option<&str>,
) -> TractResult<FoldReport> {
    let mut report = FoldReport::default();
    bypass_constant_identities(graph);
    let mut ix = 0;
    while ix < graph.node.len() {
        if graph.node[ix].op_type != "BatchNormalization" {
            ix += 1;
            continue;
        }
        if try_fold_one(graph, ix, provider, model_dir)? {
            graph.node.remove(ix);
            report.folded += 1;
        } else {
            report.left.push(node_label(&graph.node[ix]));
            ix += 1;
        }
    }
    Ok(report)
}

/// Read initializers directly where an `Identity` node only renames one. torch's exporter emits
/// such nodes when it deduplicates equal parameters (seen on downsample BatchNorms whose running
/// statistics equal another layer's), and a BN fed through them would otherwise not fold.
pub fn bypass_constant_identities(graph: &mut GraphProto) {
    let inits: std::collections::HashSet<String> =
        graph.initializer.iter().map(|t| t.name.clone()).collect();
    let outputs: std::collections::HashSet<String> =
        graph.output.iter().map(|o| o.name.clone()).collect();
    let renames: HashMap<String, String> = graph
        .node
        .iter()
        .filter(|n| n.op_type == "Identity" && n.input.len() == 1 && n.output.len() == 1)
        .filter(|n| inits.contains(&n.input[0]) && !outputs.contains(&n.output[0]))
        .map(|n| (n.output[0].clone(), n.input[0].clone()))
        .collect();
    if renames.is_empty() {
        return;
    }
    graph.node.retain(|n| {
        !(n.op_type == "Identity" && n.output.len() == 1 && renames.contains_key(&n.output[0]))
    });
    for input in graph.node.iter_mut().flat_map(|n| n.input.iter_mut()) {
        if let Some(init) = renames.get(input) {
            *input = init.clone();
        }
    }
}

/// BN nodes have names in most exports; fall back to their output name.
pub fn node_label(node: &NodeProto) -> String {
    if node.name.is_empty() {
        node.output.first().cloned().unwrap_or_default()
    } else {
        node.name.clone()
    }
}

/// Fold the BN at `bn_ix` into its producing conv; `Ok(false)` when the pattern does not apply.
fn try_fold_one(
    graph: &mut GraphProto,
    bn_ix: usize,
    provider: &dyn ModelDataResolver,
    model_dir: Option<&str>,
) -> TractResult<bool> {
    let bn = &graph.node[bn_ix];
    // Training-mode BN has extra outputs (running stats); it is not an inference affine map.
    if bn.input.len() != 5 || bn.output.len() != 1 {
        return Ok(false);
    }
    let x = bn.input[0].clone();
    let Some(conv_ix) = graph.node.iter().position(|n| n.output.first() == Some(&x)) else {
        return Ok(false);
    };
    let conv = &graph.node[conv_ix];
    if conv.op_type != "Conv" || conv.output.len() != 1 || conv.input.len() < 2 {
        return Ok(false);
    }
    // The conv output must feed only this BN, or other readers would see the folded values.
    if uses(graph, &x) != 1 || graph.output.iter().any(|o| o.name == x) {
        return Ok(false);
    }
    let eps = bn
        .attribute
        .iter()
        .find(|a| a.name == "epsilon")
        .map(|a| a.f)
        .unwrap_or(ONNX_BN_DEFAULT_EPSILON);
    let inits: HashMap<&str, usize> = graph
        .initializer
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    let param_ix: Option<Vec<usize>> = bn.input[1..5]
        .iter()
        .map(|name| inits.get(name.as_str()).copied())
        .collect();
    let Some(param_ix) = param_ix else {
        return Ok(false);
    };
    let Some(&w_ix) = inits.get(conv.input[1].as_str()) else {
        return Ok(false);
    };
    let bias_name = conv.input.get(2).filter(|b| !b.is_empty()).cloned();
    let b_ix = match &bias_name {
        Some(b) => match inits.get(b.as_str()) {
            Some(&ix) => Some(ix),
            None => return Ok(false),
        },
        None => None,
    };
    // Shared weights would be rescaled for another reader too.
    if uses(graph, &conv.input[1]) != 1 || bias_name.as_ref().is_some_and(|b| uses(graph, b) != 1) {
        return Ok(false);
    }

    let load = |ix: usize| -> TractResult<Tensor> {
        tract_onnx::tensor::load_tensor(provider, &graph.initializer[ix], model_dir)
    };
    let weight = load(w_ix)?;
    if weight.datum_type() != f32::datum_type() || weight.rank() < 3 {
        return Ok(false);
    }
    let out_channels = weight.shape()[0];
    let mut params = Vec::with_capacity(4);
    for &ix in &param_ix {
        let t = load(ix)?;
        if t.datum_type() != f32::datum_type() || t.len() != out_channels {
            return Ok(false);
        }
        params.push(crate::plan::f32_slice(&t)?.to_vec());
    }
    let bias = match b_ix {
        Some(ix) => {
            let t = load(ix)?;
            if t.datum_type() != f32::datum_type() || t.len() != out_channels {
                return Ok(false);
            }
            crate::plan::f32_slice(&t)?.to_vec()
        }
        None => vec![0.0; out_channels],
    };
    let bn = BatchNormParams {
        gamma: &params[0],
        beta: &params[1],
        mean: &params[2],
        var: &params[3],
        eps,
    };
    let mut folded_w = crate::plan::f32_slice(&weight)?.to_vec();
    let mut folded_b = bias;
    bn.fold_into(&mut folded_w, &mut folded_b);

    let bn_out = graph.node[bn_ix].output[0].clone();
    let bn_label = node_label(&graph.node[bn_ix]);
    set_f32_data(&mut graph.initializer[w_ix], &folded_w);
    match b_ix {
        Some(ix) => set_f32_data(&mut graph.initializer[ix], &folded_b),
        None => {
            let mut t = TensorProto {
                name: format!("{bn_label}.folded_bias"),
                dims: vec![out_channels as i64],
                data_type: tract_onnx::pb::tensor_proto::DataType::Float as i32,
                ..TensorProto::default()
            };
            set_f32_data(&mut t, &folded_b);
            let name = t.name.clone();
            graph.initializer.push(t);
            graph.node[conv_ix].input.truncate(2);
            graph.node[conv_ix].input.push(name);
        }
    }
    graph.node[conv_ix].output[0] = bn_out;
    Ok(true)
}

/// Inference-time BatchNorm parameters for one layer, all of length `out_channels`.
pub struct BatchNormParams<'a> {
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub mean: &'a [f32],
    pub var: &'a [f32],
    pub eps: f32,
}

impl BatchNormParams<'_> {
    /// Rescale an output-channel-major conv/linear `weight` and its `bias` in place.
    ///
    /// Callers check that every slice has `bias.len()` channels and that `weight.len()` is a
    /// multiple of it.
    pub fn fold_into(&self, weight: &mut [f32], bias: &mut [f32]) {
        let per_out = (weight.len() / bias.len().max(1)).max(1);
        let stats = self
            .gamma
            .iter()
            .zip(self.beta)
            .zip(self.mean)
            .zip(self.var);
        for ((chunk, b), (((gamma, beta), mean), var)) in
            weight.chunks_mut(per_out).zip(bias.iter_mut()).zip(stats)
        {
            let s = gamma / (var + self.eps).sqrt();
            chunk.iter_mut().for_each(|w| *w *= s);
            *b = (*b - mean) * s + beta;
        }
    }
}

/// How many node inputs read `name` (a name listed twice by one node counts twice).
fn uses(graph: &GraphProto, name: &str) -> usize {
    graph
        .node
        .iter()
        .flat_map(|n| n.input.iter())
        .filter(|i| *i == name)
        .count()
}

/// Replace a tensor's payload with little-endian f32 `raw_data`, dropping any external location.
fn set_f32_data(t: &mut TensorProto, values: &[f32]) {
    t.raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    t.float_data.clear();
    t.external_data.clear();
    t.data_location = Some(DataLocation::Default as i32);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::test_graph::{f32_init as init, node};
    use tract_onnx::pb::{AttributeProto, ValueInfoProto};

    /// One 1x1 conv (2 -> 2 channels, no bias) followed by BN, with hand-computed expectations.
    fn conv_bn_graph() -> GraphProto {
        let mut bn = node("BatchNormalization", &["c", "g", "be", "m", "v"], "y");
        bn.attribute.push(AttributeProto {
            name: "epsilon".into(),
            f: 0.0,
            ..Default::default()
        });
        GraphProto {
            node: vec![node("Conv", &["x", "w"], "c"), bn],
            initializer: vec![
                init("w", &[2, 2, 1, 1], &[1.0, 2.0, 3.0, 4.0]),
                init("g", &[2], &[2.0, 1.0]),
                init("be", &[2], &[0.5, -1.0]),
                init("m", &[2], &[1.0, 0.0]),
                init("v", &[2], &[4.0, 0.25]),
            ],
            output: vec![ValueInfoProto {
                name: "y".into(),
                ..Default::default()
            }],
            ..GraphProto::default()
        }
    }

    fn values(graph: &GraphProto, name: &str) -> Vec<f32> {
        let t = graph.initializer.iter().find(|t| t.name == name).unwrap();
        t.raw_data
            .chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    #[test]
    fn folds_conv_bn_pair() {
        let mut g = conv_bn_graph();
        let report =
            fold_batchnorm(&mut g, &tract_onnx::data_resolver::MmapDataResolver, None).unwrap();
        assert_eq!(report.folded, 1);
        assert!(report.left.is_empty());
        assert_eq!(g.node.len(), 1);
        assert_eq!(g.node[0].output[0], "y");
        // s = [2/2, 1/0.5] = [1, 2]
        assert_eq!(values(&g, "w"), vec![1.0, 2.0, 6.0, 8.0]);
        // b' = (0 - mean) * s + beta = [-1 + 0.5, 0 - 1]
        assert_eq!(values(&g, &g.node[0].input[2]), vec![-0.5, -1.0]);
    }

    #[test]
    fn folds_bn_whose_parameters_come_through_identity_nodes() {
        let mut g = conv_bn_graph();
        g.node[1].input[3] = "m_copy".into();
        g.node.insert(0, node("Identity", &["m"], "m_copy"));
        let report =
            fold_batchnorm(&mut g, &tract_onnx::data_resolver::MmapDataResolver, None).unwrap();
        assert_eq!(report.folded, 1, "{:?}", report.left);
        assert_eq!(g.node.len(), 1);
        assert_eq!(values(&g, &g.node[0].input[2]), vec![-0.5, -1.0]);
    }

    #[test]
    fn leaves_bn_whose_conv_output_is_shared() {
        let mut g = conv_bn_graph();
        g.node.push(node("Relu", &["c"], "r"));
        let report =
            fold_batchnorm(&mut g, &tract_onnx::data_resolver::MmapDataResolver, None).unwrap();
        assert_eq!(report.folded, 0);
        assert_eq!(report.left, vec!["y".to_string()]);
        assert_eq!(values(&g, "w"), vec![1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn leaves_standalone_bn() {
        let mut g = conv_bn_graph();
        g.node.remove(0);
        g.node[0].input[0] = "x".into();
        let report =
            fold_batchnorm(&mut g, &tract_onnx::data_resolver::MmapDataResolver, None).unwrap();
        assert_eq!((report.folded, report.left.len()), (0, 1));
    }
}
