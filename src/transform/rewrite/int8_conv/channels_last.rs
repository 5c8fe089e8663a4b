//! KxK quantised convolutions over a channels-last (NHWC) copy of the input: 4 output
//! positions x 16 output channels per microkernel call, each position reading its taps'
//! channel vectors where they lie. The scheme of onnxruntime's `MlasConvSymKernelAvx2`.
//!
//! Why: [`super::kernel`] computes 16 consecutive positions of a phase-plane row per call, so
//! a 14x14 map computes 16 columns for 14 and a 7x7 one 9 for 7, and it interleaves im2col
//! rows (nine copies of a 3x3 conv's input) into its packed chunks. Here an indirection table
//! built at load says where each position's taps start (taps in the padding read a vector of
//! zero points), so no column is computed and dropped and the one copy made is the input's
//! transpose. onnxruntime runs ResNet-50's 3x3s this way at 95% of this machine's multiply
//! peak (README, "Where the int8 time goes").

use super::kernel::{requantise, Epilogue, Isa, OutPtr, QParams, PAIR_MAX};
use super::Geometry;
use crate::transform::rewrite::aligned::Aligned;
use crate::transform::rewrite::int8_residual::join;
use crate::transform::rewrite::on_tract_threads;

/// Output channels per call: two 8-lane i32 accumulators per position (the vector side).
pub const CB: usize = 16;
/// Output positions per call (the broadcast side): 4 x 2 accumulators, as MLAS's AVX2 kernel.
pub const PB: usize = 4;
/// Input channels per i32 lane: the depth `vpmaddubsw` + `vpmaddwd` reduce in one step.
const KQ: usize = 4;
/// Position blocks per unit of work handed to a thread.
const UNIT_BLOCKS: usize = 16;
/// Pixels per run of [`ChannelsLast::prepare`]'s copy handed to a thread: a multiple of its
/// 16 x 16 transposes and 64-pixel tiles.
const PREPARE_PIXELS: usize = 256;

/// A conv's weights packed for the channels-last kernel, its indirection table and its
/// requantisation.
#[derive(Debug)]
pub struct ChannelsLast {
    /// Output channels.
    pub m: usize,
    pub x_zero: u8,
    /// Input channels rounded up to a whole quad: the NHWC copy's pixel stride.
    c4: usize,
    /// Input pixels (H x W).
    pixels: usize,
    taps: usize,
    positions: usize,
    /// `[m / CB][taps][c4 / KQ][CB][KQ]`; channels past `m` and inputs past `C` zero. Every
    /// step is one aligned 64-byte load.
    packed: Aligned<i8>,
    /// `[positions][taps]`: where each tap's channel vector starts in the NHWC copy; taps in
    /// the padding point at the zero-point vector after the image.
    offsets: Vec<u32>,
    /// Per block of [`CB`] channels: `bias - x_zero * sum(w)` and `x_scale * w_scale / y_scale`,
    /// rows past `m` repeating the last channel.
    consts: Vec<([i32; CB], [f32; CB])>,
    y_zero: i32,
}

/// One unit of work: image, channel blocks `block..block + blocks`, and a range of position
/// blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unit {
    pub image: usize,
    pub block: usize,
    pub blocks: usize,
    pub first: usize,
    pub end: usize,
}

/// Channel blocks the AVX-512 VNNI kernel computes per call, over [`WIDE_PBS`] position
/// blocks: 8 positions x 32 channels, 16 accumulators of 16 lanes. The two `vpdpbusd` ports
/// each wait 5 cycles for a sum, so at least 10 must be in flight, and each 64-byte weight
/// load (from L2 on the larger convs) should feed many positions. A standalone copy of the
/// loop on the README's Xeon, GMAC/s for 4 x 64 / 8 x 32 / 12 x 32 channels: 134 / 196 / 271
/// at 512 channels over 7x7, 155 / 202 / 265 at 256 over 14x14, 347 / 328 / 307 at 64 over
/// 56x56 (onnxruntime's `MlasConvSymKernelAvx512Vnni` is 6 x 64). 12 positions need 12 row
/// pointers, more than the general registers left, and spilled here: twice as slow.
pub const WIDE: usize = 2;
/// Position blocks per AVX-512 VNNI call.
#[cfg(target_arch = "x86_64")]
const WIDE_PBS: usize = 2;

impl ChannelsLast {
    /// Pack `w` (`[m, C, kh, kw]`) for `geo`; `None` without requantisation (u8 outputs), when
    /// some pair of weights the kernel multiplies together could saturate, or when the image
    /// is too large for 32-bit offsets.
    pub fn new(geo: &Geometry, w: &[i8], m: usize, q: &QParams) -> Option<ChannelsLast> {
        let (c, h, wd) = geo.chw;
        let (kh, kw) = geo.kernel;
        let taps = kh * kw;
        let (_, _, y_zero, _) = q.y?;
        if m == 0 || c == 0 || w.len() != m * c * taps || q.bias.len() != m {
            return None;
        }
        let c4 = c.div_ceil(KQ) * KQ;
        let quads = c4 / KQ;
        let image = h.checked_mul(wd)?.checked_mul(c4)?;
        u32::try_from(image.checked_add(c4)?).ok()?;
        let weight = |o: usize, ci: usize, t: usize| match o < m && ci < c {
            true => w[(o * c + ci) * taps + t],
            false => 0,
        };
        // `vpmaddubsw` sums adjacent input channels of one tap.
        let saturates = (0..m).any(|o| {
            (0..taps).any(|t| {
                (0..c4).step_by(2).any(|ci| {
                    (weight(o, ci, t) as i32).abs() + (weight(o, ci + 1, t) as i32).abs() > PAIR_MAX
                })
            })
        });
        if saturates {
            return None;
        }
        let blocks = m.div_ceil(CB);
        let mut packed = Vec::with_capacity(blocks * taps * quads * CB * KQ);
        for b in 0..blocks {
            for t in 0..taps {
                for quad in 0..quads {
                    for r in 0..CB {
                        packed.extend((0..KQ).map(|k| weight(b * CB + r, quad * KQ + k, t)));
                    }
                }
            }
        }
        let offset = q.offsets(w, c * taps)?;
        let multiplier = q.multipliers(m)?;
        let consts = (0..blocks)
            .map(|b| {
                let ch = |r: usize| (b * CB + r).min(m - 1);
                (
                    std::array::from_fn(|r| offset[ch(r)]),
                    std::array::from_fn(|r| multiplier[ch(r)]),
                )
            })
            .collect();
        let (oh, ow) = geo.out;
        let mut offsets = Vec::with_capacity(oh * ow * taps);
        for oy in 0..oh {
            for ox in 0..ow {
                for ky in 0..kh {
                    for kx in 0..kw {
                        let iy = (oy * geo.stride.0 + ky).checked_sub(geo.pad.0);
                        let ix = (ox * geo.stride.1 + kx).checked_sub(geo.pad.1);
                        let at = match (iy, ix) {
                            (Some(iy), Some(ix)) if iy < h && ix < wd => (iy * wd + ix) * c4,
                            _ => image,
                        };
                        offsets.push(at as u32);
                    }
                }
            }
        }
        Some(ChannelsLast {
            m,
            x_zero: q.x_zero,
            c4,
            pixels: h * wd,
            taps,
            positions: oh * ow,
            packed: Aligned::from_slice(&packed),
            offsets,
            consts,
            y_zero: y_zero as i32,
        })
    }

    /// Bytes of one image's NHWC copy, zero-point vector included.
    pub fn image_len(&self) -> usize {
        (self.pixels + 1) * self.c4
    }

    /// The units of `images` images, channel blocks by channel blocks ([`WIDE`] at a time for
    /// `isa`'s VNNI kernel; a thread's consecutive units share their weights).
    pub fn units(&self, images: usize, isa: Isa) -> Vec<Unit> {
        let pbs = self.positions.div_ceil(PB);
        let all = self.m.div_ceil(CB);
        let step = if isa >= Isa::Avx512Vnni { WIDE } else { 1 };
        let mut units = vec![];
        for image in 0..images {
            for block in (0..all).step_by(step) {
                for first in (0..pbs).step_by(UNIT_BLOCKS) {
                    units.push(Unit {
                        image,
                        block,
                        blocks: step.min(all - block),
                        first,
                        end: (first + UNIT_BLOCKS).min(pbs),
                    });
                }
            }
        }
        units
    }

    /// Write `x` (one NCHW image) to `dst` ([`Self::image_len`] bytes) as NHWC, pixels padded
    /// to a whole quad of channels, the zero-point vector after them; runs of
    /// [`PREPARE_PIXELS`] pixels split over the plan's threads (on the caller alone, the copy
    /// left the other thread waiting: 3% of int8 ResNet-50's samples at two threads).
    pub fn prepare(&self, x: &[u8], dst: &mut [u8]) {
        let (c4, pixels) = (self.c4, self.pixels);
        let (image, zero) = dst.split_at_mut((pixels * c4).min(dst.len()));
        zero.fill(self.x_zero);
        let run = (PREPARE_PIXELS * c4).max(1);
        let runs: Vec<_> = image.chunks_mut(run).enumerate().collect();
        on_tract_threads(runs, |(i, dst)| {
            self.prepare_pixels(x, i * PREPARE_PIXELS, dst)
        });
    }

    /// [`Self::prepare`] for the pixels from `first` that `dst` holds.
    fn prepare_pixels(&self, x: &[u8], first: usize, dst: &mut [u8]) {
        let (c4, pixels) = (self.c4, self.pixels);
        let end = first + dst.len() / c4.max(1);
        let c = x.len() / pixels.max(1);
        // Whole 16 x 16 blocks as SSE2 transposes (x86), the rest byte by byte below. `first`
        // is a multiple of 16, so a run's blocks are the image's.
        let (blocked_c, blocked_p) = match cfg!(target_arch = "x86_64") {
            true => (c / 16 * 16, pixels / 16 * 16),
            false => (0, 0),
        };
        #[cfg(target_arch = "x86_64")]
        for ci in (0..blocked_c).step_by(16) {
            for p0 in (first..end.min(blocked_p)).step_by(16) {
                let src: [&[u8]; 16] = std::array::from_fn(|i| &x[(ci + i) * pixels + p0..][..16]);
                let mut rows = [[0u8; 16]; 16];
                sse2::transpose16(src, &mut rows);
                for (j, row) in rows.iter().enumerate() {
                    dst[(p0 - first + j) * c4 + ci..][..16].copy_from_slice(row);
                }
            }
        }
        // Tiles of 64 pixels: each channel's run is read once, the tile's rows written in
        // cache.
        for p0 in (first..end).step_by(64) {
            let n = 64.min(end - p0);
            for ci in 0..c {
                // Pixels the blocks above wrote are skipped.
                let from = match ci < blocked_c {
                    true => p0.max(blocked_p),
                    false => p0,
                };
                for p in from..p0 + n {
                    dst[(p - first) * c4 + ci] = x[ci * pixels + p];
                }
            }
            for ci in c..c4 {
                for j in 0..n {
                    dst[(p0 - first + j) * c4 + ci] = self.x_zero;
                }
            }
        }
    }

    /// Run `unit` over `img` (its image's NHWC copy from [`Self::prepare`]) into `out`, the
    /// whole output batch (`[images, m, positions]` u8), joined by `epilogue` if given.
    ///
    /// # Safety
    /// `out` (and the epilogue's `sum`) holds the batch, and no other unit writes this unit's
    /// channels x positions; the epilogue's `b` holds the batch.
    pub unsafe fn run(
        &self,
        img: &[u8],
        out: OutPtr,
        unit: Unit,
        epilogue: Option<&Epilogue>,
        isa: Isa,
    ) {
        assert!(img.len() >= self.image_len());
        let quads = self.c4 / KQ;
        let w_len = self.taps * quads * CB * KQ;
        let weights = |block: usize| &self.packed[block * w_len..][..w_len];
        let blocks = unit.block..unit.block + unit.blocks;
        // Positions past the last compute the last one again; they are not stored.
        let taps = |p: usize| {
            let p = p.min(self.positions - 1);
            &self.offsets[p * self.taps..][..self.taps]
        };
        // Channel block `block`'s channels, and where its first channel's row starts.
        let channels = |block: usize| (self.m - block * CB).min(CB);
        let row = |block: usize| (unit.image * self.m + block * CB) * self.positions;
        let emit = |pb: usize, block: usize, tile: &[[u8; CB]; PB]| {
            let (p0, n) = (pb * PB, channels(block));
            let (count, at) = (PB.min(self.positions - p0), row(block) + p0);
            // SAFETY: the caller's contract.
            unsafe { self.emit(tile, n, count, at, out, isa) };
        };
        let mut pb = unit.first;
        while pb < unit.end {
            #[cfg(target_arch = "x86_64")]
            if isa >= Isa::Avx512Vnni && blocks.len() == WIDE {
                let pbs = WIDE_PBS.min(unit.end - pb);
                let w = std::array::from_fn(|k| weights(unit.block + k));
                let consts = std::array::from_fn(|k| &self.consts[unit.block + k]);
                let mut tiles = [[[[0u8; CB]; PB]; WIDE]; WIDE_PBS];
                // SAFETY: AVX-512 VNNI (`isa`); offsets point inside `img` (asserted length),
                // and each `w[k]` holds `taps * quads` steps.
                unsafe {
                    let p0 = pb * PB;
                    let y = self.y_zero;
                    match pbs {
                        2 => avx512::tiles::<2, 8>(img, taps, p0, quads, w, consts, y, &mut tiles),
                        _ => avx512::tiles::<1, 4>(img, taps, p0, quads, w, consts, y, &mut tiles),
                    }
                }
                for (i, tiles) in tiles.iter().enumerate().take(pbs) {
                    for (block, tile) in blocks.clone().zip(tiles) {
                        emit(pb + i, block, tile);
                    }
                }
                pb += pbs;
                continue;
            }
            let offsets: [&[u32]; PB] = std::array::from_fn(|i| taps(pb * PB + i));
            let mut tile = [[0u8; CB]; PB];
            for block in blocks.clone() {
                let (w, consts) = (weights(block), &self.consts[block]);
                self.tile(isa, img, offsets, quads, w, consts, &mut tile);
                emit(pb, block, &tile);
            }
            pb += 1;
        }
        if let Some(e) = epilogue {
            // The join over what the unit stored, a channel row at a time: runs of up to
            // `UNIT_BLOCKS * PB` positions rather than each tile's 4-position pieces gathered
            // and scattered (that took a joined ResNet-18 3x3 0.3 ms of its 0.85).
            let start = unit.first * PB;
            let len = (unit.end * PB).min(self.positions) - start;
            let mut a = [0u8; UNIT_BLOCKS * PB];
            let a = &mut a[..len];
            for block in blocks {
                for r in 0..channels(block) {
                    let at = row(block) + r * self.positions + start;
                    // SAFETY: the caller's contract: this unit's outputs, stored above.
                    unsafe {
                        std::ptr::copy_nonoverlapping(out.0.add(at), a.as_mut_ptr(), len);
                        e.apply(a, out, at, join);
                    }
                }
            }
        }
    }

    /// One block's tile on `isa`'s kernel, requantised: `tile[i][r]`, position `i`, channel
    /// `r` of the block (the portable loop below is the tests' cross-check).
    #[allow(clippy::too_many_arguments)]
    fn tile(
        &self,
        isa: Isa,
        img: &[u8],
        offsets: [&[u32]; PB],
        quads: usize,
        w: &[i8],
        consts: &([i32; CB], [f32; CB]),
        tile: &mut [[u8; CB]; PB],
    ) {
        #[cfg(target_arch = "x86_64")]
        if isa >= Isa::Avx2 {
            // SAFETY: AVX2 (`isa`); offsets point inside `img` (the caller asserted its
            // length), and `w` holds `taps * quads` steps.
            unsafe { avx2::tile(img, offsets, quads, w, consts, self.y_zero, tile, isa) };
            return;
        }
        let _ = isa;
        for (i, out) in tile.iter_mut().enumerate() {
            let mut acc = [0i32; CB];
            for (t, &at) in offsets[i].iter().enumerate() {
                let px = &img[at as usize..][..quads * KQ];
                let wt = &w[t * quads * CB * KQ..][..quads * CB * KQ];
                for (q, x) in px.chunks_exact(KQ).enumerate() {
                    for (r, a) in acc.iter_mut().enumerate() {
                        let wq = &wt[(q * CB + r) * KQ..][..KQ];
                        *a += (0..KQ).map(|k| wq[k] as i32 * x[k] as i32).sum::<i32>();
                    }
                }
            }
            for (r, o) in out.iter_mut().enumerate() {
                *o = requantise(acc[r], consts.0[r], consts.1[r], self.y_zero);
            }
        }
    }

    /// Store the first `n` positions of a block's tile (its first `channels` channels; channel
    /// `r` from element `at + r * positions`).
    ///
    /// # Safety
    /// As [`Self::run`].
    unsafe fn emit(
        &self,
        tile: &[[u8; CB]; PB],
        channels: usize,
        n: usize,
        at: usize,
        out: OutPtr,
        isa: Isa,
    ) {
        #[cfg(target_arch = "x86_64")]
        if isa >= Isa::Avx2 && n == PB && channels == CB {
            // SAFETY: AVX2; the block's 16 channel rows hold positions `at..at + 4`.
            avx2::store_transposed(tile, out.0.add(at), self.positions);
            return;
        }
        let _ = isa;
        for r in 0..channels {
            let at = at + r * self.positions;
            for (i, row) in tile.iter().enumerate().take(n) {
                out.0.add(at + i).write(row[r]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::*;

    /// `dst[j][i] = src[i][j]` for a 16 x 16 block of bytes.
    pub fn transpose16(src: [&[u8]; 16], dst: &mut [[u8; 16]; 16]) {
        // SAFETY: SSE2 is part of x86_64; every row is 16 bytes (slice types above).
        unsafe {
            let mut r: [__m128i; 16] =
                std::array::from_fn(|i| _mm_loadu_si128(src[i][..16].as_ptr() as *const __m128i));
            // Four rounds of interleaving row pairs (2i, 2i + 1) into rows i and i + 8: bytes,
            // words, dwords, qwords. Row k then holds column `k` with its 4 bits reversed.
            for round in 0..4 {
                let mut next = r;
                for i in 0..8 {
                    let (a, b) = (r[2 * i], r[2 * i + 1]);
                    (next[i], next[i + 8]) = match round {
                        0 => (_mm_unpacklo_epi8(a, b), _mm_unpackhi_epi8(a, b)),
                        1 => (_mm_unpacklo_epi16(a, b), _mm_unpackhi_epi16(a, b)),
                        2 => (_mm_unpacklo_epi32(a, b), _mm_unpackhi_epi32(a, b)),
                        _ => (_mm_unpacklo_epi64(a, b), _mm_unpackhi_epi64(a, b)),
                    };
                }
                r = next;
            }
            for (k, v) in r.into_iter().enumerate() {
                let column = (k as u8).reverse_bits() >> 4;
                _mm_storeu_si128(dst[column as usize].as_mut_ptr() as *mut __m128i, v);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Isa, CB, KQ, PB};
    use crate::transform::rewrite::int8_conv::kernel::avx2::dot;
    use crate::transform::rewrite::int8_residual::avx2::{pack_u8x16, requantise8};
    use std::arch::x86_64::*;

    /// `out[r * stride + i] = tile[i][r]`: 4 positions x 16 channels to 16 channel rows of 4
    /// bytes.
    ///
    /// # Safety
    /// AVX2; each of the 16 rows' 4 bytes writable.
    #[target_feature(enable = "avx2")]
    pub unsafe fn store_transposed(tile: &[[u8; CB]; PB], out: *mut u8, stride: usize) {
        let row = |i: usize| _mm_loadu_si128(tile[i].as_ptr() as *const __m128i);
        let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
        // Bytes of positions 0/1 and 2/3 interleaved, then their pairs: 4 channels of 4
        // positions per register.
        let (lo01, hi01) = (_mm_unpacklo_epi8(r0, r1), _mm_unpackhi_epi8(r0, r1));
        let (lo23, hi23) = (_mm_unpacklo_epi8(r2, r3), _mm_unpackhi_epi8(r2, r3));
        let quads = [
            _mm_unpacklo_epi16(lo01, lo23),
            _mm_unpackhi_epi16(lo01, lo23),
            _mm_unpacklo_epi16(hi01, hi23),
            _mm_unpackhi_epi16(hi01, hi23),
        ];
        for (j, q) in quads.iter().enumerate() {
            let words: [i32; 4] = std::mem::transmute(*q);
            for (k, &v) in words.iter().enumerate() {
                (out.add((j * 4 + k) * stride) as *mut i32).write_unaligned(v);
            }
        }
    }

    /// 4 positions x 16 channels, requantised: `tile[i]` is position `i`'s 16 bytes.
    ///
    /// # Safety
    /// AVX2; every offset plus `quads * 4` inside `img`; `w` holds `offsets[0].len() * quads`
    /// steps of 64 bytes.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2")]
    pub unsafe fn tile(
        img: &[u8],
        offsets: [&[u32]; PB],
        quads: usize,
        w: &[i8],
        consts: &([i32; CB], [f32; CB]),
        y_zero: i32,
        tile: &mut [[u8; CB]; PB],
        isa: Isa,
    ) {
        let c = if isa >= Isa::Avx512Vnni {
            accumulate::<true>(img, offsets, quads, w)
        } else {
            accumulate::<false>(img, offsets, quads, w)
        };
        requantise_tile(&c, consts, y_zero, tile);
    }

    /// The tile's i32 sums: `[position][channels 0..8, 8..16]`.
    #[inline(always)]
    unsafe fn accumulate<const VNNI: bool>(
        img: &[u8],
        offsets: [&[u32]; PB],
        quads: usize,
        w: &[i8],
    ) -> [[__m256i; 2]; PB] {
        let mut c = [[_mm256_setzero_si256(); 2]; PB];
        let taps = offsets[0].len();
        debug_assert!(w.len() >= taps * quads * CB * KQ);
        let mut wp = w.as_ptr() as *const __m256i;
        let [o0, o1, o2, o3] = offsets;
        for (((&a, &b), &c2), &d) in o0.iter().zip(o1).zip(o2).zip(o3) {
            let rows = [a, b, c2, d].map(|at| img.as_ptr().add(at as usize));
            for q in 0..quads {
                let w0 = _mm256_loadu_si256(wp);
                let w1 = _mm256_loadu_si256(wp.add(1));
                wp = wp.add(2);
                for (c, row) in c.iter_mut().zip(&rows) {
                    let x = _mm256_set1_epi32((row.add(q * KQ) as *const i32).read_unaligned());
                    c[0] = dot::<VNNI>(c[0], x, w0);
                    c[1] = dot::<VNNI>(c[1], x, w1);
                }
            }
        }
        c
    }

    /// The tile requantised: `tile[i]` is position `i`'s 16 bytes.
    #[inline(always)]
    unsafe fn requantise_tile(
        c: &[[__m256i; 2]; PB],
        consts: &([i32; CB], [f32; CB]),
        y_zero: i32,
        tile: &mut [[u8; CB]; PB],
    ) {
        let offset = [
            _mm256_loadu_si256(consts.0.as_ptr() as *const __m256i),
            _mm256_loadu_si256(consts.0.as_ptr().add(8) as *const __m256i),
        ];
        let multiplier = [
            _mm256_loadu_ps(consts.1.as_ptr()),
            _mm256_loadu_ps(consts.1.as_ptr().add(8)),
        ];
        let y_zero = _mm256_set1_epi32(y_zero);
        for (c, out) in c.iter().zip(tile.iter_mut()) {
            let lo = requantise8(c[0], offset[0], multiplier[0], y_zero);
            let hi = requantise8(c[1], offset[1], multiplier[1], y_zero);
            _mm_storeu_si128(out.as_mut_ptr() as *mut __m128i, pack_u8x16(lo, hi));
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{CB, KQ, PB, WIDE};
    use crate::transform::rewrite::int8_residual::avx2::{pack_u8x16, requantise8};
    use std::arch::x86_64::*;

    /// `PBS` blocks of 4 positions (`P = 4 * PBS` positions from `p0`, their taps from
    /// `taps(p)`) x `WIDE` blocks of 16 channels, requantised: `tiles[i][k][j]` is position
    /// `p0 + 4i + j`'s 16 bytes of block `k`. Each block's weights are their own stream.
    ///
    /// # Safety
    /// AVX-512F/BW and VNNI; every offset plus `quads * 4` inside `img`; each `w[k]` holds
    /// `taps * quads` steps of 64 bytes.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vnni")]
    pub unsafe fn tiles<'a, const PBS: usize, const P: usize>(
        img: &[u8],
        taps: impl Fn(usize) -> &'a [u32],
        p0: usize,
        quads: usize,
        w: [&[i8]; WIDE],
        consts: [&([i32; CB], [f32; CB]); WIDE],
        y_zero: i32,
        tiles: &mut [[[[u8; CB]; PB]; WIDE]; super::WIDE_PBS],
    ) {
        debug_assert_eq!(P, PBS * PB);
        let mut c = [[_mm512_setzero_si512(); WIDE]; P];
        accumulate::<P>(img, std::array::from_fn(|i| taps(p0 + i)), quads, w, &mut c);
        let y_zero = _mm256_set1_epi32(y_zero);
        for (k, &(offset, multiplier)) in consts.iter().enumerate() {
            let half = |h: usize| {
                (
                    _mm256_loadu_si256(offset.as_ptr().add(8 * h) as *const __m256i),
                    _mm256_loadu_ps(multiplier.as_ptr().add(8 * h)),
                )
            };
            let [(o_lo, m_lo), (o_hi, m_hi)] = [half(0), half(1)];
            for (i, c) in c.iter().enumerate() {
                let lo = requantise8(_mm512_castsi512_si256(c[k]), o_lo, m_lo, y_zero);
                let hi = requantise8(_mm512_extracti64x4_epi64::<1>(c[k]), o_hi, m_hi, y_zero);
                let out = tiles[i / PB][k][i % PB].as_mut_ptr() as *mut __m128i;
                _mm_storeu_si128(out, pack_u8x16(lo, hi));
            }
        }
    }

    /// The sums of [`tiles`], `[position][block]`. Out of line: inlined into its caller,
    /// LLVM kept one accumulator in memory across the loop (a store and a reload per step;
    /// `perf annotate` put 70% of the time on them).
    #[inline(never)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn accumulate<const P: usize>(
        img: &[u8],
        offsets: [&[u32]; P],
        quads: usize,
        w: [&[i8]; WIDE],
        out: &mut [[__m512i; WIDE]; P],
    ) {
        let mut c = [[_mm512_setzero_si512(); WIDE]; P];
        let taps = offsets[0].len();
        debug_assert!(w.iter().all(|w| w.len() >= taps * quads * CB * KQ));
        let (mut w0, mut w1) = (
            w[0].as_ptr() as *const __m512i,
            w[1].as_ptr() as *const __m512i,
        );
        // Tap `t` of every position: a column of `offsets`.
        #[allow(clippy::needless_range_loop)]
        for t in 0..taps {
            let rows: [*const u8; P] =
                std::array::from_fn(|i| img.as_ptr().add(offsets[i][t] as usize));
            for q in 0..quads {
                let (a, b) = (_mm512_loadu_si512(w0), _mm512_loadu_si512(w1));
                (w0, w1) = (w0.add(1), w1.add(1));
                for (c, row) in c.iter_mut().zip(&rows) {
                    let x = _mm512_set1_epi32((row.add(q * KQ) as *const i32).read_unaligned());
                    c[0] = _mm512_dpbusd_epi32(c[0], x, a);
                    c[1] = _mm512_dpbusd_epi32(c[1], x, b);
                }
            }
        }
        *out = c;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::rewrite::int8_conv::kernel::tests::{reference, test_weights};
    use crate::transform::rewrite::test_bytes as bytes;

    fn check(geo: Geometry, m: usize, images: usize, isa: Isa) {
        let depth = geo.depth();
        let x = bytes(images * geo.input_len(), 3);
        let (w, bias, w_scales) = test_weights(m, depth);
        let q = QParams {
            x_zero: 7,
            bias: &bias,
            y: Some((0.05, &w_scales[..], 100, 0.02)),
        };
        let cl = ChannelsLast::new(&geo, &w, m, &q).expect("no saturating pairs");
        // The accumulators from the definition, requantised in f32 as the runtime specifies
        // (an f64 product rounds differently next to a tie).
        let acc_only = QParams { y: None, ..q };
        let positions = geo.positions();
        let want: Vec<i64> = x
            .chunks_exact(geo.input_len())
            .flat_map(|x| reference(&geo, x, &w, &acc_only))
            .enumerate()
            .map(|(i, acc)| {
                let multiplier = 0.05 * w_scales[i / positions % m] / 0.02;
                let y = (acc as i32 as f32 * multiplier).round_ties_even() as i64 + 100;
                y.clamp(0, 255)
            })
            .collect();
        let len = cl.image_len();
        let mut nhwc = vec![0u8; images * len];
        for (src, dst) in x
            .chunks_exact(geo.input_len())
            .zip(nhwc.chunks_exact_mut(len))
        {
            cl.prepare(src, dst);
        }
        let mut got = vec![0u8; want.len()];
        // Units in reverse: none depends on another's order.
        for unit in cl.units(images, isa).into_iter().rev() {
            let img = &nhwc[unit.image * len..][..len];
            unsafe { cl.run(img, OutPtr(got.as_mut_ptr()), unit, None, isa) };
        }
        let off = want
            .iter()
            .zip(&got)
            .filter(|(a, b)| **a != **b as i64)
            .count();
        assert_eq!(off, 0, "{geo:?} m={m} {isa:?}: {off} outputs differ");
        let clamped = want.iter().filter(|&&v| v == 0 || v == 255).count();
        assert!(
            clamped > 0 && clamped < want.len(),
            "{geo:?}: {clamped} clamped"
        );
    }

    fn geometries() -> Vec<(Geometry, usize, usize)> {
        let g = |chw, kernel, stride, pad, out| Geometry {
            chw,
            kernel,
            stride,
            pad,
            out,
        };
        vec![
            // 3x3 padded: positions not a multiple of PB, channels neither of CB nor of 4.
            (g((5, 9, 7), (3, 3), (1, 1), (1, 1), (9, 7)), 6, 1),
            // Two images; more than one channel block and one unit of positions.
            (g((8, 13, 11), (3, 3), (1, 1), (1, 1), (13, 11)), 37, 2),
            // Four whole channel blocks (two AVX-512 VNNI units) and a partial fifth (a unit
            // of one block, on the single-block path).
            (g((8, 7, 6), (3, 3), (1, 1), (1, 1), (7, 6)), 70, 2),
            // Channels and pixels past whole 16 x 16 transpose blocks (32 x 42).
            (g((32, 6, 7), (3, 3), (1, 1), (1, 1), (6, 7)), 20, 1),
            // Three runs of the copy (575 pixels), the last one past the whole blocks.
            (g((20, 23, 25), (3, 3), (1, 1), (1, 1), (23, 25)), 9, 1),
            // Stride 2 (a stage's first 3x3), unpadded, and the stem's 7x7 with 3 channels.
            (g((12, 9, 9), (3, 3), (2, 2), (1, 1), (5, 5)), 16, 1),
            (g((4, 8, 8), (3, 3), (1, 1), (0, 0), (6, 6)), 5, 1),
            (g((3, 20, 18), (7, 7), (2, 2), (3, 3), (10, 9)), 8, 1),
        ]
    }

    #[test]
    fn scalar_kernel_matches_the_definition() {
        for (geo, m, images) in geometries() {
            check(geo, m, images, Isa::Portable);
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
            for (geo, m, images) in geometries() {
                check(geo, m, images, isa);
            }
        }
    }

    #[test]
    fn pairs_of_channels_that_could_saturate_are_refused() {
        let geo = Geometry {
            chw: (2, 1, 1),
            kernel: (1, 1),
            stride: (1, 1),
            pad: (0, 0),
            out: (1, 1),
        };
        let q = |w: &[i8]| {
            let q = QParams {
                x_zero: 0,
                bias: &[0],
                y: Some((1.0, &[1.0], 0, 1.0)),
            };
            ChannelsLast::new(&geo, w, 1, &q).is_some()
        };
        // Channels 0 and 1 of one tap share a `vpmaddubsw` pair: 100 + 28 fits, 100 + 29 not.
        assert!(q(&[100, -28]));
        assert!(!q(&[100, -29]));
    }
}
