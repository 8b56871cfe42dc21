#!/usr/bin/env bash
# Concurrency benchmark of `kadr serve` (bench/concurrency.py): the latency of a stored
# analysis (a pure search) idle and while 8 clients upload, then uploads per second with 1, 8
# and 32 concurrent clients and the mean forward-pass batch size, with dynamic batching on and
# off, in one run on this machine. The default model over the Tux Paint set; needs
# scripts/setup.sh. KADR=path/to/kadr measures another build (e.g. an older one).
#   PHASE_SECONDS=15 CLIENTS=1,8,32 BATCHING="on off" bash bench/concurrency.sh
set -euo pipefail
cd "$(dirname "$0")/.."
port=${PORT:-3079}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
if [ -z "${KADR:-}" ]; then
  cargo build -q -p kadr --bin kadr
  KADR="$CARGO_TARGET_DIR/debug/kadr"
fi
data=${DATASET:-target/e2e/tuxpaint8}
[ -d "$data" ] || "$KADR" make-dataset tuxpaint --out "$data"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); binary: $KADR"
for batching in ${BATCHING:-on off}; do
  home=$(mktemp -d)
  # One client address: the per-client rate limit would turn this into a 429 test; a deep
  # queue so that 32 clients wait instead of being told to come back.
  RATE_LIMIT=0 QUEUE_DEPTH=1000 DYNAMIC_BATCHING=$batching "$KADR" --home "$home" serve \
    --addr 127.0.0.1:$port --site-root target/site "$data" >"$home/server.log" 2>&1 &
  server=$!
  trap 'kill $server 2>/dev/null || true' EXIT
  for _ in $(seq 600); do
    curl -fs http://127.0.0.1:$port/status >/dev/null 2>&1 && break
    kill -0 $server 2>/dev/null || { cat "$home/server.log"; exit 1; }
    sleep 0.5
  done
  PORT=$port LABEL="dynamic batching $batching" python3 bench/concurrency.py
  kill $server; wait $server 2>/dev/null || true
  rm -rf "$home"
done
