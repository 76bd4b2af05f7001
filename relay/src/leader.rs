//! One active relay: the leader holds a session advisory lock on its own connection.
//!
//! The lock lives exactly as long as the session, so a leader that dies (even by
//! SIGKILL) releases it as soon as Postgres sees the connection close. The leader
//! also moves the cursor and writes receipts through that same session: a relay
//! whose session ended cannot move the cursor any more, which is the fencing check.

use std::time::Duration;

use sqlx::{
    postgres::{PgConnectOptions, PgConnection},
    ConnectOptions, Connection,
};

/// The name Postgres shows for the relay's sessions in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "rsvp-relay";

/// Connection options for the relay's sessions, from the database URL.
pub fn connect_options(database_url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    let options: PgConnectOptions = database_url.parse()?;
    Ok(options.application_name(APPLICATION_NAME))
}

/// A session waiting to become the leader.
pub struct Candidate {
    conn: PgConnection,
    lock_name: String,
}

/// The session holding the leader lock.
pub struct Leader {
    pub(crate) conn: PgConnection,
}

impl Candidate {
    #[tracing::instrument(skip_all, err)]
    pub async fn connect(options: &PgConnectOptions, topic: &str) -> Result<Self, sqlx::Error> {
        let connect = options.connect();
        let conn = tokio::time::timeout(Duration::from_secs(10), connect)
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)??;
        Ok(Self { conn, lock_name: format!("rsvp-relay:{topic}") })
    }

    /// Takes the lock if no other session holds it; never waits for it.
    #[tracing::instrument(skip_all, err)]
    pub async fn try_lead(mut self) -> Result<Result<Leader, Candidate>, sqlx::Error> {
        let acquired: bool = sqlx::query_scalar("select pg_try_advisory_lock(hashtextextended($1, 0))")
            .bind(&self.lock_name)
            .fetch_one(&mut self.conn)
            .await?;
        Ok(if acquired { Ok(Leader { conn: self.conn }) } else { Err(self) })
    }
}

impl Leader {
    /// Ends the session, which releases the lock for a standby.
    pub async fn resign(self) {
        let _ = self.conn.close().await;
    }
}
