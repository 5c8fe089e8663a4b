//! Read a float32 `.npy` tensor, so an already-preprocessed input (e.g. torchvision's, saved
//! with `np.save`) can be fed to a model as-is.
//!
//! Format: NumPy's `.npy` v1-3 (`numpy/lib/format.py`): magic, version, header length, a
//! Python-dict header, then the raw array.

use std::path::Path;

use tract_core::prelude::Tensor;

use crate::error::AtPath;
use crate::{Error, Result};

pub fn read_f32(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).at(path)?;
    let bad = |problem: &str| Error::file(path, format!("not a float32 .npy tensor: {problem}"));
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("missing the \\x93NUMPY magic"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(bad("unknown version")),
    };
    let header = bytes
        .get(start..start.saturating_add(header_len))
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad("truncated header"))?;
    if !header.contains("'descr': '<f4'") {
        return Err(bad("dtype is not little-endian float32 ('<f4')"));
    }
    if header.contains("'fortran_order': True") {
        return Err(bad("Fortran order is not supported"));
    }
    let shape_text = header
        .split("'shape':")
        .nth(1)
        .and_then(|s| s.split('(').nth(1))
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("no shape in header"))?;
    let shape = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| bad("bad shape")))
        .collect::<Result<Vec<usize>>>()?;
    let data = &bytes[start + header_len..];
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad("shape overflows"))?;
    if count.checked_mul(4) != Some(data.len()) {
        return Err(bad(&format!(
            "shape {shape:?} needs {count} values, the file holds {} bytes",
            data.len()
        )));
    }
    let values: Vec<f32> = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Tensor::from_shape(&shape, &values).map_err(|e| Error::file(path, e))
}
