# Sourced by prometheus-live.sh and runbook.sh (not a check itself: test.sh runs *.sh):
# starts the whole system with scripts/run.sh on spare ports with its own database and
# broker, plus a Prometheus (Debian package) scraping its three admin ports every
# second with ops/alerts.yml loaded, and a small api load. Everything started here is
# stopped on exit.

# start_system NAME: exports API, API_ADMIN, RELAY_ADMIN, CONSUMERS_ADMIN, PROMETHEUS,
# DATABASE_URL, KAFKA_BROKERS, ADMIN_TOKEN, BROKER_PORT and WORK (a scratch folder).
start_system() {
    local name=$1
    WORK=$(mktemp -d)
    export DATABASE="test_${name}_$$"
    export DATABASE_URL="postgres://root@127.0.0.1:5432/$DATABASE"
    BROKER_PORT=$(free_port)
    export KAFKA_BROKERS="127.0.0.1:$BROKER_PORT"
    export API_ADDR="127.0.0.1:$(free_port)" API_ADMIN_ADDR="127.0.0.1:$(free_port)"
    export RELAY_ADMIN_ADDR="127.0.0.1:$(free_port)" CONSUMERS_ADMIN_ADDR="127.0.0.1:$(free_port)"
    export ADMIN_TOKEN="$name-admin-token-$$" RSVP_PROFILE=debug RUST_LOG=${RUST_LOG:-info}
    export API="http://$API_ADDR" API_ADMIN="http://$API_ADMIN_ADDR"
    export RELAY_ADMIN="http://$RELAY_ADMIN_ADDR" CONSUMERS_ADMIN="http://$CONSUMERS_ADMIN_ADDR"
    PROMETHEUS_PORT=$(free_port)
    export PROMETHEUS="http://127.0.0.1:$PROMETHEUS_PORT"
    RUN_LOG="$ROOT/.run/$name-run.log"
    mkdir -p "$ROOT/.run"
    trap stop_system EXIT

    log "starting the system with scripts/run.sh (api $API_ADDR, broker $KAFKA_BROKERS, database $DATABASE)"
    : >"$RUN_LOG" # an earlier run's "rsvp is running" must not count
    bash "$ROOT/scripts/run.sh" >"$RUN_LOG" 2>&1 &
    RUN_PID=$!
    until grep -q "rsvp is running" "$RUN_LOG"; do
        kill -0 "$RUN_PID" 2>/dev/null || { cat "$RUN_LOG" >&2; echo "run.sh exited" >&2; exit 1; }
        sleep 1
    done
    # run.sh started this broker (its port was free) and wrote its pid here.
    BROKER_PID=$(cat "$ROOT/.run/tansu-$BROKER_PORT.pid")

    ensure_prometheus
    log "starting Prometheus on $PROMETHEUS (1 s scrape interval, ops/alerts.yml)"
    "$VENV/bin/python" "$ROOT/scripts/checks/ops_queries.py" local-config --out "$WORK/prometheus.yml" \
        --interval 1s --self-target "127.0.0.1:$PROMETHEUS_PORT" \
        --target "rsvp-api=$API_ADMIN_ADDR" --target "rsvp-relay=$RELAY_ADMIN_ADDR" \
        --target "rsvp-consumers=$CONSUMERS_ADMIN_ADDR"
    promtool check config "$WORK/prometheus.yml" >/dev/null
    prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
        --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" --log.level=warn >"$ROOT/.run/$name-prometheus.log" 2>&1 &
    PROMETHEUS_PID=$!
    until curl -fs "$PROMETHEUS/-/ready" >/dev/null 2>&1; do
        kill -0 "$PROMETHEUS_PID" 2>/dev/null || { cat "$ROOT/.run/$name-prometheus.log" >&2; exit 1; }
        sleep 0.5
    done
}

stop_system() {
    local status=$?
    trap - EXIT
    if [ -n "${PROMETHEUS_PID:-}" ]; then kill "$PROMETHEUS_PID" 2>/dev/null || true; wait "$PROMETHEUS_PID" 2>/dev/null || true; fi
    if [ -n "${BROKER_PID:-}" ]; then kill -CONT "$BROKER_PID" 2>/dev/null || true; fi
    if [ -n "${RUN_PID:-}" ]; then kill "$RUN_PID" 2>/dev/null || true; wait "$RUN_PID" 2>/dev/null || true; fi
    psql -h 127.0.0.1 -U root -d postgres -qc "drop database if exists $DATABASE with (force)" >/dev/null || true
    rm -rf "$WORK"
    if [ "$status" != 0 ]; then echo "logs: $RUN_LOG and .run/rsvp-*.log" >&2; fi
    exit "$status"
}

# prom_value QUERY: the first value Prometheus returns for QUERY, or nothing.
prom_value() {
    curl -fsS "$PROMETHEUS/api/v1/query" --data-urlencode "query=$1" | jq -r '.data.result[0].value[1] // empty'
}

# wait_for SECONDS WHAT COMMAND...: runs COMMAND every second until it succeeds.
wait_for() {
    local seconds=$1 what=$2 i
    shift 2
    for ((i = 0; i < seconds; i++)); do
        if "$@"; then return 0; fi
        sleep 1
    done
    echo "timed out after ${seconds}s waiting for $what" >&2
    return 1
}

# api_load RSVPS: one event, RSVPS rsvps, then updates, cancels, deletes, a few 409s
# and reads; prints the event id.
api_load() {
    local n=$1 event i body ids=() tokens=()
    local auth="Authorization: Bearer $ADMIN_TOKEN" json='content-type: application/json'
    event=$(curl -fsS -X POST "$API/events" -H "$auth" -H "$json" \
        -d '{"title":"Load","starts_at":"2030-01-31T18:00:00Z","capacity":1000}' | jq -r .id)
    for ((i = 0; i < n; i++)); do
        body=$(curl -fsS -X POST "$API/events/$event/rsvps" -H "$json" \
            -d "{\"name\":\"Guest $i\",\"email\":\"guest$i-$$@example.com\",\"status\":\"going\",\"guests\":1}")
        ids+=("$(jq -r .id <<<"$body")"); tokens+=("$(jq -r .token <<<"$body")")
    done
    for ((i = 0; i < n / 3; i++)); do
        curl -fsS -o /dev/null -X PATCH "$API/rsvps/${ids[$i]}" -H "Authorization: Bearer ${tokens[$i]}" -H "$json" -d '{"status":"maybe"}'
        curl -fsS -o /dev/null "$API/events/$event"
        curl -fsS -o /dev/null "$API/events/$event/rsvps"
    done
    for ((i = n / 3; i < n / 2; i++)); do
        curl -fsS -o /dev/null -X POST "$API/rsvps/cancel" -H "$json" -d "{\"token\":\"${tokens[$i]}\"}"
    done
    curl -fsS -o /dev/null -X DELETE "$API/rsvps/${ids[$((n - 1))]}" -H "$auth"
    # client mistakes: a duplicate email (409) and an unknown event (404)
    curl -sS -o /dev/null -X POST "$API/events/$event/rsvps" -H "$json" \
        -d "{\"name\":\"Again\",\"email\":\"guest0-$$@example.com\",\"status\":\"going\"}"
    curl -sS -o /dev/null "$API/events/00000000-0000-0000-0000-000000000000"
    echo "$event"
}

# poison_record: copies one published record of rsvp-events to the same partition
# with the same key and headers and a truncated value, which no consumer can decode.
poison_record() {
    "$VENV/bin/python" - <<'PY'
import os, sys
from confluent_kafka import Consumer, Producer, TopicPartition
brokers = os.environ["KAFKA_BROKERS"]
consumer = Consumer({"bootstrap.servers": brokers, "group.id": f"poison-{os.getpid()}",
                     "auto.offset.reset": "earliest", "enable.auto.commit": False})
consumer.assign([TopicPartition("rsvp-events", p, 0) for p in range(6)])
message = None
for _ in range(60):
    message = consumer.poll(1.0)
    if message is not None and message.error() is None:
        break
consumer.close()
if message is None or message.error() is not None:
    sys.exit("no record on rsvp-events to copy")
producer = Producer({"bootstrap.servers": brokers})
producer.produce("rsvp-events", value=message.value()[:-7], key=message.key(),
                 headers=message.headers(), partition=message.partition())
if producer.flush(30) != 0:
    sys.exit("the poison record was not acknowledged")
print(f"produced an undecodable copy of partition {message.partition()} offset {message.offset()}")
PY
}
