//! The overlay on annotated frames: top-1 label and score, a confidence bar, FPS and inference
//! time, drawn with embedded-graphics straight into the frame's RGB buffer (no copy, no
//! windowing system: the same pixels go to a PNG or a bare framebuffer).
//!
//! Geometry, for a frame `width` wide (the golden-image test checks these by hand):
//! font `F` = 6x10 below 480 px wide, else 10x20 (cell `cw` x `ch`); margin `m = ch / 2`.
//! Line 1 at `(m, m)`: `"{label} {score:.2}"`, cut to fit. Bar at `(m, 2m + ch)`, `L = (width -
//! 2m) / 2` long and `ch` high: a 1 px white outline, filled green inside for
//! `round(score * (L - 2))` px. Line 2 at `(m + L + m, 2m + ch)`: `"{fps:.1} fps {ms:.0} ms"`.
//! Rows `0 .. 3m + 2ch` are darkened to half brightness behind it all.

use std::convert::Infallible;

use embedded_graphics::mono_font::ascii::{FONT_10X20, FONT_6X10};
use embedded_graphics::mono_font::{MonoFont, MonoTextStyle};
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{PrimitiveStyle, Rectangle};
use embedded_graphics::text::{Baseline, Text};
use image::RgbImage;

/// Colour of the confidence bar's fill.
pub const BAR_FILL: [u8; 3] = [40, 200, 70];
pub const TEXT: [u8; 3] = [255, 255, 255];

/// An [`RgbImage`] as an embedded-graphics draw target; pixels outside are clipped.
pub struct Canvas<'a>(pub &'a mut RgbImage);

impl OriginDimensions for Canvas<'_> {
    fn size(&self) -> Size {
        Size::new(self.0.width(), self.0.height())
    }
}

impl DrawTarget for Canvas<'_> {
    type Color = Rgb888;
    type Error = Infallible;

    fn draw_iter<I: IntoIterator<Item = Pixel<Rgb888>>>(
        &mut self,
        pixels: I,
    ) -> Result<(), Infallible> {
        let (w, h) = self.0.dimensions();
        for Pixel(p, c) in pixels {
            if let (Ok(x), Ok(y)) = (u32::try_from(p.x), u32::try_from(p.y)) {
                if x < w && y < h {
                    self.0.put_pixel(x, y, image::Rgb([c.r(), c.g(), c.b()]));
                }
            }
        }
        Ok(())
    }
}

/// What the overlay shows.
#[derive(Clone, Debug)]
pub struct OverlayInfo<'a> {
    pub label: &'a str,
    /// Top-1 probability, 0..=1 (clamped).
    pub score: f32,
    pub fps: f64,
    pub inference_ms: f64,
}

fn font_for(width: u32) -> &'static MonoFont<'static> {
    if width < 480 {
        &FONT_6X10
    } else {
        &FONT_10X20
    }
}

/// Draw the overlay onto `img` in place (see the module doc for the layout).
pub fn draw(img: &mut RgbImage, info: &OverlayInfo) {
    let font = font_for(img.width());
    let (cw, ch) = (font.character_size.width, font.character_size.height);
    let m = ch / 2;
    let band = (3 * m + 2 * ch).min(img.height());
    let band_bytes = (band * img.width()) as usize * 3;
    for c in &mut img.as_mut()[..band_bytes] {
        *c >>= 1;
    }
    let score = if info.score.is_finite() {
        info.score.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let width = img.width();
    let mut canvas = Canvas(img);
    let style = MonoTextStyle::new(font, Rgb888::new(TEXT[0], TEXT[1], TEXT[2]));

    let max_chars = (width.saturating_sub(2 * m) / cw) as usize;
    let line1: String = format!("{} {score:.2}", info.label)
        .chars()
        .take(max_chars)
        .collect();
    let at = |x: u32, y: u32| Point::new(x as i32, y as i32);
    let _ = Text::with_baseline(&line1, at(m, m), style, Baseline::Top).draw(&mut canvas);

    let bar_len = width.saturating_sub(2 * m) / 2;
    let bar_y = 2 * m + ch;
    if bar_len >= 3 {
        let outline = PrimitiveStyle::with_stroke(Rgb888::new(TEXT[0], TEXT[1], TEXT[2]), 1);
        let _ = Rectangle::new(at(m, bar_y), Size::new(bar_len, ch))
            .into_styled(outline)
            .draw(&mut canvas);
        let fill_len = (score * (bar_len - 2) as f32).round() as u32;
        if fill_len > 0 && ch > 2 {
            let fill =
                PrimitiveStyle::with_fill(Rgb888::new(BAR_FILL[0], BAR_FILL[1], BAR_FILL[2]));
            let _ = Rectangle::new(at(m + 1, bar_y + 1), Size::new(fill_len, ch - 2))
                .into_styled(fill)
                .draw(&mut canvas);
        }
    }
    let line2 = format!("{:.1} fps {:.0} ms", info.fps, info.inference_ms);
    let _ = Text::with_baseline(&line2, at(m + bar_len + m, bar_y), style, Baseline::Top)
        .draw(&mut canvas);
}
