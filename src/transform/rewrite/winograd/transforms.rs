//! The Winograd transforms themselves, eight tiles at a time.
//!
//! Each 2D transform is two 1D passes (rows, then columns) over `[Lanes; alpha]` arrays, where
//! one `Lanes` holds the same position of eight neighbouring tiles, so every arithmetic step is
//! a vector op. Input rows are first split by phase (`x mod m`), which turns the stride-m
//! gathers of overlapping tiles into contiguous loads.

/// Tiles transformed together: one 256-bit register of f32 (two NEON registers).
pub const LANES: usize = 8;
pub type Lanes = [f32; LANES];
/// The largest input tile side, F(4x4,3x3)'s.
pub const MAX_ALPHA: usize = 6;

/// One Winograd variant F(m x m, 3 x 3), with its constants (Lavin & Gray 2016, section 4).
pub trait Variant {
    /// Output tile side.
    const M: usize;
    /// Input tile side, m + 2.
    const A: usize;
    /// `[Lanes; A]`
    type In: Copy + Default + AsRef<[Lanes]> + AsMut<[Lanes]>;
    /// `[Lanes; M]`
    type Out: Copy + Default + AsRef<[Lanes]> + AsMut<[Lanes]>;
    /// G, the A x 3 kernel transform.
    const G: &'static [[f64; 3]];
    /// `B^T d` along one axis.
    fn input_1d(d: &Self::In, out: &mut Self::In);
    /// `A^T v` along one axis.
    fn output_1d(v: &Self::In, out: &mut Self::Out);
}

/// `out[l] = f(l)` for every lane, written in place (no array moves).
#[inline(always)]
fn set(out: &mut Lanes, f: impl Fn(usize) -> f32) {
    for (l, o) in out.iter_mut().enumerate() {
        *o = f(l);
    }
}

/// F(2x2,3x3): additions only.
pub struct F2;

impl Variant for F2 {
    const M: usize = 2;
    const A: usize = 4;
    type In = [Lanes; 4];
    type Out = [Lanes; 2];
    const G: &'static [[f64; 3]] = &[
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0.0, 0.0, 1.0],
    ];

    #[inline(always)]
    fn input_1d(d: &[Lanes; 4], out: &mut [Lanes; 4]) {
        set(&mut out[0], |l| d[0][l] - d[2][l]);
        set(&mut out[1], |l| d[1][l] + d[2][l]);
        set(&mut out[2], |l| d[2][l] - d[1][l]);
        set(&mut out[3], |l| d[1][l] - d[3][l]);
    }

    #[inline(always)]
    fn output_1d(v: &[Lanes; 4], out: &mut [Lanes; 2]) {
        set(&mut out[0], |l| v[0][l] + v[1][l] + v[2][l]);
        set(&mut out[1], |l| v[1][l] - v[2][l] - v[3][l]);
    }
}

/// F(4x4,3x3) on the points 0, +-1, +-2 (and infinity).
pub struct F4;

impl Variant for F4 {
    const M: usize = 4;
    const A: usize = 6;
    type In = [Lanes; 6];
    type Out = [Lanes; 4];
    const G: &'static [[f64; 3]] = &[
        [1.0 / 4.0, 0.0, 0.0],
        [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
        [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
        [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
        [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
        [0.0, 0.0, 1.0],
    ];

    #[inline(always)]
    fn input_1d(d: &[Lanes; 6], out: &mut [Lanes; 6]) {
        set(&mut out[0], |l| 4.0 * d[0][l] - 5.0 * d[2][l] + d[4][l]);
        set(&mut out[1], |l| {
            (d[3][l] + d[4][l]) - 4.0 * (d[1][l] + d[2][l])
        });
        set(&mut out[2], |l| {
            (d[4][l] - d[3][l]) + 4.0 * (d[1][l] - d[2][l])
        });
        set(&mut out[3], |l| {
            (d[4][l] - d[2][l]) + 2.0 * (d[3][l] - d[1][l])
        });
        set(&mut out[4], |l| {
            (d[4][l] - d[2][l]) - 2.0 * (d[3][l] - d[1][l])
        });
        set(&mut out[5], |l| 4.0 * d[1][l] - 5.0 * d[3][l] + d[5][l]);
    }

    #[inline(always)]
    fn output_1d(v: &[Lanes; 6], out: &mut [Lanes; 4]) {
        set(&mut out[0], |l| {
            v[0][l] + (v[1][l] + v[2][l]) + (v[3][l] + v[4][l])
        });
        set(&mut out[1], |l| {
            (v[1][l] - v[2][l]) + 2.0 * (v[3][l] - v[4][l])
        });
        set(&mut out[2], |l| {
            (v[1][l] + v[2][l]) + 4.0 * (v[3][l] + v[4][l])
        });
        set(&mut out[3], |l| {
            (v[1][l] - v[2][l]) + 8.0 * (v[3][l] - v[4][l]) + v[5][l]
        });
    }
}

/// `U = G g G^T` for every (out, in) channel pair of an OIHW 3x3 kernel, laid out
/// `[A^2, K, C]` for the matmuls. Computed in f64.
pub fn transform_kernel<V: Variant>(kernel: &[f32], k: usize, c: usize) -> Vec<f32> {
    let (a, g) = (V::A, V::G);
    let mut u = vec![0f32; a * a * k * c];
    // `kc` runs over (out, in) in OIHW order, which is the [K, C] layout wanted.
    for (kc, w) in kernel.chunks_exact(9).enumerate() {
        let mut gg = [[0f64; 3]; MAX_ALPHA];
        for (i, row) in g.iter().enumerate() {
            for j in 0..3 {
                gg[i][j] = (0..3).map(|t| row[t] * w[t * 3 + j] as f64).sum();
            }
        }
        for (i, gg_row) in gg.iter().enumerate().take(a) {
            for (j, row) in g.iter().enumerate() {
                let value: f64 = (0..3).map(|t| gg_row[t] * row[t]).sum();
                u[(i * a + j) * k * c + kc] = value as f32;
            }
        }
    }
    u
}

/// Geometry shared by the two plane transforms.
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    pub tiles: (usize, usize),
    /// Tiles of all images: the matmuls' N.
    pub t_total: usize,
}

/// Scratch for [`input_plane`]: one plane split into phases, reused across channels.
pub struct Phases {
    /// `[rows][m][stride]`: entry (r, q, t) is padded input (r, t * m + q).
    data: Vec<f32>,
    /// Entries per (row, phase): tiles across plus one (the tile overlap) plus a spare chunk,
    /// so every 8-lane load stays in bounds. Padding and spares stay zero: only the input's
    /// own rows are ever written.
    stride: usize,
    /// One input row with its left/right zero padding, `(tiles across + 1) * m` wide (and
    /// zeros up to a whole block of eight tiles).
    padded_row: Vec<f32>,
}

impl Phases {
    pub fn new<V: Variant>(tiles: (usize, usize)) -> Phases {
        let rows = tiles.0 * V::M + 2;
        let stride = tiles.1 + 1 + LANES;
        Phases {
            data: vec![0f32; rows * V::M * stride],
            stride,
            // Whole blocks of eight tiles, so the vector deinterleave has no scalar tail.
            padded_row: vec![0f32; (tiles.1 + 1).next_multiple_of(LANES) * V::M],
        }
    }
}

/// The first `live` lanes into `out`: a fixed-size copy (vector stores) when `out` has room
/// for all eight (the extra lanes land on tiles written later), element by element otherwise.
#[inline(always)]
fn store(out: &mut [f32], lanes: &Lanes, live: usize) {
    match out.get_mut(..LANES).map(<&mut Lanes>::try_from) {
        Some(Ok(dst)) => *dst = *lanes,
        _ => store_partial(out, lanes, live),
    }
}

/// Out of line, so the compiler cannot fold the fixed-size copy above into one memcpy call of
/// variable length (which it otherwise does, at 12% of the transform's time).
#[cold]
#[inline(never)]
fn store_partial(out: &mut [f32], lanes: &Lanes, live: usize) {
    out.iter_mut()
        .zip(&lanes[..live])
        .for_each(|(o, l)| *o = *l);
}

/// Eight lanes from `src`, or the `live` it has left with the rest zero.
#[inline(always)]
fn load(src: &[f32], live: usize, out: &mut Lanes) {
    match src.get(..LANES).map(<&Lanes>::try_from) {
        Some(Ok(full)) => *out = *full,
        _ => load_partial(src, live, out),
    }
}

#[cold]
#[inline(never)]
fn load_partial(src: &[f32], live: usize, out: &mut Lanes) {
    *out = [0.0; LANES];
    out.iter_mut().zip(&src[..live]).for_each(|(o, s)| *o = *s);
}

/// Compile `$generic` a second time with AVX enabled and pick per CPU: the transforms are
/// plain array arithmetic that the compiler vectorises to the widest registers it may use, and
/// the x86-64 baseline is SSE2 (4 lanes). aarch64's baseline NEON needs nothing.
macro_rules! avx_dispatch {
    ($(#[$doc:meta])* pub fn $name:ident / $avx:ident / $generic:ident ($($arg:ident: $ty:ty),* $(,)?)) => {
        $(#[$doc])*
        #[allow(clippy::too_many_arguments)]
        pub fn $name<V: Variant>($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx") {
                // SAFETY: the CPU has AVX, checked just above.
                return unsafe { $avx::<V>($($arg),*) };
            }
            $generic::<V>($($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $avx<V: Variant>($($arg: $ty),*) {
            $generic::<V>($($arg),*)
        }
    };
}

avx_dispatch! {
    /// Transform one `h x w` channel plane `x` into its rows of the `[A^2, C, t_total]` matmul
    /// input: `rows_out[p]` is position p's row for this channel, written from tile `t_base`.
    /// `pad` is (top, left) zero padding.
    pub fn input_plane / input_plane_avx / input_plane_generic(
        x: &[f32],
        hw: (usize, usize),
        pad: (usize, usize),
        geometry: Geometry,
        phases: &mut Phases,
        rows_out: &mut [&mut [f32]],
        t_base: usize,
    )
}

/// Transform the matmul outputs (`src[p]` is position p's `[K, t_total]`) back into one
/// `oh x ow` output plane for channel `ch`, tiles from `t_base`: `A^T m A + bias`, ReLU'd if
/// asked. On x86 with AVX, the intrinsic tile loops of [`avx`]; elsewhere the portable code.
pub fn output_plane<V: Variant>(
    src: &[&[f32]],
    ch: usize,
    t_base: usize,
    geometry: Geometry,
    epilogue: (f32, bool),
    plane: &mut [f32],
    out_hw: (usize, usize),
) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx") {
        let (g, e, hw) = (geometry, epilogue, out_hw);
        // SAFETY: the CPU has AVX, checked just above.
        let done = match V::M {
            2 => unsafe { avx::output_tiles::<F2>(src, ch, t_base, g, e, plane, hw) },
            4 => unsafe { avx::output_tiles::<F4>(src, ch, t_base, g, e, plane, hw) },
            _ => false,
        };
        if done {
            return;
        }
    }
    output_plane_generic::<V>(src, ch, t_base, geometry, epilogue, plane, out_hw)
}

#[inline(always)]
fn input_plane_generic<V: Variant>(
    x: &[f32],
    (h, w): (usize, usize),
    pad: (usize, usize),
    geometry: Geometry,
    phases: &mut Phases,
    rows_out: &mut [&mut [f32]],
    t_base: usize,
) {
    let m = V::M;
    let (th, tw) = geometry.tiles;
    let stride = phases.stride;
    let rows = th * m + 2;
    let cols = (tw + 1) * m;
    let copied = w.min(cols.saturating_sub(pad.1));
    for (sr, src) in x.chunks_exact(w).take(h).enumerate() {
        let r = sr + pad.0;
        if r >= rows {
            break;
        }
        phases.padded_row[pad.1..pad.1 + copied].copy_from_slice(&src[..copied]);
        let row = &mut phases.data[r * m * stride..][..m * stride];
        match m {
            2 | 4 => deinterleave_dispatch(m, &phases.padded_row, row, stride),
            _ => {
                for (q, phase) in row.chunks_exact_mut(stride).enumerate() {
                    let from = phases.padded_row.iter().skip(q).step_by(m);
                    phase.iter_mut().zip(from).for_each(|(p, v)| *p = *v);
                }
            }
        }
    }
    let data = &phases.data;
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx") {
        let tiles = (th, tw);
        // SAFETY: the CPU has AVX, checked just above.
        let done = match V::M {
            2 => unsafe { avx::input_tiles::<F2>(data, stride, tiles, rows_out, t_base) },
            4 => unsafe { avx::input_tiles::<F4>(data, stride, tiles, rows_out, t_base) },
            _ => false,
        };
        if done {
            return;
        }
    }
    input_tiles_generic::<V>(data, stride, (th, tw), rows_out, t_base);
}

/// The tile loop of [`input_plane`]: `data` the phase rows (`stride` apart, as [`Phases`] lays
/// them out), `rows_out[p]` position p's row, from tile `t_base`.
#[inline(always)]
fn input_tiles_generic<V: Variant>(
    data: &[f32],
    stride: usize,
    (th, tw): (usize, usize),
    rows_out: &mut [&mut [f32]],
    t_base: usize,
) {
    let (m, a) = (V::M, V::A);
    let mut d = V::In::default();
    let mut rows_t = [V::In::default(); MAX_ALPHA];
    let mut col = V::In::default();
    let mut out = V::In::default();
    for ty in 0..th {
        for tx0 in (0..tw).step_by(LANES) {
            let live = LANES.min(tw - tx0);
            // Rows of the tile, each transformed along x: rows_t[i] = (d B)[i].
            for (i, row_t) in rows_t.iter_mut().enumerate().take(a) {
                let r = ty * m + i;
                for (j, dj) in d.as_mut().iter_mut().enumerate() {
                    let at = (r * m + j % m) * stride + tx0 + j / m;
                    dj.copy_from_slice(&data[at..at + LANES]);
                }
                V::input_1d(&d, row_t);
            }
            // Then along y, column by column, and out to the matmul input.
            let t0 = t_base + ty * tw + tx0;
            for j in 0..a {
                for (i, ci) in col.as_mut().iter_mut().enumerate() {
                    *ci = rows_t[i].as_ref()[j];
                }
                V::input_1d(&col, &mut out);
                for (i, lanes) in out.as_ref().iter().enumerate() {
                    store(&mut rows_out[i * a + j][t0..], lanes, live);
                }
            }
        }
    }
}

/// `dst[q * stride + t] = src[t * M + q]`: a row split into its `M` phases, one loop over
/// `t` with a constant `M`, which the compiler turns into vector shuffles (`skip(q).step_by(M)`
/// per phase moved one element at a time).
#[inline(always)]
fn deinterleave<const M: usize>(src: &[f32], dst: &mut [f32], stride: usize) {
    let n = (src.len() / M).min(stride);
    let mut phases = dst.chunks_exact_mut(stride).map(|p| &mut p[..n]);
    let mut out: [&mut [f32]; M] = std::array::from_fn(|_| phases.next().unwrap_or_default());
    if out.iter().any(|o| o.len() != n) {
        return;
    }
    for (t, group) in src.chunks_exact(M).take(n).enumerate() {
        for (q, phase) in out.iter_mut().enumerate() {
            phase[t] = group[q];
        }
    }
}

/// [`output_plane`]'s portable code.
fn output_plane_generic<V: Variant>(
    src: &[&[f32]],
    ch: usize,
    t_base: usize,
    geometry: Geometry,
    (bias, relu): (f32, bool),
    plane: &mut [f32],
    (oh, ow): (usize, usize),
) {
    let (m, a) = (V::M, V::A);
    let (th, tw) = geometry.tiles;
    let t_total = geometry.t_total;
    let mut strip = [0f32; LANES * 4];
    let mut d = V::In::default();
    let mut rows_t = [V::Out::default(); MAX_ALPHA];
    let mut col = V::In::default();
    let mut out = [V::Out::default(); 4];
    for ty in 0..th {
        for tx0 in (0..tw).step_by(LANES) {
            let live = LANES.min(tw - tx0);
            let t0 = t_base + ty * tw + tx0;
            // Rows of the tile, each transformed along x: rows_t[i] = (v A)[i].
            for (i, row_t) in rows_t.iter_mut().enumerate().take(a) {
                for (j, dj) in d.as_mut().iter_mut().enumerate() {
                    load(&src[i * a + j][ch * t_total + t0..], live, dj);
                }
                V::output_1d(&d, row_t);
            }
            // Then along y, for each output column of the tiles: out[j][i] = (A^T v A)[i][j].
            for (j, out_j) in out.iter_mut().enumerate().take(m) {
                for (i, ci) in col.as_mut().iter_mut().enumerate() {
                    *ci = rows_t[i].as_ref()[j];
                }
                V::output_1d(&col, out_j);
            }
            let x0 = tx0 * m;
            let width = (live * m).min(ow - x0);
            for i in 0..m {
                let y = ty * m + i;
                if y >= oh {
                    break;
                }
                // Interleave the lanes back into pixels: strip[l * m + j] = out[j][i][l].
                for (j, out_j) in out.iter().enumerate().take(m) {
                    let values = &out_j.as_ref()[i];
                    for (l, value) in values.iter().enumerate() {
                        let value = value + bias;
                        strip[l * m + j] = if relu { value.max(0.0) } else { value };
                    }
                }
                let out_row = &mut plane[y * ow + x0..][..width];
                if width == LANES * m {
                    out_row.copy_from_slice(&strip[..LANES * m]);
                } else {
                    out_row.iter_mut().zip(&strip).for_each(|(o, s)| *o = *s);
                }
            }
        }
    }
}

/// [`deinterleave`] for `m` of 2 or 4, with vector shuffles where AVX2 runs (the compiler
/// moves the generic loop's elements one at a time).
fn deinterleave_dispatch(m: usize, src: &[f32], dst: &mut [f32], stride: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        let done = unsafe {
            match m {
                2 => avx::deinterleave::<2>(src, dst, stride),
                _ => avx::deinterleave::<4>(src, dst, stride),
            }
        };
        // Groups past the last whole block of eight (none for [`Phases`]' rows).
        let n = (src.len() / m).min(stride);
        for t in done..n {
            for q in 0..m {
                dst[q * stride + t] = src[t * m + q];
            }
        }
        return;
    }
    match m {
        2 => deinterleave::<2>(src, dst, stride),
        _ => deinterleave::<4>(src, dst, stride),
    }
}

/// The tile loops written with AVX intrinsics, and the phase split with AVX2: the same
/// operations in the same order as the generic code (so the same values), without its bounds
/// checks, its arrays moved through the stack, or its element-by-element shuffles. ResNet-50's
/// layer1 sizes (64 channels of 56x56, F(4x4)) in a loop on the README's Xeon: the input
/// transform 0.31-0.41 -> 0.24 ms, the output one 0.17-0.19 -> 0.12.
#[cfg(target_arch = "x86_64")]
mod avx {
    use super::{store_partial, Geometry, Lanes, Variant, F2, F4, LANES};
    use std::arch::x86_64::*;

    /// Each 128-bit half of `v` as a 4x4 matrix, transposed: element `k` of half `h` of output
    /// `i` is element `i` of half `h` of `v[k]` (`_MM_TRANSPOSE4_PS` on both halves).
    #[inline(always)]
    unsafe fn transpose4(v: [__m256; 4]) -> [__m256; 4] {
        let (t0, t1) = (
            _mm256_unpacklo_ps(v[0], v[1]),
            _mm256_unpackhi_ps(v[0], v[1]),
        );
        let (t2, t3) = (
            _mm256_unpacklo_ps(v[2], v[3]),
            _mm256_unpackhi_ps(v[2], v[3]),
        );
        [
            _mm256_shuffle_ps::<0b01_00_01_00>(t0, t2),
            _mm256_shuffle_ps::<0b11_10_11_10>(t0, t2),
            _mm256_shuffle_ps::<0b01_00_01_00>(t1, t3),
            _mm256_shuffle_ps::<0b11_10_11_10>(t1, t3),
        ]
    }

    /// A variant's 1D transforms on eight tiles (`A` of the six vectors used), as its
    /// [`Variant`] methods compute them, and its output rows as pixels.
    pub trait Tiles: Variant {
        /// `B^T d`.
        unsafe fn bt(d: [__m256; 6]) -> [__m256; 6];
        /// `A^T v`.
        unsafe fn at(v: [__m256; 6]) -> [__m256; 4];
        /// Eight tiles' row of `M` outputs (`o[j]` lane `l`: tile `l`'s column `j`) as the
        /// `8 * M` pixels they are, in order.
        unsafe fn pixels(o: [__m256; 4]) -> [__m256; 4];
    }

    impl Tiles for F2 {
        #[inline(always)]
        unsafe fn bt(d: [__m256; 6]) -> [__m256; 6] {
            let (add, sub) = (_mm256_add_ps, _mm256_sub_ps);
            let zero = _mm256_setzero_ps();
            [
                sub(d[0], d[2]),
                add(d[1], d[2]),
                sub(d[2], d[1]),
                sub(d[1], d[3]),
                zero,
                zero,
            ]
        }

        #[inline(always)]
        unsafe fn at(v: [__m256; 6]) -> [__m256; 4] {
            let (add, sub) = (_mm256_add_ps, _mm256_sub_ps);
            let zero = _mm256_setzero_ps();
            [
                add(add(v[0], v[1]), v[2]),
                sub(sub(v[1], v[2]), v[3]),
                zero,
                zero,
            ]
        }

        #[inline(always)]
        unsafe fn pixels(o: [__m256; 4]) -> [__m256; 4] {
            // Tiles (0, 1 | 4, 5) and (2, 3 | 6, 7).
            let (lo, hi) = (
                _mm256_unpacklo_ps(o[0], o[1]),
                _mm256_unpackhi_ps(o[0], o[1]),
            );
            let zero = _mm256_setzero_ps();
            [
                _mm256_permute2f128_ps::<0x20>(lo, hi),
                _mm256_permute2f128_ps::<0x31>(lo, hi),
                zero,
                zero,
            ]
        }
    }

    impl Tiles for F4 {
        #[inline(always)]
        unsafe fn bt(d: [__m256; 6]) -> [__m256; 6] {
            let (add, sub, mul) = (_mm256_add_ps, _mm256_sub_ps, _mm256_mul_ps);
            let (four, five, two) = (
                _mm256_set1_ps(4.0),
                _mm256_set1_ps(5.0),
                _mm256_set1_ps(2.0),
            );
            let (d42, d31) = (sub(d[4], d[2]), sub(d[3], d[1]));
            [
                add(sub(mul(four, d[0]), mul(five, d[2])), d[4]),
                sub(add(d[3], d[4]), mul(four, add(d[1], d[2]))),
                add(sub(d[4], d[3]), mul(four, sub(d[1], d[2]))),
                add(d42, mul(two, d31)),
                sub(d42, mul(two, d31)),
                add(sub(mul(four, d[1]), mul(five, d[3])), d[5]),
            ]
        }

        #[inline(always)]
        unsafe fn at(v: [__m256; 6]) -> [__m256; 4] {
            let (add, sub, mul) = (_mm256_add_ps, _mm256_sub_ps, _mm256_mul_ps);
            let (s12, d12) = (add(v[1], v[2]), sub(v[1], v[2]));
            let (s34, d34) = (add(v[3], v[4]), sub(v[3], v[4]));
            [
                add(add(v[0], s12), s34),
                add(d12, mul(_mm256_set1_ps(2.0), d34)),
                add(s12, mul(_mm256_set1_ps(4.0), s34)),
                add(add(d12, mul(_mm256_set1_ps(8.0), d34)), v[5]),
            ]
        }

        #[inline(always)]
        unsafe fn pixels(o: [__m256; 4]) -> [__m256; 4] {
            // Tiles (0, 4), (1, 5), (2, 6) and (3, 7) in the two halves.
            let [u0, u1, u2, u3] = transpose4(o);
            [
                _mm256_permute2f128_ps::<0x20>(u0, u1),
                _mm256_permute2f128_ps::<0x20>(u2, u3),
                _mm256_permute2f128_ps::<0x31>(u0, u1),
                _mm256_permute2f128_ps::<0x31>(u2, u3),
            ]
        }
    }

    /// The tile loop of [`super::input_plane`]: `data` the phase rows (`stride` apart, as
    /// [`super::Phases`] lays them out), `rows_out[p]` position p's row. `false`, with
    /// nothing written, when the sizes disagree (the portable code then runs).
    ///
    /// # Safety
    /// AVX.
    #[target_feature(enable = "avx")]
    pub unsafe fn input_tiles<V: Tiles>(
        data: &[f32],
        stride: usize,
        (th, tw): (usize, usize),
        rows_out: &mut [&mut [f32]],
        t_base: usize,
    ) -> bool {
        let (m, a) = (V::M, V::A);
        // Every load below: rows up to `th * m + 2`, offsets up to one tile past `tw`, and a
        // whole vector more.
        if data.len() < (th * m + 2) * m * stride
            || stride < tw + 1 + LANES
            || rows_out.len() < a * a
        {
            return false;
        }
        let dp = data.as_ptr();
        for ty in 0..th {
            for tx0 in (0..tw).step_by(LANES) {
                let live = LANES.min(tw - tx0);
                // Rows of the tiles, each transformed along x.
                let mut rows = [[_mm256_setzero_ps(); 6]; 6];
                for (i, row) in rows.iter_mut().enumerate().take(a) {
                    let r = ty * m + i;
                    *row = V::bt(std::array::from_fn(|j| match j < a {
                        // SAFETY: inside `data` (checked above).
                        true => unsafe {
                            _mm256_loadu_ps(dp.add((r * m + j % m) * stride + tx0 + j / m))
                        },
                        false => _mm256_setzero_ps(),
                    }));
                }
                // Then along y, column by column, and out to the matmul input.
                let t0 = t_base + ty * tw + tx0;
                for j in 0..a {
                    let col = V::bt(std::array::from_fn(|i| rows[i][j]));
                    for (i, &v) in col.iter().enumerate().take(a) {
                        let out = &mut *rows_out[i * a + j];
                        if t0 + LANES <= out.len() {
                            // SAFETY: inside `out`, checked just above.
                            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(t0), v) };
                        } else if t0 < out.len() {
                            let mut lanes: Lanes = [0.0; LANES];
                            // SAFETY: `lanes` holds eight.
                            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
                            store_partial(&mut out[t0..], &lanes, live);
                        }
                    }
                }
            }
        }
        true
    }

    /// [`super::output_plane`]'s work; `false`, with nothing written, when the sizes disagree
    /// (the portable code then runs).
    ///
    /// # Safety
    /// AVX.
    #[target_feature(enable = "avx")]
    pub unsafe fn output_tiles<V: Tiles>(
        src: &[&[f32]],
        ch: usize,
        t_base: usize,
        geometry: Geometry,
        (bias, relu): (f32, bool),
        plane: &mut [f32],
        (oh, ow): (usize, usize),
    ) -> bool {
        let (m, a) = (V::M, V::A);
        let ((th, tw), first) = (geometry.tiles, ch * geometry.t_total + t_base);
        let Some(len) = src.iter().take(a * a).map(|s| s.len()).min() else {
            return false;
        };
        let covered = (oh.div_ceil(m), ow.div_ceil(m)) == (th, tw);
        if !covered || src.len() < a * a || len < first + th * tw || plane.len() < oh * ow {
            return false;
        }
        // The last channel's last tiles through a zero-padded copy.
        let load = |s: &[f32], t0: usize| match s.get(t0..t0 + LANES) {
            // SAFETY: eight elements.
            Some(v) => unsafe { _mm256_loadu_ps(v.as_ptr()) },
            None => {
                let mut lanes: Lanes = [0.0; LANES];
                let v = &s[t0.min(len)..len];
                lanes[..v.len()].copy_from_slice(v);
                // SAFETY: eight elements.
                unsafe { _mm256_loadu_ps(lanes.as_ptr()) }
            }
        };
        let (b, zero) = (_mm256_set1_ps(bias), _mm256_setzero_ps());
        let mut strip = [0f32; LANES * 4];
        for ty in 0..th {
            for tx0 in (0..tw).step_by(LANES) {
                let t0 = first + ty * tw + tx0;
                // Rows of the tiles, each transformed along x, then along y per column.
                let rows: [[__m256; 4]; 6] = std::array::from_fn(|i| match i < a {
                    true => V::at(std::array::from_fn(|j| match j < a {
                        true => load(src[i * a + j], t0),
                        false => zero,
                    })),
                    false => [zero; 4],
                });
                let cols: [[__m256; 4]; 4] = std::array::from_fn(|j| match j < m {
                    true => V::at(std::array::from_fn(|i| rows[i][j])),
                    false => [zero; 4],
                });
                let x0 = tx0 * m;
                let width = (LANES * m).min(ow - x0);
                for i in 0..m.min(oh - ty * m) {
                    let pixels = V::pixels(std::array::from_fn(|j| {
                        let v = _mm256_add_ps(cols[j][i], b);
                        match relu {
                            true => _mm256_max_ps(v, zero),
                            false => v,
                        }
                    }));
                    let out = &mut plane[(ty * m + i) * ow + x0..][..width];
                    // The row's `8 * m` pixels straight out, or through `strip` when cropped.
                    let whole = width == LANES * m;
                    let to = match whole {
                        true => out.as_mut_ptr(),
                        false => strip.as_mut_ptr(),
                    };
                    for (k, &v) in pixels.iter().enumerate().take(m) {
                        // SAFETY: eight of the row's (or the strip's) `8 * m`.
                        unsafe { _mm256_storeu_ps(to.add(LANES * k), v) };
                    }
                    if !whole {
                        out.copy_from_slice(&strip[..width]);
                    }
                }
            }
        }
        true
    }

    /// `dst[q * stride + t] = src[t * M + q]` for whole blocks of eight `t`s (`M` of 2 or 4);
    /// returns how many `t`s it wrote.
    ///
    /// # Safety
    /// AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn deinterleave<const M: usize>(
        src: &[f32],
        dst: &mut [f32],
        stride: usize,
    ) -> usize {
        let n = (src.len() / M).min(stride);
        if dst.len() < (M - 1) * stride + n {
            return 0;
        }
        let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
        for b in 0..n / 8 {
            // SAFETY: `8 * M` elements from `b * 8 * M <= (n - 8) * M` in `src`; phase `q`'s
            // eight from `q * stride + b * 8`, before `q * stride + n <= dst.len()`.
            unsafe {
                let p = s.add(b * 8 * M);
                let store = |q: usize, v: __m256| _mm256_storeu_ps(d.add(q * stride + b * 8), v);
                if M == 2 {
                    // Each phase as [t0 t1 t4 t5 | t2 t3 t6 t7], then its 64-bit pieces in order.
                    let (x, y) = (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)));
                    let order = |v: __m256| {
                        let v = _mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(v));
                        _mm256_castpd_ps(v)
                    };
                    store(0, order(_mm256_shuffle_ps::<0b10_00_10_00>(x, y)));
                    store(1, order(_mm256_shuffle_ps::<0b11_01_11_01>(x, y)));
                } else {
                    let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(p.add(8 * i)));
                    // Each phase as [t0 t2 t4 t6 | t1 t3 t5 t7], then in order.
                    let order = |v: __m256| {
                        _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
                    };
                    for (q, phase) in transpose4(v).into_iter().enumerate() {
                        store(q, order(phase));
                    }
                }
            }
        }
        n / 8 * 8
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::transform::rewrite::winograd::tests::values;

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Tiles across not a multiple of eight, a batch offset, maps cropped inside the last
    /// tiles, and the last channel's last tiles at the end of their rows.
    const CASES: [((usize, usize), usize); 3] = [((3, 5), 7), ((14, 14), 0), ((2, 9), 3)];

    fn input_tiles_match<V: avx::Tiles>() {
        for (tiles, t_base) in CASES {
            let mut phases = Phases::new::<V>(tiles);
            phases.data = values(phases.data.len(), 3);
            let t_total = t_base + tiles.0 * tiles.1;
            let run = |avx: bool| {
                let mut rows = vec![vec![0f32; t_total]; V::A * V::A];
                let mut out: Vec<&mut [f32]> = rows.iter_mut().map(|r| &mut r[..]).collect();
                let (data, stride) = (&phases.data, phases.stride);
                match avx {
                    // SAFETY: AVX, checked by the caller.
                    true => assert!(unsafe {
                        avx::input_tiles::<V>(data, stride, tiles, &mut out, t_base)
                    }),
                    false => input_tiles_generic::<V>(data, stride, tiles, &mut out, t_base),
                }
                rows.concat()
            };
            assert_eq!(bits(&run(true)), bits(&run(false)), "F{} {tiles:?}", V::M);
        }
    }

    #[test]
    fn avx_input_tiles_match_the_generic_ones() {
        if std::is_x86_feature_detected!("avx") {
            input_tiles_match::<F2>();
            input_tiles_match::<F4>();
        }
    }

    fn output_tiles_match<V: avx::Tiles>() {
        let k = 3;
        for (tiles, t_base) in CASES {
            let t_total = t_base + tiles.0 * tiles.1;
            let blocks: Vec<Vec<f32>> = (0..36).map(|p| values(k * t_total, p)).collect();
            let src: Vec<&[f32]> = blocks.iter().take(V::A * V::A).map(|b| &b[..]).collect();
            let geometry = Geometry { tiles, t_total };
            let m = V::M;
            let out_hw = (tiles.0 * m - 1, tiles.1 * m - 1);
            for (ch, relu) in [(0, true), (k - 1, true), (k - 1, false)] {
                let run = |avx: bool| {
                    let mut plane = vec![0f32; out_hw.0 * out_hw.1];
                    let (e, p) = ((0.25, relu), &mut plane[..]);
                    match avx {
                        // SAFETY: AVX, checked by the caller.
                        true => assert!(unsafe {
                            avx::output_tiles::<V>(&src, ch, t_base, geometry, e, p, out_hw)
                        }),
                        false => {
                            output_plane_generic::<V>(&src, ch, t_base, geometry, e, p, out_hw)
                        }
                    }
                    plane
                };
                assert_eq!(
                    bits(&run(true)),
                    bits(&run(false)),
                    "F{m} {tiles:?} {ch} {relu}"
                );
            }
        }
    }

    #[test]
    fn avx_output_tiles_match_the_generic_ones() {
        if std::is_x86_feature_detected!("avx") {
            output_tiles_match::<F2>();
            output_tiles_match::<F4>();
        }
    }

    #[test]
    fn vector_deinterleave_matches_the_generic_one() {
        for (len, stride) in [(64, 23), (60, 17), (30, 40), (14, 9)] {
            let src = values(len, 5);
            for m in [2, 4] {
                let mut want = vec![0f32; m * stride];
                let mut got = want.clone();
                match m {
                    2 => deinterleave::<2>(&src, &mut want, stride),
                    _ => deinterleave::<4>(&src, &mut want, stride),
                }
                deinterleave_dispatch(m, &src, &mut got, stride);
                assert_eq!(bits(&got), bits(&want), "{len} {stride} {m}");
            }
        }
    }
}
