# syntax=docker/dockerfile:1
# The Shoal image: one static-ish `shoal` binary on a slim Debian. Build from the repo root:
#   docker build -t shoal:0.1.0 .
# Both stages are Debian bookworm, so the binary links against the same glibc it runs with.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Only what the build reads; target/ and the rest stay out via .dockerignore.
COPY Cargo.toml Cargo.lock ./
COPY node node
COPY gossip gossip
COPY dataplane dataplane
COPY chaos chaos
# node/src/rules.rs embeds docs/examples/rules.toml (`shoal check` prints it as an example).
COPY docs docs
# Cache mounts keep the registry and incremental artifacts between builds; the binary is
# copied out because cache mounts are not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p shoal-node --bin shoal \
    && install -D -m 0755 target/release/shoal /out/shoal

FROM debian:bookworm-slim AS runtime
# ca-certificates: for API servers with publicly signed certificates (in-cluster, the service
# account CA is used). Nothing else: IPVS and addresses are programmed over netlink, so
# neither ipvsadm nor iproute2 is needed.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 65532 shoal \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin shoal
COPY --from=build /out/shoal /usr/local/bin/shoal
# Non-root by default: `shoal status`, `shoal table` and `shoal certs init` need nothing more.
# `shoal run --dataplane ipvs` and `shoal backend-init` need CAP_NET_ADMIN in the effective
# set, which in Kubernetes (no ambient capabilities) means runAsUser: 0 with every other
# capability dropped: the manifests set exactly that.
USER 65532:65532
EXPOSE 7946/udp 9100/tcp
ENTRYPOINT ["/usr/local/bin/shoal"]
CMD ["--help"]
