-- outbox rows and relay cursors record the postgres cluster they belong to.
--
-- xid8 values are a cluster's own: after pg_dump/pg_restore into another cluster (or a
-- logical-replication move) the restored rows keep the old cluster's xids and new rows
-- get the new cluster's, which may sort below the cursor. so each row records the
-- cluster that wrote it (its system_identifier) and the relay reads one cluster's rows
-- (a generation) at a time, older generations first (docs/relay.md, "Restores and
-- moves"). a restore keeps written_on and the identity sequence, so every row of a
-- later generation has a larger id than every row of an earlier one.

-- this session's cluster. pg_control_system() reads the control file (about 11 us a
-- call); a session never changes cluster, so the value is kept in a custom setting
-- for the session. plain sql (no plpgsql), so that the planner inlines it into the
-- insert: 200k-row inserts cost 1.5-2 us more per row with this default, 5-6 us with
-- the same in plpgsql (a busy 2-core machine). a rolled-back first use leaves the
-- setting empty, which reads it again.
create function outbox_cluster() returns bigint
    language sql volatile
as $$
    select coalesce(nullif(current_setting('rsvp.cluster', true), ''),
                    set_config('rsvp.cluster', (pg_control_system()).system_identifier::text, false))::bigint
$$;

-- existing rows get a constant (no table rewrite, and no update of the append-only
-- outbox): this cluster, unless the data was restored here from another cluster
-- before this migration ran. such rows carry xids this cluster has not handed out
-- yet; they and their cursor then get 0, "an earlier cluster", which the relay
-- drains like any other earlier generation.
do $$
declare
    next_xid xid8 := pg_snapshot_xmax(pg_current_snapshot());
    restored boolean := exists (select 1 from outbox where xid >= next_xid)
                     or exists (select 1 from relay_cursors where xid >= next_xid);
    existing bigint := case when restored then 0 else outbox_cluster() end;
begin
    execute format('alter table outbox add column written_on bigint not null default %s', existing);
    execute format('alter table relay_cursors add column cluster bigint default %s', existing);
end;
$$;

alter table outbox alter column written_on set default outbox_cluster();

-- the generation a cursor is in: rows written on `cluster` with an id from since_id
-- on. its (xid, id) position is in that cluster's xids. a null cluster (a cursor
-- written by hand) makes the relay refuse to publish until it is set.
alter table relay_cursors
    alter column cluster set default outbox_cluster(),
    add column since_id bigint not null default 0;
