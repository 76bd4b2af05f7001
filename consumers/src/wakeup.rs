//! Wakes partition workers when the relay says their partition got records
//! (`rsvp_contract::published`), so that a waiting worker fetches at once instead of
//! at its next poll. One LISTEN connection per process serves every group; while it
//! is down the workers only poll, as they always also do.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use rsvp_contract::{
    published,
    runtime::{backoff::Backoff, shutdown::sleep_or_shutdown},
};
use sqlx::{postgres::PgListener, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::group::Group;

/// Every worker's wake-up signal, by group and partition.
pub struct Wakeups {
    topic: String,
    signals: Mutex<HashMap<(&'static str, i32), Arc<Notify>>>,
}

impl Wakeups {
    pub fn new(topic: &str) -> Arc<Self> {
        Arc::new(Self { topic: topic.to_owned(), signals: Mutex::default() })
    }

    /// The signal of `group`'s worker on `partition`: notified after the relay
    /// published to the partition. A notification while nobody waits is kept for the
    /// next wait.
    pub fn signal(&self, group: Group, partition: i32) -> Arc<Notify> {
        let mut signals = self.signals.lock().expect("wake-up signals");
        signals.entry((group.name(), partition)).or_default().clone()
    }

    fn wake(&self, partitions: &[i32]) {
        let signals = self.signals.lock().expect("wake-up signals");
        for ((_, partition), signal) in signals.iter() {
            if partitions.contains(partition) {
                signal.notify_one();
            }
        }
    }

    /// After notifications may have been missed: every worker fetches once.
    fn wake_all(&self) {
        self.signals.lock().expect("wake-up signals").values().for_each(|signal| signal.notify_one());
    }

    fn on_payload(&self, payload: &str) {
        if let Some(published) = published::parse(payload).filter(|p| p.topic == self.topic) {
            self.wake(&published.partitions);
        }
    }
}

/// Listens for the relay's notifications until `shutdown`, connecting again (with
/// `backoff`) whenever the connection fails.
pub async fn listen(wakeups: Arc<Wakeups>, pool: PgPool, mut backoff: Backoff, shutdown: CancellationToken) {
    loop {
        let error = match connect(&pool).await {
            Ok(listener) => {
                backoff.reset();
                receive(&wakeups, listener, &shutdown).await
            }
            Err(error) => Some(error),
        };
        let Some(error) = error else { return };
        let delay = backoff.next_delay();
        tracing::warn!(%error, retry_in = ?delay, "cannot LISTEN for the relay's wake-ups; partitions only poll until it works");
        if sleep_or_shutdown(delay, &shutdown).await {
            return;
        }
    }
}

async fn connect(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(published::CHANNEL).await?;
    Ok(listener)
}

/// Wakes workers until shutdown (`None`) or until the connection fails.
async fn receive(wakeups: &Wakeups, mut listener: PgListener, shutdown: &CancellationToken) -> Option<sqlx::Error> {
    // Records may have been published while nobody listened.
    wakeups.wake_all();
    loop {
        let received = tokio::select! {
            _ = shutdown.cancelled() => return None,
            received = listener.try_recv() => received,
        };
        match received {
            Ok(Some(notification)) => wakeups.on_payload(notification.payload()),
            // The connection dropped; the next receive connects again, and whatever
            // was notified meanwhile is lost.
            Ok(None) => wakeups.wake_all(),
            Err(error) => return Some(error),
        }
    }
}

/// Waits `pause`, or until the relay wakes `signal` and `gap` has passed; true when
/// `stop` was cancelled.
pub async fn pause_unless_woken(pause: Duration, gap: Duration, signal: &Notify, stop: &CancellationToken) -> bool {
    let gap_over = tokio::time::Instant::now() + gap;
    let woken = async {
        signal.notified().await;
        tokio::time::sleep_until(gap_over).await;
    };
    tokio::select! {
        stopped = sleep_or_shutdown(pause, stop) => stopped,
        () = woken => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPIC: &str = "rsvp-events";
    const CACHE: Group = Group::new("cache");
    const ANALYTICS: Group = Group::new("analytics");

    #[tokio::test(start_paused = true)]
    async fn a_notification_wakes_every_group_on_its_partitions_only_and_after_the_gap() {
        let wakeups = Wakeups::new(TOPIC);
        let (cache_1, analytics_1, cache_2) =
            (wakeups.signal(CACHE, 1), wakeups.signal(ANALYTICS, 1), wakeups.signal(CACHE, 2));
        let stop = CancellationToken::new();
        wakeups.on_payload("another-topic 1");
        wakeups.on_payload("rsvp-events 1,3");
        let second = Duration::from_secs(1);
        let started = tokio::time::Instant::now();
        assert!(!pause_unless_woken(10 * second, Duration::ZERO, &cache_1, &stop).await);
        assert_eq!(started.elapsed(), Duration::ZERO, "woken at once");
        assert!(!pause_unless_woken(10 * second, second, &analytics_1, &stop).await);
        assert_eq!(started.elapsed(), second, "woken once the gap passed");
        assert!(!pause_unless_woken(10 * second, Duration::ZERO, &cache_2, &stop).await);
        assert_eq!(started.elapsed(), 11 * second, "partition 2 was not published to: the whole pause");
        wakeups.wake_all();
        assert!(!pause_unless_woken(10 * second, Duration::ZERO, &cache_2, &stop).await);
        assert_eq!(started.elapsed(), 11 * second);
        stop.cancel();
        assert!(pause_unless_woken(10 * second, Duration::ZERO, &cache_2, &stop).await);
    }
}
