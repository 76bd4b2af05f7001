-- idempotency records of writes sent with an `Idempotency-Key` header. the key itself
-- is never stored: rows are found by a digest derived from it, and the response a
-- retry gets back is encrypted under another key derived from it (see the README).
create table idempotency_keys (
    -- hkdf-sha256 of the client's key and the caller's bearer credential.
    lookup_id   bytea primary key check (length(lookup_id) = 32),
    -- hmac-sha256, under a key derived from the client's key, of method, path and body:
    -- a retry with another request is refused.
    fingerprint bytea not null check (length(fingerprint) = 32),
    -- null only inside the transaction that claimed the key: that transaction sets
    -- both before it commits, in the same transaction as the write itself.
    status      smallint,
    -- nonce || chacha20-poly1305 ciphertext of the response body.
    response    bytea,
    created_at  timestamptz not null default now(),
    -- a record past this is ignored, taken over by a new request with its key, and
    -- deleted by the api's pruning task.
    expires_at  timestamptz not null
);

create index idempotency_keys_expires_at_idx on idempotency_keys (expires_at);
