#!/usr/bin/env bash
# Webhook → Release `ready` for a small example service, cold (empty BuildKit cache) and warm
# (a second commit of the same service), through the real chain: a signed GitHub push webhook
# into `enclii server` → clone (git2, file://) → BuildKit build on the Docker engine → push to the
# local registry → SBOM (S3 + registry) ∥ cosign signature. Prints one JSON line per build.
# Usage: bash loadtest/pipeline-bench.sh [RUNS]     (default 3 cold + 3 warm)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
source loadtest/bench-lib.sh   # infra, `enclii` build, base image, bench_server, bench_webhook

# The example service: a static site served by busybox httpd, with a lockfile to inventory.
repo="$work/repo"
mkdir -p "$repo/www"
cat >"$repo/Dockerfile" <<'DOCKERFILE'
FROM enclii-test/busybox:latest
RUN mkdir -p /www && chmod 755 /www
COPY www /www
USER 65534:65534
EXPOSE 3000
CMD ["httpd", "-f", "-p", "3000", "-h", "/www"]
DOCKERFILE
printf '{"lockfileVersion":3,"packages":{"node_modules/left-pad":{"version":"1.3.0"}}}\n' >"$repo/package-lock.json"
git -C "$repo" init -q -b main
commit() {
  echo "<h1>build $1</h1>" >"$repo/www/index.html"
  git -C "$repo" add -A && git -C "$repo" -c user.name=b -c user.email=b@example.com commit -qm "build $1"
  git -C "$repo" rev-parse HEAD
}

bench_server
curl -sf "${H[@]}" -XPOST "$api/v1/projects" -d '{"slug":"bench"}' >/dev/null
curl -sf "${H[@]}" -XPOST "$api/v1/projects/bench/services" -d "{\"apiVersion\":\"enclii.dev/v1\",\"kind\":\"Service\",
  \"metadata\":{\"project\":\"bench\",\"environment\":\"prod\",\"name\":\"site\"},
  \"spec\":{\"source\":{\"git\":{\"repository\":\"file://$repo\",\"branch\":\"main\"}},\"runtime\":{\"ports\":[3000]},
  \"deploy\":{\"strategy\":\"rolling\"}}}" >/dev/null

# One signed push webhook; prints the seconds until the release is ready.
build() {
  local sha=$1 body id status
  body="{\"ref\":\"refs/heads/main\",\"before\":\"0000000000000000000000000000000000000000\",\"after\":\"$sha\",
    \"created\":false,\"deleted\":false,\"forced\":false,\"head_commit\":{\"id\":\"$sha\"},
    \"repository\":{\"full_name\":\"bench/site\",\"clone_url\":\"file://$repo\",\"html_url\":\"file://$repo\",\"default_branch\":\"main\"}}"
  bench_webhook push "bench-$sha" "$body" >/dev/null
  while :; do
    id=$(curl -sf "${H[@]}" "$api/v1/projects/bench/releases" | python3 -c "import json,sys
r=[x for x in json.load(sys.stdin) if x['git_sha']=='$sha']
print(r[0]['id'] if r else '')")
    if [ -n "$id" ]; then
      status=$(curl -sf "${H[@]}" "$api/v1/releases/$id" | python3 -c "import json,sys; print(json.load(sys.stdin)['status'])")
      [ "$status" != building ] && break
    fi
    sleep 0.1
  done
  if [ "$status" != ready ]; then
    echo "release $id ended $status:" >&2
    curl -s "${H[@]}" "$api/v1/releases/$id" >&2
    exit 1
  fi
  elapsed=$(echo "$(date +%s.%N) - $bench_sent" | bc)
  # Seconds, then each step's milliseconds from the release's provenance.
  curl -sf "${H[@]}" "$api/v1/releases/$id" | python3 -c "import json,sys
r=json.load(sys.stdin)
print('$elapsed', json.dumps({s['step']: s['finished_at']-s['started_at'] for s in r['steps']}, separators=(',',':')))"
}

for run in $(seq 1 "$runs"); do
  /usr/bin/docker builder prune -af >/dev/null   # cold: BuildKit's cache dropped
  read -r cold cold_steps < <(build "$(commit "cold-$run")")
  read -r warm warm_steps < <(build "$(commit "warm-$run")")
  printf '{"workload":"pipeline","run":%d,"cold_seconds":%.2f,"warm_seconds":%.2f,"cold_step_ms":%s,"warm_step_ms":%s}\n' \
    "$run" "$cold" "$warm" "$cold_steps" "$warm_steps"
done
