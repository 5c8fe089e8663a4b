//! `direct-conv`: f32 convolutions tract's matmul path runs slowly (1x1 ones, strided ones,
//! the 7x7 stem; whatever `winograd` did not take), with their bias and ReLU, on our GEMM
//! kernel; and a classifier's fully connected layer at batch 1, a 1x1 conv on a 1x1 map
//! ([`fc_shape`]).
//!
//! Why: these are 60-75% of ResNet-50's time. tract's declutter turns a 1x1 conv into an
//! `EinSum` its optimiser runs as an input-packing op plus a matmul (after a `Downsample` copy
//! when strided), and a KxK one into an im2col op plus a matmul. `profile` against
//! onnxruntime's per-node profile (ResNet-50, one thread, AVX2 and FMA): 45-68 GFLOP/s in
//! tract's 1x1 convs, about 85 in onnxruntime's, the 56x56 layers furthest off. [`kernel`]
//! packs the activations straight from the input (or its stride-phase planes) in cache-sized
//! chunks, keeps weight panels in L2 and applies the epilogue as it stores.

pub mod kernel;
pub mod lanes;

use tract_core::internal::*;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::cnn::Conv;
use tract_core::ops::einsum::EinSum;
use tract_core::ops::math::Add;

use kernel::{OutPtr, Weights};

use super::phase_planes::{prepare, Geometry};

use super::int8_conv::downsampled;
use super::{
    konst, on_tract_threads_in_runs, plain_2d_conv, relu_input, sole_successor, tract_threads,
};

/// An f32 convolution (a `Conv`, or a 1x1 conv's `EinSum` with a stride taken from the
/// `Downsample`s before it; the bias `Add` and ReLU after it) with its weights packed for
/// [`kernel`].
#[derive(Debug, Clone)]
pub struct DirectConv {
    pub geometry: Geometry,
    pub weights: Arc<Packed>,
    pub relu: bool,
    /// Whether the sums are added to a second input of the output's shape (a block's
    /// shortcut; see [`super::conv_residual`]), whose buffer the op then writes.
    pub accumulate: bool,
    /// The input shape the op reads and the output shape it writes (NCHW, CHW, or what tract's
    /// declutter left: the `EinSum`'s output, with or without its unit batch axis).
    pub input_shape: TVec<usize>,
    pub output_shape: TVec<usize>,
}

impl PartialEq for DirectConv {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.weights, &other.weights)
            && self.relu == other.relu
            && self.accumulate == other.accumulate
            && self.input_shape == other.input_shape
    }
}

impl Eq for DirectConv {}

/// The weights, packed for the kernel that runs the conv.
#[derive(Debug, PartialEq)]
pub enum Packed {
    /// 6-channel panels for [`kernel`]'s 16-position tiles.
    Panels(Weights),
    /// 32-channel vectors for [`lanes`] (small maps' 1x1s where AVX-512 runs).
    Lanes(Weights),
}

impl Packed {
    /// Pack `w` (`[m][k]`) and `bias` for the kernel that runs `geo`; `None` unless the
    /// sizes agree.
    pub fn new(geo: &Geometry, w: &[f32], bias: &[f32], m: usize, k: usize) -> Option<Packed> {
        match lanes::applies(geo) {
            true => lanes::weights(w, bias, m, k).map(Packed::Lanes),
            false => Weights::new(w, bias, m, k).map(Packed::Panels),
        }
    }

    /// Output channels.
    pub fn m(&self) -> usize {
        match self {
            Packed::Panels(w) | Packed::Lanes(w) => w.m,
        }
    }

    /// Depth: input channels x kernel taps.
    pub fn k(&self) -> usize {
        match self {
            Packed::Panels(w) | Packed::Lanes(w) => w.k,
        }
    }
}

impl DirectConv {
    /// Weights and biases of the conv, for `info`.
    pub fn parameters(&self) -> usize {
        self.weights.m() * (self.weights.k() + 1)
    }

    /// Multiply-accumulates of the whole batch.
    pub fn macs(&self) -> u64 {
        let elements = self.input_shape.iter().product();
        self.geometry.macs(elements, self.weights.m())
    }
}

impl Op for DirectConv {
    fn name(&self) -> StaticName {
        "DirectConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let g = &self.geometry;
        Ok(vec![format!(
            "{}x{} stride {:?}, {} -> {} channels{}{}",
            g.kernel.0,
            g.kernel.1,
            g.stride,
            g.chw.0,
            self.weights.m(),
            if self.accumulate { ", + shortcut" } else { "" },
            if self.relu { ", ReLU" } else { "" }
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for DirectConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, mut inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 1 + self.accumulate as usize);
        let shortcut = match self.accumulate {
            true => inputs.pop(),
            false => None,
        };
        let x = &inputs[0];
        ensure!(
            *x.shape() == *self.input_shape,
            "DirectConv built for {:?}, given {:?}",
            self.input_shape,
            x.shape()
        );
        let x = x.try_as_plain_ram()?;
        let x = x.as_slice::<f32>()?;
        let g = &self.geometry;
        let images = x.len() / g.input_len().max(1);
        let mut out = match shortcut {
            // Copied only if the plan still holds it elsewhere.
            Some(shortcut) => {
                ensure!(
                    *shortcut.shape() == *self.output_shape,
                    "DirectConv built for a shortcut of {:?}, given {:?}",
                    self.output_shape,
                    shortcut.shape()
                );
                shortcut.into_tensor()
            }
            // SAFETY: f32 has no invalid bit patterns, and the tasks write every element (each
            // channel x output position once, the first depth block without reading it).
            None => unsafe { Tensor::uninitialized::<f32>(&self.output_shape)? },
        };
        {
            let mut view = out.try_as_plain_ram_mut()?;
            let out = view.as_slice_mut::<f32>()?;
            ensure!(out.len() == images * self.weights.m() * g.positions());
            ensure!(x.len() == images * g.input_len());
            let ptr = OutPtr(out.as_mut_ptr());
            let finish = kernel::Finish {
                accumulate: self.accumulate,
                relu: self.relu,
            };
            let x = &*prepare(g, x, 0.0);
            let starts = &g.row_starts();
            match &*self.weights {
                // SAFETY: as below; the rule packed these weights only where `lanes::applies`.
                Packed::Lanes(w) => unsafe { lanes::conv(g, starts, w, x, ptr, images, finish) },
                Packed::Panels(w) => {
                    let tasks = kernel::tasks(g, w.m, images, tract_threads());
                    let isa = kernel::Isa::detect();
                    on_tract_threads_in_runs(tasks, |run| {
                        for task in run {
                            // SAFETY: `out` holds every image's channels x positions and
                            // outlives the scope; tasks cover disjoint channels x positions;
                            // `x` holds every image.
                            unsafe { kernel::run_task(g, starts, w, x, ptr, &task, finish, isa) };
                        }
                    });
                }
            }
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for DirectConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 1 + self.accumulate as usize);
        ensure!(inputs.iter().all(|i| i.datum_type == f32::datum_type()));
        Ok(tvec!(f32::fact(self.output_shape.clone())))
    }

    as_op!();
}

/// Constant input `i` as f32 values, when it is an f32 constant (no cast from other types).
fn konst_f32(facts: &[&TypedFact], i: usize) -> Option<Vec<f32>> {
    (facts.get(i)?.datum_type == f32::datum_type())
        .then(|| konst::<f32>(facts, i))
        .flatten()
}

/// A bias `Add` after the conv: the node when its constant operand holds one value per
/// channel on the output's channel axis, `channel` from the end (or one value), with the
/// values for `m` channels.
fn bias_add(
    model: &TypedModel,
    node: &TypedNode,
    conv: OutletId,
    (m, channel): (usize, usize),
) -> Option<Vec<f32>> {
    let op = node.op_as::<TypedBinOp>()?;
    if !op.0.is::<Add>() || node.inputs.len() != 2 {
        return None;
    }
    let other = match node.inputs.iter().position(|&i| i == conv)? {
        0 => 1,
        _ => 0,
    };
    let values = konst_f32(&model.node_input_facts(node.id).ok()?, other)?;
    let out = model.outlet_fact(conv).ok()?.shape.as_concrete()?.to_vec();
    let shape = model
        .outlet_fact(node.inputs[other])
        .ok()?
        .shape
        .as_concrete()?
        .to_vec();
    if shape.len() > out.len() || out.len() < channel {
        return None;
    }
    // Right-aligned onto the output.
    let channel = shape.len().checked_sub(channel);
    let per_channel = shape
        .iter()
        .enumerate()
        .all(|(axis, &d)| d == 1 || (Some(axis) == channel && d == m));
    match values.len() {
        1 if per_channel => Some(vec![values[0]; m]),
        len if len == m && per_channel => Some(values),
        _ => None,
    }
}

/// What the convolution computes: its geometry over one image, its weights `[m, depth]` and
/// bias, and the tensor it reads.
struct Shape {
    geometry: Geometry,
    weights: Vec<f32>,
    bias: Vec<f32>,
    m: usize,
    input: OutletId,
    /// The output's channel axis, counted from the end: 3 for a conv's `[N]OHW`; for a fully
    /// connected layer, wherever its `O` axis lies (1 in ResNet's `[1, O]`).
    channel: usize,
}

/// tract's f32 `Conv` with constant OIHW kernel and bias: ungrouped, undilated 2D, NCHW or CHW.
fn conv_shape(model: &TypedModel, node: &TypedNode, conv: &Conv) -> TractResult<Option<Shape>> {
    let spec = &conv.pool_spec;
    if conv.q_params.is_some() || !plain_2d_conv(conv) || node.inputs.len() != 3 {
        return Ok(None);
    }
    let facts = model.node_input_facts(node.id)?;
    let Some(shape) = facts[0].shape.as_concrete() else {
        return Ok(None);
    };
    let Some(geometry) = Geometry::of_conv(conv, shape) else {
        return Ok(None);
    };
    let m = spec.output_channels;
    let Some(weights) = konst_f32(&facts, 1) else {
        return Ok(None);
    };
    // One bias per channel, one for all, or none.
    let bias = match konst_f32(&facts, 2) {
        Some(b) if b.is_empty() => vec![0.0; m],
        Some(b) if b.len() == m => b,
        Some(b) if b.len() == 1 => vec![b[0]; m],
        _ => return Ok(None),
    };
    if weights.len() != m * geometry.depth() {
        return Ok(None);
    }
    Ok(Some(Shape {
        geometry,
        weights,
        bias,
        m,
        input: node.inputs[0],
        channel: 3,
    }))
}

/// A 1x1 conv as tract's declutter leaves it: an `EinSum` `[N]IHW,OI -> [N]OHW` with a
/// constant `[O, I]` weight, after the `Downsample`s of a stride; or a fully connected layer
/// ([`fc_shape`]).
fn einsum_shape(model: &TypedModel, node: &TypedNode, op: &EinSum) -> TractResult<Option<Shape>> {
    if op.q_params.is_some() || node.inputs.len() != 2 {
        return Ok(None);
    }
    if !matches!(
        op.axes.to_string().as_str(),
        "NIHW,OI->OHW" | "NIHW,OI->NOHW" | "IHW,OI->OHW" | "IHW,OI->NOHW"
    ) {
        return fc_shape(model, node, op);
    }
    let facts = model.node_input_facts(node.id)?;
    let (Some(x), Some(w_shape)) = (facts[0].shape.as_concrete(), facts[1].shape.as_concrete())
    else {
        return Ok(None);
    };
    let &[c, h, w] = &x[x.len().saturating_sub(3)..] else {
        return Ok(None);
    };
    let m = match w_shape {
        &[m, k] if k == c => m,
        _ => return Ok(None),
    };
    let Some(weights) = konst_f32(&facts, 1) else {
        return Ok(None);
    };
    let (input, stride, (h_in, w_in)) = downsampled(model, node.inputs[0], x.len());
    if h == 0 || w == 0 || (h - 1) * stride.0 >= h_in || (w - 1) * stride.1 >= w_in {
        return Ok(None);
    }
    Ok(Some(Shape {
        geometry: Geometry::pointwise(c, (h_in, w_in), stride, (h, w)),
        weights,
        bias: vec![0.0; m],
        m,
        input,
        channel: 3,
    }))
}

/// A classifier's fully connected layer at batch 1, as tract's declutter leaves an ONNX
/// `Gemm` after a global pool: an `EinSum` of one vector of `I` values (every other axis of
/// the input 1) with a constant `[O, I]` weight, into `O` values (every other output axis 1).
/// That is a 1x1 conv on a 1x1 map, run the same way, its weights split over the plan's
/// threads as onnxruntime's `Gemm` splits them. ResNet-50's (8 MB of weights, at one thread as
/// fast as memory streams them): 0.69 -> 0.35 ms at two threads.
fn fc_shape(model: &TypedModel, node: &TypedNode, op: &EinSum) -> TractResult<Option<Shape>> {
    let facts = model.node_input_facts(node.id)?;
    let out = model.outlet_fact(node.id.into())?;
    let (Some(x), Some(&[m, k]), Some(y)) = (
        facts[0].shape.as_concrete(),
        facts[1].shape.as_concrete(),
        out.shape.as_concrete(),
    ) else {
        return Ok(None);
    };
    let ones = |shape: &[usize], at: &[usize]| at.iter().all(|&a| shape.get(a) == Some(&1));
    let mut channel = None;
    let mut reduced = 0;
    for axis in op.axes.iter_all_axes() {
        let (Some(xs), Some(ws), Some(ys)) = (
            axis.inputs.first(),
            axis.inputs.get(1),
            axis.outputs.first(),
        ) else {
            return Ok(None);
        };
        match (xs.as_slice(), ws.as_slice(), ys.as_slice()) {
            (&[i], [1], []) if x.get(i) == Some(&k) => reduced += 1,
            ([], [0], &[o]) if y.get(o) == Some(&m) => channel = Some(y.len() - o),
            (xs, [], ys) if ones(x, xs) && ones(y, ys) => {}
            _ => return Ok(None),
        }
    }
    let (Some(channel), 1) = (channel, reduced) else {
        return Ok(None);
    };
    let Some(weights) = konst_f32(&facts, 1) else {
        return Ok(None);
    };
    Ok(Some(Shape {
        geometry: Geometry::pointwise(k, (1, 1), (1, 1), (1, 1)),
        weights,
        bias: vec![0.0; m],
        m,
        input: node.inputs[0],
        channel,
    }))
}

/// The rule, rooted at an f32 `Conv` or 1x1-conv `EinSum` (see [`conv_shape`],
/// [`einsum_shape`]) on a CPU with AVX2 and FMA; a per-channel bias `Add` and a ReLU after it
/// are absorbed.
pub fn rewrite(model: &TypedModel, node: &TypedNode) -> TractResult<Option<TypedModelPatch>> {
    if !kernel::available() {
        return Ok(None);
    }
    let shape = if let Some(conv) = node.op_as::<Conv>() {
        conv_shape(model, node, conv)?
    } else if let Some(einsum) = node.op_as::<EinSum>() {
        einsum_shape(model, node, einsum)?
    } else {
        None
    };
    let Some(Shape {
        geometry,
        weights,
        mut bias,
        m,
        input,
        channel,
    }) = shape
    else {
        return Ok(None);
    };
    let input_fact = model.outlet_fact(input)?;
    let Some(input_shape) = input_fact.shape.as_concrete().map(TVec::from) else {
        return Ok(None);
    };
    let (k, (h, w)) = (geometry.depth(), geometry.out);
    let images = input_shape.iter().product::<usize>() / geometry.input_len().max(1);
    if input_fact.datum_type != f32::datum_type()
        || geometry.input_len() == 0
        || images * geometry.input_len() != input_shape.iter().product::<usize>()
        || model
            .outlet_fact(node.id.into())?
            .shape
            .as_concrete()
            .map(|s| s.iter().product())
            != Some(images * m * h * w)
    {
        return Ok(None);
    }

    // Absorb the bias `Add` and the ReLU that follow, when the conv is their only input.
    let mut last: OutletId = node.id.into();
    if let Some(add) = sole_successor(model, last) {
        if let Some(values) = bias_add(model, add, last, (m, channel)) {
            bias.iter_mut().zip(values).for_each(|(b, v)| *b += v);
            last = add.id.into();
        }
    }
    let relu = sole_successor(model, last).filter(|s| relu_input(model, s) == Some(last));
    if let Some(relu) = relu {
        last = relu.id.into();
    }
    let output_shape: TVec<usize> = match model.outlet_fact(last)?.shape.as_concrete() {
        Some(s) if s.iter().product::<usize>() == images * m * h * w => s.into(),
        _ => return Ok(None),
    };
    let Some(packed) = Packed::new(&geometry, &weights, &bias, m, k) else {
        return Ok(None);
    };

    let mut patch = TypedModelPatch::default();
    let x = patch.tap_model(model, input)?;
    let y = patch.wire_node(
        format!("{}.direct", node.name),
        DirectConv {
            geometry,
            weights: Arc::new(packed),
            relu: relu.is_some(),
            accumulate: false,
            input_shape,
            output_shape,
        },
        &[x],
    )?[0];
    patch.shunt_outside(model, last, y)?;
    Ok(Some(patch))
}

#[cfg(test)]
mod tests {
    use super::kernel::{run_task, tasks, Finish, Task, MR};
    use super::*;
    use crate::transform::rewrite::phase_planes::NR;
    use crate::transform::rewrite::test_values;
    use crate::transform::rewrite::{apply, wire_relu, Rewrite, Rewrites};
    use tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec, PoolSpec};
    use tract_core::ops::nn::DataFormat;

    /// A `k`x`k` conv with tract's own `Conv` (stride `s`, padding `k / 2`, bias, optional
    /// ReLU), decluttered the way a loaded ONNX file is: the reference the rewrite must match.
    /// A 1x1 conv becomes an `EinSum` (after `Downsample`s when strided) and a bias `Add`.
    fn conv(shape: &[usize], m: usize, k: usize, s: usize, bias: bool, relu: bool) -> TypedModel {
        let c = shape[shape.len() - 3];
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact(shape)).unwrap();
        let kernel = Tensor::from_shape(&[m, c, k, k], &test_values(m * c * k * k, 7)).unwrap();
        let kernel = model.add_const("kernel", kernel).unwrap();
        let b = if bias {
            test_values(m, 9)
        } else {
            vec![0.0; m]
        };
        let b = model.add_const("bias", tensor1(&b)).unwrap();
        let format = if shape.len() == 4 {
            DataFormat::NCHW
        } else {
            DataFormat::CHW
        };
        let op = Conv {
            pool_spec: PoolSpec {
                data_format: format,
                kernel_shape: tvec!(k, k),
                padding: PaddingSpec::Explicit(tvec!(k / 2, k / 2), tvec!(k / 2, k / 2)),
                dilations: None,
                strides: Some(tvec!(s, s)),
                input_channels: c,
                output_channels: m,
            },
            kernel_fmt: KernelFormat::OIHW,
            group: 1,
            q_params: None,
        };
        let mut y = model.wire_node("conv", op, &[x, kernel, b]).unwrap()[0];
        if relu {
            y = wire_relu(&mut model, y);
        }
        model.select_output_outlets(&[y]).unwrap();
        model.into_decluttered().unwrap()
    }

    fn run(model: TypedModel, shape: &[usize]) -> Tensor {
        let len = shape.iter().product();
        let x = Tensor::from_shape(shape, &test_values(len, 3)).unwrap();
        let plan = model.into_optimized().unwrap().into_runnable().unwrap();
        plan.run(tvec!(x.into())).unwrap().remove(0).into_tensor()
    }

    /// Our outputs (returned) against tract's, within f32 rounding over sums of `depth` terms.
    fn close<'a>(expected: &Tensor, got: &'a Tensor, depth: usize, case: &str) -> &'a [f32] {
        assert_eq!(expected.shape(), got.shape(), "{case}");
        let (e, g) = (
            crate::plan::f32_slice(expected).unwrap(),
            crate::plan::f32_slice(got).unwrap(),
        );
        let depth = depth as f32;
        for (i, (a, b)) in e.iter().zip(g).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 * depth.sqrt() * (1.0 + a.abs()),
                "{case}: element {i}: tract {a}, ours {b}"
            );
        }
        g
    }

    fn check(shape: &[usize], m: usize, k: usize, s: usize, bias: bool, relu: bool) {
        let reference = conv(shape, m, k, s, bias, relu);
        let (rewritten, report) = apply(reference.clone(), &Rewrites::all()).unwrap();
        let case = format!("{shape:?} m {m} {k}x{k}/{s}");
        if !kernel::available() {
            // Off x86 (or without AVX2 + FMA) tract's own kernels stay.
            assert_eq!(report.count(Rewrite::DirectConv), 0, "{case}");
            return;
        }
        assert_eq!(report.count(Rewrite::DirectConv), 1, "{case}");
        let ops: Vec<String> = rewritten
            .nodes()
            .iter()
            .map(|n| n.op.name().to_string())
            .collect();
        assert_eq!(
            ops.iter().filter(|o| *o == "DirectConv").count(),
            1,
            "{case}"
        );
        assert!(
            !ops.iter()
                .any(|o| ["EinSum", "Conv", "Downsample", "Add", "Max"].contains(&&**o)),
            "{case}: bias and ReLU absorbed, nothing else left: {ops:?}"
        );
        let expected = run(reference, shape);
        let got = run(rewritten, shape);
        let g = close(&expected, &got, shape[shape.len() - 3] * k * k, &case);
        if relu {
            assert!(g.iter().all(|&v| v >= 0.0) && g.contains(&0.0));
        }
    }

    #[test]
    fn matches_tract_on_resnet_1x1_shapes() {
        // layer1 conv1 (56x56 map, 196 full panels), a 14x14 map (panel tail of 4), a deep
        // 7x7 one with five depth blocks and a channel tail, and batch 2.
        check(&[1, 64, 56, 56], 64, 1, 1, true, true);
        check(&[1, 96, 14, 14], 40, 1, 1, true, false);
        check(&[1, 1100, 7, 7], 20, 1, 1, false, true);
        check(&[2, 32, 9, 11], 13, 1, 1, true, true);
    }

    #[test]
    fn takes_the_stride_of_projection_shortcuts() {
        check(&[1, 64, 56, 56], 32, 1, 2, true, false);
        check(&[2, 16, 15, 13], 8, 1, 2, false, false);
        check(&[1, 16, 14, 14], 8, 1, 3, true, true);
    }

    #[test]
    fn matches_tract_on_padded_and_strided_kxk_convs() {
        // The stem (7x7/2, pad 3) on a smaller map, a stride-2 3x3 (ResNet's downsampling
        // conv2 / basic-block conv1), a stride-1 3x3 on a map too small for Winograd, batch 2.
        check(&[1, 3, 38, 42], 64, 7, 2, true, true);
        check(&[1, 64, 28, 28], 24, 3, 2, true, true);
        check(&[1, 40, 5, 6], 14, 3, 1, false, false);
        check(&[2, 8, 15, 9], 7, 3, 2, true, false);
    }

    #[test]
    fn batch_free_chw_convs_too() {
        check(&[24, 10, 10], 16, 1, 1, true, true);
        check(&[24, 11, 10], 16, 3, 2, true, true);
    }

    /// The scalar microkernel, the AVX2 and AVX-512 ones and a direct sum agree on every tile
    /// shape the tasks produce (full, partial channels, partial and half-width positions,
    /// tiles across dropped columns, panels of dropped columns only), over several depth
    /// blocks.
    #[test]
    fn kernels_agree_with_a_direct_sum() {
        for (c, h, w, m, kk, s, pad) in [
            (600, 5, 7, 9, 1, 1, 0),
            (17, 9, 9, 7, 1, 2, 0),
            (8, 4, 20, 6, 1, 1, 0),
            (70, 9, 11, 13, 3, 1, 1),
            (3, 19, 17, 8, 7, 2, 3),
            // Planes a whole number of blocks wide (32 for 24 outputs), over two depth blocks.
            (40, 3, 24, 7, 3, 1, 1),
            // One panel for five groups (four, then one of a single channel); two panels for
            // two whole groups, then one of four channels.
            (5, 4, 4, 25, 1, 1, 0),
            (12, 4, 8, 16, 1, 1, 0),
            // A stem-like 7x7/2 whose planes are 48 wide for 32 outputs: a dropped panel a row.
            (3, 9, 64, 8, 7, 2, 3),
        ] {
            let out = |n: usize| (n + 2 * pad - kk) / s + 1;
            let geo = Geometry {
                chw: (c, h, w),
                kernel: (kk, kk),
                stride: (s, s),
                pad: (pad, pad),
                out: (out(h), out(w)),
            };
            let (p, depth) = (geo.positions(), geo.depth());
            let x = test_values(c * h * w, 5);
            let wv = test_values(m * depth, 6);
            let bias = test_values(m, 8);
            let weights = Weights::new(&wv, &bias, m, depth).unwrap();
            let mut expected = vec![0f32; m * p];
            for o in 0..m {
                for q in 0..p {
                    let (oy, ox) = (q / geo.out.1, q % geo.out.1);
                    let mut sum = 0f64;
                    for ci in 0..c {
                        for ky in 0..kk {
                            for kx in 0..kk {
                                let iy = (oy * s + ky) as isize - pad as isize;
                                let ix = (ox * s + kx) as isize - pad as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let wi = o * depth + (ci * kk + ky) * kk + kx;
                                let xi = (ci * h + iy as usize) * w + ix as usize;
                                sum += wv[wi] as f64 * x[xi] as f64;
                            }
                        }
                    }
                    expected[o * p + q] = sum as f32 + bias[o];
                }
            }
            let xp = prepare(&geo, &x, 0.0);
            // One thread's tasks hold every channel group (AVX-512 pairs the groups), three
            // threads' split them.
            // With and without a shortcut to add before the ReLU.
            let shortcut = test_values(m * p, 9);
            let runs = kernel::Isa::available()
                .into_iter()
                .flat_map(|i| [(i, 1), (i, 3)])
                .flat_map(|(i, t)| [(i, t, false), (i, t, true)]);
            for (isa, threads, accumulate) in runs {
                let mut out = match accumulate {
                    true => shortcut.clone(),
                    false => vec![f32::NAN; m * p],
                };
                let finish = Finish {
                    accumulate,
                    relu: true,
                };
                for task in tasks(&geo, m, 1, threads) {
                    unsafe {
                        run_task(
                            &geo,
                            &geo.row_starts(),
                            &weights,
                            &xp,
                            OutPtr(out.as_mut_ptr()),
                            &task,
                            finish,
                            isa,
                        )
                    };
                }
                for (i, (a, b)) in expected.iter().zip(&out).enumerate() {
                    let a = (a + if accumulate { shortcut[i] } else { 0.0 }).max(0.0);
                    assert!(
                        (a - b).abs() <= 1e-4,
                        "{geo:?} {isa:?} {threads} threads, {finish:?}: {i}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn tasks_cover_every_channel_and_position_once() {
        for (k, hw, m, images, threads) in [
            (64usize, 56usize, 64usize, 1usize, 2usize),
            (1024, 14, 256, 1, 2),
            (2048, 7, 512, 1, 2),
            (64, 9, 13, 3, 1),
        ] {
            let geo = Geometry {
                chw: (k, hw, hw),
                kernel: (1, 1),
                stride: (1, 1),
                pad: (0, 0),
                out: (hw, hw),
            };
            let p = hw * hw;
            let mut seen = vec![0u8; images * m.div_ceil(MR) * p];
            let all = tasks(&geo, m, images, threads);
            assert!(all.len() >= threads, "{all:?}");
            for Task {
                image,
                positions,
                groups,
            } in all
            {
                assert!(positions.start % NR == 0);
                for g in groups {
                    for q in positions.clone() {
                        seen[(image * m.div_ceil(MR) + g) * p + q] += 1;
                    }
                }
            }
            assert!(seen.iter().all(|&n| n == 1));
        }
    }

    /// A classifier's head as an ONNX file loads it: the pooled `[1, C, 1, 1]` flattened, then
    /// a `Gemm` against a constant `[N, C]` weight, plus a bias.
    fn head(c: usize, n: usize) -> TypedModel {
        use tract_core::ops::change_axes::AxisOp;
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1, c, 1, 1])).unwrap();
        let flat = AxisOp::Reshape(1, tvec!(c.into(), 1.into(), 1.into()), tvec!(c.into()));
        let x = model.wire_node("flatten", flat, &[x]).unwrap()[0];
        let w = Tensor::from_shape(&[n, c], &test_values(n * c, 5)).unwrap();
        let w = model.add_const("w", w).unwrap();
        let y = model
            .wire_node(
                "gemm",
                EinSum::new("mk,nk->mn".parse().unwrap(), f32::datum_type()),
                &[x, w],
            )
            .unwrap()[0];
        let b = Tensor::from_shape(&[1, n], &test_values(n, 9)).unwrap();
        let b = model.add_const("b", b).unwrap();
        let y = model
            .wire_node("bias", TypedBinOp(Box::new(Add), None), &[y, b])
            .unwrap()[0];
        model.select_output_outlets(&[y]).unwrap();
        model.into_decluttered().unwrap()
    }

    #[test]
    fn a_classifiers_fully_connected_head_runs_as_a_1x1_conv() {
        for (c, n) in [(64, 10), (512, 1000), (100, 37)] {
            let reference = head(c, n);
            let (rewritten, report) = apply(reference.clone(), &Rewrites::all()).unwrap();
            let expected = run(reference, &[1, c, 1, 1]);
            if !kernel::available() {
                assert_eq!(report.count(Rewrite::DirectConv), 0);
                continue;
            }
            assert_eq!(report.count(Rewrite::DirectConv), 1, "{c} -> {n}");
            let ops: Vec<_> = rewritten.nodes().iter().map(|n| n.op.name()).collect();
            assert!(
                !ops.iter().any(|o| ["EinSum", "Add"].contains(&&**o)),
                "{c} -> {n}: the bias absorbed, nothing else left: {ops:?}"
            );
            let got = run(rewritten, &[1, c, 1, 1]);
            close(&expected, &got, c, &format!("{c} -> {n}"));
        }
    }

    #[test]
    fn leaves_other_einsums_alone() {
        // A 3x3 conv stays a Conv; a matmul with a non-constant weight is not a 1x1 conv.
        let mut model = TypedModel::default();
        let a = model.add_source("a", f32::fact([8, 4])).unwrap();
        let b = model.add_source("b", f32::fact([4, 6])).unwrap();
        let y = model
            .wire_node(
                "mm",
                EinSum::new("ik,kj->ij".parse().unwrap(), f32::datum_type()),
                &[a, b],
            )
            .unwrap()[0];
        model.select_output_outlets(&[y]).unwrap();
        let (_, report) = apply(model, &Rewrites::all()).unwrap();
        assert_eq!(report.count(Rewrite::DirectConv), 0);
    }
}
