//! Graph transforms applied before tract optimises a model.

pub mod fold_batchnorm;
pub mod half;
pub mod quantize;
pub mod rewrite;

pub use fold_batchnorm::{fold_batchnorm, BatchNormParams, FoldReport};

/// Small ONNX graphs for the transforms' unit tests.
#[cfg(test)]
pub(crate) mod test_graph {
    use tract_onnx::pb::{tensor_proto::DataType, NodeProto, TensorProto};

    /// A FLOAT initializer with its values as little-endian `raw_data`.
    pub fn f32_init(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
        TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: DataType::Float as i32,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..TensorProto::default()
        }
    }

    /// A node named after its single output.
    pub fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            name: output.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            ..NodeProto::default()
        }
    }
}
