#!/usr/bin/env bash
# Property-based API testing: schemathesis (PyPI) generates requests from /api/openapi.json —
# valid and invalid — against a real `kadr serve` (tiny workspace over the Tux Paint set, the
# default model) and fails on any 5xx. Needs scripts/setup.sh. MAX_TIME (s) bounds the run.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.cache/schemathesis
[ -x "$venv/bin/schemathesis" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q "schemathesis==4.32.5"; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build -q -p kadr --bin kadr
kadr="$CARGO_TARGET_DIR/debug/kadr"
data=${DATASET:-target/e2e/tuxpaint8}
[ -d "$data" ] || "$kadr" make-dataset tuxpaint --out "$data"
port=${PORT:-3079}
home=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$home"' EXIT
# Generated requests come fast from one address: no rate limit for this run. DATA_ROOTS is the
# dataset, so the generated folders are refused (403/422), never indexed.
RATE_LIMIT=0 DATA_ROOTS="$PWD/$data" "$kadr" --home "$home" serve --addr 127.0.0.1:$port \
  --site-root target/site "$data" >"$home/server.log" 2>&1 &
server=$!
for _ in $(seq 600); do
  curl -fs http://127.0.0.1:$port/status >/dev/null 2>&1 && break
  kill -0 $server 2>/dev/null || { cat "$home/server.log"; exit 1; }
  sleep 0.5
done
"$venv/bin/schemathesis" run "http://127.0.0.1:$port/api/openapi.json" \
  --checks not_a_server_error --max-time "${MAX_TIME:-300}" --workers 2 \
  --suppress-health-check all --report junit --report-dir "$home/report" "$@"
kill -0 $server || { echo "the server died"; tail -50 "$home/server.log"; exit 1; }
echo "server still healthy: $(curl -fs http://127.0.0.1:$port/status)"
