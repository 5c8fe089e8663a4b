"""Write the committed int8 / f16 artifacts of the digits ResNet-18 and independent references
for them (models/fixtures/digits/quant_reference.json).

The artifacts are made by the runtime itself (`resnet-edge quantize`); what the tests check is
that tract runs them as two other implementations do:
- int8: numpy's ONNX reference implementation (onnx.reference), exact integer QLinearConv /
  MatMulInteger semantics. onnxruntime is not used for int8: on AVX2 without VNNI its u8s8
  kernels saturate (VPMADDUBSW) and land further from the float model than tract does.
- f16: onnxruntime (the f16 weights are cast to f32 in the graph, so this is exact f32 maths).

Usage (from the repo root, after `cargo build --release`):
  python models/make_quant_refs.py --bin $CARGO_TARGET_DIR/release/resnet-edge
"""

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx.reference import ReferenceEvaluator
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "models/fixtures/digits"
FILES = 40  # test images referenced: enough to cover every class several times


def preprocess(path: Path) -> np.ndarray:
    # As resnet18_digits.toml: (x / 255 - 0.5) / 0.5, RGB, NCHW; 32x32 needs no resize.
    img = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    return ((img / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None].astype(np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    args = ap.parse_args()
    model = DIGITS / "resnet18_digits.onnx"
    int8 = DIGITS / "resnet18_digits.int8.onnx"
    f16 = DIGITS / "resnet18_digits.f16.onnx"
    subprocess.run([args.bin, "quantize", str(model), "--calib", str(DIGITS / "calib"),
                    "--eval", str(DIGITS / "test"), "--out", str(int8)], check=True)
    subprocess.run([args.bin, "quantize", str(model), "--precision", "f16", "--out", str(f16)],
                   check=True)
    files = sorted(p.name for p in (DIGITS / "test").glob("*.png"))[:FILES]

    m = onnx.load(str(int8))
    # The reference implementation ships DequantizeLinear from opset 19; the op's semantics
    # for per-tensor uint8 are unchanged since opset 10.
    for o in m.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = max(o.version, 21)
    ref = ReferenceEvaluator(m)
    sess = ort.InferenceSession(str(f16), providers=["CPUExecutionProvider"])
    out = {"resnet18_digits.int8.onnx": {"runtime": f"onnx.reference {onnx.__version__}",
                                         "files": files, "logits": []},
           "resnet18_digits.f16.onnx": {"runtime": f"onnxruntime {ort.__version__}",
                                        "files": files, "logits": []}}
    for name in files:
        x = preprocess(DIGITS / "test" / name)
        out["resnet18_digits.int8.onnx"]["logits"].append(
            ref.run(None, {"input": x})[0][0].astype(float).tolist())
        out["resnet18_digits.f16.onnx"]["logits"].append(
            sess.run(None, {"input": x})[0][0].astype(float).tolist())
    (DIGITS / "quant_reference.json").write_text(json.dumps(out, indent=1) + "\n")
    print("wrote", DIGITS / "quant_reference.json")


if __name__ == "__main__":
    main()
