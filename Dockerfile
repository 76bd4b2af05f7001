# syntax=docker/dockerfile:1
# One image with the three binaries (rsvp-api, rsvp-relay, rsvp-consumers); each
# docker-compose service picks its binary with `command`.
#
# The sqlx query macros check every statement at compile time against the offline
# data in .sqlx/ (SQLX_OFFLINE: never a database); the migrations are embedded at
# compile time by `sqlx::migrate!("../migrations")`.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
ENV SQLX_OFFLINE=true
# zstd-sys and lz4-sys (rskafka compression) build C code: gcc comes with the image.
# Cargo loads every workspace member's manifest, so every member is copied, bench
# too; only the three services are built (`-p`): building bench alongside would
# unify rsvp-contract's `testing` feature into their binaries.
# scripts/checks/docker-build.sh replays these lines without Docker.
COPY Cargo.toml Cargo.lock ./
COPY contract contract
COPY api api
COPY relay relay
COPY consumers consumers
COPY bench bench
COPY migrations migrations
COPY .sqlx .sqlx
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p rsvp-api -p rsvp-relay -p rsvp-consumers --bins \
    && mkdir -p /out \
    && cp target/release/rsvp-api target/release/rsvp-relay target/release/rsvp-consumers /out/

FROM debian:bookworm-slim AS runtime
# curl: the compose healthchecks call /readyz on the admin port.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home rsvp
COPY --from=build /out/ /usr/local/bin/
USER rsvp
EXPOSE 8080 9464 9465 9466
CMD ["rsvp-api"]
