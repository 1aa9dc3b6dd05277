#!/usr/bin/env bash
# Backup and restore throughput of a PostgreSQL add-on of SIZE_MB (default 1024) MiB, Enclii against
# the same done by hand, interleaved, ROUNDS of each (default 2):
#   backup   Enclii: `POST …/backups` until `completed` (pg_dump -Fc → sealed → S3 multipart upload)
#            by hand: `docker exec pg_dump -Fc | boto3 upload_fileobj` to the same S3 server
#   restore  Enclii: `POST …/restore` until the job completed (checksum pass, download → open →
#            pg_restore --clean --if-exists --single-transaction)
#            by hand: boto3 download_fileobj | docker exec -i pg_restore (same flags)
# MB/s is the database's size (pg_database_size) over the time. S3 is the test's moto server.
#   bash loadtest/backup-bench.sh        # one JSON line per measurement
set -euo pipefail
cd "$(dirname "$0")/.."
source loadtest/bench-lib.sh
bash .ci/addon-images.sh postgres >&2
rounds=${ROUNDS:-2}
size_mb=${SIZE_MB:-1024}
bench_server ENCLII_DEPLOY_TARGET=docker ENCLII_ROUTER_LISTEN=127.0.0.1:0
bucket="bench-$(basename "$work" | tr 'A-Z.' 'a-z-')"
addons="$api/v1/projects/backupbench/environments/prod/addons"
container=enclii-addon-backupbench-prod-db

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
field() { sed -n "s/.*\"$1\":\"\{0,1\}\([^\",}]*\).*/\1/p"; }

bench_on_exit() {
  docker ps -aq --filter label=dev.enclii.project=backupbench | xargs -r docker rm -f >/dev/null
  docker volume ls -q --filter name=enclii-addon-backupbench- | xargs -r docker volume rm -f >/dev/null
}

curl -sf "${H[@]}" -XPOST "$api/v1/projects" -d '{"slug":"backupbench"}' >/dev/null
curl -sf "${H[@]}" -XPOST "$addons" -d '{"name":"db","kind":"postgres","image":"enclii-test/postgres:15","version":"15"}' >/dev/null
until [ "$(curl -sf "${H[@]}" "$addons/db" | field status)" = ready ]; do sleep 0.5; done

# Rows of ~160 bytes: md5 text (compresses about 2:1) and a repeated tail (compresses well).
rows=$((size_mb * 1024 * 1024 / 160))
echo "filling $size_mb MiB ($rows rows)" >&2
docker exec -i "$container" psql -q -U app -d app -v ON_ERROR_STOP=1 >&2 <<SQL
CREATE TABLE big AS SELECT g AS id, md5(g::text) || md5((g + 1)::text) || repeat('x', 60) AS v
  FROM generate_series(1, $rows) g;
SQL
db_bytes=$(docker exec "$container" psql -U app -d app -tAc "SELECT pg_database_size('app')")
mb() { awk -v b="$db_bytes" -v s="$1" 'BEGIN { printf "%.1f", b / 1048576 / s }'; }
echo "database: $db_bytes bytes" >&2

s3py() {
  python3 -c "
import sys, boto3
s3 = boto3.client('s3', endpoint_url='http://127.0.0.1:8014', aws_access_key_id='bench', aws_secret_access_key='bench', region_name='us-east-1')
if sys.argv[1] == 'put': s3.upload_fileobj(sys.stdin.buffer, '$bucket', sys.argv[2])
else: s3.download_fileobj('$bucket', sys.argv[2], sys.stdout.buffer)
" "$@"
}

enclii_backup() {
  local start id status
  start=$(now)
  id=$(curl -sf "${H[@]}" -XPOST "$addons/db/backups" | field id)
  while :; do
    status=$(curl -sf "${H[@]}" "$addons/db/backups" | tr '{' '\n' | grep "\"id\":$id," | field status)
    [ "$status" = completed ] && break
    [ "$status" = failed ] && { echo "backup $id failed" >&2; exit 1; }
    sleep 0.2
  done
  echo "$id $(elapsed "$start" "$(now)")"
}

enclii_restore() {
  local start job state
  start=$(now)
  job=$(curl -sf "${H[@]}" -XPOST "$addons/db/restore" -d "{\"backup\":$1}" | field job)
  while :; do
    state=$(curl -sf "${H[@]}" "$api/v1/jobs/$job" | field state)
    [ "$state" = completed ] && break
    case "$state" in dead | failed | cancelled) echo "restore job $job: $state" >&2; exit 1 ;; esac
    sleep 0.2
  done
  elapsed "$start" "$(now)"
}

hand_backup() {
  local start
  start=$(now)
  docker exec "$container" pg_dump -Fc -U app -d app | s3py put "hand/$1.pgdump"
  elapsed "$start" "$(now)"
}

hand_restore() {
  local start
  start=$(now)
  s3py get "hand/$1.pgdump" | docker exec -i "$container" pg_restore --clean --if-exists --no-owner \
    --no-privileges --single-transaction --exit-on-error -U app -d app
  elapsed "$start" "$(now)"
}

for round in $(seq 1 "$rounds"); do
  read -r id e_backup < <(enclii_backup)
  h_backup=$(hand_backup "$round")
  stored=$(curl -sf "${H[@]}" "$addons/db/backups" | tr '{' '\n' | grep "\"id\":$id," | field size_bytes)
  echo "{\"bench\":\"addon-backup\",\"round\":$round,\"db_bytes\":$db_bytes,\"stored_bytes\":$stored,\"enclii_s\":$e_backup,\"by_hand_s\":$h_backup,\"enclii_mb_s\":$(mb "$e_backup"),\"by_hand_mb_s\":$(mb "$h_backup")}"
  h_restore=$(hand_restore "$round")
  e_restore=$(enclii_restore "$id")
  echo "{\"bench\":\"addon-restore\",\"round\":$round,\"db_bytes\":$db_bytes,\"enclii_s\":$e_restore,\"by_hand_s\":$h_restore,\"enclii_mb_s\":$(mb "$e_restore"),\"by_hand_mb_s\":$(mb "$h_restore")}"
done
