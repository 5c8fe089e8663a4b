//! `max-pool`: tract's 2D `MaxPool` (the ResNet stem's 3x3/2 pad-1 pool) on u8 or f32, its
//! channel planes split over the plan's threads.
//!
//! Why: tract's `OptMaxPool` folds each tap into an output row with a strided walk, on one
//! thread: `profile` gave it ~2 ms (u8) and ~2.4 ms (f32) of a ResNet-50 inference, 3-4%.
//! Here each plane is copied into a buffer padded with the fold's starting value (which never
//! wins, so padding takes no part, with no edge cases), an output row is computed at every
//! window start (stride 1: the taps are contiguous slices the compiler vectorises) and every
//! stride-th start kept. The taps fold in tract's order with tract's comparison, so the
//! outputs are tract's bit for bit (see [`MaxPool2d`]).

use tract_core::internal::*;
use tract_core::ops::cnn::MaxPool;
use tract_core::ops::nn::DataFormat;

use super::{all_ones, on_tract_threads_in_runs};

/// A 2D max-pool over `[N, C, H, W]` or `[C, H, W]`: each output is the max over its window's
/// in-bounds taps (padding takes no part).
///
/// As tract's `OptMaxPool` (its general path), taps fold row by row from the type's lowest
/// finite value with `if acc < tap { tap }`: a window wholly in the padding gives 0 (u8) or
/// `f32::MIN`, NaN taps are skipped, `-inf` comes out as `f32::MIN`, and of equal maxima
/// (`-0.0` and `0.0`) the first in row-major order is kept. tract's own 2x2 f32 NCHW path uses
/// `f32::max` and, at stride 1, `maxps`, so it can differ from this (and from its general
/// path) on NaN, `-inf` and the sign of a zero maximum.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MaxPool2d {
    pub channels: usize,
    /// Input `(h, w)`.
    pub hw: (usize, usize),
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    /// Padding before, `(top, left)`; what lies past the input after it is never read.
    pub pad: (usize, usize),
    /// Output `(h, w)`.
    pub out: (usize, usize),
}

impl Op for MaxPool2d {
    fn name(&self) -> StaticName {
        "MaxPool2d".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "kernel {:?}, stride {:?}, pad {:?}, {:?} -> {:?}",
            self.kernel, self.stride, self.pad, self.hw, self.out
        )])
    }

    op_as_typed_op!();
}

/// The element types pooled, with the value tract's fold starts from.
trait Pooled: Datum + Copy + PartialOrd {
    const LOWEST: Self;
}

impl Pooled for u8 {
    const LOWEST: u8 = 0;
}

impl Pooled for f32 {
    const LOWEST: f32 = f32::MIN;
}

impl MaxPool2d {
    /// The output shape for `input`, checked against the geometry.
    fn output_shape<D: DimLike>(&self, input: &[D]) -> TractResult<TVec<D>> {
        let rank = input.len();
        ensure!(
            (rank == 3 || rank == 4)
                && input[rank - 3] == self.channels.into()
                && input[rank - 2] == self.hw.0.into()
                && input[rank - 1] == self.hw.1.into(),
            "MaxPool2d over {:?} given {input:?}",
            (self.channels, self.hw)
        );
        let mut shape: TVec<D> = input.into();
        shape[rank - 2] = self.out.0.into();
        shape[rank - 1] = self.out.1.into();
        Ok(shape)
    }

    /// Window starts per output row: all of them, stride 1, so taps read contiguously.
    fn starts(&self) -> usize {
        self.out.1 * self.stride.1
    }

    /// The padded plane the windows read: every row and column of every window.
    fn padded(&self) -> (usize, usize) {
        let rows = (self.out.0.saturating_sub(1)) * self.stride.0 + self.kernel.0;
        (rows, self.starts() + self.kernel.1.saturating_sub(1))
    }

    fn pool<T: Pooled>(&self, input: &Tensor, output: &mut Tensor) -> TractResult<()> {
        let input = input.try_as_plain_ram()?;
        let input = input.as_slice::<T>()?;
        let mut output = output.try_as_plain_ram_mut()?;
        let output = output.as_slice_mut::<T>()?;
        let (plane_in, plane_out) = (self.hw.0 * self.hw.1, self.out.0 * self.out.1);
        if plane_out == 0 {
            return Ok(());
        }
        ensure!(plane_in > 0 && input.len() / plane_in == output.len() / plane_out);
        let planes: Vec<_> = input
            .chunks_exact(plane_in)
            .zip(output.chunks_exact_mut(plane_out))
            .collect();
        on_tract_threads_in_runs(planes, |run| {
            // The padding stays `LOWEST`, which never wins a window: as if it were not there.
            let (ph, pw) = self.padded();
            let mut padded = vec![T::LOWEST; ph * pw];
            let mut starts = vec![T::LOWEST; self.starts()];
            for (input, output) in run {
                plane(self, input, output, &mut padded, &mut starts);
            }
        });
        Ok(())
    }
}

/// `max(acc, tap)` as tract compares: a NaN tap never wins, a tie keeps `acc`.
#[inline(always)]
fn pick<T: Pooled>(acc: T, tap: T) -> T {
    if acc < tap {
        tap
    } else {
        acc
    }
}

/// `acc[j] = pick(acc[j], taps[j])`.
#[inline(always)]
fn fold<T: Pooled>(acc: &mut [T], taps: &[T]) {
    // Equal lengths up front, so the loop vectorises without bounds checks.
    let taps = &taps[..acc.len()];
    for (a, &t) in acc.iter_mut().zip(taps) {
        *a = pick(*a, t);
    }
}

/// `out[j]`, the 3x3 window from column `j` of three rows (`rows[0]` first), in one pass: nine
/// loads and a store per start, which vectorises on every target (folding `out` in place nine
/// times costs more loads and stores, and AVX2 builds turn it into slow masked stores).
#[inline(always)]
fn window_3x3<T: Pooled>(rows: [&[T]; 3], out: &mut [T]) {
    let n = out.len();
    let [r0, r1, r2] = rows;
    // Every tap slice `n` long, so the loop has no bounds checks.
    let (a0, a1, a2) = (&r0[..n], &r0[1..][..n], &r0[2..][..n]);
    let (b0, b1, b2) = (&r1[..n], &r1[1..][..n], &r1[2..][..n]);
    let (c0, c1, c2) = (&r2[..n], &r2[1..][..n], &r2[2..][..n]);
    for j in 0..n {
        let mut m = pick(T::LOWEST, a0[j]);
        for tap in [a1[j], a2[j], b0[j], b1[j], b2[j], c0[j], c1[j], c2[j]] {
            m = pick(m, tap);
        }
        out[j] = m;
    }
}

/// One channel plane. It is copied into `padded`, which must be `LOWEST` elsewhere (only the
/// plane's cells are ever written); then per output row, every window start folds its taps in
/// row-major order, and every stride-th start is an output.
#[inline(always)]
fn plane_generic<T: Pooled>(
    op: &MaxPool2d,
    input: &[T],
    output: &mut [T],
    padded: &mut [T],
    starts: &mut [T],
) {
    let (w, (kh, kw), (sh, sw), (pt, pl)) = (op.hw.1, op.kernel, op.stride, op.pad);
    let (ph, pw) = op.padded();
    let padded = &mut padded[..ph * pw];
    // Input rows and columns past the last window are never read (ceil-mode pools).
    let len = w.min(pw.saturating_sub(pl));
    for (row, padded_row) in input
        .chunks_exact(w)
        .zip(padded.chunks_exact_mut(pw).skip(pt))
    {
        if let Some(interior) = padded_row.get_mut(pl..pl + len) {
            interior.copy_from_slice(&row[..len]);
        }
    }
    let starts = &mut starts[..op.starts()];
    for (oy, out_row) in output.chunks_exact_mut(op.out.1).enumerate() {
        let rows = &padded[oy * sh * pw..][..kh * pw];
        if (kh, kw) == (3, 3) {
            let (r0, rest) = rows.split_at(pw);
            let (r1, r2) = rest.split_at(pw);
            window_3x3([r0, r1, r2], starts);
        } else {
            starts.fill(T::LOWEST);
            for row in rows.chunks_exact(pw) {
                for kx in 0..kw {
                    fold(starts, &row[kx..]);
                }
            }
        }
        match sw {
            1 => out_row.copy_from_slice(starts),
            // A constant stride, which the compiler vectorises.
            2 => {
                for (o, pair) in out_row.iter_mut().zip(starts.chunks_exact(2)) {
                    *o = pair[0];
                }
            }
            _ => {
                for (o, run) in out_row.iter_mut().zip(starts.chunks_exact(sw)) {
                    *o = run[0];
                }
            }
        }
    }
}

fn plane<T: Pooled>(
    op: &MaxPool2d,
    input: &[T],
    output: &mut [T],
    padded: &mut [T],
    starts: &mut [T],
) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { plane_avx2(op, input, output, padded, starts) };
    }
    plane_generic(op, input, output, padded, starts)
}

/// [`plane_generic`] compiled for AVX2: the same code, twice the vector width.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn plane_avx2<T: Pooled>(
    op: &MaxPool2d,
    input: &[T],
    output: &mut [T],
    padded: &mut [T],
    starts: &mut [T],
) {
    plane_generic(op, input, output, padded, starts)
}

impl EvalOp for MaxPool2d {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let shape = self.output_shape(input.shape())?;
        let dt = input.datum_type();
        // SAFETY: plain numbers, and `pool` writes every element (each output row is filled
        // or picked whole).
        let mut output = unsafe { Tensor::uninitialized_dt(dt, &shape)? };
        if dt == u8::datum_type() {
            self.pool::<u8>(&input, &mut output)?;
        } else if dt == f32::datum_type() {
            self.pool::<f32>(&input, &mut output)?;
        } else {
            bail!("MaxPool2d on {dt:?}");
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for MaxPool2d {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 1);
        let dt = inputs[0].datum_type;
        ensure!(dt == u8::datum_type() || dt == f32::datum_type());
        Ok(tvec!(dt.fact(self.output_shape(&inputs[0].shape)?)))
    }

    as_op!();
}

/// The rule, at a `MaxPool`: 2D, NCHW or CHW, undilated, no index output, a concrete u8 or f32
/// input and a non-empty output.
pub fn rewrite(model: &TypedModel, node: &TypedNode) -> TractResult<Option<TypedModelPatch>> {
    let Some(pool) = node.op_as::<MaxPool>() else {
        return Ok(None);
    };
    let spec = &pool.pool_spec;
    if pool.with_index_outputs.is_some()
        || spec.kernel_shape.len() != 2
        || !all_ones(&spec.dilations)
        || node.inputs.len() != 1
    {
        return Ok(None);
    }
    let fact = model.outlet_fact(node.inputs[0])?;
    if fact.datum_type != u8::datum_type() && fact.datum_type != f32::datum_type() {
        return Ok(None);
    }
    let Some(shape) = fact.shape.as_concrete() else {
        return Ok(None);
    };
    let (channels, h, w) = match (spec.data_format, shape) {
        (DataFormat::NCHW, &[_, c, h, w]) | (DataFormat::CHW, &[c, h, w]) => (c, h, w),
        _ => return Ok(None),
    };
    let strides = spec.strides();
    let padding = spec.computed_padding(&[h, w]);
    let op = MaxPool2d {
        channels,
        hw: (h, w),
        kernel: (spec.kernel_shape[0], spec.kernel_shape[1]),
        stride: (strides[0], strides[1]),
        pad: (padding[0].pad_before, padding[1].pad_before),
        out: (padding[0].convoluted, padding[1].convoluted),
    };
    let Ok(output_shape) = op.output_shape(shape) else {
        return Ok(None);
    };
    let (k, st, out) = (op.kernel, op.stride, op.out);
    let empty = [h, w, k.0, k.1, st.0, st.1, out.0, out.1].contains(&0);
    if empty || node.outputs[0].fact.shape.as_concrete() != Some(&output_shape[..]) {
        return Ok(None);
    }
    let mut patch = TypedModelPatch::default();
    let input = patch.tap_model(model, node.inputs[0])?;
    let output = patch.wire_node(&node.name, op, &[input])?[0];
    patch.shunt_outside(model, node.id.into(), output)?;
    Ok(Some(patch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::rewrite::{apply, test_bytes, Rewrite, Rewrites};
    use tract_core::ops::cnn::{PaddingSpec, PoolSpec};
    use tract_linalg::multithread::{multithread_tract_scope, Executor};

    /// One tract `MaxPool` over a `dt` input of `shape`.
    fn pool_graph(
        dt: DatumType,
        shape: &[usize],
        format: DataFormat,
        kernel: [usize; 2],
        strides: [usize; 2],
        padding: PaddingSpec,
        with_index_outputs: Option<DatumType>,
    ) -> TypedModel {
        let c = *format.shape(shape).unwrap().c();
        let pool_spec = PoolSpec {
            data_format: format,
            kernel_shape: kernel[..].into(),
            padding,
            dilations: None,
            strides: Some(strides[..].into()),
            input_channels: c,
            output_channels: c,
        };
        let op = MaxPool {
            pool_spec,
            with_index_outputs,
        };
        let mut model = TypedModel::default();
        let x = model.add_source("x", dt.fact(shape)).unwrap();
        let y = model.wire_node("pool", op, &[x]).unwrap();
        model.select_output_outlets(&y).unwrap();
        model
    }

    /// Spread inputs: all 256 u8 values, or f32 of both signs with repeats.
    fn input(dt: DatumType, shape: &[usize], seed: u32) -> Tensor {
        let bytes = test_bytes(shape.iter().product(), seed);
        if dt == u8::datum_type() {
            Tensor::from_shape(shape, &bytes).unwrap()
        } else {
            let v: Vec<f32> = bytes.iter().map(|&b| (b as f32 - 200.0) * 0.37).collect();
            Tensor::from_shape(shape, &v).unwrap()
        }
    }

    fn run(model: TypedModel, input: &Tensor, threads: usize) -> Tensor {
        let plan = model.into_optimized().unwrap().into_runnable().unwrap();
        let executor = match threads {
            1 => Executor::SingleThread,
            n => Executor::multithread(n),
        };
        let out = multithread_tract_scope(executor, || plan.run(tvec!(input.clone().into())));
        out.unwrap().remove(0).into_tensor()
    }

    /// The output's bits, so NaN and the sign of zero count.
    fn bits(t: &Tensor) -> Vec<u32> {
        let t = t.try_as_plain_ram().unwrap();
        if let Ok(v) = t.as_slice::<f32>() {
            v.iter().map(|x| x.to_bits()).collect()
        } else {
            t.as_slice::<u8>()
                .unwrap()
                .iter()
                .map(|&x| x as u32)
                .collect()
        }
    }

    /// The rule fires once, leaves no `MaxPool`, and gives tract's outputs bit for bit, on
    /// one thread and on three.
    fn check(reference: TypedModel, input: &Tensor, case: &str) -> Tensor {
        let (rewritten, report) = apply(reference.clone(), &Rewrites::all()).unwrap();
        assert_eq!(report.count(Rewrite::MaxPool), 1, "{case}");
        assert!(
            rewritten.nodes().iter().all(|n| !n.op_is::<MaxPool>()),
            "{case}"
        );
        let want = run(reference, input, 1);
        assert_eq!(
            rewritten.output_fact(0).unwrap().shape.as_concrete(),
            Some(want.shape()),
            "{case}"
        );
        for threads in [1, 3] {
            let got = run(rewritten.clone(), input, threads);
            assert_eq!(got.shape(), want.shape(), "{case}, {threads} threads");
            assert_eq!(bits(&got), bits(&want), "{case}, {threads} threads");
        }
        want
    }

    fn explicit(before: [usize; 2], after: [usize; 2]) -> PaddingSpec {
        PaddingSpec::Explicit(before[..].into(), after[..].into())
    }

    #[test]
    fn resnet_stem_pool_matches_tract() {
        for dt in [u8::datum_type(), f32::datum_type()] {
            for shape in [[1, 5, 17, 16], [1, 5, 16, 17], [2, 3, 9, 10], [1, 2, 4, 4]] {
                let case = format!("{dt:?} {shape:?}");
                let model = pool_graph(
                    dt,
                    &shape,
                    DataFormat::NCHW,
                    [3, 3],
                    [2, 2],
                    explicit([1, 1], [1, 1]),
                    None,
                );
                let want = check(model, &input(dt, &shape, 7), &case);
                let (oh, ow) = (shape[2].div_ceil(2), shape[3].div_ceil(2));
                assert_eq!(want.shape(), [shape[0], shape[1], oh, ow], "{case}");
            }
        }
    }

    #[test]
    fn padding_takes_no_part() {
        // All negative, so a zero padding value would win at every border.
        let shape = [1, 2, 7, 6];
        let v: Vec<f32> = test_bytes(84, 3).iter().map(|&b| -1.0 - b as f32).collect();
        let input = Tensor::from_shape(&shape, &v).unwrap();
        let model = pool_graph(
            f32::datum_type(),
            &shape,
            DataFormat::NCHW,
            [3, 3],
            [2, 2],
            explicit([1, 1], [1, 1]),
            None,
        );
        let want = check(model, &input, "negative f32");
        let want = want.try_as_plain_ram().unwrap();
        assert!(want.as_slice::<f32>().unwrap().iter().all(|&x| x < 0.0));
    }

    #[test]
    fn chw_and_other_geometries_match_tract() {
        /// Input shape, layout, kernel, strides, padding.
        type Case = (
            &'static [usize],
            DataFormat,
            [usize; 2],
            [usize; 2],
            PaddingSpec,
        );
        let cases: [Case; 7] = [
            (
                &[5, 17, 16],
                DataFormat::CHW,
                [3, 3],
                [2, 2],
                explicit([1, 1], [1, 1]),
            ),
            (
                &[1, 4, 10, 12],
                DataFormat::NCHW,
                [2, 2],
                [2, 2],
                PaddingSpec::Valid,
            ),
            (
                &[2, 3, 11, 13],
                DataFormat::NCHW,
                [2, 2],
                [2, 2],
                PaddingSpec::Valid,
            ),
            (
                &[1, 3, 11, 13],
                DataFormat::NCHW,
                [3, 2],
                [1, 3],
                explicit([0, 2], [2, 1]),
            ),
            (
                &[1, 3, 10, 12],
                DataFormat::NCHW,
                [3, 3],
                [2, 2],
                PaddingSpec::SameUpper,
            ),
            (
                &[1, 3, 8, 9],
                DataFormat::NCHW,
                [2, 2],
                [1, 1],
                explicit([0, 0], [1, 1]),
            ),
            (
                &[3, 10, 9],
                DataFormat::CHW,
                [3, 3],
                [2, 2],
                PaddingSpec::ExplicitOnnxPool(tvec![1, 0], tvec![0, 1], true),
            ),
        ];
        for dt in [u8::datum_type(), f32::datum_type()] {
            for (shape, format, kernel, strides, padding) in cases.clone() {
                let case =
                    format!("{dt:?} {shape:?} {format:?} k{kernel:?} s{strides:?} {padding:?}");
                let model = pool_graph(dt, shape, format, kernel, strides, padding, None);
                check(model, &input(dt, shape, 11), &case);
            }
        }
    }

    #[test]
    fn windows_wholly_in_the_padding_give_the_lowest_value() {
        // Two rows and three columns of padding before a 2x2 stride-2 kernel: the first
        // output row and column see no input, the second ones some.
        for (dt, lowest) in [
            (u8::datum_type(), 0),
            (f32::datum_type(), f32::MIN.to_bits()),
        ] {
            let shape = [1, 2, 5, 6];
            let model = pool_graph(
                dt,
                &shape,
                DataFormat::NCHW,
                [2, 2],
                [2, 2],
                explicit([2, 3], [0, 0]),
                None,
            );
            let mut x = input(dt, &shape, 5);
            if dt == u8::datum_type() {
                // Nothing at 0, so only the padding can give it.
                let mut plain = x.try_as_plain_ram_mut().unwrap();
                plain
                    .as_slice_mut::<u8>()
                    .unwrap()
                    .iter_mut()
                    .for_each(|v| *v |= 1);
            }
            let want = check(model, &x, &format!("{dt:?}"));
            let (oh, ow) = (want.shape()[2], want.shape()[3]);
            let got = bits(&want);
            for (i, &v) in got.iter().enumerate() {
                let (oy, ox) = (i / ow % oh, i % ow);
                assert_eq!(v == lowest, oy == 0 || ox == 0, "{dt:?} at {oy},{ox}");
            }
        }
    }

    #[test]
    fn nan_infinities_and_signed_zeros_as_tract() {
        let shape = [1, 3, 9, 10];
        let specials = [
            f32::NAN,
            f32::NEG_INFINITY,
            f32::INFINITY,
            0.0,
            -0.0,
            f32::MIN,
        ];
        let mut v: Vec<f32> = test_bytes(270, 9)
            .iter()
            .map(|&b| match b % 8 {
                0..=5 => specials[b as usize % 8],
                _ => -(b as f32),
            })
            .collect();
        // The first channel only `-inf` and NaN, which tract's fold never takes.
        for (i, x) in v[..90].iter_mut().enumerate() {
            *x = if i % 3 == 0 {
                f32::NAN
            } else {
                f32::NEG_INFINITY
            };
        }
        let model = pool_graph(
            f32::datum_type(),
            &shape,
            DataFormat::NCHW,
            [3, 3],
            [2, 2],
            explicit([1, 1], [1, 1]),
            None,
        );
        let want = check(model, &Tensor::from_shape(&shape, &v).unwrap(), "specials");
        // The comparison saw what it is meant to: zeros of both signs come out, NaN never,
        // and the first channel is all `f32::MIN`.
        let got = bits(&want);
        assert!(got.contains(&0) && got.contains(&(-0f32).to_bits()));
        assert!(got.iter().all(|&b| !f32::from_bits(b).is_nan()));
        let plane = got.len() / 3;
        assert!(got[..plane].iter().all(|&b| b == f32::MIN.to_bits()));
    }

    #[test]
    fn of_equal_zeros_the_first_in_row_major_order_wins() {
        // Half -1, the rest zeros of either sign: a window's sign is its first zero's, which
        // any other tap order (column-major, rows reversed) gets wrong somewhere.
        let shape = [1, 4, 18, 20];
        let v: Vec<f32> = test_bytes(4 * 18 * 20, 21)
            .iter()
            .map(|&b| match b % 4 {
                0 => 0.0,
                1 => -0.0,
                _ => -1.0,
            })
            .collect();
        for (kernel, strides) in [([3, 3], [2, 2]), ([3, 3], [1, 1]), ([2, 3], [1, 2])] {
            let model = pool_graph(
                f32::datum_type(),
                &shape,
                DataFormat::NCHW,
                kernel,
                strides,
                explicit([1, 1], [1, 1]),
                None,
            );
            let input = Tensor::from_shape(&shape, &v).unwrap();
            let got = bits(&check(model, &input, &format!("k{kernel:?} s{strides:?}")));
            assert!(got.contains(&0) && got.contains(&(-0f32).to_bits()));
        }
    }

    #[test]
    fn leaves_index_outputs_other_types_and_dilations_alone() {
        let shape = [1, 3, 9, 10];
        let pad = || explicit([1, 1], [1, 1]);
        let mut models = vec![
            pool_graph(
                f32::datum_type(),
                &shape,
                DataFormat::NCHW,
                [3, 3],
                [2, 2],
                pad(),
                Some(i64::datum_type()),
            ),
            pool_graph(
                i32::datum_type(),
                &shape,
                DataFormat::NCHW,
                [3, 3],
                [2, 2],
                pad(),
                None,
            ),
            pool_graph(
                f16::datum_type(),
                &shape,
                DataFormat::NCHW,
                [3, 3],
                [2, 2],
                pad(),
                None,
            ),
            pool_graph(
                f32::datum_type(),
                &[1, 9, 10, 3],
                DataFormat::NHWC,
                [3, 3],
                [2, 2],
                pad(),
                None,
            ),
        ];
        // Keep the index output alive, or tract's declutter would drop it.
        let index = OutletId::new(models[0].node_by_name("pool").unwrap().id, 1);
        let values = models[0].outputs[0];
        models[0].select_output_outlets(&[values, index]).unwrap();
        let mut dilated = pool_graph(
            u8::datum_type(),
            &shape,
            DataFormat::NCHW,
            [3, 3],
            [1, 1],
            pad(),
            None,
        );
        let pool = dilated.node_by_name("pool").unwrap().id;
        let op = dilated.node_mut(pool).op_as_mut::<MaxPool>().unwrap();
        op.pool_spec.dilations = Some(tvec![2, 2]);
        models.push(dilated);
        for (i, model) in models.into_iter().enumerate() {
            let (rewritten, report) = apply(model, &Rewrites::all()).unwrap();
            assert_eq!(report.count(Rewrite::MaxPool), 0, "model {i}");
            assert!(
                rewritten.nodes().iter().any(|n| n.op_is::<MaxPool>()),
                "model {i}"
            );
        }
    }

    #[test]
    fn generic_build_matches_the_dispatched_one() {
        // `plane` takes the AVX2 build where there is one, as in the tests above; the generic
        // build is what other CPUs run.
        let geometries = [
            ((17, 16), (3, 3), (2, 2), (1, 1)),
            ((16, 17), (3, 3), (1, 1), (1, 1)),
            ((40, 45), (3, 3), (2, 2), (1, 1)),
            ((11, 13), (3, 2), (1, 3), (0, 2)),
            ((10, 12), (2, 2), (2, 2), (0, 0)),
            ((6, 5), (2, 2), (2, 2), (3, 2)),
        ];
        for (hw, kernel, stride, pad) in geometries {
            let out = |d: usize, k: usize, s: usize, p: usize| (d + 2 * p - k) / s + 1;
            let op = MaxPool2d {
                channels: 1,
                hw,
                kernel,
                stride,
                pad,
                out: (
                    out(hw.0, kernel.0, stride.0, pad.0),
                    out(hw.1, kernel.1, stride.1, pad.1),
                ),
            };
            let len = hw.0 * hw.1;
            let bytes = test_bytes(len, 13);
            let floats: Vec<f32> = bytes
                .iter()
                .map(|&b| match b % 16 {
                    0 => f32::NAN,
                    1 => -0.0,
                    2 => 0.0,
                    3 => f32::NEG_INFINITY,
                    _ => b as f32 - 128.0,
                })
                .collect();
            fn both<T: Pooled>(op: &MaxPool2d, input: &[T]) -> [Vec<T>; 2] {
                let mut outputs = [vec![T::LOWEST; op.out.0 * op.out.1], vec![]];
                outputs[1] = outputs[0].clone();
                let (ph, pw) = op.padded();
                let mut padded = vec![T::LOWEST; ph * pw];
                let mut starts = vec![T::LOWEST; op.starts()];
                plane(op, input, &mut outputs[0], &mut padded, &mut starts);
                plane_generic(op, input, &mut outputs[1], &mut padded, &mut starts);
                outputs
            }
            let [a, b] = both(&op, &bytes);
            assert_eq!(a, b, "{op:?}");
            let [a, b] = both(&op, &floats);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b), "{op:?}");
        }
    }

    /// Time tract's pool and ours on the ResNet stem's (`cargo test --release --lib
    /// max_pool_timing -- --ignored --nocapture`; the test profile does not vectorise ours).
    /// `profile` on a real model gives the figures that count.
    #[test]
    #[ignore]
    fn max_pool_timing() {
        let shape = [1, 64, 112, 112];
        for dt in [u8::datum_type(), f32::datum_type()] {
            let reference = pool_graph(
                dt,
                &shape,
                DataFormat::NCHW,
                [3, 3],
                [2, 2],
                explicit([1, 1], [1, 1]),
                None,
            );
            let (rewritten, _) = apply(reference.clone(), &Rewrites::all()).unwrap();
            let x = input(dt, &shape, 1);
            for threads in [1, 2] {
                for (name, model) in [("tract", &reference), ("ours", &rewritten)] {
                    let plan = model
                        .clone()
                        .into_optimized()
                        .unwrap()
                        .into_runnable()
                        .unwrap();
                    let executor = match threads {
                        1 => Executor::SingleThread,
                        n => Executor::multithread(n),
                    };
                    let runs = 200;
                    let ms = multithread_tract_scope(executor, || {
                        plan.run(tvec!(x.clone().into())).unwrap();
                        let start = std::time::Instant::now();
                        for _ in 0..runs {
                            plan.run(tvec!(x.clone().into())).unwrap();
                        }
                        start.elapsed().as_secs_f64() * 1e3 / runs as f64
                    });
                    println!("{dt:?} {threads} thread(s) {name}: {ms:.3} ms");
                }
            }
        }
    }
}
