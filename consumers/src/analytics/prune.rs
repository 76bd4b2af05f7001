//! Pruning `analytics.applied_events`, which otherwise grows by one row per change
//! for ever.
//!
//! A change is named by its `(rsvp_id, version)` as well as by its ce_id: the api
//! writes exactly one change per version, and versions run 1, 2, 3, … without gaps.
//! Once every version of an rsvp up to `n` was applied, a redelivery of any of them
//! is recognised by its version alone, so the pruner moves the rsvp's
//! `applied_through` to `n` and deletes the rows of those versions, in one
//! transaction. Applying takes a version at or below `applied_through` as a
//! duplicate (see [`super::plan`]), so a pruned change redelivered later, by a
//! replay or a redrive, still counts once.
//!
//! What stays: the rows of an rsvp's versions above a gap (a change lost before it
//! reached us, counted by `consumer_version_gaps_total`) until the gap is filled,
//! and rows applied before versions were recorded. The table therefore holds about
//! the changes applied since the last pass, not the whole history.

use std::time::Duration;

use rsvp_contract::runtime::shutdown::sleep_or_shutdown;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::GROUP;
use crate::metric_names::APPLIED_EVENTS_PRUNED;

/// Rsvps looked at per transaction: a short transaction, since every open one holds
/// back the relay's xmin watermark.
const RSVPS_PER_STEP: i64 = 500;

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PruneOutcome {
    /// Looked at `rsvps` rsvps and deleted `rows` rows; the pass goes on.
    Pruned { rsvps: usize, rows: u64 },
    /// Every rsvp with rows was looked at since the pass started; the next step
    /// starts a new pass.
    PassComplete,
}

/// Walks the rsvps with `applied_events` rows in id order, a chunk per step.
pub struct Pruner {
    pool: PgPool,
    /// The last rsvp of the previous step; none at the start of a pass.
    after: Option<Uuid>,
}

impl Pruner {
    pub fn new(pool: PgPool) -> Self {
        Self { pool, after: None }
    }

    /// Prunes the next chunk of rsvps. Rows whose rsvp is being applied right now are
    /// skipped (`skip locked`) and pruned by a later pass.
    #[tracing::instrument(skip_all, err)]
    pub async fn step(&mut self) -> Result<PruneOutcome, sqlx::Error> {
        let rsvps: Vec<Uuid> = sqlx::query_scalar!(
            "select distinct rsvp_id from analytics.applied_events
             where ($1::uuid is null or rsvp_id > $1) order by rsvp_id limit $2",
            self.after,
            RSVPS_PER_STEP,
        )
        .fetch_all(&self.pool)
        .await?;
        let Some(&last) = rsvps.last() else {
            self.after = None;
            return Ok(PruneOutcome::PassComplete);
        };
        // `dense_rank` numbers an rsvp's versions above `applied_through` from 1; the
        // versions whose number is their distance from `applied_through` are the run
        // that follows it without a gap. The delete also takes rows at or below the
        // old `applied_through` that a redelivery claimed after an earlier pass.
        let pruned = sqlx::query!(
            "with s as (
                select rsvp_id, applied_through from analytics.rsvp_state where rsvp_id = any($1) for update skip locked
             ), ranked as (
                select e.rsvp_id, e.version,
                       e.version - s.applied_through - dense_rank() over (partition by e.rsvp_id order by e.version) as off
                from analytics.applied_events e join s using (rsvp_id)
                where e.version > s.applied_through
             ), through as (
                select rsvp_id, max(version) as version from ranked where off = 0 group by rsvp_id
             ), moved as (
                update analytics.rsvp_state r set applied_through = t.version
                from through t where r.rsvp_id = t.rsvp_id
                returning r.rsvp_id, r.applied_through
             )
             delete from analytics.applied_events e
             using s left join moved m using (rsvp_id)
             where e.rsvp_id = s.rsvp_id and e.version <= coalesce(m.applied_through, s.applied_through)",
            &rsvps,
        )
        .persistent(false)
        .execute(&self.pool)
        .await?
        .rows_affected();
        self.after = Some(last);
        metrics::counter!(APPLIED_EVENTS_PRUNED, "group" => GROUP.name()).increment(pruned);
        Ok(PruneOutcome::Pruned { rsvps: rsvps.len(), rows: pruned })
    }

    /// One pass every `interval` until `shutdown`. A failed step is logged and the
    /// pass starts again at the next interval: pruning is never urgent.
    pub async fn run(mut self, interval: Duration, shutdown: CancellationToken) {
        metrics::counter!(APPLIED_EVENTS_PRUNED, "group" => GROUP.name()).increment(0);
        loop {
            loop {
                let step = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    step = self.step() => step,
                };
                match step {
                    Ok(PruneOutcome::Pruned { .. }) => {}
                    Ok(PruneOutcome::PassComplete) => break,
                    Err(error) => {
                        tracing::warn!(%error, "pruning applied_events failed; trying again next interval");
                        self.after = None;
                        break;
                    }
                }
            }
            if sleep_or_shutdown(interval, &shutdown).await {
                return;
            }
        }
    }
}
