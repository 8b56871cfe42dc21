#!/usr/bin/env bash
# Embedding throughput on this machine's CPU: kadr's backbones (server/engine/examples/bench_embed.rs)
# against ONNX Runtime (bench/embed_ort.py: the same timm model exported to ONNX,
# CPUExecutionProvider, ORT_ENABLE_ALL, one intra-op thread per core: what a self-hosted user
# would run) and PyTorch + timm eager (bench/embed.py: fp32, channels_last, inference_mode),
# all with the same weights: EfficientNet-Lite0 (the real ImageNet weights) and ConvNeXt-Tiny
# (seeded random timm weights), batch 1 and 32, in one run. All time the forward pass to pooled
# features on a batch already in memory; kadr also prints its whole embed call. Before timing,
# kadr's and ONNX Runtime's features are each checked against timm's on 4 images.
#
# Environment:
#   BENCH_SECONDS  timed seconds per model and batch size [5]
#   BENCH_BATCHES  batch sizes [1,32]
#   BENCH_MODELS   models [tf_efficientnet_lite0,convnext_tiny]
#   BENCH_VENV     Python environment with torch, timm, safetensors, onnx, onnxruntime
#                  [.cache/bench-venv, created with pip when absent]
#   MODEL_PATH     EfficientNet-Lite0 safetensors [models/tf_efficientnet_lite0/model.safetensors,
#                  else the shared folder's copy; scripts/setup.sh writes it]
# The GPU version of this comparison is bench/gpu/run.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '== %s\n' "$*" >&2; }
secs=${BENCH_SECONDS:-5}
batches=${BENCH_BATCHES:-1,32}
models=${BENCH_MODELS:-tf_efficientnet_lite0,convnext_tiny}
venv=${BENCH_VENV:-.cache/bench-venv}
work=.cache/bench
mkdir -p "$work"

effnet=${MODEL_PATH:-models/tf_efficientnet_lite0/model.safetensors}
if [ ! -f "$effnet" ] && [ -z "${MODEL_PATH:-}" ]; then
  effnet=${KADR_SHARED:-../shared}/models/tf_efficientnet_lite0/model.safetensors
fi

if ! "$venv/bin/python" -c 'import torch, timm, safetensors, onnx, onnxruntime' 2>/dev/null; then
  log "creating $venv (torch, timm, safetensors, onnx, onnxruntime)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet torch timm safetensors onnx onnxruntime
fi
py="$venv/bin/python"

log "cargo build -p kadr-engine --example bench_embed (dev profile: kernels at opt-level 3)"
cargo build -q -p kadr-engine --example bench_embed
bin=${CARGO_TARGET_DIR:-target}/debug/examples/bench_embed

out=$(mktemp)
trap 'rm -f "$out"' EXIT
log "load before the run: $(uptime)"
IFS=, read -ra list <<<"$models"
for m in "${list[@]}"; do
  case $m in
    tf_efficientnet_lite0) w=$effnet ;;
    *) w=$work/$m.safetensors
       [ -f "$w" ] || "$py" bench/embed.py --model "$m" --make-weights "$w" ;;
  esac
  [ -f "$w" ] || { echo "no weights for $m at $w (run scripts/setup.sh)" >&2; exit 1; }
  check=$work/$m.check.safetensors
  [ -f "$check" ] || "$py" bench/embed.py --model "$m" --weights "$w" --write-check "$check"
  log "kadr $m"
  "$bin" --model "$m" --weights "$w" --batches "$batches" --seconds "$secs" --check "$check" | tee -a "$out"
  log "onnxruntime $m"
  "$py" bench/embed_ort.py --model "$m" --weights "$w" --check "$check" --batches "$batches" \
    --seconds "$secs" | tee -a "$out"
  log "pytorch $m"
  "$py" bench/embed.py --model "$m" --weights "$w" --batches "$batches" --seconds "$secs" | tee -a "$out"
done
log "load after the run: $(uptime)"

python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
for r in rows:
    if "check" in r:
        print(f"check {r['check']}: max_abs_diff {r['max_abs_diff']:.3g}, min_cosine {r['min_cosine']:.7f}")
runs = {(r["impl"], r["model"], r["batch"]): r for r in rows if "batch" in r}
print(f"\nCPU embedding, images/second (forward pass to pooled features; ratios = kadr / peer)")
print(f"{'model':<22} {'batch':>5} {'kadr':>8} {'onnxrt':>8} {'pytorch':>8} {'vs ORT':>7} {'vs torch':>8} {'kadr embed call':>16}")
for (impl, m, b), k in runs.items():
    if impl != "kadr":
        continue
    peer = lambda name: runs[(name, m, b)]["ips"] if (name, m, b) in runs else float("nan")
    o, p = peer("onnxruntime"), peer("pytorch")
    print(f"{m:<22} {b:>5} {k['ips']:>8.2f} {o:>8.2f} {p:>8.2f} {k['ips'] / o:>7.2f} {k['ips'] / p:>8.2f} {k['embed_call_ips']:>16.2f}")
PY
