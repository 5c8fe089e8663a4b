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
    /// One input row with its left/right zero padding, `(tiles across + 1) * m` wide.
    padded_row: Vec<f32>,
}

impl Phases {
    pub fn new<V: Variant>(tiles: (usize, usize)) -> Phases {
        let rows = tiles.0 * V::M + 2;
        let stride = tiles.1 + 1 + LANES;
        Phases {
            data: vec![0f32; rows * V::M * stride],
            stride,
            padded_row: vec![0f32; (tiles.1 + 1) * V::M],
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

avx_dispatch! {
    /// Transform the matmul outputs (`src[p]` is position p's `[K, t_total]`) back into one
    /// `oh x ow` output plane for channel `ch`, tiles from `t_base`: `A^T m A + bias`, ReLU'd if
    /// asked.
    pub fn output_plane / output_plane_avx / output_plane_generic(
        src: &[&[f32]],
        ch: usize,
        t_base: usize,
        geometry: Geometry,
        epilogue: (f32, bool),
        plane: &mut [f32],
        out_hw: (usize, usize),
    )
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
    let (m, a) = (V::M, V::A);
    let (th, tw) = geometry.tiles;
    let stride = phases.stride;
    let rows = th * m + 2;
    let cols = phases.padded_row.len();
    let copied = w.min(cols.saturating_sub(pad.1));
    for (sr, src) in x.chunks_exact(w).take(h).enumerate() {
        let r = sr + pad.0;
        if r >= rows {
            break;
        }
        phases.padded_row[pad.1..pad.1 + copied].copy_from_slice(&src[..copied]);
        let row = &mut phases.data[r * m * stride..][..m * stride];
        match m {
            2 => deinterleave::<2>(&phases.padded_row, row, stride),
            4 => deinterleave::<4>(&phases.padded_row, row, stride),
            _ => {
                for (q, phase) in row.chunks_exact_mut(stride).enumerate() {
                    let from = phases.padded_row.iter().skip(q).step_by(m);
                    phase.iter_mut().zip(from).for_each(|(p, v)| *p = *v);
                }
            }
        }
    }
    let data = &phases.data;
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

#[inline(always)]
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
