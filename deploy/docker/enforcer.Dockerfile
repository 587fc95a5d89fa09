# syntax=docker/dockerfile:1
# The enforcer image: `docker build -f deploy/docker/enforcer.Dockerfile -t lag/enforcer .`
# (context: the repository root; see .dockerignore). Built from the locked dependency tree;
# no model, no pipeline code (the enforcer never depends on the pipeline side).

# ---- builder: the pinned toolchain (rust-toolchain.toml) on Debian 12, like the runtime ----
FROM rust:1.95.0-slim-bookworm AS builder
# What the native builds need (deploy/services.sh installs the same on a dev machine):
# cmake, a C/C++ toolchain, make, pkg-config and zlib headers for rdkafka's `cmake-build` of
# librdkafka; protoc and the well-known .proto files for etcd-client's build script.
# Unpinned on purpose (hadolint DL3008): a builder stage, and Debian drops superseded versions.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      cmake g++ make pkg-config zlib1g-dev protobuf-compiler libprotobuf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# rust-toolchain.toml names 1.95.0, which the image already has; the components it lists
# (rustfmt, clippy) are not needed to build.
ENV RUSTUP_TOOLCHAIN=1.95.0
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p enforcer --bin enforcer \
 && install -D -m 0755 target/release/enforcer /out/enforcer

# ---- runtime: Debian 12 slim (glibc and zlib match the builder), non-root ----
FROM debian:bookworm-slim AS runtime
# Not root: a fixed uid/gid so Kubernetes' runAsNonRoot can verify it (deploy/k8s uses 10001).
RUN groupadd --system --gid 10001 lag \
 && useradd --system --uid 10001 --gid lag --home-dir /nonexistent --shell /usr/sbin/nologin lag
COPY --from=builder /out/enforcer /usr/local/bin/enforcer
# A config that runs as is in a container (both listeners on 0.0.0.0); mount your own over it
# or point ENFORCER_CONFIG elsewhere. Kubernetes mounts the ConfigMap here.
COPY deploy/docker/enforcer.container.yaml /etc/lag/enforcer.yaml
ENV ENFORCER_CONFIG=/etc/lag/enforcer.yaml \
    RUST_LOG=info
USER 10001:10001
# 8080: the proxy. 9090: the admin listener (/health, /ready, /metrics, /policies) — keep it
# off public networks, it is not authenticated.
EXPOSE 8080 9090
# No curl in the slim image: bash's /dev/tcp asks the admin listener for /health.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9090 && printf 'GET /health HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/usr/local/bin/enforcer"]
CMD ["run"]
