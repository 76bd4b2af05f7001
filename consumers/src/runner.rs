//! A group's run loop: share the partitions out between the live instances, run one
//! worker task per owned partition, and stop them all on shutdown. Every wait keeps
//! the role sessions (membership, partitions) busy; a worker whose session is gone
//! gives its partition up and the next rebalance balances again.

use std::{collections::BTreeMap, sync::Arc, time::Duration, time::Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    context::GroupContext,
    metric_names,
    ownership::{fair_share, Membership},
    pacing::IdlePacing,
    wakeup::pause_unless_woken,
    worker::{PartitionWorker, StepOutcome},
};

struct Owned {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

pub struct GroupRunner {
    ctx: Arc<GroupContext>,
    instance_id: Uuid,
    membership: Option<Membership>,
    owned: BTreeMap<i32, Owned>,
    /// Workers told to stop that may still be finishing their batch.
    releasing: Vec<JoinHandle<()>>,
}

impl GroupRunner {
    pub fn new(ctx: Arc<GroupContext>, instance_id: Uuid) -> Self {
        Self { ctx, instance_id, membership: None, owned: BTreeMap::new(), releasing: Vec::new() }
    }

    /// Rebalances every `rebalance_interval` until `shutdown`, then stops every worker.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.ctx.settings.rebalance_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = async {
                tokio::select! {
                    _ = shutdown.cancelled() => true,
                    _ = tick.tick() => false,
                }
            };
            let stopping = match self.membership.as_mut() {
                Some(membership) => match membership.session().keep_alive_while(next).await {
                    Ok(stopping) => stopping,
                    Err(error) => {
                        tracing::warn!(group = self.ctx.group.name(), %error, "membership lost; joining again");
                        self.membership = None;
                        false
                    }
                },
                None => next.await,
            };
            if stopping {
                break;
            }
            if let Err(error) = self.rebalance().await {
                tracing::warn!(group = self.ctx.group.name(), error = format!("{error:#}"), "rebalancing failed");
            }
        }
        for (_, owned) in std::mem::take(&mut self.owned) {
            owned.stop.cancel();
            self.releasing.push(owned.task);
        }
        for task in self.releasing.drain(..) {
            let _ = task.await;
        }
        if let Some(membership) = self.membership.take() {
            membership.leave().await;
        }
        metrics::gauge!(metric_names::OWNED_PARTITIONS, "group" => self.ctx.group.name()).set(0.0);
    }

    /// Counts the live instances, gives up partitions above this instance's fair share
    /// and takes free ones up to it.
    #[tracing::instrument(skip_all, fields(group = self.ctx.group.name()), err)]
    pub async fn rebalance(&mut self) -> anyhow::Result<()> {
        self.owned.retain(|_, o| !o.task.is_finished());
        self.releasing.retain(|t| !t.is_finished());
        let members = self.live_members().await?;
        let partitions = self.partitions().await?;
        let share = fair_share(partitions.len(), members);
        while self.owned.len() > share {
            let Some((partition, owned)) = self.owned.pop_last() else { break };
            tracing::info!(partition, members, share, "giving a partition up to another instance");
            owned.stop.cancel();
            self.releasing.push(owned.task);
        }
        // Start at a different partition per instance, so that instances joining
        // together mostly try different locks.
        let start = usize::try_from(self.instance_id.as_u128() % partitions.len().max(1) as u128).unwrap_or(0);
        let order = partitions.iter().cycle().skip(start).take(partitions.len());
        for &partition in order {
            if self.owned.len() >= share {
                break;
            }
            if self.owned.contains_key(&partition) {
                continue;
            }
            if let Some(worker) = PartitionWorker::acquire(self.ctx.clone(), partition).await? {
                let stop = CancellationToken::new();
                let task = tokio::spawn(run_worker(worker, self.ctx.clone(), stop.clone()));
                self.owned.insert(partition, Owned { stop, task });
            }
        }
        metrics::gauge!(metric_names::OWNED_PARTITIONS, "group" => self.ctx.group.name()).set(self.owned.len() as f64);
        Ok(())
    }

    async fn live_members(&mut self) -> anyhow::Result<usize> {
        if self.membership.is_none() {
            let timeout = self.ctx.settings.role_loss_timeout;
            self.membership =
                Some(Membership::join(&self.ctx.store_url, self.ctx.group, self.instance_id, timeout).await?);
        }
        let membership = self.membership.as_mut().expect("joined above");
        match membership.live_members().await {
            Ok(members) => Ok(members),
            Err(error) => {
                // Join again on the next tick, with a new connection.
                self.membership = None;
                Err(error.into())
            }
        }
    }

    /// The topic's partitions; none until the relay created it.
    async fn partitions(&self) -> anyhow::Result<Vec<i32>> {
        let topics = self.ctx.kafka.list_topics().await?;
        let mut partitions: Vec<i32> = topics
            .into_iter()
            .find(|t| t.name == self.ctx.topic)
            .map(|t| t.partitions.into_iter().collect())
            .unwrap_or_default();
        if partitions.is_empty() {
            tracing::info!(topic = self.ctx.topic, "the topic does not exist yet");
        }
        partitions.sort_unstable();
        Ok(partitions)
    }
}

/// Steps one partition until told to stop or until it loses ownership.
async fn run_worker(mut worker: PartitionWorker, ctx: Arc<GroupContext>, stop: CancellationToken) {
    let mut backoff = ctx.settings.backoff.clone();
    let mut pacing = IdlePacing::new(ctx.settings.poll_interval, ctx.settings.idle_poll_max);
    let (signal, wake_gap) = (ctx.wakeups.signal(ctx.group, worker.partition()), ctx.consumer.wake_gap());
    loop {
        // A heartbeat when due; after a pause, the partition may be another's by now.
        if let Err(error) = worker.role().ensure_held().await {
            tracing::warn!(partition = worker.partition(), %error, "giving the partition up");
            break;
        }
        let started = Instant::now();
        // Stopping mid-batch is safe: the transaction rolls back, the offset stays.
        let outcome = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            outcome = worker.step() => outcome,
        };
        let pause = match outcome {
            Ok(StepOutcome::Processed { .. }) if !worker.caught_up() => {
                backoff.reset();
                pacing.reset();
                Duration::ZERO
            }
            // Also after a batch that left nothing behind it: fetching again at once
            // mostly finds nothing or a record or two, each costing a transaction.
            Ok(StepOutcome::Processed { .. }) => {
                backoff.reset();
                pacing.after_records(started.elapsed())
            }
            Ok(StepOutcome::CaughtUp) => {
                backoff.reset();
                pacing.after_empty(started.elapsed())
            }
            Err(error) if error.keeps_ownership() => {
                pacing.reset();
                let delay = backoff.next_delay();
                tracing::warn!(
                    partition = worker.partition(),
                    error = format!("{:#}", anyhow::Error::new(error)),
                    ?delay,
                    "step failed; retrying"
                );
                delay
            }
            Err(error) => {
                tracing::error!(
                    partition = worker.partition(),
                    error = format!("{:#}", anyhow::Error::new(error)),
                    "giving the partition up"
                );
                break;
            }
        };
        if !pause.is_zero() {
            let gap = wake_gap.saturating_sub(started.elapsed());
            match worker.role().keep_alive_while(pause_unless_woken(pause, gap, &signal, &stop)).await {
                Ok(false) => {}
                Ok(true) => break,
                Err(error) => {
                    tracing::warn!(partition = worker.partition(), %error, "giving the partition up");
                    break;
                }
            }
        }
    }
    worker.release().await;
}
