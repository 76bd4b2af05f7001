-- every replay an operator ran: what it selected and how many rows it republished.
-- a replay is a short-lived process without an admin port of its own, so the running
-- relay reports the sum per topic as relay_replayed_total.
create table relay_replays (
    id          bigint generated always as identity primary key,
    topic       text not null,
    selection   text not null,
    replayed    bigint not null default 0 check (replayed >= 0),
    started_at  timestamptz not null default now(),
    finished_at timestamptz
);

create index relay_replays_topic_idx on relay_replays (topic);
