//! A role (the relay's leadership, a consumer partition's ownership, a group
//! membership) held through a dedicated Postgres session, and lost within a bounded
//! time once its holder stops using that session.
//!
//! Roles are session advisory locks (or rows tied to a backend), which live as long
//! as their session. A process that is paused (SIGSTOP, a VM pause, a long stall) or
//! cut off by the network keeps its session, so its lock, for as long as the kernel
//! answers keepalives: for a paused process, forever. So a role session is opened
//! with `idle_session_timeout` and `idle_in_transaction_session_timeout` set to the
//! role-loss timeout: Postgres itself ends a session nobody used for that long, and
//! the lock goes with it, whatever the client's kernel does.
//!
//! The holder keeps its session busy: it pings it once a third of the timeout
//! passed since the last round trip ([`RoleSession::ensure_held`]), also while it
//! waits ([`RoleSession::keep_alive_while`]). A ping is a bare protocol `Sync`, not
//! a statement: Postgres answers it and restarts the idle timer without starting a
//! transaction, so the heartbeats of an idle system's dozen role sessions cost no
//! transactions (docs/NOTES.md, "Role heartbeats"). Before anything that matters
//! (producing, applying effects, moving a cursor or an offset) it calls
//! `ensure_held`, which pings unless the lease is certain: a process that resumes
//! after a pause longer than the timeout thus finds its session ended before it
//! writes anything, and steps down. Every query on the session has a client-side
//! deadline, so a cut network cannot hang the holder either.
//!
//! The lease is counted from when a successful round trip was *sent*: Postgres
//! cannot have started counting the session idle before then, so the holder never
//! believes in a lease the server already ended.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use sqlx::{
    postgres::{PgConnectOptions, PgConnection},
    ConnectOptions, Connection,
};

/// `role_lost_total{role}`: roles lost because the session ended, failed or did not answer in time.
pub const LOST: &str = "role_lost_total";
/// `role_heartbeats_total{role, result}`: pings that kept a role session alive, or found it gone.
pub const HEARTBEATS: &str = "role_heartbeats_total";

/// The shortest role-loss timeout: Postgres counts in milliseconds, and a heartbeat
/// every third of it must stay cheap.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(300);

/// Registers the help texts of the role metrics.
pub fn describe_metrics() {
    metrics::describe_counter!(LOST, "Roles (leadership, partition ownership, membership) this process lost, by role.");
    metrics::describe_counter!(HEARTBEATS, "Pings on role sessions, by role and result (ok, error).");
}

/// Why a role is gone. The session must not be used again: drop it.
#[derive(Debug, thiserror::Error)]
pub enum RoleLost {
    /// The session failed: Postgres ended it (idle timeout, restart) or the connection broke.
    #[error("the {role} session ended")]
    Ended {
        role: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// The session did not answer within its deadline: the network may be cut.
    #[error("the {role} session did not answer within {after:?}")]
    Deadline { role: &'static str, after: Duration },
    /// The role was lost earlier.
    #[error("the {role} role was lost earlier")]
    AlreadyLost { role: &'static str },
}

/// For callers whose errors are `sqlx::Error`: a lost role reads as a lost connection.
impl From<RoleLost> for sqlx::Error {
    fn from(lost: RoleLost) -> Self {
        sqlx::Error::Io(std::io::Error::other(lost))
    }
}

/// Connection options for a role session: Postgres ends it after `timeout` unused,
/// in or out of a transaction, and gives up on an unacknowledged send as long.
pub fn session_options(options: PgConnectOptions, timeout: Duration) -> PgConnectOptions {
    let millis = timeout.as_millis().max(1).to_string();
    options.options([
        ("idle_session_timeout", millis.as_str()),
        ("idle_in_transaction_session_timeout", millis.as_str()),
        ("tcp_user_timeout", millis.as_str()),
    ])
}

/// A dedicated session that carries one role, with its lease.
pub struct RoleSession {
    conn: PgConnection,
    /// The `role` label of the metrics: a fixed, small set.
    role: &'static str,
    timeout: Duration,
    /// When the last successful round trip was sent.
    lease_from: Instant,
    lost: bool,
}

impl RoleSession {
    /// Opens a session with [`session_options`]; the connect itself is bounded by
    /// `timeout` too.
    #[tracing::instrument(skip_all, fields(role), err)]
    pub async fn connect(
        options: &PgConnectOptions,
        role: &'static str,
        timeout: Duration,
    ) -> Result<Self, sqlx::Error> {
        let started = Instant::now();
        let options = session_options(options.clone(), timeout);
        let conn = tokio::time::timeout(timeout.max(Duration::from_secs(1)), options.connect())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)??;
        Ok(Self { conn, role, timeout, lease_from: started, lost: false })
    }

    pub fn role(&self) -> &'static str {
        self.role
    }

    /// The role-loss timeout this session was opened with.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether the role is known to be gone.
    pub fn is_lost(&self) -> bool {
        self.lost
    }

    /// Pings are due this long after the lease started: a third of the timeout leaves
    /// two thirds for a slow ping and a busy scheduler before Postgres would end it.
    fn heartbeat_every(&self) -> Duration {
        self.timeout / 3
    }

    /// When the next ping is due.
    pub fn heartbeat_due(&self) -> Instant {
        self.lease_from + self.heartbeat_every()
    }

    /// Whether the lease is certain without asking Postgres.
    fn fresh(&self) -> bool {
        self.lease_from.elapsed() < self.heartbeat_every()
    }

    /// Returns at once while the lease is certain; otherwise pings the session, which
    /// renews the lease or finds the role gone (then the session must be dropped).
    pub async fn ensure_held(&mut self) -> Result<(), RoleLost> {
        if self.lost {
            return Err(RoleLost::AlreadyLost { role: self.role });
        }
        if self.fresh() {
            return Ok(());
        }
        self.ping().await
    }

    #[tracing::instrument(skip_all, fields(role = self.role), err)]
    async fn ping(&mut self) -> Result<(), RoleLost> {
        let sent = Instant::now();
        let deadline = self.heartbeat_every();
        // `ping` sends a protocol Sync alone and waits for ReadyForQuery: the backend
        // leaves and re-arms `idle_session_timeout` but runs no transaction.
        let result = match tokio::time::timeout(deadline, self.conn.ping()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(source)) => Err(RoleLost::Ended { role: self.role, source }),
            Err(_) => Err(RoleLost::Deadline { role: self.role, after: deadline }),
        };
        let label = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!(HEARTBEATS, "role" => self.role, "result" => label).increment(1);
        match result {
            Ok(()) => {
                self.lease_from = sent;
                Ok(())
            }
            Err(lost) => Err(self.mark_lost(lost)),
        }
    }

    /// Records the loss once and hands the reason back.
    fn mark_lost(&mut self, lost: RoleLost) -> RoleLost {
        if !self.lost {
            self.lost = true;
            metrics::counter!(LOST, "role" => self.role).increment(1);
            tracing::warn!(role = self.role, error = %lost, "role lost");
        }
        lost
    }

    /// Runs `work` on the session after making sure the role is still held, with the
    /// timeout as a deadline. `work`'s own error is the caller's to judge (a rejected
    /// statement need not mean the role is gone); an `Ok` renews the lease. A missed
    /// deadline leaves the connection mid-protocol, so the role counts as lost.
    pub async fn run<T, E>(
        &mut self,
        work: impl AsyncFnOnce(&mut PgConnection) -> Result<T, E>,
    ) -> Result<Result<T, E>, RoleLost> {
        self.ensure_held().await?;
        let sent = Instant::now();
        match tokio::time::timeout(self.timeout, work(&mut self.conn)).await {
            Ok(result) => {
                if result.is_ok() {
                    self.lease_from = sent;
                }
                Ok(result)
            }
            Err(_) => Err(self.mark_lost(RoleLost::Deadline { role: self.role, after: self.timeout })),
        }
    }

    /// Awaits `work` (which must not need this session), pinging the session whenever
    /// a heartbeat is due, so that a long wait or a slow broker does not cost the role.
    pub async fn keep_alive_while<F: Future>(&mut self, work: F) -> Result<F::Output, RoleLost> {
        let work = std::pin::pin!(work);
        let mut work = work;
        loop {
            self.ensure_held().await?;
            let due = tokio::time::Instant::from_std(self.heartbeat_due());
            tokio::select! {
                biased;
                output = &mut work => return Ok(output),
                _ = tokio::time::sleep_until(due) => {}
            }
        }
    }

    /// Marks the role lost after the caller saw the session fail, so that it is
    /// counted once and never used again.
    pub fn failed(&mut self, source: sqlx::Error) -> RoleLost {
        self.mark_lost(RoleLost::Ended { role: self.role, source })
    }

    /// Ends the session, which releases whatever it holds at once.
    pub async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.conn.close()).await;
    }
}
