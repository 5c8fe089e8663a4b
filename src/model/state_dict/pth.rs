//! `torch.save` checkpoints (`.pth`/`.pt`/`.bin`): a zip holding `<prefix>/data.pkl`, the
//! pickled object, and one `<prefix>/data/<key>` entry of raw little-endian bytes per storage.
//!
//! The pickle goes through our own [`pickle`](super::pickle) reader, so a checkpoint can
//! never run code. Storages are not copied: torch writes them uncompressed, so tensors are
//! read straight from the mapped file; a re-zipped (deflated) checkpoint is decompressed
//! on demand in `to_f32`.

use std::collections::{BTreeMap, HashMap};
use std::io::{Cursor, Read};
use std::path::Path;

use zip::{CompressionMethod, ZipArchive};

use super::pickle::{self, Obj, TensorRef, Unpickled, Value};
use super::{Source, TensorInfo};
use crate::error::{Error, Result};

/// A state_dict's pickle is tens of KB; anything near this is not one.
const MAX_PICKLE: u64 = 64 << 20;
/// Keys under which training checkpoints (timm, torchvision references) nest the weights.
const WRAPPER_KEYS: [&str; 3] = ["state_dict", "model", "state_dict_ema"];

type Archive<'a> = ZipArchive<Cursor<&'a [u8]>>;

/// Open the archive over the mapped file.
pub(super) fn archive<'a>(path: &Path, bytes: &'a [u8]) -> Result<Archive<'a>> {
    ZipArchive::new(Cursor::new(bytes)).map_err(|e| {
        Error::file(
            path,
            format!(
                "not a torch.save zip archive ({e}); the legacy pre-1.6 format is not supported"
            ),
        )
    })
}

/// Parse a mapped torch.save zip into validated tensor descriptions.
pub(super) fn parse(path: &Path, bytes: &[u8]) -> Result<BTreeMap<String, TensorInfo>> {
    let bad = |problem: String| Error::file(path, problem);
    let mut zip = archive(path, bytes)?;

    // The top folder is named after the file torch.save wrote to: accept any name.
    let pkl_name = zip
        .file_names()
        .filter(|name| {
            name.strip_suffix("/data.pkl")
                .is_some_and(|p| !p.contains('/'))
        })
        .min()
        .map(str::to_owned)
        .ok_or_else(|| {
            bad("no <folder>/data.pkl in the zip: not a torch.save checkpoint".into())
        })?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_owned();

    if let Some(order) = read_small(&mut zip, &format!("{prefix}byteorder"), 16) {
        if order != b"little" {
            let order = String::from_utf8_lossy(&order).into_owned();
            return Err(bad(format!(
                "byteorder is {order:?}; only little-endian is supported"
            )));
        }
    }

    let pickle_bytes = {
        let entry = zip
            .by_name(&pkl_name)
            .map_err(|e| bad(format!("{pkl_name}: {e}")))?;
        if entry.size() > MAX_PICKLE {
            return Err(bad(format!(
                "{pkl_name} is {} bytes, too big",
                entry.size()
            )));
        }
        let mut buf = Vec::new();
        entry
            .take(MAX_PICKLE + 1)
            .read_to_end(&mut buf)
            .map_err(|e| bad(format!("cannot read {pkl_name}: {e}")))?;
        if buf.len() as u64 > MAX_PICKLE {
            return Err(bad(format!("{pkl_name} is too big")));
        }
        buf
    };
    let unpickled = pickle::load(&pickle_bytes).map_err(bad)?;

    let tensors = find_tensors(&unpickled).map_err(bad)?;
    let mut storages: HashMap<String, (Source, u64)> = HashMap::new();
    let mut out = BTreeMap::new();
    for (key, tensor) in tensors {
        let storage_key = &*tensor.storage.key;
        if !storages.contains_key(storage_key) {
            let name = format!("{prefix}data/{storage_key}");
            let found = locate(&mut zip, &name, bytes.len())
                .map_err(|problem| bad(format!("tensor {key}: storage {name}: {problem}")))?;
            storages.insert(storage_key.to_owned(), found);
        }
        let Some((source, available)) = storages.get(storage_key) else {
            continue;
        };
        let info = check(tensor, source, *available)
            .map_err(|problem| bad(format!("tensor {key}: {problem}")))?;
        out.insert(key, info);
    }
    Ok(out)
}

/// A tiny entry's content, or `None` if it is absent or larger than `limit`.
fn read_small(zip: &mut Archive<'_>, name: &str, limit: u64) -> Option<Vec<u8>> {
    let entry = zip.by_name(name).ok()?;
    let mut buf = Vec::new();
    entry.take(limit + 1).read_to_end(&mut buf).ok()?;
    (buf.len() as u64 <= limit).then_some(buf)
}

/// Where a storage entry's bytes are, and how many it claims to hold.
fn locate(
    zip: &mut Archive<'_>,
    name: &str,
    file_len: usize,
) -> std::result::Result<(Source, u64), String> {
    let index = zip.index_for_name(name).ok_or("missing from the zip")?;
    let entry = zip.by_index_raw(index).map_err(|e| e.to_string())?;
    if entry.encrypted() {
        return Err("encrypted".into());
    }
    let start = entry.data_start();
    let stored_end = start
        .checked_add(entry.compressed_size())
        .filter(|&end| end <= file_len as u64)
        .ok_or("entry runs past the end of the file")?;
    match entry.compression() {
        CompressionMethod::Stored if entry.size() == entry.compressed_size() => {
            // Within the mapped length, so in usize.
            Ok((
                Source::Mapped(start as usize..stored_end as usize),
                entry.size(),
            ))
        }
        CompressionMethod::Stored => Err("stored entry with inconsistent sizes".into()),
        CompressionMethod::Deflated => Ok((Source::Zipped { index }, entry.size())),
        other => Err(format!("unsupported compression {other}")),
    }
}

/// Unwrap the state_dict from the pickled object and collect its tensors by key.
fn find_tensors(unpickled: &Unpickled) -> std::result::Result<Vec<(String, &TensorRef)>, String> {
    let dict = |value: &Value| match unpickled.obj(value) {
        Some(Obj::Dict(pairs)) => Some(pairs),
        _ => None,
    };
    let mut pairs = dict(&unpickled.root).ok_or("the checkpoint's top object is not a dict")?;
    // A training checkpoint wraps the weights; a depth bound keeps odd files from looping.
    for _ in 0..4 {
        let wrapped = WRAPPER_KEYS.iter().find_map(|wanted| {
            pairs.iter().rev().find_map(|(k, v)| match k {
                Value::Str(k) if &**k == *wanted => dict(v),
                _ => None,
            })
        });
        match wrapped {
            Some(inner) => pairs = inner,
            None => break,
        }
    }

    // Later pickled pairs win, as they do when Python builds the dict.
    let mut raw: BTreeMap<&str, &TensorRef> = BTreeMap::new();
    for (k, v) in pairs {
        if let (Value::Str(k), Some(Obj::Tensor(t))) = (k, unpickled.obj(v)) {
            raw.insert(k, t);
        }
    }
    // DataParallel saves `module.`-prefixed keys; the model wants them bare.
    let mut seen = BTreeMap::new();
    for (k, t) in raw {
        let bare = k.strip_prefix("module.").unwrap_or(k);
        if seen.insert(bare.to_owned(), t).is_some() {
            return Err(format!(
                "key {bare} appears both with and without the module. prefix"
            ));
        }
    }
    Ok(seen.into_iter().collect())
}

/// Check a view against its storage so `to_f32` never reads out of bounds, and bound the
/// element count by the bytes the view spans so a zero-stride view cannot demand a huge
/// allocation.
fn check(
    tensor: &TensorRef,
    source: &Source,
    available: u64,
) -> std::result::Result<TensorInfo, String> {
    let storage = &tensor.storage;
    let dtype = storage.dtype;
    let elem = dtype.size() as u64;
    if storage
        .numel
        .checked_mul(elem)
        .is_none_or(|n| n > available)
    {
        return Err(format!(
            "storage claims {} {dtype} elements but holds {available} bytes",
            storage.numel
        ));
    }

    let mut numel: u64 = 1;
    let mut last: u64 = tensor.offset;
    for (&dim, &stride) in tensor.shape.iter().zip(&tensor.strides) {
        numel = numel.checked_mul(dim).ok_or("shape overflows")?;
        if dim > 1 {
            last = (dim - 1)
                .checked_mul(stride)
                .and_then(|step| last.checked_add(step))
                .ok_or("strides overflow")?;
        }
    }
    let span = if numel == 0 {
        0
    } else {
        if last >= storage.numel {
            return Err(format!(
                "view (offset {}, shape {:?}, strides {:?}) reaches past its {}-element storage",
                tensor.offset, tensor.shape, tensor.strides, storage.numel
            ));
        }
        if numel > last + 1 - tensor.offset {
            return Err("overlapping or broadcast (zero-stride) views are not supported".into());
        }
        (last + 1) * elem
    };
    // Every value is now within the storage, itself within the file: all fit usize.
    let to_usize =
        |v: u64| usize::try_from(v).map_err(|_| "too large for this machine".to_string());
    let shape = tensor
        .shape
        .iter()
        .map(|&d| to_usize(d))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    // A size-1 dimension's stride is never used; zero it so any stride value is harmless.
    let strides = tensor
        .shape
        .iter()
        .zip(&tensor.strides)
        .map(|(&d, &s)| if d > 1 { to_usize(s) } else { Ok(0) })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let offset = if numel > 0 {
        to_usize(tensor.offset)?
    } else {
        0
    };
    let span = to_usize(span)?;
    Ok(TensorInfo {
        dtype,
        shape,
        strides,
        offset,
        span,
        source: source.clone(),
    })
}
