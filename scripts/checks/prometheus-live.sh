#!/usr/bin/env bash
# Starts the real system (scripts/run.sh, spare ports) and a real Prometheus (Debian
# package) scraping its three admin ports every second with ops/alerts.yml loaded;
# runs a small load: a few dozen api writes and reads, one undecodable record on the
# topic (a dead letter in each consumer group) and a replay of the load's rows. Then
# asserts through Prometheus's HTTP API (/api/v1/query) that every expression of the
# Grafana dashboard and the metric part of every alert in ops/alerts.yml (the
# expression without its final comparison, see ops/alerts.yml) return data, that every
# metric they name is exported, and that every alert rule evaluates without error.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
source "$(dirname "$0")/system.bash"
cd "$ROOT"
ensure_python_tools
ensure_prometheus
ensure_cli_tools

start_system prometheus_live
since=$(date -u +%FT%TZ)

log "load: api writes and reads"
event=$(api_load 24)
echo "event $event: 24 rsvps created, 8 updated, 4 cancelled, 1 deleted, a 409 and a 404"

log "a dead letter: an undecodable copy of a published record"
wait_for 30 "the relay to publish the load" \
    bash -c '[ "$(curl -fsS "$RELAY_ADMIN/metrics" | awk "/^outbox_backlog_rows /{print \$2}")" = 0 ]'
poison_record
wait_for 30 "every consumer group (cache, analytics, notifications) to dead-letter it" \
    bash -c '[ "$(psql "$DATABASE_URL" -Atc "select count(*) from consumer_dead_letters")" = 3 ]'

log "a replay of the load's rows"
RUST_LOG=warn target/debug/rsvp-relay replay --since "$since"

log "every dashboard and alert query against Prometheus"
"$VENV/bin/python" scripts/checks/ops_queries.py live --prometheus "$PROMETHEUS" --wait 45
