//! `int8-conv`: quantised convolutions (ONNX `QLinearConv`, u8 activations, per-channel
//! symmetric i8 weights) on our u8 x i8 kernel instead of tract's.
//!
//! Why: on x86 tract 0.23.9 runs integer convolutions through `avx2_mmm_i32_8x8`, which widens
//! every byte to 16 bits and multiplies 8 lanes at a time; `profile` measured about 1 GOP/s
//! in every conv of ResNet-18 and -50, 45-65x slower than f32. [`kernel`] multiplies bytes
//! with `vpmaddubsw` and requantises in its epilogue. On ARM tract's integer kernels (SMLAL,
//! SDOT) are its strong side, so the rule fires only where the AVX2 kernel runs.

pub mod channels_last;
pub mod kernel;

use tract_core::internal::*;
use tract_core::ops::cnn::Conv;
use tract_core::ops::einsum::EinSum;
use tract_core::ops::Downsample;

use channels_last::ChannelsLast;
use kernel::{Epilogue, Geometry, Isa, OutPtr, QParams, Weights};

use super::int8_residual::Int8ResidualAdd;
use super::{konst, on_tract_threads_in_runs, per_channel, plain_2d_conv, tract_threads};

/// A quantised convolution (or the `MatMulInteger` of a classifier head) with its weights
/// packed for [`kernel`]: u8 in; u8 out, or i32 accumulators for `MatMulInteger`.
#[derive(Debug, Clone)]
pub struct Int8Conv {
    pub geometry: Geometry,
    pub weights: Packed,
    /// The shapes tract gave the replaced node (NCHW, CHW, or `[N, classes]`).
    pub input_shape: TVec<usize>,
    pub output_shape: TVec<usize>,
    /// Weights and biases of the conv, for `info`.
    pub parameters: usize,
    /// A residual join fused into the epilogue by the `int8-residual` rule: the op then takes
    /// the join's other operand as a second input and has the join's outputs.
    pub join: Option<Int8ResidualAdd>,
}

/// The weights, packed for the kernel that runs the conv.
#[derive(Debug, Clone)]
pub enum Packed {
    /// [`kernel`]: 4 channels x 16 positions of the NCHW phase planes per call.
    Blocked(Arc<Weights>),
    /// [`channels_last`]: 16 channels x 4 positions of an NHWC copy per call, for KxK convs
    /// (see [`channels_last_suits`]).
    ChannelsLast(Arc<ChannelsLast>),
}

impl Packed {
    /// Output channels.
    pub fn m(&self) -> usize {
        match self {
            Packed::Blocked(w) => w.m,
            Packed::ChannelsLast(c) => c.m,
        }
    }

    /// u8 outputs (i32 accumulators without).
    pub fn requantised(&self) -> bool {
        match self {
            Packed::Blocked(w) => w.requant.is_some(),
            Packed::ChannelsLast(_) => true,
        }
    }

    fn same(&self, other: &Packed) -> bool {
        match (self, other) {
            (Packed::Blocked(a), Packed::Blocked(b)) => Arc::ptr_eq(a, b),
            (Packed::ChannelsLast(a), Packed::ChannelsLast(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl PartialEq for Int8Conv {
    fn eq(&self, other: &Self) -> bool {
        self.weights.same(&other.weights)
            && self.input_shape == other.input_shape
            && self.join == other.join
    }
}

impl Eq for Int8Conv {}

impl Int8Conv {
    /// Multiply-accumulates of the whole batch.
    pub fn macs(&self) -> u64 {
        let elements = self.input_shape.iter().product();
        self.geometry.macs(elements, self.weights.m())
    }

    fn output_type(&self) -> DatumType {
        if self.weights.requantised() {
            u8::datum_type()
        } else {
            i32::datum_type()
        }
    }
}

impl Op for Int8Conv {
    fn name(&self) -> StaticName {
        match self.join {
            Some(_) => "Int8Conv+Join".into(),
            None => "Int8Conv".into(),
        }
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let g = &self.geometry;
        let kernel = match self.weights {
            Packed::Blocked(_) => "blocked",
            Packed::ChannelsLast(_) => "channels-last",
        };
        Ok(vec![format!(
            "{}x{} stride {:?}, {} -> {} channels, {kernel} kernel",
            g.kernel.0,
            g.kernel.1,
            g.stride,
            g.chw.0,
            self.weights.m()
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for Int8Conv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 1 + self.join.is_some() as usize);
        let x = &inputs[0];
        ensure!(
            *x.shape() == *self.input_shape,
            "Int8Conv built for {:?}, given {:?}",
            self.input_shape,
            x.shape()
        );
        let x = x.try_as_plain_ram()?;
        let x = x.as_slice::<u8>()?;
        let g = &self.geometry;
        let images = x.len() / g.input_len();
        // SAFETY: u8/i32/f32 have no invalid bit patterns, and the tasks write every element
        // (each channel x output position once).
        let mut out = unsafe { Tensor::uninitialized_dt(self.output_type(), &self.output_shape)? };
        // SAFETY: as `out`: the epilogue writes every element when there is a float output.
        let mut sum = match &self.join {
            Some(join) => unsafe { join.sum_tensor(&self.output_shape)? },
            None => tensor1::<f32>(&[]),
        };
        {
            let mut view = out.try_as_plain_ram_mut()?;
            let len = view.len();
            ensure!(len == images * self.weights.m() * g.positions());
            let ptr = OutPtr(view.as_bytes_mut().as_mut_ptr());
            let mut sum_view = sum.try_as_plain_ram_mut()?;
            let sum_ptr = OutPtr(sum_view.as_bytes_mut().as_mut_ptr());
            let b_view = inputs.get(1).map(|b| b.try_as_plain_ram()).transpose()?;
            let epilogue = match (&self.join, &b_view) {
                (Some(op), Some(b)) => {
                    let b = op.operand(b)?;
                    ensure!(
                        b.len() == len,
                        "Int8Conv+Join: residual of {} for {len}",
                        b.len()
                    );
                    Some(Epilogue {
                        op,
                        b,
                        sum: op.float_output.then_some(sum_ptr),
                    })
                }
                (None, _) => None,
                (Some(_), None) => bail!("Int8Conv+Join given no residual"),
            };
            let isa = Isa::detect();
            match &self.weights {
                Packed::ChannelsLast(cl) => {
                    let e = epilogue.as_ref();
                    run_channels_last(cl, x, g.input_len(), images, ptr, e, isa);
                }
                Packed::Blocked(w) => {
                    let tasks = kernel::tasks(g, w.m, images, tract_threads());
                    let x = &*kernel::prepare(g, x, w.x_zero);
                    let starts = &g.row_starts();
                    let e = epilogue.as_ref();
                    on_tract_threads_in_runs(tasks, |run| {
                        for task in run {
                            // SAFETY: `out` (and `sum`, `b`) hold `len` elements and outlive
                            // the scope; tasks cover disjoint channels x positions.
                            unsafe { kernel::run_task(g, starts, w, x, ptr, len, &task, e, isa) };
                        }
                    });
                }
            }
        }
        Ok(match &self.join {
            Some(join) => join.outputs(out, sum),
            None => tvec!(out.into_tvalue()),
        })
    }
}

thread_local! {
    /// The channels-last copies of the input batch, reused across runs.
    static NHWC: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `cl`'s conv over `images` images of `x` (NCHW, `input_len` bytes each) into `out`, joined
/// by `epilogue` if given.
fn run_channels_last(
    cl: &ChannelsLast,
    x: &[u8],
    input_len: usize,
    images: usize,
    out: OutPtr,
    epilogue: Option<&Epilogue>,
    isa: Isa,
) {
    NHWC.with(|buf| {
        let mut buf = buf.borrow_mut();
        let len = cl.image_len();
        buf.resize(images * len, 0);
        for (src, dst) in x.chunks_exact(input_len).zip(buf.chunks_exact_mut(len)) {
            cl.prepare(src, dst);
        }
        let buf = &*buf;
        on_tract_threads_in_runs(cl.units(images, isa), |run| {
            for unit in run {
                let img = &buf[unit.image * len..][..len];
                // SAFETY: `out` holds the batch's outputs and outlives the scope; units cover
                // disjoint channels x positions.
                unsafe { cl.run(img, out, unit, epilogue, isa) };
            }
        });
    })
}

impl TypedOp for Int8Conv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == u8::datum_type());
        let out = self.output_type().fact(self.output_shape.clone());
        let Some(join) = &self.join else {
            ensure!(inputs.len() == 1);
            return Ok(tvec!(out));
        };
        ensure!(
            inputs.len() == 2
                && inputs[1].datum_type == join.b_type()
                && inputs[1].shape == out.shape
                && out.datum_type == u8::datum_type()
        );
        Ok(join.facts(out))
    }

    as_op!();
}

/// KxK convs over whole quads of at least 16 channels: each tap's inner loop then runs long
/// enough to pay for setting up its four input rows (the stem's 3 channels, one quad per
/// tap, ran 70% slower than on the blocked kernel).
fn channels_last_suits(geo: &Geometry) -> bool {
    let c = geo.chw.0;
    geo.kernel != (1, 1) && c.is_multiple_of(4) && c >= 16
}

/// `RESNET_EDGE_CHANNELS_LAST=0` keeps every conv on the blocked kernel (to measure it).
fn channels_last_enabled() -> bool {
    std::env::var("RESNET_EDGE_CHANNELS_LAST").map_or(true, |v| v != "0")
}

/// The scalar constant input `i` of `node`.
fn scalar<T: Datum + Copy>(facts: &[&TypedFact], i: usize) -> Option<T> {
    match konst::<T>(facts, i)?.as_slice() {
        [v] => Some(*v),
        _ => None,
    }
}

/// What the convolution computes: its geometry over one image and its weights `[m, depth]`.
struct Shape {
    geometry: Geometry,
    weights: Vec<i8>,
    m: usize,
    /// The tensor the op reads: the node's input, or what strided `Downsample`s before it read.
    input: OutletId,
}

/// tract's quantised `Conv` (its form of `QLinearConv`): ungrouped, undilated 2D, OIHW
/// weights, NCHW or CHW.
fn conv_shape(model: &TypedModel, node: &TypedNode, conv: &Conv) -> TractResult<Option<Shape>> {
    let spec = &conv.pool_spec;
    if conv.q_params.is_none() || !plain_2d_conv(conv) {
        return Ok(None);
    }
    let facts = model.node_input_facts(node.id)?;
    let Some(shape) = facts[0].shape.as_concrete() else {
        return Ok(None);
    };
    let Some(geometry) = Geometry::of_conv(conv, shape) else {
        return Ok(None);
    };
    let Some(weights) = konst::<i8>(&facts, 1) else {
        return Ok(None);
    };
    Ok(Some(Shape {
        geometry,
        weights,
        m: spec.output_channels,
        input: node.inputs[0],
    }))
}

/// The quantised `EinSum`s tract's declutter leaves: a 1x1 stride-1 conv (`[N]IHW,OI -> [N]OHW`)
/// or a classifier head's `MatMulInteger` over the pooled `[N, K, 1, 1]` map (`[m]kba,kn -> mn`).
fn einsum_shape(model: &TypedModel, node: &TypedNode, op: &EinSum) -> TractResult<Option<Shape>> {
    if op.q_params.is_none() {
        return Ok(None);
    }
    let axes = op.axes.to_string();
    let Some((inputs, _)) = axes.split_once("->") else {
        return Ok(None);
    };
    let facts = model.node_input_facts(node.id)?;
    let (Some(x), Some(w)) = (facts[0].shape.as_concrete(), facts[1].shape.as_concrete()) else {
        return Ok(None);
    };
    let x_axes = inputs.split(',').next().unwrap_or("");
    let (c, h, wd, transposed) = match (axes.as_str(), x) {
        (
            "NIHW,OI,O,,,O,O,,->NOHW"
            | "NIHW,OI,O,,,O,O,,->OHW"
            | "IHW,OI,O,,,O,O,,->NOHW"
            | "IHW,OI,O,,,O,O,,->OHW",
            _,
        ) => {
            let s = &x[x.len().saturating_sub(3)..];
            match (x_axes.len() == x.len(), s) {
                (true, &[c, h, w]) => (c, h, w, false),
                _ => return Ok(None),
            }
        }
        ("mkba,kn,,,,n,,,->mn", &[_, k, 1, 1]) | ("kba,kn,,,,n,,,->mn", &[k, 1, 1]) => {
            (k, 1, 1, true)
        }
        _ => return Ok(None),
    };
    let (m, depth) = match (transposed, w) {
        (false, &[m, i]) if i == c => (m, c),
        (true, &[k, n]) if k == c => (n, c),
        _ => return Ok(None),
    };
    let Some(mut weights) = konst::<i8>(&facts, 1) else {
        return Ok(None);
    };
    if transposed {
        weights = (0..m * depth)
            .map(|i| weights[(i % depth) * m + i / depth])
            .collect();
    }
    let (input, stride, (h_in, w_in)) = if transposed {
        (node.inputs[0], (1, 1), (h, wd))
    } else {
        downsampled(model, node.inputs[0], x.len())
    };
    Ok(Some(Shape {
        geometry: Geometry::pointwise(c, (h_in, w_in), stride, (h, wd)),
        weights,
        m,
        input,
    }))
}

/// A 1x1 stride-2 conv reaches the decluttered graph as `Downsample`s of its input's H and W
/// axes (of a rank-`rank` NCHW or CHW tensor) and the `EinSum`: the tensor before them, the
/// strides they take (y, x), and its H and W. `outlet` itself, stride 1, without them.
pub(crate) fn downsampled(
    model: &TypedModel,
    mut outlet: OutletId,
    rank: usize,
) -> (OutletId, (usize, usize), (usize, usize)) {
    let mut stride = [1usize, 1];
    while let Some(op) = model.node(outlet.node).op_as::<Downsample>() {
        let axis = op.axis + 2;
        let Some(slot) = axis.checked_sub(rank).filter(|&s| s < 2) else {
            break;
        };
        if op.modulo != 0 || op.stride < 1 || stride[slot] != 1 {
            break;
        }
        stride[slot] = op.stride as usize;
        outlet = model.node(outlet.node).inputs[0];
    }
    let hw = model
        .outlet_fact(outlet)
        .ok()
        .and_then(|f| f.shape.as_concrete().map(|s| (s[rank - 2], s[rank - 1])))
        .unwrap_or((0, 0));
    (outlet, (stride[0], stride[1]), hw)
}

/// The rule, rooted at a quantised `Conv` or `EinSum` with the nine inputs of `QLinearConv`
/// (x, w, bias, x zero and scale, w zeros and scales, y zero and scale), all but x constant:
/// u8 in; u8 out (requantised) or i32 (`MatMulInteger`); weight zero points all 0; no pair of
/// weights that could saturate the AVX2 kernel; AVX2 present.
pub fn rewrite(model: &TypedModel, node: &TypedNode) -> TractResult<Option<TypedModelPatch>> {
    if node.inputs.len() != 9 || !kernel::available() {
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
        m,
        input,
    }) = shape
    else {
        return Ok(None);
    };
    let facts = model.node_input_facts(node.id)?;
    let output = model.outlet_fact(node.id.into())?;
    let input_fact = model.outlet_fact(input)?;
    let (Some(input_shape), Some(output_shape)) =
        (input_fact.shape.as_concrete(), output.shape.as_concrete())
    else {
        return Ok(None);
    };
    let requantised = output.datum_type == u8::datum_type();
    if input_fact.datum_type != u8::datum_type()
        || input_shape.iter().product::<usize>() % geometry.input_len().max(1) != 0
        || !(requantised || output.datum_type == i32::datum_type())
        || output_shape.iter().product::<usize>()
            != input_shape.iter().product::<usize>() / geometry.input_len()
                * m
                * geometry.positions()
    {
        return Ok(None);
    }
    let bias_given = facts[2]
        .shape
        .as_concrete()
        .map_or(0, |s| s.iter().product());
    let (Some(bias), Some(x_zero), Some(w_zero)) = (
        per_channel::<i32>(&facts, 2, m),
        scalar::<i32>(&facts, 3),
        per_channel::<i32>(&facts, 5, m),
    ) else {
        return Ok(None);
    };
    let Ok(x_zero) = u8::try_from(x_zero) else {
        return Ok(None);
    };
    if w_zero.iter().any(|&z| z != 0) {
        return Ok(None);
    }
    let w_scales = per_channel::<f32>(&facts, 6, m).unwrap_or_default();
    let y = if requantised {
        let (Some(x_scale), Some(y_zero), Some(y_scale)) = (
            scalar::<f32>(&facts, 4),
            scalar::<i32>(&facts, 7),
            scalar::<f32>(&facts, 8),
        ) else {
            return Ok(None);
        };
        let positive = |s: f32| s.is_finite() && s > 0.0;
        let Ok(y_zero) = u8::try_from(y_zero) else {
            return Ok(None);
        };
        if !positive(x_scale) || !positive(y_scale) || !w_scales.iter().all(|&s| positive(s)) {
            return Ok(None);
        }
        Some((x_scale, &w_scales[..], y_zero, y_scale))
    } else {
        None
    };
    let q = QParams {
        x_zero,
        bias: &bias,
        y,
    };
    let channels_last = (channels_last_suits(&geometry) && channels_last_enabled())
        .then(|| ChannelsLast::new(&geometry, &weights, m, &q))
        .flatten();
    let packed = match channels_last {
        Some(cl) => Packed::ChannelsLast(Arc::new(cl)),
        None => match Weights::new(&weights, m, geometry.depth(), &q) {
            Some(w) => Packed::Blocked(Arc::new(w)),
            None => return Ok(None),
        },
    };
    let op = Int8Conv {
        geometry,
        weights: packed,
        input_shape: input_shape.into(),
        output_shape: output_shape.into(),
        // As `info` counts the unrewritten graph: weights, and a bias given per channel.
        parameters: weights.len() + if bias_given > 1 { bias_given } else { 0 },
        join: None,
    };
    let mut patch = TypedModelPatch::default();
    let x = patch.tap_model(model, input)?;
    let y = patch.wire_node(&node.name, op, &[x])?[0];
    patch.shunt_outside(model, node.id.into(), y)?;
    Ok(Some(patch))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::transform::rewrite::{apply, test_bytes as bytes, Rewrite, Rewrites};
    use tract_core::ops::cnn::{KernelFormat, PaddingSpec, PoolSpec};
    use tract_core::ops::nn::DataFormat;

    /// A `QLinearConv` as tract's ONNX import declutters it (y zero 30, y scale 0.05): the
    /// reference.
    fn qconv(
        shape: &[usize],
        m: usize,
        k: usize,
        stride: usize,
        pad: usize,
        w_max: i8,
    ) -> TypedModel {
        qconv_scaled(shape, m, k, stride, pad, w_max, 0.05)
    }

    /// [`qconv`] with output scale `y_scale` (y zero 30).
    pub(crate) fn qconv_scaled(
        shape: &[usize],
        m: usize,
        k: usize,
        stride: usize,
        pad: usize,
        w_max: i8,
        y_scale: f32,
    ) -> TypedModel {
        let c = shape[shape.len() - 3];
        let mut model = TypedModel::default();
        let x = model.add_source("x", u8::fact(shape)).unwrap();
        let span = 2 * w_max as u32 + 1;
        let w: Vec<i8> = bytes(m * c * k * k, 5)
            .iter()
            .map(|&b| ((b as u32 % span) as i32 - w_max as i32) as i8)
            .collect();
        let w = Tensor::from_shape(&[m, c, k, k], &w).unwrap();
        let bias: Vec<i32> = (0..m as i32).map(|i| i * 331 - 2000).collect();
        let scales: Vec<f32> = (0..m).map(|i| 0.002 + i as f32 * 1e-4).collect();
        let mut inputs = vec![x];
        for (name, t) in [
            ("w", w),
            ("b", tensor1(&bias)),
            ("x0", tensor0(9i32)),
            ("xs", tensor0(0.02f32)),
            ("k0", tensor1(&vec![0i32; m])),
            ("ks", tensor1(&scales)),
            ("y0", tensor0(30i32)),
            ("ys", tensor0(y_scale)),
        ] {
            inputs.push(model.add_const(name, t).unwrap());
        }
        let pool_spec = PoolSpec {
            data_format: if shape.len() == 4 {
                DataFormat::NCHW
            } else {
                DataFormat::CHW
            },
            kernel_shape: tvec![k, k],
            padding: PaddingSpec::Explicit(tvec![pad, pad], tvec![pad, pad]),
            dilations: None,
            strides: Some(tvec![stride, stride]),
            input_channels: c,
            output_channels: m,
        };
        let op = Conv::new(pool_spec, KernelFormat::OIHW, 1, Some(u8::datum_type()));
        let y = model.wire_node("conv", op, &inputs).unwrap()[0];
        model.select_output_outlets(&[y]).unwrap();
        model
    }

    fn run<T: Datum + Copy + Into<i64>>(model: TypedModel, shape: &[usize]) -> Vec<i64> {
        let input = Tensor::from_shape(shape, &bytes(shape.iter().product(), 3)).unwrap();
        let out = model
            .into_optimized()
            .unwrap()
            .into_runnable()
            .unwrap()
            .run(tvec!(input.into()))
            .unwrap();
        let out = out[0].clone().into_tensor();
        let view = out.try_as_plain_ram().unwrap();
        view.as_slice::<T>()
            .unwrap()
            .iter()
            .map(|&v| v.into())
            .collect()
    }

    /// Rewrite `reference` (after tract's declutter when `declutter`), check the quantised
    /// node is gone, and compare outputs: `tolerance` for tract's own requantisation rounding.
    fn check<T: Datum + Copy + Into<i64>>(
        mut reference: TypedModel,
        shape: &[usize],
        declutter: bool,
        tolerance: i64,
    ) {
        if declutter {
            reference.declutter().unwrap();
            assert!(reference.nodes().iter().any(|n| n.op_is::<EinSum>()));
        }
        let (rewritten, report) = apply(reference.clone(), &Rewrites::all()).unwrap();
        if !kernel::available() {
            assert_eq!(report.count(Rewrite::Int8Conv), 0, "fired without AVX2");
            return;
        }
        assert_eq!(
            report.count(Rewrite::Int8Conv),
            1,
            "{shape:?} not rewritten"
        );
        assert!(!rewritten
            .nodes()
            .iter()
            .any(|n| n.op_is::<Conv>() || n.op_is::<EinSum>() || n.op_is::<Downsample>()));
        let want = run::<T>(reference, shape);
        let got = run::<T>(rewritten, shape);
        assert_eq!(want.len(), got.len());
        let worst = want
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .max()
            .unwrap();
        assert!(worst <= tolerance, "{shape:?}: off by {worst}");
        let spread = want.iter().filter(|&&v| v != want[0]).count();
        assert!(spread > want.len() / 2, "degenerate reference");
    }

    #[test]
    fn matches_tract_qlinear_conv() {
        // tract requantises through its own fixed-point path: allow it one step.
        check::<u8>(
            qconv(&[1, 5, 11, 9], 6, 3, 1, 1, 64),
            &[1, 5, 11, 9],
            false,
            1,
        );
        check::<u8>(
            qconv(&[2, 3, 20, 18], 8, 7, 2, 3, 64),
            &[2, 3, 20, 18],
            false,
            1,
        );
        check::<u8>(
            qconv(&[1, 8, 7, 7], 4, 1, 2, 0, 64),
            &[1, 8, 7, 7],
            false,
            1,
        );
        check::<u8>(
            qconv(&[12, 10, 10], 5, 3, 2, 1, 64),
            &[12, 10, 10],
            false,
            1,
        );
        // 1x1 stride-1 convs, which tract's declutter turns into EinSum.
        check::<u8>(
            qconv(&[1, 16, 6, 6], 9, 1, 1, 0, 64),
            &[1, 16, 6, 6],
            true,
            1,
        );
        check::<u8>(qconv(&[20, 5, 3], 7, 1, 1, 0, 64), &[20, 5, 3], true, 1);
        // 1x1 stride 2, which it turns into two Downsamples and an EinSum (all absorbed).
        check::<u8>(qconv(&[1, 8, 7, 7], 4, 1, 2, 0, 64), &[1, 8, 7, 7], true, 1);
        check::<u8>(qconv(&[8, 9, 6], 4, 1, 2, 0, 64), &[8, 9, 6], true, 1);
    }

    #[test]
    fn kxk_convs_of_whole_channel_quads_run_channels_last() {
        // Batch 2 and a CHW stride-2 conv; then the stem's 3 channels and a 1x1, which stay.
        for (shape, m, k, stride, channels_last) in [
            (&[2, 16, 9, 8][..], 20, 3, 1, true),
            (&[32, 9, 9][..], 16, 3, 2, true),
            (&[1, 3, 20, 18][..], 8, 7, 2, false),
            (&[1, 16, 6, 6][..], 9, 1, 1, false),
        ] {
            let reference = qconv(shape, m, k, stride, k / 2, 64);
            check::<u8>(reference.clone(), shape, false, 1);
            let (rewritten, _) = apply(reference, &Rewrites::all()).unwrap();
            let kinds: Vec<bool> = rewritten
                .nodes()
                .iter()
                .filter_map(|n| n.op_as::<Int8Conv>())
                .map(|c| matches!(c.weights, Packed::ChannelsLast(_)))
                .collect();
            if kernel::available() {
                assert_eq!(kinds, [channels_last], "{shape:?} {k}x{k}");
            }
        }
    }

    /// A classifier head as tract imports `MatMulInteger`: `[1, K, 1, 1] x [K, N]` to i32.
    fn head(k: usize, n: usize) -> TypedModel {
        let mut model = TypedModel::default();
        let x = model.add_source("x", u8::fact([1, k, 1, 1])).unwrap();
        let w: Vec<i8> = bytes(k * n, 9)
            .iter()
            .map(|&b| (b as i32 % 129 - 64) as i8)
            .collect();
        let mut inputs = vec![x];
        for (name, t) in [
            ("w", Tensor::from_shape(&[k, n], &w).unwrap()),
            ("b", tensor0(0i32)),
            ("x0", tensor0(3u8)),
            ("xs", tensor0(1f32)),
            ("k0", tensor1(&vec![0i8; n])),
            ("ks", tensor0(1f32)),
            ("y0", tensor0(0i32)),
            ("ys", tensor0(1f32)),
        ] {
            inputs.push(model.add_const(name, t).unwrap());
        }
        let op = EinSum {
            axes: "mkba,kn,,,,n,,,->mn".parse().unwrap(),
            operating_dt: i32::datum_type(),
            q_params: Some(i32::datum_type()),
        };
        let y = model.wire_node("fc", op, &inputs).unwrap()[0];
        model.select_output_outlets(&[y]).unwrap();
        model
    }

    #[test]
    fn matches_tract_matmul_integer_head() {
        check::<i32>(head(40, 13), &[1, 40, 1, 1], false, 0);
    }

    #[test]
    fn leaves_weights_that_could_saturate_to_tract() {
        let model = qconv(&[1, 4, 6, 6], 4, 3, 1, 1, 127);
        let (_, report) = apply(model, &Rewrites::all()).unwrap();
        assert_eq!(report.count(Rewrite::Int8Conv), 0);
    }
}
