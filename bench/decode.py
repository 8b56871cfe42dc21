#!/usr/bin/env python3
"""Large-photo decode for bench/decode.sh, in PIL.

make SRC DST [--megapixels 12] [--quality 90] [--limit N]
    Upscales every image of the dataset folder SRC (alpha composited onto white) to about
    12 megapixels, keeping its aspect ratio and its split/category folders, adds mild sensor-like
    noise (σ 8, so the files are the size of real phone photos, ~3 MB, not of smooth upscales) and
    writes it to DST as a quality-90 JPEG.

time DIR [--threads N]
    Decode + preprocess images/second of PIL without and with `Image.draft` over DIR's files
    (bench/pil_preprocess.py; a thread pool of N threads, all cores by default: PIL releases
    the GIL while it decodes and resizes). One JSON line per variant.
"""

import argparse
import json
import os
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from pil_preprocess import decode, decode_preprocess, read, scan


def make_one(job):
    src, dst, megapixels, quality = job
    img = decode(read(src))
    w, h = img.size
    s = (megapixels * 1e6 / (w * h)) ** 0.5
    big = img.resize((round(w * s), round(h * s)), Image.LANCZOS)
    rng = np.random.default_rng(zlib.crc32(os.path.basename(src).encode()))
    x = np.asarray(big, dtype=np.float32)
    x = np.clip(x + rng.normal(0.0, 8.0, x.shape), 0, 255).astype(np.uint8)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    Image.fromarray(x).save(dst, quality=quality)
    return os.path.getsize(dst)


def make(args):
    files = scan(args.src)[: args.limit or None]
    jobs = []
    for f in files:
        rel = os.path.splitext(os.path.relpath(f, args.src))[0] + ".jpg"
        jobs.append((f, os.path.join(args.dst, rel), args.megapixels, args.quality))
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        sizes = list(pool.map(make_one, jobs))
    print(
        f"wrote {len(sizes)} JPEGs of ~{args.megapixels} MP to {args.dst}, "
        f"{sum(sizes) / len(sizes) / 1e6:.2f} MB on average",
        file=sys.stderr,
    )


def time_dir(args):
    files = scan(args.dir)
    threads = args.threads or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=threads) as pool:
        blobs = list(pool.map(read, files))
        for draft in (False, True):
            # One untimed image first (imports, first allocations).
            decode_preprocess(blobs[0], draft)
            t = time.perf_counter()
            checksum = 0.0
            for x in pool.map(lambda b: decode_preprocess(b, draft), blobs, chunksize=4):
                checksum += float(x[0, 0, 0])
            secs = time.perf_counter() - t
            print(
                json.dumps(
                    {
                        "impl": "PIL + draft" if draft else "PIL",
                        "images": len(blobs),
                        "threads": threads,
                        "ips": round(len(blobs) / secs, 2),
                        "seconds": round(secs, 3),
                        "pil": Image.__version__,
                    }
                ),
                flush=True,
            )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("src")
    m.add_argument("dst")
    m.add_argument("--megapixels", type=float, default=12.0)
    m.add_argument("--quality", type=int, default=90)
    m.add_argument("--limit", type=int, default=0)
    t = sub.add_parser("time")
    t.add_argument("dir")
    t.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    make(args) if args.cmd == "make" else time_dir(args)


if __name__ == "__main__":
    main()
