//! Every depth x every source form against PyTorch's logits (fixtures from
//! `models/make_fixtures.py`), batch 4 against batch 1, and BatchNorm fully folded.

mod common;
use common::*;

fn model_path(depth: usize, form: &str) -> String {
    format!("models/fixtures/resnet{depth}/{form}")
}

fn check(depth: usize, form: &str) {
    let logits = fixtures().join(format!("resnet{depth}/logits.json"));
    check_against_pytorch(&model_path(depth, form), &logits, &[]);
}

macro_rules! depth_tests {
    ($($name:ident: $depth:expr),*) => {$(
        #[test]
        fn $name() {
            for form in FORMS {
                check($depth, form);
            }
        }
    )*};
}

depth_tests!(resnet18_all_forms: 18, resnet34_all_forms: 34, resnet50_all_forms: 50, resnet101_all_forms: 101, resnet152_all_forms: 152);

#[test]
fn batch4_matches_pytorch_batch_and_batch1_runs() {
    let inputs: Vec<String> = input_paths().into_iter().take(4).collect();
    for depth in [18, 50] {
        let reference = read_json(&fixtures().join(format!("resnet{depth}/logits.json")));
        for form in FORMS {
            let model = model_path(depth, form);
            let mut args = vec![
                "classify",
                model.as_str(),
                "--batch",
                "4",
                "--logits",
                "--format",
                "json",
            ];
            args.extend(inputs.iter().map(String::as_str));
            let batched = run_json(&args);
            for (i, input) in inputs.iter().enumerate() {
                let single = run_json(&["classify", &model, input, "--logits", "--format", "json"]);
                let b = floats(&batched[i]["logits"]);
                let s = floats(&single[0]["logits"]);
                assert!(
                    rel_diff(&b, &s) < 1e-5,
                    "{model}: batch-4 row {i} vs batch-1 run"
                );
                let want = floats(&reference["batch4"][i]);
                assert!(
                    rel_diff(&b, &want) < 1e-4,
                    "{model}: batch-4 row {i} vs PyTorch batch 4"
                );
            }
        }
    }
}

#[test]
fn no_batchnorm_ops_left_at_batch_1_and_4() {
    for depth in DEPTHS {
        for form in FORMS {
            for batch in ["1", "4"] {
                let model = model_path(depth, form);
                let info = run_json(&["info", &model, "--batch", batch, "--format", "json"]);
                assert_eq!(info["batchnorm_ops"], 0, "{model} at batch {batch}: {info}");
            }
        }
    }
}

/// The counter can fail: without the project's folding, tract leaves BN ops at batch 4.
#[test]
fn batchnorm_counter_sees_unfolded_bn() {
    let info = run_json(&[
        "info",
        &model_path(50, "bn.onnx"),
        "--batch",
        "4",
        "--no-fold-batchnorm",
        "--format",
        "json",
    ]);
    assert!(info["batchnorm_ops"].as_u64().unwrap() > 0, "{info}");
}

#[test]
fn detects_architecture_from_state_dict_keys() {
    for depth in DEPTHS {
        for form in ["model.safetensors", "model.pth"] {
            let info = run_json(&["info", &model_path(depth, form), "--format", "json"]);
            assert_eq!(info["arch"], format!("resnet{depth}"), "{info}");
        }
    }
}

#[test]
fn end_to_end_image_files_correlate_with_pytorch() {
    for depth in [18, 50] {
        let reference = read_json(&fixtures().join(format!("resnet{depth}/logits.json")));
        for form in ["legacy.onnx", "model.safetensors"] {
            let model = model_path(depth, form);
            let photos = photos();
            let mut args = vec![
                "classify".to_string(),
                model.clone(),
                "--logits".into(),
                "--format".into(),
                "json".into(),
            ];
            args.extend(photos.iter().map(|p| p.display().to_string()));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let rows = run_json(&args);
            for (row, photo) in rows.as_array().unwrap().iter().zip(&photos) {
                let r = pearson(&floats(&row["logits"]), &floats(&reference[stem(photo)]));
                assert!(r >= 0.999, "{model} on {}: correlation {r}", stem(photo));
            }
        }
    }
}
