# syntax=docker/dockerfile:1
# The `enclii` binary as a container image: one image for every role
# (`enclii server --role api|worker|scheduler`, see ops/kubernetes/).
#
#   DOCKER_BUILDKIT=1 docker build -t enclii:dev .
#
# Needs BuildKit (the cache mounts) and access to Docker Hub's `rust` and `debian` images.
# Not built in this repository's CI: its machines cannot pull from Docker Hub (see ops/README.md).

# --- builder -------------------------------------------------------------------------------
# rust:<version>-bookworm has pkg-config and libssl-dev (git2's https support links OpenSSL).
FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
# The registry and target caches survive between builds; the binary is copied out of the cached
# target directory in the same step, since a cache mount is not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release -p enclii --locked \
 && install -D -m 0755 target/release/enclii /out/enclii

# --- runtime -------------------------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates: TLS to PostgreSQL, Redis, S3, registries, OIDC issuers and the Kubernetes API.
# libssl3: OpenSSL, linked through git2. The binary's other shared libraries (glibc, libgcc_s,
# zlib) are already in the slim image.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 enclii \
 && useradd --system --uid 10001 --gid enclii --home-dir /var/lib/enclii --create-home \
      --shell /usr/sbin/nologin enclii
COPY --from=builder /out/enclii /usr/local/bin/enclii
# The data directory holds the embedded SQLite database and generated keys when no database URL
# or master key is given; on Kubernetes it is an emptyDir and PostgreSQL holds the state.
ENV ENCLII_DATA_DIR=/var/lib/enclii \
    ENCLII_LISTEN=0.0.0.0:8080
WORKDIR /var/lib/enclii
USER 10001:10001
EXPOSE 8080
# No HEALTHCHECK: the slim image has no HTTP client, and Kubernetes ignores HEALTHCHECK anyway
# (the manifests probe /health/live and /health/ready). Under plain Docker, probe from outside:
#   curl -f http://<container>:8080/health/ready
ENTRYPOINT ["enclii"]
CMD ["server"]
