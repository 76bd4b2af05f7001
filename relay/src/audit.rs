//! `rsvp-relay audit`: every committed row in range has a receipt, and the Kafka
//! record at that partition and offset carries the row's `ce_id`.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use chrono::{DateTime, Utc};
use rskafka::client::error::{Error as KafkaError, ProtocolError};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    config::{AuditArgs, Settings},
    error::RelayError,
    kafka::{Kafka, TopicMode},
};

/// A row whose record is not where its receipt says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub outbox_id: i64,
    pub message_id: Uuid,
    pub partition: i32,
    pub offset: i64,
    /// The `ce_id` found at that offset, if any record was there.
    pub found: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditReport {
    /// Committed rows in range.
    pub rows: u64,
    /// Rows whose record is on the topic where the receipt says.
    pub verified: u64,
    /// Rows ahead of the relay, younger than the grace period.
    pub pending: u64,
    /// Published (behind the cursor) or overdue rows without a receipt.
    pub missing_receipts: Vec<i64>,
    /// Receipts pointing at an offset the broker does not have.
    pub missing_records: Vec<Finding>,
    /// Receipts pointing at a record with another `ce_id`.
    pub wrong_records: Vec<Finding>,
}

impl AuditReport {
    pub fn is_clean(&self) -> bool {
        self.missing_receipts.is_empty() && self.missing_records.is_empty() && self.wrong_records.is_empty()
    }

    /// A few lines for an operator: the counts, then up to ten examples of each problem.
    pub fn summary(&self, topic: &str) -> String {
        let mut out = format!(
            "audit of {topic}: {} rows, {} verified, {} pending, {} missing receipts, {} missing records, {} wrong records: {}\n",
            self.rows,
            self.verified,
            self.pending,
            self.missing_receipts.len(),
            self.missing_records.len(),
            self.wrong_records.len(),
            if self.is_clean() { "OK" } else { "MISMATCH" }
        );
        for id in self.missing_receipts.iter().take(10) {
            out.push_str(&format!("  no receipt: outbox id {id}\n"));
        }
        for (label, findings) in [("missing record", &self.missing_records), ("wrong record", &self.wrong_records)] {
            for finding in findings.iter().take(10) {
                out.push_str(&format!(
                    "  {label}: outbox id {} ce_id {} at {}/{}: found {}\n",
                    finding.outbox_id,
                    finding.message_id,
                    finding.partition,
                    finding.offset,
                    finding.found.as_deref().unwrap_or("nothing")
                ));
            }
        }
        out
    }
}

struct Expected {
    outbox_id: i64,
    message_id: Uuid,
}

/// Audits rows created at or after `since` (all rows when `None`).
#[tracing::instrument(skip_all, fields(topic = %settings.kafka.topic), err)]
pub async fn audit(
    pool: &PgPool,
    settings: &Settings,
    since: Option<DateTime<Utc>>,
    pending_grace: Duration,
) -> Result<AuditReport, RelayError> {
    let overdue = Utc::now() - chrono::Duration::from_std(pending_grace).unwrap_or(chrono::Duration::MAX);
    // Behind the cursor: every row of an earlier generation (below its since_id), and
    // rows of its own generation up to its position. Rows written on another cluster
    // are all committed; their xids say nothing about this cluster's snapshot.
    let rows = sqlx::query!(
        r#"select o.id, o.message_id, o.created_at,
                  coalesce(o.id < c.since_id or (o.written_on = c.cluster and (o.xid, o.id) <= (c.xid, c.id)), false)
                    as "behind_cursor!",
                  r.partition as "partition?", r."offset" as "offset?"
             from outbox o
             left join relay_cursors c on c.name = $1
             left join (select distinct on (outbox_id) outbox_id, partition, "offset"
                          from relay_row_receipts where topic = $1
                         order by outbox_id, receipt_id) r on r.outbox_id = o.id
            where (o.written_on <> (select outbox_cluster()) or o.xid < pg_snapshot_xmin(pg_current_snapshot()))
              and ($2::timestamptz is null or o.created_at >= $2)
            order by o.id"#,
        settings.kafka.topic,
        since,
    )
    .fetch_all(pool)
    .await?;

    let mut report = AuditReport { rows: rows.len() as u64, ..AuditReport::default() };
    let mut expected: BTreeMap<i32, BTreeMap<i64, Expected>> = BTreeMap::new();
    for row in rows {
        match (row.partition, row.offset) {
            (Some(partition), Some(offset)) => {
                expected
                    .entry(partition)
                    .or_default()
                    .insert(offset, Expected { outbox_id: row.id, message_id: row.message_id });
            }
            _ if row.behind_cursor || row.created_at < overdue => report.missing_receipts.push(row.id),
            _ => report.pending += 1,
        }
    }
    if expected.is_empty() {
        return Ok(report);
    }

    let kafka = match Kafka::connect(settings, TopicMode::MustExist).await {
        Ok(kafka) => Some(kafka),
        Err(RelayError::TopicMissing(_)) => None,
        Err(error) => return Err(error),
    };
    for (partition, wanted) in expected {
        let found = match &kafka {
            Some(kafka) if partition < kafka.partitions() => ce_ids_at(kafka, partition, &wanted).await?,
            _ => HashMap::new(),
        };
        for (offset, row) in wanted {
            let found = found.get(&offset).cloned().flatten();
            let finding =
                |found| Finding { outbox_id: row.outbox_id, message_id: row.message_id, partition, offset, found };
            match found {
                Some(ce_id) if ce_id == row.message_id.to_string() => report.verified += 1,
                Some(other) => report.wrong_records.push(finding(Some(other))),
                None => report.missing_records.push(finding(None)),
            }
        }
    }
    Ok(report)
}

/// The `ce_id` of the record at each wanted offset that the broker still has.
///
/// Scans from the lowest wanted offset; a broker that returns nothing for a fetch
/// starting inside a record batch (Tansu does) leaves gaps, so the scan is repeated
/// from the earliest offset, a batch start, when anything was not found.
async fn ce_ids_at(
    kafka: &Kafka,
    partition: i32,
    wanted: &BTreeMap<i64, Expected>,
) -> Result<HashMap<i64, Option<String>>, RelayError> {
    let (Some(&first), Some(&last)) = (wanted.keys().next(), wanted.keys().next_back()) else {
        return Ok(HashMap::new());
    };
    let mut found = HashMap::new();
    scan(kafka, partition, first, last, wanted, &mut found).await?;
    if found.len() < wanted.len() {
        let earliest = kafka.earliest_offset(partition).await?;
        if earliest < first {
            scan(kafka, partition, earliest, last, wanted, &mut found).await?;
        }
    }
    Ok(found)
}

async fn scan(
    kafka: &Kafka,
    partition: i32,
    from: i64,
    to: i64,
    wanted: &BTreeMap<i64, Expected>,
    found: &mut HashMap<i64, Option<String>>,
) -> Result<(), RelayError> {
    let mut offset = from;
    while offset <= to {
        let (records, high_watermark) = match kafka.fetch(partition, offset).await {
            Ok(fetched) => fetched,
            // Past the end (the broker lost records) or before the start (deleted).
            Err(RelayError::Kafka {
                source: KafkaError::ServerError { protocol_error: ProtocolError::OffsetOutOfRange, .. },
                ..
            }) => return Ok(()),
            Err(error) => return Err(error),
        };
        let Some(last) = records.last().map(|r| r.offset) else { return Ok(()) };
        for fetched in records {
            if wanted.contains_key(&fetched.offset) {
                let ce_id = fetched
                    .record
                    .headers
                    .get(rsvp_contract::headers::CE_ID)
                    .map_or_else(|| "<no ce_id header>".to_owned(), |v| String::from_utf8_lossy(v).into_owned());
                found.insert(fetched.offset, Some(ce_id));
            }
        }
        offset = last + 1;
        if offset >= high_watermark {
            return Ok(());
        }
    }
    Ok(())
}

/// `rsvp-relay audit`: prints the summary; `Ok(false)` when anything is missing or wrong.
pub async fn command(settings: Settings, args: AuditArgs) -> anyhow::Result<bool> {
    settings.validate()?;
    let pool = crate::pool::connect(&settings).await?;
    rsvp_contract::runtime::database::migrate(&pool, "DATABASE_URL").await?;
    let report = audit(&pool, &settings, args.since, args.pending_grace).await?;
    print!("{}", report.summary(&settings.kafka.topic));
    Ok(report.is_clean())
}
