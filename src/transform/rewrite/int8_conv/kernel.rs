//! The u8 x i8 convolution behind [`super::Int8Conv`]: im2col rows read as slices of the
//! input's phase planes ([`Rows`], nothing copied per tap), packed per chunk of positions
//! that fits L2, a 4-channel x 16-position microkernel, requantisation to u8 in its epilogue.
//!
//! The AVX2 microkernel multiplies with `vpmaddubsw` (u8 x i8, pairs summed to i16) and
//! `vpmaddwd` by ones (pairs of those to i32): 32 multiply-accumulates per two instructions,
//! twice what f32 FMA does per cycle on Zen 3, from a quarter of the bytes. `vpmaddubsw`
//! saturates its i16 pair sums, so the rule only hands it kernels where no pair of adjacent
//! weights can saturate against any u8 input ([`Weights::new`]); the quantiser writes such
//! weights ([`crate::transform::quantize`]). The same scheme as onnxruntime's AVX2 u8s8 GEMM
//! with its `reduce_range` weights.
//!
//! A scalar microkernel with the same data layout keeps the code portable and is the unit
//! tests' cross-check; the rule only fires where the AVX2 one runs.

use std::cell::RefCell;

use crate::transform::rewrite::aligned::Aligned;
use crate::transform::rewrite::int8_residual::{join, Int8ResidualAdd, B};
pub use crate::transform::rewrite::isa::Isa;
pub use crate::transform::rewrite::phase_planes::{output_runs, prepare, Geometry, Rows, Task, NR};

/// Output channels per microkernel call (the broadcast side).
pub const MR: usize = 4;
/// k values per i32 lane: the depth `vpmaddubsw` + `vpmaddwd` reduce in one step.
const KQ: usize = 4;
/// Bytes of packed activations, and of the rows they are packed from, a chunk may take:
/// about half of a 512 KB L2 (Zen 3, Cortex-A76), leaving room for the weights streamed past.
const CHUNK_BYTES: usize = 192 * 1024;
/// Largest `|w[2i]| + |w[2i+1]|` for which `255 * sum <= i16::MAX`: no `vpmaddubsw` pair
/// saturates, whatever the u8 inputs.
pub const PAIR_MAX: i32 = 128;

impl Geometry {
    fn quads(&self) -> usize {
        self.depth().div_ceil(KQ)
    }

    /// Positions per chunk: a multiple of [`NR`] whose im2col rows and packed copy fit
    /// [`CHUNK_BYTES`].
    fn chunk(&self) -> usize {
        let per_position = 2 * self.quads() * KQ;
        let all = self.virtual_positions().div_ceil(NR) * NR;
        // Small maps with deep kernels (ResNet's last stage): one chunk, so the weights stream
        // past once rather than once per chunk; the threads split the channels instead.
        if all * per_position <= 4 * CHUNK_BYTES {
            return all.clamp(NR, 32 * NR);
        }
        let fit = (CHUNK_BYTES / per_position.max(1)) / NR * NR;
        fit.clamp(NR, 32 * NR).min(all)
    }
}

/// Packed weights and the per-channel constants of the requantisation.
#[derive(Debug)]
pub struct Weights {
    /// Output channels.
    pub m: usize,
    quads: usize,
    /// `[m / MR][quads][MR][KQ]`, channels past `m` and depth past `C*kh*kw` zero.
    packed: Vec<i8>,
    /// `bias[m] - x_zero * sum_k w[m][k]`: the zero point folded out of the accumulator.
    offset: Vec<i32>,
    pub x_zero: u8,
    /// u8 outputs; i32 accumulators (`MatMulInteger`) without.
    pub requant: Option<Requant>,
}

/// Accumulator to u8: `clamp(round((acc + offset[m]) * multiplier[m]) + y_zero, 0, 255)`.
#[derive(Debug)]
pub struct Requant {
    y_zero: i32,
    /// Per channel group, each row's `(offset, multiplier)` (`multiplier` is
    /// `x_scale * w_scale[m] / y_scale`), rows past `m` repeating the last channel: gathered
    /// once at load rather than for every block.
    consts: Vec<[(i32, f32); MR]>,
}

/// The quantisation of one `QLinearConv` (or `MatMulInteger`, without `y`), as its inputs
/// give it.
pub struct QParams<'a> {
    pub x_zero: u8,
    pub bias: &'a [i32],
    /// `(x_scale, w_scales, y_zero, y_scale)` for u8 outputs.
    pub y: Option<(f32, &'a [f32], u8, f32)>,
}

impl QParams<'_> {
    /// Per output channel of `w` (`[m, depth]`), `bias - x_zero * sum(w)`: the input zero point
    /// folded out of the accumulator. `None` where that leaves i32.
    pub fn offsets(&self, w: &[i8], depth: usize) -> Option<Vec<i32>> {
        w.chunks(depth.max(1))
            .zip(self.bias)
            .map(|(row, &b)| {
                let sum: i64 = row.iter().map(|&v| v as i64).sum();
                i32::try_from(b as i64 - self.x_zero as i64 * sum).ok()
            })
            .collect()
    }

    /// Per output channel, `x_scale * w_scale / y_scale` (the accumulator to u8), for `m`
    /// channels; `None` without requantisation or when one is not finite.
    pub fn multipliers(&self, m: usize) -> Option<Vec<f32>> {
        let (x_scale, w_scales, _, y_scale) = self.y?;
        let multiplier: Vec<f32> = w_scales.iter().map(|&s| x_scale * s / y_scale).collect();
        (multiplier.len() == m && multiplier.iter().all(|v| v.is_finite())).then_some(multiplier)
    }
}

impl Weights {
    /// Pack `w` (`[m, depth]`, OIHW order); `None` when some pair of weights the microkernel
    /// multiplies together could saturate (see [`PAIR_MAX`]).
    pub fn new(w: &[i8], m: usize, depth: usize, q: &QParams) -> Option<Weights> {
        if w.len() != m * depth || q.bias.len() != m || m == 0 {
            return None;
        }
        let saturates = w.chunks(depth).any(|row| {
            row.chunks(KQ)
                .flat_map(|quad| quad.chunks(2))
                .any(|pair| pair.iter().map(|&v| (v as i32).abs()).sum::<i32>() > PAIR_MAX)
        });
        if saturates {
            return None;
        }
        let quads = depth.div_ceil(KQ);
        let groups = m.div_ceil(MR);
        let mut packed = vec![0i8; groups * quads * MR * KQ];
        for (ch, row) in w.chunks(depth).enumerate() {
            let (g, r) = (ch / MR, ch % MR);
            for (k, &v) in row.iter().enumerate() {
                packed[((g * quads + k / KQ) * MR + r) * KQ + k % KQ] = v;
            }
        }
        let offset = q.offsets(w, depth)?;
        let requant = match q.y {
            None => None,
            Some((_, _, y_zero, _)) => {
                let multiplier = q.multipliers(m)?;
                let consts = (0..groups)
                    .map(|g| {
                        std::array::from_fn(|r| {
                            let ch = (g * MR + r).min(m - 1);
                            (offset[ch], multiplier[ch])
                        })
                    })
                    .collect();
                Some(Requant {
                    y_zero: y_zero as i32,
                    consts,
                })
            }
        };
        Some(Weights {
            m,
            quads,
            packed,
            offset,
            x_zero: q.x_zero,
            requant,
        })
    }

    fn group(&self, g: usize) -> &[i8] {
        let len = self.quads * MR * KQ;
        &self.packed[g * len..(g + 1) * len]
    }
}

/// `clamp(round_ties_even((acc + offset) * multiplier) + y_zero, 0, 255)`: the portable
/// kernels' requantisation (the AVX2 ones: `requantise8`), saturating where the product
/// leaves i32.
pub fn requantise(acc: i32, offset: i32, multiplier: f32, y_zero: i32) -> u8 {
    let v = ((acc + offset) as f32 * multiplier).round_ties_even() as i32;
    v.saturating_add(y_zero).clamp(0, 255) as u8
}

/// Whether a SIMD microkernel runs on this CPU (the rule only fires where one does).
pub fn available() -> bool {
    Isa::detect() >= Isa::Avx2
}

/// The tasks of a convolution over `images` images for `threads` threads (see
/// [`crate::transform::rewrite::phase_planes::tasks`]).
pub fn tasks(geo: &Geometry, m: usize, images: usize, threads: usize) -> Vec<Task> {
    let p = geo.virtual_positions();
    crate::transform::rewrite::phase_planes::tasks(
        p,
        m.div_ceil(MR),
        geo.chunk(),
        images,
        threads,
        4,
    )
}

thread_local! {
    /// Packed activations, reused across runs (a fresh allocation of this size
    /// would be mapped and faulted in on every call).
    static SCRATCH: RefCell<Aligned<u8>> = const { RefCell::new(Aligned::new()) };
}

/// Output pointer shared by the tasks, each writing its own channels x positions.
#[derive(Clone, Copy)]
pub struct OutPtr(pub *mut u8);
// SAFETY: tasks write disjoint elements (see `run_task`), and the buffer outlives the scope.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// A residual join applied to the requantised outputs before they are stored (see
/// [`crate::transform::rewrite::int8_residual`]): the stored u8 is the join's, and its f32 sum
/// goes to `sum` when the op has a float output.
#[derive(Clone, Copy)]
pub struct Epilogue<'a> {
    pub op: &'a Int8ResidualAdd,
    /// The join's other operand over the whole output batch.
    pub b: B<'a>,
    /// `out_len` f32 elements, when `op.float_output`.
    pub sum: Option<OutPtr>,
}

impl Epilogue<'_> {
    /// Join a block's requantised outputs `a` (rows `..rows`, row `r` stored from element
    /// `at[r]`, in `runs` as [`output_runs`] gives them) into `out` (and `sum`).
    ///
    /// # Safety
    /// As [`run_task`]: `out` (and `sum`) hold the ranges, which no other task writes.
    unsafe fn apply_runs(
        &self,
        a: &[[u8; NR]; MR],
        rows: usize,
        at: &[usize; MR],
        runs: &[(usize, usize, usize)],
        out: OutPtr,
        isa: Isa,
    ) {
        #[cfg(target_arch = "x86_64")]
        if isa >= Isa::Avx2 {
            return avx2::join_runs(self, a, rows, at, runs, out);
        }
        let _ = isa;
        for (a, &at) in a.iter().zip(at).take(rows) {
            for &(j, pos, run) in runs {
                self.apply(&a[j..j + run], out, at + pos, join);
            }
        }
    }

    /// Join `a`, the requantised outputs at `at..at + a.len()`, into `out` (and `sum`) with
    /// `join` (the generic or the AVX2 one).
    ///
    /// # Safety
    /// As [`Epilogue::apply_runs`].
    #[inline(always)]
    pub(super) unsafe fn apply(&self, a: &[u8], out: OutPtr, at: usize, join: JoinFn) {
        let n = a.len();
        let q = std::slice::from_raw_parts_mut(out.0.add(at), n);
        let s = self
            .sum
            .map(|p| std::slice::from_raw_parts_mut((p.0 as *mut f32).add(at), n));
        join(self.op, a, self.b.range(at, n), q, s);
    }
}

type JoinFn = unsafe fn(&Int8ResidualAdd, &[u8], B, &mut [u8], Option<&mut [f32]>);

/// Store one run of requantised outputs (a full block as one 16-byte store).
///
/// # Safety
/// `dst` holds `src.len()` writable bytes.
#[inline(always)]
unsafe fn store(src: &[u8], dst: *mut u8) {
    if let Ok(block) = <[u8; NR]>::try_from(src) {
        (dst as *mut [u8; NR]).write_unaligned(block);
    } else {
        for (i, &v) in src.iter().enumerate() {
            dst.add(i).write(v);
        }
    }
}

/// Run one task: `x` is the whole input batch as [`prepare`] returned it (`starts` its
/// `geo.row_starts()`), `out` the whole output batch (`[images, m, positions]` of u8, or of
/// i32 without requantisation; `out_len` elements).
///
/// # Safety
/// `out` must point to `out_len` writable elements that no other task writes at the same
/// channels and positions; so must the epilogue's `sum`, and its `b` must hold `out_len`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn run_task(
    geo: &Geometry,
    starts: &[usize],
    w: &Weights,
    x: &[u8],
    out: OutPtr,
    out_len: usize,
    task: &Task,
    epilogue: Option<&Epilogue>,
    isa: Isa,
) {
    let image = &x[task.image * geo.prepared_len()..(task.image + 1) * geo.prepared_len()];
    let p = geo.positions();
    let base = task.image * w.m * p;
    debug_assert!(base + w.m * p <= out_len);
    let len = task.positions.len();
    let blocks = len.div_ceil(NR);
    let quads = geo.quads();
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let packed = &mut *scratch;
        // Aligned: each block is whole 64-byte quads, which the AVX-512 kernel loads.
        packed.resize(blocks * quads * NR * KQ);
        let start = task.positions.start;
        let row = |k: usize| {
            let &at = starts.get(k)?;
            image.get(at + start..at + start + len)
        };
        pack(row, quads, geo.depth(), len, w.x_zero, packed, isa);
        let mut runs = [(0, 0, 0); NR];
        let rows = geo.rows();
        let mut acc = [[0i32; NR]; MR];
        let mut bytes = [[0u8; NR]; MR];
        let block = |b: usize| &packed[b * quads * NR * KQ..(b + 1) * quads * NR * KQ];
        // Where group `g`'s rows store output position `pos`.
        let rows_at = |g: usize, pos: usize| -> [usize; MR] {
            std::array::from_fn(|r| base + (g * MR + r) * p + pos)
        };
        // AVX-512 VNNI takes every block that is one run of one output row (whole, or a row's
        // last 1-15 outputs), two blocks per call.
        #[cfg(target_arch = "x86_64")]
        let vnni = w.requant.as_ref().filter(|_| isa >= Isa::Avx512Vnni);
        #[cfg(target_arch = "x86_64")]
        let mut pending = None;
        for b in 0..blocks {
            let xb = block(b);
            let p0 = task.positions.start + b * NR;
            let n = NR.min(task.positions.end - p0);
            let count = output_runs(geo, rows, p0, n, &mut runs);
            #[cfg(target_arch = "x86_64")]
            if let (Some(rq), &[(0, pos, len)]) = (vnni, &runs[..count]) {
                let this = (xb.as_ptr(), pos, len);
                match pending.take() {
                    None => pending = Some(this),
                    // SAFETY: AVX-512 VNNI (`isa`); the blocks' rows in bounds (as the AVX2
                    // path's below) and this task's.
                    Some(first) => unsafe {
                        run_vnni(
                            w,
                            rq,
                            quads,
                            &task.groups,
                            [first, this],
                            &rows_at,
                            epilogue,
                            out,
                        )
                    },
                }
                continue;
            }
            if count == 0 {
                // Only columns past the output width (a block-aligned plane's padding).
                continue;
            }
            for g in task.groups.clone() {
                let wg = w.group(g);
                let channels = g * MR..((g + 1) * MR).min(w.m);
                let consts = match &w.requant {
                    Some(rq) => match rq.consts.get(g) {
                        Some(consts) => Some((consts, rq.y_zero)),
                        None => continue,
                    },
                    None => None,
                };
                #[cfg(target_arch = "x86_64")]
                if let (Some((consts, y_zero)), true, [(0, pos, NR)]) =
                    (&consts, isa >= Isa::Avx2, &runs[..count])
                {
                    // A whole block of one output row: requantised, joined if there is a join,
                    // and stored straight from the registers.
                    let at = rows_at(g, *pos);
                    debug_assert!(at[channels.len() - 1] + NR <= out_len);
                    let (xp, wp, consts) = (xb.as_ptr(), wg.as_ptr(), &consts[..channels.len()]);
                    // SAFETY: AVX2 (`isa`), the rows' ranges in bounds (above) and this task's.
                    unsafe {
                        match epilogue {
                            Some(e) => avx2::microkernel_joined(
                                xp, wp, quads, consts, *y_zero, e, out, &at, isa,
                            ),
                            None => avx2::microkernel_stored(
                                xp, wp, quads, consts, *y_zero, out, &at, isa,
                            ),
                        }
                    };
                    continue;
                }
                // Only the first 8 lanes are stored: a half-width call.
                let half = runs[..count].iter().all(|&(j, _, run)| j + run <= NR / 2);
                match &consts {
                    Some((consts, y_zero)) => {
                        requantised(xb, wg, quads, half, consts, *y_zero, &mut bytes, isa)
                    }
                    None => microkernel(xb, wg, quads, half, &mut acc, isa),
                }
                if let Some(e) = epilogue.filter(|_| consts.is_some()) {
                    let at = rows_at(g, 0);
                    debug_assert!(runs[..count].iter().all(|&(_, pos, run)| pos + run <= p));
                    // SAFETY: in bounds (above), and this task's channels x positions only.
                    unsafe { e.apply_runs(&bytes, channels.len(), &at, &runs[..count], out, isa) };
                    continue;
                }
                for (r, ch) in channels.clone().enumerate() {
                    for &(j, pos, run) in &runs[..count] {
                        let at = base + ch * p + pos;
                        debug_assert!(pos + run <= p && at + run <= out_len);
                        // SAFETY: in bounds (above), and this task's channels x positions only.
                        unsafe {
                            if w.requant.is_some() {
                                store(&bytes[r][j..j + run], out.0.add(at));
                            } else {
                                let out = (out.0 as *mut i32).add(at);
                                for (i, &a) in acc[r][j..j + run].iter().enumerate() {
                                    out.add(i).write_unaligned(a + w.offset[ch]);
                                }
                            }
                        }
                    }
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        if let (Some(rq), Some(last)) = (vnni, pending) {
            // SAFETY: as above.
            unsafe { run_vnni(w, rq, quads, &task.groups, [last], &rows_at, epilogue, out) };
        }
    });
}

/// AVX-512 VNNI: blocks `bs` (packed activations, where the block's one run starts in its
/// output row, its length) x channel groups `groups`, two groups per call.
///
/// # Safety
/// AVX-512 VNNI; every block's rows (`rows_at`) inside the output, and the epilogue's `b` and
/// sum, written by no other task.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn run_vnni<const V: usize>(
    w: &Weights,
    rq: &Requant,
    quads: usize,
    groups: &std::ops::Range<usize>,
    bs: [(*const u8, usize, usize); V],
    rows_at: &impl Fn(usize, usize) -> [usize; MR],
    epilogue: Option<&Epilogue>,
    out: OutPtr,
) {
    let (x, lens) = (bs.map(|b| b.0), bs.map(|b| b.2));
    let consts = |g: usize| {
        let channels = (w.m - g * MR).min(MR);
        rq.consts.get(g).map(|c| &c[..channels])
    };
    let y = rq.y_zero;
    let mut g = groups.start;
    while g < groups.end {
        let Some(c0) = consts(g) else {
            g += 1;
            continue;
        };
        match (g + 1 < groups.end).then(|| consts(g + 1)).flatten() {
            Some(c1) => {
                let wp = [w.group(g).as_ptr(), w.group(g + 1).as_ptr()];
                let at = bs.map(|(_, pos, _)| [rows_at(g, pos), rows_at(g + 1, pos)]);
                avx512::blocks(x, lens, wp, quads, [c0, c1], y, epilogue, out, &at);
                g += 2;
            }
            None => {
                let at = bs.map(|(_, pos, _)| [rows_at(g, pos)]);
                let wp = [w.group(g).as_ptr()];
                avx512::blocks(x, lens, wp, quads, [c0], y, epilogue, out, &at);
                g += 1;
            }
        }
    }
}

/// Interleave im2col rows into the microkernel's layout: per block of [`NR`] positions and per
/// quad of rows, `[NR][KQ]` bytes. Rows past `depth`, and positions past `len`, read `zero`
/// (their weights are zero, or their outputs are not stored).
fn pack<'a>(
    row: impl Fn(usize) -> Option<&'a [u8]>,
    quads: usize,
    depth: usize,
    len: usize,
    zero: u8,
    packed: &mut [u8],
    isa: Isa,
) {
    let blocks = len.div_ceil(NR);
    for q in 0..quads {
        let rows: [Option<&[u8]>; KQ] =
            std::array::from_fn(|i| (q * KQ + i < depth).then(|| row(q * KQ + i)).flatten());
        let mut b = 0;
        while b < blocks {
            let p0 = b * NR;
            let n = NR.min(len - p0);
            #[cfg(target_arch = "x86_64")]
            if let [Some(r0), Some(r1), Some(r2), Some(r3)] = rows {
                let at = (b * quads + q) * NR * KQ;
                // Four whole blocks at once on AVX-512: a third of SSE2's instructions.
                if isa >= Isa::Avx512 && p0 + 4 * NR <= len {
                    let src = [r0, r1, r2, r3].map(|r| &r[p0..p0 + 4 * NR]);
                    // SAFETY: AVX-512 (`isa`).
                    unsafe { avx512::interleave(src, &mut packed[at..], quads * NR * KQ) };
                    b += 4;
                    continue;
                }
                if n == NR {
                    let src = [r0, r1, r2, r3].map(|r| &r[p0..p0 + NR]);
                    sse2::interleave(src, &mut packed[at..][..NR * KQ]);
                    b += 1;
                    continue;
                }
            }
            let _ = isa;
            let dst = &mut packed[(b * quads + q) * NR * KQ..][..NR * KQ];
            for (i, r) in rows.iter().enumerate() {
                match r {
                    Some(r) => {
                        for j in 0..n {
                            dst[j * KQ + i] = r[p0 + j];
                        }
                        for j in n..NR {
                            dst[j * KQ + i] = zero;
                        }
                    }
                    None => (0..NR).for_each(|j| dst[j * KQ + i] = zero),
                }
            }
            b += 1;
        }
    }
}

/// `acc[r][j] = sum_k w[r][k] * x[k][j]` over one block of packed activations and one group of
/// packed weights; with `half`, the AVX2 kernel computes only `j < NR / 2` (the rest is not
/// stored).
fn microkernel(x: &[u8], w: &[i8], quads: usize, half: bool, acc: &mut [[i32; NR]; MR], isa: Isa) {
    assert!(x.len() >= quads * NR * KQ && w.len() >= quads * MR * KQ);
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: AVX2 was detected ([`available`]) before the rule fired; lengths checked above.
        unsafe { avx2::microkernel(x.as_ptr(), w.as_ptr(), quads, half, acc, isa) };
        return;
    }
    let _ = (isa, half);
    *acc = [[0; NR]; MR];
    for q in 0..quads {
        let xq = &x[q * NR * KQ..][..NR * KQ];
        let wq = &w[q * MR * KQ..][..MR * KQ];
        for (r, acc) in acc.iter_mut().enumerate() {
            for (j, a) in acc.iter_mut().enumerate() {
                for i in 0..KQ {
                    *a += wq[r * KQ + i] as i32 * xq[j * KQ + i] as i32;
                }
            }
        }
    }
}

/// [`microkernel`] and then `y = clamp(round((acc + offset) * multiplier) + y_zero, 0, 255)`
/// per row, rounding half to even as ONNX's QuantizeLinear does.
#[allow(clippy::too_many_arguments)]
fn requantised(
    x: &[u8],
    w: &[i8],
    quads: usize,
    half: bool,
    consts: &[(i32, f32); MR],
    y_zero: i32,
    out: &mut [[u8; NR]; MR],
    isa: Isa,
) {
    assert!(x.len() >= quads * NR * KQ && w.len() >= quads * MR * KQ);
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: AVX2 was detected ([`available`]) before the rule fired; lengths checked above.
        unsafe {
            avx2::microkernel_requantised(
                x.as_ptr(),
                w.as_ptr(),
                quads,
                half,
                consts,
                y_zero,
                out,
                isa,
            )
        };
        return;
    }
    let mut acc = [[0; NR]; MR];
    microkernel(x, w, quads, half, &mut acc, isa);
    for ((acc, out), &(offset, multiplier)) in acc.iter().zip(out.iter_mut()).zip(consts) {
        for (o, &a) in out.iter_mut().zip(acc) {
            *o = requantise(a, offset, multiplier, y_zero);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use super::{KQ, NR};
    use std::arch::x86_64::*;

    /// `dst[j * 4 + i] = src[i][j]`: four rows of 16 bytes to 16 positions of 4 bytes.
    pub fn interleave(src: [&[u8]; KQ], dst: &mut [u8]) {
        assert!(src.iter().all(|r| r.len() >= NR) && dst.len() >= NR * KQ);
        // SAFETY: SSE2 is part of x86_64; lengths checked above.
        unsafe {
            let load = |r: &[u8]| _mm_loadu_si128(r.as_ptr() as *const __m128i);
            let (r0, r1, r2, r3) = (load(src[0]), load(src[1]), load(src[2]), load(src[3]));
            let (lo01, hi01) = (_mm_unpacklo_epi8(r0, r1), _mm_unpackhi_epi8(r0, r1));
            let (lo23, hi23) = (_mm_unpacklo_epi8(r2, r3), _mm_unpackhi_epi8(r2, r3));
            let out = dst.as_mut_ptr() as *mut __m128i;
            _mm_storeu_si128(out, _mm_unpacklo_epi16(lo01, lo23));
            _mm_storeu_si128(out.add(1), _mm_unpackhi_epi16(lo01, lo23));
            _mm_storeu_si128(out.add(2), _mm_unpacklo_epi16(hi01, hi23));
            _mm_storeu_si128(out.add(3), _mm_unpackhi_epi16(hi01, hi23));
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::{Epilogue, Isa, OutPtr, B, KQ, MR, NR};
    use crate::transform::rewrite::int8_residual::avx2::{
        dequantise, join8, load_u8x8, pack_u8x16, requantise8,
    };
    use std::arch::x86_64::*;

    /// `c + sum of the four u8 x i8 products in each i32 lane`: one `vpdpbusd` with VNNI,
    /// `vpmaddubsw` + `vpmaddwd` + `vpaddd` without (exact only where no adjacent pair of
    /// products saturates i16, which the weights' packing checks).
    #[inline(always)]
    pub(crate) unsafe fn dot<const VNNI: bool>(c: __m256i, a: __m256i, b: __m256i) -> __m256i {
        if VNNI {
            dpbusd(c, a, b)
        } else {
            _mm256_add_epi32(
                c,
                _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1)),
            )
        }
    }

    /// AVX-512 VNNI's `vpdpbusd` on 8 lanes (EVEX, AVX512VL), as inline assembly so that the
    /// AVX2 kernels around it need no second compilation with those features enabled.
    ///
    /// # Safety
    /// The CPU has AVX512-VNNI and AVX512VL ([`Isa::Avx512Vnni`]).
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn dpbusd(c: __m256i, a: __m256i, b: __m256i) -> __m256i {
        let mut c = c;
        std::arch::asm!(
            "vpdpbusd {c}, {a}, {b}",
            c = inout(ymm_reg) c,
            a = in(ymm_reg) a,
            b = in(ymm_reg) b,
            options(pure, nomem, nostack, preserves_flags),
        );
        c
    }

    /// The accumulators of one block, in registers: of its first `V * 8` positions (`V` 1 or
    /// 2), the rest left zero.
    #[inline(always)]
    unsafe fn accumulate_with<const V: usize, const VNNI: bool>(
        x: *const u8,
        w: *const i8,
        quads: usize,
    ) -> [[__m256i; 2]; MR] {
        let mut c = [[_mm256_setzero_si256(); 2]; MR];
        for q in 0..quads {
            let xq = x.add(q * NR * KQ) as *const __m256i;
            let a: [__m256i; V] = std::array::from_fn(|v| _mm256_loadu_si256(xq.add(v)));
            let wq = w.add(q * MR * KQ) as *const i32;
            for (r, c) in c.iter_mut().enumerate() {
                let b = _mm256_set1_epi32(wq.add(r).read_unaligned());
                for (c, &a) in c.iter_mut().zip(&a) {
                    *c = dot::<VNNI>(*c, a, b);
                }
            }
        }
        c
    }

    /// [`accumulate_with`] on VNNI where `isa` has it.
    #[inline(always)]
    unsafe fn accumulate<const V: usize>(
        x: *const u8,
        w: *const i8,
        quads: usize,
        isa: Isa,
    ) -> [[__m256i; 2]; MR] {
        if isa >= Isa::Avx512Vnni {
            accumulate_with::<V, true>(x, w, quads)
        } else {
            accumulate_with::<V, false>(x, w, quads)
        }
    }

    /// `accumulate` over the whole block, or over its first half only for a block with at most
    /// 8 positions to store (a 7x7 map's 49th position, a classifier's one): half the work.
    #[inline(always)]
    unsafe fn accumulate_block(
        x: *const u8,
        w: *const i8,
        quads: usize,
        half: bool,
        isa: Isa,
    ) -> [[__m256i; 2]; MR] {
        if half {
            accumulate::<1>(x, w, quads, isa)
        } else {
            accumulate::<2>(x, w, quads, isa)
        }
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn microkernel(
        x: *const u8,
        w: *const i8,
        quads: usize,
        half: bool,
        acc: &mut [[i32; NR]; MR],
        isa: Isa,
    ) {
        let c = accumulate_block(x, w, quads, half, isa);
        for (c, acc) in c.iter().zip(acc.iter_mut()) {
            _mm256_storeu_si256(acc.as_mut_ptr() as *mut __m256i, c[0]);
            _mm256_storeu_si256(acc.as_mut_ptr().add(8) as *mut __m256i, c[1]);
        }
    }

    /// [`microkernel`] with the requantisation applied to the registers: rows past
    /// `consts.len()` are left alone.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2")]
    pub unsafe fn microkernel_requantised(
        x: *const u8,
        w: *const i8,
        quads: usize,
        half: bool,
        consts: &[(i32, f32)],
        y_zero: i32,
        out: &mut [[u8; NR]; MR],
        isa: Isa,
    ) {
        let c = accumulate_block(x, w, quads, half, isa);
        for ((c, out), &(offset, multiplier)) in c.iter().zip(out.iter_mut()).zip(consts) {
            store_requantised(c[0], c[1], offset, multiplier, y_zero, out);
        }
    }

    /// [`microkernel_requantised`] storing row `r` (of `consts.len()`) straight to
    /// `out + at[r]`, 16 bytes.
    ///
    /// # Safety
    /// AVX2; `x`, `w` as [`accumulate`]; each row's 16 bytes writable.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2")]
    pub unsafe fn microkernel_stored(
        x: *const u8,
        w: *const i8,
        quads: usize,
        consts: &[(i32, f32)],
        y_zero: i32,
        out: OutPtr,
        at: &[usize; MR],
        isa: Isa,
    ) {
        stored(&accumulate::<2>(x, w, quads, isa), consts, y_zero, out, at);
    }

    /// [`microkernel_stored`]'s stores, from accumulators in registers.
    #[inline(always)]
    pub(super) unsafe fn stored(
        c: &[[__m256i; 2]; MR],
        consts: &[(i32, f32)],
        y_zero: i32,
        out: OutPtr,
        at: &[usize; MR],
    ) {
        for ((c, &(offset, multiplier)), &at) in c.iter().zip(consts).zip(at) {
            let row = &mut *(out.0.add(at) as *mut [u8; NR]);
            store_requantised(c[0], c[1], offset, multiplier, y_zero, row);
        }
    }

    /// [`Epilogue::apply_runs`] with the AVX2 join inlined (one call per block, not per run).
    ///
    /// # Safety
    /// AVX2, and as [`Epilogue::apply_runs`].
    #[target_feature(enable = "avx2")]
    pub unsafe fn join_runs(
        e: &Epilogue,
        a: &[[u8; NR]; MR],
        rows: usize,
        at: &[usize; MR],
        runs: &[(usize, usize, usize)],
        out: OutPtr,
    ) {
        for (a, &at) in a.iter().zip(at).take(rows) {
            for &(j, pos, run) in runs {
                e.apply(&a[j..j + run], out, at + pos, |op, a, b, q, s| {
                    crate::transform::rewrite::int8_residual::avx2::join(op, a, b, q, s)
                });
            }
        }
    }

    /// [`microkernel_requantised`] with the epilogue's residual join applied to the registers
    /// before they are stored: row `r` (of `consts.len()`) goes to elements `at[r]..at[r] + NR`
    /// of the output batch, reading the join's `b` there (and writing its sum). The same
    /// operations as [`super::Epilogue::apply`] on the stored bytes, so the same results.
    ///
    /// # Safety
    /// AVX2; those ranges inside the output, `b` and the sum, and written by no other task.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2")]
    pub unsafe fn microkernel_joined(
        x: *const u8,
        w: *const i8,
        quads: usize,
        consts: &[(i32, f32)],
        y_zero: i32,
        e: &Epilogue,
        out: OutPtr,
        at: &[usize; MR],
        isa: Isa,
    ) {
        joined(
            &accumulate::<2>(x, w, quads, isa),
            consts,
            y_zero,
            e,
            out,
            at,
        );
    }

    /// [`microkernel_joined`]'s join and stores, from accumulators in registers.
    #[inline(always)]
    pub(super) unsafe fn joined(
        c: &[[__m256i; 2]; MR],
        consts: &[(i32, f32)],
        y_zero: i32,
        e: &Epilogue,
        out: OutPtr,
        at: &[usize; MR],
    ) {
        let op = e.op;
        let (u8_min, u8_max) = (_mm256_setzero_si256(), _mm256_set1_epi32(255));
        for ((c, &(offset, multiplier)), &at) in c.iter().zip(consts).zip(at) {
            let (offset, multiplier) = (_mm256_set1_epi32(offset), _mm256_set1_ps(multiplier));
            let mut y = [_mm256_setzero_si256(); 2];
            for (half, (&acc, y)) in c.iter().zip(&mut y).enumerate() {
                let i = at + half * 8;
                // The conv's u8 output, as `store_requantised` saturates it (an out-of-range
                // cvtps gives i32::MIN, which both make 0).
                let a = requantise8(acc, offset, multiplier, _mm256_set1_epi32(y_zero));
                let a = _mm256_min_epi32(_mm256_max_epi32(a, u8_min), u8_max);
                let db = match e.b {
                    B::Quantised(b, d) => dequantise(load_u8x8(b[i..i + 8].as_ptr()), d),
                    B::Float(b) => _mm256_loadu_ps(b[i..i + 8].as_ptr()),
                };
                let sum = e.sum.map(|sum| (sum.0 as *mut f32).add(i));
                *y = join8(op, dequantise(a, op.a), db, sum);
            }
            _mm_storeu_si128(out.0.add(at) as *mut __m128i, pack_u8x16(y[0], y[1]));
        }
    }

    #[inline(always)]
    unsafe fn store_requantised(
        lo: __m256i,
        hi: __m256i,
        offset: i32,
        multiplier: f32,
        y_zero: i32,
        out: &mut [u8; NR],
    ) {
        let (offset, multiplier) = (_mm256_set1_epi32(offset), _mm256_set1_ps(multiplier));
        let y_zero = _mm256_set1_epi32(y_zero);
        let lo = requantise8(lo, offset, multiplier, y_zero);
        let hi = requantise8(hi, offset, multiplier, y_zero);
        _mm_storeu_si128(out.as_mut_ptr() as *mut __m128i, pack_u8x16(lo, hi));
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Epilogue, OutPtr, B, KQ, MR, NR};
    use crate::transform::rewrite::int8_residual::Dequant;
    use std::arch::x86_64::*;

    /// `V` blocks of output-row positions (`x[v]`, its first `lens[v]` stored) x `G` channel
    /// groups (`w[h]`, with `consts[h]`), requantised, joined by `e` if given, and stored: row
    /// `r` of group `h`, block `v` to `out + at[v][h][r]`. Two blocks and two groups are 16
    /// accumulators of 16 lanes: a block's quad of 16 positions is one register, so one block
    /// alone would leave the two `vpdpbusd` ports waiting on 8 chains of 5 cycles.
    ///
    /// # Safety
    /// AVX-512F/BW/VL and VNNI; `x[v]` holds `quads` packed quads, `w[h]` `quads * MR * KQ`
    /// bytes; the rows' ranges (`lens[v]` from `at`) inside the output (and the epilogue's
    /// `b` and sum), written by no other task.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn blocks<const V: usize, const G: usize>(
        x: [*const u8; V],
        lens: [usize; V],
        w: [*const i8; G],
        quads: usize,
        consts: [&[(i32, f32)]; G],
        y_zero: i32,
        e: Option<&Epilogue>,
        out: OutPtr,
        at: &[[[usize; MR]; G]; V],
    ) {
        let mut z = [[[_mm512_setzero_si512(); MR]; G]; V];
        accumulate::<V, G>(x, w, quads, &mut z);
        for ((z, at), &n) in z.iter().zip(at).zip(&lens) {
            // A row's last 1-15 outputs: masked loads and stores.
            let mask = (1u32 << n.min(NR)).wrapping_sub(1) as __mmask16;
            for ((z, consts), at) in z.iter().zip(consts).zip(at) {
                for ((&z, &consts), &at) in z.iter().zip(consts.iter()).zip(at) {
                    let y = requantised16(z, consts, y_zero, e, at, n, mask);
                    _mm512_mask_cvtusepi32_storeu_epi8(out.0.add(at) as *mut i8, mask, y);
                }
            }
        }
    }

    /// One row's 16 outputs, for the caller to store, as [`super::avx2::stored`] or, with `e`,
    /// [`super::avx2::joined`] make them: the same f32 operations in the same order, so the
    /// same bytes, at half the instructions (`perf annotate`: the two-half epilogue took 16% of
    /// int8 ResNet-50 against 22% for the accumulation). `vpmovusdb` after a max with 0
    /// saturates to u8 as the two packs do (an out-of-range conversion's i32::MIN gives 0
    /// either way).
    ///
    /// # Safety
    /// AVX-512F/BW/VL; with `e`, elements `at..at + n` inside its `b` and sum, `mask` their
    /// lanes.
    #[inline(always)]
    unsafe fn requantised16(
        z: __m512i,
        (offset, multiplier): (i32, f32),
        y_zero: i32,
        e: Option<&Epilogue>,
        at: usize,
        n: usize,
        mask: __mmask16,
    ) -> __m512i {
        let zero = _mm512_setzero_si512();
        let v = _mm512_cvtepi32_ps(_mm512_add_epi32(z, _mm512_set1_epi32(offset)));
        // cvtps rounds by MXCSR: to nearest, ties to even.
        let v = _mm512_cvtps_epi32(_mm512_mul_ps(v, _mm512_set1_ps(multiplier)));
        let mut y = _mm512_max_epi32(_mm512_add_epi32(v, _mm512_set1_epi32(y_zero)), zero);
        if let Some(e) = e {
            let op = e.op;
            let dequantise = |v: __m512i, d: Dequant| {
                let v = _mm512_sub_epi32(v, _mm512_set1_epi32(d.zero));
                _mm512_mul_ps(_mm512_cvtepi32_ps(v), _mm512_set1_ps(d.scale))
            };
            let a = _mm512_min_epi32(y, _mm512_set1_epi32(255));
            let db = match e.b {
                B::Quantised(b, d) => {
                    let b = _mm_maskz_loadu_epi8(mask, b[at..at + n].as_ptr() as *const i8);
                    dequantise(_mm512_cvtepu8_epi32(b), d)
                }
                B::Float(b) => _mm512_maskz_loadu_ps(mask, b[at..at + n].as_ptr()),
            };
            let mut v = _mm512_add_ps(dequantise(a, op.a), db);
            if op.relu {
                v = _mm512_max_ps(v, _mm512_setzero_ps());
            }
            if let Some(sum) = e.sum {
                _mm512_mask_storeu_ps((sum.0 as *mut f32).add(at), mask, v);
            }
            // As `quantise8`: clamped inside i32 before the conversion.
            let scaled = _mm512_mul_ps(v, _mm512_set1_ps(op.inv_scale));
            let scaled = _mm512_min_ps(
                _mm512_max_ps(scaled, _mm512_set1_ps(-1e9)),
                _mm512_set1_ps(1e9),
            );
            let q = _mm512_add_epi32(_mm512_cvtps_epi32(scaled), _mm512_set1_epi32(op.zero));
            y = _mm512_max_epi32(q, zero);
        }
        y
    }

    /// [`super::sse2::interleave`] over 64 positions: four blocks of `[NR][KQ]` bytes, block
    /// `i` written `i * stride` bytes into `dst`.
    ///
    /// # Safety
    /// AVX-512F/BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn interleave(src: [&[u8]; KQ], dst: &mut [u8], stride: usize) {
        assert!(src.iter().all(|r| r.len() >= 4 * NR) && dst.len() >= 3 * stride + NR * KQ);
        let load = |r: &[u8]| _mm512_loadu_si512(r.as_ptr() as *const _);
        let (r0, r1, r2, r3) = (load(src[0]), load(src[1]), load(src[2]), load(src[3]));
        let (lo01, hi01) = (_mm512_unpacklo_epi8(r0, r1), _mm512_unpackhi_epi8(r0, r1));
        let (lo23, hi23) = (_mm512_unpacklo_epi8(r2, r3), _mm512_unpackhi_epi8(r2, r3));
        // 128-bit lane `l` of a, b, c, d: positions 16l + 0-3, 4-7, 8-11, 12-15, 4 bytes each.
        let a = _mm512_unpacklo_epi16(lo01, lo23);
        let b = _mm512_unpackhi_epi16(lo01, lo23);
        let c = _mm512_unpacklo_epi16(hi01, hi23);
        let d = _mm512_unpackhi_epi16(hi01, hi23);
        // Block `l` is lane `l` of a, b, c and d: a 4 x 4 transpose of lanes.
        let ab_lo = _mm512_shuffle_i64x2::<0b01_00_01_00>(a, b);
        let ab_hi = _mm512_shuffle_i64x2::<0b11_10_11_10>(a, b);
        let cd_lo = _mm512_shuffle_i64x2::<0b01_00_01_00>(c, d);
        let cd_hi = _mm512_shuffle_i64x2::<0b11_10_11_10>(c, d);
        let blocks = [
            _mm512_shuffle_i64x2::<0b10_00_10_00>(ab_lo, cd_lo),
            _mm512_shuffle_i64x2::<0b11_01_11_01>(ab_lo, cd_lo),
            _mm512_shuffle_i64x2::<0b10_00_10_00>(ab_hi, cd_hi),
            _mm512_shuffle_i64x2::<0b11_01_11_01>(ab_hi, cd_hi),
        ];
        for (i, v) in blocks.into_iter().enumerate() {
            _mm512_storeu_si512(dst.as_mut_ptr().add(i * stride) as *mut _, v);
        }
    }

    /// The accumulators of [`blocks`], `[block][group][row]`. Out of line, as channels-last's:
    /// inlined, LLVM may keep an accumulator in memory across the loop.
    #[inline(never)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn accumulate<const V: usize, const G: usize>(
        x: [*const u8; V],
        w: [*const i8; G],
        quads: usize,
        out: &mut [[[__m512i; MR]; G]; V],
    ) {
        let mut c = [[[_mm512_setzero_si512(); MR]; G]; V];
        for q in 0..quads {
            let a: [__m512i; V] =
                std::array::from_fn(|v| _mm512_loadu_si512(x[v].add(q * NR * KQ) as *const _));
            for (h, w) in w.iter().enumerate() {
                let wq = w.add(q * MR * KQ) as *const i32;
                for r in 0..MR {
                    let b = _mm512_set1_epi32(wq.add(r).read_unaligned());
                    for (c, &a) in c.iter_mut().zip(&a) {
                        c[h][r] = _mm512_dpbusd_epi32(c[h][r], a, b);
                    }
                }
            }
        }
        *out = c;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::transform::rewrite::test_bytes as bytes;

    /// The convolution straight from its definition, in i64.
    pub(crate) fn reference(geo: &Geometry, x: &[u8], w: &[i8], q: &QParams) -> Vec<i64> {
        let (c, h, wd) = geo.chw;
        let (kh, kw) = geo.kernel;
        let m = q.bias.len();
        let mut out = Vec::new();
        for o in 0..m {
            for oy in 0..geo.out.0 {
                for ox in 0..geo.out.1 {
                    let mut acc = q.bias[o] as i64;
                    for ci in 0..c {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * geo.stride.0 + ky) as isize - geo.pad.0 as isize;
                                let ix = (ox * geo.stride.1 + kx) as isize - geo.pad.1 as isize;
                                let v = if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize
                                {
                                    q.x_zero
                                } else {
                                    x[(ci * h + iy as usize) * wd + ix as usize]
                                };
                                let wv = w[((o * c + ci) * kh + ky) * kw + kx];
                                acc += wv as i64 * (v as i64 - q.x_zero as i64);
                            }
                        }
                    }
                    out.push(match q.y {
                        Some((x_scale, w_scales, y_zero, y_scale)) => {
                            let y = (acc as f64 * (x_scale * w_scales[o] / y_scale) as f64)
                                .round_ties_even() as i64
                                + y_zero as i64;
                            y.clamp(0, 255)
                        }
                        None => acc,
                    });
                }
            }
        }
        out
    }

    /// A test conv's weights (`[m, depth]`, 7-bit), biases and weight scales: the scales put
    /// some requantised outputs past either end of u8.
    pub(crate) fn test_weights(m: usize, depth: usize) -> (Vec<i8>, Vec<i32>, Vec<f32>) {
        let w = bytes(m * depth, 5)
            .iter()
            .map(|&b| (b as i32 % 129 - 64) as i8)
            .collect();
        let bias = (0..m as i32).map(|i| i * 997 - 20_000).collect();
        let w_scales = (0..m).map(|i| 0.001 + i as f32 * 1e-4).collect();
        (w, bias, w_scales)
    }

    fn check(geo: Geometry, m: usize, requantised: bool, isa: Isa) {
        let depth = geo.depth();
        let x = bytes(geo.input_len(), 3);
        let (w, bias, w_scales) = test_weights(m, depth);
        let q = QParams {
            x_zero: 7,
            bias: &bias,
            y: requantised.then_some((0.05, &w_scales[..], 100, 0.02)),
        };
        let weights = Weights::new(&w, m, depth, &q).expect("no saturating pairs");
        let want = reference(&geo, &x, &w, &q);
        let xp = prepare(&geo, &x, q.x_zero);
        let starts = geo.row_starts();
        for threads in [1, 3] {
            // Every task of the conv into `out` (u8 or i32 elements).
            let run_all = |out: OutPtr| {
                for task in tasks(&geo, m, 1, threads) {
                    let len = want.len();
                    unsafe { run_task(&geo, &starts, &weights, &xp, out, len, &task, None, isa) };
                }
            };
            let got: Vec<i64> = if requantised {
                let mut got = vec![0u8; want.len()];
                run_all(OutPtr(got.as_mut_ptr()));
                got.into_iter().map(i64::from).collect()
            } else {
                let mut got = vec![0i32; want.len()];
                run_all(OutPtr(got.as_mut_ptr() as *mut u8));
                got.into_iter().map(i64::from).collect()
            };
            let off = want.iter().zip(&got).filter(|(a, b)| a != b).count();
            assert_eq!(off, 0, "{geo:?} m={m} {isa:?}: {off} outputs differ");
        }
        if requantised && want.len() > 50 {
            // The scales put some outputs past either end, so the clamping is checked too.
            let clamped = want.iter().filter(|&&v| v == 0 || v == 255).count();
            assert!(
                clamped > 0 && clamped < want.len(),
                "{geo:?}: {clamped} clamped"
            );
        }
    }

    fn geometries() -> Vec<(Geometry, usize)> {
        vec![
            // 3x3 stride 1 padded, positions not a multiple of NR, channels not of MR.
            (
                Geometry {
                    chw: (5, 9, 7),
                    kernel: (3, 3),
                    stride: (1, 1),
                    pad: (1, 1),
                    out: (9, 7),
                },
                6,
            ),
            // Planes a whole number of blocks wide (32 for 24 outputs).
            (
                Geometry {
                    chw: (3, 3, 24),
                    kernel: (3, 3),
                    stride: (1, 1),
                    pad: (1, 1),
                    out: (3, 24),
                },
                7,
            ),
            // 3x3 unpadded ("valid"): the padded planes are the input itself.
            (
                Geometry {
                    chw: (4, 8, 8),
                    kernel: (3, 3),
                    stride: (1, 1),
                    pad: (0, 0),
                    out: (6, 6),
                },
                5,
            ),
            // The stem's shape, smaller: 7x7 stride 2 pad 3.
            (
                Geometry {
                    chw: (3, 20, 18),
                    kernel: (7, 7),
                    stride: (2, 2),
                    pad: (3, 3),
                    out: (10, 9),
                },
                8,
            ),
            // 1x1 stride 1 (pointwise, no im2col) and 1x1 stride 2 (a downsample).
            (
                Geometry {
                    chw: (13, 6, 6),
                    kernel: (1, 1),
                    stride: (1, 1),
                    pad: (0, 0),
                    out: (6, 6),
                },
                9,
            ),
            (
                Geometry {
                    chw: (8, 7, 7),
                    kernel: (1, 1),
                    stride: (2, 2),
                    pad: (0, 0),
                    out: (4, 4),
                },
                4,
            ),
            // A downsample whose rows are narrower than a block: its planes are as wide as the
            // output, so blocks span rows and are stored whole (pairs of them on AVX-512).
            (
                Geometry {
                    chw: (8, 13, 13),
                    kernel: (1, 1),
                    stride: (2, 2),
                    pad: (0, 0),
                    out: (7, 7),
                },
                9,
            ),
            // A classifier head: one position.
            (
                Geometry {
                    chw: (40, 1, 1),
                    kernel: (1, 1),
                    stride: (1, 1),
                    pad: (0, 0),
                    out: (1, 1),
                },
                10,
            ),
        ]
    }

    #[test]
    fn scalar_kernel_matches_the_definition() {
        // Both plane layouts (see `Geometry::rows`) are among them: widened to whole blocks
        // or not.
        let widened: Vec<bool> = geometries()
            .iter()
            .filter_map(|(g, _)| match g.rows() {
                Rows::Phased { wq, .. } => Some(wq > g.out.1 + (g.kernel.1 - 1) / g.stride.1),
                Rows::Pointwise => None,
            })
            .collect();
        assert!(widened.contains(&true) && widened.contains(&false));
        for (geo, m) in geometries() {
            check(geo.clone(), m, true, Isa::Portable);
            check(geo, m, false, Isa::Portable);
        }
    }

    /// Each SIMD level this CPU has (AVX2's `vpmaddubsw`, AVX-512 VNNI's `vpdpbusd`).
    #[test]
    fn simd_kernels_match_the_definition() {
        let isas = Isa::simd();
        if isas.is_empty() {
            eprintln!("no AVX2 here: the scalar kernel is what the test above checks");
        }
        for isa in isas {
            for (geo, m) in geometries() {
                check(geo.clone(), m, true, isa);
                check(geo, m, false, isa);
            }
        }
    }

    #[test]
    fn weights_that_could_saturate_are_refused() {
        let q = QParams {
            x_zero: 0,
            bias: &[0],
            y: None,
        };
        // 100 + 28 = 128 fits (255 * 128 = 32640); 100 + 29 does not.
        assert!(Weights::new(&[100, -28, 127, 1], 1, 4, &q).is_some());
        assert!(Weights::new(&[100, -29, 0, 0], 1, 4, &q).is_none());
        // Pairs are (0,1), (2,3): 127 next to 1 is fine, 127 across a pair boundary too.
        assert!(Weights::new(&[1, 127, 1, 0], 1, 4, &q).is_some());
    }
}
