//! The notifications group: one row in `notifications` per rsvp change the event's
//! organiser should hear of (for now: seats freed by cancelling or deleting a going
//! rsvp), for a mailer to send. Exactly once: the rows commit with the offset, and a
//! change's `ce_id` is the row's key, so a redelivery or a replay adds nothing.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use rsvp_contract::{CloudEvent, EventType, RsvpStatus};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{
    config::Settings,
    group::{ApplyError, BoxFuture, Consumer, Delivery, Group, Outcome},
};

pub const GROUP: Group = Group::new("notifications-group");

pub struct Notifications {
    poll_interval: Duration,
}

pub fn build(settings: &Settings) -> anyhow::Result<Arc<dyn Consumer>> {
    Ok(Arc::new(Notifications { poll_interval: settings.analytics_poll_interval }))
}

/// The seats `event` gives back to its event: a going rsvp and its guests, once
/// cancelled (`previous_status` says it was going) or deleted (the event carries the
/// rsvp as it was). An update away from going also frees seats, but its event does
/// not say how many guests the rsvp had before, so it is not notified.
pub fn seats_freed(event: &CloudEvent) -> Option<i32> {
    let was_going = match event.event_type {
        EventType::RsvpCancelled => event.data.previous_status == Some(RsvpStatus::Going),
        EventType::RsvpDeleted => event.data.status == RsvpStatus::Going,
        EventType::RsvpCreated | EventType::RsvpUpdated => false,
    };
    was_going.then(|| 1 + i32::from(event.data.guests))
}

impl Consumer for Notifications {
    fn group(&self) -> Group {
        GROUP
    }

    fn delivery(&self) -> Delivery {
        Delivery::ExactlyOnce
    }

    fn poll_interval(&self) -> Duration {
        self.poll_interval
    }

    fn apply<'a>(
        &'a self,
        tx: Option<&'a mut PgConnection>,
        events: &'a [&'a CloudEvent],
    ) -> BoxFuture<'a, Result<Vec<Outcome>, ApplyError>> {
        Box::pin(async move {
            let tx = tx.expect("an exactly-once group applies inside the offset's transaction");
            let due: Vec<(&CloudEvent, i32)> = events.iter().filter_map(|e| Some((*e, seats_freed(e)?))).collect();
            let column = |f: fn(&CloudEvent) -> Uuid| due.iter().map(|(e, _)| f(e)).collect::<Vec<Uuid>>();
            let causes: Vec<&str> = due.iter().map(|(e, _)| e.event_type.as_str()).collect();
            let inserted: Vec<Uuid> = sqlx::query_scalar!(
                "insert into notifications (ce_id, event_id, rsvp_id, kind, cause, seats, changed_at)
                 select ce_id, event_id, rsvp_id, 'seat_freed', cause, seats, changed_at
                 from unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::integer[], $6::timestamptz[])
                      as n(ce_id, event_id, rsvp_id, cause, seats, changed_at)
                 on conflict (ce_id) do nothing returning ce_id",
                &column(|e| e.id),
                &column(|e| e.data.event_id),
                &column(|e| e.data.id),
                &causes as &[&str],
                &due.iter().map(|(_, seats)| *seats).collect::<Vec<i32>>(),
                &due.iter().map(|(e, _)| e.time).collect::<Vec<DateTime<Utc>>>(),
            )
            .fetch_all(tx)
            .await?;
            // A change due a row whose ce_id already had one was notified before.
            Ok(events
                .iter()
                .map(|e| match seats_freed(e).is_some() && !inserted.contains(&e.id) {
                    true => Outcome::Duplicate,
                    false => Outcome::Applied,
                })
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsvp_contract::RsvpData;

    fn change(event_type: EventType, status: RsvpStatus, previous_status: Option<RsvpStatus>) -> CloudEvent {
        let now = Utc::now();
        let data = RsvpData {
            id: Uuid::now_v7(),
            event_id: Uuid::now_v7(),
            name: "Ada".into(),
            email: "ada@example.com".into(),
            status,
            guests: 2,
            version: 2,
            created_at: now,
            updated_at: now,
            previous_status,
        };
        CloudEvent::new(event_type, data, now)
    }

    #[test]
    fn cancelling_or_deleting_a_going_rsvp_frees_it_and_its_guests_and_nothing_else_notifies() {
        use EventType::*;
        use RsvpStatus::*;
        assert_eq!(seats_freed(&change(RsvpCancelled, Cancelled, Some(Going))), Some(3));
        assert_eq!(seats_freed(&change(RsvpDeleted, Going, None)), Some(3));
        assert_eq!(seats_freed(&change(RsvpCancelled, Cancelled, Some(Maybe))), None);
        assert_eq!(seats_freed(&change(RsvpDeleted, Cancelled, None)), None);
        assert_eq!(seats_freed(&change(RsvpUpdated, Maybe, Some(Going))), None);
        assert_eq!(seats_freed(&change(RsvpCreated, Going, None)), None);
    }
}
