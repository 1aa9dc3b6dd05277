#!/usr/bin/env bash
# Installs (from Debian and PyPI) and starts what the build pipeline needs, idempotently:
# the Docker engine (BuildKit), an OCI registry on 127.0.0.1:5000 and an S3 server on
# 127.0.0.1:8014. Sourced by .ci/run and loadtest/pipeline-bench.sh; defines `log` if missing.
declare -F log >/dev/null || log() { printf '\n== %s\n' "$*"; }

# Debian packages: the engine and its 20.10 CLI (BuildKit builds), the registry, a static busybox
# for the tests' base image (nothing can be pulled here), git2's TLS headers.
need_apt=()
command -v dockerd >/dev/null || need_apt+=(docker.io)
command -v docker-registry >/dev/null || need_apt+=(docker-registry)
[ -x /bin/busybox ] || need_apt+=(busybox-static)
dpkg -s libssl-dev >/dev/null 2>&1 || need_apt+=(libssl-dev)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
# skopeo: one of the real clients the embedded registry's tests drive (registry/tests/clients.rs).
command -v skopeo >/dev/null || need_apt+=(skopeo)
# pebble and pebble-challtestsrv (Debian's pebble package, Let's Encrypt's test ACME server and its
# DNS): the ACME server of the HTTPS tests (cli/tests/https.rs) and the name server custom
# domains' ownership checks ask (cli/tests/domains.rs).
command -v pebble-challtestsrv >/dev/null || need_apt+=(pebble)
# openssl: the HTTPS tests' throwaway CAs (Pebble's own listener, a certificate file) and reading
# the serial of the certificate the router serves (cli/tests/https.rs).
command -v openssl >/dev/null || need_apt+=(openssl)
# The dashboard's browser test: Debian's Chromium (playwright-core cannot download a browser here).
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! /usr/bin/docker info >/dev/null 2>&1; then
  log "starting the Docker engine"
  (dockerd >/tmp/enclii-dockerd.log 2>&1 &)
  for _ in $(seq 1 60); do /usr/bin/docker info >/dev/null 2>&1 && break; sleep 1; done
fi
/usr/bin/docker info --format 'docker engine {{.ServerVersion}}' ||
  { echo "the Docker engine did not start; see /tmp/enclii-dockerd.log" >&2; return 1; }
if ! curl -sf http://127.0.0.1:5000/v2/ >/dev/null; then
  log "starting the OCI registry on 127.0.0.1:5000"
  mkdir -p /var/tmp/enclii-registry
  cat >/var/tmp/enclii-registry.yml <<'YAML'
version: 0.1
storage:
  filesystem: { rootdirectory: /var/tmp/enclii-registry }
  delete: { enabled: true }
http:
  addr: 127.0.0.1:5000
YAML
  (docker-registry serve /var/tmp/enclii-registry.yml >/tmp/enclii-registry.log 2>&1 &)
  for _ in $(seq 1 30); do curl -sf http://127.0.0.1:5000/v2/ >/dev/null && break; sleep 1; done
fi
curl -sf http://127.0.0.1:5000/v2/ >/dev/null ||
  { echo "the registry did not start; see /tmp/enclii-registry.log" >&2; return 1; }
# S3 (moto's server) and the CycloneDX schema validator the SBOM test uses.
if ! python3 -c 'import moto.server, cyclonedx.validation.json, boto3' 2>/dev/null; then
  log "installing moto[server] and cyclonedx-python-lib"
  pip install -q 'moto[server]' 'cyclonedx-python-lib[json-validation]' boto3
fi
# The Kubernetes manifests' schema check (deploy/kubernetes tests; no API server runs here).
command -v kubernetes-validate >/dev/null || { log "installing kubernetes-validate"; pip install -q 'kubernetes-validate==1.37.0'; }
# oras-py, the ORAS client the embedded registry's tests drive (registry/tests/oras/roundtrip.py).
python3 -c 'import oras.provider' 2>/dev/null || { log "installing oras"; pip install -q 'oras==0.2.43'; }
# playwright-core for the dashboard's browser test (cli/tests/dashboard.rs), from its lock file.
e2e="$(dirname "${BASH_SOURCE[0]}")/../api/dashboard/e2e"
if [ ! -d "$e2e/node_modules/playwright-core" ]; then
  log "installing playwright-core"
  npm ci --prefix "$e2e" --no-audit --no-fund --loglevel=error
fi
if ! curl -sf http://127.0.0.1:8014/ >/dev/null; then
  log "starting the S3 server on 127.0.0.1:8014"
  (python3 -m moto.server -H 127.0.0.1 -p 8014 >/tmp/enclii-s3.log 2>&1 &)
  for _ in $(seq 1 30); do curl -sf http://127.0.0.1:8014/ >/dev/null && break; sleep 1; done
fi
curl -sf http://127.0.0.1:8014/ >/dev/null ||
  { echo "the S3 server did not start; see /tmp/enclii-s3.log" >&2; return 1; }
# Stand-ins for the official postgres:15 and redis:7 images and an app image with their clients.
/usr/bin/docker image inspect enclii-test/postgres:15 enclii-test/redis:7 enclii-test/addon-client:latest >/dev/null 2>&1 ||
  { log "building the add-on images"; bash "$(dirname "${BASH_SOURCE[0]}")/addon-images.sh" || return 1; }
echo "Docker engine, registry (127.0.0.1:5000) and S3 server (127.0.0.1:8014) are up"

