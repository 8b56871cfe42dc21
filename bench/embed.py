#!/usr/bin/env python3
"""PyTorch + timm side of the embedding benchmark (bench/embed.sh, bench/gpu/run.sh).

Eager timm, channels_last, inference_mode; fp32 on CPU, fp16 or bf16 autocast on GPU. Times the
forward pass to pooled pre-logits features (`forward_head(forward_features(x), pre_logits=True)`,
what kadr embeds) on a batch already on the device and prints one JSON line per batch size.

  embed.py --model convnext_tiny --make-weights W.safetensors   # seeded random timm weights
  embed.py --model M --weights W.safetensors --write-check C.safetensors   # reference features
  embed.py --model M --weights W.safetensors [--device cuda] [--dtype f16] [--batches 1,32]
"""

import argparse
import json
import sys
import time

import safetensors.torch
import timm
import torch


def model(name, weights):
    m = timm.create_model(name, pretrained=False)
    if weights:
        state = safetensors.torch.load_file(weights)
        m.load_state_dict(state, strict=True)
    return m.eval()


def features(m, x):
    return m.forward_head(m.forward_features(x), pre_logits=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--weights")
    p.add_argument("--make-weights")
    p.add_argument("--write-check")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="f32", choices=["f32", "f16", "bf16"])
    p.add_argument("--batches", default="1,32")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--side", type=int, default=224)
    a = p.parse_args()
    torch.manual_seed(0)

    if a.make_weights:
        m = model(a.model, None)
        # timm's init leaves biases and layer-scale at constants; perturb every tensor a little
        # so a wrong weight layout cannot hide behind symmetric values.
        state = {k: (v + 0.02 * torch.randn_like(v)).contiguous() for k, v in m.state_dict().items()
                 if v.is_floating_point()}
        safetensors.torch.save_file(state, a.make_weights)
        print(f"wrote {a.make_weights}", file=sys.stderr)
        return

    dev = torch.device(a.device)
    m = model(a.model, a.weights).to(dev).to(memory_format=torch.channels_last)
    if a.write_check:
        x = torch.randn(4, 3, a.side, a.side).clamp(-2.5, 2.5)
        with torch.inference_mode():
            out = features(m, x.to(dev).to(memory_format=torch.channels_last)).float().cpu()
        safetensors.torch.save_file({"input": x.contiguous(), "out.pre_logits": out.contiguous()},
                                    a.write_check)
        print(f"wrote {a.write_check}", file=sys.stderr)
        return

    dtype = {"f32": None, "f16": torch.float16, "bf16": torch.bfloat16}[a.dtype]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    print(f"torch {torch.__version__} timm {timm.__version__}, {torch.get_num_threads()} threads, "
          f"{a.model} on {a.device} {a.dtype}", file=sys.stderr)
    for b in [int(s) for s in a.batches.split(",")]:
        x = (torch.rand(b, 3, a.side, a.side) * 2 - 1).to(dev).to(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            features(m, x)
            sync()
            n, t = 0, time.perf_counter()
            while n == 0 or time.perf_counter() - t < a.seconds:
                features(m, x)
                sync()
                n += 1
            dt = (time.perf_counter() - t) / n
        print(json.dumps({"impl": "pytorch", "model": a.model, "device": a.device, "dtype": a.dtype,
                          "batch": b, "iters": n, "ms_per_batch": dt * 1e3, "ips": b / dt}))


if __name__ == "__main__":
    main()
