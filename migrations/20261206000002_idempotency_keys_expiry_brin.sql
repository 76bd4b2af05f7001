-- expired idempotency records are found by a BRIN index on expires_at instead of a
-- btree. Records are inserted in about the order they expire (now() plus one ttl), so
-- each range of pages holds a narrow span of expiry times and the pruning task's
-- `expires_at <= now()` still reads only the ranges that can hold expired rows. A
-- btree took an entry per keyed write, in the write's transaction; a BRIN index
-- changes only when a row falls outside its range's summary. autosummarize has
-- autovacuum summarize each range once it fills, so the unsummarized tail that every
-- scan reads stays short.
--
-- Builds under a SHARE lock (writes wait for one pass over the table: 0.25 s for a
-- million records, measured), then drops the btree.
create index idempotency_keys_expires_at_brin on idempotency_keys
    using brin (expires_at) with (autosummarize = on);
drop index idempotency_keys_expires_at_idx;
