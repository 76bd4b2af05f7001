//! One active relay: the leader holds a session advisory lock on its own connection.
//!
//! The lock lives exactly as long as the session, so a leader that dies (even by
//! SIGKILL) releases it as soon as Postgres sees the connection close. The session is
//! a [`RoleSession`]: Postgres also ends it once it goes unused for the role-loss
//! timeout, so a leader that is paused or cut off loses the lock within that time too.
//! The leader moves the cursor and writes receipts through that same session: a
//! relay whose session ended cannot move the cursor any more, which is the fencing
//! check, and it checks its lease before producing, so that after a pause it steps
//! down before it publishes anything.

use std::time::Duration;

use rsvp_contract::role_lock::RoleSession;
use sqlx::postgres::PgConnectOptions;

/// The name Postgres shows for the relay's sessions in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "rsvp-relay";

/// The `role` label of the role metrics for the leader session.
pub const ROLE: &str = "relay_leader";

/// Connection options for the relay's sessions, from the database URL.
pub fn connect_options(database_url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    let options: PgConnectOptions = database_url.parse()?;
    Ok(options.application_name(APPLICATION_NAME))
}

/// A session waiting to become the leader.
pub struct Candidate {
    session: RoleSession,
    lock_name: String,
}

/// The session holding the leader lock.
pub struct Leader {
    pub(crate) session: RoleSession,
}

impl Candidate {
    /// Opens a role session that ends after `role_loss_timeout` unused.
    #[tracing::instrument(skip_all, err)]
    pub async fn connect(
        options: &PgConnectOptions,
        topic: &str,
        role_loss_timeout: Duration,
    ) -> Result<Self, sqlx::Error> {
        let session = RoleSession::connect(options, ROLE, role_loss_timeout).await?;
        Ok(Self { session, lock_name: format!("rsvp-relay:{topic}") })
    }

    /// Takes the lock if no other session holds it; never waits for it.
    #[tracing::instrument(skip_all, err)]
    pub async fn try_lead(mut self) -> Result<Result<Leader, Candidate>, sqlx::Error> {
        let lock_name = &self.lock_name;
        let attempt = self
            .session
            .run(async |conn| {
                sqlx::query_scalar!(
                    r#"select pg_try_advisory_lock(hashtextextended($1, 0)) as "locked!""#,
                    lock_name.as_str()
                )
                .fetch_one(conn)
                .await
            })
            .await;
        // A candidate's session that failed is simply opened again.
        let acquired = attempt??;
        Ok(if acquired { Ok(Leader { session: self.session }) } else { Err(self) })
    }
}

impl Leader {
    /// Ends the session, which releases the lock for a standby.
    pub async fn resign(self) {
        self.session.close().await;
    }
}
