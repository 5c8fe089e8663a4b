//! The camera loop over `synthetic:640x480` with a full-size ResNet-18 (torchvision layout,
//! seeded random weights written as safetensors: timing does not depend on the values):
//! sustained classified fps, per-stage ms, and what capture + preprocess cost next to
//! inference (the bar: under 15%).
//!
//! `cargo bench --bench camera_loop` (FRAMES=n and THREADS=n to change the run).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use resnet_edge::classifier::{Classifier, ClassifierOptions};
use resnet_edge::frame::{self, SourceOptions};
use resnet_edge::pipeline::{self, Classified, Config, Observer};

/// Writes a torchvision ResNet-18 state_dict with He-scaled random conv weights and identity
/// BatchNorm.
fn write_resnet18(path: &Path) -> std::io::Result<()> {
    let mut tensors: Vec<(String, Vec<usize>)> = Vec::new();
    let bn = |t: &mut Vec<(String, Vec<usize>)>, name: &str, c: usize| {
        for p in ["weight", "bias", "running_mean", "running_var"] {
            t.push((format!("{name}.{p}"), vec![c]));
        }
    };
    tensors.push(("conv1.weight".into(), vec![64, 3, 7, 7]));
    bn(&mut tensors, "bn1", 64);
    let mut inp = 64;
    for (l, out) in [64usize, 128, 256, 512].into_iter().enumerate() {
        for b in 0..2 {
            let p = format!("layer{}.{b}", l + 1);
            let cin = if b == 0 { inp } else { out };
            tensors.push((format!("{p}.conv1.weight"), vec![out, cin, 3, 3]));
            bn(&mut tensors, &format!("{p}.bn1"), out);
            tensors.push((format!("{p}.conv2.weight"), vec![out, out, 3, 3]));
            bn(&mut tensors, &format!("{p}.bn2"), out);
            if b == 0 && l > 0 {
                tensors.push((format!("{p}.downsample.0.weight"), vec![out, cin, 1, 1]));
                bn(&mut tensors, &format!("{p}.downsample.1"), out);
            }
        }
        inp = out;
    }
    tensors.push(("fc.weight".into(), vec![1000, 512]));
    tensors.push(("fc.bias".into(), vec![1000]));

    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut header = BTreeMap::new();
    let mut data: Vec<u8> = Vec::new();
    for (name, shape) in &tensors {
        let n: usize = shape.iter().product();
        let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
        let scale = (6.0 / fan_in as f64).sqrt() as f32;
        let start = data.len();
        for _ in 0..n {
            let v = if name.ends_with("running_var")
                || (name.contains("bn") && name.ends_with("weight"))
            {
                1.0
            } else if name.ends_with("bias") || name.ends_with("running_mean") {
                0.0
            } else {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                ((seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            };
            data.extend_from_slice(&v.to_le_bytes());
        }
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut header = serde_json::to_vec(&header)?;
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&header);
    file.extend_from_slice(&data);
    std::fs::write(path, file)
}

struct Quiet;

impl Observer for Quiet {
    fn classified(&mut self, _: &mut Classified) -> resnet_edge::Result<()> {
        Ok(())
    }
}

fn main() -> resnet_edge::Result<()> {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (frames, threads) = (env("FRAMES", 60), env("THREADS", 0) as usize);
    let dir = std::env::temp_dir().join("resnet-edge-camera-bench");
    std::fs::create_dir_all(&dir).map_err(|e| resnet_edge::Error::file(&dir, e))?;
    let model = dir.join("resnet18.safetensors");
    if !model.exists() {
        write_resnet18(&model).map_err(|e| resnet_edge::Error::file(&model, e))?;
    }
    let classifier = Classifier::open(
        &model,
        &ClassifierOptions {
            threads,
            ..ClassifierOptions::default()
        },
    )?;
    let mut source = frame::open("synthetic:640x480", &SourceOptions::default())?;
    let config = Config {
        max_frames: Some(frames),
        ..Config::default()
    };
    let s = pipeline::run(
        &classifier,
        source.as_mut(),
        &config,
        &mut Quiet,
        &AtomicBool::new(false),
    )?;
    print!("{s}");
    let front = s.capture.mean + s.preprocess.mean;
    println!(
        "capture + preprocess {front:.2} ms = {:.1}% of ResNet-18 inference ({:.2} ms, {} threads); bar: < 15%",
        100.0 * front / s.inference.mean,
        s.inference.mean,
        classifier.plan.threads()
    );
    Ok(())
}
