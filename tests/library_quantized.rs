//! The int8 and f16 artifacts through the library API, so the same test runs on ARM under
//! qemu-user (`targets/cross-test.sh -- --test library_quantized`): top-5 and logits as the
//! independent x86 references have them (models/fixtures/digits/quant_reference.json: numpy's
//! ONNX reference implementation for int8, onnxruntime for f16), and quantising itself.

use std::path::PathBuf;

use resnet_edge::classifier::{Classifier, ClassifierOptions};
use resnet_edge::precision::Precision;
use resnet_edge::preprocess::load_image;
use resnet_edge::transform::quantize::{quantize_int8, QuantizeOptions};

fn digits() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/fixtures/digits")
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn top5(v: &[f32]) -> Vec<usize> {
    let mut ix: Vec<usize> = (0..v.len()).collect();
    ix.sort_by(|&a, &b| v[b].total_cmp(&v[a]));
    ix.truncate(5);
    ix
}

/// Logits of `artifact` on the referenced test images, with the precision it ran in.
fn run(artifact: &str, files: &[String]) -> (Vec<Vec<f32>>, Precision) {
    let classifier = Classifier::open(&digits().join(artifact), &ClassifierOptions::default())
        .unwrap_or_else(|e| panic!("{artifact}: {e}"));
    let images: Vec<_> = files
        .iter()
        .map(|f| load_image(&digits().join("test").join(f)).unwrap())
        .collect();
    let rows = classifier.classify(&images, 5).unwrap();
    (
        rows.into_iter().map(|p| p.raw).collect(),
        classifier.loaded.precision.run,
    )
}

#[test]
fn artifacts_give_the_reference_top5_on_this_cpu() {
    let text = std::fs::read_to_string(digits().join("quant_reference.json")).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    for artifact in ["resnet18_digits.int8.onnx", "resnet18_digits.f16.onnx"] {
        let want = &reference[artifact];
        let files: Vec<String> = want["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap().to_string())
            .collect();
        let (got, ran) = run(artifact, &files);
        // int8: rounding of requantisation may differ by one step per layer (measured on x86:
        // 1.2% of the largest logit). f16 widened to f32 is exact f32 maths; f16 kernels (on
        // FP16 cores) round every product to 11 bits.
        let tolerance = match ran {
            Precision::Int8 => 0.03,
            Precision::F16 => 0.02,
            _ => 1e-4,
        };
        for ((file, got), want) in files
            .iter()
            .zip(&got)
            .zip(want["logits"].as_array().unwrap())
        {
            let want = floats(want);
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = got
                .iter()
                .zip(&want)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
                / scale;
            assert!(
                worst < tolerance,
                "{artifact} ({ran:?}) on {file}: relative diff {worst}"
            );
            assert_eq!(top5(got)[0], top5(&want)[0], "{artifact} on {file}: top-1");
            let mut a = top5(got);
            let mut b = top5(&want);
            a.sort();
            b.sort();
            // Classes 4-5 of a confident digit classifier sit near-tied deep in the tail; one
            // swap across the boundary is rounding, not a wrong answer.
            let shared = a.iter().filter(|c| b.contains(c)).count();
            assert!(shared >= 4, "{artifact} on {file}: top-5 {a:?} vs {b:?}");
        }
    }
}

#[test]
fn quantising_on_this_cpu_keeps_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("digits.int8.onnx");
    let test: Vec<PathBuf> = (0..360)
        .step_by(9)
        .filter_map(|i| {
            std::fs::read_dir(digits().join("test"))
                .unwrap()
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{i:03}_")))
                })
        })
        .collect();
    let options = QuantizeOptions {
        eval: test.clone(),
        ..QuantizeOptions::default()
    };
    let report = quantize_int8(
        &digits().join("resnet18_digits.onnx"),
        &[digits().join("calib")],
        &out,
        &options,
    )
    .unwrap();
    assert_eq!(report.eval_images, 40);
    assert!(report.top1_agreement >= 0.975, "{report}");
    assert!(report.mean_cosine >= 0.999, "{report}");
}
