#!/usr/bin/env bash
# Installs what is missing, starts PostgreSQL and Redis, then runs every test:
# the Rust unit and integration tests (each broker test starts its own Tansu) and
# the contract checks against a running api.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_rust
ensure_postgres
ensure_redis
ensure_tansu
ensure_python_tools

log "dropping databases left by earlier test runs"
psql -h 127.0.0.1 -U root -d postgres -Atc \
    "select format('drop database if exists %I with (force);', datname) from pg_database where datname like 'test\_%'" |
    psql -h 127.0.0.1 -U root -d postgres -q >/dev/null

log "building"
cargo build --workspace --all-targets --locked

log "running the Rust tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast
else
    cargo test --workspace --locked --no-fail-fast
fi

for check in scripts/checks/*.sh; do
    log "running $check"
    bash "$check"
done
