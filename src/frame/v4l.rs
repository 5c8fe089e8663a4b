//! `v4l:/dev/videoN`: a V4L2 camera (any USB webcam, the Pi's camera through its V4L2 driver).
//!
//! Split in two so the part that matters for robustness runs in CI without a camera: a
//! [`Device`] delivers raw buffers (the real one, [`v4l2`](super::v4l2), is MMAP streaming
//! over raw ioctls: pure Rust, no libv4l, no bindgen, so it cross-builds for a Pi as is), and
//! [`V4lSource`] decodes them (MJPEG with zune-jpeg, YUYV converted in place) and turns a
//! vanishing device into [`Capture::Lost`] and reopen attempts. Tests hand it a fake device.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use image::RgbImage;

use super::mjpeg::decode_whole_jpeg;
use super::{Capture, Frame, FrameSource, SourceOptions};
use crate::{Error, Result};

/// How a device lays out its buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fourcc {
    /// Packed 4:2:2, `Y0 U Y1 V` per two pixels.
    Yuyv,
    /// One JPEG per buffer, possibly without Huffman tables.
    Mjpeg,
}

/// The format a device agreed to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeviceFormat {
    pub fourcc: Fourcc,
    pub width: u32,
    pub height: u32,
    /// Bytes per row (YUYV), at least `2 * width`.
    pub stride: u32,
    /// Frame rate the driver reports, if it says.
    pub fps: Option<f64>,
}

/// A streaming capture device.
pub trait Device: Send {
    fn format(&self) -> DeviceFormat;
    /// Wait up to `timeout` for the next filled buffer and pass its bytes to `f` (an empty
    /// slice when the driver flagged the buffer as bad); `Ok(false)` on timeout.
    fn capture(&mut self, timeout: Duration, f: &mut dyn FnMut(&[u8])) -> io::Result<bool>;
}

/// Opens (and reopens) a device.
pub type Opener = Box<dyn FnMut() -> io::Result<Box<dyn Device>> + Send>;

/// How long one `next` waits for a frame before returning [`Capture::Idle`].
const POLL: Duration = Duration::from_millis(500);

pub struct V4lSource {
    name: String,
    opener: Opener,
    device: Option<Box<dyn Device>>,
    count: u64,
}

impl V4lSource {
    /// Open a V4L2 device node, negotiating YUYV or MJPEG at the requested size and rate.
    pub fn open(path: &Path, options: &SourceOptions) -> Result<V4lSource> {
        #[cfg(target_os = "linux")]
        {
            let request = super::v4l2::Request {
                size: options.size,
                fps: options.fps.filter(|f| *f > 0.0),
                pixel_format: options.pixel_format,
            };
            let node = path.to_path_buf();
            let opener: Opener = Box::new(move || {
                super::v4l2::V4l2Device::open(&node, &request)
                    .map(|d| Box::new(d) as Box<dyn Device>)
            });
            V4lSource::with_opener(&format!("v4l:{}", path.display()), opener)
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = options;
            Err(Error::file(
                path,
                "V4L2 cameras are only supported on Linux",
            ))
        }
    }

    /// A source over any [`Device`]; `opener` is called now (its failure is the caller's
    /// error: a camera that is absent at start is a mistake, not a disconnect) and again
    /// after each loss.
    pub fn with_opener(name: &str, mut opener: Opener) -> Result<V4lSource> {
        let device = opener().map_err(|e| Error::file(name.trim_start_matches("v4l:"), e))?;
        Ok(V4lSource {
            name: name.to_string(),
            opener,
            device: Some(device),
            count: 0,
        })
    }

    /// The negotiated format, while connected.
    pub fn format(&self) -> Option<DeviceFormat> {
        self.device.as_ref().map(|d| d.format())
    }
}

impl FrameSource for V4lSource {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn live(&self) -> bool {
        true
    }

    fn next(&mut self) -> Result<Capture> {
        let Some(device) = self.device.as_mut() else {
            return Ok(Capture::Lost("not connected".into()));
        };
        let format = device.format();
        let mut decoded = None;
        let mut work = Duration::ZERO;
        let mut on_buffer = |bytes: &[u8]| {
            let t = Instant::now();
            decoded = Some(decode(bytes, &format));
            work = t.elapsed();
        };
        match device.capture(POLL, &mut on_buffer) {
            Ok(false) => Ok(Capture::Idle),
            Ok(true) => {
                let n = self.count;
                self.count += 1;
                Ok(match decoded {
                    Some(Ok(image)) => Capture::Frame(Frame {
                        image,
                        name: Some(format!("#{n}")),
                        work,
                    }),
                    Some(Err(reason)) => {
                        Capture::Corrupt(format!("{}: frame {n}: {reason}", self.name))
                    }
                    None => Capture::Corrupt(format!("{}: frame {n}: no data", self.name)),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Capture::Idle),
            // Whatever a streaming device fails with mid-stream, it is unusable until reopened;
            // `reconnect` tells a device that is gone for good from one coming back.
            Err(e) => {
                self.device = None;
                Ok(Capture::Lost(format!("{}: {e}", self.name)))
            }
        }
    }

    fn negotiated(&self) -> Option<String> {
        self.format().map(|f| {
            let fps = f.fps.map(|r| format!(" at {r:.1} fps")).unwrap_or_default();
            let fourcc = format!("{:?}", f.fourcc).to_uppercase();
            format!("{fourcc} {}x{}{fps}", f.width, f.height)
        })
    }

    fn reconnect(&mut self) -> Result<bool> {
        self.device = None;
        match (self.opener)() {
            Ok(device) => {
                self.device = Some(device);
                Ok(true)
            }
            Err(e) if is_transient(&e) => Ok(false),
            Err(e) => Err(Error::file(
                self.name.trim_start_matches("v4l:"),
                format!("reopening: {e}"),
            )),
        }
    }
}

/// Errors a camera shows while unplugged or re-enumerating (the node missing, the device
/// gone, udev not done with permissions yet), after which it may come back.
pub fn is_transient(e: &io::Error) -> bool {
    if e.kind() == io::ErrorKind::NotFound {
        return true;
    }
    matches!(
        e.raw_os_error(),
        Some(
            libc::ENODEV
                | libc::ENXIO
                | libc::EIO
                | libc::EBUSY
                | libc::EACCES
                | libc::EPERM
                | libc::EAGAIN
                | libc::ESHUTDOWN
                | libc::EPIPE
                | libc::ENOENT
        )
    )
}

fn decode(bytes: &[u8], format: &DeviceFormat) -> std::result::Result<RgbImage, String> {
    if bytes.is_empty() {
        return Err("the driver flagged the buffer as bad".into());
    }
    match format.fourcc {
        Fourcc::Mjpeg => decode_whole_jpeg(bytes),
        Fourcc::Yuyv => yuyv_to_rgb(bytes, format.width, format.height, format.stride),
    }
}

/// YUYV 4:2:2 (BT.601, studio range: what UVC webcams send) to RGB, straight into the image's
/// buffer, two pixels per step. Integer arithmetic as in the ITU-R BT.601 8-bit formulas:
/// `R = 1.164 (Y-16) + 1.596 (V-128)`, `G = 1.164 (Y-16) - 0.392 (U-128) - 0.813 (V-128)`,
/// `B = 1.164 (Y-16) + 2.017 (U-128)`, scaled by 256.
pub fn yuyv_to_rgb(
    data: &[u8],
    width: u32,
    height: u32,
    stride: u32,
) -> std::result::Result<RgbImage, String> {
    let (w, h, stride) = (width as usize, height as usize, stride as usize);
    if w == 0 || h == 0 || w % 2 != 0 || stride < 2 * w {
        return Err(format!(
            "unsupported YUYV layout {width}x{height}, stride {stride}"
        ));
    }
    let needed = stride * (h - 1) + 2 * w;
    if data.len() < needed {
        return Err(format!(
            "short YUYV buffer: {} bytes, a {width}x{height} frame needs {needed}",
            data.len()
        ));
    }
    let mut rgb = vec![0u8; w * h * 3];
    for (src, dst) in data.chunks(stride).zip(rgb.chunks_exact_mut(w * 3)) {
        for (yuyv, px) in src[..2 * w].chunks_exact(4).zip(dst.chunks_exact_mut(6)) {
            let (u, v) = (i32::from(yuyv[1]) - 128, i32::from(yuyv[3]) - 128);
            let (ruv, guv, buv) = (409 * v + 128, -100 * u - 208 * v + 128, 516 * u + 128);
            for (y, out) in [yuyv[0], yuyv[2]].into_iter().zip(px.chunks_exact_mut(3)) {
                let c = 298 * (i32::from(y) - 16);
                out[0] = ((c + ruv) >> 8).clamp(0, 255) as u8;
                out[1] = ((c + guv) >> 8).clamp(0, 255) as u8;
                out[2] = ((c + buv) >> 8).clamp(0, 255) as u8;
            }
        }
    }
    RgbImage::from_raw(width, height, rgb).ok_or_else(|| "YUYV buffer size mismatch".into())
}

/// RGB to YUYV with the inverse BT.601 studio-range formulas: what a webcam would send for
/// `img`. For fakes and tests; the width must be even.
pub fn rgb_to_yuyv(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::with_capacity(img.as_raw().len() / 3 * 2);
    for row in img.as_raw().chunks_exact(img.width() as usize * 3) {
        for pair in row.chunks_exact(6) {
            let yuv = |p: &[u8]| {
                let (r, g, b) = (f32::from(p[0]), f32::from(p[1]), f32::from(p[2]));
                let y = 16.0 + 0.257 * r + 0.504 * g + 0.098 * b;
                let u = 128.0 - 0.148 * r - 0.291 * g + 0.439 * b;
                let v = 128.0 + 0.439 * r - 0.368 * g - 0.071 * b;
                (y, u, v)
            };
            let ((y0, u0, v0), (y1, u1, v1)) = (yuv(&pair[..3]), yuv(&pair[3..]));
            let q = |x: f32| x.round().clamp(0.0, 255.0) as u8;
            out.extend_from_slice(&[q(y0), q((u0 + u1) / 2.0), q(y1), q((v0 + v1) / 2.0)]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuyv_reference_colours() {
        // Studio-range black and white, then BT.601's 100% and 75% red colour bars
        // (Y Cb Cr = 81 90 240 and 65 100 212) -> (255, 0, 0) and (191, 0, 0).
        let data = [16, 128, 235, 128, 81, 90, 81, 240, 65, 100, 65, 212];
        let img = yuyv_to_rgb(&data, 6, 1, 12).unwrap();
        assert_eq!(img.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(img.get_pixel(1, 0).0, [255, 255, 255]);
        assert_eq!(img.get_pixel(2, 0).0, [255, 0, 0]);
        let red = img.get_pixel(4, 0).0;
        assert!(
            (i32::from(red[0]) - 191).abs() <= 1 && red[1] <= 1 && red[2] <= 1,
            "{red:?}"
        );
    }

    #[test]
    fn yuyv_stride_and_short_buffers() {
        // Two rows, stride 6 (2 bytes padding after 4 bytes of pixels).
        let data = [235, 128, 235, 128, 9, 9, 16, 128, 16, 128];
        let img = yuyv_to_rgb(&data, 2, 2, 6).unwrap();
        assert_eq!(img.get_pixel(1, 0).0, [255, 255, 255]);
        assert_eq!(img.get_pixel(0, 1).0, [0, 0, 0]);
        assert!(yuyv_to_rgb(&data[..8], 2, 2, 6).is_err());
        assert!(yuyv_to_rgb(&data, 3, 1, 6).is_err());
    }

    #[test]
    fn yuyv_round_trip() {
        // Each horizontal pair one colour, so 4:2:2 chroma sharing loses nothing and only
        // rounding remains.
        let img = RgbImage::from_fn(8, 2, |x, y| {
            let p = (x / 2) as u8;
            image::Rgb([20 + p * 60, 100 + y as u8 * 50, 220 - p * 50])
        });
        let back = yuyv_to_rgb(&rgb_to_yuyv(&img), 8, 2, 16).unwrap();
        for (a, b) in img.as_raw().iter().zip(back.as_raw()) {
            assert!((i32::from(*a) - i32::from(*b)).abs() <= 2, "{a} vs {b}");
        }
    }

    #[test]
    fn transient_errors() {
        assert!(is_transient(&io::Error::from_raw_os_error(libc::ENODEV)));
        assert!(is_transient(&io::Error::from_raw_os_error(libc::ENOENT)));
        assert!(!is_transient(&io::Error::from_raw_os_error(libc::EINVAL)));
    }
}
