#!/usr/bin/env bash
# Load test: 50 concurrent clients uploading unseen images to `kadr serve` on loopback for 60 s
# (wrk + bench/load.lua), with the bundled default model over the Tux Paint set. Prints
# throughput, latency percentiles, the statuses (only 200 and the queue's 503 are acceptable),
# and the server's peak resident memory (VmHWM) sampled every second. Needs scripts/setup.sh.
#   CLIENTS=50 DURATION=60 bash bench/load.sh
set -euo pipefail
cd "$(dirname "$0")/.."
clients=${CLIENTS:-50}
seconds=${SECONDS_LOAD:-${DURATION:-60}}
port=${PORT:-3078}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build -q -p kadr --bin kadr
kadr="$CARGO_TARGET_DIR/debug/kadr"
data=${DATASET:-target/e2e/tuxpaint8}
[ -d "$data" ] || "$kadr" make-dataset tuxpaint --out "$data"
home=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$home"' EXIT
# One client address: the per-client rate limit would turn this test into a 429 test.
RATE_LIMIT=0 "$kadr" --home "$home" serve --addr 127.0.0.1:$port --site-root target/site "$data" \
  >"$home/server.log" 2>&1 &
server=$!
for _ in $(seq 600); do
  curl -fs http://127.0.0.1:$port/status >/dev/null 2>&1 && break
  kill -0 $server 2>/dev/null || { cat "$home/server.log"; exit 1; }
  sleep 0.5
done
rss() { awk '/VmRSS/ {print $2}' /proc/$server/status; }
idle_kb=$(rss)
(
  peak=0
  while kill -0 $server 2>/dev/null; do
    r=$(rss 2>/dev/null || echo 0)
    [ "${r:-0}" -gt "$peak" ] && peak=$r && echo "$peak" >"$home/peak"
    sleep 1
  done
) &
sampler=$!
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "server: EMBED_WORKERS=${EMBED_WORKERS:-2} QUEUE_DEPTH=${QUEUE_DEPTH:-64} QUEUE_TIMEOUT=${QUEUE_TIMEOUT:-60}s, idle RSS $((idle_kb / 1024)) MB"
wrk -t 2 -c "$clients" -d "${seconds}s" --timeout 120s -s bench/load.lua \
  http://127.0.0.1:$port/ | tee "$home/wrk.out"
kill $sampler 2>/dev/null || true
hwm=$(awk '/VmHWM/ {print $2}' /proc/$server/status)
kill -0 $server || { echo "the server died"; cat "$home/server.log"; exit 1; }
status=$(curl -fs http://127.0.0.1:$port/status)
echo "after: server healthy: $status"
echo "memory: idle $((idle_kb / 1024)) MB, peak sampled $(( $(cat "$home/peak" 2>/dev/null || echo 0) / 1024 )) MB, VmHWM $((hwm / 1024)) MB"
curl -fs http://127.0.0.1:$port/metrics | grep -E '^kadr_(images_embedded_total|queue_rejected_total|http_errors_total)' || true
grep RESULT "$home/wrk.out" | sed 's/^RESULT //' | python3 -c '
import json, sys
r = json.load(sys.stdin)
bad = {k: v for k, v in r["statuses"].items() if k not in ("200", "503")}
print("statuses:", r["statuses"], "— unexpected:", bad or "none")
sys.exit(1 if bad or r["socket_errors"] else 0)'
