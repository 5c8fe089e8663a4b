//! `fb:/dev/fbN`: the Linux framebuffer, for a Pi or Jetson with a screen and no desktop.
//!
//! The layout comes from the driver (FBIOGET_VSCREENINFO / FBIOGET_FSCREENINFO): resolution,
//! bytes per row (which may exceed width x bytes per pixel), bits per pixel and where each
//! colour channel sits, so RGB565 panels, BGR and XRGB8888 all come out right. Frames are
//! scaled to fit (nearest neighbour, aspect kept, centred, black bars) and written with one
//! positioned write per frame: no mmap, so the same code drives a plain file in tests.

use std::fs::File;
use std::path::{Path, PathBuf};

use image::RgbImage;

use super::Sink;
use crate::{Error, Result};

/// Where one colour channel sits in a pixel: `length` bits from bit `offset`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Channel {
    pub offset: u32,
    pub length: u32,
}

/// A framebuffer's pixel layout and visible area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FbLayout {
    pub width: u32,
    pub height: u32,
    /// Bytes from one row to the next.
    pub stride: u32,
    pub bits_per_pixel: u32,
    pub red: Channel,
    pub green: Channel,
    pub blue: Channel,
    /// Alpha, if the format has one (set opaque).
    pub transp: Channel,
    /// Visible area's offset in the virtual screen (panning / double buffering).
    pub xoffset: u32,
    pub yoffset: u32,
    /// A greyscale panel: every channel gets the luma.
    pub grayscale: bool,
}

impl FbLayout {
    /// 16-bit RGB565, the usual small SPI/DPI panel format.
    pub fn rgb565(width: u32, height: u32) -> FbLayout {
        FbLayout {
            width,
            height,
            stride: width * 2,
            bits_per_pixel: 16,
            red: Channel {
                offset: 11,
                length: 5,
            },
            green: Channel {
                offset: 5,
                length: 6,
            },
            blue: Channel {
                offset: 0,
                length: 5,
            },
            transp: Channel::default(),
            xoffset: 0,
            yoffset: 0,
            grayscale: false,
        }
    }

    pub fn bytes_per_pixel(&self) -> usize {
        self.bits_per_pixel as usize / 8
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if !matches!(self.bits_per_pixel, 8 | 16 | 24 | 32) {
            return Err(format!(
                "{} bits per pixel is not supported (8, 16, 24 or 32)",
                self.bits_per_pixel
            ));
        }
        if self.width == 0 || self.height == 0 {
            return Err("the framebuffer reports no visible area".into());
        }
        if (self.stride as usize) < (self.xoffset + self.width) as usize * self.bytes_per_pixel() {
            return Err(format!("row stride {} is shorter than a row", self.stride));
        }
        for c in [self.red, self.green, self.blue, self.transp] {
            if c.length > 16 || c.offset + c.length > self.bits_per_pixel {
                return Err(format!(
                    "colour channel {c:?} does not fit in {} bits",
                    self.bits_per_pixel
                ));
            }
        }
        Ok(())
    }

    /// One pixel in the framebuffer's format.
    pub fn pack(&self, rgb: [u8; 3]) -> u32 {
        let rgb = if self.grayscale {
            let y = ((77 * u32::from(rgb[0]) + 150 * u32::from(rgb[1]) + 29 * u32::from(rgb[2]))
                >> 8) as u8;
            [y; 3]
        } else {
            rgb
        };
        if self.bits_per_pixel == 8 && self.red.length == 0 {
            return u32::from(rgb[1]); // plain 8-bit grey
        }
        let put = |c: Channel, v: u8| -> u32 {
            if c.length == 0 {
                0
            } else if c.length <= 8 {
                (u32::from(v) >> (8 - c.length)) << c.offset
            } else {
                (u32::from(v) << (c.length - 8)) << c.offset
            }
        };
        let alpha = if self.transp.length > 0 {
            ((1u32 << self.transp.length) - 1) << self.transp.offset
        } else {
            0
        };
        put(self.red, rgb[0]) | put(self.green, rgb[1]) | put(self.blue, rgb[2]) | alpha
    }

    /// Bytes of the rows the visible area covers.
    pub fn buffer_len(&self) -> usize {
        self.stride as usize * self.height as usize
    }

    /// Scale `frame` to fit the visible area into `out` (`buffer_len` bytes: rows `yoffset ..
    /// yoffset + height` of the screen), pixels in native byte order as the driver expects.
    pub fn compose(&self, frame: &RgbImage, out: &mut [u8]) {
        let bpp = self.bytes_per_pixel();
        let (fw, fh) = (u64::from(frame.width()), u64::from(frame.height()));
        let (sw, sh) = (u64::from(self.width), u64::from(self.height));
        out.fill(0);
        if fw == 0 || fh == 0 {
            return;
        }
        // Largest size with the frame's aspect that fits.
        let (dw, dh) = if fw * sh <= fh * sw {
            ((fw * sh / fh).clamp(1, sw), sh)
        } else {
            (sw, (fh * sw / fw).clamp(1, sh))
        };
        let (x0, y0) = ((sw - dw) / 2, (sh - dh) / 2);
        let black = self.pack([0, 0, 0]).to_ne_bytes();
        let src_x: Vec<u32> = (0..dw).map(|x| ((x * fw) / dw) as u32).collect();
        for (y, row) in out
            .chunks_exact_mut(self.stride as usize)
            .enumerate()
            .take(self.height as usize)
        {
            let visible =
                &mut row[self.xoffset as usize * bpp..(self.xoffset + self.width) as usize * bpp];
            let y = y as u64;
            if y < y0 || y >= y0 + dh {
                if black.iter().any(|b| *b != 0) {
                    for px in visible.chunks_exact_mut(bpp) {
                        px.copy_from_slice(&black[..bpp]);
                    }
                }
                continue;
            }
            let sy = ((y - y0) * fh / dh) as u32;
            for (x, px) in visible.chunks_exact_mut(bpp).enumerate() {
                let x = x as u64;
                let value = if x < x0 || x >= x0 + dw {
                    black
                } else {
                    self.pack(frame.get_pixel(src_x[(x - x0) as usize], sy).0)
                        .to_ne_bytes()
                };
                // Native order: the low bytes of the u32 on little-endian ARM and x86.
                px.copy_from_slice(if cfg!(target_endian = "little") {
                    &value[..bpp]
                } else {
                    &value[4 - bpp..]
                });
            }
        }
    }
}

pub struct FbSink {
    path: PathBuf,
    file: File,
    layout: FbLayout,
    buffer: Vec<u8>,
}

impl FbSink {
    /// Open a framebuffer device and read its layout from the driver.
    pub fn open(path: &Path) -> Result<FbSink> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::file(path, e))?;
        let layout = query(&file).map_err(|e| Error::file(path, e))?;
        FbSink::with_layout(path, file, layout)
    }

    /// A sink over any file with a given layout (a framebuffer whose layout is known, or a
    /// plain file standing in for one).
    pub fn with_layout(path: &Path, file: File, layout: FbLayout) -> Result<FbSink> {
        layout.validate().map_err(|e| Error::file(path, e))?;
        Ok(FbSink {
            path: path.to_path_buf(),
            file,
            layout,
            buffer: vec![0; layout.buffer_len()],
        })
    }

    pub fn layout(&self) -> &FbLayout {
        &self.layout
    }
}

impl Sink for FbSink {
    fn describe(&self) -> String {
        format!("fb:{}", self.path.display())
    }

    fn show(&mut self, frame: &RgbImage, _: u64) -> Result<()> {
        use std::os::unix::fs::FileExt;
        self.layout.compose(frame, &mut self.buffer);
        let offset = u64::from(self.layout.yoffset) * u64::from(self.layout.stride);
        self.file
            .write_all_at(&self.buffer, offset)
            .map_err(|e| Error::file(&self.path, e))
    }
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FbBitfield {
    offset: u32,
    length: u32,
    msb_right: u32,
}

/// linux/fb.h `struct fb_var_screeninfo` (160 bytes on every architecture).
#[repr(C)]
#[derive(Default)]
struct FbVarScreeninfo {
    xres: u32,
    yres: u32,
    xres_virtual: u32,
    yres_virtual: u32,
    xoffset: u32,
    yoffset: u32,
    bits_per_pixel: u32,
    grayscale: u32,
    red: FbBitfield,
    green: FbBitfield,
    blue: FbBitfield,
    transp: FbBitfield,
    nonstd: u32,
    activate: u32,
    height: u32,
    width: u32,
    accel_flags: u32,
    pixclock: u32,
    left_margin: u32,
    right_margin: u32,
    upper_margin: u32,
    lower_margin: u32,
    hsync_len: u32,
    vsync_len: u32,
    sync: u32,
    vmode: u32,
    rotate: u32,
    colorspace: u32,
    reserved: [u32; 4],
}

/// linux/fb.h `struct fb_fix_screeninfo`.
#[repr(C)]
#[derive(Default)]
struct FbFixScreeninfo {
    id: [u8; 16],
    smem_start: libc::c_ulong,
    smem_len: u32,
    type_: u32,
    type_aux: u32,
    visual: u32,
    xpanstep: u16,
    ypanstep: u16,
    ywrapstep: u16,
    line_length: u32,
    mmio_start: libc::c_ulong,
    mmio_len: u32,
    accel: u32,
    capabilities: u16,
    reserved: [u16; 2],
}

const FBIOGET_VSCREENINFO: u32 = 0x4600;
const FBIOGET_FSCREENINFO: u32 = 0x4602;

fn query(file: &File) -> std::io::Result<FbLayout> {
    use std::os::fd::AsRawFd;
    let mut var = FbVarScreeninfo::default();
    let mut fix = FbFixScreeninfo::default();
    // SAFETY: both requests fill exactly the #[repr(C)] mirrors of the kernel structs.
    unsafe {
        if libc::ioctl(
            file.as_raw_fd(),
            FBIOGET_VSCREENINFO as libc::Ioctl,
            &mut var as *mut FbVarScreeninfo,
        ) == -1
            || libc::ioctl(
                file.as_raw_fd(),
                FBIOGET_FSCREENINFO as libc::Ioctl,
                &mut fix as *mut FbFixScreeninfo,
            ) == -1
        {
            let e = std::io::Error::last_os_error();
            return Err(
                if matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::ENOSYS)) {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "not a framebuffer device",
                    )
                } else {
                    e
                },
            );
        }
    }
    let ch = |b: FbBitfield| Channel {
        offset: b.offset,
        length: b.length,
    };
    let layout = FbLayout {
        width: var.xres,
        height: var.yres,
        stride: fix.line_length,
        bits_per_pixel: var.bits_per_pixel,
        red: ch(var.red),
        green: ch(var.green),
        blue: ch(var.blue),
        transp: ch(var.transp),
        xoffset: var.xoffset,
        yoffset: var.yoffset,
        grayscale: var.grayscale == 1,
    };
    let needed = (u64::from(var.yoffset) + u64::from(var.yres)) * u64::from(fix.line_length);
    if fix.smem_len != 0 && needed > u64::from(fix.smem_len) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "visible area needs {needed} bytes, the framebuffer has {}",
                fix.smem_len
            ),
        ));
    }
    Ok(layout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_sizes_match_linux_fb_h() {
        assert_eq!(std::mem::size_of::<FbVarScreeninfo>(), 160);
        #[cfg(target_pointer_width = "64")]
        assert_eq!(std::mem::size_of::<FbFixScreeninfo>(), 80);
        #[cfg(target_pointer_width = "64")]
        assert_eq!(std::mem::offset_of!(FbFixScreeninfo, line_length), 48);
        #[cfg(target_pointer_width = "32")]
        assert_eq!(std::mem::size_of::<FbFixScreeninfo>(), 68);
        #[cfg(target_pointer_width = "32")]
        assert_eq!(std::mem::offset_of!(FbFixScreeninfo, line_length), 44);
    }

    #[test]
    fn rgb565_by_hand() {
        let l = FbLayout::rgb565(4, 2);
        // Pure colours fill their field: red 0xF800, green 0x07E0, blue 0x001F.
        assert_eq!(l.pack([255, 0, 0]), 0xF800);
        assert_eq!(l.pack([0, 255, 0]), 0x07E0);
        assert_eq!(l.pack([0, 0, 255]), 0x001F);
        // (200, 100, 50): 200>>3 = 25, 100>>2 = 25, 50>>3 = 6 -> 25<<11 | 25<<5 | 6.
        assert_eq!(l.pack([200, 100, 50]), (25 << 11) | (25 << 5) | 6);
    }

    #[test]
    fn bgrx8888_with_padding_and_stride() {
        // 32 bpp with blue in the low byte (the usual Pi/Jetson console format), a 3x2 visible
        // area in rows of 20 bytes (8 bytes of padding per row).
        let l = FbLayout {
            width: 3,
            height: 2,
            stride: 20,
            bits_per_pixel: 32,
            red: Channel {
                offset: 16,
                length: 8,
            },
            green: Channel {
                offset: 8,
                length: 8,
            },
            blue: Channel {
                offset: 0,
                length: 8,
            },
            transp: Channel {
                offset: 24,
                length: 8,
            },
            xoffset: 0,
            yoffset: 0,
            grayscale: false,
        };
        let frame = RgbImage::from_fn(3, 2, |x, y| {
            image::Rgb([10 * x as u8 + 1, 20 * y as u8 + 2, 3])
        });
        let mut out = vec![0xAA; l.buffer_len()];
        l.compose(&frame, &mut out);
        // Pixel (1, 1) = rgb(11, 22, 3) stored as bytes B G R A.
        assert_eq!(&out[20 + 4..20 + 8], &[3, 22, 11, 255]);
        assert_eq!(&out[0..4], &[3, 2, 1, 255]);
        // Padding after the visible row is cleared, not left with garbage.
        assert_eq!(&out[12..20], &[0; 8]);
    }

    #[test]
    fn letterboxed_and_scaled() {
        // A 2x1 frame on a 4x4 RGB565 screen: scaled to 4x2, centred vertically.
        let l = FbLayout::rgb565(4, 4);
        let frame = RgbImage::from_fn(2, 1, |x, _| {
            if x == 0 {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 255])
            }
        });
        let mut out = vec![0; l.buffer_len()];
        l.compose(&frame, &mut out);
        let px =
            |x: usize, y: usize| u16::from_ne_bytes([out[y * 8 + x * 2], out[y * 8 + x * 2 + 1]]);
        assert_eq!([px(0, 0), px(3, 0)], [0, 0]);
        assert_eq!(
            [px(0, 1), px(1, 1), px(2, 1), px(3, 1)],
            [0xF800, 0xF800, 0x001F, 0x001F]
        );
        assert_eq!(px(0, 2), 0xF800);
        assert_eq!(px(3, 3), 0);
    }

    #[test]
    fn a_file_is_not_a_framebuffer() {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        let err = FbSink::open(tmp.path()).err().expect("plain file");
        assert!(err.to_string().contains("not a framebuffer"), "{err}");
    }
}
