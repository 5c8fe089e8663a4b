//! Read-only access to PyTorch/timm `state_dict` weights, so a ResNet can be built from the
//! checkpoint people actually have (`.safetensors` or `torch.save`'d `.pth`) without Python.
//!
//! The file is memory-mapped and only its header (or pickle) is parsed at open; tensor bytes
//! are converted on demand by [`StateDict::to_f32`], which keeps peak memory near one tensor
//! on small boards. Nothing in a checkpoint is ever executed, and every size it claims is
//! checked against the file before use, so a hostile file gives an error, not a crash.

mod pickle;
mod pth;
mod safetensors;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{AtPath, Error, Result};

/// Element type of a stored tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// The safetensors spelling, also used in messages.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::F64 => "F64",
            DType::I64 => "I64",
            DType::I32 => "I32",
            DType::I16 => "I16",
            DType::I8 => "I8",
            DType::U8 => "U8",
            DType::Bool => "BOOL",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a tensor's storage bytes are.
#[derive(Clone, Debug)]
enum Source {
    /// A byte range of the mapped file (safetensors data, uncompressed zip entries).
    Mapped(Range<usize>),
    /// A deflated zip entry, by index: decompressed when the tensor is read.
    Zipped { index: usize },
}

/// A validated view: `to_f32` can index `span` bytes of the source without re-checking.
#[derive(Clone, Debug)]
struct TensorInfo {
    dtype: DType,
    shape: Vec<usize>,
    /// In elements; row-major for safetensors, whatever torch saved for `.pth`.
    strides: Vec<usize>,
    /// First element, in elements from the start of the storage.
    offset: usize,
    /// Bytes from the start of the storage that the view touches.
    span: usize,
    source: Source,
}

/// The tensors of one weights file, by key (sorted).
pub struct StateDict {
    path: PathBuf,
    map: Mmap,
    tensors: BTreeMap<String, TensorInfo>,
    metadata: BTreeMap<String, String>,
}

impl fmt::Debug for StateDict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateDict")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish_non_exhaustive()
    }
}

impl StateDict {
    /// Open by extension: `.safetensors`, or `.pth`/`.pt`/`.bin` (PyTorch zip format).
    pub fn open(path: &Path) -> Result<StateDict> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let safetensors = match ext.as_deref() {
            Some("safetensors") => true,
            Some("pth" | "pt" | "bin") => false,
            _ => {
                return Err(Error::file(
                    path,
                    "unknown weights extension (expected .safetensors, .pth, .pt or .bin)",
                ))
            }
        };
        let file = File::open(path).at(path)?;
        let len = file.metadata().at(path)?.len();
        if len == 0 {
            return Err(Error::file(path, "empty file"));
        }
        // SAFETY: the map is read-only and private to us; like every mmap reader we rely on
        // the weights file not being truncated while it is open (tract's loaders do the same).
        let map = unsafe { Mmap::map(&file) }.at(path)?;
        let (tensors, metadata) = if safetensors {
            safetensors::parse(path, &map)?
        } else {
            (pth::parse(path, &map)?, BTreeMap::new())
        };
        Ok(StateDict {
            path: path.to_path_buf(),
            map,
            tensors,
            metadata,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor keys in sorted order (`module.` prefixes already stripped for `.pth`).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    pub fn shape(&self, key: &str) -> Option<&[usize]> {
        self.tensors.get(key).map(|t| t.shape.as_slice())
    }

    pub fn dtype(&self, key: &str) -> Option<DType> {
        self.tensors.get(key).map(|t| t.dtype)
    }

    /// The safetensors `__metadata__` map (empty for `.pth`).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The tensor as contiguous row-major f32 (f16/bf16/f64 converted, integers and bools
    /// cast, so e.g. `num_batches_tracked` reads too). Error names file and key.
    pub fn to_f32(&self, key: &str) -> Result<Vec<f32>> {
        let info = self
            .tensors
            .get(key)
            .ok_or_else(|| Error::file(&self.path, format!("no tensor named {key}")))?;
        let bad = |problem: &str| Error::file(&self.path, format!("tensor {key}: {problem}"));
        let bytes = self.storage_bytes(info).map_err(|p| bad(&p))?;
        gather(info, &bytes).ok_or_else(|| bad("view reaches outside its data"))
    }

    /// The first `info.span` bytes of the tensor's storage.
    fn storage_bytes(&self, info: &TensorInfo) -> std::result::Result<Cow<'_, [u8]>, String> {
        match &info.source {
            Source::Mapped(range) => {
                let end = range
                    .start
                    .checked_add(info.span)
                    .filter(|&e| e <= range.end);
                end.and_then(|end| self.map.get(range.start..end))
                    .map(Cow::Borrowed)
                    .ok_or_else(|| "data outside the file".to_string())
            }
            Source::Zipped { index } => {
                let mut zip = pth::archive(&self.path, &self.map).map_err(|e| e.to_string())?;
                let entry = zip.by_index(*index).map_err(|e| e.to_string())?;
                // Grows only as real data is decompressed, whatever the entry claims.
                let mut buf = Vec::new();
                entry
                    .take(info.span as u64)
                    .read_to_end(&mut buf)
                    .map_err(|e| format!("cannot decompress its storage: {e}"))?;
                if buf.len() < info.span {
                    return Err("storage entry is shorter than the tensor".into());
                }
                Ok(Cow::Owned(buf))
            }
        }
    }
}

/// Row-major strides of `shape`, in elements (saturating: only used when numel > 0).
fn row_major_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; shape.len()];
    let mut step = 1usize;
    for (stride, &dim) in strides.iter_mut().zip(shape).rev() {
        *stride = step;
        step = step.saturating_mul(dim);
    }
    strides
}

/// Read the view out of its storage bytes as row-major f32; `None` if it reaches outside.
fn gather(info: &TensorInfo, bytes: &[u8]) -> Option<Vec<f32>> {
    let numel = info
        .shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))?;
    let size = info.dtype.size();
    let mut out = Vec::with_capacity(numel);
    if numel == 0 {
        return Some(out);
    }
    let contiguous = info.strides == row_major_strides(&info.shape)
        || info
            .shape
            .iter()
            .zip(&info.strides)
            .zip(row_major_strides(&info.shape))
            .all(|((&d, &s), r)| d <= 1 || s == r);
    if contiguous {
        let start = info.offset.checked_mul(size)?;
        let end = numel.checked_mul(size)?.checked_add(start)?;
        convert(info.dtype, bytes.get(start..end)?, &mut out);
        return Some(out);
    }
    // Odometer over the output in row-major order; wrapping arithmetic is exact here because
    // every position actually read was validated to lie inside the storage.
    let mut index = vec![0usize; info.shape.len()];
    let mut pos = info.offset;
    for _ in 0..numel {
        let start = pos.checked_mul(size)?;
        convert(
            info.dtype,
            bytes.get(start..start.checked_add(size)?)?,
            &mut out,
        );
        for ((i, &dim), &stride) in index.iter_mut().zip(&info.shape).zip(&info.strides).rev() {
            *i += 1;
            pos = pos.wrapping_add(stride);
            if *i < dim {
                break;
            }
            pos = pos.wrapping_sub(stride.wrapping_mul(dim));
            *i = 0;
        }
    }
    Some(out)
}

/// Append `bytes` (whole little-endian elements of `dtype`) to `out` as f32.
fn convert(dtype: DType, bytes: &[u8], out: &mut Vec<f32>) {
    fn each<const N: usize>(bytes: &[u8], out: &mut Vec<f32>, f: impl Fn([u8; N]) -> f32) {
        out.extend(
            bytes
                .chunks_exact(N)
                .map(|c| f(c.try_into().unwrap_or([0; N]))),
        );
    }
    match dtype {
        DType::F32 => each(bytes, out, f32::from_le_bytes),
        DType::F16 => each(bytes, out, |b| half::f16::from_le_bytes(b).to_f32()),
        DType::BF16 => each(bytes, out, |b| half::bf16::from_le_bytes(b).to_f32()),
        DType::F64 => each(bytes, out, |b| f64::from_le_bytes(b) as f32),
        DType::I64 => each(bytes, out, |b| i64::from_le_bytes(b) as f32),
        DType::I32 => each(bytes, out, |b| i32::from_le_bytes(b) as f32),
        DType::I16 => each(bytes, out, |b| f32::from(i16::from_le_bytes(b))),
        DType::I8 => each(bytes, out, |b| f32::from(i8::from_le_bytes(b))),
        DType::U8 => each(bytes, out, |[b]| f32::from(b)),
        DType::Bool => each(bytes, out, |[b]| if b != 0 { 1.0 } else { 0.0 }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};
    use zip::write::SimpleFileOptions;
    use zip::CompressionMethod;

    fn testdata(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/model/state_dict/testdata")
            .join(name)
    }

    fn open(name: &str) -> StateDict {
        StateDict::open(&testdata(name)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Expected (key, dtype, shape, values), from make_testdata.py (torch is the reference).
    fn expected() -> Vec<(&'static str, DType, Vec<usize>, Vec<f32>)> {
        vec![
            ("bf16", DType::BF16, vec![2, 2], vec![1.0, -3.0, 0.5, 256.0]),
            ("bn.num_batches_tracked", DType::I64, vec![], vec![7.0]),
            (
                "conv.weight",
                DType::F32,
                vec![2, 3],
                vec![-1.0, -0.5, 0.0, 0.5, 1.0, 1.5],
            ),
            (
                "conv.weight_t",
                DType::F32,
                vec![3, 2],
                vec![-1.0, 0.5, -0.5, 1.0, 0.0, 1.5],
            ),
            ("f64", DType::F64, vec![2], vec![0.25, -1e10]),
            ("grid_col", DType::F32, vec![2], vec![6.0, 10.0]),
            (
                "half",
                DType::F16,
                vec![4],
                vec![1.0, -2.5, 0.099_975_586, 65504.0],
            ),
            ("i8", DType::I8, vec![2], vec![-128.0, 5.0]),
            ("mask", DType::Bool, vec![3], vec![1.0, 0.0, 1.0]),
        ]
    }

    fn assert_matches(sd: &StateDict, expected: &[(&str, DType, Vec<usize>, Vec<f32>)]) {
        let keys: Vec<&str> = sd.keys().collect();
        let want: Vec<&str> = expected.iter().map(|e| e.0).collect();
        assert_eq!(keys, want);
        assert_eq!(sd.len(), want.len());
        for (key, dtype, shape, values) in expected {
            assert!(sd.contains(key));
            assert_eq!(sd.dtype(key), Some(*dtype), "{key}");
            assert_eq!(sd.shape(key), Some(shape.as_slice()), "{key}");
            assert_eq!(
                &sd.to_f32(key).unwrap_or_else(|e| panic!("{e}")),
                values,
                "{key}"
            );
        }
    }

    #[test]
    fn reads_torch_save() {
        let sd = open("weights.pth");
        assert_matches(&sd, &expected());
        assert!(sd.metadata().is_empty());
        assert_eq!(sd.path(), testdata("weights.pth"));
    }

    #[test]
    fn reads_safetensors() {
        let sd = open("weights.safetensors");
        assert_matches(&sd, &expected());
        assert_eq!(sd.metadata().get("format").map(String::as_str), Some("pt"));
        assert_eq!(sd.metadata().get("note").map(String::as_str), Some("tiny"));
    }

    #[test]
    fn unwraps_checkpoints() {
        // {"epoch", "arch", "metric", "state_dict": {"module.…": …}} in pickle protocol 4.
        let all = expected();
        let pick = |keys: &[&str]| -> Vec<_> {
            all.iter()
                .filter(|e| keys.contains(&e.0))
                .cloned()
                .collect()
        };
        assert_matches(&open("wrapped_p4.pth"), &pick(&["conv.weight", "half"]));
        // {"model": {"fc.weight": nn.Parameter}}
        let sd = open("param.pth");
        assert_eq!(sd.keys().collect::<Vec<_>>(), ["fc.weight"]);
        assert_eq!(
            sd.to_f32("fc.weight").ok(),
            Some(vec![-1.0, -0.5, 0.0, 0.5, 1.0, 1.5])
        );
    }

    #[test]
    fn missing_key_and_bad_extension() {
        let sd = open("weights.pth");
        let e = sd.to_f32("nope").expect_err("no such key").to_string();
        assert!(e.contains("weights.pth") && e.contains("nope"), "{e}");
        assert_eq!(sd.shape("nope"), None);
        let e = StateDict::open(Path::new("w.onnx"))
            .expect_err("extension")
            .to_string();
        assert!(e.contains("w.onnx"), "{e}");
        let e = StateDict::open(Path::new("/nonexistent/w.pth"))
            .expect_err("missing")
            .to_string();
        assert!(e.contains("/nonexistent/w.pth"), "{e}");
    }

    // ---- hostile and damaged inputs: each must be an Err naming the file, never a panic ----

    struct Scratch(tempfile::TempDir);

    impl Scratch {
        fn new() -> Self {
            Scratch(tempfile::tempdir().unwrap_or_else(|e| panic!("{e}")))
        }

        fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
            let path = self.0.path().join(name);
            std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{e}"));
            path
        }

        /// Open `bytes` saved as `name`; on success read every tensor. Returns the error text.
        fn try_open(&self, name: &str, bytes: &[u8]) -> Option<String> {
            let path = self.write(name, bytes);
            match StateDict::open(&path) {
                Err(e) => {
                    let e = e.to_string();
                    assert!(e.starts_with(&path.display().to_string()), "{e}");
                    Some(e)
                }
                Ok(sd) => {
                    for key in sd.keys() {
                        if let Err(e) = sd.to_f32(key) {
                            let e = e.to_string();
                            assert!(e.contains(name) && e.contains(key), "{e}");
                        }
                    }
                    None
                }
            }
        }

        fn must_fail(&self, name: &str, bytes: &[u8]) -> String {
            self.try_open(name, bytes)
                .unwrap_or_else(|| panic!("{name} opened"))
        }
    }

    fn zip_of(entries: &[(&str, &[u8])], method: CompressionMethod) -> Vec<u8> {
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options = SimpleFileOptions::default().compression_method(method);
        for (name, bytes) in entries {
            zip.start_file(*name, options)
                .unwrap_or_else(|e| panic!("{e}"));
            zip.write_all(bytes).unwrap_or_else(|e| panic!("{e}"));
        }
        zip.finish().unwrap_or_else(|e| panic!("{e}")).into_inner()
    }

    /// The entries of a real torch.save file, to rewrite with changes.
    fn entries_of(name: &str) -> Vec<(String, Vec<u8>)> {
        let bytes = std::fs::read(testdata(name)).unwrap_or_else(|e| panic!("{e}"));
        let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).unwrap_or_else(|e| panic!("{e}"));
        (0..zip.len())
            .map(|i| {
                let mut entry = zip.by_index(i).unwrap_or_else(|e| panic!("{e}"));
                let mut data = Vec::new();
                entry
                    .read_to_end(&mut data)
                    .unwrap_or_else(|e| panic!("{e}"));
                (entry.name().to_owned(), data)
            })
            .collect()
    }

    fn rezip(entries: &[(String, Vec<u8>)], method: CompressionMethod) -> Vec<u8> {
        let refs: Vec<(&str, &[u8])> = entries
            .iter()
            .map(|(n, d)| (n.as_str(), d.as_slice()))
            .collect();
        zip_of(&refs, method)
    }

    #[test]
    fn reads_deflated_and_renamed_zip() {
        // Same checkpoint re-zipped with deflate under another top folder name.
        let entries: Vec<_> = entries_of("weights.pth")
            .into_iter()
            .map(|(n, d)| (n.replacen("weights/", "renamed/", 1), d))
            .collect();
        let scratch = Scratch::new();
        let path = scratch.write(
            "deflated.pth",
            &rezip(&entries, CompressionMethod::Deflated),
        );
        let sd = StateDict::open(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_matches(&sd, &expected());
    }

    #[test]
    fn refuses_code_in_pickle() {
        let scratch = Scratch::new();
        let evil = b"\x80\x02cos\nsystem\nq\x00X\x0a\x00\x00\x00echo pwnedq\x01\x85R.";
        let e = scratch.must_fail(
            "evil.pth",
            &zip_of(&[("evil/data.pkl", evil)], CompressionMethod::Stored),
        );
        assert!(
            e.ends_with(
                "evil.pth: refuses pickle global os.system (only tensors and dicts are allowed)"
            ),
            "{e}"
        );
    }

    #[test]
    fn rejects_damaged_pth() {
        let scratch = Scratch::new();
        let huge_str = b"\x80\x02X\xff\xff\xff\x7f";
        let e = scratch.must_fail(
            "huge.pth",
            &zip_of(&[("a/data.pkl", huge_str)], CompressionMethod::Stored),
        );
        assert!(e.contains("claims a length"), "{e}");

        let e = scratch.must_fail(
            "nopkl.pth",
            &zip_of(&[("a/other.pkl", b".")], CompressionMethod::Stored),
        );
        assert!(e.contains("data.pkl"), "{e}");
        scratch.must_fail("notzip.pth", b"\x80\x02}q\x00.");
        scratch.must_fail(
            "list.pth",
            &zip_of(&[("a/data.pkl", b"\x80\x02].")], CompressionMethod::Stored),
        );

        let real = entries_of("weights.pth");
        let with = |name: &str, data: &[u8]| -> Vec<u8> {
            let mut changed = real.clone();
            for entry in changed.iter_mut().filter(|(n, _)| n == name) {
                entry.1 = data.to_vec();
            }
            rezip(&changed, CompressionMethod::Stored)
        };
        let e = scratch.must_fail("short.pth", &with("weights/data/1", &[0; 4]));
        assert!(
            e.contains("grid_col") && e.contains("storage claims 12"),
            "{e}"
        );
        let e = scratch.must_fail("big_endian.pth", &with("weights/byteorder", b"big"));
        assert!(e.contains("little-endian"), "{e}");
        let missing: Vec<_> = real
            .iter()
            .filter(|(n, _)| n != "weights/data/0")
            .cloned()
            .collect();
        let e = scratch.must_fail("missing.pth", &rezip(&missing, CompressionMethod::Stored));
        assert!(e.contains("weights/data/0"), "{e}");
    }

    #[test]
    fn rejects_view_outside_storage() {
        // conv.weight is (storage '0' of 6 floats, offset 0, size (2, 3), stride (3, 1)):
        // patch the stride 3 (BININT1 3 after BININT1 2, 3 TUPLE2) so the view overruns.
        let mut entries = entries_of("weights.pth");
        let scratch = Scratch::new();
        for (name, data) in entries.iter_mut() {
            if name == "weights/data.pkl" {
                let pattern = b"K\x02K\x03\x86q\tK\x03K\x01\x86";
                let at = data
                    .windows(pattern.len())
                    .position(|w| w == pattern)
                    .unwrap_or(usize::MAX);
                assert_ne!(at, usize::MAX, "pattern not in data.pkl");
                data[at + 8] = 200; // stride (200, 1)
            }
        }
        let e = scratch.must_fail("overrun.pth", &rezip(&entries, CompressionMethod::Stored));
        assert!(
            e.contains("conv.weight") && e.contains("reaches past"),
            "{e}"
        );
    }

    fn safetensors_file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        bytes
    }

    #[test]
    fn rejects_lying_safetensors() {
        let scratch = Scratch::new();
        let data = [0u8; 8];
        let cases = [
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,800]}}"#,
                "outside",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#,
                "outside",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[1000000000],"data_offsets":[0,8]}}"#,
                "needs 4000000000",
            ),
            (
                // Each dim fits a 32-bit usize; the product overflows on 32- and 64-bit alike.
                r#"{"a":{"dtype":"F32","shape":[65536,65536,65536,65536],"data_offsets":[0,8]}}"#,
                "overflows",
            ),
            (
                r#"{"a":{"dtype":"F8_E4M3","shape":[8],"data_offsets":[0,8]}}"#,
                "unsupported dtype F8_E4M3",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#,
                "header entry",
            ),
            (r#"{"__metadata__":{"x":1}}"#, "__metadata__"),
            (r#"[1,2]"#, "not a JSON object"),
        ];
        for (header, want) in cases {
            let e = scratch.must_fail("lie.safetensors", &safetensors_file(header, &data));
            assert!(e.contains(want), "{header}: {e}");
            if header.contains("\"a\"") && !want.contains("header entry") {
                assert!(e.contains("tensor a"), "{e}");
            }
        }
        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        let e = scratch.must_fail("huge.safetensors", &huge);
        assert!(e.contains("header claims"), "{e}");
        let e = scratch.must_fail("tiny.safetensors", b"\x02\x00");
        assert!(e.contains("too short"), "{e}");
        scratch.must_fail("empty.safetensors", b"");

        // A zero-element tensor and an empty header are fine.
        let ok = safetensors_file(
            r#"{"z":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]}}"#,
            &[],
        );
        assert!(scratch.try_open("ok.safetensors", &ok).is_none());
    }

    #[test]
    fn truncated_files_fail() {
        let scratch = Scratch::new();
        for name in ["weights.pth", "weights.safetensors"] {
            let bytes = std::fs::read(testdata(name)).unwrap_or_else(|e| panic!("{e}"));
            for len in 0..bytes.len() {
                let ext = name.rsplit('.').next().unwrap_or_default();
                let e = scratch.try_open(&format!("cut.{ext}"), &bytes[..len]);
                assert!(e.is_some(), "{name} cut to {len} bytes opened");
            }
        }
    }

    #[test]
    fn corrupted_bytes_never_panic() {
        // Deterministic byte flips over the real files and over the pickle alone.
        let scratch = Scratch::new();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let deflated = rezip(&entries_of("weights.pth"), CompressionMethod::Deflated);
        for (name, bytes) in [
            (
                "weights.safetensors",
                std::fs::read(testdata("weights.safetensors")).unwrap_or_default(),
            ),
            (
                "weights.pth",
                std::fs::read(testdata("weights.pth")).unwrap_or_default(),
            ),
            ("deflated.pth", deflated),
        ] {
            assert!(!bytes.is_empty());
            for _ in 0..300 {
                let mut bad = bytes.clone();
                for _ in 0..1 + next() % 4 {
                    let at = (next() % bad.len() as u64) as usize;
                    bad[at] = next() as u8;
                }
                scratch.try_open(name, &bad);
            }
        }
        let real = entries_of("weights.pth");
        for _ in 0..1000 {
            let mut changed = real.clone();
            for (name, data) in changed.iter_mut() {
                if name == "weights/data.pkl" {
                    for _ in 0..1 + next() % 3 {
                        let at = (next() % data.len() as u64) as usize;
                        data[at] = next() as u8;
                    }
                }
            }
            scratch.try_open("flipped.pth", &rezip(&changed, CompressionMethod::Stored));
        }
    }
}
