//! Load-time checks of an int8 artifact's quantisation parameters. tract trusts them; a scale of
//! zero, a negative or non-finite scale, or a zero point of the wrong type would give garbage or
//! a panic deep in a kernel, so a corrupt or hand-edited artifact is refused with the node named.

use std::collections::HashMap;

use tract_onnx::pb::{tensor_proto::DataType, GraphProto, TensorProto};

/// Which inputs of each quantised op are (scale, zero point) pairs.
fn scale_zero_point_pairs(op: &str) -> &'static [(usize, usize)] {
    match op {
        "QuantizeLinear" | "DequantizeLinear" => &[(1, 2)],
        "QLinearConv" | "QLinearMatMul" => &[(1, 2), (4, 5), (6, 7)],
        _ => &[],
    }
}

fn scales(t: &TensorProto) -> Option<Vec<f32>> {
    if t.data_type != DataType::Float as i32 {
        return None;
    }
    if !t.float_data.is_empty() {
        return Some(t.float_data.clone());
    }
    if !t.raw_data.len().is_multiple_of(4) {
        return None;
    }
    Some(
        t.raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

/// Check every constant scale and zero point of the graph's quantised ops; the error names the
/// node and the problem.
pub fn check_quantisation(graph: &GraphProto) -> Result<(), String> {
    let inits: HashMap<&str, &TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    for node in &graph.node {
        for &(s, z) in scale_zero_point_pairs(&node.op_type) {
            let label = if node.name.is_empty() {
                node.output.first().cloned().unwrap_or_default()
            } else {
                node.name.clone()
            };
            if let Some(t) = node.input.get(s).and_then(|n| inits.get(n.as_str())) {
                let values = scales(t).ok_or_else(|| {
                    format!(
                        "{} {label}: scale {:?} is not float32 data",
                        node.op_type, t.name
                    )
                })?;
                if let Some(bad) = values.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
                    return Err(format!(
                        "{} {label}: scale {:?} has value {bad}, expected finite and > 0",
                        node.op_type, t.name
                    ));
                }
            }
            if let Some(t) = node.input.get(z).and_then(|n| inits.get(n.as_str())) {
                let ok =
                    t.data_type == DataType::Uint8 as i32 || t.data_type == DataType::Int8 as i32;
                if !ok {
                    return Err(format!(
                        "{} {label}: zero point {:?} must be uint8 or int8",
                        node.op_type, t.name
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::NodeProto;

    fn graph(scale: f32, zp_type: DataType) -> GraphProto {
        GraphProto {
            node: vec![NodeProto {
                op_type: "QuantizeLinear".into(),
                name: "q".into(),
                input: vec!["x".into(), "s".into(), "z".into()],
                output: vec!["y".into()],
                ..NodeProto::default()
            }],
            initializer: vec![
                TensorProto {
                    name: "s".into(),
                    data_type: DataType::Float as i32,
                    raw_data: scale.to_le_bytes().to_vec(),
                    ..TensorProto::default()
                },
                TensorProto {
                    name: "z".into(),
                    data_type: zp_type as i32,
                    raw_data: vec![0; 4],
                    ..TensorProto::default()
                },
            ],
            ..GraphProto::default()
        }
    }

    #[test]
    fn refuses_bad_scales_and_zero_points() {
        assert!(check_quantisation(&graph(0.1, DataType::Uint8)).is_ok());
        for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            let err = check_quantisation(&graph(bad, DataType::Uint8)).unwrap_err();
            assert!(
                err.contains("QuantizeLinear q") && err.contains("scale"),
                "{err}"
            );
        }
        let err = check_quantisation(&graph(0.1, DataType::Int32)).unwrap_err();
        assert!(err.contains("zero point"), "{err}");
    }
}
