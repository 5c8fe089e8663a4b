//! `int8-quantize`: tract's `QuantizeLinearU8` (f32 to u8) that no join took, as one vectorised
//! pass over the plan's threads: an int8 network's input, and the pooled features before its
//! classifier.
//!
//! Why: tract rounds one element at a time (on x86 a libm `rintf` call each). `profile` gave
//! int8 ResNet-50's input quantise 0.35 ms, onnxruntime's per-node profile 0.07. Same
//! arithmetic as tract's `quantize_linear_f32_u8`, so the same bits (NaN included) wherever
//! `x * scale` fits an i32; past that tract's `as i32 + zero` overflows, and ours saturates.

use tract_core::internal::*;
use tract_core::ops::element_wise::ElementWiseOp;
use tract_core::ops::quant::QuantizeLinearU8;

use super::int8_residual::quantise_u8;
use super::on_tract_threads;

/// Elements per unit of work handed to a thread.
const CHUNK: usize = 32 * 1024;

/// `clamp(round_ties_even(x * inv_scale) + zero, 0, 255)`.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeU8 {
    /// `1 / y_scale`, as tract's op stores it.
    pub inv_scale: f32,
    pub zero: i32,
}

impl Eq for QuantizeU8 {}

impl Op for QuantizeU8 {
    fn name(&self) -> StaticName {
        "QuantizeU8".into()
    }

    op_as_typed_op!();
}

impl QuantizeU8 {
    /// One element, as tract's `quantize_linear_f32_u8` (a NaN product rounds to 0).
    fn one(&self, x: f32) -> u8 {
        quantise_u8(x, self.inv_scale, self.zero)
    }

    fn run(&self, x: &[f32], y: &mut [u8]) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 checked just above.
            let done = unsafe { avx2::quantise(self, x, y) };
            for (x, y) in x[done..].iter().zip(&mut y[done..]) {
                *y = self.one(*x);
            }
            return;
        }
        for (x, y) in x.iter().zip(y.iter_mut()) {
            *y = self.one(*x);
        }
    }
}

impl EvalOp for QuantizeU8 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let view = x.try_as_plain_ram()?;
        let xs = view.as_slice::<f32>()?;
        // SAFETY: u8 has no invalid bit patterns, and the chunks write every element.
        let mut out = unsafe { Tensor::uninitialized::<u8>(x.shape())? };
        {
            let mut out_view = out.try_as_plain_ram_mut()?;
            let ys = out_view.as_slice_mut::<u8>()?;
            ensure!(ys.len() == xs.len());
            let work: Vec<_> = xs.chunks(CHUNK).zip(ys.chunks_mut(CHUNK)).collect();
            on_tract_threads(work, |(x, y)| self.run(x, y));
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for QuantizeU8 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 1 && inputs[0].datum_type == f32::datum_type());
        Ok(tvec!(u8::fact(inputs[0].shape.clone())))
    }

    as_op!();
}

/// The rule: a `QuantizeLinearU8` of an f32 tensor. It runs after `int8-residual`, which takes
/// the quantisations that end a residual join.
pub fn rewrite(model: &TypedModel, node: &TypedNode) -> TractResult<Option<TypedModelPatch>> {
    let Some(q) = node
        .op_as::<ElementWiseOp>()
        .and_then(|op| op.0.downcast_ref::<QuantizeLinearU8>())
    else {
        return Ok(None);
    };
    let [input] = node.inputs[..] else {
        return Ok(None);
    };
    if model.outlet_fact(input)?.datum_type != f32::datum_type() {
        return Ok(None);
    }
    let op = QuantizeU8 {
        inv_scale: q.scale,
        zero: q.zero_point as i32,
    };
    let mut patch = TypedModelPatch::default();
    let x = patch.tap_model(model, input)?;
    let y = patch.wire_node(&node.name, op, &[x])?[0];
    patch.shunt_outside(model, node.id.into(), y)?;
    Ok(Some(patch))
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::QuantizeU8;
    use crate::transform::rewrite::int8_residual::avx2::{pack_u8x16, quantise8};
    use std::arch::x86_64::*;

    /// The first whole 16s of `x` into `y`; returns how many elements that was.
    ///
    /// # Safety
    /// AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn quantise(op: &QuantizeU8, x: &[f32], y: &mut [u8]) -> usize {
        let n = x.len().min(y.len()) / 16 * 16;
        let eight = |p: *const f32| {
            let v = _mm256_loadu_ps(p);
            // NaN to 0 (its product with the finite scale would be NaN), as
            // `round_ties_even(NaN) as i32` is.
            let v = _mm256_and_ps(v, _mm256_cmp_ps(v, v, _CMP_ORD_Q));
            quantise8(v, op.inv_scale, op.zero)
        };
        for i in (0..n).step_by(16) {
            let (a, b) = (eight(x.as_ptr().add(i)), eight(x.as_ptr().add(i + 8)));
            _mm_storeu_si128(y.as_mut_ptr().add(i) as *mut __m128i, pack_u8x16(a, b));
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::rewrite::{apply, Rewrite, Rewrites};
    use tract_core::ops::quant::quantize_linear_u8;

    /// `x -> QuantizeLinearU8` as tract imports an int8 network's input.
    fn graph(len: usize) -> TypedModel {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1, len])).unwrap();
        let q = model
            .wire_node("q", quantize_linear_u8(1.0 / 0.05, 7), &[x])
            .unwrap()[0];
        model.select_output_outlets(&[q]).unwrap();
        model
    }

    fn run(model: TypedModel, x: &[f32]) -> Vec<u8> {
        let x = Tensor::from_shape(&[1, x.len()], x).unwrap();
        let out = model.into_runnable().unwrap().run(tvec!(x.into())).unwrap();
        let view = out[0].try_as_plain_ram().unwrap();
        view.as_slice::<u8>().unwrap().to_vec()
    }

    #[test]
    fn matches_tract_bit_for_bit() {
        // Ties (k + 0.5 after scaling: 0.025 steps), both clamps, NaN, -0, and 16-element
        // blocks plus a tail. Not past i32 after scaling: tract's own op overflows there
        // (a panic in debug builds, 0 for a huge positive value in release; ours gives 255).
        let special = [f32::NAN, -0.0, 1e6, -1e6, 0.0125];
        let ramp = (0..1000).map(|i| (i as f32 - 500.0) * 0.025);
        // The special values both in a vector block and in the tail.
        let x: Vec<f32> = special.into_iter().chain(ramp).chain(special).collect();
        let reference = graph(x.len());
        let (rewritten, report) = apply(reference.clone(), &Rewrites::all()).unwrap();
        assert_eq!(report.count(Rewrite::Int8Quantize), 1);
        assert!(rewritten.nodes().iter().any(|n| n.op_is::<QuantizeU8>()));
        let (want, got) = (run(reference, &x), run(rewritten, &x));
        assert_eq!(want, got);
        assert!(want.contains(&0) && want.contains(&255) && want.contains(&7));
    }
}
