#!/usr/bin/env bash
# Vector index at scale, in one run: N (default 1,000,000) clustered synthetic 1280-d vectors
# in FAISS flat / HNSW / IVF / IVF-PQ (kadr's FaissIndex, trained as the workspace trains it)
# and in a real Milvus 2.3.5 standalone server (HNSW, IVF_FLAT) started here; for each: build
# time, memory, query latency p50/p99 at k=10 for one query and for batches of 100, and
# recall@10 against exact search. Needs scripts/setup.sh. ~24 GB of RAM at one million.
#   N=1000000 bash bench/index_scale.sh          MILVUS=off skips the Milvus half
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build -q --workspace --examples --features kadr/milvus
bin="$CARGO_TARGET_DIR/debug/examples/index_scale"
if [ "${MILVUS:-on}" = on ]; then
  dir=$(mktemp -d)
  port=${MILVUS_PORT:-19537}
  setsid python3 scripts/milvus_server.py --dir "$dir" --port "$port" >"$dir/out.log" 2>&1 &
  launcher=$!
  trap 'kill -9 -- -$launcher 2>/dev/null || true; rm -rf "$dir"' EXIT
  for _ in $(seq 360); do
    grep -q "milvus ready" "$dir/out.log" 2>/dev/null && break
    kill -0 $launcher 2>/dev/null || { cat "$dir/out.log"; exit 1; }
    sleep 0.5
  done
  export MILVUS_URI="http://127.0.0.1:$port"
  MILVUS_PID=$(pgrep -f "milvus run standalone" -g "$launcher" | head -1 || true)
  export MILVUS_PID
fi
"$bin"
