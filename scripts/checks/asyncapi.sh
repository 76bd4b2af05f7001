#!/usr/bin/env bash
# Checks docs/asyncapi.yaml, the contract of `rsvp-events` for consumers in any
# language, with the AsyncAPI initiative's own parser (@asyncapi/parser, pinned, from
# npm into $TOOLS_DIR/node; nothing is fetched once it is there): the document must
# parse and validate as AsyncAPI 3 without errors, and name one message per event
# type of contract/src/event.rs.
#
#   scripts/checks/asyncapi.sh                   the document alone
#   scripts/checks/asyncapi.sh RECORDS.ndjson    also every record in the file (see
#                                                scripts/checks/asyncapi.cjs)
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
cd "$ROOT"

NODE_DIR=$TOOLS_DIR/node
PACKAGES=(@asyncapi/parser@3.6.6 ajv@8.20.0 ajv-formats@2.1.1)

installed_version() { # package
    node -p "require('$NODE_DIR/node_modules/$1/package.json').version" 2>/dev/null || true
}

ensure_node_tools() {
    command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
    local package
    for package in "${PACKAGES[@]}"; do
        if [ "$(installed_version "${package%@*}")" != "${package##*@}" ]; then
            log "installing ${PACKAGES[*]} into $NODE_DIR"
            mkdir -p "$NODE_DIR"
            # --ignore-scripts: the parser needs no install step (one dependency's is telemetry).
            npm install --prefix "$NODE_DIR" --no-audit --no-fund --no-save --ignore-scripts --loglevel=error "${PACKAGES[@]}" >&2
            return
        fi
    done
}

ensure_node_tools
export NODE_MODULES=$NODE_DIR/node_modules

log "@asyncapi/parser: docs/asyncapi.yaml${1:+ and the records in $1}"
output=$(node scripts/checks/asyncapi.cjs docs/asyncapi.yaml "$@") || { echo "$output"; exit 1; }
echo "$output"

# One message per event type of the contract, by name.
types=$(grep -oP '=> "\KRSVP_[A-Z]+(?=")' contract/src/event.rs | sort -u | paste -sd, -)
listed=$(grep -oP 'messages: \K.*' <<<"$output" | head -1 | tr -d ' ' | tr ',' '\n' | sort -u | paste -sd, -)
[ "$types" = "$listed" ] || { echo "the document's messages ($listed) are not the contract's event types ($types)" >&2; exit 1; }
echo "asyncapi: the document is valid and has a message per event type ($types)"
