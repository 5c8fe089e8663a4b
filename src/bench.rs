//! `resnet-edge bench`: how long a model takes to load, to run the first time, and to run in a
//! steady loop, with the facts that make such numbers comparable across machines (CPU, the ISA
//! and matmul kernel tract picked, threads really used, peak memory). Flag names and JSON keys
//! follow TFLite's `benchmark_model`, which edge users already script against.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use tract_core::internal::DimLike;
use tract_core::ops::matmul::optimized::OptMatMul;
use tract_core::prelude::*;

use crate::manifest::Manifest;
use crate::model::{self, LoadOptions, LoadedModel, SourceKind};
use crate::plan::Plan;
use crate::precision::Precision;
use crate::{Error, Result};

/// What `bench` and `profile` share: the model, the plan settings and how many runs to time.
#[derive(Clone, Debug)]
pub struct MeasureOptions {
    pub load: LoadOptions,
    /// 0 = all cores.
    pub threads: usize,
    /// Wins over `load.precision`: what `--precision` asked for.
    pub precision: Precision,
    /// Untimed runs after the first inference, to reach a steady state (caches, allocator).
    pub warmup_runs: usize,
    pub num_runs: usize,
    /// Stop the timed runs once this many seconds have passed (after at least one run).
    pub max_secs: Option<f64>,
}

impl Default for MeasureOptions {
    fn default() -> Self {
        MeasureOptions {
            load: LoadOptions::default(),
            threads: 0,
            precision: Precision::Auto,
            warmup_runs: 5,
            num_runs: 50,
            max_secs: None,
        }
    }
}

impl MeasureOptions {
    pub fn validate(&self) -> Result<()> {
        if self.num_runs == 0 {
            return Err(Error::usage("--num-runs must be at least 1"));
        }
        if let Some(s) = self.max_secs {
            self.deadline().map_err(|_| {
                Error::usage(format!(
                    "--max-secs must be a positive number of seconds, got {s}"
                ))
            })?;
        }
        Ok(())
    }

    fn deadline(&self) -> std::result::Result<Option<Duration>, ()> {
        match self.max_secs {
            None => Ok(None),
            Some(s) if s > 0.0 => Duration::try_from_secs_f64(s).map(Some).map_err(|_| ()),
            Some(_) => Err(()),
        }
    }
}

/// The machine and what tract chose on it: the facts a latency number means nothing without.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Machine {
    /// CPU model from /proc/cpuinfo ("AMD EPYC", "Raspberry Pi 4 Model B Rev 1.4 (Cortex-A72)").
    pub cpu: String,
    /// Architecture and the instruction-set rung tract detected ("x86_64 fma", "aarch64 neon").
    pub isa: String,
    /// The f32 matmul kernel carrying most of the plan's multiply-accumulates.
    pub kernel: String,
    /// Every matmul kernel in the plan.
    pub kernels: Vec<String>,
}

impl Machine {
    pub fn of(plan: &Plan) -> Machine {
        let isa = tract_linalg::isa::native();
        let isa = match isa.arch() {
            Some(arch) => format!("{arch} {}", isa.nickname()),
            None => std::env::consts::ARCH.to_string(),
        };
        let macs = kernel_macs(plan.model());
        let kernel = macs
            .iter()
            .max_by_key(|(_, &m)| m)
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| "none".to_string());
        Machine {
            cpu: cpu_model(),
            isa,
            kernel,
            kernels: macs.into_keys().collect(),
        }
    }
}

/// Matmul kernel name -> multiply-accumulates it runs per inference, over the optimised plan.
fn kernel_macs(model: &TypedModel) -> BTreeMap<String, u64> {
    let mut macs = BTreeMap::new();
    for node in model.nodes() {
        let Some(op) = node.op_as::<OptMatMul>() else {
            continue;
        };
        let n = op
            .c_n_axis
            .and_then(|ax| op.c_fact.shape[ax].to_usize().ok())
            .unwrap_or(1);
        let m = op.m().to_usize().unwrap_or(0);
        let k = op.guess_k().and_then(|k| k.to_usize().ok()).unwrap_or(0);
        for mmm in &op.mmm {
            *macs.entry(mmm.name().to_string()).or_insert(0) += (m * k * n) as u64;
        }
    }
    macs
}

/// A model opened for measuring: the plan, one live tract state reused across runs (as a
/// camera loop would), and a fixed synthetic input.
pub struct Session {
    pub loaded: LoadedModel,
    pub plan: Plan,
    /// The precision actually run (`auto` resolved; also in `loaded.precision`, with why).
    pub precision: Precision,
    /// Reading, building and optimising the model into a runnable plan.
    pub load_ms: f64,
    pub(crate) state: TypedSimpleState,
    pub(crate) input: TValue,
}

impl Session {
    pub fn open(path: &Path, options: &MeasureOptions) -> Result<Session> {
        options.validate()?;
        let mut load = options.load.clone();
        load.precision = options.precision;
        // The manifest's crop is the image size the model was trained for (state_dict sources
        // and dynamic ONNX inputs take it from here).
        if let Some(p) = Manifest::beside(path)?.and_then(|m| m.preprocess) {
            load.image_size = p.crop as usize;
        }
        let start = Instant::now();
        let loaded = model::load(path, &load)?;
        let plan = Plan::new(&loaded, options.threads)?;
        let load_ms = millis(start.elapsed());
        let precision = loaded.precision.run;
        let state = plan
            .runnable()
            .spawn()
            .map_err(|e| Error::tract("starting a session", e))?;
        let input = synthetic_input(&loaded)?;
        Ok(Session {
            loaded,
            plan,
            precision,
            load_ms,
            state,
            input,
        })
    }

    /// One inference on the synthetic input.
    pub fn run(&mut self) -> Result<()> {
        self.state
            .run(tvec!(self.input.clone()))
            .map_err(|e| Error::tract("inference", e))?;
        Ok(())
    }
}

/// A fixed pseudo-random input in roughly the range of a normalised image: timing must not
/// depend on the data, and constant data could hit shortcuts real images never do.
fn synthetic_input(loaded: &LoadedModel) -> Result<TValue> {
    let shape = &loaded.input_shape;
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let values: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
        })
        .collect();
    let tensor =
        Tensor::from_shape(shape, &values).map_err(|e| Error::tract("building the input", e))?;
    let dt = loaded
        .model
        .input_fact(0)
        .map_err(|e| Error::tract("reading the input type", e))?
        .datum_type;
    let tensor = tensor
        .cast_to_dt(dt)
        .map_err(|e| Error::tract("building the input", e))?
        .into_owned();
    Ok(tensor.into_tvalue())
}

/// Summary statistics over timed runs, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Stats {
    pub min_ms: f64,
    pub mean_ms: f64,
    /// Population standard deviation.
    pub std_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Stats {
    /// Nearest-rank percentiles (each one is a latency that was actually observed).
    pub fn of(samples: &[f64]) -> Stats {
        if samples.is_empty() {
            return Stats::default();
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let rank = |p: f64| sorted[((p / 100.0 * n as f64).ceil() as usize).clamp(1, n) - 1];
        let mean = sorted.iter().sum::<f64>() / n as f64;
        let var = sorted.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
        Stats {
            min_ms: sorted[0],
            mean_ms: mean,
            std_ms: var.sqrt(),
            p50_ms: rank(50.0),
            p90_ms: rank(90.0),
            p99_ms: rank(99.0),
            max_ms: sorted[n - 1],
        }
    }
}

/// Everything `resnet-edge bench` reports; the JSON keys are this struct's field names.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchReport {
    pub model: String,
    pub source: SourceKind,
    /// What ran: f32, f16 or int8.
    pub precision: Precision,
    /// Why that precision (the request, the file, the CPU's FP16 support).
    pub precision_reason: String,
    /// Inference threads actually configured (`--threads 0` resolved to the core count).
    pub threads: usize,
    pub batch: usize,
    pub input_shape: Vec<usize>,
    #[serde(flatten)]
    pub machine: Machine,
    pub load_ms: f64,
    pub first_ms: f64,
    pub warmup_runs: usize,
    /// Timed runs (fewer than `--num-runs` when `--max-secs` cut them short).
    pub runs: usize,
    #[serde(flatten)]
    pub stats: Stats,
    pub images_per_s: f64,
    /// VmHWM: the most resident memory the process ever held (Linux; null elsewhere).
    pub peak_rss_bytes: Option<u64>,
    /// Process CPU time over wall time during the timed runs: ~1 for one busy thread.
    pub cpu_util: Option<f64>,
    /// OS threads in the process after the runs (main thread plus any pool workers).
    pub os_threads: Option<usize>,
}

/// Load `path`, run it once, warm up, then time `num_runs` runs.
pub fn bench(path: &Path, options: &MeasureOptions) -> Result<BenchReport> {
    let mut session = Session::open(path, options)?;
    let start = Instant::now();
    session.run()?;
    let first_ms = millis(start.elapsed());
    for _ in 0..options.warmup_runs {
        session.run()?;
    }
    let deadline = options
        .deadline()
        .map_err(|_| Error::usage("--max-secs is invalid"))?;
    let cpu_before = process_cpu_secs();
    let wall = Instant::now();
    let mut samples = Vec::with_capacity(options.num_runs);
    while samples.len() < options.num_runs {
        let t = Instant::now();
        session.run()?;
        samples.push(millis(t.elapsed()));
        if deadline.is_some_and(|d| wall.elapsed() >= d) {
            break;
        }
    }
    let wall = wall.elapsed().as_secs_f64();
    let cpu_util = cpu_before
        .zip(process_cpu_secs())
        .map(|(a, b)| (b - a) / wall.max(1e-9));
    let batch = session.plan.batch();
    Ok(BenchReport {
        model: path.display().to_string(),
        source: session.loaded.kind,
        precision: session.precision,
        precision_reason: session.loaded.precision.reason.clone(),
        threads: session.plan.threads(),
        batch,
        input_shape: session.loaded.input_shape.clone(),
        machine: Machine::of(&session.plan),
        load_ms: session.load_ms,
        first_ms,
        warmup_runs: options.warmup_runs,
        runs: samples.len(),
        stats: Stats::of(&samples),
        images_per_s: (batch * samples.len()) as f64 / wall.max(1e-9),
        peak_rss_bytes: peak_rss_bytes(),
        cpu_util,
        os_threads: os_threads(),
    })
}

impl BenchReport {
    /// CSV: a header line and one row with the JSON fields (shape as `1x3x224x224`, kernels
    /// space-separated).
    pub fn csv(&self) -> String {
        let opt = |v: Option<String>| v.unwrap_or_default();
        let s = &self.stats;
        let fields: Vec<(&str, String)> = vec![
            ("model", self.model.clone()),
            ("source", format!("{:?}", self.source).to_ascii_lowercase()),
            ("precision", self.precision.to_string()),
            ("threads", self.threads.to_string()),
            ("batch", self.batch.to_string()),
            ("input_shape", join(&self.input_shape, "x")),
            ("cpu", self.machine.cpu.clone()),
            ("isa", self.machine.isa.clone()),
            ("kernel", self.machine.kernel.clone()),
            ("kernels", self.machine.kernels.join(" ")),
            ("load_ms", f(self.load_ms)),
            ("first_ms", f(self.first_ms)),
            ("warmup_runs", self.warmup_runs.to_string()),
            ("runs", self.runs.to_string()),
            ("min_ms", f(s.min_ms)),
            ("mean_ms", f(s.mean_ms)),
            ("std_ms", f(s.std_ms)),
            ("p50_ms", f(s.p50_ms)),
            ("p90_ms", f(s.p90_ms)),
            ("p99_ms", f(s.p99_ms)),
            ("max_ms", f(s.max_ms)),
            ("images_per_s", f(self.images_per_s)),
            (
                "peak_rss_bytes",
                opt(self.peak_rss_bytes.map(|v| v.to_string())),
            ),
            ("cpu_util", opt(self.cpu_util.map(f))),
            ("os_threads", opt(self.os_threads.map(|v| v.to_string()))),
            ("precision_reason", self.precision_reason.clone()),
        ];
        let header: Vec<String> = fields.iter().map(|(k, _)| csv_cell(k)).collect();
        let row: Vec<String> = fields.iter().map(|(_, v)| csv_cell(v)).collect();
        format!("{}\n{}\n", header.join(","), row.join(","))
    }

    /// The human-readable report.
    pub fn table(&self) -> String {
        let s = &self.stats;
        let mut out = String::new();
        let mut line = |k: &str, v: String| out.push_str(&format!("{k:<16}{v}\n"));
        line("model", self.model.clone());
        line(
            "input",
            format!("{:?} ({})", self.input_shape, self.precision),
        );
        line(
            "precision",
            format!("{} ({})", self.precision, self.precision_reason),
        );
        line(
            "cpu",
            format!(
                "{} ({}, kernel {})",
                self.machine.cpu, self.machine.isa, self.machine.kernel
            ),
        );
        let seen = match (self.os_threads, self.cpu_util) {
            (Some(t), Some(u)) => format!(" ({t} OS threads, CPU {u:.2}x wall)"),
            _ => String::new(),
        };
        line("threads", format!("{}{seen}", self.threads));
        line("load", format!("{:.1} ms", self.load_ms));
        line("first inference", format!("{:.2} ms", self.first_ms));
        line(
            "runs",
            format!("{} timed after {} warmup", self.runs, self.warmup_runs),
        );
        out.push_str(&format!(
            "{:<16}{:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            "latency ms", "min", "mean", "std", "p50", "p90", "p99", "max"
        ));
        out.push_str(&format!(
            "{:<16}{:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}\n",
            "", s.min_ms, s.mean_ms, s.std_ms, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms
        ));
        let mut line = |k: &str, v: String| out.push_str(&format!("{k:<16}{v}\n"));
        line("throughput", format!("{:.2} images/s", self.images_per_s));
        line(
            "peak RSS",
            self.peak_rss_bytes
                .map(|b| format!("{:.1} MiB ({b} bytes)", b as f64 / (1u64 << 20) as f64))
                .unwrap_or_else(|| "unknown".into()),
        );
        out
    }
}

pub(crate) fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Enough digits for microsecond resolution on millisecond values, none wasted on noise.
pub(crate) fn f(v: f64) -> String {
    format!("{v:.4}")
}

pub(crate) fn join(v: &[usize], sep: &str) -> String {
    v.iter().map(usize::to_string).collect::<Vec<_>>().join(sep)
}

/// RFC 4180 quoting, only when needed.
pub(crate) fn csv_cell(v: &str) -> String {
    if v.contains([',', '"', '\n']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_string()
    }
}

/// Peak resident set size (VmHWM) of this process, in bytes; Linux only.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// User plus system CPU time of the whole process, in seconds; Linux only. /proc reports clock
/// ticks in USER_HZ, which Linux fixes at 100 on every architecture.
pub fn process_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name (which may itself contain spaces).
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// How many OS threads this process has right now; Linux only.
pub fn os_threads() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/task").ok()?.count())
}

/// The CPU's marketing name, or for ARM boards (whose /proc/cpuinfo has no "model name") the
/// board model and core type from the part number.
pub fn cpu_model() -> String {
    let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key && !v.trim().is_empty()).then(|| v.trim().to_string())
        })
    };
    if let Some(name) = field("model name") {
        return name;
    }
    let core = field("CPU part").map(|part| arm_core(field("CPU implementer").as_deref(), &part));
    match (field("Model").or_else(|| field("Hardware")), core) {
        (Some(board), Some(core)) => format!("{board} ({core})"),
        (Some(board), None) => board,
        (None, Some(core)) => core,
        (None, None) => std::env::consts::ARCH.to_string(),
    }
}

/// ARM core names for the part numbers of the boards this runtime targets.
fn arm_core(implementer: Option<&str>, part: &str) -> String {
    let name = match (implementer.unwrap_or("0x41"), part) {
        ("0x41", "0xd03") => "Cortex-A53",
        ("0x41", "0xd04") => "Cortex-A35",
        ("0x41", "0xd05") => "Cortex-A55",
        ("0x41", "0xd07") => "Cortex-A57",
        ("0x41", "0xd08") => "Cortex-A72",
        ("0x41", "0xd09") => "Cortex-A73",
        ("0x41", "0xd0a") => "Cortex-A75",
        ("0x41", "0xd0b") => "Cortex-A76",
        ("0x41", "0xd0c") => "Neoverse-N1",
        ("0x41", "0xd42") => "Cortex-A78AE",
        ("0x4e", "0x004") => "NVIDIA Carmel",
        _ => return format!("CPU part {part}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_stats() {
        let samples: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let s = Stats::of(&samples);
        assert_eq!(
            (s.min_ms, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms),
            (1.0, 50.0, 90.0, 99.0, 100.0)
        );
        assert!((s.mean_ms - 50.5).abs() < 1e-9);
        assert!((s.std_ms - 28.866_070_047_722_12).abs() < 1e-6);
        let one = Stats::of(&[3.0]);
        assert_eq!((one.p50_ms, one.p99_ms, one.std_ms), (3.0, 3.0, 0.0));
    }

    #[test]
    fn rejects_bad_run_counts() {
        let bad = MeasureOptions {
            num_runs: 0,
            ..MeasureOptions::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--num-runs"));
        for secs in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e300] {
            let bad = MeasureOptions {
                max_secs: Some(secs),
                ..MeasureOptions::default()
            };
            assert!(bad.validate().is_err(), "{secs}");
        }
    }

    #[test]
    fn csv_quotes_only_when_needed() {
        assert_eq!(csv_cell("AMD EPYC"), "AMD EPYC");
        assert_eq!(csv_cell("a,\"b\""), "\"a,\"\"b\"\"\"");
    }

    #[test]
    fn linux_process_facts() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_bytes().unwrap() > 1 << 20);
            assert!(process_cpu_secs().unwrap() >= 0.0);
            assert!(os_threads().unwrap() >= 1);
        }
    }
}
