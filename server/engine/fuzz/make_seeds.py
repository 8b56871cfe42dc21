#!/usr/bin/env python3
"""Writes the decode_preprocess seed corpus (seeds/decode_preprocess/): one tiny file for each
format and variant that server/engine/src/decode.rs handles. Each stays under 4 KB so libFuzzer mutates
them quickly. Deterministic: rerunning rewrites the same bytes (given the same Pillow).

    python3 server/engine/fuzz/make_seeds.py      # needs Pillow with WebP support
"""

import io
import pathlib
import struct
import zlib

from PIL import Image

OUT = pathlib.Path(__file__).resolve().parent / "seeds" / "decode_preprocess"


def gradient(mode, w, h):
    """A small non-flat image, so the resize filter and colour conversions have work to do."""
    img = Image.new("RGB", (w, h))
    img.putdata([((x * 255) // max(w - 1, 1), (y * 255) // max(h - 1, 1), ((x + y) * 40) % 256)
                 for y in range(h) for x in range(w)])
    if mode == "RGBA":
        img = img.convert("RGBA")
        img.putalpha(Image.linear_gradient("L").resize((w, h)))
    elif mode != "RGB":
        img = img.convert(mode)
    return img


def save(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def exif_orientation(value):
    """A minimal little-endian EXIF block holding only Orientation (tag 0x0112)."""
    ifd = struct.pack("<HHHIHH", 1, 0x0112, 3, 1, value, 0) + struct.pack("<I", 0)
    return b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd


def grey16():
    img = Image.new("I;16", (6, 5))
    img.putdata([(x * 13000 + y * 2000) % 65536 for y in range(5) for x in range(6)])
    return save(img, "PNG")


def rgb16(w=5, h=4):
    """A 16-bit-per-channel RGB PNG, written by hand (Pillow has no 16-bit RGB writer)."""
    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    rows = b"".join(
        b"\x00" + b"".join(struct.pack(">HHH", x * 16000, y * 21000, (x * y * 5000) % 65536)
                           for x in range(w))
        for y in range(h))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows, 9))
            + chunk(b"IEND", b""))


def seeds():
    rgb = gradient("RGB", 8, 6)
    yield "rgb.png", save(rgb, "PNG")
    yield "rgba.png", save(gradient("RGBA", 7, 9), "PNG")
    yield "rgb16.png", rgb16()
    yield "grey16.png", grey16()
    yield "palette.png", save(rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=8), "PNG")
    yield "grey.png", save(rgb.convert("L"), "PNG")
    yield "grey_alpha.png", save(gradient("RGBA", 5, 5).convert("LA"), "PNG")
    yield "interlaced.png", save(gradient("RGB", 9, 9), "PNG", interlace=1)

    jpg = gradient("RGB", 16, 12)
    yield "baseline.jpg", save(jpg, "JPEG", quality=80)
    yield "progressive.jpg", save(jpg, "JPEG", quality=80, progressive=True)
    yield "grey.jpg", save(jpg.convert("L"), "JPEG", quality=80)
    yield "cmyk.jpg", save(jpg.convert("CMYK"), "JPEG", quality=80)
    yield "subsampled420.jpg", save(gradient("RGB", 17, 11), "JPEG", quality=70, subsampling=2)
    # 12×8 stored, tagged "rotate 90° CW": decodes upright as 8×12.
    yield "exif_orient6.jpg", save(gradient("RGB", 12, 8), "JPEG", quality=80,
                                   exif=exif_orientation(6))

    frames = [gradient("RGB", 6, 4).convert("P", palette=Image.Palette.ADAPTIVE, colors=4),
              gradient("RGB", 6, 4).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
              .convert("P", palette=Image.Palette.ADAPTIVE, colors=4)]
    yield "animated.gif", save(frames[0], "GIF", save_all=True, append_images=frames[1:],
                               duration=100, loop=0)
    yield "transparent.gif", save(frames[0], "GIF", transparency=0)

    webp = gradient("RGB", 10, 7)
    yield "lossy.webp", save(webp, "WEBP", quality=60)
    yield "lossless.webp", save(webp, "WEBP", lossless=True)
    yield "lossy_alpha.webp", save(gradient("RGBA", 6, 6), "WEBP", quality=60)

    yield "rgb24.bmp", save(gradient("RGB", 5, 3), "BMP")
    yield "palette8.bmp", save(gradient("RGB", 4, 4).convert("P", palette=Image.Palette.ADAPTIVE,
                                                                 colors=16), "BMP")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for name, data in seeds():
        assert len(data) < 4096, (name, len(data))
        (OUT / name).write_bytes(data)
        print(f"{len(data):5d}  {name}")


if __name__ == "__main__":
    main()
