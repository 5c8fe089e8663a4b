//! ResNet from `state_dict` weights: the architecture read off the checkpoint's keys and shapes,
//! then built natively into a tract graph by [`builder`].
//!
//! Structure follows He et al., "Deep Residual Learning for Image Recognition" (2015), table 1:
//! a 7x7/2 stem and 3x3/2 max-pool, four stages of basic (3x3-3x3) or bottleneck (1x1-3x3-1x1)
//! blocks, global average pool and one fully connected layer. Keys follow torchvision's (and
//! timm's) module paths, `layer3.22.conv3.weight`, like candle's `resnet.rs`, or the seed
//! article's own classes ([`ResNetLayout::Article`]), which name and wire the same net
//! differently.

pub mod builder;
pub mod onnx_export;
mod weights;

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

    /// The stride of conv `i` (1-based) in a block that downsamples by `block_stride`: the
    /// first 3x3 of a basic block, the 3x3 (conv2) of a bottleneck (torchvision's "ResNet v1.5").
    pub fn conv_stride(self, i: usize, block_stride: usize) -> usize {
        match self {
            BlockKind::Basic if i == 1 => block_stride,
            BlockKind::Bottleneck if i == 2 => block_stride,
            _ => 1,
        }
    }
}

/// Whose module names and wiring a checkpoint follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ResNetLayout {
    /// torchvision/timm: `conv1`/`bn1` stem, convs without bias, `downsample.0/1` shortcut,
    /// ReLU only after the residual add.
    Torchvision,
    /// The seed article's `ResNet18`/`ResBlock`/`ResBottleneckBlock`: stem `layer0` is conv
    /// (with bias) -> max-pool -> BN -> ReLU, every conv has a bias, a block's branch is ReLU'd
    /// before the add as well as after, shortcut `shortcut.0/1`, pooling `gap`.
    Article,
}

impl ResNetLayout {
    pub fn name(self) -> &'static str {
        match self {
            ResNetLayout::Torchvision => "torchvision",
            ResNetLayout::Article => "article",
        }
    }

    /// Keys only the article's layout has (`layer0.*`, `*.shortcut.*`) against keys only
    /// torchvision's has (`conv1.*`, `bn1.*`, `*.downsample.*`). A checkpoint with both is
    /// refused rather than guessed at: part of it would be read under the wrong wiring.
    pub fn detect(weights: &StateDict) -> Result<Self> {
        let counted = |k: &&str| !k.ends_with(".num_batches_tracked");
        let article: Vec<&str> = weights
            .keys()
            .filter(counted)
            .filter(|k| k.starts_with("layer0.") || k.contains(".shortcut."))
            .collect();
        let torchvision: Vec<&str> = weights
            .keys()
            .filter(counted)
            .filter(|k| {
                k.starts_with("conv1.") || k.starts_with("bn1.") || k.contains(".downsample.")
            })
            .collect();
        match (article.is_empty(), torchvision.is_empty()) {
            (true, _) => Ok(ResNetLayout::Torchvision),
            (false, true) => Ok(ResNetLayout::Article),
            (false, false) => Err(Error::file(
                weights.path(),
                format!(
                    "mixes two ResNet layouts: torchvision's keys {} and the article's keys {}; \
                     rename them to one layout (--layout picks one and reports the rest)",
                    key_list(&torchvision),
                    key_list(&article)
                ),
            )),
        }
    }

    /// The projection shortcut's conv and BN module paths in block `prefix`.
    pub fn shortcut(self, prefix: &str) -> (String, String) {
        let name = match self {
            ResNetLayout::Torchvision => "downsample",
            ResNetLayout::Article => "shortcut",
        };
        (format!("{prefix}.{name}.0"), format!("{prefix}.{name}.1"))
    }

    /// The article's convs keep PyTorch's default `bias=True`; torchvision's have none.
    pub fn conv_bias(self) -> bool {
        self == ResNetLayout::Article
    }
}

impl fmt::Display for ResNetLayout {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.name())
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
    pub layout: ResNetLayout,
}

impl ResNetConfig {
    pub fn new(block: BlockKind, layers: [usize; 4], num_classes: usize) -> Self {
        ResNetConfig {
            block,
            layers,
            num_classes,
            bn_eps: 1e-5,
            layout: ResNetLayout::Torchvision,
        }
    }

    pub fn with_layout(self, layout: ResNetLayout) -> Self {
        ResNetConfig { layout, ..self }
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

    /// Read layout, block kind, blocks per stage and class count from the checkpoint's keys and
    /// shapes: `layer1.0.conv3.weight` means bottleneck, the highest `layer3.N.` index gives the
    /// count (both layouts name blocks alike).
    pub fn detect(weights: &StateDict) -> Result<Self> {
        Self::detect_as(weights, ResNetLayout::detect(weights)?)
    }

    /// [`detect`](Self::detect) with the layout given (`--layout`).
    pub fn detect_as(weights: &StateDict, layout: ResNetLayout) -> Result<Self> {
        let block = if weights.contains("layer1.0.conv3.weight") {
            BlockKind::Bottleneck
        } else if weights.contains("layer1.0.conv2.weight") {
            BlockKind::Basic
        } else {
            let what = match layout {
                ResNetLayout::Torchvision => "a torchvision/timm",
                ResNetLayout::Article => "an article-layout",
            };
            return Err(Error::file(
                weights.path(),
                format!("not {what} ResNet state_dict: no layer1.0.conv2.weight key"),
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
        Ok(ResNetConfig::new(block, layers, num_classes).with_layout(layout))
    }

    /// Whether block `b` of `stage` (0-based) must have a projection shortcut: where it strides
    /// (first block of stages 2-4) or changes width (a bottleneck's first block, 64 -> 256).
    /// The article's bottleneck adds one exactly when `downsample or in != out`: the same set.
    fn projection_needed(&self, stage: usize, b: usize) -> bool {
        b == 0 && (stage > 0 || self.block == BlockKind::Bottleneck)
    }

    /// Every key this architecture reads from `weights`. The 1x1 projection shortcut
    /// (`downsample`) is expected where the paper's option B needs one (a stride-2 block or a
    /// channel change), and also read where a checkpoint supplies it anyway.
    pub fn expected_keys(&self, weights: &StateDict) -> Vec<String> {
        let mut keys = Vec::new();
        let bias = self.layout.conv_bias();
        let conv_bn = |conv: &str, bn: &str, keys: &mut Vec<String>| {
            keys.push(format!("{conv}.weight"));
            if bias {
                keys.push(format!("{conv}.bias"));
            }
            for p in ["weight", "bias", "running_mean", "running_var"] {
                keys.push(format!("{bn}.{p}"));
            }
        };
        match self.layout {
            ResNetLayout::Torchvision => conv_bn("conv1", "bn1", &mut keys),
            ResNetLayout::Article => conv_bn("layer0.0", "layer0.2", &mut keys),
        }
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
                let (conv, bn) = self.layout.shortcut(&prefix);
                if self.projection_needed(stage, b) || weights.contains(&format!("{conv}.weight")) {
                    conv_bn(&conv, &bn, &mut keys);
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

    /// Every weight's shape as the article's classes would make it, widths taken from each
    /// block's own convs (weight dim 0) so reduced-width models load too. All mismatches are
    /// named at once; the builder alone would stop at the first, and would run a wrong odd
    /// kernel (5x5 for 3x3) without complaint. Call after [`check_keys`](Self::check_keys).
    pub fn check_article_shapes(&self, weights: &StateDict) -> Result<()> {
        let dim = |key: &str, i: usize| {
            weights
                .shape(&format!("{key}.weight"))
                .and_then(|s| s.get(i).copied())
                .unwrap_or(0)
        };
        let mut want: Vec<(String, Vec<usize>)> = Vec::new();
        let mut conv_bn = |conv: &str, bn: &str, out: usize, input: usize, k: usize| {
            want.push((format!("{conv}.weight"), vec![out, input, k, k]));
            want.push((format!("{conv}.bias"), vec![out]));
            for p in ["weight", "bias", "running_mean", "running_var"] {
                want.push((format!("{bn}.{p}"), vec![out]));
            }
        };
        let mut channels = dim("layer0.0", 0);
        conv_bn("layer0.0", "layer0.2", channels, dim("layer0.0", 1), 7);
        for (stage, &blocks) in self.layers.iter().enumerate() {
            for b in 0..blocks {
                let p = format!("layer{}.{b}", stage + 1);
                let out = match self.block {
                    BlockKind::Basic => {
                        let out = dim(&format!("{p}.conv2"), 0);
                        conv_bn(&format!("{p}.conv1"), &format!("{p}.bn1"), out, channels, 3);
                        conv_bn(&format!("{p}.conv2"), &format!("{p}.bn2"), out, out, 3);
                        out
                    }
                    BlockKind::Bottleneck => {
                        let mid = dim(&format!("{p}.conv1"), 0);
                        let out = dim(&format!("{p}.conv3"), 0);
                        conv_bn(&format!("{p}.conv1"), &format!("{p}.bn1"), mid, channels, 1);
                        conv_bn(&format!("{p}.conv2"), &format!("{p}.bn2"), mid, mid, 3);
                        conv_bn(&format!("{p}.conv3"), &format!("{p}.bn3"), out, mid, 1);
                        out
                    }
                };
                let (conv, bn) = self.layout.shortcut(&p);
                if weights.contains(&format!("{conv}.weight")) {
                    conv_bn(&conv, &bn, out, channels, 1);
                }
                channels = out;
            }
        }
        want.push(("fc.weight".into(), vec![self.num_classes, channels]));
        want.push(("fc.bias".into(), vec![self.num_classes]));
        let wrong: Vec<String> = want
            .iter()
            .filter_map(|(key, shape)| match weights.shape(key) {
                Some(got) if got == shape.as_slice() => None,
                Some(got) => Some(format!("{key} {got:?} (expected {shape:?})")),
                None => Some(format!("{key} missing")),
            })
            .collect();
        if wrong.is_empty() {
            return Ok(());
        }
        let wrong: Vec<&str> = wrong.iter().map(String::as_str).collect();
        Err(Error::file(
            weights.path(),
            format!(
                "wrong shapes for the article's {}: {}",
                self.arch_name(),
                key_list(&wrong)
            ),
        ))
    }
}

impl fmt::Display for ResNetConfig {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "{} ({:?} blocks {:?}, {} classes, {} layout)",
            self.arch_name(),
            self.block,
            self.layers,
            self.num_classes,
            self.layout
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
