#!/usr/bin/env bash
# Contract check: schemathesis fuzzes the running api from its own /openapi.json and
# fails on any 5xx or any response that does not match the schema.
# Usage: scripts/checks/schemathesis.sh [extra schemathesis args]
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
cd "$ROOT"
ensure_postgres
ensure_redis
ensure_python_tools

database="test_schemathesis_$$"
psql -h 127.0.0.1 -U root -d postgres -qc "create database $database" >/dev/null
api_port=$(free_port)
admin_port=$(free_port)
token="schemathesis-admin-token-$$"

cargo build --locked -q -p rsvp-api
mkdir -p .run
DATABASE_URL="postgres://root@127.0.0.1:5432/$database" API_ADDR="127.0.0.1:$api_port" \
    ADMIN_ADDR="127.0.0.1:$admin_port" ADMIN_TOKEN="$token" RUST_LOG=warn \
    target/debug/rsvp-api >.run/schemathesis-api.log 2>&1 &
api_pid=$!
trap 'kill $api_pid 2>/dev/null; wait $api_pid 2>/dev/null; psql -h 127.0.0.1 -U root -d postgres -qc "drop database if exists $database with (force)" >/dev/null' EXIT
wait_port 127.0.0.1 "$api_port" 60 rsvp-api

# An event that exists, so that generated rsvps are not all 404s.
curl -fsS -o /dev/null -X POST "http://127.0.0.1:$api_port/events" -H "Authorization: Bearer $token" \
    -H 'content-type: application/json' -d '{"title":"Fuzzed","starts_at":"2099-01-01T00:00:00Z","capacity":100}'

schemathesis run "http://127.0.0.1:$api_port/openapi.json" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,negative_data_rejection \
    -H "Authorization: Bearer $token" \
    --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-40}" --seed 1 --no-color "$@"
