//! ONNX through tract-onnx: torchvision/timm exports (legacy or dynamo, external data included)
//! and any other image classifier with one NCHW or NHWC image input.

use std::path::Path;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::DimLike;
use tract_onnx::tract_hir::infer::Factoid;

use super::{LoadOptions, LoadedModel, SourceKind};
use crate::preprocess::Layout;
use crate::transform::{fold_batchnorm, fold_batchnorm::node_label};
use crate::{Error, Result};

/// An ONNX model read into protobuf form with BatchNorm folded (when asked): what graph
/// transforms (quantisation, precision) rewrite before tract parses it.
pub struct SourceProto {
    pub proto: tract_onnx::pb::ModelProto,
    /// The folder external-data files are resolved against.
    pub dir: Option<String>,
    pub batchnorm_nodes: Vec<String>,
    pub batchnorm_folded: usize,
}

/// tract-onnx configured for this runtime: declared intermediate and output shapes name a
/// symbolic batch ("batch") that would clash with the concrete batch we set; tract infers them
/// all from the input anyway.
pub fn onnx() -> tract_onnx::Onnx {
    tract_onnx::onnx()
        .with_ignore_value_info(true)
        .with_ignore_output_shapes(true)
}

/// Read `path` and fold its BatchNormalization nodes (see [`crate::transform::fold_batchnorm`]).
pub fn read_proto(path: &Path, fold_bn: bool) -> Result<SourceProto> {
    let onnx = onnx();
    let mut proto = onnx
        .proto_model_for_path(path)
        .map_err(|e| Error::file(path, format!("not a readable ONNX model ({e:#})")))?;
    // External-data files are resolved (by tract, confined to it) relative to this folder.
    let dir = path
        .parent()
        .and_then(|d| d.to_str())
        .map(|d| if d.is_empty() { "." } else { d })
        .map(str::to_string);
    let graph = proto
        .graph
        .as_mut()
        .ok_or_else(|| Error::file(path, "ONNX file has no graph"))?;
    let batchnorm_nodes: Vec<String> = graph
        .node
        .iter()
        .filter(|n| n.op_type == "BatchNormalization")
        .map(node_label)
        .collect();
    let batchnorm_folded = if fold_bn {
        fold_batchnorm(graph, &*onnx.provider, dir.as_deref())
            .map_err(|e| Error::file(path, format!("folding BatchNormalization: {e:#}")))?
            .folded
    } else {
        0
    };
    Ok(SourceProto {
        proto,
        dir,
        batchnorm_nodes,
        batchnorm_folded,
    })
}

/// Parse, fold BatchNorm, fix the input shape to `options.batch` images and declutter.
pub fn load(path: &Path, options: &LoadOptions) -> Result<LoadedModel> {
    let source = read_proto(path, options.fold_batchnorm)?;
    load_proto(path, source, options)
}

/// [`load`] for a protobuf already read (and possibly rewritten) by the caller.
pub fn load_proto(path: &Path, source: SourceProto, options: &LoadOptions) -> Result<LoadedModel> {
    let SourceProto {
        mut proto,
        dir,
        batchnorm_nodes,
        batchnorm_folded,
    } = source;
    let onnx = onnx();
    let dir = dir.as_deref();
    // What the file stores decides what can run; f16 artifacts are widened to f32 here, and
    // converted back below only where tract computes in f16.
    let (precision, f16_widened) = match proto.graph.as_mut() {
        Some(graph) => {
            let fp16 = crate::precision::Fp16Support::native();
            let stored = crate::precision::onnx_weights(graph);
            let choice = crate::precision::choose(
                options.precision,
                stored,
                fp16.native,
                &fp16.detail,
                path,
            )?;
            (choice, crate::transform::half::widen_f16(graph))
        }
        None => (crate::precision::PrecisionChoice::f32(), 0),
    };
    if let Some(graph) = proto.graph.as_ref() {
        crate::transform::quantize::validate::check_quantisation(graph)
            .map_err(|problem| Error::file(path, problem))?;
    }
    let parsed = onnx
        .parse(&proto, dir)
        .map_err(|e| Error::file(path, format!("{e:#}")))?;
    if !parsed.unresolved_inputs.is_empty() {
        return Err(Error::file(
            path,
            format!("unresolved graph inputs {:?}", parsed.unresolved_inputs),
        ));
    }
    let mut model = parsed.model;
    if model.inputs.len() != 1 {
        return Err(Error::file(
            path,
            format!(
                "expected one image input, the model has {}",
                model.inputs.len()
            ),
        ));
    }
    let declared = declared_shape(&model, path)?;
    let (layout, shape) =
        image_input_shape(&declared, options).map_err(|problem| Error::file(path, problem))?;
    model
        .set_input_fact(0, f32::fact(&shape).into())
        .map_err(|e| Error::file(path, format!("{e:#}")))?;
    let model = model
        .into_typed()
        .and_then(|mut m| m.declutter().map(|_| m))
        .map_err(|e| Error::file(path, format!("cannot run with input {shape:?}: {e:#}")))?;
    let model = super::in_precision(model, &precision, path)?;
    Ok(LoadedModel {
        path: path.to_path_buf(),
        kind: SourceKind::Onnx,
        model,
        layout,
        input_shape: shape,
        arch: None,
        batchnorm_nodes,
        batchnorm_folded,
        precision,
        f16_widened,
        rewrites: Default::default(),
    })
}

/// The input shape as the file declares it: `None` for symbolic or unknown dimensions.
fn declared_shape(model: &InferenceModel, path: &Path) -> Result<Vec<Option<usize>>> {
    let fact = model
        .input_fact(0)
        .map_err(|e| Error::file(path, format!("{e:#}")))?;
    let Some(rank) = fact.shape.rank().concretize() else {
        return Ok(vec![None; 4]);
    };
    Ok((0..rank.max(0) as usize)
        .map(|ix| {
            fact.shape
                .dim(ix)
                .and_then(|d| d.concretize())
                .and_then(|d| d.to_usize().ok())
        })
        .collect())
}

/// Pick NCHW or NHWC from where the 1 or 3 channels sit, and fill in batch and unknown sizes.
fn image_input_shape(
    declared: &[Option<usize>],
    options: &LoadOptions,
) -> std::result::Result<(Layout, Vec<usize>), String> {
    let &[n, a, b, c] = declared else {
        return Err(format!(
            "input has rank {}, expected an image batch of rank 4",
            declared.len()
        ));
    };
    let is_channels = |d: Option<usize>| matches!(d, Some(1 | 3));
    let (layout, channels, h, w) = if is_channels(a) {
        (Layout::Nchw, a, b, c)
    } else if is_channels(c) {
        (Layout::Nhwc, c, a, b)
    } else {
        return Err(format!(
            "input shape {declared:?} is not an image batch: expected [N, 3, H, W] or [N, H, W, 3]"
        ));
    };
    if let Some(fixed) = n {
        if fixed != options.batch {
            return Err(format!(
                "the model fixes its batch to {fixed}; re-export it with a dynamic batch axis to run {} images at once",
                options.batch
            ));
        }
    }
    let channels = channels.unwrap_or(3);
    let (h, w) = (
        h.unwrap_or(options.image_size),
        w.unwrap_or(options.image_size),
    );
    let shape = match layout {
        Layout::Nchw => vec![options.batch, channels, h, w],
        Layout::Nhwc => vec![options.batch, h, w, channels],
    };
    Ok((layout, shape))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_layout_from_channel_position() {
        let opts = LoadOptions {
            batch: 2,
            ..LoadOptions::default()
        };
        let (l, s) = image_input_shape(&[None, Some(3), None, None], &opts).unwrap();
        assert_eq!((l, s), (Layout::Nchw, vec![2, 3, 224, 224]));
        let (l, s) = image_input_shape(&[None, Some(224), Some(224), Some(3)], &opts).unwrap();
        assert_eq!((l, s), (Layout::Nhwc, vec![2, 224, 224, 3]));
    }

    #[test]
    fn rejects_non_images_and_fixed_batch_mismatch() {
        let opts = LoadOptions {
            batch: 4,
            ..LoadOptions::default()
        };
        assert!(image_input_shape(&[None, Some(10)], &opts).is_err());
        assert!(image_input_shape(&[None, Some(7), Some(7), Some(7)], &opts).is_err());
        let err = image_input_shape(&[Some(1), Some(3), Some(224), Some(224)], &opts).unwrap_err();
        assert!(err.contains("fixes its batch to 1"), "{err}");
    }
}
