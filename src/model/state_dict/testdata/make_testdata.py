"""Regenerate the tiny checkpoints the state_dict tests read (run from this folder).

The Rust tests hard-code the values below, so torch/safetensors are the independent
reference for the formats; only rerun this if those values change too.
"""
import collections

import torch
from safetensors.torch import save_file

base = torch.arange(6, dtype=torch.float32).reshape(2, 3) * 0.5 - 1.0  # [[-1,-.5,0],[.5,1,1.5]]
grid = torch.arange(12, dtype=torch.float32).reshape(3, 4)

sd = collections.OrderedDict()
sd["conv.weight"] = base
sd["conv.weight_t"] = base.t()  # shares storage with conv.weight, strides (1, 3)
sd["grid_col"] = grid[1:, 2]  # storage offset 6, stride (4,): [6, 10]
sd["half"] = torch.tensor([1.0, -2.5, 0.099975586, 65504.0], dtype=torch.float16)
sd["bf16"] = torch.tensor([[1.0, -3.0], [0.5, 256.0]], dtype=torch.bfloat16)
sd["f64"] = torch.tensor([0.25, -1e10], dtype=torch.float64)
sd["bn.num_batches_tracked"] = torch.tensor(7, dtype=torch.int64)
sd["mask"] = torch.tensor([True, False, True])
sd["i8"] = torch.tensor([-128, 5], dtype=torch.int8)

# Plain state_dict, default pickle protocol 2 (what torch.save writes by default).
torch.save(sd, "weights.pth")

# timm-style wrapped checkpoint with DataParallel prefixes, pickle protocol 4.
wrapped = {
    "epoch": 3,
    "arch": "resnet18",
    "metric": 0.5,
    "state_dict": collections.OrderedDict(
        ("module." + k, v) for k, v in sd.items() if k in ("conv.weight", "half")
    ),
}
torch.save(wrapped, "wrapped_p4.pth", pickle_protocol=4)

# {"model": {...}} holding an nn.Parameter (pickled through _rebuild_parameter).
torch.save({"model": {"fc.weight": torch.nn.Parameter(base.clone())}}, "param.pth")

# safetensors needs contiguous, unshared tensors.
st = {k: v.contiguous().clone() for k, v in sd.items()}
save_file(st, "weights.safetensors", metadata={"format": "pt", "note": "tiny"})
