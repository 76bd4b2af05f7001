-- one receipt per produced batch instead of one per row. the broker gives a batch's
-- records consecutive offsets, so the batch's outbox ids in offset order and its
-- first offset say where each row landed. a drain wrote a receipt tuple and its
-- index entry per published row, which on a machine with slow writeback bounded the
-- drain; now it writes one tuple per partition per step.
alter table relay_receipts rename to relay_row_receipts_old;
alter table relay_row_receipts_old rename constraint relay_receipts_pkey to relay_row_receipts_old_pkey;

create table relay_receipts (
    id           bigint generated always as identity primary key,
    topic        text not null,
    partition    integer not null check (partition >= 0),
    -- the offset of outbox_ids[1]; outbox_ids[i] is at base_offset + i - 1.
    base_offset  bigint not null check (base_offset >= 0),
    outbox_ids   bigint[] not null check (cardinality(outbox_ids) > 0),
    -- the batch's last row in commit order (rows of a batch are in commit order):
    -- every row of the batch is at or before it, which is what pruning and the
    -- lookups of receipts ahead of the cursor need.
    last_xid     xid8 not null,
    last_id      bigint not null,
    published_at timestamptz not null default now()
);

-- receipts ending after a position: the relay's lookup of receipts ahead of its
-- cursor, and replay's check of rows ahead of the cursor.
create index relay_receipts_topic_last_idx on relay_receipts (topic, last_xid, last_id);
-- pruning: the oldest receipts first, with their rows.
create index relay_receipts_topic_published_at_idx on relay_receipts (topic, published_at);

-- a receipt per row before this migration becomes a receipt of a batch of one.
insert into relay_receipts (topic, partition, base_offset, outbox_ids, last_xid, last_id, published_at)
select r.topic, r.partition, r."offset", array[r.outbox_id], o.xid, o.id, r.published_at
  from relay_row_receipts_old r
  join outbox o on o.id = r.outbox_id
 order by r.published_at, o.xid, o.id;

drop table relay_row_receipts_old;

-- where each row landed, one line per row and receipt, for audit, tests and
-- benchmarks. a row published again after its cursor was moved back has a line
-- per receipt; the first one counts.
create view relay_row_receipts as
select u.outbox_id, r.topic, r.partition, r.base_offset + u.ordinality - 1 as "offset", r.published_at,
       r.id as receipt_id
  from relay_receipts r
 cross join lateral unnest(r.outbox_ids) with ordinality as u(outbox_id, ordinality);
