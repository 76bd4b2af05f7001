#!/usr/bin/env bash
# Runs every `sh` block of docs/RUNBOOK.md, unchanged, against the real system
# (scripts/run.sh on spare ports) and a Prometheus scraping it, staging between the
# blocks what each section is about: a paused broker, a long transaction, a poison
# record, a time range to replay, extra relay and consumer processes. Each section
# runs as one bash script: the "Before you start" block, then the section's blocks
# with the staging steps between them. Checks each section's outcome, among them
# that the replay shows in the metrics (relay_replayed_total through Prometheus), and
# that no block of the runbook was left out.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
source "$(dirname "$0")/system.bash"
cd "$ROOT"
ensure_python_tools
ensure_prometheus
ensure_cli_tools

start_system runbook
export RELAY="$ROOT/target/debug/rsvp-relay" CONSUMERS="$ROOT/target/debug/rsvp-consumers"
export PSQL="psql $DATABASE_URL" PROMETHEUS API_ADMIN
export RELAY2_ADMIN_ADDR="127.0.0.1:$(free_port)" CONSUMERS2_ADMIN_ADDR="127.0.0.1:$(free_port)"
export SINCE=$(date -u +%FT%TZ)
export RUST_LOG=warn # the runbook's commands; the services keep their own level
failures=()
sleep 1

# The runbook's blocks, one file each: $WORK/blocks/<section number>.<block number>.sh
mkdir -p "$WORK/blocks"
python3 - "$WORK/blocks" <<'PY'
import re, sys
out = sys.argv[1]
section = -1
block = None
titles = []
for line in open("docs/RUNBOOK.md"):
    if line.startswith("## "):
        section += 1; number = 0; titles.append(line[3:].strip())
    elif block is None and line.rstrip() == "```sh":
        number += 1; block = []
    elif block is not None and line.startswith("```"):
        open(f"{out}/{section}.{number}.sh", "w").write("".join(block)); block = None
    elif block is not None:
        block.append(line)
open(f"{out}/titles", "w").write("\n".join(titles) + "\n")
PY
[ "$(sed -n 1p "$WORK/blocks/titles")" = "Before you start" ] || { echo "the runbook must open with 'Before you start'" >&2; exit 1; }
ran=("0.1")

# run_section N [STEP_AFTER_BLOCK_1]: the setup block, then section N's blocks; the
# step (shell code) runs between its first and second block.
run_section() {
    local n=$1 step=${2:-} script="$WORK/section-$1.sh" title
    title=$(sed -n "$((n + 1))p" "$WORK/blocks/titles")
    log "runbook: $title"
    cat "$WORK/blocks/0.1.sh" >"$script"
    for block in $(ls "$WORK/blocks" | grep "^$n\.[0-9]*\.sh$" | sort -t. -k2 -n); do
        cat "$WORK/blocks/$block" >>"$script"
        if [ "$block" = "$n.1.sh" ] && [ -n "$step" ]; then echo "$step" >>"$script"; fi
        ran+=("${block%.sh}")
    done
    local started=$SECONDS
    bash -euo pipefail "$script" 2>&1 | tee "$WORK/section-$n.out"
    echo "($title: $((SECONDS - started)) s)"
}
section_number() { grep -nx "$1" "$WORK/blocks/titles" | cut -d: -f1 | awk '{print $1 - 1}'; }
fail() { echo "runbook check failed: $*" >&2; exit 1; }
positive() { awk -v v="$1" 'BEGIN {exit !(v > 0)}'; }
backlog() { prom_value 'max(outbox_backlog_rows)'; }

log "baseline load"
api_load 12 >/dev/null
wait_for 30 "the relay to publish the baseline" bash -c '[ "$(curl -fsS "$RELAY_ADMIN/metrics" | awk "/^outbox_backlog_rows /{print \$2}")" = 0 ]'

# Broker outage: pause the broker, write, let the backlog show, run the diagnosis,
# resume the broker, then the catch-up block.
kill -STOP "$BROKER_PID"
api_load 6 >/dev/null
wait_for 30 "the backlog to show in Prometheus" bash -c "$(declare -f prom_value backlog positive); positive \"\$(backlog)\""
run_section "$(section_number 'Broker outage and catch-up')" "kill -CONT $BROKER_PID; echo '(check: broker resumed)'"
[ "$(backlog)" = 0 ] || fail "the backlog did not drain after the outage"
grep -q "0 missing" "$WORK/section-1.out" || grep -qi "ok\|pass\|clean" "$WORK/section-1.out" || fail "audit printed no clean summary"

# A long transaction: it takes an xid, then later writes commit and wait behind it.
app="runbook-long-transaction-$$"
PGAPPNAME=$app psql "$DATABASE_URL" -qAtc "begin; select pg_current_xact_id(); select pg_sleep(600); commit;" >/dev/null 2>&1 &
long_pid=$!
sleep 1
api_load 3 >/dev/null
wait_for 40 "the watermark stall to pass 5 s" bash -c "$(declare -f prom_value positive); positive \"\$(prom_value 'max(relay_watermark_stall_seconds) - 5')\""
BLOCKER_PID=$(psql "$DATABASE_URL" -Atc "select pid from pg_stat_activity where application_name = '$app'")
export BLOCKER_PID
run_section "$(section_number 'Relay stalled behind a long transaction')"
grep -q "$app" "$WORK/section-$(section_number 'Relay stalled behind a long transaction').out" || fail "the listing did not show the long transaction"
if kill -0 "$long_pid" 2>/dev/null; then fail "the long transaction still runs"; fi
wait "$long_pid" 2>/dev/null || true

run_section "$(section_number 'Growing consumer lag')"

# Consumers not processing: with every partition owned, status exits 0 and names them.
n=$(section_number 'Consumers not processing')
run_section "$n"
grep -q "PARTITION" "$WORK/section-$n.out" || fail "status printed no table"
grep -q "PROBLEM" "$WORK/section-$n.out" && fail "status found a problem in a healthy system"

# A poison record: an undecodable copy of a published record, dead-lettered by every
# group (cache, analytics, notifications).
poison_record
wait_for 30 "every group to dead-letter it" bash -c '[ "$(psql "$DATABASE_URL" -Atc "select count(*) from consumer_dead_letters where redriven_at is null")" = 3 ]'
run_section "$(section_number 'Dead-letter redrive')"
pending=$(psql "$DATABASE_URL" -Atc "select count(*) from consumer_dead_letters where redriven_at is null")
[ "$pending" = 0 ] || fail "$pending dead letters are still pending after the redrive"

# Replay: the window from before the first write to now.
export UNTIL=$(date -u -d '+1 second' +%FT%TZ)
sleep 1
rows=$(psql "$DATABASE_URL" -Atc "select count(*) from outbox where created_at >= '$SINCE' and created_at < '$UNTIL'")
replayed_before=$(prom_value 'max(relay_replayed_total)'); replayed_before=${replayed_before:-0}
duplicates_before=$(prom_value 'sum(consumer_processed_total{group="analytics-group",result="duplicate"})'); duplicates_before=${duplicates_before:-0}
n=$(section_number 'Replay after an outage')
run_section "$n"
grep -q "dry run: would replay $rows rows" "$WORK/section-$n.out" || fail "the dry run did not select the $rows rows of the window"
grep -q "replayed $rows of $rows selected rows" "$WORK/section-$n.out" || fail "replay did not publish the $rows rows of the window"
wait_for 30 "the analytics group to count the $rows replayed records as duplicates" bash -c \
    "$(declare -f prom_value positive); positive \"\$(prom_value 'sum(consumer_processed_total{group=\"analytics-group\",result=\"duplicate\"}) - $duplicates_before - $rows + 1')\""
echo "consumers: the $rows replayed records counted as duplicates by analytics-group"
# Checked to the end, so that the sections after it run either way.
if wait_for 30 "relay_replayed_total in Prometheus to grow by $rows" bash -c \
    "$(declare -f prom_value positive); positive \"\$(prom_value 'max(relay_replayed_total) - $replayed_before - $rows + 1')\""; then
    echo "relay_replayed_total grew by $rows in Prometheus"
else
    failures+=("the replay does not show in relay_replayed_total as Prometheus scrapes it from the running relay")
fi

n=$(section_number 'Scaling relays and consumers')
run_section "$n"
grep -q '^relay_leader 0' "$WORK/section-$n.out" || fail "the second relay was not a standby"
[ "$(prom_value 'sum(relay_leader)')" = 1 ] || fail "not exactly one relay leads after scaling down"

run_section "$(section_number 'API errors and latency')"

# Moving the database: where the relay is; on a database that never moved the cursor
# is on this cluster and nothing is refused.
n=$(section_number 'Moving the database')
run_section "$n"
grep -q ' t  *|' "$WORK/section-$n.out" || fail "the cursor is not on this cluster"
[ "$(prom_value 'max(relay_cursor_impossible)')" = 0 ] || fail "the relay refuses its cursor"

# Every block of the runbook ran.
all=$(ls "$WORK/blocks" | grep '\.sh$' | sed 's/\.sh$//' | sort)
done_=$(printf '%s\n' "${ran[@]}" | sort -u)
[ "$all" = "$done_" ] || fail "runbook blocks not run by this check: $(comm -23 <(echo "$all") <(echo "$done_") | tr '\n' ' ')"
[ ${#failures[@]} = 0 ] || fail "${failures[*]}"
echo "runbook: all $(echo "$all" | wc -l) blocks ran against the live system and did what they say"
