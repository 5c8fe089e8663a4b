//! The optimised, runnable tract plan: the "plan" stage of frame -> tensor -> plan -> top-k.

use std::sync::Arc;

use tract_core::prelude::*;
use tract_core::runtime::RunOptions;
use tract_linalg::multithread::Executor;

use crate::model::LoadedModel;
use crate::{Error, Result};

/// Resolve a `--threads` value: 0 means every core the OS gives us.
pub fn resolve_threads(threads: usize) -> usize {
    if threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        threads
    }
}

/// One thread runs on the calling thread; more get a private rayon pool of exactly that size
/// (tract's multithread-mm), so `--threads 1` really means one busy thread.
fn executor(threads: usize) -> Executor {
    match resolve_threads(threads) {
        1 => Executor::SingleThread,
        n => Executor::multithread(n),
    }
}

pub struct Plan {
    runnable: Arc<TypedRunnableModel>,
    input_shape: Vec<usize>,
    threads: usize,
}

impl Plan {
    /// Optimise (tract picks kernels for this CPU here) and build the runnable plan.
    pub fn new(loaded: &LoadedModel, threads: usize) -> Result<Plan> {
        let context = format!("{}: optimising", loaded.path.display());
        let optimized = loaded
            .model
            .clone()
            .into_optimized()
            .map_err(|e| Error::tract(&context, e))?;
        let options = RunOptions {
            executor: Some(executor(threads)),
            ..RunOptions::default()
        };
        let runnable = optimized
            .into_runnable_with_options(&options)
            .map_err(|e| Error::tract(&context, e))?;
        Ok(Plan {
            runnable,
            input_shape: loaded.input_shape.clone(),
            threads: resolve_threads(threads),
        })
    }

    pub fn model(&self) -> &TypedModel {
        self.runnable.model()
    }

    /// The runnable plan itself, for callers that keep a state across runs or time each node
    /// (`bench`, `profile`); it carries the thread executor chosen here.
    pub fn runnable(&self) -> &Arc<TypedRunnableModel> {
        &self.runnable
    }

    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    pub fn batch(&self) -> usize {
        self.input_shape.first().copied().unwrap_or(1)
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Run one batch; returns one output row per image (the output flattened after the batch
    /// axis, so `[N, C, 1, 1]` heads work too).
    pub fn run(&self, input: Tensor) -> Result<Vec<Vec<f32>>> {
        if input.shape() != self.input_shape.as_slice() {
            return Err(Error::usage(format!(
                "input tensor has shape {:?}, the model expects {:?}",
                input.shape(),
                self.input_shape
            )));
        }
        let outputs = self
            .runnable
            .run(tvec!(input.into()))
            .map_err(|e| Error::tract("inference", e))?;
        let values = first_output(&outputs)?;
        let batch = self.batch();
        let per_image = values.len() / batch.max(1);
        Ok(values
            .chunks(per_image.max(1))
            .map(<[f32]>::to_vec)
            .collect())
    }
}

/// The model's first output as f32 values, whatever float type it was computed in.
pub(crate) fn first_output(outputs: &[TValue]) -> Result<Vec<f32>> {
    f32_values(
        outputs
            .first()
            .ok_or_else(|| Error::usage("the model produced no output"))?,
    )
}

/// One output's values as f32, whatever float type it was computed in.
pub(crate) fn f32_values(output: &TValue) -> Result<Vec<f32>> {
    let output = output
        .cast_to::<f32>()
        .map_err(|e| Error::tract("reading the output", e))?;
    Ok(f32_slice(&output)
        .map_err(|e| Error::tract("reading the output", e))?
        .to_vec())
}

/// A plain f32 tensor's values (tract 0.23 reaches them through its plain-RAM view).
pub(crate) fn f32_slice(t: &Tensor) -> TractResult<&[f32]> {
    t.try_as_plain_ram()?.as_slice::<f32>()
}
