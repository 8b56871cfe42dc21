#!/usr/bin/env python3
"""transformers side of the Qwen2-VL caption benchmark (bench/gpu/qwen2vl.sh).

`prepare` builds `Qwen2VLForConditionalGeneration` from a hub config (the real 2B one or the tiny
golden one) with seeded random weights (or loads given ones), writes them as safetensors in the
hub key layout (`model.*`, `visual.*`, `lm_head.*` unless tied) so kadr loads the same weights,
and writes a check file kadr reads: 3 synthetic images at the bench size preprocessed by
transformers' own `Qwen2VLImageProcessor` (`input.pixel_values`, `input.image_grid_thw`), the
prompt ids with every image expanded to its pad run (`input.input_ids`, [3, L], no padding: the
images have one size), the logits at the last position (`out.logits_last`, [3, V]; every
position as `out.logits` when small) and the greedy tokens (`out.tokens`, [3, N]), all from a
forward / `generate` in `--check-dtype` (f32 by default).

`bench` loads those weights in `--dtype` and times caption generation: preprocessing of `batch`
synthetic images plus `generate` (greedy, exactly `--new-tokens` tokens: eos is disabled, so it
never stops early and tokens equal kadr's with `ignore_eos`), one JSON line per batch size. With
`--check` and a dtype other than the check's it first reports how far its own logits and tokens
drift from the f32 reference on the check inputs (kadr reports the same).

  qwen2vl.py prepare --config CFG --write-weights W.safetensors --write-check C.safetensors
      [--weights IN.safetensors] [--tokenizer DIR] [--size 448] [--new-tokens 48] [--device cuda]
  qwen2vl.py bench --config CFG --weights W.safetensors [--check C.safetensors]
      [--device cuda] [--dtype bf16] [--batches 1,32] [--new-tokens 48] [--size 448]
      [--min-seconds 1]

Timing, as in bench_caption: preprocessing, prefill (generate with 1 new token) and the whole
generate each run once and again until --min-seconds have passed; medians are reported.

Prompt without `--tokenizer`: the ids kadr's bench_caption uses, 20 text ids, <|vision_start|>,
the image pads, <|vision_end|>, 10 text ids (only their number matters for random weights; the
tiny model has a vocabulary of 256). With `--tokenizer DIR` (a model folder): the caption chat
prompt rendered and tokenized by transformers.
"""

import argparse
import json
import re
import sys
import time

try:
    import numpy as np
    import safetensors.torch
    import torch
    import transformers
    from PIL import Image
    from transformers import GenerationConfig, Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
except ImportError as e:  # transformers is not always on the GPU machine
    print(f"qwen2vl.py: missing Python package ({e}); it needs torch, transformers (4.57 tested), "
          "safetensors, numpy and pillow", file=sys.stderr)
    sys.exit(3)

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
CHAT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>Describe this image in one sentence."
        "<|im_end|>\n<|im_start|>assistant\n")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def load_config(path):
    d = json.load(open(path))
    d = d.get("config_json_like_hub", d)  # the golden json wraps the hub config
    # The hub config says `"torch_dtype": "bfloat16"`; transformers builds the text decoder
    # (a sub-model made from text_config) in that dtype whatever the default dtype is, so an
    # "f32" model would run its decoder in bf16. The dtype is chosen by `build` alone.
    d = {k: v for k, v in d.items() if k not in ("torch_dtype", "dtype")}
    return d, Qwen2VLConfig(**d)


def synthetic_image(i, size):
    """The pattern of bench_caption.rs's `synthetic_image`, so both sides see the same images."""
    y, x = np.mgrid[0:size, 0:size].astype(np.uint32)
    k = i * 37
    rgb = np.stack([(x + k) % 256, (y * 2 + k) % 256, ((x ^ y) + k) % 256], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def image_processor(cfg):
    v = cfg.vision_config
    return Qwen2VLImageProcessor(patch_size=v.patch_size, temporal_patch_size=v.temporal_patch_size,
                                 merge_size=v.spatial_merge_size)


def hub_key(k):
    """transformers 4.57 state-dict key -> hub checkpoint key (what kadr and the hub files use)."""
    if k.startswith("model.language_model."):
        return "model." + k[len("model.language_model."):]
    if k.startswith("model.visual."):
        return k[len("model."):]
    return k


def hf_key(k):
    if k.startswith("visual."):
        return "model." + k
    if re.match(r"model\.(?!language_model\.|visual\.)", k):
        return "model.language_model." + k[len("model."):]
    return k


def build(cfg, device, dtype, seed, init_std=None):
    """The model on `device` in `dtype` (as `from_pretrained(torch_dtype=...)` builds it: the
    default dtype is set while constructing, so the rotary `inv_freq` buffers stay f32)."""
    torch.manual_seed(seed)
    if init_std is not None:  # the std of transformers' normal init of linears and embeddings
        cfg.initializer_range = init_std
        cfg.get_text_config().initializer_range = init_std
        cfg.vision_config.initializer_range = init_std
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            m = Qwen2VLForConditionalGeneration(cfg)
    finally:
        torch.set_default_dtype(old)
    m.eval()
    wrong = {str(p.dtype) for p in m.parameters() if p.dtype != dtype}
    if wrong:
        raise SystemExit(f"asked for {dtype}, transformers built parameters in {wrong}")
    # No eos: generate always makes max_new_tokens tokens, the same work and the same tokens
    # as kadr with `ignore_eos`. Set on the model's own generation config, because a config
    # passed to generate() has its unset fields filled from the model's (eos included).
    t = cfg.get_text_config()
    pad = t.pad_token_id if getattr(t, "pad_token_id", None) is not None else (t.eos_token_id or 0)
    if isinstance(pad, list):
        pad = pad[0]
    m.generation_config = GenerationConfig(do_sample=False, eos_token_id=None, pad_token_id=pad,
                                           bos_token_id=None)
    return m


def load_weights(m, path, prefix=""):
    state = safetensors.torch.load_file(path)
    state = {hf_key(k[len(prefix):]): v for k, v in state.items() if k.startswith(prefix)}
    missing, unexpected = m.load_state_dict(state, strict=False)
    tied = m.config.tie_word_embeddings
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise SystemExit(f"{path}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if tied:
        m.tie_weights()


def prompt_ids(cfg, n_img_tok, tokenizer_dir):
    t = cfg.get_text_config()
    if tokenizer_dir:
        tok = transformers.AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        ids = tok(CHAT, add_special_tokens=False)["input_ids"]
        i = ids.index(cfg.image_token_id)
        return ids[:i] + [cfg.image_token_id] * n_img_tok + ids[i + 1:]
    vocab = min(t.vocab_size, 200)
    text = lambda n, off: [(off + i) % vocab for i in range(n)]
    return (text(20, 10) + [cfg.vision_start_token_id] + [cfg.image_token_id] * n_img_tok
            + [cfg.vision_end_token_id] + text(10, 40))


def preprocess(proc, images, device):
    enc = proc(images=images, return_tensors="pt")
    return enc["pixel_values"].to(device), enc["image_grid_thw"].to(device)


def run(m, ids, pv, grid, new_tokens, sync):
    """Greedy generation of exactly `new_tokens` tokens; returns them [B, N]."""
    ids = ids.to(pv.device)
    out = m.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pv,
                     image_grid_thw=grid, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                     do_sample=False)
    sync()
    new = out[:, ids.shape[1]:]
    assert new.shape[1] == new_tokens, f"generate stopped after {new.shape[1]} of {new_tokens}"
    return new


def logits_and_tokens(m, ids, pv, grid, new_tokens, sync):
    with torch.inference_mode():
        dev = next(m.parameters()).device
        ids = ids.to(dev)
        logits = m(input_ids=ids, attention_mask=torch.ones_like(ids),
                   pixel_values=pv.to(dev, m.dtype), image_grid_thw=grid.to(dev)).logits.float()
        tokens = run(m, ids, pv.to(dev, m.dtype), grid.to(dev), new_tokens, sync)
    return logits.cpu(), tokens.cpu()


def compare(logits_last, tokens, ref_last, ref_tokens):
    eq = tokens == ref_tokens
    mism = [int((~row).nonzero()[0]) if (~row).any() else None for row in eq]
    return {
        "logits_max_abs_diff": float((logits_last - ref_last).abs().max()),
        "logits_max_abs_ref": float(ref_last.abs().max()),
        "argmax_equal": bool((logits_last.argmax(-1) == ref_last.argmax(-1)).all()),
        "tokens_equal": bool(eq.all()),
        "tokens_matching": f"{int(eq.sum())}/{eq.numel()}",
        "first_mismatch": mism,
    }


def prepare(a, d, cfg, dev, sync):
    dtype = DTYPES[a.check_dtype]
    t0 = time.perf_counter()
    m = build(cfg, dev, dtype, a.seed, a.init_std)
    if a.weights:
        load_weights(m, a.weights, a.weights_prefix)
        log(f"loaded {a.weights}")
    else:
        # transformers' init leaves norms at 1 and biases at 0: move every tensor a little so a
        # wrong weight layout cannot hide behind symmetric values.
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn_like(p) * a.perturb)
    wdt = DTYPES[a.weights_dtype]
    with torch.no_grad():
        for p in m.parameters():  # the values the file holds, in both frameworks
            p.copy_(p.to(wdt).to(p.dtype))
    if a.write_weights:
        tied = cfg.tie_word_embeddings
        state = {hub_key(k): v.detach().to(wdt).contiguous().cpu() for k, v in m.state_dict().items()
                 if not (tied and k == "lm_head.weight")}
        safetensors.torch.save_file(state, a.write_weights, metadata={"format": "pt"})
        n = sum(v.numel() for v in state.values())
        log(f"wrote {a.write_weights}: {len(state)} tensors, {n / 1e6:.1f} M parameters, "
            f"{a.weights_dtype} ({time.perf_counter() - t0:.1f}s)")

    proc = image_processor(cfg)
    images = [synthetic_image(i, a.size) for i in range(3)]
    pv, grid = preprocess(proc, images, "cpu")
    merge = cfg.vision_config.spatial_merge_size ** 2
    n_tok = [int(g.prod()) // merge for g in grid]
    assert len(set(n_tok)) == 1
    ids = torch.tensor([prompt_ids(cfg, n_tok[0], a.tokenizer)] * 3, dtype=torch.int64)
    logits, tokens = logits_and_tokens(m, ids, pv, grid, a.new_tokens, sync)
    out = {
        "input.pixel_values": pv.float().contiguous(),
        "input.image_grid_thw": grid.to(torch.int64).contiguous(),
        "input.input_ids": ids,
        "out.logits_last": logits[:, -1].contiguous(),
        "out.tokens": tokens.to(torch.int64).contiguous(),
    }
    if logits.numel() <= 4_000_000:
        out["out.logits"] = logits.contiguous()
    safetensors.torch.save_file(out, a.write_check, metadata={
        "size": str(a.size), "new_tokens": str(a.new_tokens), "dtype": a.check_dtype,
        "device": dev.type, "transformers": transformers.__version__})
    log(f"wrote {a.write_check}: ids {list(ids.shape)}, {n_tok[0]} image tokens, pixel_values "
        f"{list(pv.shape)}, tokens {tokens.tolist()}")
    print(json.dumps({"impl": "transformers", "reference": True, "dtype": a.check_dtype,
                      "device": dev.type, "prompt_len": ids.shape[1], "image_tokens": n_tok[0],
                      "logits_max_abs": float(logits[:, -1].abs().max()),
                      "tokens": tokens[0].tolist()}), flush=True)


def median_time(min_s, f):
    """Median seconds of `f`, run once and then again until `min_s` seconds have passed."""
    start, times = time.perf_counter(), []
    while not times or time.perf_counter() - start < min_s:
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def bench(a, d, cfg, dev, sync):
    dtype = DTYPES[a.dtype]
    t0 = time.perf_counter()
    m = build(cfg, dev, dtype, a.seed)
    load_weights(m, a.weights)
    sync()
    log(f"torch {torch.__version__} transformers {transformers.__version__}, "
        f"{torch.get_num_threads()} threads, {dev} {a.dtype}, attention "
        f"{m.config._attn_implementation}, built in {time.perf_counter() - t0:.1f}s")
    proc = image_processor(cfg)
    base_ids = None
    if a.check:
        c = safetensors.torch.load_file(a.check)
        base_ids = c["input.input_ids"][0]
        meta = safetensors.safe_open(a.check, "pt").metadata() or {}
        if meta.get("dtype") != a.dtype:
            logits, tokens = logits_and_tokens(m, c["input.input_ids"], c["input.pixel_values"],
                                               c["input.image_grid_thw"], c["out.tokens"].shape[1],
                                               sync)
            r = {"impl": "transformers", "drift": True, "dtype": a.dtype,
                 "reference_dtype": meta.get("dtype")}
            r.update(compare(logits[:, -1], tokens, c["out.logits_last"], c["out.tokens"]))
            print(json.dumps(r), flush=True)
    for b in [int(s) for s in a.batches.split(",")]:
        images = [synthetic_image(i, a.size) for i in range(b)]
        with torch.inference_mode():
            pv, grid = preprocess(proc, images[:1], dev)
            n_img = int(grid[0].prod()) // cfg.vision_config.spatial_merge_size ** 2
            ids1 = base_ids if base_ids is not None else torch.tensor(prompt_ids(cfg, n_img, None))
            if int((ids1 == cfg.image_token_id).sum()) != n_img:
                raise SystemExit(f"the check prompt has no room for {n_img} image tokens at {a.size} px")
            ids = ids1.unsqueeze(0).repeat(b, 1)
            # Warm-up at this batch size (kernels, allocator, cuBLAS heuristics).
            pvb, gridb = preprocess(proc, images, dev)
            run(m, ids, pvb.to(dtype), gridb, 2, sync)
            def prep_once():
                nonlocal pvb, gridb
                pvb, gridb = preprocess(proc, images, dev)
                pvb = pvb.to(dtype)
                sync()
            prep = median_time(a.min_seconds, prep_once)
            prefill = median_time(a.min_seconds, lambda: run(m, ids, pvb, gridb, 1, sync))
            total = median_time(a.min_seconds, lambda: run(m, ids, pvb, gridb, a.new_tokens, sync))
        decode = total - prefill  # decode_tok_s null when noise puts prefill above the total
        r = {"impl": "transformers", "dtype": a.dtype, "device": dev.type, "batch": b,
             "size": a.size, "new_tokens": a.new_tokens, "prompt_len": ids.shape[1],
             "image_tokens": n_img, "prep_s": prep, "prefill_s": prefill, "decode_s": decode,
             "generate_s": total, "decode_tok_s": b * (a.new_tokens - 1) / decode if decode > 0 else None,
             "ips": b / (prep + total), "generate_ips": b / total, "min_seconds": a.min_seconds}
        print(json.dumps(r), flush=True)
        log(f"batch {b:>3}: prep {prep:.3f}s prefill {prefill:.3f}s decode {decode:.3f}s "
            f"-> {r['ips']:.2f} img/s")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cmd", choices=["prepare", "bench"])
    p.add_argument("--config", required=True)
    p.add_argument("--weights", help="prepare: load these instead of random; bench: required")
    p.add_argument("--weights-prefix", default="", help="key prefix of --weights (golden: 'weights.')")
    p.add_argument("--write-weights")
    p.add_argument("--write-check")
    p.add_argument("--check")
    p.add_argument("--weights-dtype", default="f32", choices=["f32", "bf16"],
                   help="what the weight file holds; both frameworks use these values")
    p.add_argument("--check-dtype", default="f32", choices=list(DTYPES))
    p.add_argument("--perturb", type=float, default=0.02, help="noise added to every random tensor")
    p.add_argument("--init-std", type=float, help="std of the normal init (default: the config's "
                   "initializer_range, 0.02); the tiny model needs more for varied greedy tokens")
    p.add_argument("--tokenizer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="f32", choices=list(DTYPES))
    p.add_argument("--batches", default="1,32")
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--size", type=int, default=448)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--min-seconds", type=float, default=1.0,
                   help="each timed part runs until this long has passed; the median is reported")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    d, cfg = load_config(a.config)
    if a.cmd == "prepare":
        if not a.write_check:
            p.error("prepare needs --write-check")
        prepare(a, d, cfg, dev, sync)
    else:
        if not a.weights:
            p.error("bench needs --weights")
        bench(a, d, cfg, dev, sync)


if __name__ == "__main__":
    main()
