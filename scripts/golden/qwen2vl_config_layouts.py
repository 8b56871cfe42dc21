#!/usr/bin/env python3
"""config.json layouts of the real Qwen2-VL-2B-Instruct config for kadr's parser
(server/models/tests/qwen2vl_config.rs), written to server/models/tests/data/qwen2vl_configs/.

Run it with transformers 4.57.1 and again with 5.24.0; each run writes its own re-save:

- transformers-<version>.json: Qwen2VLConfig.from_pretrained(the hub config).save_pretrained()
  (4.57: flat text fields plus a text_config copy; 5.x: text fields only under text_config,
  rope_theta and mrope_section inside rope_parameters);
- with transformers 5 also vision-defaults-omitted.json (the hub config without the vision
  fields equal to Qwen2VLVisionConfig's defaults, as a diff-only save writes it) and
  class-defaults-transformers-<version>.json (what Qwen2VLConfig() holds: HF's defaults).

    ~/.cache/qwen2vl-tok-venv/bin/python scripts/golden/qwen2vl_config_layouts.py   # 4.57.1
    ~/.cache/qwen2vl-tf5-venv/bin/python scripts/golden/qwen2vl_config_layouts.py   # 5.24.0
"""

import json
import shutil
import sys
import tempfile
from pathlib import Path

import transformers
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLConfig, Qwen2VLVisionConfig

ROOT = Path(__file__).resolve().parents[2]
src = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared/qwen2vl-2b-instruct"
out = ROOT / "server/models/tests/data/qwen2vl_configs"
out.mkdir(parents=True, exist_ok=True)
version = transformers.__version__

with tempfile.TemporaryDirectory() as tmp:
    Qwen2VLConfig.from_pretrained(str(src)).save_pretrained(tmp)
    shutil.copy(Path(tmp) / "config.json", out / f"transformers-{version}.json")

if int(version.split(".")[0]) >= 5:
    hub = json.loads((src / "config.json").read_text())
    defaults = Qwen2VLVisionConfig().to_dict()
    vision = {
        k: v
        for k, v in hub["vision_config"].items()
        if not (k in defaults and defaults[k] == v) and not (k == "in_chans" and v == defaults["in_channels"])
    }
    (out / "vision-defaults-omitted.json").write_text(json.dumps(dict(hub, vision_config=vision), indent=2))
    c = Qwen2VLConfig().to_dict()
    text_keys = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "rms_norm_eps", "hidden_act", "rope_parameters", "eos_token_id", "pad_token_id"]
    vision_keys = ["depth", "embed_dim", "hidden_size", "hidden_act", "mlp_ratio", "num_heads", "in_channels",
                   "patch_size", "spatial_merge_size", "temporal_patch_size", "rope_parameters"]
    doc = {
        "note": f"Qwen2VLConfig() of transformers {version}: the text and vision defaults (selected fields)",
        "text": {k: c["text_config"][k] for k in text_keys},
        "tie_word_embeddings": c["tie_word_embeddings"],
        **{k: c[k] for k in ["image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"]},
        "vision": {k: c["vision_config"][k] for k in vision_keys},
    }
    (out / f"class-defaults-transformers-{version}.json").write_text(json.dumps(doc, indent=2))
print(f"wrote {out} with transformers {version}")
