#!/usr/bin/env bash
# The short chaos run (issue 14; docs/benchmarks.md "Chaos under load"): `loadtest chaos` on the
# PostgreSQL queue, then on the Redis queue — real `enclii server` processes, a webhook storm,
# two services built and deployed for real, and every fault kind (kill -9 on a clock, mid-build and
# mid-deploy, PostgreSQL / Redis / Docker engine restarts, a worker cut off from the database for
# longer than its lease). Fails if any end check fails on either queue.
#
# It restarts the shared PostgreSQL, Redis and Docker engine: run it alone (.ci/run runs it after
# the tests and Schemathesis). JSON lines go to artifacts/chaos/<queue>.jsonl, the human summary
# to stderr; the servers' logs of a failed run stay in /tmp/enclii-chaos-<run>/.
#
# Usage: bash .ci/chaos.sh [seconds of storm, default 30]   (2¼–2¾ min here for both queues)
# Env:   CHAOS_QUEUES (default "postgres redis"), CHAOS_TIMEOUT (seconds per run, default 240),
#        CHAOS_SKIP (faults left out, e.g. "restart-docker"; default none).
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_OF_STORM="${1:-30}"
QUEUES="${CHAOS_QUEUES:-postgres redis}"
SKIP="${CHAOS_SKIP-}"
skip_args=()
for fault in $SKIP; do skip_args+=(--skip "$fault"); done
TIMEOUT="${CHAOS_TIMEOUT:-240}"
declare -F log >/dev/null || log() { printf '\n== %s\n' "$*"; }
# shellcheck source=infra.sh
source .ci/infra.sh >/dev/null
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/enclii/target}"
cargo build --locked --quiet -p enclii -p loadtest
mkdir -p artifacts/chaos

status=0
for queue in $QUEUES; do
  log "chaos ($queue queue, ${SECONDS_OF_STORM} s storm)"
  started=$(date +%s) rc=0
  timeout --kill-after=30 "$TIMEOUT" "$CARGO_TARGET_DIR/debug/loadtest" chaos --queue "$queue" \
    --services 6 --build-subset 2 --deliveries 60 --workers 3 --seconds "$SECONDS_OF_STORM" \
    --drain-seconds 60 "${skip_args[@]}" >"artifacts/chaos/$queue.jsonl" || rc=$?
  echo "chaos ($queue): $(( $(date +%s) - started )) s, exit $rc"
  [ "$rc" = 0 ] || status=$rc
done
# The faults restart shared services: leave them up for whatever runs next.
pg_isready -h 127.0.0.1 -p 5432 -q || pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 ||
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
exit "$status"
