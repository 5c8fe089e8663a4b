//! Which SIMD kernels the rewrites' ops run, detected once per process.
//!
//! The levels are ordered: each adds to the one before. f32 convs use 16-lane FMA from
//! `Avx512` on; int8 convs multiply with `vpdpbusd` (u8 x i8 quads summed into i32 in one
//! instruction, where AVX2 needs `vpmaddubsw` + `vpmaddwd` + `vpaddd`) from `Avx512Vnni` on.
//! `RESNET_EDGE_ISA=avx2` (or `avx512`, `portable`) caps the level, to measure what each buys;
//! at `portable` the rules that need a SIMD kernel do not fire.

use std::sync::OnceLock;

/// The environment variable that caps the detected level.
pub const ISA_ENV: &str = "RESNET_EDGE_ISA";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Plain Rust: the tests' cross-check, and every non-x86 target.
    Portable,
    /// AVX2 + FMA (Haswell, Zen).
    Avx2,
    /// AVX-512F (Skylake-SP on).
    Avx512,
    /// AVX-512 VNNI with VL (Cascade Lake, Ice Lake, Zen 4 on).
    Avx512Vnni,
}

impl Isa {
    /// The highest level this CPU runs, capped by [`ISA_ENV`].
    pub fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let cap = std::env::var(ISA_ENV).ok().and_then(|v| Isa::parse(&v));
            let best = Isa::available().last().copied().unwrap_or(Isa::Portable);
            cap.map_or(best, |cap| best.min(cap))
        })
    }

    /// Every level this CPU runs, lowest first (the tests run each).
    pub fn available() -> Vec<Isa> {
        let isas = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        let isas = {
            use std::arch::is_x86_feature_detected as has;
            let mut isas = isas;
            if has!("avx2") && has!("fma") {
                isas.push(Isa::Avx2);
                if has!("avx512f") {
                    isas.push(Isa::Avx512);
                    if has!("avx512vnni") && has!("avx512vl") {
                        isas.push(Isa::Avx512Vnni);
                    }
                }
            }
            isas
        };
        isas
    }

    /// The SIMD levels of [`Isa::available`] (the kernel tests run each).
    pub fn simd() -> Vec<Isa> {
        let mut isas = Isa::available();
        isas.retain(|&i| i >= Isa::Avx2);
        isas
    }

    /// The level a [`ISA_ENV`] value names (`avx512-vnni` or `avx512vnni`, any case).
    fn parse(value: &str) -> Option<Isa> {
        match value.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "portable" => Some(Isa::Portable),
            "avx2" => Some(Isa::Avx2),
            "avx512" => Some(Isa::Avx512),
            "avx512vnni" => Some(Isa::Avx512Vnni),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_order() {
        assert_eq!(Isa::parse("AVX2"), Some(Isa::Avx2));
        assert_eq!(Isa::parse("avx512-vnni"), Some(Isa::Avx512Vnni));
        assert_eq!(Isa::parse("sse"), None);
        assert!(Isa::Portable < Isa::Avx2 && Isa::Avx512 < Isa::Avx512Vnni);
        let available = Isa::available();
        assert_eq!(available[0], Isa::Portable);
        assert!(available.windows(2).all(|w| w[0] < w[1]));
    }
}
