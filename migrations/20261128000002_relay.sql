-- the relay's own state: its cursor and the receipts of what it published.
-- the outbox itself stays append-only; nothing here updates it.

-- how far each relay (one per topic) has published, in commit order. the relay
-- reads rows with (xid, id) above the cursor and below the snapshot's xmin, and
-- moves the cursor only after the broker acknowledged everything up to it.
create table relay_cursors (
    name       text primary key,
    xid        xid8 not null default '0'::xid8,
    id         bigint not null default 0,
    updated_at timestamptz not null default now()
);

-- where each outbox row landed: audit reads the record back at this partition and
-- offset and compares its ce_id. written with the cursor move, in one transaction.
-- a row acknowledged in a step whose other partitions failed gets its receipt
-- before the cursor passes it, and is then skipped rather than published again.
create table relay_receipts (
    outbox_id    bigint not null references outbox (id) on delete cascade,
    topic        text not null,
    message_id   uuid not null,
    partition    integer not null check (partition >= 0),
    "offset"     bigint not null check ("offset" >= 0),
    published_at timestamptz not null default now(),
    -- outbox_id first: serves the cascade from outbox and the relay's lookups.
    primary key (outbox_id, topic)
);

create index relay_receipts_topic_partition_offset_idx on relay_receipts (topic, partition, "offset");
