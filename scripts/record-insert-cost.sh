#!/usr/bin/env bash
# What inserting a keyed write's idempotency record costs PostgreSQL, per record, for
# the statement the api runs and for the one it ran before: on a scratch database
# with the api's migrations, ROUNDS statements of PER records each (default 2000 of
# 50), the variants in turn, each statement in a transaction of its own, timed in
# the server (clock_timestamp around it, so neither the client nor the network is in
# the figure) with its WAL bytes.
#
#   scripts/record-insert-cost.sh [ROUNDS] [PER]
#
# - before: `on conflict (lookup_id) do update ... where expired`, the locks tried in
#   a materialized CTE and a row per record in the answer (the api until 2026-12-06);
# - now: a plain insert, the lock tried in its filter, a count for an answer
#   (`api/src/store/outbox.rs`, `append`);
# - now, 16-byte uuid key: the same with the lookup id as a uuid (not built: a
#   rewrite of the table; measured to know what it would give).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
rounds=${1:-2000}
per=${2:-50}
database=rsvp_record_insert_cost
psql_db() { psql -qX -v ON_ERROR_STOP=1 -h 127.0.0.1 -U root -d "$database" "$@"; }
psql -qX -h 127.0.0.1 -U root -d postgres -c "drop database if exists $database" -c "create database $database" >/dev/null
trap 'psql -qX -h 127.0.0.1 -U root -d postgres -c "drop database if exists $database" >/dev/null' EXIT
for migration in "$ROOT"/migrations/*.sql; do psql_db -f "$migration" >/dev/null; done

log "staging $((rounds * per)) records"
# One table per variant, each as the migrations leave idempotency_keys (the uuid one
# with its key changed, the one before with the primary key that its `on conflict`
# names, as the table had then), so that no variant finds another's keys.
psql_db <<SQL
create table record_before (like idempotency_keys including defaults including constraints);
alter table record_before add primary key (lookup_id);
create index on record_before using brin (expires_at);
create table record_now (like idempotency_keys including all);
create table record_uuid (like idempotency_keys including all);
alter table record_uuid drop column lookup_id, add column lookup_id uuid primary key;
create table staged (n int primary key, id bytea, k int8, f bytea, r bytea);
-- a sealed create answer is about 350 bytes: the nonce, the rsvp's JSON, the tag
insert into staged
select g, sha256(int8send(g)), ('x' || encode(substr(sha256(int8send(g)), 1, 8), 'hex'))::bit(64)::int8,
       sha256(int8send(-g)), (select string_agg(sha256(int8send(g * 1000 + i)), '') from generate_series(1, 11) i)
from generate_series(1, $((rounds * per))) g;
create table timing (variant text, micros float8, wal numeric, records int);
SQL

log "$rounds statements of $per records per variant, in turn"
psql_db <<SQL
do \$\$
declare
  ids bytea[]; ks int8[]; fs bytea[]; rs bytea[]; us uuid[]; ttls float8[]; sts int2[];
  variants text[] := array['before', 'now', 'now, 16-byte uuid key'];
  v text; t0 timestamptz; l0 pg_lsn; recorded bigint; base int := 0;
begin
  for round in 1..$rounds loop
    select array_agg(id order by n), array_agg(k order by n), array_agg(f order by n), array_agg(r order by n),
           array_agg(encode(substr(id, 1, 16), 'hex')::uuid order by n)
      into ids, ks, fs, rs, us from staged where n > base and n <= base + $per;
    base := base + $per;
    ttls := array_fill(86400::float8, array[$per]);
    sts := array_fill(201::int2, array[$per]);
    foreach v in array variants loop
      l0 := pg_current_wal_insert_lsn();
      t0 := clock_timestamp();
      if v = 'before' then
        with claimed as materialized (
          select id, f, s, st, r, n, pg_try_advisory_xact_lock(k) as locked
          from unnest(ids, ks, fs, ttls, sts, rs) with ordinality as x(id, k, f, s, st, r, n)
        ), recorded as (
          insert into record_before (lookup_id, fingerprint, expires_at, status, response)
          select id, f, now() + make_interval(secs => s), st, r from claimed where locked
          on conflict (lookup_id) do update
             set fingerprint = excluded.fingerprint, expires_at = excluded.expires_at,
                 status = excluded.status, response = excluded.response, created_at = now()
             where record_before.expires_at <= now()
          returning lookup_id
        )
        select count(*) into recorded
        from (values (true)) as statement(ran)
             left join claimed on true left join recorded on recorded.lookup_id = claimed.id;
      elsif v = 'now' then
        with recorded as (
          insert into record_now (lookup_id, fingerprint, expires_at, status, response)
          select id, f, now() + make_interval(secs => s), st, r
          from unnest(ids, ks, fs, ttls, sts, rs) as x(id, k, f, s, st, r)
          where pg_try_advisory_xact_lock(k)
          returning 1
        )
        select count(*) into recorded from recorded;
      else
        with recorded as (
          insert into record_uuid (lookup_id, fingerprint, expires_at, status, response)
          select id, f, now() + make_interval(secs => s), st, r
          from unnest(us, ks, fs, ttls, sts, rs) as x(id, k, f, s, st, r)
          where pg_try_advisory_xact_lock(k)
          returning 1
        )
        select count(*) into recorded from recorded;
      end if;
      insert into timing values (v, extract(epoch from clock_timestamp() - t0) * 1e6,
                                 pg_current_wal_insert_lsn() - l0, $per);
      commit;
    end loop;
    -- each variant goes first in turn
    variants := array[variants[2], variants[3], variants[1]];
    if round % 200 = 0 then
      raise notice '% of % rounds', round, $rounds;
    end if;
  end loop;
end \$\$;
SQL
psql_db -c "select variant, round((sum(micros) / sum(records))::numeric, 2) as \"µs per record\",
                   round(sum(wal) / sum(records)) as \"WAL bytes per record\"
            from timing group by variant order by 2 desc"
