-- the notifications group: one row per rsvp change the event's organiser should hear
-- of, written in the transaction that advances the group's offset, and keyed by the
-- change's ce_id, so that a redelivery or a replay at new offsets adds nothing. a
-- mailer sends the rows whose sent_at is null and sets it.
create table notifications (
    ce_id      uuid primary key,
    event_id   uuid not null,
    rsvp_id    uuid not null,
    -- seat_freed: a going rsvp was cancelled or deleted.
    kind       text not null check (kind in ('seat_freed')),
    -- the change that caused it: RSVP_CANCELLED or RSVP_DELETED.
    cause      text not null,
    -- seats given back: the rsvp and its guests.
    seats      integer not null check (seats >= 1),
    -- the change's time (the CloudEvent's `time`).
    changed_at timestamptz not null,
    created_at timestamptz not null default now(),
    sent_at    timestamptz
);

create index notifications_unsent_idx on notifications (created_at) where sent_at is null;
create index notifications_event_idx on notifications (event_id, changed_at);
