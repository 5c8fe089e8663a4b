//! Checkpoints made with the seed article's own PyTorch classes (`layer0`, `ResBlock`,
//! `ResBottleneckBlock`, `shortcut`), against PyTorch's logits (fixtures from
//! `models/make_article_fixtures.py`), and the checkpoints that must be refused.

mod common;
use common::*;

/// Every depth; 18 and 50 come as safetensors and .pth, the others (width 2) as safetensors.
const MODELS: [(usize, &[&str]); 5] = [
    (18, &["model.safetensors", "model.pth"]),
    (50, &["model.safetensors", "model.pth"]),
    (34, &["model.safetensors"]),
    (101, &["model.safetensors"]),
    (152, &["model.safetensors"]),
];

fn model_path(depth: usize, form: &str) -> String {
    format!("models/fixtures/article/resnet{depth}/{form}")
}

fn check(depth: usize, form: &str, extra: &[&str]) {
    let logits = fixtures().join(format!("article/resnet{depth}/logits.json"));
    check_against_pytorch(&model_path(depth, form), &logits, extra);
}

#[test]
fn every_depth_and_form_matches_pytorch() {
    for (depth, forms) in MODELS {
        for form in forms {
            check(depth, form, &[]);
        }
    }
}

#[test]
fn layout_override_agrees_with_detection() {
    check(50, "model.safetensors", &["--layout", "article"]);
    check(
        18,
        "model.pth",
        &["--arch", "resnet18", "--layout", "article"],
    );
}

#[test]
fn batch4_matches_pytorch_batch() {
    let inputs: Vec<String> = input_paths().into_iter().take(4).collect();
    for depth in [18, 50] {
        let reference = read_json(&fixtures().join(format!("article/resnet{depth}/logits.json")));
        let model = model_path(depth, "model.safetensors");
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
        let rows = run_json(&args);
        for i in 0..4 {
            let d = rel_diff(
                &floats(&rows[i]["logits"]),
                &floats(&reference["batch4"][i]),
            );
            assert!(d < 1e-4, "{model}: batch-4 row {i}: relative diff {d:e}");
        }
    }
}

#[test]
fn info_names_the_layout() {
    for (depth, forms) in MODELS {
        for form in forms {
            let model = model_path(depth, form);
            let info = run_json(&["info", &model, "--format", "json"]);
            assert_eq!(info["arch"], format!("resnet{depth}"), "{info}");
            assert_eq!(info["resnet_layout"], "article", "{info}");
        }
    }
    let info = run_json(&[
        "info",
        "models/fixtures/resnet18/model.safetensors",
        "--format",
        "json",
    ]);
    assert_eq!(info["resnet_layout"], "torchvision", "{info}");
    let info = run_json(&[
        "info",
        "models/fixtures/resnet18/legacy.onnx",
        "--format",
        "json",
    ]);
    assert!(info["resnet_layout"].is_null(), "{info}");
    let out = run(&["info", &model_path(18, "model.safetensors")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("resnet18, article layout"),
        "{text}"
    );
}

/// The stem BN follows the max-pool: it folds into the conv only when no scale is negative.
/// ResNet-18's fixture has negative stem scales (kept, and counted), the others do not.
#[test]
fn stem_batchnorm_folds_only_when_it_commutes_with_max_pool() {
    for batch in ["1", "4"] {
        let info = run_json(&[
            "info",
            &model_path(18, "model.safetensors"),
            "--batch",
            batch,
            "--format",
            "json",
        ]);
        assert!(info["batchnorm_ops"].as_u64().unwrap() > 0, "{info}");
        assert_eq!(info["batchnorm_nodes_in_source"], 20, "{info}");
        assert_eq!(info["batchnorm_folded"], 19, "{info}");
        let info = run_json(&[
            "info",
            &model_path(50, "model.safetensors"),
            "--batch",
            batch,
            "--format",
            "json",
        ]);
        assert_eq!(info["batchnorm_ops"], 0, "{info}");
        assert_eq!(
            info["batchnorm_nodes_in_source"], info["batchnorm_folded"],
            "{info}"
        );
    }
}

fn error_of(args: &[&str]) -> String {
    let out = run(args);
    assert!(!out.status.success(), "resnet-edge {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn mixed_layouts_are_rejected_naming_the_keys() {
    let model = "models/fixtures/article/bad/mixed_layouts.pth";
    let err = error_of(&["info", model]);
    assert!(err.contains("mixes two ResNet layouts"), "{err}");
    for key in [
        "conv1.weight",
        "bn1.running_var",
        "layer2.0.downsample.0.weight",
        "layer3.0.shortcut.0.weight",
    ] {
        assert!(err.contains(key), "{key} not named in: {err}");
    }
    // Forcing either layout names what does not fit it.
    let err = error_of(&["info", model, "--layout", "article"]);
    assert!(
        err.contains("missing keys") && err.contains("layer0.0.weight"),
        "{err}"
    );
    assert!(
        err.contains("unused keys") && err.contains("conv1.weight"),
        "{err}"
    );
    let err = error_of(&["info", model, "--layout", "torchvision"]);
    assert!(
        err.contains("unused keys") && err.contains("layer1.0.conv1.bias"),
        "{err}"
    );
}

#[test]
fn wrong_shapes_are_rejected_naming_every_key() {
    let err = error_of(&[
        "info",
        "models/fixtures/article/bad/wrong_shapes.safetensors",
    ]);
    assert!(err.contains("wrong shapes"), "{err}");
    for (key, shape) in [
        (
            "layer1.0.conv1.weight",
            "[1, 1, 5, 5] (expected [1, 1, 3, 3])",
        ),
        (
            "layer2.0.shortcut.0.weight",
            "[2, 1, 3, 3] (expected [2, 1, 1, 1])",
        ),
        ("layer3.1.bn2.running_var", "[3] (expected [4])"),
    ] {
        assert!(
            err.contains(&format!("{key} {shape}")),
            "{key} not named in: {err}"
        );
    }
}

#[test]
fn layout_flag_on_the_wrong_checkpoint_names_the_keys() {
    let err = error_of(&[
        "info",
        &model_path(18, "model.safetensors"),
        "--layout",
        "torchvision",
    ]);
    assert!(
        err.contains("missing keys") && err.contains("conv1.weight"),
        "{err}"
    );
    assert!(err.contains("layer0.0.weight"), "{err}");
    let err = error_of(&[
        "info",
        "models/fixtures/resnet18/model.safetensors",
        "--layout",
        "article",
    ]);
    assert!(
        err.contains("missing keys") && err.contains("layer0.0.weight"),
        "{err}"
    );
    let err = error_of(&[
        "info",
        "models/fixtures/resnet18/model.safetensors",
        "--layout",
        "vgg",
    ]);
    assert!(err.contains("vgg"), "{err}");
}
