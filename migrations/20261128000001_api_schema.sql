-- events, rsvps and the transactional outbox written by the api.

create table events (
    id          uuid primary key,
    title       text not null check (length(title) between 1 and 200),
    starts_at   timestamptz not null,
    -- seats = one per going rsvp plus its guests; null means unlimited.
    capacity    integer check (capacity > 0),
    -- kept in step with the going rsvps inside each writing transaction, so that
    -- the capacity check is one conditional update that also locks the event row.
    seats_taken integer not null default 0 check (seats_taken >= 0),
    created_at  timestamptz not null default now()
);

create table rsvps (
    id          uuid primary key,
    event_id    uuid not null references events (id) on delete cascade,
    name        text not null,
    -- stored lower-cased so that uniqueness per event ignores case.
    email       text not null,
    status      text not null check (status in ('going', 'maybe', 'declined', 'cancelled')),
    guests      smallint not null default 0 check (guests between 0 and 10),
    -- sha-256 of the secret token; the token itself is never stored.
    token_hash  bytea not null,
    -- incremented by every change and carried in its outbox row, so consumers
    -- can order changes of one rsvp and ignore replays.
    version     bigint not null default 1 check (version >= 1),
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now(),
    constraint rsvps_event_email_key unique (event_id, email),
    constraint rsvps_token_hash_key unique (token_hash)
);

create index rsvps_event_id_created_at_idx on rsvps (event_id, created_at, id);

-- append-only: the relay records what it published in its own tables.
create table outbox (
    id             bigint generated always as identity primary key,
    -- the writing transaction: the relay only reads rows whose transaction is
    -- older than every transaction still running, so a slow commit is never skipped.
    xid            xid8 not null default pg_current_xact_id(),
    aggregate_type text not null,
    aggregate_id   uuid not null,
    kafka_key      text not null,
    event_type     text not null check (event_type in ('RSVP_CREATED', 'RSVP_UPDATED', 'RSVP_DELETED', 'RSVP_CANCELLED')),
    message_id     uuid not null,
    rsvp_version   bigint not null,
    payload        jsonb not null,
    traceparent    text,
    -- clock_timestamp, not now(): commit-to-publish latency is measured from here.
    created_at     timestamptz not null default clock_timestamp(),
    constraint outbox_message_id_key unique (message_id)
);

create index outbox_xid_id_idx on outbox (xid, id);
create index outbox_created_at_idx on outbox (created_at);

-- wake the relay on commit: notifications are delivered only when the writing
-- transaction commits, and one per statement keeps them cheap.
create function outbox_notify() returns trigger language plpgsql as $$
begin
    perform pg_notify('outbox_inserted', '');
    return null;
end;
$$;

create trigger outbox_notify_after_insert
    after insert on outbox
    for each statement execute function outbox_notify();

create function outbox_forbid_update() returns trigger language plpgsql as $$
begin
    raise exception 'outbox rows are append-only';
end;
$$;

create trigger outbox_append_only
    before update on outbox
    for each row execute function outbox_forbid_update();
