//! The f32 convolution behind [`super::DirectConv`]: `out[m][p] = sum_k w[m][k] x[k][p]`
//! over NCHW planes, the im2col rows `x[k]` read as slices of the input or of its phase planes
//! ([`phase_planes`]), blocked the way GotoBLAS blocks a GEMM (Goto & van de Geijn, "Anatomy of
//! high-performance matrix multiplication", TOMS 2008): the activations of a chunk of
//! positions and a block of input channels are packed into 16-position panels that stay in
//! L2, the weights were packed into 6-channel panels at load, and a 6-channel x 16-position
//! FMA microkernel keeps its 12 accumulators in registers over the block's depth (with
//! AVX-512, 24 of 16 lanes: two such tiles of two groups, or one of four; see [`Unit`]).
//!
//! Bias and ReLU are applied as the last depth block's tile is stored; a block's shortcut
//! ([`Finish`]) is where the first depth block's sums start.
//!
//! A scalar microkernel with the same layout keeps the code portable and is the unit tests'
//! cross-check; the rule only fires where the AVX2 + FMA one runs.

use std::cell::RefCell;
use std::ops::Range;

use crate::transform::rewrite::aligned::Aligned;
use crate::transform::rewrite::copy_run;
pub use crate::transform::rewrite::isa::Isa;
pub use crate::transform::rewrite::phase_planes::Task;
use crate::transform::rewrite::phase_planes::{self, output_runs, Geometry, Rows, NR};

/// Output channels per microkernel call (broadcast from the packed weights).
pub const MR: usize = 6;
/// Deepest block of input channels one microkernel call sums: its activation panel (16 KB)
/// stays in L1 while a block of weight panels streams past from L2.
const KC: usize = 256;
/// Channel groups whose weight panels (`GROUP_BLOCK * KC * MR` f32s, 120 KB) are run against
/// each activation panel in turn.
const GROUP_BLOCK: usize = 20;
/// Bytes of packed activations per chunk of positions: about a third of a 512 KB L2 (Zen 3,
/// Cortex-A76), leaving room for the weights streamed past and the outputs.
const CHUNK_BYTES: usize = 160 * 1024;
/// [`CHUNK_BYTES`] where AVX-512 runs (Skylake-SP on, Zen 4: L2 of 1-2 MB): a 14x14 map's 196
/// positions of 256 channels are one chunk rather than 160 + 36, each streaming the weights.
/// Alternating processes, fastest-run medians: ResNet-18 f32 30.0 -> 29.5 ms at one thread,
/// 17.2 -> 17.0 at two; ResNet-50 71.9 -> 71.6, 40.6 -> 39.9.
const CHUNK_BYTES_AVX512: usize = 256 * 1024;

/// The depth blocks of `geo`: as few as keep each at most [`KC`], of near-equal size.
fn depth_blocks(depth: usize) -> Vec<Range<usize>> {
    let blocks = depth.div_ceil(KC).max(1);
    let per = depth.div_ceil(blocks).max(1);
    (0..depth)
        .step_by(per)
        .map(|s| s..(s + per).min(depth))
        .collect()
}

/// Positions per chunk: a multiple of [`NR`] whose packed panels (one depth block) fit
/// [`CHUNK_BYTES`] (or [`CHUNK_BYTES_AVX512`]).
fn chunk(geo: &Geometry) -> usize {
    let depth = geo.depth().clamp(1, KC);
    let bytes = match Isa::detect() >= Isa::Avx512 {
        true => CHUNK_BYTES_AVX512,
        false => CHUNK_BYTES,
    };
    let fit = (bytes / (depth * 4)) / NR * NR;
    let all = geo.virtual_positions().next_multiple_of(NR);
    fit.clamp(NR, all.max(NR))
}

/// Weights `[m][k]` (`k` = `C * kh * kw`, OIHW order) packed per depth block as
/// `[m / MR][block depth][MR]` (the last group zero-padded), so that the panels one depth
/// block runs through are one contiguous stream; the bias padded the same way.
#[derive(Debug, PartialEq)]
pub struct Weights {
    pub m: usize,
    pub k: usize,
    pub(super) packed: Vec<f32>,
    pub(super) bias: Vec<f32>,
}

impl Weights {
    /// `None` unless `w` holds `m * k` values and `bias` `m`.
    pub fn new(w: &[f32], bias: &[f32], m: usize, k: usize) -> Option<Weights> {
        Weights::laid_out(w, bias, (m, k), MR, |packed| {
            let groups = m.div_ceil(MR);
            for ks in depth_blocks(k) {
                let block = &mut packed[ks.start * groups * MR..][..ks.len() * groups * MR];
                for (row, values) in w.chunks_exact(k).enumerate() {
                    let (g, r) = (row / MR, row % MR);
                    for (kk, &v) in values[ks.clone()].iter().enumerate() {
                        block[(g * ks.len() + kk) * MR + r] = v;
                    }
                }
            }
        })
    }

    /// `w` (`[m][k]`) laid out by `pack` into zeros for `m` rounded up to whole `unit`s of
    /// channels, the bias padded the same way; `None` unless the sizes agree.
    pub(super) fn laid_out(
        w: &[f32],
        bias: &[f32],
        (m, k): (usize, usize),
        unit: usize,
        pack: impl FnOnce(&mut [f32]),
    ) -> Option<Weights> {
        if w.len() != m.checked_mul(k)? || bias.len() != m || m == 0 || k == 0 {
            return None;
        }
        let rows = m.div_ceil(unit) * unit;
        let mut packed = vec![0f32; rows * k];
        pack(&mut packed);
        let mut padded = bias.to_vec();
        padded.resize(rows, 0.0);
        Some(Weights {
            m,
            k,
            packed,
            bias: padded,
        })
    }

    /// Panel of group `g` over the depth block `ks` (one of [`depth_blocks`]):
    /// `[ks.len()][MR]`.
    fn panel(&self, g: usize, ks: &Range<usize>) -> &[f32] {
        let start = (ks.start * self.m.div_ceil(MR) + g * ks.len()) * MR;
        &self.packed[start..start + ks.len() * MR]
    }
}

/// The tasks of a convolution over `images` images for `threads` threads (see
/// [`phase_planes::tasks`]).
pub fn tasks(geo: &Geometry, m: usize, images: usize, threads: usize) -> Vec<Task> {
    let p = geo.virtual_positions();
    phase_planes::tasks(p, m.div_ceil(MR), chunk(geo), images, threads, 2)
}

/// Whether a SIMD microkernel can run here (the rule only fires where one does).
pub fn available() -> bool {
    Isa::detect() >= Isa::Avx2
}

thread_local! {
    /// Packed activations, reused across runs (a fresh allocation of this size would be
    /// mapped and faulted in on every call).
    static SCRATCH: RefCell<Aligned<f32>> = const { RefCell::new(Aligned::new()) };
    /// Outputs of a task accumulated over several depth blocks (see `run_task`).
    static STAGING: RefCell<Aligned<f32>> = const { RefCell::new(Aligned::new()) };
}

/// Output pointer shared by the tasks, each writing its own channels x positions.
#[derive(Clone, Copy)]
pub struct OutPtr(pub *mut f32);
// SAFETY: tasks write disjoint elements (see `run_task`), and the buffer outlives the scope.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The buffer's `len` elements from `at`, for a closure run on the plan's threads (which
    /// must capture the whole `OutPtr`, not its raw pointer).
    ///
    /// # Safety
    /// The elements are inside the buffer, and no one else accesses them while the slice
    /// lives.
    pub unsafe fn slice<'a>(self, at: usize, len: usize) -> &'a mut [f32] {
        // SAFETY: the caller's.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(at), len) }
    }
}

/// Rows ahead of the one being packed whose pieces are fetched into L1 meanwhile: each row
/// is read for only a few cache lines (a chunk's positions) before the next, too short a run
/// for the hardware prefetcher. ResNet-50's convs, summed in `profile --statistic min`: 63.4
/// -> 62.5 ms (medians of three rounds); a 256 -> 64-channel 56x56 1x1 alone 0.88 -> 0.84.
const PREFETCH_ROWS: usize = 2;

/// A hint to bring `v`'s cache line into L1 (nothing where no such hint is wired up).
#[inline(always)]
fn prefetch(v: &f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a hint with no effect on memory; `v` is a valid reference anyway.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((v as *const f32).cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
}

/// Pack (virtual) positions `ps` of depth rows `ks` of one image's prepared input `x` into
/// `out` as panels `[panel][ks.len()][NR]`, every element written (zero past the last
/// position).
fn pack(starts: &[usize], x: &[f32], ps: &Range<usize>, ks: &Range<usize>, out: &mut [f32]) {
    let depth = ks.len();
    for (kk, r) in ks.clone().enumerate() {
        // Row `r` of im2col: a slice of the input plane, or of a phase plane at the tap's offset.
        let row = starts.get(r).and_then(|&at| x.get(at..)).unwrap_or(&[]);
        if kk + PREFETCH_ROWS < depth {
            let ahead = starts.get(r + PREFETCH_ROWS).and_then(|&at| x.get(at..));
            for v in ps.clone().step_by(NR).filter_map(|p0| ahead?.get(p0)) {
                prefetch(v);
            }
        }
        for (j, p0) in ps.clone().step_by(NR).enumerate() {
            let n = NR.min(ps.end - p0).min(row.len().saturating_sub(p0));
            let to = &mut out[(j * depth + kk) * NR..][..NR];
            // A whole panel row as one fixed-size copy: two vector moves, where a slice copy
            // of a run-time length is a `memcpy` call per 64 bytes.
            copy_run::<f32, NR>(&mut to[..n], row.get(p0..p0 + n).unwrap_or(&[]));
            // The columns past the last position are computed and dropped; zeros rather than
            // whatever the scratch held keep denormals (slow on x86) out of those sums.
            to[n..].fill(0.0);
        }
    }
}

/// What a task does with its sums after the bias: add them to what `out` holds (a block's
/// shortcut, put there by the caller), then ReLU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Finish {
    pub accumulate: bool,
    pub relu: bool,
}

/// Run one task: pack each depth block of its positions, then every channel group x
/// position panel through the microkernel, accumulating in `out` across depth blocks.
///
/// # Safety
/// `out` must point at `images * w.m * geo.positions()` f32s that outlive the call, with no
/// other task writing this task's channels x positions of its image; `x` is the whole batch
/// as [`phase_planes::prepare`] returned it, `starts` is `geo.row_starts()`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn run_task(
    geo: &Geometry,
    starts: &[usize],
    w: &Weights,
    x: &[f32],
    out: OutPtr,
    task: &Task,
    finish: Finish,
    isa: Isa,
) {
    let p = geo.positions();
    let len = geo.prepared_len();
    let Some(x) = x.get(task.image * len..(task.image + 1) * len) else {
        return;
    };
    let blocks = depth_blocks(geo.depth());
    // Tiles that straddle dropped columns (phase planes) would be gathered and scattered once
    // per depth block: with several blocks they accumulate in a staging copy of the task's
    // outputs, laid out as its (virtual) positions, scattered once at the end.
    let rows = geo.rows();
    let staged = blocks.len() > 1 && matches!(rows, Rows::Phased { .. });
    let width = task.positions.len().next_multiple_of(NR);
    let panels = width / NR;
    let mut runs: Runs = [(0, 0, 0); NR];
    // How each panel's outputs are stored (see [`Panel`]), for the AVX-512 units.
    let kinds: Vec<Panel> = match isa >= Isa::Avx512 {
        true => (0..panels)
            .map(|j| match staged {
                true => Panel::Whole(j * NR),
                false => {
                    let p0 = task.positions.start + j * NR;
                    let n = NR.min(task.positions.end - p0);
                    match output_runs(geo, rows, p0, n, &mut runs) {
                        0 => Panel::Dropped,
                        1 if runs[0].0 == 0 && runs[0].2 == NR => Panel::Whole(runs[0].1),
                        _ => Panel::Pieces,
                    }
                }
            })
            .collect(),
        false => Vec::new(),
    };
    let whole: Vec<(usize, usize)> = (kinds.iter().enumerate())
        .filter_map(|(j, kind)| match *kind {
            Panel::Whole(start) => Some((j, start)),
            _ => None,
        })
        .collect();
    SCRATCH.with(|scratch| {
        STAGING.with(|staging| {
            let (mut scratch, mut staging) = (scratch.borrow_mut(), staging.borrow_mut());
            let staging = match staged {
                // Every element is written by the first depth block, which does not load.
                true => staging.sized_to(task.groups.len() * MR * width),
                false => &mut [],
            };
            let staging_ptr = staging.as_mut_ptr();
            let ldc = if staged { width } else { p };
            // Where group `g`'s rows of the outputs at `start` begin, and how many of the
            // rows from there on are real channels (the staging copy holds whole groups).
            let at = |g: usize, start: usize| match staged {
                // SAFETY: inside `staging` (sized above).
                true => unsafe { staging_ptr.add((g - task.groups.start) * MR * width + start) },
                // SAFETY: channel `g * MR` of the image, in bounds.
                false => unsafe { out.0.add((task.image * w.m + g * MR) * p + start) },
            };
            let real = |g: usize| match staged {
                true => usize::MAX,
                false => w.m - g * MR,
            };
            for (b, ks) in blocks.iter().enumerate() {
                // Aligned: a panel row is one cache line, and neither of its two vector
                // loads splits one.
                // Every element is written by `pack`.
                let packed = scratch.sized_to(width * ks.len());
                pack(starts, x, &task.positions, ks, packed);
                let (first, last) = (b == 0, b + 1 == blocks.len());
                // The staging copy starts from zero, the outputs from the shortcut when
                // accumulating (added at the scatter below).
                let (depth, load) = (ks.len(), !first || (finish.accumulate && !staged));
                let panel = |j: usize| &packed[j * depth * NR..][..depth * NR];
                let bias = |g: usize| &w.bias[g * MR..];
                // A staged shortcut is added at the scatter, and the ReLU after it.
                let relu = finish.relu && !(staged && finish.accumulate);
                let epilogue = |g: usize| last.then_some((bias(g), relu));
                // BLIS's loop order: a block of weight panels stays in L2 while each
                // activation panel (a pair of them for AVX-512), in L1, meets every weight
                // panel of the block.
                for gs in task.groups.clone().step_by(GROUP_BLOCK) {
                    let gs = gs..(gs + GROUP_BLOCK).min(task.groups.end);
                    if isa < Isa::Avx512 {
                        for j in 0..panels {
                            let p0 = task.positions.start + j * NR;
                            let n = NR.min(task.positions.end - p0);
                            let count = match staged {
                                true => 0,
                                false => output_runs(geo, rows, p0, n, &mut runs),
                            };
                            for g in gs.clone() {
                                let tile = match staged {
                                    true => Tile {
                                        c: at(g, j * NR),
                                        ldc,
                                        rows: MR,
                                        runs: &[(0, 0, NR)],
                                        half: false,
                                    },
                                    false => Tile {
                                        c: at(g, 0),
                                        ldc,
                                        rows: MR.min(real(g)),
                                        runs: &runs[..count],
                                        // Only the first 8 lanes are stored.
                                        half: runs[..count]
                                            .iter()
                                            .all(|&(j, _, l)| j + l <= NR / 2),
                                    },
                                };
                                let a = w.panel(g, ks);
                                // SAFETY: the caller's contract on `out`; the tile lies inside
                                // it (or inside `staging`, sized for the task above).
                                unsafe { tile.run(depth, a, panel(j), load, epilogue(g), isa) };
                            }
                        }
                        continue;
                    }
                    // AVX-512: whole panels two at a time with two groups, a last whole one
                    // with up to four (24 accumulators either way: see [`Unit::run`]); panels
                    // stored in pieces through a tile on the stack; dropped ones not at all.
                    // Before, all but paired whole panels of whole groups ran on the AVX2
                    // kernel: every conv's last group (64 = 10 x 6 + 4 channels), 14x14 and
                    // 7x7 maps' last panels, Winograd's 16-tile products on 7x7 maps.
                    for pair in whole.chunks(2) {
                        let limit = [4, 2][pair.len() - 1];
                        for g in gs.clone().step_by(limit) {
                            let groups = limit.min(gs.end - g);
                            let unit = Unit {
                                depth,
                                a: w.panel(g, ks).as_ptr(),
                                lda: depth * MR,
                                ldc,
                                rows: real(g).min(groups * MR),
                                load,
                                epilogue: epilogue(g),
                            };
                            // SAFETY: as above; the tiles of `groups` groups from `g` at each
                            // panel's outputs, `rows` of them real.
                            unsafe {
                                match *pair {
                                    [(j, s), (k, t)] => unit.pair(
                                        groups,
                                        [panel(j).as_ptr(), panel(k).as_ptr()],
                                        [at(g, s), at(g, t)],
                                    ),
                                    [(j, s)] => unit.single(groups, panel(j).as_ptr(), at(g, s)),
                                    _ => {}
                                }
                            }
                        }
                    }
                    for (j, _) in kinds
                        .iter()
                        .enumerate()
                        .filter(|(_, k)| **k == Panel::Pieces)
                    {
                        let p0 = task.positions.start + j * NR;
                        let count =
                            output_runs(geo, rows, p0, NR.min(task.positions.end - p0), &mut runs);
                        for g in gs.clone().step_by(4) {
                            let groups = 4.min(gs.end - g);
                            let tile = Tile {
                                c: at(g, 0),
                                ldc,
                                rows: real(g).min(groups * MR),
                                runs: &runs[..count],
                                half: false,
                            };
                            let unit = Unit {
                                depth,
                                a: w.panel(g, ks).as_ptr(),
                                lda: depth * MR,
                                ldc: NR,
                                rows: groups * MR,
                                load,
                                epilogue: epilogue(g),
                            };
                            // SAFETY: the tile lies inside `out` (the caller's contract); the
                            // stack tile holds `groups` groups' rows of `NR`.
                            unsafe {
                                let b = panel(j).as_ptr();
                                tile.through_stack(load, |tmp| unit.single(groups, b, tmp))
                            };
                        }
                    }
                }
            }
            if staged {
                for g in task.groups.clone() {
                    let channels = MR.min(w.m - g * MR);
                    let from = &staging[(g - task.groups.start) * MR * width..];
                    for (j, p0) in task.positions.clone().step_by(NR).enumerate() {
                        let n = NR.min(task.positions.end - p0);
                        let count = output_runs(geo, rows, p0, n, &mut runs);
                        for r in 0..channels {
                            for &(at, start, len) in &runs[..count] {
                                let src = &from[r * width + j * NR + at..][..len];
                                let ch = task.image * w.m + g * MR + r;
                                // SAFETY: channel `ch`, outputs `start..start + len` of this
                                // task (caller's contract).
                                let dst = unsafe { out.0.add(ch * p + start) };
                                if !finish.accumulate {
                                    unsafe {
                                        std::ptr::copy_nonoverlapping(src.as_ptr(), dst, len)
                                    };
                                    continue;
                                }
                                let dst = unsafe { std::slice::from_raw_parts_mut(dst, len) };
                                for (d, s) in dst.iter_mut().zip(src) {
                                    *d += s;
                                    if finish.relu {
                                        *d = d.max(0.0);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        })
    });
}

/// One output tile: `rows` channels from `c` (rows `ldc` apart), the panel's positions
/// stored as `runs` (offset in the panel, output position, length; see [`output_runs`]).
type Runs = [(usize, usize, usize); NR];

struct Tile<'a> {
    c: *mut f32,
    ldc: usize,
    rows: usize,
    runs: &'a [(usize, usize, usize)],
    half: bool,
}

impl Tile<'_> {
    /// Where the tile starts when it is full: every row, the panel's outputs one run.
    fn full(&self) -> Option<*mut f32> {
        match self.runs {
            // SAFETY: the tile's first output, inside it (constructor's contract).
            [(0, start, NR)] if self.rows == MR => Some(unsafe { self.c.add(*start) }),
            _ => None,
        }
    }

    /// `c (+)= a . b`, then `+ bias` and ReLU when `epilogue` is given. A full tile of
    /// consecutive outputs is read and written in place, others through a full-size copy.
    ///
    /// # Safety
    /// The tile's rows x runs elements must be valid for reads and writes.
    unsafe fn run(
        &self,
        depth: usize,
        a: &[f32],
        b: &[f32],
        load: bool,
        epilogue: Option<(&[f32], bool)>,
        isa: Isa,
    ) {
        if let Some(c) = self.full() {
            // SAFETY: full tile in bounds (caller).
            unsafe { microkernel(depth, a, b, c, self.ldc, load, epilogue, false, isa) };
            return;
        }
        // SAFETY: the tile's elements (caller); the stack tile is a full one, rows NR apart.
        unsafe {
            self.through_stack(load, |c| {
                microkernel(depth, a, b, c, NR, load, epilogue, self.half, isa)
            })
        };
    }

    /// Run `kernel` on a tile of up to [`STACK_ROWS`] rows of [`NR`] on the stack (rows `NR`
    /// apart), this tile's elements gathered into it first when `load`, scattered back after.
    ///
    /// # Safety
    /// The tile's rows x runs elements must be valid for reads and writes, `rows` at most
    /// [`STACK_ROWS`].
    unsafe fn through_stack(&self, load: bool, kernel: impl FnOnce(*mut f32)) {
        let mut tmp = [0f32; STACK_ROWS * NR];
        let rows = self.rows.min(STACK_ROWS);
        for (r, row) in tmp.chunks_exact_mut(NR).take(rows).enumerate() {
            for &(at, start, len) in self.runs.iter().filter(|_| load) {
                // SAFETY: inside the tile (caller).
                unsafe {
                    let src = self.c.add(r * self.ldc + start);
                    std::ptr::copy_nonoverlapping(src, row[at..].as_mut_ptr(), len);
                }
            }
        }
        kernel(tmp.as_mut_ptr());
        for (r, row) in tmp.chunks_exact(NR).take(rows).enumerate() {
            for &(at, start, len) in self.runs {
                // SAFETY: inside the tile (caller).
                unsafe {
                    let dst = self.c.add(r * self.ldc + start);
                    std::ptr::copy_nonoverlapping(row[at..].as_ptr(), dst, len);
                }
            }
        }
    }
}

/// Rows of [`Tile::through_stack`]'s tile: the AVX-512 units' four groups.
const STACK_ROWS: usize = 4 * MR;

/// Dispatch to the AVX2 microkernel (full or half width) or the scalar one.
///
/// # Safety
/// `c` must be valid for an `MR x NR` tile with rows `ldc` apart (`MR x NR/2` when `half`).
#[allow(clippy::too_many_arguments)]
unsafe fn microkernel(
    depth: usize,
    a: &[f32],
    b: &[f32],
    c: *mut f32,
    ldc: usize,
    load: bool,
    epilogue: Option<(&[f32], bool)>,
    half: bool,
    isa: Isa,
) {
    debug_assert!(a.len() >= depth * MR && b.len() >= depth * NR);
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Portable {
        // SAFETY: `isa` is one of `Isa::available()`; bounds as documented.
        unsafe {
            if half {
                avx2::accumulate::<1>(depth, a.as_ptr(), b.as_ptr(), c, ldc, load, epilogue)
            } else {
                avx2::accumulate::<2>(depth, a.as_ptr(), b.as_ptr(), c, ldc, load, epilogue)
            }
        };
        return;
    }
    let _ = isa;
    let width = if half { NR / 2 } else { NR };
    let mut acc = [[0f32; NR]; MR];
    for (r, row) in acc.iter_mut().enumerate() {
        for (i, v) in row.iter_mut().take(width).enumerate() {
            if load {
                // SAFETY: inside the tile (caller).
                *v = unsafe { *c.add(r * ldc + i) };
            }
        }
    }
    for kk in 0..depth {
        for (r, row) in acc.iter_mut().enumerate() {
            let av = a[kk * MR + r];
            for (i, v) in row.iter_mut().take(width).enumerate() {
                *v = av.mul_add(b[kk * NR + i], *v);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (i, &v) in row.iter().take(width).enumerate() {
            let v = match epilogue {
                Some((bias, relu)) => {
                    let v = v + bias[r];
                    if relu {
                        v.max(0.0)
                    } else {
                        v
                    }
                }
                None => v,
            };
            // SAFETY: inside the tile (caller).
            unsafe { *c.add(r * ldc + i) = v };
        }
    }
}

/// How a panel's outputs are stored: whole ([`NR`] consecutive outputs from this one), in
/// pieces (runs across dropped columns or a task's last positions), or not at all (dropped
/// columns only: the stem's planes are 128 wide for 112 outputs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Panel {
    Whole(usize),
    Pieces,
    Dropped,
}

/// One AVX-512 call's operands but the panels: `G` groups' weight panels from `a`, `lda`
/// apart; their output rows `ldc` apart, of which the first `rows` are stored (a last group
/// of 4 of 64 channels runs on the same registers as whole ones).
struct Unit<'a> {
    depth: usize,
    a: *const f32,
    lda: usize,
    ldc: usize,
    rows: usize,
    load: bool,
    epilogue: Option<(&'a [f32], bool)>,
}

impl Unit<'_> {
    /// `groups` (1-2) groups over two panels.
    ///
    /// # Safety
    /// See [`Unit::run`].
    unsafe fn pair(&self, groups: usize, b: [*const f32; 2], c: [*mut f32; 2]) {
        // SAFETY: the caller's.
        unsafe {
            match groups {
                1 => self.run::<2, 1>(b, c),
                _ => self.run::<2, 2>(b, c),
            }
        }
    }

    /// `groups` (1-4) groups over one panel.
    ///
    /// # Safety
    /// See [`Unit::run`].
    unsafe fn single(&self, groups: usize, b: *const f32, c: *mut f32) {
        // SAFETY: the caller's.
        unsafe {
            match groups {
                1 => self.run::<1, 1>([b], [c]),
                2 => self.run::<1, 2>([b], [c]),
                3 => self.run::<1, 3>([b], [c]),
                _ => self.run::<1, 4>([b], [c]),
            }
        }
    }

    /// `G` groups (`G * MR` channels) over `V` panels, `b[i]` into `c[i]`: `G * V * MR`
    /// accumulators of 16 lanes. Two groups over two panels (24 of the 32 registers): 167
    /// GFLOP/s against 131 for one group on the README's Xeon (one core, L1-resident
    /// operands), whose two 512-bit FMA ports need at least 8 independent sums in flight;
    /// four groups over one panel also keep 24.
    ///
    /// # Safety
    /// Only from [`Isa::Avx512`] on; `a` holds `G` panels of `depth * MR`, `lda` apart, each
    /// `b[i]` `depth * NR` values; each `c[i]` is valid for `rows` rows of `NR`, `ldc` apart.
    unsafe fn run<const V: usize, const G: usize>(&self, b: [*const f32; V], c: [*mut f32; V]) {
        let Unit {
            depth,
            a,
            lda,
            ldc,
            rows,
            load,
            epilogue,
        } = *self;
        debug_assert!(epilogue.is_none_or(|(bias, _)| bias.len() >= G * MR));
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller's contract.
        unsafe {
            avx512::wide::<V, G>(depth, a, lda, b, c, ldc, rows, load, epilogue)
        };
        // Never reached (no AVX-512 here); the definition, for completeness.
        #[cfg(not(target_arch = "x86_64"))]
        for (b, c) in b.into_iter().zip(c) {
            for row in 0..rows.min(G * MR) {
                let (h, r) = (row / MR, row % MR);
                for i in 0..NR {
                    // SAFETY: the caller's contract.
                    unsafe {
                        let mut sum = if load { *c.add(row * ldc + i) } else { 0.0 };
                        for kk in 0..depth {
                            sum = (*a.add(h * lda + kk * MR + r)).mul_add(*b.add(kk * NR + i), sum);
                        }
                        if let Some((bias, relu)) = epilogue {
                            sum += bias[row];
                            if relu {
                                sum = sum.max(0.0);
                            }
                        }
                        *c.add(row * ldc + i) = sum;
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    /// See [`super::Unit::run`]: `c (+)= a . b` with FMA, then bias and ReLU; rows from
    /// `rows` on are neither read nor written.
    ///
    /// # Safety
    /// AVX-512F present; `a` holds `G` panels of `depth * MR` values, `lda` apart, each `b[i]`
    /// `depth * NR`; each `c[i]` is valid for `rows` rows of `NR` values, `ldc` apart.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn wide<const V: usize, const G: usize>(
        depth: usize,
        a: *const f32,
        lda: usize,
        b: [*const f32; V],
        c: [*mut f32; V],
        ldc: usize,
        rows: usize,
        load: bool,
        epilogue: Option<(&[f32], bool)>,
    ) {
        let mut acc = [[[_mm512_setzero_ps(); V]; MR]; G];
        let row = |h: usize, r: usize| h * MR + r;
        if load {
            for (h, group) in acc.iter_mut().enumerate() {
                for (r, lanes) in group.iter_mut().enumerate() {
                    if row(h, r) < rows {
                        for (lane, c) in lanes.iter_mut().zip(c) {
                            *lane = _mm512_loadu_ps(c.add(row(h, r) * ldc));
                        }
                    }
                }
            }
        }
        for kk in 0..depth {
            let bv = b.map(|b| _mm512_loadu_ps(b.add(kk * NR)));
            for (h, group) in acc.iter_mut().enumerate() {
                let ak = a.add(h * lda + kk * MR);
                for (r, lanes) in group.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*ak.add(r));
                    for (lane, &bl) in lanes.iter_mut().zip(&bv) {
                        *lane = _mm512_fmadd_ps(av, bl, *lane);
                    }
                }
            }
        }
        if let Some((bias, relu)) = epilogue {
            let zero = _mm512_setzero_ps();
            for (h, group) in acc.iter_mut().enumerate() {
                for (r, lanes) in group.iter_mut().enumerate() {
                    let bv = _mm512_set1_ps(bias[row(h, r)]);
                    for lane in lanes.iter_mut() {
                        *lane = _mm512_add_ps(*lane, bv);
                        if relu {
                            *lane = _mm512_max_ps(*lane, zero);
                        }
                    }
                }
            }
        }
        for (h, group) in acc.iter().enumerate() {
            for (r, lanes) in group.iter().enumerate() {
                if row(h, r) < rows {
                    for (&lane, c) in lanes.iter().zip(c) {
                        _mm512_storeu_ps(c.add(row(h, r) * ldc), lane);
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    /// `MR` channels x `8 * W` positions: `c (+)= a . b` with FMA, then bias and ReLU.
    ///
    /// # Safety
    /// AVX2 and FMA present; `a` holds `depth * MR` values, `b` `depth * NR`; `c` is valid for
    /// `MR` rows of `8 * W` values, `ldc` apart.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn accumulate<const W: usize>(
        depth: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        load: bool,
        epilogue: Option<(&[f32], bool)>,
    ) {
        let mut acc = [[_mm256_setzero_ps(); W]; MR];
        if load {
            for (r, row) in acc.iter_mut().enumerate() {
                for (v, lane) in row.iter_mut().enumerate() {
                    *lane = _mm256_loadu_ps(c.add(r * ldc + 8 * v));
                }
            }
        }
        for kk in 0..depth {
            let bk = b.add(kk * NR);
            let mut bv = [_mm256_setzero_ps(); W];
            for (v, lane) in bv.iter_mut().enumerate() {
                *lane = _mm256_loadu_ps(bk.add(8 * v));
            }
            let ak = a.add(kk * MR);
            for (r, row) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*ak.add(r));
                for (lane, &bl) in row.iter_mut().zip(&bv) {
                    *lane = _mm256_fmadd_ps(av, bl, *lane);
                }
            }
        }
        if let Some((bias, relu)) = epilogue {
            let zero = _mm256_setzero_ps();
            for (r, row) in acc.iter_mut().enumerate() {
                let bv = _mm256_set1_ps(bias[r]);
                for lane in row.iter_mut() {
                    *lane = _mm256_add_ps(*lane, bv);
                    if relu {
                        *lane = _mm256_max_ps(*lane, zero);
                    }
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (v, &lane) in row.iter().enumerate() {
                _mm256_storeu_ps(c.add(r * ldc + 8 * v), lane);
            }
        }
    }
}
