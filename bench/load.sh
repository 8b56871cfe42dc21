#!/usr/bin/env bash
# Load test: 50 concurrent clients uploading unseen images to `kadr serve` on loopback for 60 s
# (wrk + bench/load.lua), with the bundled default model over the Tux Paint set, while 1,000
# slow clients (bench/slow_clients.py: half a request line, then nothing; replaced as soon as
# the server drops one) try to hold connections open. Prints throughput, latency percentiles,
# the statuses (only 200 and the queue's 503 are acceptable), the server's peak resident memory
# (VmHWM) sampled every second, its open file descriptors before, during (peak) and after, and
# what became of the slow clients. Needs scripts/setup.sh. KADR=path/to/kadr measures another
# build.
#   CLIENTS=50 SLOW_CLIENTS=1000 DURATION=60 bash bench/load.sh
set -euo pipefail
cd "$(dirname "$0")/.."
clients=${CLIENTS:-50}
slow=${SLOW_CLIENTS:-1000}
seconds=${SECONDS_LOAD:-${DURATION:-60}}
port=${PORT:-3078}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
if [ -z "${KADR:-}" ]; then
  cargo build -q --workspace --bin kadr
  KADR="$CARGO_TARGET_DIR/debug/kadr"
fi
kadr=$KADR
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
fds() { ls /proc/$server/fd 2>/dev/null | wc -l; }
idle_kb=$(rss)
fds_before=$(fds)
(
  peak=0
  peak_fds=0
  while kill -0 $server 2>/dev/null; do
    r=$(rss 2>/dev/null || echo 0)
    [ "${r:-0}" -gt "$peak" ] && peak=$r && echo "$peak" >"$home/peak"
    f=$(fds)
    [ "${f:-0}" -gt "$peak_fds" ] && peak_fds=$f && echo "$peak_fds" >"$home/peak_fds"
    sleep 1
  done
) &
sampler=$!
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "server: EMBED_WORKERS=${EMBED_WORKERS:-2} QUEUE_DEPTH=${QUEUE_DEPTH:-64} QUEUE_TIMEOUT=${QUEUE_TIMEOUT:-60}s" \
  "HEADER_TIMEOUT=${HEADER_TIMEOUT:-10}s IDLE_TIMEOUT=${IDLE_TIMEOUT:-60}s MAX_CONNECTIONS=${MAX_CONNECTIONS:-4096}," \
  "idle RSS $((idle_kb / 1024)) MB, $fds_before open files"
slow_pid=
if [ "$slow" -gt 0 ]; then
  # The slow clients start first and run a little longer than the load.
  python3 bench/slow_clients.py 127.0.0.1 $port "$slow" $((seconds + 5)) >"$home/slow.out" &
  slow_pid=$!
  sleep 3
  echo "slow clients: $slow started; server open files now $(fds)"
fi
wrk -t 2 -c "$clients" -d "${seconds}s" --timeout 120s -s bench/load.lua \
  http://127.0.0.1:$port/ | tee "$home/wrk.out"
[ -n "$slow_pid" ] && wait $slow_pid
# The slow clients have closed their sockets; what the server still holds a moment later.
sleep 2
fds_after=$(fds)
kill $sampler 2>/dev/null || true
hwm=$(awk '/VmHWM/ {print $2}' /proc/$server/status)
kill -0 $server || { echo "the server died"; cat "$home/server.log"; exit 1; }
status=$(curl -fs http://127.0.0.1:$port/status)
echo "after: server healthy: $status"
echo "memory: idle $((idle_kb / 1024)) MB, peak sampled $(( $(cat "$home/peak" 2>/dev/null || echo 0) / 1024 )) MB, VmHWM $((hwm / 1024)) MB"
echo "open files: before $fds_before, during (peak sampled) $(cat "$home/peak_fds" 2>/dev/null || echo ?), after $fds_after"
[ -s "$home/slow.out" ] && echo "slow clients: $(cat "$home/slow.out")"
curl -fs http://127.0.0.1:$port/metrics | grep -E '^kadr_(images_embedded_total|queue_rejected_total|http_errors_total|connections_)' || true
grep RESULT "$home/wrk.out" | sed 's/^RESULT //' | python3 -c '
import json, sys
r = json.load(sys.stdin)
bad = {k: v for k, v in r["statuses"].items() if k not in ("200", "503")}
print("statuses:", r["statuses"], "— unexpected:", bad or "none")
sys.exit(1 if bad or r["socket_errors"] else 0)'
