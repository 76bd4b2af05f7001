#!/usr/bin/env bash
# Shared by run.sh and test.sh: make sure every service and tool the system needs is
# installed and running, installing what is missing. Safe to run again.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS_DIR=${RSVP_TOOLS_DIR:-$HOME/.cache/rsvp-outbox}
VENV=$TOOLS_DIR/venv
TANSU_VERSION=0.6.0
SQLX_CLI_VERSION=0.8.6
export PATH="$HOME/.cargo/bin:$PATH"
# The query macros check the SQL against the offline data committed in .sqlx/, never
# against the DATABASE_URL that these scripts export for the processes they start
# (a database not migrated yet would fail the build). test.sh checks that .sqlx/
# matches the queries (`cargo sqlx prepare --check`).
export SQLX_OFFLINE=true

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() { # host port seconds what
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        port_open "$1" "$2" && return 0
        sleep 0.1
    done
    echo "$4 did not listen on $1:$2 within $3 s" >&2
    return 1
}

apt_install() {
    log "installing Debian packages: $*"
    if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq; APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_postgres() {
    if ! command -v pg_ctlcluster >/dev/null; then apt_install postgresql; fi
    if ! pg_isready -q -h 127.0.0.1 -p 5432; then
        log "starting PostgreSQL"
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start
        wait_port 127.0.0.1 5432 30 PostgreSQL
        until pg_isready -q -h 127.0.0.1 -p 5432; do sleep 0.2; done
    fi
    if ! psql -h 127.0.0.1 -U root -d postgres -Atc 'select 1' >/dev/null 2>&1; then
        log "creating the PostgreSQL role root"
        su postgres -c "psql -c 'create role root superuser login'" >/dev/null
    fi
}

ensure_database() { # name
    if [ "$(psql -h 127.0.0.1 -U root -d postgres -Atc "select 1 from pg_database where datname = '$1'")" != 1 ]; then
        psql -h 127.0.0.1 -U root -d postgres -qc "create database \"$1\"" >/dev/null
    fi
}

ensure_redis() {
    if ! command -v redis-server >/dev/null; then apt_install redis-server; fi
    if ! port_open 127.0.0.1 6379; then
        log "starting Redis"
        mkdir -p /var/lib/redis /var/log/redis
        redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
            --dir /var/lib/redis --logfile /var/log/redis/ci.log
        wait_port 127.0.0.1 6379 30 Redis
    fi
}

ensure_tansu() {
    if ! command -v tansu >/dev/null || ! tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
        log "installing the Tansu broker $TANSU_VERSION (about 20 minutes on a new machine)"
        cargo install tansu --locked --version "$TANSU_VERSION" --features dynostore
    fi
}

# sqlx-cli, for `cargo sqlx prepare` (the offline data of the query macros in .sqlx/).
ensure_sqlx_cli() {
    if ! cargo sqlx --version 2>/dev/null | grep -q "$SQLX_CLI_VERSION"; then
        log "installing sqlx-cli $SQLX_CLI_VERSION (a few minutes on a new machine)"
        cargo install sqlx-cli --locked --version "$SQLX_CLI_VERSION" --no-default-features --features postgres,rustls
    fi
}

# Starts a Tansu broker on 127.0.0.1:$1 with in-memory storage unless one listens
# there; sets STARTED_BROKER_PID when it started one (so the caller stops only its own).
ensure_broker() {
    local port=${1:-9092}
    STARTED_BROKER_PID=
    ensure_tansu
    if ! port_open 127.0.0.1 "$port"; then
        log "starting Tansu on 127.0.0.1:$port (log: .run/tansu-$port.log)"
        mkdir -p "$ROOT/.run"
        # Tansu logs every request at info: warnings only, or the log fills the disk.
        RUST_LOG=warn nohup tansu broker --listener-url "tcp://127.0.0.1:$port" \
            --advertised-listener-url "tcp://127.0.0.1:$port" \
            --storage-engine memory://tansu/ >"$ROOT/.run/tansu-$port.log" 2>&1 &
        STARTED_BROKER_PID=$!
        echo "$STARTED_BROKER_PID" >"$ROOT/.run/tansu-$port.pid"
        wait_port 127.0.0.1 "$port" 60 Tansu
    fi
}

ensure_python_tools() {
    local wanted=(confluent-kafka==2.16.1 schemathesis==4.32.5 check-jsonschema==0.39.0)
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating a Python venv for the test tools in $VENV"
        mkdir -p "$TOOLS_DIR"
        python3 -m venv "$VENV"
    fi
    local installed package
    installed=$("$VENV/bin/pip" freeze --disable-pip-version-check 2>/dev/null || true)
    for package in "${wanted[@]}"; do
        if ! grep -qix "$package" <<<"$installed"; then
            log "installing ${wanted[*]}"
            "$VENV/bin/pip" install -q --disable-pip-version-check "${wanted[@]}"
            break
        fi
    done
    export PATH="$VENV/bin:$PATH"
}

ensure_cli_tools() {
    local missing=()
    command -v curl >/dev/null || missing+=(curl)
    command -v jq >/dev/null || missing+=(jq)
    command -v psql >/dev/null || missing+=(postgresql-client)
    if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
}

ensure_rust() {
    command -v cargo >/dev/null || { echo "cargo is required (rustup)" >&2; exit 1; }
    local component
    for component in rustfmt clippy; do
        if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
            log "installing the Rust component $component"
            rustup component add "$component"
        fi
    done
}

# promtool and the Prometheus server, from Debian's `prometheus` package (ops checks).
ensure_prometheus() {
    if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then apt_install prometheus; fi
}
