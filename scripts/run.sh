#!/usr/bin/env bash
# Installs what is missing, then starts the whole system in the foreground: PostgreSQL
# and Redis (if stopped), a Tansu broker on 127.0.0.1:9092, rsvp-api, rsvp-relay and
# rsvp-consumers. Ctrl-C stops what it started. Logs go to .run/*.log.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

export ADMIN_TOKEN=${ADMIN_TOKEN:-dev-admin-token-change-me}
export DATABASE_URL=${DATABASE_URL:-postgres://root@127.0.0.1:5432/rsvp}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
export KAFKA_BROKERS=${KAFKA_BROKERS:-127.0.0.1:9092}
export RUST_LOG=${RUST_LOG:-info}
api_addr=${API_ADDR:-127.0.0.1:8080}
# Each process reads ADMIN_ADDR; these set it per process.
api_admin=${API_ADMIN_ADDR:-127.0.0.1:9464}
relay_admin=${RELAY_ADMIN_ADDR:-127.0.0.1:9465}
consumers_admin=${CONSUMERS_ADMIN_ADDR:-127.0.0.1:9466}
profile=${RSVP_PROFILE:-release} # `debug` reuses the test build (scripts/checks)

ensure_rust
ensure_cli_tools
ensure_postgres
ensure_redis
ensure_database "${DATABASE_URL##*/}"
ensure_broker "${KAFKA_BROKERS##*:}"

log "building the $profile binaries"
if [ "$profile" = release ]; then cargo build --release --locked --bins; else cargo build --locked --bins; fi

mkdir -p .run
pids=()
stop() {
    trap - INT TERM EXIT
    log "stopping"
    kill "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
    if [ -n "${STARTED_BROKER_PID:-}" ]; then
        kill "$STARTED_BROKER_PID" 2>/dev/null || true
        rm -f ".run/tansu-${KAFKA_BROKERS##*:}.pid"
    fi
}
trap stop INT TERM EXIT

start() { # name, admin address
    ADMIN_ADDR=$2 "target/$profile/$1" >".run/$1.log" 2>&1 &
    pids+=($!)
}

# The api migrates the database before the others start, so they find their tables.
"target/$profile/rsvp-api" migrate
export API_ADDR=$api_addr
start rsvp-api "$api_admin"
start rsvp-relay "$relay_admin"
start rsvp-consumers "$consumers_admin"
wait_port "${api_addr%:*}" "${api_addr##*:}" 60 rsvp-api

cat <<MSG

  rsvp is running.
    api         http://$api_addr   (OpenAPI: /openapi.json)
    admin       api $api_admin, relay $relay_admin, consumers $consumers_admin  (/metrics, /healthz, /readyz)
    broker      $KAFKA_BROKERS (Tansu), topic rsvp-events
    ADMIN_TOKEN $ADMIN_TOKEN
    logs        .run/rsvp-api.log .run/rsvp-relay.log .run/rsvp-consumers.log .run/tansu-${KAFKA_BROKERS##*:}.log

  Ctrl-C stops everything.
MSG

# Exit (and stop the rest) as soon as any service dies.
wait -n "${pids[@]}"
log "a service exited; see .run/*.log"
exit 1
