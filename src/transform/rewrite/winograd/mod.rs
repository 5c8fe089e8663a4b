//! `winograd`: stride-1 3x3 convolutions as Winograd minimal filtering.
//!
//! Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016): an m x m
//! output tile of a 3x3 convolution is `A^T [(G g G^T) . (B^T d B)] A` over an
//! (m+2) x (m+2) input tile `d`. Summed over input channels, the elementwise product becomes
//! (m+2)^2 independent matmuls `U[p] (K x C) . V[p] (C x tiles)`, which is where the time goes
//! and which run on `direct-conv`'s GEMM or tract's kernels, weights packed once at load
//! ([`matmul`]).
//! Multiplies drop from 9 per output to (m+2)^2/m^2: 2.25x fewer for F(2x2,3x3), 4x for
//! F(4x4,3x3).
//!
//! The graph `Conv(x)` [+ `Max(., 0)`] becomes
//! `WinogradInput(x) -> WinogradMatMul -> WinogradOutput(bias, relu)`, with `U = G g G^T`
//! computed here, once, and the positions split into groups (one tensor per group between the
//! ops). The transforms are ours ([`transforms`]), vectorised over eight tiles at a time.
//!
//! Transformed weights are (m+2)^2/9 times the size of the 3x3 kernel (1.8x for F(2,3), 4x for
//! F(4,3)), and with few tiles the matmuls stream weights rather than compute. So the rule only
//! fires when a map has enough tiles per weight: see [`Tile::for_map`].

use tract_core::internal::*;
use tract_core::ops::cnn::Conv;
use tract_core::ops::nn::DataFormat;

use super::{
    all_ones, on_tract_threads, on_tract_threads_in_runs, plain_2d_conv, relu_input, sole_successor,
};

pub mod matmul;
pub mod transforms;
use super::direct_conv::kernel::OutPtr;
use matmul::group_ranges;
pub use matmul::WinogradMatMul;
use transforms::{input_plane, output_plane, Geometry, Phases, Variant, F2, F4};

/// Fewest tiles (over the batch) F(2x2,3x3) needs before its matmuls, `K x C` weights by
/// `C x tiles`, stop being bound by streaming the transformed weights; F(4x4,3x3), with 2.25x
/// the weights, needs twice as many. Measured per layer with `profile` on ResNet-18 on the
/// README's EPYC (1 thread, ms per conv, direct -> F(2x2) -> F(4x4)): 56x56 4.3 -> - -> 2.6,
/// 28x28 3.9 -> 2.6 -> 2.7, 14x14 3.5 -> 3.0 -> 3.4, 7x7 7.5 -> 4.5 -> (4 tiles, slower).
/// So 56x56 and 28x28 maps take F(4x4), 14x14 and 7x7 F(2x2).
const MIN_TILES: usize = 16;
/// Overrides [`MIN_TILES`], to tune it on a new CPU with `profile`.
pub const MIN_TILES_ENV: &str = "RESNET_EDGE_WINOGRAD_MIN_TILES";

/// The Winograd variant: output tile side m.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tile {
    /// F(2x2,3x3): 4x4 input tiles, 16 matmuls, transforms with additions only.
    F2,
    /// F(4x4,3x3): 6x6 input tiles, 36 matmuls, constants up to 8 in the transforms (Lavin &
    /// Gray's points 0, +-1, +-2); f32 error stays near 1e-6 relative for 3x3 kernels.
    F4,
}

impl Tile {
    /// Output tile side, from the variant's constants ([`transforms::Variant`]).
    pub fn m(self) -> usize {
        match self {
            Tile::F2 => F2::M,
            Tile::F4 => F4::M,
        }
    }

    /// Input tile side.
    pub fn alpha(self) -> usize {
        match self {
            Tile::F2 => F2::A,
            Tile::F4 => F4::A,
        }
    }

    /// The largest variant with enough tiles for a `batch x oh x ow` output ([`MIN_TILES`]
    /// for F(2x2), twice that for F(4x4)), if any.
    pub fn for_map(batch: usize, oh: usize, ow: usize) -> Option<Tile> {
        let min_tiles = std::env::var(MIN_TILES_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(MIN_TILES);
        [(Tile::F4, 2 * min_tiles), (Tile::F2, min_tiles)]
            .into_iter()
            .find(|(t, min)| batch * oh.div_ceil(t.m()) * ow.div_ceil(t.m()) >= *min)
            .map(|(t, _)| t)
    }

    /// `U = G g G^T` of an OIHW `[k, c, 3, 3]` kernel, as the `[alpha^2, K, C]` matmul operand.
    fn transform_kernel(self, kernel: &[f32], k: usize, c: usize) -> TractResult<Tensor> {
        let u = match self {
            Tile::F2 => transforms::transform_kernel::<F2>(kernel, k, c),
            Tile::F4 => transforms::transform_kernel::<F4>(kernel, k, c),
        };
        let alpha = self.alpha();
        Tensor::from_shape(&[alpha * alpha, k, c], &u)
    }
}

/// `[N, C, H, W]` (or `[C, H, W]`, tract's batch-free form) ->
/// `[alpha^2, C, N * tiles_h * tiles_w]`: each input tile `B^T d B`, with the convolution's
/// zero padding applied here.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WinogradInput {
    pub tile: Tile,
    /// Zero rows above and columns left of the input.
    pub pad: (usize, usize),
    pub tiles: (usize, usize),
    /// The convolution's output size (for the MAC count; the tiles may overhang it).
    pub out_hw: (usize, usize),
}

/// `(n, c, h, w)` of an NCHW or CHW shape.
fn nchw<D: Clone>(shape: &[D], one: D) -> Option<(D, D, D, D)> {
    match shape {
        [n, c, h, w] => Some((n.clone(), c.clone(), h.clone(), w.clone())),
        [c, h, w] => Some((one, c.clone(), h.clone(), w.clone())),
        _ => None,
    }
}

impl Op for WinogradInput {
    fn name(&self) -> StaticName {
        "WinogradInput".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{:?}, tiles {:?}", self.tile, self.tiles)])
    }

    op_as_typed_op!();
}

impl EvalOp for WinogradInput {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let Some((n, c, h, w)) = nchw(input.shape(), 1) else {
            bail!("WinogradInput expects NCHW or CHW, got {:?}", input.shape());
        };
        let alpha = self.tile.alpha();
        let per_image = self.tiles.0 * self.tiles.1;
        let geometry = Geometry {
            tiles: self.tiles,
            t_total: n * per_image,
        };
        // One tensor per group of positions (see `matmul`). Every element is written below:
        // each (position, channel, tile) once.
        let mut outs = group_ranges(alpha * alpha)
            .iter()
            .map(|r| unsafe { Tensor::uninitialized::<f32>(&[r.len(), c, geometry.t_total]) })
            .collect::<TractResult<Vec<_>>>()?;
        let x = input.try_as_plain_ram()?;
        let x = x.as_slice::<f32>()?;
        let mut views = outs
            .iter_mut()
            .map(Tensor::try_as_plain_ram_mut)
            .collect::<TractResult<Vec<_>>>()?;
        // Position p's `[C, t_total]` block, across the groups (see `matmul`); channel ch's row
        // of it starts at `ch * t_total`. Each thread finds its channels' rows there: a `Vec` of
        // rows per channel, built here and freed on the threads, had cost more than the
        // transforms on small maps (ResNet-50's transforms, `profile --statistic min`: 3.8 ->
        // 2.9 ms at one thread, 3.0 -> 1.7 at two).
        let row = geometry.t_total;
        ensure!(
            c * row > 0,
            "WinogradInput given an empty input {:?}",
            input.shape()
        );
        let mut blocks = Vec::with_capacity(alpha * alpha);
        for view in &mut views {
            let data = view.as_slice_mut::<f32>()?;
            blocks.extend(
                data.chunks_exact_mut(c * row)
                    .map(|b| OutPtr(b.as_mut_ptr())),
            );
        }
        ensure!(blocks.len() == alpha * alpha);
        let shape = (self, x, [n, c, h, w], geometry);
        let blocks = &blocks[..];
        on_tract_threads_in_runs((0..c).collect(), |run| match self.tile {
            Tile::F2 => input_channels::<F2>(shape, blocks, run),
            Tile::F4 => input_channels::<F4>(shape, blocks, run),
        });
        drop(views);
        Ok(outs.into_iter().map(Tensor::into_tvalue).collect())
    }
}

/// Every image's plane of each channel of `run` into that channel's rows of the position
/// `blocks` (`[C, t_total]` each), with one phase-split scratch for the whole run (its zero
/// padding is never overwritten).
fn input_channels<V: Variant>(
    (op, x, [n, c, h, w], geometry): (&WinogradInput, &[f32], [usize; 4], Geometry),
    blocks: &[OutPtr],
    run: &mut dyn Iterator<Item = usize>,
) {
    let mut phases = Phases::new::<V>(op.tiles);
    let per_image = op.tiles.0 * op.tiles.1;
    let row = geometry.t_total;
    let mut rows = Vec::with_capacity(blocks.len());
    for ch in run {
        rows.clear();
        // SAFETY: row `ch` of each block, inside it (`ch < c`, blocks of `c` rows); only this
        // run handles channel `ch`, and the blocks outlive the parallel region.
        rows.extend(blocks.iter().map(|b| unsafe { b.slice(ch * row, row) }));
        for b in 0..n {
            let plane = &x[(b * c + ch) * h * w..][..h * w];
            input_plane::<V>(
                plane,
                (h, w),
                op.pad,
                geometry,
                &mut phases,
                &mut rows,
                b * per_image,
            );
        }
    }
}

impl TypedOp for WinogradInput {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let Some((n, c, _, _)) = nchw(&inputs[0].shape, 1.to_dim()) else {
            bail!(
                "WinogradInput expects NCHW or CHW, got {:?}",
                inputs[0].shape
            );
        };
        let tiles = n * (self.tiles.0 * self.tiles.1);
        let groups = group_ranges(self.tile.alpha().pow(2));
        Ok(groups
            .iter()
            .map(|r| f32::fact(tvec![r.len().to_dim(), c.clone(), tiles.clone()]))
            .collect())
    }

    as_op!();
}

/// `[alpha^2, K, N * tiles]` -> `[N, K, oh, ow]` (or `[K, oh, ow]`): each tile `A^T m A` +
/// bias, ReLU'd when the convolution was followed by one, cropped to the output.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WinogradOutput {
    pub tile: Tile,
    pub tiles: (usize, usize),
    pub out_hw: (usize, usize),
    /// NCHW output; CHW without.
    pub batch_axis: bool,
    /// One value per output channel.
    pub bias: Arc<Tensor>,
    pub relu: bool,
}

impl Op for WinogradOutput {
    fn name(&self) -> StaticName {
        "WinogradOutput".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{:?}, relu: {}", self.tile, self.relu)])
    }

    op_as_typed_op!();
}

impl EvalOp for WinogradOutput {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let &[_, k, t_total] = inputs[0].shape() else {
            bail!(
                "WinogradOutput expects [positions, K, tiles], got {:?}",
                inputs[0].shape()
            );
        };
        let alpha = self.tile.alpha();
        // Position p's [K, tiles] block, across the groups.
        let views = inputs
            .iter()
            .map(|t| t.try_as_plain_ram())
            .collect::<TractResult<Vec<_>>>()?;
        let mut src: Vec<&[f32]> = Vec::with_capacity(alpha * alpha);
        for view in &views {
            ensure!(
                view.shape()[1..] == [k, t_total],
                "WinogradOutput group shapes differ"
            );
            src.extend(view.as_slice::<f32>()?.chunks_exact(k * t_total));
        }
        ensure!(src.len() == alpha * alpha);
        let per_image = self.tiles.0 * self.tiles.1;
        ensure!(per_image > 0 && t_total % per_image == 0);
        let n = t_total / per_image;
        let (oh, ow) = self.out_hw;
        let bias = self.bias.try_as_plain_ram()?;
        let bias = bias.as_slice::<f32>()?;
        ensure!(bias.len() == k);
        // Every element is written below: the tiles cover the output, cropped at its edges.
        let shape = if self.batch_axis {
            tvec![n, k, oh, ow]
        } else {
            tvec![k, oh, ow]
        };
        let mut out = unsafe { Tensor::uninitialized::<f32>(&shape)? };
        let mut view = out.try_as_plain_ram_mut()?;
        let y = view.as_slice_mut::<f32>()?;
        let geometry = Geometry {
            tiles: self.tiles,
            t_total,
        };
        let tile = self.tile;
        let relu = self.relu;
        let planes: Vec<_> = y.chunks_exact_mut(oh * ow).enumerate().collect();
        on_tract_threads(planes, |(plane_index, plane)| {
            let (b, ch) = (plane_index / k, plane_index % k);
            let at = (ch, b * per_image, geometry, (bias[ch], relu));
            match tile {
                Tile::F2 => output_plane::<F2>(&src, at.0, at.1, at.2, at.3, plane, (oh, ow)),
                Tile::F4 => output_plane::<F4>(&src, at.0, at.1, at.2, at.3, plane, (oh, ow)),
            }
        });
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for WinogradOutput {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = &inputs[0].shape;
        ensure!(
            shape.rank() == 3,
            "WinogradOutput expects [positions, K, tiles]"
        );
        let per_image = self.tiles.0 * self.tiles.1;
        let (k, oh, ow) = (
            shape[1].clone(),
            self.out_hw.0.to_dim(),
            self.out_hw.1.to_dim(),
        );
        let out = if self.batch_axis {
            tvec![shape[2].clone() / per_image as u64, k, oh, ow]
        } else {
            tvec![k, oh, ow]
        };
        Ok(tvec!(f32::fact(out)))
    }

    as_op!();
}

/// For the matmul of a Winograd convolution (the `EinSum` fed by [`WinogradInput`]): the
/// kernel's parameter count (with one bias per output channel, which the rewrite moves into
/// [`WinogradOutput`]) and the multiply-accumulates of the direct 3x3 convolution it
/// replaces, so `info` reports the network's own figures and `profile` effective GFLOP/s.
pub fn direct_conv_equivalent(model: &TypedModel, node: &TypedNode) -> Option<(usize, u64)> {
    let &WinogradMatMul { k, c, .. } = node.op_as::<WinogradMatMul>()?;
    let input = model
        .node(node.inputs.first()?.node)
        .op_as::<WinogradInput>()?;
    let facts = model.node_input_facts(node.id).ok()?;
    let tiles = facts.first()?.shape.as_concrete()?.get(2).copied()?;
    let images = tiles / (input.tiles.0 * input.tiles.1).max(1);
    let (oh, ow) = input.out_hw;
    Some((k * c * 9 + k, (k * c * 9 * images * oh * ow) as u64))
}

/// What the rule needs to know about a convolution it can take.
struct Plan3x3 {
    tile: Tile,
    k: usize,
    c: usize,
    pad: (usize, usize),
    out_hw: (usize, usize),
    batch_axis: bool,
    kernel: Arc<Tensor>,
    bias: Arc<Tensor>,
}

/// The convolution at `node` if it is f32, NCHW or CHW, OIHW, ungrouped, 3x3, stride 1, dilation 1,
/// with constant kernel and bias and a concrete shape with enough tiles.
fn match_conv(model: &TypedModel, node: &TypedNode) -> TractResult<Option<Plan3x3>> {
    let Some(conv) = node.op_as::<Conv>() else {
        return Ok(None);
    };
    let spec = &conv.pool_spec;
    if conv.q_params.is_some()
        || !plain_2d_conv(conv)
        || *spec.kernel_shape != [3, 3]
        || !all_ones(&spec.strides)
        || node.inputs.len() != 3
    {
        return Ok(None);
    }
    let facts = model.node_input_facts(node.id)?;
    let (x, kernel, bias) = (facts[0], facts[1], facts[2]);

    if x.datum_type != f32::datum_type() {
        return Ok(None);
    }
    let (Some(shape), Some(kernel), Some(bias)) = (
        x.shape.as_concrete(),
        kernel.konst.clone(),
        bias.konst.clone(),
    ) else {
        return Ok(None);
    };
    let Some((n, c, h, w)) = nchw(shape, 1) else {
        return Ok(None);
    };
    let k = spec.output_channels;
    if kernel.shape() != [k, c, 3, 3] || kernel.datum_type() != f32::datum_type() {
        return Ok(None);
    }
    let padding = spec.computed_padding(&[h, w]);
    let out_hw = (padding[0].convoluted, padding[1].convoluted);
    let Some(tile) = Tile::for_map(n, out_hw.0, out_hw.1) else {
        return Ok(None);
    };
    let bias = match bias.len() {
        len if len == k => bias,
        1 => Arc::new(tensor1(&vec![bias.cast_to_scalar::<f32>()?; k])),
        0 => Arc::new(tensor1(&vec![0f32; k])),
        _ => return Ok(None),
    };
    let bias = Arc::new(bias.cast_to::<f32>()?.into_owned().into_shape(&[k])?);
    Ok(Some(Plan3x3 {
        tile,
        k,
        c,
        pad: (padding[0].pad_before, padding[1].pad_before),
        out_hw,
        batch_axis: spec.data_format == DataFormat::NCHW,
        kernel,
        bias,
    }))
}

/// The rule, rooted at the `Conv`; a ReLU that is the conv's only successor is absorbed.
pub fn rewrite(model: &TypedModel, node: &TypedNode) -> TractResult<Option<TypedModelPatch>> {
    let Some(plan) = match_conv(model, node)? else {
        return Ok(None);
    };
    let relu = sole_successor(model, node.id.into())
        .filter(|succ| relu_input(model, succ) == Some(node.id.into()));
    let Plan3x3 {
        tile,
        k,
        c,
        pad,
        out_hw,
        batch_axis,
        kernel,
        bias,
    } = plan;
    let tiles = (out_hw.0.div_ceil(tile.m()), out_hw.1.div_ceil(tile.m()));
    let kernel = kernel.try_as_plain_ram()?;
    let u = tile.transform_kernel(kernel.as_slice::<f32>()?, k, c)?;

    let mut patch = TypedModelPatch::default();
    let name = &node.name;
    let x = patch.tap_model(model, node.inputs[0])?;
    let v = patch.wire_node(
        format!("{name}.winograd_in"),
        WinogradInput {
            tile,
            pad,
            tiles,
            out_hw,
        },
        &[x],
    )?;
    let positions = group_ranges(tile.alpha().pow(2));
    let n = model
        .outlet_fact(node.id.into())?
        .shape
        .as_concrete()
        .map_or(1, |s| if batch_axis { s[0] } else { 1 });
    let matmul = WinogradMatMul::new(&u, &positions, n * tiles.0 * tiles.1)?;
    let mm = patch.wire_node(format!("{name}.winograd_mm"), matmul, &v)?;
    let output = WinogradOutput {
        tile,
        tiles,
        out_hw,
        batch_axis,
        bias,
        relu: relu.is_some(),
    };
    let y = patch.wire_node(format!("{name}.winograd_out"), output, &mm)?[0];
    let replaced = relu.map(|r| r.id).unwrap_or(node.id);
    patch.shunt_outside(model, replaced.into(), y)?;
    Ok(Some(patch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::rewrite::{apply, wire_relu, Rewrite, Rewrites};
    use tract_core::ops::cnn::{KernelFormat, PaddingSpec, PoolSpec};

    /// A pseudo-random but fixed sequence in [-1, 1).
    pub(super) fn values(len: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2654435761).max(1);
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// `conv3x3(x)` [+ ReLU] with tract's own `Conv`: the reference the rewrite must match.
    /// A rank-3 shape is CHW, the batch-free form tract's declutter leaves at batch 1.
    fn conv(shape: &[usize], k: usize, padding: PaddingSpec, relu: bool) -> TypedModel {
        let c = shape[shape.len() - 3];
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact(shape)).unwrap();
        let kernel = Tensor::from_shape(&[k, c, 3, 3], &values(k * c * 9, 7)).unwrap();
        let kernel = model.add_const("w", kernel).unwrap();
        let bias = model.add_const("b", tensor1(&values(k, 11))).unwrap();
        let pool_spec = PoolSpec {
            data_format: if shape.len() == 4 {
                DataFormat::NCHW
            } else {
                DataFormat::CHW
            },
            kernel_shape: tvec![3, 3],
            padding,
            dilations: None,
            strides: Some(tvec![1, 1]),
            input_channels: c,
            output_channels: k,
        };
        let op = Conv::new(pool_spec, KernelFormat::OIHW, 1, None);
        let mut y = model.wire_node("conv", op, &[x, kernel, bias]).unwrap()[0];
        if relu {
            y = wire_relu(&mut model, y);
        }
        model.select_output_outlets(&[y]).unwrap();
        model
    }

    fn run(model: TypedModel, shape: &[usize]) -> Tensor {
        let input = Tensor::from_shape(shape, &values(shape.iter().product(), 3)).unwrap();
        let model = model.into_optimized().unwrap();
        let out = model
            .into_runnable()
            .unwrap()
            .run(tvec!(input.into()))
            .unwrap();
        out[0].clone().into_tensor()
    }

    fn check(shape: &[usize], k: usize, padding: PaddingSpec, relu: bool, tile: Tile) {
        let reference = conv(shape, k, padding.clone(), relu);
        let (rewritten, report) = apply(reference.clone(), &Rewrites::all()).unwrap();
        assert_eq!(
            report.count(Rewrite::Winograd),
            1,
            "{shape:?} not rewritten"
        );
        let ops: Vec<_> = rewritten.nodes().iter().map(|n| n.op.clone()).collect();
        let out = ops
            .iter()
            .find_map(|op| op.downcast_ref::<WinogradOutput>())
            .expect("a WinogradOutput");
        assert_eq!((out.tile, out.relu), (tile, relu), "{shape:?}");
        assert!(!ops.iter().any(|op| op.is::<Conv>()), "conv left behind");
        let want = run(reference, shape);
        let got = run(rewritten, shape);
        assert_eq!(want.shape(), got.shape());
        let want = want
            .try_as_plain_ram()
            .unwrap()
            .as_slice::<f32>()
            .unwrap()
            .to_vec();
        let got = got
            .try_as_plain_ram()
            .unwrap()
            .as_slice::<f32>()
            .unwrap()
            .to_vec();
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            assert!(
                (w - g).abs() <= 1e-5 * scale,
                "{shape:?} {tile:?} at {i}: {w} vs {g}"
            );
        }
        if relu {
            assert!(want.contains(&0.0) && want.iter().any(|&v| v > 0.0));
        }
    }

    fn same() -> PaddingSpec {
        PaddingSpec::Explicit(tvec![1, 1], tvec![1, 1])
    }

    #[test]
    fn f4_matches_tract_conv_with_padding_and_relu() {
        check(&[1, 3, 32, 32], 5, same(), true, Tile::F4);
        check(&[1, 4, 32, 32], 3, same(), false, Tile::F4);
    }

    #[test]
    fn f4_crops_maps_that_are_not_a_multiple_of_the_tile() {
        check(&[1, 2, 30, 34], 3, same(), true, Tile::F4);
        // Valid padding: 34 -> 32, and asymmetric explicit padding.
        check(&[1, 2, 34, 34], 3, PaddingSpec::Valid, false, Tile::F4);
        check(
            &[1, 2, 33, 35],
            3,
            PaddingSpec::Explicit(tvec![1, 0], tvec![0, 1]),
            false,
            Tile::F4,
        );
    }

    #[test]
    fn f2_for_smaller_maps_and_batches() {
        check(&[1, 3, 12, 12], 4, same(), true, Tile::F2);
        check(&[2, 3, 6, 7], 4, same(), false, Tile::F2);
        check(&[2, 3, 16, 17], 4, same(), false, Tile::F4);
        // 14x14 (16 4x4 tiles, fewer than F(4x4) needs) takes F(2x2).
        check(&[1, 3, 14, 14], 4, same(), false, Tile::F2);
    }

    #[test]
    fn batch_free_chw_convs_too() {
        check(&[3, 32, 32], 5, same(), true, Tile::F4);
        check(&[3, 7, 7], 2, same(), false, Tile::F2);
    }

    #[test]
    fn leaves_small_maps_strided_and_grouped_convs_alone() {
        let tiny = conv(&[1, 2, 5, 5], 2, same(), false);
        assert_eq!(
            apply(tiny, &Rewrites::all())
                .unwrap()
                .1
                .count(Rewrite::Winograd),
            0
        );
        let mut strided = conv(&[1, 2, 32, 32], 2, same(), false);
        for node in strided.nodes_mut() {
            if let Some(conv) = node.op_as_mut::<Conv>() {
                conv.pool_spec.strides = Some(tvec![2, 2]);
            }
        }
        assert_eq!(
            apply(strided, &Rewrites::all())
                .unwrap()
                .1
                .count(Rewrite::Winograd),
            0
        );
        let off = Rewrites::all().without("winograd").unwrap();
        let big = conv(&[1, 2, 32, 32], 2, same(), false);
        assert_eq!(apply(big, &off).unwrap().1.count(Rewrite::Winograd), 0);
    }
}
