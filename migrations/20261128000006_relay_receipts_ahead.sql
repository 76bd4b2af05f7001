-- receipts ahead of a relay's cursor exist only after a step whose batch was
-- acknowledged on some partitions and failed on others: the cursor stops before the
-- first failed row, the acknowledged rows after it keep their receipts and are
-- skipped when read again. the relay records the last such row here, with the
-- cursor and in the same transaction, and looks receipts up only for rows up to it.
-- during a drain the lookup on every read cost postgres about a tenth of a core.
-- null: no receipt is ahead of the cursor.
alter table relay_cursors
    add column receipts_ahead_xid xid8,
    add column receipts_ahead_id  bigint,
    add constraint relay_cursors_receipts_ahead_whole
        check ((receipts_ahead_xid is null) = (receipts_ahead_id is null));

-- receipts written ahead of the cursor before this column existed.
update relay_cursors c
   set (receipts_ahead_xid, receipts_ahead_id) = (
        select o.xid, o.id
          from relay_receipts r
          join outbox o on o.id = r.outbox_id
         where r.topic = c.name and (o.xid, o.id) > (c.xid, c.id)
         order by o.xid desc, o.id desc
         limit 1);
