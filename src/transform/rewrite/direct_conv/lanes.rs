//! The 1x1 convolutions of 7x7 maps (ResNet's last stage, its projection shortcut too) with
//! output channels in the vector lanes: `out[m..m + 32][p] += w[m..m + 32][k] * x[k][p]`, the
//! weights packed at load as 32-channel vectors per input channel, each activation broadcast.
//! This is the shape of onnxruntime's pointwise NCHWc kernel (MLAS `MlasConvPointwise`), on
//! NCHW input.
//!
//! Why: [`super::kernel`] puts 16 positions in the lanes, so a 7x7 map's 49 positions take
//! four panels (64 lanes, the last for one position). Here a tile is 12 positions and the
//! last one narrower, so no lane is wasted. The activations are packed once per run into
//! tiles (each tile's depth one sequential stream), and a 32-channel block's weights stay in
//! L1 over a depth block while every tile passes them; the sums go to the outputs once.
//! `profile --statistic min`, ResNet-50 at one thread on the README's Xeon: layer4's 1x1s
//! 3.97 -> 3.7 ms (conv1) and 3.56 -> 3.2 (conv3); onnxruntime 2.5 and 2.1.
//!
//! Only where AVX-512 runs (32 registers for 24 sums); elsewhere the panel kernel stays.

use std::cell::RefCell;
use std::ops::Range;

use crate::transform::rewrite::aligned::Aligned;
use crate::transform::rewrite::isa::Isa;
use crate::transform::rewrite::phase_planes::{Geometry, Rows};
use crate::transform::rewrite::{copy_run, on_tract_threads_in_runs};

use super::kernel::{Finish, OutPtr, Weights};

/// Output channels per tile: two vectors of 16.
const LANES: usize = 32;
/// Positions per tile: 2 x 12 = 24 sums in registers, as [`super::kernel`]'s AVX-512 units.
const POSITIONS: usize = 12;
/// The largest map (in positions) run here: 7x7 and 8x8. ResNet-50's 14x14 1x1s (196
/// positions, 4 in the last of 13 panels) ran slower here than on the panel kernel: 5.3 ->
/// 5.9 ms (conv1), 4.3 -> 5.4 (conv3; a 256-deep conv scatters its sums after little work).
const MAX_POSITIONS: usize = 64;

/// Whether a conv of geometry `geo` runs on this kernel here: a small map whose im2col rows
/// hold no dropped columns (1x1s, strided ones too). A 3x3/2's rows are one column wider
/// than its outputs; packed in pieces, ResNet-50's layer4.0.conv2 (4608 deep) took 2.8-3.1
/// ms against 2.4-2.5 on the panel kernel.
pub fn applies(geo: &Geometry) -> bool {
    let whole_rows = match geo.rows() {
        Rows::Pointwise => true,
        Rows::Phased { wq, .. } => wq == geo.out.1,
    };
    cfg!(target_arch = "x86_64")
        && Isa::detect() >= Isa::Avx512
        && whole_rows
        && geo.positions() <= MAX_POSITIONS
}

/// Weights `[m][k]` packed as `[m / LANES][k][LANES]` (the last block zero-padded), the bias
/// padded the same way; `None` unless the sizes agree.
pub fn weights(w: &[f32], bias: &[f32], m: usize, k: usize) -> Option<Weights> {
    Weights::laid_out(w, bias, (m, k), LANES, |packed| {
        for (row, values) in w.chunks_exact(k).enumerate() {
            let (b, l) = (row / LANES, row % LANES);
            for (kk, &v) in values.iter().enumerate() {
                packed[(b * k + kk) * LANES + l] = v;
            }
        }
    })
}

/// Blocks of [`LANES`] output channels.
fn block_count(w: &Weights) -> usize {
    w.m.div_ceil(LANES)
}

/// The tasks of a conv over `images` images: one per image and channel block, in order, so
/// that each thread's contiguous run of them (`on_tract_threads_in_runs`) is a range of
/// channel blocks.
fn tasks(w: &Weights, images: usize) -> Vec<(usize, Range<usize>)> {
    (0..images)
        .flat_map(|i| (0..block_count(w)).map(move |b| (i, b..b + 1)))
        .collect()
}

/// Elements of one image's packed activations ([`pack`]).
fn packed_len(geo: &Geometry) -> usize {
    tiles(geo) * geo.depth() * POSITIONS
}

/// Tile `t` of one image's im2col matrix packed as `[k][POSITIONS]` into `out` (`k *
/// POSITIONS` values of the image's [`packed_len`]; a last, narrower tile leaves the rest of
/// each row unwritten and unread), from `x`, the image's input as [`prepare`] left it, whose
/// row `k` starts at `starts[k]` ([`Geometry::row_starts`]) and holds the outputs in order
/// ([`applies`]). Each tile's depth is then one sequential stream: read straight from the
/// input rows, a tile was a 48-byte piece of a row every `4 * n` bytes, and ResNet-50's
/// 14x14 1x1s ran slower than on [`super::kernel`].
///
/// [`prepare`]: crate::transform::rewrite::phase_planes::prepare
fn pack(geo: &Geometry, starts: &[usize], x: &[f32], t: usize, out: &mut [f32]) {
    let p0 = t * POSITIONS;
    let width = POSITIONS.min(geo.positions().saturating_sub(p0));
    for (&start, to) in starts.iter().zip(out.chunks_exact_mut(POSITIONS)) {
        let to = &mut to[..width];
        match x.get(start + p0..start + p0 + width) {
            Some(row) => copy_run::<f32, POSITIONS>(to, row),
            None => to.fill(0.0),
        }
    }
}

thread_local! {
    /// The tiles [`conv`] packs per run, reused across runs.
    static PACKED: RefCell<Aligned<f32>> = const { RefCell::new(Aligned::new()) };
}

/// The conv of geometry `geo` over `images` images: every image's tiles packed from `x`
/// ([`pack`]; the tiles split over the plan's threads), then the channel blocks run over them.
///
/// # Safety
/// [`applies`] held for `geo` and `w` came from [`weights`]; `x` is the whole batch as
/// [`prepare`] returned it, `starts` is `geo.row_starts()`; `out` points at `images * w.m *
/// geo.positions()` f32s that outlive the call, written by nothing else meanwhile.
///
/// [`prepare`]: crate::transform::rewrite::phase_planes::prepare
pub unsafe fn conv(
    geo: &Geometry,
    starts: &[usize],
    w: &Weights,
    x: &[f32],
    out: OutPtr,
    images: usize,
    finish: Finish,
) {
    let (input, len, tiles) = (geo.prepared_len(), packed_len(geo), tiles(geo));
    let tile = geo.depth() * POSITIONS;
    PACKED.with(|packed| {
        let mut packed = packed.borrow_mut();
        // Every tile is written in full by `pack`.
        let packed = packed.sized_to(images * len);
        let to = OutPtr(packed.as_mut_ptr());
        let items: Vec<(usize, usize)> = (0..images)
            .flat_map(|i| (0..tiles).map(move |t| (i, t)))
            .collect();
        on_tract_threads_in_runs(items, |run| {
            for (i, t) in run {
                // SAFETY: tile `t` of image `i`, inside `packed` (sized above), written by this
                // item only.
                let to = unsafe { to.slice(i * len + t * tile, tile) };
                match x.get(i * input..(i + 1) * input) {
                    Some(x) => pack(geo, starts, x, t, to),
                    None => to.fill(0.0),
                }
            }
        });
        let packed = &*packed;
        on_tract_threads_in_runs(tasks(w, images), |blocks| {
            for task in blocks {
                let x = &packed[task.0 * len..][..len];
                // SAFETY: the caller's contract; tasks cover disjoint channel blocks.
                unsafe { run(geo, w, x, out, task, finish) };
            }
        })
    })
}

/// Tiles per image.
fn tiles(geo: &Geometry) -> usize {
    geo.positions().div_ceil(POSITIONS)
}

/// Run channel blocks `blocks` of image `image` over every position and the whole depth,
/// from `x`, that image's activations as [`pack`] left them.
///
/// # Safety
/// [`applies`] held for `geo`; `x` holds [`packed_len`] values; `out` points at `images *
/// w.m * geo.positions()` f32s that outlive the call, no other task writing these blocks'
/// channels of this image.
unsafe fn run(
    geo: &Geometry,
    w: &Weights,
    x: &[f32],
    out: OutPtr,
    (image, blocks): (usize, Range<usize>),
    finish: Finish,
) {
    let (n, k) = (geo.positions(), w.k);
    let tiles = tiles(geo);
    let depth_blocks = k.div_ceil(KB);
    let per = k.div_ceil(depth_blocks);
    SUMS.with(|sums| {
        let mut sums = sums.borrow_mut();
        // Written by each tile's first depth block before any is read.
        let sums = sums.sized_to(tiles * SUMS_PER_TILE);
        for b in blocks.clone().take_while(|&b| b < block_count(w)) {
            let rows = (w.m - b * LANES).min(LANES);
            let weights = &w.packed[b * k * LANES..][..k * LANES];
            let bias = &w.bias[b * LANES..][..LANES];
            for ks in (0..k).step_by(per) {
                let depth = per.min(k - ks);
                // Each block's weights (16 KB) stay in L1 while every tile passes them. The
                // first tile also fetches the next 16 KB of the weights (the next slice used)
                // into L2: a 7x7 conv's 2-4 MB of weights come from memory, and the first tile
                // of each slice waited on them. Layer4's conv3s 3.3-3.7 -> 3.0-3.4 ms.
                let next = (b * k + ks + depth) * LANES;
                let ahead = w.packed.get(next..next + depth * LANES);
                let ahead = ahead.map_or(std::ptr::null(), <[f32]>::as_ptr);
                for t in 0..tiles {
                    let p0 = t * POSITIONS;
                    let tile = Tile {
                        depth,
                        w: weights[ks * LANES..].as_ptr(),
                        x: x[(t * k + ks) * POSITIONS..].as_ptr(),
                        n,
                        // SAFETY: channel `b * LANES` of the image, in bounds (caller).
                        c: unsafe { out.0.add((image * w.m + b * LANES) * n + p0) },
                        rows,
                        bias: bias.as_ptr(),
                        sums: sums[t * SUMS_PER_TILE..].as_mut_ptr(),
                        ahead: if t == 0 { ahead } else { std::ptr::null() },
                        first: ks == 0,
                        last: ks + depth == k,
                        finish,
                    };
                    // SAFETY: `applies` (AVX-512); the tile's rows x positions inside `out`,
                    // its sums inside `sums`.
                    unsafe { tile.run(POSITIONS.min(n - p0)) };
                }
            }
        }
    })
}

/// Input channels per depth block: a 32-channel block's weights over it (16 KB) stay in L1.
const KB: usize = 128;
/// A tile's sums kept between depth blocks: `2 x POSITIONS` vectors of 16 (1.5 KB).
const SUMS_PER_TILE: usize = 2 * POSITIONS * 16;

thread_local! {
    /// Every tile's sums between depth blocks, in register order (stored and reloaded whole;
    /// the outputs, a channel every `n` positions, are written once at the end).
    static SUMS: RefCell<Aligned<f32>> = const { RefCell::new(Aligned::new()) };
}

/// One tile's operands: `rows` (at most [`LANES`]) channels from `c`, each `n` apart, over
/// the positions from `x` (a packed tile: rows of [`POSITIONS`]) and `c`.
// Read by the AVX-512 kernel only: `applies` never holds elsewhere.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Tile {
    depth: usize,
    w: *const f32,
    x: *const f32,
    n: usize,
    c: *mut f32,
    rows: usize,
    bias: *const f32,
    /// The tile's sums between depth blocks ([`SUMS_PER_TILE`]).
    sums: *mut f32,
    /// Weights (`depth * LANES`) to fetch into L2 meanwhile, or null.
    ahead: *const f32,
    /// Whether this depth block is the first (sums start at zero) or the last (stored to `c`).
    first: bool,
    last: bool,
    finish: Finish,
}

impl Tile {
    /// The tile over `positions` (1 to [`POSITIONS`]) positions.
    ///
    /// # Safety
    /// See [`run`].
    unsafe fn run(&self, positions: usize) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller's.
        unsafe {
            use avx512::tile;
            match positions {
                1 => tile::<1>(self),
                2 => tile::<2>(self),
                3 => tile::<3>(self),
                4 => tile::<4>(self),
                5 => tile::<5>(self),
                6 => tile::<6>(self),
                7 => tile::<7>(self),
                8 => tile::<8>(self),
                9 => tile::<9>(self),
                10 => tile::<10>(self),
                11 => tile::<11>(self),
                _ => tile::<POSITIONS>(self),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = positions;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Tile, LANES, POSITIONS};
    use std::arch::x86_64::*;

    /// `sums (+)= w . x` over `P` positions with FMA; after the last depth block, `c` gets the
    /// sums, the bias, the shortcut already in `c` when accumulating, and ReLU (channels from
    /// `rows` on neither read nor written).
    ///
    /// # Safety
    /// AVX-512F present; `w` holds `depth * LANES` values, `x` `depth * POSITIONS`, `bias`
    /// `LANES`, `sums` [`super::SUMS_PER_TILE`]; `c` is valid for `rows` rows of `P` values,
    /// `n` apart.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile<const P: usize>(t: &Tile) {
        let mut acc = [[_mm512_setzero_ps(); 2]; P];
        if !t.first {
            for (p, sums) in acc.iter_mut().enumerate() {
                for (v, sum) in sums.iter_mut().enumerate() {
                    *sum = _mm512_loadu_ps(t.sums.add((2 * p + v) * 16));
                }
            }
        }
        for kk in 0..t.depth {
            let wk = t.w.add(kk * LANES);
            let (w0, w1) = (_mm512_loadu_ps(wk), _mm512_loadu_ps(wk.add(16)));
            if !t.ahead.is_null() {
                let next = t.ahead.add(kk * LANES).cast::<i8>();
                _mm_prefetch::<_MM_HINT_T1>(next);
                _mm_prefetch::<_MM_HINT_T1>(next.add(64));
            }
            let xk = t.x.add(kk * POSITIONS);
            for (p, sums) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_ps(*xk.add(p));
                sums[0] = _mm512_fmadd_ps(w0, xv, sums[0]);
                sums[1] = _mm512_fmadd_ps(w1, xv, sums[1]);
            }
        }
        if !t.last {
            for (p, sums) in acc.iter().enumerate() {
                for (v, &sum) in sums.iter().enumerate() {
                    _mm512_storeu_ps(t.sums.add((2 * p + v) * 16), sum);
                }
            }
            return;
        }
        // Lane `l` of a vector is channel `l`: `n` apart in the output.
        let ldc = t.n as i32;
        let index = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(ldc),
        );
        let zero = _mm512_setzero_ps();
        for v in 0..2 {
            let real = t.rows.saturating_sub(16 * v).min(16);
            if real == 0 {
                continue;
            }
            let mask: __mmask16 = ((1u32 << real) - 1) as __mmask16;
            let bias = _mm512_loadu_ps(t.bias.add(16 * v));
            for (p, sums) in acc.iter().enumerate() {
                let c = t.c.add(16 * v * t.n + p);
                let mut s = _mm512_add_ps(sums[v], bias);
                if t.finish.accumulate {
                    s = _mm512_add_ps(s, _mm512_mask_i32gather_ps::<4>(zero, mask, index, c));
                }
                if t.finish.relu {
                    s = _mm512_max_ps(s, zero);
                }
                _mm512_mask_i32scatter_ps::<4>(c, mask, index, s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::rewrite::test_values;

    /// Tiles of 12 positions and a narrower last one, a partial channel block, three depth
    /// blocks, the shortcut and ReLU, against a direct sum.
    #[test]
    fn matches_a_direct_sum() {
        let mut ran = 0;
        for (c, h, w, m) in [(40, 7, 7, 37), (9, 8, 8, 64), (300, 2, 3, 5)] {
            let geo = Geometry::pointwise(c, (h, w), (1, 1), (h, w));
            if !applies(&geo) {
                continue;
            }
            ran += 1;
            let n = h * w;
            let (wt, bias) = (test_values(m * c, 5), test_values(m, 6));
            let x = test_values(2 * c * n, 7);
            let weights = weights(&wt, &bias, m, c).unwrap();
            for (accumulate, relu) in [(false, false), (true, true), (false, true)] {
                let shortcut = test_values(2 * m * n, 8);
                let mut out = match accumulate {
                    true => shortcut.clone(),
                    false => vec![f32::NAN; 2 * m * n],
                };
                let finish = Finish { accumulate, relu };
                let ptr = OutPtr(out.as_mut_ptr());
                // SAFETY: `out` holds both images' outputs; nothing else touches it meanwhile.
                unsafe { conv(&geo, &geo.row_starts(), &weights, &x, ptr, 2, finish) };
                for (i, &got) in out.iter().enumerate() {
                    let (image, ch, p) = (i / (m * n), i / n % m, i % n);
                    let mut sum = bias[ch];
                    for kk in 0..c {
                        sum += wt[ch * c + kk] * x[(image * c + kk) * n + p];
                    }
                    if accumulate {
                        sum += shortcut[i];
                    }
                    if relu {
                        sum = sum.max(0.0);
                    }
                    let case = format!("{c}x{h}x{w} -> {m}, {finish:?}, element {i}");
                    assert!(
                        (got - sum).abs() <= 1e-4 * (1.0 + sum.abs()),
                        "{case}: {got} vs {sum}"
                    );
                }
            }
        }
        // Where AVX-512 runs every case does; elsewhere none, and maps past 64 positions never.
        let wide = Isa::detect() >= Isa::Avx512 && cfg!(target_arch = "x86_64");
        assert_eq!(ran, if wide { 3 } else { 0 });
        assert!(!applies(&Geometry::pointwise(
            8,
            (14, 14),
            (1, 1),
            (14, 14)
        )));
    }
}
