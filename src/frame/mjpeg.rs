//! `mjpeg:FILE`: a concatenated-JPEG stream (what `v4l2-ctl --stream-to` records from an MJPEG
//! camera) replayed frame by frame, plus the JPEG splitting and decoding the V4L2 source shares.

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use image::RgbImage;
use memmap2::Mmap;
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

use super::{Capture, Frame, FrameSource, Pacer, SourceOptions};
use crate::{Error, Result};

/// One piece of a JPEG stream, as [`next_jpeg`] cuts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// A whole JPEG, SOI to EOI.
    Jpeg(Range<usize>),
    /// Bytes that are not a whole JPEG: a truncated frame or garbage between frames.
    Broken(Range<usize>, &'static str),
}

const SOI: [u8; 3] = [0xFF, 0xD8, 0xFF];

fn find(data: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    data.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// Cut the next JPEG out of `data` starting at `from`; `None` at the end of the data.
///
/// Walks the marker segments (ITU T.81 B.1) rather than searching for `FF D9`, so an EOI inside
/// an EXIF thumbnail does not end a frame early, and a frame cut short (the next frame's SOI
/// appears before this one's EOI) is reported as [`Piece::Broken`] without losing the next one.
pub fn next_jpeg(data: &[u8], from: usize) -> Option<Piece> {
    if from >= data.len() {
        return None;
    }
    let Some(start) = find(data, from, &SOI) else {
        return Some(Piece::Broken(
            from..data.len(),
            "trailing bytes without a JPEG start",
        ));
    };
    if start > from {
        return Some(Piece::Broken(
            from..start,
            "bytes between frames that are not JPEG",
        ));
    }
    // Where to resume when the structure is inconsistent: the next SOI after this one.
    let resync = |reason| {
        let end = find(data, start + 2, &SOI).unwrap_or(data.len());
        Some(Piece::Broken(start..end, reason))
    };
    let mut i = start + 2;
    loop {
        if i >= data.len() {
            return Some(Piece::Broken(
                start..data.len(),
                "JPEG truncated at the end of the stream",
            ));
        }
        if data[i] != 0xFF {
            return resync("JPEG marker expected but not found (corrupt frame)");
        }
        let marker_at = i;
        while data.get(i) == Some(&0xFF) {
            i += 1; // fill bytes
        }
        let Some(&marker) = data.get(i) else {
            return Some(Piece::Broken(
                start..data.len(),
                "JPEG truncated at the end of the stream",
            ));
        };
        i += 1;
        match marker {
            0xD9 => return Some(Piece::Jpeg(start..i)),
            // A new image starts before this one ended: this one was cut short.
            0xD8 => {
                return Some(Piece::Broken(
                    start..marker_at,
                    "truncated JPEG (next frame starts before its end)",
                ))
            }
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let Some(len) = data
            .get(i..i + 2)
            .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
        else {
            return Some(Piece::Broken(
                start..data.len(),
                "JPEG truncated at the end of the stream",
            ));
        };
        if len < 2 {
            return resync("JPEG segment with an impossible length (corrupt frame)");
        }
        let end = i + len;
        // Only APPn and COM segments may carry another JPEG (a thumbnail); an SOI inside any
        // other segment means the header was cut and the length ran into the next frame.
        let may_embed = matches!(marker, 0xE0..=0xEF | 0xFE);
        if !may_embed && find(&data[..end.min(data.len())], i, &SOI).is_some() {
            return resync("truncated JPEG header");
        }
        if end > data.len() {
            return Some(Piece::Broken(
                start..data.len(),
                "JPEG truncated at the end of the stream",
            ));
        }
        i = end;
        if marker == 0xDA {
            // Entropy-coded data runs to the next marker that is not a stuffed byte or restart.
            loop {
                let Some(off) = data
                    .get(i..)
                    .and_then(|r| r.iter().position(|&b| b == 0xFF))
                else {
                    return Some(Piece::Broken(
                        start..data.len(),
                        "JPEG truncated at the end of the stream",
                    ));
                };
                i += off;
                match data.get(i + 1) {
                    None => {
                        return Some(Piece::Broken(
                            start..data.len(),
                            "JPEG truncated at the end of the stream",
                        ))
                    }
                    Some(0x00 | 0xD0..=0xD7) => i += 2,
                    Some(_) => break,
                }
            }
        }
    }
}

/// Decode one whole JPEG to RGB with zune-jpeg (SIMD on x86 and NEON on ARM), into a fresh
/// image of exactly the decoded size. Camera MJPEG without Huffman tables gets the standard
/// ones. The error is the reason, for a `Corrupt` capture.
pub fn decode_jpeg(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    let options = DecoderOptions::default()
        .set_strict_mode(false)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    decoder
        .decode_headers()
        .map_err(|e| format!("cannot decode JPEG: {e:?}"))?;
    let (w, h) = decoder.dimensions().ok_or("JPEG without dimensions")?;
    let size = decoder.output_buffer_size().ok_or("JPEG too large")?;
    if w == 0 || h == 0 || size != w * h * 3 {
        return Err(format!("JPEG of {w}x{h} does not decode to RGB"));
    }
    let mut pixels = vec![0u8; size];
    decoder
        .decode_into(&mut pixels)
        .map_err(|e| format!("cannot decode JPEG: {e:?}"))?;
    let (w, h) = (
        u32::try_from(w).map_err(|e| e.to_string())?,
        u32::try_from(h).map_err(|e| e.to_string())?,
    );
    RgbImage::from_raw(w, h, pixels).ok_or_else(|| "JPEG buffer size mismatch".to_string())
}

/// A whole camera buffer as one JPEG: checks it is complete before decoding, because zune-jpeg
/// quietly fills in a truncated image and a half frame must not be classified.
pub fn decode_whole_jpeg(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    match next_jpeg(bytes, 0) {
        Some(Piece::Jpeg(r)) => decode_jpeg(&bytes[r]),
        Some(Piece::Broken(_, reason)) => Err(reason.to_string()),
        None => Err("empty buffer".to_string()),
    }
}

pub struct MjpegSource {
    path: PathBuf,
    data: Option<Mmap>,
    pos: usize,
    count: u64,
    looping: bool,
    pacer: Pacer,
}

impl MjpegSource {
    pub fn open(path: &Path, options: &SourceOptions) -> Result<MjpegSource> {
        let file = File::open(path).map_err(|e| Error::file(path, e))?;
        let len = file.metadata().map_err(|e| Error::file(path, e))?.len();
        if len == 0 {
            return Err(Error::file(path, "empty file, no MJPEG frames"));
        }
        // SAFETY: read-only map of a recording; a writer truncating it under us is outside
        // the contract (as for the model files).
        let data = unsafe { Mmap::map(&file) }.map_err(|e| Error::file(path, e))?;
        if find(&data, 0, &SOI).is_none() {
            return Err(Error::file(
                path,
                "no JPEG frame in the file (not an MJPEG stream)",
            ));
        }
        Ok(MjpegSource {
            path: path.to_path_buf(),
            data: Some(data),
            pos: 0,
            count: 0,
            looping: options.looping,
            pacer: Pacer::new(options.fps),
        })
    }
}

impl FrameSource for MjpegSource {
    fn describe(&self) -> String {
        format!("mjpeg:{}", self.path.display())
    }

    fn live(&self) -> bool {
        self.pacer.paced()
    }

    fn next(&mut self) -> Result<Capture> {
        let Some(data) = self.data.as_deref() else {
            return Ok(Capture::End);
        };
        let piece = match next_jpeg(data, self.pos) {
            Some(p) => p,
            None if self.looping => {
                self.pos = 0;
                match next_jpeg(data, 0) {
                    Some(p) => p,
                    None => return Ok(Capture::End),
                }
            }
            None => {
                self.data = None;
                return Ok(Capture::End);
            }
        };
        match piece {
            Piece::Broken(range, reason) => {
                self.pos = range.end;
                Ok(Capture::Corrupt(format!(
                    "{}: bytes {}..{}: {reason}",
                    self.path.display(),
                    range.start,
                    range.end
                )))
            }
            Piece::Jpeg(range) => {
                self.pos = range.end;
                self.pacer.wait();
                let n = self.count;
                self.count += 1;
                let t = Instant::now();
                Ok(match decode_jpeg(&data[range.clone()]) {
                    Ok(image) => Capture::Frame(Frame {
                        image,
                        name: Some(format!("#{n}")),
                        work: t.elapsed(),
                    }),
                    Err(e) => Capture::Corrupt(format!(
                        "{}: bytes {}..{}: {e}",
                        self.path.display(),
                        range.start,
                        range.end
                    )),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(w: u32, h: u32, seed: u8) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8 ^ seed, y as u8, seed]));
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .encode_image(&img)
            .unwrap();
        out
    }

    fn pieces(data: &[u8]) -> Vec<Piece> {
        let mut out = Vec::new();
        let mut pos = 0;
        while let Some(p) = next_jpeg(data, pos) {
            pos = match &p {
                Piece::Jpeg(r) | Piece::Broken(r, _) => r.end,
            };
            out.push(p);
        }
        out
    }

    #[test]
    fn splits_whole_and_truncated_frames() {
        let (a, b, c) = (jpeg(32, 24, 1), jpeg(40, 16, 2), jpeg(8, 8, 3));
        let cut = b.len() / 2;
        let mut stream = a.clone();
        stream.extend_from_slice(&b[..cut]);
        stream.extend_from_slice(&c);
        let p = pieces(&stream);
        assert_eq!(p.len(), 3, "{p:?}");
        assert_eq!(p[0], Piece::Jpeg(0..a.len()));
        assert!(
            matches!(&p[1], Piece::Broken(r, _) if *r == (a.len()..a.len() + cut)),
            "{p:?}"
        );
        assert_eq!(p[2], Piece::Jpeg(a.len() + cut..stream.len()));
        let img = decode_jpeg(&stream[a.len() + cut..]).unwrap();
        assert_eq!(img.dimensions(), (8, 8));
    }

    #[test]
    fn cut_inside_a_header_loses_only_that_frame() {
        let (a, b) = (jpeg(16, 16, 4), jpeg(16, 16, 5));
        // 25 bytes in: inside the first segment after SOI, whose length runs into `b`.
        let mut stream = a[..25].to_vec();
        stream.extend_from_slice(&b);
        let p = pieces(&stream);
        assert!(
            matches!(&p[0], Piece::Broken(r, _) if *r == (0..25)),
            "{p:?}"
        );
        assert_eq!(p[1], Piece::Jpeg(25..stream.len()));
    }

    #[test]
    fn truncated_end_and_garbage() {
        let a = jpeg(16, 16, 6);
        let mut stream = b"junk".to_vec();
        stream.extend_from_slice(&a);
        stream.extend_from_slice(&a[..a.len() - 10]);
        let p = pieces(&stream);
        assert!(matches!(p[0], Piece::Broken(_, _)));
        assert!(matches!(p[1], Piece::Jpeg(_)));
        assert!(matches!(p[2], Piece::Broken(_, _)));
        assert_eq!(p.len(), 3);
        assert!(decode_whole_jpeg(&a[..a.len() - 10]).is_err());
        assert!(decode_whole_jpeg(&a).is_ok());
        assert!(decode_jpeg(b"\xFF\xD8\xFFnot a jpeg").is_err());
    }
}
