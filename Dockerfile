# syntax=docker/dockerfile:1
# credbroker: a small, non-root image.
#   docker build -t credbroker:dev .
# Runs as a sidecar beside the app (shared loopback): see deploy/kubernetes and
# notes/readme-ops.md. The config is mounted at /etc/credbroker/credbroker.toml.

# Build stage: the toolchain the code is tested with (edition 2024, let-chains).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and build artifacts between builds; the binary is copied out
# of the cached target directory in the same step. --no-default-features: the image carries no
# emulator code (no `demo`, no `emulators`; the credbroker-emulators crate is not compiled).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p credbroker --bin credbroker --no-default-features \
    && strip target/release/credbroker \
    && cp target/release/credbroker /usr/local/bin/credbroker

# Runtime: glibc + CA certificates (rustls reads the system roots), no shell, uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /usr/local/bin/credbroker /usr/local/bin/credbroker
USER 65532:65532
# 8900 container credentials (bind loopback in a pod), 8909 admin: /metrics /livez /readyz.
EXPOSE 8900 8909
ENTRYPOINT ["/usr/local/bin/credbroker"]
CMD ["run", "--config", "/etc/credbroker/credbroker.toml"]
