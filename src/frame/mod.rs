//! Frame sources for the camera loop, one trait for cameras, recordings, folders and test
//! patterns, so the pipeline ([`crate::pipeline`]) never knows where its frames come from.
//!
//! `--source` picks one: `v4l:/dev/videoN`, `dir:PATH`, `mjpeg:FILE`, `synthetic[:WxH]`.

pub mod dir;
pub mod mjpeg;
pub mod synthetic;
pub mod v4l;
#[cfg(target_os = "linux")]
pub mod v4l2;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use image::RgbImage;

use crate::{Error, Result};

/// One decoded frame.
#[derive(Clone, Debug)]
pub struct Frame {
    pub image: RgbImage,
    /// What the source calls it (a file name for `dir:`), for logs and printouts.
    pub name: Option<String>,
    /// Time the source spent producing it (reading, decoding, converting), excluding any
    /// wait for the frame to be due or to arrive: the capture cost the summary reports.
    pub work: Duration,
}

/// What one call to [`FrameSource::next`] produced.
#[derive(Debug)]
pub enum Capture {
    Frame(Frame),
    /// A frame arrived but could not be decoded: skipped and counted, never fatal.
    Corrupt(String),
    /// Nothing arrived within the source's poll timeout; call again (lets the loop see a stop).
    Idle,
    /// The device went away (node removed, ENODEV, EIO): call [`FrameSource::reconnect`].
    Lost(String),
    /// No more frames (a folder or recording without `--loop`).
    End,
}

/// A producer of frames. `Err` from any method is fatal for the run; everything a camera does
/// routinely (corrupt frames, unplugging) is a [`Capture`] variant instead.
pub trait FrameSource: Send {
    /// The `--source` spec it was opened from, for logs.
    fn describe(&self) -> String;
    /// Live sources (cameras, test patterns, paced replays) run on their own clock, so the
    /// pipeline keeps only their newest frame; an unpaced replay waits for the model instead,
    /// so every frame of it is classified.
    fn live(&self) -> bool;
    fn next(&mut self) -> Result<Capture>;
    /// What a camera agreed to (format, size, rate), which may differ from what was asked.
    fn negotiated(&self) -> Option<String> {
        None
    }
    /// Try once to reopen a lost source: `Ok(false)` means not back yet (the caller backs off).
    fn reconnect(&mut self) -> Result<bool> {
        Err(Error::usage(format!(
            "{} cannot reconnect",
            self.describe()
        )))
    }
}

/// Pixel format asked of a V4L2 camera.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PixelFormat {
    /// MJPEG when the camera offers it (it reaches higher resolutions over USB 2), else YUYV.
    #[default]
    Auto,
    Mjpeg,
    Yuyv,
}

/// Settings shared by the sources; each ignores what does not apply to it.
#[derive(Clone, Debug, Default)]
pub struct SourceOptions {
    /// Frames per second: pacing for replays and patterns, a request to cameras. `Some(0.0)`
    /// means as fast as possible; `None` is the source's default (unpaced replay, 30 fps
    /// pattern, the camera's own rate).
    pub fps: Option<f64>,
    /// Start a folder or recording over when it ends.
    pub looping: bool,
    /// Camera resolution request (width, height).
    pub size: Option<(u32, u32)>,
    pub pixel_format: PixelFormat,
}

/// Open the source a `--source` spec names.
pub fn open(spec: &str, options: &SourceOptions) -> Result<Box<dyn FrameSource>> {
    if let Some(fps) = options.fps {
        if !fps.is_finite() || fps < 0.0 {
            return Err(Error::usage(format!(
                "--fps {fps} must be 0 (unpaced) or positive"
            )));
        }
    }
    let (kind, arg) = spec.split_once(':').unwrap_or((spec, ""));
    match kind {
        "dir" if !arg.is_empty() => Ok(Box::new(dir::DirSource::open(Path::new(arg), options)?)),
        "mjpeg" if !arg.is_empty() => {
            Ok(Box::new(mjpeg::MjpegSource::open(Path::new(arg), options)?))
        }
        "synthetic" => {
            let size = if arg.is_empty() {
                (640, 480)
            } else {
                parse_size(arg)?
            };
            Ok(Box::new(synthetic::SyntheticSource::new(
                size.0, size.1, options,
            )?))
        }
        "v4l" if !arg.is_empty() => Ok(Box::new(v4l::V4lSource::open(Path::new(arg), options)?)),
        _ => Err(Error::usage(format!(
            "--source {spec:?}: expected v4l:/dev/videoN, dir:PATH, mjpeg:FILE or synthetic[:WxH]"
        ))),
    }
}

/// `640x480` -> (640, 480).
pub fn parse_size(s: &str) -> Result<(u32, u32)> {
    let bad = || Error::usage(format!("{s:?} is not a size like 640x480"));
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let (w, h) = (
        w.trim().parse::<u32>().map_err(|_| bad())?,
        h.trim().parse::<u32>().map_err(|_| bad())?,
    );
    if w == 0 || h == 0 || w > crate::preprocess::MAX_SIDE || h > crate::preprocess::MAX_SIDE {
        return Err(Error::usage(format!(
            "size {s}: sides must be between 1 and {}",
            crate::preprocess::MAX_SIDE
        )));
    }
    Ok((w, h))
}

/// Whether a file is one the folder source replays (by extension, so a README beside the
/// photos is skipped rather than failing as a corrupt frame).
pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
}

/// The image files among `paths`: files as given, folders listed (JPEG/PNG, name order).
pub fn image_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = vec![];
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| Error::file(path, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_image_path(p) && p.is_file())
                .collect();
            found.sort();
            files.extend(found);
        } else if path.is_file() {
            files.push(path.clone());
        } else {
            return Err(Error::file(path, "no such image file or folder"));
        }
    }
    Ok(files)
}

/// Keeps a source to its frame rate without drifting or bursting after a stall.
#[derive(Debug)]
pub(crate) struct Pacer {
    interval: Option<Duration>,
    next: Option<Instant>,
}

impl Pacer {
    /// `fps` of `None` or 0 never waits.
    pub(crate) fn new(fps: Option<f64>) -> Pacer {
        let interval = fps
            .filter(|f| *f > 0.0)
            .map(|f| Duration::from_secs_f64(1.0 / f));
        Pacer {
            interval,
            next: None,
        }
    }

    pub(crate) fn paced(&self) -> bool {
        self.interval.is_some()
    }

    /// Sleep until the next frame is due.
    pub(crate) fn wait(&mut self) {
        let Some(interval) = self.interval else {
            return;
        };
        let now = Instant::now();
        let due = self.next.unwrap_or(now);
        if due > now {
            std::thread::sleep(due - now);
        }
        // After a stall of more than a frame, restart the clock rather than catch up in a burst.
        self.next = Some(if now > due + interval {
            now + interval
        } else {
            due + interval
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_specs() {
        assert_eq!(parse_size("640x480").unwrap(), (640, 480));
        assert!(parse_size("640").is_err());
        assert!(parse_size("0x480").is_err());
        assert!(open("nonsense", &SourceOptions::default()).is_err());
        assert!(open("dir:", &SourceOptions::default()).is_err());
        let fps = SourceOptions {
            fps: Some(-1.0),
            ..SourceOptions::default()
        };
        assert!(open("synthetic", &fps).is_err());
        assert!(is_image_path(Path::new("a/b.JPG")));
        assert!(!is_image_path(Path::new("README.md")));
    }

    #[test]
    fn pacer_keeps_the_rate() {
        let mut p = Pacer::new(Some(100.0));
        let t = Instant::now();
        for _ in 0..6 {
            p.wait();
        }
        // 5 intervals of 10 ms after the first, immediate, frame.
        let ms = t.elapsed().as_millis();
        assert!((45..200).contains(&ms), "{ms} ms");
        assert!(!Pacer::new(Some(0.0)).paced());
    }
}
