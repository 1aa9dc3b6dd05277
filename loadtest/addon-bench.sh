#!/usr/bin/env bash
# Time from `POST …/addons` to `ready` (the add-on accepts its generated login over TCP), per kind,
# against the same image started by hand: `docker run` with a password, then polling a login with
# the image's own client until it works. Runs interleaved, ROUNDS of each (default 3). Uses the
# stand-in images of .ci/addon-images.sh (no registry is reachable here).
#   bash loadtest/addon-bench.sh            # prints one JSON line per measurement
set -euo pipefail
cd "$(dirname "$0")/.."
source loadtest/bench-lib.sh
bash .ci/addon-images.sh postgres redis >&2
rounds=${ROUNDS:-3}
bench_server ENCLII_DEPLOY_TARGET=docker ENCLII_ROUTER_LISTEN=127.0.0.1:0
curl -sf "${H[@]}" -XPOST "$api/v1/projects" -d '{"slug":"addonbench"}' >/dev/null

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# enclii: create, poll the add-on's status every 100 ms.
enclii_ready() {
  local kind=$1 image=$2 version=$3 name=$4 start status
  start=$(now)
  curl -sf "${H[@]}" -XPOST "$api/v1/projects/addonbench/environments/prod/addons" \
    -d "{\"name\":\"$name\",\"kind\":\"$kind\",\"image\":\"$image\",\"version\":\"$version\"}" >/dev/null
  for _ in $(seq 1 1800); do
    status=$(curl -sf "${H[@]}" "$api/v1/projects/addonbench/environments/prod/addons/$name" | sed -n 's/.*"status":"\([a-z]*\)".*/\1/p')
    [ "$status" = ready ] && break
    [ "$status" = failed ] && { echo "add-on $name failed" >&2; exit 1; }
    sleep 0.1
  done
  elapsed "$start" "$(now)"
}

# By hand: docker run, then the image's client logs in over TCP inside the container.
by_hand() {
  local kind=$1 image=$2 name=$3 start
  start=$(now)
  if [ "$kind" = postgres ]; then
    docker run -d -q --name "$name" -e POSTGRES_PASSWORD=bench -e POSTGRES_USER=app -e POSTGRES_DB=app "$image" >/dev/null
    until docker exec -e PGPASSWORD=bench "$name" psql -h 127.0.0.1 -U app -d app -tAc 'SELECT 1' >/dev/null 2>&1; do sleep 0.1; done
  else
    docker run -d -q --name "$name" "$image" redis-server --requirepass bench >/dev/null
    until [ "$(docker exec -e REDISCLI_AUTH=bench "$name" redis-cli -h 127.0.0.1 PING 2>/dev/null)" = PONG ]; do sleep 0.1; done
  fi
  elapsed "$start" "$(now)"
  docker rm -f "$name" >/dev/null
}

bench_on_exit() {
  docker ps -aq --filter label=dev.enclii.project=addonbench | xargs -r docker rm -f >/dev/null
  docker volume ls -q --filter name=enclii-addon-addonbench- | xargs -r docker volume rm -f >/dev/null
  docker ps -aq --filter name=addonbench-hand- | xargs -r docker rm -f >/dev/null
}

for round in $(seq 1 "$rounds"); do
  for spec in "postgres enclii-test/postgres:15 15" "redis enclii-test/redis:7 7"; do
    read -r kind image version <<<"$spec"
    e=$(enclii_ready "$kind" "$image" "$version" "$kind$round")
    h=$(by_hand "$kind" "$image" "addonbench-hand-$kind$round")
    echo "{\"bench\":\"addon-ready\",\"kind\":\"$kind\",\"round\":$round,\"enclii_s\":$e,\"by_hand_s\":$h}"
  done
done
