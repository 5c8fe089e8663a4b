//! The library's front door: a model file plus its manifest and flags become a [`Classifier`]
//! that turns images into ranked classes (frame -> tensor -> plan -> top-k).

use std::path::Path;

use image::RgbImage;
use tract_core::prelude::Tensor;

use crate::labels::Labels;
use crate::manifest::{Manifest, OutputKind};
use crate::model::{self, LoadOptions, LoadedModel};
use crate::plan::Plan;
use crate::preprocess::{ChannelOrder, Layout, Preprocess, ResizeMode};
use crate::topk::{softmax, top_k};
use crate::{Error, Result};

/// Preprocessing settings given on the command line; each wins over the manifest.
#[derive(Clone, Debug, Default)]
pub struct PreprocessOverrides {
    pub resize: Option<u32>,
    pub resize_mode: Option<ResizeMode>,
    pub crop: Option<u32>,
    pub scale: Option<f32>,
    pub mean: Option<[f32; 3]>,
    pub std: Option<[f32; 3]>,
    pub channels: Option<ChannelOrder>,
}

impl PreprocessOverrides {
    fn apply(&self, p: &mut Preprocess) {
        let Self {
            resize,
            resize_mode,
            crop,
            scale,
            mean,
            std,
            channels,
        } = self.clone();
        p.resize = resize.unwrap_or(p.resize);
        p.resize_mode = resize_mode.unwrap_or(p.resize_mode);
        p.crop = crop.unwrap_or(p.crop);
        p.scale = scale.unwrap_or(p.scale);
        p.mean = mean.unwrap_or(p.mean);
        p.std = std.unwrap_or(p.std);
        p.channels = channels.unwrap_or(p.channels);
    }
}

/// How to open a classifier; `Default` is batch 1, all cores, manifest or ImageNet defaults.
#[derive(Clone, Debug, Default)]
pub struct ClassifierOptions {
    pub load: LoadOptions,
    /// 0 = all cores.
    pub threads: usize,
    pub preprocess: PreprocessOverrides,
    /// `imagenet1k` or a labels file; wins over the manifest.
    pub labels: Option<String>,
    pub output: Option<OutputKind>,
}

/// One image's result: the best classes and the full rows they came from.
#[derive(Clone, Debug)]
pub struct Prediction {
    /// `(class, probability)`, best first.
    pub top: Vec<(usize, f32)>,
    /// The model's output row as produced (logits, or probabilities for such models).
    pub raw: Vec<f32>,
}

pub struct Classifier {
    pub loaded: LoadedModel,
    pub plan: Plan,
    pub preprocess: Preprocess,
    pub labels: Labels,
    pub output: OutputKind,
    pub manifest: Option<Manifest>,
}

impl Classifier {
    pub fn open(path: &Path, options: &ClassifierOptions) -> Result<Classifier> {
        let manifest = Manifest::beside(path)?;
        let mut preprocess = manifest
            .as_ref()
            .and_then(|m| m.preprocess.clone())
            .unwrap_or_default();
        options.preprocess.apply(&mut preprocess);
        preprocess.validate()?;
        let load = LoadOptions {
            image_size: preprocess.crop as usize,
            ..options.load.clone()
        };
        let loaded = model::load(path, &load)?;
        // The model decides its own layout; the crop must give the size it was built for.
        preprocess.layout = loaded.layout;
        let (h, w) = match loaded.layout {
            Layout::Nchw => (loaded.input_shape[2], loaded.input_shape[3]),
            Layout::Nhwc => (loaded.input_shape[1], loaded.input_shape[2]),
        };
        if (h, w) != (preprocess.crop as usize, preprocess.crop as usize) {
            return Err(Error::file(
                path,
                format!(
                    "the model takes {h}x{w} images but preprocessing crops {0}x{0}; set --crop (and --resize) or the manifest",
                    preprocess.crop
                ),
            ));
        }
        let labels = match (
            &options.labels,
            manifest.as_ref().and_then(|m| m.model.labels.as_ref()),
        ) {
            (Some(spec), _) => Labels::load(spec, None)?,
            (None, Some(spec)) => Labels::load(spec, manifest.as_ref().and_then(Manifest::dir))?,
            (None, None) => Labels::imagenet1k(),
        };
        let output = options
            .output
            .or(manifest.as_ref().map(|m| m.model.output))
            .unwrap_or_default();
        let plan = Plan::new(&loaded, options.threads)?;
        Ok(Classifier {
            loaded,
            plan,
            preprocess,
            labels,
            output,
            manifest,
        })
    }

    /// Classify any number of images, `plan.batch()` at a time (a short last batch is padded).
    pub fn classify(&self, images: &[RgbImage], k: usize) -> Result<Vec<Prediction>> {
        self.run_batched(images.len(), k, |ix, out| {
            self.preprocess.apply_into(&images[ix], out)
        })
    }

    /// Whether `t` is one preprocessed image for this model: `[1, C, H, W]` or `[C, H, W]` in
    /// the model's layout. The error is the problem, for the caller to attach a file name to.
    pub fn check_preprocessed(&self, t: &Tensor) -> std::result::Result<(), String> {
        let one_image = &self.plan.input_shape()[1..];
        let shape = t.shape();
        let shape = if shape.len() == one_image.len() + 1 && shape[0] == 1 {
            &shape[1..]
        } else {
            shape
        };
        if shape == one_image {
            Ok(())
        } else {
            Err(format!(
                "tensor shape {:?} does not match one model input {one_image:?}",
                t.shape()
            ))
        }
    }

    /// Classify already-preprocessed images (see [`Classifier::check_preprocessed`]), batched
    /// like [`Classifier::classify`].
    pub fn classify_preprocessed(&self, inputs: &[Tensor], k: usize) -> Result<Vec<Prediction>> {
        for t in inputs {
            self.check_preprocessed(t).map_err(Error::usage)?;
        }
        self.run_batched(inputs.len(), k, |ix, out| {
            let values = crate::plan::f32_slice(&inputs[ix])
                .map_err(|e| Error::tract("reading input", e))?;
            out.copy_from_slice(values);
            Ok(())
        })
    }

    /// Fill each batch slot with `fill(item, slot)`, run, and keep one prediction per item.
    fn run_batched(
        &self,
        items: usize,
        k: usize,
        mut fill: impl FnMut(usize, &mut [f32]) -> Result<()>,
    ) -> Result<Vec<Prediction>> {
        let batch = self.plan.batch().max(1);
        let per_image: usize = self.plan.input_shape().iter().skip(1).product();
        let mut data = vec![0f32; per_image * batch];
        let mut predictions = Vec::with_capacity(items);
        for start in (0..items).step_by(batch) {
            let count = batch.min(items - start);
            data.fill(0.0);
            for (slot, out) in data.chunks_mut(per_image).take(count).enumerate() {
                fill(start + slot, out)?;
            }
            let input = Tensor::from_shape(self.plan.input_shape(), &data)
                .map_err(|e| Error::tract("building the input", e))?;
            let rows = self.plan.run(input)?;
            predictions.extend(rows.into_iter().take(count).map(|r| self.predict(r, k)));
        }
        Ok(predictions)
    }

    fn predict(&self, raw: Vec<f32>, k: usize) -> Prediction {
        let probabilities = match self.output {
            OutputKind::Logits => softmax(&raw),
            OutputKind::Probabilities => raw.clone(),
        };
        Prediction {
            top: top_k(&probabilities, k),
            raw,
        }
    }
}
