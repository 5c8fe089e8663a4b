#!/usr/bin/env python3
"""Generate models/fixtures/article/: ResNets built with the seed article's own PyTorch classes.

Run from the repository root (after models/make_fixtures.py, whose preprocessed photo tensors
models/fixtures/inputs/*.npy are reused):

    /work/pyenv/bin/python models/make_article_fixtures.py

The article's layout differs from torchvision's: the stem `layer0` is Conv2d (with bias) ->
MaxPool2d -> BatchNorm2d -> ReLU (max-pool BEFORE BN), every conv has a bias, a block applies
ReLU to its branch before the residual add as well as after it, and the projection shortcut is
`shortcut.0` (conv) / `shortcut.1` (BN).  The classes below are the article's, with its evident
typos fixed as issue 7 states (`forward` starts from `x`; the bottleneck returns
`relu(out + shortcut)`), and one addition: a `width` argument (the article hard-codes 64) so
the fixtures stay small; every other structural detail is the article's.

Everything is seeded; the Rust tests only read the files written here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parent  # .../models
FIX = ROOT / "fixtures"
INPUTS = FIX / "inputs"
OUT = FIX / "article"
BAD = OUT / "bad"

SEED = 20240707
NUM_CLASSES = 10
REL_TOL = 1e-5  # reload checks
# depth -> (block, repeat, width, forms). 18 and 50 are the required fixtures (both
# weight formats); 34/101/152 prove the other table rows at an even smaller width.
MODELS = {
    18: ("basic", [2, 2, 2, 2], 4, ["model.safetensors", "model.pth"]),
    50: ("bottleneck", [3, 4, 6, 3], 4, ["model.safetensors", "model.pth"]),
    34: ("basic", [3, 4, 6, 3], 2, ["model.safetensors"]),
    101: ("bottleneck", [3, 4, 23, 3], 2, ["model.safetensors"]),
    152: ("bottleneck", [3, 8, 36, 3], 2, ["model.safetensors"]),
}


def log(*a):
    print(*a, flush=True)


# ---------------------------------------------------------------------------
# The article's classes
# ---------------------------------------------------------------------------


class ResBlock(nn.Module):
    def __init__(self, in_channels, out_channels, downsample):
        super().__init__()
        if downsample:
            self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1)
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=2),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
            self.shortcut = nn.Sequential()

        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x):
        shortcut = self.shortcut(x)
        x = nn.ReLU()(self.bn1(self.conv1(x)))
        x = nn.ReLU()(self.bn2(self.conv2(x)))
        x = x + shortcut
        return nn.ReLU()(x)


class ResBottleneckBlock(nn.Module):
    def __init__(self, in_channels, out_channels, downsample):
        super().__init__()
        self.downsample = downsample
        self.conv1 = nn.Conv2d(in_channels, out_channels // 4, kernel_size=1, stride=1)
        self.conv2 = nn.Conv2d(
            out_channels // 4, out_channels // 4, kernel_size=3, stride=2 if downsample else 1, padding=1
        )
        self.conv3 = nn.Conv2d(out_channels // 4, out_channels, kernel_size=1, stride=1)

        if self.downsample or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=2 if self.downsample else 1),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Sequential()

        self.bn1 = nn.BatchNorm2d(out_channels // 4)
        self.bn2 = nn.BatchNorm2d(out_channels // 4)
        self.bn3 = nn.BatchNorm2d(out_channels)

    def forward(self, x):
        shortcut = self.shortcut(x)
        x = nn.ReLU()(self.bn1(self.conv1(x)))
        x = nn.ReLU()(self.bn2(self.conv2(x)))
        x = nn.ReLU()(self.bn3(self.conv3(x)))
        x = x + shortcut
        return nn.ReLU()(x)


def stem(in_channels, width):
    return nn.Sequential(
        nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
    )


class ResNet18(nn.Module):
    """The article's ResNet18, verbatim but for `width` (64 in the article)."""

    def __init__(self, in_channels, resblock, outputs=1000, width=64):
        super().__init__()
        w = width
        self.layer0 = stem(in_channels, w)
        self.layer1 = nn.Sequential(resblock(w, w, downsample=False), resblock(w, w, downsample=False))
        self.layer2 = nn.Sequential(resblock(w, 2 * w, downsample=True), resblock(2 * w, 2 * w, downsample=False))
        self.layer3 = nn.Sequential(resblock(2 * w, 4 * w, downsample=True), resblock(4 * w, 4 * w, downsample=False))
        self.layer4 = nn.Sequential(resblock(4 * w, 8 * w, downsample=True), resblock(8 * w, 8 * w, downsample=False))
        self.gap = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(8 * w, outputs)

    def forward(self, x):
        x = self.layer0(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.gap(x)
        x = torch.flatten(x, 1)
        x = self.fc(x)
        return x


class ResNet(nn.Module):
    """ResNet-34/50/101/152 from the same blocks: the paper's table-1 block counts, channel
    widths 64/128/256/512 (basic) or 256/512/1024/2048 (bottleneck) scaled by width/64, stage
    1 not downsampling, stages 2-4 downsampling in their first block (as ResNet18 above).
    Blocks sit in nn.Sequential, so keys are `layer{s}.{i}.` like the article's ResNet18."""

    def __init__(self, in_channels, resblock, repeat, use_bottleneck=False, outputs=1000, width=64):
        super().__init__()
        w = width
        filters = [w, 4 * w, 8 * w, 16 * w, 32 * w] if use_bottleneck else [w, w, 2 * w, 4 * w, 8 * w]
        self.layer0 = stem(in_channels, w)
        for s in range(4):
            blocks = [resblock(filters[s], filters[s + 1], downsample=s > 0)]
            blocks += [resblock(filters[s + 1], filters[s + 1], downsample=False) for _ in range(1, repeat[s])]
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        self.gap = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(filters[4], outputs)

    def forward(self, x):
        x = self.layer0(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.gap(x)
        x = torch.flatten(x, 1)
        x = self.fc(x)
        return x


# ---------------------------------------------------------------------------
# Seeded models with non-trivial BatchNorm
# ---------------------------------------------------------------------------


def build(depth: int, calibration: torch.Tensor, width: int | None = None,
          negative_stem: bool | None = None) -> nn.Module:
    kind, repeat, w, _ = MODELS[depth]
    w = width or w
    torch.manual_seed(SEED + depth)
    if depth == 18:
        model = ResNet18(3, ResBlock, outputs=NUM_CLASSES, width=w)
    else:
        block = ResBottleneckBlock if kind == "bottleneck" else ResBlock
        model = ResNet(3, block, repeat, use_bottleneck=kind == "bottleneck", outputs=NUM_CLASSES, width=w)
    last_bns = set()
    for m in model.modules():
        if isinstance(m, ResBlock):
            last_bns.add(id(m.bn2))
        elif isinstance(m, ResBottleneckBlock):
            last_bns.add(id(m.bn3))
    g = torch.Generator().manual_seed(SEED * 7 + depth)
    with torch.no_grad():
        # PyTorch's default init with BN statistics of 1/0 lets the signal fade layer by layer
        # until the logits hardly depend on the photo.  Give every BN the statistics it would see
        # on the photos (as training would), then perturb them so they are not exact.
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # cumulative average: exactly this batch's statistics
        model.train()
        model(calibration)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                std = m.running_var.sqrt()
                m.running_mean.add_(torch.randn(c, generator=g) * 0.1 * std)
                m.running_var.mul_(torch.rand(c, generator=g) * 0.6 + 0.7)
                w_ = torch.rand(c, generator=g) + 0.5
                if id(m) in last_bns:
                    # The branch is ReLU'd before the add, so it only ever grows the signal:
                    # keep deep nets in range.
                    w_ = w_ * 0.3
                m.weight.copy_(w_)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
                m.num_batches_tracked.fill_(int(torch.randint(1, 10000, (1,), generator=g)))
                m.momentum = 0.1
        # The stem BN sits after the max-pool; the runtime can fold it into the conv only when
        # every BN scale is positive.  ResNet-18 gets negative stem gammas on every other
        # channel (the unfolded path), the others all-positive ones (the folded path).
        if negative_stem is None:
            negative_stem = depth == 18
        bn = model.layer0[2]
        if negative_stem:
            bn.weight[::2] *= -1.0
        model.eval()
        # Pooled features are all positive (ReLU), so a default-init fc answers mostly their
        # common part; centre and scale it as training would, so logits differ by photo.
        feats = model.gap(model.layer4(model.layer3(model.layer2(model.layer1(model.layer0(calibration))))))
        feats = torch.flatten(feats, 1)
        weight = torch.randn(model.fc.weight.shape, generator=g)
        centred = (feats - feats.mean(0)) @ weight.T
        weight *= 2.0 / centred.std().clamp_min(1e-6)
        model.fc.weight.copy_(weight)
        model.fc.bias.copy_(-(feats.mean(0) @ weight.T) + torch.randn(NUM_CLASSES, generator=g) * 0.5)
    model.eval()
    return model


def rel_diff(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(a - ref).max() / np.abs(ref).max())


def save_weights(sd: dict, path: Path):
    if path.suffix == ".safetensors":
        safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
        back = safetensors.torch.load_file(str(path))
    else:
        torch.save(sd, str(path))
        back = torch.load(str(path), weights_only=True)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd), path


def process(depth: int, inputs: dict[str, np.ndarray], stems: list[str], report: dict):
    kind, repeat, width, forms = MODELS[depth]
    out = OUT / f"resnet{depth}"
    out.mkdir(parents=True, exist_ok=True)
    model = build(depth, torch.from_numpy(np.concatenate([inputs[s] for s in stems])))
    logits = {}
    with torch.no_grad():
        for s in stems:
            y = model(torch.from_numpy(inputs[s])).numpy()
            assert y.shape == (1, NUM_CLASSES) and np.isfinite(y).all()
            logits[s] = y[0]
        batch = np.concatenate([inputs[s] for s in stems[:4]], axis=0)
        yb = model(torch.from_numpy(batch)).numpy()
    mags = [float(np.abs(v).max()) for v in logits.values()]
    if not (0.1 <= min(mags) and max(mags) <= 100):
        raise SystemExit(f"article resnet{depth}: logits out of the 0.1..100 range: {mags}")
    # How much the logits move from photo to photo, relative to their size: a runtime that
    # ignored its input would be off by about this much.
    spread = float(np.std(np.stack(list(logits.values())), axis=0).max()) / max(mags)
    if spread < 0.05:
        raise SystemExit(f"article resnet{depth}: logits hardly depend on the photo ({spread:.2e})")
    b_vs_single = max(rel_diff(yb[i], logits[s]) for i, s in enumerate(stems[:4]))
    doc = {s: [float(v) for v in logits[s]] for s in stems}
    doc["batch4"] = [[float(v) for v in row] for row in yb]
    (out / "logits.json").write_text(json.dumps(doc, indent=1) + "\n")
    sd = model.state_dict()
    for form in forms:
        save_weights(sd, out / form)
    stem_scale = (model.layer0[2].weight / torch.sqrt(model.layer0[2].running_var + model.layer0[2].eps))
    n_params = sum(p.numel() for p in model.parameters())
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    sizes = {f: (out / f).stat().st_size for f in forms}
    report[depth] = dict(kind=kind, repeat=repeat, width=width, params=n_params, bn=n_bn,
                         negative_stem=int((stem_scale < 0).sum()), logit_min=min(mags),
                         logit_max=max(mags), spread=spread, batch_vs_single=b_vs_single, sizes=sizes)
    log(f"article resnet{depth}: {kind} {repeat} width {width}, params {n_params}, BN {n_bn}, "
        f"stem scales < 0: {report[depth]['negative_stem']}, max|logit| {min(mags):.3g}..{max(mags):.3g}, "
        f"relative spread over photos {spread:.3g}, batch4 vs single {b_vs_single:.1e}, files {sizes}")


# ---------------------------------------------------------------------------
# Checkpoints that must be rejected
# ---------------------------------------------------------------------------

# (key, wrong shape) written into an otherwise valid article ResNet-18 of width 1.
WRONG_SHAPES = {
    "layer1.0.conv1.weight": [1, 1, 5, 5],  # 3x3 in the article (a 5x5 would still "run")
    "layer2.0.shortcut.0.weight": [2, 1, 3, 3],  # the shortcut is 1x1
    "layer3.1.bn2.running_var": [3],  # 4 channels
}
# torchvision names given to some of the article's tensors, as a half-done conversion would.
MIXED_RENAMES = {
    "layer0.0.weight": "conv1.weight",
    "layer0.2.weight": "bn1.weight",
    "layer0.2.bias": "bn1.bias",
    "layer0.2.running_mean": "bn1.running_mean",
    "layer0.2.running_var": "bn1.running_var",
    "layer0.2.num_batches_tracked": "bn1.num_batches_tracked",
    "layer2.0.shortcut.0.weight": "layer2.0.downsample.0.weight",
    "layer2.0.shortcut.1.weight": "layer2.0.downsample.1.weight",
    "layer2.0.shortcut.1.bias": "layer2.0.downsample.1.bias",
    "layer2.0.shortcut.1.running_mean": "layer2.0.downsample.1.running_mean",
    "layer2.0.shortcut.1.running_var": "layer2.0.downsample.1.running_var",
}


def make_bad(calibration: torch.Tensor):
    BAD.mkdir(parents=True, exist_ok=True)
    sd = build(18, calibration, width=1).state_dict()
    g = torch.Generator().manual_seed(SEED + 1)
    wrong = dict(sd)
    for k, shape in WRONG_SHAPES.items():
        assert k in sd and list(sd[k].shape) != shape, k
        wrong[k] = torch.rand(shape, generator=g) + 0.5
    save_weights(wrong, BAD / "wrong_shapes.safetensors")

    mixed = {MIXED_RENAMES.get(k, k): v for k, v in sd.items() if k not in ("layer0.0.bias", "layer2.0.shortcut.0.bias")}
    save_weights(mixed, BAD / "mixed_layouts.pth")
    for f in sorted(BAD.iterdir()):
        log(f"article/bad/{f.name}: {f.stat().st_size} B")


def write_readme(stems, report):
    lines = [
        "# ResNets in the seed article's layout (generated — do not edit by hand)",
        "",
        "Regenerate from the repository root with",
        "",
        "```",
        "/work/pyenv/bin/python models/make_article_fixtures.py",
        "```",
        "",
        f"(torch {torch.__version__}, safetensors, numpy {np.__version__}; python {sys.version.split()[0]}).",
        "The inputs are the committed `../inputs/*.npy` photo tensors.",
        "",
        "## Architecture",
        "",
        "The article's own classes (`ResBlock`, `ResBottleneckBlock`, `ResNet18`; see the script),",
        "with its typos fixed as issue 7 states, and a `width` argument in place of the hard-coded",
        "64 (stage widths `width * [1, 1, 2, 4, 8]` basic, `width * [1, 4, 8, 16, 32]` bottleneck):",
        "",
        "- stem `layer0`: Conv2d 7x7/2 **with bias** -> MaxPool2d(3, 2, 1) -> BatchNorm2d -> ReLU",
        "  (keys `layer0.0.*`, `layer0.2.*`);",
        "- every conv has a bias; a block is `relu(relu(bn_last(conv_last(...))) + shortcut)`;",
        "- shortcut `shortcut.0` (1x1 conv, stride 2 when downsampling) + `shortcut.1` (BN) when",
        "  the block downsamples (and, for bottlenecks, when in != out channels), else identity;",
        "- `gap` (no weights), `fc`.",
        "",
        "Weights are seeded, PyTorch's default init for the convs. BatchNorm is non-trivial:",
        "running statistics are those of the six photos (one train-mode pass, as training would",
        "leave them) perturbed (mean + N(0, 0.1) std, var x U(0.7, 1.3)); weight ~ U(0.5, 1.5)",
        "(x0.3 for a block's last BN), bias ~ N(0, 0.1). Without calibrated statistics the",
        "default init lets the signal fade until the logits barely depend on the photo. `fc` is",
        "N(0, 1) scaled so the logits' spread over the photos is about 2, with a bias that",
        "centres them (+ N(0, 0.5)); the script refuses models whose logits move less than 5% of",
        "their size across photos.",
        "**ResNet-18's stem BN has a negative weight on every other channel**, so its scale",
        "cannot be moved through the max-pool (the runtime keeps that BN as a per-channel",
        "multiply-add); every other model's stem scales are positive (folded into the conv).",
        "",
        "| depth | blocks | width | params | BN | stem scales < 0 | max abs logit | relative spread | files (bytes) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for d in sorted(report):
        r = report[d]
        files = ", ".join(f"`{f}` {s}" for f, s in r["sizes"].items())
        lines.append(f"| {d} | {r['kind']} {r['repeat']} | {r['width']} | {r['params']} | {r['bn']} | "
                     f"{r['negative_stem']} | {r['logit_min']:.3g} .. {r['logit_max']:.3g} | {r['spread']:.2f} | {files} |")
    lines += [
        "",
        "## Files",
        "",
        "- `resnet{d}/model.safetensors` (and `model.pth` for 18 and 50): the state_dict, incl.",
        "  `num_batches_tracked`.",
        "- `resnet{d}/logits.json`: PyTorch eval-mode logits `{stem: [10 floats]}` per photo, plus",
        f"  `batch4`: one forward pass over the first four stems {stems[:4]}.",
        "- `bad/wrong_shapes.safetensors`: a width-1 article ResNet-18 whose keys are all right",
        "  but three shapes are not: " + ", ".join(f"`{k}` {v}" for k, v in WRONG_SHAPES.items()) + ".",
        "- `bad/mixed_layouts.pth`: the same model with the stem and `layer2.0`'s shortcut under",
        "  torchvision's names (`conv1.weight` without bias, `bn1.*`, `layer2.0.downsample.*`) and",
        "  the rest under the article's.",
        "",
    ]
    (OUT / "README.md").write_text("\n".join(lines))


def main():
    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    stems = sorted(p.stem for p in INPUTS.glob("*.npy"))
    if not stems:
        raise SystemExit("no models/fixtures/inputs/*.npy: run models/make_fixtures.py first")
    inputs = {s: np.load(INPUTS / f"{s}.npy") for s in stems}
    report: dict = {}
    for depth in MODELS:
        process(depth, inputs, stems, report)
    make_bad(torch.from_numpy(np.concatenate([inputs[s] for s in stems])))
    write_readme(stems, report)
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    log(f"TOTAL models/fixtures/article: {total / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
