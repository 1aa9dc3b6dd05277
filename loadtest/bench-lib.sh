# Shared by loadtest/pipeline-bench.sh and loadtest/deploy-bench.sh (sourced from the repository's
# root): starts the infrastructure (.ci/infra.sh), builds `enclii` (debug, or BENCH_PROFILE), makes the busybox base
# image, and defines the helpers below. Sets: bin, work (a temp dir, removed on exit), token, secret.
#   bench_server [VAR=value …]   starts `enclii server` with the registry, S3, file:// git and the
#                                webhook secret (plus the extra env); sets pid, api and H (curl args)
#   bench_webhook EVENT DELIVERY BODY   sends a signed GitHub webhook; response body on stdout;
#                                sets bench_sent (epoch seconds with ns) just before sending — call it
#                                with a redirect, not in $( ), so that the variable survives
#   bench_on_exit                optional function the script defines: runs on exit (after the
#                                server is stopped, before $work is removed)
source .ci/infra.sh >&2
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/enclii/target}"
# BENCH_PROFILE=release measures the binary the image ships (Dockerfile) instead of the debug one
# README command 1 runs.
cargo build -q -p enclii --profile "${BENCH_PROFILE:-dev}" >&2
bin="$CARGO_TARGET_DIR/$([ "${BENCH_PROFILE:-dev}" = dev ] && echo debug || echo "$BENCH_PROFILE")/enclii"
work=$(mktemp -d /tmp/enclii-bench.XXXXXX)
token=enclii_pat_benchtoken00_0123456789abcdefghijABCDEFGHIJ0123456789abc
secret=bench-webhook-secret
pid=

bench_exit() {
  [ -n "$pid" ] && { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; }
  declare -F bench_on_exit >/dev/null && bench_on_exit
  rm -rf "$work"
}
trap bench_exit EXIT

# The base image (nothing can be pulled here): Debian's static busybox.
if ! /usr/bin/docker image inspect enclii-test/busybox:latest >/dev/null 2>&1; then
  mkdir -p "$work/base" && cp /bin/busybox "$work/base/"
  printf 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\n' >"$work/base/Dockerfile"
  DOCKER_BUILDKIT=1 /usr/bin/docker build -q -t enclii-test/busybox:latest "$work/base" >&2
fi

bench_server() {
  env ENCLII_DATA_DIR="$work/data" ENCLII_BOOTSTRAP_TOKEN=$token ENCLII_GITHUB_WEBHOOK_SECRET=$secret \
    ENCLII_REGISTRY=127.0.0.1:5000 ENCLII_REGISTRY_INSECURE=true ENCLII_S3_ENDPOINT=http://127.0.0.1:8014 \
    ENCLII_S3_BUCKET="bench-$(basename "$work" | tr 'A-Z.' 'a-z-')" ENCLII_S3_ACCESS_KEY=bench ENCLII_S3_SECRET_KEY=bench \
    ENCLII_GIT_SCHEMES=file ENCLII_RATE_LIMIT_BURST=100000 "$@" \
    "$bin" server --listen 127.0.0.1:0 >"$work/stdout" 2>"$work/server.log" &
  pid=$!
  for _ in $(seq 1 100); do grep -q "listening on" "$work/stdout" 2>/dev/null && break; sleep 0.1; done
  api=$(sed -n 's/^enclii listening on //p' "$work/stdout")
  [ -n "$api" ] || { echo "enclii server did not start:" >&2; cat "$work/server.log" >&2; exit 1; }
  H=(-H "Authorization: Bearer $token" -H 'content-type: application/json')
}

bench_webhook() {
  local sig
  sig=$(printf '%s' "$3" | openssl dgst -sha256 -hmac "$secret" | awk '{print $2}')
  bench_sent=$(date +%s.%N)
  curl -sf -XPOST "$api/v1/webhooks/github" -H 'content-type: application/json' -H "X-GitHub-Event: $1" \
    -H "X-GitHub-Delivery: $2" -H "X-Hub-Signature-256: sha256=$sig" --data-binary "$3"
}
