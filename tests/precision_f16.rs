//! f16 artifacts end to end: written from every fixture depth and source form, about half the
//! weight bytes, loaded by classify/info with PyTorch's answers, the precision chosen reported
//! with its reason; and the f16 graph tract runs on FP16 cores, checked here through tract's
//! emulated f16 arithmetic.

mod common;
use common::*;

use std::path::Path;

use resnet_edge::model::{self, LoadOptions};
use resnet_edge::plan::Plan;
use resnet_edge::precision::Precision;
use resnet_edge::transform::half::write_f16_artifact;
use resnet_edge::transform::rewrite::Rewrites;

/// The model file plus its external-data file, if any.
fn bytes_on_disk(model: &Path) -> u64 {
    let data = model.with_extension("onnx.data");
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    size(model) + size(&data)
}

/// Mean cosine similarity (>= 0.9999) and top-1 agreement of classify's logits with PyTorch's.
fn check_logits(model: &str, depth: usize, extra: &[&str]) {
    let json = fixtures().join(format!("resnet{depth}/logits.json"));
    let rows = logits_vs_reference(model, &json, extra);
    for (photo, got, want) in &rows {
        assert_eq!(
            argmax(got),
            argmax(want),
            "{model} on {photo}: top-1 differs"
        );
    }
    let mean = rows.iter().map(|(_, g, w)| cosine(g, w)).sum::<f64>() / rows.len() as f64;
    assert!(mean >= 0.9999, "{model} {extra:?}: mean cosine {mean}");
}

#[test]
fn f16_artifacts_halve_the_weights_and_keep_the_answers() {
    let dir = tempfile::tempdir().unwrap();
    for depth in DEPTHS {
        // f32 bytes of the weights: the BN-folded parameter count `info` reports.
        let legacy = format!("models/fixtures/resnet{depth}/legacy.onnx");
        let info = run_json(&["info", &legacy, "--format", "json"]);
        let weight_bytes = 4.0 * info["parameters"].as_f64().unwrap();
        for form in ["legacy.onnx", "bn.onnx", "dynamo.onnx"] {
            let source = root().join(format!("models/fixtures/resnet{depth}/{form}"));
            let out = dir.path().join(format!("resnet{depth}-{form}.f16.onnx"));
            let summary = write_f16_artifact(&source, true, &out).unwrap();
            let bytes_in = bytes_on_disk(&source);
            let bytes_out = std::fs::metadata(&out).unwrap().len();
            assert_eq!((summary.bytes_in, summary.bytes_out), (bytes_in, bytes_out));
            assert!(summary.converted > 0);
            // The weights shrink to half; the graph around them (names, exporter metadata: 5% to
            // 30% of these tiny fixtures' files) stays, so compare what was saved.
            let saved = bytes_in as f64 - bytes_out as f64;
            assert!(
                saved >= 0.45 * weight_bytes,
                "resnet{depth} {form}: {bytes_in} -> {bytes_out} bytes saves {saved}, f32 weights {weight_bytes}"
            );
            if form == "legacy.onnx" {
                let structure = bytes_in as f64 - weight_bytes;
                assert!(
                    (bytes_out as f64 - structure) < 0.55 * weight_bytes,
                    "resnet{depth}: {bytes_out} bytes, structure {structure}, weights {weight_bytes}"
                );
            }
            let out = out.to_str().unwrap();
            check_logits(out, depth, &[]);
            if form == "dynamo.onnx" {
                check_logits(out, depth, &["--precision", "f16"]);
            }
        }
    }
}

#[test]
fn info_reports_the_precision_chosen_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r18.f16.onnx");
    write_f16_artifact(
        &root().join("models/fixtures/resnet18/legacy.onnx"),
        true,
        &out,
    )
    .unwrap();
    let out = out.to_str().unwrap();
    let info = run_json(&["info", out, "--precision", "f16", "--format", "json"]);
    assert_eq!(info["weights_precision"], "f16", "{info}");
    assert_eq!(info["precision_requested"], "f16", "{info}");
    let reason = info["precision_reason"].as_str().unwrap();
    if cfg!(target_arch = "x86_64") {
        assert_eq!(info["precision"], "f32", "{info}");
        assert!(
            reason.contains("no FP16 arithmetic tract can use")
                && reason.contains("f16 weights widened to f32 at load"),
            "{reason}"
        );
    }
    let text = run(&["info", out, "--precision", "fp16"]);
    assert!(text.status.success());
    let text = String::from_utf8_lossy(&text.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("precision "))
        .unwrap_or_else(|| panic!("no precision line in\n{text}"));
    assert!(line.contains("(requested f16; "), "{line}");
    // f32 asked of the f16 artifact: widened, whatever the CPU.
    let info = run_json(&["info", out, "--precision", "f32", "--format", "json"]);
    assert_eq!(info["precision"], "f32");
    assert!(info["precision_reason"]
        .as_str()
        .unwrap()
        .contains("widened"));
    // An f32 model on a core without FP16: auto is f32.
    let info = run_json(&[
        "info",
        "models/fixtures/resnet18/legacy.onnx",
        "--format",
        "json",
    ]);
    assert_eq!(info["weights_precision"], "f32");
    assert_eq!(info["precision_requested"], "auto");
    if cfg!(target_arch = "x86_64") {
        assert_eq!(info["precision"], "f32");
    }
    // bench and profile report the same choice.
    for command in ["bench", "profile"] {
        let v = run_json(&[
            command,
            out,
            "--precision",
            "f16",
            "--num-runs",
            "1",
            "--warmup-runs",
            "0",
            "--format",
            "json",
        ]);
        assert!(
            v["precision_reason"]
                .as_str()
                .unwrap()
                .starts_with("requested f16"),
            "{command}: {v}"
        );
        if cfg!(target_arch = "x86_64") {
            assert_eq!(v["precision"], "f32", "{command}");
        }
    }
}

#[test]
fn int8_of_a_float_model_is_a_clear_error() {
    let model = "models/fixtures/resnet18/legacy.onnx";
    let input = "models/fixtures/inputs/chelsea.npy";
    let commands: [&[&str]; 4] = [
        &["classify", model, input, "--precision", "int8"],
        &["info", model, "--precision", "i8"],
        &["bench", model, "--precision", "int8", "--num-runs", "1"],
        &["profile", model, "--precision", "int8", "--num-runs", "1"],
    ];
    for args in commands {
        let out = run(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!(
                "{model}: is a float (f32) model, not an int8 artifact"
            )),
            "{args:?}: {stderr}"
        );
        assert!(
            stderr.contains("resnet-edge quantize MODEL --calib DIR --out FILE"),
            "{stderr}"
        );
        assert!(out.stdout.is_empty());
    }
    let out = run(&["info", model, "--precision", "f64"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown precision \"f64\""));
}

/// torchvision-layout state_dicts are written as ONNX, then f16 (PyTorch's answers are checked
/// in tests/quantize.rs); the article's layout is refused with a clear message.
#[test]
fn state_dict_sources_make_artifacts_except_the_article_layout() {
    let dir = tempfile::tempdir().unwrap();
    let source = root().join("models/fixtures/resnet18/model.safetensors");
    let out = dir.path().join("x.onnx");
    let summary = write_f16_artifact(&source, true, &out).unwrap();
    assert!(summary.converted > 0, "{summary:?}");
    assert_eq!(summary.bytes_in, std::fs::metadata(&source).unwrap().len());
    assert_eq!(summary.bytes_out, std::fs::metadata(&out).unwrap().len());

    let article = root().join("models/fixtures/article/resnet18/model.safetensors");
    let out = dir.path().join("article.onnx");
    let err = write_f16_artifact(&article, true, &out)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("article") && err.contains("torchvision-layout"),
        "{err}"
    );
    assert!(!out.exists());
}

/// What an FP16 core runs: the loaded graph converted to f16 (f32 in and out). Off such cores
/// tract emulates f16 arithmetic, slowly but with the same rounding, so this runs anywhere.
#[test]
fn the_f16_graph_matches_pytorch() {
    for (depth, form) in [(18, "legacy.onnx"), (50, "dynamo.onnx")] {
        let path = root().join(format!("models/fixtures/resnet{depth}/{form}"));
        // The f32 graph as tract sees it: the speed rewrites' ops are f32-only, and `load`
        // converts to f16 before them.
        let options = LoadOptions {
            precision: Precision::F32,
            rewrites: Rewrites::none(),
            ..LoadOptions::default()
        };
        let mut loaded = model::load(&path, &options).unwrap();
        loaded.model = resnet_edge::transform::half::run_in_f16(loaded.model).unwrap();
        let f16_ops = loaded
            .model
            .nodes()
            .iter()
            .filter(|n| {
                n.outputs
                    .iter()
                    .any(|o| o.fact.datum_type == tract_core::prelude::DatumType::F16)
            })
            .count();
        assert!(f16_ops > 10, "{f16_ops} f16 nodes");
        let plan = Plan::new(&loaded, 1).unwrap();
        let reference = read_json(&fixtures().join(format!("resnet{depth}/logits.json")));
        for photo in photos().iter().take(3) {
            let input = resnet_edge::npy::read_f32(
                &root().join(format!("models/fixtures/inputs/{}.npy", stem(photo))),
            )
            .unwrap();
            let got = plan.run(input).unwrap().remove(0);
            let want = floats(&reference[stem(photo)]);
            let c = cosine(&got, &want);
            assert!(
                c > 0.999,
                "resnet{depth} {form} on {}: cosine {c}",
                stem(photo)
            );
            assert_eq!(argmax(&got), argmax(&want));
        }
    }
}
