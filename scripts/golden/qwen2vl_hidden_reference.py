#!/usr/bin/env python3
"""Reference pooled hidden states for kadr's VLM embeddings (server/models/tests/golden_qwen2vl.rs).

Loads the tiny golden Qwen2-VL (../shared/golden/qwen2vl_tiny.safetensors: `weights.*` in the
hub layout, its config in qwen2vl_tiny.json) into transformers' own
Qwen2VLForConditionalGeneration through from_pretrained (so transformers maps the hub keys
itself), runs two prompts one at a time, and writes, to
server/models/tests/data/qwen2vl_tiny_hidden_reference.json:

- `image`: the golden prompt (input.input_ids, input.pixel_values, input.image_grid_thw);
- `text`: a text-only prompt (ids 3..12 of the tiny vocabulary, no image);

for each: the ids, `hidden_states[-1]` (the decoder's output after its final norm) for every
position, its mean over the image tokens (`image_mean`, absent without an image) and over all
tokens (`prompt_mean`), and the largest difference of the logits from the golden file's (the
image prompt), so the reference is known to be the golden model.

    python3 -m venv ~/.cache/vlm-venv
    ~/.cache/vlm-venv/bin/pip install torch transformers==4.57.1 safetensors numpy
    ~/.cache/vlm-venv/bin/python scripts/golden/qwen2vl_hidden_reference.py [SHARED] [OUT]
"""

import json
import sys
import tempfile
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

root = Path(__file__).resolve().parents[2]
shared = Path(sys.argv[1]) if len(sys.argv) > 1 else root.parent / "shared"
out = (
    Path(sys.argv[2])
    if len(sys.argv) > 2
    else root / "server/models/tests/data/qwen2vl_tiny_hidden_reference.json"
)

golden = shared / "golden"
tensors = load_file(str(golden / "qwen2vl_tiny.safetensors"))
cfg_json = json.loads((golden / "qwen2vl_tiny.json").read_text())["config_json_like_hub"]

with tempfile.TemporaryDirectory() as d:
    weights = {k[len("weights."):]: v for k, v in tensors.items() if k.startswith("weights.")}
    save_file(weights, str(Path(d) / "model.safetensors"), metadata={"format": "pt"})
    Qwen2VLConfig(**cfg_json).save_pretrained(d)
    model = Qwen2VLForConditionalGeneration.from_pretrained(d, dtype=torch.float32)
model.eval()
image_token = cfg_json["image_token_id"]


def run(ids, pixel_values=None, grid=None):
    ids = torch.as_tensor(ids, dtype=torch.long).reshape(1, -1)
    kw = {}
    if pixel_values is not None:
        kw = {"pixel_values": pixel_values, "image_grid_thw": grid}
    with torch.inference_mode():
        o = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True, **kw)
    h = o.hidden_states[-1][0].double()
    row = {
        "input_ids": ids[0].tolist(),
        "last_hidden": h.tolist(),
        "prompt_mean": h.mean(0).tolist(),
    }
    is_img = ids[0] == image_token
    if is_img.any():
        row["image_mean"] = h[is_img].mean(0).tolist()
    return row, o.logits[0]


image, logits = run(
    tensors["input.input_ids"],
    tensors["input.pixel_values"].float(),
    tensors["input.image_grid_thw"].long(),
)
image["logits_max_abs_diff_vs_golden"] = float((logits - tensors["out.logits"][0]).abs().max())
assert image["logits_max_abs_diff_vs_golden"] < 1e-4, image["logits_max_abs_diff_vs_golden"]
text, _ = run(list(range(3, 13)))

out.write_text(
    json.dumps(
        {
            "made_with": {"transformers": transformers.__version__, "torch": torch.__version__},
            "model": "shared/golden/qwen2vl_tiny",
            "image": image,
            "text": text,
        },
        indent=1,
    )
    + "\n"
)
print(f"wrote {out}: logits vs golden {image['logits_max_abs_diff_vs_golden']:.2e}")
