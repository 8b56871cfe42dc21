#!/usr/bin/env bash
# Drop-to-first-result benchmark: starts `kadr serve` with the bundled default model over the
# Tux Paint set in a fresh workspace (empty history, so nothing comes from the cache), then
# times drops in Chromium (bench/drop_to_result.mjs). Needs scripts/setup.sh to have run.
set -euo pipefail
cd "$(dirname "$0")/.."
kadr="${CARGO_TARGET_DIR:-target}/debug/kadr"
data=${DATASET:-target/e2e/tuxpaint8}
[ -d "$data" ] || "$kadr" make-dataset tuxpaint --out "$data"
home=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$home"' EXIT
"$kadr" --home "$home" serve --addr 127.0.0.1:3077 --site-root target/site "$data" >"$home/server.log" 2>&1 &
server=$!
for _ in $(seq 600); do
  curl -fs http://127.0.0.1:3077/status >/dev/null 2>&1 && break
  kill -0 $server 2>/dev/null || { cat "$home/server.log"; exit 1; }
  sleep 0.5
done
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
DATASET="$PWD/$data" KADR_URL=http://127.0.0.1:3077 node bench/drop_to_result.mjs
