//! Bad input gives a one-line error naming the file and the problem, a non-zero exit, and never
//! a panic (hostile files come from `models/make_fixtures.py`, under models/fixtures/bad/).

mod common;
use common::*;

/// Run, expect failure, and return the single stderr line.
fn fails(args: &[&str], names: &str, problem: &str) {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{args:?}: not one line: {err}"
    );
    assert!(
        err.contains(names),
        "{args:?}: error does not name {names}: {err}"
    );
    assert!(
        err.to_lowercase().contains(problem),
        "{args:?}: error does not say {problem:?}: {err}"
    );
}

const IMG: &str = "models/photos/chelsea.png";

#[test]
fn missing_model_file() {
    fails(
        &["classify", "models/nope.onnx", IMG],
        "models/nope.onnx",
        "no such",
    );
}

#[test]
fn unknown_model_extension() {
    fails(
        &["info", "models/photos/README.md"],
        "README.md",
        "unknown model format",
    );
}

#[test]
fn truncated_onnx() {
    fails(
        &["info", "models/fixtures/bad/truncated.onnx"],
        "truncated.onnx",
        "onnx",
    );
}

#[test]
fn safetensors_header_lying_about_offsets() {
    fails(
        &["info", "models/fixtures/bad/lying_offsets.safetensors"],
        "lying_offsets.safetensors",
        "offset",
    );
}

#[test]
fn safetensors_claiming_a_huge_shape() {
    fails(
        &["info", "models/fixtures/bad/huge_shape.safetensors"],
        "huge_shape.safetensors",
        "",
    );
}

#[test]
fn pth_with_a_non_tensor_global() {
    fails(
        &["info", "models/fixtures/bad/evil_global.pth"],
        "evil_global.pth",
        "global",
    );
}

#[test]
fn wrong_input_shape() {
    // A 224x224 tensor fed to a model built for 160x160 input.
    fails(
        &[
            "classify",
            "models/fixtures/resnet18/model.safetensors",
            "--crop",
            "160",
            "--resize",
            "182",
            "models/fixtures/inputs/chelsea.npy",
        ],
        "chelsea.npy",
        "shape",
    );
}

#[test]
fn not_an_image() {
    fails(
        &[
            "classify",
            "models/fixtures/resnet18/legacy.onnx",
            "models/fixtures/bad/not_an_image.png",
        ],
        "not_an_image.png",
        "image",
    );
}

#[test]
fn missing_image() {
    fails(
        &[
            "classify",
            "models/fixtures/resnet18/legacy.onnx",
            "models/photos/nope.jpg",
        ],
        "nope.jpg",
        "",
    );
}

#[test]
fn missing_and_unused_keys_are_named() {
    // resnet50 weights read as a resnet18 leave the bottleneck keys unused and miss others.
    fails(
        &[
            "info",
            "models/fixtures/resnet50/model.safetensors",
            "--arch",
            "resnet18",
        ],
        "model.safetensors",
        "unused keys",
    );
}
