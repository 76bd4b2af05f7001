-- a write's transaction inserts its key's row (the claim) and then fills in the
-- response: room left in each page lets that update stay on the row's page (a HOT
-- update), so it adds no entry to either index.
alter table idempotency_keys set (fillfactor = 50);
