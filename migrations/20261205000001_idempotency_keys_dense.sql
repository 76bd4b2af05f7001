-- a write's transaction now inserts its key's row once, whole, with the response:
-- nothing updates a live row any more, so the pages can be filled again.
alter table idempotency_keys set (fillfactor = 100);
