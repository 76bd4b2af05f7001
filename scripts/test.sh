#!/usr/bin/env bash
# Installs what is missing, starts PostgreSQL and Redis, checks the format, the
# lints and the query macros' offline data, then runs every test: the Rust unit and
# integration tests (each broker test starts its own Tansu) and the contract checks
# against a running api.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_rust
ensure_postgres
ensure_redis
ensure_tansu
ensure_sqlx_cli
ensure_python_tools

# Every test makes a database of its own (test_*). A run that passes drops them after
# its tests: left there, a hundred or more slow down whatever runs next on the machine
# (a benchmark measured it). A failed run keeps them, to look at, until the next run.
drop_test_databases() {
    psql -h 127.0.0.1 -U root -d postgres -Atc \
        "select format('drop database if exists %I with (force);', datname) from pg_database where datname like 'test\_%'" |
        psql -h 127.0.0.1 -U root -d postgres -q >/dev/null
}
log "dropping databases left by earlier test runs"
drop_test_databases

log "checking the format (rustfmt.toml) and the lints (clippy, warnings are errors)"
if ! cargo fmt --all --check >/dev/null; then
    cargo fmt --all --check | head -40 >&2 || true
    echo "test.sh: the code is not formatted: run cargo fmt --all" >&2
    exit 1
fi
cargo clippy --workspace --all-targets --locked -- -D warnings

log "checking the query macros' offline data (.sqlx/) against freshly migrated PostgreSQL"
sqlx_check_url=postgres://root@127.0.0.1:5432/rsvp_sqlx_check
PGOPTIONS='-c client_min_messages=warning' psql -h 127.0.0.1 -U root -d postgres -q \
    -c 'drop database if exists rsvp_sqlx_check with (force)' -c 'create database rsvp_sqlx_check' >/dev/null
cargo sqlx migrate run --source migrations --database-url "$sqlx_check_url" >/dev/null
if ! SQLX_OFFLINE=false DATABASE_URL=$sqlx_check_url cargo sqlx prepare --workspace --check -- --all-targets --locked; then
    echo "test.sh: .sqlx/ does not match the queries in the code: run" >&2
    echo "  DATABASE_URL=$sqlx_check_url cargo sqlx prepare --workspace -- --all-targets" >&2
    echo "against a migrated database and commit .sqlx/" >&2
    exit 1
fi

log "building"
cargo build --workspace --all-targets --locked

log "running the Rust tests"
mkdir -p .run
status=0
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast 2>&1 | tee .run/nextest.log || status=1
    summary=$(grep -E 'Summary \[.*[0-9]+ tests? run' .run/nextest.log | tail -1)
else
    cargo test --workspace --locked --no-fail-fast 2>&1 | tee .run/nextest.log || status=1
    summary=$(grep -E '^test result:' .run/nextest.log | awk '{p += $4; f += $6} END {print p " passed, " f " failed"}')
fi
rust_passed=$(grep -Eo '[0-9]+ passed' <<<"$summary" | grep -Eo '[0-9]+' || echo 0)
rust_failed=$(grep -Eo '[0-9]+ failed' <<<"$summary" | grep -Eo '[0-9]+' || echo 0)
[ "$status" = 0 ] || [ "${rust_failed:-0}" != 0 ] || rust_failed=1
if [ "${rust_failed:-0}" = 0 ]; then
    log "dropping the Rust tests' databases"
    drop_test_databases
fi

checks_passed=0
failed_checks=()
for check in scripts/checks/*.sh; do
    log "running $check"
    if bash "$check"; then
        checks_passed=$((checks_passed + 1))
    else
        failed_checks+=("$check")
    fi
done

echo
echo "Rust tests: ${rust_passed:-0} passed, ${rust_failed:-0} failed"
echo "checks: $checks_passed passed, ${#failed_checks[@]} failed ${failed_checks[*]}"
total_failed=$(( ${rust_failed:-0} + ${#failed_checks[@]} ))
echo "all: $(( ${rust_passed:-0} + checks_passed )) passed, $total_failed failed"
[ "$status" = 0 ] && [ "$total_failed" = 0 ]
