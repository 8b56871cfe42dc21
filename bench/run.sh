#!/usr/bin/env bash
# Pipeline throughput: kadr against the same pipeline in Python (PIL + timm + faiss), measured
# in the same run on the same CPU. Indexes the Tux Paint 8-category set (275 images) and 10,000
# Fashion-MNIST test images, and prints images/second for decode+preprocess, embed and the whole
# pipeline, with the ratio kadr / python.
#
# Environment:
#   BENCH_PROFILE  dev (default): `cargo run --example bench_pipeline` on the dev profile, which
#                  reuses the dev build of FAISS (dependencies and kadr's kernels are at opt-level 3; debug
#                  assertions stay on); release: the same example with `--release` (a second
#                  FAISS build from source, ~15 minutes the first time).
#   BENCH_DATA     comma-separated dataset folders [data/tuxpaint8,data/fashion10k]; the two
#                  defaults are built with `kadr make-dataset` when missing.
#   MODEL_PATH     EfficientNet-Lite0 safetensors [models/tf_efficientnet_lite0/model.safetensors,
#                  else the shared folder's copy; scripts/setup.sh writes it].
#   BENCH_VENV     Python virtual environment [.cache/bench-venv, created with
#                  `pip install torch timm faiss-cpu pillow numpy safetensors` when absent].
#   MAX_BATCH_SIZE images per forward pass [32]; BENCH_EMBED_N images timed in the embed-only
#                  stage [512]; BENCH_LIMIT use only the first N images of each set [all].
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '== %s\n' "$*" >&2; }

profile=${BENCH_PROFILE:-dev}
data=${BENCH_DATA:-data/tuxpaint8,data/fashion10k}
export MAX_BATCH_SIZE=${MAX_BATCH_SIZE:-32}
export BENCH_EMBED_N=${BENCH_EMBED_N:-512}
export BENCH_LIMIT=${BENCH_LIMIT:-}

# --- weights ---------------------------------------------------------------------------------
weights=${MODEL_PATH:-models/tf_efficientnet_lite0/model.safetensors}
if [ ! -f "$weights" ] && [ -z "${MODEL_PATH:-}" ]; then
  shared=${KADR_SHARED:-../shared}
  [ -f "$shared/models/tf_efficientnet_lite0/model.safetensors" ] &&
    weights=$shared/models/tf_efficientnet_lite0/model.safetensors
fi
[ -f "$weights" ] || { echo "no weights at $weights: run scripts/setup.sh or set MODEL_PATH" >&2; exit 1; }
export MODEL_PATH=$(realpath "$weights")

# --- Python environment ----------------------------------------------------------------------
venv=${BENCH_VENV:-.cache/bench-venv}
if ! "$venv/bin/python" -c 'import torch, timm, faiss, PIL, numpy, safetensors' 2>/dev/null; then
  log "creating $venv (torch, timm, faiss-cpu, pillow, numpy, safetensors)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet torch timm faiss-cpu pillow numpy safetensors
fi

# --- datasets --------------------------------------------------------------------------------
log "cargo build -p kadr"
cargo build -p kadr
if [ -z "${BENCH_DATA:-}" ]; then
  [ -d data/tuxpaint8 ] || "${CARGO_TARGET_DIR:-target}/debug/kadr" make-dataset tuxpaint --out data/tuxpaint8
  [ -d data/fashion10k ] || "${CARGO_TARGET_DIR:-target}/debug/kadr" make-dataset fashion-mnist --per-class 1000 --out data/fashion10k
fi
IFS=, read -ra folders <<<"$data"

# --- runs --------------------------------------------------------------------------------------
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
log "load before the run: $(uptime)"
if [ "$profile" = release ]; then
  log "kadr: cargo run --release -p kadr-engine --example bench_pipeline (release profile)"
  BENCH_DATA=$data cargo run -q --release -p kadr-engine --example bench_pipeline | tee "$out/kadr.jsonl"
else
  log "kadr: cargo run -p kadr-engine --example bench_pipeline (dev profile: kernels at opt-level 3, debug assertions on)"
  BENCH_DATA=$data cargo run -q -p kadr-engine --example bench_pipeline | tee "$out/kadr.jsonl"
fi
log "python: bench/python_pipeline.py ($venv)"
"$venv/bin/python" bench/python_pipeline.py --weights "$MODEL_PATH" "${folders[@]}" | tee "$out/python.jsonl"
log "load after the run: $(uptime)"

# --- table -------------------------------------------------------------------------------------
python3 - "$out/kadr.jsonl" "$out/python.jsonl" "$profile" <<'PY'
import json, sys
def load(p):
    return {r["set"]: r for r in (json.loads(l) for l in open(p) if l.startswith("{"))}
kadr, py, profile = load(sys.argv[1]), load(sys.argv[2]), sys.argv[3]
import os
limit = os.environ.get("BENCH_LIMIT") or "all"
print(f"\nimages/second (kadr {profile} profile; ratio = kadr / python, >1 means kadr is faster;"
      f" at most {limit} images per set; embed stage: first {os.environ['BENCH_EMBED_N']} images)")
print(f"{'set':<12} {'images':>7} {'stage':<9} {'kadr':>9} {'python':>9} {'ratio':>7}")
for s, k in kadr.items():
    p = py.get(s)
    for stage in ("decode", "embed", "pipeline"):
        a = k[f"{stage}_ips"]
        b = p[f"{stage}_ips"] if p else float("nan")
        n = k["embed_images"] if stage == "embed" else k["images"]
        print(f"{s:<12} {n:>7} {stage:<9} {a:>9.1f} {b:>9.1f} {a / b:>7.2f}")
PY
