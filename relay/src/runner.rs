//! The `run` loop: stand by until this process holds the leader lock, then publish
//! step by step, woken by commit notifications or the poll interval, backing off on
//! failures, until shutdown or until the leader session is lost. While nothing
//! happens the poll interval stretches ([`IdleWait`]), so an idle leader costs
//! Postgres next to nothing.

use std::time::{Duration, Instant};

use rsvp_contract::runtime::shutdown::sleep_or_shutdown;
use sqlx::{
    postgres::{PgConnectOptions, PgListener},
    PgPool,
};
use tokio_util::sync::CancellationToken;

use crate::{
    config::Settings,
    error::RelayError,
    leader::{self, Candidate, Leader},
    metric_names,
    observe::Observer,
    prune,
    worker::{StepOutcome, Worker},
};

/// The channel the outbox trigger notifies on commit.
pub const CHANNEL: &str = "outbox_inserted";

/// Runs until `shutdown` is cancelled: elects, publishes, observes and prunes.
pub async fn run(settings: Settings, pool: PgPool, shutdown: CancellationToken) -> Result<(), RelayError> {
    let options = leader::connect_options(settings.common.database_url.expose())?;
    let observer = tokio::spawn(observe_loop(
        Observer::new(pool.clone(), &settings.kafka.topic, settings.stall_warning),
        settings.observe_interval,
        shutdown.clone(),
    ));
    let mut backoff = settings.backoff();
    while let Some(leader) = wait_for_leadership(&options, &settings, &shutdown).await {
        metrics::gauge!(metric_names::LEADER).set(1.0);
        let result = lead(leader, &settings, &pool, &shutdown).await;
        metrics::gauge!(metric_names::LEADER).set(0.0);
        match result {
            Ok(()) => break,
            Err(error) => {
                error.record();
                tracing::warn!(%error, "stopped leading; standing by again");
                if sleep_or_shutdown(backoff.next_delay(), &shutdown).await {
                    break;
                }
            }
        }
    }
    observer.abort();
    Ok(())
}

/// Tries the lock every `leader_poll_interval`; `None` on shutdown.
async fn wait_for_leadership(
    options: &PgConnectOptions,
    settings: &Settings,
    shutdown: &CancellationToken,
) -> Option<Leader> {
    let mut backoff = settings.backoff();
    let mut candidate: Option<Candidate> = None;
    let mut announced = false;
    loop {
        if shutdown.is_cancelled() {
            return None;
        }
        let attempt = match candidate.take() {
            Some(waiting) => waiting.try_lead().await,
            None => match Candidate::connect(options, &settings.kafka.topic, settings.role_loss_timeout).await {
                Ok(connected) => connected.try_lead().await,
                Err(error) => Err(error),
            },
        };
        let delay = match attempt {
            Ok(Ok(leader)) => return Some(leader),
            Ok(Err(waiting)) => {
                if !announced {
                    tracing::info!("another relay leads; standing by");
                    announced = true;
                }
                candidate = Some(waiting);
                backoff.reset();
                settings.leader_poll_interval
            }
            Err(error) => {
                tracing::warn!(%error, "cannot reach postgres to take the leader lock");
                RelayError::from(error).record();
                backoff.next_delay()
            }
        };
        if sleep_or_shutdown(delay, shutdown).await {
            return None;
        }
    }
}

/// Publishes while leading. `Ok` on shutdown; `Err` when the leader session failed
/// or the lease ran out (every wait keeps the session busy, so only a pause, a cut
/// network or a dead database does that).
async fn lead(
    leader: Leader,
    settings: &Settings,
    pool: &PgPool,
    shutdown: &CancellationToken,
) -> Result<(), RelayError> {
    let mut worker = Worker::start(leader, settings.clone(), pool.clone()).await?;
    let term = shutdown.child_token();
    let _stop_pruning = term.clone().drop_guard();
    tokio::spawn(prune_loop(pool.clone(), settings.clone(), term));
    let mut listener = listen(pool).await;
    let mut backoff = settings.backoff();
    let mut recheck = Recheck::default();
    let mut idle = IdleWait::new(settings.poll_interval, settings.idle_poll_max);
    // A step in progress finishes (it is bounded by the Kafka timeout) so that what
    // the broker acknowledged is recorded before the process exits.
    while !shutdown.is_cancelled() {
        // Every wait keeps the leader session busy; a session lost meanwhile ends the lead.
        let waited = match worker.step().await {
            Ok(StepOutcome::Published { rows }) => {
                backoff.reset();
                recheck = Recheck::default();
                idle.reset(Instant::now());
                if rows < settings.batch_rows as usize && !settings.linger.is_zero() {
                    // Caught up: let the next rows gather instead of publishing them
                    // a row or two at a time.
                    worker.role().keep_alive_while(sleep_or_shutdown(settings.linger, shutdown)).await.map(drop)
                } else {
                    Ok(())
                }
            }
            Ok(StepOutcome::Idle) => {
                backoff.reset();
                match recheck.next_delay() {
                    Some(delay) => worker.role().keep_alive_while(sleep_or_shutdown(delay, shutdown)).await.map(drop),
                    None => {
                        // Without a LISTEN connection, polling is all there is.
                        let poll =
                            if listener.is_some() { idle.next_wait(Instant::now()) } else { settings.poll_interval };
                        let waiting = wait_for_commit(&mut listener, pool, poll, shutdown);
                        worker.role().keep_alive_while(waiting).await.map(|notified| {
                            if notified {
                                recheck = Recheck::after_notification();
                                idle.reset(Instant::now());
                            }
                        })
                    }
                }
            }
            Err(error @ (RelayError::Database(_) | RelayError::LostLeadership(_) | RelayError::CursorChanged)) => {
                worker.resign().await;
                return Err(error);
            }
            Err(error) => {
                error.record();
                let delay = backoff.next_delay();
                tracing::warn!(%error, retry_in = ?delay, "publishing failed; the cursor stays");
                worker.role().keep_alive_while(sleep_or_shutdown(delay, shutdown)).await.map(drop)
            }
        };
        if let Err(lost) = waited {
            worker.resign().await;
            return Err(lost.into());
        }
    }
    worker.resign().await;
    Ok(())
}

async fn listen(pool: &PgPool) -> Option<PgListener> {
    let result = async {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(CHANNEL).await?;
        Ok::<_, sqlx::Error>(listener)
    }
    .await;
    result.inspect_err(|error| tracing::warn!(%error, "cannot LISTEN; polling only until it works")).ok()
}

/// After a commit notification, rows may not be eligible yet: another transaction
/// that began earlier (any writer in the cluster, not only the api) still runs and
/// holds the snapshot's xmin. It usually ends within milliseconds, and its end
/// notifies nobody, so the relay looks again soon (every millisecond for the first
/// 16 ms, where nearly all such waits end, then 2, 4 … 64 ms apart, for up to about
/// 250 ms) instead of waiting for the next notification or the poll interval.
#[derive(Default)]
struct Recheck {
    next: Option<Duration>,
    spent: Duration,
}

impl Recheck {
    const FIRST: Duration = Duration::from_millis(1);
    /// Rechecks stay `FIRST` apart until this much time is spent: doubling from the
    /// start would see a 9 ms wait end only at 15 ms, in commit-to-ack's tail.
    const FLAT: Duration = Duration::from_millis(16);
    const MAX_STEP: Duration = Duration::from_millis(64);
    const BUDGET: Duration = Duration::from_millis(250);

    fn after_notification() -> Self {
        Self { next: Some(Self::FIRST), spent: Duration::ZERO }
    }

    fn next_delay(&mut self) -> Option<Duration> {
        let delay = self.next.filter(|_| self.spent < Self::BUDGET)?;
        self.spent += delay;
        self.next = Some(if self.spent < Self::FLAT { delay } else { (delay * 2).min(Self::MAX_STEP) });
        Some(delay)
    }
}

/// How long the leader waits for a commit notification before it looks anyway. The
/// look is needed because a row committed behind a longer transaction becomes
/// eligible when that transaction ends, which notifies nobody. For `max` after the
/// last notification or published row the leader looks every poll interval, so such
/// a row goes out within an interval of the transaction's end as long as it ended
/// within `max`; after that the waits double up to `max`, so an idle leader looks
/// only every `max`. A notification or a published row starts over.
#[derive(Debug)]
struct IdleWait {
    base: Duration,
    max: Duration,
    next: Duration,
    quiet_since: Instant,
}

impl IdleWait {
    fn new(base: Duration, max: Duration) -> Self {
        Self { base, max: max.max(base), next: base, quiet_since: Instant::now() }
    }

    fn next_wait(&mut self, now: Instant) -> Duration {
        if now.saturating_duration_since(self.quiet_since) < self.max {
            return self.base;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }

    fn reset(&mut self, now: Instant) {
        (self.next, self.quiet_since) = (self.base, now);
    }
}

/// Waits for a commit notification or the poll interval; true when notified.
async fn wait_for_commit(
    listener: &mut Option<PgListener>,
    pool: &PgPool,
    poll: Duration,
    shutdown: &CancellationToken,
) -> bool {
    let Some(active) = listener.as_mut() else {
        sleep_or_shutdown(poll, shutdown).await;
        *listener = listen(pool).await;
        return false;
    };
    tokio::select! {
        _ = shutdown.cancelled() => false,
        received = tokio::time::timeout(poll, active.try_recv()) => match received {
            // A notification, or the connection dropped and is being re-established:
            // either way there may be new rows.
            Ok(Ok(_)) => {
                while active.next_buffered().is_some() {}
                true
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "the LISTEN connection failed");
                *listener = None;
                false
            }
            Err(_) => false,
        },
    }
}

async fn observe_loop(mut observer: Observer, every: Duration, shutdown: CancellationToken) {
    loop {
        if let Err(error) = observer.tick().await {
            RelayError::from(error).record();
        }
        if sleep_or_shutdown(every, &shutdown).await {
            return;
        }
    }
}

async fn prune_loop(pool: PgPool, settings: Settings, term: CancellationToken) {
    loop {
        if sleep_or_shutdown(settings.prune_interval, &term).await {
            return;
        }
        match prune::prune_all(&pool, &settings.kafka.topic, settings.retention, settings.prune_batch).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "pruned published outbox rows past retention"),
            Err(error) => {
                tracing::warn!(%error, "pruning failed; trying again next interval");
                RelayError::from(error).record();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_waits_stay_at_the_poll_interval_for_their_maximum_then_double_up_to_it_and_start_over_on_reset() {
        let second = Duration::from_secs(1);
        let start = Instant::now();
        let mut idle = IdleWait::new(second, 10 * second);
        idle.reset(start);
        assert_eq!(idle.next_wait(start + 3 * second), second);
        assert_eq!(idle.next_wait(start + 9 * second), second);
        let waits: Vec<u64> = (0..6).map(|_| idle.next_wait(start + 11 * second).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10]);
        idle.reset(start + 12 * second);
        assert_eq!(idle.next_wait(start + 13 * second), second);
        assert_eq!(idle.next_wait(start + 30 * second), second);
        assert_eq!(idle.next_wait(start + 30 * second), 2 * second);
        let mut short = IdleWait::new(2 * second, second);
        assert_eq!(short.next_wait(start + 60 * second), 2 * second);
        assert_eq!(short.next_wait(start + 60 * second), 2 * second);
    }

    #[test]
    fn rechecks_back_off_and_stop_after_their_budget() {
        assert_eq!(Recheck::default().next_delay(), None, "no recheck without a notification");
        let mut recheck = Recheck::after_notification();
        let delays: Vec<Duration> = std::iter::from_fn(|| recheck.next_delay()).collect();
        assert_eq!(delays[..16], [Recheck::FIRST; 16]);
        assert_eq!(delays[16..19], [2, 4, 8].map(Duration::from_millis));
        assert!(delays.iter().all(|d| *d <= Recheck::MAX_STEP));
        let total: Duration = delays.iter().sum();
        assert!(total >= Recheck::BUDGET && total < Recheck::BUDGET + Recheck::MAX_STEP, "{total:?}");
    }
}
