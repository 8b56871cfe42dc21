#!/usr/bin/env python3
"""Reference token ids for kadr's Qwen2-VL tokenizer (server/models/tests/qwen2vl_tokenizer.rs).

Loads the real Qwen/Qwen2-VL-2B-Instruct tokenizer files from a local folder that has no
tokenizer.json (../shared/qwen2vl-2b-instruct: vocab.json, merges.txt, added_tokens.json,
tokenizer_config.json, ...), so transformers builds the fast tokenizer the way kadr must: from
vocab.json + merges.txt + the added tokens (convert_slow_tokenizer.Qwen2Converter). No hub is
asked for anything. It writes, to server/models/tests/data/qwen2vl_tokenizer_reference.json:

- the chat prompts the port builds (the caption prompt and the zero-shot prompt, one image
  each), rendered by the folder's own chat template (apply_chat_template), their ids, and the
  ids after Qwen2VLProcessor's expansion of <|image_pad|> for an image of grid (1, 16, 20);
- every category name of the two datasets kadr builds (Tux Paint-8 from the manifest in
  server/engine/assets/, Fashion-MNIST from FASHION_MNIST_CLASSES in dataset.rs), which the
  port tokenizes as zero-shot answers;
- tricky strings: accents composed and decomposed (NFC), CJK, emoji, numbers, contractions,
  runs of spaces, tabs and newlines, special tokens written in the text, near-special text;
- for each: the ids, the decoded text with and without special tokens;
- the backend tokenizer's pipeline (normaliser, pre-tokenizer, post-processor, decoder, model
  options, added tokens) without the vocabulary and merges.

The slow tokenizer (Qwen2Tokenizer, pure Python) must give the same ids as the fast one, or
the script stops.

    python3 -m venv ~/.cache/qwen2vl-tok-venv
    ~/.cache/qwen2vl-tok-venv/bin/pip install tokenizers==0.22.1 transformers==4.57.1 jinja2==3.1.6
    ~/.cache/qwen2vl-tok-venv/bin/python scripts/golden/qwen2vl_tokenizer_reference.py [DIR] [OUT]

The committed file was made with those versions; transformers 5.24.0 (tokenizers 0.23.3), run
the same way, gives the same ids and decoded texts for every string.
"""

import json
import re
import sys
from pathlib import Path

import tokenizers
import transformers
from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]
model_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared/qwen2vl-2b-instruct"
out = (
    Path(sys.argv[2])
    if len(sys.argv) > 2
    else ROOT / "server/models/tests/data/qwen2vl_tokenizer_reference.json"
)
assert not (model_dir / "tokenizer.json").exists(), "the point is to build it from vocab + merges"

# The port's prompts (server/models/src/vlm/processor.rs, CAPTION_PROMPT and ZERO_SHOT_PROMPT);
# the Rust test checks that they are still these.
CAPTION_PROMPT = "Describe this image in one sentence."
ZERO_SHOT_PROMPT = "What is in this image? Answer with one category."
GRID = (1, 16, 20)  # an image of 224 x 280 px: 320 patches, 80 merged tokens
MERGE = 2

manifest = ROOT / "server/engine/assets/tuxpaint_8cat_manifest.tsv"
tuxpaint = sorted(
    {line.split("\t")[0].rsplit("/", 1)[-1] for line in manifest.read_text().splitlines()[1:] if line.strip()}
)
dataset_rs = (ROOT / "server/engine/src/dataset.rs").read_text()
fashion = re.findall(r'"([^"]+)"', re.search(r"FASHION_MNIST_CLASSES[^=]*=\s*\[(.*?)\];", dataset_rs, re.S).group(1))
assert len(tuxpaint) == 8 and len(fashion) == 10, (tuxpaint, fashion)

tricky = [
    "",
    "a cat",
    " a cat",
    "A photo of a red car.",
    "Crème brûlée und Käsespätzle — naïve café",
    "Cafe\u0301 cre\u0300me  A\u030a \u212b",  # decomposed accents and the angstrom sign: NFC composes them
    "ﬁsh ＡＢＣ１２３ ①",  # compatibility forms NFC keeps (NFKC would not)
    "東京の寿司 北京烤鸭 한국어 문장 Привет мир مرحبا नमस्ते",
    "🍣 🐈‍⬛ 👩‍👩‍👧‍👦 🇫🇷 ❤️",
    "3.14159 12345678 2026-12-02 ٣٤٥ ½",
    "It's, they're, WE'LL, I'D, you've, she'S",
    "multiple   spaces    here  ",
    "tabs\tand\nnewlines\r\n\n  indented\n\n\nend   ",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|><|vision_start|><|image_pad|><|vision_end|><|video_pad|>",
    "<|im_start|<|im_end |>|im_end|> <|unknown|>",
    "snake_case and kebab-case, e-mail: someone@example.com (really)!?",
    "\u00a0non-breaking\u2009thin\u200bzero-width",
]

tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
# transformers 4 names it Qwen2TokenizerFast; 5 has one Qwen2Tokenizer on the tokenizers backend.
assert type(tok).__name__ in ("Qwen2TokenizerFast", "Qwen2Tokenizer") and tok.is_fast, type(tok)
slow = None
if int(transformers.__version__.split(".")[0]) < 5:
    from transformers import Qwen2Tokenizer

    slow = Qwen2Tokenizer.from_pretrained(str(model_dir), local_files_only=True)


def expand_image_pads(text, grid):
    # Qwen2VLProcessor.__call__: each <|image_pad|> becomes grid.prod() // merge**2 of them.
    n = grid[0] * grid[1] * grid[2] // (MERGE * MERGE)
    return text.replace("<|image_pad|>", "<|placeholder|>" * n, 1).replace("<|placeholder|>", "<|image_pad|>")


def entry(text):
    ids = tok(text)["input_ids"]
    if slow is not None:
        assert slow(text)["input_ids"] == ids, f"slow and fast tokenizers differ on {text!r}"
    return {
        "text": text,
        "ids": ids,
        "decoded": tok.decode(ids, skip_special_tokens=False),
        "decoded_skip_special": tok.decode(ids, skip_special_tokens=True),
    }


prompts = []
for name, user in [("caption", CAPTION_PROMPT), ("zero_shot", ZERO_SHOT_PROMPT)]:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user}]}]
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    e = entry(rendered)
    e.update(
        name=name,
        user_text=user,
        grid_thw=list(GRID),
        expanded_ids=tok(expand_image_pads(rendered, GRID))["input_ids"],
    )
    prompts.append(e)

pipeline = json.loads(tok.backend_tokenizer.to_str())
pipeline["model"].pop("vocab")
pipeline["model"].pop("merges")

doc = {
    "note": "made by scripts/golden/qwen2vl_tokenizer_reference.py from the files in "
    "../shared/qwen2vl-2b-instruct (no tokenizer.json): HF's fast tokenizer built from vocab.json + merges.txt",
    "versions": {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
    "vocab_size": len(tok),
    "pad_token": tok.pad_token,
    "pad_token_id": tok.pad_token_id,
    "eos_token_id": tok.eos_token_id,
    "bos_token_id": tok.bos_token_id,
    "prompts": prompts,
    "categories": {"tuxpaint8": tuxpaint, "fashion_mnist": fashion},
    "strings": [entry(s) for s in tuxpaint + fashion + tricky],
    "pipeline": pipeline,
}
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n")
print(f"{out}: {len(doc['strings'])} strings, {len(prompts)} prompts, vocab {len(tok)}")
