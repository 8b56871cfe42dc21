#!/usr/bin/env python3
"""The reference pipeline in Python, timed like server/benches/pipeline.rs.

bench/pil_preprocess.py's PIL decode + preprocess (JPEGs reduced with `Image.draft` unless
--no-draft), timm tf_efficientnet_lite0
(fp32, eval, channels_last, inference_mode) pooled pre-logits, L2-normalised; faiss IndexFlatIP.

Prints one JSON line per dataset folder:
{"impl": "python", "set": ..., "images": N, "decode_ips": ..., "embed_ips": ..., "pipeline_ips": ...}

Usage: python_pipeline.py --weights model.safetensors [--batch 32] [--embed-n 512] [--limit N]
       [--no-draft] DIR...
"""

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np
import safetensors.torch
import timm
import torch
from PIL import Image

from pil_preprocess import decode_preprocess as _decode_preprocess
from pil_preprocess import read, scan

DRAFT = True


def decode_preprocess(data):
    return _decode_preprocess(data, DRAFT)


def load_model(weights):
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    model.load_state_dict(safetensors.torch.load_file(weights), strict=True)
    model.eval()
    return model.to(memory_format=torch.channels_last)


def embed(model, batch_np):
    """(B, 3, 224, 224) float32 → (B, 1280) L2-normalised float32."""
    with torch.inference_mode():
        x = torch.from_numpy(batch_np).contiguous(memory_format=torch.channels_last)
        f = model.forward_head(model.forward_features(x), pre_logits=True)
        f = torch.nn.functional.normalize(f, dim=1, eps=1e-12)
    return f.numpy()


def bench_folder(folder, model, pool, batch, embed_n, limit):
    files = scan(folder)
    if limit:
        files = files[:limit]
    n = len(files)
    if n == 0:
        raise SystemExit(f"{folder}: no images")

    # Untimed: the file bytes in memory.
    blobs = list(pool.map(read, files))

    # 1. Decode + preprocess on a thread pool of all cores (PIL releases the GIL while it
    #    decodes and resizes). Results are dropped as they come, like the Rust side.
    t = time.perf_counter()
    checksum = 0.0
    for x in pool.map(decode_preprocess, blobs, chunksize=8):
        checksum += float(x[0, 0, 0])
    decode_s = time.perf_counter() - t

    # 2. Embed preprocessed data, `batch` at a time, after one warm-up batch.
    m = min(embed_n, n)
    data = np.stack(list(pool.map(decode_preprocess, blobs[:m])))
    embed(model, data[: min(batch, m)])
    t = time.perf_counter()
    vecs = [embed(model, data[i : i + batch]) for i in range(0, m, batch)]
    embed_s = time.perf_counter() - t
    assert sum(len(v) for v in vecs) == m
    del data, blobs

    # 3. The whole pipeline, a batch at a time: read, decode + preprocess, embed, add to faiss.
    index = faiss.IndexFlatIP(1280)
    t = time.perf_counter()
    for i in range(0, n, batch):
        chunk = files[i : i + batch]
        raw = list(pool.map(read, chunk))
        x = np.stack(list(pool.map(decode_preprocess, raw)))
        index.add(embed(model, x))
    pipeline_s = time.perf_counter() - t
    assert index.ntotal == n

    return {
        "impl": "python",
        "set": os.path.basename(os.path.normpath(folder)),
        "images": n,
        "embed_images": m,
        "batch": batch,
        "threads": torch.get_num_threads(),
        "decode_ips": round(n / decode_s, 1),
        "embed_ips": round(m / embed_s, 1),
        "pipeline_ips": round(n / pipeline_s, 1),
        "decode_s": decode_s,
        "embed_s": embed_s,
        "pipeline_s": pipeline_s,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--weights", required=True, help="tf_efficientnet_lite0 safetensors (timm key names)")
    ap.add_argument("--batch", type=int, default=int(os.environ.get("MAX_BATCH_SIZE") or 32))
    ap.add_argument("--embed-n", type=int, default=int(os.environ.get("BENCH_EMBED_N") or 512))
    ap.add_argument("--limit", type=int, default=int(os.environ.get("BENCH_LIMIT") or 0))
    ap.add_argument("--no-draft", action="store_true", help="decode JPEGs at full size")
    args = ap.parse_args()
    global DRAFT
    DRAFT = not args.no_draft

    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    faiss.omp_set_num_threads(cores)
    model = load_model(args.weights)
    print(
        f"python pipeline bench: torch {torch.__version__}, timm {timm.__version__}, "
        f"faiss {faiss.__version__}, PIL {Image.__version__}, {cores} threads, batch {args.batch}, "
        f"JPEG draft {'on' if DRAFT else 'off'}",
        file=sys.stderr,
    )
    with ThreadPoolExecutor(max_workers=cores) as pool:
        for folder in args.folders:
            print(json.dumps(bench_folder(folder, model, pool, args.batch, args.embed_n, args.limit)), flush=True)


if __name__ == "__main__":
    main()
