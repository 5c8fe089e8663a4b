//! Speed rewrites: small named rules applied to the decluttered graph before tract optimises
//! it, each replacing a pattern tract runs slowly with ops of ours.
//!
//! Every rule bails early (returns `None`) unless its whole pattern matches, so a graph that
//! is not a ResNet, or not in the rule's precision, passes through unchanged. Each can be
//! switched off to measure what it buys: `--no-rewrite NAME` on the CLI,
//! `RESNET_EDGE_NO_REWRITE=NAME,...|all` anywhere (the library reads it at every load, so the
//! test suite runs with rewrites on and off).

pub mod aligned;
pub mod conv_residual;
pub mod direct_conv;
pub mod int8_conv;
pub mod int8_quantize;
pub mod int8_residual;
pub mod isa;
pub mod max_pool;
pub mod phase_planes;
pub mod residual_add;
pub mod runs;
pub mod team;
pub mod winograd;

use std::fmt;

use tract_core::internal::*;

use crate::{Error, Result};

/// The environment variable that switches rewrites off (comma-separated names, or `all`).
pub const DISABLE_ENV: &str = "RESNET_EDGE_NO_REWRITE";

/// One speed rewrite, by the name the flag and the environment variable use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rewrite {
    /// Stride-1 3x3 convolutions as Winograd F(4x4,3x3)/F(2x2,3x3) on tract's matmuls
    /// ([`winograd`]).
    Winograd,
    /// Residual `Add` (+ ReLU) as one elementwise op instead of tract's matmul epilogue
    /// ([`residual_add`]).
    ResidualAdd,
    /// Quantised (u8 x i8) convolutions on our AVX2 kernel instead of tract's ([`int8_conv`]).
    Int8Conv,
    /// An int8 block's dequantise + add + ReLU + quantise as one u8 op ([`int8_residual`]).
    Int8Residual,
    /// The other f32 to u8 quantisations (the input's) as one vectorised pass
    /// ([`int8_quantize`]).
    Int8Quantize,
    /// 2D max-pools (the stem's) as row folds over the plan's threads ([`max_pool`]).
    MaxPool,
    /// The f32 convolutions `winograd` leaves (1x1, strided, the stem), with their bias and
    /// ReLU, and a classifier's fully connected layer at batch 1, on our GEMM kernel
    /// ([`direct_conv`]).
    DirectConv,
    /// A `residual-add` folded into the `direct-conv` conv before it, which adds its sums to
    /// the shortcut ([`conv_residual`]).
    ConvResidual,
}

impl Rewrite {
    /// In the order they run: `conv-residual` after `residual-add` and `direct-conv`, whose
    /// ops it joins; `int8-quantize` after `int8-residual`, which takes the quantisations
    /// that end a join.
    pub const ALL: [Rewrite; 8] = [
        Rewrite::Winograd,
        Rewrite::ResidualAdd,
        Rewrite::DirectConv,
        Rewrite::ConvResidual,
        Rewrite::Int8Conv,
        Rewrite::Int8Residual,
        Rewrite::Int8Quantize,
        Rewrite::MaxPool,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Rewrite::Winograd => "winograd",
            Rewrite::ResidualAdd => "residual-add",
            Rewrite::Int8Conv => "int8-conv",
            Rewrite::Int8Residual => "int8-residual",
            Rewrite::Int8Quantize => "int8-quantize",
            Rewrite::MaxPool => "max-pool",
            Rewrite::DirectConv => "direct-conv",
            Rewrite::ConvResidual => "conv-residual",
        }
    }

    /// Try the rule at `node`: a patch replacing the pattern rooted there, or `None`.
    fn rule(self, model: &TypedModel, node: &TypedNode) -> TractResult<Option<TypedModelPatch>> {
        match self {
            Rewrite::Winograd => winograd::rewrite(model, node),
            Rewrite::ResidualAdd => residual_add::rewrite(model, node),
            Rewrite::Int8Conv => int8_conv::rewrite(model, node),
            Rewrite::Int8Residual => int8_residual::rewrite(model, node),
            Rewrite::Int8Quantize => int8_quantize::rewrite(model, node),
            Rewrite::MaxPool => max_pool::rewrite(model, node),
            Rewrite::DirectConv => direct_conv::rewrite(model, node),
            Rewrite::ConvResidual => conv_residual::rewrite(model, node),
        }
    }
}

impl fmt::Display for Rewrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which rewrites are on. The default is all of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rewrites {
    enabled: Vec<Rewrite>,
}

impl Default for Rewrites {
    fn default() -> Self {
        Rewrites::all()
    }
}

impl Rewrites {
    pub fn all() -> Rewrites {
        Rewrites {
            enabled: Rewrite::ALL.to_vec(),
        }
    }

    pub fn none() -> Rewrites {
        Rewrites {
            enabled: Vec::new(),
        }
    }

    pub fn is_enabled(&self, rewrite: Rewrite) -> bool {
        self.enabled.contains(&rewrite)
    }

    pub fn enabled(&self) -> &[Rewrite] {
        &self.enabled
    }

    /// These rewrites minus the ones `list` names (`winograd,residual-add`, or `all`).
    pub fn without(&self, list: &str) -> std::result::Result<Rewrites, String> {
        let mut enabled = self.enabled.clone();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "all" {
                enabled.clear();
                continue;
            }
            let rewrite = Rewrite::ALL
                .into_iter()
                .find(|r| r.name() == name)
                .ok_or_else(|| {
                    let known: Vec<_> = Rewrite::ALL.iter().map(|r| r.name()).collect();
                    format!(
                        "unknown rewrite {name:?} (known: {}, all)",
                        known.join(", ")
                    )
                })?;
            enabled.retain(|r| *r != rewrite);
        }
        Ok(Rewrites { enabled })
    }

    /// These rewrites minus the ones [`DISABLE_ENV`] names.
    pub fn without_env(&self) -> Result<Rewrites> {
        match std::env::var(DISABLE_ENV) {
            Ok(list) => self
                .without(&list)
                .map_err(|problem| Error::usage(format!("{DISABLE_ENV}: {problem}"))),
            Err(_) => Ok(self.clone()),
        }
    }
}

/// How many places each rewrite changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RewriteReport {
    pub applied: Vec<(Rewrite, usize)>,
}

impl RewriteReport {
    pub fn count(&self, rewrite: Rewrite) -> usize {
        self.applied
            .iter()
            .filter(|(r, _)| *r == rewrite)
            .map(|(_, n)| n)
            .sum()
    }
}

impl fmt::Display for RewriteReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.applied.is_empty() {
            return f.write_str("none");
        }
        let parts: Vec<String> = self
            .applied
            .iter()
            .map(|(r, n)| format!("{r} x{n}"))
            .collect();
        f.write_str(&parts.join(", "))
    }
}

/// Apply every enabled rewrite, each as one pass over the graph in evaluation order.
pub fn apply(
    mut model: TypedModel,
    rewrites: &Rewrites,
) -> TractResult<(TypedModel, RewriteReport)> {
    let mut report = RewriteReport::default();
    for &rewrite in rewrites.enabled() {
        let mut count = 0;
        // Patches add nodes and disconnect the ones they replace (compacted away below), so
        // the order taken up front visits every original node once.
        for id in model.eval_order()? {
            if let Some(patch) = rewrite.rule(&model, model.node(id))? {
                patch.apply(&mut model)?;
                count += 1;
            }
        }
        if count > 0 {
            report.applied.push((rewrite, count));
            model = model.into_compact()?;
        }
    }
    Ok((model, report))
}

/// The parameter count and multiply-accumulates (whole batch) of the convolution a node of
/// ours stands for, so `info` and `profile` report the network's own figures.
pub fn conv_equivalent(model: &TypedModel, node: &TypedNode) -> Option<(usize, u64)> {
    if let Some(conv) = node.op_as::<int8_conv::Int8Conv>() {
        return Some((conv.parameters, conv.macs()));
    }
    if let Some(conv) = node.op_as::<direct_conv::DirectConv>() {
        return Some((conv.parameters(), conv.macs()));
    }
    winograd::direct_conv_equivalent(model, node)
}

/// `dst.copy_from_slice(src)`, as one fixed-size copy (a few vector moves) when both hold `N`
/// elements: a slice copy of a run-time length is a `memcpy` call.
#[inline(always)]
pub(crate) fn copy_run<T: Copy, const N: usize>(dst: &mut [T], src: &[T]) {
    match (<&mut [T; N]>::try_from(&mut *dst), <&[T; N]>::try_from(src)) {
        (Ok(d), Ok(s)) => *d = *s,
        _ => dst.copy_from_slice(src),
    }
}

/// Threads of the plan being run: the pool's size under tract's multithread-mm, else 1.
pub(crate) fn tract_threads() -> usize {
    use tract_linalg::multithread::{current_tract_executor, Executor};
    match current_tract_executor() {
        Executor::MultiThread(pool) => pool.current_num_threads().max(1),
        _ => 1,
    }
}

/// Run `f` on every item. Under a plan with a thread pool (tract's multithread-mm), the items
/// are split into one contiguous run per thread, so each thread gets one task however many
/// items there are (rayon's per-item tasks cost more than a small transform plane).
pub(crate) fn on_tract_threads<T: Send>(items: Vec<T>, f: impl Fn(T) + Sync) {
    on_tract_threads_in_runs(items, |run| run.for_each(&f));
}

/// [`on_tract_threads`], handing `f` each thread's items as one iterator, so scratch space is
/// set up once per thread rather than once per item: its own run, then what it steals from
/// the others' once that is done ([`runs::Runs`]; `RESNET_EDGE_STEAL=0` turns stealing off).
/// The threads are a [`team::Team`] of the plan's size, whose workers spin between regions,
/// unless `RESNET_EDGE_SPIN=0` (then tract's rayon pool, whose workers sleep between them).
pub(crate) fn on_tract_threads_in_runs<T: Send>(
    items: Vec<T>,
    f: impl Fn(&mut dyn Iterator<Item = T>) + Sync,
) {
    use tract_linalg::multithread::{current_tract_executor, Executor};
    let Executor::MultiThread(pool) = current_tract_executor() else {
        return f(&mut items.into_iter());
    };
    let threads = pool.current_num_threads().max(1);
    if items.len() <= 1 || threads == 1 {
        return f(&mut items.into_iter());
    }
    let runs = runs::Runs::new(items, threads, steal());
    let work = |member: usize| f(&mut runs.claims(member));
    if let Some(team) = spin().then(|| team::Team::of(threads)).flatten() {
        return team.run(&work);
    }
    let work = &work;
    pool.scope(|scope| {
        for member in 0..runs.threads() {
            scope.spawn(move |_| work(member));
        }
    });
}

/// Whether our ops' threads spin between regions (`RESNET_EDGE_SPIN=0` says no; see [`team`]).
fn spin() -> bool {
    static SPIN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    switch(&SPIN, "RESNET_EDGE_SPIN")
}

/// Whether threads steal from each other's runs (`RESNET_EDGE_STEAL=0` says no; see [`runs`]).
fn steal() -> bool {
    static STEAL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    switch(&STEAL, "RESNET_EDGE_STEAL")
}

/// A switch read once per process: on unless the variable is `0`.
fn switch(cell: &std::sync::OnceLock<bool>, name: &str) -> bool {
    *cell.get_or_init(|| std::env::var(name).map_or(true, |v| v.trim() != "0"))
}

/// A constant input `i` (of the node whose input facts are `facts`) as a flat vector of `T`.
pub(crate) fn konst<T: Datum + Copy>(facts: &[&TypedFact], i: usize) -> Option<Vec<T>> {
    let t = facts.get(i)?.konst.as_ref()?;
    let t = t.cast_to::<T>().ok()?;
    let view = t.try_as_plain_ram().ok()?;
    Some(view.as_slice::<T>().ok()?.to_vec())
}

/// One value per channel from a constant input `i` of one or `m` values.
pub(crate) fn per_channel<T: Datum + Copy>(
    facts: &[&TypedFact],
    i: usize,
    m: usize,
) -> Option<Vec<T>> {
    match konst::<T>(facts, i)? {
        v if v.len() == m => Some(v),
        v if v.len() == 1 => Some(vec![v[0]; m]),
        _ => None,
    }
}

/// Whether an optional per-axis list (strides, dilations) is absent or all ones.
pub(crate) fn all_ones(v: &Option<TVec<usize>>) -> bool {
    v.as_ref().is_none_or(|v| v.iter().all(|&x| x == 1))
}

/// The convolutions our conv rules handle: 2D, ungrouped, undilated, OIHW kernel, NCHW or
/// tract's batch-free CHW.
pub(crate) fn plain_2d_conv(conv: &tract_core::ops::cnn::Conv) -> bool {
    use tract_core::ops::cnn::KernelFormat;
    use tract_core::ops::nn::DataFormat;
    let spec = &conv.pool_spec;
    conv.group == 1
        && conv.kernel_fmt == KernelFormat::OIHW
        && matches!(spec.data_format, DataFormat::NCHW | DataFormat::CHW)
        && spec.kernel_shape.len() == 2
        && all_ones(&spec.dilations)
}

/// The single successor of `outlet` when it has exactly one and is not a model output: the
/// condition for absorbing that successor into the op producing `outlet`.
pub(crate) fn sole_successor(model: &TypedModel, outlet: OutletId) -> Option<&TypedNode> {
    if model.outputs.contains(&outlet) {
        return None;
    }
    match model.outlet_successors(outlet) {
        [only] => Some(model.node(only.node)),
        _ => None,
    }
}

/// The data input of `node` when it is a ReLU: `Max(x, 0)` with a uniform zero.
pub(crate) fn relu_input(model: &TypedModel, node: &TypedNode) -> Option<OutletId> {
    let op = node.op_as::<tract_core::ops::binary::TypedBinOp>()?;
    if !op.0.is::<tract_core::ops::math::Max>() || node.inputs.len() != 2 {
        return None;
    }
    let facts = model.node_input_facts(node.id).ok()?;
    let is_zero = |fact: &TypedFact| {
        fact.uniform
            .as_ref()
            .and_then(|u| u.cast_to_scalar::<f32>().ok())
            .is_some_and(|v| v == 0.0)
    };
    let data = match (is_zero(facts[0]), is_zero(facts[1])) {
        (false, true) => 0,
        (true, false) => 1,
        _ => return None,
    };
    // The zero must broadcast onto the data, not widen it.
    (facts[data].shape == node.outputs[0].fact.shape).then_some(node.inputs[data])
}

/// `Max(x, 0)` wired the way tract's ONNX import and the native builder write a ReLU, for the
/// rules' unit tests.
#[cfg(test)]
pub(crate) fn wire_relu(model: &mut TypedModel, x: OutletId) -> OutletId {
    let rank = model.outlet_fact(x).unwrap().rank();
    let zero = tensor0(0f32).broadcast_into_rank(rank).unwrap();
    let zero = model.add_const("zero", zero).unwrap();
    model
        .wire_node("relu", tract_core::ops::math::max(), &[x, zero])
        .unwrap()[0]
}

/// A fixed pseudo-random byte sequence (xorshift32), for the int8 rules' unit tests.
#[cfg(test)]
pub(crate) fn test_bytes(len: usize, seed: u32) -> Vec<u8> {
    let mut s = seed.max(1);
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            s as u8
        })
        .collect()
}

/// [`test_bytes`] as f32s in [-1, 1), for the f32 rules' unit tests.
#[cfg(test)]
pub(crate) fn test_values(len: usize, seed: u32) -> Vec<f32> {
    test_bytes(len, seed)
        .into_iter()
        .map(|b| b as f32 / 128.0 - 1.0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_all_switches_everything_off() {
        let all = Rewrites::all();
        assert!(all.is_enabled(Rewrite::Winograd));
        let some = all.without("winograd").unwrap();
        assert!(!some.is_enabled(Rewrite::Winograd));
        assert!(some.is_enabled(Rewrite::ResidualAdd));
        assert_eq!(all.without("all").unwrap(), Rewrites::none());
        assert_eq!(
            all.without(
                " residual-add , winograd,int8-conv,int8-residual, max-pool,direct-conv,int8-quantize,conv-residual"
            )
            .unwrap(),
            Rewrites::none()
        );
        let err = all.without("wingrad").unwrap_err();
        assert!(err.contains("unknown rewrite \"wingrad\""), "{err}");
    }
}
