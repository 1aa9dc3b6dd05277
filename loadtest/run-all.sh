#!/usr/bin/env bash
# Runs every workload against every backend N times (default 3) and prints one JSON line per
# run; docs/benchmarks.md reports the medians. Needs PostgreSQL and Redis on their default ports.
# Usage: bash loadtest/run-all.sh [RUNS] > results.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
cargo build --release -p loadtest -p enclii >&2
bin=${CARGO_TARGET_DIR:-target}/release
for workload in drain steady fairness crash; do
  for backend in postgres sqlite redis; do
    for _ in $(seq 1 "$runs"); do
      "$bin/loadtest" "$workload" --backend "$backend" 2>/dev/null
    done
  done
done
# Signed GitHub pushes through the API (the control plane lives in PostgreSQL or SQLite).
for backend in postgres sqlite; do
  for _ in $(seq 1 "$runs"); do
    "$bin/loadtest" webhooks --backend "$backend" 2>/dev/null
  done
done
# Idle CPU of a whole server (api + worker + scheduler) on the embedded default, over 30 s.
dir=$(mktemp -d)
"$bin/enclii" server --listen 127.0.0.1:0 --data-dir "$dir" >/dev/null 2>&1 &
pid=$!
sleep 3
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
before=$(ticks); sleep 30; after=$(ticks)
kill -TERM "$pid"; wait "$pid" || true
rm -rf "$dir"
hz=$(getconf CLK_TCK)
python3 -c "import json; print(json.dumps({'system': 'roundhouse-sqlite', 'workload': 'idle', 'seconds': 30, 'cpu_percent': round(($after - $before) / $hz / 30 * 100, 3)}))"
