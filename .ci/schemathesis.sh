#!/usr/bin/env bash
# Schemathesis against a real `enclii server` (embedded SQLite, all roles): every operation of
# /v1/openapi.json, generated examples, coverage, fuzzing and stateful phases, with a bounded
# example count. Fails on any 5xx, on an undocumented status code or content type, and on a
# response that does not match its schema. Docs: docs/testing.md.
#
# Usage: bash .ci/schemathesis.sh [max examples per operation, default 100]
# Env:   SCHEMATHESIS_SEED (default 1), SCHEMATHESIS_TIMEOUT (seconds the whole run may take
#        before it counts as failed, default 900), ENCLII_BIN (a built `enclii`; default: cargo build -p enclii --bin enclii)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

VERSION=4.32.5
EXAMPLES="${1:-100}"
SEED="${SCHEMATHESIS_SEED:-1}"
TIMEOUT="${SCHEMATHESIS_TIMEOUT:-900}"
CACHE="${HOME:-/root}/.cache/enclii"
VENV="$CACHE/schemathesis-venv-$VERSION"

# --- schemathesis, pinned, in a venv of its own ------------------------------------------------
if [ ! -x "$VENV/bin/schemathesis" ]; then
  echo "installing schemathesis $VERSION into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$VERSION"
fi

# --- the server -------------------------------------------------------------------------------
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
if [ -z "${ENCLII_BIN:-}" ]; then
  cargo build --locked --quiet -p enclii --bin enclii
  ENCLII_BIN="$CARGO_TARGET_DIR/debug/enclii"
fi
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
ROUTER_PORT=$(free_port)
# A bootstrap token of the form enclii_pat_<12 base62>_<43 base62>, new for each run.
TOKEN=$(python3 -c '
import secrets, string
a = string.ascii_letters + string.digits
print("enclii_pat_" + "".join(secrets.choice(a) for _ in range(12)) + "_" + "".join(secrets.choice(a) for _ in range(43)))')
DATA=$(mktemp -d "${TMPDIR:-/tmp}/enclii_schemathesis_XXXXXX")
REPORT="$CACHE/schemathesis-report"   # kept after the run (JUnit XML)
SERVER=""
cleanup() {
  if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; fi
  rm -rf "$DATA"
}
trap cleanup EXIT

# Rate limits high enough not to answer most requests with 429 (which is documented, but tests
# nothing); everything else is the default single-node server.
ENCLII_DATA_DIR="$DATA/data" ENCLII_LISTEN="127.0.0.1:$PORT" ENCLII_ROUTER_LISTEN="127.0.0.1:$ROUTER_PORT" ENCLII_REGISTRY_LISTEN=127.0.0.1:0 \
  ENCLII_BOOTSTRAP_TOKEN="$TOKEN" ENCLII_RATE_LIMIT_PER_MINUTE=1000000 ENCLII_RATE_LIMIT_BURST=1000000 \
  ENCLII_WEBHOOK_RATE_PER_MINUTE=1000000 ENCLII_AUTH_FAILURES_PER_MINUTE=1000000 \
  ENCLII_GITHUB_WEBHOOK_SECRET=schemathesis \
  "$ENCLII_BIN" server >"$DATA/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$PORT/health/ready" >/dev/null 2>&1 && break
  kill -0 "$SERVER" 2>/dev/null || { cat "$DATA/server.log"; echo "enclii server exited"; exit 1; }
  sleep 0.2
done

# --- the run ----------------------------------------------------------------------------------
status=0
start=$(date +%s)
# From the data dir: schemathesis keeps a cache (.schemathesis/) in its working directory.
(cd "$DATA" && timeout "$TIMEOUT" "$VENV/bin/schemathesis" --config-file "$ROOT/.ci/schemathesis.toml" run "http://127.0.0.1:$PORT/v1/openapi.json" \
  --header "Authorization: Bearer $TOKEN" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --phases examples,coverage,fuzzing,stateful \
  --max-examples "$EXAMPLES" --seed "$SEED" \
  --request-timeout 20 --workers 2 --no-color \
  --report junit --report-dir "$REPORT") || status=$?
echo "schemathesis: $(($(date +%s) - start)) s, exit $status"
if [ "$status" -ne 0 ]; then
  echo "--- last lines of the server's log"
  tail -n 40 "$DATA/server.log"
fi
exit "$status"
