//! Classification through the library API, without spawning the binary, so the same test runs
//! on ARM under qemu-user (`targets/cross-test.sh -- --test library_classify`) and proves the
//! device build gives PyTorch's logits there too.

use std::path::{Path, PathBuf};

use resnet_edge::classifier::{Classifier, ClassifierOptions};
use resnet_edge::model::LoadOptions;
use resnet_edge::precision::{Fp16Support, Precision};
use resnet_edge::preprocess::load_image;
use resnet_edge::transform::rewrite::{self, Rewrite};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn reference(depth: usize) -> serde_json::Value {
    let path = root().join(format!("models/fixtures/resnet{depth}/logits.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// PyTorch's logits for one photo from a `logits.json`.
fn row(reference: &serde_json::Value, stem: &str) -> Vec<f32> {
    reference[stem]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

fn rel_diff(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

const STEMS: [&str; 3] = ["chelsea", "coffee", "rocket"];

fn check(depth: usize, form: &str, threads: usize) {
    let model = root().join(format!("models/fixtures/resnet{depth}/{form}"));
    // f32 explicitly: `auto` runs f16 on FP16 cores (the pi5 profile), checked below.
    let options = ClassifierOptions {
        threads,
        load: LoadOptions {
            precision: Precision::F32,
            ..LoadOptions::default()
        },
        ..ClassifierOptions::default()
    };
    let classifier = Classifier::open(&model, &options).unwrap();
    // The speed rewrites are on (unless switched off for the whole run): this is the check that
    // they leave the outputs unchanged on each CPU the suite runs on, qemu's ARM ones included.
    if std::env::var_os(rewrite::DISABLE_ENV).is_none() {
        let rewrites = &classifier.loaded.rewrites;
        assert!(
            rewrites.count(Rewrite::Winograd) > 0 && rewrites.count(Rewrite::ResidualAdd) > 0,
            "{}: {rewrites}",
            model.display()
        );
    }
    let reference = reference(depth);
    let inputs: Vec<_> = STEMS
        .iter()
        .map(|s| {
            resnet_edge::npy::read_f32(&root().join(format!("models/fixtures/inputs/{s}.npy")))
                .unwrap()
        })
        .collect();
    let predictions = classifier.classify_preprocessed(&inputs, 3).unwrap();
    for (stem, p) in STEMS.iter().zip(predictions) {
        let want = row(&reference, stem);
        let d = rel_diff(&p.raw, &want);
        assert!(
            d < 1e-4,
            "{} on {stem} ({threads} threads): relative diff {d:e}",
            model.display()
        );
    }
}

#[test]
fn onnx_and_state_dict_match_pytorch() {
    for (depth, form) in [
        (18, "legacy.onnx"),
        (18, "bn.onnx"),
        (50, "dynamo.onnx"),
        (50, "model.safetensors"),
        (34, "model.pth"),
    ] {
        check(depth, form, 1);
    }
    check(18, "model.safetensors", 2);
}

/// Image file to prediction on the device: same top-1 as PyTorch's logits for that photo.
#[test]
fn photo_end_to_end_matches_pytorch_top1() {
    let model = root().join("models/fixtures/resnet50/model.safetensors");
    let classifier = Classifier::open(&model, &ClassifierOptions::default()).unwrap();
    let reference = reference(50);
    let photos: Vec<_> = ["chelsea.png", "coffee.png"]
        .iter()
        .map(|p| root().join("models/photos").join(p))
        .collect();
    let images: Vec<_> = photos
        .iter()
        .map(|p| load_image(Path::new(p)).unwrap())
        .collect();
    for (photo, p) in photos.iter().zip(classifier.classify(&images, 1).unwrap()) {
        let stem = photo.file_stem().unwrap().to_str().unwrap();
        let want = row(&reference, stem);
        let best = want
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        assert_eq!(p.top[0].0, best, "{stem}");
    }
}

/// `auto` runs tract's f16 kernels exactly where the CPU has FP16 arithmetic (the pi5 profile
/// under qemu), f32 elsewhere; either way the answers are PyTorch's, to f16 accuracy.
#[test]
fn auto_precision_follows_the_cpu() {
    let model = root().join("models/fixtures/resnet18/legacy.onnx");
    let classifier = Classifier::open(&model, &ClassifierOptions::default()).unwrap();
    let chosen = &classifier.loaded.precision;
    let fp16 = Fp16Support::native();
    let want_run = if fp16.native {
        Precision::F16
    } else {
        Precision::F32
    };
    assert_eq!(chosen.run, want_run, "{chosen:?} with {fp16:?}");
    let reference = reference(18);
    for stem in STEMS {
        let input =
            resnet_edge::npy::read_f32(&root().join(format!("models/fixtures/inputs/{stem}.npy")))
                .unwrap();
        let p = classifier
            .classify_preprocessed(&[input], 1)
            .unwrap()
            .remove(0);
        let want = row(&reference, stem);
        let d = rel_diff(&p.raw, &want);
        let tolerance = if fp16.native { 2e-2 } else { 1e-4 };
        assert!(
            d < tolerance,
            "{stem} in {}: relative diff {d:e}",
            chosen.run
        );
        let best = |v: &[f32]| (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b });
        assert_eq!(best(&p.raw), best(&want), "{stem}");
    }
}
