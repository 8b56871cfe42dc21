#!/usr/bin/env python3
"""Reference outputs of transformers' Qwen2-VL `smart_resize` for kadr's port (the unit test
`smart_resize_matches_hf` in server/models/src/vlm/processor.rs).

Every (height, width) pair of SIDES (tiny sides under the factor 28 included, extreme aspect
ratios included) under the class default budget (min 3136, max 1003520 pixels) and the hub
preprocessor_config.json's (max 12845056), with the resized (height, width), or null where HF
raises (an aspect ratio over 200). Written to server/models/tests/data/qwen2vl_smart_resize_reference.json.

    ~/.cache/qwen2vl-tok-venv/bin/pip install transformers==4.57.1 pillow==11.3.0
    ~/.cache/qwen2vl-tok-venv/bin/python scripts/golden/qwen2vl_smart_resize_reference.py [OUT]

transformers 4.54 and later (4.57.1 here; 5.24.0 gives the same file) no longer raise for a side
under the factor, as 4.45-4.52 did: such images are scaled up to the minimum pixel budget.
"""

import json
import sys
from pathlib import Path

import transformers

try:  # transformers 5: the PIL processor holds a copy that needs no torch
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
except ImportError:
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

ROOT = Path(__file__).resolve().parents[2]
out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "server/models/tests/data/qwen2vl_smart_resize_reference.json"

SIDES = [1, 2, 5, 10, 13, 14, 15, 20, 27, 28, 29, 41, 42, 43, 55, 56, 69, 70, 97, 98, 126, 199,
         200, 201, 224, 333, 448, 480, 640, 1000, 1080, 1600, 1920, 2000, 2001, 2800, 3000, 4000,
         5600, 10000]
BUDGETS = [(56 * 56, 28 * 28 * 1280), (3136, 12845056)]
FACTOR = 28

cases = []
for min_pixels, max_pixels in BUDGETS:
    for h in SIDES:
        for w in SIDES:
            try:
                r = list(smart_resize(h, w, FACTOR, min_pixels, max_pixels))
            except ValueError:
                r = None
            cases.append([h, w, min_pixels, max_pixels, r])

doc = {
    "note": "made by scripts/golden/qwen2vl_smart_resize_reference.py: [height, width, min_pixels, max_pixels, "
    "[resized height, width] or null where HF raises]",
    "transformers": transformers.__version__,
    "factor": FACTOR,
    "cases": cases,
}
out.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
print(f"{out}: {len(cases)} cases, {sum(c[4] is None for c in cases)} refused")
