# syntax=docker/dockerfile:1
#
# The Switchboard release binary in a small Debian image. Built by docker-compose.yml (which
# runs three of these behind nginx, with Redis); on its own:
#
#   docker build -t switchboard .
#   docker run --rm -p 127.0.0.1:8080:8080 -e SWITCHBOARD__API__KEYS=secret switchboard
#
# (published on the host's loopback only, as docker-compose.yml does; `-p 8080:8080` would
# publish it on every interface of the host)
#
# The builder is rust:1 on bookworm, the same Debian release as the runtime stage, so the
# binary never needs a newer glibc than the runtime has.

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# The cache mounts keep the crates.io downloads and compiled dependencies between builds
# (BuildKit, the default builder of Docker and of docker compose). `--locked`: Cargo.lock is
# the truth; a build that would change it fails.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin switchboard \
    && install -D -m 0755 target/release/switchboard /out/switchboard

FROM debian:bookworm-slim
# A fixed, unprivileged user; the node needs no file it writes.
RUN groupadd --system --gid 10001 switchboard \
    && useradd --system --uid 10001 --gid switchboard --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin switchboard
WORKDIR /app
COPY --from=builder /out/switchboard /usr/local/bin/switchboard
# config/default.toml is read from the working directory; SWITCHBOARD__SECTION__KEY
# variables override it.
COPY config/ /app/config/
USER 10001:10001
# Listen on every interface of the container (the binary's default is 127.0.0.1:8080).
ENV SWITCHBOARD__SERVER__BIND=0.0.0.0:8080 \
    RUST_LOG=info
EXPOSE 8080
# SIGTERM drains the node: /readyz turns 503, clients get `disconnect` 1001 with
# reconnect: true, and it exits once they are gone or server.shutdown_timeout (10 s) is up.
STOPSIGNAL SIGTERM
# `docker run IMAGE migrate` and `docker run IMAGE --check-config` work too.
ENTRYPOINT ["switchboard"]
