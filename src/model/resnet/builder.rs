//! Build a ResNet as a tract `TypedModel` straight from `state_dict` weights.
//!
//! Every BatchNorm is folded into its conv while the weights are read, so the graph never holds a
//! BN op, at any batch size. Node names are the checkpoint's module paths (`layer1.0.conv1`), so
//! profiles and errors point at the same names users see in PyTorch.

use tract_core::internal::*;
use tract_core::ops::cnn::{Conv, KernelFormat, MaxPool, PaddingSpec, PoolSpec};
use tract_core::ops::einsum::EinSum;
use tract_core::ops::nn::{DataFormat, Reduce, Reducer};

use super::{BlockKind, ResNetConfig};
use crate::model::state_dict::StateDict;
use crate::transform::BatchNormParams;
use crate::{Error, Result};

/// Build the graph for `config` over an NCHW f32 input of `batch` x 3 x `height` x `width`.
pub fn build(
    weights: &StateDict,
    config: &ResNetConfig,
    batch: usize,
    height: usize,
    width: usize,
) -> Result<TypedModel> {
    config.check_keys(weights)?;
    let mut b = Builder {
        weights,
        config,
        model: TypedModel::default(),
    };
    let in_channels = match weights.shape("conv1.weight") {
        Some(&[_, c, _, _]) => c,
        other => return Err(b.shape_error("conv1.weight", other, "[out, in, kh, kw]")),
    };
    let input = b
        .model
        .add_source("input", f32::fact([batch, in_channels, height, width]))
        .map_err(tract)?;
    let mut x = b.conv_bn("conv1", "bn1", input, 2, true)?;
    x = b.max_pool("maxpool", x)?;
    for (stage, &blocks) in config.layers.iter().enumerate() {
        for block in 0..blocks {
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            x = b.block(&format!("layer{}.{block}", stage + 1), x, stride)?;
        }
    }
    x = b.global_avg_pool("avgpool", x)?;
    x = b.linear("fc", x)?;
    b.model.select_output_outlets(&[x]).map_err(tract)?;
    b.model.declutter().map_err(tract)?;
    Ok(b.model)
}

fn tract(e: anyhow::Error) -> Error {
    Error::tract("building the ResNet graph", e)
}

fn dim(d: &TDim) -> Result<usize> {
    d.to_usize().map_err(|e| tract(anyhow::anyhow!("{e}")))
}

struct Builder<'a> {
    weights: &'a StateDict,
    config: &'a ResNetConfig,
    model: TypedModel,
}

impl Builder<'_> {
    fn shape_error(&self, key: &str, got: Option<&[usize]>, want: &str) -> Error {
        match got {
            Some(shape) => Error::file(
                self.weights.path(),
                format!("{key} has shape {shape:?}, expected {want}"),
            ),
            None => Error::file(self.weights.path(), format!("missing key {key}")),
        }
    }

    /// A tensor of exactly `len` values, or an error naming the key.
    fn vector(&self, key: &str, len: usize) -> Result<Vec<f32>> {
        let v = self.weights.to_f32(key)?;
        if v.len() != len {
            return Err(self.shape_error(key, self.weights.shape(key), &format!("[{len}]")));
        }
        Ok(v)
    }

    fn bn(&self, bn: &str, channels: usize) -> Result<[Vec<f32>; 4]> {
        Ok([
            self.vector(&format!("{bn}.weight"), channels)?,
            self.vector(&format!("{bn}.bias"), channels)?,
            self.vector(&format!("{bn}.running_mean"), channels)?,
            self.vector(&format!("{bn}.running_var"), channels)?,
        ])
    }

    /// Conv (no bias, "same" padding for odd kernels as torchvision uses) with `bn` folded in,
    /// optionally followed by ReLU. The group count comes from the weight's input dimension.
    fn conv_bn(
        &mut self,
        conv: &str,
        bn: &str,
        x: OutletId,
        stride: usize,
        relu: bool,
    ) -> Result<OutletId> {
        let key = format!("{conv}.weight");
        let (out, per_group, kh, kw) = match self.weights.shape(&key) {
            Some(&[o, i, kh, kw]) if o > 0 && i > 0 && kh % 2 == 1 && kw % 2 == 1 => (o, i, kh, kw),
            other => return Err(self.shape_error(&key, other, "[out, in, odd kh, odd kw]")),
        };
        let in_channels = self.channels(x)?;
        if in_channels % per_group != 0 || out % (in_channels / per_group) != 0 {
            return Err(Error::file(
                self.weights.path(),
                format!("{key} expects {per_group} input channels per group, the layer before gives {in_channels}"),
            ));
        }
        let group = in_channels / per_group;
        let mut weight = self.weights.to_f32(&key)?;
        let mut bias = vec![0f32; out];
        let [gamma, beta, mean, var] = self.bn(bn, out)?;
        BatchNormParams {
            gamma: &gamma,
            beta: &beta,
            mean: &mean,
            var: &var,
            eps: self.config.bn_eps,
        }
        .fold_into(&mut weight, &mut bias);

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
        let y = self
            .model
            .wire_node(conv, op, &[x, kernel, bias])
            .map_err(tract)?[0];
        if relu {
            self.relu(&format!("{conv}.relu"), y)
        } else {
            Ok(y)
        }
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

    /// The stem's 3x3/2 max-pool with padding 1 (torchvision `nn.MaxPool2d(3, 2, 1)`).
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
    /// bottleneck (torchvision's "ResNet v1.5"); the shortcut is the identity or the 1x1
    /// projection `downsample` (the paper's option B).
    fn block(&mut self, prefix: &str, x: OutletId, stride: usize) -> Result<OutletId> {
        let mut y = x;
        let convs = self.config.block.convs();
        for i in 1..=convs {
            let s = match self.config.block {
                BlockKind::Basic if i == 1 => stride,
                BlockKind::Bottleneck if i == 2 => stride,
                _ => 1,
            };
            y = self.conv_bn(
                &format!("{prefix}.conv{i}"),
                &format!("{prefix}.bn{i}"),
                y,
                s,
                i < convs,
            )?;
        }
        let shortcut = if self
            .weights
            .contains(&format!("{prefix}.downsample.0.weight"))
        {
            self.conv_bn(
                &format!("{prefix}.downsample.0"),
                &format!("{prefix}.downsample.1"),
                x,
                stride,
                false,
            )?
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
                self.weights.path(),
                format!("{prefix}: block output {ys:?} does not match its shortcut {ss:?} (missing {prefix}.downsample?)"),
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

    /// `y = x W^T + b`, torchvision's `nn.Linear`.
    fn linear(&mut self, name: &str, x: OutletId) -> Result<OutletId> {
        let features = self.channels(x)?;
        let classes = self.config.num_classes;
        let key = format!("{name}.weight");
        match self.weights.shape(&key) {
            Some(&[o, i]) if o == classes && i == features => {}
            other => {
                return Err(self.shape_error(&key, other, &format!("[{classes}, {features}]")))
            }
        }
        let w =
            Tensor::from_shape(&[classes, features], &self.weights.to_f32(&key)?).map_err(tract)?;
        let w = self.model.add_const(key, w).map_err(tract)?;
        let axes: AxesMapping = "nk,ok->no".parse().map_err(tract)?;
        let y = self
            .model
            .wire_node(
                format!("{name}.matmul"),
                EinSum::new(axes, f32::datum_type()),
                &[x, w],
            )
            .map_err(tract)?[0];
        let bias = Tensor::from_shape(
            &[1, classes],
            &self.vector(&format!("{name}.bias"), classes)?,
        )
        .map_err(tract)?;
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
