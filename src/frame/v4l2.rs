//! Raw V4L2 capture (linux/videodev2.h): MMAP streaming over plain ioctls, so the camera
//! backend needs neither libv4l nor bindgen/libclang and cross-builds for a Pi unchanged.
//! The `v4l` crate needs both; this is the part of it the camera loop uses.

use std::ffi::c_void;
use std::fs::{File, OpenOptions};
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use super::v4l::{Device, DeviceFormat, Fourcc};
use super::PixelFormat;

const BUF_TYPE_VIDEO_CAPTURE: u32 = 1;
const MEMORY_MMAP: u32 = 1;
const FIELD_NONE: u32 = 1;
const CAP_VIDEO_CAPTURE: u32 = 0x0000_0001;
const CAP_STREAMING: u32 = 0x0400_0000;
const CAP_DEVICE_CAPS: u32 = 0x8000_0000;
const BUF_FLAG_ERROR: u32 = 0x0000_0040;
/// Buffers in flight: enough for the driver to keep filling while we decode one.
const BUFFERS: u32 = 4;

const fn fourcc(s: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*s)
}
const YUYV: u32 = fourcc(b"YUYV");
const MJPG: u32 = fourcc(b"MJPG");
/// Some cameras call their MJPEG "JPEG"; the bytes are the same.
const JPEG: u32 = fourcc(b"JPEG");

#[repr(C)]
struct Capability {
    driver: [u8; 16],
    card: [u8; 32],
    bus_info: [u8; 32],
    version: u32,
    capabilities: u32,
    device_caps: u32,
    reserved: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct PixFormat {
    width: u32,
    height: u32,
    pixelformat: u32,
    field: u32,
    bytesperline: u32,
    sizeimage: u32,
    colorspace: u32,
    priv_: u32,
    flags: u32,
    ycbcr_enc: u32,
    quantization: u32,
    xfer_func: u32,
}

/// The kernel's union holds a struct with pointers, so it is pointer-aligned: 208 bytes on
/// 64-bit, 204 on 32-bit.
#[repr(C)]
union FormatUnion {
    pix: PixFormat,
    raw: [u8; 200],
    _align: [libc::c_ulong; 0],
}

#[repr(C)]
struct Format {
    type_: u32,
    fmt: FormatUnion,
}

#[repr(C)]
struct FmtDesc {
    index: u32,
    type_: u32,
    flags: u32,
    description: [u8; 32],
    pixelformat: u32,
    mbus_code: u32,
    reserved: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Fract {
    numerator: u32,
    denominator: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CaptureParm {
    capability: u32,
    capturemode: u32,
    timeperframe: Fract,
    extendedmode: u32,
    readbuffers: u32,
    reserved: [u32; 4],
}

#[repr(C)]
union ParmUnion {
    capture: CaptureParm,
    raw: [u8; 200],
}

#[repr(C)]
struct StreamParm {
    type_: u32,
    parm: ParmUnion,
}

#[repr(C)]
struct RequestBuffers {
    count: u32,
    type_: u32,
    memory: u32,
    capabilities: u32,
    flags: u8,
    reserved: [u8; 3],
}

#[repr(C)]
struct Timecode {
    type_: u32,
    flags: u32,
    frames: u8,
    seconds: u8,
    minutes: u8,
    hours: u8,
    userbits: [u8; 4],
}

#[repr(C)]
union BufferM {
    offset: u32,
    userptr: libc::c_ulong,
    fd: i32,
}

#[repr(C)]
struct Buffer {
    index: u32,
    type_: u32,
    bytesused: u32,
    flags: u32,
    field: u32,
    timestamp: libc::timeval,
    timecode: Timecode,
    sequence: u32,
    memory: u32,
    m: BufferM,
    length: u32,
    reserved2: u32,
    request_fd: i32,
}

/// `_IOC` of asm-generic/ioctl.h (x86, ARM, AArch64, RISC-V).
const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | ((b'V' as u32) << 8) | nr
}
const READ: u32 = 2;
const WRITE: u32 = 1;
const VIDIOC_QUERYCAP: u32 = ioc(READ, 0, size_of::<Capability>());
const VIDIOC_ENUM_FMT: u32 = ioc(READ | WRITE, 2, size_of::<FmtDesc>());
const VIDIOC_G_FMT: u32 = ioc(READ | WRITE, 4, size_of::<Format>());
const VIDIOC_S_FMT: u32 = ioc(READ | WRITE, 5, size_of::<Format>());
const VIDIOC_REQBUFS: u32 = ioc(READ | WRITE, 8, size_of::<RequestBuffers>());
const VIDIOC_QUERYBUF: u32 = ioc(READ | WRITE, 9, size_of::<Buffer>());
const VIDIOC_QBUF: u32 = ioc(READ | WRITE, 15, size_of::<Buffer>());
const VIDIOC_DQBUF: u32 = ioc(READ | WRITE, 17, size_of::<Buffer>());
const VIDIOC_STREAMON: u32 = ioc(WRITE, 18, size_of::<libc::c_int>());
const VIDIOC_STREAMOFF: u32 = ioc(WRITE, 19, size_of::<libc::c_int>());
const VIDIOC_G_PARM: u32 = ioc(READ | WRITE, 21, size_of::<StreamParm>());
const VIDIOC_S_PARM: u32 = ioc(READ | WRITE, 22, size_of::<StreamParm>());

fn xioctl<T>(file: &File, request: u32, arg: &mut T) -> io::Result<()> {
    loop {
        // SAFETY: every request constant encodes size_of::<T>() of the struct it is used with,
        // and T is a plain #[repr(C)] mirror of the kernel's struct.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), request as libc::Ioctl, arg as *mut T) };
        if r != -1 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn zeroed_of<T>() -> T {
    // SAFETY: only used for the plain-integer V4L2 structs above, for which all-zero is valid
    // (and what the API asks callers to start from).
    unsafe { zeroed() }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

fn fourcc_name(f: u32) -> String {
    f.to_le_bytes()
        .iter()
        .map(|&b| if b.is_ascii_graphic() { b as char } else { '?' })
        .collect()
}

/// What to ask the camera for.
#[derive(Clone, Copy, Debug)]
pub struct Request {
    pub size: Option<(u32, u32)>,
    pub fps: Option<f64>,
    pub pixel_format: PixelFormat,
}

struct Mapping {
    ptr: *mut c_void,
    len: usize,
}

/// An open, streaming V4L2 capture device.
pub struct V4l2Device {
    file: File,
    buffers: Vec<Mapping>,
    format: DeviceFormat,
    streaming: bool,
}

// SAFETY: the mappings are owned by this struct alone and only touched through &mut self.
unsafe impl Send for V4l2Device {}

impl V4l2Device {
    pub fn open(path: &Path, request: &Request) -> io::Result<V4l2Device> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)?;
        let mut cap: Capability = zeroed_of();
        xioctl(&file, VIDIOC_QUERYCAP, &mut cap).map_err(|e| {
            // ENOSYS: what qemu-user answers for a request it does not know.
            if matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::ENOSYS)) {
                invalid("not a V4L2 device".into())
            } else {
                e
            }
        })?;
        let caps = if cap.capabilities & CAP_DEVICE_CAPS != 0 {
            cap.device_caps
        } else {
            cap.capabilities
        };
        if caps & CAP_VIDEO_CAPTURE == 0 {
            return Err(invalid(
                "not a video capture node (UVC cameras also create metadata nodes: try the other /dev/videoN)".into(),
            ));
        }
        if caps & CAP_STREAMING == 0 {
            return Err(invalid("the device does not support streaming I/O".into()));
        }
        let pixelformat = choose_format(&offered_formats(&file), request.pixel_format)?;

        let mut fmt: Format = zeroed_of();
        fmt.type_ = BUF_TYPE_VIDEO_CAPTURE;
        xioctl(&file, VIDIOC_G_FMT, &mut fmt)?;
        // SAFETY: for a capture buffer type the kernel fills the `pix` member.
        let current = unsafe { fmt.fmt.pix };
        let (width, height) = request.size.unwrap_or((current.width, current.height));
        let mut fmt: Format = zeroed_of();
        fmt.type_ = BUF_TYPE_VIDEO_CAPTURE;
        fmt.fmt.pix = PixFormat {
            width,
            height,
            pixelformat,
            field: FIELD_NONE,
            ..current
        };
        fmt.fmt.pix.bytesperline = 0;
        fmt.fmt.pix.sizeimage = 0;
        xioctl(&file, VIDIOC_S_FMT, &mut fmt)?;
        // SAFETY: as above.
        let got = unsafe { fmt.fmt.pix };
        let fourcc = match got.pixelformat {
            YUYV => Fourcc::Yuyv,
            MJPG | JPEG => Fourcc::Mjpeg,
            other => {
                return Err(invalid(format!(
                    "the driver switched to {} instead of {}",
                    fourcc_name(other),
                    fourcc_name(pixelformat)
                )))
            }
        };

        if let Some(fps) = request.fps {
            let mut parm: StreamParm = zeroed_of();
            parm.type_ = BUF_TYPE_VIDEO_CAPTURE;
            parm.parm.capture.timeperframe = Fract {
                numerator: 1000,
                denominator: (fps * 1000.0).round() as u32,
            };
            // Not every driver lets the rate be set; the rate it reports is what we get.
            let _ = xioctl(&file, VIDIOC_S_PARM, &mut parm);
        }
        let mut parm: StreamParm = zeroed_of();
        parm.type_ = BUF_TYPE_VIDEO_CAPTURE;
        let fps = xioctl(&file, VIDIOC_G_PARM, &mut parm).ok().and_then(|()| {
            // SAFETY: for a capture buffer type the kernel fills the `capture` member.
            let t = unsafe { parm.parm.capture.timeperframe };
            (t.numerator != 0 && t.denominator != 0)
                .then(|| f64::from(t.denominator) / f64::from(t.numerator))
        });

        let format = DeviceFormat {
            fourcc,
            width: got.width,
            height: got.height,
            stride: got.bytesperline,
            fps,
        };
        let mut device = V4l2Device {
            file,
            buffers: Vec::new(),
            format,
            streaming: false,
        };
        device.start()?;
        Ok(device)
    }

    /// Request, map and queue the buffers, then start streaming. On error, `Drop` unmaps
    /// whatever was mapped.
    fn start(&mut self) -> io::Result<()> {
        let mut req = RequestBuffers {
            count: BUFFERS,
            type_: BUF_TYPE_VIDEO_CAPTURE,
            memory: MEMORY_MMAP,
            ..zeroed_of()
        };
        xioctl(&self.file, VIDIOC_REQBUFS, &mut req)?;
        if req.count < 2 {
            return Err(invalid(format!(
                "the driver granted {} buffers, streaming needs 2",
                req.count
            )));
        }
        for index in 0..req.count {
            let mut buf = Buffer {
                index,
                type_: BUF_TYPE_VIDEO_CAPTURE,
                memory: MEMORY_MMAP,
                ..zeroed_of()
            };
            xioctl(&self.file, VIDIOC_QUERYBUF, &mut buf)?;
            let len = buf.length as usize;
            // SAFETY: maps the driver's buffer `index` at the offset it gave; unmapped in Drop.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    self.file.as_raw_fd(),
                    buf.m.offset as libc::off_t,
                )
            };
            if ptr == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            self.buffers.push(Mapping { ptr, len });
            xioctl(&self.file, VIDIOC_QBUF, &mut buf)?;
        }
        let mut kind = BUF_TYPE_VIDEO_CAPTURE as libc::c_int;
        xioctl(&self.file, VIDIOC_STREAMON, &mut kind)?;
        self.streaming = true;
        Ok(())
    }
}

/// The pixel formats the device offers (VIDIOC_ENUM_FMT until EINVAL).
fn offered_formats(file: &File) -> Vec<u32> {
    let mut out = Vec::new();
    for index in 0..64 {
        let mut desc = FmtDesc {
            index,
            type_: BUF_TYPE_VIDEO_CAPTURE,
            ..zeroed_of()
        };
        if xioctl(file, VIDIOC_ENUM_FMT, &mut desc).is_err() {
            break;
        }
        out.push(desc.pixelformat);
    }
    out
}

fn choose_format(offered: &[u32], wanted: PixelFormat) -> io::Result<u32> {
    let mjpeg = offered.iter().copied().find(|f| *f == MJPG || *f == JPEG);
    let yuyv = offered.iter().copied().find(|f| *f == YUYV);
    let pick = match wanted {
        PixelFormat::Auto => mjpeg.or(yuyv),
        PixelFormat::Mjpeg => mjpeg,
        PixelFormat::Yuyv => yuyv,
    };
    pick.ok_or_else(|| {
        let names: Vec<String> = offered.iter().map(|f| fourcc_name(*f)).collect();
        invalid(format!("the camera offers {} but not the format asked for ({wanted:?}; YUYV and MJPEG are supported)", names.join(", ")))
    })
}

impl Device for V4l2Device {
    fn format(&self) -> DeviceFormat {
        self.format
    }

    fn capture(&mut self, timeout: Duration, f: &mut dyn FnMut(&[u8])) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            };
        }
        if r == 0 {
            return Ok(false);
        }
        let mut buf = Buffer {
            type_: BUF_TYPE_VIDEO_CAPTURE,
            memory: MEMORY_MMAP,
            ..zeroed_of()
        };
        match xioctl(&self.file, VIDIOC_DQBUF, &mut buf) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                if pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                    return Err(io::Error::other(
                        "the device reported an error and has no frame",
                    ));
                }
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
        let map = self
            .buffers
            .get(buf.index as usize)
            .ok_or_else(|| invalid(format!("the driver returned unknown buffer {}", buf.index)))?;
        let used = (buf.bytesused as usize).min(map.len);
        if buf.flags & BUF_FLAG_ERROR != 0 {
            f(&[]);
        } else {
            // SAFETY: the buffer is dequeued, so the driver does not write it until QBUF below.
            f(unsafe { std::slice::from_raw_parts(map.ptr as *const u8, used) });
        }
        xioctl(&self.file, VIDIOC_QBUF, &mut buf)?;
        Ok(true)
    }
}

impl Drop for V4l2Device {
    fn drop(&mut self) {
        if self.streaming {
            let mut kind = BUF_TYPE_VIDEO_CAPTURE as libc::c_int;
            let _ = xioctl(&self.file, VIDIOC_STREAMOFF, &mut kind);
        }
        for m in &self.buffers {
            // SAFETY: each mapping came from mmap with this length and is unmapped once.
            unsafe { libc::munmap(m.ptr, m.len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request numbers as printed from linux/videodev2.h on x86_64 and aarch64: a wrong
    /// struct size or layout changes them.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn ioctl_numbers_match_the_kernel_headers() {
        assert_eq!(VIDIOC_QUERYCAP, 0x8068_5600);
        assert_eq!(VIDIOC_ENUM_FMT, 0xc040_5602);
        assert_eq!(VIDIOC_G_FMT, 0xc0d0_5604);
        assert_eq!(VIDIOC_S_FMT, 0xc0d0_5605);
        assert_eq!(VIDIOC_REQBUFS, 0xc014_5608);
        assert_eq!(VIDIOC_QUERYBUF, 0xc058_5609);
        assert_eq!(VIDIOC_QBUF, 0xc058_560f);
        assert_eq!(VIDIOC_DQBUF, 0xc058_5611);
        assert_eq!(VIDIOC_STREAMON, 0x4004_5612);
        assert_eq!(VIDIOC_STREAMOFF, 0x4004_5613);
        assert_eq!(VIDIOC_G_PARM, 0xc0cc_5615);
        assert_eq!(VIDIOC_S_PARM, 0xc0cc_5616);
        assert_eq!(std::mem::offset_of!(Buffer, m), 64);
        assert_eq!(std::mem::offset_of!(Format, fmt), 8);
    }

    /// The same on 32-bit ARM (armhf, 32-bit time_t): pointer-aligned unions and a smaller
    /// `v4l2_buffer` change the sizes encoded in the numbers.
    #[test]
    #[cfg(target_pointer_width = "32")]
    fn ioctl_numbers_match_the_kernel_headers_32() {
        assert_eq!(VIDIOC_QUERYCAP, 0x8068_5600);
        assert_eq!(VIDIOC_G_FMT, 0xc0cc_5604);
        assert_eq!(VIDIOC_S_FMT, 0xc0cc_5605);
        assert_eq!(VIDIOC_QUERYBUF, 0xc044_5609);
        assert_eq!(VIDIOC_QBUF, 0xc044_560f);
        assert_eq!(VIDIOC_DQBUF, 0xc044_5611);
        assert_eq!(VIDIOC_S_PARM, 0xc0cc_5616);
        assert_eq!(std::mem::offset_of!(Buffer, m), 52);
        assert_eq!(std::mem::offset_of!(Format, fmt), 4);
    }

    #[test]
    fn format_choice() {
        assert_eq!(
            choose_format(&[YUYV, MJPG], PixelFormat::Auto).unwrap(),
            MJPG
        );
        assert_eq!(
            choose_format(&[YUYV, MJPG], PixelFormat::Yuyv).unwrap(),
            YUYV
        );
        assert_eq!(choose_format(&[YUYV], PixelFormat::Auto).unwrap(), YUYV);
        let err = choose_format(&[fourcc(b"NV12")], PixelFormat::Auto).unwrap_err();
        assert!(err.to_string().contains("NV12"), "{err}");
    }

    #[test]
    fn opening_something_else_fails_cleanly() {
        let req = Request {
            size: None,
            fps: None,
            pixel_format: PixelFormat::Auto,
        };
        let err = V4l2Device::open(Path::new("/dev/null"), &req)
            .err()
            .expect("not a camera");
        assert!(err.to_string().contains("not a V4L2 device"), "{err}");
        let err = V4l2Device::open(Path::new("/nonexistent/video9"), &req)
            .err()
            .expect("absent");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
