//! The Winograd matmuls, `U[p] (K x C) . V[p] (C x tiles)` for every position p, as groups of
//! positions run side by side.
//!
//! Why not one batched `EinSum` in the graph: tract runs a batched matmul as a serial loop over
//! the batch axis, each step dispatched to the thread pool on its own. With 16 or 36 small
//! matmuls per convolution that dispatch cost more than the second thread bought (ResNet-18 at
//! 2 threads: 56 ms, slower than at 1 thread). Here each group of positions is its own
//! optimised tract plan (weights packed once, at load, tract's kernels), run single-threaded,
//! and the groups are spread over the pool: one hand-off per convolution.
//!
//! Where `direct-conv`'s GEMM runs (x86 with AVX2 + FMA) each position's product is instead a
//! 1x1 convolution of C channels over the tiles on that kernel ([`Backend::Direct`]): the
//! shapes here (K and C of 64-512, 16-196 tiles) are ones tract served with its 8x8, 16x5 and
//! 16x6 kernels, and the 1x1 convs ran faster on ours (see the README).

use std::ops::Range;
use std::sync::Mutex;

use tract_core::internal::*;
use tract_core::ops::einsum::EinSum;
use tract_linalg::multithread::{multithread_tract_scope, Executor};

use crate::transform::rewrite::direct_conv::kernel as gemm;
use crate::transform::rewrite::on_tract_threads;
use crate::transform::rewrite::phase_planes::Geometry;

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
    pub backend: Backend,
    /// Output and input channels, for `info`'s figures.
    pub k: usize,
    pub c: usize,
    /// Columns of every product (tiles over the batch).
    tiles: usize,
}

/// What runs each group's products.
#[derive(Debug, Clone)]
pub enum Backend {
    /// One optimised tract plan per group (weights packed at load, tract's kernels).
    Tract(Vec<Arc<TypedRunnableModel>>),
    /// `direct-conv`'s GEMM.
    Direct(Arc<Direct>),
}

/// `direct-conv`'s packed weights, per group and position, and what its kernel needs to run
/// each product as a 1x1 conv of C channels over the tiles: fixed per op, so made at load.
#[derive(Debug)]
pub struct Direct {
    weights: Vec<Vec<gemm::Weights>>,
    geo: Geometry,
    tasks: Vec<gemm::Task>,
    starts: Vec<usize>,
    isa: gemm::Isa,
}

impl Backend {
    fn groups(&self) -> usize {
        match self {
            Backend::Tract(plans) => plans.len(),
            Backend::Direct(direct) => direct.weights.len(),
        }
    }
}

impl PartialEq for WinogradMatMul {
    fn eq(&self, other: &Self) -> bool {
        match (&self.backend, &other.backend) {
            (Backend::Tract(a), Backend::Tract(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(a, b)| Arc::ptr_eq(a, b))
            }
            (Backend::Direct(a), Backend::Direct(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
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
        let backend = if gemm::available() {
            let geo = Geometry::pointwise(c, (1, tiles), (1, 1), (1, tiles));
            Backend::Direct(Arc::new(Direct {
                weights: Self::packed(u, ranges, k, c)?,
                tasks: gemm::tasks(&geo, k, 1, 1),
                starts: geo.row_starts(),
                geo,
                isa: gemm::Isa::detect(),
            }))
        } else {
            Backend::Tract(Self::plans(u, ranges, c, tiles)?)
        };
        Ok(WinogradMatMul {
            backend,
            k,
            c,
            tiles,
        })
    }

    /// `U[p]` (`K x C`) packed for [`gemm`], with a zero bias.
    fn packed(
        u: &Tensor,
        ranges: &[Range<usize>],
        k: usize,
        c: usize,
    ) -> TractResult<Vec<Vec<gemm::Weights>>> {
        let u = u.try_as_plain_ram()?;
        let u = u.as_slice::<f32>()?;
        let zeros = vec![0f32; k];
        ranges
            .iter()
            .map(|range| {
                range
                    .clone()
                    .map(|p| {
                        let w = u.get(p * k * c..(p + 1) * k * c);
                        w.and_then(|w| gemm::Weights::new(w, &zeros, k, c))
                            .context("Winograd weights do not pack")
                    })
                    .collect()
            })
            .collect()
    }

    fn plans(
        u: &Tensor,
        ranges: &[Range<usize>],
        c: usize,
        tiles: usize,
    ) -> TractResult<Vec<Arc<TypedRunnableModel>>> {
        ranges
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
            .collect()
    }

    /// Group `group`'s products on [`gemm`]: each position a 1x1 conv of C channels over the
    /// tiles, on the calling thread.
    fn direct(&self, direct: &Direct, group: usize, v: &TValue) -> TractResult<TValue> {
        let (k, c, t) = (self.k, self.c, self.tiles);
        let weights = direct.weights.get(group).context("Winograd group")?;
        let (geo, starts) = (&direct.geo, &direct.starts);
        let v = v.try_as_plain_ram()?;
        let v = v.as_slice::<f32>()?;
        ensure!(
            v.len() == weights.len() * c * t,
            "Winograd matmul input of {}",
            v.len()
        );
        // SAFETY: f32 has no invalid bit patterns, and the tasks write every element.
        let mut out = unsafe { Tensor::uninitialized::<f32>(&[weights.len(), k, t])? };
        {
            let mut view = out.try_as_plain_ram_mut()?;
            let out = view.as_slice_mut::<f32>()?;
            for ((w, x), o) in weights
                .iter()
                .zip(v.chunks_exact(c * t))
                .zip(out.chunks_exact_mut(k * t))
            {
                let o = gemm::OutPtr(o.as_mut_ptr());
                for task in &direct.tasks {
                    // SAFETY: `o` holds this position's K x tiles and outlives the call, the
                    // tasks cover it once; `x` is its C x tiles; the kernel was detected.
                    unsafe {
                        gemm::run_task(
                            geo,
                            starts,
                            w,
                            x,
                            o,
                            task,
                            gemm::Finish::default(),
                            direct.isa,
                        )
                    };
                }
            }
        }
        Ok(out.into_tvalue())
    }

    /// Every group's products, the groups spread over the plan's threads.
    fn run(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == self.backend.groups());
        let results: Vec<Mutex<Option<TractResult<TValue>>>> =
            inputs.iter().map(|_| Mutex::new(None)).collect();
        let work: Vec<_> = inputs.into_iter().enumerate().collect();
        on_tract_threads(work, |(group, v)| {
            let out = match &self.backend {
                Backend::Tract(plans) => {
                    multithread_tract_scope(Executor::SingleThread, || plans[group].run(tvec![v]))
                        .and_then(|mut out| {
                            out.pop().context("Winograd matmul plan without output")
                        })
                }
                Backend::Direct(direct) => self.direct(direct, group, &v),
            };
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

impl Op for WinogradMatMul {
    fn name(&self) -> StaticName {
        "WinogradMatMul".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let on = match self.backend {
            Backend::Tract(_) => "tract's kernels",
            Backend::Direct(_) => "direct-conv's GEMM",
        };
        Ok(vec![format!("{} groups, {on}", self.backend.groups())])
    }

    op_as_typed_op!();
}

impl EvalOp for WinogradMatMul {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        self.run(inputs)
    }
}

impl TypedOp for WinogradMatMul {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == self.backend.groups());
        inputs
            .iter()
            .map(|fact| {
                let shape = fact
                    .shape
                    .as_concrete()
                    .context("Winograd matmul input shape")?;
                ensure!(shape.len() == 3 && shape[1] == self.c && shape[2] == self.tiles);
                Ok(f32::fact([shape[0], self.k, self.tiles]))
            })
            .collect()
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::rewrite::test_values;

    /// Both backends against the definition, `out[p][k][t] = sum_c u[p][k][c] v[p][c][t]`:
    /// 300 channels (two of `direct-conv`'s depth blocks), 7 output channels (a partial group
    /// of 6) and 21 tiles (a partial panel of 16), over 5 positions in uneven groups.
    #[test]
    fn products_match_the_definition_on_both_backends() {
        let (positions, k, c, t) = (5, 7, 300, 21);
        let u = test_values(positions * k * c, 1);
        let v = test_values(positions * c * t, 2);
        let ranges = [0..2, 2..3, 3..5];
        let expected: Vec<f32> = (0..positions)
            .flat_map(|p| (0..k).flat_map(move |kk| (0..t).map(move |tt| (p, kk, tt))))
            .map(|(p, kk, tt)| {
                (0..c)
                    .map(|cc| u[(p * k + kk) * c + cc] * v[(p * c + cc) * t + tt])
                    .sum()
            })
            .collect();
        let u = Tensor::from_shape(&[positions, k, c], &u).unwrap();
        let mut backends = vec![Backend::Tract(
            WinogradMatMul::plans(&u, &ranges, c, t).unwrap(),
        )];
        if gemm::available() {
            let direct = WinogradMatMul::new(&u, &ranges, t).unwrap().backend;
            assert!(matches!(direct, Backend::Direct(_)));
            backends.push(direct);
        }
        for backend in backends {
            let op = WinogradMatMul {
                backend,
                k,
                c,
                tiles: t,
            };
            let inputs: TVec<TValue> = ranges
                .iter()
                .map(|r| {
                    let v = &v[r.start * c * t..r.end * c * t];
                    Tensor::from_shape(&[r.len(), c, t], v)
                        .unwrap()
                        .into_tvalue()
                })
                .collect();
            let outputs = op.run(inputs).unwrap();
            let got: Vec<f32> = outputs
                .iter()
                .flat_map(|o| {
                    let o = o.try_as_plain_ram().unwrap();
                    o.as_slice::<f32>().unwrap().to_vec()
                })
                .collect();
            assert_eq!(got.len(), expected.len());
            for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
                assert!((g - e).abs() <= 1e-4 * (1.0 + e.abs()), "{i}: {g} vs {e}");
            }
        }
    }
}
