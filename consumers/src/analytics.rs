//! The analytics group's effect: per-event statistics, changed at most once per event.
//!
//! Counts are kept as deltas against the last applied state of each rsvp rather than
//! against `previous_status`: an update can change guests, which `previous_status`
//! does not carry, and an rsvp whose creation was never seen (lost to retention)
//! must not be subtracted from counts it was never added to. `previous_status` is
//! still checked against that state to report gaps.

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use rsvp_contract::{CloudEvent, EventType, RsvpStatus};
use sqlx::PgConnection;

/// What applying one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The statistics changed.
    Changed,
    /// Its `ce_id` was applied before: a redelivery or replay.
    Duplicate,
    /// Its version is not above the rsvp's last applied one: an older change.
    Stale,
}

impl Applied {
    pub fn label(self) -> &'static str {
        match self {
            Applied::Changed => "applied",
            Applied::Duplicate | Applied::Stale => "duplicate",
        }
    }
}

/// What one rsvp adds to its event's current counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contribution {
    pub status: RsvpStatus,
    pub guests: i16,
}

/// Changes to one event's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CountsDelta {
    pub going: i64,
    pub maybe: i64,
    pub declined: i64,
    pub cancelled: i64,
    pub guests_going: i64,
}

impl CountsDelta {
    fn add(&mut self, contribution: Contribution, sign: i64) {
        let slot = match contribution.status {
            RsvpStatus::Going => &mut self.going,
            RsvpStatus::Maybe => &mut self.maybe,
            RsvpStatus::Declined => &mut self.declined,
            RsvpStatus::Cancelled => &mut self.cancelled,
        };
        *slot += sign;
        if contribution.status == RsvpStatus::Going {
            self.guests_going += sign * i64::from(contribution.guests);
        }
    }

    /// From an rsvp counted as `before` (none: not counted) to `after` (none: deleted).
    pub fn between(before: Option<Contribution>, after: Option<Contribution>) -> Self {
        let mut delta = CountsDelta::default();
        if let Some(before) = before {
            delta.add(before, -1);
        }
        if let Some(after) = after {
            delta.add(after, 1);
        }
        delta
    }
}

/// What the event makes of the rsvp: its contribution afterwards, none once deleted.
pub fn contribution_after(event: &CloudEvent) -> Option<Contribution> {
    match event.event_type {
        EventType::RsvpDeleted => None,
        _ => Some(Contribution { status: event.data.status, guests: event.data.guests }),
    }
}

#[derive(sqlx::FromRow)]
struct StateRow {
    status: Option<String>,
    guests: i16,
    last_version: i64,
    deleted: bool,
}

fn hour_of(time: DateTime<Utc>) -> DateTime<Utc> {
    time.duration_trunc(TimeDelta::hours(1)).unwrap_or(time)
}

/// Applies `event` inside the caller's transaction, which also advances the offset.
#[tracing::instrument(skip_all, fields(ce_id = %event.id, version = event.data.version), err)]
pub async fn apply(conn: &mut PgConnection, event: &CloudEvent) -> Result<Applied, sqlx::Error> {
    let data = &event.data;
    let state: Option<StateRow> = sqlx::query_as(
        "select status, guests, last_version, deleted from analytics.rsvp_state where rsvp_id = $1 for update",
    )
    .bind(data.id)
    .fetch_optional(&mut *conn)
    .await?;
    if state.as_ref().is_some_and(|s| s.last_version >= data.version) {
        return Ok(Applied::Stale);
    }
    let first_time = sqlx::query(
        "insert into analytics.applied_events (ce_id, rsvp_id) values ($1, $2) on conflict (ce_id) do nothing",
    )
    .bind(event.id)
    .bind(data.id)
    .execute(&mut *conn)
    .await?;
    if first_time.rows_affected() == 0 {
        return Ok(Applied::Duplicate);
    }
    let before = state.as_ref().and_then(|s| match (s.deleted, s.status.as_deref().and_then(RsvpStatus::parse)) {
        (false, Some(status)) => Some(Contribution { status, guests: s.guests }),
        _ => None,
    });
    report_gaps(event, state.as_ref(), before);
    let delta = CountsDelta::between(before, contribution_after(event));
    let is = |t: EventType| i64::from(event.event_type == t);
    sqlx::query(
        "insert into analytics.event_stats as s (event_id, going, maybe, declined, cancelled, guests_going,
                created_total, updated_total, cancelled_total, deleted_total, last_event_at)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         on conflict (event_id) do update set
            going = s.going + excluded.going, maybe = s.maybe + excluded.maybe,
            declined = s.declined + excluded.declined, cancelled = s.cancelled + excluded.cancelled,
            guests_going = s.guests_going + excluded.guests_going,
            created_total = s.created_total + excluded.created_total,
            updated_total = s.updated_total + excluded.updated_total,
            cancelled_total = s.cancelled_total + excluded.cancelled_total,
            deleted_total = s.deleted_total + excluded.deleted_total,
            last_event_at = greatest(s.last_event_at, excluded.last_event_at), updated_at = now()",
    )
    .bind(data.event_id)
    .bind(delta.going)
    .bind(delta.maybe)
    .bind(delta.declined)
    .bind(delta.cancelled)
    .bind(delta.guests_going)
    .bind(is(EventType::RsvpCreated))
    .bind(is(EventType::RsvpUpdated))
    .bind(is(EventType::RsvpCancelled))
    .bind(is(EventType::RsvpDeleted))
    .bind(event.time)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "insert into analytics.rsvps_per_hour as h (event_id, hour, created, changes) values ($1, $2, $3, 1)
         on conflict (event_id, hour) do update set created = h.created + excluded.created, changes = h.changes + 1",
    )
    .bind(data.event_id)
    .bind(hour_of(event.time))
    .bind(is(EventType::RsvpCreated))
    .execute(&mut *conn)
    .await?;
    let deleted = event.event_type == EventType::RsvpDeleted;
    sqlx::query(
        "insert into analytics.rsvp_state (rsvp_id, event_id, status, guests, last_version, deleted)
         values ($1, $2, $3, $4, $5, $6)
         on conflict (rsvp_id) do update set status = excluded.status, guests = excluded.guests,
            last_version = excluded.last_version, deleted = excluded.deleted, updated_at = now()",
    )
    .bind(data.id)
    .bind(data.event_id)
    .bind((!deleted).then(|| data.status.as_str()))
    .bind(data.guests)
    .bind(data.version)
    .bind(deleted)
    .execute(&mut *conn)
    .await?;
    Ok(Applied::Changed)
}

/// Counts a change that does not follow the last applied one: records were lost
/// before they reached us (retention, an emptied broker). The counts stay right for
/// every rsvp whose history we saw.
fn report_gaps(event: &CloudEvent, state: Option<&StateRow>, before: Option<Contribution>) {
    let expected_previous = before.map(|b| b.status);
    let gap = match state {
        Some(state) => state.last_version + 1 != event.data.version,
        None => event.event_type != EventType::RsvpCreated,
    };
    let mismatch = event.data.previous_status.is_some() && event.data.previous_status != expected_previous;
    if gap || mismatch {
        metrics::counter!("consumer_version_gaps_total", "group" => crate::group::Group::Analytics.name()).increment(1);
        tracing::warn!(rsvp_id = %event.data.id, version = event.data.version, ?expected_previous,
            previous_status = ?event.data.previous_status, "rsvp changes missing before this one");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(status: RsvpStatus, guests: i16) -> Option<Contribution> {
        Some(Contribution { status, guests })
    }

    #[test]
    fn a_new_going_rsvp_adds_itself_and_its_guests() {
        let delta = CountsDelta::between(None, c(RsvpStatus::Going, 2));
        assert_eq!(delta, CountsDelta { going: 1, guests_going: 2, ..Default::default() });
    }

    #[test]
    fn a_status_change_moves_one_rsvp_between_counts() {
        let delta = CountsDelta::between(c(RsvpStatus::Going, 3), c(RsvpStatus::Maybe, 3));
        assert_eq!(delta, CountsDelta { going: -1, maybe: 1, guests_going: -3, ..Default::default() });
    }

    #[test]
    fn a_guest_change_of_a_going_rsvp_changes_only_guests() {
        let delta = CountsDelta::between(c(RsvpStatus::Going, 1), c(RsvpStatus::Going, 4));
        assert_eq!(delta, CountsDelta { guests_going: 3, ..Default::default() });
    }

    #[test]
    fn deleting_a_going_rsvp_removes_its_guests_and_a_cancelled_one_only_itself() {
        assert_eq!(
            CountsDelta::between(c(RsvpStatus::Going, 2), None),
            CountsDelta { going: -1, guests_going: -2, ..Default::default() }
        );
        assert_eq!(
            CountsDelta::between(c(RsvpStatus::Cancelled, 2), None),
            CountsDelta { cancelled: -1, ..Default::default() }
        );
    }

    #[test]
    fn hours_truncate() {
        let t: DateTime<Utc> = "2030-01-01T10:59:59.9Z".parse().unwrap();
        assert_eq!(hour_of(t), "2030-01-01T10:00:00Z".parse::<DateTime<Utc>>().unwrap());
    }
}
