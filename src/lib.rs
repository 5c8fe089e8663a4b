//! resnet-edge: ResNet image classifiers on small ARM computers, on tract.
//!
//! The data path, one module each: an image or frame becomes a tensor ([`preprocess`]), runs
//! through an optimised tract plan ([`plan`]) built from one of the model sources ([`model`],
//! rewritten by [`transform`]), and is reduced to the best classes ([`topk`], named by
//! [`labels`]). [`classifier`] ties them together; [`info`] describes a model.

pub mod bench;
pub mod classifier;
pub mod device;
pub mod error;
pub mod info;
pub mod labels;
pub mod manifest;
pub mod model;
pub mod npy;
pub mod plan;
pub mod precision;
pub mod preprocess;
pub mod profile;
pub mod topk;
pub mod transform;
// Camera loop (issue 4).
pub mod display;
pub mod frame;
pub mod overlay;
pub mod pipeline;
pub mod results_log;

pub use error::{Error, Result};
