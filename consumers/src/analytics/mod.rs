//! The analytics group's effect: per-event statistics, changed at most once per event.
//!
//! Counts are kept as deltas against the last applied state of each rsvp rather than
//! against `previous_status`: an update can change guests, which `previous_status`
//! does not carry, and an rsvp whose creation was never seen (lost to retention)
//! must not be subtracted from counts it was never added to. `previous_status` is
//! still checked against that state to report gaps.
//!
//! Changes of one rsvp may arrive out of version order (a replay, a redelivered dead
//! letter, a broker that lost records and got them republished), so each counter says
//! what it means whatever the order:
//!
//! - `going`, `maybe`, `declined`, `cancelled`, `guests_going`: the rsvps of the
//!   event as their newest applied version describes them (deleted ones not at all).
//!   Only a version above the rsvp's last applied one moves them; an older one
//!   arriving later would describe the past.
//! - `created_total`, `updated_total`, `cancelled_total`, `deleted_total` and
//!   `rsvps_per_hour` (`created`, `changes`): the number of distinct changes (ce_ids)
//!   of each kind applied, whatever their order. An rsvp's `applied_through` keeps
//!   the versions of its unbroken run from counting twice: a change that arrives as
//!   the run's next version moves it (see [`to_claim`]). Any other change claims its
//!   ce_id in `applied_events`, which keeps it from counting twice until [`prune`]
//!   moves `applied_through` over it. An older version arriving after a newer one
//!   still counts here: it happened.
//! - `last_event_at`: the latest `time` of any applied change (a maximum, so order
//!   does not matter).
//!
//! The outcome of each event is worked out here, in batch order; [`apply`] reads the
//! state a batch starts from and writes what it ends with in a fixed number of
//! statements, however many events the batch holds.

mod apply;
pub mod prune;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use rsvp_contract::{CloudEvent, EventType, RsvpStatus};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use uuid::Uuid;

use crate::{
    config::Settings,
    group::{ApplyError, BoxFuture, Consumer, Database, Delivery, Group, Outcome},
    metric_names,
};

pub use apply::{apply, apply_batch};

pub const GROUP: Group = Group::new("analytics-group");

/// The analytics group: exactly once, its statistics committing with its offsets.
pub struct Analytics {
    poll_interval: Duration,
    prune_interval: Duration,
}

pub fn build(settings: &Settings) -> anyhow::Result<Arc<dyn Consumer>> {
    let (poll_interval, prune_interval) = (settings.analytics_poll_interval, settings.applied_events_prune_interval);
    Ok(Arc::new(Analytics { poll_interval, prune_interval }))
}

impl Consumer for Analytics {
    fn group(&self) -> Group {
        GROUP
    }

    fn delivery(&self) -> Delivery {
        Delivery::ExactlyOnce
    }

    fn database(&self) -> Database {
        Database::Analytics
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
            Ok(apply_batch(tx, events).await?.into_iter().map(Outcome::from).collect())
        })
    }

    /// Prunes `applied_events` every `APPLIED_EVENTS_PRUNE_INTERVAL`, unless zero.
    fn maintenance(self: Arc<Self>, store: PgPool, shutdown: CancellationToken) -> Option<BoxFuture<'static, ()>> {
        let interval = self.prune_interval;
        (!interval.is_zero())
            .then(|| Box::pin(prune::Pruner::new(store).run(interval, shutdown)) as BoxFuture<'static, ()>)
    }
}

/// What applying one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The statistics changed.
    Changed,
    /// Its `ce_id` was applied before: a redelivery or replay.
    Duplicate,
    /// A change seen for the first time whose version is not above the rsvp's last
    /// applied one: an older change arriving after a newer one. It counts in the
    /// event's totals and hours but leaves the rsvp's state, and so the current
    /// counts, as the newer version set them.
    Stale,
}

impl From<Applied> for Outcome {
    fn from(applied: Applied) -> Self {
        match applied {
            Applied::Changed | Applied::Stale => Outcome::Applied,
            Applied::Duplicate => Outcome::Duplicate,
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

    fn add_delta(&mut self, other: CountsDelta) {
        self.going += other.going;
        self.maybe += other.maybe;
        self.declined += other.declined;
        self.cancelled += other.cancelled;
        self.guests_going += other.guests_going;
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

/// The last applied state of one rsvp, as stored (the default: none applied).
#[derive(Debug, Clone, Default, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct StateRow {
    pub(crate) event_id: Uuid,
    pub(crate) status: Option<String>,
    pub(crate) guests: i16,
    pub(crate) last_version: i64,
    pub(crate) deleted: bool,
    /// Every version of the rsvp up to this one was applied; their `applied_events`
    /// rows may be pruned (see [`prune`]).
    pub(crate) applied_through: i64,
}

/// What a batch changes in one event's statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StatsChange {
    pub(crate) counts: CountsDelta,
    pub(crate) created: i64,
    pub(crate) updated: i64,
    pub(crate) cancelled: i64,
    pub(crate) deleted: i64,
    pub(crate) last_event_at: DateTime<Utc>,
}

/// What a batch changes in one event's hour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct HourChange {
    pub(crate) created: i64,
    pub(crate) changes: i64,
}

/// A batch's outcome per event and the writes that carry it out, one per key.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub(crate) outcomes: Vec<Applied>,
    /// `(ce_id, rsvp_id)` of every applied event.
    pub(crate) applied: Vec<(Uuid, Uuid)>,
    pub(crate) stats: BTreeMap<Uuid, StatsChange>,
    pub(crate) hours: BTreeMap<(Uuid, DateTime<Utc>), HourChange>,
    /// The state each changed rsvp ends the batch in.
    pub(crate) states: BTreeMap<Uuid, StateRow>,
}

/// Applies `events` in order, starting from the rsvps' stored `states` and the
/// `seen` ce_ids (those of the batch's claimed ones found applied before). An event
/// that comes [`next_in_order`] moves its rsvp's `applied_through`. An event whose ce_id
/// was applied (before, or earlier in the batch), or whose version its rsvp's
/// `applied_through` covers (its ce_id's row may have been pruned), is a duplicate
/// and changes nothing.
/// Any other event counts once in its event's totals and hours, which are therefore
/// counts of distinct changes whatever order they arrive in. Only an event whose
/// version is above its rsvp's last applied one moves the rsvp's state and the
/// current counts (by status, guests going): those always describe each rsvp's
/// newest applied version. An older one is [`Applied::Stale`].
pub(crate) fn plan(events: &[&CloudEvent], mut states: HashMap<Uuid, StateRow>, mut seen: HashSet<Uuid>) -> Plan {
    let mut plan = Plan::default();
    for event in events {
        let data = &event.data;
        let covered = states.get(&data.id).is_some_and(|s| data.version <= s.applied_through);
        if covered || !seen.insert(event.id) {
            plan.outcomes.push(Applied::Duplicate);
            continue;
        }
        let state = states.get(&data.id);
        let newer = state.is_none_or(|s| s.last_version < data.version);
        let is = |t: EventType| i64::from(event.event_type == t);
        let stats = plan.stats.entry(data.event_id).or_insert(StatsChange {
            counts: CountsDelta::default(),
            created: 0,
            updated: 0,
            cancelled: 0,
            deleted: 0,
            last_event_at: event.time,
        });
        stats.created += is(EventType::RsvpCreated);
        stats.updated += is(EventType::RsvpUpdated);
        stats.cancelled += is(EventType::RsvpCancelled);
        stats.deleted += is(EventType::RsvpDeleted);
        stats.last_event_at = stats.last_event_at.max(event.time);
        let hour = plan.hours.entry((data.event_id, hour_of(event.time))).or_default();
        hour.created += is(EventType::RsvpCreated);
        hour.changes += 1;
        plan.applied.push((event.id, data.id));
        if !newer {
            plan.outcomes.push(Applied::Stale);
            continue;
        }
        let before = state.and_then(|s| match (s.deleted, s.status.as_deref().and_then(RsvpStatus::parse)) {
            (false, Some(status)) => Some(Contribution { status, guests: s.guests }),
            _ => None,
        });
        report_gaps(event, state, before);
        stats.counts.add_delta(CountsDelta::between(before, contribution_after(event)));
        let deleted = event.event_type == EventType::RsvpDeleted;
        let applied_through =
            if next_in_order(state, data.version) { data.version } else { state.map_or(0, |s| s.applied_through) };
        let after = StateRow {
            event_id: data.event_id,
            status: (!deleted).then(|| data.status.as_str().to_owned()),
            guests: data.guests,
            last_version: data.version,
            deleted,
            applied_through,
        };
        plan.states.insert(data.id, after.clone());
        states.insert(data.id, after);
        plan.outcomes.push(Applied::Changed);
    }
    plan
}

/// Whether `version` is the rsvp's next change after an unbroken run: every version
/// up to its last applied one was applied (`applied_through` is `last_version`; no
/// state: none was), and this one follows it. Such a change cannot have been applied
/// before, since applying any version moves `last_version` to it or past it, so it
/// needs no `applied_events` row to be told from a redelivery; once applied, its
/// version moves `applied_through` and names it from then on.
fn next_in_order(state: Option<&StateRow>, version: i64) -> bool {
    let (applied_through, last_version) = state.map_or((0, 0), |s| (s.applied_through, s.last_version));
    applied_through == last_version && version == applied_through + 1
}

/// The changes of `events` whose ce_id must be claimed in `applied_events` before
/// [`plan`] can tell whether they were applied, as `(ce_id, rsvp_id, version)`: all
/// but those covered by their rsvp's `applied_through` (duplicates) and those that
/// come [`next_in_order`]. Once one change of an rsvp needs a claim, so do the
/// rsvp's later ones in the batch: whether that one applies is known only after the
/// claim. `states` are the rsvps' stored states, read under their locks.
pub(crate) fn to_claim(events: &[&CloudEvent], states: &HashMap<Uuid, StateRow>) -> Vec<(Uuid, Uuid, i64)> {
    // Per rsvp, its state as the batch's in-order changes leave it; none once one of
    // its changes needs a claim.
    let mut running: HashMap<Uuid, Option<StateRow>> = HashMap::new();
    let mut claims = Vec::new();
    for event in events {
        let (rsvp, version) = (event.data.id, event.data.version);
        let state = running.entry(rsvp).or_insert_with(|| Some(states.get(&rsvp).cloned().unwrap_or_default()));
        if let Some(in_order) = state {
            if version <= in_order.applied_through {
                continue;
            }
            if next_in_order(Some(in_order), version) {
                (in_order.applied_through, in_order.last_version) = (version, version);
                continue;
            }
            *state = None;
        }
        claims.push((event.id, rsvp, version));
    }
    claims
}

pub(crate) fn hour_of(time: DateTime<Utc>) -> DateTime<Utc> {
    time.duration_trunc(TimeDelta::hours(1)).unwrap_or(time)
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
        metrics::counter!(metric_names::VERSION_GAPS, "group" => GROUP.name()).increment(1);
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

    fn change(
        event_type: EventType,
        rsvp: Uuid,
        event: Uuid,
        version: i64,
        status: RsvpStatus,
        guests: i16,
    ) -> CloudEvent {
        let time: DateTime<Utc> = "2030-01-01T10:30:00Z".parse().unwrap();
        let data = rsvp_contract::RsvpData {
            id: rsvp,
            event_id: event,
            name: "Ada".into(),
            email: "ada@example.com".into(),
            status,
            guests,
            version,
            created_at: time,
            updated_at: time,
            previous_status: None,
        };
        CloudEvent::new(event_type, data, time)
    }

    #[test]
    fn a_batch_sums_its_changes_per_event_and_keeps_each_rsvps_last_state() {
        let (event, a, b) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let a1 = change(EventType::RsvpCreated, a, event, 1, RsvpStatus::Going, 2);
        let b1 = change(EventType::RsvpCreated, b, event, 1, RsvpStatus::Maybe, 0);
        let a2 = change(EventType::RsvpUpdated, a, event, 2, RsvpStatus::Declined, 2);
        let plan = plan(&[&a1, &b1, &a2], HashMap::new(), HashSet::new());
        assert_eq!(plan.outcomes, vec![Applied::Changed; 3]);
        let stats = plan.stats[&event];
        assert_eq!(stats.counts, CountsDelta { maybe: 1, declined: 1, ..Default::default() });
        assert_eq!((stats.created, stats.updated), (2, 1));
        assert_eq!(plan.hours[&(event, hour_of(a1.time))], HourChange { created: 2, changes: 3 });
        assert_eq!(plan.states[&a].status.as_deref(), Some("declined"));
        assert_eq!(plan.states[&a].last_version, 2);
        assert_eq!(plan.applied.len(), 3);
    }

    #[test]
    fn duplicates_in_a_batch_change_nothing_and_an_older_change_counts_only_in_the_totals() {
        let (event, a) = (Uuid::now_v7(), Uuid::now_v7());
        let a1 = change(EventType::RsvpCreated, a, event, 1, RsvpStatus::Going, 1);
        let a2 = change(EventType::RsvpUpdated, a, event, 2, RsvpStatus::Maybe, 1);
        let stored = StateRow {
            event_id: event,
            status: Some("going".into()),
            guests: 1,
            last_version: 1,
            deleted: false,
            applied_through: 0,
        };
        // a1 was applied before; a2 comes twice in the batch.
        let plan = plan(&[&a1, &a2, &a2], HashMap::from([(a, stored.clone())]), HashSet::from([a1.id]));
        assert_eq!(plan.outcomes, vec![Applied::Duplicate, Applied::Changed, Applied::Duplicate]);
        assert_eq!(
            plan.stats[&event].counts,
            CountsDelta { going: -1, maybe: 1, guests_going: -1, ..Default::default() }
        );
        assert_eq!((plan.stats[&event].created, plan.stats[&event].updated), (0, 1));
        // An event whose ce_id was applied before is a duplicate even when its
        // version is ahead of the state (a replay after the state was reset).
        let plan = super::plan(&[&a2], HashMap::new(), HashSet::from([a2.id]));
        assert_eq!(plan.outcomes, vec![Applied::Duplicate]);
        assert!(plan.applied.is_empty() && plan.stats.is_empty() && plan.states.is_empty());
        // A change never applied whose version the state is already past (the
        // creation arriving after the update) counts in the totals only.
        let stored = StateRow { last_version: 2, status: Some("maybe".into()), ..stored };
        let plan = super::plan(&[&a1], HashMap::from([(a, stored)]), HashSet::new());
        assert_eq!(plan.outcomes, vec![Applied::Stale]);
        assert_eq!(plan.stats[&event].counts, CountsDelta::default());
        assert_eq!(plan.stats[&event].created, 1);
        assert_eq!(plan.hours[&(event, hour_of(a1.time))], HourChange { created: 1, changes: 1 });
        assert_eq!(plan.applied, vec![(a1.id, a)]);
        assert!(plan.states.is_empty());
    }

    #[test]
    fn versions_one_three_two_count_every_change_once_and_keep_the_newest_state() {
        let (event, a) = (Uuid::now_v7(), Uuid::now_v7());
        let v1 = change(EventType::RsvpCreated, a, event, 1, RsvpStatus::Going, 1);
        let v2 = change(EventType::RsvpUpdated, a, event, 2, RsvpStatus::Going, 3);
        let v3 = change(EventType::RsvpCancelled, a, event, 3, RsvpStatus::Cancelled, 3);
        let plan = plan(&[&v1, &v3, &v2], HashMap::new(), HashSet::new());
        assert_eq!(plan.outcomes, vec![Applied::Changed, Applied::Changed, Applied::Stale]);
        let stats = plan.stats[&event];
        assert_eq!(stats.counts, CountsDelta { cancelled: 1, ..Default::default() });
        assert_eq!((stats.created, stats.updated, stats.cancelled, stats.deleted), (1, 1, 1, 0));
        assert_eq!(plan.hours[&(event, hour_of(v1.time))], HourChange { created: 1, changes: 3 });
        assert_eq!(plan.states[&a].last_version, 3);
        assert_eq!(plan.applied.len(), 3);
    }

    #[test]
    fn a_version_covered_by_applied_through_is_a_duplicate_even_when_its_ce_id_is_new() {
        let (event, a) = (Uuid::now_v7(), Uuid::now_v7());
        let v2 = change(EventType::RsvpUpdated, a, event, 2, RsvpStatus::Maybe, 0);
        let v3 = change(EventType::RsvpUpdated, a, event, 3, RsvpStatus::Going, 0);
        let stored = StateRow {
            event_id: event,
            status: Some("maybe".into()),
            guests: 0,
            last_version: 2,
            deleted: false,
            applied_through: 2,
        };
        let plan = plan(&[&v2, &v3], HashMap::from([(a, stored)]), HashSet::new());
        assert_eq!(plan.outcomes, vec![Applied::Duplicate, Applied::Changed]);
        assert_eq!(plan.applied, vec![(v3.id, a)]);
        // v3 follows the unbroken run through v2: it moves `applied_through` too.
        assert_eq!((plan.stats[&event].updated, plan.states[&a].applied_through), (1, 3));
    }

    #[test]
    fn changes_in_version_order_need_no_claim_and_move_applied_through_with_them() {
        let (event, a, b) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let a1 = change(EventType::RsvpCreated, a, event, 1, RsvpStatus::Going, 1);
        let a2 = change(EventType::RsvpUpdated, a, event, 2, RsvpStatus::Maybe, 1);
        let b1 = change(EventType::RsvpCreated, b, event, 1, RsvpStatus::Going, 0);
        // a's run, b's creation and a redelivery of a1 inside the batch.
        let events = [&a1, &b1, &a2, &a1];
        assert!(to_claim(&events, &HashMap::new()).is_empty());
        let plan = plan(&events, HashMap::new(), HashSet::new());
        assert_eq!(plan.outcomes, vec![Applied::Changed, Applied::Changed, Applied::Changed, Applied::Duplicate]);
        assert_eq!((plan.states[&a].applied_through, plan.states[&b].applied_through), (2, 1));
        assert_eq!(plan.stats[&event].created, 2);
    }

    #[test]
    fn a_change_out_of_order_is_claimed_with_every_later_change_of_its_rsvp_in_the_batch() {
        let (event, a, b) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let a2 = change(EventType::RsvpUpdated, a, event, 2, RsvpStatus::Maybe, 0);
        let a3 = change(EventType::RsvpUpdated, a, event, 3, RsvpStatus::Going, 0);
        let a4 = change(EventType::RsvpUpdated, a, event, 4, RsvpStatus::Maybe, 0);
        let b2 = change(EventType::RsvpUpdated, b, event, 2, RsvpStatus::Going, 0);
        let b3 = change(EventType::RsvpUpdated, b, event, 3, RsvpStatus::Maybe, 0);
        let state = |last_version, applied_through| StateRow {
            event_id: event,
            status: Some("going".into()),
            guests: 0,
            last_version,
            deleted: false,
            applied_through,
        };
        // a: v1 applied; v3 arrives before v2, then v4. b: v1 and v2 applied in
        // order; a redelivered v2 is covered, and v3 comes next.
        let states = HashMap::from([(a, state(1, 1)), (b, state(2, 2))]);
        let claims = to_claim(&[&a3, &b2, &a2, &b3, &a4], &states);
        assert_eq!(claims, vec![(a3.id, a, 3), (a2.id, a, 2), (a4.id, a, 4)]);
        // A state behind its last version (an rsvp whose run has a gap) claims even
        // its next version.
        let states = HashMap::from([(a, state(3, 1))]);
        assert_eq!(to_claim(&[&a4], &states), vec![(a4.id, a, 4)]);
        let plan = plan(&[&a4], states, HashSet::new());
        assert_eq!((plan.states[&a].last_version, plan.states[&a].applied_through), (4, 1));
    }

    #[test]
    fn hours_truncate() {
        let late_in_the_hour: DateTime<Utc> = "2030-01-01T10:59:59.9Z".parse().unwrap();
        assert_eq!(hour_of(late_in_the_hour), "2030-01-01T10:00:00Z".parse::<DateTime<Utc>>().unwrap());
    }
}
