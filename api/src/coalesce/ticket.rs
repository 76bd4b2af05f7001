//! Who decides whether a queued write still runs: its request or the lane worker.
//!
//! A request waits for its write until its deadline; the worker starts the write
//! only if the request is still waiting. Both sides move one atomic state, so that
//! exactly one of them wins: either the worker starts the write (and a request that
//! gives up afterwards must say the outcome is unknown), or the request gives up
//! first (and the write is never applied).

use std::sync::{
    atomic::{AtomicU8, Ordering},
    Arc,
};

use tokio::time::Instant;

const QUEUED: u8 = 0;
const ABANDONED: u8 = 1;
const RUNNING: u8 = 2;
const GONE: u8 = 3;

/// The shared state of one queued write.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ticket(Arc<AtomicU8>);

/// What a request that gives up can tell its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GaveUp {
    /// The write never started and never will.
    BeforeStart,
    /// The write was inside a transaction: it may commit.
    WhileRunning,
}

impl Ticket {
    /// The worker's side: true when the write may run now, in a transaction that is
    /// about to write it. False when its request has given up or its `deadline` has
    /// passed (the request is about to give up), and then it never runs.
    pub(crate) fn start(&self, deadline: Instant) -> bool {
        if Instant::now() >= deadline {
            let _ = self.0.compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire);
            return false;
        }
        self.0.compare_exchange(QUEUED, RUNNING, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// The worker's side, after the transaction that ran the write rolled back: the
    /// write is queued again and may be retried, unless its request gave up while it
    /// ran (that request was told the outcome is unknown; it stays not applied).
    pub(crate) fn requeue(&self) {
        let _ = self.0.compare_exchange(RUNNING, QUEUED, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The request's side, at its deadline or when it is dropped.
    pub(crate) fn give_up(&self) -> GaveUp {
        match self.0.compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) | Err(ABANDONED) => GaveUp::BeforeStart,
            Err(_) => {
                self.0.store(GONE, Ordering::Release);
                GaveUp::WhileRunning
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn a_write_given_up_before_it_starts_never_starts() {
        let ticket = Ticket::default();
        assert_eq!(ticket.give_up(), GaveUp::BeforeStart);
        assert!(!ticket.start(later()));
    }

    #[test]
    fn a_write_past_its_deadline_never_starts() {
        let ticket = Ticket::default();
        assert!(!ticket.start(Instant::now()));
        assert_eq!(ticket.give_up(), GaveUp::BeforeStart);
    }

    #[test]
    fn giving_up_on_a_running_write_leaves_its_outcome_unknown_and_stops_its_retries() {
        let ticket = Ticket::default();
        assert!(ticket.start(later()));
        assert_eq!(ticket.give_up(), GaveUp::WhileRunning);
        ticket.requeue();
        assert!(!ticket.start(later()));
    }

    #[test]
    fn a_rolled_back_write_can_start_again() {
        let ticket = Ticket::default();
        assert!(ticket.start(later()));
        ticket.requeue();
        assert!(ticket.start(later()));
    }
}
