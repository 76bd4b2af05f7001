#!/usr/bin/env bash
# Installs what is missing, builds the release binaries and runs every benchmark,
# writing docs/BENCHMARKS.md. BENCH_DURATION (default 10s) sets each measurement's length.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
ensure_rust
ensure_postgres
ensure_redis
ensure_tansu
command -v pgbench >/dev/null || apt_install postgresql-client
cargo build --release --locked --bins
BENCH_COMMAND="scripts/bench.sh${*:+ $*}" target/release/rsvp-bench "$@"
