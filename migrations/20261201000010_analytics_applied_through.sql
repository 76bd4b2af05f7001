-- applied_events stops growing without bound: a change's (rsvp_id, version) names it
-- as well as its ce_id (the api writes exactly one change per version, versions
-- 1, 2, 3, … without gaps), so once every version of an rsvp up to n was applied,
-- those versions' ce_ids need no row of their own. the pruner moves
-- `applied_through` up to the end of the run of applied versions and deletes the
-- rows it covers; applying treats a version at or below it as a duplicate.
--
-- rows applied before this migration have no version and are never pruned.
alter table analytics.applied_events add column version bigint check (version >= 1);

-- every version of this rsvp up to this one was applied (0: none known to be).
alter table analytics.rsvp_state add column applied_through bigint not null default 0 check (applied_through >= 0);

-- the pruner reads an rsvp's applied versions in order.
create index applied_events_rsvp_version_idx on analytics.applied_events (rsvp_id, version);
