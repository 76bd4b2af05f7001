//! Which instance consumes which partition: group membership and one Postgres session
//! advisory lock per (group, topic, partition).
//!
//! Kafka consumer groups are not available through rskafka, so Postgres arbitrates.
//! A partition's lock is held by the connection its worker commits offsets through:
//! if that connection dies, the lock is gone and so is any transaction the worker
//! could still commit, so two instances can never both advance one partition.
//! Liveness of a member is the liveness of its membership connection's backend,
//! identified by its pid and start time (a pid alone can be reused by a later
//! backend), so a SIGKILLed instance stops counting as soon as Postgres sees its
//! socket close. Both kinds of connection are role sessions (`role_lock`): Postgres
//! ends them after the role-loss timeout unused, so a paused or cut-off instance
//! loses its partitions and its membership within that time too.

use std::time::Duration;

use rsvp_contract::role_lock::{RoleLost, RoleSession};
use sqlx::{postgres::PgConnectOptions, PgConnection};
use uuid::Uuid;

use crate::group::Group;

/// The `role` label of the role metrics for a partition's session.
pub const PARTITION_ROLE: &str = "partition_owner";
/// The `role` label of the role metrics for the membership session.
pub const MEMBER_ROLE: &str = "group_member";

/// The first half of the advisory lock key of a group's partitions on a topic (the
/// second is the partition): a stable 32-bit FNV-1a hash, so every instance and
/// version computes the same key.
pub fn lock_class(group: Group, topic: &str) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in format!("rsvp-consumers/{}/{}", group.name(), topic).bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    i32::from_ne_bytes(hash.to_ne_bytes())
}

/// Partitions each of `members` live instances should own: all of them shared out,
/// rounded up so that none is left over.
pub fn fair_share(partitions: usize, members: usize) -> usize {
    partitions.div_ceil(members.max(1))
}

/// Takes the partition's lock on `conn` for as long as the session lives.
#[tracing::instrument(skip_all, fields(group = group.name(), partition), err)]
pub async fn try_lock(conn: &mut PgConnection, group: Group, topic: &str, partition: i32) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(r#"select pg_try_advisory_lock($1, $2) as "locked!""#, lock_class(group, topic), partition)
        .fetch_one(conn)
        .await
}

/// This instance's row in `consumer_members`, alive while its session is.
pub struct Membership {
    session: RoleSession,
    group: Group,
    instance_id: Uuid,
}

impl Membership {
    #[tracing::instrument(skip_all, fields(group = group.name(), %instance_id), err)]
    pub async fn join(
        url: &str,
        group: Group,
        instance_id: Uuid,
        role_loss_timeout: Duration,
    ) -> Result<Self, sqlx::Error> {
        let options: PgConnectOptions = url.parse()?;
        let mut session = RoleSession::connect(&options, MEMBER_ROLE, role_loss_timeout).await?;
        session
            .run(async |conn| {
                sqlx::query!(
                    "insert into consumer_members (group_name, instance_id, backend_pid, backend_start)
                     select $1, $2, pid, backend_start from pg_stat_activity where pid = pg_backend_pid()
                     on conflict (group_name, instance_id)
                     do update set backend_pid = excluded.backend_pid, backend_start = excluded.backend_start",
                    group.name(),
                    instance_id,
                )
                .execute(conn)
                .await
            })
            .await??;
        Ok(Self { session, group, instance_id })
    }

    /// The membership session, to keep it alive between rebalances.
    pub fn session(&mut self) -> &mut RoleSession {
        &mut self.session
    }

    /// Forgets members whose backend is gone (no backend with that pid *and* start
    /// time: a reused pid is another backend), then counts the live ones (this one
    /// included). Any failure means the membership itself is gone: join again.
    ///
    /// One statement, so one transaction: every group rebalances every
    /// REBALANCE_INTERVAL even when nothing happens, and on an idle system these
    /// are most of what Postgres does. The count is taken from the statement's
    /// snapshot, which still holds the rows being deleted, so those are subtracted.
    #[tracing::instrument(skip_all, fields(group = self.group.name()), err)]
    pub async fn live_members(&mut self) -> Result<usize, RoleLost> {
        let group = self.group.name();
        let counted = self
            .session
            .run(async |conn| {
                sqlx::query_scalar!(
                    r#"with gone as (
                        delete from consumer_members m
                         where group_name = $1
                           and not exists (select 1 from pg_stat_activity a
                                            where a.pid = m.backend_pid and a.backend_start = m.backend_start)
                        returning 1)
                     select (select count(*) from consumer_members where group_name = $1) - (select count(*) from gone)
                       as "live!""#,
                    group,
                )
                .fetch_one(&mut *conn)
                .await
            })
            .await?;
        let count = counted.map_err(|error| self.session.failed(error))?;
        Ok(usize::try_from(count).unwrap_or(1).max(1))
    }

    /// Leaves the group at once, rather than when Postgres notices the closed connection.
    pub async fn leave(mut self) {
        let (group, instance_id) = (self.group.name(), self.instance_id);
        let left = self
            .session
            .run(async |conn| {
                sqlx::query!(
                    "delete from consumer_members where group_name = $1 and instance_id = $2",
                    group,
                    instance_id
                )
                .execute(conn)
                .await
            })
            .await;
        if !matches!(left, Ok(Ok(_))) {
            tracing::warn!("could not leave the group; the row goes when the connection closes");
        }
        self.session.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fair_share_leaves_no_partition_unowned() {
        assert_eq!(fair_share(6, 1), 6);
        assert_eq!(fair_share(6, 2), 3);
        assert_eq!(fair_share(6, 4), 2);
        assert_eq!(fair_share(3, 2), 2);
        assert_eq!(fair_share(3, 0), 3);
        assert_eq!(fair_share(2, 5), 1);
    }

    #[test]
    fn lock_classes_differ_per_group_and_topic_and_are_stable() {
        let cache = lock_class(crate::cache::GROUP, "rsvp-events");
        assert_ne!(cache, lock_class(crate::analytics::GROUP, "rsvp-events"));
        assert_ne!(cache, lock_class(crate::cache::GROUP, "other"));
        assert_eq!(cache, lock_class(crate::cache::GROUP, "rsvp-events"));
    }
}
