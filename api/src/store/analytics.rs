//! An event's statistics as the analytics consumer keeps them (`analytics` schema,
//! see migration 20261128000003): read here, written only by the consumer.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// The event's row of `analytics.event_stats`.
pub struct EventStatsRow {
    pub going: i64,
    pub maybe: i64,
    pub declined: i64,
    pub cancelled: i64,
    pub guests_going: i64,
    pub created_total: i64,
    pub updated_total: i64,
    pub cancelled_total: i64,
    pub deleted_total: i64,
    pub last_event_at: Option<DateTime<Utc>>,
}

/// One hour of `analytics.rsvps_per_hour`.
pub struct HourRow {
    pub hour: DateTime<Utc>,
    pub created: i64,
    pub changes: i64,
}

/// `None` before the consumer applied the event's first rsvp change.
#[tracing::instrument(skip(pool), err)]
pub async fn event_stats(pool: &PgPool, event_id: Uuid) -> Result<Option<EventStatsRow>, sqlx::Error> {
    sqlx::query_as!(
        EventStatsRow,
        "select going, maybe, declined, cancelled, guests_going, created_total, updated_total,
                cancelled_total, deleted_total, last_event_at
         from analytics.event_stats where event_id = $1",
        event_id,
    )
    .fetch_optional(pool)
    .await
}

/// The hours with changes of the event, oldest first.
#[tracing::instrument(skip(pool), err)]
pub async fn rsvps_per_hour(pool: &PgPool, event_id: Uuid) -> Result<Vec<HourRow>, sqlx::Error> {
    sqlx::query_as!(
        HourRow,
        "select hour, created, changes from analytics.rsvps_per_hour where event_id = $1 order by hour",
        event_id,
    )
    .fetch_all(pool)
    .await
}
