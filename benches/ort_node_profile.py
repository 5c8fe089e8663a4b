#!/usr/bin/env python3
"""onnxruntime's own per-node profile of MODEL: the fastest of RUNS runs of every node, summed
per op type, and the slowest nodes, to compare with `resnet-edge profile` layer by layer.

    python benches/ort_node_profile.py MODEL THREADS RUNS [TOP]

Needs numpy and onnxruntime. The input is random f32 of the model's input shape (batch 1,
224 for any size left open).
"""
import collections
import json
import os
import sys

import numpy as np
import onnxruntime as ort

m, t, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
o = ort.SessionOptions()
o.intra_op_num_threads, o.inter_op_num_threads, o.enable_profiling = t, 1, True
s = ort.InferenceSession(m, o, providers=["CPUExecutionProvider"])
i = s.get_inputs()[0]
shape = [d if isinstance(d, int) else 224 for d in i.shape]
shape[0] = 1
x = np.random.rand(*shape).astype(np.float32)
for _ in range(runs):
    s.run(None, {i.name: x})
path = s.end_profiling()
with open(path) as f:
    prof = json.load(f)
os.remove(path)
best, kind = {}, {}
for e in prof:
    if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
        n = e["name"][: -len("_kernel_time")]
        best[n] = min(best.get(n, 1e18), e["dur"])
        kind[n] = e["args"].get("op_name")
tot = collections.Counter()
for n, d in best.items():
    tot[kind[n]] += d
print("sum of per-node minimums %.2f ms" % (sum(best.values())/1e3))
for k, d in tot.most_common():
    print("  %-20s %.2f ms" % (k, d / 1e3))
top = int(sys.argv[4]) if len(sys.argv) > 4 else 12
for n, d in sorted(best.items(), key=lambda kv: -kv[1])[:top]:
    print("  %-60s %-14s %.3f" % (n[:60], kind[n], d / 1e3))
