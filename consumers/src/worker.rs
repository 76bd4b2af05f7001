//! One owned partition: fetch a batch, apply it as a unit, advance the offset to its
//! end in the same transaction as its effects.
//!
//! The offset only ever moves to the end of a fetched batch: Tansu skips the rest of a
//! record batch when a fetch starts inside it, and one commit per batch is cheaper.
//! An at-least-once group, whose effects live outside Postgres, may store it with a
//! later batch.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::Utc;
use rskafka::client::{
    error::{Error as KafkaError, ProtocolError, RequestError},
    partition::{OffsetAt, PartitionClient, UnknownTopicHandling},
};
use rskafka::record::RecordAndOffset;
use rsvp_contract::{role_lock::RoleSession, CloudEvent};
use sqlx::{postgres::PgConnectOptions, Connection, PgConnection};

use crate::{
    batch::{apply_until_done, commit_batch, Decoded},
    context::GroupContext,
    dlq,
    error::{db, WorkerError},
    group::{Delivery, Outcome},
    metric_names,
    offsets::{Anchor, OffsetKey},
    ownership, raw_fetch,
    record::{fingerprint_of, RawRecord},
};

/// What a fetch brought.
enum Fetched {
    Records {
        /// Shared with the instance's other groups when it runs several ([`crate::recent`]).
        records: Vec<Arc<RecordAndOffset>>,
        high_watermark: i64,
        /// Read from what another group of this instance fetched, not from the broker.
        shared: bool,
    },
    /// The client cannot decode the first record batch at the next offset.
    Undecodable(String),
    /// The next offset is not on the broker any more.
    OutOfRange,
}

/// The end of the size range when fetching the anchor record alone: at most one byte
/// (rskafka asks for one byte less than the range's end), so the first batch only.
const ANCHOR_FETCH_BYTES: i32 = 2;

/// How long reading an undecodable batch raw may take per broker.
const RAW_FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// How many offsets past an undecodable batch's start are tried to find its end
/// before giving up (and trying again at the next step): a batch holds fewer records.
const MAX_UNDECODABLE_PROBES: i64 = 100_000;

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// A batch was applied (or the offset was reset); there may be more.
    Processed { records: usize },
    /// Nothing new to read.
    CaughtUp,
}

/// The record that keeps failing, so that it is dead-lettered after `max_attempts`.
#[derive(Debug)]
struct Failing {
    offset: i64,
    attempts: u32,
    error: String,
}

pub struct PartitionWorker {
    ctx: Arc<GroupContext>,
    key: OffsetKey,
    /// Holds the partition's advisory lock; every offset advance goes through it.
    conn: RoleSession,
    kafka: PartitionClient,
    next_offset: i64,
    /// The offset stored in Postgres: behind `next_offset` while an at-least-once group
    /// waits to store it with a later batch.
    stored_offset: i64,
    last_stored: Instant,
    /// The high watermark of the last fetch; none until one succeeded after a reset.
    high_watermark: Option<i64>,
    failing: Option<Failing>,
    /// The record `next_offset` was taken after, to tell a log the broker lost and
    /// refilled from the one the offset belongs to; none before the first batch.
    anchor: Option<Anchor>,
    /// Whether the next fetch starts at the anchor rather than at `next_offset`, so
    /// that the one request both checks the log and brings what is new. True after a
    /// small batch, whose records then come twice; after a large one (a backlog) the
    /// anchor is checked with a fetch of its own.
    fetch_from_anchor: bool,
}

/// A batch this size or smaller (in record bytes, as the client estimates them) is
/// fetched again with the next fetch, from its anchor, to check the log: one request
/// instead of two per batch, at the price of this many bytes.
const REFETCHED_BATCH_MAX_BYTES: usize = 64 * 1024;

impl PartitionWorker {
    /// Takes the partition when no other instance holds it; a new group starts at the
    /// earliest offset the broker still has.
    #[tracing::instrument(skip_all, fields(group = ctx.group.name(), partition), err)]
    pub async fn acquire(ctx: Arc<GroupContext>, partition: i32) -> Result<Option<Self>, WorkerError> {
        let options: PgConnectOptions = ctx.store_url.parse().map_err(db)?;
        let role_loss_timeout = ctx.settings.role_loss_timeout;
        let mut conn =
            RoleSession::connect(&options, ownership::PARTITION_ROLE, role_loss_timeout).await.map_err(db)?;
        // A batch's effects and its offset commit together, so a crash of Postgres
        // that loses the last commits loses both: the records are fetched and applied
        // again, and applying twice is a no-op. Not waiting for the WAL flush also
        // ends each transaction sooner, and until it ends it holds the relay's
        // watermark back for every writer in the cluster.
        let (group, topic) = (ctx.group, &ctx.topic);
        let locked = conn
            .run(async |conn| {
                // A runtime query: Postgres cannot prepare a utility statement, which
                // the query macros need to check it.
                sqlx::query("set synchronous_commit = off").execute(&mut *conn).await?;
                ownership::try_lock(conn, group, topic, partition).await
            })
            .await?
            .map_err(db)?;
        if !locked {
            conn.close().await;
            return Ok(None);
        }
        let key = OffsetKey { group: ctx.group, topic: ctx.topic.clone(), partition };
        let kafka = ctx.kafka.partition_client(ctx.topic.clone(), partition, UnknownTopicHandling::Retry).await?;
        let (next_offset, anchor) = match conn.run(async |conn| key.load(conn).await).await?.map_err(db)? {
            Some(stored) => (stored.next_offset, stored.anchor),
            None => {
                let earliest = kafka.get_offset(OffsetAt::Earliest).await?;
                conn.run(async |conn| key.store(conn, earliest).await).await?.map_err(db)?;
                (earliest, None)
            }
        };
        tracing::info!(next_offset, "partition acquired");
        Ok(Some(Self {
            ctx,
            key,
            conn,
            kafka,
            next_offset,
            stored_offset: next_offset,
            last_stored: Instant::now(),
            high_watermark: None,
            failing: None,
            anchor,
            fetch_from_anchor: false,
        }))
    }

    pub fn partition(&self) -> i32 {
        self.key.partition
    }

    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// Whether the last fetch found nothing beyond what has been applied since.
    pub fn caught_up(&self) -> bool {
        self.high_watermark.is_some_and(|high| self.next_offset >= high)
    }

    /// The partition's session, to keep it alive while the worker waits.
    pub fn role(&mut self) -> &mut RoleSession {
        &mut self.conn
    }

    /// Gives the partition up, storing its offset first: closing the connection
    /// releases its lock at once.
    pub async fn release(mut self) {
        if let Err(error) = self.store_offset().await {
            tracing::warn!(%error, partition = self.key.partition, "storing the offset on release failed; its records are applied again");
        }
        self.conn.close().await;
        tracing::info!(group = self.ctx.group.name(), partition = self.key.partition, "partition released");
    }

    /// Fetches from the stored offset and applies what came as one batch.
    pub async fn step(&mut self) -> Result<StepOutcome, WorkerError> {
        let (mut records, high_watermark, shared) = match self.fetch().await? {
            Fetched::Records { records, high_watermark, shared } => (records, high_watermark, shared),
            Fetched::Undecodable(error) => return self.skip_undecodable(&error).await,
            Fetched::OutOfRange => return self.restart_from_earliest("offset out of range").await,
        };
        if let Some(why) = self.log_mismatch(&records, high_watermark).await? {
            return self.restart_from_earliest(why).await;
        }
        if let Some(recent) = self.ctx.recent.as_ref().filter(|_| !shared) {
            recent.remember(self.key.partition, &records, high_watermark, self.anchor.as_ref());
        }
        // A fetch from the anchor brings the last batch again: it was applied.
        records.retain(|record| record.offset >= self.next_offset);
        self.high_watermark = Some(high_watermark);
        if records.is_empty() && high_watermark > self.next_offset && self.fetch_from_anchor {
            // The size limit ended the answer within what was applied: fetch from
            // the next offset at once.
            self.fetch_from_anchor = false;
            return Ok(StepOutcome::Processed { records: 0 });
        }
        self.record_lag(high_watermark);
        if records.is_empty() {
            // Nothing new. From the next offset, a fetch that finds nothing costs the
            // broker next to nothing; one from the anchor must read and send back the
            // batch applied before. The next batch's anchor is checked on its own.
            self.fetch_from_anchor = false;
            self.store_offset().await?;
            return Ok(StepOutcome::CaughtUp);
        }
        self.process(records, high_watermark).await
    }

    /// The records after the next offset, or why there are none to apply.
    async fn fetch(&mut self) -> Result<Fetched, WorkerError> {
        if let Some(served) = self.read_recent() {
            return Ok(served);
        }
        let settings = &self.ctx.settings;
        let max_wait = i32::try_from(settings.fetch_max_wait.as_millis()).unwrap_or(i32::MAX);
        let from = match &self.anchor {
            Some(anchor) if self.fetch_from_anchor => anchor.offset,
            _ => self.next_offset,
        };
        let mut fetched = self.fetch_records(from, 1..settings.fetch_max_bytes, max_wait).await;
        if matches!(&fetched, Err(error) if undecodable(error)) {
            // Any batch of the answer may be the one the client cannot decode: fetch
            // the first alone, to tell whether it is.
            fetched = self.fetch_records(self.next_offset, 1..ANCHOR_FETCH_BYTES, 0).await;
            if let Err(error) = &fetched {
                if undecodable(error) {
                    return Ok(Fetched::Undecodable(format!("{error}")));
                }
            }
        }
        match fetched {
            Ok((records, high_watermark)) => {
                let records = records.into_iter().map(Arc::new).collect();
                Ok(Fetched::Records { records, high_watermark, shared: false })
            }
            Err(KafkaError::ServerError { protocol_error: ProtocolError::OffsetOutOfRange, .. }) => {
                Ok(Fetched::OutOfRange)
            }
            Err(error) => Err(error.into()),
        }
    }

    /// What another group of this instance fetched lately from this worker's anchor
    /// on, when that reaches past the next offset ([`crate::recent`]): the anchor's
    /// record comes with it, so the log check reads it as from a fetch at the anchor.
    fn read_recent(&self) -> Option<Fetched> {
        let (recent, anchor) = (self.ctx.recent.as_ref()?, self.anchor.as_ref()?);
        let max_bytes = usize::try_from(self.ctx.settings.fetch_max_bytes).unwrap_or(usize::MAX);
        let (records, high_watermark) = recent.read(self.key.partition, anchor, self.next_offset, max_bytes)?;
        metrics::counter!(metric_names::SHARED_FETCHES, "group" => self.ctx.group.name()).increment(1);
        Some(Fetched::Records { records, high_watermark, shared: true })
    }

    /// Why the next offset no longer belongs to the broker's log, if it does not.
    async fn log_mismatch(
        &self,
        records: &[Arc<RecordAndOffset>],
        high_watermark: i64,
    ) -> Result<Option<&'static str>, WorkerError> {
        // Tansu answers a fetch beyond its log with nothing rather than OffsetOutOfRange.
        if records.is_empty() && (0..self.next_offset).contains(&high_watermark) {
            return Ok(Some("offset beyond the log"));
        }
        // Checked after the fetch, so that a log lost before it is seen here; one lost
        // after it is seen with the next batch, whose anchor it then lacks.
        if !records.is_empty() && !self.same_log(records).await? {
            return Ok(Some("the broker holds another log than the offset was taken from"));
        }
        Ok(None)
    }

    /// [`Self::reset_to_earliest`], as a step that processed nothing.
    async fn restart_from_earliest(&mut self, why: &'static str) -> Result<StepOutcome, WorkerError> {
        self.reset_to_earliest(why).await?;
        Ok(StepOutcome::Processed { records: 0 })
    }

    /// Applies a fetched batch (not empty) and moves the offset to its end.
    async fn process(
        &mut self,
        records: Vec<Arc<RecordAndOffset>>,
        high_watermark: i64,
    ) -> Result<StepOutcome, WorkerError> {
        let started = Instant::now();
        let to = records.last().expect("a batch is not empty").offset + 1;
        let bytes: usize = records.iter().map(|r| r.record.approximate_size()).sum();
        let batch = self.decode_batch(records);
        let anchor = Anchor { offset: batch[0].raw.offset, fingerprint: batch[0].raw.fingerprint() };
        let mut labels = self.apply_at_least_once(&batch).await?;
        labels.extend(self.commit_unless_deferred(&batch, to, &anchor).await?);
        self.next_offset = to;
        self.anchor = Some(anchor);
        self.fetch_from_anchor = bytes <= REFETCHED_BATCH_MAX_BYTES;
        self.failing = None;
        self.record_batch(&batch, labels, started);
        self.record_lag(high_watermark);
        Ok(StepOutcome::Processed { records: batch.len() })
    }

    /// Applies an at-least-once group's effects, which must happen before its offset
    /// is stored; nothing for an exactly-once group, whose effects commit with it.
    async fn apply_at_least_once(&mut self, batch: &[Decoded]) -> Result<Vec<&'static str>, WorkerError> {
        let consumer = self.ctx.consumer.clone();
        if consumer.delivery() == Delivery::ExactlyOnce {
            return Ok(Vec::new());
        }
        // After a pause longer than the role-loss timeout, another instance
        // owns the partition: find out before applying for it.
        self.conn.ensure_held().await?;
        let applied = self.conn.keep_alive_while(apply_until_done(&*consumer, batch, &self.ctx)).await?;
        Ok(applied.into_iter().map(Outcome::label).collect())
    }

    /// Stores the offset `to` in one transaction with the batch's dead letters and an
    /// exactly-once group's effects. An at-least-once group's offset waits up to its
    /// commit interval to be stored with a later batch, unless this one has dead letters.
    async fn commit_unless_deferred(
        &mut self,
        batch: &[Decoded],
        to: i64,
        anchor: &Anchor,
    ) -> Result<Vec<&'static str>, WorkerError> {
        let consumer = self.ctx.consumer.clone();
        let exactly_once = consumer.delivery() == Delivery::ExactlyOnce;
        let defer = !exactly_once
            && batch.iter().all(|d| d.event.is_ok())
            && self.last_stored.elapsed() < self.ctx.settings.commit_interval;
        if defer {
            return Ok(Vec::new());
        }
        let (key, from) = (&self.key, self.stored_offset);
        let in_tx = exactly_once.then_some(&*consumer);
        let committing =
            async |conn: &mut PgConnection| commit_batch(conn, key, batch, (from, to), anchor, in_tx).await;
        let result = self.conn.run(committing).await?;
        match &result {
            Err(WorkerError::Record { offset, source }) => self.note_failure(*offset, source),
            Err(WorkerError::Transient(_) | WorkerError::Connection(_) | WorkerError::Dependency(_)) => {
                metrics::counter!(metric_names::TRANSIENT_ERRORS, "group" => self.ctx.group.name()).increment(1);
            }
            _ => {}
        }
        let labels = result?;
        (self.stored_offset, self.last_stored) = (to, Instant::now());
        Ok(labels)
    }

    /// Counts the batch's records by result, their age and the batch's duration.
    fn record_batch(&self, batch: &[Decoded], labels: Vec<&'static str>, started: Instant) {
        let group = self.ctx.group.name();
        for label in labels {
            metrics::counter!(metric_names::PROCESSED, "group" => group, "result" => label).increment(1);
        }
        let now = Utc::now();
        for event in batch.iter().filter_map(|d| d.event.as_ref().ok()) {
            let age = (now - event.time).to_std().unwrap_or_default();
            metrics::histogram!(metric_names::EVENT_AGE, "group" => group).record(age.as_secs_f64());
        }
        metrics::histogram!(metric_names::BATCH_DURATION, "group" => group).record(started.elapsed().as_secs_f64());
    }

    /// Decodes a fetched batch, taking the events another group of the instance
    /// decoded from the same records and keeping for the others those it decodes.
    fn decode_batch(&self, records: Vec<Arc<RecordAndOffset>>) -> Vec<Decoded> {
        let Some(shared) = self.ctx.decoded.as_ref() else {
            return records.into_iter().map(|record| self.decode(RawRecord::from(record), None)).collect();
        };
        let found = shared.find(self.key.partition, &records);
        let mut decoded_here = Vec::new();
        let batch = records
            .into_iter()
            .zip(found)
            .map(|(record, found)| {
                let was_found = found.is_some();
                let decoded = self.decode(RawRecord::from(record.clone()), found);
                if let (false, Ok(event)) = (was_found, &decoded.event) {
                    decoded_here.push((record, event.clone()));
                }
                decoded
            })
            .collect();
        shared.keep(self.key.partition, decoded_here);
        batch
    }

    /// The record's event: `found` (decoded by another group from the same bytes),
    /// else decoded here; dead once it failed `MAX_ATTEMPTS` times.
    fn decode(&self, raw: RawRecord, found: Option<Arc<CloudEvent>>) -> Decoded {
        let exhausted =
            self.failing.as_ref().filter(|f| f.offset == raw.offset && f.attempts >= self.ctx.settings.max_attempts);
        let event = match (exhausted, found) {
            (Some(failing), _) => {
                Err((format!("failed {} times: {}", failing.attempts, failing.error), failing.attempts))
            }
            (None, Some(event)) => Ok(event),
            (None, None) => raw.decode().map(Arc::new).map_err(|e| (e.to_string(), 1)),
        };
        Decoded { raw, event }
    }

    fn note_failure(&mut self, offset: i64, error: &sqlx::Error) {
        let attempts = match &self.failing {
            Some(failing) if failing.offset == offset => failing.attempts + 1,
            _ => 1,
        };
        tracing::warn!(offset, attempts, %error, "applying a record failed");
        self.failing = Some(Failing { offset, attempts, error: error.to_string() });
    }

    /// One fetch request, counted and timed by its result.
    async fn fetch_records(
        &self,
        offset: i64,
        bytes: std::ops::Range<i32>,
        max_wait_ms: i32,
    ) -> Result<(Vec<RecordAndOffset>, i64), KafkaError> {
        let started = Instant::now();
        let fetched = self.kafka.fetch_records(offset, bytes, max_wait_ms).await;
        let result = match &fetched {
            Ok((records, _)) if records.is_empty() => "empty",
            Ok(_) => "records",
            Err(_) => "error",
        };
        let group = self.ctx.group.name();
        metrics::counter!(metric_names::FETCHES, "group" => group, "result" => result).increment(1);
        metrics::histogram!(metric_names::FETCH_DURATION, "group" => group, "result" => result)
            .record(started.elapsed());
        fetched
    }

    fn record_lag(&self, high_watermark: i64) {
        let lag = (high_watermark - self.next_offset).max(0);
        metrics::gauge!(metric_names::LAG, "group" => self.ctx.group.name(), "partition" => self.key.partition.to_string())
            .set(lag as f64);
    }

    /// Stores the offset of the batches applied since it was last stored.
    async fn store_offset(&mut self) -> Result<(), WorkerError> {
        if self.stored_offset == self.next_offset {
            return Ok(());
        }
        let (key, from, to, anchor) = (&self.key, self.stored_offset, self.next_offset, self.anchor.as_ref());
        self.conn.run(async |conn| advance(conn, key, from, to, anchor).await).await??;
        (self.stored_offset, self.last_stored) = (self.next_offset, Instant::now());
        Ok(())
    }

    /// Whether the broker still holds the log the offset was taken from: the anchor
    /// record is still at its offset. A broker that lost its log and was refilled past
    /// the offset would otherwise have its new log's start skipped without a trace.
    async fn same_log(&self, fetched: &[Arc<RecordAndOffset>]) -> Result<bool, WorkerError> {
        let Some(anchor) = &self.anchor else { return Ok(true) };
        let matches = |record: &RecordAndOffset| {
            record.offset == anchor.offset && fingerprint_of(&record.record) == anchor.fingerprint
        };
        if let Some(record) = fetched.iter().find(|r| r.offset == anchor.offset) {
            return Ok(matches(record));
        }
        // From the anchor, which starts a record batch: Tansu skips the rest of a
        // batch when a fetch starts inside it. The smallest size brings the first
        // batch alone; should a broker bring nothing that small, the usual size.
        for max_bytes in [ANCHOR_FETCH_BYTES, self.ctx.settings.fetch_max_bytes] {
            let (records, high_watermark) = match self.fetch_records(anchor.offset, 1..max_bytes, 0).await {
                Ok(fetched) => fetched,
                Err(KafkaError::ServerError { protocol_error: ProtocolError::OffsetOutOfRange, .. }) => {
                    return Ok(false)
                }
                Err(error) => return Err(error.into()),
            };
            if let Some(first) = records.first() {
                return Ok(matches(first));
            }
            if high_watermark <= anchor.offset {
                return Ok(false);
            }
        }
        Ok(false)
    }

    /// Sets aside the record batch at `next_offset`, which the client cannot decode
    /// (rskafka fails the whole fetch when, say, a header name is not UTF-8), so that
    /// its partition moves on instead of retrying it for ever.
    ///
    /// The batch is fetched again as bytes ([`raw_fetch`]) and each of its records is
    /// dead-lettered raw. When that fails too (a compressed batch, a broker that does
    /// not lead the partition), see [`PartitionWorker::skip_unread`].
    async fn skip_undecodable(&mut self, error: &str) -> Result<StepOutcome, WorkerError> {
        let from = self.next_offset;
        let (topic, partition) = (self.ctx.topic.clone(), self.key.partition);
        let mut raw = None;
        for broker in &self.ctx.brokers {
            match raw_fetch::fetch_batch(broker, &topic, partition, from, RAW_FETCH_TIMEOUT).await {
                Ok(Some((records, end))) if end > from => {
                    raw = Some((records, end));
                    break;
                }
                Ok(_) => tracing::warn!(broker, from, "the raw fetch found no batch"),
                Err(error) => tracing::warn!(broker, from, %error, "the raw fetch failed"),
            }
        }
        let Some((records, end)) = raw else { return self.skip_unread(error).await };
        let why = format!("the client cannot decode this record's batch, so it was read raw: {error}");
        let dead = records.len();
        self.dead_letter_and_advance(&records, &why, end).await?;
        Ok(StepOutcome::Processed { records: dead })
    }

    /// [`PartitionWorker::skip_undecodable`] without the batch's bytes: one
    /// placeholder dead letter at the batch's first offset, with no key, value or
    /// headers, and an error naming the offsets skipped and the decoder's complaint.
    /// Where the batch ends is found by fetching single batches from the next offsets
    /// on: the first that decodes starts after it (Tansu answers a fetch inside a
    /// batch from the next batch, Kafka with the whole batch, which fails again until
    /// the offset is past it), so the offset only ever moves to a batch's end.
    async fn skip_unread(&mut self, error: &str) -> Result<StepOutcome, WorkerError> {
        let from = self.next_offset;
        let mut probe = from + 1;
        let end = loop {
            match self.fetch_records(probe, 1..ANCHOR_FETCH_BYTES, 0).await {
                Ok((records, high_watermark)) => break records.first().map_or(high_watermark, |r| r.offset).max(probe),
                Err(error) if undecodable(&error) && probe - from < MAX_UNDECODABLE_PROBES => probe += 1,
                Err(error) => return Err(error.into()),
            }
        };
        let placeholder = RawRecord::from_bytes(from, None, None, Vec::new());
        let why = format!(
            "the records at offsets {from}..={} could not be decoded and were skipped unread \
             (the client fails the whole batch, and reading it raw failed): {error}",
            end - 1
        );
        self.dead_letter_and_advance(&[placeholder], &why, end).await?;
        Ok(StepOutcome::Processed { records: 1 })
    }

    /// Dead-letters `records` and moves the offset to `end`, in one transaction.
    async fn dead_letter_and_advance(&mut self, records: &[RawRecord], why: &str, end: i64) -> Result<(), WorkerError> {
        let (key, stored, anchor) = (&self.key, self.stored_offset, self.anchor.as_ref());
        self.conn
            .run(async |conn| {
                let mut tx = conn.begin().await.map_err(db)?;
                for record in records {
                    dlq::insert(&mut tx, key, record, why, 1).await.map_err(db)?;
                }
                key.advance_after(&mut tx, stored, end, anchor).await?;
                tx.commit().await.map_err(db)
            })
            .await??;
        let dead = u64::try_from(records.len()).unwrap_or_default();
        metrics::counter!(metric_names::PROCESSED, "group" => self.ctx.group.name(), "result" => "dead_letter")
            .increment(dead);
        (self.next_offset, self.stored_offset, self.last_stored) = (end, end, Instant::now());
        // The batches set aside lie between the anchor and the end: fetch after them.
        self.fetch_from_anchor = false;
        self.failing = None;
        Ok(())
    }

    /// The stored offset is not on the broker (retention, or a broker that lost its
    /// data): start again from the earliest record it has.
    async fn reset_to_earliest(&mut self, why: &'static str) -> Result<(), WorkerError> {
        if let Some(recent) = &self.ctx.recent {
            recent.forget(self.key.partition);
        }
        let earliest = self.kafka.get_offset(OffsetAt::Earliest).await?;
        let (key, from) = (&self.key, self.stored_offset);
        self.conn.run(async |conn| advance(conn, key, from, earliest, None).await).await??;
        tracing::warn!(
            group = self.ctx.group.name(),
            partition = self.key.partition,
            from = self.next_offset,
            to = earliest,
            why,
            "restarting from the earliest offset"
        );
        metrics::counter!(metric_names::OFFSET_RESETS, "group" => self.ctx.group.name()).increment(1);
        (self.next_offset, self.stored_offset) = (earliest, earliest);
        self.high_watermark = None;
        self.anchor = None;
        self.fetch_from_anchor = false;
        Ok(())
    }
}

/// Whether the broker answered but the client could not decode the answer: retrying
/// the same fetch fails the same way.
fn undecodable(error: &KafkaError) -> bool {
    matches!(error, KafkaError::Request(RequestError::ReadError(_) | RequestError::ReadVersionedError(_)))
}

/// Moves the offset from `from` to `to`, taken after `anchor`, in a transaction of its own.
async fn advance(
    conn: &mut PgConnection,
    key: &OffsetKey,
    from: i64,
    to: i64,
    anchor: Option<&Anchor>,
) -> Result<(), WorkerError> {
    let mut tx = conn.begin().await.map_err(db)?;
    key.advance_after(&mut tx, from, to, anchor).await?;
    tx.commit().await.map_err(db)
}
