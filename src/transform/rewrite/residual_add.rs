//! `residual-add`: a ResNet block's `Add(branch, shortcut)` and the ReLU after it as one
//! elementwise op, kept out of tract's matmul epilogue.
//!
//! Why: tract fuses an `Add` of two same-shaped tensors into the producing matmul as an
//! "add unicast" epilogue. In NCHW the shortcut tile it reads is 16 channels x 6 pixels, each
//! channel a different row `H*W` floats apart, and the kernel gathers it element by element.
//! Measured with `profile` on ResNet-50 (AVX2): `layer1.0.conv3` (1x1, 64->256, 56x56) took
//! 5.9 ms with the fused add against 2.3 ms for the same-shaped `downsample` conv without it.
//! A separate add in place over contiguous memory costs about 0.3 ms.

use tract_core::internal::*;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::cnn::Conv;
use tract_core::ops::einsum::EinSum;

use super::winograd::WinogradOutput;
use super::{on_tract_threads, relu_input, sole_successor};

/// `max(a + b, 0)` (or `a + b`) over two f32 tensors of the same shape, written into `a`'s
/// buffer when the plan hands it over unshared.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResidualAdd {
    pub relu: bool,
}

impl Op for ResidualAdd {
    fn name(&self) -> StaticName {
        if self.relu {
            "ResidualAddRelu".into()
        } else {
            "ResidualAdd".into()
        }
    }

    op_as_typed_op!();
}

impl EvalOp for ResidualAdd {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (a, b) = args_2!(inputs);
        ensure!(
            a.shape() == b.shape(),
            "ResidualAdd shapes {:?} and {:?}",
            a.shape(),
            b.shape()
        );
        let mut sum = a.into_tensor();
        {
            let b = b.try_as_plain_ram()?;
            let b = b.as_slice::<f32>()?;
            let mut view = sum.try_as_plain_ram_mut()?;
            let out = view.as_slice_mut::<f32>()?;
            // Memory-bound: large contiguous pieces, one run of them per thread of the plan.
            const PIECE: usize = 1 << 14;
            let pieces: Vec<_> = out.chunks_mut(PIECE).zip(b.chunks(PIECE)).collect();
            let relu = self.relu;
            on_tract_threads(pieces, |(out, b)| {
                if relu {
                    out.iter_mut()
                        .zip(b)
                        .for_each(|(o, b)| *o = (*o + b).max(0.0));
                } else {
                    out.iter_mut().zip(b).for_each(|(o, b)| *o += b);
                }
            });
        }
        Ok(tvec!(sum.into_tvalue()))
    }
}

impl TypedOp for ResidualAdd {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 2 && inputs[0].shape == inputs[1].shape);
        ensure!(inputs[0].datum_type == f32::datum_type());
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }

    as_op!();
}

/// Whether `outlet` is a convolution's output: a `Conv`, a 1x1 conv as `EinSum`, a Winograd
/// conv, or any of them followed by the add of a constant bias (how BN-folded ONNX convs
/// without a bias input declutter).
fn from_conv(model: &TypedModel, outlet: OutletId) -> bool {
    let producer = model.node(outlet.node);
    if producer.op_is::<Conv>() || producer.op_is::<EinSum>() || producer.op_is::<WinogradOutput>()
    {
        return true;
    }
    let Some(op) = producer.op_as::<TypedBinOp>() else {
        return false;
    };
    if !op.0.is::<tract_core::ops::math::Add>() || producer.inputs.len() != 2 {
        return false;
    }
    let Ok(facts) = model.node_input_facts(producer.id) else {
        return false;
    };
    let is_const = |i: usize| facts[i].konst.is_some();
    let conv = |i: usize| {
        let node = model.node(producer.inputs[i].node);
        node.op_is::<Conv>() || node.op_is::<EinSum>()
    };
    (is_const(1) && conv(0)) || (is_const(0) && conv(1))
}

/// The rule, rooted at the `Add`: both inputs f32 of one shape, neither constant, at least one
/// made by a convolution (the matmul tract would fuse the add into, or a Winograd conv). A
/// ReLU that is the add's only successor is absorbed.
pub fn rewrite(model: &TypedModel, node: &TypedNode) -> TractResult<Option<TypedModelPatch>> {
    let Some(op) = node.op_as::<TypedBinOp>() else {
        return Ok(None);
    };
    if !op.0.is::<tract_core::ops::math::Add>() || node.inputs.len() != 2 {
        return Ok(None);
    }
    let facts = model.node_input_facts(node.id)?;
    if facts[0].datum_type != f32::datum_type()
        || facts[0].without_value() != facts[1].without_value()
        || facts.iter().any(|f| f.konst.is_some())
    {
        return Ok(None);
    }
    if !node.inputs.iter().any(|&i| from_conv(model, i)) {
        return Ok(None);
    }
    let relu = sole_successor(model, node.id.into())
        .filter(|succ| relu_input(model, succ) == Some(node.id.into()));
    let mut patch = TypedModelPatch::default();
    let a = patch.tap_model(model, node.inputs[0])?;
    let b = patch.tap_model(model, node.inputs[1])?;
    let (name, replaced) = match relu {
        Some(relu) => (&relu.name, relu.id),
        None => (&node.name, node.id),
    };
    let sum = patch.wire_node(
        format!("{name}.residual"),
        ResidualAdd {
            relu: relu.is_some(),
        },
        &[a, b],
    )?[0];
    patch.shunt_outside(model, replaced.into(), sum)?;
    Ok(Some(patch))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::transform::rewrite::{apply, test_values, wire_relu, Rewrite, Rewrites};
    use tract_core::ops::cnn::{KernelFormat, PaddingSpec, PoolSpec};
    use tract_core::ops::nn::DataFormat;

    /// `conv_k(x) + x` over `c` channels of an `h x w` map, then a ReLU if `relu`: a block's
    /// end, the conv padded to keep the map.
    pub(crate) fn block(c: usize, (h, w): (usize, usize), k: usize, relu: bool) -> TypedModel {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1, c, h, w])).unwrap();
        let kernel = Tensor::from_shape(&[c, c, k, k], &test_values(c * c * k * k, 3)).unwrap();
        let kernel = model.add_const("w", kernel).unwrap();
        let bias = model.add_const("b", tensor1(&test_values(c, 4))).unwrap();
        let pool_spec = PoolSpec {
            data_format: DataFormat::NCHW,
            kernel_shape: tvec![k, k],
            padding: PaddingSpec::SameUpper,
            dilations: None,
            strides: None,
            input_channels: c,
            output_channels: c,
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

    /// `model` (a [`block`] of `c` channels over `hw`) on a fixed input.
    pub(crate) fn run(model: TypedModel, c: usize, (h, w): (usize, usize)) -> Vec<f32> {
        let input = Tensor::from_shape(&[1, c, h, w], &test_values(c * h * w, 5)).unwrap();
        let out = model
            .into_runnable()
            .unwrap()
            .run(tvec!(input.into()))
            .unwrap();
        crate::plan::f32_values(&out[0]).unwrap()
    }

    #[test]
    fn matches_the_unrewritten_graph_with_and_without_relu() {
        for relu in [true, false] {
            // Without `conv-residual`, which would fold the op into the conv.
            let rewrites = Rewrites::all().without("conv-residual").unwrap();
            let (rewritten, report) = apply(block(4, (5, 5), 1, relu), &rewrites).unwrap();
            assert_eq!(report.count(Rewrite::ResidualAdd), 1);
            let names: Vec<_> = rewritten.nodes().iter().map(|n| n.op.name()).collect();
            let expected = if relu {
                "ResidualAddRelu"
            } else {
                "ResidualAdd"
            };
            assert!(names.iter().any(|n| n == expected), "{names:?}");
            assert!(
                !names.iter().any(|n| n == "Max"),
                "ReLU left behind: {names:?}"
            );
            let want = run(block(4, (5, 5), 1, relu), 4, (5, 5));
            let got = run(rewritten, 4, (5, 5));
            assert_eq!(want.len(), got.len());
            for (w, g) in want.iter().zip(&got) {
                assert!((w - g).abs() < 1e-6, "{w} vs {g}");
            }
            if relu {
                assert!(want.contains(&0.0), "the test input never hits the ReLU");
            }
        }
    }

    #[test]
    fn leaves_adds_that_are_not_residual_alone() {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1, 4, 5, 5])).unwrap();
        let y = model.add_source("y", f32::fact([1, 4, 5, 5])).unwrap();
        let sum = model
            .wire_node("add", tract_core::ops::math::add(), &[x, y])
            .unwrap()[0];
        model.select_output_outlets(&[sum]).unwrap();
        let (_, report) = apply(model, &Rewrites::all()).unwrap();
        assert_eq!(report.count(Rewrite::ResidualAdd), 0);
    }
}
