#!/usr/bin/env bash
# The issue-21 peer series for pg-boss: one JSON line per run on stdout, each wrapped with the
# run's label, autovacuum setting and wall time. Autovacuum is set with ALTER SYSTEM only for rows
# that ask for "off", and reset when the script ends.
#
# Usage: loadtest/peers/pgboss/series.sh "LABEL:AUTOVACUUM:JOBS:drain.js options" …
#   e.g. PGPORT=5435 loadtest/peers/pgboss/series.sh "A:on:20000:--workers 32 --batch 32"
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
host=${PGHOST:-127.0.0.1} port=${PGPORT:-5435} user=${PGUSER:-postgres}
admin() { psql -h "$host" -p "$port" -U "$user" -d postgres -qAtc "$1"; }
trap 'admin "ALTER SYSTEM RESET autovacuum"; admin "SELECT pg_reload_conf()" >/dev/null' EXIT
for spec in "$@"; do
  IFS=: read -r label autovacuum jobs opts <<<"$spec"
  if [ "$autovacuum" = off ]; then admin "ALTER SYSTEM SET autovacuum = off"; else admin "ALTER SYSTEM RESET autovacuum"; fi
  admin "SELECT pg_reload_conf()" >/dev/null
  sleep 1
  started=$(date +%s)
  # shellcheck disable=SC2086
  line=$("$here/run.sh" "$jobs" $opts --deadline-s 300 | tail -n 1 || true)
  printf '{"label":"%s","ended_at":"%s","wall_s":%d,"result":%s}\n' \
    "$label" "$(date -u +%FT%TZ)" "$(( $(date +%s) - started ))" "${line:-null}"
done
