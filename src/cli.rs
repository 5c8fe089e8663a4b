//! The command line: a thin clap layer over the library. Subcommand names, flags and JSON keys
//! are a contract other tools script against; change them only with the README.

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::json;

use resnet_edge::classifier::{Classifier, ClassifierOptions, Prediction, PreprocessOverrides};
use resnet_edge::info::ModelInfo;
use resnet_edge::manifest::OutputKind;
use resnet_edge::model::LoadOptions;
use resnet_edge::preprocess::{load_image, ChannelOrder, ResizeMode};
use resnet_edge::{npy, Error, Result};

#[derive(Parser, Debug)]
#[command(
    name = "resnet-edge",
    version,
    about = "ResNet image classification on small ARM computers"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Shapes, size, cost and the optimised plan of a model.
    Info(InfoArgs),
    /// Classify images (JPEG/PNG, or preprocessed float32 .npy tensors).
    Classify(ClassifyArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Args, Debug)]
pub struct ModelArgs {
    /// A .onnx, .safetensors or .pth (PyTorch zip) model; a .toml manifest beside it is read.
    pub model: PathBuf,
    /// Images per inference run.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Architecture for state_dict weights (resnet18..resnet152), instead of detecting it.
    #[arg(long)]
    pub arch: Option<String>,
    /// Leave ONNX BatchNormalization nodes to tract (to measure what folding buys).
    #[arg(long)]
    pub no_fold_batchnorm: bool,
    #[command(flatten)]
    pub preprocess: PreprocessArgs,
    /// `imagenet1k` or a file with one label per line.
    #[arg(long)]
    pub labels: Option<String>,
    /// What the model outputs: logits (softmax applied) or probabilities.
    #[arg(long, value_parser = ["logits", "probabilities"])]
    pub output: Option<String>,
}

/// Preprocessing flags; each overrides the model manifest, which overrides torchvision's
/// ImageNet defaults (resize 256, crop 224, ImageNet mean/std).
#[derive(Args, Debug)]
pub struct PreprocessArgs {
    #[arg(long)]
    pub resize: Option<u32>,
    #[arg(long, value_parser = ["shorter", "exact"])]
    pub resize_mode: Option<String>,
    #[arg(long)]
    pub crop: Option<u32>,
    /// Pixel (0..255) multiplier applied before mean/std.
    #[arg(long)]
    pub scale: Option<f32>,
    /// Three comma-separated values, in the model's channel order.
    #[arg(long, value_parser = parse_triplet)]
    pub mean: Option<[f32; 3]>,
    #[arg(long, value_parser = parse_triplet)]
    pub std: Option<[f32; 3]>,
    #[arg(long, value_parser = ["rgb", "bgr"])]
    pub channels: Option<String>,
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Args, Debug)]
pub struct ClassifyArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// Include the model's raw output row in the results.
    #[arg(long)]
    pub logits: bool,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Inference threads; 0 = all cores.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

fn parse_triplet(s: &str) -> std::result::Result<[f32; 3], String> {
    let v: Vec<f32> = s
        .split(',')
        .map(|x| x.trim().parse::<f32>().map_err(|e| format!("{x:?}: {e}")))
        .collect::<std::result::Result<_, _>>()?;
    v.try_into()
        .map_err(|v: Vec<f32>| format!("expected 3 comma-separated values, got {}", v.len()))
}

impl ModelArgs {
    fn options(&self, threads: usize) -> ClassifierOptions {
        let p = &self.preprocess;
        ClassifierOptions {
            load: LoadOptions {
                batch: self.batch,
                arch: self.arch.clone(),
                fold_batchnorm: !self.no_fold_batchnorm,
                ..LoadOptions::default()
            },
            threads,
            preprocess: PreprocessOverrides {
                resize: p.resize,
                resize_mode: p.resize_mode.as_deref().map(|m| match m {
                    "exact" => ResizeMode::Exact,
                    _ => ResizeMode::Shorter,
                }),
                crop: p.crop,
                scale: p.scale,
                mean: p.mean,
                std: p.std,
                channels: p.channels.as_deref().map(|c| match c {
                    "bgr" => ChannelOrder::Bgr,
                    _ => ChannelOrder::Rgb,
                }),
            },
            labels: self.labels.clone(),
            output: self.output.as_deref().map(|o| match o {
                "probabilities" => OutputKind::Probabilities,
                _ => OutputKind::Logits,
            }),
        }
    }
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Info(args) => info(args),
        Command::Classify(args) => classify(args),
    }
}

fn info(args: InfoArgs) -> Result<()> {
    let classifier = Classifier::open(&args.model.model, &args.model.options(1))?;
    let info = ModelInfo::new(&classifier.loaded, &classifier.plan)?;
    match args.format {
        Format::Json => println!("{}", to_json(&info)?),
        Format::Text => {
            println!("model           {}", info.model);
            println!(
                "source          {:?}{}",
                info.source,
                info.arch
                    .as_ref()
                    .map(|a| format!(" ({a})"))
                    .unwrap_or_default()
            );
            println!("input           {:?} {:?}", info.input_shape, info.layout);
            println!("output          {:?}", info.output_shape);
            println!("parameters      {}", info.parameters);
            println!("MACs per image  {}", info.macs_per_image);
            println!(
                "batchnorm       {} BN-derived ops left ({} BN nodes in the source, {} folded)",
                info.batchnorm_ops, info.batchnorm_nodes_in_source, info.batchnorm_folded
            );
            println!("optimised plan ops:");
            for (op, count) in &info.ops {
                println!("  {count:>5}  {op}");
            }
        }
    }
    Ok(())
}

fn classify(args: ClassifyArgs) -> Result<()> {
    if args.top_k == 0 {
        return Err(Error::usage("--top-k must be at least 1"));
    }
    let classifier = Classifier::open(&args.model.model, &args.model.options(args.threads))?;
    let (tensors, images): (Vec<&PathBuf>, Vec<&PathBuf>) = args
        .images
        .iter()
        .partition(|p| p.extension().is_some_and(|e| e == "npy"));
    let decoded = images
        .iter()
        .map(|p| load_image(p))
        .collect::<Result<Vec<_>>>()?;
    let mut results: Vec<(&Path, Prediction)> = images
        .iter()
        .map(|p| p.as_path())
        .zip(classifier.classify(&decoded, args.top_k)?)
        .collect();
    let arrays = tensors
        .iter()
        .map(|p| npy::read_f32(p))
        .collect::<Result<Vec<_>>>()?;
    for (path, t) in tensors.iter().zip(&arrays) {
        classifier
            .check_preprocessed(t)
            .map_err(|problem| Error::file(path, problem))?;
    }
    results.extend(
        tensors
            .iter()
            .map(|p| p.as_path())
            .zip(classifier.classify_preprocessed(&arrays, args.top_k)?),
    );
    // Keep the order the user gave.
    results.sort_by_key(|(p, _)| args.images.iter().position(|q| q == p));
    match args.format {
        Format::Json => {
            let rows: Vec<serde_json::Value> = results
                .iter()
                .map(|(path, p)| {
                    let top: Vec<_> = p
                        .top
                        .iter()
                        .map(|&(class, score)| json!({"class": class, "label": classifier.labels.name(class), "score": score}))
                        .collect();
                    let mut row = json!({"image": path.display().to_string(), "top": top});
                    if args.logits {
                        row["logits"] = json!(p.raw);
                    }
                    row
                })
                .collect();
            println!("{}", to_json(&rows)?);
        }
        Format::Text => {
            for (path, p) in &results {
                println!("{}", path.display());
                for (rank, &(class, score)) in p.top.iter().enumerate() {
                    println!(
                        "  {}. {:>5.3}  {class:>4}  {}",
                        rank + 1,
                        score,
                        classifier.labels.name(class)
                    );
                }
                if args.logits {
                    println!("  logits: {:?}", p.raw);
                }
            }
        }
    }
    Ok(())
}

fn to_json(value: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string_pretty(value).map_err(|e| Error::usage(format!("encoding JSON: {e}")))
}
