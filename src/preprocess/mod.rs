//! Image file or RGB frame -> model input tensor.
//!
//! The default is torchvision's ImageNet evaluation recipe, which the fixtures and most
//! published ResNets were validated with:
//!
//! ```text
//! Resize(256)            shorter side -> 256 with PIL's antialiased bilinear (resize.rs)
//! CenterCrop(224)        zero-padded first if the image is smaller than the crop
//! ToTensor()             u8 -> [0, 1]
//! Normalize(mean, std)   ImageNet statistics, per channel
//! ```
//!
//! The `[preprocess]` table of a model manifest deserialises into [`Preprocess`]; every field
//! is optional and defaults to the values above.

pub mod resize;

use std::path::Path;

use image::{DynamicImage, ImageFormat, RgbImage};
use serde::{Deserialize, Serialize};
use tract_core::prelude::{tract_ndarray, Tensor};

use crate::error::{Error, Result};
pub use resize::resize_bilinear_pil;
use resize::{resize_region, Region};

/// Largest `resize` or `crop` accepted: far above any classifier's input, low enough that a
/// typo in a manifest cannot ask for gigabytes.
pub const MAX_SIDE: u32 = 8192;

/// How the image is brought to (about) the model's input size before the centre crop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizeMode {
    /// torchvision `Resize(resize)`: shorter side = `resize`, longer side
    /// `int(resize * long / short)` (truncated), aspect ratio kept.
    Shorter,
    /// torchvision `Resize((resize, resize))`: both sides = `resize`, aspect ratio ignored.
    Exact,
}

/// Channel order of the model's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    Rgb,
    /// Caffe-style models: channel 0 is blue.
    Bgr,
}

/// Memory layout of the model's input tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// `[batch, 3, crop, crop]`: PyTorch / ONNX exports.
    Nchw,
    /// `[batch, crop, crop, 3]`: TensorFlow exports.
    Nhwc,
}

/// The preprocessing recipe, as in a model manifest's `[preprocess]` table.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Preprocess {
    /// Target of the resize (see [`ResizeMode`]).
    pub resize: u32,
    pub resize_mode: ResizeMode,
    /// Side of the square centre crop: the model's input height and width.
    pub crop: u32,
    /// Each pixel (0..=255) is multiplied by `scale`, then `(x - mean[c]) / std[c]`.
    pub scale: f32,
    /// Per channel, in the model's channel order (reverse the RGB values for a BGR model).
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub channels: ChannelOrder,
    pub layout: Layout,
}

impl Default for Preprocess {
    /// torchvision's ImageNet evaluation transform: `Resize(256)`, `CenterCrop(224)`,
    /// `ToTensor()`, `Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])`, NCHW RGB.
    fn default() -> Self {
        Preprocess {
            resize: 256,
            resize_mode: ResizeMode::Shorter,
            crop: 224,
            scale: 1.0 / 255.0,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            channels: ChannelOrder::Rgb,
            layout: Layout::Nchw,
        }
    }
}

/// Decode a JPEG or PNG file into 8-bit RGB, converting other colour types as PIL's
/// `Image.open(path).convert("RGB")` does: grey is replicated, alpha is dropped (not
/// composited), palettes are expanded, 16-bit colour keeps its high byte. One deliberate
/// difference: 16-bit greyscale also keeps its high byte, where PIL clips it to 255.
/// EXIF orientation is ignored, as it is by PIL and torchvision.
pub fn load_image(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, e))?;
    if bytes.is_empty() {
        return Err(Error::file(path, "empty file, not an image"));
    }
    let format = match image::guess_format(&bytes) {
        Ok(f @ (ImageFormat::Jpeg | ImageFormat::Png)) => f,
        Ok(other) => {
            let name = other.extensions_str().first().copied().unwrap_or("unknown");
            return Err(Error::file(
                path,
                format!(
                    "{} image; only JPEG and PNG are supported",
                    name.to_uppercase()
                ),
            ));
        }
        Err(_) => return Err(Error::file(path, "not an image (neither JPEG nor PNG)")),
    };
    let kind = if format == ImageFormat::Jpeg {
        "JPEG"
    } else {
        "PNG"
    };
    if format == ImageFormat::Jpeg && !jpeg_has_end_marker(&bytes) {
        return Err(Error::file(path, "truncated JPEG (no end-of-image marker)"));
    }
    let decoded = image::load_from_memory_with_format(&bytes, format).map_err(|e| {
        Error::file(
            path,
            format!("cannot decode {kind} (truncated or corrupt?): {e}"),
        )
    })?;
    if decoded.width() == 0 || decoded.height() == 0 {
        return Err(Error::file(path, format!("{kind} image has no pixels")));
    }
    Ok(to_rgb8_like_pil(decoded))
}

/// Whether a JPEG stream reaches its End Of Image marker. The image crate's decoder
/// (zune-jpeg) quietly fills in the missing part of a truncated JPEG, where PIL raises "image
/// file is truncated"; a half-downloaded photo must not be classified as if it were whole.
/// Walks the marker segments (ITU T.81 B.1) and skips entropy-coded data, where `FF 00` is a
/// stuffed byte and `FF D0..D7` a restart marker, so an EOI inside an EXIF thumbnail does not
/// count.
fn jpeg_has_end_marker(b: &[u8]) -> bool {
    let mut i = 2; // past SOI
    loop {
        if b.get(i) != Some(&0xFF) {
            return false;
        }
        while b.get(i) == Some(&0xFF) {
            i += 1; // fill bytes
        }
        let Some(&marker) = b.get(i) else {
            return false;
        };
        i += 1;
        match marker {
            0xD9 => return true,
            0x01 | 0xD0..=0xD8 => continue, // markers without a length
            _ => {}
        }
        let Some(len) = b
            .get(i..i + 2)
            .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
        else {
            return false;
        };
        if len < 2 {
            return false;
        }
        i += len;
        if marker == 0xDA {
            // Start Of Scan: entropy-coded data runs up to the next real marker.
            loop {
                let Some(off) = b
                    .get(i..)
                    .and_then(|rest| rest.iter().position(|&x| x == 0xFF))
                else {
                    return false;
                };
                i += off;
                match b.get(i + 1) {
                    None => return false,
                    Some(0x00 | 0xD0..=0xD7) => i += 2,
                    Some(_) => break,
                }
            }
        }
    }
}

/// `convert("RGB")` as PIL does it; see [`load_image`].
fn to_rgb8_like_pil(img: DynamicImage) -> RgbImage {
    // PIL unpacks 16-bit PNG samples by keeping the most significant byte; the image crate
    // would round (v / 257), which is off by one for about half the values.
    fn high_byte<const N: usize>(
        w: u32,
        h: u32,
        data: &[u16],
        rgb: impl Fn(&[u16]) -> [u16; 3],
    ) -> RgbImage {
        let bytes: Vec<u8> = data
            .chunks_exact(N)
            .flat_map(|px| rgb(px).map(|v| (v >> 8) as u8))
            .collect();
        RgbImage::from_raw(w, h, bytes).unwrap_or_else(|| RgbImage::new(w, h))
    }
    let (w, h) = (img.width(), img.height());
    match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageLuma16(i) => high_byte::<1>(w, h, i.as_raw(), |p| [p[0]; 3]),
        DynamicImage::ImageLumaA16(i) => high_byte::<2>(w, h, i.as_raw(), |p| [p[0]; 3]),
        DynamicImage::ImageRgb16(i) => high_byte::<3>(w, h, i.as_raw(), |p| [p[0], p[1], p[2]]),
        DynamicImage::ImageRgba16(i) => high_byte::<4>(w, h, i.as_raw(), |p| [p[0], p[1], p[2]]),
        // 8-bit grey (replicated) and alpha (dropped) are what PIL does too.
        other => other.to_rgb8(),
    }
}

/// Where the crop window sits along one axis of the resized image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CropAxis {
    /// First resized pixel kept.
    src: u32,
    /// First output pixel written (zero padding before it).
    dst: u32,
    /// Number of pixels kept.
    len: u32,
}

impl CropAxis {
    /// torchvision `CenterCrop`: if the image is smaller, pad `(crop - size) // 2` zeros before
    /// (the rest after); otherwise start at `int(round((size - crop) / 2.0))`.
    fn new(size: u32, crop: u32) -> CropAxis {
        if crop > size {
            CropAxis {
                src: 0,
                dst: (crop - size) / 2,
                len: size,
            }
        } else {
            CropAxis {
                src: center_crop_offset(size, crop),
                dst: 0,
                len: crop,
            }
        }
    }
}

/// `int(round((size - crop) / 2.0))` with Python's `round`, which rounds halves to even:
/// an odd margin of 2k+1 starts the crop at k if k is even, at k+1 if k is odd.
fn center_crop_offset(size: u32, crop: u32) -> u32 {
    let margin = size.saturating_sub(crop);
    let half = margin / 2;
    if margin % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

impl Preprocess {
    /// Reject settings that cannot work, naming the manifest key.
    pub fn validate(&self) -> Result<()> {
        if self.crop == 0 || self.crop > MAX_SIDE {
            return Err(Error::usage(format!(
                "preprocess.crop = {} must be between 1 and {MAX_SIDE}",
                self.crop
            )));
        }
        // torchvision allows resize < crop (the crop is then zero-padded), so do we.
        if self.resize == 0 || self.resize > MAX_SIDE {
            return Err(Error::usage(format!(
                "preprocess.resize = {} must be between 1 and {MAX_SIDE}",
                self.resize
            )));
        }
        if !self.scale.is_finite() || self.scale == 0.0 {
            return Err(Error::usage(format!(
                "preprocess.scale = {} must be finite and non-zero",
                self.scale
            )));
        }
        if let Some(m) = self.mean.iter().find(|m| !m.is_finite()) {
            return Err(Error::usage(format!(
                "preprocess.mean contains {m}, must be finite"
            )));
        }
        if let Some(s) = self.std.iter().find(|s| !s.is_finite() || **s == 0.0) {
            return Err(Error::usage(format!(
                "preprocess.std contains {s}, must be finite and non-zero"
            )));
        }
        Ok(())
    }

    /// Shape of a batch of `batch` preprocessed images in the configured layout.
    pub fn input_shape(&self, batch: usize) -> [usize; 4] {
        let c = self.crop as usize;
        match self.layout {
            Layout::Nchw => [batch, 3, c, c],
            Layout::Nhwc => [batch, c, c, 3],
        }
    }

    /// Size (width, height) of a `width` x `height` image after the resize step, as torchvision
    /// computes it (`_compute_resized_output_size`).
    pub fn resized_size(&self, width: u32, height: u32) -> Result<(u32, u32)> {
        if width == 0 || height == 0 {
            return Err(Error::usage(format!(
                "cannot resize an empty {width}x{height} image"
            )));
        }
        if self.resize_mode == ResizeMode::Exact {
            return Ok((self.resize, self.resize));
        }
        let (short, long) = if width <= height {
            (width, height)
        } else {
            (height, width)
        };
        // Python: int(size * long / short), an exact product then a correctly rounded
        // division, as in f64 here (both operands are far below 2^53).
        let new_long = (f64::from(self.resize) * f64::from(long) / f64::from(short)) as u64;
        let new_long = u32::try_from(new_long).map_err(|_| {
            Error::usage(format!(
                "a {width}x{height} image resized to {} on its shorter side is too long",
                self.resize
            ))
        })?;
        Ok(if width <= height {
            (self.resize, new_long)
        } else {
            (new_long, self.resize)
        })
    }

    /// Preprocess one image into `out` (length `3 * crop * crop`) in the configured layout and
    /// channel order. Only the pixels the crop keeps are resampled.
    pub fn apply_into(&self, img: &RgbImage, out: &mut [f32]) -> Result<()> {
        self.validate()?;
        let crop = self.crop as usize;
        let plane = crop * crop;
        if out.len() != 3 * plane {
            return Err(Error::usage(format!(
                "output buffer holds {} values, a {crop}x{crop} RGB image needs {}",
                out.len(),
                3 * plane
            )));
        }
        let (rw, rh) = self.resized_size(img.width(), img.height())?;
        let cx = CropAxis::new(rw, self.crop);
        let cy = CropAxis::new(rh, self.crop);
        let region = Region {
            x: cx.src,
            y: cy.src,
            width: cx.len,
            height: cy.len,
        };
        let pixels = resize_region(img, rw, rh, region);

        let lut = self.lut();
        // Source channel feeding each output channel.
        let from = match self.channels {
            ChannelOrder::Rgb => [0, 1, 2],
            ChannelOrder::Bgr => [2, 1, 0],
        };
        if cx.len < self.crop || cy.len < self.crop {
            // torchvision pads the PIL image with black before normalising.
            match self.layout {
                Layout::Nchw => {
                    for (c, chan) in out.chunks_exact_mut(plane).enumerate() {
                        chan.fill(lut[c][0]);
                    }
                }
                Layout::Nhwc => {
                    for px in out.chunks_exact_mut(3) {
                        px.copy_from_slice(&[lut[0][0], lut[1][0], lut[2][0]]);
                    }
                }
            }
        }
        let (dx, dy, w) = (cx.dst as usize, cy.dst as usize, cx.len as usize);
        for (y, row) in pixels.as_raw().chunks_exact(w * 3).enumerate() {
            let base = (dy + y) * crop + dx;
            match self.layout {
                Layout::Nchw => {
                    for c in 0..3 {
                        let dst = &mut out[c * plane + base..c * plane + base + w];
                        for (o, px) in dst.iter_mut().zip(row.chunks_exact(3)) {
                            *o = lut[c][usize::from(px[from[c]])];
                        }
                    }
                }
                Layout::Nhwc => {
                    let dst = &mut out[base * 3..(base + w) * 3];
                    for (o, px) in dst.chunks_exact_mut(3).zip(row.chunks_exact(3)) {
                        for c in 0..3 {
                            o[c] = lut[c][usize::from(px[from[c]])];
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// One image -> tensor of shape `input_shape(1)`.
    pub fn apply(&self, img: &RgbImage) -> Result<Tensor> {
        self.batch(std::slice::from_ref(img))
    }

    /// Several images stacked into one tensor of shape `input_shape(imgs.len())`.
    pub fn batch(&self, imgs: &[RgbImage]) -> Result<Tensor> {
        self.validate()?;
        if imgs.is_empty() {
            return Err(Error::usage("cannot make a batch of zero images"));
        }
        let shape = self.input_shape(imgs.len());
        let per_image = 3 * self.crop as usize * self.crop as usize;
        let mut data = vec![0f32; per_image * imgs.len()];
        for (img, out) in imgs.iter().zip(data.chunks_exact_mut(per_image)) {
            self.apply_into(img, out)?;
        }
        let array = tract_ndarray::Array4::from_shape_vec(shape, data)
            .map_err(|e| Error::usage(format!("batch tensor of shape {shape:?}: {e}")))?;
        Ok(Tensor::from(array))
    }

    /// Value of every byte in each output channel: `(v * scale - mean[c]) / std[c]`, in f32 and
    /// in that order, as torchvision's `ToTensor` + `Normalize` compute it.
    fn lut(&self) -> [[f32; 256]; 3] {
        let mut lut = [[0f32; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, x) in table.iter_mut().enumerate() {
                *x = (v as f32 * self.scale - self.mean[c]) / self.std[c];
            }
        }
        lut
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

    fn read(name: &str) -> Vec<u8> {
        std::fs::read(testdata(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn load(name: &str) -> RgbImage {
        load_image(&testdata(name)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn f32s(name: &str) -> Vec<f32> {
        read(name)
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    #[test]
    fn crop_offset_rounds_halves_to_even_like_python() {
        // (size, crop, torchvision's int(round((size - crop) / 2.0)))
        for (size, crop, want) in [
            (256, 224, 16),
            (257, 224, 16), // 16.5 -> 16
            (259, 224, 18), // 17.5 -> 18
            (21, 16, 2),    // 2.5 -> 2
            (23, 16, 4),    // 3.5 -> 4
            (37, 16, 10),   // 10.5 -> 10
            (224, 224, 0),
            (225, 224, 0), // 0.5 -> 0
            (227, 224, 2), // 1.5 -> 2
        ] {
            assert_eq!(center_crop_offset(size, crop), want, "{size} -> {crop}");
            assert_eq!(
                CropAxis::new(size, crop),
                CropAxis {
                    src: want,
                    dst: 0,
                    len: crop
                }
            );
        }
        // Smaller than the crop: (crop - size) // 2 zeros before, the rest after.
        assert_eq!(
            CropAxis::new(13, 16),
            CropAxis {
                src: 0,
                dst: 1,
                len: 13
            }
        );
        assert_eq!(
            CropAxis::new(12, 16),
            CropAxis {
                src: 0,
                dst: 2,
                len: 12
            }
        );
    }

    #[test]
    fn resized_size_truncates_the_long_side_like_torchvision() {
        let p = Preprocess::default();
        assert_eq!(p.resized_size(640, 480).unwrap(), (341, 256)); // 341.33
        assert_eq!(p.resized_size(480, 640).unwrap(), (256, 341));
        assert_eq!(p.resized_size(500, 375).unwrap(), (341, 256));
        assert_eq!(p.resized_size(300, 300).unwrap(), (256, 256));
        assert_eq!(p.resized_size(1, 3).unwrap(), (256, 768));
        let p21 = Preprocess {
            resize: 21,
            ..Preprocess::default()
        };
        assert_eq!(p21.resized_size(37, 23).unwrap(), (33, 21)); // 33.78
        let exact = Preprocess {
            resize_mode: ResizeMode::Exact,
            ..Preprocess::default()
        };
        assert_eq!(exact.resized_size(640, 480).unwrap(), (256, 256));
        assert!(p.resized_size(0, 10).is_err());
    }

    /// Whole pipeline against torchvision (`make_testdata.py`), including a zero-padded crop,
    /// the exact resize mode, BGR and NHWC.
    #[test]
    fn matches_torchvision_transforms() {
        let src = load("src37x23.png");
        let imagenet = Preprocess {
            crop: 16,
            ..Preprocess::default()
        };
        let cases = [
            (
                "tv_r21_c16_rgb_nchw.f32",
                Preprocess {
                    resize: 21,
                    ..imagenet.clone()
                },
            ),
            (
                "tv_r23_c16_rgb_nchw.f32",
                Preprocess {
                    resize: 23,
                    ..imagenet.clone()
                },
            ),
            (
                "tv_r13_c16_rgb_nchw.f32",
                Preprocess {
                    resize: 13,
                    ..imagenet.clone()
                },
            ),
            (
                "tv_e20_c16_bgr_nhwc.f32",
                Preprocess {
                    resize: 20,
                    resize_mode: ResizeMode::Exact,
                    mean: [0.406, 0.456, 0.485],
                    std: [0.225, 0.224, 0.229],
                    channels: ChannelOrder::Bgr,
                    layout: Layout::Nhwc,
                    ..imagenet.clone()
                },
            ),
        ];
        for (name, p) in cases {
            let want = f32s(name);
            let got = p.apply(&src).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(got.shape(), p.input_shape(1), "{name}");
            let got = got
                .try_as_plain_ram()
                .and_then(|v| v.as_slice::<f32>().map(<[f32]>::to_vec));
            let got = got.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(got.len(), want.len(), "{name}");
            // x * (1/255) here, x / 255 in torchvision: a few ulps at most.
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-5, "{name}: max abs diff {worst}");
        }
    }

    #[test]
    fn channel_order_and_layout() {
        // 2x2 image, no resampling (already 2x2), identity normalisation: output = raw bytes.
        let px = [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]];
        let img = RgbImage::from_fn(2, 2, |x, y| image::Rgb(px[(y * 2 + x) as usize]));
        let base = Preprocess {
            resize: 2,
            crop: 2,
            scale: 1.0,
            mean: [0.0; 3],
            std: [1.0; 3],
            ..Preprocess::default()
        };
        let run = |channels, layout| {
            let p = Preprocess {
                channels,
                layout,
                ..base.clone()
            };
            let mut out = vec![0f32; 12];
            p.apply_into(&img, &mut out).unwrap();
            out.iter().map(|v| *v as u8).collect::<Vec<_>>()
        };
        use ChannelOrder::*;
        use Layout::*;
        assert_eq!(run(Rgb, Nchw), [1, 4, 7, 10, 2, 5, 8, 11, 3, 6, 9, 12]);
        assert_eq!(run(Bgr, Nchw), [3, 6, 9, 12, 2, 5, 8, 11, 1, 4, 7, 10]);
        assert_eq!(run(Rgb, Nhwc), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        assert_eq!(run(Bgr, Nhwc), [3, 2, 1, 6, 5, 4, 9, 8, 7, 12, 11, 10]);

        // mean/std are indexed by output channel: channel 0 of a BGR model is blue.
        let p = Preprocess {
            channels: Bgr,
            mean: [3.0, 0.0, 0.0],
            std: [0.5, 1.0, 1.0],
            ..base.clone()
        };
        let mut out = vec![0f32; 12];
        p.apply_into(&img, &mut out).unwrap();
        assert_eq!(&out[..4], &[0.0, 6.0, 12.0, 18.0]); // (b - 3) / 0.5
    }

    #[test]
    fn shapes_and_batches() {
        let p = Preprocess::default();
        assert_eq!(p.input_shape(2), [2, 3, 224, 224]);
        let nhwc = Preprocess {
            layout: Layout::Nhwc,
            ..Preprocess::default()
        };
        assert_eq!(nhwc.input_shape(1), [1, 224, 224, 3]);

        let a = load("src37x23.png");
        let b = load("photo24x16.jpg");
        let batch = p.batch(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(batch.shape(), &[2, 3, 224, 224]);
        let view = batch.try_as_plain_ram().unwrap();
        let all = view.as_slice::<f32>().unwrap();
        let one = p.apply(&b).unwrap();
        let one_view = one.try_as_plain_ram().unwrap();
        assert_eq!(&all[3 * 224 * 224..], one_view.as_slice::<f32>().unwrap());

        assert!(p.batch(&[]).is_err());
        let mut short = vec![0f32; 10];
        assert!(p.apply_into(&a, &mut short).is_err());
        assert!(p.apply(&RgbImage::new(0, 0)).is_err());
        // Extreme aspect ratios only resample the crop, so they stay cheap.
        let strip = RgbImage::from_pixel(1, 5000, image::Rgb([9, 9, 9]));
        assert_eq!(p.apply(&strip).unwrap().shape(), &[1, 3, 224, 224]);
    }

    #[test]
    fn validation() {
        assert!(Preprocess::default().validate().is_ok());
        // Smaller resize than crop is allowed: torchvision pads.
        assert!(Preprocess {
            resize: 100,
            ..Preprocess::default()
        }
        .validate()
        .is_ok());
        let bad = [
            Preprocess {
                crop: 0,
                ..Preprocess::default()
            },
            Preprocess {
                resize: 0,
                ..Preprocess::default()
            },
            Preprocess {
                crop: MAX_SIDE + 1,
                ..Preprocess::default()
            },
            Preprocess {
                std: [0.229, 0.0, 0.225],
                ..Preprocess::default()
            },
            Preprocess {
                mean: [f32::NAN, 0.0, 0.0],
                ..Preprocess::default()
            },
            Preprocess {
                scale: 0.0,
                ..Preprocess::default()
            },
            Preprocess {
                scale: f32::INFINITY,
                ..Preprocess::default()
            },
        ];
        for p in bad {
            let err = p.validate().expect_err("should be rejected");
            assert!(matches!(err, Error::Usage(_)), "{err}");
            assert!(err.to_string().contains("preprocess."), "{err}");
            let mut out = vec![0f32; 3 * p.crop as usize * p.crop as usize];
            assert!(p.apply_into(&RgbImage::new(4, 4), &mut out).is_err());
        }
    }

    #[test]
    fn manifest_table() {
        let p: Preprocess = toml::from_str(
            "resize = 232\nresize_mode = \"exact\"\nchannels = \"bgr\"\nlayout = \"nhwc\"\n\
             mean = [103.53, 116.28, 123.675]\nstd = [1.0, 1.0, 1.0]\nscale = 1.0\n",
        )
        .unwrap();
        assert_eq!(p.resize, 232);
        assert_eq!(p.crop, 224); // default
        assert_eq!(p.resize_mode, ResizeMode::Exact);
        assert_eq!(p.channels, ChannelOrder::Bgr);
        assert_eq!(p.layout, Layout::Nhwc);
        assert_eq!(p.mean, [103.53, 116.28, 123.675]);
        let empty: Preprocess = toml::from_str("").unwrap();
        assert_eq!(empty, Preprocess::default());
        assert!(toml::from_str::<Preprocess>("rezise = 256").is_err());
        assert!(toml::from_str::<Preprocess>("layout = \"NCHW\"").is_err());
        let back: Preprocess = toml::from_str(&toml::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }

    /// PIL's `convert("RGB")` of other PNG colour types (`conv_*.rgb`, from `make_testdata.py`).
    #[test]
    fn png_colour_types_convert_like_pil() {
        for kind in ["l", "la", "rgba", "p", "rgb16"] {
            let got = load(&format!("conv_{kind}.png"));
            assert_eq!(got.dimensions(), (7, 5), "{kind}");
            assert_eq!(got.as_raw(), &read(&format!("conv_{kind}.rgb")), "{kind}");
        }
        // 16-bit grey: high byte (PIL would clip to 255 instead).
        let grey16 = image::ImageBuffer::from_raw(3, 1, vec![0u16, 0x7fff, 0xff80]).unwrap();
        let rgb = to_rgb8_like_pil(DynamicImage::ImageLuma16(grey16));
        assert_eq!(rgb.as_raw(), &[0, 0, 0, 0x7f, 0x7f, 0x7f, 0xff, 0xff, 0xff]);
    }

    /// JPEG decoders differ in IDCT and chroma upsampling details (libjpeg-turbo in PIL,
    /// zune-jpeg here), so a decode is close to PIL's but not identical.
    #[test]
    fn jpeg_decodes_close_to_pil() {
        let got = load("photo24x16.jpg");
        let want = read("photo24x16.rgb");
        assert_eq!(got.dimensions(), (24, 16));
        let diffs: Vec<i32> = got
            .as_raw()
            .iter()
            .zip(&want)
            .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
            .collect();
        let mean = diffs.iter().sum::<i32>() as f64 / diffs.len() as f64;
        let worst = diffs.iter().copied().max().unwrap_or(0);
        assert!(mean < 1.0 && worst <= 8, "mean {mean}, worst {worst}");
    }

    #[test]
    fn jpeg_end_marker_walk() {
        let jpg = read("photo24x16.jpg");
        assert!(jpeg_has_end_marker(&jpg));
        // Bytes after EOI (some cameras append data) are fine.
        let mut trailing = jpg.clone();
        trailing.extend_from_slice(b"\0\0trailer");
        assert!(jpeg_has_end_marker(&trailing));
        for cut in [1, 2, 3, 20, jpg.len() / 2, jpg.len() - 4] {
            assert!(!jpeg_has_end_marker(&jpg[..jpg.len() - cut]), "cut {cut}");
        }
        // An EOI inside a segment (e.g. an EXIF thumbnail) does not end the image.
        let mut app = vec![0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x04, 0xFF, 0xD9, 0xFF, 0xD9];
        assert!(jpeg_has_end_marker(&app));
        app.truncate(8); // the segment's FF D9 only
        assert!(!jpeg_has_end_marker(&app));
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        };
        let png = read("src37x23.png");
        let jpg = read("photo24x16.jpg");
        let cases = [
            (dir.path().join("missing.jpg"), ""),
            (write("empty.jpg", b""), "empty file"),
            (
                write("notes.jpg", b"just some text, not pixels"),
                "not an image",
            ),
            (
                write("anim.png", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"),
                "GIF",
            ),
            (write("cut.png", &png[..png.len() / 2]), "PNG"),
            (write("cut.jpg", &jpg[..jpg.len() / 3]), "JPEG"),
            (write("no_eoi.jpg", &jpg[..jpg.len() - 2]), "truncated JPEG"),
            (
                write("cut_scan.jpg", &jpg[..jpg.len() - 40]),
                "truncated JPEG",
            ),
        ];
        for (path, words) in cases {
            let err = load_image(&path).expect_err(&path.display().to_string());
            let msg = err.to_string();
            assert!(msg.starts_with(&path.display().to_string()), "{msg}");
            assert!(msg.contains(words), "{msg}");
        }
    }
}
