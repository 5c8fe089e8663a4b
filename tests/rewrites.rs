//! The speed rewrites (`src/transform/rewrite/`): each switched off in turn, and all of them,
//! still matches PyTorch, or numpy's ONNX reference for int8 (the default, all on, is what
//! tests/models.rs and tests/quantize.rs check); they fire on the fixture ResNets and the int8
//! artifact; they leave `info`'s parameter and MAC counts alone; bad names are refused.

mod common;
use common::*;

/// Caps the SIMD level the kernels use (src/transform/rewrite/isa.rs).
const ISA_ENV: &str = "RESNET_EDGE_ISA";

/// The rewrite names and their counts from `info --format json`.
fn applied(info: &serde_json::Value) -> Vec<(String, u64)> {
    info["rewrites"]["applied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| {
            (
                pair[0].as_str().unwrap().to_string(),
                pair[1].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Whether this CPU runs the `direct-conv` kernel (x86-64 with AVX2 and FMA).
fn direct_conv_fires() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[test]
fn each_rewrite_off_still_matches_pytorch() {
    for depth in [18, 50] {
        let model = format!("models/fixtures/resnet{depth}/legacy.onnx");
        let logits = fixtures().join(format!("resnet{depth}/logits.json"));
        for off in [
            "winograd",
            "residual-add",
            "direct-conv",
            "conv-residual",
            "max-pool",
            "all",
        ] {
            check_against_pytorch(&model, &logits, &["--no-rewrite", off]);
        }
        // Where the CPU has AVX-512 the convs run its kernel; this runs them on AVX2's.
        check_against_pytorch_with_env(&model, &logits, &[], Some((ISA_ENV, "avx2")));
    }
}

#[test]
fn rewrites_fire_on_the_fixtures_and_keep_the_network_figures() {
    // 224x224 input: every stride-1 3x3 conv (13 in both), F(4x4,3x3) down to 14x14 maps and
    // F(2x2,3x3) at 7x7; a residual add per block (8 and 16); the stem's max-pool; on AVX2 +
    // FMA every other conv on our kernel (ResNet-18: the stem, three stride-2 3x3s, three
    // projection shortcuts; ResNet-50: 53 convs less the 13 Winograd ones) and the fully
    // connected layer, and the adds after one of them folded into it (ResNet-18's three after
    // a projection shortcut, every one of ResNet-50's, after a 1x1 conv3).
    for (depth, winograd, residual, direct, folded) in [(18, 13, 8, 8, 3), (50, 13, 16, 41, 16)] {
        let model = format!("models/fixtures/resnet{depth}/model.safetensors");
        let on = run_json(&["info", &model, "--format", "json"]);
        let off = run_json(&["info", &model, "--format", "json", "--no-rewrite", "all"]);
        let counts = applied(&on);
        assert!(
            counts.contains(&("winograd".into(), winograd)),
            "resnet{depth}: {counts:?}"
        );
        assert!(
            counts.contains(&("residual-add".into(), residual))
                && counts.contains(&("max-pool".into(), 1)),
            "resnet{depth}: {counts:?}"
        );
        assert!(applied(&off).is_empty());
        let ops = on["ops"].as_object().unwrap();
        let mut adds = residual;
        if direct_conv_fires() {
            assert!(
                counts.contains(&("direct-conv".into(), direct))
                    && counts.contains(&("conv-residual".into(), folded))
                    && ops.contains_key("DirectConv"),
                "resnet{depth}: {counts:?}"
            );
            adds -= folded;
        }
        assert_eq!(
            ops.get("ResidualAddRelu")
                .and_then(|n| n.as_u64())
                .unwrap_or(0),
            adds,
            "resnet{depth}: {ops:?}"
        );
        assert!(
            ops.contains_key("WinogradInput") && ops.contains_key("MaxPool2d"),
            "{ops:?}"
        );
        assert_eq!(on["parameters"], off["parameters"], "resnet{depth}");
        assert_eq!(on["macs_per_image"], off["macs_per_image"], "resnet{depth}");
    }
}

#[test]
fn int8_rewrites_fire_on_the_committed_artifact_and_each_off_matches_numpy() {
    let model = "models/fixtures/digits/resnet18_digits.int8.onnx";
    let on = run_json(&["info", model, "--format", "json"]);
    let off = run_json(&["info", model, "--format", "json", "--no-rewrite", "all"]);
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // Every conv (17, 3 downsamples) and the classifier; every block's join but the last,
        // whose sum goes to the average pool in f32, each in its conv's epilogue; the input's
        // and the pooled features' quantisations; the u8 max-pool.
        let counts = applied(&on);
        assert!(
            counts.contains(&("int8-conv".into(), 21))
                && counts.contains(&("int8-residual".into(), 7))
                && counts.contains(&("int8-quantize".into(), 2))
                && counts.contains(&("max-pool".into(), 1)),
            "{counts:?}"
        );
        let ops = on["ops"].as_object().unwrap();
        assert!(
            ops.contains_key("Int8Conv+Join") && !ops.contains_key("Int8ResidualAdd"),
            "{ops:?}"
        );
    }
    assert_eq!(on["parameters"], off["parameters"]);
    assert_eq!(on["macs_per_image"], off["macs_per_image"]);
    for off in [
        "int8-conv",
        "int8-residual",
        "int8-quantize",
        "max-pool",
        "all",
    ] {
        check_against_quant_reference("resnet18_digits.int8.onnx", 0.02, &["--no-rewrite", off]);
    }
    // Every 3x3 but the stem's runs channels-last by default; this keeps them blocked.
    check_against_quant_reference_with_env(
        "resnet18_digits.int8.onnx",
        0.02,
        &[],
        Some(("RESNET_EDGE_CHANNELS_LAST", "0")),
    );
    // Where the CPU has AVX-512 VNNI the convs multiply with `vpdpbusd`; this keeps AVX2's.
    check_against_quant_reference_with_env(
        "resnet18_digits.int8.onnx",
        0.02,
        &[],
        Some((ISA_ENV, "avx2")),
    );
}

#[test]
fn environment_variable_switches_rewrites_off() {
    let model = "models/fixtures/resnet18/legacy.onnx";
    let out = run_with_env(
        &["info", model, "--format", "json"],
        "RESNET_EDGE_NO_REWRITE",
        "winograd",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<_> = applied(&info).into_iter().map(|(n, _)| n).collect();
    if direct_conv_fires() {
        assert_eq!(
            names,
            ["residual-add", "direct-conv", "conv-residual", "max-pool"]
        );
    } else {
        assert_eq!(names, ["residual-add", "max-pool"]);
    }
}

#[test]
fn unknown_rewrite_names_are_refused() {
    let model = "models/fixtures/resnet18/legacy.onnx";
    let out = run(&["info", model, "--no-rewrite", "winogard"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("unknown rewrite \"winogard\"") && err.contains("residual-add"),
        "{err}"
    );

    let out = run_with_env(&["info", model], "RESNET_EDGE_NO_REWRITE", "fast");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("RESNET_EDGE_NO_REWRITE: unknown rewrite \"fast\""),
        "{err}"
    );
}
