//! Graph transforms applied before tract optimises a model.

pub mod fold_batchnorm;
pub mod half;
pub mod quantize;

pub use fold_batchnorm::{fold_batchnorm, BatchNormParams, FoldReport};
