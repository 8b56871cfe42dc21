#!/usr/bin/env bash
# Large-photo decode: decode + preprocess images/second on ~12-megapixel JPEGs, kadr at full size,
# DCT-reduced as the engine does (shorter side kept at 2x the resize) and as far as the resize
# allows (PIL's draft rule), against PIL without and with `Image.draft` (PIL's DCT
# scaling) on the same cores in the same run, and the cosine of the reduced path's embeddings
# to the full-size path's (EfficientNet-Lite0).
#
# The JPEGs are the Tux Paint 8-category set upscaled to ~12 MP (aspect kept), with mild noise,
# at quality 90 (bench/decode.py make); built once into data/tuxpaint12mp.
#
# Environment:
#   BENCH_PROFILE  dev (default; dependencies at opt-level 3) or release.
#   BENCH_SRC      dataset folder the JPEGs are made from [data/tuxpaint8, built when missing].
#   BENCH_JPEGS    the JPEG folder [data/tuxpaint12mp]; BENCH_LIMIT first N images [all 275].
#   BENCH_ROUNDS   timed passes of the kadr side, best reported [3].
#   MODEL_PATH     EfficientNet-Lite0 safetensors [models/tf_efficientnet_lite0/model.safetensors].
#   BENCH_VENV     Python environment with pillow and numpy [.cache/bench-venv if it has them,
#                  else .cache/decode-venv, created with `pip install pillow numpy`].
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '== %s\n' "$*" >&2; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/kadr/target}
profile=${BENCH_PROFILE:-dev}
src=${BENCH_SRC:-data/tuxpaint8}
jpegs=${BENCH_JPEGS:-data/tuxpaint12mp}

weights=${MODEL_PATH:-models/tf_efficientnet_lite0/model.safetensors}
[ -f "$weights" ] || { echo "no weights at $weights: run scripts/setup.sh or set MODEL_PATH" >&2; exit 1; }
export MODEL_PATH=$(realpath "$weights")

venv=${BENCH_VENV:-.cache/bench-venv}
if ! "$venv/bin/python" -c 'import PIL, numpy' 2>/dev/null; then
  venv=.cache/decode-venv
  if ! "$venv/bin/python" -c 'import PIL, numpy' 2>/dev/null; then
    log "creating $venv (pillow, numpy)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet pillow numpy
  fi
fi

release=(); [ "$profile" = release ] && release=(--release)
log "cargo build -p kadr-engine --example bench_decode ${release[*]}"
cargo build -q "${release[@]}" -p kadr-engine --example bench_decode
if [ ! -d "$jpegs" ]; then
  if [ ! -d "$src" ]; then
    cargo build -q -p kadr
    "$CARGO_TARGET_DIR/debug/kadr" make-dataset tuxpaint --out "$src"
  fi
  log "making ~12 MP JPEGs from $src into $jpegs"
  "$venv/bin/python" bench/decode.py make "$src" "$jpegs" --limit "${BENCH_LIMIT:-0}"
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
log "load before the run: $(uptime)"
bin_dir=$CARGO_TARGET_DIR/$([ "$profile" = release ] && echo release || echo debug)/examples
"$bin_dir/bench_decode" "$jpegs" | tee "$out/kadr.jsonl"
"$venv/bin/python" bench/decode.py time "$jpegs" | tee "$out/pil.jsonl"
log "load after the run: $(uptime)"

python3 - "$out/kadr.jsonl" "$out/pil.jsonl" "$profile" <<'PY'
import json, sys
rows = [json.loads(l) for p in sys.argv[1:3] for l in open(p) if l.startswith("{")]
by = {r["impl"]: r for r in rows}
cos = by.pop("cosine engine vs full-size")
cos2 = by.pop("cosine to-the-resize vs full-size")
base = by["PIL + draft"]["ips"]
plain = by["PIL"]["ips"]
print(f"\ndecode + preprocess of {cos['images']} ~12 MP JPEGs, {by['PIL']['threads']} threads "
      f"(kadr {sys.argv[3]} profile; ratios: > 1 means faster than that peer)")
print(f"{'':<26} {'images/s':>9} {'vs PIL':>8} {'vs PIL+draft':>13}")
for name, r in by.items():
    print(f"{name:<26} {r['ips']:>9.2f} {r['ips'] / plain:>8.2f} {r['ips'] / base:>13.2f}")
for label, c in (("engine (2x margin)", cos), ("reduced to the resize", cos2)):
    print(f"\nEfficientNet-Lite0 embeddings, {label} vs full-size decode: cosine mean "
          f"{c['mean']:.5f}, median {c['median']:.5f}, 5th percentile {c['p5']:.5f}, "
          f"min {c['min']:.5f}")
PY
