-- the consumers' own state: offsets, group membership and dead letters per consumer
-- group, and the analytics group's statistics in the `analytics` schema.
--
-- when ANALYTICS_DATABASE_URL names another database, the consumers run every
-- migration there too and keep the analytics group's offsets, members and dead letters
-- in it, so that a statistics change and its offset advance commit in one transaction.

-- the next offset to read per (group, topic, partition). advanced only to the end of
-- a fetched batch, in the transaction that records the batch's effects.
create table consumer_offsets (
    group_name  text not null,
    topic       text not null,
    partition   integer not null check (partition >= 0),
    next_offset bigint not null check (next_offset >= 0),
    updated_at  timestamptz not null default now(),
    primary key (group_name, topic, partition)
);

-- running instances of each group, to divide the partitions fairly. a member is live
-- while the backend of its membership connection exists: a killed process's
-- connection closes, so its row stops counting at once, without waiting on a lease.
create table consumer_members (
    group_name  text not null,
    instance_id uuid not null,
    backend_pid integer not null,
    started_at  timestamptz not null default now(),
    primary key (group_name, instance_id)
);

-- records a group could not apply: the raw record, where it was, and why.
create table consumer_dead_letters (
    id            bigint generated always as identity primary key,
    group_name    text not null,
    topic         text not null,
    partition     integer not null,
    kafka_offset  bigint not null,
    record_key    bytea,
    -- an operator may fix the value in place before `rsvp-consumers dlq redrive`.
    record_value  bytea,
    header_names  text[] not null default '{}',
    header_values bytea[] not null default '{}',
    error         text not null,
    attempts      integer not null check (attempts >= 1),
    created_at    timestamptz not null default now(),
    -- set once the record was applied by a redrive; never redriven twice.
    redriven_at   timestamptz,
    redrive_error text
);

create index consumer_dead_letters_pending_idx on consumer_dead_letters (group_name, id) where redriven_at is null;

create schema analytics;

-- per event: current rsvps by status, guests going, and totals of each event type.
create table analytics.event_stats (
    event_id        uuid primary key,
    going           bigint not null default 0,
    maybe           bigint not null default 0,
    declined        bigint not null default 0,
    cancelled       bigint not null default 0,
    guests_going    bigint not null default 0,
    created_total   bigint not null default 0,
    updated_total   bigint not null default 0,
    cancelled_total bigint not null default 0,
    deleted_total   bigint not null default 0,
    last_event_at   timestamptz,
    updated_at      timestamptz not null default now()
);

-- per event and hour of the change (the event's `time`, truncated to the hour).
create table analytics.rsvps_per_hour (
    event_id uuid not null,
    hour     timestamptz not null,
    created  bigint not null default 0,
    changes  bigint not null default 0,
    primary key (event_id, hour)
);

-- the last applied state of each rsvp: what a change is subtracted from (an update
-- may change guests, which `previous_status` does not carry), and the version that
-- makes a replayed or older change a no-op. deleted rsvps keep their row.
create table analytics.rsvp_state (
    rsvp_id      uuid primary key,
    event_id     uuid not null,
    status       text check (status in ('going', 'maybe', 'declined', 'cancelled')),
    guests       smallint not null,
    last_version bigint not null,
    deleted      boolean not null default false,
    updated_at   timestamptz not null default now()
);

-- every applied ce_id: a redelivered record is recognised even when its version check
-- alone would not tell (a redriven dead letter, a replay after the state was reset).
create table analytics.applied_events (
    ce_id      uuid primary key,
    rsvp_id    uuid not null,
    applied_at timestamptz not null default now()
);
