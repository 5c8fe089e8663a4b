//! Model sources: ONNX files and PyTorch/timm `state_dict` weights, each turned into a tract
//! `TypedModel` with a concrete input shape, BatchNorm already folded away.

pub mod onnx;
pub mod resnet;
pub mod state_dict;

use std::path::{Path, PathBuf};

use tract_core::prelude::*;

use crate::precision::{Fp16Support, Precision, PrecisionChoice};
use crate::preprocess::Layout;
use crate::transform::rewrite::{RewriteReport, Rewrites};
use crate::{Error, Result};
use resnet::{ResNetConfig, ResNetLayout};
use state_dict::StateDict;

/// The file formats a model can come in, chosen by extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Onnx,
    Safetensors,
    Pth,
}

impl SourceKind {
    pub fn of(path: &Path) -> Result<SourceKind> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase());
        match ext.as_deref() {
            Some("onnx") => Ok(SourceKind::Onnx),
            Some("safetensors") => Ok(SourceKind::Safetensors),
            Some("pth" | "pt" | "bin") => Ok(SourceKind::Pth),
            _ => Err(Error::file(
                path,
                "unknown model format: expected a .onnx, .safetensors or .pth file",
            )),
        }
    }
}

/// How to load a model (ort-style: plain data, every field has a sensible default).
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Images per run; the input's batch dimension is fixed to it.
    pub batch: usize,
    /// Override the architecture detected from `state_dict` keys (`resnet50`).
    pub arch: Option<String>,
    /// Fold ONNX BatchNormalization nodes into convs (off only to measure tract without it).
    pub fold_batchnorm: bool,
    /// Spatial input size when the source does not fix it (state_dict weights, dynamic ONNX).
    pub image_size: usize,
    /// Override the ResNet key layout detected from `state_dict` keys (torchvision's or the
    /// seed article's).
    pub resnet_layout: Option<ResNetLayout>,
    /// The precision to run in; `Auto` picks per CPU and file (see [`crate::precision`]).
    pub precision: Precision,
    /// Speed rewrites to apply ([`crate::transform::rewrite`]); those named in
    /// `RESNET_EDGE_NO_REWRITE` are switched off on top of this.
    pub rewrites: Rewrites,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            batch: 1,
            arch: None,
            fold_batchnorm: true,
            image_size: 224,
            resnet_layout: None,
            precision: Precision::Auto,
            rewrites: Rewrites::all(),
        }
    }
}

/// A model ready for optimisation: decluttered graph plus what the rest of the runtime needs.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    pub path: PathBuf,
    pub kind: SourceKind,
    pub model: TypedModel,
    /// Input tensor layout, read off the input shape (channels of 1 or 3 in axis 1 or 3).
    pub layout: Layout,
    pub input_shape: Vec<usize>,
    /// The ResNet architecture (with its key layout), for `state_dict` sources.
    pub arch: Option<ResNetConfig>,
    /// Names of BatchNormalization nodes in the source, to count ops derived from them.
    pub batchnorm_nodes: Vec<String>,
    /// How many of those the project folded into convs.
    pub batchnorm_folded: usize,
    /// What was asked, what runs (the graph above is already in that precision) and why.
    pub precision: PrecisionChoice,
    /// f16 weights of an f16 artifact widened to f32 at load.
    pub f16_widened: usize,
    /// The speed rewrites applied to the graph, and where.
    pub rewrites: RewriteReport,
}

/// Load `path` (by extension) into a decluttered tract graph, in the precision chosen, with
/// the speed rewrites of `options.rewrites` (minus `RESNET_EDGE_NO_REWRITE`) applied last.
pub fn load(path: &Path, options: &LoadOptions) -> Result<LoadedModel> {
    if options.batch == 0 {
        return Err(Error::usage("--batch must be at least 1"));
    }
    if !path.is_file() {
        return Err(Error::file(path, "no such model file"));
    }
    let rewrites = options.rewrites.without_env()?;
    let mut loaded = match SourceKind::of(path)? {
        SourceKind::Onnx => onnx::load(path, options)?,
        kind => load_state_dict(path, kind, options)?,
    };
    let (model, report) = crate::transform::rewrite::apply(loaded.model, &rewrites)
        .map_err(|e| Error::file(path, format!("speed rewrites: {e:#}")))?;
    loaded.model = model;
    loaded.rewrites = report;
    Ok(loaded)
}

/// `path` (by extension) as an ONNX protobuf, for graph transforms (int8 quantisation, f16
/// artifacts) that rewrite ONNX: an ONNX file is read with its BatchNorm folded when
/// `options.fold_batchnorm`; `state_dict` weights are written as the ONNX graph of the network
/// the native builder builds ([`resnet::onnx_export`], BatchNorm always folded, torchvision's key
/// layout only), architecture detected or taken from `options.arch`/`options.resnet_layout`.
pub fn source_proto(path: &Path, options: &LoadOptions) -> Result<onnx::SourceProto> {
    if !path.is_file() {
        return Err(Error::file(path, "no such model file"));
    }
    match SourceKind::of(path)? {
        SourceKind::Onnx => onnx::read_proto(path, options.fold_batchnorm),
        SourceKind::Safetensors | SourceKind::Pth => {
            let weights = StateDict::open(path)?;
            let config = state_dict_config(&weights, options)?;
            let exported = resnet::onnx_export::export(&weights, &config)?;
            Ok(onnx::SourceProto {
                proto: exported.proto,
                dir: None,
                batchnorm_nodes: exported.batchnorm,
                batchnorm_folded: exported.batchnorm_folded,
            })
        }
    }
}

/// The architecture of `weights`: detected from the keys, with `options.resnet_layout` and
/// `options.arch` overriding the detected layout and depth.
fn state_dict_config(weights: &StateDict, options: &LoadOptions) -> Result<ResNetConfig> {
    let detected = match options.resnet_layout {
        Some(layout) => ResNetConfig::detect_as(weights, layout)?,
        None => ResNetConfig::detect(weights)?,
    };
    Ok(match &options.arch {
        Some(arch) => {
            ResNetConfig::from_arch(arch, detected.num_classes)?.with_layout(detected.layout)
        }
        None => detected,
    })
}

fn load_state_dict(path: &Path, kind: SourceKind, options: &LoadOptions) -> Result<LoadedModel> {
    let weights = StateDict::open(path)?;
    let config = state_dict_config(&weights, options)?;
    let fp16 = Fp16Support::native();
    let precision = crate::precision::choose(
        options.precision,
        state_dict_weights(&weights),
        fp16.native,
        &fp16.detail,
        path,
    )?;
    let size = options.image_size;
    let built = resnet::build(&weights, &config, options.batch, size, size)?;
    let model = in_precision(built.model, &precision, path)?;
    let input_shape = input_shape(&model, path)?;
    Ok(LoadedModel {
        path: path.to_path_buf(),
        kind,
        model,
        layout: Layout::Nchw,
        input_shape,
        arch: Some(config),
        batchnorm_nodes: built.batchnorm,
        batchnorm_folded: built.batchnorm_folded,
        precision,
        f16_widened: 0,
        rewrites: RewriteReport::default(),
    })
}

/// F16 when every `.weight` tensor is stored as f16 (the builder widens them while reading).
fn state_dict_weights(weights: &StateDict) -> Precision {
    let mut dtypes = weights
        .keys()
        .filter(|k| k.ends_with(".weight"))
        .filter_map(|k| weights.dtype(k))
        .peekable();
    if dtypes.peek().is_some() && dtypes.all(|d| d == state_dict::DType::F16) {
        Precision::F16
    } else {
        Precision::F32
    }
}

/// Convert the decluttered f32 graph to the precision chosen (f16 only changes anything).
pub(crate) fn in_precision(
    model: TypedModel,
    choice: &PrecisionChoice,
    path: &Path,
) -> Result<TypedModel> {
    if choice.run != Precision::F16 {
        return Ok(model);
    }
    crate::transform::half::run_in_f16(model)
        .map_err(|e| Error::file(path, format!("converting to f16: {e:#}")))
}

/// The concrete shape of the model's single input.
pub(crate) fn input_shape(model: &TypedModel, path: &Path) -> Result<Vec<usize>> {
    let fact = model
        .input_fact(0)
        .map_err(|e| Error::tract(path.display(), e))?;
    fact.shape.as_concrete().map(|s| s.to_vec()).ok_or_else(|| {
        Error::file(
            path,
            format!("input shape {:?} is not concrete", fact.shape),
        )
    })
}
