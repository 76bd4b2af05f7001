-- dead letters keep header names as raw bytes, like their values: kafka does not
-- promise that a header name is utf-8 without NUL, and a record whose name postgres
-- could not store as text was never set aside, so its partition retried it forever.
create function pg_temp.utf8_bytes(names text[]) returns bytea[] language sql immutable as $$
    select coalesce(array_agg(convert_to(name, 'UTF8') order by position), '{}')
    from unnest(names) with ordinality as n(name, position)
$$;

alter table consumer_dead_letters
    alter column header_names drop default,
    alter column header_names type bytea[] using pg_temp.utf8_bytes(header_names),
    alter column header_names set default '{}';

-- the record the offset was taken after: the first record of the last applied fetch
-- (a record batch's start, where tansu can fetch from) and its ce_id (or a digest of
-- a record without one). a broker that lost its log and was refilled past
-- next_offset holds something else there: the partition then starts again from the
-- earliest offset instead of skipping the new log's start. null until a batch is
-- applied, and after a reset.
alter table consumer_offsets
    add column anchor_offset bigint check (anchor_offset >= 0),
    add column anchor_fingerprint bytea,
    add constraint consumer_offsets_anchor_check check ((anchor_offset is null) = (anchor_fingerprint is null));
