#!/usr/bin/env bash
# Vector index at scale, in one run: N (default 1,000,000) clustered synthetic 1280-d vectors
# in FAISS flat / HNSW / IVF / IVF-PQ (kadr's FaissIndex, trained as the workspace trains it)
# and in a real Milvus 2.3.5 standalone server (HNSW, IVF_FLAT; a fresh server and data folder
# per kind, under MILVUS_DIR, default the repository); for each: build time, memory, query
# latency p50/p99 at k=10 for one query and for batches of 100, and recall@10 against exact
# search. Needs scripts/setup.sh. ~24 GB of RAM and ~25 GB of free disk at one million.
#   N=1000000 bash bench/index_scale.sh          MILVUS=off skips the Milvus half
#   MILVUS_URI=http://host:19530 measures an existing Milvus (standalone or cluster) instead
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kadr/target}"
cargo build -q --workspace --examples --features kadr/milvus
exec "$CARGO_TARGET_DIR/debug/examples/index_scale"
