//! `rsvp-relay replay`: publishes already-published rows again, in commit order,
//! byte for byte as the relay did (same key, value, headers and partition), while the
//! live relay keeps running. Consumers drop replays by `ce_id` or `rsvp_version`.

use std::{
    collections::BTreeMap,
    io::Write,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use rsvp_contract::runtime::backoff::Backoff;
use sqlx::PgPool;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::{
    batches,
    config::{ReplayArgs, Settings, FIRST_RETRY},
    error::RelayError,
    kafka::{Kafka, TopicMode},
    metric_names,
    outbox::{select_rows, OutboxRow, Position},
};

/// Which rows to replay.
#[derive(Debug, Clone, PartialEq)]
pub enum Selection {
    /// Outbox ids `from..=to` (to the end when `to` is `None`).
    Ids { from: i64, to: Option<i64> },
    /// Rows created in `since..until` (to now when `until` is `None`).
    Time { since: DateTime<Utc>, until: Option<DateTime<Utc>> },
    /// The rows of one event (Kafka key), or the one row with this CloudEvent id.
    Event(Uuid),
}

impl Selection {
    pub fn from_args(args: &ReplayArgs) -> Option<Self> {
        match (args.from_id, args.since, args.event) {
            (Some(from), None, None) => Some(Selection::Ids { from, to: args.to_id }),
            (None, Some(since), None) => Some(Selection::Time { since, until: args.until }),
            (None, None, Some(event)) => Some(Selection::Event(event)),
            _ => None,
        }
    }

    /// The selection's condition on `outbox o`, with its parameters from `$5` on.
    fn condition(&self) -> &'static str {
        match self {
            Selection::Ids { .. } => "o.id >= $5 and ($6::bigint is null or o.id <= $6)",
            Selection::Time { .. } => "o.created_at >= $5 and ($6::timestamptz is null or o.created_at < $6)",
            Selection::Event(_) => "(o.kafka_key = $5::uuid::text or o.message_id = $5::uuid)",
        }
    }

    fn bind<'q>(
        &self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        match self.clone() {
            Selection::Ids { from, to } => query.bind(from).bind(to),
            Selection::Time { since, until } => query.bind(since).bind(until),
            Selection::Event(id) => query.bind(id),
        }
    }
}

/// Only rows the relay already published: replaying a row ahead of the relay would
/// put it on the topic before rows that committed earlier. A row ahead of the cursor
/// can have a receipt only up to the cursor's last receipt ahead. Rows of an earlier
/// generation (below the cursor's since_id) are all published; positions compare
/// only inside the cursor's generation.
const PUBLISHED: &str = "(o.id < (select c.since_id from relay_cursors c where c.name = $1)
     or (o.written_on = (select c.cluster from relay_cursors c where c.name = $1)
      and ((o.xid, o.id) <= (select c.xid, c.id from relay_cursors c where c.name = $1)
     or ((o.xid, o.id) <= (select c.receipts_ahead_xid, c.receipts_ahead_id from relay_cursors c where c.name = $1)
         and exists (select 1 from relay_receipts r
                      where r.topic = $1 and (r.last_xid, r.last_id) >= (o.xid, o.id) and o.id = any(r.outbox_ids))))))";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Selected rows that were published and so are replayed (or would be, in a dry run).
    pub selected: u64,
    /// Rows published again.
    pub replayed: u64,
    /// Selected rows the relay has not published yet: left to it.
    pub not_yet_published: u64,
    pub first_id: Option<i64>,
    pub last_id: Option<i64>,
}

/// Replays `selection`, at most `rate` rows per second, calling `progress(done, total)`
/// after each batch.
#[tracing::instrument(skip_all, fields(?selection, rate, dry_run), err)]
pub async fn replay(
    pool: &PgPool,
    settings: &Settings,
    selection: &Selection,
    rate: Option<u32>,
    dry_run: bool,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<ReplayReport, RelayError> {
    let mut report = count(pool, settings, selection).await?;
    if dry_run || report.selected == 0 {
        return Ok(report);
    }
    let kafka = Kafka::connect(settings, TopicMode::CreateIfMissing(settings.partitions)).await?;
    let page_size = rate.map_or(settings.batch_rows, |r| r.clamp(1, settings.batch_rows));
    let sql = select_rows(&format!(
        "where (o.xid, o.id) > ($2::xid8, $3) and {} and {PUBLISHED} order by o.xid, o.id limit $4",
        selection.condition()
    ));
    let log_id = sqlx::query_scalar!(
        "insert into relay_replays (topic, selection) values ($1, $2) returning id",
        settings.kafka.topic,
        format!("{selection:?}"),
    )
    .fetch_one(pool)
    .await?;
    let started = Instant::now();
    let mut after = Position::default();
    loop {
        // Dynamic: the selection's condition and its parameters vary (see `Selection`).
        let query = sqlx::query(&sql)
            .bind(&settings.kafka.topic)
            .bind(after.xid_text())
            .bind(after.id)
            .bind(i64::from(page_size));
        let rows: Vec<OutboxRow> =
            selection.bind(query).fetch_all(pool).await?.iter().map(OutboxRow::from_row).collect::<Result<_, _>>()?;
        let Some(last) = rows.last() else { break };
        after = last.position;
        publish_with_retries(&kafka, &rows, settings.max_batch_bytes, settings.max_backoff).await?;
        report.replayed += rows.len() as u64;
        metrics::counter!(metric_names::REPLAYED).increment(rows.len() as u64);
        sqlx::query!("update relay_replays set replayed = replayed + $2 where id = $1", log_id, rows.len() as i64)
            .execute(pool)
            .await?;
        progress(report.replayed, report.selected);
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64(report.replayed as f64 / f64::from(rate.max(1)));
            tokio::time::sleep(due.saturating_sub(started.elapsed())).await;
        }
    }
    sqlx::query!("update relay_replays set finished_at = now() where id = $1", log_id).execute(pool).await?;
    Ok(report)
}

async fn count(pool: &PgPool, settings: &Settings, selection: &Selection) -> Result<ReplayReport, RelayError> {
    let sql = format!(
        "select count(*) filter (where {PUBLISHED}) as selected,
                count(*) filter (where not coalesce({PUBLISHED}, false)) as pending,
                min(o.id) filter (where {PUBLISHED}) as first_id,
                max(o.id) filter (where {PUBLISHED}) as last_id
           from outbox o
          where (o.written_on <> (select outbox_cluster()) or o.xid < pg_snapshot_xmin(pg_current_snapshot()))
            -- unused, so that the selection's parameters are $5 and $6 as in the page query
            and $2::text is null and $3::bigint is null and $4::bigint is null
            and {}",
        selection.condition()
    );
    // Dynamic: the selection's condition and its parameters vary (see `Selection`).
    let query = sqlx::query_as::<_, (i64, i64, Option<i64>, Option<i64>)>(&sql)
        .bind(&settings.kafka.topic)
        .bind(None::<String>)
        .bind(None::<i64>)
        .bind(None::<i64>);
    let query = match selection.clone() {
        Selection::Ids { from, to } => query.bind(from).bind(to),
        Selection::Time { since, until } => query.bind(since).bind(until),
        Selection::Event(id) => query.bind(id),
    };
    let (selected, pending, first_id, last_id) = query.fetch_one(pool).await?;
    Ok(ReplayReport { selected: selected as u64, replayed: 0, not_yet_published: pending as u64, first_id, last_id })
}

/// One batch per partition, all partitions at once; a failed page is sent again
/// whole (replays are duplicates by design, so resending is harmless).
async fn publish_with_retries(
    kafka: &Kafka,
    rows: &[OutboxRow],
    max_batch_bytes: usize,
    max_backoff: Duration,
) -> Result<(), RelayError> {
    const ATTEMPTS: u32 = 10;
    let mut backoff = Backoff::new(FIRST_RETRY, max_backoff);
    let mut attempt = 1;
    loop {
        let mut batches: BTreeMap<i32, Vec<_>> = BTreeMap::new();
        for row in rows {
            let partition = row.message.partition(kafka.partitions());
            batches.entry(partition).or_default().push(row.message.to_record());
        }
        let mut in_flight = JoinSet::new();
        for (partition, records) in batches {
            let producer = kafka.producer(partition);
            // One batch after the other within the broker's limit, so a partition's
            // records keep their order however large the page.
            let chunks = batches::chunks(records, max_batch_bytes);
            in_flight.spawn(async move {
                for chunk in chunks {
                    producer.produce(chunk).await?;
                }
                Ok::<_, RelayError>(())
            });
        }
        let mut failure = None;
        while let Some(joined) = in_flight.join_next().await {
            if let Err(error) = joined.expect("a produce task never panics") {
                failure.get_or_insert(error);
            }
        }
        match failure {
            None => return Ok(()),
            Some(error) if attempt >= ATTEMPTS => return Err(error),
            Some(error) => {
                error.record();
                let delay = backoff.next_delay();
                tracing::warn!(%error, attempt, retry_in = ?delay, "replaying a batch failed");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
        }
    }
}

/// `rsvp-relay replay`: prints progress to stderr and a summary to stdout.
pub async fn command(settings: Settings, args: ReplayArgs) -> anyhow::Result<()> {
    settings.validate()?;
    let selection =
        Selection::from_args(&args).ok_or_else(|| anyhow::anyhow!("choose one of --from-id, --since, --event"))?;
    let pool = crate::pool::connect(&settings).await?;
    rsvp_contract::runtime::database::migrate(&pool, "DATABASE_URL").await?;
    let mut last_draw = Instant::now() - Duration::from_secs(1);
    let mut progress = |done: u64, total: u64| {
        if last_draw.elapsed() >= Duration::from_millis(200) || done == total {
            last_draw = Instant::now();
            let percent = (done * 100).checked_div(total).unwrap_or(100);
            let mut stderr = std::io::stderr();
            let _ = write!(stderr, "\rreplaying: {done}/{total} rows ({percent}%)");
            let _ = stderr.flush();
        }
    };
    let report = replay(&pool, &settings, &selection, args.rate, args.dry_run, &mut progress).await?;
    if report.replayed > 0 {
        eprintln!();
    }
    let range = match (report.first_id, report.last_id) {
        (Some(first), Some(last)) => format!(" (outbox ids {first}..={last})"),
        _ => String::new(),
    };
    if args.dry_run {
        println!("dry run: would replay {} rows{range} to {}", report.selected, settings.kafka.topic);
    } else {
        println!(
            "replayed {} of {} selected rows{range} to {}",
            report.replayed, report.selected, settings.kafka.topic
        );
    }
    if report.not_yet_published > 0 {
        println!("{} selected rows are not published yet; the relay will publish them", report.not_yet_published);
    }
    Ok(())
}
