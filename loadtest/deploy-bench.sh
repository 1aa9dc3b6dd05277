#!/usr/bin/env bash
# Issue 5's deploy targets on the Docker target, through one real `enclii server` (SQLite, debug
# build) deploying busybox-httpd containers behind its router (called by Host header):
#   rollback: `POST …/services/api/rollback` → the router serves the other release's body (and the
#             deployment says `succeeded`), alternating v2→v1, v1→v2;
#   preview:  a signed `pull_request` webhook (`opened`, then `synchronize` with a new commit) →
#             `http://api-preview-N.preview.localhost` answers 200 with the new commit's body, warm
#             (base image and BuildKit cache warmed by one unmeasured preview first);
#   log tail: lines the app prints every 100 ms, followed live through the API — runtime logs
#             (`GET …/services/api/logs?follow=true`: engine timestamp → client) and a one-off
#             job's log (`GET /v1/jobs/{id}/logs/stream`: the worker's receipt → client).
# Prints one JSON line per measurement, then a table of medians and maxima.
# Usage: bash loadtest/deploy-bench.sh [RUNS]     (default 5 rollbacks + 5 previews)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
source loadtest/bench-lib.sh   # infra, `enclii` build, base image, bench_server, bench_webhook
project=deploybench
host=api.bench.test
bench_on_exit() {
  /usr/bin/docker ps -aq --filter "label=dev.enclii.project=$project" | xargs -r /usr/bin/docker rm -f >/dev/null
}
bench_on_exit   # leftovers of an interrupted earlier run

# The app (as in cli/tests/deploy.rs): busybox httpd on port 3000, /healthz for the readiness probe.
repo="$work/repo"
mkdir -p "$repo/www"
# It also prints a line every 100 ms (the log-tail measurement follows them).
cat >"$repo/Dockerfile" <<'DOCKERFILE'
FROM enclii-test/busybox:latest
COPY www /www
CMD ["sh", "-c", "i=0; while true; do i=$((i+1)); echo tick $i; usleep 100000; done & exec httpd -f -p 3000 -h /www"]
DOCKERFILE
echo ok >"$repo/www/healthz"
git -C "$repo" init -q -b main
commit() {   # commit BODY: the app now answers BODY on /; prints the commit's SHA
  echo "$1" >"$repo/www/index.html"
  git -C "$repo" add -A && git -C "$repo" -c user.name=b -c user.email=b@example.com commit -qm "$1"
  git -C "$repo" rev-parse HEAD
}

router=127.0.0.1:$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
bench_server ENCLII_DEPLOY_TARGET=docker ENCLII_ROUTER_LISTEN="$router" ENCLII_DOCKER_CLI=/usr/bin/docker
curl -sf "${H[@]}" -XPOST "$api/v1/projects" -d "{\"slug\":\"$project\"}" >/dev/null
curl -sf "${H[@]}" -XPOST "$api/v1/projects/$project/services" -d "{\"apiVersion\":\"enclii.dev/v1\",\"kind\":\"Service\",
  \"metadata\":{\"project\":\"$project\",\"environment\":\"prod\",\"name\":\"api\"},
  \"spec\":{\"source\":{\"git\":{\"repository\":\"file://$repo\",\"branch\":\"main\"}},
  \"runtime\":{\"ports\":[3000],\"memory\":\"64Mi\",\"cpu\":\"250m\"},
  \"health\":{\"readiness\":{\"httpGet\":\"/healthz\"}},\"routes\":[{\"host\":\"$host\"}],
  \"jobs\":[{\"name\":\"ticker\",\"schedule\":\"0 0 1 1 *\",
    \"args\":[\"sh\",\"-c\",\"i=0; while [ \$i -lt 100 ]; do i=\$((i+1)); echo tick \$i; usleep 100000; done\"]}]}}" >/dev/null

field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
now_ms() { date +%s%3N; }
# The router's answer for host $1 if it is 200, else nothing.
serve() { curl -sf --max-time 2 -H "Host: $1" "http://$router/" 2>/dev/null || true; }
status_of() { curl -sf "${H[@]}" "$api/v1/deployments/$1" | grep -o '"status":"[a-z_]*"' | head -1 | cut -d'"' -f4; }
fail() { echo "$*" >&2; tail -20 "$work/server.log" >&2; exit 1; }

# Builds SHA without deploying it; prints the ready release's id.
release() {
  local id status
  id=$(curl -sf "${H[@]}" -XPOST "$api/v1/projects/$project/services/api/releases" \
    -d "{\"git_sha\":\"$1\",\"deploy\":false}" | field "['release']['id']")
  for _ in $(seq 1 1200); do
    status=$(curl -sf "${H[@]}" "$api/v1/releases/$id" | field "['status']")
    [ "$status" != building ] && break
    sleep 0.1
  done
  [ "$status" = ready ] || fail "release $id ended $status"
  echo "$id"
}

# POST …/services/api/{deployments|rollback} for release $2, then wait until host $host answers
# body $3 and the deployment has succeeded. Prints: seconds until served, seconds until succeeded,
# the deployment's own created→finished milliseconds.
deploy() {
  local path=$1 rel=$2 want=$3 key t0 id served='' done='' st
  [ "$path" = rollback ] && key=to || key=release
  t0=$(date +%s%N)
  id=$(curl -sf "${H[@]}" -XPOST "$api/v1/projects/$project/services/api/$path" -d "{\"$key\":$rel}" | field "['id']")
  while [ -z "$served" ] || [ -z "$done" ]; do
    if [ -z "$served" ] && [ "$(serve "$host")" = "$want" ]; then served=$(( $(date +%s%N) - t0 )); fi
    if [ -z "$done" ]; then
      st=$(status_of "$id")
      case $st in
        succeeded) done=$(( $(date +%s%N) - t0 )) ;;
        failed|rolled_back|superseded) fail "deployment $id ended $st: $(curl -s "${H[@]}" "$api/v1/deployments/$id")" ;;
      esac
    fi
    [ $(( $(date +%s%N) - t0 )) -lt 120000000000 ] || fail "deployment $id: not served after 120 s"
    sleep 0.02
  done
  curl -sf "${H[@]}" "$api/v1/deployments/$id" | python3 -c "import json,sys
d=json.load(sys.stdin); print('%.3f %.3f %d' % ($served/1e9, $done/1e9, d['finished_at']-d['created_at']))"
}

# --- Rollback: v1 and v2 built, v1 then v2 deployed; then rollback to v1, to v2, to v1, … ---------
v1_sha=$(commit v1); v2_sha=$(commit v2)
v1=$(release "$v1_sha"); v2=$(release "$v2_sha")
deploy deployments "$v1" v1 >/dev/null
deploy deployments "$v2" v2 >/dev/null
for run in $(seq 1 "$runs"); do
  if [ $((run % 2)) = 1 ]; then to=$v1 body=v1; else to=$v2 body=v2; fi
  read -r served done ms < <(deploy rollback "$to" "$body")
  printf '{"workload":"rollback","run":%d,"to":"%s","served_seconds":%s,"succeeded_seconds":%s,"deployment_ms":%s}\n' \
    "$run" "$body" "$served" "$done" "$ms" | tee -a "$work/results"
done

# --- Preview: warm-up PR 1 (unmeasured), then PR 2 opened and synchronized with new commits --------
git -C "$repo" checkout -q -b feature
pull_request() {   # ACTION NUMBER SHA
  printf '{"action":"%s","number":%d,"repository":{"full_name":"bench/shop","clone_url":"file://%s","html_url":"file://%s"},
"pull_request":{"number":%d,"merged":false,"head":{"sha":"%s","ref":"feature","repo":{"clone_url":"file://%s"}},
"base":{"sha":"0000000000000000000000000000000000000000","ref":"main"}}}' "$1" "$2" "$repo" "$repo" "$2" "$3" "$repo"
}
# Sends the webhook, waits until the preview serves the commit; prints the JSON line's fields.
preview() {   # ACTION NUMBER RUN
  local action=$1 n=$2 body="preview $2 run $3" sha t0 served='' preview_host="api-preview-$2.preview.localhost"
  sha=$(commit "$body")
  bench_webhook pull_request "bench-pr-$n-$3" "$(pull_request "$action" "$n" "$sha")" >/dev/null
  t0=${bench_sent/./}   # ns, taken just before the webhook was sent
  while [ -z "$served" ]; do
    if [ "$(serve "$preview_host")" = "$body" ]; then served=$(( $(date +%s%N) - t0 )); fi
    [ $(( $(date +%s%N) - t0 )) -lt 240000000000 ] || fail "preview $n never served '$body'"
    sleep 0.02
  done
  # Where the time went, from the release's and deployment's timestamps (ms).
  local rid
  rid=$(curl -sf "${H[@]}" "$api/v1/projects/$project/releases" |
    python3 -c "import json,sys; print([x['id'] for x in json.load(sys.stdin) if x['git_sha']=='$sha'][0])")
  python3 - "$(curl -sf "${H[@]}" "$api/v1/releases/$rid")" "$(curl -sf "${H[@]}" "$api/v1/projects/$project/deployments?service=api")" <<PY
import json, sys
sent = $t0 / 1e6
r = json.loads(sys.argv[1])
d = [x for x in json.loads(sys.argv[2]) if x['release_id'] == r['id']][0]
print(json.dumps({"workload": "preview", "run": $3, "action": "$action", "served_seconds": round($served / 1e9, 3),
  "release_ready_seconds": round((r['updated_at'] - sent) / 1000, 3),
  "deploy_queued_ms": d['created_at'] - r['updated_at'],
  "deployment_ms": d['finished_at'] - d['created_at'],
  "succeeded_to_served_ms": round(sent + $served / 1e6 - d['finished_at']),
  "step_ms": {s['step']: s['finished_at'] - s['started_at'] for s in r.get('steps', [])},
  "environment": d['environment'], "status": d['status']}, separators=(',', ':')))
PY
}
preview opened 1 0 >/dev/null   # warm-up
for run in $(seq 1 "$runs"); do
  if [ "$run" = 1 ]; then action=opened; else action=synchronize; fi
  preview "$action" 2 "$run" | tee -a "$work/results"
done

# --- Log tail: runtime logs of the serving release, then a one-off job's log, for ~8 s each ------
# Each SSE `line` event's latency: the client's receipt minus the line's own time (the engine's
# timestamp for runtime logs, the worker's receipt `at` for job logs). One host, one clock.
tail_latencies() {   # URL TIMESTAMP_FIELD WORKLOAD SECONDS
  python3 - "$1" "$2" "$3" "$4" "$token" <<'PY'
import json, sys, time, urllib.request
from datetime import datetime
url, field, workload, seconds, token = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5]
req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}", "Accept": "text/event-stream"})
opened = time.time() * 1000
lat, event = [], None
with urllib.request.urlopen(req, timeout=30) as resp:
    for raw in resp:
        now = time.time() * 1000
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event == "line":
            d = json.loads(line[6:])
            at = d[field]
            at = at if isinstance(at, (int, float)) else datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp() * 1000
            if at >= opened:   # printed after the stream opened: live, not backlog
                lat.append(now - at)
        elif line.startswith("data: ") and event == "end":
            break
        if now - opened > seconds * 1000:
            break
lat.sort()
pick = lambda q: round(lat[min(len(lat) - 1, max(0, int(q * len(lat) + 0.999) - 1))]) if lat else None
print(json.dumps({"workload": workload, "lines": len(lat), "p50_ms": pick(0.5), "p95_ms": pick(0.95), "max_ms": pick(1.0)}))
PY
}
tail_latencies "$api/v1/projects/$project/services/api/logs?follow=true&tail=0" timestamp runtime_log_tail 8 | tee -a "$work/results"
job=$(curl -sf "${H[@]}" -XPOST "$api/v1/projects/$project/services/api/jobs/ticker/runs" | field "['queue_job_id']")
tail_latencies "$api/v1/jobs/$job/logs/stream" at job_log_tail 8 | tee -a "$work/results"

python3 - "$work/results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def stat(workload, key):
    v = [r[key] for r in rows if r['workload'] == workload and key in r]
    return f"{statistics.median(v):.2f} / {max(v):.2f}" if v else "-"
print("\n| measurement (seconds) | median / max | target |")
print("|---|---|---|")
print(f"| rollback: POST → router serves the old release | {stat('rollback', 'served_seconds')} | < 5 |")
print(f"| rollback: POST → deployment succeeded | {stat('rollback', 'succeeded_seconds')} | |")
print(f"| preview: webhook → preview URL serves the commit | {stat('preview', 'served_seconds')} | < 20 |")
print(f"| preview: webhook → release ready | {stat('preview', 'release_ready_seconds')} | |")
for r in rows:
    if r['workload'].endswith('_log_tail'):
        print(f"| {r['workload']}: line → client, P50 / P95 / max ms over {r['lines']} lines | {r['p50_ms']} / {r['p95_ms']} / {r['max_ms']} | P95 < 2000 |")
PY
