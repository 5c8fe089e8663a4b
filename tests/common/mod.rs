//! Shared helpers for the end-to-end tests: run the real binary, read committed fixtures.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const DEPTHS: [usize; 5] = [18, 34, 50, 101, 152];
pub const FORMS: [&str; 5] = [
    "legacy.onnx",
    "bn.onnx",
    "dynamo.onnx",
    "model.safetensors",
    "model.pth",
];

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures() -> PathBuf {
    root().join("models/fixtures")
}

pub fn photos() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("models/photos"))
        .expect("models/photos")
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("png" | "jpg")))
        .collect();
    v.sort();
    v
}

pub fn stem(p: &Path) -> String {
    p.file_stem().unwrap().to_string_lossy().into_owned()
}

/// Run `resnet-edge ARGS` and return its output, whatever the exit status.
pub fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_resnet-edge"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("spawn resnet-edge")
}

/// [`run`] with one environment variable set.
pub fn run_with_env(args: &[&str], key: &str, value: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_resnet-edge"))
        .args(args)
        .env(key, value)
        .current_dir(root())
        .output()
        .expect("spawn resnet-edge")
}

/// Run and parse stdout as JSON, failing the test with stderr when the command fails.
pub fn run_json(args: &[&str]) -> serde_json::Value {
    json_of(args, run(args))
}

/// [`run_json`] with one environment variable set.
pub fn run_json_with_env(args: &[&str], key: &str, value: &str) -> serde_json::Value {
    json_of(args, run_with_env(args, key, value))
}

fn json_of(args: &[&str], out: Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "resnet-edge {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

pub fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

/// max |a - b| / max |b|: the tolerance measure the issues state ("1e-4 relative").
pub fn rel_diff(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "length");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    got.iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

pub fn pearson(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (
        a.iter().map(|&x| x as f64).sum::<f64>() / n,
        b.iter().map(|&x| x as f64).sum::<f64>() / n,
    );
    let (mut num, mut da, mut db) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64 - ma, y as f64 - mb);
        num += x * y;
        da += x * x;
        db += y * y;
    }
    num / (da.sqrt() * db.sqrt())
}

/// The committed torchvision tensors of every bundled photo, in `photos()` order.
pub fn input_paths() -> Vec<String> {
    photos()
        .iter()
        .map(|p| format!("models/fixtures/inputs/{}.npy", stem(p)))
        .collect()
}

/// `classify --logits` of `model` (plus `extra` flags) on every preprocessed photo in one run,
/// each row paired with PyTorch's logits for that photo from `logits_json`: `(photo, got, want)`.
pub fn logits_vs_reference(
    model: &str,
    logits_json: &Path,
    extra: &[&str],
) -> Vec<(String, Vec<f32>, Vec<f32>)> {
    logits_vs_reference_with_env(model, logits_json, extra, None)
}

/// [`logits_vs_reference`] with one environment variable set.
pub fn logits_vs_reference_with_env(
    model: &str,
    logits_json: &Path,
    extra: &[&str],
    env: Option<(&str, &str)>,
) -> Vec<(String, Vec<f32>, Vec<f32>)> {
    let reference = read_json(logits_json);
    let inputs = input_paths();
    let mut args = vec!["classify", model, "--logits", "--format", "json"];
    args.extend(extra);
    args.extend(inputs.iter().map(String::as_str));
    let rows = match env {
        Some((key, value)) => run_json_with_env(&args, key, value),
        None => run_json(&args),
    };
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), inputs.len());
    rows.iter()
        .zip(photos())
        .map(|(row, photo)| {
            let want = floats(&reference[stem(&photo)]);
            (stem(&photo), floats(&row["logits"]), want)
        })
        .collect()
}

/// [`logits_vs_reference`] for fixture ResNet-`depth`, with the mean cosine similarity.
pub fn mean_cosine_vs_pytorch(model: &str, depth: usize, extra: &[&str]) -> f64 {
    let json = fixtures().join(format!("resnet{depth}/logits.json"));
    let rows = logits_vs_reference(model, &json, extra);
    rows.iter()
        .map(|(_, got, want)| cosine(got, want))
        .sum::<f64>()
        / rows.len() as f64
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

pub fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best })
}

/// One model file, all preprocessed photos in one run (plus `extra` flags), each logits row
/// within 1e-4 relative of PyTorch's in `logits_json`.
pub fn check_against_pytorch(model: &str, logits_json: &Path, extra: &[&str]) {
    check_against_pytorch_with_env(model, logits_json, extra, None)
}

/// [`check_against_pytorch`] with one environment variable set.
pub fn check_against_pytorch_with_env(
    model: &str,
    logits_json: &Path,
    extra: &[&str],
    env: Option<(&str, &str)>,
) {
    for (photo, got, want) in logits_vs_reference_with_env(model, logits_json, extra, env) {
        let d = rel_diff(&got, &want);
        assert!(
            d < 1e-4,
            "{model} {extra:?} {env:?} on {photo}: relative diff {d:e}"
        );
    }
}

/// The committed int8 / f16 digits artifact `artifact` (plus `extra` flags) on the test images
/// of models/fixtures/digits/quant_reference.json (numpy's ONNX reference for int8,
/// onnxruntime for f16): logits within `tolerance` relative, same top-1.
pub fn check_against_quant_reference(artifact: &str, tolerance: f32, extra: &[&str]) {
    check_against_quant_reference_with_env(artifact, tolerance, extra, None)
}

/// [`check_against_quant_reference`] with one environment variable set.
pub fn check_against_quant_reference_with_env(
    artifact: &str,
    tolerance: f32,
    extra: &[&str],
    env: Option<(&str, &str)>,
) {
    let digits = fixtures().join("digits");
    let reference = read_json(&digits.join("quant_reference.json"));
    let want = &reference[artifact];
    let files: Vec<String> = want["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            digits
                .join("test")
                .join(f.as_str().unwrap())
                .display()
                .to_string()
        })
        .collect();
    let model = digits.join(artifact);
    let mut args = vec![
        "classify",
        model.to_str().unwrap(),
        "--logits",
        "--format",
        "json",
    ];
    args.extend(extra);
    args.extend(files.iter().map(String::as_str));
    let rows = match env {
        Some((key, value)) => run_json_with_env(&args, key, value),
        None => run_json(&args),
    };
    for (row, logits) in rows
        .as_array()
        .unwrap()
        .iter()
        .zip(want["logits"].as_array().unwrap())
    {
        let (got, want) = (floats(&row["logits"]), floats(logits));
        let d = rel_diff(&got, &want);
        assert!(
            d < tolerance,
            "{artifact} {extra:?} {}: relative diff {d}",
            row["image"]
        );
        assert_eq!(argmax(&got), argmax(&want), "{artifact} {}", row["image"]);
    }
}
