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
    use crate::transform::rewrite::direct_conv::kernel;
    use crate::transform::rewrite::residual_add::tests::{block, run};
    use crate::transform::rewrite::{apply, Rewrite, Rewrites};

    /// A 1x1 and a 3x3 conv (no Winograd on a 6x7 map) with the add and ReLU folded in where
    /// `direct-conv` runs (left to `residual-add` elsewhere), against tract's unrewritten
    /// graph.
    #[test]
    fn matches_the_unrewritten_graph() {
        let folded = usize::from(kernel::available());
        for (k, relu) in [(1, true), (1, false), (3, true)] {
            let (rewritten, report) = apply(block(8, (6, 7), k, relu), &Rewrites::all()).unwrap();
            assert_eq!(report.count(Rewrite::ConvResidual), folded, "{k}x{k}");
            let ops: Vec<_> = rewritten.nodes().iter().map(|n| n.op.name()).collect();
            let adds = ops.iter().filter(|o| o.starts_with("ResidualAdd")).count();
            assert_eq!(adds, 1 - folded, "{ops:?}");
            let want = run(block(8, (6, 7), k, relu), 8, (6, 7));
            let got = run(rewritten, 8, (6, 7));
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
