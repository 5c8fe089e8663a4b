#!/usr/bin/env python3
"""Generate the committed test fixtures for resnet-edge.

Run from the repository root:

    /work/pyenv/bin/python models/make_fixtures.py

Everything is seeded; the Rust test-suite only reads the files written here
and never needs Python.  See models/fixtures/README.md for what is produced.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as md
import json
import os
import pickle
import shutil
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import safetensors.torch
import torch
import torch.nn as nn
import torchvision
from PIL import Image
from torchvision import transforms
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent  # .../models
PHOTOS = ROOT / "photos"
FIX = ROOT / "fixtures"
INPUTS = FIX / "inputs"
BAD = FIX / "bad"

BASE_WIDTH = 4          # stage widths BASE_WIDTH * [1, 2, 4, 8] (torchvision: 64)
NUM_CLASSES = 10
OPSET_LEGACY = 13
OPSET_DYNAMO = 18       # torchlib's native opset; pinned for reproducibility
SEED = 20240601
FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)
STRIP_META = {"pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node"}
REL_TOL = 1e-5          # max|onnx - torch| / max|torch| must be below this

ARCHS = {
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
    152: (Bottleneck, [3, 8, 36, 3]),
}
DEPTHS = sorted(ARCHS)
FORMS = ["legacy.onnx", "bn.onnx", "dynamo.onnx", "model.safetensors", "model.pth"]

# (file name, distribution, path inside the distribution's package dir)
PHOTO_SOURCES = [
    ("astronaut.png", "scikit-image", "skimage/data/astronaut.png"),
    ("chelsea.png", "scikit-image", "skimage/data/chelsea.png"),
    ("coffee.png", "scikit-image", "skimage/data/coffee.png"),
    # motorcycle_left/right.png are left out: scikit-image states no licence for them
    # (Middlebury 2014 stereo data), unlike the CC0 / public-domain photos here.
    ("rocket.jpg", "scikit-image", "skimage/data/rocket.jpg"),
    ("china.jpg", "scikit-learn", "sklearn/datasets/images/china.jpg"),
    ("flower.jpg", "scikit-learn", "sklearn/datasets/images/flower.jpg"),
]

PHOTO_LICENCES = {
    "astronaut.png": (
        "Public domain. Eileen Collins, NASA Great Images database "
        "(https://flic.kr/p/r9qvLn). skimage docstring: \"No known copyright "
        "restrictions, released into the public domain.\""
    ),
    "chelsea.png": (
        "CC0. Chelsea the cat. skimage docstring: \"No copyright restrictions. "
        "CC0 by the photographer (Stefan van der Walt).\""
    ),
    "coffee.png": (
        "CC0. Coffee cup, courtesy of Pikolo Espresso Bar. skimage docstring: "
        "\"No copyright restrictions. CC0 by the photographer (Rachel Michetti).\""
    ),
    "rocket.jpg": (
        "Public domain. Launch of DSCOVR on Falcon 9, SpaceX "
        "(https://www.flickr.com/photos/spacexphotos/16511594820/). skimage "
        "docstring: \"captured by SpaceX and released in the public domain\"."
    ),
    "china.jpg": (
        "CC-BY 2.0 (https://creativecommons.org/licenses/by/2.0/). "
        "\"Some rights reserved by danielbuechele\", "
        "https://www.flickr.com/photos/danielbuechele/6061409035/ ; retrieved "
        "21 Aug 2011 by Robert Layton (sklearn/datasets/images/README.txt)."
    ),
    "flower.jpg": (
        "CC-BY 2.0 (https://creativecommons.org/licenses/by/2.0/). Flickr user "
        "vultilion, https://www.flickr.com/photos/vultilion/6056698931/ ; "
        "retrieved 21 Aug 2011 by Robert Layton. (sklearn's README.txt says "
        "\"Some rights reserved by danielbuechele\" for this entry too, but "
        "links the vultilion account -- apparently a copy/paste slip.)"
    ),
}

PREPROCESS = transforms.Compose(
    [
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ]
)


def log(*a):
    print(*a, flush=True)


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


class NarrowResNet(ResNet):
    """torchvision ResNet with stage widths base*[1,2,4,8] instead of 64*[...].

    Re-implements ResNet.__init__ (which hard-codes 64) but keeps torchvision's
    blocks, _make_layer, forward and weight init, so state_dict keys are
    exactly torchvision's.
    """

    def __init__(self, block, layers, base: int, num_classes: int):
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes = base
        self.dilation = 1
        self.groups = 1
        self.base_width = 64  # width_per_group: keeps Bottleneck width == planes
        self.conv1 = nn.Conv2d(3, base, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, base, layers[0])
        self.layer2 = self._make_layer(block, base * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, base * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, base * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(base * 8 * block.expansion, num_classes)
        # torchvision's default init (same as ResNet.__init__)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


def build_model(depth: int) -> nn.Module:
    block, layers = ARCHS[depth]
    torch.manual_seed(SEED + depth)
    model = NarrowResNet(block, layers, BASE_WIDTH, NUM_CLASSES)
    last_bns = set()
    for m in model.modules():
        if isinstance(m, BasicBlock):
            last_bns.add(id(m.bn2))
        elif isinstance(m, Bottleneck):
            last_bns.add(id(m.bn3))
    g = torch.Generator().manual_seed(SEED * 7 + depth)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                w = torch.rand(c, generator=g) + 0.5
                if id(m) in last_bns:
                    w = w * 0.4  # last BN of each residual branch: keep deep nets sane
                m.weight.copy_(w)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
                m.num_batches_tracked.fill_(int(torch.randint(1, 10000, (1,), generator=g)))
    model.eval()
    return model


def count_bn(model) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


# ---------------------------------------------------------------------------
# Photos and inputs
# ---------------------------------------------------------------------------


def dist_file(dist: str, rel: str) -> tuple[Path, str | None]:
    """Locate rel inside installed distribution; return (path, RECORD sha256)."""
    d = md.distribution(dist)
    path = Path(d.locate_file(rel))
    digest = None
    for f in d.files or []:
        if str(f) == rel and f.hash is not None:
            digest = f.hash.value
    return path, digest


def copy_photos() -> list[str]:
    PHOTOS.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, dist, rel in PHOTO_SOURCES:
        src, record_hash = dist_file(dist, rel)
        dst = PHOTOS / name
        shutil.copyfile(src, dst)
        data = dst.read_bytes()
        assert data == src.read_bytes()
        h = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        if record_hash is not None and h != record_hash:
            raise SystemExit(f"{name}: sha256 differs from the wheel RECORD")
        rows.append((name, dist, md.version(dist), rel, hashlib.sha256(data).hexdigest(), len(data)))
        log(f"photo {name:22s} {len(data):8d} B  from {dist} {rel} (RECORD hash ok)")
    write_photos_readme(rows)
    return sorted(Path(r[0]).stem for r in rows)


def write_photos_readme(rows):
    lines = [
        "# Test photos",
        "",
        "Real photographs copied **byte for byte** (no re-encoding) out of the",
        "installed scikit-image / scikit-learn wheels by `models/make_fixtures.py`;",
        "each file's sha256 was checked against the wheel's `RECORD`.",
        "",
        "Licence notes below are quoted from the packages themselves: for",
        "scikit-image the per-image notes live in the docstrings of",
        "`skimage/data/_fetchers.py` (the `skimage/data/README.txt` shipped in the",
        "0.26.0 wheel carries no licence information); for scikit-learn they are in",
        "`sklearn/datasets/images/README.txt`.",
        "",
        "| file | package | original path | bytes | sha256 |",
        "|---|---|---|---|---|",
    ]
    for name, dist, ver, rel, sha, size in rows:
        lines.append(f"| {name} | {dist} {ver} | `{rel}` | {size} | `{sha}` |")
    lines += ["", "## Licences", ""]
    for name, *_ in rows:
        lines.append(f"- **{name}**: {PHOTO_LICENCES[name]}")
    lines.append("")
    (PHOTOS / "README.md").write_text("\n".join(lines))


def make_inputs(stems: list[str]) -> dict[str, np.ndarray]:
    INPUTS.mkdir(parents=True, exist_ok=True)
    by_stem = {Path(n).stem: n for n, _, _ in PHOTO_SOURCES}
    out = {}
    for stem in stems:
        img = Image.open(PHOTOS / by_stem[stem]).convert("RGB")
        x = PREPROCESS(img).unsqueeze(0).numpy().astype("<f4")
        x = np.ascontiguousarray(x)
        assert x.shape == (1, 3, 224, 224) and x.dtype == np.dtype("<f4")
        np.save(INPUTS / f"{stem}.npy", x)
        out[stem] = x
        log(f"input {stem:18s} {img.size} -> {x.shape} mean={x.mean():+.4f} std={x.std():.4f}")
    return out


# ---------------------------------------------------------------------------
# Export + verification
# ---------------------------------------------------------------------------


def onnx_summary(path: Path) -> dict:
    m = onnx.load(str(path), load_external_data=False)
    ops: dict[str, int] = {}
    for n in m.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    ext = sum(
        1
        for t in m.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
    )

    def dims(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    return {
        "opset": max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")),
        "ops": dict(sorted(ops.items())),
        "inputs": [(i.name, dims(i)) for i in m.graph.input],
        "outputs": [(o.name, dims(o)) for o in m.graph.output],
        "n_init": len(m.graph.initializer),
        "n_init_external": ext,
        "init_names": [t.name for t in m.graph.initializer],
        "producer": f"{m.producer_name} {m.producer_version}",
    }


def export_legacy(model, path: Path, fold: bool):
    kw = dict(
        dynamo=False,
        opset_version=OPSET_LEGACY,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    if fold:
        kw.update(do_constant_folding=True, training=torch.onnx.TrainingMode.EVAL)
    else:
        # PRESERVE skips the eval peephole pass that fuses Conv+BN.
        kw.update(do_constant_folding=False, training=torch.onnx.TrainingMode.PRESERVE)
    x = torch.zeros(1, 3, 224, 224)
    torch.onnx.export(model, (x,), str(path), **kw)
    assert not model.training


def export_dynamo(model, path: Path) -> bool:
    data_name = path.name + ".data"
    x = torch.zeros(2, 3, 224, 224)  # batch 2: torch.export specialises size-1 dims
    dynamic = True
    try:
        prog = torch.onnx.export(
            model,
            (x,),
            dynamo=True,
            opset_version=OPSET_DYNAMO,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=1024)}},
        )
    except Exception as e:  # pragma: no cover - fallback path
        log(f"  dynamo dynamic-batch export failed ({type(e).__name__}: {e}); using batch 1")
        dynamic = False
        prog = torch.onnx.export(
            model,
            (torch.zeros(1, 3, 224, 224),),
            dynamo=True,
            opset_version=OPSET_DYNAMO,
            input_names=["input"],
            output_names=["logits"],
        )
    assert not model.training
    for p in (path, path.with_name(data_name)):
        if p.exists():
            p.unlink()
    # Re-save so that every floating-point initializer (all weights, however
    # small) lives in the .data file.  The exporter's own save keeps tensors
    # < 256 bytes inline; forcing *everything* out (size threshold 0) also moves
    # the tiny int64 `axes` / shape constants out, which onnxruntime's shape
    # inference then refuses ("Cannot parse data from external tensors").
    from onnx.external_data_helper import set_external_data

    proto = prog.model_proto
    # Drop the two bulkiest per-node debug annotations (Python stack traces with
    # absolute local paths, FX node dumps); the other metadata_props
    # (namespace, class_hierarchy, name_scopes, rewriter rule_name) are kept so
    # readers still meet NodeProto.metadata_props as in real exports.
    for n in proto.graph.node:
        keep = [p for p in n.metadata_props if p.key not in STRIP_META]
        del n.metadata_props[:]
        n.metadata_props.extend(keep)
    for t in proto.graph.initializer:
        if t.data_type in FLOAT_TYPES:
            t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t), t.name))
            set_external_data(t, location=data_name)
    onnx.save_model(proto, str(path))
    return dynamic


def ort_run(path: Path, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return sess.run(None, {name: x})[0]


def rel_diff(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(a - ref).max() / np.abs(ref).max())


def process_depth(depth: int, inputs: dict[str, np.ndarray], stems: list[str], report: dict):
    log(f"\n=== resnet{depth} ===")
    out = FIX / f"resnet{depth}"
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(depth)
    n_bn = count_bn(model)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"  params={n_params}  bn_modules={n_bn}")

    # --- PyTorch reference logits
    logits = {}
    with torch.no_grad():
        for stem in stems:
            y = model(torch.from_numpy(inputs[stem])).numpy()
            assert y.shape == (1, NUM_CLASSES) and np.isfinite(y).all()
            logits[stem] = y[0]
        batch = np.concatenate([inputs[s] for s in stems[:4]], axis=0)
        yb = model(torch.from_numpy(batch)).numpy()
    mags = [float(np.abs(v).max()) for v in logits.values()]
    log(f"  max|logit| per photo: min={min(mags):.3g} max={max(mags):.3g}")
    if not (0.1 <= min(mags) and max(mags) <= 100):
        raise SystemExit(f"resnet{depth}: logits out of the 0.1..100 range: {mags}")
    b_vs_single = max(rel_diff(yb[i], logits[s]) for i, s in enumerate(stems[:4]))
    log(f"  batch4 vs single-image logits rel diff: {b_vs_single:.2e}")

    with open(out / "logits.json", "w") as f:
        doc = {s: [float(v) for v in logits[s]] for s in stems}
        doc["batch4"] = [[float(v) for v in row] for row in yb]
        json.dump(doc, f, indent=1)
        f.write("\n")

    # --- weights
    sd = model.state_dict()
    safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(out / "model.safetensors"))
    torch.save(sd, str(out / "model.pth"))
    rt = safetensors.torch.load_file(str(out / "model.safetensors"))
    rp = torch.load(str(out / "model.pth"), weights_only=True)
    assert list(rp.keys()) == list(sd.keys()) and set(rt.keys()) == set(sd.keys())
    assert all(torch.equal(rt[k], sd[k]) and torch.equal(rp[k], sd[k]) for k in sd)

    # --- ONNX
    export_legacy(model, out / "legacy.onnx", fold=True)
    export_legacy(model, out / "bn.onnx", fold=False)
    dyn = export_dynamo(model, out / "dynamo.onnx")

    info = {}
    for form in ("legacy.onnx", "bn.onnx", "dynamo.onnx"):
        p = out / form
        onnx.checker.check_model(str(p))
        s = onnx_summary(p)
        worst = 0.0
        for stem in stems:
            y = ort_run(p, inputs[stem])
            worst = max(worst, rel_diff(y[0], logits[stem]))
        batch_ok = form != "dynamo.onnx" or dyn
        wb = rel_diff(ort_run(p, batch), yb) if batch_ok else float("nan")
        log(
            f"  {form:12s} opset={s['opset']} nodes={sum(s['ops'].values())} "
            f"BN={s['ops'].get('BatchNormalization', 0)} init={s['n_init']} "
            f"(external {s['n_init_external']})  ort rel diff: photos {worst:.2e} batch4 {wb:.2e}"
        )
        if worst >= REL_TOL or (batch_ok and wb >= REL_TOL):
            raise SystemExit(f"resnet{depth}/{form}: onnxruntime mismatch {worst} / {wb}")
        s["ort_rel_diff"] = worst
        s["ort_rel_diff_batch4"] = wb
        info[form] = s

    bn_nodes = info["bn.onnx"]["ops"].get("BatchNormalization", 0)
    if bn_nodes != n_bn:
        raise SystemExit(f"resnet{depth}/bn.onnx has {bn_nodes} BatchNormalization nodes, want {n_bn}")
    if info["legacy.onnx"]["ops"].get("BatchNormalization", 0) != 0:
        raise SystemExit(f"resnet{depth}/legacy.onnx still has BatchNormalization nodes")
    dyn_model = onnx.load(str(out / "dynamo.onnx"), load_external_data=False)
    for t in dyn_model.graph.initializer:
        external = t.data_location == onnx.TensorProto.EXTERNAL
        if external != (t.data_type in FLOAT_TYPES):
            raise SystemExit(f"dynamo.onnx: initializer {t.name} external={external}")

    report[depth] = {"bn_modules": n_bn, "params": n_params, "dynamic": dyn, "onnx": info,
                     "batch_vs_single": b_vs_single, "logit_max": max(mags), "logit_min": min(mags)}
    return n_bn, dyn


# ---------------------------------------------------------------------------
# Hostile inputs
# ---------------------------------------------------------------------------


class _Evil:
    """Pickles as GLOBAL posix.system + REDUCE('echo ...'). Never loaded by us."""

    def __reduce__(self):
        return (os.system, ("echo resnet-edge-evil-pickle-was-executed",))


def make_bad():
    BAD.mkdir(parents=True, exist_ok=True)

    src = (FIX / "resnet18" / "legacy.onnx").read_bytes()
    (BAD / "truncated.onnx").write_bytes(src[: int(len(src) * 0.6)])

    def st(header: dict, payload: bytes) -> bytes:
        h = json.dumps(header, separators=(",", ":")).encode()
        h += b" " * (-len(h) % 8)
        return struct.pack("<Q", len(h)) + h + payload

    payload = np.arange(4, dtype="<f4").tobytes()  # 16 bytes of real data
    (BAD / "lying_offsets.safetensors").write_bytes(
        st({"fc.weight": {"dtype": "F32", "shape": [4], "data_offsets": [0, 1 << 20]}}, payload)
    )
    (BAD / "huge_shape.safetensors").write_bytes(
        st({"fc.weight": {"dtype": "F32", "shape": [1000000, 1000000, 1000], "data_offsets": [0, 16]}}, payload)
    )

    # Torch zip checkpoint (written by torch.save itself) whose data.pkl has a
    # real tensor plus GLOBAL 'posix system' + REDUCE.
    evil = {"fc.bias": torch.arange(4, dtype=torch.float32), "fc.weight": _Evil()}
    p = BAD / "evil_global.pth"
    torch.save(evil, str(p))
    with zipfile.ZipFile(p) as z:
        names = z.namelist()
        pkl = z.read(next(n for n in names if n.endswith("/data.pkl")))
    assert any(n.endswith("/data.pkl") for n in names), names
    assert b"posix\nsystem" in pkl or b"os\nsystem" in pkl, pkl
    try:  # the safe loader must refuse it (does not execute anything)
        torch.load(str(p), weights_only=True)
        raise SystemExit("evil_global.pth was accepted by torch.load(weights_only=True)")
    except pickle.UnpicklingError:
        pass
    log(f"bad/evil_global.pth zip entries: {names}")

    (BAD / "not_an_image.png").write_text("This is not a PNG image, just text with a .png name.\n")
    for f in sorted(BAD.iterdir()):
        log(f"bad/{f.name}: {f.stat().st_size} B")


# ---------------------------------------------------------------------------
# README / meta
# ---------------------------------------------------------------------------


def write_readme(stems, bn_nodes, dyn, report):
    r18 = report[DEPTHS[0]]["onnx"]
    dyn_info = r18["dynamo.onnx"]
    lines = [
        "# Test fixtures (generated — do not edit by hand)",
        "",
        "Regenerate from the repository root with",
        "",
        "```",
        "/work/pyenv/bin/python models/make_fixtures.py",
        "```",
        "",
        "(any venv with torch, torchvision, onnx, onnxruntime, onnxscript, safetensors,",
        "pillow, numpy, scikit-image and scikit-learn works). The script is seeded; it",
        "re-verifies every ONNX file against PyTorch with onnxruntime and aborts on",
        f"mismatch (max|ort - torch| / max|torch| < {REL_TOL:g}).",
        "",
        "## Versions used",
        "",
        f"- python {sys.version.split()[0]}, torch {torch.__version__}, torchvision {torchvision.__version__}",
        f"- onnx {onnx.__version__}, onnxruntime {ort.__version__}, onnxscript {md.version('onnxscript')}, "
        f"onnx_ir {md.version('onnx_ir')}",
        f"- safetensors {md.version('safetensors')}, pillow {md.version('pillow')}, numpy {np.__version__}",
        "",
        "## Models",
        "",
        f"torchvision ResNet architecture (torchvision's `BasicBlock` / `Bottleneck`,",
        f"expansion 4, block counts 18:[2,2,2,2] 34:[3,4,6,3] 50:[3,4,6,3] 101:[3,4,23,3]",
        f"152:[3,8,36,3]) with **reduced width**: stem and stage widths are",
        f"`{BASE_WIDTH} * [1, 2, 4, 8]` instead of `64 * [1, 2, 4, 8]`, and **{NUM_CLASSES} classes**.",
        "State-dict keys are exactly torchvision's (`conv1.weight`, `bn1.running_mean`,",
        "`layer1.0.downsample.0.weight`, ..., `fc.bias`), so loaders written for real",
        "torchvision checkpoints work unchanged.",
        "",
        f"Weights: seeded (`SEED + depth`, SEED={SEED}); torchvision default init for conv",
        "(kaiming normal, fan_out) and fc; BatchNorm is non-trivial: running_mean ~ N(0, 0.1),",
        "running_var ~ U(0.5, 2), weight ~ U(0.5, 1.5) (x0.4 for the last BN of every",
        "residual branch, i.e. `bn2` of BasicBlock / `bn3` of Bottleneck), bias ~ N(0, 0.1),",
        "num_batches_tracked random. Model in eval mode.",
        "",
        "| depth | params | BN modules | BN nodes in bn.onnx | max abs logit (photos) | ort rel diff legacy / bn / dynamo |",
        "|---|---|---|---|---|---|",
    ]
    for d in DEPTHS:
        r = report[d]
        o = r["onnx"]
        lines.append(
            f"| {d} | {r['params']} | {r['bn_modules']} | {bn_nodes[f'resnet{d}']} | "
            f"{r['logit_min']:.3g} .. {r['logit_max']:.3g} | "
            f"{o['legacy.onnx']['ort_rel_diff']:.1e} / {o['bn.onnx']['ort_rel_diff']:.1e} / "
            f"{o['dynamo.onnx']['ort_rel_diff']:.1e} |"
        )
    lines += [
        "",
        "## Files",
        "",
        "- `meta.json` — photos (stems, sorted), depths, width, classes, forms, BN node counts, versions.",
        "- `inputs/<stem>.npy` — preprocessed photo, float32 little-endian C-order, shape",
        "  [1, 3, 224, 224]: `Image.open(p).convert('RGB')`, `Resize(256)` (PIL bilinear,",
        "  antialiased), `CenterCrop(224)`, `ToTensor()`,",
        "  `Normalize([0.485,0.456,0.406],[0.229,0.224,0.225])`.",
        "- `resnet{d}/` for d in " + ", ".join(map(str, DEPTHS)) + ":",
        f"  - `legacy.onnx` — legacy TorchScript exporter (`dynamo=False`), opset {OPSET_LEGACY},",
        "    `do_constant_folding=True`, eval mode: BatchNorm is folded into Conv (no",
        "    BatchNormalization nodes; every Conv has a bias). Input `input` [batch,3,224,224],",
        "    output `logits` [batch, C], dynamic batch axis `batch`.",
        f"  - `bn.onnx` — same exporter, `do_constant_folding=False`,",
        "    `training=TrainingMode.PRESERVE` with the model in eval mode: keeps one",
        "    `BatchNormalization` node per BN module (count in meta.json `bn_nodes`). Same",
        "    names / dynamic batch.",
        f"  - `dynamo.onnx` + `dynamo.onnx.data` — `torch.export`-based exporter",
        f"    (`dynamo=True`), opset {OPSET_DYNAMO}, "
        + ("dynamic batch (`torch.export.Dim('batch')`, symbolic dim name "
           f"`{dyn_info['inputs'][0][1][0]}`)" if dyn else "FIXED batch 1")
        + ". Every float",
        "    initializer (all weights, even 16-byte BN vectors) is external, in",
        "    `dynamo.onnx.data` next to the model (relative `location`); only the few tiny",
        "    int64 shape/axes constants stay inline (onnxruntime refuses external ones).",
        "    Per-node `metadata_props` `pkg.torch.onnx.stack_trace` and `pkg.torch.onnx.fx_node`",
        "    are stripped (size, local paths); the other exporter metadata_props remain.",
        "    NOTE: the exporter's optimizer folds BatchNorm into Conv (rewrite rule",
        "    `FuseBatchNormIntoConv`), so initializers named e.g. `conv1.weight` hold the",
        "    BN-FOLDED weight (not the state_dict value) and each Conv gets a new",
        "    `<conv>.weight_bias` initializer; global pooling is `ReduceMean` (axes input)",
        "    + `Reshape`, not GlobalAveragePool + Flatten.",
        f"    Ops (resnet18): {', '.join(f'{k}x{v}' for k, v in dyn_info['ops'].items())}.",
        f"    Input {dyn_info['inputs']}, output {dyn_info['outputs']}.",
        "  - `model.safetensors` — `safetensors.torch.save_file(state_dict)` incl.",
        "    `num_batches_tracked` (I64).",
        "  - `model.pth` — `torch.save(state_dict)` (default zip format).",
        "  - `logits.json` — PyTorch eval-mode logits: `{stem: [C floats]}` for every photo,",
        "    plus `batch4`: 4 logit rows from ONE forward pass over the first 4 stems",
        f"    (sorted) stacked: {stems[:4]}. Floats are the exact float32 values.",
        "- `bad/` — hostile inputs for error-path tests:",
        "  - `truncated.onnx` — first 60% of the bytes of `resnet18/legacy.onnx`.",
        "  - `lying_offsets.safetensors` — valid header, `data_offsets` [0, 1048576] but only",
        "    16 data bytes in the file.",
        "  - `huge_shape.safetensors` — shape [1000000, 1000000, 1000] F32 with",
        "    `data_offsets` [0, 16]: 1e15 elements (4e15 bytes) claimed, 16 bytes present.",
        "  - `evil_global.pth` — a real `torch.save` zip (`evil_global/data.pkl`,",
        "    `evil_global/data/0`, ...) whose pickle holds `fc.bias` (a tensor) and",
        "    `fc.weight` = `GLOBAL 'posix system'` + `REDUCE` ('echo ...'). Must be",
        "    rejected by any reader; `torch.load(weights_only=True)` rejects it.",
        "  - `not_an_image.png` — a text file.",
        "",
    ]
    (FIX / "README.md").write_text("\n".join(lines))


def main():
    torch.set_num_threads(2)
    torch.manual_seed(SEED)
    os.chdir(ROOT.parent)
    FIX.mkdir(parents=True, exist_ok=True)

    stems = copy_photos()
    inputs = make_inputs(stems)

    report: dict = {}
    bn_nodes: dict[str, int] = {}
    dyn_all = True
    for d in DEPTHS:
        n_bn, dyn = process_depth(d, inputs, stems, report)
        bn_nodes[f"resnet{d}"] = n_bn
        dyn_all &= dyn

    make_bad()

    meta = {
        "photos": stems,
        "depths": DEPTHS,
        "base_width": BASE_WIDTH,
        "num_classes": NUM_CLASSES,
        "forms": FORMS,
        "bn_nodes": bn_nodes,
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "onnx_version": onnx.__version__,
        "dynamo_dynamic_batch": dyn_all,
        "opset_legacy": OPSET_LEGACY,
        "opset_dynamo": OPSET_DYNAMO,
        "batch4_stems": stems[:4],
        "input_shape": [1, 3, 224, 224],
        "seed": SEED,
    }
    (FIX / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    write_readme(stems, bn_nodes, dyn_all, report)

    log("\n=== dynamo.onnx details (resnet18) ===")
    s = report[DEPTHS[0]]["onnx"]["dynamo.onnx"]
    log(f"  producer={s['producer']} opset={s['opset']} ops={s['ops']}")
    log(f"  inputs={s['inputs']} outputs={s['outputs']}")
    log(f"  initializers[:8]={s['init_names'][:8]} ... ({s['n_init']} total)")
    s = report[DEPTHS[0]]["onnx"]["legacy.onnx"]
    log(f"  legacy ops={s['ops']} init[:6]={s['init_names'][:6]}")
    s = report[DEPTHS[0]]["onnx"]["bn.onnx"]
    log(f"  bn ops={s['ops']} init[:6]={s['init_names'][:6]}")

    # models/real/ is git-ignored (real downloaded models) and not ours: skip it.
    total = Path(__file__).stat().st_size
    for top in (PHOTOS, FIX):
        total += sum(p.stat().st_size for p in top.rglob("*") if p.is_file())
    log(f"\nTOTAL committed fixtures (photos + fixtures + script): {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
