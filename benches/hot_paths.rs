//! Criterion benchmarks of the per-frame hot paths: image decode, preprocessing (resize, crop,
//! normalise into the input tensor) and one inference per ResNet depth on the committed fixture
//! models (reduced width, so the numbers track runtime overhead as much as matmul speed; use
//! `resnet-edge bench` on a full-size model for end-to-end latency).
//!
//! Run with `cargo bench --bench hot_paths` (add `-- decode` etc. to pick a group).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

use resnet_edge::bench::{MeasureOptions, Session};
use resnet_edge::model::LoadOptions;
use resnet_edge::precision::Precision;
use resnet_edge::preprocess::{load_image, Preprocess};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for photo in ["china.jpg", "rocket.jpg", "chelsea.png"] {
        let path = root().join("models/photos").join(photo);
        group.bench_function(photo, |b| b.iter(|| load_image(black_box(&path)).unwrap()));
    }
    group.finish();
}

fn preprocess(c: &mut Criterion) {
    let image = load_image(&root().join("models/photos/china.jpg")).unwrap();
    let p = Preprocess::default();
    let mut out = vec![0f32; p.input_shape(1).iter().product()];
    c.bench_function("preprocess/torchvision_224", |b| {
        b.iter(|| p.apply_into(black_box(&image), &mut out).unwrap())
    });
}

fn inference(c: &mut Criterion) {
    let mut group = c.benchmark_group("inference");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(3));
    for depth in [18, 34, 50, 101, 152] {
        let model = root().join(format!("models/fixtures/resnet{depth}/legacy.onnx"));
        let options = MeasureOptions {
            load: LoadOptions::default(),
            threads: 1,
            precision: Precision::F32,
            ..MeasureOptions::default()
        };
        let mut session = Session::open(&model, &options).unwrap();
        group.bench_with_input(
            BenchmarkId::new("fixture_1thread", format!("resnet{depth}")),
            &depth,
            |b, _| b.iter(|| session.run().unwrap()),
        );
    }
    group.finish();
}

criterion_group!(benches, decode, preprocess, inference);
criterion_main!(benches);
