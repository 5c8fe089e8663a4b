//! `synthetic[:WxH]`: a moving test pattern, for benchmarks and tests without a camera.

use std::time::Instant;

use image::RgbImage;

use super::{Capture, Frame, FrameSource, Pacer, SourceOptions};
use crate::Result;

/// Default rate when `--fps` is not given: what a USB webcam delivers.
pub const DEFAULT_FPS: f64 = 30.0;

pub struct SyntheticSource {
    width: u32,
    height: u32,
    count: u64,
    pacer: Pacer,
}

impl SyntheticSource {
    pub fn new(width: u32, height: u32, options: &SourceOptions) -> Result<SyntheticSource> {
        Ok(SyntheticSource {
            width,
            height,
            count: 0,
            pacer: Pacer::new(Some(options.fps.unwrap_or(DEFAULT_FPS))),
        })
    }

    /// Frame `t` of the pattern: a diagonal gradient drifting right and a white square
    /// bouncing along the diagonal, so consecutive frames differ everywhere.
    pub fn pattern(width: u32, height: u32, t: u64) -> RgbImage {
        let side = (width.min(height) / 4).max(1);
        let span = |n: u32| u64::from(n.saturating_sub(side).max(1));
        let bounce = |span: u64| {
            let p = (t * 4) % (2 * span);
            (if p < span { p } else { 2 * span - p }) as u32
        };
        let (sx, sy) = (bounce(span(width)), bounce(span(height)));
        let shift = (t * 3) as u32;
        let mut img = RgbImage::new(width, height);
        for (y, row) in img.rows_mut().enumerate() {
            let y = y as u32;
            for (x, px) in row.enumerate() {
                let x = x as u32;
                px.0 = if (sx..sx + side).contains(&x) && (sy..sy + side).contains(&y) {
                    [255, 255, 255]
                } else {
                    [(x.wrapping_add(shift)) as u8, y as u8, (x + y) as u8 / 2]
                };
            }
        }
        img
    }
}

impl FrameSource for SyntheticSource {
    fn describe(&self) -> String {
        format!("synthetic:{}x{}", self.width, self.height)
    }

    fn live(&self) -> bool {
        true
    }

    fn next(&mut self) -> Result<Capture> {
        self.pacer.wait();
        let t = self.count;
        self.count += 1;
        let start = Instant::now();
        let image = Self::pattern(self.width, self.height, t);
        Ok(Capture::Frame(Frame {
            image,
            name: Some(format!("#{t}")),
            work: start.elapsed(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_moves() {
        let (a, b) = (
            SyntheticSource::pattern(64, 48, 0),
            SyntheticSource::pattern(64, 48, 1),
        );
        assert_eq!(a.dimensions(), (64, 48));
        assert_ne!(a, b);
        assert_eq!(a.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(SyntheticSource::pattern(1, 1, 7).dimensions(), (1, 1));
    }
}
