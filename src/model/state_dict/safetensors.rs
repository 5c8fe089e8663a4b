//! `.safetensors`: an 8-byte little-endian header length, a JSON header, then raw tensor bytes.
//!
//! Parsed by hand (serde_json) so every claim in the header is checked against the mapped
//! file before it is trusted: the runtime runs on boards where a bogus size must not turn
//! into a huge allocation or an out-of-bounds read.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::{row_major_strides, DType, Source, TensorInfo};
use crate::error::{Error, Result};

/// A header this big is not a weights file (the spec's own limit is 100 MB).
const MAX_HEADER: u64 = 100_000_000;

#[derive(Deserialize)]
struct Entry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

pub(super) type Parsed = (BTreeMap<String, TensorInfo>, BTreeMap<String, String>);

/// Parse and validate the header of a mapped safetensors file.
pub(super) fn parse(path: &Path, bytes: &[u8]) -> Result<Parsed> {
    let bad = |problem: String| Error::file(path, problem);
    let file_len = bytes.len() as u64;
    let Some(len_bytes) = bytes.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
        return Err(bad(format!(
            "only {file_len} bytes, too short for a safetensors file"
        )));
    };
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > file_len - 8 || header_len > MAX_HEADER {
        return Err(bad(format!(
            "safetensors header claims {header_len} bytes but the file has {file_len}"
        )));
    }
    // Both fit in usize: they are within the mapped length.
    let data_start = 8 + header_len as usize;
    let header = bytes.get(8..data_start).unwrap_or_default();
    let data_len = file_len - data_start as u64;

    let json: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(header)
        .map_err(|e| bad(format!("safetensors header is not a JSON object: {e}")))?;

    let mut tensors = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    for (name, value) in json {
        if name == "__metadata__" {
            metadata = serde_json::from_value(value).map_err(|e| {
                bad(format!(
                    "safetensors __metadata__ is not a map of strings: {e}"
                ))
            })?;
            continue;
        }
        let entry: Entry = serde_json::from_value(value)
            .map_err(|e| bad(format!("tensor {name}: bad safetensors header entry: {e}")))?;
        let info = check(&entry, data_start, data_len)
            .map_err(|problem| bad(format!("tensor {name}: {problem}")))?;
        tensors.insert(name, info);
    }
    Ok((tensors, metadata))
}

fn dtype(name: &str) -> Option<DType> {
    Some(match name {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F64" => DType::F64,
        "I64" => DType::I64,
        "I32" => DType::I32,
        "I16" => DType::I16,
        "I8" => DType::I8,
        "U8" => DType::U8,
        "BOOL" => DType::Bool,
        _ => return None,
    })
}

/// Check one entry against the data section and turn it into absolute byte offsets.
fn check(
    entry: &Entry,
    data_start: usize,
    data_len: u64,
) -> std::result::Result<TensorInfo, String> {
    let dtype = dtype(&entry.dtype).ok_or_else(|| format!("unsupported dtype {}", entry.dtype))?;
    let mut shape = Vec::with_capacity(entry.shape.len());
    let mut numel: u64 = 1;
    for &dim in &entry.shape {
        numel = numel
            .checked_mul(dim)
            .ok_or("shape overflows (element count too large)")?;
        shape.push(usize::try_from(dim).map_err(|_| "shape too large for this machine")?);
    }
    let nbytes = numel
        .checked_mul(dtype.size() as u64)
        .ok_or("shape overflows (byte count too large)")?;
    let (begin, end) = entry.data_offsets;
    if begin > end || end > data_len {
        return Err(format!(
            "data_offsets [{begin}, {end}] are outside the {data_len}-byte data section"
        ));
    }
    if end - begin != nbytes {
        return Err(format!(
            "data_offsets [{begin}, {end}] hold {} bytes but shape {:?} of {} needs {nbytes}",
            end - begin,
            entry.shape,
            entry.dtype
        ));
    }
    // In range of the mapped file, so in usize.
    let begin = data_start + begin as usize;
    let end = data_start + end as usize;
    let strides = row_major_strides(&shape);
    let span = end - begin;
    Ok(TensorInfo {
        dtype,
        shape,
        strides,
        offset: 0,
        span,
        source: Source::Mapped(begin..end),
    })
}
