#!/usr/bin/env bash
# Checks ops/ with promtool (Debian's prometheus package): the compose Prometheus
# configuration and the local one derived from it (its rule file paths resolve), the
# alert rules, and their unit tests (ops/alerts.test.yml); then the dashboard's
# structure and that every alert follows the `<metric part> <comparison> <number>`
# convention the live check relies on.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
cd "$ROOT"
ensure_prometheus
ensure_python_tools

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

log "promtool check config: ops/prometheus.yml (compose service names)"
promtool check config ops/prometheus.yml

log "promtool check config: the local configuration derived from it (127.0.0.1 targets)"
python scripts/checks/ops_queries.py local-config --out "$work/prometheus.yml" \
    --target rsvp-api=127.0.0.1:9464 --target rsvp-relay=127.0.0.1:9465 --target rsvp-consumers=127.0.0.1:9466
promtool check config "$work/prometheus.yml"

log "promtool check rules: ops/alerts.yml"
promtool check rules ops/alerts.yml

log "promtool test rules: ops/alerts.test.yml"
promtool test rules ops/alerts.test.yml
for alert in $(grep -oP '^\s+- alert: \K\w+' ops/alerts.yml); do
    grep -q "alertname: $alert\$" ops/alerts.test.yml || { echo "no unit test for alert $alert" >&2; exit 1; }
done
echo "every alert in ops/alerts.yml has a unit test"

log "dashboard structure and alert convention"
python scripts/checks/ops_queries.py check-dashboard
echo "promtool: configs, rules and rule unit tests pass"
