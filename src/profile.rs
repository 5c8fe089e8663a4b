//! `resnet-edge profile`: where an inference's time goes. Every node of the optimised plan is
//! timed, then the times are summed per ResNet stage (stem, layer1..layer4, head), per op kind,
//! and per source layer, with each conv's MACs and achieved GFLOP/s: the numbers that say
//! whether a layer is compute-bound or lost in overhead.
//!
//! Stages come from node names when they are torchvision module paths (`layer1.0.conv1`, or
//! legacy-export paths `/layer1/layer1.0/conv1/Conv`), and otherwise from the graph's shape:
//! the stem ends at the first tensor used twice (the first block's input and shortcut), blocks
//! end at each such fork, a block's stage is its spatial resolution, and the head is what
//! follows the last spatial feature map. That covers exports whose names carry no paths
//! (`node_Conv_12`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

use tract_core::internal::*;
use tract_core::ops::konst::Const;
use tract_core::ops::matmul::optimized::OptMatMul;

use crate::bench::{csv_cell, f, Machine, MeasureOptions, Session};
use crate::info::node_macs;
use crate::model::{LoadedModel, SourceKind};
use crate::precision::Precision;
use crate::preprocess::Layout;
use crate::transform::rewrite::winograd::{WinogradInput, WinogradMatMul};
use crate::{Error, Result};

/// Time and cost of one ResNet stage.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StageTime {
    /// `stem`, `layer1`..`layer4`, `head`, or `other` for nodes no rule places.
    pub stage: String,
    pub ms: f64,
    /// Share of the summed node time.
    pub percent: f64,
    /// Multiply-accumulates per inference run (the whole batch).
    pub macs: u64,
    /// `2 * macs / time`.
    pub gflops: f64,
}

/// Time spent in one kind of op of the optimised plan (what tract actually runs).
#[derive(Clone, Debug, serde::Serialize)]
pub struct OpTime {
    pub op: String,
    pub nodes: usize,
    pub ms: f64,
    pub percent: f64,
}

/// One layer of the source model (a conv, a pool, an add...) with the optimised nodes it became.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LayerTime {
    pub name: String,
    pub stage: String,
    /// The source op (`Conv`, `MaxPool`, ...), or the plan op for nodes tract added itself.
    pub op: String,
    pub ms: f64,
    pub percent: f64,
    pub macs: u64,
    /// Achieved GFLOP/s (`2 * macs / time`); null for layers without multiply-accumulates.
    pub gflops: Option<f64>,
}

/// Everything `resnet-edge profile` reports; the JSON keys are the field names.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProfileReport {
    pub model: String,
    pub source: SourceKind,
    /// What ran: f32, f16 or int8.
    pub precision: Precision,
    /// Why that precision (the request, the file, the CPU's FP16 support).
    pub precision_reason: String,
    pub threads: usize,
    pub batch: usize,
    pub input_shape: Vec<usize>,
    #[serde(flatten)]
    pub machine: Machine,
    pub runs: usize,
    /// How node, layer, stage and op times are taken over the runs.
    pub statistic: Statistic,
    /// Mean wall time of one whole profiled inference.
    pub total_ms: f64,
    /// Sum of the node times; with the mean, `total_ms` minus this is the plan's own
    /// bookkeeping.
    pub nodes_ms: f64,
    /// Stages in network order.
    pub stages: Vec<StageTime>,
    /// Op kinds, most expensive first.
    pub ops: Vec<OpTime>,
    /// Source layers, most expensive first.
    pub layers: Vec<LayerTime>,
}

/// What a node's time over the runs is reported as.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Statistic {
    /// What a run costs on average, noise included.
    #[default]
    Mean,
    /// Each node's fastest run: steadier on a noisy machine, and what
    /// `benches/ort_node_profile.py` reports for onnxruntime.
    Min,
}

impl std::str::FromStr for Statistic {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Statistic, String> {
        match s.trim() {
            "mean" => Ok(Statistic::Mean),
            "min" => Ok(Statistic::Min),
            other => Err(format!("expected mean or min, got {other:?}")),
        }
    }
}

/// Load `path`, run it once and warm up, then time every node over `num_runs` runs.
pub fn profile(
    path: &Path,
    options: &MeasureOptions,
    statistic: Statistic,
) -> Result<ProfileReport> {
    let mut session = Session::open(path, options)?;
    for _ in 0..=options.warmup_runs {
        session.run()?;
    }
    let Session {
        loaded,
        plan,
        state,
        input,
        precision,
        ..
    } = &mut session;
    let deadline = options
        .max_secs
        .and_then(|s| std::time::Duration::try_from_secs_f64(s).ok());
    let mut node_secs = vec![0f64; plan.model().nodes().len()];
    let mut node_min = vec![f64::INFINITY; node_secs.len()];
    let mut total_secs = 0f64;
    let mut runs = 0;
    let started = Instant::now();
    while runs < options.num_runs {
        let t = Instant::now();
        state
            .run_plan_with_eval(
                tvec!(input.clone()),
                |ctx: &EvalContext,
                 op_state: Option<&mut (dyn OpState + 'static)>,
                 node: &TypedNode,
                 inputs: TVec<TValue>| {
                    let t0 = Instant::now();
                    let out = tract_core::plan::eval(ctx, op_state, node, inputs);
                    let secs = t0.elapsed().as_secs_f64();
                    node_secs[node.id] += secs;
                    node_min[node.id] = node_min[node.id].min(secs);
                    out
                },
            )
            .map_err(|e| Error::tract("inference", e))?;
        total_secs += t.elapsed().as_secs_f64();
        runs += 1;
        if deadline.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
    }
    let node_ms: Vec<f64> = match statistic {
        Statistic::Mean => node_secs.iter().map(|s| s * 1e3 / runs as f64).collect(),
        Statistic::Min => node_min
            .iter()
            .map(|&s| if s.is_finite() { s * 1e3 } else { 0.0 })
            .collect(),
    };
    let breakdown = Breakdown::new(
        loaded,
        plan.model(),
        plan.runnable().order_without_consts(),
        &node_ms,
    );
    Ok(ProfileReport {
        model: path.display().to_string(),
        source: loaded.kind,
        precision: *precision,
        precision_reason: loaded.precision.reason.clone(),
        threads: plan.threads(),
        batch: plan.batch(),
        input_shape: loaded.input_shape.clone(),
        machine: Machine::of(plan),
        runs,
        statistic,
        total_ms: total_secs * 1e3 / runs as f64,
        nodes_ms: breakdown.nodes_ms,
        stages: breakdown.stages,
        ops: breakdown.ops,
        layers: breakdown.layers,
    })
}

struct Breakdown {
    nodes_ms: f64,
    stages: Vec<StageTime>,
    ops: Vec<OpTime>,
    layers: Vec<LayerTime>,
}

impl Breakdown {
    /// Attribute each optimised node's time (`node_ms[id]`) to a source layer and a stage.
    fn new(
        loaded: &LoadedModel,
        optimized: &TypedModel,
        order: &[usize],
        node_ms: &[f64],
    ) -> Breakdown {
        let source = &loaded.model;
        let source_stages = source_stages(source, loaded.layout);
        let source_macs: Vec<u64> = source
            .nodes()
            .iter()
            .map(|n| node_macs(source, n).unwrap_or(0))
            .collect();
        let by_name: HashMap<&str, usize> = source
            .nodes()
            .iter()
            .map(|n| (n.name.as_str(), n.id))
            .collect();
        let nodes_ms: f64 = order.iter().map(|&id| node_ms[id]).sum();
        let mut layers: Vec<LayerTime> = vec![];
        let mut layer_ix: HashMap<String, usize> = HashMap::new();
        let mut ops: BTreeMap<String, (usize, f64)> = BTreeMap::new();
        let mut stage = "stem".to_string();
        for &id in order {
            let node = optimized.node(id);
            let ms = node_ms[id];
            let entry = ops.entry(node.op.name().to_string()).or_default();
            entry.0 += 1;
            entry.1 += ms;
            let mut src = source_node(&node.name, &by_name);
            // A matmul fused with what follows it (bias, residual add, relu) is named after the
            // last fused op; its packed operands still carry the conv's name.
            if node.op_is::<OptMatMul>() && src.is_none_or(|s| source_macs[s] == 0) {
                src = node
                    .inputs
                    .iter()
                    .map(|i| optimized.node(i.node))
                    .filter(|n| !n.op_is::<OptMatMul>())
                    .filter_map(|n| source_node(&n.name, &by_name))
                    .find(|&s| source_macs[s] > 0)
                    .or(src);
            }
            let src = src.map(|sid| source.node(sid));
            stage = match src {
                Some(s) => source_stages[s.id].clone(),
                // A node tract made up: its own name may still say, else it sits with its
                // predecessor in the plan.
                None => name_stage(&node.name).unwrap_or(&stage).to_string(),
            };
            let (name, op, macs) = match src {
                Some(s) => (s.name.clone(), s.op.name().to_string(), source_macs[s.id]),
                None => (node.name.clone(), node.op.name().to_string(), 0),
            };
            let ix = *layer_ix.entry(name.clone()).or_insert_with(|| {
                layers.push(LayerTime {
                    name,
                    stage: stage.clone(),
                    op,
                    ms: 0.0,
                    percent: 0.0,
                    macs,
                    gflops: None,
                });
                layers.len() - 1
            });
            layers[ix].ms += ms;
        }
        let percent = |ms: f64| {
            if nodes_ms > 0.0 {
                100.0 * ms / nodes_ms
            } else {
                0.0
            }
        };
        let gflops = |macs: u64, ms: f64| {
            if ms > 0.0 {
                2.0 * macs as f64 / (ms * 1e6)
            } else {
                0.0
            }
        };
        // Stage MACs come from the source graph itself, so they hold even where a rewrite hid
        // which plan node computes which conv.
        let mut by_stage: BTreeMap<(usize, usize), StageTime> = BTreeMap::new();
        fn stage_entry<'a>(
            map: &'a mut BTreeMap<(usize, usize), StageTime>,
            stage: &str,
        ) -> &'a mut StageTime {
            map.entry(stage_rank(stage)).or_insert_with(|| StageTime {
                stage: stage.to_string(),
                ms: 0.0,
                percent: 0.0,
                macs: 0,
                gflops: 0.0,
            })
        }
        for layer in &mut layers {
            layer.percent = percent(layer.ms);
            layer.gflops = (layer.macs > 0).then(|| gflops(layer.macs, layer.ms));
            stage_entry(&mut by_stage, &layer.stage).ms += layer.ms;
        }
        for (id, &macs) in source_macs.iter().enumerate() {
            if macs > 0 {
                stage_entry(&mut by_stage, &source_stages[id]).macs += macs;
            }
        }
        let mut stages: Vec<StageTime> = by_stage.into_values().collect();
        for s in &mut stages {
            s.percent = percent(s.ms);
            s.gflops = gflops(s.macs, s.ms);
        }
        layers.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        let mut ops: Vec<OpTime> = ops
            .into_iter()
            .map(|(op, (nodes, ms))| OpTime {
                op,
                nodes,
                ms,
                percent: percent(ms),
            })
            .collect();
        ops.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        Breakdown {
            nodes_ms,
            stages,
            ops,
            layers,
        }
    }
}

/// The source node an optimised node came from: the same name, or the longest source name it
/// extends with `.suffix` (tract names the nodes it derives `<origin>.<what>`).
fn source_node(name: &str, by_name: &HashMap<&str, usize>) -> Option<usize> {
    let mut candidate = name;
    loop {
        if let Some(&id) = by_name.get(candidate) {
            return Some(id);
        }
        candidate = candidate.rsplit_once('.')?.0;
    }
}

/// Network order of stage names, for sorting.
fn stage_rank(stage: &str) -> (usize, usize) {
    match stage {
        "stem" => (0, 0),
        "head" => (2, 0),
        "other" => (3, 0),
        s => (
            1,
            s.strip_prefix("layer")
                .and_then(|n| n.parse().ok())
                .unwrap_or(usize::MAX),
        ),
    }
}

/// The stage a torchvision module path names: `layer3.1.conv2`, `/layer3/layer3.1/conv2/Conv`,
/// `conv1`, `fc`. `None` when the name is not such a path.
pub fn name_stage(name: &str) -> Option<&'static str> {
    let first = name.split(['/', '.']).find(|s| !s.is_empty())?;
    Some(match first {
        "conv1" | "bn1" | "relu" | "maxpool" | "input" => "stem",
        "layer1" => "layer1",
        "layer2" => "layer2",
        "layer3" => "layer3",
        "layer4" => "layer4",
        "avgpool" | "fc" | "Flatten" | "flatten" | "logits" => "head",
        _ => return None,
    })
}

/// Stage of every source node (indexed by node id): by name where names are module paths,
/// else by position (see the module docs), else `other`.
fn source_stages(model: &TypedModel, layout: Layout) -> Vec<String> {
    let positional = positional_stages(model, layout).unwrap_or_default();
    model
        .nodes()
        .iter()
        .map(|n| {
            name_stage(&n.name)
                .map(str::to_string)
                .or_else(|| positional.get(&n.id).cloned())
                .unwrap_or_else(|| "other".to_string())
        })
        .collect()
}

/// Stages from the graph's shape alone; `None` when it does not look like a ResNet (no fork).
fn positional_stages(model: &TypedModel, layout: Layout) -> Option<HashMap<usize, String>> {
    let order: Vec<usize> = model
        .eval_order()
        .ok()?
        .into_iter()
        .filter(|&id| !model.node(id).op_is::<Const>())
        .collect();
    let input_hw = model
        .input_fact(0)
        .ok()?
        .shape
        .as_concrete()
        .and_then(|s| spatial(s, layout, None))?;
    // A tensor used twice (not a node with several outputs used once each).
    let forks = |id: usize| {
        model
            .node(id)
            .outputs
            .iter()
            .any(|o| o.successors.len() >= 2)
    };
    let hw = |id: usize| {
        // Winograd's [positions, channels, tiles] intermediates are not feature maps.
        let node = model.node(id);
        if node.op_is::<WinogradInput>() || node.op_is::<WinogradMatMul>() {
            return None;
        }
        let shape = model
            .outlet_fact(OutletId::new(id, 0))
            .ok()?
            .shape
            .as_concrete()?
            .to_vec();
        spatial(&shape, layout, Some(input_hw))
    };
    let stem_end = order.iter().position(|&id| forks(id))?;
    // Inside the body some tensors are reshaped to rank 3 (1x1 convs as matmuls), so the head
    // is what follows the last spatial feature map, not the first non-spatial tensor.
    let head_start = order
        .iter()
        .rposition(|&id| hw(id).is_some_and(|(h, w)| h * w > 1))
        .map_or(order.len(), |p| p + 1)
        .max(stem_end + 1);
    let mut stages = HashMap::new();
    for &id in &order[..=stem_end] {
        stages.insert(id, "stem".to_string());
    }
    for &id in &order[head_start..] {
        stages.insert(id, "head".to_string());
    }
    // Blocks: runs of body nodes, each closed by a fork (the tensor the next block reuses).
    let mut blocks: Vec<(Vec<usize>, usize)> = vec![];
    let mut current = vec![];
    for &id in &order[stem_end + 1..head_start] {
        current.push(id);
        if forks(id) {
            blocks.push((std::mem::take(&mut current), 0));
        }
    }
    if !current.is_empty() {
        blocks.push((current, 0));
    }
    // A block's resolution is its output's (its input may be twice as large).
    for (nodes, res) in &mut blocks {
        *res = nodes
            .iter()
            .rev()
            .find_map(|&id| hw(id))
            .map_or(0, |(h, w)| h * w);
    }
    // Each distinct resolution, largest first, is one stage.
    let mut resolutions: Vec<usize> = blocks.iter().map(|b| b.1).collect();
    resolutions.sort_unstable_by(|a, b| b.cmp(a));
    resolutions.dedup();
    for (nodes, res) in blocks {
        let layer = resolutions.iter().position(|&r| r == res).unwrap_or(0) + 1;
        for id in nodes {
            stages.insert(id, format!("layer{layer}"));
        }
    }
    Some(stages)
}

/// Height and width of a feature map: the last three axes are `C, H, W` or `H, W, C` (tract
/// drops the batch axis in places). Graphs may transpose an NHWC input to NCHW inside, so the
/// reading whose aspect ratio matches the input's wins, the model's layout breaking ties; maps
/// matching neither (a matmul's `[N, C, H*W]`, a half-strided intermediate) are not spatial.
fn spatial(
    shape: &[usize],
    layout: Layout,
    input_hw: Option<(usize, usize)>,
) -> Option<(usize, usize)> {
    let &[a, b, c] = shape.get(shape.len().checked_sub(3)?..)? else {
        return None;
    };
    if shape.len() > 4 {
        return None;
    }
    let (nchw, nhwc) = ((b, c), (a, b));
    let preferred = match layout {
        Layout::Nchw => [nchw, nhwc],
        Layout::Nhwc => [nhwc, nchw],
    };
    let Some((ih, iw)) = input_hw else {
        return Some(preferred[0]);
    };
    // Relative difference of the aspect ratios h/w and ih/iw.
    let mismatch = |(h, w): (usize, usize)| {
        let (r, ir) = (h as f64 / w.max(1) as f64, ih as f64 / iw.max(1) as f64);
        (r - ir).abs() / ir
    };
    preferred
        .into_iter()
        .filter(|&hw| mismatch(hw) < 0.25)
        .min_by(|&x, &y| mismatch(x).total_cmp(&mismatch(y)))
}

impl ProfileReport {
    /// Stages, op kinds and the `top` most expensive layers as text tables.
    pub fn table(&self, top: usize) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "{}  {:?} {}  threads {}  {} ({}, kernel {})\n",
            self.model,
            self.input_shape,
            self.precision,
            self.threads,
            self.machine.cpu,
            self.machine.isa,
            self.machine.kernel
        ));
        out.push_str(&format!(
            "inference {:.2} ms (mean of {} runs; nodes {:.2} ms, each its {})\n\n",
            self.total_ms,
            self.runs,
            self.nodes_ms,
            match self.statistic {
                Statistic::Mean => "mean",
                Statistic::Min => "fastest run",
            }
        ));
        out.push_str(&format!(
            "{:<8} {:>9} {:>6} {:>9} {:>8}\n",
            "stage", "ms", "%", "GMACs", "GFLOP/s"
        ));
        for s in &self.stages {
            out.push_str(&format!(
                "{:<8} {:>9.3} {:>6.1} {:>9.3} {:>8.2}\n",
                s.stage,
                s.ms,
                s.percent,
                s.macs as f64 / 1e9,
                s.gflops
            ));
        }
        out.push_str(&format!(
            "\n{:<24} {:>5} {:>9} {:>6}\n",
            "op kind", "nodes", "ms", "%"
        ));
        for o in &self.ops {
            out.push_str(&format!(
                "{:<24} {:>5} {:>9.3} {:>6.1}\n",
                o.op, o.nodes, o.ms, o.percent
            ));
        }
        out.push_str(&format!(
            "\ntop {} layers\n{:>3}  {:<40} {:<7} {:<14} {:>9} {:>6} {:>9} {:>8}\n",
            top.min(self.layers.len()),
            "#",
            "layer",
            "stage",
            "op",
            "ms",
            "%",
            "MMACs",
            "GFLOP/s"
        ));
        for (i, l) in self.layers.iter().take(top).enumerate() {
            out.push_str(&format!(
                "{:>3}  {:<40} {:<7} {:<14} {:>9.3} {:>6.1} {:>9.1} {:>8}\n",
                i + 1,
                l.name,
                l.stage,
                l.op,
                l.ms,
                l.percent,
                l.macs as f64 / 1e6,
                l.gflops
                    .map(|g| format!("{g:.2}"))
                    .unwrap_or_else(|| "-".into())
            ));
        }
        out
    }

    /// One row per stage, op kind and layer: `section,name,stage,op,nodes,ms,percent,macs,gflops`.
    pub fn csv(&self) -> String {
        let mut out = String::from("section,name,stage,op,nodes,ms,percent,macs,gflops\n");
        let mut row = |cells: [String; 9]| {
            out.push_str(
                &cells
                    .iter()
                    .map(|c| csv_cell(c))
                    .collect::<Vec<_>>()
                    .join(","),
            );
            out.push('\n');
        };
        row([
            "total".into(),
            self.model.clone(),
            String::new(),
            String::new(),
            String::new(),
            f(self.total_ms),
            "100".into(),
            String::new(),
            String::new(),
        ]);
        for s in &self.stages {
            let macs = s.macs.to_string();
            row([
                "stage".into(),
                s.stage.clone(),
                s.stage.clone(),
                String::new(),
                String::new(),
                f(s.ms),
                f(s.percent),
                macs,
                f(s.gflops),
            ]);
        }
        for o in &self.ops {
            row([
                "op".into(),
                o.op.clone(),
                String::new(),
                o.op.clone(),
                o.nodes.to_string(),
                f(o.ms),
                f(o.percent),
                String::new(),
                String::new(),
            ]);
        }
        for l in &self.layers {
            let gflops = l.gflops.map(f).unwrap_or_default();
            row([
                "layer".into(),
                l.name.clone(),
                l.stage.clone(),
                l.op.clone(),
                String::new(),
                f(l.ms),
                f(l.percent),
                l.macs.to_string(),
                gflops,
            ]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_from_module_paths() {
        assert_eq!(name_stage("layer3.1.conv2"), Some("layer3"));
        assert_eq!(
            name_stage("/layer4/layer4.0/downsample/downsample.0/Conv"),
            Some("layer4")
        );
        assert_eq!(name_stage("/conv1/Conv"), Some("stem"));
        assert_eq!(name_stage("maxpool"), Some("stem"));
        assert_eq!(name_stage("fc.matmul"), Some("head"));
        assert_eq!(name_stage("/Flatten"), Some("head"));
        assert_eq!(name_stage("node_Conv_292"), None);
        assert_eq!(name_stage("layer10.conv"), None);
    }

    #[test]
    fn maps_derived_names_to_the_longest_source_name() {
        let names: HashMap<&str, usize> = [
            ("layer1.0.conv1", 1),
            ("layer1.0.conv1.relu", 2),
            ("/conv1/Conv", 3),
        ]
        .into_iter()
        .collect();
        assert_eq!(source_node("layer1.0.conv1.im2col", &names), Some(1));
        assert_eq!(source_node("layer1.0.conv1.relu.pack", &names), Some(2));
        assert_eq!(source_node("/conv1/Conv.matmatmul", &names), Some(3));
        assert_eq!(source_node("layer1.0.conv2", &names), None);
    }

    #[test]
    fn spatial_follows_the_input_aspect() {
        // An NHWC model transposed to NCHW inside: a 64-channel 56x56 map.
        assert_eq!(
            spatial(&[1, 64, 56, 56], Layout::Nhwc, Some((224, 224))),
            Some((56, 56))
        );
        assert_eq!(
            spatial(&[1, 56, 56, 64], Layout::Nhwc, Some((224, 224))),
            Some((56, 56))
        );
        assert_eq!(
            spatial(&[1, 64, 7, 7], Layout::Nchw, Some((224, 224))),
            Some((7, 7))
        );
        assert_eq!(
            spatial(&[16, 14, 14], Layout::Nchw, Some((224, 224))),
            Some((14, 14))
        );
        assert_eq!(spatial(&[1, 64], Layout::Nchw, Some((224, 224))), None);
        assert_eq!(
            spatial(&[1, 16, 3136], Layout::Nchw, Some((224, 224))),
            None
        );
        assert_eq!(
            spatial(&[1, 16, 28, 56], Layout::Nchw, Some((224, 224))),
            None
        );
        assert_eq!(
            spatial(&[1, 3, 240, 320], Layout::Nchw, Some((240, 320))),
            Some((240, 320))
        );
    }
}
