-- receipts are written for every published row, so their cost bounds the relay's
-- drain rate. measured on 1000-row inserts: the foreign key's per-row check (which
-- also locks each outbox row, dirtying its page) and the unused (topic, partition,
-- offset) index took about two thirds of the time. the relay only ever writes
-- receipts for rows it has just read, and pruning now deletes a row's receipts in
-- the same statement as the row, so neither earns its cost.
alter table relay_receipts drop constraint relay_receipts_outbox_id_fkey;
drop index relay_receipts_topic_partition_offset_idx;
