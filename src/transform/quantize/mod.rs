//! Post-training int8 quantisation: calibrate activation ranges on images, rewrite the graph into
//! ONNX integer operators (see [`qlinear`]), write it as a deployable `.onnx` artifact, and
//! report how far it is from the float model on held-out images.
//!
//! The artifact is plain QLinear ONNX rather than a tract NNEF archive: every loader in the
//! runtime reads it directly, tract maps `QLinearConv`/`MatMulInteger` onto its integer matmul
//! kernels, and onnxruntime or Netron open the same file, so it can be checked independently.

pub mod calibrate;
pub mod qlinear;
pub mod report;
pub mod validate;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use image::RgbImage;
use tract_core::prelude::*;
use tract_onnx::pb::{type_proto, ModelProto, StringStringEntryProto, TypeProto, ValueInfoProto};

pub use calibrate::Method;
pub use report::QuantReport;

use crate::classifier::{Classifier, ClassifierOptions};
use crate::model::onnx::{self as onnx_source, SourceProto};
use crate::model::LoadOptions;
use crate::plan::Plan;
use crate::precision::Precision;
use crate::preprocess::load_image;
use crate::{Error, Result};
use calibrate::Observer;
use qlinear::{Analysis, QParams};

/// How to quantise (ort-style plain data with defaults).
#[derive(Clone, Debug)]
pub struct QuantizeOptions {
    pub method: Method,
    /// For [`Method::Percentile`]: the share of values, in percent, kept inside the range.
    pub percentile: f64,
    /// Convs / FC layers (node names, `*` globs) to leave in float.
    pub keep_f32: Vec<String>,
    /// Residual adds read the float block outputs instead of their uint8 copies: a little
    /// more accuracy, a slower join (four bytes per element read and written, not one).
    pub float_residuals: bool,
    /// Images to compare the artifact with the float model on. Empty: every fifth calibration
    /// image is held out of calibration for it.
    pub eval: Vec<PathBuf>,
    /// Load, preprocessing and thread settings, as for `classify`.
    pub classifier: ClassifierOptions,
    /// Print progress to stderr.
    pub progress: bool,
}

impl Default for QuantizeOptions {
    fn default() -> Self {
        QuantizeOptions {
            method: Method::Percentile,
            // 99.99: keeps all but the rarest outliers of a 224x224 feature map (a few values
            // per image), the usual default of percentile calibration (TensorRT, onnxruntime).
            percentile: 99.99,
            keep_f32: vec![],
            float_residuals: false,
            eval: vec![],
            classifier: ClassifierOptions::default(),
            progress: false,
        }
    }
}

/// Quantise `model` to int8 over the calibration images `calib` (files or folders), write the
/// artifact to `out` (with the model's manifest beside it) and report on it.
pub fn quantize_int8(
    model: &Path,
    calib: &[PathBuf],
    out: &Path,
    options: &QuantizeOptions,
) -> Result<QuantReport> {
    // Calibrate and compare against f32 even where `auto` would pick f16 (FP16 boards).
    let mut float_options = options.classifier.clone();
    float_options.load.precision = Precision::F32;
    // The ONNX graph to rewrite: the file itself, or a state_dict written as ONNX (read first,
    // so a checkpoint that cannot be written as ONNX fails before anything is built).
    let mut source = crate::model::source_proto(model, &float_options.load)?;
    // Weights and biases must be initializers to quantise (even with BN folding off).
    if let Some(graph) = source.proto.graph.as_mut() {
        crate::transform::fold_batchnorm::bypass_constant_identities(graph);
    }
    let float = Classifier::open(model, &float_options)?;
    let graph = source
        .proto
        .graph
        .as_ref()
        .ok_or_else(|| Error::file(model, "ONNX file has no graph"))?;
    let keep = |name: &str| {
        options
            .keep_f32
            .iter()
            .any(|p| crate::device::glob_match(p, name))
    };
    let analysis = qlinear::analyse(graph, &keep);
    let graph_inputs: Vec<String> = graph.input.iter().map(|i| i.name.clone()).collect();
    if analysis.ops.is_empty() {
        return Err(Error::file(
            model,
            "no convolution or fully connected layer with constant weights to quantise",
        ));
    }

    // Split calibration and evaluation images, and decode them once.
    let files = crate::frame::image_files(calib)?;
    let (calib_files, eval_files, held_out) = if !options.eval.is_empty() {
        (files, crate::frame::image_files(&options.eval)?, true)
    } else if files.len() >= 5 {
        let (eval, calib): (Vec<_>, Vec<_>) =
            files.into_iter().enumerate().partition(|(i, _)| i % 5 == 4);
        let strip = |v: Vec<(usize, PathBuf)>| v.into_iter().map(|(_, p)| p).collect();
        (strip(calib), strip(eval), true)
    } else {
        (files.clone(), files, false)
    };
    let calib_inputs = preprocess_all(&float, &calib_files, "calibration")?;
    let eval_inputs = preprocess_all(&float, &eval_files, "evaluation")?;

    // Calibrate on the float graph with every observed tensor as an extra output.
    let probe = with_outputs(&source, &analysis.observed);
    let load = LoadOptions {
        batch: 1,
        image_size: float.preprocess.crop as usize,
        ..float_options.load.clone()
    };
    let float_probe = load_plan(model, probe, &load, options.classifier.threads)?;
    let mut observers: Vec<Observer> = vec![Observer::default(); analysis.observed.len()];
    let passes = if options.method == Method::MinMax {
        1
    } else {
        2
    };
    for pass in 0..passes {
        for (ix, input) in calib_inputs.iter().enumerate() {
            if options.progress && (ix % 10 == 0 || ix + 1 == calib_inputs.len()) {
                eprint!(
                    "\rcalibrating: pass {}/{passes}, image {}/{}   ",
                    pass + 1,
                    ix + 1,
                    calib_inputs.len()
                );
            }
            let outputs = run_all(&float_probe, input.clone())?;
            let values = crate::plan::f32_slice(input).map_err(|e| Error::tract("input", e))?;
            let observed = observed_values(&graph_inputs, &analysis.observed, values, &outputs);
            for (obs, values) in observers.iter_mut().zip(observed) {
                if pass == 0 {
                    obs.observe_range(values);
                } else {
                    obs.observe_histogram(values);
                }
            }
        }
    }
    if options.progress {
        eprintln!();
    }
    let params: HashMap<String, QParams> = analysis
        .observed
        .iter()
        .zip(&observers)
        .map(|(name, obs)| {
            let (lo, hi) = obs.clip_range(options.method, options.percentile);
            let (scale, zero_point) = calibrate::u8_params(lo, hi);
            (name.clone(), QParams { scale, zero_point })
        })
        .collect();

    // Write the artifact, then a probed twin to measure per-layer error.
    let mut artifact = rewritten(&source, &analysis, &params, options, false)
        .map_err(|e| Error::file(model, format!("quantising: {e:#}")))?;
    add_metadata(&mut artifact, model, options, calib_inputs.len());
    let bytes = prost::Message::encode_to_vec(&artifact);
    std::fs::write(out, &bytes).map_err(|e| Error::file(out, e))?;
    copy_manifest(model, out)?;

    let probed = rewritten(&source, &analysis, &params, options, true)
        .map_err(|e| Error::file(model, format!("quantising: {e:#}")))?;
    let probed = SourceProto {
        proto: probed,
        dir: source.dir.clone(),
        batchnorm_nodes: vec![],
        batchnorm_folded: 0,
    };
    let int8_load = LoadOptions {
        precision: Precision::Int8,
        ..load.clone()
    };
    let quant_probe = load_plan(out, probed, &int8_load, options.classifier.threads)?;
    let mut report = report::Accumulator::new(&analysis);
    for input in &eval_inputs {
        let f = run_all(&float_probe, input.clone())?;
        let q = run_all(&quant_probe, input.clone())?;
        let values = crate::plan::f32_slice(input).map_err(|e| Error::tract("input", e))?;
        let observed = observed_values(&graph_inputs, &analysis.observed, values, &f);
        report.add(&analysis, &f[0], &observed, &q);
    }
    Ok(report.finish(report::Summary {
        model: model.to_path_buf(),
        artifact: out.to_path_buf(),
        method: options.method,
        calibration_images: calib_inputs.len(),
        eval_images: eval_inputs.len(),
        held_out,
        float_weight_bytes: report::weight_bytes(&source.proto, true),
        int8_weight_bytes: report::weight_bytes(&artifact, false),
        artifact_bytes: bytes.len() as u64,
        kept_f32: analysis.kept_f32.clone(),
        quantised_layers: analysis.ops.len(),
    }))
}

fn decode_all(files: &[PathBuf]) -> Vec<(PathBuf, RgbImage)> {
    files
        .iter()
        .filter_map(|p| match load_image(p) {
            Ok(img) => Some((p.clone(), img)),
            Err(e) => {
                eprintln!("warning: skipping {e}");
                None
            }
        })
        .collect()
}

/// Decode and preprocess `files` for `float`'s input; unreadable files are skipped with a
/// warning, none readable is an error.
fn preprocess_all(float: &Classifier, files: &[PathBuf], what: &str) -> Result<Vec<Tensor>> {
    let shape = float.plan.input_shape().to_vec();
    let per_image: usize = shape.iter().skip(1).product();
    let mut one = shape.clone();
    one[0] = 1;
    let mut tensors = vec![];
    for (path, img) in decode_all(files) {
        let mut data = vec![0f32; per_image];
        float
            .preprocess
            .apply_into(&img, &mut data)
            .map_err(|e| Error::file(&path, e))?;
        tensors.push(Tensor::from_shape(&one, &data).map_err(|e| Error::tract(path.display(), e))?);
    }
    if tensors.is_empty() {
        return Err(Error::usage(format!(
            "no readable {what} image among {} file(s)",
            files.len()
        )));
    }
    Ok(tensors)
}

/// `source` with `names` added as float graph outputs (graph inputs excepted: declaring one as
/// an output too would blur its declared shape; [`observed_values`] takes them from the input).
fn with_outputs(source: &SourceProto, names: &[String]) -> SourceProto {
    let mut proto = source.proto.clone();
    if let Some(g) = proto.graph.as_mut() {
        let inputs: Vec<String> = g.input.iter().map(|i| i.name.clone()).collect();
        for name in names.iter().filter(|n| !inputs.contains(n)) {
            g.output.push(ValueInfoProto {
                name: name.clone(),
                r#type: Some(TypeProto {
                    value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                        elem_type: tract_onnx::pb::tensor_proto::DataType::Float as i32,
                        shape: None,
                    })),
                    ..TypeProto::default()
                }),
                ..ValueInfoProto::default()
            });
        }
    }
    SourceProto {
        proto,
        dir: source.dir.clone(),
        batchnorm_nodes: vec![],
        batchnorm_folded: 0,
    }
}

fn rewritten(
    source: &SourceProto,
    analysis: &Analysis,
    params: &HashMap<String, QParams>,
    options: &QuantizeOptions,
    probes: bool,
) -> anyhow::Result<ModelProto> {
    let mut proto = source.proto.clone();
    let onnx = onnx_source::onnx();
    let read = qlinear::f32_reader(&*onnx.provider, source.dir.as_deref());
    let graph = proto
        .graph
        .as_mut()
        .ok_or_else(|| anyhow::anyhow!("no graph"))?;
    qlinear::rewrite(
        graph,
        &qlinear::Rewrite {
            analysis,
            params,
            read: &read,
            probes,
            float_residuals: options.float_residuals,
        },
    )?;
    for opset in proto.opset_import.iter_mut() {
        if opset.domain.is_empty() || opset.domain == "ai.onnx" {
            opset.version = opset.version.max(qlinear::MIN_OPSET);
        }
    }
    Ok(proto)
}

fn add_metadata(proto: &mut ModelProto, model: &Path, options: &QuantizeOptions, images: usize) {
    let mut set = |key: &str, value: String| {
        proto.metadata_props.retain(|p| p.key != key);
        proto.metadata_props.push(StringStringEntryProto {
            key: key.into(),
            value,
        });
    };
    set("resnet-edge.precision", "int8".into());
    set("resnet-edge.calibration", options.method.to_string());
    let residuals = if options.float_residuals {
        "float"
    } else {
        "uint8"
    };
    set("resnet-edge.residuals", residuals.into());
    set("resnet-edge.calibration_images", images.to_string());
    set(
        "resnet-edge.source",
        model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    proto.producer_name = "resnet-edge".into();
    proto.producer_version = env!("CARGO_PKG_VERSION").into();
}

/// Copy the model's manifest (and a labels file it names) beside the artifact, so the artifact
/// classifies with the same preprocessing and labels.
pub fn copy_manifest(model: &Path, out: &Path) -> Result<()> {
    let Some(manifest) = crate::manifest::Manifest::beside(model)? else {
        return Ok(());
    };
    let (Some(from), to) = (manifest.path.clone(), out.with_extension("toml")) else {
        return Ok(());
    };
    if from == to {
        return Ok(());
    }
    std::fs::copy(&from, &to).map_err(|e| Error::file(&to, e))?;
    let out_dir = out.parent().unwrap_or(Path::new("."));
    if let (Some(labels), Some(dir)) = (manifest.model.labels.as_deref(), manifest.dir()) {
        let src = dir.join(labels);
        let dst = out_dir.join(labels);
        if src.is_file() && !dst.exists() {
            std::fs::copy(&src, &dst).map_err(|e| Error::file(&dst, e))?;
        }
    }
    Ok(())
}

fn load_plan(path: &Path, source: SourceProto, load: &LoadOptions, threads: usize) -> Result<Plan> {
    let loaded = onnx_source::load_proto(path, source, load)?;
    Plan::new(&loaded, threads)
}

/// The values of each of `names` for one run of a [`with_outputs`] plan: the graph input
/// itself, or the next extra output.
fn observed_values<'a>(
    graph_inputs: &[String],
    names: &[String],
    input: &'a [f32],
    outputs: &'a [Vec<f32>],
) -> Vec<&'a [f32]> {
    let mut extra = outputs.iter().skip(1);
    names
        .iter()
        .map(|n| {
            if graph_inputs.contains(n) {
                input
            } else {
                extra.next().map(Vec::as_slice).unwrap_or(&[])
            }
        })
        .collect()
}

/// Every output of one run, as f32 values.
fn run_all(plan: &Plan, input: Tensor) -> Result<Vec<Vec<f32>>> {
    let outputs = plan
        .runnable()
        .run(tvec!(input.into()))
        .map_err(|e| Error::tract("inference", e))?;
    outputs.iter().map(crate::plan::f32_values).collect()
}
