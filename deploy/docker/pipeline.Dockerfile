# syntax=docker/dockerfile:1
# The pipeline image (the control plane): `docker build -f deploy/docker/pipeline.Dockerfile
# -t lag/pipeline .` (context: the repository root; see .dockerignore). It carries the
# windowed SQL (sql/) and the default embedding model, which `pipeline run` loads at start.

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
ENV RUSTUP_TOOLCHAIN=1.95.0
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p pipeline --bin pipeline \
 && install -D -m 0755 target/release/pipeline /out/pipeline

# ---- runtime: Debian 12 slim (glibc and zlib match the builder), non-root ----
FROM debian:bookworm-slim AS runtime
RUN groupadd --system --gid 10001 lag \
 && useradd --system --uid 10001 --gid lag --home-dir /nonexistent --shell /usr/sbin/nologin lag
COPY --from=builder /out/pipeline /usr/local/bin/pipeline
# The default model: udfs::embed::default_model_dir() reads $LAG_MODEL_DIR; without it the
# binary would look in the build machine's source tree, which is not in this image.
COPY udfs/models/multilingual-e5-small-int8 /opt/lag/models/multilingual-e5-small-int8
# The job's SQL (the triggers users edit; mount a ConfigMap over it to change them).
COPY sql /opt/lag/sql
# The in-process enforcer's config (the control plane reads Kafka and publishes to etcd with
# it); Kubernetes mounts the ConfigMap here.
COPY deploy/docker/enforcer.container.yaml /etc/lag/enforcer.yaml
ENV LAG_MODEL_DIR=/opt/lag/models/multilingual-e5-small-int8 \
    RUST_LOG=info
USER 10001:10001
# 9091: the operator API (bearer token, PIPELINE_API_TOKEN). 9090: the in-process enforcer's
# admin listener (/health, /ready, /metrics — the job's metrics are in the same registry).
# 8080: that enforcer's proxy (the image's default command is the embedded default, proxy and
# job in one process; the Kubernetes control plane reads Kafka instead and takes no traffic).
EXPOSE 8080 9090 9091
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9090 && printf 'GET /health HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/usr/local/bin/pipeline"]
CMD ["run", "--config", "/etc/lag/enforcer.yaml", "--sql", "/opt/lag/sql/incident.sql", "--api-listen", "0.0.0.0:9091"]
