#!/usr/bin/env bash
# Starts the whole system with scripts/run.sh (debug build, spare ports, its own
# database and broker), runs the README's curl walk-through against it, and checks
# the statuses it prints and the outbox rows it leaves.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
cd "$ROOT"

database="test_walkthrough_$$"
export DATABASE_URL="postgres://root@127.0.0.1:5432/$database"
export API_ADDR=127.0.0.1:18080 API_ADMIN_ADDR=127.0.0.1:19464 RELAY_ADMIN_ADDR=127.0.0.1:19465
export CONSUMERS_ADMIN_ADDR=127.0.0.1:19466 KAFKA_BROKERS=127.0.0.1:19092
export ADMIN_TOKEN="walkthrough-admin-token-$$" RSVP_PROFILE=debug
export CONSUMERS="$ROOT/target/debug/rsvp-consumers" # the build run.sh makes with RSVP_PROFILE=debug

# Emptied first: the background redirect may open the log after the loop below first
# reads it, and an earlier run's "rsvp is running" must not count.
mkdir -p .run && : >.run/walkthrough-run.log
bash scripts/run.sh >.run/walkthrough-run.log 2>&1 &
run_pid=$!
cleanup() {
    kill "$run_pid" 2>/dev/null || true
    wait "$run_pid" 2>/dev/null || true
    psql -h 127.0.0.1 -U root -d postgres -qc "drop database if exists $database with (force)" >/dev/null
}
trap cleanup EXIT
until grep -q "rsvp is running" .run/walkthrough-run.log; do
    kill -0 "$run_pid" 2>/dev/null || { cat .run/walkthrough-run.log >&2; exit 1; }
    sleep 1
done

awk '/^## Walk-through/{f=1} f&&/^```sh/{g=1;next} g&&/^```/{exit} g' README.md >.run/walkthrough.sh
# The walk-through's `status` exits 1 while a partition has no owner, as it may for a
# moment after the relay created the topic: a reader typing the commands would not
# notice, so the check gives it up to a minute to own them, then runs it for real.
cat >.run/consumers-when-owned <<SH
#!/usr/bin/env bash
for _ in \$(seq 60); do "$CONSUMERS" status >/dev/null 2>&1 && break; sleep 1; done
exec "$CONSUMERS" "\$@"
SH
chmod +x .run/consumers-when-owned
output=$(API="http://$API_ADDR" CONSUMERS="$ROOT/.run/consumers-when-owned" bash -euo pipefail .run/walkthrough.sh)
echo "$output"

fail() { echo "walk-through check failed: $*" >&2; exit 1; }
grep -qx 409 <<<"$output" || fail "cancelling twice did not print 409"
grep -qx 204 <<<"$output" || fail "deleting did not print 204"
# Ada's create, change, cancel and delete, then Bob's create sent twice with one
# Idempotency-Key: written once, the retry answered from its record.
types=$(psql "$DATABASE_URL" -Atc "select string_agg(event_type, ',' order by id) from outbox")
[ "$types" = "RSVP_CREATED,RSVP_UPDATED,RSVP_CANCELLED,RSVP_DELETED,RSVP_CREATED" ] || fail "outbox holds $types"
versions=$(psql "$DATABASE_URL" -Atc "select string_agg(rsvp_version::text, ',' order by id) from outbox")
[ "$versions" = "1,2,3,4,1" ] || fail "outbox versions are $versions"
valid=$(psql "$DATABASE_URL" -Atc "select count(*) from outbox where payload->>'specversion' = '1.0'
    and payload->>'source' = '/rsvp-api' and payload->>'type' = event_type and (payload->>'id')::uuid = message_id")
[ "$valid" = 5 ] || fail "only $valid outbox rows are valid CloudEvents"
[ "$(grep -ci '^idempotent-replayed: true' <<<"$output")" = 1 ] || fail "the retried create was not answered as replayed"
bob=$(grep '"name":"Bob"' <<<"$output" | jq -c '{id, token}')
[ "$(wc -l <<<"$bob")" = 2 ] && [ "$(sort -u <<<"$bob" | wc -l)" = 1 ] || fail "the two answers to Bob's create differ: $bob"
echo "walk-through: every status as documented, five valid CloudEvents rows in commit order, a retried create written once"
