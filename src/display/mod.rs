//! Where annotated frames go (`--display`): `fb:/dev/fb0` (a bare Linux framebuffer, for a
//! Pi with a screen and no desktop), `png:DIR` (every Nth frame, for headless devices and the
//! demo) or `none`.

pub mod fb;

use std::path::{Path, PathBuf};

use image::RgbImage;

use crate::{Error, Result};

pub trait Sink: Send {
    fn describe(&self) -> String;
    /// Whether the `n`th classified frame (from 0) will be shown, so the overlay is only drawn
    /// for frames that are.
    fn wants(&self, n: u64) -> bool {
        let _ = n;
        true
    }
    fn show(&mut self, frame: &RgbImage, n: u64) -> Result<()>;
}

/// Open the sink a `--display` spec names; `every` thins `png:` output.
pub fn open(spec: &str, every: u64) -> Result<Box<dyn Sink>> {
    if every == 0 {
        return Err(Error::usage("--png-every must be at least 1"));
    }
    match spec.split_once(':') {
        None if spec == "none" => Ok(Box::new(NoSink)),
        Some(("png", dir)) if !dir.is_empty() => {
            Ok(Box::new(PngSink::create(Path::new(dir), every)?))
        }
        Some(("fb", dev)) if !dev.is_empty() => Ok(Box::new(fb::FbSink::open(Path::new(dev))?)),
        _ => Err(Error::usage(format!(
            "--display {spec:?}: expected none, png:DIR or fb:/dev/fbN"
        ))),
    }
}

pub struct NoSink;

impl Sink for NoSink {
    fn describe(&self) -> String {
        "none".into()
    }
    fn wants(&self, _: u64) -> bool {
        false
    }
    fn show(&mut self, _: &RgbImage, _: u64) -> Result<()> {
        Ok(())
    }
}

/// Writes `frame-NNNNNN.png` (NNNNNN = classified-frame number) for every `every`th frame.
pub struct PngSink {
    dir: PathBuf,
    every: u64,
    written: u64,
}

impl PngSink {
    pub fn create(dir: &Path, every: u64) -> Result<PngSink> {
        std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
        Ok(PngSink {
            dir: dir.to_path_buf(),
            every: every.max(1),
            written: 0,
        })
    }

    pub fn path_for(&self, n: u64) -> PathBuf {
        self.dir.join(format!("frame-{n:06}.png"))
    }

    pub fn written(&self) -> u64 {
        self.written
    }
}

impl Sink for PngSink {
    fn describe(&self) -> String {
        format!("png:{}", self.dir.display())
    }
    fn wants(&self, n: u64) -> bool {
        n.is_multiple_of(self.every)
    }
    fn show(&mut self, frame: &RgbImage, n: u64) -> Result<()> {
        let path = self.path_for(n);
        frame
            .save_with_format(&path, image::ImageFormat::Png)
            .map_err(|e| Error::file(&path, e))?;
        self.written += 1;
        Ok(())
    }
}
