#!/usr/bin/env bash
# Interleaves two loadtest binaries (before/after a change) on the same machine in the same hour:
# for each round, each binary runs every workload once, so noise hits both alike. One JSON line
# per run on stdout, tagged with "binary" (before|after) and "round".
# Usage: bash loadtest/compare.sh BEFORE_BIN AFTER_BIN [ROUNDS] > compare.jsonl
# Needs PostgreSQL and Redis on their default ports (the same servers the tests use).
set -euo pipefail
before=$1 after=$2 rounds=${3:-2}
run() { # binary-name binary workload args…
  local name=$1 bin=$2; shift 2
  "$bin" "$@" 2>/dev/null | python3 -c "import json,sys
for line in sys.stdin:
    line=line.strip()
    if line.startswith('{'):
        d=json.loads(line); d['binary']='$name'; d['round']=$round; print(json.dumps(d), flush=True)"
}
for round in $(seq 1 "$rounds"); do
  for pair in "before:$before" "after:$after"; do
    name=${pair%%:*} bin=${pair#*:}
    for backend in postgres sqlite redis; do run "$name" "$bin" drain --backend "$backend"; done
    run "$name" "$bin" steady --backend postgres
    run "$name" "$bin" crash --backend postgres
    for backend in postgres sqlite; do run "$name" "$bin" webhooks --backend "$backend"; done
  done
done
