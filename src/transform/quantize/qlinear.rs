//! Rewrite a float ONNX graph into its int8 form, in ONNX's own integer operators, so that tract
//! runs the convolutions and the fully connected layer on its integer matmul kernels and
//! onnxruntime can run the same file as an independent check.
//!
//! - `Conv` becomes `QLinearConv`: uint8 activations (per tensor, from calibration), int8 weights
//!   (per output channel, symmetric), int32 bias at scale `x_scale * w_scale`. A `Relu` that is
//!   the conv's only reader is fused by quantising the conv's output over the ReLU's range.
//! - `Gemm`/`MatMul` with constant weights become `MatMulInteger` (int32 accumulators) followed
//!   by one float rescale and the bias, so the logits keep full precision.
//! - `MaxPool` runs on uint8 when its input only exists quantised (max commutes with a monotone
//!   affine map). Everything else (residual adds, ReLUs after them, pooling, reshapes) stays
//!   float, fed by `DequantizeLinear` and feeding `QuantizeLinear` where needed.

use std::collections::{HashMap, HashSet};

use tract_onnx::data_resolver::ModelDataResolver;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::{
    attribute_proto::AttributeType, AttributeProto, GraphProto, NodeProto, TensorProto,
    ValueInfoProto,
};

use crate::transform::fold_batchnorm::node_label;

/// Integer weights use [-64, 64]: symmetric, so the zero point is 0 (Jacob et al. 2018,
/// onnxruntime's per-channel default), and 7 bits, so x86's `vpmaddubsw` (u8 x i8, pairs
/// summed to i16) cannot saturate: `255 * (64 + 64) <= 32767`. onnxruntime's `reduce_range`
/// makes the same trade for the same instruction; its accuracy cost is in the README's tables,
/// and without it the [`crate::transform::rewrite::int8_conv`] kernel cannot take the convs.
const W_MAX: f32 = 64.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QKind {
    Conv,
    /// Gemm (B given as `[N, K]` when `trans_b`) or MatMul with a constant `[K, N]` B.
    Fc {
        trans_b: bool,
    },
}

/// One node the rewrite turns into integer arithmetic.
#[derive(Clone, Debug)]
pub struct QOp {
    pub node: usize,
    pub kind: QKind,
    /// The node's name (or output), as reports and `--keep-f32` name it.
    pub name: String,
    pub input: String,
    pub weight: String,
    pub bias: Option<String>,
    /// Index of a `Relu` folded into a conv's output range.
    pub fused_relu: Option<usize>,
    /// The float tensor the op (with its fused ReLU) stands for.
    pub output: String,
}

/// What can be quantised in a graph, and which float tensors calibration must observe.
#[derive(Clone, Debug, Default)]
pub struct Analysis {
    pub ops: Vec<QOp>,
    /// Inputs of every op, and outputs of the convs (their uint8 ranges).
    pub observed: Vec<String>,
    /// Convs and FC layers left in float by request.
    pub kept_f32: Vec<String>,
}

/// Per-tensor uint8 parameters: `x = scale * (q - zero_point)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QParams {
    pub scale: f32,
    pub zero_point: u8,
}

fn attr_i(node: &NodeProto, name: &str) -> Option<i64> {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

fn attr_f(node: &NodeProto, name: &str) -> Option<f32> {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.f)
}

/// Find the quantisable nodes of `graph`. `keep_f32(name)` says which to leave in float.
pub fn analyse(graph: &GraphProto, keep_f32: &dyn Fn(&str) -> bool) -> Analysis {
    let inits: HashMap<&str, &TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let is_float_init = |name: &str, rank: usize| {
        inits
            .get(name)
            .is_some_and(|t| t.data_type == DataType::Float as i32 && t.dims.len() == rank)
    };
    let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (ix, n) in graph.node.iter().enumerate() {
        for i in n.input.iter().filter(|i| !i.is_empty()) {
            readers.entry(i.as_str()).or_default().push(ix);
        }
    }
    let graph_outputs: HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    let mut analysis = Analysis::default();
    for (ix, n) in graph.node.iter().enumerate() {
        let kind = match n.op_type.as_str() {
            "Conv" if n.input.len() >= 2 && is_float_init(&n.input[1], 4) => QKind::Conv,
            "Gemm"
                if n.input.len() >= 2
                    && is_float_init(&n.input[1], 2)
                    && attr_i(n, "transA").unwrap_or(0) == 0
                    && attr_f(n, "alpha").unwrap_or(1.0) == 1.0
                    && attr_f(n, "beta").unwrap_or(1.0) == 1.0 =>
            {
                QKind::Fc {
                    trans_b: attr_i(n, "transB").unwrap_or(0) == 1,
                }
            }
            "MatMul" if n.input.len() == 2 && is_float_init(&n.input[1], 2) => {
                QKind::Fc { trans_b: false }
            }
            _ => continue,
        };
        let bias = n.input.get(2).filter(|b| !b.is_empty()).cloned();
        if bias.as_deref().is_some_and(|b| !is_float_init(b, 1)) || n.output.len() != 1 {
            continue;
        }
        let name = node_label(n);
        if keep_f32(&name) {
            analysis.kept_f32.push(name);
            continue;
        }
        let mut output = n.output[0].clone();
        let mut fused_relu = None;
        if kind == QKind::Conv && !graph_outputs.contains(output.as_str()) {
            if let Some(&[r]) = readers.get(output.as_str()).map(Vec::as_slice) {
                if graph.node[r].op_type == "Relu" {
                    fused_relu = Some(r);
                    output = graph.node[r].output[0].clone();
                }
            }
        }
        analysis.ops.push(QOp {
            node: ix,
            kind,
            name,
            input: n.input[0].clone(),
            weight: n.input[1].clone(),
            bias,
            fused_relu,
            output,
        });
    }
    let mut seen = HashSet::new();
    for op in &analysis.ops {
        let mut names = vec![op.input.clone()];
        if op.kind == QKind::Conv {
            names.push(op.output.clone());
        }
        for name in names {
            if seen.insert(name.clone()) {
                analysis.observed.push(name);
            }
        }
    }
    analysis
}

/// Per-output-channel symmetric int8 weights: `(values, scales)`; `channels_first` says whether
/// the channel is the leading axis (conv `[O, I, kh, kw]`) or the last (`[K, N]`).
pub fn quantize_weights(w: &[f32], channels: usize, channels_first: bool) -> (Vec<i8>, Vec<f32>) {
    quantize_weights_min(w, channels, channels_first, &[])
}

/// The smallest weight scale per channel at which `bias` still fits the int32 accumulator at
/// scale `x_scale * w_scale` (with headroom for the sums): a channel whose weights are all but
/// zero (real checkpoints have them) would otherwise get a vanishing scale and an overflowing
/// bias.
pub fn bias_scale_floor(bias: &[f32], x_scale: f32) -> Vec<f32> {
    bias.iter()
        .map(|b| (b.abs() as f64 / (x_scale as f64 * (1u64 << 24) as f64)) as f32)
        .collect()
}

/// [`quantize_weights`] with per-channel lower bounds on the scales (`floor` may be empty).
pub fn quantize_weights_min(
    w: &[f32],
    channels: usize,
    channels_first: bool,
    floor: &[f32],
) -> (Vec<i8>, Vec<f32>) {
    let per = w.len() / channels.max(1);
    let channel_of = |i: usize| {
        if channels_first {
            i / per.max(1)
        } else {
            i % channels
        }
    };
    let mut max = vec![0f32; channels];
    for (i, v) in w.iter().enumerate() {
        let c = channel_of(i);
        max[c] = max[c].max(v.abs());
    }
    // An all-zero channel quantises to zeros at any scale; 1 keeps bias scales finite.
    let scales: Vec<f32> = max
        .iter()
        .enumerate()
        .map(|(c, &m)| {
            let s = if m > 0.0 { m / W_MAX } else { 1.0 };
            s.max(floor.get(c).copied().unwrap_or(0.0))
        })
        .collect();
    let q = w
        .iter()
        .enumerate()
        .map(|(i, v)| (v / scales[channel_of(i)]).round().clamp(-W_MAX, W_MAX) as i8)
        .collect();
    (q, scales)
}

/// Everything the rewrite needs besides the graph.
pub struct Rewrite<'a> {
    pub analysis: &'a Analysis,
    pub params: &'a HashMap<String, QParams>,
    /// Reads an initializer's values as f32 (resolving external data).
    pub read: &'a dyn Fn(&TensorProto) -> anyhow::Result<Vec<f32>>,
    /// Also output every conv's (dequantised) result as `<tensor>.probe`, for per-layer error.
    pub probes: bool,
    /// Residual adds read the float block outputs; by default they read the uint8 copies the
    /// next convs read, as onnxruntime's `QLinearAdd` does.
    pub float_residuals: bool,
}

/// Names of the probe outputs [`rewrite`] adds, by the float tensor they mirror.
pub fn probe_name(tensor: &str) -> String {
    format!("{tensor}.probe")
}

struct Emitter {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    quantized: HashMap<String, (String, QParams)>,
    float: HashSet<String>,
}

impl Emitter {
    fn node(&mut self, op: &str, inputs: &[&str], output: &str) -> &mut NodeProto {
        let ix = self.nodes.len();
        self.nodes.push(NodeProto {
            op_type: op.into(),
            name: format!("{output}.{op}"),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            ..NodeProto::default()
        });
        &mut self.nodes[ix]
    }

    fn scalar_params(&mut self, base: &str, p: QParams) -> (String, String) {
        let (s, z) = (format!("{base}.scale"), format!("{base}.zero_point"));
        self.inits
            .push(tensor(&s, &[], DataType::Float, f32_bytes(&[p.scale])));
        self.inits
            .push(tensor(&z, &[], DataType::Uint8, vec![p.zero_point]));
        (s, z)
    }

    /// The uint8 version of float tensor `name` and its parameters, quantising it with `p`
    /// here if it is not there yet (a max-pool's output keeps its producer's parameters).
    fn quantized(&mut self, name: &str, p: QParams) -> anyhow::Result<(String, QParams)> {
        if let Some(found) = self.quantized.get(name) {
            return Ok(found.clone());
        }
        anyhow::ensure!(self.float.contains(name), "tensor {name:?} is not computed");
        let q = format!("{name}.q");
        let (s, z) = self.scalar_params(&q, p);
        self.node("QuantizeLinear", &[name, &s, &z], &q);
        self.quantized.insert(name.into(), (q.clone(), p));
        Ok((q, p))
    }

    /// A float copy of `name` dequantised from its uint8 version, when it has one (besides
    /// its float self): a residual join reading it takes one byte per element, not four, and
    /// the block that computed it need not keep its float sum.
    fn dequantized(&mut self, name: &str) -> Option<String> {
        if !self.float.contains(name) {
            return None;
        }
        let (q, _) = self.quantized.get(name).cloned()?;
        let dq = format!("{name}.dq");
        if !self.float.contains(&dq) {
            let (s, z) = (format!("{q}.scale"), format!("{q}.zero_point"));
            self.node("DequantizeLinear", &[&q, &s, &z], &dq);
            self.float.insert(dq.clone());
        }
        Some(dq)
    }

    /// Make float tensor `name` available, dequantising it if it only exists as uint8.
    fn float(&mut self, name: &str) {
        if name.is_empty() || self.float.contains(name) {
            return;
        }
        if let Some((q, _)) = self.quantized.get(name).cloned() {
            let (s, z) = (format!("{q}.scale"), format!("{q}.zero_point"));
            self.node("DequantizeLinear", &[&q, &s, &z], name);
            self.float.insert(name.into());
        }
    }
}

/// A quantised op's float weight (with its dims) and bias, as read from the graph.
struct OpWeights {
    w: Vec<f32>,
    dims: Vec<i64>,
    bias: Option<Vec<f32>>,
}

impl Emitter {
    /// `op` as `QLinearConv` from uint8 input `x` to uint8 output with parameters `y`.
    fn conv(
        &mut self,
        op: &QOp,
        attributes: &[AttributeProto],
        (xq, xp): (String, QParams),
        OpWeights { w, dims, bias }: OpWeights,
        y: QParams,
    ) -> anyhow::Result<()> {
        let channels = dims.first().copied().unwrap_or(1).max(1) as usize;
        let floor = bias
            .as_deref()
            .map(|b| bias_scale_floor(b, xp.scale))
            .unwrap_or_default();
        let (wq, ws) = quantize_weights_min(&w, channels, true, &floor);
        let wname = format!("{}.q", op.weight);
        let c = [channels as i64];
        self.inits
            .push(tensor(&wname, &dims, DataType::Int8, i8_bytes(&wq)));
        self.inits.push(tensor(
            &format!("{wname}.scale"),
            &c,
            DataType::Float,
            f32_bytes(&ws),
        ));
        self.inits.push(tensor(
            &format!("{wname}.zero_point"),
            &c,
            DataType::Int8,
            vec![0; channels],
        ));
        let yq = format!("{}.q", op.output);
        let (ys, yz) = self.scalar_params(&yq, y);
        let mut inputs = vec![
            xq.clone(),
            format!("{xq}.scale"),
            format!("{xq}.zero_point"),
            wname.clone(),
            format!("{wname}.scale"),
            format!("{wname}.zero_point"),
            ys,
            yz,
        ];
        if let Some(b) = bias {
            anyhow::ensure!(
                b.len() == channels,
                "bias of {} has {} values for {channels} channels",
                op.name,
                b.len()
            );
            let bq = quantize_bias(&b, xp.scale, &ws)
                .map_err(|e| anyhow::anyhow!("{}: {e}", op.name))?;
            let bname = format!("{}.bias.q", op.name);
            let raw = bq.iter().flat_map(|v| v.to_le_bytes()).collect();
            self.inits.push(tensor(&bname, &c, DataType::Int32, raw));
            inputs.push(bname);
        }
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let n = self.node("QLinearConv", &refs, &yq);
        n.name = op.name.clone();
        n.attribute = attributes.to_vec();
        self.quantized.insert(op.output.clone(), (yq, y));
        Ok(())
    }

    /// `op` as `MatMulInteger` on uint8 input `x`, then one float rescale and the bias.
    fn fc(
        &mut self,
        op: &QOp,
        trans_b: bool,
        (xq, xp): (String, QParams),
        OpWeights { w, dims, bias }: OpWeights,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(dims.len() == 2, "{}: weight is not a matrix", op.name);
        let (rows, cols) = (dims[0] as usize, dims[1] as usize);
        // MatMulInteger wants B as [K, N].
        let (k, n, w) = if trans_b {
            let mut t = vec![0f32; w.len()];
            for r in 0..rows {
                for c in 0..cols {
                    t[c * rows + r] = w[r * cols + c];
                }
            }
            (cols, rows, t)
        } else {
            (rows, cols, w)
        };
        let (wq, ws) = quantize_weights(&w, n, false);
        let wname = format!("{}.q", op.weight);
        let (wz, rescale) = (format!("{wname}.zero_point"), format!("{wname}.rescale"));
        let nn = [n as i64];
        self.inits.push(tensor(
            &wname,
            &[k as i64, n as i64],
            DataType::Int8,
            i8_bytes(&wq),
        ));
        self.inits
            .push(tensor(&wz, &nn, DataType::Int8, vec![0; n]));
        let scales: Vec<f32> = ws.iter().map(|s| s * xp.scale).collect();
        self.inits
            .push(tensor(&rescale, &nn, DataType::Float, f32_bytes(&scales)));
        let out = &op.output;
        let acc = format!("{out}.int32");
        self.node(
            "MatMulInteger",
            &[&xq, &wname, &format!("{xq}.zero_point"), &wz],
            &acc,
        );
        let as_float = format!("{out}.int32.float");
        let cast = self.node("Cast", &[&acc], &as_float);
        cast.attribute.push(AttributeProto {
            name: "to".into(),
            r#type: AttributeType::Int as i32,
            i: DataType::Float as i64,
            ..AttributeProto::default()
        });
        match (&op.bias, bias) {
            (Some(b), Some(values)) => {
                anyhow::ensure!(
                    values.len() == n,
                    "bias of {} has {} values for {n} outputs",
                    op.name,
                    values.len()
                );
                let scaled = format!("{out}.unbiased");
                self.node("Mul", &[&as_float, &rescale], &scaled);
                self.node("Add", &[&scaled, b], out);
            }
            _ => {
                self.node("Mul", &[&as_float, &rescale], out);
            }
        }
        self.float.insert(out.clone());
        Ok(())
    }

    /// Dequantise uint8 tensor `tensor` into a probe output; returns the probe's name.
    fn probe(&mut self, tensor: &str) -> String {
        let probe = probe_name(tensor);
        if let Some((q, _)) = self.quantized.get(tensor).cloned() {
            let (s, z) = (format!("{q}.scale"), format!("{q}.zero_point"));
            self.node("DequantizeLinear", &[&q, &s, &z], &probe);
        }
        probe
    }
}

fn i8_bytes(v: &[i8]) -> Vec<u8> {
    v.iter().map(|&x| x as u8).collect()
}

fn tensor(name: &str, dims: &[i64], dt: DataType, raw: Vec<u8>) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: dt as i32,
        raw_data: raw,
        ..TensorProto::default()
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn params_of(params: &HashMap<String, QParams>, name: &str) -> anyhow::Result<QParams> {
    params
        .get(name)
        .copied()
        .ok_or_else(|| anyhow::anyhow!("no calibration range for tensor {name:?}"))
}

/// Rewrite `graph` in place (see the module doc). Float initializers that only quantised ops
/// read are dropped.
pub fn rewrite(graph: &mut GraphProto, rw: &Rewrite) -> anyhow::Result<()> {
    let ops: HashMap<usize, &QOp> = rw.analysis.ops.iter().map(|o| (o.node, o)).collect();
    let fused: HashSet<usize> = rw
        .analysis
        .ops
        .iter()
        .filter_map(|o| o.fused_relu)
        .collect();
    let init_ix: HashMap<String, usize> = graph
        .initializer
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.clone(), i))
        .collect();
    let mut e = Emitter {
        nodes: vec![],
        inits: vec![],
        quantized: HashMap::new(),
        float: graph
            .input
            .iter()
            .map(|i| i.name.clone())
            .chain(graph.initializer.iter().map(|t| t.name.clone()))
            .collect(),
    };
    let read = |name: &str| -> anyhow::Result<(Vec<f32>, Vec<i64>)> {
        let t = init_ix
            .get(name)
            .map(|&i| &graph.initializer[i])
            .ok_or_else(|| anyhow::anyhow!("initializer {name:?} is missing"))?;
        Ok(((rw.read)(t)?, t.dims.clone()))
    };
    let mut probes = vec![];
    for (ix, node) in graph.node.iter().enumerate() {
        if fused.contains(&ix) {
            continue;
        }
        if let Some(op) = ops.get(&ix) {
            let x = e.quantized(&op.input, params_of(rw.params, &op.input)?)?;
            let (w, dims) = read(&op.weight)?;
            let bias = match &op.bias {
                Some(b) => Some(read(b)?.0),
                None => None,
            };
            let weights = OpWeights { w, dims, bias };
            match op.kind {
                QKind::Conv => {
                    let y = params_of(rw.params, &op.output)?;
                    e.conv(op, &node.attribute, x, weights, y)?;
                    if rw.probes {
                        probes.push(e.probe(&op.output));
                    }
                }
                QKind::Fc { trans_b } => e.fc(op, trans_b, x, weights)?,
            }
            continue;
        }
        let input_quantized_only = node
            .input
            .first()
            .is_some_and(|i| !e.float.contains(i) && e.quantized.contains_key(i));
        if node.op_type == "MaxPool" && node.output.len() == 1 && input_quantized_only {
            let (q, p) = e.quantized[&node.input[0]].clone();
            let out = format!("{}.q", node.output[0]);
            let mut pooled = node.clone();
            pooled.input = vec![q];
            pooled.output = vec![out.clone()];
            e.nodes.push(pooled);
            // Reuse the producer's scale and zero point under the new tensor's name.
            e.scalar_params(&out, p);
            e.quantized.insert(node.output[0].clone(), (out, p));
            continue;
        }
        let mut node = node.clone();
        if node.op_type == "Add" && !rw.float_residuals {
            for input in node.input.iter_mut() {
                if let Some(dq) = e.dequantized(input) {
                    *input = dq;
                }
            }
        }
        for input in &node.input {
            e.float(input);
        }
        e.nodes.push(node.clone());
        e.float.extend(node.output.iter().cloned());
    }
    let outputs: Vec<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    for o in &outputs {
        e.float(o);
    }
    for p in &probes {
        graph.output.push(ValueInfoProto {
            name: p.clone(),
            ..ValueInfoProto::default()
        });
    }
    // Keep the float initializers something still reads.
    let used: HashSet<&str> = e
        .nodes
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .chain(outputs.iter().map(String::as_str))
        .collect();
    let mut kept: Vec<TensorProto> = std::mem::take(&mut graph.initializer)
        .into_iter()
        .filter(|t| used.contains(t.name.as_str()))
        .collect();
    let kept_names: HashSet<String> = kept.iter().map(|t| t.name.clone()).collect();
    let init_names: HashSet<String> = init_ix.keys().cloned().collect();
    graph
        .input
        .retain(|i| !init_names.contains(&i.name) || kept_names.contains(&i.name));
    kept.extend(e.inits);
    graph.initializer = kept;
    graph.node = e.nodes;
    // Shapes and types recorded for the float graph no longer describe it.
    graph.value_info.clear();
    Ok(())
}

/// int32 bias at scale `x_scale * w_scale[c]`, the accumulator's scale.
fn quantize_bias(b: &[f32], x_scale: f32, w_scales: &[f32]) -> Result<Vec<i32>, String> {
    b.iter()
        .zip(w_scales)
        .map(|(&v, &ws)| {
            let q = (v as f64 / (x_scale as f64 * ws as f64)).round();
            if q.is_finite() && q.abs() < i32::MAX as f64 {
                Ok(q as i32)
            } else {
                Err(format!(
                    "bias {v} does not fit int32 at scale {x_scale} x {ws}: the input range is degenerate"
                ))
            }
        })
        .collect()
}

/// The ONNX opset the rewritten graph needs: per-channel `QLinearConv` and `MatMulInteger`
/// exist from opset 10.
pub const MIN_OPSET: i64 = 10;

/// For [`Rewrite::read`]: an initializer's values as f32, external data included.
pub fn f32_reader<'a>(
    provider: &'a dyn ModelDataResolver,
    dir: Option<&'a str>,
) -> impl Fn(&TensorProto) -> anyhow::Result<Vec<f32>> + 'a {
    move |t| {
        let tensor = tract_onnx::tensor::load_tensor(provider, t, dir)?;
        let tensor = tensor.cast_to::<f32>()?;
        Ok(crate::plan::f32_slice(&tensor)?.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_symmetric_per_channel() {
        // Two output channels of two weights each, channel-first.
        let (q, s) = quantize_weights(&[0.5, -1.0, 0.02, 0.005], 2, true);
        assert_eq!(q, vec![32, -64, 64, 16]);
        assert!((s[0] - 1.0 / 64.0).abs() < 1e-9 && (s[1] - 0.02 / 64.0).abs() < 1e-9);
        // The same matrix read as [K=2, N=2], channels last.
        let (q, _) = quantize_weights(&[0.5, -1.0, 0.02, 0.005], 2, false);
        assert_eq!(q, vec![64, -64, 3, 0]);
        let (q, s) = quantize_weights(&[0.0, 0.0], 1, true);
        assert_eq!((q, s), (vec![0, 0], vec![1.0]));
    }

    #[test]
    fn near_zero_channels_keep_their_bias_representable() {
        let bias = [0.5f32];
        let floor = bias_scale_floor(&bias, 0.01);
        let (q, s) = quantize_weights_min(&[1e-12, -1e-12], 1, true, &floor);
        assert_eq!(q, vec![0, 0]);
        let b = quantize_bias(&bias, 0.01, &s).unwrap();
        assert!(b[0].unsigned_abs() <= 1 << 24, "{b:?}");
    }

    /// `y = Add(Conv(x), x)`, the shape of an identity-shortcut block: `x` is float (a graph
    /// input, as a block output is) and quantised for the conv.
    fn identity_block() -> GraphProto {
        let conv = NodeProto {
            op_type: "Conv".into(),
            input: vec!["x".into(), "w".into()],
            output: vec!["c".into()],
            ..NodeProto::default()
        };
        let add = NodeProto {
            op_type: "Add".into(),
            input: vec!["c".into(), "x".into()],
            output: vec!["y".into()],
            ..NodeProto::default()
        };
        let value = |name: &str| ValueInfoProto {
            name: name.into(),
            ..ValueInfoProto::default()
        };
        GraphProto {
            node: vec![conv, add],
            initializer: vec![tensor(
                "w",
                &[1, 1, 1, 1],
                DataType::Float,
                f32_bytes(&[0.5]),
            )],
            input: vec![value("x")],
            output: vec![value("y")],
            ..GraphProto::default()
        }
    }

    /// The inputs of the rewritten block's `Add`, and the op of the node writing each.
    fn add_inputs(float_residuals: bool) -> Vec<(String, String)> {
        let mut graph = identity_block();
        let analysis = analyse(&graph, &|_| false);
        let p = QParams {
            scale: 0.1,
            zero_point: 0,
        };
        let params = analysis.observed.iter().map(|n| (n.clone(), p)).collect();
        let read = |t: &TensorProto| -> anyhow::Result<Vec<f32>> {
            Ok(t.raw_data
                .chunks(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect())
        };
        let rw = Rewrite {
            analysis: &analysis,
            params: &params,
            read: &read,
            probes: false,
            float_residuals,
        };
        rewrite(&mut graph, &rw).unwrap();
        let add = graph.node.iter().find(|n| n.op_type == "Add").unwrap();
        add.input
            .iter()
            .map(|i| {
                let writer = graph.node.iter().find(|n| n.output.contains(i));
                (
                    i.clone(),
                    writer.map_or("input".into(), |n| n.op_type.clone()),
                )
            })
            .collect()
    }

    #[test]
    fn residual_adds_read_the_uint8_copy_unless_asked_for_float() {
        let dq = |name: &str| (name.to_string(), "DequantizeLinear".to_string());
        assert_eq!(add_inputs(false), vec![dq("c"), dq("x.dq")]);
        assert_eq!(
            add_inputs(true),
            vec![dq("c"), ("x".into(), "input".into())]
        );
    }

    #[test]
    fn bias_overflow_is_an_error() {
        assert_eq!(quantize_bias(&[1.0], 0.5, &[0.25]).unwrap(), vec![8]);
        assert!(quantize_bias(&[1.0], 1e-30, &[1e-10]).is_err());
    }
}
