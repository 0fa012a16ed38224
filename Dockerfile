# syntax=docker/dockerfile:1
# The Shoal image: the stripped `shoal` binary and BIRD 2 on a slim Debian. Build from the
# repo root:
#   docker build -t shoal:0.1.0 .
# Its debug symbols are a separate artifact, not in the image:
#   docker build --target symbols --output type=local,dest=./symbols .
#   # symbols/shoal.debug; gdb and perf find it through the binary's .gnu_debuglink
# Both stages are Debian bookworm, so the binary links against the same glibc it runs with.
# Size: docs/kubernetes.md ("The image") says how much and how it was measured.

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
# copied out because cache mounts are not part of the image. The release profile keeps line
# tables (for backtraces and profiles in development): they go to shoal.debug, and the shipped
# binary is stripped of all symbols, with a debuglink to that file.
# The commit the binary reports (`shoal --version`, `shoal_build_info`): .git is not copied in.
#   docker build --build-arg SHOAL_GIT_COMMIT=$(git rev-parse --short=12 HEAD) ...
ARG SHOAL_GIT_COMMIT=unknown
ENV SHOAL_GIT_COMMIT=${SHOAL_GIT_COMMIT}
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p shoal-node --bin shoal \
    && mkdir -p /out \
    && objcopy --only-keep-debug target/release/shoal /out/shoal.debug \
    && objcopy --strip-all --add-gnu-debuglink=/out/shoal.debug \
        target/release/shoal /out/shoal \
    && chmod 0755 /out/shoal

# `docker build --target symbols --output ...` exports only the symbols.
FROM scratch AS symbols
COPY --from=build /out/shoal.debug /shoal.debug

FROM debian:bookworm-slim AS runtime
# ca-certificates: for API servers with publicly signed certificates (in-cluster, the service
# account CA is used). bird2: BGP and BFD for the `bgp` overlay; `shoal run --announce bgp`
# starts it as a child process with a generated config, through util-linux's setpriv (in the
# base image) for its parent-death signal (docs/kubernetes.md says why a child and not a
# sidecar); the package's systemd unit is never used. iputils-arping: gratuitous ARP when an
# `l2` replica takes a VIP over. Nothing else: IPVS, addresses and routes are programmed over
# netlink, so neither ipvsadm nor iproute2 is needed.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates bird2 iputils-arping \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 65532 shoal \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin shoal
COPY --from=build /out/shoal /usr/local/bin/shoal
# Non-root by default: `shoal status`, `shoal table` and `shoal certs init` need nothing more.
# `shoal run --dataplane ipvs` and `shoal backend-init` need CAP_NET_ADMIN in the effective
# set, which in Kubernetes (no ambient capabilities) means runAsUser: 0 with every other
# capability dropped: the manifests set exactly that. `shoal sysctls` (the LB pods' init
# container) runs privileged, because /proc/sys is read-only in unprivileged containers.
USER 65532:65532
EXPOSE 7946/udp 9100/tcp 179/tcp
ENTRYPOINT ["/usr/local/bin/shoal"]
CMD ["--help"]
