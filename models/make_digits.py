#!/usr/bin/env python3
"""Train a small, real ResNet-18 on scikit-learn's 8x8 digits: an accuracy fixture.

Run from the repository root:

    /work/pyenv/bin/python models/make_digits.py

The other fixtures (models/make_fixtures.py) have seeded random weights, which
test that the runtime computes the same numbers as PyTorch but say nothing
about whether a *trained* network still classifies correctly after BatchNorm
folding, int8 quantisation or a changed resize.  This script makes one that
does, small enough to commit and quick to rebuild (about a minute on 2 cores):

- the 1797 digits of `sklearn.datasets.load_digits()` (shipped inside the
  scikit-learn wheel, no download) as 32x32 grayscale PNGs, 360 held-out test
  images and 200 training images for int8 calibration;
- a torchvision ResNet-18 (exact module structure and state_dict keys) with
  stage widths 16/32/64/128, trained here on the pixels read back from the PNGs;
- its ONNX export with BatchNormalization nodes kept, a safetensors state_dict,
  a manifest, and PyTorch / onnxruntime reference logits and accuracies.

Everything is seeded and single-process (torch.set_num_threads(2)); the output
folder models/fixtures/digits/ is deleted and rewritten on every run.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import io
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torchvision.models.resnet import BasicBlock

ROOT = Path(__file__).resolve().parent  # .../models
sys.path.insert(0, str(ROOT))
from make_fixtures import NarrowResNet  # noqa: E402  (side-effect free: main() is guarded)

try:
    import safetensors.torch as st
except ImportError:  # pragma: no cover - /work/pyenv has it
    st = None

OUT = ROOT / "fixtures" / "digits"
STEM = "resnet18_digits"

SEED = 20240611
SIDE = 32               # PNG side and model input side
BASE_WIDTH = 16         # stage widths 16/32/64/128 (torchvision: 64/128/256/512)
NUM_CLASSES = 10
N_TEST = 360
CALIB_PER_CLASS = 20
OPSET = 17
MEAN = STD = 0.5        # (x/255 - 0.5) / 0.5, same for the 3 identical channels
SHIFT = 2               # augmentation: random translation of +-SHIFT pixels
EPOCHS = 30
BATCH = 64
LR = 3e-3
WEIGHT_DECAY = 1e-4
MIN_ACC = 97.0          # abort below this held-out accuracy (percent)
ORT_ATOL = 1e-4         # max|ort - torch| on the logits


def log(*a):
    print(*a, flush=True)


def seed_everything():
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def digit_png(img8: np.ndarray) -> Image.Image:
    """8x8 values 0..16 -> 32x32 8-bit grayscale PIL image."""
    u8 = np.rint(img8 * (255.0 / 16.0)).astype(np.uint8)  # only v=8 ties (127.5): 128 either way
    return Image.fromarray(u8, mode="L").resize((SIDE, SIDE), Image.BILINEAR)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def to_input(pil_rgb: Image.Image) -> np.ndarray:
    """PIL RGB image -> [3, H, W] float32, as ToTensor() + Normalize([.5]*3, [.5]*3)."""
    x = torch.from_numpy(np.asarray(pil_rgb, dtype=np.uint8).copy()).permute(2, 0, 1)
    x = x.float().div(255)
    return np.ascontiguousarray(((x - MEAN) / STD).numpy())


def read_png(data_or_path) -> np.ndarray:
    src = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path
    with Image.open(src) as im:
        return to_input(im.convert("RGB"))


def make_data():
    d = load_digits()
    images, y = d.images, d.target.astype(np.int64)
    idx = np.arange(len(y))
    train_idx, test_idx = train_test_split(idx, test_size=N_TEST, random_state=0, stratify=y)
    assert len(test_idx) == N_TEST and len(train_idx) == len(y) - N_TEST

    # Test PNGs: written, then read back from disk.
    (OUT / "test").mkdir(parents=True)
    test_names, x_test = [], []
    for n, i in enumerate(test_idx):
        name = f"{n:03d}_{y[i]}.png"
        p = OUT / "test" / name
        digit_png(images[i]).save(p)
        test_names.append(name)
        x_test.append(read_png(p))

    # Training images: the same PNG encode/decode, in memory.
    x_train = np.stack([read_png(png_bytes(digit_png(images[i]))) for i in train_idx])

    # Calibration: the first CALIB_PER_CLASS training images of each class, in split order.
    (OUT / "calib").mkdir(parents=True)
    taken = {c: 0 for c in range(NUM_CLASSES)}
    calib = []
    for i in train_idx:
        if taken[y[i]] < CALIB_PER_CLASS:
            taken[y[i]] += 1
            calib.append(i)
    calib_names = []
    for n, i in enumerate(calib):
        name = f"{n:03d}_{y[i]}.png"
        digit_png(images[i]).save(OUT / "calib" / name)
        calib_names.append(name)
    assert len(calib_names) == CALIB_PER_CLASS * NUM_CLASSES

    return {
        "x_train": torch.from_numpy(np.ascontiguousarray(x_train)),
        "y_train": torch.from_numpy(y[train_idx]),
        "x_test": torch.from_numpy(np.ascontiguousarray(np.stack(x_test))),
        "y_test": y[test_idx],
        "test_names": test_names,
        "test_idx": test_idx,
        "calib_names": calib_names,
        "calib_idx": np.array(calib),
        "y": y,
    }


# ---------------------------------------------------------------------------
# Model + training
# ---------------------------------------------------------------------------


def shift_batch(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Translate each image by up to +-SHIFT px; uncovered pixels get the background (0 -> -1)."""
    n, _, h, w = x.shape
    bg = (0.0 - MEAN) / STD
    padded = F.pad(x, (SHIFT, SHIFT, SHIFT, SHIFT), value=bg)
    off = torch.randint(0, 2 * SHIFT + 1, (n, 2), generator=g)
    return torch.stack([padded[k, :, oy : oy + h, ox : ox + w] for k, (oy, ox) in enumerate(off.tolist())])


@torch.no_grad()
def predict(model, x: torch.Tensor) -> np.ndarray:
    model.eval()
    return model(x).numpy()


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return 100.0 * float((logits.argmax(1) == y).mean())


def train(data) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(SEED)
    model = NarrowResNet(BasicBlock, [2, 2, 2, 2], BASE_WIDTH, NUM_CLASSES)
    x, y = data["x_train"], data["y_train"]
    steps = EPOCHS * ((len(y) + BATCH - 1) // BATCH)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps)
    g = torch.Generator().manual_seed(SEED)
    history = []
    t0 = time.perf_counter()
    for epoch in range(EPOCHS):
        model.train()
        perm = torch.randperm(len(y), generator=g)
        total = 0.0
        for b in range(0, len(y), BATCH):
            j = perm[b : b + BATCH]
            loss = F.cross_entropy(model(shift_batch(x[j], g)), y[j])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(j)
        acc = accuracy(predict(model, data["x_test"]), data["y_test"])
        history.append({"epoch": epoch + 1, "loss": round(total / len(y), 5), "test_acc": round(acc, 3)})
        log(f"epoch {epoch + 1:2d}  loss {total / len(y):.4f}  test acc {acc:6.2f}%  ({time.perf_counter() - t0:.1f} s)")
    seconds = time.perf_counter() - t0
    model.eval()
    return model, {"seconds": round(seconds, 1), "history": history}


# ---------------------------------------------------------------------------
# Export + checks
# ---------------------------------------------------------------------------


def export(model, path: Path):
    # Eval mode but no constant folding: keeps one BatchNormalization node per BN
    # module.  With do_constant_folding=True (and TrainingMode.EVAL) the exporter
    # fuses BN into the Conv weights; the runtime is meant to do that itself.
    assert not model.training
    torch.onnx.export(
        model,
        (torch.zeros(1, 3, SIDE, SIDE),),
        str(path),
        dynamo=False,
        opset_version=OPSET,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        do_constant_folding=False,
        training=torch.onnx.TrainingMode.EVAL,
    )
    assert not model.training
    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    ops: dict[str, int] = {}
    for n in m.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    n_bn = sum(isinstance(x, torch.nn.BatchNorm2d) for x in model.modules())
    if ops.get("BatchNormalization", 0) != n_bn:
        raise SystemExit(f"{path.name}: {ops.get('BatchNormalization', 0)} BatchNormalization nodes, want {n_bn}")

    def dims(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    return {
        "opset": max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")),
        "ops": dict(sorted(ops.items())),
        "inputs": {i.name: dims(i) for i in m.graph.input},
        "outputs": {o.name: dims(o) for o in m.graph.output},
        "producer": f"{m.producer_name} {m.producer_version}",
    }


def ort_logits(path: Path, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x})[0]


def save_weights(model, path: Path) -> bool:
    if st is None:
        log("safetensors not installed: skipping the .safetensors file")
        return False
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    st.save_file(sd, str(path))
    back = st.load_file(str(path))
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    return True


# ---------------------------------------------------------------------------
# Manifest, labels, README
# ---------------------------------------------------------------------------


def sklearn_digits_file():
    d = md.distribution("scikit-learn")
    rel = "sklearn/datasets/data/digits.csv.gz"
    sha = hashlib.sha256(Path(d.locate_file(rel)).read_bytes()).hexdigest()
    return f"scikit-learn=={d.version}", rel, sha


def write_manifest(acc_torch: float):
    package, rel, sha = sklearn_digits_file()
    (OUT / "digits.labels.txt").write_text("".join(f"{c}\n" for c in range(NUM_CLASSES)))
    notes = (
        f"Trained by models/make_digits.py on the {1797 - N_TEST} training images of "
        f"sklearn.datasets.load_digits() (test_size={N_TEST}, random_state=0, stratified); "
        f"held-out PyTorch f32 accuracy {acc_torch:.2f}% on test/*.png. Data: the copy of the "
        "UCI Optical Recognition of Handwritten Digits test set (E. Alpaydin, C. Kaynak, 1998) "
        "shipped in scikit-learn (BSD-3-Clause); sha256 is of that file. Each 8x8 digit (0..16) "
        "is scaled to 0..255, upscaled to 32x32 with PIL BILINEAR and saved as an 8-bit "
        "grayscale PNG; the runtime's resize 32 / crop 32 is then the identity. Architecture: "
        "torchvision ResNet-18 with widths 16/32/64/128, 10 classes; ONNX opset "
        f"{OPSET}, legacy exporter, BatchNormalization nodes kept."
    )
    text = f"""# ResNet-18 (widths 16/32/64/128) trained on scikit-learn's 8x8 handwritten digits,
# written by models/make_digits.py together with test/ (360 held-out PNGs),
# calib/ (200 training PNGs for int8 calibration) and reference.json.
#
# Graph: input "input" float32 NCHW [N, 3, 32, 32], RGB (3 identical grey
# channels), (x / 255 - 0.5) / 0.5; output "logits" [N, 10] (pre-softmax), class = digit.

[model]
name = "{STEM}"
output = "logits"
labels = "digits.labels.txt"

[preprocess]
resize = {SIDE}
resize_mode = "shorter"
crop = {SIDE}
scale = 0.00392156862745098
mean = [{MEAN}, {MEAN}, {MEAN}]
std = [{STD}, {STD}, {STD}]
channels = "rgb"
layout = "nchw"

[provenance]
package = "{package}"
file = "{rel}"
sha256 = "{sha}"
license = "BSD-3-Clause"
notes = "{notes}"
"""
    (OUT / f"{STEM}.toml").write_text(text)
    return text


def check_runtime_preprocessing(x_test: np.ndarray, names: list[str]):
    """The runtime computes (v * scale - mean) / std in f32 per byte: within 2 ulps of torch."""
    scale, mean, std = np.float32(0.00392156862745098), np.float32(MEAN), np.float32(STD)
    worst = 0.0
    for name, x in zip(names, x_test):
        with Image.open(OUT / "test" / name) as im:
            v = np.asarray(im.convert("RGB"), dtype=np.float32).transpose(2, 0, 1)
        r = (v * scale - mean) / std
        worst = max(worst, float(np.abs(r - x).max()))
    assert worst < 3e-7, worst
    return worst


def sizes() -> dict[str, int]:
    out = {}
    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(OUT))] = p.stat().st_size
    return out


def write_readme(ref: dict, onnx_info: dict, have_st: bool, n_params: int):
    sz = sizes()
    test_bytes = [v for k, v in sz.items() if k.startswith("test/")]
    calib_bytes = [v for k, v in sz.items() if k.startswith("calib/")]
    h = ref["training"]
    files = [
        f"- `{STEM}.onnx` ({sz[STEM + '.onnx']:,} B): legacy TorchScript exporter (`dynamo=False`), "
        f"opset {onnx_info['opset']}, `training=TrainingMode.EVAL`, `do_constant_folding=False`, which keeps "
        f"all {onnx_info['ops']['BatchNormalization']} `BatchNormalization` nodes (constant folding would "
        "fuse them into the Conv weights). Input `input` "
        f"{onnx_info['inputs']['input']}, output `logits` {onnx_info['outputs']['logits']}. Ops: "
        + ", ".join(f"{k} {v}" for k, v in onnx_info["ops"].items())
        + ".",
    ]
    if have_st:
        files.append(
            f"- `{STEM}.safetensors` ({sz[STEM + '.safetensors']:,} B): the state_dict, torchvision's keys, "
            "f32 weights and BN statistics (plus torchvision's int64 `num_batches_tracked`)."
        )
    else:
        files.append("- (no `.safetensors`: the safetensors package was not installed)")
    files += [
        f"- `{STEM}.toml` ({sz[STEM + '.toml']:,} B): the runtime's manifest (preprocessing, labels, provenance).",
        f"- `digits.labels.txt`: labels `0`..`9`, one a line.",
        f"- `test/NNN_L.png`: the {N_TEST} held-out images (NNN = 000..{N_TEST - 1} in split order, "
        f"L = label), {min(test_bytes)}..{max(test_bytes)} B each, {sum(test_bytes):,} B in all.",
        f"- `calib/NNN_L.png`: {len(calib_bytes)} training images, the first {CALIB_PER_CLASS} of each "
        f"class in split order (never in test/), {sum(calib_bytes):,} B in all: an int8 calibration set.",
        "- `reference.json`: test file names, labels and sklearn indices; PyTorch f32 logits per "
        "test image; PyTorch and onnxruntime accuracy; max |onnxruntime - PyTorch|; per-class "
        "counts; calibration names; training details and versions.",
    ]
    total = sum(sz.values())
    lines = [
        "# digits: a small trained ResNet-18 (generated — do not edit by hand)",
        "",
        "A real, trained classifier for accuracy tests: a torchvision ResNet-18 (exact module",
        "structure and state_dict keys, standard 7x7/2 stem + 3x3/2 max-pool) with stage widths",
        f"16/32/64/128 instead of 64/128/256/512 and 10 classes ({n_params:,} parameters),",
        "trained on the 8x8 handwritten digits that ship with scikit-learn.",
        "",
        "Regenerate from the repository root (deletes and rewrites this folder only):",
        "",
        "```",
        "/work/pyenv/bin/python models/make_digits.py",
        "```",
        "",
        "## How it was made",
        "",
        f"- Data: `sklearn.datasets.load_digits()` (1797 images, 8x8, values 0..16), split with",
        f"  `train_test_split(..., test_size={N_TEST}, random_state=0, stratify=y)`.",
        "- Each digit: `round(v * 255 / 16)` to 8 bits, upscaled 8x8 -> 32x32 with PIL `BILINEAR`,",
        "  saved as an 8-bit grayscale PNG. Training and evaluation use exactly the pixels read",
        "  back from those PNGs: `Image.open(p).convert('RGB')` (3 identical channels), `/ 255`,",
        "  `Normalize([0.5]*3, [0.5]*3)`. The manifest's resize 32 (shorter side) + crop 32 is the",
        "  identity on a 32x32 image, so the runtime sees the same pixels.",
        f"- Training: all {ref['n_train']} training images, AdamW (lr {LR}, weight decay {WEIGHT_DECAY}),",
        f"  one-cycle schedule, {EPOCHS} epochs of batch {BATCH}, random shifts of +-{SHIFT} px",
        f"  (background-filled) as the only augmentation; seed {SEED}, `torch.set_num_threads(2)`,",
        f"  deterministic algorithms. Took {h['seconds']} s on 2 CPU cores (torch {h['torch_version']}).",
        "",
        "## Results on the 360 held-out images",
        "",
        f"- PyTorch f32: **{ref['accuracy_torch']:.2f}%** ({ref['correct_torch']}/{N_TEST})",
        f"- onnxruntime {ort.__version__} on `{STEM}.onnx`: **{ref['accuracy_ort']:.2f}%**, "
        f"max |logit difference| to PyTorch {ref['max_abs_logit_diff_ort']:.2e}",
        "",
        "## Files",
        "",
        *files,
        "",
        f"Total: {total / 1e6:.2f} MB (without this README).",
        "",
        "## Licence",
        "",
        "The images are scikit-learn's `sklearn/datasets/data/digits.csv.gz`, which ships with",
        f"scikit-learn ({ref['data']['package']}, BSD-3-Clause). scikit-learn describes it as a",
        "copy of the test set of the UCI ML *Optical Recognition of Handwritten Digits* data set",
        "(E. Alpaydin and C. Kaynak, Bogazici University, 1998; UCI ML repository dataset 80).",
        "The UCI repository's own page may state its own terms for the original data; they were",
        "not checked here. The trained weights are produced by this project's script.",
        "",
    ]
    (OUT / "README.md").write_text("\n".join(lines))


# ---------------------------------------------------------------------------


def main():
    seed_everything()
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)

    data = make_data()
    log(f"data: {len(data['y_train'])} train, {N_TEST} test, {len(data['calib_names'])} calib PNGs")

    model, hist = train(data)
    x_test = data["x_test"].numpy()
    y_test = data["y_test"]
    logits = predict(model, data["x_test"])
    acc_t = accuracy(logits, y_test)
    log(f"PyTorch f32 held-out accuracy: {acc_t:.2f}%")
    if acc_t < MIN_ACC:
        raise SystemExit(f"held-out accuracy {acc_t:.2f}% is below {MIN_ACC}%")
    # single-image runs agree with the batch (eval-mode BN, no batch coupling)
    one = np.concatenate([predict(model, data["x_test"][i : i + 1]) for i in range(4)])
    assert np.abs(one - logits[:4]).max() < 1e-4

    onnx_path = OUT / f"{STEM}.onnx"
    onnx_info = export(model, onnx_path)
    have_st = save_weights(model, OUT / f"{STEM}.safetensors")

    y_ort = ort_logits(onnx_path, x_test)
    y_ort1 = ort_logits(onnx_path, x_test[:1])
    diff = float(max(np.abs(y_ort - logits).max(), np.abs(y_ort1 - logits[:1]).max()))
    acc_o = accuracy(y_ort, y_test)
    log(f"onnxruntime accuracy: {acc_o:.2f}%, max |ort - torch| = {diff:.2e}")
    if diff >= ORT_ATOL or acc_o != acc_t:
        raise SystemExit(f"onnxruntime disagrees with PyTorch: {diff}, {acc_o} vs {acc_t}")

    pre_diff = check_runtime_preprocessing(x_test, data["test_names"])
    manifest = write_manifest(acc_t)

    package, rel, sha = sklearn_digits_file()
    y_all = data["y"]
    pred = logits.argmax(1)
    n_params = sum(p.numel() for p in model.parameters())
    ref = {
        "model": f"{STEM}.onnx",
        "input_shape": [1, 3, SIDE, SIDE],
        "preprocess": "PIL convert('RGB'), /255, (x - 0.5) / 0.5, NCHW",
        "runtime_preprocess_max_abs_diff": pre_diff,
        "test_files": data["test_names"],
        "labels": [int(v) for v in y_test],
        "sklearn_index": [int(i) for i in data["test_idx"]],
        "logits_torch": [[float(v) for v in row] for row in logits],
        "pred_torch": [int(v) for v in pred],
        "accuracy_torch": acc_t,
        "correct_torch": int((pred == y_test).sum()),
        "accuracy_ort": acc_o,
        "max_abs_logit_diff_ort": diff,
        "misclassified_torch": [data["test_names"][i] for i in np.flatnonzero(pred != y_test)],
        "per_class": {
            str(c): {
                "test": int((y_test == c).sum()),
                "test_correct_torch": int(((y_test == c) & (pred == c)).sum()),
                "train": int((data["y_train"].numpy() == c).sum()),
                "calib": CALIB_PER_CLASS,
            }
            for c in range(NUM_CLASSES)
        },
        "calib_files": data["calib_names"],
        "calib_sklearn_index": [int(i) for i in data["calib_idx"]],
        "n_train": int(len(data["y_train"])),
        "n_total": int(len(y_all)),
        "params": n_params,
        "onnx": onnx_info,
        "data": {"package": package, "file": rel, "sha256": sha},
        "training": {
            "epochs": EPOCHS,
            "batch": BATCH,
            "optimizer": f"AdamW lr={LR} weight_decay={WEIGHT_DECAY}, OneCycleLR",
            "augmentation": f"random shift +-{SHIFT} px",
            "seed": SEED,
            "threads": torch.get_num_threads(),
            "seconds": hist["seconds"],
            "history": hist["history"],
            "torch_version": torch.__version__,
            "torchvision_version": torchvision.__version__,
            "onnx_version": onnx.__version__,
            "onnxruntime_version": ort.__version__,
            "python": sys.version.split()[0],
        },
    }
    with open(OUT / "reference.json", "w") as f:
        json.dump(ref, f, indent=1)
        f.write("\n")
    write_readme(ref, onnx_info, have_st, n_params)

    log("\n" + manifest)
    for name, size in sizes().items():
        if "/" not in name:
            log(f"{size:10,d}  {name}")
    total = sum(sizes().values())
    log(f"TOTAL models/fixtures/digits: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
