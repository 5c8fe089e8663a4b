//! Build a ResNet as a tract `TypedModel` straight from `state_dict` weights.
//!
//! Every BatchNorm is folded into its conv while the weights are read, so the graph holds no BN
//! op at any batch size. The one exception is the article layout's stem BN, which follows a
//! max-pool: it folds only when no channel's scale is negative (see [`Builder::article_stem`]).
//! Node names are the checkpoint's module paths (`layer1.0.conv1`), so profiles and errors point
//! at the same names users see in PyTorch.

use tract_core::internal::*;
use tract_core::ops::cnn::{Conv, KernelFormat, MaxPool, PaddingSpec, PoolSpec};
use tract_core::ops::einsum::EinSum;
use tract_core::ops::nn::{DataFormat, Reduce, Reducer};

use super::weights::{ConvWeights, Reader};
use super::{ResNetConfig, ResNetLayout};
use crate::model::state_dict::StateDict;
use crate::{Error, Result};

/// The graph, and what became of the checkpoint's BatchNorms.
#[derive(Debug, Clone)]
pub struct Built {
    pub model: TypedModel,
    /// Module path of every BatchNorm in the checkpoint (`layer1.0.bn1`).
    pub batchnorm: Vec<String>,
    /// How many of them were folded into a conv; any other is in the graph as a per-channel
    /// multiply (node named after the BN), add and ReLU (`<bn>.shift`, `<bn>.relu`).
    pub batchnorm_folded: usize,
}

/// Build the graph for `config` over an NCHW f32 input of `batch` x 3 x `height` x `width`.
pub fn build(
    weights: &StateDict,
    config: &ResNetConfig,
    batch: usize,
    height: usize,
    width: usize,
) -> Result<Built> {
    config.check_keys(weights)?;
    if config.layout == ResNetLayout::Article {
        config.check_article_shapes(weights)?;
    }
    let mut b = Builder {
        read: Reader::new(weights, config),
        model: TypedModel::default(),
    };
    let in_channels = b.read.stem_channels()?;
    let input = b
        .model
        .add_source("input", f32::fact([batch, in_channels, height, width]))
        .map_err(tract)?;
    let mut x = match config.layout {
        ResNetLayout::Torchvision => {
            let x = b.conv_bn("conv1", "bn1", input, 2, true)?;
            b.max_pool("maxpool", x)?
        }
        ResNetLayout::Article => b.article_stem(input)?,
    };
    for (stage, &blocks) in config.layers.iter().enumerate() {
        for block in 0..blocks {
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            x = b.block(&format!("layer{}.{block}", stage + 1), x, stride)?;
        }
    }
    let pool = match config.layout {
        ResNetLayout::Torchvision => "avgpool",
        ResNetLayout::Article => "gap",
    };
    x = b.global_avg_pool(pool, x)?;
    x = b.linear("fc", x)?;
    b.model.select_output_outlets(&[x]).map_err(tract)?;
    b.model.declutter().map_err(tract)?;
    Ok(Built {
        model: b.model,
        batchnorm: b.read.batchnorm,
        batchnorm_folded: b.read.batchnorm_folded,
    })
}

fn tract(e: anyhow::Error) -> Error {
    Error::tract("building the ResNet graph", e)
}

fn dim(d: &TDim) -> Result<usize> {
    d.to_usize().map_err(|e| tract(anyhow::anyhow!("{e}")))
}

struct Builder<'a> {
    /// Reads the weights, BatchNorm folded, and records the BatchNorms.
    read: Reader<'a>,
    model: TypedModel,
}

impl Builder<'_> {
    /// Conv with `bn` folded in, optionally followed by ReLU.
    fn conv_bn(
        &mut self,
        conv: &str,
        bn: &str,
        x: OutletId,
        stride: usize,
        relu: bool,
    ) -> Result<OutletId> {
        let c = self.read.conv_bn(conv, bn, self.channels(x)?)?;
        let y = self.wire_conv(conv, x, c, stride)?;
        if relu {
            self.relu(&format!("{conv}.relu"), y)
        } else {
            Ok(y)
        }
    }

    /// The article's stem, `Conv2d(3, 64, 7, 2, 3)` -> `MaxPool2d(3, 2, 1)` -> `BatchNorm2d`
    /// -> ReLU. BN moves ahead of the pool (and into the conv) only if every channel's scale
    /// s is >= 0: max(s x + t) = s max(x) + t needs a map that never decreases. Otherwise
    /// it stays after the pool as `x * s + (beta - mean s)`, exact for any sign, and the ReLU
    /// is named under the BN (`layer0.2.relu`, not `layer0.3`): tract fuses the three into one
    /// node named after the last, which `info` must still count as BN-derived.
    fn article_stem(&mut self, x: OutletId) -> Result<OutletId> {
        let mut c = self.read.conv("layer0.0", self.channels(x)?)?;
        let params = self.read.bn("layer0.2", c.out)?;
        let [gamma, beta, mean, var] = &params;
        let scale: Vec<f32> = gamma
            .iter()
            .zip(var)
            .map(|(g, v)| g / (v + self.read.config.bn_eps).sqrt())
            .collect();
        if scale.iter().all(|s| *s >= 0.0) {
            self.read.fold(&mut c, &params);
            let y = self.wire_conv("layer0.0", x, c, 2)?;
            let y = self.max_pool("layer0.1", y)?;
            self.relu("layer0.3", y)
        } else {
            let shift: Vec<f32> = beta
                .iter()
                .zip(mean)
                .zip(&scale)
                .map(|((b, m), s)| b - m * s)
                .collect();
            let out = c.out;
            let y = self.wire_conv("layer0.0", x, c, 2)?;
            let y = self.max_pool("layer0.1", y)?;
            let y = self.per_channel("layer0.2", y, &scale, out, tract_core::ops::math::mul())?;
            let y = self.per_channel(
                "layer0.2.shift",
                y,
                &shift,
                out,
                tract_core::ops::math::add(),
            )?;
            self.relu("layer0.2.relu", y)
        }
    }

    /// `x <op> v` with `v` broadcast over N, H and W.
    fn per_channel(
        &mut self,
        name: &str,
        x: OutletId,
        values: &[f32],
        channels: usize,
        op: impl Into<Box<dyn TypedOp>>,
    ) -> Result<OutletId> {
        let v = Tensor::from_shape(&[1, channels, 1, 1], values).map_err(tract)?;
        let v = self
            .model
            .add_const(format!("{name}.value"), v)
            .map_err(tract)?;
        Ok(self.model.wire_node(name, op, &[x, v]).map_err(tract)?[0])
    }

    /// A conv with "same" padding for odd kernels (as both layouts use); the group count comes
    /// from the weight's input dimension.
    fn wire_conv(
        &mut self,
        conv: &str,
        x: OutletId,
        c: ConvWeights,
        stride: usize,
    ) -> Result<OutletId> {
        let ConvWeights {
            weight,
            bias,
            out,
            per_group,
            kh,
            kw,
        } = c;
        let in_channels = self.channels(x)?;
        let group = in_channels / per_group;
        let kernel = Tensor::from_shape(&[out, per_group, kh, kw], &weight).map_err(tract)?;
        let kernel = self
            .model
            .add_const(format!("{conv}.weight"), kernel)
            .map_err(tract)?;
        let bias = self
            .model
            .add_const(format!("{conv}.bias"), tensor1(&bias))
            .map_err(tract)?;
        let pool_spec = PoolSpec {
            data_format: DataFormat::NCHW,
            kernel_shape: tvec![kh, kw],
            padding: PaddingSpec::Explicit(tvec![kh / 2, kw / 2], tvec![kh / 2, kw / 2]),
            dilations: None,
            strides: Some(tvec![stride, stride]),
            input_channels: in_channels,
            output_channels: out,
        };
        let op = Conv::new(pool_spec, KernelFormat::OIHW, group, None);
        Ok(self
            .model
            .wire_node(conv, op, &[x, kernel, bias])
            .map_err(tract)?[0])
    }

    fn channels(&self, x: OutletId) -> Result<usize> {
        let fact = self.model.outlet_fact(x).map_err(tract)?;
        dim(&fact.shape[1])
    }

    fn relu(&mut self, name: &str, x: OutletId) -> Result<OutletId> {
        let zero = tensor0(0f32).broadcast_into_rank(4).map_err(tract)?;
        let zero = self
            .model
            .add_const(format!("{name}.zero"), zero)
            .map_err(tract)?;
        Ok(self
            .model
            .wire_node(name, tract_core::ops::math::max(), &[x, zero])
            .map_err(tract)?[0])
    }

    /// The stem's 3x3/2 max-pool with padding 1 (`nn.MaxPool2d(3, 2, 1)`). Like PyTorch's
    /// -inf padding, tract's takes the max over in-bounds taps only, which matters in the
    /// article's stem, where the pool sees negative values.
    fn max_pool(&mut self, name: &str, x: OutletId) -> Result<OutletId> {
        let c = self.channels(x)?;
        let pool_spec = PoolSpec {
            data_format: DataFormat::NCHW,
            kernel_shape: tvec![3, 3],
            padding: PaddingSpec::Explicit(tvec![1, 1], tvec![1, 1]),
            dilations: None,
            strides: Some(tvec![2, 2]),
            input_channels: c,
            output_channels: c,
        };
        let op = MaxPool {
            pool_spec,
            with_index_outputs: None,
        };
        Ok(self.model.wire_node(name, op, &[x]).map_err(tract)?[0])
    }

    /// One residual block: the stride sits on the first conv of a basic block and on the 3x3 of a
    /// bottleneck (torchvision's "ResNet v1.5", and the article's); the shortcut is the
    /// identity or the 1x1 projection `downsample`/`shortcut` (the paper's option B). The
    /// article ReLUs the branch before the add too (`relu(relu(bn2(conv2(x))) + shortcut)`).
    fn block(&mut self, prefix: &str, x: OutletId, stride: usize) -> Result<OutletId> {
        let mut y = x;
        let convs = self.read.config.block.convs();
        let relu_before_add = self.read.config.layout == ResNetLayout::Article;
        for i in 1..=convs {
            let s = self.read.config.block.conv_stride(i, stride);
            y = self.conv_bn(
                &format!("{prefix}.conv{i}"),
                &format!("{prefix}.bn{i}"),
                y,
                s,
                i < convs || relu_before_add,
            )?;
        }
        let (conv, bn) = self.read.config.layout.shortcut(prefix);
        let shortcut = if self.read.weights.contains(&format!("{conv}.weight")) {
            self.conv_bn(&conv, &bn, x, stride, false)?
        } else {
            x
        };
        let (ys, ss) = (
            self.model.outlet_fact(y).map_err(tract)?.shape.clone(),
            self.model
                .outlet_fact(shortcut)
                .map_err(tract)?
                .shape
                .clone(),
        );
        if ys != ss {
            return Err(Error::file(
                self.read.weights.path(),
                format!("{prefix}: block output {ys:?} does not match its shortcut {ss:?} (missing {conv}?)"),
            ));
        }
        let sum = self
            .model
            .wire_node(
                format!("{prefix}.add"),
                tract_core::ops::math::add(),
                &[y, shortcut],
            )
            .map_err(tract)?[0];
        self.relu(&format!("{prefix}.relu"), sum)
    }

    /// Mean over H and W, then drop them: [N, C, H, W] -> [N, C].
    fn global_avg_pool(&mut self, name: &str, x: OutletId) -> Result<OutletId> {
        let fact = self.model.outlet_fact(x).map_err(tract)?.clone();
        let hw = dim(&fact.shape[2])? * dim(&fact.shape[3])?;
        let sum = self
            .model
            .wire_node(
                format!("{name}.sum"),
                Reduce::new(tvec![2, 3], Reducer::Sum),
                &[x],
            )
            .map_err(tract)?[0];
        let inv = tensor0(1.0 / hw as f32)
            .broadcast_into_rank(4)
            .map_err(tract)?;
        let inv = self
            .model
            .add_const(format!("{name}.inv_area"), inv)
            .map_err(tract)?;
        let mut y = self
            .model
            .wire_node(name, tract_core::ops::math::mul(), &[sum, inv])
            .map_err(tract)?[0];
        for axis in [3, 2] {
            y = self
                .model
                .wire_node(format!("{name}.squeeze{axis}"), AxisOp::Rm(axis), &[y])
                .map_err(tract)?[0];
        }
        Ok(y)
    }

    /// `y = x W^T + b`, PyTorch's `nn.Linear`.
    fn linear(&mut self, name: &str, x: OutletId) -> Result<OutletId> {
        let features = self.channels(x)?;
        let classes = self.read.config.num_classes;
        let (weight, bias) = self.read.linear(name, features)?;
        let w = Tensor::from_shape(&[classes, features], &weight).map_err(tract)?;
        let w = self
            .model
            .add_const(format!("{name}.weight"), w)
            .map_err(tract)?;
        let axes: AxesMapping = "nk,ok->no".parse().map_err(tract)?;
        let y = self
            .model
            .wire_node(
                format!("{name}.matmul"),
                EinSum::new(axes, f32::datum_type()),
                &[x, w],
            )
            .map_err(tract)?[0];
        let bias = Tensor::from_shape(&[1, classes], &bias).map_err(tract)?;
        let bias = self
            .model
            .add_const(format!("{name}.bias"), bias)
            .map_err(tract)?;
        Ok(self
            .model
            .wire_node(name, tract_core::ops::math::add(), &[y, bias])
            .map_err(tract)?[0])
    }
}
