//! The dead-letter table: records a group could not apply, kept raw, and redriven by
//! an operator at most once each.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use crate::{
    group::{Consumer, Delivery, Group},
    metric_names,
    offsets::OffsetKey,
    record::{printable, RawRecord},
};

/// Stores `record` as dead, inside the caller's transaction that also moves the
/// offset past it.
#[tracing::instrument(skip_all, fields(group = key.group.name(), partition = key.partition, offset = record.offset), err)]
pub async fn insert(
    conn: &mut PgConnection,
    key: &OffsetKey,
    record: &RawRecord,
    error: &str,
    attempts: u32,
) -> Result<(), sqlx::Error> {
    let (names, values): (Vec<&[u8]>, Vec<&[u8]>) = record.headers().into_iter().unzip();
    sqlx::query!(
        "insert into consumer_dead_letters
            (group_name, topic, partition, kafka_offset, record_key, record_value, header_names, header_values, error, attempts)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        key.group.name(),
        key.topic,
        key.partition,
        record.offset,
        record.key(),
        record.value(),
        &names as &[&[u8]],
        &values as &[&[u8]],
        &storable(error) as &str,
        i32::try_from(attempts).unwrap_or(i32::MAX),
    )
    .execute(conn)
    .await?;
    metrics::counter!(metric_names::DEAD_LETTERS, "group" => key.group.name()).increment(1);
    tracing::warn!(error, attempts, "record dead-lettered");
    Ok(())
}

/// `error` as a text column takes it: Postgres text cannot hold NUL, and an error
/// that quotes the record may contain one; a failed insert would never set it aside.
fn storable(error: &str) -> std::borrow::Cow<'_, str> {
    match error.contains('\0') {
        true => error.replace('\0', "\\0").into(),
        false => error.into(),
    }
}

/// A dead letter as `dlq list` prints it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub id: i64,
    pub group_name: String,
    pub topic: String,
    pub partition: i32,
    pub kafka_offset: i64,
    pub record_key: Option<Vec<u8>>,
    pub record_value: Option<Vec<u8>>,
    pub header_names: Vec<Vec<u8>>,
    pub header_values: Vec<Vec<u8>>,
    pub error: String,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub redriven_at: Option<DateTime<Utc>>,
    pub redrive_error: Option<String>,
}

impl DeadLetter {
    fn raw(&self) -> RawRecord {
        RawRecord::from_bytes(
            self.kafka_offset,
            self.record_key.clone(),
            self.record_value.clone(),
            self.header_names.iter().cloned().zip(self.header_values.iter().cloned()).collect(),
        )
    }

    /// A few lines per dead letter, every byte escaped so that the terminal shows it
    /// as it is; the value shortened to what fits a terminal.
    pub fn summary(&self) -> String {
        let value = self.record_value.as_deref().map(printable).unwrap_or_default();
        let value: String = value.chars().take(120).collect();
        let headers: Vec<String> = self
            .header_names
            .iter()
            .zip(&self.header_values)
            .map(|(name, value)| format!("{}={}", printable(name), printable(value)))
            .collect();
        let state = match (&self.redriven_at, &self.redrive_error) {
            (Some(at), _) => format!("redriven {}", at.to_rfc3339()),
            (None, Some(error)) => format!("pending (last redrive failed: {error})"),
            (None, None) => "pending".to_owned(),
        };
        format!(
            "#{} {} {}[{}]@{} attempts={} at={} {}\n    error: {}\n    headers: {}\n    value: {}",
            self.id,
            self.group_name,
            self.topic,
            self.partition,
            self.kafka_offset,
            self.attempts,
            self.created_at.to_rfc3339(),
            state,
            printable(self.error.as_bytes()),
            headers.join(" "),
            value
        )
    }
}

// Both reads select the columns of `DeadLetter`, spelled out: the query macros check
// only a literal statement.

/// The group's dead letters, oldest first; pending ones only unless `all`.
#[tracing::instrument(skip(pool), err)]
pub async fn list(pool: &PgPool, group: Group, all: bool) -> Result<Vec<DeadLetter>, sqlx::Error> {
    sqlx::query_as!(
        DeadLetter,
        "select id, group_name, topic, partition, kafka_offset, record_key, record_value, header_names,
                header_values, error, attempts, created_at, redriven_at, redrive_error
         from consumer_dead_letters
         where group_name = $1 and ($2 or redriven_at is null) order by id",
        group.name(),
        all,
    )
    .fetch_all(pool)
    .await
}

/// What redriving one dead letter did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redriven {
    /// Applied now (or found already applied: the statistics did not change twice).
    Applied { id: i64, outcome: &'static str },
    /// Still cannot be applied; it stays pending with the reason.
    Failed { id: i64, error: String },
}

/// Redrives the group's pending dead letters (only `id`, when given), each once: the
/// row is locked, applied and marked in one transaction, so two concurrent redrives
/// cannot both apply it.
#[tracing::instrument(skip(pool, consumer), fields(group = consumer.group().name()), err)]
pub async fn redrive(pool: &PgPool, consumer: &dyn Consumer, id: Option<i64>) -> Result<Vec<Redriven>, sqlx::Error> {
    let ids: Vec<i64> = sqlx::query_scalar!(
        "select id from consumer_dead_letters
         where group_name = $1 and redriven_at is null and ($2::bigint is null or id = $2) order by id",
        consumer.group().name(),
        id,
    )
    .fetch_all(pool)
    .await?;
    let mut results = Vec::with_capacity(ids.len());
    for id in ids {
        results.push(redrive_one(pool, consumer, id).await?);
    }
    Ok(results)
}

async fn redrive_one(pool: &PgPool, consumer: &dyn Consumer, id: i64) -> Result<Redriven, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let letter = sqlx::query_as!(
        DeadLetter,
        "select id, group_name, topic, partition, kafka_offset, record_key, record_value, header_names,
                header_values, error, attempts, created_at, redriven_at, redrive_error
         from consumer_dead_letters where id = $1 and redriven_at is null for update skip locked",
        id,
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(letter) = letter else {
        return Ok(Redriven::Failed { id, error: "already redriven, or being redriven".into() });
    };
    let applied = match letter.raw().decode() {
        Err(error) => Err(error.to_string()),
        Ok(event) => {
            // An exactly-once group's effect commits with the row's `redriven_at`.
            let tx = (consumer.delivery() == Delivery::ExactlyOnce).then_some(&mut *tx);
            match consumer.apply(tx, &[&event]).await {
                Ok(outcomes) => Ok(outcomes.first().map_or("applied", |o| o.label())),
                Err(error) => Err(format!("{:#}", anyhow::Error::new(error))),
            }
        }
    };
    let result = match applied {
        Ok(outcome) => {
            sqlx::query!(
                "update consumer_dead_letters set redriven_at = now(), redrive_error = null where id = $1",
                id
            )
            .execute(&mut *tx)
            .await?;
            Redriven::Applied { id, outcome }
        }
        Err(error) => {
            // The effect may have failed half-way: undo it, then record why.
            tx.rollback().await?;
            tx = pool.begin().await?;
            sqlx::query!(
                "update consumer_dead_letters set redrive_error = $2, attempts = attempts + 1 where id = $1",
                id,
                &storable(&error) as &str,
            )
            .execute(&mut *tx)
            .await?;
            Redriven::Failed { id, error }
        }
    };
    tx.commit().await?;
    Ok(result)
}
