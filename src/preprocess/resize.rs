//! Bilinear resize that reproduces Pillow's `Image.resize(size, Image.BILINEAR)` bit for bit.
//!
//! Models are trained and validated on images that torchvision resized with PIL, so the
//! runtime must resample exactly as Pillow does (`src/libImaging/Resample.c`):
//!
//! * `precompute_coeffs`: a triangle filter of support 1, widened by the scale factor when
//!   downsampling (that widening is the antialiasing), evaluated in `f64` and normalised so
//!   each output sample's weights sum to 1;
//! * `normalize_coeffs_8bpc`: weights turned into fixed point with [`PRECISION_BITS`] = 22,
//!   rounding half away from zero;
//! * `ImagingResampleHorizontal_8bpc` then `ImagingResampleVertical_8bpc`: each pass
//!   accumulates `u8 * i32` into an `i32` that starts at `1 << 21` (for rounding) and is
//!   clipped to 0..=255 after `>> 22`, so the intermediate image is itself `u8`;
//! * `ImagingResampleInner`: a pass whose size does not change is skipped, and the horizontal
//!   pass only covers the source rows the vertical pass will read.
//!
//! Every output pixel depends only on its own coefficients, so [`resize_region`] can compute
//! just the part of the output that a centre crop keeps and still match PIL exactly.

use image::RgbImage;

/// Pillow's `PRECISION_BITS` (32 - 8 - 2): 8 bits for the pixel, 2 for overshoot headroom.
const PRECISION_BITS: u32 = 32 - 8 - 2;
/// The accumulators start at one half so that `>> PRECISION_BITS` rounds to nearest.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Resize `src` to `width` x `height` exactly as Pillow's `Image.resize((width, height),
/// Image.BILINEAR)` does for an RGB image (see the module documentation).
///
/// An empty source gives a black image (Pillow would refuse); a zero target size gives an
/// empty image.
pub fn resize_bilinear_pil(src: &RgbImage, width: u32, height: u32) -> RgbImage {
    resize_region(
        src,
        width,
        height,
        Region {
            x: 0,
            y: 0,
            width,
            height,
        },
    )
}

/// A rectangle of the resized image, in output pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Region {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// The pixels of `region` of `resize_bilinear_pil(src, width, height)`, without computing
/// the rest of the resized image. The region is clamped to the resized image.
pub(crate) fn resize_region(src: &RgbImage, width: u32, height: u32, region: Region) -> RgbImage {
    let x0 = region.x.min(width);
    let y0 = region.y.min(height);
    let w = region.width.min(width - x0);
    let h = region.height.min(height - y0);
    if w == 0 || h == 0 {
        return RgbImage::new(w, h);
    }
    let (src_w, src_h) = src.dimensions();
    let src_row = src_w as usize * 3;
    let out_row = w as usize * 3;
    let raw = src.as_raw();

    // `ImagingResampleInner`: a pass whose size is unchanged is the identity; skip it.
    let horizontal = (width != src_w).then(|| Coeffs::bilinear(src_w, width, x0, w));
    let vertical = (height != src_h).then(|| Coeffs::bilinear(src_h, height, y0, h));

    // Source rows that the vertical pass reads (all the region's rows when it is skipped).
    let (first_row, last_row) = match &vertical {
        Some(v) => v.span(),
        None => (y0 as usize, (y0 + h) as usize),
    };

    // Horizontal pass (or a plain copy of the region's columns) over those rows only.
    let mut tmp = vec![0u8; (last_row - first_row) * out_row];
    for (sy, trow) in (first_row..last_row).zip(tmp.chunks_exact_mut(out_row)) {
        let srow = &raw[sy * src_row..(sy + 1) * src_row];
        match &horizontal {
            Some(c) => horizontal_row(c, srow, trow),
            None => trow.copy_from_slice(&srow[x0 as usize * 3..x0 as usize * 3 + out_row]),
        }
    }

    let Some(vertical) = vertical else {
        return RgbImage::from_raw(w, h, tmp).unwrap_or_else(|| RgbImage::new(w, h));
    };

    // Vertical pass: one i32 accumulator per output sample of a row, added row by row so the
    // inner loop runs over contiguous memory (same sums, same order as Pillow).
    let mut out = vec![0u8; h as usize * out_row];
    let mut acc = vec![0i32; out_row];
    for (yy, orow) in out.chunks_exact_mut(out_row).enumerate() {
        acc.fill(HALF);
        let (start, weights) = vertical.taps(yy);
        for (j, &k) in weights.iter().enumerate() {
            let row = start - first_row + j;
            let trow = &tmp[row * out_row..(row + 1) * out_row];
            for (a, &p) in acc.iter_mut().zip(trow) {
                *a += i32::from(p) * k;
            }
        }
        for (o, &a) in orow.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    RgbImage::from_raw(w, h, out).unwrap_or_else(|| RgbImage::new(w, h))
}

/// One output row of the horizontal pass: `src` is a full source row, `out` the region's row.
#[inline]
fn horizontal_row(c: &Coeffs, src: &[u8], out: &mut [u8]) {
    for (xx, px) in out.chunks_exact_mut(3).enumerate() {
        let (start, weights) = c.taps(xx);
        let pixels = &src[start * 3..(start + weights.len()) * 3];
        let (mut s0, mut s1, mut s2) = (HALF, HALF, HALF);
        for (p, &k) in pixels.chunks_exact(3).zip(weights) {
            s0 += i32::from(p[0]) * k;
            s1 += i32::from(p[1]) * k;
            s2 += i32::from(p[2]) * k;
        }
        px[0] = clip8(s0);
        px[1] = clip8(s1);
        px[2] = clip8(s2);
    }
}

/// Pillow's `clip8`: drop the fraction bits and saturate to a byte.
#[inline]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Fixed-point filter taps for a run of consecutive output samples along one axis.
struct Coeffs {
    /// Slots per output sample (Pillow's `ksize`); `weights[i * ksize..][..len[i]]` are used.
    ksize: usize,
    /// First source sample of each output sample (Pillow's `xmin`).
    start: Vec<usize>,
    /// Number of source samples of each output sample (Pillow's `xmax` after `-= xmin`).
    len: Vec<usize>,
    weights: Vec<i32>,
}

impl Coeffs {
    /// Pillow's `precompute_coeffs` (box = whole image) followed by `normalize_coeffs_8bpc`,
    /// for output samples `first..first + count` of a resize from `in_size` to `out_size`.
    /// Same `f64` operations in the same order, so the weights are the same to the bit.
    fn bilinear(in_size: u32, out_size: u32, first: u32, count: u32) -> Coeffs {
        const SUPPORT: f64 = 1.0; // Pillow's BILINEAR filter: triangle of support 1.
                                  // Pillow passes the box edges as C floats: in1 - in0 is a float, then a double.
        let scale = f64::from(in_size as f32) / f64::from(out_size);
        let filterscale = scale.max(1.0);
        let support = SUPPORT * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let ss = 1.0 / filterscale;
        let in_size = i64::from(in_size);

        let n = count as usize;
        let mut c = Coeffs {
            ksize,
            start: Vec::with_capacity(n),
            len: Vec::with_capacity(n),
            weights: vec![0; n * ksize],
        };
        let mut w = vec![0f64; ksize];
        for (i, xx) in (first..first + count).enumerate() {
            let center = (f64::from(xx) + 0.5) * scale; // in0 = 0
                                                        // `(int)` in C truncates toward zero, as `as` does.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size);
            let len = ((xmax - xmin).max(0) as usize).min(ksize);
            let mut ww = 0.0;
            for (x, wx) in w[..len].iter_mut().enumerate() {
                *wx = triangle(((x as i64 + xmin) as f64 - center + 0.5) * ss);
                ww += *wx;
            }
            let row = &mut c.weights[i * ksize..i * ksize + len];
            for (k, &wx) in row.iter_mut().zip(&w[..len]) {
                let wx = if ww != 0.0 { wx / ww } else { wx };
                *k = to_fixed(wx);
            }
            c.start.push(xmin as usize);
            c.len.push(len);
        }
        c
    }

    /// First source sample and the weights of output sample `i` (relative to `first`).
    #[inline]
    fn taps(&self, i: usize) -> (usize, &[i32]) {
        (
            self.start[i],
            &self.weights[i * self.ksize..i * self.ksize + self.len[i]],
        )
    }

    /// Source samples read by any of these output samples, as `first..last` (the
    /// `ybox_first`/`ybox_last` of `ImagingResampleInner`).
    fn span(&self) -> (usize, usize) {
        let first = self.start.first().copied().unwrap_or(0);
        let last = self
            .start
            .iter()
            .zip(&self.len)
            .map(|(s, l)| s + l)
            .max()
            .unwrap_or(first);
        (first, last.max(first))
    }
}

/// Pillow's `bilinear_filter`.
#[inline]
fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// Pillow's `normalize_coeffs_8bpc`: scale by 2^22 and round half away from zero.
#[inline]
fn to_fixed(w: f64) -> i32 {
    let scaled = w * f64::from(1u32 << PRECISION_BITS);
    if w < 0.0 {
        (-0.5 + scaled) as i32
    } else {
        (0.5 + scaled) as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn testdata(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("src/preprocess/testdata")
            .join(name)
    }

    fn png(name: &str) -> RgbImage {
        match image::open(testdata(name)) {
            Ok(img) => img.to_rgb8(),
            Err(e) => panic!("{name}: {e}"),
        }
    }

    /// References made by `testdata/make_testdata.py` with Pillow's `Image.resize(.., BILINEAR)`.
    #[test]
    fn matches_pillow_bit_for_bit() {
        let src = png("src37x23.png");
        assert_eq!(src.dimensions(), (37, 23));
        // down x / up y, up both, strong downscale, vertical only, horizontal only
        for (w, h) in [(17, 29), (80, 50), (9, 5), (37, 11), (12, 23)] {
            let want = png(&format!("pil_{w}x{h}.png"));
            let got = resize_bilinear_pil(&src, w, h);
            assert_eq!(got.dimensions(), (w, h));
            let diffs = got
                .as_raw()
                .iter()
                .zip(want.as_raw())
                .filter(|(a, b)| a != b)
                .count();
            assert_eq!(diffs, 0, "{w}x{h}: {diffs} bytes differ from Pillow");
        }
    }

    #[test]
    fn region_is_the_same_pixels_as_the_full_resize() {
        let src = png("src37x23.png");
        for (w, h) in [(17, 29), (80, 50), (9, 5), (37, 11), (12, 23), (37, 23)] {
            let full = resize_bilinear_pil(&src, w, h);
            for (x, y, rw, rh) in [(0, 0, w, h), (1, 2, w / 2, h / 3), (w - 1, h - 1, 1, 1)] {
                let part = resize_region(
                    &src,
                    w,
                    h,
                    Region {
                        x,
                        y,
                        width: rw,
                        height: rh,
                    },
                );
                let want = image::imageops::crop_imm(&full, x, y, rw, rh).to_image();
                assert_eq!(part, want, "{w}x{h} region {x},{y} {rw}x{rh}");
            }
        }
    }

    #[test]
    fn same_size_is_a_copy_and_degenerate_sizes_do_not_panic() {
        let src = png("src37x23.png");
        assert_eq!(resize_bilinear_pil(&src, 37, 23), src);
        assert_eq!(resize_bilinear_pil(&src, 0, 5).dimensions(), (0, 5));
        assert_eq!(resize_bilinear_pil(&src, 1, 1).dimensions(), (1, 1));
        let empty = RgbImage::new(0, 0);
        assert_eq!(resize_bilinear_pil(&empty, 3, 2), RgbImage::new(3, 2));
    }

    #[test]
    fn constant_image_stays_constant() {
        let src = RgbImage::from_pixel(13, 7, image::Rgb([0, 128, 255]));
        for (w, h) in [(5, 3), (40, 21), (13, 1), (1, 7)] {
            let out = resize_bilinear_pil(&src, w, h);
            assert!(out.pixels().all(|p| p.0 == [0, 128, 255]), "{w}x{h}");
        }
    }
}
