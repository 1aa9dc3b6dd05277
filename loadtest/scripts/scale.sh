#!/usr/bin/env bash
# Issue 21 items 2-3: drain with K worker processes, the 1,000-project skew and the soak, on
# PostgreSQL and Redis, ROUNDS interleaved rounds. One JSON line per run on stdout; see
# docs/benchmarks.md "Scale-out, skew and soak".
#
# Usage: loadtest/scripts/scale.sh BIN [ROUNDS] [SOAK_PG_S] [SOAK_REDIS_S] [DRAIN_JOBS]
# PGPORT (default 5432) picks the PostgreSQL server; Redis is 127.0.0.1:6379 (a fresh key prefix).
set -euo pipefail
bin=$1 rounds=${2:-2} soak_pg=${3:-600} soak_redis=${4:-120} jobs=${5:-200000}
pg="postgres://postgres@127.0.0.1:${PGPORT:-5432}/postgres"
run() { # round, backend, args…
  local round=$1 backend=$2; shift 2
  local url=$pg; [ "$backend" = redis ] && url=redis://127.0.0.1:6379
  local started line
  started=$(date +%s)
  line=$("$bin" "$@" --backend "$backend" --url "$url" 2>/dev/null | tail -n 1 || true)
  printf '{"round":%d,"args":"%s","wall_s":%d,"result":%s}\n' \
    "$round" "$* --backend $backend" "$(( $(date +%s) - started ))" "${line:-null}"
}
for round in $(seq 1 "$rounds"); do
  for backend in postgres redis; do
    for k in 1 2 4; do run "$round" "$backend" drain --jobs "$jobs" --workers "$k" --deadline-s 300; done
    run "$round" "$backend" skew
  done
  run "$round" postgres soak --duration-s "$soak_pg"
  run "$round" redis soak --duration-s "$soak_redis"
done
