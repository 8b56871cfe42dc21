"""The reference decode + preprocess in PIL, shared by bench/python_pipeline.py and
bench/decode.py.

PIL decode (EXIF orientation, alpha composited onto white, RGB), torchvision-geometry resize of
the shorter side to 256 (bicubic), centre crop 224, (x - 127) / 128. With `draft=True` a JPEG
is first reduced by libjpeg's DCT scaling (`Image.draft`, 1/2, 1/4 or 1/8) to the smallest size
that still covers the resize, as a PIL user who knows the trick would do.
"""

import io
import os

import numpy as np
from PIL import Image, ImageOps

EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"}
RESIZE, CROP = 256, 224


def scan(root):
    """Image files under root, sorted by path (kadr's scan order)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            if os.path.splitext(name)[1].lower() in EXTENSIONS:
                out.append(os.path.join(dirpath, name))
    return sorted(out)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def decode(data, draft=False):
    """Bytes → upright RGB PIL image, alpha composited onto white."""
    img = Image.open(io.BytesIO(data))
    if draft and img.format == "JPEG":
        w, h = img.size
        s = RESIZE / min(w, h)
        # draft keeps both sides at or above the request; EXIF rotation does not change the
        # shorter side.
        img.draft("RGB", (round(w * s), round(h * s)))
    img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return img.convert("RGB")


def preprocess(img):
    """RGB PIL image → CHW float32 (3, 224, 224): shorter side to 256, centre crop 224.

    The longer side is rounded, as in the reference that made shared/golden/effnet_lite0_check
    (chelsea.png, 451×300 → 385×256; both golden inputs are reproduced exactly)."""
    w, h = img.size
    if w <= h:
        rw, rh = RESIZE, int(round(RESIZE * h / w))
    else:
        rw, rh = int(round(RESIZE * w / h)), RESIZE
    if (rw, rh) != (w, h):
        img = img.resize((rw, rh), Image.BICUBIC)
    c = min(CROP, rw, rh)
    top = int(round((rh - c) / 2.0))
    left = int(round((rw - c) / 2.0))
    img = img.crop((left, top, left + c, top + c))
    x = np.asarray(img, dtype=np.float32)
    x = (x - 127.0) / 128.0
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def decode_preprocess(data, draft=False):
    return preprocess(decode(data, draft))
