//! ResNet from `state_dict` weights: the architecture read off the checkpoint's keys and shapes,
//! then built natively into a tract graph by [`builder`].
//!
//! Structure follows He et al., "Deep Residual Learning for Image Recognition" (2015), table 1:
//! a 7x7/2 stem and 3x3/2 max-pool, four stages of basic (3x3-3x3) or bottleneck (1x1-3x3-1x1)
//! blocks, global average pool and one fully connected layer. Keys follow torchvision's (and
//! timm's) module paths, `layer3.22.conv3.weight`, like candle's `resnet.rs`.

pub mod builder;

use std::collections::BTreeSet;
use std::fmt;

use crate::model::state_dict::StateDict;
use crate::{Error, Result};

pub use builder::build;

/// The residual block of a stage (burn's resnet keeps this as an enum too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockKind {
    /// Two 3x3 convs (ResNet-18/34).
    Basic,
    /// 1x1 reduce, 3x3, 1x1 expand (ResNet-50/101/152).
    Bottleneck,
}

impl BlockKind {
    /// Conv/BN pairs per block, named `conv{i}`/`bn{i}` in torchvision.
    pub fn convs(self) -> usize {
        match self {
            BlockKind::Basic => 2,
            BlockKind::Bottleneck => 3,
        }
    }
}

/// The standard depths of the paper's table 1: name, block kind, blocks per stage.
pub const STANDARD: [(&str, BlockKind, [usize; 4]); 5] = [
    ("resnet18", BlockKind::Basic, [2, 2, 2, 2]),
    ("resnet34", BlockKind::Basic, [3, 4, 6, 3]),
    ("resnet50", BlockKind::Bottleneck, [3, 4, 6, 3]),
    ("resnet101", BlockKind::Bottleneck, [3, 4, 23, 3]),
    ("resnet152", BlockKind::Bottleneck, [3, 8, 36, 3]),
];

/// What the builder needs to know beyond the weights themselves: channel widths, kernel sizes
/// and the class count are read from the weight shapes as the graph is built.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ResNetConfig {
    pub block: BlockKind,
    pub layers: [usize; 4],
    pub num_classes: usize,
    /// BatchNorm epsilon; a state_dict does not record it, torchvision's default is 1e-5.
    pub bn_eps: f32,
}

impl ResNetConfig {
    pub fn new(block: BlockKind, layers: [usize; 4], num_classes: usize) -> Self {
        ResNetConfig {
            block,
            layers,
            num_classes,
            bn_eps: 1e-5,
        }
    }

    /// `resnet18` .. `resnet152`.
    pub fn from_arch(name: &str, num_classes: usize) -> Result<Self> {
        STANDARD
            .iter()
            .find(|(n, ..)| *n == name)
            .map(|(_, block, layers)| ResNetConfig::new(*block, *layers, num_classes))
            .ok_or_else(|| {
                let names: Vec<&str> = STANDARD.iter().map(|(n, ..)| *n).collect();
                Error::usage(format!(
                    "unknown arch {name:?}; expected one of {}",
                    names.join(", ")
                ))
            })
    }

    /// Layer count as the paper counts it: stem conv + block convs + fc.
    pub fn depth(&self) -> usize {
        2 + self.layers.iter().sum::<usize>() * self.block.convs()
    }

    /// `resnet50` for a standard table entry, else e.g. `resnet-bottleneck-[3, 4, 6, 2]`.
    pub fn arch_name(&self) -> String {
        STANDARD
            .iter()
            .find(|(_, b, l)| *b == self.block && *l == self.layers)
            .map(|(n, ..)| n.to_string())
            .unwrap_or_else(|| format!("resnet-{:?}-{:?}", self.block, self.layers).to_lowercase())
    }

    /// Read block kind, blocks per stage and class count from the checkpoint's keys and shapes:
    /// `layer1.0.conv3.weight` means bottleneck, the highest `layer3.N.` index gives the count.
    pub fn detect(weights: &StateDict) -> Result<Self> {
        let block = if weights.contains("layer1.0.conv3.weight") {
            BlockKind::Bottleneck
        } else if weights.contains("layer1.0.conv2.weight") {
            BlockKind::Basic
        } else {
            return Err(Error::file(
                weights.path(),
                "not a torchvision/timm ResNet state_dict: no layer1.0.conv2.weight key",
            ));
        };
        let mut layers = [0usize; 4];
        for key in weights.keys() {
            let Some(rest) = key.strip_prefix("layer") else {
                continue;
            };
            let mut parts = rest.split('.');
            let stage = parts.next().and_then(|s| s.parse::<usize>().ok());
            let index = parts.next().and_then(|s| s.parse::<usize>().ok());
            if let (Some(stage @ 1..=4), Some(index)) = (stage, index) {
                layers[stage - 1] = layers[stage - 1].max(index + 1);
            }
        }
        if let Some(stage) = layers.iter().position(|&n| n == 0) {
            return Err(Error::file(
                weights.path(),
                format!("no blocks for layer{}", stage + 1),
            ));
        }
        let num_classes = match weights.shape("fc.weight") {
            Some(&[classes, _]) => classes,
            Some(shape) => {
                return Err(Error::file(
                    weights.path(),
                    format!("fc.weight has shape {shape:?}, expected [classes, features]"),
                ))
            }
            None => return Err(Error::file(weights.path(), "missing key fc.weight")),
        };
        Ok(ResNetConfig::new(block, layers, num_classes))
    }

    /// Every key this architecture reads from `weights`. The 1x1 projection shortcut
    /// (`downsample`) is expected where the paper's option B needs one (a stride-2 block or a
    /// channel change), and also read where a checkpoint supplies it anyway.
    pub fn expected_keys(&self, weights: &StateDict) -> Vec<String> {
        let mut keys = Vec::new();
        let conv_bn = |conv: &str, bn: &str, keys: &mut Vec<String>| {
            keys.push(format!("{conv}.weight"));
            for p in ["weight", "bias", "running_mean", "running_var"] {
                keys.push(format!("{bn}.{p}"));
            }
        };
        conv_bn("conv1", "bn1", &mut keys);
        for (stage, &blocks) in self.layers.iter().enumerate() {
            for b in 0..blocks {
                let prefix = format!("layer{}.{b}", stage + 1);
                for i in 1..=self.block.convs() {
                    conv_bn(
                        &format!("{prefix}.conv{i}"),
                        &format!("{prefix}.bn{i}"),
                        &mut keys,
                    );
                }
                let projection_needed =
                    b == 0 && (stage > 0 || self.block == BlockKind::Bottleneck);
                if projection_needed || weights.contains(&format!("{prefix}.downsample.0.weight")) {
                    conv_bn(
                        &format!("{prefix}.downsample.0"),
                        &format!("{prefix}.downsample.1"),
                        &mut keys,
                    );
                }
            }
        }
        keys.push("fc.weight".into());
        keys.push("fc.bias".into());
        keys
    }

    /// Fail, naming them, if keys are missing or would be left unused (BatchNorm's
    /// `num_batches_tracked` counter is training state and is ignored).
    pub fn check_keys(&self, weights: &StateDict) -> Result<()> {
        let expected: BTreeSet<String> = self.expected_keys(weights).into_iter().collect();
        let missing: Vec<&str> = expected
            .iter()
            .filter(|k| !weights.contains(k))
            .map(|k| k.as_str())
            .collect();
        let unused: Vec<&str> = weights
            .keys()
            .filter(|k| !expected.contains(*k) && !k.ends_with(".num_batches_tracked"))
            .collect();
        let mut problems = Vec::new();
        if !missing.is_empty() {
            problems.push(format!(
                "missing keys for {}: {}",
                self.arch_name(),
                key_list(&missing)
            ));
        }
        if !unused.is_empty() {
            problems.push(format!(
                "unused keys for {}: {}",
                self.arch_name(),
                key_list(&unused)
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::file(weights.path(), problems.join("; ")))
        }
    }
}

impl fmt::Display for ResNetConfig {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "{} ({:?} blocks {:?}, {} classes)",
            self.arch_name(),
            self.block,
            self.layers,
            self.num_classes
        )
    }
}

/// At most ten names, then a count, so one bad checkpoint does not print a thousand keys.
fn key_list(keys: &[&str]) -> String {
    let shown = keys.iter().take(10).copied().collect::<Vec<_>>().join(", ");
    if keys.len() > 10 {
        format!("{shown} and {} more", keys.len() - 10)
    } else {
        shown
    }
}
