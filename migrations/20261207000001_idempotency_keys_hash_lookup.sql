-- a record's lookup id is kept unique by an exclusion constraint on a hash index
-- instead of the primary key's btree. The lookup ids are uniformly random 32-byte
-- digests, so each keyed write's btree entry (48 bytes) landed on a random leaf page:
-- a descent of comparisons, page splits, and after every checkpoint a full-page image
-- of each leaf it touched. A hash index keeps a 4-byte hash code per entry in the
-- bucket the hash names. `exclude ... with =` refuses a second record with the same
-- lookup id as the primary key did, also between concurrent transactions (a keyed
-- write inserts a record only under its key's advisory lock, so none ever waits for
-- another's); the insert that breaks it fails with this constraint's name. The
-- retries' lookups (`lookup_id = $1`) use the hash index.
--
-- Builds the hash index under an ACCESS EXCLUSIVE lock: keyed and unkeyed writes
-- alike wait for one pass over the table (the README's design notes give the time
-- per million records). The new constraint is in place before the primary key goes,
-- so uniqueness never lapses.
alter table idempotency_keys
    add constraint idempotency_keys_lookup_id_unique exclude using hash (lookup_id with =);
alter table idempotency_keys drop constraint idempotency_keys_pkey;
