#!/usr/bin/env bash
# Issue 16's HTTPS on the Junctions router, through one real `enclii server` (SQLite; the debug
# build README command 1 runs, or BENCH_PROFILE's) on the Docker target. Its router serves two
# services on plain HTTP and on its TLS listener (rustls, ring; a certificate file for
# `*.bench.test` from a throwaway openssl CA; the routes say `tls: {redirect: false}` so HTTP is
# served, not redirected):
#   `api.bench.test`: busybox httpd, `/` a 3-byte static file — it closes every connection;
#   `ka.bench.test`:  a 50-line C server built here (`ok` on every path) that keeps them alive.
# Measured, one JSON line each:
#   throughput: wrk against each replica's published port (direct: the baseline), the router over
#             HTTP and over HTTPS to each, and the router alone (`nope.bench.test`: no route, its
#             own 404, no upstream); on kept-alive connections (`-t1 -c1`, `-t2 -c16`) and on a new
#             connection per request (`-t2 -c16 -H 'Connection: close'`: a TCP — and TLS — handshake
#             each). Interleaved: each round runs every target of a mode back to back, in reverse
#             order every other round. wrk, server, docker-proxy and the upstreams share the cores;
#   handshake: sequential curls (one process, one new connection each; HTTP and HTTPS alternately)
#             to busybox: the whole request (`time_total`) and the TLS handshake
#             (`time_appconnect − time_connect`);
#   ACME:     Pebble, with pebble-challtestsrv as its DNS and the ownership check's; fresh domains
#             one at a time: verify POST → `verified` → certificate `issued` → HTTPS answers 200 with
#             Pebble's root trusted (the server reloads certificates when the store's fingerprint
#             moves, polled every 2 s).
# wrk needs the names to resolve (SNI picks the certificate): the three hosts are added to
# /etc/hosts for the run and removed on exit. Installs wrk (Debian) if missing. With
# TLS_BENCH_PERF=1, also profiles the server with `perf` (CPU share by crate; see below).
# BENCH_PROFILE=release serves the binary the image ships (`cargo build --release`, Dockerfile)
# instead of the debug one (see loadtest/bench-lib.sh). TLS_BENCH_FIRST_ROUND=N numbers the rounds
# from N (default 1; an even N starts in reverse order), so that short runs of two builds can be
# interleaved and read together. HANDSHAKES or DOMAINS 0 skips that part.
# Prints the JSON lines, then a table of medians.
# Usage: [BENCH_PROFILE=release] [TLS_BENCH_FIRST_ROUND=N] [TLS_BENCH_PERF=1] \
#          bash loadtest/tls-bench.sh [ROUNDS] [SECONDS] [HANDSHAKES] [DOMAINS]
#        (default 3 rounds of 10 s runs, 200 handshakes each, 5 domains)
#        bash loadtest/tls-bench.sh --table FILE…   the table of medians of saved JSON lines
set -euo pipefail
cd "$(dirname "$0")/.."
# --- Table of medians (also on its own: `--table FILE…` reads the JSON lines of earlier runs) -------
print_table() {
  python3 - "$@" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for f in sys.argv[1:] for l in open(f) if l.startswith("{")]
wrk = [r for r in rows if r["workload"] == "wrk"]
def cell(target, mode, key, fmt):
    v = [r[key] for r in wrk if r["target"] == target and r["mode"] == mode and r[key] is not None]
    if not v:
        return "–"
    return f"{fmt(statistics.median(v))} ({fmt(min(v))}–{fmt(max(v))})" if len(v) > 1 else fmt(v[0])
modes = ["keepalive-c1", "keepalive-c16", "close-c16"]
names = {"direct": "busybox httpd, direct (published port)", "http": "busybox httpd via router, HTTP",
         "https": "busybox httpd via router, HTTPS", "ka-direct": "keep-alive app, direct (published port)",
         "ka-http": "keep-alive app via router, HTTP", "ka-https": "keep-alive app via router, HTTPS",
         "router404-http": "router alone (404, no route), HTTP", "router404-https": "router alone (404, no route), HTTPS"}
rounds = len({r["round"] for r in wrk})
setups = [r for r in rows if r["workload"] == "setup"]
profiles = sorted({r.get("profile", "dev") for r in setups})
commits = sorted({r["commit"] for r in setups})
print(f"\nbuild profile {'/'.join(profiles)}, commit {'/'.join(commits)}; wrk, req/s median (min–max over {rounds} rounds) and P50 / P99 ms (medians)")
print("| target | keep-alive `-t1 -c1` | P50 / P99 | keep-alive `-t2 -c16` | P50 / P99 | new connection `-t2 -c16` + `Connection: close` | P50 / P99 |")
print("|---|---|---|---|---|---|---|")
f0 = lambda x: f"{x:,.0f}"
f2 = lambda x: f"{x:.2f}"
for t, name in names.items():
    cells = []
    for m in modes:
        cells += [cell(t, m, "requests_per_s", f0),
                  f"{statistics.median([r['p50_ms'] for r in wrk if r['target'] == t and r['mode'] == m] or [0]):.2f} / "
                  f"{statistics.median([r['p99_ms'] for r in wrk if r['target'] == t and r['mode'] == m] or [0]):.2f}"]
    print(f"| {name} | " + " | ".join(cells) + " |")
errs = sum(r["socket_errors"] for r in wrk)
bad = sum(r["non_2xx_3xx"] for r in wrk if not r["target"].startswith("router404"))
print(f"\nsocket errors over all wrk runs: {errs}; non-2xx/3xx answers outside the 404 runs: {bad}")
for r in wrk:
    if r["socket_errors"]:
        print(f"  socket errors: round {r['round']} {r['target']} {r['mode']}: {r['socket_errors']} of {r['requests']} requests")
for r in rows:
    if r["workload"] == "handshake":
        extra = f"; TLS handshake P50 / P95 / max {r['tls_handshake_p50_ms']} / {r['tls_handshake_p95_ms']} / {r['tls_handshake_max_ms']} ms" if "tls_handshake_p50_ms" in r else ""
        print(f"handshake + one request, {r['scheme']}, {r['ok']}/{r['requests']} ok: total P50 / P95 / max "
              f"{r['total_p50_ms']} / {r['total_p95_ms']} / {r['total_max_ms']} ms{extra}")
acme = [r for r in rows if r["workload"] == "acme"]
if acme:
    def s(key):
        v = [r[key] for r in acme]
        return f"median {statistics.median(v)/1000:.2f} s (min {min(v)/1000:.2f}, max {max(v)/1000:.2f})"
    print(f"ACME, {len(acme)} domains, from the verify POST: → verified {s('verify_post_to_verified_ms')}; → issued {s('verify_post_to_issued_ms')}; "
          f"→ HTTPS 200 {s('verify_post_to_served_ms')}. verified → HTTPS 200 {s('verified_to_served_ms')}; issued → HTTPS 200 {s('issued_to_served_ms')}")
for r in rows:
    if r["workload"] == "perf":
        for kind in ("self", "by_caller", "inclusive"):
            print(f"perf, {r['target']} {r['mode']}, {r['samples']} samples, server CPU % ({kind.replace('_', ' ')}):",
                  ", ".join(f"{k} {v}" for k, v in r[f"cpu_share_pct_{kind}"].items()))
PY
}
if [ "${1:-}" = --table ]; then shift; print_table "$@"; exit; fi
rounds=${1:-3}
seconds=${2:-10}
handshakes=${3:-200}
domains=${4:-5}
first_round=${TLS_BENCH_FIRST_ROUND:-1}
command -v wrk >/dev/null || { apt-get install -y -qq wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }; }
source loadtest/bench-lib.sh   # infra, `enclii` build, base image, bench_server
# The shared target directory may be rebuilt while this runs: serve (and profile) a copy.
cp "$bin" "$work/enclii" && bin=$work/enclii
project=tlsbench
host=api.bench.test
nope=nope.bench.test
marker='# enclii tls-bench'
pebble_pid='' dns_pid=''
hosts_without_ours() { grep -vF "$marker" /etc/hosts || true; }
bench_on_exit() {
  # /etc/hosts may be a bind mount: rewrite it in place rather than replace it.
  if grep -qF "$marker" /etc/hosts; then local kept; kept=$(hosts_without_ours); printf '%s\n' "$kept" >/etc/hosts; fi
  if [ -n "$pebble_pid" ]; then kill "$pebble_pid" 2>/dev/null; wait "$pebble_pid" 2>/dev/null || true; fi
  if [ -n "$dns_pid" ]; then kill "$dns_pid" 2>/dev/null; wait "$dns_pid" 2>/dev/null || true; fi
  /usr/bin/docker ps -aq --filter "label=dev.enclii.project=$project" | xargs -r /usr/bin/docker rm -f >/dev/null || true
  return 0
}
bench_on_exit   # leftovers of an interrupted earlier run
# Clean up (/etc/hosts too) on signals as well, and past a failing step of the cleanup itself.
trap 'set +e; bench_exit' EXIT; trap 'exit 143' TERM; trap 'exit 130' INT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
fail() { echo "$*" >&2; tail -20 "$work/server.log" >&2; exit 1; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

# --- Certificates: `*.bench.test` for the router's file, and Pebble's own HTTPS ------------------
make_certificate() {   # STEM SAN…   → $work/certs/STEM.pem, STEM.key, STEM-ca.pem (EC P-256, as cli/tests)
  local stem=$1 d=$work/certs; shift
  mkdir -p "$d"
  local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  openssl req -x509 "${ec[@]}" -keyout "$d/$stem-ca.key" -out "$d/$stem-ca.pem" -days 2 -subj "/CN=enclii bench CA" 2>/dev/null
  openssl req "${ec[@]}" -keyout "$d/$stem.key" -out "$d/$stem.csr" -subj "/CN=enclii bench" 2>/dev/null
  printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' "$(IFS=,; echo "$*")" >"$d/$stem.ext"
  openssl x509 -req -in "$d/$stem.csr" -CA "$d/$stem-ca.pem" -CAkey "$d/$stem-ca.key" -CAcreateserial \
    -out "$d/$stem.pem" -days 2 -extfile "$d/$stem.ext" 2>/dev/null
}
make_certificate bench 'DNS:*.bench.test'
make_certificate pebble DNS:localhost IP:127.0.0.1

router_port=$(free_port); tls_port=$(free_port)
router=127.0.0.1:$router_port tls=127.0.0.1:$tls_port

# --- DNS (pebble-challtestsrv: every name is 127.0.0.1, no AAAA) and Pebble, as cli/tests/support ----
dns=127.0.0.1:$(free_port); dns_mgmt=127.0.0.1:$(free_port)
pebble-challtestsrv -dns01 "$dns" -management "$dns_mgmt" -http01 '' -https01 '' -tlsalpn01 '' -defaultIPv6 '' \
  >"$work/challtestsrv.log" 2>&1 &
dns_pid=$!
pebble_listen=127.0.0.1:$(free_port); pebble_mgmt=127.0.0.1:$(free_port)
printf '{"pebble":{"listenAddress":"%s","managementListenAddress":"%s","certificate":"%s","privateKey":"%s",
"httpPort":%d,"tlsPort":%d,"ocspResponderURL":"","externalAccountBindingRequired":false}}\n' \
  "$pebble_listen" "$pebble_mgmt" "$work/certs/pebble.pem" "$work/certs/pebble.key" "$router_port" "$(free_port)" \
  >"$work/pebble.json"
PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 pebble -config "$work/pebble.json" -dnsserver "$dns" >"$work/pebble.log" 2>&1 &
pebble_pid=$!
for _ in $(seq 1 100); do
  curl -s -o /dev/null "http://$dns_mgmt/" && curl -s -o /dev/null --cacert "$work/certs/pebble-ca.pem" "https://$pebble_listen/dir" && break
  sleep 0.1
done
curl -sf -o /dev/null --cacert "$work/certs/pebble-ca.pem" "https://$pebble_listen/dir" || { cat "$work/pebble.log" >&2; fail "pebble did not start"; }
curl -sSf --cacert "$work/certs/pebble-ca.pem" "https://$pebble_mgmt/roots/0" >"$work/certs/issuer-root.pem"

# --- The server, its router on HTTP and HTTPS ------------------------------------------------------
bench_server ENCLII_DEPLOY_TARGET=docker ENCLII_DOCKER_CLI=/usr/bin/docker \
  ENCLII_ROUTER_LISTEN="$router" ENCLII_ROUTER_TLS_LISTEN="$tls" \
  ENCLII_ROUTER_TLS_CERT="$work/certs/bench.pem" ENCLII_ROUTER_TLS_KEY="$work/certs/bench.key" \
  ENCLII_ACME_DIRECTORY="https://$pebble_listen/dir" ENCLII_ACME_CA_ROOT="$work/certs/pebble-ca.pem" \
  ENCLII_ACME_EMAIL=ops@tlsbench.example ENCLII_DNS_RESOLVER="$dns"

# The app: busybox httpd on port 3000 (a 3-byte `/`, /healthz for the readiness probe), the whole
# machine's CPU allowed (a trivial upstream should not be throttled by its own limit).
repo="$work/repo"
mkdir -p "$repo/www"
printf 'FROM enclii-test/busybox:latest\nCOPY www /www\nCMD ["httpd", "-f", "-p", "3000", "-h", "/www"]\n' >"$repo/Dockerfile"
echo ok >"$repo/www/healthz"
echo ok >"$repo/www/index.html"
git -C "$repo" init -q -b main
git -C "$repo" add -A && git -C "$repo" -c user.name=b -c user.email=b@example.com commit -qm app
sha=$(git -C "$repo" rev-parse HEAD)
# A second app that keeps connections alive (busybox httpd closes every one, and says so): a
# 50-line C server, a thread per connection, `ok` on every path, built static here.
karepo="$work/karepo"
mkdir -p "$karepo"
cat >"$work/ka-httpd.c" <<'C'
#define _GNU_SOURCE
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n";
static const char ok_close[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n";
static void *serve(void *arg) {
  int fd = (int)(long)arg, used = 0, n;
  char buf[16384];
  while ((n = read(fd, buf + used, sizeof buf - 1 - used)) > 0) {
    used += n;
    buf[used] = 0;
    char *end;
    while ((end = strstr(buf, "\r\n\r\n"))) {   /* bodiless requests only: GET, HEAD */
      *end = 0;
      int close_after = strcasestr(buf, "\nconnection: close") != NULL;
      if (close_after) { if (write(fd, ok_close, sizeof ok_close - 1) < 0) {} goto done; }
      if (write(fd, ok, sizeof ok - 1) < 0) goto done;
      used -= end + 4 - buf;
      memmove(buf, end + 4, used + 1);
    }
    if (used >= (int)sizeof buf - 1) break;
  }
done:   /* a lingering close, as busybox httpd does: no reset for bytes still in flight */
  shutdown(fd, SHUT_WR);
  struct timeval tv = {.tv_sec = 1};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  while (read(fd, buf, sizeof buf) > 0) {}
  close(fd);
  return NULL;
}
int main(void) {
  int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(3000)};
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 1024)) return 1;
  for (;;) {
    int c = accept(s, NULL, NULL);
    if (c < 0) continue;
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    pthread_t t;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&at, 65536);
    if (pthread_create(&t, &at, serve, (void *)(long)c)) close(c);
  }
}
C
gcc -O2 -static -pthread -o "$karepo/ka-httpd" "$work/ka-httpd.c"
printf 'FROM enclii-test/busybox:latest\nCOPY ka-httpd /ka-httpd\nCMD ["/ka-httpd"]\n' >"$karepo/Dockerfile"
git -C "$karepo" init -q -b main
git -C "$karepo" add -A && git -C "$karepo" -c user.name=b -c user.email=b@example.com commit -qm app

curl -sf "${H[@]}" -XPOST "$api/v1/projects" -d "{\"slug\":\"$project\"}" >/dev/null
# deploy_service NAME REPO HOST: creates the service, builds and deploys its head, waits until the
# router serves HOST; prints the replica's published address.
deploy_service() {
  local name=$1 repo=$2 rhost=$3 sha rid st addr
  sha=$(git -C "$repo" rev-parse HEAD)
  curl -sf "${H[@]}" -XPOST "$api/v1/projects/$project/services" -d "{\"apiVersion\":\"enclii.dev/v1\",\"kind\":\"Service\",
    \"metadata\":{\"project\":\"$project\",\"environment\":\"prod\",\"name\":\"$name\"},
    \"spec\":{\"source\":{\"git\":{\"repository\":\"file://$repo\",\"branch\":\"main\"}},
    \"runtime\":{\"ports\":[3000],\"memory\":\"64Mi\",\"cpu\":\"2\"},
    \"health\":{\"readiness\":{\"httpGet\":\"/healthz\"}},
    \"routes\":[{\"host\":\"$rhost\",\"tls\":{\"redirect\":false}}]}}" >/dev/null || fail "service $name not created"
  rid=$(curl -sf "${H[@]}" -XPOST "$api/v1/projects/$project/services/$name/releases" \
    -d "{\"git_sha\":\"$sha\",\"deploy\":false}" | field "['release']['id']")
  for _ in $(seq 1 1200); do
    st=$(curl -sf "${H[@]}" "$api/v1/releases/$rid" | field "['status']")
    [ "$st" != building ] && break
    sleep 0.1
  done
  [ "$st" = ready ] || fail "release $rid of $name ended $st"
  curl -sf "${H[@]}" -XPOST "$api/v1/projects/$project/services/$name/deployments" -d "{\"release\":$rid}" >/dev/null
  for _ in $(seq 1 600); do
    [ "$(curl -sf --max-time 2 -H "Host: $rhost" "http://$router/" 2>/dev/null)" = ok ] && break
    sleep 0.1
  done
  [ "$(curl -sf -H "Host: $rhost" "http://$router/")" = ok ] || fail "the router does not serve $rhost"
  addr=$(/usr/bin/docker ps --filter "label=dev.enclii.project=$project" --filter "label=dev.enclii.service=$name" \
    --format '{{.Ports}}' | grep -o '127\.0\.0\.1:[0-9]*' | head -1)
  [ -n "$addr" ] || fail "no published port for $name's replica"
  echo "$addr"
}
upstream=$(deploy_service api "$repo" "$host")
ka_host=ka.bench.test
ka_upstream=$(deploy_service ka "$karepo" "$ka_host")

# wrk resolves the URL's host (and sends it as SNI): add the bench hosts to /etc/hosts.
printf '127.0.0.1 %s %s %s %s\n' "$host" "$ka_host" "$nope" "$marker" >>/etc/hosts
[ "$(curl -sf --cacert "$work/certs/bench-ca.pem" "https://$host:$tls_port/")" = ok ] || fail "HTTPS to $host does not answer"
tls_session=$(openssl s_client -connect "$tls" -servername "$host" </dev/null 2>/dev/null |
  sed -n 's/^New, \(.*\), Cipher is \(.*\)$/\1 \2/p' | head -1)
# Does a client's connection survive a request? Two requests in one curl: `num_connects` of the
# second is 0 when the connection was kept alive. And what the answer says about it.
reuse() { curl -s -o /dev/null -o /dev/null --cacert "$work/certs/bench-ca.pem" -w '%{num_connects} ' "$1" "$1" | awk '{print ($2 == 0) ? "kept" : "closed"}'; }
conn_header() { curl -s -o /dev/null -D - --cacert "$work/certs/bench-ca.pem" "$1" | tr -d '\r' | sed -n 's/^[Cc]onnection: //p'; }
python3 - <<PY | tee -a "$work/results"
import json
print(json.dumps({"workload": "setup", "commit": "$(git rev-parse --short HEAD)", "profile": "${BENCH_PROFILE:-dev}",
  "dirty_tree": $([ -n "$(git status --porcelain -uno)" ] && echo True || echo False), "nproc": $(nproc),
  "loadavg": "$(cut -d' ' -f1-3 /proc/loadavg)", "tls": "$tls_session", "wrk": "$(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)",
  "client_connection_after_a_request": {
    "busybox direct": "$(reuse "http://$upstream/")", "busybox via router HTTP": "$(reuse "http://$host:$router_port/")",
    "busybox via router HTTPS": "$(reuse "https://$host:$tls_port/")",
    "keep-alive app direct": "$(reuse "http://$ka_upstream/")", "keep-alive app via router HTTP": "$(reuse "http://$ka_host:$router_port/")",
    "keep-alive app via router HTTPS": "$(reuse "https://$ka_host:$tls_port/")",
    "router 404 HTTP": "$(reuse "http://$nope:$router_port/")", "router 404 HTTPS": "$(reuse "https://$nope:$tls_port/")"},
  "connection_header": {"busybox direct": "$(conn_header "http://$upstream/")",
    "busybox via router HTTPS": "$(conn_header "https://$host:$tls_port/")",
    "keep-alive app via router HTTPS": "$(conn_header "https://$ka_host:$tls_port/")"}}, separators=(",", ":")))
PY

# --- 1. Throughput: wrk -------------------------------------------------------------------------
url_of() {
  case $1 in
    direct) echo "http://$upstream/" ;;
    http) echo "http://$host:$router_port/" ;;
    https) echo "https://$host:$tls_port/" ;;
    ka-direct) echo "http://$ka_upstream/" ;;
    ka-http) echo "http://$ka_host:$router_port/" ;;
    ka-https) echo "https://$ka_host:$tls_port/" ;;
    router404-http) echo "http://$nope:$router_port/" ;;
    router404-https) echo "https://$nope:$tls_port/" ;;
  esac
}
# run_wrk ROUND TARGET MODE: one wrk run, one JSON line.
run_wrk() {
  local round=$1 target=$2 mode=$3 args=()
  case $mode in
    keepalive-c1) args=(-t1 -c1) ;;
    keepalive-c16) args=(-t2 -c16) ;;
    close-c16) args=(-t2 -c16 -H 'Connection: close') ;;
  esac
  wrk "${args[@]}" -d "${seconds}s" --latency "$(url_of "$target")" >"$work/wrk.out" 2>&1 || true
  python3 - "$work/wrk.out" "$round" "$target" "$mode" "${args[*]}" "$seconds" "$(cut -d' ' -f1 /proc/loadavg)" <<'PY'
import json, re, sys
text = open(sys.argv[1]).read()
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v)
    return round(float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)], 3)
lat = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", text, re.M))
rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
total = re.search(r"(\d+) requests in", text)
errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
if not rps:
    print(text, file=sys.stderr)
print(json.dumps({"workload": "wrk", "round": int(sys.argv[2]), "target": sys.argv[3], "mode": sys.argv[4],
    "wrk_args": sys.argv[5], "seconds": int(sys.argv[6]),
    "requests_per_s": float(rps.group(1)) if rps else None, "requests": int(total.group(1)) if total else None,
    "p50_ms": ms(lat["50"]) if "50" in lat else None, "p90_ms": ms(lat["90"]) if "90" in lat else None,
    "p99_ms": ms(lat["99"]) if "99" in lat else None,
    "socket_errors": sum(map(int, errors.groups())) if errors else 0,
    "non_2xx_3xx": int(non2xx.group(1)) if non2xx else 0, "loadavg_1m": float(sys.argv[7])}, separators=(",", ":")))
PY
}
all_targets=(direct http https ka-direct ka-http ka-https router404-http router404-https)
for target in "${all_targets[@]}"; do wrk -t1 -c4 -d2s "$(url_of "$target")" >/dev/null 2>&1 || true; done   # warm-up
for round in $(seq "$first_round" $((first_round + rounds - 1))); do
  for mode in keepalive-c1 keepalive-c16 close-c16; do
    targets=("${all_targets[@]}")
    [ $((round % 2)) = 0 ] && targets=($(printf '%s\n' "${targets[@]}" | tac))
    for target in "${targets[@]}"; do
      run_wrk "$round" "$target" "$mode" | tee -a "$work/results"
    done
  done
done

# --- 2. Handshake + one request: sequential curls, a new process and connection each -----------
if [ "$handshakes" -gt 0 ]; then
: >"$work/curl"
for i in $(seq 1 "$handshakes"); do
  curl -s -o /dev/null -w 'http %{http_code} %{time_connect} %{time_appconnect} %{time_total}\n' "http://$host:$router_port/" >>"$work/curl"
  curl -s -o /dev/null -w 'https %{http_code} %{time_connect} %{time_appconnect} %{time_total}\n' \
    --cacert "$work/certs/bench-ca.pem" "https://$host:$tls_port/" >>"$work/curl"
done
python3 - "$work/curl" <<'PY' | tee -a "$work/results"
import json, sys
rows = [l.split() for l in open(sys.argv[1])]
def pct(v, q):
    v = sorted(v)
    return round(v[min(len(v) - 1, max(0, int(q * len(v) + 0.999) - 1))] * 1000, 3)
for scheme in ("http", "https"):
    r = [x for x in rows if x[0] == scheme]
    ok = [x for x in r if x[1] == "200"]
    total = [float(x[4]) for x in ok]
    out = {"workload": "handshake", "scheme": scheme, "requests": len(r), "ok": len(ok),
           "total_p50_ms": pct(total, 0.5), "total_p95_ms": pct(total, 0.95), "total_max_ms": pct(total, 1.0),
           "connect_p50_ms": pct([float(x[2]) for x in ok], 0.5)}
    if scheme == "https":
        hs = [float(x[3]) - float(x[2]) for x in ok]
        out.update({"tls_handshake_p50_ms": pct(hs, 0.5), "tls_handshake_p95_ms": pct(hs, 0.95),
                    "tls_handshake_max_ms": pct(hs, 1.0)})
    print(json.dumps(out, separators=(",", ":")))
PY
fi

# --- 3. ACME: verify → verified → issued → served over HTTPS -------------------------------------
now_ms() { date +%s%3N; }
stamp=$(date +%s)
for n in $(seq 1 "$domains"); do
  d="d$n-$stamp.tlsbench.example"
  added=$(curl -sf "${H[@]}" -XPOST "$api/v1/projects/$project/domains" -d "{\"host\":\"$d\",\"service\":\"api\"}") ||
    fail "domain $d not added"
  id=$(echo "$added" | field "['id']")
  value=$(echo "$added" | field "['ownership']['value']")
  curl -sf -XPOST "http://$dns_mgmt/set-txt" -d "{\"host\":\"_enclii-challenge.$d.\",\"value\":\"$value\"}" >/dev/null
  t0=$(now_ms)
  curl -sf "${H[@]}" -XPOST "$api/v1/projects/$project/domains/$id/verify" >/dev/null || true
  verified='' issued='' served='' view=''
  while [ -z "$served" ]; do
    if [ -z "$issued" ]; then
      view=$(curl -sf "${H[@]}" "$api/v1/projects/$project/domains/$id" || true)
      read -r st cst < <(echo "$view" | python3 -c "import json,sys
d=json.load(sys.stdin); print(d.get('status'), (d.get('certificate') or {}).get('status'))" 2>/dev/null || echo '- -')
      [ -z "$verified" ] && [ "$st" = verified ] && verified=$(( $(now_ms) - t0 ))
      [ "$cst" = failed ] && fail "certificate for $d failed: $view"
      [ "$cst" = issued ] && issued=$(( $(now_ms) - t0 ))
    fi
    if [ -n "$verified" ] && [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 --cacert "$work/certs/issuer-root.pem" \
         --resolve "$d:$tls_port:127.0.0.1" "https://$d:$tls_port/" 2>/dev/null)" = 200 ]; then
      served=$(( $(now_ms) - t0 ))
      [ -z "$issued" ] && issued=$served
    fi
    [ $(( $(now_ms) - t0 )) -lt 120000 ] || { cat "$work/pebble.log" >&2; fail "$d not served over HTTPS after 120 s: $view"; }
    sleep 0.05
  done
  printf '{"workload":"acme","domain":%d,"verify_post_to_verified_ms":%d,"verify_post_to_issued_ms":%d,"verify_post_to_served_ms":%d,"verified_to_served_ms":%d,"issued_to_served_ms":%d}\n' \
    "$n" "$verified" "$issued" "$served" $((served - verified)) $((served - issued)) | tee -a "$work/results"
done

# --- Optional: where the server's CPU goes --------------------------------------------------------
# perf on the server process (DWARF call graphs: the debug build has no frame pointers) while wrk
# runs once more: HTTPS keep-alive to busybox and to the keep-alive app, and HTTPS new connections
# to the router alone (handshakes). Each sample is charged to the crate of the function it was in
# ("self"); again with `core`/`alloc`/`std` functions charged to the first caller outside them ("by
# caller": their generic code is instantiated in, and compiled with, the caller); and "inclusive"
# shares of a few areas (a sample counts for each area on its stack; stacks deeper than the 16 KiB
# copied are cut, so these are lower bounds).
if [ "${TLS_BENCH_PERF:-0}" = 1 ] && command -v perf >/dev/null; then
  cat >"$work/attribute.py" <<'PY'
import collections, json, re, sys
C_RING = re.compile(r"^(ring_core_|fiat_|fe4?_|ge_|x25519|constant_time_|value_barrier|p256|ecp_nistz256|nistz256|"
                    r"GFp|CRYPTO_|OPENSSL_|bn_|LIMBS_|limbs_|sc_|ChaCha|aes_|gcm_|poly1305|sha256_|sha512_)")
GENERIC = {"core", "alloc", "std"}
def path_crate(t):
    t = re.sub(r"^[&*\[(]+|^(mut |dyn |const )+", "", t)
    m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)::", t)
    return m.group(1) if m else None
def crate_of(sym, dso):
    if dso.startswith("[kernel"):
        return "[kernel]"
    if dso == "[unknown]" or sym in ("[unknown]", "") or sym.startswith("0x"):
        return None
    if not dso.startswith("enclii"):
        return dso
    if "::" not in sym:
        return "ring (C/asm)" if C_RING.match(sym) else ("sqlite (C)" if sym.startswith("sqlite3") else "C: " + sym)
    if sym.startswith("<"):
        inner, depth, split = sym[1:], 0, None
        for i, ch in enumerate(inner):
            if ch == "<": depth += 1
            elif ch == ">":
                if depth == 0: break
                depth -= 1
            elif depth == 0 and inner.startswith(" as ", i):
                split = i; break
        ty = inner[:split] if split is not None else inner
        return path_crate(ty) or (path_crate(inner[split + 4:]) if split is not None else None) or "other"
    return path_crate(sym) or "other"
AREAS = [("TLS (rustls, tokio-rustls, ring)", re.compile(r"rustls|^ring|ring_core_|^fiat_|^fe4?_|constant_time_")),
         ("upstream client (hyper_util::client, hyper client dispatch)", re.compile(r"hyper_util::client|hyper::client|dispatch::Client|role::Client")),
         ("metrics", re.compile(r"^<?metrics|metrics_exporter|metrics_util")),
         ("tracing", re.compile(r"^<?tracing")),
         ("junctions proxy fn (incl. everything below)", re.compile(r"junctions::proxy|junctions::forward")),
         ("enclii::server::http (listener, timeouts, metering)", re.compile(r"enclii::server::http"))]
own, charged, areas, samples = collections.Counter(), collections.Counter(), collections.Counter(), 0
frames = []
def flush():
    global samples
    if not frames:
        return
    samples += 1
    crates = [crate_of(sym, dso) for sym, dso in frames]
    leaf = next((c for c in crates if c), "[unknown]")
    own[leaf] += 1
    payer = next((c for c in crates if c and c not in GENERIC), leaf) if leaf in GENERIC else leaf
    charged[payer] += 1
    for name, rx in AREAS:
        if any(rx.search(sym) for sym, _ in frames):
            areas[name] += 1
for line in open(sys.argv[2], errors="replace"):
    m = re.match(r"^\s+([0-9a-f]+) (.*) \((.*)\)$", line.rstrip("\n"))
    if m:
        frames.append((re.sub(r"\+0x[0-9a-f]+$", "", m.group(2)), m.group(3).replace(" (deleted)", "").split("/")[-1]))
    elif not line.strip():
        flush(); frames = []
flush()
pct = lambda c, n=14: {k: round(100 * v / max(samples, 1), 1) for k, v in c.most_common(n)}
print(json.dumps({"workload": "perf", "target": sys.argv[1], "mode": sys.argv[3], "samples": samples,
    "cpu_share_pct_self": pct(own), "cpu_share_pct_by_caller": pct(charged),
    "cpu_share_pct_inclusive": {k: round(100 * areas[k] / max(samples, 1), 1) for k, _ in AREAS}}, separators=(",", ":")))
PY
  for run in "https keepalive-c16" "ka-https keepalive-c16" "router404-https close-c16"; do
    read -r target mode <<<"$run"
    perf record -F 499 --call-graph dwarf,16384 -p "$pid" -o "$work/perf.data" -- sleep "$seconds" >/dev/null 2>&1 &
    perf_pid=$!
    run_wrk 0 "$target" "$mode" | sed 's/"workload":"wrk"/"workload":"wrk-under-perf"/' | tee -a "$work/results"
    wait "$perf_pid" || true
    perf report -i "$work/perf.data" --no-children --no-inline --sort dso,sym --stdio -g none 2>/dev/null \
      >"/tmp/tls-bench-perf-$target-$mode.txt" || true
    perf script --no-inline -i "$work/perf.data" -F ip,sym,dso >"$work/perf.script" 2>/dev/null || true
    python3 "$work/attribute.py" "$target" "$work/perf.script" "$mode" | tee -a "$work/results"
  done
  echo "perf reports (dso, symbol): /tmp/tls-bench-perf-*.txt" >&2
fi

print_table "$work/results"
