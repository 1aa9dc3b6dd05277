#!/usr/bin/env bash
# One pg-boss drain run in a fresh database, dropped afterwards (issue 21 peer runs).
#
# Usage: loadtest/peers/pgboss/run.sh JOBS [drain.js options…]
#   e.g. PGPORT=5435 loadtest/peers/pgboss/run.sh 200000 --mode work --workers 32 --batch 32
# PGHOST (127.0.0.1) / PGPORT (5435) / PGUSER (postgres) pick the server. Needs `npm ci` here first.
# Prints drain.js's JSON line on stdout; progress on stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
host=${PGHOST:-127.0.0.1} port=${PGPORT:-5435} user=${PGUSER:-postgres}
jobs=$1; shift
db="pgboss_drain_$$_$(date +%s)"
admin() { psql -h "$host" -p "$port" -U "$user" -d postgres -qAtc "$1"; }
admin "CREATE DATABASE $db"
trap 'admin "DROP DATABASE IF EXISTS $db WITH (FORCE)"' EXIT
node "$here/drain.js" --url "postgres://$user@$host:$port/$db" --jobs "$jobs" "$@"
