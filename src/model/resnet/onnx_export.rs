//! Write a torchvision-layout ResNet from `state_dict` weights as a plain ONNX graph: the
//! network [`builder`](super::builder) builds, every BatchNorm folded into its conv by the same
//! weight reader (`resnet::weights`), so graph transforms written for ONNX (int8 quantisation,
//! f16 artifacts) apply to checkpoints too.
//!
//! Opset 13, IR version 7, weights inline as `raw_data` FLOAT initializers. The input `input`
//! is `[batch, C, height, width]` with symbolic batch and spatial sizes (the loader fixes them
//! from `--batch` and the crop); the output `logits` is `[batch, classes]`. Node names are the
//! checkpoint's module paths (`layer1.0.conv1`, `fc`), like the builder's.

use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::{dimension, Dimension};
use tract_onnx::pb::{
    attribute_proto::AttributeType, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

use super::weights::{ConvWeights, Reader};
use super::{ResNetConfig, ResNetLayout};
use crate::model::state_dict::StateDict;
use crate::{Error, Result};

/// The ONNX opset the export declares.
pub const OPSET: i64 = 13;
/// The ONNX IR version the export declares (the one opset 13 shipped with).
pub const IR_VERSION: i64 = 7;
/// Name of the graph input.
pub const INPUT: &str = "input";
/// Name of the graph output.
pub const OUTPUT: &str = "logits";

/// The graph, and what became of the checkpoint's BatchNorms (as [`super::builder::Built`]).
#[derive(Debug, Clone)]
pub struct Exported {
    pub proto: ModelProto,
    /// Module path of every BatchNorm in the checkpoint (`layer1.0.bn1`).
    pub batchnorm: Vec<String>,
    /// How many were folded into a conv: all of them.
    pub batchnorm_folded: usize,
}

/// The ONNX form of the ResNet `config` over `weights` (torchvision's key layout only).
pub fn to_onnx(weights: &StateDict, config: &ResNetConfig) -> Result<ModelProto> {
    export(weights, config).map(|e| e.proto)
}

/// [`to_onnx`], with the BatchNorms read and folded.
pub fn export(weights: &StateDict, config: &ResNetConfig) -> Result<Exported> {
    if config.layout == ResNetLayout::Article {
        return Err(Error::usage(format!(
            "{}: this checkpoint uses the seed article's layout (layer0 stem, shortcut.0/1, ReLU before the add); \
             only torchvision-layout ResNet state_dicts can be written as ONNX (and so quantised or stored as f16). \
             Run it as is (classify/info load it natively), or export it to ONNX with torch.onnx.export and use that file",
            weights.path().display()
        )));
    }
    config.check_keys(weights)?;
    let mut e = Exporter {
        read: Reader::new(weights, config),
        graph: GraphProto {
            name: config.arch_name(),
            ..GraphProto::default()
        },
    };
    let in_channels = e.read.stem_channels()?;
    e.graph.input.push(value_info(
        INPUT,
        &[
            Dim::Param("batch"),
            Dim::Value(in_channels),
            Dim::Param("height"),
            Dim::Param("width"),
        ],
    ));
    let x = Value {
        name: INPUT.to_string(),
        channels: in_channels,
    };
    let x = e.conv_bn("conv1", "bn1", x, 2, true)?;
    let mut x = e.max_pool("maxpool", x);
    for (stage, &blocks) in config.layers.iter().enumerate() {
        for block in 0..blocks {
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            x = e.block(&format!("layer{}.{block}", stage + 1), x, stride)?;
        }
    }
    let x = e.node(
        "avgpool",
        "GlobalAveragePool",
        &[&x.name],
        vec![],
        x.channels,
    );
    let x = e.node(
        "flatten",
        "Flatten",
        &[&x.name],
        vec![attr_int("axis", 1)],
        x.channels,
    );
    e.linear("fc", x)?;
    e.graph.output.push(value_info(
        OUTPUT,
        &[Dim::Param("batch"), Dim::Value(config.num_classes)],
    ));
    let Exporter { read, graph } = e;
    Ok(Exported {
        proto: ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            producer_name: "resnet-edge".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            doc_string: format!(
                "{} from {}, BatchNorm folded",
                config,
                weights.path().display()
            ),
            graph: Some(graph),
            ..ModelProto::default()
        },
        batchnorm: read.batchnorm,
        batchnorm_folded: read.batchnorm_folded,
    })
}

/// A tensor in the graph being written, and its channel count.
#[derive(Clone, Debug)]
struct Value {
    name: String,
    channels: usize,
}

/// One declared dimension of a graph input or output.
#[derive(Clone, Copy)]
enum Dim {
    Value(usize),
    Param(&'static str),
}

fn value_info(name: &str, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match *d {
                Dim::Value(v) => dimension::Value::DimValue(v as i64),
                Dim::Param(p) => dimension::Value::DimParam(p.to_string()),
            }),
            ..Dimension::default()
        })
        .collect();
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..TypeProto::default()
        }),
        ..ValueInfoProto::default()
    }
}

fn attr_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i,
        ..AttributeProto::default()
    }
}

fn attr_ints(name: &str, ints: &[usize]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: ints.iter().map(|&i| i as i64).collect(),
        ..AttributeProto::default()
    }
}

fn float_initializer(name: &str, dims: &[usize], values: &[f32]) -> TensorProto {
    TensorProto {
        name: name.to_string(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: DataType::Float as i32,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..TensorProto::default()
    }
}

struct Exporter<'a> {
    /// Reads the weights, BatchNorm folded, and records the BatchNorms.
    read: Reader<'a>,
    graph: GraphProto,
}

impl Exporter<'_> {
    /// Append node `name` (its output tensor has the same name) reading `inputs`.
    fn node(
        &mut self,
        name: &str,
        op: &str,
        inputs: &[&str],
        attribute: Vec<AttributeProto>,
        channels: usize,
    ) -> Value {
        self.graph.node.push(NodeProto {
            name: name.to_string(),
            op_type: op.to_string(),
            input: inputs.iter().map(|i| i.to_string()).collect(),
            output: vec![name.to_string()],
            attribute,
            ..NodeProto::default()
        });
        Value {
            name: name.to_string(),
            channels,
        }
    }

    fn relu(&mut self, name: &str, x: Value) -> Value {
        self.node(name, "Relu", &[&x.name], vec![], x.channels)
    }

    /// Conv `conv` with `bn` folded in ("same" padding for its odd kernel, groups from the
    /// weight's input dimension), optionally followed by a ReLU named `{conv}.relu`.
    fn conv_bn(
        &mut self,
        conv: &str,
        bn: &str,
        x: Value,
        stride: usize,
        relu: bool,
    ) -> Result<Value> {
        let ConvWeights {
            weight,
            bias,
            out,
            per_group,
            kh,
            kw,
        } = self.read.conv_bn(conv, bn, x.channels)?;
        let (w, b) = (format!("{conv}.weight"), format!("{conv}.bias"));
        self.graph
            .initializer
            .push(float_initializer(&w, &[out, per_group, kh, kw], &weight));
        self.graph
            .initializer
            .push(float_initializer(&b, &[out], &bias));
        let group = x.channels / per_group;
        let y = self.node(
            conv,
            "Conv",
            &[&x.name, &w, &b],
            vec![
                attr_ints("dilations", &[1, 1]),
                attr_int("group", group as i64),
                attr_ints("kernel_shape", &[kh, kw]),
                attr_ints("pads", &[kh / 2, kw / 2, kh / 2, kw / 2]),
                attr_ints("strides", &[stride, stride]),
            ],
            out,
        );
        Ok(if relu {
            self.relu(&format!("{conv}.relu"), y)
        } else {
            y
        })
    }

    /// The stem's 3x3/2 max-pool with padding 1 (`nn.MaxPool2d(3, 2, 1)`).
    fn max_pool(&mut self, name: &str, x: Value) -> Value {
        self.node(
            name,
            "MaxPool",
            &[&x.name],
            vec![
                attr_ints("kernel_shape", &[3, 3]),
                attr_ints("pads", &[1, 1, 1, 1]),
                attr_ints("strides", &[2, 2]),
            ],
            x.channels,
        )
    }

    /// One residual block, as [`super::builder`] wires it: the stride on the first conv of a
    /// basic block and on the 3x3 of a bottleneck (torchvision v1.5), the shortcut the identity
    /// or the 1x1 projection `downsample.0/1`, then add and ReLU.
    fn block(&mut self, prefix: &str, x: Value, stride: usize) -> Result<Value> {
        let convs = self.read.config.block.convs();
        let mut y = x.clone();
        for i in 1..=convs {
            let s = self.read.config.block.conv_stride(i, stride);
            y = self.conv_bn(
                &format!("{prefix}.conv{i}"),
                &format!("{prefix}.bn{i}"),
                y,
                s,
                i < convs,
            )?;
        }
        let (conv, bn) = self.read.config.layout.shortcut(prefix);
        let shortcut = if self.read.weights.contains(&format!("{conv}.weight")) {
            self.conv_bn(&conv, &bn, x, stride, false)?
        } else if stride != 1 || x.channels != y.channels {
            return Err(Error::file(
                self.read.weights.path(),
                format!(
                    "{prefix}: block output ({} channels, stride {stride}) does not match its identity shortcut ({} channels) (missing {conv}?)",
                    y.channels, x.channels
                ),
            ));
        } else {
            x
        };
        let sum = self.node(
            &format!("{prefix}.add"),
            "Add",
            &[&y.name, &shortcut.name],
            vec![],
            y.channels,
        );
        Ok(self.relu(&format!("{prefix}.relu"), sum))
    }

    /// `y = x W^T + b` (`nn.Linear`) as `Gemm(transB=1)`, writing the graph output.
    fn linear(&mut self, name: &str, x: Value) -> Result<()> {
        let (weight, bias) = self.read.linear(name, x.channels)?;
        let classes = self.read.config.num_classes;
        let (w, b) = (format!("{name}.weight"), format!("{name}.bias"));
        self.graph
            .initializer
            .push(float_initializer(&w, &[classes, x.channels], &weight));
        self.graph
            .initializer
            .push(float_initializer(&b, &[classes], &bias));
        self.graph.node.push(NodeProto {
            name: name.to_string(),
            op_type: "Gemm".into(),
            input: vec![x.name, w, b],
            output: vec![OUTPUT.to_string()],
            attribute: vec![attr_int("transB", 1)],
            ..NodeProto::default()
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use crate::model::resnet::BlockKind;
    use prost::Message;
    use tract_core::prelude::*;

    use super::*;
    use crate::model::onnx::{load_proto, SourceProto};
    use crate::model::LoadOptions;
    use crate::plan::Plan;
    use crate::precision::Precision;

    const STEMS: [&str; 6] = [
        "astronaut",
        "chelsea",
        "china",
        "coffee",
        "flower",
        "rocket",
    ];

    fn fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/fixtures")
    }

    fn input(stem: &str) -> Tensor {
        crate::npy::read_f32(&fixtures().join(format!("inputs/{stem}.npy"))).unwrap()
    }

    fn floats(v: &serde_json::Value) -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    }

    /// max |a - b| / max |b|.
    fn rel_diff(got: &[f32], want: &[f32]) -> f32 {
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
        got.iter()
            .zip(want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
            / scale
    }

    fn plan(path: &Path, proto: ModelProto, batch: usize) -> Plan {
        let source = SourceProto {
            proto,
            dir: None,
            batchnorm_nodes: vec![],
            batchnorm_folded: 0,
        };
        let options = LoadOptions {
            batch,
            precision: Precision::F32,
            ..LoadOptions::default()
        };
        let loaded = load_proto(path, source, &options).unwrap();
        assert_eq!(loaded.input_shape, vec![batch, 3, 224, 224]);
        Plan::new(&loaded, 1).unwrap()
    }

    #[test]
    fn exported_fixture_resnets_match_pytorch() {
        for (depth, form, bns) in [
            (18, "model.safetensors", 20),
            (50, "model.safetensors", 53),
            (34, "model.pth", 36),
        ] {
            let path = fixtures().join(format!("resnet{depth}/{form}"));
            let weights = StateDict::open(&path).unwrap();
            let config = ResNetConfig::detect(&weights).unwrap();
            let exported = export(&weights, &config).unwrap();
            assert_eq!(exported.batchnorm.len(), bns, "resnet{depth}");
            assert_eq!(exported.batchnorm_folded, bns, "resnet{depth}");
            assert!(exported.batchnorm.iter().any(|b| b == "layer1.0.bn1"));

            // What a reader of the file sees: opset 13, IR 7, module-path names, no BN.
            let bytes = exported.proto.encode_to_vec();
            let proto = ModelProto::decode(bytes.as_slice()).unwrap();
            assert_eq!(proto.ir_version, 7);
            assert_eq!(proto.opset_import[0].version, 13);
            let graph = proto.graph.as_ref().unwrap();
            assert_eq!(graph.input.len(), 1);
            assert_eq!(graph.input[0].name, "input");
            assert_eq!(graph.output[0].name, "logits");
            let names: Vec<&str> = graph.node.iter().map(|n| n.name.as_str()).collect();
            for name in [
                "conv1",
                "maxpool",
                "layer1.0.conv1",
                "layer2.0.downsample.0",
                "fc",
            ] {
                assert!(names.contains(&name), "resnet{depth}: no node {name}");
            }
            assert!(graph.node.iter().all(|n| n.op_type != "BatchNormalization"));
            assert_eq!(
                graph.node.iter().filter(|n| n.op_type == "Conv").count(),
                1 + config.layers.iter().sum::<usize>() * config.block.convs()
                    + 3
                    + usize::from(config.block == BlockKind::Bottleneck),
                "resnet{depth}: convs = stem + blocks' + one projection per widening stage"
            );
            let gemm = graph.node.iter().find(|n| n.op_type == "Gemm").unwrap();
            assert_eq!(gemm.name, "fc");
            assert!(graph
                .initializer
                .iter()
                .all(|t| t.data_type == DataType::Float as i32 && !t.raw_data.is_empty()));

            let reference: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(fixtures().join(format!("resnet{depth}/logits.json")))
                    .unwrap(),
            )
            .unwrap();
            let one = plan(&path, proto.clone(), 1);
            for stem in STEMS {
                let got = one.run(input(stem)).unwrap();
                let d = rel_diff(&got[0], &floats(&reference[stem]));
                assert!(
                    d < 1e-4,
                    "resnet{depth} {form} on {stem}: relative diff {d:e}"
                );
            }
            // The symbolic batch: four images in one run.
            let four = plan(&path, proto, 4);
            let batch: Vec<Tensor> = STEMS[..4].iter().map(|s| input(s)).collect();
            let batch = Tensor::stack_tensors(0, &batch).unwrap();
            for (i, got) in four.run(batch).unwrap().iter().enumerate() {
                let d = rel_diff(got, &floats(&reference["batch4"][i]));
                assert!(
                    d < 1e-4,
                    "resnet{depth} {form} batch-4 row {i}: relative diff {d:e}"
                );
            }
        }
    }

    #[test]
    fn article_layout_is_a_clear_usage_error() {
        let path = fixtures().join("article/resnet18/model.safetensors");
        let weights = StateDict::open(&path).unwrap();
        let config = ResNetConfig::detect(&weights).unwrap();
        assert_eq!(config.layout, ResNetLayout::Article);
        let err = to_onnx(&weights, &config).unwrap_err();
        assert!(matches!(err, Error::Usage(_)), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("article")
                && msg.contains("torchvision")
                && msg.contains("model.safetensors"),
            "{msg}"
        );
    }
}
