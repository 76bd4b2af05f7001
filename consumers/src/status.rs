//! `rsvp-consumers status`: per group and partition, who owns it, how far the group
//! has come, how far the broker is, and the dead letters waiting, like
//! `kafka-consumer-groups --describe`.
//!
//! Read-only: it takes no lock and writes nothing, so it can run beside the consumers.

use std::{collections::BTreeMap, fmt::Write as _};

use chrono::{DateTime, Utc};
use rskafka::client::{
    error::{Error as KafkaError, ProtocolError},
    partition::UnknownTopicHandling,
    Client,
};
use serde::Serialize;
use sqlx::PgPool;

use crate::{group::Group, ownership};

/// The client id of `status`'s Kafka connection.
pub const CLIENT_ID: &str = "rsvp-consumers-status";

/// Most bytes read to find the timestamp of the oldest unapplied record: a batch is
/// returned whole anyway, and only its first record is looked at.
const PROBE_MAX_BYTES: i32 = 64 * 1024;
/// How long the broker may hold that fetch open; it has data whenever there is lag.
const PROBE_MAX_WAIT_MS: i32 = 100;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Postgres (offsets, locks, dead letters) could not be read.
    #[error("reading the group's state from Postgres")]
    Database(#[from] sqlx::Error),
    /// The broker did not answer a metadata or fetch request.
    #[error("asking the broker")]
    Kafka(#[from] KafkaError),
}

/// The session holding a partition's advisory lock.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Owner {
    /// The instance id the consumers put in the connection's `application_name`
    /// (`rsvp-consumers/<id>`); the session's application name otherwise.
    pub instance: String,
    /// The client's host name or address as Postgres sees it (`local` for a Unix socket).
    pub host: String,
    /// Backend pid of the lock-holding session.
    pub pid: i32,
    /// When the lock-holding session connected (`pg_stat_activity.backend_start`): a
    /// worker opens its connection just before taking the lock and keeps both until
    /// it gives the partition up.
    pub since: DateTime<Utc>,
}

/// One partition of one group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartitionStatus {
    pub partition: i32,
    pub owner: Option<Owner>,
    /// The next offset the group reads (`consumer_offsets.next_offset`); none before
    /// a worker first took the partition.
    pub committed_offset: Option<i64>,
    /// From a Fetch response (Tansu's ListOffsets Latest is not reliable).
    pub high_watermark: i64,
    /// Records on the broker the group has not stored as done; a partition never
    /// taken counts from offset 0.
    pub lag: i64,
    /// Age of the oldest record not yet done, in seconds; 0 without lag, none when
    /// the broker no longer has it.
    pub lag_seconds: Option<f64>,
    /// Offset of the record `lag_seconds` was taken from: the committed offset, or
    /// the first the broker returned after it.
    pub lag_measured_at: Option<i64>,
    /// Dead letters of this partition not yet redriven.
    pub dead_letters: i64,
}

/// Totals of one group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub partitions: usize,
    pub unowned: usize,
    /// Live members in `consumer_members`: their backend (pid and start time) still exists.
    pub members: i64,
    pub lag: i64,
    pub max_lag_seconds: Option<f64>,
    pub dead_letters: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupStatus {
    pub group: &'static str,
    pub topic: String,
    pub partitions: Vec<PartitionStatus>,
    pub summary: Summary,
}

/// When `status` reports a group unhealthy (exit 1).
#[derive(Debug, Clone, Copy, Default)]
pub struct Thresholds {
    pub max_lag: Option<i64>,
    pub max_lag_seconds: Option<f64>,
}

/// What a partition's lock owner is, from Postgres. Kept in one function because
/// ownership is identified here and only here; adapt it when ownership changes.
#[tracing::instrument(skip_all, fields(group = group.name()), err)]
pub async fn owners(store: &PgPool, group: Group, topic: &str) -> Result<BTreeMap<i32, Owner>, sqlx::Error> {
    // pg_advisory_lock(int4, int4) shows as classid = key1 (as an unsigned oid),
    // objid = key2, objsubid = 2.
    let class = i64::from(u32::from_ne_bytes(ownership::lock_class(group, topic).to_ne_bytes()));
    let rows = sqlx::query!(
        r#"select l.objid::bigint as "partition!",
                case when a.application_name like 'rsvp-consumers/%'
                     then substr(a.application_name, length('rsvp-consumers/') + 1)
                     else coalesce(nullif(a.application_name, ''), 'pid ' || a.pid) end as "instance!",
                coalesce(a.client_hostname, host(a.client_addr), 'local') as "host!",
                a.pid as "pid!", a.backend_start as "since!"
         from pg_locks l join pg_stat_activity a on a.pid = l.pid
         where l.locktype = 'advisory' and l.granted and l.objsubid = 2
           and l.database = (select oid from pg_database where datname = current_database())
           and l.classid::bigint = $1"#,
        class,
    )
    .fetch_all(store)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let owner = Owner { instance: row.instance, host: row.host, pid: row.pid, since: row.since };
            Some((i32::try_from(row.partition).ok()?, owner))
        })
        .collect())
}

/// Gathers `group`'s status: offsets, owners and dead letters from `store`, high
/// watermarks and record timestamps from the broker.
#[tracing::instrument(skip_all, fields(group = group.name()), err)]
pub async fn collect(store: &PgPool, kafka: &Client, group: Group, topic: &str) -> Result<GroupStatus, StatusError> {
    let offsets: BTreeMap<i32, i64> = sqlx::query!(
        "select partition, next_offset from consumer_offsets where group_name = $1 and topic = $2",
        group.name(),
        topic,
    )
    .fetch_all(store)
    .await?
    .into_iter()
    .map(|row| (row.partition, row.next_offset))
    .collect();
    let dead: BTreeMap<i32, i64> = sqlx::query!(
        r#"select partition, count(*) as "dead!" from consumer_dead_letters
         where group_name = $1 and topic = $2 and redriven_at is null group by partition"#,
        group.name(),
        topic,
    )
    .fetch_all(store)
    .await?
    .into_iter()
    .map(|row| (row.partition, row.dead))
    .collect();
    let members: i64 = sqlx::query_scalar!(
        r#"select count(*) as "members!" from consumer_members m
         where group_name = $1
           and exists (select 1 from pg_stat_activity a
                        where a.pid = m.backend_pid and a.backend_start = m.backend_start)"#,
        group.name(),
    )
    .fetch_one(store)
    .await?;
    let mut owners = owners(store, group, topic).await?;

    let topics = kafka.list_topics().await?;
    let mut ids: Vec<i32> = topics.into_iter().filter(|t| t.name == topic).flat_map(|t| t.partitions).collect();
    ids.sort_unstable();

    let mut partitions = Vec::with_capacity(ids.len());
    for partition in ids {
        let committed_offset = offsets.get(&partition).copied();
        let (high_watermark, oldest) = probe(kafka, topic, partition, committed_offset.unwrap_or(0)).await?;
        let lag = (high_watermark - committed_offset.unwrap_or(0)).max(0);
        let (lag_seconds, lag_measured_at) = match (lag, oldest) {
            (0, _) => (Some(0.0), None),
            (_, Some((offset, timestamp))) => {
                (Some((Utc::now() - timestamp).num_milliseconds().max(0) as f64 / 1000.0), Some(offset))
            }
            (_, None) => (None, None),
        };
        partitions.push(PartitionStatus {
            partition,
            owner: owners.remove(&partition),
            committed_offset,
            high_watermark,
            lag,
            lag_seconds,
            lag_measured_at,
            dead_letters: dead.get(&partition).copied().unwrap_or(0),
        });
    }
    let summary = Summary {
        partitions: partitions.len(),
        unowned: partitions.iter().filter(|p| p.owner.is_none()).count(),
        members,
        lag: partitions.iter().map(|p| p.lag).sum(),
        max_lag_seconds: partitions.iter().filter_map(|p| p.lag_seconds).reduce(f64::max),
        dead_letters: dead.values().sum(),
    };
    Ok(GroupStatus { group: group.name(), topic: topic.to_owned(), partitions, summary })
}

/// The partition's high watermark, and the offset and timestamp of the first record
/// at or after `from`. The committed offset is always a batch boundary (offsets are
/// stored only at batch ends), so Tansu returns the record at `from` itself unless
/// it is gone; then the first one after it is used.
async fn probe(
    kafka: &Client,
    topic: &str,
    partition: i32,
    from: i64,
) -> Result<(i64, Option<(i64, DateTime<Utc>)>), KafkaError> {
    let client = kafka.partition_client(topic.to_owned(), partition, UnknownTopicHandling::Error).await?;
    match client.fetch_records(from, 1..PROBE_MAX_BYTES, PROBE_MAX_WAIT_MS).await {
        Ok((records, high_watermark)) => {
            let oldest = records.iter().filter(|r| r.offset >= from).min_by_key(|r| r.offset);
            Ok((high_watermark, oldest.map(|r| (r.offset, r.record.timestamp))))
        }
        // The committed offset is no longer (or not yet) on the broker: fetch from
        // the start only for the high watermark; the age is unknown.
        Err(KafkaError::ServerError { protocol_error: ProtocolError::OffsetOutOfRange, .. }) => {
            let (records, high_watermark) = client.fetch_records(0, 1..PROBE_MAX_BYTES, PROBE_MAX_WAIT_MS).await?;
            let oldest = records.iter().min_by_key(|r| r.offset).filter(|_| from < high_watermark);
            Ok((high_watermark, oldest.map(|r| (r.offset, r.record.timestamp))))
        }
        Err(error) => Err(error),
    }
}

impl GroupStatus {
    /// Why this group is unhealthy; empty when it is healthy.
    pub fn problems(&self, thresholds: Thresholds) -> Vec<String> {
        let mut problems = Vec::new();
        if self.partitions.is_empty() {
            problems.push(format!("{}: topic {} has no partitions on the broker", self.group, self.topic));
        }
        for partition in &self.partitions {
            if partition.owner.is_none() {
                problems.push(format!("{} partition {}: no owner", self.group, partition.partition));
            }
            if let Some(max) = thresholds.max_lag.filter(|max| partition.lag > *max) {
                problems.push(format!(
                    "{} partition {}: lag {} > {max} records",
                    self.group, partition.partition, partition.lag
                ));
            }
            if let (Some(max), Some(seconds)) = (thresholds.max_lag_seconds, partition.lag_seconds) {
                if seconds > max {
                    problems
                        .push(format!("{} partition {}: lag {seconds:.1}s > {max}s", self.group, partition.partition));
                }
            }
        }
        problems
    }

    /// The table and summary line `status` prints without `--json`.
    pub fn table(&self) -> String {
        let mut out = format!("GROUP {} TOPIC {}\n", self.group, self.topic);
        let rows: Vec<[String; 9]> = std::iter::once(
            ["PARTITION", "OWNER", "HOST", "SINCE", "OFFSET", "HIGH-WATERMARK", "LAG", "LAG-SECONDS", "DEAD-LETTERS"]
                .map(str::to_owned),
        )
        .chain(self.partitions.iter().map(|p| {
            let (owner, host, since) = match &p.owner {
                Some(owner) => {
                    (owner.instance.clone(), owner.host.clone(), owner.since.format("%Y-%m-%dT%H:%M:%SZ").to_string())
                }
                None => ("-".into(), "-".into(), "-".into()),
            };
            [
                p.partition.to_string(),
                owner,
                host,
                since,
                p.committed_offset.map_or("-".into(), |o| o.to_string()),
                p.high_watermark.to_string(),
                p.lag.to_string(),
                p.lag_seconds.map_or("?".into(), |s| format!("{s:.1}")),
                p.dead_letters.to_string(),
            ]
        }))
        .collect();
        let widths: Vec<usize> = (0..9).map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0)).collect();
        for row in &rows {
            let line: Vec<String> = row.iter().zip(&widths).map(|(cell, &w)| format!("{cell:<w$}")).collect();
            let _ = writeln!(out, "{}", line.join("  ").trim_end());
        }
        let summary = &self.summary;
        let _ = writeln!(
            out,
            "{}: {} partition(s), {} unowned, {} member(s), lag {} record(s), oldest unapplied {}, {} dead letter(s) pending",
            self.group,
            summary.partitions,
            summary.unowned,
            summary.members,
            summary.lag,
            summary.max_lag_seconds.map_or("unknown".into(), |x| format!("{x:.1}s")),
            summary.dead_letters
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(partition: i32, owned: bool, lag: i64, lag_seconds: f64) -> PartitionStatus {
        PartitionStatus {
            partition,
            owner: owned.then(|| Owner { instance: "i".into(), host: "h".into(), pid: 1, since: Utc::now() }),
            committed_offset: Some(0),
            high_watermark: lag,
            lag,
            lag_seconds: Some(lag_seconds),
            lag_measured_at: None,
            dead_letters: 0,
        }
    }

    fn status(partitions: Vec<PartitionStatus>) -> GroupStatus {
        let summary = Summary { partitions: 0, unowned: 0, members: 0, lag: 0, max_lag_seconds: None, dead_letters: 0 };
        GroupStatus { group: "g", topic: "t".into(), partitions, summary }
    }

    #[test]
    fn an_unowned_partition_is_a_problem_even_without_thresholds() {
        let one_unowned = status(vec![partition(0, true, 0, 0.0), partition(1, false, 0, 0.0)]);
        assert_eq!(one_unowned.problems(Thresholds::default()), vec!["g partition 1: no owner".to_owned()]);
    }

    #[test]
    fn lag_counts_only_above_the_thresholds() {
        let lagging = status(vec![partition(0, true, 10, 3.0)]);
        assert!(lagging.problems(Thresholds { max_lag: Some(10), max_lag_seconds: Some(3.0) }).is_empty());
        assert_eq!(lagging.problems(Thresholds { max_lag: Some(9), max_lag_seconds: None }).len(), 1);
        assert_eq!(lagging.problems(Thresholds { max_lag: None, max_lag_seconds: Some(2.5) }).len(), 1);
    }

    #[test]
    fn the_table_has_a_header_a_row_per_partition_and_a_summary() {
        let table = status(vec![partition(0, true, 0, 0.0), partition(1, false, 4, 1.0)]).table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5, "{table}");
        assert!(lines[1].starts_with("PARTITION  OWNER"), "{table}");
        assert!(lines[3].starts_with("1          -"), "{table}");
    }
}
