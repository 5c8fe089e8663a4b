//! `int8-residual`: an int8 ResNet block's residual join, `Quantize(ReLU(Dequantize(a) + b))`
//! with `b` dequantised u8 or the f32 identity shortcut, as one elementwise pass.
//!
//! Why: tract runs the four as separate passes, and its `QuantizeLinearU8` rounds one element
//! at a time: on ResNet-50 int8 (AVX2) `profile` gave the 17 quantise nodes 14.3 ms, the
//! dequantise nodes 4.2 ms and the add + ReLU 3.6 ms, against 87.5 ms for all the convs. The
//! fused op does the same f32 arithmetic in the same order (so its outputs are tract's, bit
//! for bit). Where the f32 sum is used again (artifacts quantised with `--float-residuals`
//! keep identity shortcuts in f32, so the next block adds it), the op also writes it, as a
//! second output.

use tract_core::internal::*;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::element_wise::ElementWiseOp;
use tract_core::ops::quant::{DequantizeLinearF32, QuantizeLinearU8};

use super::int8_conv::Int8Conv;
use super::{on_tract_threads, relu_input, sole_successor};

/// `(q - zero) * scale` of one u8 input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dequant {
    pub scale: f32,
    pub zero: i32,
}

/// `s = [max](da + db, 0)`; `clamp(round_even(s * inv_scale) + zero, 0, 255)`, and `s`.
#[derive(Debug, Clone, PartialEq)]
pub struct Int8ResidualAdd {
    pub a: Dequant,
    /// `b` is u8 to dequantise, or f32 without.
    pub b: Option<Dequant>,
    pub relu: bool,
    /// Also output `s` (f32).
    pub float_output: bool,
    /// `1 / y_scale`, as tract's `QuantizeLinearU8` stores it.
    pub inv_scale: f32,
    pub zero: i32,
}

impl Eq for Int8ResidualAdd {}

impl Op for Int8ResidualAdd {
    fn name(&self) -> StaticName {
        "Int8ResidualAdd".into()
    }

    op_as_typed_op!();
}

impl Int8ResidualAdd {
    /// The type of the join's other operand: u8 to dequantise, or f32.
    pub(crate) fn b_type(&self) -> DatumType {
        if self.b.is_some() {
            u8::datum_type()
        } else {
            f32::datum_type()
        }
    }

    /// That operand's elements, as the join reads them.
    pub(crate) fn operand<'a>(&self, b: &PlainView<'a>) -> TractResult<B<'a>> {
        Ok(match self.b {
            Some(d) => B::Quantised(b.as_slice::<u8>()?, d),
            None => B::Float(b.as_slice::<f32>()?),
        })
    }

    /// The tensor for the f32 sum of an output of `shape`: empty without a float output.
    ///
    /// # Safety
    /// Uninitialised: the caller writes every element.
    pub(crate) unsafe fn sum_tensor(&self, shape: &[usize]) -> TractResult<Tensor> {
        let shape = if self.float_output { shape } else { &[0] };
        Tensor::uninitialized::<f32>(shape)
    }

    /// The op's outputs: `q`, and the sum when the op has a float output.
    pub(crate) fn outputs(&self, q: Tensor, sum: Tensor) -> TVec<TValue> {
        if self.float_output {
            tvec!(q.into_tvalue(), sum.into_tvalue())
        } else {
            tvec!(q.into_tvalue())
        }
    }

    /// The facts of [`Self::outputs`] for a `q` of `q_fact`.
    pub(crate) fn facts(&self, q_fact: TypedFact) -> TVec<TypedFact> {
        let sum = self.float_output.then(|| f32::fact(q_fact.shape.clone()));
        std::iter::once(q_fact).chain(sum).collect()
    }
}

/// The second operand of the join: u8 to dequantise, or f32.
#[derive(Clone, Copy)]
pub enum B<'a> {
    Quantised(&'a [u8], Dequant),
    Float(&'a [f32]),
}

impl<'a> B<'a> {
    pub(crate) fn len(self) -> usize {
        match self {
            B::Quantised(b, _) => b.len(),
            B::Float(b) => b.len(),
        }
    }

    /// Elements `at..at + n`.
    pub fn range(self, at: usize, n: usize) -> B<'a> {
        match self {
            B::Quantised(b, d) => B::Quantised(&b[at..at + n], d),
            B::Float(b) => B::Float(&b[at..at + n]),
        }
    }
}

/// One piece of the join; plain loops the compiler vectorises (with AVX2 where present).
#[inline(always)]
fn join_generic(op: &Int8ResidualAdd, a: &[u8], b: B, q: &mut [u8], s: Option<&mut [f32]>) {
    // Equal lengths up front, so the loops below vectorise without bounds checks.
    let n = q.len();
    let a = &a[..n];
    let b = b.range(0, n);
    let sum = |i: usize| {
        let da = (a[i] as i32 - op.a.zero) as f32 * op.a.scale;
        let db = match b {
            B::Quantised(b, d) => (b[i] as i32 - d.zero) as f32 * d.scale,
            B::Float(b) => b[i],
        };
        let v = da + db;
        if op.relu {
            v.max(0.0)
        } else {
            v
        }
    };
    let quantise = |v: f32| quantise_u8(v, op.inv_scale, op.zero);
    match s {
        Some(s) => {
            let s = &mut s[..n];
            for i in 0..n {
                let v = sum(i);
                s[i] = v;
                q[i] = quantise(v);
            }
        }
        None => (0..n).for_each(|i| q[i] = quantise(sum(i))),
    }
}

/// `q = quantise(s)`, `s = [relu](dequantise(a) + b)` over equal-length slices (`s` optional).
pub(crate) fn join(op: &Int8ResidualAdd, a: &[u8], b: B, q: &mut [u8], s: Option<&mut [f32]>) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { avx2::join(op, a, b, q, s) };
    }
    join_generic(op, a, b, q, s)
}

/// `clamp(round_ties_even(v * inv_scale) + zero, 0, 255)`, tract's `quantize_linear_f32_u8`:
/// what the join and `int8-quantize` end with. Where `v * inv_scale` leaves i32 the sum
/// saturates (as [`avx2::quantise8`] does) rather than overflowing as tract's does.
pub(crate) fn quantise_u8(v: f32, inv_scale: f32, zero: i32) -> u8 {
    let y = (v * inv_scale).round_ties_even() as i32;
    y.saturating_add(zero).clamp(0, 255) as u8
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::{Dequant, Int8ResidualAdd, B};
    use std::arch::x86_64::*;

    /// Eight u8 at `p`, widened to i32 lanes.
    #[inline(always)]
    pub unsafe fn load_u8x8(p: *const u8) -> __m256i {
        _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i))
    }

    /// `round_even((acc + offset) * multiplier) + y_zero` of eight i32 lanes: a conv's
    /// requantisation, still to be saturated to u8 (an out-of-range cvtps gives i32::MIN).
    #[inline(always)]
    pub unsafe fn requantise8(
        acc: __m256i,
        offset: __m256i,
        multiplier: __m256,
        y_zero: __m256i,
    ) -> __m256i {
        let v = _mm256_cvtepi32_ps(_mm256_add_epi32(acc, offset));
        // cvtps rounds by MXCSR: to nearest, ties to even.
        _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(v, multiplier)), y_zero)
    }

    /// Sixteen i32 lanes (`lo` then `hi`) saturated to u8, in order.
    #[inline(always)]
    pub unsafe fn pack_u8x16(lo: __m256i, hi: __m256i) -> __m128i {
        // packs works per 128-bit lane: [lo0-3 hi0-3 | lo4-7 hi4-7], reordered to 0..16.
        let words = _mm256_permute4x64_epi64(_mm256_packs_epi32(lo, hi), 0b11_01_10_00);
        let bytes = _mm256_permute4x64_epi64(_mm256_packus_epi16(words, words), 0b00_00_10_00);
        _mm256_castsi256_si128(bytes)
    }

    /// `(v - zero) * scale` of eight i32 lanes.
    #[inline(always)]
    pub unsafe fn dequantise(v: __m256i, d: Dequant) -> __m256 {
        let v = _mm256_sub_epi32(v, _mm256_set1_epi32(d.zero));
        _mm256_mul_ps(_mm256_cvtepi32_ps(v), _mm256_set1_ps(d.scale))
    }

    /// The join of eight lanes of dequantised operands: `v = [relu](da + db)`, stored at `sum`
    /// when given, and returned quantised (`round_even(v * inv_scale) + zero`) as i32 lanes for
    /// the caller's saturating pack to u8. The one definition [`join`] and the int8 conv's
    /// fused epilogue share, so both give [`join_generic`]'s results.
    #[inline(always)]
    pub unsafe fn join8(
        op: &Int8ResidualAdd,
        da: __m256,
        db: __m256,
        sum: Option<*mut f32>,
    ) -> __m256i {
        let mut v = _mm256_add_ps(da, db);
        if op.relu {
            v = _mm256_max_ps(v, _mm256_setzero_ps());
        }
        if let Some(sum) = sum {
            _mm256_storeu_ps(sum, v);
        }
        quantise8(v, op.inv_scale, op.zero)
    }

    /// [`super::quantise_u8`] of eight lanes, as i32 lanes for the caller's saturating pack to
    /// u8.
    #[inline(always)]
    pub unsafe fn quantise8(v: __m256, inv_scale: f32, zero: i32) -> __m256i {
        // Outside i32 cvtps would give i32::MIN; the u8 clamp makes any such value 0 or 255.
        let (lo, hi) = (_mm256_set1_ps(-1e9), _mm256_set1_ps(1e9));
        let scaled = _mm256_mul_ps(v, _mm256_set1_ps(inv_scale));
        // cvtps rounds by MXCSR: to nearest, ties to even, as tract's round_ties_to_even.
        let y = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(scaled, lo), hi));
        _mm256_add_epi32(y, _mm256_set1_epi32(zero))
    }

    /// [`join_generic`] eight elements at a time, the same f32 operations in the same order.
    ///
    /// # Safety
    /// AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub unsafe fn join(op: &Int8ResidualAdd, a: &[u8], b: B, q: &mut [u8], s: Option<&mut [f32]>) {
        let n = q.len();
        assert!(a.len() >= n && s.as_ref().is_none_or(|s| s.len() >= n));
        match b {
            B::Quantised(b, _) => assert!(b.len() >= n),
            B::Float(b) => assert!(b.len() >= n),
        }
        let s_ptr = s.map(|s| s.as_mut_ptr());
        let mut i = 0;
        while i + 8 <= n {
            let (s, q) = (s_ptr.map(|s| s.add(i)), q.as_mut_ptr().add(i));
            step8(op, a.as_ptr().add(i), b, i, s, q);
            i += 8;
        }
        if i == n {
            return;
        }
        // The last 1-7 elements as one more step through zero-padded copies (the scalar
        // rounding of `join_generic` is a libm call per element here).
        let rest = n - i;
        let mut ta = [0u8; 8];
        ta[..rest].copy_from_slice(&a[i..n]);
        let (mut tb, mut tf) = ([0u8; 8], [0f32; 8]);
        let b = match b {
            B::Quantised(b, d) => {
                tb[..rest].copy_from_slice(&b[i..n]);
                B::Quantised(&tb, d)
            }
            B::Float(b) => {
                tf[..rest].copy_from_slice(&b[i..n]);
                B::Float(&tf)
            }
        };
        let (mut ts, mut tq) = ([0f32; 8], [0u8; 8]);
        let sum = s_ptr.map(|_| ts.as_mut_ptr());
        step8(op, ta.as_ptr(), b, 0, sum, tq.as_mut_ptr());
        q[i..n].copy_from_slice(&tq[..rest]);
        if let Some(s) = s_ptr {
            std::ptr::copy_nonoverlapping(ts.as_ptr(), s.add(i), rest);
        }
    }

    /// One step of [`join`]: eight elements of `a` at `a`, of `b` from index `at`, the sum to
    /// `s` when given, the u8 result to `q`.
    ///
    /// # Safety
    /// AVX2; eight elements readable at `a`, in `b` from `at`, writable at `s` and `q`.
    #[inline(always)]
    unsafe fn step8(
        op: &Int8ResidualAdd,
        a: *const u8,
        b: B,
        at: usize,
        s: Option<*mut f32>,
        q: *mut u8,
    ) {
        let da = dequantise(load_u8x8(a), op.a);
        let db = match b {
            B::Quantised(b, d) => dequantise(load_u8x8(b.as_ptr().add(at)), d),
            B::Float(b) => _mm256_loadu_ps(b.as_ptr().add(at)),
        };
        let y = join8(op, da, db, s);
        let words = _mm_packs_epi32(_mm256_castsi256_si128(y), _mm256_extracti128_si256(y, 1));
        _mm_storel_epi64(q as *mut __m128i, _mm_packus_epi16(words, words));
    }
}

impl EvalOp for Int8ResidualAdd {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (a, b) = args_2!(inputs);
        ensure!(
            a.shape() == b.shape(),
            "Int8ResidualAdd shapes {:?} and {:?}",
            a.shape(),
            b.shape()
        );
        // SAFETY: plain numbers, and the pieces below write every element of both.
        let mut q = unsafe { Tensor::uninitialized::<u8>(a.shape())? };
        let mut s = unsafe { self.sum_tensor(a.shape())? };
        {
            let (a, b) = (a.try_as_plain_ram()?, b.try_as_plain_ram()?);
            let a = a.as_slice::<u8>()?;
            let b = self.operand(&b)?;
            let mut q_view = q.try_as_plain_ram_mut()?;
            let mut s_view = s.try_as_plain_ram_mut()?;
            let q = q_view.as_slice_mut::<u8>()?;
            let s = s_view.as_slice_mut::<f32>()?;
            const PIECE: usize = 1 << 14;
            let mut s_pieces = s.chunks_mut(PIECE);
            let pieces: Vec<_> = q
                .chunks_mut(PIECE)
                .enumerate()
                .map(|(i, q)| (i * PIECE, q, s_pieces.next()))
                .collect();
            on_tract_threads(pieces, |(at, q, s)| {
                let n = q.len();
                join(self, &a[at..at + n], b.range(at, n), q, s)
            });
        }
        Ok(self.outputs(q, s))
    }
}

impl TypedOp for Int8ResidualAdd {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 2 && inputs[0].shape == inputs[1].shape);
        ensure!(inputs[0].datum_type == u8::datum_type() && inputs[1].datum_type == self.b_type());
        Ok(self.facts(u8::fact(inputs[0].shape.clone())))
    }

    as_op!();
}

/// The u8 input and parameters of a `DequantizeLinearF32` producing `outlet`.
fn dequantised(model: &TypedModel, outlet: OutletId) -> Option<(OutletId, Dequant)> {
    let node = model.node(outlet.node);
    let op = node.op_as::<DequantizeLinearF32>()?;
    let input = *node.inputs.first()?;
    (model.outlet_fact(input).ok()?.datum_type == u8::datum_type()).then_some((
        input,
        Dequant {
            scale: op.scale,
            zero: op.zero_point,
        },
    ))
}

/// The `Int8Conv` producing `a` when the join can run in its epilogue: a requantising conv
/// not yet fused, whose output only this join reads (through `dequantised`, which only the
/// `Add` reads), so nothing else needs the u8 tensor the fusion no longer writes.
fn fusable_conv(
    model: &TypedModel,
    a: OutletId,
    dequantised: OutletId,
    add: OutletId,
) -> Option<&Int8Conv> {
    let conv = model.node(a.node).op_as::<Int8Conv>()?;
    let only_reader =
        |outlet, reader: usize| sole_successor(model, outlet).is_some_and(|s| s.id == reader);
    (conv.join.is_none()
        && conv.weights.requantised()
        && only_reader(a, dequantised.node)
        && only_reader(dequantised, add.node))
    .then_some(conv)
}

/// The rule, rooted at the `QuantizeLinearU8`: its input a ReLU of an `Add` (or the `Add`),
/// the `Add` the ReLU's only input user, of a dequantised u8 tensor and a same-shaped
/// dequantised u8 or f32 tensor. Other users of the ReLU's output read the op's f32 output.
/// Where `a` comes straight from an [`Int8Conv`] (int8-conv ran first), the join becomes that
/// conv's epilogue: the u8 `a` is never written out and read back, and the join's memory
/// traffic overlaps the conv's arithmetic instead of taking a pass of its own.
pub fn rewrite(model: &TypedModel, node: &TypedNode) -> TractResult<Option<TypedModelPatch>> {
    let Some(quantize) = node
        .op_as::<ElementWiseOp>()
        .and_then(|op| op.0.downcast_ref::<QuantizeLinearU8>())
    else {
        return Ok(None);
    };
    let Some(&input) = node.inputs.first() else {
        return Ok(None);
    };
    // `Add -> ReLU -> Quantize` or `Add -> Quantize`.
    let producer = model.node(input.node);
    let (add, relu) = match relu_input(model, producer) {
        Some(x) => (x, true),
        None => (input, false),
    };
    if relu && sole_successor(model, add).is_none_or(|s| s.id != producer.id) {
        return Ok(None);
    }
    let add_node = model.node(add.node);
    let is_add = add_node
        .op_as::<TypedBinOp>()
        .is_some_and(|op| op.0.is::<tract_core::ops::math::Add>());
    if !is_add || add_node.inputs.len() != 2 {
        return Ok(None);
    }
    let (x0, x1) = (add_node.inputs[0], add_node.inputs[1]);
    let fusable =
        |x: OutletId, (a, _): (OutletId, Dequant)| fusable_conv(model, a, x, add).is_some();
    // `(dequantised a, (a, its dequantisation), (b, its dequantisation if u8))`, `a` the side
    // whose conv can take the join when only one can.
    let (x_a, (a, da), (b, db)) = match (dequantised(model, x0), dequantised(model, x1)) {
        (Some(q0), Some(q1)) if fusable(x0, q0) || !fusable(x1, q1) => (x0, q0, (q1.0, Some(q1.1))),
        (Some(q0), Some(q1)) => (x1, q1, (q0.0, Some(q0.1))),
        (Some(q0), None) => (x0, q0, (x1, None)),
        (None, Some(q1)) => (x1, q1, (x0, None)),
        (None, None) => return Ok(None),
    };
    let b_fact = model.outlet_fact(b)?;
    let shape = &model.outlet_fact(add)?.shape;
    if model.outlet_fact(a)?.shape != *shape
        || b_fact.shape != *shape
        || (db.is_none() && (b_fact.datum_type != f32::datum_type() || b_fact.konst.is_some()))
    {
        return Ok(None);
    }
    let float_output = model.outputs.contains(&input) || model.outlet_successors(input).len() > 1;
    let op = Int8ResidualAdd {
        a: da,
        b: db,
        relu,
        float_output,
        inv_scale: quantize.scale,
        zero: quantize.zero_point as i32,
    };
    let mut patch = TypedModelPatch::default();
    let outputs = match fusable_conv(model, a, x_a, add) {
        // The conv's input and `b` in, the join in the conv's epilogue.
        Some(conv) => {
            let x = patch.tap_model(model, model.node(a.node).inputs[0])?;
            let b = patch.tap_model(model, b)?;
            let fused = Int8Conv {
                join: Some(op),
                ..conv.clone()
            };
            patch.wire_node(&model.node(a.node).name, fused, &[x, b])?
        }
        None => {
            let a = patch.tap_model(model, a)?;
            let b = patch.tap_model(model, b)?;
            patch.wire_node(&node.name, op, &[a, b])?
        }
    };
    patch.shunt_outside(model, node.id.into(), outputs[0])?;
    if float_output {
        patch.shunt_outside(model, input, outputs[1])?;
    }
    Ok(Some(patch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::rewrite::int8_conv::tests::qconv_scaled;
    use crate::transform::rewrite::{apply, test_bytes, wire_relu, Rewrite, Rewrites};
    use tract_core::ops::quant::quantize_linear_u8;

    /// `Quantize([ReLU](Dequantize(a) + b))` as tract's int8 import leaves it, `b` u8 and
    /// dequantised or f32; with `reused`, the f32 sum is a model output too.
    fn join_graph(shape: &[usize], relu: bool, b_float: bool, reused: bool) -> TypedModel {
        let mut model = TypedModel::default();
        let a = model.add_source("a", u8::fact(shape)).unwrap();
        let da = model
            .wire_node("da", DequantizeLinearF32::new(0.03, 120), &[a])
            .unwrap()[0];
        let db = if b_float {
            model.add_source("b", f32::fact(shape)).unwrap()
        } else {
            let b = model.add_source("b", u8::fact(shape)).unwrap();
            model
                .wire_node("db", DequantizeLinearF32::new(0.011, 3), &[b])
                .unwrap()[0]
        };
        let mut y = model
            .wire_node("add", tract_core::ops::math::add(), &[da, db])
            .unwrap()[0];
        if relu {
            y = wire_relu(&mut model, y);
        }
        let q = model
            .wire_node("q", quantize_linear_u8(1.0 / 0.025, 7), &[y])
            .unwrap()[0];
        let outputs = if reused { vec![q, y] } else { vec![q] };
        model.select_output_outlets(&outputs).unwrap();
        model
    }

    fn run(model: TypedModel, shape: &[usize]) -> Vec<Tensor> {
        let len: usize = shape.iter().product();
        let a: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
        let b: Tensor = match model.input_fact(1).unwrap().datum_type {
            dt if dt == u8::datum_type() => {
                let b: Vec<u8> = (0..len).map(|i| (i * 101 % 253) as u8).collect();
                Tensor::from_shape(shape, &b).unwrap()
            }
            _ => {
                let b: Vec<f32> = (0..len).map(|i| (i % 97) as f32 * 0.07 - 2.5).collect();
                Tensor::from_shape(shape, &b).unwrap()
            }
        };
        let inputs = tvec!(Tensor::from_shape(shape, &a).unwrap().into(), b.into());
        let out = model
            .into_optimized()
            .unwrap()
            .into_runnable()
            .unwrap()
            .run(inputs)
            .unwrap();
        out.into_iter().map(|t| t.into_tensor()).collect()
    }

    #[test]
    fn matches_tract_bit_for_bit() {
        // Odd-sized, so the scalar tail after the vector loop is compared too.
        let shape = [1, 23, 37, 41];
        for (relu, b_float, reused) in [
            (true, false, false),
            (false, false, false),
            (true, true, true),
            (false, true, true),
        ] {
            let case = format!("relu {relu}, f32 shortcut {b_float}, sum reused {reused}");
            let reference = join_graph(&shape, relu, b_float, reused);
            let (rewritten, report) = apply(reference.clone(), &Rewrites::all()).unwrap();
            assert_eq!(report.count(Rewrite::Int8Residual), 1, "{case}");
            assert_eq!(
                rewritten.nodes().len(),
                3,
                "{case}: sources and the join only"
            );
            let want = run(reference, &shape);
            assert_eq!(want, run(rewritten, &shape), "{case}");
            // The inputs reach both clamps (the ReLU's at the zero point, 7), so saturation
            // is part of the comparison.
            let q = want[0].try_as_plain_ram().unwrap();
            let q = q.as_slice::<u8>().unwrap();
            let low = if relu { 7 } else { 0 };
            assert!(q.contains(&low) && q.contains(&255), "{case}");
        }
    }

    /// A quantised conv (tract's, before `int8-conv`) of `x_shape` feeding the join with a u8
    /// or f32 `b`: the pattern fused into the conv's epilogue. With `reused` the f32 sum is a
    /// model output too.
    fn conv_join_graph(
        x_shape: &[usize],
        k: usize,
        m: usize,
        b_float: bool,
        reused: bool,
    ) -> TypedModel {
        // An output scale that saturates the conv's u8 output at both ends.
        let mut model = qconv_scaled(x_shape, m, k, 1, k / 2, 64, 0.004);
        let y = model.outputs[0];
        let shape = model.outlet_fact(y).unwrap().shape.clone();
        // The conv's own output quantisation, as tract's import dequantises it.
        let da = model
            .wire_node("da", DequantizeLinearF32::new(0.004, 30), &[y])
            .unwrap()[0];
        let db = if b_float {
            model
                .add_source("shortcut", f32::fact(shape.clone()))
                .unwrap()
        } else {
            let b = model
                .add_source("shortcut", u8::fact(shape.clone()))
                .unwrap();
            model
                .wire_node("db", DequantizeLinearF32::new(0.04, 100), &[b])
                .unwrap()[0]
        };
        let sum = model
            .wire_node("add", tract_core::ops::math::add(), &[db, da])
            .unwrap()[0];
        let relu = wire_relu(&mut model, sum);
        let q = model
            .wire_node("q", quantize_linear_u8(1.0 / 0.06, 2), &[relu])
            .unwrap()[0];
        let outputs = if reused { vec![q, relu] } else { vec![q] };
        model.select_output_outlets(&outputs).unwrap();
        model
    }

    fn run_conv_join(model: &TypedModel) -> Vec<Tensor> {
        let x = model
            .input_fact(0)
            .unwrap()
            .shape
            .as_concrete()
            .unwrap()
            .to_vec();
        let b = model.input_fact(1).unwrap().clone();
        let b_shape = b.shape.as_concrete().unwrap().to_vec();
        let len: usize = b_shape.iter().product();
        let b = if b.datum_type == u8::datum_type() {
            Tensor::from_shape(&b_shape, &test_bytes(len, 11)).unwrap()
        } else {
            let v: Vec<f32> = (0..len).map(|i| (i % 89) as f32 * 0.11 - 4.0).collect();
            Tensor::from_shape(&b_shape, &v).unwrap()
        };
        let x = Tensor::from_shape(&x, &test_bytes(x.iter().product(), 3)).unwrap();
        let plan = model
            .clone()
            .into_optimized()
            .unwrap()
            .into_runnable()
            .unwrap();
        let out = plan.run(tvec!(x.into(), b.into())).unwrap();
        out.into_iter().map(|t| t.into_tensor()).collect()
    }

    #[test]
    fn fused_into_the_conv_matches_the_join_on_its_own() {
        if !crate::transform::rewrite::int8_conv::kernel::available() {
            eprintln!("no AVX2: int8-conv does not fire, so there is nothing to fuse into");
            return;
        }
        // A padded 3x3 conv (ResNet-18's second conv, phase-plane rows with dropped columns),
        // the same over 16 channels (the channels-last kernel: whole and partial tiles), and a
        // 1x1 (ResNet-50's third, decluttered to an EinSum); u8 and f32 shortcuts.
        for (x_shape, k, m, b_float, reused) in [
            ([1, 5, 9, 13], 3, 8, false, false),
            ([1, 5, 9, 13], 3, 8, true, true),
            ([2, 16, 9, 7], 3, 20, false, false),
            ([1, 16, 9, 7], 3, 20, true, true),
            ([2, 12, 7, 6], 1, 8, true, false),
            ([1, 12, 7, 6], 1, 8, false, true),
        ] {
            let case = format!("{x_shape:?} {k}x{k}, f32 shortcut {b_float}, sum reused {reused}");
            let mut reference = conv_join_graph(&x_shape, k, m, b_float, reused);
            reference.declutter().unwrap();
            let (fused, report) = apply(reference.clone(), &Rewrites::all()).unwrap();
            assert_eq!(report.count(Rewrite::Int8Residual), 1, "{case}");
            let fused_ops: Vec<_> = fused.nodes().iter().map(|n| n.op().name()).collect();
            assert!(
                fused_ops.iter().any(|n| n == "Int8Conv+Join")
                    && !fused_ops.iter().any(|n| n == "Int8ResidualAdd"),
                "{case}: {fused_ops:?}"
            );
            // The same conv kernel with the join left to tract's ops, which the test above
            // shows the unfused join matches bit for bit.
            let (separate, _) = apply(
                reference.clone(),
                &Rewrites::all().without("int8-residual").unwrap(),
            )
            .unwrap();
            let (want, got) = (run_conv_join(&separate), run_conv_join(&fused));
            assert_eq!(want, got, "{case}");
            let conv_alone = {
                let mut conv = separate.clone();
                let conv_out = conv.node_by_name("da").unwrap().inputs[0];
                conv.select_output_outlets(&[conv_out]).unwrap();
                let conv_q = run_conv_join(&conv).remove(0);
                conv_q
                    .try_as_plain_ram()
                    .unwrap()
                    .as_slice::<u8>()
                    .unwrap()
                    .to_vec()
            };
            assert!(
                conv_alone.contains(&0) && conv_alone.contains(&255),
                "{case}: no saturation"
            );
            let q = got[0].try_as_plain_ram().unwrap();
            let q = q.as_slice::<u8>().unwrap();
            assert!(q.contains(&2) && q.iter().filter(|&&v| v != q[0]).count() > q.len() / 2);
            // And tract's whole graph within its requantisation rounding (one step of the
            // conv's output, times the join's scale ratio, plus the join's own rounding).
            let tract = run_conv_join(&reference);
            let tract_q = tract[0].try_as_plain_ram().unwrap();
            let worst = tract_q
                .as_slice::<u8>()
                .unwrap()
                .iter()
                .zip(q)
                .map(|(a, b)| (*a as i32 - *b as i32).abs())
                .max();
            assert!(worst <= Some(2), "{case}: off by {worst:?}");
        }
    }

    #[test]
    fn leaves_a_sum_used_before_its_relu() {
        let mut model = join_graph(&[1, 4, 5, 5], true, false, false);
        let add = model.node_by_name("add").unwrap().id;
        let q = model.outputs[0];
        model
            .select_output_outlets(&[q, OutletId::new(add, 0)])
            .unwrap();
        let (_, report) = apply(model, &Rewrites::all()).unwrap();
        assert_eq!(report.count(Rewrite::Int8Residual), 0);
    }
}
