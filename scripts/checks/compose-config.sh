#!/usr/bin/env bash
# Runs docker-compose.yml's configuration without Docker: the api, relay and consumers
# binaries with exactly the environment the compose file gives each service, a
# private PostgreSQL cluster and Redis configured from the postgres and redis services,
# a Tansu broker standing in for kafka and Debian's Prometheus with the prometheus
# service's command, volumes and ops/prometheus.yml's scrape jobs. Service host names
# map to 127.0.0.1 and each service's ports to free local ports. Checks the compose
# healthchecks, /readyz, one write reaching both consumer groups, Prometheus scraping
# every target, and a stop as PID 1. Details: scripts/checks/compose_config.py.
#
#   COMPOSE_FILE=FILE   check another compose file (default: docker-compose.yml)
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
cd "$ROOT"
ensure_rust
ensure_cli_tools
ensure_postgres # the PostgreSQL binaries (the check runs its own cluster)
ensure_redis
ensure_python_tools
ensure_prometheus

log "building the binaries the compose services run"
cargo build --locked -q --bins

broker_port=$(free_port)
ensure_broker "$broker_port"
[ -n "$STARTED_BROKER_PID" ] || { echo "port $broker_port was taken before Tansu could bind it" >&2; exit 1; }
trap 'kill "$STARTED_BROKER_PID" 2>/dev/null || true; rm -f "$ROOT/.run/tansu-$broker_port.pid"' EXIT

"$VENV/bin/python" scripts/checks/compose_config.py --compose "${COMPOSE_FILE:-docker-compose.yml}" \
    --broker-port "$broker_port" --pg-bindir "$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
echo "compose-config: every service starts and is healthy with docker-compose.yml's configuration"
