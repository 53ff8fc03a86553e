# The muster image: the `muster` binary (host, bus, CLI, dashboard and the
# example services it carries) on a small Debian, run as a non-root user
# under tini, so that signals reach the host and orphans are reaped.
#
#   docker build -t muster .
#   docker run --rm -p 127.0.0.1:7700-7739:7700-7739 -p 127.0.0.1:7780:7780 muster
#   muster call echo.shout '{"text":"hi"}'        # from the machine, through the published ports
#
# docs/deploy.md says how to run it: ports, the state volume, the
# environment, and deploy/compose.yaml for a fleet.
#
# The base images are arguments: BUILD_IMAGE (a Rust toolchain on Debian)
# and BASE_IMAGE (the runtime; it gets tini and ca-certificates from
# Debian if it has none). Where no registry can be reached, give local
# images. PREBUILT ships a `muster` built elsewhere instead of building
# one (and the `muster-launch` beside it, if there is one): the tests give
# theirs, on a base made with mmdebstrap (.ci/run,
# crates/muster-cli/tests/container.rs).
ARG BUILD_IMAGE=rust:1-bookworm
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BUILD_IMAGE} AS build
# The path, in the build context, of a `muster` built elsewhere; empty:
# build it here. One stage for both, so that every builder (the classic
# one builds every stage) builds only what it needs.
ARG PREBUILT=
WORKDIR /src
COPY . .
# `muster-launch` is what the host's children start as (about a third of
# `muster __exec`'s own CPU per start); a host without it uses `muster __exec`.
RUN set -eu; \
    mkdir /out; \
    if [ -n "$PREBUILT" ]; then \
        install -m 0755 "$PREBUILT" /out/muster; \
        launch="$(dirname "$PREBUILT")/muster-launch"; \
        if [ -f "$launch" ]; then install -m 0755 "$launch" /out/muster-launch; fi; \
    else \
        cargo build --release --locked -p muster-cli; \
        install -m 0755 target/release/muster target/release/muster-launch /out/; \
    fi

FROM ${BASE_IMAGE}
RUN set -eu; \
    if ! command -v tini >/dev/null || [ ! -e /etc/ssl/certs/ca-certificates.crt ]; then \
        apt-get update; \
        apt-get install -y --no-install-recommends tini ca-certificates; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    useradd --system --uid 10001 --user-group --home-dir /var/lib/muster --create-home muster; \
    chmod 0700 /var/lib/muster
COPY --from=build /out/ /usr/local/bin/
# `muster ctl` inside the container (and the health check) finds the
# host's token here.
ENV MUSTER_TOKEN_FILE=/var/lib/muster/token
WORKDIR /var/lib/muster
VOLUME ["/var/lib/muster"]
USER muster
# The embedded bus (7700-7702), the RPC endpoints (7710-7739), HTTP (7780).
EXPOSE 7700-7702 7710-7739 7780
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/muster"]
# The demo context on the embedded bus, reachable through ports published
# on the machine's loopback: the endpoints bind every interface of the
# container and are registered as 127.0.0.1, where those ports lead. Plain
# TCP, because only the machine reaches them; between machines use CURVE
# or a broker (docs/fleet.md).
CMD ["demo", "--bus", "zmq://0.0.0.0:7700", "--bind", "0.0.0.0", "--advertise", "127.0.0.1", \
     "--rpc-ports", "7710-7739", "--plain-tcp", "--http", "0.0.0.0:7780", "--state-dir", "/var/lib/muster"]
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/muster", "ctl", "status"]
