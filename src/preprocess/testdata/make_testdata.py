"""Regenerate the preprocess test fixtures from an independent reference: Pillow + torchvision.

Run from anywhere with a Python that has Pillow, numpy, torch and torchvision:
    python src/preprocess/testdata/make_testdata.py
Outputs (all tiny, committed beside this script):
  src37x23.png            synthetic RGB source (seeded noise + gradients + hard edges)
  pil_WxH.png             PIL  src.resize((W, H), Image.BILINEAR)  -- must match bit for bit
  tv_<case>.f32           torchvision Resize/CenterCrop/ToTensor/Normalize output, float32 LE,
                          in the layout/channel order named by the case (see CASES)
  conv_<kind>.png/.rgb    small PNGs of other colour types and PIL's convert("RGB") bytes
  photo24x16.jpg/.rgb     a small JPEG and PIL's (libjpeg) decode of it
"""

import os
import struct
import zlib

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

HERE = os.path.dirname(os.path.abspath(__file__))
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def path(name):
    return os.path.join(HERE, name)


def raw_png(name, arr, color_type, depth):
    """Write a PNG byte by byte, for colour types/depths PIL cannot save (16-bit RGB)."""
    h, w = arr.shape[:2]
    dt = ">u2" if depth == 16 else "u1"
    rows = b"".join(b"\x00" + arr[y].astype(dt).tobytes() for y in range(h))

    def chunk(tag, data):
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0)
    with open(path(name), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows, 9))
                + chunk(b"IEND", b""))


def source():
    rng = np.random.default_rng(20240523)
    h, w = 23, 37
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 / (w - 1), y * 255 / (h - 1), (x + y) * 4 % 256], axis=-1)
    img = img + rng.integers(-60, 61, size=(h, w, 3))
    img[5:9, 10:30] = [255, 0, 255]  # hard edges and saturated values exercise the clipping
    img[15:, :6] = 0
    img[:3, 30:] = 255
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


# (file name, Resize argument, crop, channel order, layout)
CASES = [
    ("tv_r21_c16_rgb_nchw", 21, 16, "rgb", "nchw"),     # 33x21: both crop offsets x.5 -> even (down)
    ("tv_r23_c16_rgb_nchw", 23, 16, "rgb", "nchw"),     # 37x23 unchanged: top 3.5 -> 4 (up), left 10.5 -> 10
    ("tv_r13_c16_rgb_nchw", 13, 16, "rgb", "nchw"),     # 20x13: padded rows (1 above, 2 below)
    ("tv_e20_c16_bgr_nhwc", (20, 20), 16, "bgr", "nhwc"),  # exact mode, BGR + NHWC
]


def torchvision_case(src, resize, crop, channels, layout):
    t = transforms.Compose([
        transforms.Resize(resize, interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.CenterCrop(crop),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])(src)
    if channels == "bgr":
        t = t[[2, 1, 0]]
    if layout == "nhwc":
        t = t.permute(1, 2, 0)
    return t.contiguous().numpy().astype("<f4")


def main():
    src = source()
    src.save(path("src37x23.png"))
    for size in [(17, 29), (80, 50), (9, 5), (37, 11), (12, 23)]:
        src.resize(size, Image.BILINEAR).save(path("pil_%dx%d.png" % size))

    for name, resize, crop, channels, layout in CASES:
        torchvision_case(src, resize, crop, channels, layout).tofile(path(name + ".f32"))

    # Colour types other than RGB, and what PIL's convert("RGB") makes of them.
    small = np.array(src.crop((0, 0, 7, 5)))
    grey = small[..., 0]
    alpha = small[..., 1]
    Image.fromarray(grey, "L").save(path("conv_l.png"))
    Image.fromarray(np.dstack([grey, alpha]), "LA").save(path("conv_la.png"))
    Image.fromarray(np.dstack([small, alpha]), "RGBA").save(path("conv_rgba.png"))
    pal = Image.fromarray(small, "RGB").quantize(8)
    pal.info["transparency"] = 0
    pal.save(path("conv_p.png"), transparency=0)
    rgb16 = small.astype(np.uint16) * 257 + np.arange(small.size).reshape(small.shape) % 251
    raw_png("conv_rgb16.png", rgb16, 2, 16)
    for kind in ["l", "la", "rgba", "p", "rgb16"]:
        im = Image.open(path("conv_%s.png" % kind))
        with open(path("conv_%s.rgb" % kind), "wb") as f:
            f.write(im.convert("RGB").tobytes())

    photo = src.resize((24, 16), Image.BILINEAR)
    photo.save(path("photo24x16.jpg"), quality=90)
    with open(path("photo24x16.rgb"), "wb") as f:
        f.write(Image.open(path("photo24x16.jpg")).convert("RGB").tobytes())


if __name__ == "__main__":
    main()
