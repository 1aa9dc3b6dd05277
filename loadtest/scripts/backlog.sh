#!/usr/bin/env bash
# Drain throughput of the PostgreSQL queue under deep backlogs (issue 21): two loadtest builds
# (before/after a change) interleaved per backlog size, with autovacuum off (this machine's CI
# configuration) and on (production). One JSON line per run on stdout; see docs/benchmarks.md.
#
# Usage: loadtest/scripts/backlog.sh BEFORE_BIN AFTER_BIN [SIZES] [AUTOVACUUM] [ROUNDS]
#   SIZES      backlogs to drain (default "20000 200000 1000000")
#   AUTOVACUUM "off on" (default) — set with ALTER SYSTEM, reset when the script ends
#   ROUNDS     interleaved rounds per size (default 1)
# PGPORT (default 5432) picks the server: a cluster of its own keeps other work's restarts away.
# A run that has not drained 300 s after its enqueue stops there (`unfinished_after` > 0).
set -euo pipefail
port=${PGPORT:-5432}
before=$1 after=$2
sizes=${3:-20000 200000 1000000}
settings=${4:-off on}
rounds=${5:-1}
psql_admin() { psql -h 127.0.0.1 -p "$port" -U postgres -d postgres -qAtc "$1"; }
trap 'psql_admin "ALTER SYSTEM RESET autovacuum" && psql_admin "SELECT pg_reload_conf()" >/dev/null' EXIT
for autovacuum in $settings; do
  psql_admin "ALTER SYSTEM SET autovacuum = $autovacuum"
  psql_admin "SELECT pg_reload_conf()" >/dev/null
  for round in $(seq 1 "$rounds"); do
    for jobs in $sizes; do
      for build in before after; do
        bin=$before; [ "$build" = after ] && bin=$after
        started=$(date +%s)
        line=$("$bin" drain --backend postgres --url "postgres://postgres@127.0.0.1:$port/postgres" \
          --jobs "$jobs" --deadline-s 300 2>/dev/null | tail -n 1 || true)
        printf '{"autovacuum":"%s","round":%d,"build":"%s","jobs":%d,"wall_s":%d,"result":%s}\n' \
          "$autovacuum" "$round" "$build" "$jobs" "$(( $(date +%s) - started ))" "${line:-null}"
      done
    done
  done
done
