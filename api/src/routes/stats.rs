//! `GET /events/{id}/stats`: an event's statistics as the analytics consumer keeps
//! them (`analytics` schema, see migration 20261128000003). Eventually consistent:
//! they trail the rsvps table by the relay's and the consumer's latency.

use axum::{extract::State, routing::get, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{views::RsvpCounts, ApiJson, ApiPath};
use crate::{
    error::{ApiError, ErrorBody},
    state::AppState,
    store::{analytics, events},
};

pub fn router() -> Router<AppState> {
    Router::new().route("/events/{id}/stats", get(get_stats))
}

/// An event's statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventStats {
    pub event_id: Uuid,
    /// Current rsvps by status.
    pub counts: RsvpCounts,
    /// Guests brought by going rsvps.
    pub guests_going: i64,
    /// Changes applied so far, by type.
    pub totals: EventTotals,
    /// Per hour of the change's time, oldest first; hours without changes are absent.
    pub rsvps_per_hour: Vec<HourlyRsvps>,
    /// Time of the newest applied change; null before the first.
    pub last_event_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventTotals {
    pub created: i64,
    pub updated: i64,
    pub cancelled: i64,
    pub deleted: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HourlyRsvps {
    pub hour: DateTime<Utc>,
    /// Rsvps created in this hour.
    pub created: i64,
    /// Changes of any type in this hour.
    pub changes: i64,
}

/// Statistics of an event: current counts, guests going, totals per change type and
/// rsvps per hour. Zeros for an event with no rsvp change applied yet.
#[utoipa::path(
    get, path = "/events/{id}/stats", tag = "events",
    params(("id" = Uuid, Path, description = "Event id")),
    responses((status = 200, body = EventStats), (status = 404, body = ErrorBody))
)]
pub async fn get_stats(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<ApiJson<EventStats>, ApiError> {
    if !events::event_exists(&state.db, id).await? {
        return Err(ApiError::NotFound("event"));
    }
    Ok(ApiJson(load_stats(&state.analytics, id).await?))
}

/// The event's statistics; zeros before the consumer applied its first rsvp change.
pub async fn load_stats(pool: &PgPool, event_id: Uuid) -> Result<EventStats, sqlx::Error> {
    let row = analytics::event_stats(pool, event_id).await?;
    let rsvps_per_hour = analytics::rsvps_per_hour(pool, event_id)
        .await?
        .into_iter()
        .map(|hour| HourlyRsvps { hour: hour.hour, created: hour.created, changes: hour.changes })
        .collect();
    let stats = match row {
        None => EventStats {
            event_id,
            counts: RsvpCounts::default(),
            guests_going: 0,
            totals: EventTotals::default(),
            rsvps_per_hour,
            last_event_at: None,
        },
        Some(row) => EventStats {
            event_id,
            counts: RsvpCounts { going: row.going, maybe: row.maybe, declined: row.declined, cancelled: row.cancelled },
            guests_going: row.guests_going,
            totals: EventTotals {
                created: row.created_total,
                updated: row.updated_total,
                cancelled: row.cancelled_total,
                deleted: row.deleted_total,
            },
            rsvps_per_hour,
            last_event_at: row.last_event_at,
        },
    };
    Ok(stats)
}
