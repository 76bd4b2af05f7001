//! One fetched batch, decoded: applying an at-least-once group's effects until its
//! dependency answers, and committing the batch (dead letters, an exactly-once
//! group's effects and the offset) in one transaction.

use std::sync::Arc;

use rsvp_contract::CloudEvent;
use sqlx::{Connection, PgConnection};

use crate::{
    context::GroupContext,
    dlq,
    error::{db, WorkerError},
    fault::{self, Fault},
    group::{ApplyError, Consumer, Outcome},
    metric_names,
    offsets::{Anchor, OffsetKey},
    record::RawRecord,
};

/// A fetched record and its event (shared with the instance's other groups, see
/// [`crate::decoded`]), or why it is dead (with the attempts it took).
pub(crate) struct Decoded {
    pub(crate) raw: RawRecord,
    pub(crate) event: Result<Arc<CloudEvent>, (String, u32)>,
}

/// Applies the decoded events of an at-least-once group's batch, retrying while its
/// dependency fails: the offset must not pass an effect that did not happen.
pub(crate) async fn apply_until_done(consumer: &dyn Consumer, batch: &[Decoded], ctx: &GroupContext) -> Vec<Outcome> {
    let events: Vec<&CloudEvent> = batch.iter().filter_map(|d| d.event.as_deref().ok()).collect();
    if events.is_empty() {
        return Vec::new();
    }
    let mut backoff = ctx.settings.backoff.clone();
    loop {
        let error = match consumer.apply(None, &events).await {
            Ok(outcomes) => return outcomes,
            Err(error) => error,
        };
        let dependency = match &error {
            ApplyError::Dependency { dependency, .. } => *dependency,
            ApplyError::Postgres(_) => "postgres",
        };
        metrics::counter!(metric_names::RETRIES, "group" => ctx.group.name(), "dependency" => dependency).increment(1);
        let delay = backoff.next_delay();
        tracing::warn!(
            error = format!("{:#}", anyhow::Error::new(error)),
            ?delay,
            "applying the batch failed; retrying"
        );
        tokio::time::sleep(delay).await;
    }
}

/// One transaction: the dead letters, the effects of an exactly-once group (`in_tx`)
/// and the offset advance `from`..`to`. Returns the `result` label of each record
/// it handled (an at-least-once group's were applied before).
///
/// The effects of the whole batch are applied at once; when Postgres rejects that,
/// the batch is applied again one record at a time, to tell which record it rejects
/// so that its attempts count towards dead-lettering it.
pub(crate) async fn commit_batch(
    conn: &mut PgConnection,
    key: &OffsetKey,
    batch: &[Decoded],
    range: (i64, i64),
    anchor: &Anchor,
    in_tx: Option<&dyn Consumer>,
) -> Result<Vec<&'static str>, WorkerError> {
    match commit_batch_in_chunks(conn, key, batch, range, anchor, in_tx, batch.len()).await {
        Err(WorkerError::Record { .. }) if batch.len() > 1 => {
            commit_batch_in_chunks(conn, key, batch, range, anchor, in_tx, 1).await
        }
        result => result,
    }
}

/// [`commit_batch`], applying the effects `chunk` records at a time.
async fn commit_batch_in_chunks(
    conn: &mut PgConnection,
    key: &OffsetKey,
    batch: &[Decoded],
    (from, to): (i64, i64),
    anchor: &Anchor,
    in_tx: Option<&dyn Consumer>,
    chunk: usize,
) -> Result<Vec<&'static str>, WorkerError> {
    let mut labels = Vec::with_capacity(batch.len());
    let mut tx = conn.begin().await.map_err(db)?;
    let mut events = Vec::with_capacity(batch.len());
    for decoded in batch {
        match &decoded.event {
            Err((error, attempts)) => {
                dlq::insert(&mut tx, key, &decoded.raw, error, *attempts).await.map_err(db)?;
                labels.push("dead_letter");
            }
            Ok(event) => events.push((decoded.raw.offset, &**event)),
        }
    }
    let Some(consumer) = in_tx else {
        key.advance_after(&mut tx, from, to, Some(anchor)).await?;
        tx.commit().await.map_err(db)?;
        return Ok(labels);
    };
    for chunk in events.chunks(chunk.max(1)) {
        let chunk_events: Vec<&CloudEvent> = chunk.iter().map(|(_, event)| *event).collect();
        match consumer.apply(Some(&mut *tx), &chunk_events).await {
            Ok(applied) => labels.extend(applied.into_iter().map(Outcome::label)),
            Err(ApplyError::Dependency { dependency, source }) => {
                let _ = tx.rollback().await;
                tracing::warn!(dependency, %source, "a dependency of the group's effect failed");
                return Err(WorkerError::Dependency(dependency));
            }
            Err(ApplyError::Postgres(source)) => {
                // Roll back now rather than on the next use of the connection: an
                // open transaction holds back the relay's xmin watermark cluster-wide.
                let _ = tx.rollback().await;
                return Err(match fault::classify(&source) {
                    Fault::Record => WorkerError::Record { offset: chunk[0].0, source },
                    Fault::Transient => WorkerError::Transient(source),
                    Fault::ConnectionLost => db(source),
                });
            }
        }
    }
    key.advance_after(&mut tx, from, to, Some(anchor)).await?;
    tx.commit().await.map_err(db)?;
    Ok(labels)
}
