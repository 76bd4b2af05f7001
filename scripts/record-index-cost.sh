#!/usr/bin/env bash
# What a keyed create's idempotency record costs PostgreSQL with each way of keeping
# lookup ids unique, as throughput: pgbench runs the api's batch of 50 creates per
# transaction (rsvps, seats, outbox rows) with and without its 50 records, in turns
# of SECONDS, CYCLES times (each variant first in turn), 32 clients, each variant on
# a scratch database of its own with the api's migrations and 1,000 events. Prints
# each turn, then each variant's rsvps/s over all turns and its WAL bytes per rsvp.
#
#   scripts/record-index-cost.sh [CYCLES] [SECONDS]
#
# - no records: the unkeyed batch;
# - btree primary key: the records as the api kept them until 2026-12-07;
# - hash exclusion: as the migrations leave them now;
# - no unique index: the floor (nothing would refuse a second record of a key).
#
# The records' statement is the api's (`api/src/store/outbox.rs`, `append`): the
# records inserted with the outbox rows and the seats, each under its key's advisory
# lock. Lookup ids are 32 random bytes, the sealed answer 383 bytes (a bench create's).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cycles=${1:-12}
seconds=${2:-4}
variants=(none btree hash unindexed)
workdir=$(mktemp -d)
trap 'rm -rf "$workdir"; for v in "${variants[@]}"; do psql -qX -h 127.0.0.1 -U root -d postgres -c "drop database if exists rsvp_record_index_$v" >/dev/null; done' EXIT

for v in "${variants[@]}"; do
    db=rsvp_record_index_$v
    psql -qX -h 127.0.0.1 -U root -d postgres -c "drop database if exists $db" -c "create database $db" >/dev/null
    for migration in "$ROOT"/migrations/*.sql; do
        psql -qX -v ON_ERROR_STOP=1 -h 127.0.0.1 -U root -d "$db" -f "$migration" >/dev/null
    done
    psql -qX -v ON_ERROR_STOP=1 -h 127.0.0.1 -U root -d "$db" >/dev/null <<'SQL'
insert into events (id, title, starts_at)
select gen_random_uuid(), 'Bench ' || i, '2099-01-01T00:00:00Z' from generate_series(1, 1000) i;
create table bench_events (n int primary key, id uuid not null);
insert into bench_events select row_number() over (order by id), id from events;
SQL
done
psql -qX -v ON_ERROR_STOP=1 -h 127.0.0.1 -U root -d rsvp_record_index_btree -c \
    "alter table idempotency_keys drop constraint idempotency_keys_lookup_id_unique, add primary key (lookup_id)" >/dev/null
psql -qX -v ON_ERROR_STOP=1 -h 127.0.0.1 -U root -d rsvp_record_index_unindexed -c \
    "alter table idempotency_keys drop constraint idempotency_keys_lookup_id_unique" >/dev/null

# The api's rows: an outbox payload of the api's size, a 383-byte sealed answer.
payload='{"specversion":"1.0","id":"0192d5a8-5a43-7b7e-9d2a-6d1c1f0e3b2a","source":"rsvp-api","type":"RSVP_CREATED","time":"2026-12-07T10:00:00.000000Z","datacontenttype":"application/json","data":{"id":"0192d5a8-5a43-7b7e-9d2a-6d1c1f0e3b2a","event_id":"0192d5a8-5a43-7b7e-9d2a-6d1c1f0e3b2b","status":"going","guests":0,"version":1}}'
answer=$(python3 -c 'import os; print(os.urandom(383).hex())')
fingerprint=$(python3 -c 'import os; print(os.urandom(32).hex())')
for v in "${variants[@]}"; do
    if [ "$v" = none ]; then records=0; else records=50; fi
    cat >"$workdir/$v.sql" <<SQL
\set e random(1, 1000)
begin;
with inserted as (
  insert into rsvps (id, event_id, name, email, status, guests, token_hash)
    select gen_random_uuid(), b.id, 'Bench', gen_random_uuid()::text || '@bench.example', 'going', 0,
           sha256(gen_random_uuid()::text::bytea)
    from bench_events b, generate_series(1, 50) where b.n = :e
    returning id, event_id
), seats as (
  update events set seats_taken = seats_taken + 50 where id = (select id from bench_events where n = :e)
), keys as materialized (
  select uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()) as id from generate_series(1, $records)
), recorded as (
  insert into idempotency_keys (lookup_id, fingerprint, expires_at, status, response)
  select id, '\\x$fingerprint'::bytea, now() + make_interval(secs => 86400), 201, '\\x$answer'::bytea
  from keys where pg_try_advisory_xact_lock(('x' || encode(substr(id, 1, 8), 'hex'))::bit(64)::int8)
  returning 1
)
insert into outbox (aggregate_type, aggregate_id, kafka_key, event_type, message_id, rsvp_version, payload)
  select 'rsvp', id, event_id::text, 'RSVP_CREATED', gen_random_uuid(), 1, '$payload'::json from inserted
  where (select count(*) from recorded) = $records;
commit;
SQL
done

log "${#variants[@]} variants, $cycles cycles of ${seconds}-second turns, 32 clients, 50 creates per transaction"
psql -qX -h 127.0.0.1 -U root -d postgres -c checkpoint
results=$workdir/results
printf '%s\t%s\t%s\t%s\n' cycle variant rsvps_per_s wal_bytes_per_rsvp
for ((cycle = 1; cycle <= cycles; cycle++)); do
    for ((i = 0; i < ${#variants[@]}; i++)); do
        v=${variants[$(((cycle + i) % ${#variants[@]}))]}
        lsn=$(psql -qXAt -h 127.0.0.1 -U root -d postgres -c "select pg_current_wal_lsn()")
        tps=$(pgbench -n -j 2 -c 32 -T "$seconds" -f "$workdir/$v.sql" \
            "postgres://root@127.0.0.1:5432/rsvp_record_index_$v" 2>/dev/null | awk '/^tps =/ {print $3}')
        wal=$(psql -qXAt -h 127.0.0.1 -U root -d postgres -c "select pg_current_wal_lsn() - '$lsn'")
        python3 -c "r = $tps * 50; print(f'$cycle\t$v\t{r:.0f}\t{$wal / (r * $seconds):.0f}')" | tee -a "$results"
    done
done
python3 - "$results" <<'PY'
import sys, collections
rates, wal = collections.defaultdict(list), collections.defaultdict(list)
for line in open(sys.argv[1]):
    _, variant, rate, bytes_per = line.split("\t")
    rates[variant].append(float(rate)); wal[variant].append(float(bytes_per))
base = sum(rates["btree"])
print("\nvariant\trsvps/s\t÷ btree primary key\tWAL bytes per rsvp")
for variant in ["none", "btree", "hash", "unindexed"]:
    r = rates[variant]
    print(f"{variant}\t{sum(r) / len(r):.0f}\t{sum(r) / base:.3f}\t{sum(wal[variant]) / len(wal[variant]):.0f}")
PY
