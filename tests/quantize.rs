//! `quantize` end to end: int8 and f16 artifacts against PyTorch's float logits and the ONNX
//! reference implementation's integer arithmetic (models/make_quant_refs.py), and bad input.

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn digits() -> PathBuf {
    fixtures().join("digits")
}

fn quantize(model: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let (model, out) = (model.to_str().unwrap(), out.to_str().unwrap());
    let mut args = vec!["quantize", model, "--out", out, "--format", "json"];
    args.extend(extra);
    run_json(&args)
}

/// Top-1 accuracy (percent) of `model` on the 360 held-out digits; the label is the digit after
/// the underscore in each file name.
fn digits_accuracy(model: &Path) -> f64 {
    let test = digits().join("test");
    let rows = run_json(&[
        "classify",
        model.to_str().unwrap(),
        test.to_str().unwrap(),
        "--top-k",
        "1",
        "--format",
        "json",
    ]);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 360);
    let correct = rows
        .iter()
        .filter(|r| {
            let image = r["image"].as_str().unwrap();
            let label = image.rsplit('_').next().unwrap().trim_end_matches(".png");
            r["top"][0]["label"].as_str() == Some(label)
        })
        .count();
    100.0 * correct as f64 / rows.len() as f64
}

#[test]
fn digits_int8_within_one_point_and_f16_within_a_fifth_of_f32() {
    let reference = read_json(&digits().join("reference.json"));
    let model = digits().join("resnet18_digits.onnx");
    // Its downsample BNs read their statistics through Identity nodes; they fold too.
    let info = run_json(&["info", model.to_str().unwrap(), "--format", "json"]);
    assert_eq!(info["batchnorm_ops"], 0, "{info}");
    let f32_accuracy = digits_accuracy(&model);
    let torch = reference["accuracy_torch"].as_f64().unwrap();
    assert!(
        (f32_accuracy - torch).abs() < 1e-9,
        "f32 accuracy {f32_accuracy} differs from PyTorch's {torch}"
    );

    let dir = tempfile::tempdir().unwrap();
    let int8 = dir.path().join("digits.int8.onnx");
    let calib = digits().join("calib");
    let eval = digits().join("test");
    let report = quantize(
        &model,
        &int8,
        &[
            "--calib",
            calib.to_str().unwrap(),
            "--eval",
            eval.to_str().unwrap(),
        ],
    );
    assert_eq!(report["eval_images"], 360);
    assert_eq!(report["held_out"], true);
    assert!(report["weight_ratio"].as_f64().unwrap() <= 0.3, "{report}");
    assert_eq!(report["worst_layers"].as_array().unwrap().len(), 5);
    let int8_accuracy = digits_accuracy(&int8);
    assert!(
        f32_accuracy - int8_accuracy <= 1.0,
        "int8 {int8_accuracy}% vs f32 {f32_accuracy}%"
    );

    let f16 = dir.path().join("digits.f16.onnx");
    quantize(&model, &f16, &["--precision", "f16"]);
    let f16_accuracy = digits_accuracy(&f16);
    assert!(
        (f32_accuracy - f16_accuracy).abs() <= 0.2,
        "f16 {f16_accuracy}% vs f32 {f32_accuracy}%"
    );
}

#[test]
fn fixture_resnets_int8_keep_logit_cosine_above_0_99_for_every_method() {
    let dir = tempfile::tempdir().unwrap();
    let photo_dir = root().join("models/photos");
    let methods = ["minmax", "percentile", "mse", "percentile", "mse"];
    for (depth, method) in [18, 34, 50, 101, 152].into_iter().zip(methods) {
        let model = fixtures().join(format!("resnet{depth}/legacy.onnx"));
        let out = dir.path().join(format!("resnet{depth}.int8.onnx"));
        quantize(
            &model,
            &out,
            &["--calib", photo_dir.to_str().unwrap(), "--method", method],
        );
        let mean = mean_cosine_vs_pytorch(out.to_str().unwrap(), depth, &[]);
        assert!(mean >= 0.99, "resnet{depth} ({method}): mean cosine {mean}");
        // The figures the README quotes.
        eprintln!("resnet{depth} int8 ({method}): mean logit cosine {mean:.5}");
    }
}

/// The committed artifacts (written by `quantize`) run by tract against numpy's ONNX reference
/// implementation (int8) and onnxruntime (f16), from models/make_quant_refs.py.
#[test]
fn committed_artifacts_match_independent_runtimes() {
    check_against_quant_reference("resnet18_digits.int8.onnx", 0.02, &[]);
    check_against_quant_reference("resnet18_digits.f16.onnx", 1e-4, &[]);
}

#[test]
fn bad_calibration_sets_and_artifacts_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = digits().join("resnet18_digits.onnx");
    // No readable image.
    let junk = dir.path().join("junk");
    std::fs::create_dir(&junk).unwrap();
    std::fs::write(junk.join("a.png"), b"not a png").unwrap();
    let out = dir.path().join("x.onnx");
    let o = run(&[
        "quantize",
        model.to_str().unwrap(),
        "--calib",
        junk.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("no readable calibration image"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // A truncated artifact.
    let good = std::fs::read(digits().join("resnet18_digits.int8.onnx")).unwrap();
    let cut = dir.path().join("cut.onnx");
    std::fs::write(&cut, &good[..good.len() / 2]).unwrap();
    let o = run(&["info", cut.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("cut.onnx"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // Quantisation parameters out of range: a negative scale, a zero point of the wrong type.
    use prost::Message;
    use tract_onnx::pb::{tensor_proto::DataType, ModelProto};
    for (what, edit) in [("scale", DataType::Float), ("zero point", DataType::Int32)] {
        let mut proto = ModelProto::decode(good.as_slice()).unwrap();
        let graph = proto.graph.as_mut().unwrap();
        let q = graph
            .node
            .iter()
            .find(|n| n.op_type == "QLinearConv")
            .unwrap();
        let target = if edit == DataType::Float {
            q.input[1].clone()
        } else {
            q.input[2].clone()
        };
        let t = graph
            .initializer
            .iter_mut()
            .find(|t| t.name == target)
            .unwrap();
        if edit == DataType::Float {
            t.raw_data = (-1f32).to_le_bytes().to_vec();
        } else {
            t.data_type = DataType::Int32 as i32;
            t.raw_data = 300i32.to_le_bytes().to_vec();
        }
        let bad = dir.path().join("bad.onnx");
        std::fs::write(&bad, proto.encode_to_vec()).unwrap();
        let o = run(&["info", bad.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("bad.onnx") && err.contains(what),
            "{what}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// state_dict checkpoints (torchvision layout) quantise like ONNX files: written as ONNX first
/// (BatchNorm folded), then int8 or f16. The article's layout is a clear error.
#[test]
fn state_dict_sources_quantise_to_int8_and_f16() {
    let dir = tempfile::tempdir().unwrap();
    let photo_dir = root().join("models/photos");

    let model = fixtures().join("resnet50/model.safetensors");
    let int8 = dir.path().join("x.int8.onnx");
    let report = quantize(&model, &int8, &["--calib", photo_dir.to_str().unwrap()]);
    assert!(report["quantised_layers"].as_u64().unwrap() > 0, "{report}");
    let info = run_json(&["info", int8.to_str().unwrap(), "--format", "json"]);
    assert_eq!(info["precision"], "int8", "{info}");
    let mean = mean_cosine_vs_pytorch(int8.to_str().unwrap(), 50, &[]);
    assert!(
        mean >= 0.99,
        "resnet50 safetensors int8: mean cosine {mean}"
    );

    let model = fixtures().join("resnet101/model.pth");
    let f16 = dir.path().join("x.f16.onnx");
    quantize(&model, &f16, &["--precision", "f16"]);
    let info = run_json(&["info", f16.to_str().unwrap(), "--format", "json"]);
    assert_eq!(info["weights_precision"], "f16", "{info}");
    let mean = mean_cosine_vs_pytorch(f16.to_str().unwrap(), 101, &[]);
    assert!(mean >= 0.9999, "resnet101 pth f16: mean cosine {mean}");

    let article = fixtures().join("article/resnet18/model.safetensors");
    for extra in [
        &["--calib", photo_dir.to_str().unwrap()][..],
        &["--precision", "f16"][..],
    ] {
        let out = dir.path().join("article.onnx");
        let mut args = vec![
            "quantize",
            article.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        let o = run(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{extra:?}: {err}");
        assert!(
            err.contains("article") && err.contains("torchvision-layout"),
            "{extra:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(!out.exists(), "{extra:?} wrote {}", out.display());
    }
}

/// `--keep-f32` leaves the named layer float: the report names it and the artifact still
/// holds one float `Conv`, the rest `QLinearConv`.
#[test]
fn keep_f32_leaves_the_named_conv_in_float() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixtures().join("resnet18/legacy.onnx");
    let out = dir.path().join("kept.int8.onnx");
    let photo_dir = root().join("models/photos");
    let report = quantize(
        &model,
        &out,
        &[
            "--calib",
            photo_dir.to_str().unwrap(),
            "--keep-f32",
            "/conv1/*",
        ],
    );
    assert_eq!(report["kept_f32"], serde_json::json!(["/conv1/Conv"]));
    use prost::Message;
    let bytes = std::fs::read(&out).unwrap();
    let proto = tract_onnx::pb::ModelProto::decode(bytes.as_slice()).unwrap();
    let ops: Vec<&str> = proto
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .map(|n| n.op_type.as_str())
        .collect();
    assert_eq!(ops.iter().filter(|o| **o == "Conv").count(), 1);
    assert_eq!(ops.iter().filter(|o| **o == "QLinearConv").count(), 19);
    let mean = mean_cosine_vs_pytorch(out.to_str().unwrap(), 18, &[]);
    assert!(mean >= 0.99, "mean cosine {mean}");
}
