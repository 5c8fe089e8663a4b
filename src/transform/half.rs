//! f16 weights: artifacts half the size of f32 ones, and running in f16 where the CPU can.
//!
//! An f16 artifact is an ordinary ONNX model whose weights are FLOAT16 initializers, each read
//! through a `Cast(to=FLOAT)` node: any runtime (onnxruntime, tract) runs it in f32 unchanged,
//! and the file copied to the device is about half as big. At load, [`widen_f16`] turns those
//! pairs back into FLOAT initializers (exact: every f16 is an f32), so a core without FP16
//! arithmetic runs plain f32; a core with it converts the loaded model with [`run_in_f16`].

use std::collections::{HashMap, HashSet};
use std::path::Path;

use ::half::f16;
use anyhow::{bail, Context};
use prost::Message;
use tract_core::floats::FloatPrecisionTranslator;
use tract_core::ops::cast::cast;
use tract_core::ops::source::TypedSource;
use tract_core::transform::ModelTransform;
use tract_onnx::data_resolver::ModelDataResolver;
use tract_onnx::pb::tensor_proto::{DataLocation, DataType};
use tract_onnx::pb::{
    attribute_proto::AttributeType, AttributeProto, GraphProto, NodeProto, StringStringEntryProto,
    TensorProto,
};
use tract_onnx::prelude::*;

use crate::model::LoadOptions;
use crate::{Error, Result};

/// Initializers smaller than this stay f32: scalars and shape-like constants save nothing and
/// may feed ops that need f32 exactly.
pub const MIN_ELEMENTS: usize = 16;

/// The largest finite f16; a weight beyond it would become infinity.
pub const F16_MAX: f32 = 65504.0;

/// The model metadata key an f16 artifact carries (value `f16`).
pub const PRECISION_KEY: &str = "resnet-edge.precision";

/// What [`write_f16_artifact`] did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct F16Summary {
    /// The source model file plus its external-data files.
    pub bytes_in: u64,
    /// The artifact (one file, data inline).
    pub bytes_out: u64,
    /// Initializers stored as f16.
    pub converted: usize,
    /// f32 payload bytes of those initializers before conversion.
    pub weight_bytes_f32: u64,
}

/// Store every FLOAT weight initializer of `graph` (rank >= 1, at least [`MIN_ELEMENTS`]
/// values) as a FLOAT16 initializer `<name>.f16` read by a `Cast(to=FLOAT)` node that produces
/// `<name>`, inserted at the start of the node list. Values round to nearest; one beyond
/// +-65504 is an error naming the initializer. External data is read through `provider`
/// relative to `model_dir`. Returns how many initializers were converted.
pub fn to_f16(
    graph: &mut GraphProto,
    provider: &dyn ModelDataResolver,
    model_dir: Option<&str>,
) -> TractResult<usize> {
    let mut casts = vec![];
    let mut converted = HashSet::new();
    for init in graph.initializer.iter_mut() {
        let elements: i64 = init.dims.iter().product();
        if init.data_type != DataType::Float as i32
            || init.dims.is_empty()
            || elements < MIN_ELEMENTS as i64
        {
            continue;
        }
        let tensor = tract_onnx::tensor::load_tensor(provider, init, model_dir)
            .with_context(|| format!("reading initializer {}", init.name))?;
        let values = crate::plan::f32_slice(&tensor)?;
        let mut raw = Vec::with_capacity(values.len() * 2);
        for (ix, &x) in values.iter().enumerate() {
            if x.abs() > F16_MAX {
                bail!(
                    "initializer {} holds {x} at index {ix}, beyond f16's range (|x| <= 65504): keep this model in f32",
                    init.name
                );
            }
            raw.extend_from_slice(&f16::from_f32(x).to_le_bytes());
        }
        let name = std::mem::take(&mut init.name);
        *init = TensorProto {
            name: format!("{name}.f16"),
            dims: std::mem::take(&mut init.dims),
            data_type: DataType::Float16 as i32,
            raw_data: raw,
            doc_string: std::mem::take(&mut init.doc_string),
            ..TensorProto::default()
        };
        casts.push(cast_node(&init.name, &name));
        converted.insert(name);
    }
    // Pre-IR-4 exports list initializers as graph inputs too; the name is now a node output.
    graph.input.retain(|i| !converted.contains(&i.name));
    let count = casts.len();
    graph.node.splice(0..0, casts);
    Ok(count)
}

fn cast_node(input: &str, output: &str) -> NodeProto {
    NodeProto {
        input: vec![input.to_string()],
        output: vec![output.to_string()],
        name: format!("{output}.cast"),
        op_type: "Cast".into(),
        attribute: vec![AttributeProto {
            name: "to".into(),
            r#type: AttributeType::Int as i32,
            i: DataType::Float as i64,
            ..AttributeProto::default()
        }],
        ..NodeProto::default()
    }
}

/// Whether `node` is `Cast(to=FLOAT)`.
pub fn is_cast_to_float(node: &NodeProto) -> bool {
    node.op_type == "Cast"
        && node.domain.is_empty()
        && node.input.len() == 1
        && node.output.len() == 1
        && node
            .attribute
            .iter()
            .any(|a| a.name == "to" && a.i == DataType::Float as i64)
}

/// The reverse of [`to_f16`], at load: each FLOAT16 initializer read only by one
/// `Cast(to=FLOAT)` becomes a FLOAT initializer named after the Cast's output, and the Cast
/// goes. Exact (every f16 is an f32). Initializers it cannot decode (external data) are left
/// for tract, which casts them itself. Returns how many were widened.
pub fn widen_f16(graph: &mut GraphProto) -> usize {
    let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (ix, node) in graph.node.iter().enumerate() {
        for input in &node.input {
            readers.entry(input.as_str()).or_default().push(ix);
        }
    }
    let outputs: HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    let mut widened = vec![]; // (initializer index, cast node index)
    for (ix, init) in graph.initializer.iter().enumerate() {
        if init.data_type != DataType::Float16 as i32 || outputs.contains(init.name.as_str()) {
            continue;
        }
        let Some(&[cast]) = readers.get(init.name.as_str()).map(Vec::as_slice) else {
            continue;
        };
        let node = &graph.node[cast];
        if is_cast_to_float(node) && !outputs.contains(node.output[0].as_str()) {
            widened.push((ix, cast));
        }
    }
    let mut dropped = HashSet::new();
    let mut count = 0;
    for (ix, cast) in widened {
        let Some(values) = f16_values(&graph.initializer[ix]) else {
            continue;
        };
        let init = &mut graph.initializer[ix];
        init.name = graph.node[cast].output[0].clone();
        init.data_type = DataType::Float as i32;
        init.raw_data = values
            .iter()
            .flat_map(|v| v.to_f32().to_le_bytes())
            .collect();
        init.int32_data.clear();
        dropped.insert(cast);
        count += 1;
    }
    let mut ix = 0;
    graph.node.retain(|_| {
        ix += 1;
        !dropped.contains(&(ix - 1))
    });
    count
}

/// An inline FLOAT16 initializer's values (raw little-endian bits, or `int32_data`).
fn f16_values(t: &TensorProto) -> Option<Vec<f16>> {
    let n: i64 = t.dims.iter().product();
    let n = usize::try_from(n).ok()?;
    if t.data_location == Some(DataLocation::External as i32) && t.raw_data.is_empty() {
        return None;
    }
    if t.raw_data.len() == 2 * n {
        Some(
            t.raw_data
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]))
                .collect(),
        )
    } else if t.raw_data.is_empty() && t.int32_data.len() == n {
        Some(
            t.int32_data
                .iter()
                .map(|&b| f16::from_bits(b as u16))
                .collect(),
        )
    } else {
        None
    }
}

/// Whether `graph` is an f16 artifact: a FLOAT16 initializer read by a `Cast(to=FLOAT)`.
pub fn is_f16_artifact(graph: &GraphProto) -> bool {
    let f16_inits: HashSet<&str> = graph
        .initializer
        .iter()
        .filter(|t| t.data_type == DataType::Float16 as i32)
        .map(|t| t.name.as_str())
        .collect();
    !f16_inits.is_empty()
        && graph
            .node
            .iter()
            .any(|n| is_cast_to_float(n) && f16_inits.contains(n.input[0].as_str()))
}

/// Convert a loaded f32 model to run in f16 with tract's f16 kernels, keeping an f32 input and
/// f32 outputs so preprocessing, `Plan::run` and the camera loop feed and read it unchanged.
/// It runs before the speed rewrites ([`crate::transform::rewrite`]), as `model::load` does:
/// their ops are f32-only.
pub fn run_in_f16(mut model: TypedModel) -> TractResult<TypedModel> {
    FloatPrecisionTranslator::new(f32::datum_type(), f16::datum_type()).transform(&mut model)?;
    for ix in 0..model.inputs.len() {
        let input = model.inputs[ix];
        let fact = model.outlet_fact(input)?.clone();
        if fact.datum_type != f16::datum_type() {
            continue;
        }
        let f32_fact = TypedFact::dt_shape(f32::datum_type(), fact.shape.clone());
        let readers = model.outlet_successors(input).to_vec();
        let name = model.node(input.node).name.clone();
        model.node_mut(input.node).op = Box::new(TypedSource::new(f32_fact.clone()));
        model.set_outlet_fact(input, f32_fact)?;
        let narrowed =
            model.wire_node(format!("{name}.to_f16"), cast(f16::datum_type()), &[input])?[0];
        for inlet in readers {
            model.add_edge(narrowed, inlet)?;
        }
    }
    let mut outputs = model.outputs.clone();
    for o in outputs.iter_mut() {
        if model.outlet_fact(*o)?.datum_type == f16::datum_type() {
            let name = format!("{}.to_f32", model.node(o.node).name);
            *o = model.wire_node(name, cast(f32::datum_type()), &[*o])?[0];
        }
    }
    model.select_output_outlets(&outputs)?;
    model.declutter()?;
    Ok(model)
}

/// Write `source` (an ONNX model, BatchNorm folded when `fold_batchnorm`, or torchvision-layout
/// `state_dict` weights, architecture detected) as an f16 artifact at `out`: weights f16 behind
/// Cast nodes ([`to_f16`]), all data inline, and the metadata entry
/// `resnet-edge.precision = f16`.
pub fn write_f16_artifact(source: &Path, fold_batchnorm: bool, out: &Path) -> Result<F16Summary> {
    let options = LoadOptions {
        fold_batchnorm,
        ..LoadOptions::default()
    };
    write_f16_artifact_with(source, &options, out)
}

/// [`write_f16_artifact`] with the load options that say how to read `source`
/// (`fold_batchnorm`, and `arch`/`resnet_layout` for `state_dict` weights; see
/// [`crate::model::source_proto`]).
pub fn write_f16_artifact_with(
    source: &Path,
    options: &LoadOptions,
    out: &Path,
) -> Result<F16Summary> {
    if same_file(source, out) {
        return Err(Error::file(
            out,
            "is the source model; write the f16 artifact to another file",
        ));
    }
    let read = crate::model::source_proto(source, options)?;
    let mut proto = read.proto;
    let dir = read.dir;
    let onnx = crate::model::onnx::onnx();
    let bytes_in = source_bytes(source, &proto);
    let graph = proto
        .graph
        .as_mut()
        .ok_or_else(|| Error::file(source, "ONNX file has no graph"))?;
    if crate::precision::onnx_weights(graph) == crate::precision::Precision::Int8 {
        return Err(Error::file(
            source,
            "is an int8 artifact; f16 artifacts are made from f32 models",
        ));
    }
    // Folded BatchNorm parameters stay behind as initializers nothing reads: drop them.
    drop_unread_initializers(graph);
    let weight_bytes_f32 = graph
        .initializer
        .iter()
        .filter(|t| {
            t.data_type == DataType::Float as i32
                && !t.dims.is_empty()
                && t.dims.iter().product::<i64>() >= MIN_ELEMENTS as i64
        })
        .map(|t| 4 * t.dims.iter().product::<i64>() as u64)
        .sum();
    let converted = to_f16(graph, &*onnx.provider, dir.as_deref())
        .map_err(|e| Error::file(source, format!("converting to f16: {e:#}")))?;
    inline_external_data(graph, &*onnx.provider, dir.as_deref())
        .map_err(|e| Error::file(source, format!("reading external data: {e:#}")))?;
    proto.metadata_props.retain(|p| p.key != PRECISION_KEY);
    proto.metadata_props.push(StringStringEntryProto {
        key: PRECISION_KEY.into(),
        value: "f16".into(),
    });
    let bytes = proto.encode_to_vec();
    std::fs::write(out, &bytes).map_err(|e| Error::file(out, format!("cannot write: {e}")))?;
    Ok(F16Summary {
        bytes_in,
        bytes_out: bytes.len() as u64,
        converted,
        weight_bytes_f32,
    })
}

/// Remove initializers no node (nor subgraph) reads and no graph output names.
fn drop_unread_initializers(graph: &mut GraphProto) {
    fn reads<'g>(graph: &'g GraphProto, names: &mut HashSet<&'g str>) {
        names.extend(graph.output.iter().map(|o| o.name.as_str()));
        for node in &graph.node {
            names.extend(node.input.iter().map(String::as_str));
            for a in &node.attribute {
                for g in a.g.iter().chain(&a.graphs) {
                    reads(g, names);
                }
            }
        }
    }
    let mut read = HashSet::new();
    reads(graph, &mut read);
    let keep: Vec<bool> = graph
        .initializer
        .iter()
        .map(|t| read.contains(t.name.as_str()))
        .collect();
    let mut ix = 0;
    graph.initializer.retain(|_| {
        ix += 1;
        keep[ix - 1]
    });
}

/// Store every initializer kept in an external file (the small ones [`to_f16`] leaves) inline.
fn inline_external_data(
    graph: &mut GraphProto,
    provider: &dyn ModelDataResolver,
    model_dir: Option<&str>,
) -> TractResult<()> {
    for init in graph.initializer.iter_mut() {
        if init.data_location != Some(DataLocation::External as i32) {
            continue;
        }
        let tensor = tract_onnx::tensor::load_tensor(provider, init, model_dir)
            .with_context(|| format!("reading initializer {}", init.name))?;
        init.raw_data = tensor.try_as_plain_ram()?.as_bytes().to_vec();
        init.external_data.clear();
        init.data_location = Some(DataLocation::Default as i32);
    }
    Ok(())
}

/// The model file plus each distinct external-data file it names.
fn source_bytes(path: &Path, proto: &tract_onnx::pb::ModelProto) -> u64 {
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let locations: HashSet<&str> = proto
        .graph
        .iter()
        .flat_map(|g| &g.initializer)
        .flat_map(|t| &t.external_data)
        .filter(|e| e.key == "location")
        .map(|e| e.value.as_str())
        .collect();
    size(path) + locations.iter().map(|l| size(&dir.join(l))).sum::<u64>()
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::test_graph::{f32_init, node};
    use tract_onnx::data_resolver::MmapDataResolver;
    use tract_onnx::pb::ValueInfoProto;

    fn f32_values(graph: &GraphProto, name: &str) -> Vec<f32> {
        let t = graph.initializer.iter().find(|t| t.name == name).unwrap();
        assert_eq!(t.data_type, DataType::Float as i32, "{name}");
        t.raw_data
            .chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    /// A conv whose weight has awkward values (ties, subnormals, the f16 maximum), a small bias.
    fn graph(weights: &[f32]) -> GraphProto {
        GraphProto {
            node: vec![node("Conv", &["x", "w", "b"], "y")],
            initializer: vec![
                f32_init("w", &[weights.len() as i64, 1, 1, 1], weights),
                f32_init("b", &[2], &[0.1, -0.2]),
            ],
            input: vec![ValueInfoProto {
                name: "x".into(),
                ..Default::default()
            }],
            output: vec![ValueInfoProto {
                name: "y".into(),
                ..Default::default()
            }],
            ..GraphProto::default()
        }
    }

    fn awkward() -> Vec<f32> {
        let mut v: Vec<f32> = (0..40).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        v.extend([
            1.0 + 1.0 / 2048.0, // a tie between two f16s
            1e-6,               // subnormal in f16
            1e-9,               // below f16: zero
            -65504.0,
            65504.0,
            0.0,
            -0.0,
            1.0 / 3.0,
        ]);
        v
    }

    #[test]
    fn round_trip_is_f16_rounding_exactly() {
        let weights = awkward();
        let mut g = graph(&weights);
        assert_eq!(to_f16(&mut g, &MmapDataResolver, None).unwrap(), 1);
        assert!(is_f16_artifact(&g));
        // The cast comes first and produces the original name; the small bias stays f32.
        assert_eq!(g.node[0].op_type, "Cast");
        assert_eq!(
            (g.node[0].input[0].as_str(), g.node[0].output[0].as_str()),
            ("w.f16", "w")
        );
        assert!(is_cast_to_float(&g.node[0]));
        assert_eq!(f32_values(&g, "b"), vec![0.1, -0.2]);
        let w16 = g.initializer.iter().find(|t| t.name == "w.f16").unwrap();
        assert_eq!(w16.raw_data.len(), 2 * weights.len());

        assert_eq!(widen_f16(&mut g), 1);
        assert!(!is_f16_artifact(&g));
        assert!(g.node.iter().all(|n| n.op_type != "Cast"), "{:?}", g.node);
        assert_eq!(g.node.len(), 1);
        let want: Vec<f32> = weights.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
        let got = f32_values(&g, "w");
        assert_eq!(
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert_eq!(got[40], 1.0, "ties round to even");
        assert_eq!(got[42], 0.0);
    }

    #[test]
    fn overflow_names_the_initializer() {
        let mut weights = awkward();
        weights[7] = 70000.0;
        let mut g = graph(&weights);
        let err = to_f16(&mut g, &MmapDataResolver, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("initializer w holds 70000 at index 7"),
            "{err}"
        );
        assert!(err.contains("beyond f16's range"), "{err}");
    }

    #[test]
    fn widen_leaves_f16_read_by_anything_else() {
        let mut g = graph(&awkward());
        to_f16(&mut g, &MmapDataResolver, None).unwrap();
        // A second reader of the f16 tensor: widening would change what it sees.
        g.node.push(node("Identity", &["w.f16"], "z"));
        assert_eq!(widen_f16(&mut g), 0);
        assert!(is_f16_artifact(&g));
    }

    #[test]
    fn initializers_listed_as_inputs_are_unlisted() {
        let mut g = graph(&awkward());
        g.input.push(ValueInfoProto {
            name: "w".into(),
            ..Default::default()
        });
        to_f16(&mut g, &MmapDataResolver, None).unwrap();
        assert_eq!(g.input.len(), 1);
        assert_eq!(g.input[0].name, "x");
    }
}
