#!/usr/bin/env bash
# A pgbench model of the PostgreSQL claim under a deep backlog (issue 21; docs/benchmarks.md):
# N available no-op jobs in the real `roundhouse_jobs` schema, drained by 4 pgbench clients that
# each claim 128 jobs and acknowledge them, as the worker does. Two claim shapes:
#   front   — every claim walks the `available` index from its front (the project scan and the take)
#   cursor  — every claim starts after the last row its client took (the claim cursor)
# each with or without a VACUUM (ANALYZE) every 2 s once 50,000 rows died (the queue's upkeep).
#
# Usage: loadtest/scripts/claim-model/run.sh [N...]   (default: 40000 200000 1000000)
# PGPORT (default 5433) picks the server; the database `claim_model` is created and dropped.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
port=${PGPORT:-5433}
pgbench=$(ls /usr/lib/postgresql/*/bin/pgbench | tail -n1)
psql_db() { psql -h 127.0.0.1 -p "$port" -U postgres -qAt -d "$1" "${@:2}"; }
psql_db postgres -c "DROP DATABASE IF EXISTS claim_model" -c "CREATE DATABASE claim_model"
trap 'psql_db postgres -c "DROP DATABASE IF EXISTS claim_model WITH (FORCE)"' EXIT
psql_db claim_model -f "$here/../../../migrations/postgres/0001_roundhouse.sql" >/dev/null
psql_db claim_model -f "$here/model.sql" >/dev/null

run() { # N SHAPE VACUUM
  local n=$1 shape=$2 vacuum=$3 stop
  psql_db claim_model -c "TRUNCATE roundhouse_jobs" -c "INSERT INTO roundhouse_jobs (kind, project, payload, state,
      priority, max_attempts, timeout_ms, backoff_base_ms, backoff_max_ms)
    SELECT 'bench.noop', 'loadtest', '{}', 'available', 5, 3, 60000, 1000, 60000 FROM generate_series(1, $n)" \
    -c "VACUUM ANALYZE roundhouse_jobs"
  stop=$(mktemp -u)
  if [ "$vacuum" = upkeep ]; then
    (while [ ! -e "$stop" ]; do
      dead=$(psql_db claim_model -c "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'roundhouse_jobs'")
      [ "$dead" -gt 50000 ] && psql_db claim_model -c "VACUUM (ANALYZE) roundhouse_jobs"
      sleep 2
    done) &
  fi
  local per_client=$(( n / 128 / 4 )) started ended
  started=$(date +%s.%N)
  "$pgbench" -h 127.0.0.1 -p "$port" -U postgres -n -D cur=0 -f "$here/$shape.pgb" -c 4 -j 2 -t "$per_client" claim_model >/dev/null
  ended=$(date +%s.%N)
  touch "$stop"; wait
  rm -f "$stop"
  printf '{"jobs":%d,"claim":"%s","vacuum":"%s","jobs_per_s":%.0f}\n' "$n" "$shape" "$vacuum" \
    "$(echo "$per_client * 4 * 128 / ($ended - $started)" | bc -l)"
}

for n in ${@:-40000 200000 1000000}; do
  for shape in front cursor; do
    for vacuum in none upkeep; do run "$n" "$shape" "$vacuum"; done
  done
done
