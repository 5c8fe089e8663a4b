#!/usr/bin/env python3
"""Export full-size torchvision ResNet-18 and ResNet-50 to ONNX for speed comparisons.

Weights are random (seeded): latency does not depend on their values, and no download is
needed. Legacy TorchScript exporter (dynamo=False), opset 13, constant folding on (BatchNorm
folded into the convs, as a deployed model is), input `input` [1, 3, 224, 224] with a
dynamic batch axis, output `logits`.

    python benches/export_resnets.py [OUT_DIR]     (default /var/tmp/resnet-edge-bench)

Needs torch and torchvision. Existing files are kept.
"""

import os
import sys

DEFAULT_DIR = "/var/tmp/resnet-edge-bench"
ARCHS = ("resnet18", "resnet50")


def export(arch: str, out_dir: str) -> str:
    path = os.path.join(out_dir, f"{arch}.onnx")
    if os.path.exists(path):
        return path
    import warnings

    import torch
    import torchvision

    # The legacy exporter is chosen on purpose (it folds BatchNorm, like the fixtures' legacy.onnx).
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    tmp = path + ".tmp"
    torch.onnx.export(
        model,
        (x,),
        tmp,
        dynamo=False,
        opset_version=13,
        do_constant_folding=True,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    os.replace(tmp, path)
    return path


def main() -> None:
    out_dir = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_DIR
    os.makedirs(out_dir, exist_ok=True)
    for arch in ARCHS:
        print(export(arch, out_dir))


if __name__ == "__main__":
    main()
