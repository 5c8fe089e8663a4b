//! Reading a checkpoint's convs and fully connected layer as a graph holds them: every
//! BatchNorm folded into its conv while the weights are read. Shared by the native tract
//! [`builder`](super::builder) and the ONNX [`onnx_export`](super::onnx_export), so both
//! compute exactly the same weights and report the same BatchNorms.

use crate::model::state_dict::StateDict;
use crate::transform::BatchNormParams;
use crate::{Error, Result};

use super::{ResNetConfig, ResNetLayout};

/// A conv's weights as the graph will hold them: OIHW kernel and one bias per output channel.
pub(crate) struct ConvWeights {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub out: usize,
    pub per_group: usize,
    pub kh: usize,
    pub kw: usize,
}

/// Reads tensors from `weights` for `config`, recording every BatchNorm it reads and how many
/// it folded.
pub(crate) struct Reader<'a> {
    pub weights: &'a StateDict,
    pub config: &'a ResNetConfig,
    /// Module path of every BatchNorm read (`layer1.0.bn1`).
    pub batchnorm: Vec<String>,
    /// How many of them were folded into a conv.
    pub batchnorm_folded: usize,
}

impl<'a> Reader<'a> {
    pub fn new(weights: &'a StateDict, config: &'a ResNetConfig) -> Self {
        Reader {
            weights,
            config,
            batchnorm: vec![],
            batchnorm_folded: 0,
        }
    }

    pub fn shape_error(&self, key: &str, got: Option<&[usize]>, want: &str) -> Error {
        match got {
            Some(shape) => Error::file(
                self.weights.path(),
                format!("{key} has shape {shape:?}, expected {want}"),
            ),
            None => Error::file(self.weights.path(), format!("missing key {key}")),
        }
    }

    /// The input channels of the stem conv (`conv1.weight`, or the article's `layer0.0.weight`).
    pub fn stem_channels(&self) -> Result<usize> {
        let stem = match self.config.layout {
            ResNetLayout::Torchvision => "conv1.weight",
            ResNetLayout::Article => "layer0.0.weight",
        };
        match self.weights.shape(stem) {
            Some(&[_, c, _, _]) => Ok(c),
            other => Err(self.shape_error(stem, other, "[out, in, kh, kw]")),
        }
    }

    /// A tensor of exactly `len` values, or an error naming the key.
    pub fn vector(&self, key: &str, len: usize) -> Result<Vec<f32>> {
        let v = self.weights.to_f32(key)?;
        if v.len() != len {
            return Err(self.shape_error(key, self.weights.shape(key), &format!("[{len}]")));
        }
        Ok(v)
    }

    /// `[gamma, beta, mean, var]` of BatchNorm `bn`, recorded as read.
    pub fn bn(&mut self, bn: &str, channels: usize) -> Result<[Vec<f32>; 4]> {
        let params = [
            self.vector(&format!("{bn}.weight"), channels)?,
            self.vector(&format!("{bn}.bias"), channels)?,
            self.vector(&format!("{bn}.running_mean"), channels)?,
            self.vector(&format!("{bn}.running_var"), channels)?,
        ];
        self.batchnorm.push(bn.to_string());
        Ok(params)
    }

    /// Fold `[gamma, beta, mean, var]` into `c`: w' = w s, b' = (b - mean) s + beta with
    /// s = gamma / sqrt(var + eps), so a conv bias (the article's) folds along.
    pub fn fold(&mut self, c: &mut ConvWeights, [gamma, beta, mean, var]: &[Vec<f32>; 4]) {
        BatchNormParams {
            gamma,
            beta,
            mean,
            var,
            eps: self.config.bn_eps,
        }
        .fold_into(&mut c.weight, &mut c.bias);
        self.batchnorm_folded += 1;
    }

    /// Read `{conv}.weight` (and `{conv}.bias` in the article's layout, else zeros) for an input
    /// of `in_channels`, checking the kernel is odd and the channels fit.
    pub fn conv(&self, conv: &str, in_channels: usize) -> Result<ConvWeights> {
        let key = format!("{conv}.weight");
        let (out, per_group, kh, kw) = match self.weights.shape(&key) {
            Some(&[o, i, kh, kw]) if o > 0 && i > 0 && kh % 2 == 1 && kw % 2 == 1 => (o, i, kh, kw),
            other => return Err(self.shape_error(&key, other, "[out, in, odd kh, odd kw]")),
        };
        if !in_channels.is_multiple_of(per_group) || !out.is_multiple_of(in_channels / per_group) {
            return Err(Error::file(
                self.weights.path(),
                format!("{key} expects {per_group} input channels per group, the layer before gives {in_channels}"),
            ));
        }
        let bias = if self.config.layout.conv_bias() {
            self.vector(&format!("{conv}.bias"), out)?
        } else {
            vec![0f32; out]
        };
        Ok(ConvWeights {
            weight: self.weights.to_f32(&key)?,
            bias,
            out,
            per_group,
            kh,
            kw,
        })
    }

    /// [`conv`](Self::conv) with BatchNorm `bn` folded in.
    pub fn conv_bn(&mut self, conv: &str, bn: &str, in_channels: usize) -> Result<ConvWeights> {
        let mut c = self.conv(conv, in_channels)?;
        let params = self.bn(bn, c.out)?;
        self.fold(&mut c, &params);
        Ok(c)
    }

    /// `{name}.weight` as `[classes, features]` and `{name}.bias` as `[classes]` (`nn.Linear`).
    pub fn linear(&self, name: &str, features: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let classes = self.config.num_classes;
        let key = format!("{name}.weight");
        match self.weights.shape(&key) {
            Some(&[o, i]) if o == classes && i == features => {}
            other => {
                return Err(self.shape_error(&key, other, &format!("[{classes}, {features}]")))
            }
        }
        Ok((
            self.weights.to_f32(&key)?,
            self.vector(&format!("{name}.bias"), classes)?,
        ))
    }
}
