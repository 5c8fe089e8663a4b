//! What `resnet-edge doctor` reports about the machine it runs on: the CPU, what tract detected
//! on it (NEON, FP16 arithmetic, dot product), the matmul kernels tract will pick for a ResNet,
//! the thread count, the device profile from `targets/` that fits, and warnings.
//!
//! Everything here is best effort and never panics: a missing or foreign `/proc/cpuinfo` (macOS,
//! a container, qemu-user, which shows the guest the host's file) gives empty fields and a
//! warning, not an error.
//!
//! tract chooses kernels at run time from `/proc/cpuinfo` ("CPU part", "Features"), `getauxval`
//! (dot product) and these environment variables, which the report lists when set:
//! `TRACT_CPU_AARCH64_KIND` (a53/a55/a72/a73/a75/neoverse/generic),
//! `TRACT_CPU_AARCH64_OVERRIDE_CPU_PART` (e.g. 0xd03), `TRACT_CPU_ISA` (e.g. `+fp16,-dotprod`),
//! `TRACT_CPU_ARM32_NEON` (true/false), `TRACT_DOTPROD_DISABLE`, `TRACT_SVE_DISABLE`,
//! `TRACT_SME_DISABLE`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use tract_core::prelude::{tvec, DatumType};
use tract_linalg::isa::{Isa, IsaSet};
use tract_linalg::mmm::Query;
use tract_linalg::MmmDispatch;

use crate::precision::Precision;

/// The environment variables tract-linalg 0.23.9 reads to override its CPU detection.
pub const TRACT_CPU_KNOBS: &[&str] = &[
    "TRACT_CPU_AARCH64_KIND",
    "TRACT_CPU_AARCH64_OVERRIDE_CPU_PART",
    "TRACT_CPU_ISA",
    "TRACT_CPU_ARM32_NEON",
    "TRACT_DOTPROD_DISABLE",
    "TRACT_SVE_DISABLE",
    "TRACT_SME_DISABLE",
];

/// Representative ResNet matmuls, as tract lowers them: a 3x3 convolution of the 56x56 stage
/// (m = output channels, k = input channels x 3 x 3, n = pixels) and the final fully connected
/// layer for one image (n = 1).
pub const CONV_SHAPE: (usize, usize, usize) = (64, 576, 3136);
pub const FC_SHAPE: (usize, usize, usize) = (1000, 2048, 1);

/// What the caller intends to run, so the report can warn about it.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub precision: Option<Precision>,
    /// Threads the caller asked for; `None` or `Some(0)` means all cores.
    pub threads: Option<usize>,
}

/// The parts of `/proc/cpuinfo` worth reporting, for any architecture.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CpuInfo {
    /// The architecture the file describes: "aarch64", "arm" or "x86_64" (from its fields).
    pub arch: Option<String>,
    /// "model name" (x86, 32-bit ARM), else the core names from the part numbers.
    pub model: Option<String>,
    /// "CPU implementer", e.g. 0x41 for Arm Ltd.
    pub implementer: Option<String>,
    /// Distinct "CPU part" values, in order of first appearance (two on big.LITTLE).
    pub parts: Vec<String>,
    /// Names of those parts, e.g. "Cortex-A72" ("unknown 0x..." for parts not in the table).
    pub cores: Vec<String>,
    /// "CPU architecture" (8 on a 64-bit core, even in a 32-bit process).
    pub architecture: Option<String>,
    /// The board: "Model" (Raspberry Pi kernels), else "Hardware".
    pub board: Option<String>,
    /// Number of "processor" entries.
    pub processors: usize,
    /// "Features" (ARM) or "flags" (x86) of the first processor.
    pub features: Vec<String>,
}

impl CpuInfo {
    /// Parse the text of `/proc/cpuinfo`. Never fails: unknown layouts give empty fields.
    pub fn parse(text: &str) -> CpuInfo {
        let mut info = CpuInfo::default();
        let mut hardware = None;
        let mut model_name = None;
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let key = key.trim();
            let value = value.trim();
            match key {
                "processor" => info.processors += 1,
                "model name" if model_name.is_none() && !value.is_empty() => {
                    model_name = Some(value.to_string())
                }
                "Features" | "flags" if info.features.is_empty() => {
                    info.features = value.split_whitespace().map(str::to_string).collect()
                }
                "CPU implementer" if info.implementer.is_none() => {
                    info.implementer = Some(value.to_string())
                }
                "CPU architecture" if info.architecture.is_none() => {
                    info.architecture = Some(value.to_string())
                }
                "CPU part" => {
                    let part = value.to_ascii_lowercase();
                    if !info.parts.contains(&part) {
                        info.parts.push(part);
                    }
                }
                "Model" if info.board.is_none() && !value.is_empty() => {
                    info.board = Some(value.to_string())
                }
                "Hardware" if hardware.is_none() && !value.is_empty() => {
                    hardware = Some(value.to_string())
                }
                _ => {}
            }
        }
        if info.board.is_none() {
            info.board = hardware;
        }
        let implementer = info.implementer.clone().unwrap_or_default();
        info.cores = info
            .parts
            .iter()
            .map(|p| part_name(&implementer, p))
            .collect();
        let has = |f: &str| info.features.iter().any(|x| x == f);
        info.arch = if info.implementer.is_some() || info.architecture.is_some() {
            // 64-bit feature names (asimd) only appear to a 64-bit process; a 32-bit process
            // sees "neon", "vfp", "half" even on an ARMv8 core.
            if has("asimd") || (has("fp") && !has("vfp")) {
                Some("aarch64".into())
            } else {
                Some("arm".into())
            }
        } else if has("sse2") || has("lm") {
            Some("x86_64".into())
        } else {
            None
        };
        info.model = model_name.or_else(|| {
            let mut cores = info.cores.clone();
            cores.dedup();
            (!cores.is_empty()).then(|| cores.join(" + "))
        });
        info
    }

    pub fn has_feature(&self, name: &str) -> bool {
        self.features.iter().any(|f| f == name)
    }

    /// FP16 arithmetic as the kernel reports it (64-bit "asimdhp"/"fphp").
    pub fn fp16(&self) -> bool {
        self.has_feature("asimdhp")
    }

    /// Dot product as the kernel reports it (64-bit "asimddp").
    pub fn dotprod(&self) -> bool {
        self.has_feature("asimddp")
    }

    /// NEON: "asimd" in a 64-bit process, "neon" in a 32-bit one.
    pub fn neon(&self) -> bool {
        self.has_feature("asimd") || self.has_feature("neon")
    }
}

/// Core name for an ARM "CPU part" (implementer 0x41 Arm Ltd., 0x4e NVIDIA).
pub fn part_name(implementer: &str, part: &str) -> String {
    let name = match (implementer, part) {
        ("0x4e", "0x003") => "NVIDIA Denver 2",
        ("0x4e", "0x004") => "NVIDIA Carmel",
        (_, "0xb76") => "ARM1176",
        (_, "0xc07") => "Cortex-A7",
        (_, "0xc08") => "Cortex-A8",
        (_, "0xc09") => "Cortex-A9",
        (_, "0xc0f") => "Cortex-A15",
        (_, "0xd03") => "Cortex-A53",
        (_, "0xd04") => "Cortex-A35",
        (_, "0xd05") => "Cortex-A55",
        (_, "0xd07") => "Cortex-A57",
        (_, "0xd08") => "Cortex-A72",
        (_, "0xd09") => "Cortex-A73",
        (_, "0xd0a") => "Cortex-A75",
        (_, "0xd0b") => "Cortex-A76",
        (_, "0xd0c") => "Neoverse-N1",
        (_, "0xd0d") => "Cortex-A77",
        (_, "0xd40") => "Neoverse-V1",
        (_, "0xd41") => "Cortex-A78",
        (_, "0xd42") => "Cortex-A78AE",
        (_, "0xd44") => "Cortex-X1",
        (_, "0xd46") => "Cortex-A510",
        (_, "0xd47") => "Cortex-A710",
        (_, "0xd48") => "Cortex-X2",
        (_, "0xd49") => "Neoverse-N2",
        (_, "0xd4b") => "Cortex-A78C",
        (_, "0xd4f") => "Neoverse-V2",
        (_, "0xd80") => "Cortex-A520",
        (_, "0xd81") => "Cortex-A720",
        _ => return format!("unknown {part}"),
    };
    name.to_string()
}

/// One kernel choice: the tract kernel name and the family it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelChoice {
    pub name: String,
    /// "arm64simd (cortex-a53 tuned)", "arm64fp16 (generic)", "generic (portable Rust)", ...
    pub family: String,
}

impl KernelChoice {
    pub fn new(name: &str) -> KernelChoice {
        KernelChoice {
            name: name.to_string(),
            family: kernel_family(name),
        }
    }

    /// True for tract's portable Rust kernels (no SIMD kernel for this type on this CPU).
    pub fn is_portable(&self) -> bool {
        self.name.starts_with("generic_")
    }
}

/// The family of a tract-linalg kernel name: its prefix, and the core it is scheduled for.
pub fn kernel_family(name: &str) -> String {
    if name.starts_with("generic_") {
        return "generic (portable Rust)".into();
    }
    let prefix = name.split("_mmm").next().unwrap_or(name);
    let tuning = match name.rsplit('_').next().unwrap_or("") {
        "a53" => "cortex-a53 tuned",
        "a55" => "cortex-a55 tuned",
        "cortexa7" => "cortex-a7 tuned",
        "cortexa9" => "cortex-a9 tuned",
        "dot" => "dot product",
        "gen" | "generic" => "generic",
        _ => "",
    };
    if tuning.is_empty() {
        prefix.to_string()
    } else {
        format!("{prefix} ({tuning})")
    }
}

/// The kernels tract picks for the representative ResNet matmuls.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Kernels {
    pub f32_conv: Option<KernelChoice>,
    pub f32_fc: Option<KernelChoice>,
    pub f16_conv: Option<KernelChoice>,
    pub f16_fc: Option<KernelChoice>,
    /// Quantised (int8 operands, i32 accumulator) convolution.
    pub i8_conv: Option<KernelChoice>,
}

impl Kernels {
    /// Ask tract's dispatch which kernel this host runs for each shape, with the query tract's
    /// einsum optimiser builds for a float layer (an f16 layer accepts f16 or f32 accumulators,
    /// so a core without FP16 arithmetic gets an f32-accumulating NEON kernel, not a portable one).
    pub fn native() -> Kernels {
        let pick = |dt: DatumType, (m, k, n): (usize, usize, usize)| {
            let query = if dt.is_float() {
                Query {
                    weight: dt.into(),
                    activation: dt,
                    accumulators: if dt == DatumType::F16 {
                        tvec!(DatumType::F16, DatumType::F32)
                    } else {
                        tvec!(dt)
                    },
                    store: Some(dt),
                    allow_extractor: true,
                    m: Some(m),
                    k: Some(k),
                    n: Some(n),
                }
            } else {
                Query::plain(dt, Some(m), Some(k), Some(n))
            };
            MmmDispatch::native()
                .pick(&query)
                .map(|(mmm, _, _)| KernelChoice::new(mmm.name()))
        };
        Kernels {
            f32_conv: pick(DatumType::F32, CONV_SHAPE),
            f32_fc: pick(DatumType::F32, FC_SHAPE),
            f16_conv: pick(DatumType::F16, CONV_SHAPE),
            f16_fc: pick(DatumType::F16, FC_SHAPE),
            i8_conv: pick(DatumType::I32, CONV_SHAPE),
        }
    }

    pub fn get(&self, key: &str) -> Option<&KernelChoice> {
        match key {
            "f32_conv" => self.f32_conv.as_ref(),
            "f32_fc" => self.f32_fc.as_ref(),
            "f16_conv" => self.f16_conv.as_ref(),
            "f16_fc" => self.f16_fc.as_ref(),
            "i8_conv" => self.i8_conv.as_ref(),
            _ => None,
        }
    }

    /// The conv kernel for a precision: what most of a ResNet's time is spent in (`Auto`
    /// has none of its own).
    pub fn conv(&self, precision: Precision) -> Option<&KernelChoice> {
        match precision {
            Precision::F32 => self.f32_conv.as_ref(),
            Precision::F16 => self.f16_conv.as_ref(),
            Precision::Int8 => self.i8_conv.as_ref(),
            Precision::Auto => None,
        }
    }
}

/// What tract detected: its instruction-set view of this CPU.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TractCpu {
    /// tract's instruction-set set, e.g. "aarch64,fp16,dotprod".
    pub isa: String,
    /// tract's name for the highest rung: "neon", "fp16", "sve2", "fma", "avx512", ...
    pub level: String,
    /// Advanced SIMD: always on aarch64; probed on armv7.
    pub neon: bool,
    /// FP16 arithmetic kernels usable (FEAT_FP16 on aarch64, AVX512-FP16 on x86_64).
    pub fp16: bool,
    /// Dot-product int8 kernels usable (FEAT_DotProd, SDOT/UDOT).
    pub dotprod: bool,
    /// aarch64 only: tract's CPU kind (CortexA53, CortexA55, CortexA72, ..., Generic), which
    /// selects the core-scheduled kernels.
    pub kind: Option<String>,
}

impl TractCpu {
    pub fn native() -> TractCpu {
        let isa = tract_linalg::isa::native();
        TractCpu::from_isa(isa, native_kind())
    }

    pub fn from_isa(isa: IsaSet, kind: Option<String>) -> TractCpu {
        TractCpu {
            isa: format!("{isa:?}"),
            level: isa.nickname().to_string(),
            neon: isa.has(Isa::Aarch64) || isa.has(Isa::ArmNeon),
            fp16: isa.fp16_arithmetic(),
            dotprod: isa.has(Isa::Aarch64DotProd)
                || isa.has(Isa::X86_64Avx512Vnni)
                || isa.has(Isa::X86_64AvxVnni),
            kind,
        }
    }
}

#[cfg(target_arch = "aarch64")]
fn native_kind() -> Option<String> {
    Some(format!("{:?}", tract_linalg::arm64::Kind::choose()))
}

#[cfg(not(target_arch = "aarch64"))]
fn native_kind() -> Option<String> {
    None
}

/// A device profile, one per file in `targets/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceProfile {
    pub name: String,
    pub boards: Vec<String>,
    pub triple: String,
    pub cpu: String,
    #[serde(default)]
    pub cpu_part: Option<String>,
    pub cores: usize,
    pub threads: usize,
    pub precision: Precision,
    pub tract_kind: String,
    pub kernel_family: String,
    pub features: Vec<String>,
    /// Expected kernel per [`Kernels`] field; `*` matches any run of characters.
    #[serde(default)]
    pub kernels: BTreeMap<String, String>,
    pub target_cpu: TargetCpu,
    pub emulate: Emulate,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetCpu {
    pub safe: bool,
    pub rustflags: String,
}

/// How `targets/cross-test.sh` reproduces the device under qemu-user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Emulate {
    pub qemu_cpu: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// tract's CPU kind under emulation, when the overrides make it differ from `tract_kind`.
    #[serde(default)]
    pub tract_kind: Option<String>,
}

const PROFILE_SOURCES: &[(&str, &str)] = &[
    ("pi3", include_str!("../targets/pi3.toml")),
    ("pi4", include_str!("../targets/pi4.toml")),
    ("pi5", include_str!("../targets/pi5.toml")),
    ("jetson-nano", include_str!("../targets/jetson-nano.toml")),
    ("jetson-orin", include_str!("../targets/jetson-orin.toml")),
    ("armv7", include_str!("../targets/armv7.toml")),
];

/// Every profile in `targets/` (compiled in). A file that fails to parse is skipped here and
/// caught by the unit tests.
pub fn profiles() -> Vec<DeviceProfile> {
    PROFILE_SOURCES
        .iter()
        .filter_map(|(_, text)| toml::from_str(text).ok())
        .collect()
}

pub fn profile(name: &str) -> Option<DeviceProfile> {
    profiles().into_iter().find(|p| p.name == name)
}

/// The profile for this CPU: armv7 for a 32-bit build, else the one naming the biggest core's part.
pub fn matching_profile(arch: &str, cpu: &CpuInfo) -> Option<DeviceProfile> {
    let all = profiles();
    if arch == "arm" {
        return all.into_iter().find(|p| p.triple.starts_with("armv7"));
    }
    if arch != "aarch64" {
        return None;
    }
    // tract itself keys on the largest part number (the big core on big.LITTLE).
    let part = cpu.parts.iter().max()?;
    all.into_iter()
        .find(|p| p.triple.starts_with("aarch64") && p.cpu_part.as_deref() == Some(part))
}

/// Everything `resnet-edge doctor` prints.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceReport {
    /// The architecture this binary was built for: "aarch64", "arm", "x86_64".
    pub arch: String,
    /// The build target, e.g. "aarch64-linux-musl".
    pub target: String,
    pub cpu: CpuInfo,
    pub tract: TractCpu,
    /// Family of the f32 conv kernel (or f16's, when f16 is the requested precision).
    pub kernel_family: String,
    pub kernels: Kernels,
    /// Threads a run would use (the request, or every core).
    pub threads: usize,
    /// Cores the OS gives this process.
    pub available_cores: usize,
    /// The matching profile in `targets/`, if any.
    pub profile: Option<String>,
    pub recommended_precision: Precision,
    pub recommended_threads: usize,
    /// tract CPU-detection environment variables that are set.
    pub overrides: BTreeMap<String, String>,
    pub warnings: Vec<String>,
}

/// What the probe saw, kept apart from the probing so the report logic is testable.
#[derive(Debug, Clone)]
pub struct Observed {
    pub arch: String,
    pub target: String,
    pub cpuinfo: Option<String>,
    /// From /proc/device-tree/model, which names the board on Pi and Jetson kernels.
    pub device_tree_model: Option<String>,
    pub tract: TractCpu,
    pub kernels: Kernels,
    pub available_cores: usize,
    pub overrides: BTreeMap<String, String>,
}

impl Observed {
    pub fn native() -> Observed {
        let read = |path: &str| {
            std::fs::read(path).ok().map(|b| {
                String::from_utf8_lossy(&b)
                    .trim_end_matches(['\0', '\n', ' '])
                    .to_string()
            })
        };
        Observed {
            arch: std::env::consts::ARCH.to_string(),
            target: build_target(),
            cpuinfo: read("/proc/cpuinfo"),
            device_tree_model: read("/proc/device-tree/model").filter(|s| !s.is_empty()),
            tract: TractCpu::native(),
            kernels: Kernels::native(),
            available_cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            overrides: TRACT_CPU_KNOBS
                .iter()
                .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
                .collect(),
        }
    }
}

fn build_target() -> String {
    let env = if cfg!(target_env = "musl") {
        "musl"
    } else if cfg!(target_env = "gnu") {
        "gnu"
    } else {
        ""
    };
    let abi = if cfg!(all(target_arch = "arm", target_abi = "eabihf")) {
        "eabihf"
    } else {
        ""
    };
    format!(
        "{}-{}-{}{}",
        std::env::consts::ARCH,
        std::env::consts::OS,
        env,
        abi
    )
    .trim_end_matches('-')
    .to_string()
}

/// The report for this machine, with no particular request.
pub fn report() -> DeviceReport {
    report_for(&Request::default())
}

/// The report for this machine, warning about what `request` asks for.
pub fn report_for(request: &Request) -> DeviceReport {
    DeviceReport::from_observed(Observed::native(), request)
}

impl DeviceReport {
    pub fn from_observed(obs: Observed, request: &Request) -> DeviceReport {
        let mut warnings = vec![];
        let mut cpu = obs
            .cpuinfo
            .as_deref()
            .map(CpuInfo::parse)
            .unwrap_or_default();
        if obs.cpuinfo.is_none() && cfg!(target_os = "linux") {
            warnings.push(
                "could not read /proc/cpuinfo: tract cannot see the CPU part or its FP16 flag, and \
                 falls back to generic kernels"
                    .to_string(),
            );
        }
        if let Some(model) = &obs.device_tree_model {
            cpu.board = Some(model.clone());
        }
        let foreign = cpu.arch.as_deref().is_some_and(|a| a != obs.arch);
        if foreign {
            warnings.push(format!(
                "/proc/cpuinfo describes an {} CPU but this is an {} binary (emulation, e.g. \
                 qemu-user?): tract's CPU detection sees the wrong file, use the TRACT_CPU_* \
                 overrides to choose kernels",
                cpu.arch.as_deref().unwrap_or("unknown"),
                obs.arch
            ));
        }

        let profile = if foreign {
            None
        } else {
            matching_profile(&obs.arch, &cpu)
        };
        let available = obs.available_cores.max(1);
        let threads = match request.threads {
            Some(n) if n > 0 => n,
            _ => available,
        };
        if threads > available {
            warnings.push(format!(
                "{threads} threads requested but only {available} cores available: expect slower \
                 inference than with {available}"
            ));
        }

        // Precision: f16 only where tract computes in f16.
        let recommended_precision = match &profile {
            Some(p) if p.precision == Precision::F16 && obs.tract.fp16 => Precision::F16,
            None if obs.tract.fp16 && obs.arch == "aarch64" => Precision::F16,
            _ => Precision::F32,
        };
        // `auto` is no particular request: the report recommends.
        let requested = request.precision.filter(|p| *p != Precision::Auto);
        let precision = requested.unwrap_or(Precision::F32);
        let fp16 = crate::precision::Fp16Support::of(&obs.arch, obs.tract.fp16, &cpu);
        if requested == Some(Precision::F16) && !fp16.native {
            warnings.push(format!(
                "f16 requested, but this CPU has no FP16 arithmetic (asimdhp) that tract can use \
                 ({}): resnet-edge runs f32 here (an f16 artifact's weights are widened at load: \
                 half the file, f32's speed and RAM) rather than tract's f16 path on {} \
                 (converting on every load/store: slower than f32 and no more accurate)",
                fp16.detail,
                obs.kernels
                    .f16_conv
                    .as_ref()
                    .map(|k| k.name.as_str())
                    .unwrap_or("no native kernel")
            ));
        }
        if !foreign && obs.arch == "aarch64" {
            if cpu.fp16() && !obs.tract.fp16 {
                warnings.push(
                    "the CPU reports FP16 arithmetic (asimdhp) but tract does not use it (fp16 \
                     disabled by TRACT_CPU_ISA or a no_fp16 build)"
                        .to_string(),
                );
            }
            if cpu.dotprod() && !obs.tract.dotprod {
                warnings.push(
                    "the CPU reports dot product (asimddp) but tract does not use it \
                     (TRACT_DOTPROD_DISABLE or TRACT_CPU_ISA)"
                        .to_string(),
                );
            }
        }
        if obs.arch == "arm" {
            if !obs.tract.neon {
                warnings.push(
                    "tract found no NEON: it runs the slow VFP kernels (set TRACT_CPU_ARM32_NEON=true \
                     if the CPU has NEON)"
                        .to_string(),
                );
            }
            // ARMv8 cores report "CPU architecture: 8" under a 64-bit kernel, 7 under a 32-bit
            // one; their part numbers (0xd..) give them away either way.
            let armv8 = cpu.architecture.as_deref().is_some_and(|a| a.trim() == "8")
                || cpu.parts.iter().any(|p| p.starts_with("0xd"));
            if !foreign && armv8 {
                warnings.push(
                    "a 64-bit ARMv8 CPU running the 32-bit build: the aarch64 build is faster (A53, \
                     FP16 and dot-product kernels exist only there)"
                        .to_string(),
                );
            }
        }
        if !obs.overrides.is_empty() {
            let list: Vec<String> = obs
                .overrides
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            warnings.push(format!(
                "tract CPU detection overridden: {}",
                list.join(" ")
            ));
        }
        if let Some(conv) = obs.kernels.conv(precision) {
            if conv.is_portable() && obs.arch != "x86_64" {
                warnings.push(format!(
                    "{precision} convolutions run on tract's portable Rust kernel {}: expect it to be \
                     several times slower than the SIMD kernels",
                    conv.name
                ));
            }
        }

        let kernel_family = obs
            .kernels
            .conv(requested.unwrap_or(recommended_precision))
            .or(obs.kernels.f32_conv.as_ref())
            .map(|k| k.family.clone())
            .unwrap_or_else(|| "none".to_string());
        let recommended_threads = profile
            .as_ref()
            .map(|p| p.threads.min(available))
            .unwrap_or(available);

        DeviceReport {
            arch: obs.arch,
            target: obs.target,
            cpu,
            tract: obs.tract,
            kernel_family,
            kernels: obs.kernels,
            threads,
            available_cores: available,
            profile: profile.map(|p| p.name),
            recommended_precision,
            recommended_threads,
            overrides: obs.overrides,
            warnings,
        }
    }
}

impl fmt::Display for DeviceReport {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "unknown".into());
        let yes = |b: bool| if b { "yes" } else { "no" };
        writeln!(f, "binary:        {} ({})", self.target, self.arch)?;
        writeln!(f, "board:         {}", opt(&self.cpu.board))?;
        let mut cpu = opt(&self.cpu.model);
        if !self.cpu.parts.is_empty() {
            cpu = format!("{cpu} (part {})", self.cpu.parts.join(", "));
        }
        if self.cpu.arch.as_deref().is_some_and(|a| a != self.arch) {
            cpu = format!("{cpu} (the host's, seen through emulation)");
        }
        writeln!(f, "cpu:           {cpu}")?;
        writeln!(f, "cores:         {}", self.available_cores)?;
        writeln!(
            f,
            "tract detects: NEON {}, FP16 arithmetic {}, dot product {}  [isa {}]",
            yes(self.tract.neon),
            yes(self.tract.fp16),
            yes(self.tract.dotprod),
            self.tract.isa,
        )?;
        if let Some(kind) = &self.tract.kind {
            writeln!(f, "tract cpu kind: {kind}")?;
        }
        writeln!(f, "kernel family: {}", self.kernel_family)?;
        let rows = [
            ("f32 conv", &self.kernels.f32_conv),
            ("f32 fc", &self.kernels.f32_fc),
            ("f16 conv", &self.kernels.f16_conv),
            ("f16 fc", &self.kernels.f16_fc),
            ("int8 conv", &self.kernels.i8_conv),
        ];
        for (label, k) in rows {
            let text = k.as_ref().map(|k| format!("{} [{}]", k.name, k.family));
            writeln!(
                f,
                "  {label:<10}  {}",
                text.unwrap_or_else(|| "none".into())
            )?;
        }
        writeln!(f, "threads:       {}", self.threads)?;
        match &self.profile {
            Some(p) => writeln!(
                f,
                "profile:       {p} (targets/{p}.toml): {} threads, {}",
                self.recommended_threads, self.recommended_precision
            )?,
            None => writeln!(
                f,
                "profile:       none matches; recommended: {} threads, {}",
                self.recommended_threads, self.recommended_precision
            )?,
        }
        for (k, v) in &self.overrides {
            writeln!(f, "override:      {k}={v}")?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        Ok(())
    }
}

/// `*` glob, for profile kernel expectations such as `arm64simd_mmm_f32_*_a53`.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || !text[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(ix) => rest = &rest[ix + mid.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Raspberry Pi 4 Model B, 64-bit Pi OS bookworm.
    const PI4_A72: &str = "processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3

processor\t: 1
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3

processor\t: 2
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3

processor\t: 3
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3

Revision\t: c03114
Serial\t\t: 10000000a1b2c3d4
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
";

    /// Raspberry Pi 5 Model B, 64-bit Pi OS bookworm.
    const PI5_A76: &str = "processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x4
CPU part\t: 0xd0b
CPU revision\t: 1

processor\t: 1
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x4
CPU part\t: 0xd0b
CPU revision\t: 1

processor\t: 2
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x4
CPU part\t: 0xd0b
CPU revision\t: 1

processor\t: 3
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x4
CPU part\t: 0xd0b
CPU revision\t: 1

Revision\t: d04170
Serial\t\t: 1a2b3c4d5e6f7a8b
Model\t\t: Raspberry Pi 5 Model B Rev 1.0
";

    /// 32-bit Pi OS (32-bit kernel and userland) on a Pi 3: ARMv7 names for an A53.
    const PI3_ARMV7: &str = "processor\t: 0
model name\t: ARMv7 Processor rev 4 (v7l)
BogoMIPS\t: 38.40
Features\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm crc32
CPU implementer\t: 0x41
CPU architecture: 7
CPU variant\t: 0x0
CPU part\t: 0xd03
CPU revision\t: 4

Hardware\t: BCM2835
Revision\t: a02082
Model\t\t: Raspberry Pi 3 Model B Rev 1.2
";

    /// An x86_64 build machine (trimmed to two processors).
    const X86: &str = "processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 85
model name\t: Intel(R) Xeon(R) CPU @ 2.20GHz
stepping\t: 7
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss ht syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm abm 3dnowprefetch avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni
bogomips\t: 4400.44

processor\t: 1
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 85
model name\t: Intel(R) Xeon(R) CPU @ 2.20GHz
flags\t\t: fpu vme de pse tsc msr sse sse2 lm avx avx2 fma
";

    fn kernels(f32c: &str, f16c: &str, i8c: &str) -> Kernels {
        Kernels {
            f32_conv: Some(KernelChoice::new(f32c)),
            f32_fc: None,
            f16_conv: Some(KernelChoice::new(f16c)),
            f16_fc: None,
            i8_conv: Some(KernelChoice::new(i8c)),
        }
    }

    fn aarch64(cpuinfo: &str, fp16: bool, dotprod: bool, kernels: Kernels) -> Observed {
        let mut isa = IsaSet::of_arch(tract_linalg::isa::Arch::Aarch64);
        if fp16 {
            isa = isa.with(Isa::Aarch64Fp16);
        }
        if dotprod {
            isa = isa.with(Isa::Aarch64DotProd);
        }
        Observed {
            arch: "aarch64".into(),
            target: "aarch64-linux-musl".into(),
            cpuinfo: Some(cpuinfo.into()),
            device_tree_model: None,
            tract: TractCpu::from_isa(isa, Some("Generic".into())),
            kernels,
            available_cores: 4,
            overrides: BTreeMap::new(),
        }
    }

    #[test]
    fn parses_pi4() {
        let cpu = CpuInfo::parse(PI4_A72);
        assert_eq!(cpu.arch.as_deref(), Some("aarch64"));
        assert_eq!(cpu.parts, vec!["0xd08"]);
        assert_eq!(cpu.cores, vec!["Cortex-A72"]);
        assert_eq!(cpu.model.as_deref(), Some("Cortex-A72"));
        assert_eq!(cpu.board.as_deref(), Some("Raspberry Pi 4 Model B Rev 1.4"));
        assert_eq!(cpu.processors, 4);
        assert!(cpu.neon() && !cpu.fp16() && !cpu.dotprod());
        assert_eq!(matching_profile("aarch64", &cpu).unwrap().name, "pi4");
    }

    #[test]
    fn parses_pi5() {
        let cpu = CpuInfo::parse(PI5_A76);
        assert_eq!(cpu.arch.as_deref(), Some("aarch64"));
        assert_eq!(cpu.parts, vec!["0xd0b"]);
        assert_eq!(cpu.model.as_deref(), Some("Cortex-A76"));
        assert_eq!(cpu.implementer.as_deref(), Some("0x41"));
        assert!(cpu.neon() && cpu.fp16() && cpu.dotprod());
        assert!(cpu.has_feature("fphp"));
        let profile = matching_profile("aarch64", &cpu).unwrap();
        assert_eq!(profile.name, "pi5");
        assert_eq!(profile.precision, Precision::F16);
    }

    #[test]
    fn parses_armv7_compat_view() {
        let cpu = CpuInfo::parse(PI3_ARMV7);
        assert_eq!(cpu.arch.as_deref(), Some("arm"));
        assert_eq!(cpu.model.as_deref(), Some("ARMv7 Processor rev 4 (v7l)"));
        assert_eq!(cpu.cores, vec!["Cortex-A53"]);
        assert!(cpu.neon() && !cpu.fp16());
        assert_eq!(cpu.board.as_deref(), Some("Raspberry Pi 3 Model B Rev 1.2"));
        assert_eq!(matching_profile("arm", &cpu).unwrap().name, "armv7");
    }

    #[test]
    fn parses_x86() {
        let cpu = CpuInfo::parse(X86);
        assert_eq!(cpu.arch.as_deref(), Some("x86_64"));
        assert_eq!(cpu.model.as_deref(), Some("Intel(R) Xeon(R) CPU @ 2.20GHz"));
        assert!(cpu.parts.is_empty() && cpu.board.is_none());
        assert_eq!(cpu.processors, 2);
        assert!(cpu.has_feature("avx2") && !cpu.neon());
        assert!(matching_profile("x86_64", &cpu).is_none());
    }

    #[test]
    fn garbage_never_panics() {
        for text in [
            "",
            ":",
            "\n\n:::\n",
            "CPU part\t:",
            "Features",
            "processor: x\u{0}\u{ff}",
        ] {
            let cpu = CpuInfo::parse(text);
            let _ = matching_profile("aarch64", &cpu);
        }
        let mut obs = aarch64("", false, false, Kernels::default());
        obs.cpuinfo = None;
        let report = DeviceReport::from_observed(obs, &Request::default());
        assert!(report.to_string().contains("kernel family: none"));
    }

    #[test]
    fn f16_on_a72_warns() {
        let k = kernels(
            "arm64simd_mmm_f32_8x8_gen",
            "arm64simd_mmm_f32_32x3_gen",
            "arm64simd_mmm_i32_8x8",
        );
        let obs = aarch64(PI4_A72, false, false, k);
        let req = Request {
            precision: Some(Precision::F16),
            threads: None,
        };
        let report = DeviceReport::from_observed(obs, &req);
        assert_eq!(report.profile.as_deref(), Some("pi4"));
        assert_eq!(report.recommended_precision, Precision::F32);
        assert!(
            report
                .warnings
                .iter()
                .any(|w| w.starts_with("f16 requested")),
            "{report}"
        );
        assert_eq!(report.kernel_family, "arm64simd (generic)");
        assert!(
            !report.warnings.iter().any(|w| w.contains("portable")),
            "{report}"
        );
    }

    #[test]
    fn portable_kernels_warn() {
        let k = kernels("generic_f32_4x4", "generic_f16_4x4", "generic_i32_4x2");
        let mut obs = aarch64(PI4_A72, false, false, k);
        obs.arch = "arm".into();
        obs.cpuinfo = Some(PI3_ARMV7.into());
        obs.tract = TractCpu::from_isa(IsaSet::of_arch(tract_linalg::isa::Arch::Arm), None);
        let report = DeviceReport::from_observed(obs, &Request::default());
        let all = report.warnings.join("\n");
        assert!(all.contains("no NEON"), "{all}");
        assert!(
            all.contains("portable Rust kernel generic_f32_4x4"),
            "{all}"
        );
        assert!(all.contains("32-bit build"), "{all}");
        assert_eq!(report.profile.as_deref(), Some("armv7"));
    }

    #[test]
    fn pi5_recommends_f16_without_warnings() {
        let k = kernels(
            "arm64simd_mmm_f32_8x8_gen",
            "arm64fp16_mmm_f16_16x8_gen",
            "arm64simd_mmm_i32_8x8_dot",
        );
        let obs = aarch64(PI5_A76, true, true, k);
        let req = Request {
            precision: Some(Precision::F16),
            threads: Some(4),
        };
        let report = DeviceReport::from_observed(obs, &req);
        assert_eq!(report.profile.as_deref(), Some("pi5"));
        assert_eq!(report.recommended_precision, Precision::F16);
        assert_eq!(report.recommended_threads, 4);
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
        assert_eq!(report.kernel_family, "arm64fp16 (generic)");
        let text = report.to_string();
        assert!(
            text.contains("FP16 arithmetic yes, dot product yes"),
            "{text}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json["kernels"]["i8_conv"]["family"],
            "arm64simd (dot product)"
        );
        assert_eq!(json["recommended_precision"], "f16");
    }

    #[test]
    fn hidden_fp16_and_too_many_threads_warn() {
        let k = kernels(
            "arm64simd_mmm_f32_8x8_gen",
            "generic_f16_4x4",
            "arm64simd_mmm_i32_8x8",
        );
        let mut obs = aarch64(PI5_A76, false, false, k);
        obs.overrides
            .insert("TRACT_CPU_ISA".into(), "-fp16,-dotprod".into());
        let report = DeviceReport::from_observed(
            obs,
            &Request {
                precision: None,
                threads: Some(16),
            },
        );
        let all = report.warnings.join("\n");
        assert!(all.contains("asimdhp"), "{all}");
        assert!(all.contains("asimddp"), "{all}");
        assert!(all.contains("16 threads requested"), "{all}");
        assert!(all.contains("TRACT_CPU_ISA=-fp16,-dotprod"), "{all}");
        assert_eq!(report.recommended_precision, Precision::F32);
    }

    #[test]
    fn emulation_is_flagged() {
        let obs = aarch64(X86, false, false, Kernels::default());
        let report = DeviceReport::from_observed(obs, &Request::default());
        assert!(report.profile.is_none());
        assert!(
            report.warnings.iter().any(|w| w.contains("emulation")),
            "{:?}",
            report.warnings
        );
    }

    #[test]
    fn kernel_families() {
        assert_eq!(
            kernel_family("arm64simd_mmm_f32_12x8_a53"),
            "arm64simd (cortex-a53 tuned)"
        );
        assert_eq!(
            kernel_family("arm64simd_mmm_f32_8x8_gen"),
            "arm64simd (generic)"
        );
        assert_eq!(
            kernel_family("arm64fp16_mmm_f16_16x8_gen"),
            "arm64fp16 (generic)"
        );
        assert_eq!(kernel_family("arm64simd_mmm_i32_8x8"), "arm64simd");
        assert_eq!(
            kernel_family("armv7neon_mmm_f32_8x6_generic"),
            "armv7neon (generic)"
        );
        assert_eq!(
            kernel_family("armv7neon_mmm_f32_32x1_cortexa7"),
            "armv7neon (cortex-a7 tuned)"
        );
        assert_eq!(kernel_family("generic_f32_4x4"), "generic (portable Rust)");
        assert_eq!(kernel_family("fma_mmm_f32_16x6"), "fma");
    }

    #[test]
    fn globs() {
        assert!(glob_match(
            "arm64simd_mmm_f32_*_a53",
            "arm64simd_mmm_f32_12x8_a53"
        ));
        assert!(!glob_match(
            "arm64simd_mmm_f32_*_a53",
            "arm64simd_mmm_f32_8x8_gen"
        ));
        assert!(glob_match("abc", "abc") && !glob_match("abc", "abcd"));
        assert!(glob_match("a*b*c", "aXbYc") && !glob_match("a*b*c", "ac"));
        assert!(glob_match("*", ""));
    }

    #[test]
    fn every_profile_parses_and_is_consistent() {
        assert_eq!(profiles().len(), PROFILE_SOURCES.len());
        for (name, text) in PROFILE_SOURCES {
            let p: DeviceProfile =
                toml::from_str(text).unwrap_or_else(|e| panic!("targets/{name}.toml: {e}"));
            assert_eq!(&p.name, name);
            assert!(p.threads >= 1 && p.threads <= p.cores, "{name}");
            assert!(
                [
                    "aarch64-unknown-linux-musl",
                    "aarch64-unknown-linux-gnu",
                    "armv7-unknown-linux-gnueabihf"
                ]
                .contains(&p.triple.as_str()),
                "{name}: {}",
                p.triple
            );
            let fp16 = p.features.iter().any(|f| f == "fp16");
            assert_eq!(
                p.precision == Precision::F16,
                fp16,
                "{name}: f16 needs FP16 arithmetic"
            );
            for key in p.kernels.keys() {
                assert!(
                    ["f32_conv", "f32_fc", "f16_conv", "f16_fc", "i8_conv"].contains(&key.as_str()),
                    "{name}: unknown kernel key {key}"
                );
            }
            if let Some(part) = &p.cpu_part {
                assert!(
                    !part_name("0x41", part).starts_with("unknown"),
                    "{name}: {part}"
                );
            }
        }
    }

    /// Shapes for [`optimised_matmul`]: small enough for qemu, and chosen so tract picks the same
    /// kernels as for the representative ResNet shapes (n a multiple of 8, m >= 64 for n = 1).
    const SMALL_CONV: (usize, usize, usize) = (64, 144, 200);
    const SMALL_FC: (usize, usize, usize) = (128, 256, 1);

    /// Optimise and run `a(m,k) x b(k,n)` as tract would a conv or FC layer (constant weights),
    /// in `dt`. Returns the matmul kernels the optimiser chose and the worst error relative to
    /// an f64 reference computed from the same (rounded) inputs, scaled by sum |a*b|.
    fn optimised_matmul(dt: DatumType, (m, k, n): (usize, usize, usize)) -> (Vec<String>, f64) {
        use tract_core::internal::*;
        use tract_core::ops::einsum::EinSum;
        use tract_core::ops::matmul::optimized::OptMatMul;

        let values = |len: usize, seed: usize| -> Vec<f32> {
            (0..len)
                .map(|i| ((i * 7919 + seed * 104_729) % 201) as f32 / 100.0 - 1.0)
                .collect()
        };
        let a = Tensor::from_shape(&[m, k], &values(m * k, 1))
            .unwrap()
            .cast_to_dt(dt)
            .unwrap()
            .into_owned();
        let b = Tensor::from_shape(&[k, n], &values(k * n, 2))
            .unwrap()
            .cast_to_dt(dt)
            .unwrap()
            .into_owned();

        let mut model = TypedModel::default();
        let wa = model.add_const("weights", a.clone()).unwrap();
        let wb = model
            .add_source("input", TypedFact::dt_shape(dt, [k, n]))
            .unwrap();
        let out = model
            .wire_node(
                "matmul",
                EinSum::new("mk,kn->mn".parse().unwrap(), dt),
                &[wa, wb],
            )
            .unwrap();
        model.select_output_outlets(&out).unwrap();
        let model = model.into_optimized().unwrap();
        let kernels: Vec<String> = model
            .nodes()
            .iter()
            .filter_map(|node| node.op_as::<OptMatMul>())
            .flat_map(|op| op.mmm.iter().map(|mmm| mmm.name().to_string()))
            .collect();
        let result = model
            .into_runnable()
            .unwrap()
            .run(tvec!(b.clone().into_tvalue()))
            .unwrap();
        let plain = |t: &Tensor| -> Vec<f32> {
            let t = t.cast_to::<f32>().unwrap();
            t.to_plain_array_view::<f32>()
                .unwrap()
                .iter()
                .copied()
                .collect()
        };
        let (a, b, c) = (plain(&a), plain(&b), plain(&result[0]));
        assert_eq!(c.len(), m * n);
        let mut worst = 0f64;
        for i in 0..m {
            for j in 0..n {
                let (mut exact, mut scale) = (0f64, 0f64);
                for l in 0..k {
                    let p = a[i * k + l] as f64 * b[l * n + j] as f64;
                    exact += p;
                    scale += p.abs();
                }
                worst = worst.max((c[i * n + j] as f64 - exact).abs() / scale.max(1e-9));
            }
        }
        (kernels, worst)
    }

    /// Runs real tract kernels (the assembly ones on ARM): under qemu with the profile's CPU this
    /// is what proves the A53, generic and FP16 paths compute, not just that they are selected.
    #[test]
    fn optimised_matmuls_are_accurate() {
        let expect = std::env::var("RESNET_EDGE_EXPECT_PROFILE")
            .ok()
            .and_then(|p| profile(&p));
        let cases = [
            (DatumType::F32, SMALL_CONV, "f32_conv", 1e-5),
            (DatumType::F32, SMALL_FC, "f32_fc", 1e-5),
            // f16 accumulates in f16 on FP16 cores: 11-bit mantissa over k = 144..256 terms.
            (DatumType::F16, SMALL_CONV, "f16_conv", 1e-2),
            (DatumType::F16, SMALL_FC, "f16_fc", 1e-2),
        ];
        for (dt, shape, key, tolerance) in cases {
            let (kernels, err) = optimised_matmul(dt, shape);
            println!("{key} {shape:?}: kernels {kernels:?}, relative error {err:.2e}");
            assert!(
                err <= tolerance,
                "{key}: error {err:e} above {tolerance:e} with {kernels:?}"
            );
            if let Some(pattern) = expect.as_ref().and_then(|p| p.kernels.get(key)) {
                assert!(
                    kernels.iter().any(|k| glob_match(pattern, k)),
                    "{key}: optimiser chose {kernels:?}, profile expects {pattern}"
                );
            }
        }
    }

    /// The kernels tract actually picks on this machine (or emulated machine) must be the ones
    /// the profile named in `RESNET_EDGE_EXPECT_PROFILE` promises; targets/cross-test.sh sets it
    /// with the profile's qemu CPU and tract overrides. Without the variable it only checks that
    /// the probe runs and the report prints.
    #[test]
    fn native_report_matches_expected_profile() {
        let report = report();
        let text = report.to_string();
        assert!(text.contains("kernel family:"));
        let Ok(name) = std::env::var("RESNET_EDGE_EXPECT_PROFILE") else {
            return;
        };
        let profile = profile(&name).unwrap_or_else(|| panic!("no profile {name}"));
        println!("{text}");
        for (key, pattern) in &profile.kernels {
            let got = report
                .kernels
                .get(key)
                .map(|k| k.name.clone())
                .unwrap_or_default();
            assert!(
                glob_match(pattern, &got),
                "{name}: {key} is {got}, profile says {pattern}"
            );
        }
        for feature in &profile.features {
            let have = match feature.as_str() {
                "neon" => report.tract.neon,
                "fp16" => report.tract.fp16,
                "dotprod" => report.tract.dotprod,
                _ => true,
            };
            assert!(have, "{name}: tract does not detect {feature}");
        }
        assert_eq!(
            report.tract.fp16,
            profile.features.iter().any(|f| f == "fp16"),
            "{name}"
        );
        if let Some(kind) = &report.tract.kind {
            let expected = profile
                .emulate
                .tract_kind
                .as_ref()
                .unwrap_or(&profile.tract_kind);
            assert_eq!(kind, expected, "{name}");
        }
    }
}
