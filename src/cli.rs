//! The command line: a thin clap layer over the library. Subcommand names, flags and JSON keys
//! are a contract other tools script against; change them only with the README.

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::json;

use resnet_edge::classifier::{Classifier, ClassifierOptions, Prediction, PreprocessOverrides};
use resnet_edge::info::ModelInfo;
use resnet_edge::manifest::OutputKind;
use resnet_edge::model::resnet::ResNetLayout;
use resnet_edge::model::LoadOptions;
use resnet_edge::preprocess::{load_image, ChannelOrder, ResizeMode};
use resnet_edge::profile::Statistic;
use resnet_edge::transform::rewrite::Rewrites;
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
    /// Time a model: load, first inference, then min/mean/std/percentiles over timed runs.
    Bench(BenchArgs),
    /// Time every node of a model, summed per ResNet stage, per op kind and per layer.
    Profile(ProfileArgs),
    /// Classify camera frames (or a folder, recording or test pattern) continuously, with an
    /// overlay, a results log and a summary on exit.
    Camera(CameraArgs),
    /// What this device is and how tract will run on it: CPU, NEON/FP16/dot-product, kernel
    /// family, threads, and warnings (e.g. f16 on a core without FP16 arithmetic).
    Doctor(DoctorArgs),
    /// Post-training quantisation: calibrate on images and write an int8 artifact (QLinear
    /// ONNX), or write an f16 artifact; reports accuracy against the f32 model.
    Quantize(QuantizeArgs),
}

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// The precision you intend to run, to be warned if this CPU handles it badly.
    #[arg(long)]
    pub precision: Option<resnet_edge::precision::Precision>,
    /// Threads you intend to use; 0 = all cores.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
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
    /// Key layout of state_dict weights: torchvision's, or the seed article's own classes
    /// (`layer0`, `shortcut`), instead of detecting it.
    #[arg(long, value_parser = ["article", "torchvision"])]
    pub layout: Option<String>,
    /// Leave ONNX BatchNormalization nodes to tract (to measure what folding buys).
    #[arg(long)]
    pub no_fold_batchnorm: bool,
    /// Switch speed rewrites off to measure them: `winograd`, `residual-add`, `direct-conv`,
    /// `conv-residual`, `int8-conv`, `int8-residual`, `int8-quantize`, `max-pool`
    /// (comma-separated) or `all`.
    /// RESNET_EDGE_NO_REWRITE does the same.
    #[arg(long = "no-rewrite", value_name = "NAMES", default_value = "", hide_default_value = true, value_parser = parse_no_rewrite)]
    pub rewrites: Rewrites,
    /// f32, f16, int8 or auto: f16 runs in f16 only on cores with FP16 arithmetic (else f32,
    /// weights widened); int8 needs an int8 artifact; auto picks per CPU and file.
    #[arg(long, default_value = "auto", value_parser = parse_precision)]
    pub precision: resnet_edge::precision::Precision,
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
    /// Images (JPEG/PNG), folders of them, or preprocessed float32 .npy tensors.
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

impl PreprocessArgs {
    fn overrides(&self) -> PreprocessOverrides {
        PreprocessOverrides {
            resize: self.resize,
            resize_mode: self.resize_mode.as_deref().map(|m| match m {
                "exact" => ResizeMode::Exact,
                _ => ResizeMode::Shorter,
            }),
            crop: self.crop,
            scale: self.scale,
            mean: self.mean,
            std: self.std,
            channels: self.channels.as_deref().map(|c| match c {
                "bgr" => ChannelOrder::Bgr,
                _ => ChannelOrder::Rgb,
            }),
        }
    }
}

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// The float model: an ONNX file, or torchvision-layout state_dict weights (.safetensors,
    /// .pth; written as ONNX first). A manifest beside it gives the preprocessing.
    pub model: PathBuf,
    /// Calibration images: files or folders of JPEG/PNG (int8 only).
    #[arg(long, num_args = 1..)]
    pub calib: Vec<PathBuf>,
    /// Where to write the artifact (.onnx); the model's manifest is copied beside it.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value = "int8", value_parser = ["int8", "f16"])]
    pub precision: String,
    /// How activation ranges are chosen from calibration.
    #[arg(long, default_value = "percentile")]
    pub method: resnet_edge::transform::quantize::Method,
    /// For `--method percentile`: percent of values kept inside the range.
    #[arg(long, default_value_t = 99.99)]
    pub percentile: f64,
    /// Images to compare with the float model; default: every fifth calibration image, held
    /// out of calibration.
    #[arg(long, num_args = 1..)]
    pub eval: Vec<PathBuf>,
    /// Leave these convs / FC layers (node names, `*` globs) in f32.
    #[arg(long)]
    pub keep_f32: Vec<String>,
    /// Residual adds read the float block outputs, not their uint8 copies (slower joins,
    /// slightly closer to f32).
    #[arg(long)]
    pub float_residuals: bool,
    /// Leave ONNX BatchNormalization nodes unfolded (they then stay float).
    #[arg(long)]
    pub no_fold_batchnorm: bool,
    #[command(flatten)]
    pub preprocess: PreprocessArgs,
    /// Threads for the calibration runs; 0 = all cores.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

fn quantize(args: QuantizeArgs) -> Result<()> {
    use resnet_edge::transform::quantize::{quantize_int8, QuantizeOptions};
    if args.precision == "f16" {
        return quantize_f16(&args);
    }
    if args.calib.is_empty() {
        return Err(Error::usage(
            "int8 needs calibration images: --calib DIR_OR_FILES",
        ));
    }
    let options = QuantizeOptions {
        method: args.method,
        percentile: args.percentile,
        keep_f32: args.keep_f32.clone(),
        float_residuals: args.float_residuals,
        eval: args.eval.clone(),
        classifier: ClassifierOptions {
            load: LoadOptions {
                fold_batchnorm: !args.no_fold_batchnorm,
                ..LoadOptions::default()
            },
            threads: args.threads,
            preprocess: args.preprocess.overrides(),
            ..ClassifierOptions::default()
        },
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let report = quantize_int8(&args.model, &args.calib, &args.out, &options)?;
    match args.format {
        Format::Json => println!("{}", to_json(&report)?),
        Format::Text => println!("{report}"),
    }
    Ok(())
}

fn quantize_f16(args: &QuantizeArgs) -> Result<()> {
    let summary = resnet_edge::transform::half::write_f16_artifact(
        &args.model,
        !args.no_fold_batchnorm,
        &args.out,
    )?;
    resnet_edge::transform::quantize::copy_manifest(&args.model, &args.out)?;
    match args.format {
        Format::Json => println!("{}", to_json(&summary)?),
        Format::Text => println!(
            "{} -> {} (f16): {} weights stored as f16, {:.2} MB -> {:.2} MB",
            args.model.display(),
            args.out.display(),
            summary.converted,
            summary.bytes_in as f64 / 1e6,
            summary.bytes_out as f64 / 1e6
        ),
    }
    Ok(())
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
        ClassifierOptions {
            load: LoadOptions {
                batch: self.batch,
                arch: self.arch.clone(),
                fold_batchnorm: !self.no_fold_batchnorm,
                rewrites: self.rewrites.clone(),
                precision: self.precision,
                resnet_layout: self.layout.as_deref().map(|l| match l {
                    "article" => ResNetLayout::Article,
                    _ => ResNetLayout::Torchvision,
                }),
                ..LoadOptions::default()
            },
            threads,
            preprocess: self.preprocess.overrides(),
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
        Command::Bench(args) => bench(args),
        Command::Profile(args) => profile(args),
        Command::Camera(args) => camera(args),
        Command::Doctor(args) => doctor(args),
        Command::Quantize(args) => quantize(args),
    }
}

fn doctor(args: DoctorArgs) -> Result<()> {
    use resnet_edge::device;
    let request = device::Request {
        precision: args.precision,
        threads: Some(args.threads),
    };
    let report = device::report_for(&request);
    match args.format {
        Format::Json => println!("{}", to_json(&report)?),
        Format::Text => print!("{report}"),
    }
    Ok(())
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
                    .zip(info.resnet_layout)
                    .map(|(a, l)| format!(" ({a}, {l} layout)"))
                    .unwrap_or_default()
            );
            println!("input           {:?} {:?}", info.input_shape, info.layout);
            println!(
                "precision       {} ({})",
                info.precision, info.precision_reason
            );
            println!("rewrites        {}", info.rewrites);
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
    // Folders stand for their JPEG/PNG files, in name order.
    let inputs: Vec<PathBuf> = args
        .images
        .iter()
        .map(|p| {
            if p.is_dir() {
                resnet_edge::frame::image_files(std::slice::from_ref(p))
            } else {
                Ok(vec![p.clone()])
            }
        })
        .collect::<Result<Vec<_>>>()?
        .concat();
    let (tensors, images): (Vec<&PathBuf>, Vec<&PathBuf>) = inputs
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
    results.sort_by_key(|(p, _)| inputs.iter().position(|q| q == p));
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

/// Flags shared by `bench` and `profile`, named as TFLite's `benchmark_model` names them.
#[derive(Args, Debug)]
pub struct MeasureArgs {
    /// A .onnx, .safetensors or .pth (PyTorch zip) model.
    pub model: PathBuf,
    /// f32, f16, int8 or auto: f16 runs in f16 only on cores with FP16 arithmetic (else f32,
    /// weights widened); int8 needs an int8 artifact; auto picks per CPU and file.
    #[arg(long, default_value = "auto", value_parser = parse_precision)]
    pub precision: resnet_edge::precision::Precision,
    /// Inference threads; 0 = all cores.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true, value_parser = parse_threads)]
    pub threads: usize,
    /// Images per inference run.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Untimed runs after the first inference.
    #[arg(long, default_value_t = 5, allow_hyphen_values = true, value_parser = parse_count)]
    pub warmup_runs: usize,
    /// Timed runs.
    #[arg(long, default_value_t = 50, allow_hyphen_values = true, value_parser = parse_count)]
    pub num_runs: usize,
    /// Stop the timed runs after this many seconds (at least one run is made).
    #[arg(long, allow_hyphen_values = true)]
    pub max_secs: Option<f64>,
    /// Architecture for state_dict weights (resnet18..resnet152), instead of detecting it.
    #[arg(long)]
    pub arch: Option<String>,
    /// Leave ONNX BatchNormalization nodes to tract (to measure what folding buys).
    #[arg(long)]
    pub no_fold_batchnorm: bool,
    /// Switch speed rewrites off to measure them: `winograd`, `residual-add`, `direct-conv`,
    /// `conv-residual`, `int8-conv`, `int8-residual`, `int8-quantize`, `max-pool`
    /// (comma-separated) or `all`.
    /// RESNET_EDGE_NO_REWRITE does the same.
    #[arg(long = "no-rewrite", value_name = "NAMES", default_value = "", hide_default_value = true, value_parser = parse_no_rewrite)]
    pub rewrites: Rewrites,
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub format: ReportFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ReportFormat {
    Table,
    Json,
    Csv,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub measure: MeasureArgs,
}

#[derive(Args, Debug)]
pub struct ProfileArgs {
    #[command(flatten)]
    pub measure: MeasureArgs,
    /// Layers listed in the table format (JSON and CSV list them all).
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Each node's time over the runs: its mean, or its fastest run (steadier on a noisy
    /// machine; what benches/ort_node_profile.py reports for onnxruntime).
    #[arg(long, default_value = "mean", value_parser = str::parse::<Statistic>)]
    pub statistic: Statistic,
}

fn parse_precision(s: &str) -> std::result::Result<resnet_edge::precision::Precision, String> {
    s.parse().map_err(|e: Error| e.to_string())
}

/// `--no-rewrite NAMES`: every rewrite but those named.
fn parse_no_rewrite(s: &str) -> std::result::Result<Rewrites, String> {
    Rewrites::all().without(s)
}

fn parse_threads(s: &str) -> std::result::Result<usize, String> {
    s.trim()
        .parse::<usize>()
        .map_err(|_| format!("expected 0 (all cores) or a positive number of threads, got {s:?}"))
}

fn parse_count(s: &str) -> std::result::Result<usize, String> {
    s.trim()
        .parse::<usize>()
        .map_err(|_| format!("expected a whole number of runs, got {s:?}"))
}

impl MeasureArgs {
    fn options(&self) -> resnet_edge::bench::MeasureOptions {
        resnet_edge::bench::MeasureOptions {
            load: LoadOptions {
                batch: self.batch,
                arch: self.arch.clone(),
                fold_batchnorm: !self.no_fold_batchnorm,
                rewrites: self.rewrites.clone(),
                ..LoadOptions::default()
            },
            threads: self.threads,
            precision: self.precision,
            warmup_runs: self.warmup_runs,
            num_runs: self.num_runs,
            max_secs: self.max_secs,
        }
    }
}

fn bench(args: BenchArgs) -> Result<()> {
    let m = &args.measure;
    let report = resnet_edge::bench::bench(&m.model, &m.options())?;
    match m.format {
        ReportFormat::Table => print!("{}", report.table()),
        ReportFormat::Json => println!("{}", to_json(&report)?),
        ReportFormat::Csv => print!("{}", report.csv()),
    }
    Ok(())
}

fn profile(args: ProfileArgs) -> Result<()> {
    let m = &args.measure;
    let report = resnet_edge::profile::profile(&m.model, &m.options(), args.statistic)?;
    match m.format {
        ReportFormat::Table => print!("{}", report.table(args.top)),
        ReportFormat::Json => println!("{}", to_json(&report)?),
        ReportFormat::Csv => print!("{}", report.csv()),
    }
    Ok(())
}

// ---- camera: the frame loop (issue 4) ----

#[derive(Args, Debug)]
pub struct CameraArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Frames from v4l:/dev/videoN, dir:PATH (JPEG/PNG files, sorted), mjpeg:FILE
    /// (concatenated JPEGs) or synthetic[:WxH].
    #[arg(long)]
    pub source: String,
    /// Frames per second: pacing for dir/mjpeg/synthetic (0 = as fast as possible), a request
    /// to a camera. Unpaced dir/mjpeg replays classify every frame.
    #[arg(long)]
    pub fps: Option<f64>,
    /// Start dir/mjpeg replays over when they end.
    #[arg(long = "loop")]
    pub looping: bool,
    /// Camera resolution to ask for, e.g. 640x480.
    #[arg(long, value_parser = parse_frame_size)]
    pub size: Option<(u32, u32)>,
    /// Camera pixel format (auto prefers MJPEG).
    #[arg(long, value_parser = ["auto", "mjpeg", "yuyv"], default_value = "auto")]
    pub pixel_format: String,
    /// Where annotated frames go: none, png:DIR or fb:/dev/fbN.
    #[arg(long, default_value = "none")]
    pub display: String,
    /// With --display png:DIR, save every Nth classified frame.
    #[arg(long, default_value_t = 1)]
    pub png_every: u64,
    /// Append one JSON line per classified frame (and per camera event) to this file.
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// Rotate the log before it exceeds this size: bytes, or with a K, M or G suffix.
    #[arg(long, value_parser = parse_bytes)]
    pub log_rotate: Option<u64>,
    #[arg(long, default_value_t = 3)]
    pub top_k: usize,
    /// Stop after this many classified frames.
    #[arg(long)]
    pub frames: Option<u64>,
    /// Inference threads; 0 = all cores.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Sleep this long after every inference: shows frame dropping with a fast model.
    #[arg(long, default_value_t = 0)]
    pub simulate_inference_ms: u64,
    /// No line per frame on stdout, only the summary.
    #[arg(long)]
    pub quiet: bool,
    /// Summary format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

fn parse_frame_size(s: &str) -> std::result::Result<(u32, u32), String> {
    resnet_edge::frame::parse_size(s).map_err(|e| e.to_string())
}

/// `4096`, `512K`, `10M`, `1G` (powers of 1024).
fn parse_bytes(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c.to_ascii_uppercase()),
        _ => (s, 'B'),
    };
    let shift = match unit {
        'B' => 0,
        'K' => 10,
        'M' => 20,
        'G' => 30,
        _ => return Err(format!("{s:?}: unknown unit (use K, M or G)")),
    };
    let n: u64 = digits.trim().parse().map_err(|e| format!("{s:?}: {e}"))?;
    n.checked_mul(1 << shift)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{s:?}: must be between 1 byte and 16 EiB"))
}

fn camera(args: CameraArgs) -> Result<()> {
    use resnet_edge::{display, frame, pipeline, results_log::ResultsLog};
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    let stop = Arc::new(AtomicBool::new(false));
    pipeline::stop_on_signals(&stop)?;
    let pixel_format = match args.pixel_format.as_str() {
        "mjpeg" => frame::PixelFormat::Mjpeg,
        "yuyv" => frame::PixelFormat::Yuyv,
        _ => frame::PixelFormat::Auto,
    };
    let options = frame::SourceOptions {
        fps: args.fps,
        looping: args.looping,
        size: args.size,
        pixel_format,
    };
    let mut source = frame::open(&args.source, &options)?;
    let sink = display::open(&args.display, args.png_every)?;
    let log = args
        .log
        .as_deref()
        .map(|p| ResultsLog::open(p, args.log_rotate))
        .transpose()?;
    let classifier = Classifier::open(&args.model.model, &args.model.options(args.threads))?;
    eprintln!(
        "camera: {}{} -> {} ({} threads); display {}; log {}",
        source.describe(),
        source
            .negotiated()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default(),
        args.model.model.display(),
        classifier.plan.threads(),
        sink.describe(),
        args.log
            .as_ref()
            .map_or("none".into(), |p| p.display().to_string())
    );
    let mut output = pipeline::StandardOutput {
        labels: classifier.labels.clone(),
        source: source.describe(),
        log,
        sink,
        print: !args.quiet,
    };
    let config = pipeline::Config {
        top_k: args.top_k,
        max_frames: args.frames,
        simulate_inference: std::time::Duration::from_millis(args.simulate_inference_ms),
        backoff: pipeline::Backoff::default(),
    };
    let summary = pipeline::run(&classifier, source.as_mut(), &config, &mut output, &stop);
    output.finish()?;
    let summary = summary?;
    match args.format {
        Format::Json => println!("{}", to_json(&summary)?),
        Format::Text => {
            print!("{summary}");
            if let Some(dir) = args.display.strip_prefix("png:") {
                println!("annotated frames in {dir}/");
            }
            if let Some(log) = &args.log {
                println!("results log {}", log.display());
            }
        }
    }
    Ok(())
}
