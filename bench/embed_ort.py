#!/usr/bin/env python3
"""ONNX Runtime side of the CPU embedding benchmark (bench/embed.sh): the peer a self-hosted user
would pick (Immich's machine-learning service runs ONNX Runtime).

The same timm model and weights as bench/embed.py, exported with `torch.onnx.export` (opset 17,
dynamic batch) to pooled pre-logits features, what kadr embeds. The session is what a user would
configure: CPUExecutionProvider, ORT_ENABLE_ALL, `--threads` intra-op threads (all cores by
default). Before timing, the exported model's features on the check file's inputs are compared
with the timm features stored in it (bench/embed.py --write-check); a mismatch stops the run.
Prints one JSON line per batch size, and one for the check.

  embed_ort.py --model M --weights W.safetensors --check C.safetensors [--batches 1,32]
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort
import safetensors.torch
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from embed import features, model  # noqa: E402


class Features(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return features(self.m, x)


def export(name, weights, path, side):
    m = Features(model(name, weights))
    x = torch.randn(1, 3, side, side)
    with torch.inference_mode():
        torch.onnx.export(m, x, path, input_names=["x"], output_names=["features"],
                          dynamic_axes={"x": {0: "b"}, "features": {0: "b"}}, opset_version=17,
                          dynamo=False)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--check", required=True)
    p.add_argument("--onnx", help="where the exported model goes [next to the check file]")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--side", type=int, default=224)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    a = p.parse_args()

    path = a.onnx or a.check.replace(".check.safetensors", "") + ".onnx"
    if not os.path.exists(path) or os.path.getmtime(path) < os.path.getmtime(a.weights):
        export(a.model, a.weights, path, a.side)
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    print(f"onnxruntime {ort.__version__}, {a.threads} intra-op threads, {a.model}", file=sys.stderr)

    # The exported model against timm's own features: the same numbers, or nothing is timed.
    ref = safetensors.torch.load_file(a.check)
    got = sess.run(None, {"x": ref["input"].numpy()})[0]
    want = ref["out.pre_logits"].numpy()
    cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    check = {"check": f"onnxruntime {a.model}", "max_abs_diff": float(np.abs(got - want).max()),
             "min_cosine": float(cos.min())}
    print(json.dumps(check))
    if check["min_cosine"] < 0.9999:
        sys.exit(f"ONNX Runtime's features differ from timm's: {check}")

    rng = np.random.default_rng(0)
    for b in [int(s) for s in a.batches.split(",")]:
        x = (rng.random((b, 3, a.side, a.side), dtype=np.float32) * 2 - 1)
        sess.run(None, {"x": x})
        n, t = 0, time.perf_counter()
        while n == 0 or time.perf_counter() - t < a.seconds:
            sess.run(None, {"x": x})
            n += 1
        dt = (time.perf_counter() - t) / n
        print(json.dumps({"impl": "onnxruntime", "model": a.model, "device": "cpu", "dtype": "f32",
                          "batch": b, "iters": n, "ms_per_batch": dt * 1e3, "ips": b / dt}))


if __name__ == "__main__":
    main()
