//! `conv-residual`: a ResNet block's shortcut add (and ReLU), [`ResidualAdd`], folded into the
//! `direct-conv` convolution that feeds it: the conv accumulates onto the shortcut's values.
//!
//! Why: the add is a pass of its own over three tensors the size of the block's output
//! (3.2 MB each in ResNet-50's layer1, more than L2 holds): two read, one written. The conv
//! instead starts each output tile from the shortcut's values, which it reads once, in the
//! tile's own cache-sized pieces, and writes its sum where the shortcut was (in place when
//! the plan hands the shortcut over unshared, as the add did). onnxruntime fuses the same
//! add into its conv ("Conv + Sum").

use tract_core::internal::*;

use super::direct_conv::DirectConv;
use super::residual_add::ResidualAdd;
use super::sole_successor;

/// The rule, rooted at a [`ResidualAdd`]: one input a [`DirectConv`] without ReLU or shortcut
/// of its own whose only successor is the add, the other of the conv's output shape.
pub fn rewrite(model: &TypedModel, node: &TypedNode) -> TractResult<Option<TypedModelPatch>> {
    let Some(add) = node.op_as::<ResidualAdd>() else {
        return Ok(None);
    };
    if node.inputs.len() != 2 {
        return Ok(None);
    }
    let fused = (0..2).find_map(|i| {
        let conv_node = model.node(node.inputs[i].node);
        let conv = conv_node.op_as::<DirectConv>()?;
        let sole = sole_successor(model, node.inputs[i]).is_some_and(|s| s.id == node.id);
        (sole && !conv.relu && !conv.accumulate).then_some((i, conv_node, conv))
    });
    let Some((i, conv_node, conv)) = fused else {
        return Ok(None);
    };
    let shortcut = node.inputs[1 - i];
    let shortcut_fact = model.outlet_fact(shortcut)?;
    if shortcut_fact.datum_type != f32::datum_type()
        || shortcut_fact.shape.as_concrete() != Some(&*conv.output_shape)
    {
        return Ok(None);
    }
    let mut patch = TypedModelPatch::default();
    let x = patch.tap_model(model, conv_node.inputs[0])?;
    let shortcut = patch.tap_model(model, shortcut)?;
    let fused = DirectConv {
        relu: add.relu,
        accumulate: true,
        ..conv.clone()
    };
    let y = patch.wire_node(
        format!("{}.shortcut", conv_node.name),
        fused,
        &[x, shortcut],
    )?[0];
    patch.shunt_outside(model, node.id.into(), y)?;
    Ok(Some(patch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::rewrite::direct_conv::kernel;
    use crate::transform::rewrite::{apply, test_values, wire_relu, Rewrite, Rewrites};
    use tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec, PoolSpec};
    use tract_core::ops::nn::DataFormat;

    const C: usize = 8;

    /// `conv_k(x) + x`, then a ReLU if `relu`: a block's end, the conv padded to keep the
    /// map.
    fn block(k: usize, relu: bool) -> TypedModel {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1, C, 6, 7])).unwrap();
        let weights = test_values(C * C * k * k, 3);
        let kernel = Tensor::from_shape(&[C, C, k, k], &weights).unwrap();
        let kernel = model.add_const("w", kernel).unwrap();
        let bias = model.add_const("b", tensor1(&test_values(C, 4))).unwrap();
        let pool_spec = PoolSpec {
            data_format: DataFormat::NCHW,
            kernel_shape: tvec![k, k],
            padding: PaddingSpec::SameUpper,
            dilations: None,
            strides: None,
            input_channels: C,
            output_channels: C,
        };
        let conv = Conv::new(pool_spec, KernelFormat::OIHW, 1, None);
        let y = model.wire_node("conv", conv, &[x, kernel, bias]).unwrap()[0];
        let mut out = model
            .wire_node("add", tract_core::ops::math::add(), &[y, x])
            .unwrap()[0];
        if relu {
            out = wire_relu(&mut model, out);
        }
        model.select_output_outlets(&[out]).unwrap();
        model
    }

    fn run(model: TypedModel) -> Vec<f32> {
        let input = Tensor::from_shape(&[1, C, 6, 7], &test_values(C * 42, 5)).unwrap();
        let out = model
            .into_runnable()
            .unwrap()
            .run(tvec!(input.into()))
            .unwrap();
        crate::plan::f32_values(&out[0]).unwrap()
    }

    /// A 1x1 and a 3x3 conv (no Winograd on a 6x7 map) with the add and ReLU folded in,
    /// against tract's unrewritten graph.
    #[test]
    fn matches_the_unrewritten_graph() {
        if !kernel::available() {
            return;
        }
        for (k, relu) in [(1, true), (1, false), (3, true)] {
            let (rewritten, report) = apply(block(k, relu), &Rewrites::all()).unwrap();
            assert_eq!(report.count(Rewrite::ConvResidual), 1, "{k}x{k}");
            let ops: Vec<_> = rewritten.nodes().iter().map(|n| n.op.name()).collect();
            assert!(!ops.iter().any(|o| o.starts_with("ResidualAdd")), "{ops:?}");
            let (want, got) = (run(block(k, relu)), run(rewritten));
            assert_eq!(want.len(), got.len());
            for (w, g) in want.iter().zip(&got) {
                assert!(
                    (w - g).abs() < 1e-5 * (1.0 + w.abs()),
                    "{k}x{k}: {w} vs {g}"
                );
            }
            if relu {
                assert!(want.contains(&0.0), "the test input never hits the ReLU");
            }
        }
    }
}
