//! The numeric precision a model runs in, and how a request becomes what actually runs.
//!
//! One [`Precision`] serves every command (`classify`, `bench`, `profile`, `camera`, `info`,
//! `doctor`, `quantize`). What runs depends on three things: what the user asked for, what the
//! file stores (f32, an f16 artifact, an int8 artifact) and whether tract has native FP16
//! arithmetic on this CPU. Off such cores tract would emulate f16 arithmetic at many times f32's
//! cost, so an f16 request there runs f32 instead (f16 weights widened at load) and says so:
//! f16 artifacts halve the file copied to the device, not the run time.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A precision to run in (`F32`, `F16`, `Int8`) or to let the runtime pick (`Auto`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    F16,
    Int8,
    /// f16 on cores where tract computes in f16, int8 for int8 artifacts, else f32.
    #[default]
    Auto,
}

impl FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Precision> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "f16" | "fp16" | "float16" | "half" => Ok(Precision::F16),
            "int8" | "i8" => Ok(Precision::Int8),
            "auto" => Ok(Precision::Auto),
            _ => Err(Error::usage(format!(
                "unknown precision {s:?}: expected f32, f16, int8 or auto"
            ))),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Int8 => "int8",
            Precision::Auto => "auto",
        })
    }
}

/// What was asked, what runs and why: reported by `info`, `bench` and `profile`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PrecisionChoice {
    pub requested: Precision,
    /// What tract executes: `F32`, `F16` or `Int8`.
    pub run: Precision,
    /// What the file stores: `F32`, `F16` (an f16 artifact) or `Int8` (an int8 artifact).
    pub weights: Precision,
    pub reason: String,
}

impl PrecisionChoice {
    /// f32 from an f32 file, for models built in memory (tests, benches).
    pub fn f32() -> PrecisionChoice {
        PrecisionChoice {
            requested: Precision::F32,
            run: Precision::F32,
            weights: Precision::F32,
            reason: "requested f32".into(),
        }
    }
}

impl fmt::Display for PrecisionChoice {
    /// `f32 (requested f16; ...)`: the line `info` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.run, self.reason)
    }
}

/// Whether tract computes in f16 on this CPU, with the fact that decided it for messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Fp16Support {
    pub native: bool,
    /// e.g. "Cortex-A72 has no FEAT_FP16 (asimdhp)", "x86_64: tract's f16 kernels are aarch64 only".
    pub detail: String,
}

impl Fp16Support {
    /// This machine. Only aarch64 counts: tract's f16 matmul kernels exist there alone, and
    /// anywhere else its f16 ops (elementwise, pooling) are emulated through `half`.
    pub fn native() -> Fp16Support {
        let tract = crate::device::TractCpu::native();
        let arch = std::env::consts::ARCH;
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .map(|t| crate::device::CpuInfo::parse(&t))
            .unwrap_or_default();
        Fp16Support::of(arch, tract.fp16, &cpu)
    }

    /// The decision from the facts (kept apart from probing them, for tests).
    pub fn of(arch: &str, tract_fp16: bool, cpu: &crate::device::CpuInfo) -> Fp16Support {
        // Under emulation /proc/cpuinfo describes the host: its name would mislead.
        let core = cpu
            .model
            .clone()
            .filter(|_| cpu.arch.as_deref().is_none_or(|a| a == arch))
            .unwrap_or_else(|| "this core".to_string());
        let (native, detail) = match arch {
            "aarch64" if tract_fp16 => (true, format!("{core} has FEAT_FP16 (asimdhp)")),
            "aarch64" if cpu.fp16() => (
                false,
                format!("{core} reports asimdhp but tract's FP16 use is disabled (TRACT_CPU_ISA?)"),
            ),
            "aarch64" => (false, format!("{core} has no FEAT_FP16 (asimdhp)")),
            "arm" => (
                false,
                "32-bit ARM build: tract's f16 kernels are aarch64 only".to_string(),
            ),
            other => (
                false,
                format!("{other}: tract's f16 kernels are aarch64 only"),
            ),
        };
        Fp16Support { native, detail }
    }
}

/// ONNX ops that only appear in quantised (int8) graphs.
pub const INT8_OPS: &[&str] = &[
    "QLinearConv",
    "QLinearMatMul",
    "MatMulInteger",
    "ConvInteger",
    "QuantizeLinear",
    "DynamicQuantizeLinear",
];

/// What an ONNX graph stores: `Int8` with quantised ops, `F16` for an f16 artifact (FLOAT16
/// initializers read through `Cast(to=FLOAT)`), else `F32`.
pub fn onnx_weights(graph: &tract_onnx::pb::GraphProto) -> Precision {
    if graph
        .node
        .iter()
        .any(|n| INT8_OPS.contains(&n.op_type.as_str()))
    {
        Precision::Int8
    } else if crate::transform::half::is_f16_artifact(graph) {
        Precision::F16
    } else {
        Precision::F32
    }
}

/// Measured on x86-64 with AVX2 (README): tract 0.23.9's integer matmuls run ResNet-50 many
/// times slower than its f32 ones; the `int8-conv` rewrite takes the convs whose weights are
/// 7-bit (what `quantize` writes) onto our AVX2 kernel instead.
const X86_INT8: &str = if cfg!(target_arch = "x86_64") {
    " (on x86_64 convs with 7-bit weights, as `quantize` writes them, run on resnet-edge's \
     AVX2 kernel, rewrite int8-conv; any others on tract's far slower int8 kernels)"
} else {
    ""
};

/// Decide what runs. `stored` is what the file holds (`F32`, `F16` or `Int8`); `fp16` whether
/// tract has native FP16 arithmetic here (`cpu` says why, for the reason). Asking for a
/// precision the file cannot give (f32/f16 of an int8 artifact, int8 of a float model) is a
/// usage error naming `file`.
pub fn choose(
    requested: Precision,
    stored: Precision,
    fp16: bool,
    cpu: &str,
    file: &Path,
) -> Result<PrecisionChoice> {
    let no_fp16 = format!("this CPU has no FP16 arithmetic tract can use ({cpu})");
    let widened = "f16 weights widened to f32 at load, speed and RAM are f32's";
    let (run, reason) = match (stored, requested) {
        (Precision::Int8, Precision::F32 | Precision::F16) => {
            return Err(Error::file(
                file,
                format!(
                    "is an int8 artifact; it runs in int8 only (use --precision int8 or auto, not {requested})"
                ),
            ))
        }
        (Precision::Int8, Precision::Auto) => {
            (Precision::Int8, format!("auto; int8 artifact{X86_INT8}"))
        }
        (Precision::Int8, _) => (
            Precision::Int8,
            format!("requested int8; int8 artifact{X86_INT8}"),
        ),
        (_, Precision::Int8) => {
            return Err(Error::file(
                file,
                format!(
                    "is a float ({stored}) model, not an int8 artifact: run `resnet-edge quantize MODEL --calib DIR --out FILE` first and load FILE"
                ),
            ))
        }
        (Precision::F16, Precision::F32) => (Precision::F32, format!("requested f32; {widened}")),
        (_, Precision::F32) => (Precision::F32, "requested f32".to_string()),
        (_, Precision::F16 | Precision::Auto) if fp16 => {
            let converted = if stored == Precision::F32 {
                ", f32 weights converted to f16 at load"
            } else {
                ""
            };
            let asked = if requested == Precision::F16 {
                "requested f16"
            } else {
                "auto"
            };
            (
                Precision::F16,
                format!("{asked}; {cpu}: tract's f16 kernels{converted}"),
            )
        }
        (Precision::F16, Precision::F16 | Precision::Auto) => {
            let asked = if requested == Precision::F16 {
                "requested f16"
            } else {
                "auto"
            };
            (Precision::F32, format!("{asked}; {no_fp16}: {widened}"))
        }
        (_, Precision::F16) => (
            Precision::F32,
            format!("requested f16; {no_fp16}: runs f32, never emulated f16"),
        ),
        (_, _) => (Precision::F32, format!("auto; {no_fp16}")),
    };
    Ok(PrecisionChoice {
        requested,
        run,
        weights: stored,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Precision::*;

    #[test]
    fn parses_every_spelling() {
        for (names, want) in [
            (&["f32", "FP32", "float32"][..], F32),
            (&["f16", "fp16", "Float16", "half"], F16),
            (&["int8", "i8"], Int8),
            (&["auto", "AUTO"], Auto),
        ] {
            for name in names {
                assert_eq!(name.parse::<Precision>().unwrap(), want, "{name}");
            }
            assert_eq!(want.to_string().parse::<Precision>().unwrap(), want);
        }
        let err = "fp64".parse::<Precision>().unwrap_err().to_string();
        assert!(err.contains("unknown precision \"fp64\""), "{err}");
        assert_eq!(serde_json::to_value(Int8).unwrap(), "int8");
        let back: Precision = serde_json::from_value("f16".into()).unwrap();
        assert_eq!(back, F16);
    }

    fn run(requested: Precision, stored: Precision, fp16: bool) -> Result<PrecisionChoice> {
        choose(
            requested,
            stored,
            fp16,
            "Cortex-A72 has no FEAT_FP16",
            Path::new("m.onnx"),
        )
    }

    #[test]
    fn resolution_table() {
        // (requested, stored, fp16) -> run
        let table = [
            (F32, F32, false, F32),
            (F32, F32, true, F32),
            (F32, F16, true, F32),
            (F16, F32, true, F16),
            (F16, F16, true, F16),
            (Auto, F32, true, F16),
            (Auto, F16, true, F16),
            (Auto, F32, false, F32),
            (Auto, F16, false, F32),
            (F16, F16, false, F32),
            (F16, F32, false, F32),
            (Int8, Int8, false, Int8),
            (Auto, Int8, true, Int8),
        ];
        for (requested, stored, fp16, want) in table {
            let c = run(requested, stored, fp16).unwrap();
            assert_eq!(c.run, want, "{requested} of {stored}, fp16 {fp16}: {c:?}");
            assert_eq!((c.requested, c.weights), (requested, stored));
        }
    }

    #[test]
    fn f16_without_fp16_says_widened_never_emulated() {
        let c = run(F16, F16, false).unwrap();
        assert!(
            c.reason.starts_with(
                "requested f16; this CPU has no FP16 arithmetic tract can use (Cortex-A72"
            ),
            "{c}"
        );
        assert!(
            c.reason
                .contains("f16 weights widened to f32 at load, speed and RAM are f32's"),
            "{c}"
        );
        assert!(c.to_string().starts_with("f32 (requested f16; "), "{c}");
        let c = run(F16, F32, false).unwrap();
        assert!(c.reason.contains("never emulated f16"), "{c}");
        let c = run(Auto, F16, false).unwrap();
        assert!(c.reason.starts_with("auto; this CPU has no FP16"), "{c}");
    }

    #[test]
    fn impossible_requests_are_usage_errors_naming_the_file() {
        for requested in [F32, F16] {
            let err = run(requested, Int8, true).unwrap_err().to_string();
            assert!(
                err.starts_with("m.onnx: is an int8 artifact; it runs in int8 only"),
                "{err}"
            );
        }
        for stored in [F32, F16] {
            let err = run(Int8, stored, true).unwrap_err().to_string();
            assert!(err.starts_with("m.onnx: is a float"), "{err}");
            assert!(
                err.contains("resnet-edge quantize MODEL --calib DIR --out FILE"),
                "{err}"
            );
        }
    }

    #[test]
    fn fp16_support_is_aarch64_with_tract_fp16_only() {
        let a76 = crate::device::CpuInfo {
            model: Some("Cortex-A76".into()),
            features: vec!["asimdhp".into()],
            ..Default::default()
        };
        assert!(Fp16Support::of("aarch64", true, &a76).native);
        let off = Fp16Support::of("aarch64", false, &a76);
        assert!(!off.native && off.detail.contains("disabled"), "{off:?}");
        let a72 = crate::device::CpuInfo {
            model: Some("Cortex-A72".into()),
            ..Default::default()
        };
        let d = Fp16Support::of("aarch64", false, &a72);
        assert_eq!(d.detail, "Cortex-A72 has no FEAT_FP16 (asimdhp)");
        // AVX512-FP16 makes tract report fp16, but its f16 matmuls would still be emulated.
        let x86 = Fp16Support::of("x86_64", true, &Default::default());
        assert!(!x86.native && x86.detail.starts_with("x86_64"), "{x86:?}");
        assert!(!Fp16Support::of("arm", true, &Default::default()).native);
        // qemu-user shows the host's cpuinfo: its name is not the core's.
        let host = crate::device::CpuInfo {
            arch: Some("x86_64".into()),
            model: Some("AMD EPYC".into()),
            ..Default::default()
        };
        let d = Fp16Support::of("aarch64", true, &host);
        assert_eq!(d.detail, "this core has FEAT_FP16 (asimdhp)");
    }
}
