//! The Winograd matmuls, `U[p] (K x C) . V[p] (C x tiles)` for every position p, as groups of
//! positions run side by side.
//!
//! Why not one batched `EinSum` in the graph: tract runs a batched matmul as a serial loop over
//! the batch axis, each step dispatched to the thread pool on its own. With 16 or 36 small
//! matmuls per convolution that dispatch cost more than the second thread bought (ResNet-18 at
//! 2 threads: 56 ms, slower than at 1 thread). Here each group of positions is its own
//! optimised tract plan (weights packed once, at load, tract's kernels), run single-threaded,
//! and the groups are spread over the pool: one hand-off per convolution.

use std::ops::Range;
use std::sync::Mutex;

use tract_core::internal::*;
use tract_core::ops::einsum::EinSum;
use tract_linalg::multithread::{multithread_tract_scope, Executor};

use crate::transform::rewrite::on_tract_threads;

/// Groups per convolution: one per core of a Raspberry Pi 4/5, two per core on 2-core hosts.
const GROUPS: usize = 4;

/// Positions `0..positions` in [`GROUPS`] contiguous runs (fewer if there are fewer positions).
pub fn group_ranges(positions: usize) -> Vec<Range<usize>> {
    let per = positions.div_ceil(GROUPS).max(1);
    (0..positions)
        .step_by(per)
        .map(|start| start..(start + per).min(positions))
        .collect()
}

/// One input and one output per group: `[positions, C, tiles]` -> `[positions, K, tiles]`.
#[derive(Debug, Clone)]
pub struct WinogradMatMul {
    pub plans: Vec<Arc<TypedRunnableModel>>,
    /// Output and input channels, for `info`'s figures.
    pub k: usize,
    pub c: usize,
}

impl PartialEq for WinogradMatMul {
    fn eq(&self, other: &Self) -> bool {
        self.plans.len() == other.plans.len()
            && self
                .plans
                .iter()
                .zip(&other.plans)
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

impl Eq for WinogradMatMul {}

impl WinogradMatMul {
    /// Plans for `u` (`[positions, K, C]`) split by `ranges`, each `U[p] . V[p]` for its
    /// positions over `tiles` columns.
    pub fn new(u: &Tensor, ranges: &[Range<usize>], tiles: usize) -> TractResult<WinogradMatMul> {
        let &[_, k, c] = u.shape() else {
            bail!("Winograd weights of shape {:?}", u.shape());
        };
        let plans = ranges
            .iter()
            .map(|range| {
                let mut model = TypedModel::default();
                let v = model.add_source("v", f32::fact([range.len(), c, tiles]))?;
                let u = model.add_const("u", u.slice(0, range.start, range.end)?)?;
                let product = EinSum::new("pkc,pct->pkt".parse()?, f32::datum_type());
                let m = model.wire_node("mm", product, &[u, v])?[0];
                model.select_output_outlets(&[m])?;
                model.into_optimized()?.into_runnable()
            })
            .collect::<TractResult<Vec<_>>>()?;
        Ok(WinogradMatMul { plans, k, c })
    }
}

impl Op for WinogradMatMul {
    fn name(&self) -> StaticName {
        "WinogradMatMul".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{} groups", self.plans.len())])
    }

    op_as_typed_op!();
}

impl EvalOp for WinogradMatMul {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == self.plans.len());
        let results: Vec<Mutex<Option<TractResult<TValue>>>> =
            self.plans.iter().map(|_| Mutex::new(None)).collect();
        let work: Vec<_> = inputs.into_iter().enumerate().collect();
        on_tract_threads(work, |(group, v)| {
            let plan = &self.plans[group];
            let out = multithread_tract_scope(Executor::SingleThread, || plan.run(tvec![v]))
                .and_then(|mut out| out.pop().context("Winograd matmul plan without output"));
            if let Ok(mut slot) = results[group].lock() {
                *slot = Some(out);
            }
        });
        results
            .into_iter()
            .map(|slot| {
                slot.into_inner()
                    .ok()
                    .flatten()
                    .context("Winograd matmul group did not run")?
            })
            .collect()
    }
}

impl TypedOp for WinogradMatMul {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == self.plans.len());
        self.plans
            .iter()
            .map(|plan| Ok(plan.model().output_fact(0)?.without_value()))
            .collect()
    }

    as_op!();
}
