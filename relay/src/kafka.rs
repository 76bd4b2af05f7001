//! The relay's Kafka client: creates the topic when missing and wraps every rskafka
//! call with a timeout and `result=success|error` metrics.

use std::{future::Future, sync::Arc, time::Duration, time::Instant};

use rskafka::{
    client::{
        partition::{Compression, OffsetAt, PartitionClient, UnknownTopicHandling},
        Client,
    },
    record::{Record, RecordAndOffset},
    BackoffConfig,
};

use rsvp_contract::runtime::kafka;

use crate::{config::Settings, error::RelayError, leader, metric_names};

/// What to do when the topic does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicMode {
    /// Create it with this many partitions (the relay and replay).
    CreateIfMissing(i32),
    /// Fail with [`RelayError::TopicMissing`] (audit: a missing topic is a finding).
    MustExist,
}

/// A connected client with one partition client per partition of the topic.
pub struct Kafka {
    _client: Client,
    topic: String,
    partitions: Vec<Arc<PartitionClient>>,
    compression: Compression,
    timeout: Duration,
}

impl std::fmt::Debug for Kafka {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Kafka").field("topic", &self.topic).field("partitions", &self.partitions.len()).finish()
    }
}

/// Runs one Kafka call with a deadline and records its outcome.
async fn call<T>(
    op: &'static str,
    timeout: Duration,
    fut: impl Future<Output = Result<T, rskafka::client::error::Error>>,
) -> Result<T, RelayError> {
    let started = Instant::now();
    let result = match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(RelayError::Kafka { op, source }),
        Err(_) => Err(RelayError::KafkaTimeout { op, after: timeout }),
    };
    let outcome = if result.is_ok() { "success" } else { "error" };
    let elapsed = started.elapsed().as_secs_f64();
    metrics::counter!(metric_names::KAFKA_REQUESTS, "op" => op, "result" => outcome).increment(1);
    metrics::histogram!(metric_names::KAFKA_REQUEST_DURATION, "op" => op, "result" => outcome).record(elapsed);
    if op == "produce" {
        metrics::histogram!(metric_names::PUBLISH_DURATION, "result" => outcome).record(elapsed);
    }
    result
}

impl Kafka {
    /// Connects, makes sure the topic exists and opens a client per partition.
    #[tracing::instrument(skip_all, fields(topic = %settings.kafka.topic), err)]
    pub async fn connect(settings: &Settings, mode: TopicMode) -> Result<Self, RelayError> {
        let timeout = settings.kafka_timeout;
        // rskafka retries internally forever by default; bound it so our own backoff,
        // metrics and shutdown stay in charge.
        let backoff = BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            base: 2.0,
            deadline: Some(timeout),
        };
        let builder = kafka::client_builder(&settings.kafka.brokers, leader::APPLICATION_NAME);
        let client = call("connect", timeout, builder.backoff_config(backoff).build()).await?;
        let topic = settings.kafka.topic.clone();
        let mut count = Self::partition_count(&client, &topic, timeout).await?;
        if count.is_none() {
            let TopicMode::CreateIfMissing(partitions) = mode else {
                return Err(RelayError::TopicMissing(topic));
            };
            let controller =
                client.controller_client().map_err(|source| RelayError::Kafka { op: "create_topic", source })?;
            match call("create_topic", timeout, controller.create_topic(&topic, partitions, 1, 5_000)).await {
                Ok(()) => tracing::info!(%topic, partitions, "created the topic"),
                // Another relay created it first: fine, its partition count is read below.
                Err(error) => tracing::warn!(%error, %topic, "creating the topic failed; reading it again"),
            }
            count = Self::partition_count(&client, &topic, timeout).await?;
        }
        let count = count.ok_or_else(|| RelayError::TopicMissing(topic.clone()))?;
        if let TopicMode::CreateIfMissing(wanted) = mode {
            if wanted != count {
                tracing::warn!(%topic, wanted, actual = count, "the topic exists with another partition count; partitioning by the actual count");
            }
        }
        let handling = match mode {
            TopicMode::CreateIfMissing(_) => UnknownTopicHandling::Retry,
            TopicMode::MustExist => UnknownTopicHandling::Error,
        };
        let mut partitions = Vec::with_capacity(count as usize);
        for partition in 0..count {
            let client =
                call("partition_client", timeout, client.partition_client(topic.clone(), partition, handling)).await?;
            partitions.push(Arc::new(client));
        }
        Ok(Self { _client: client, topic, partitions, compression: settings.compression.to_rskafka(), timeout })
    }

    async fn partition_count(client: &Client, topic: &str, timeout: Duration) -> Result<Option<i32>, RelayError> {
        let topics = call("list_topics", timeout, client.list_topics()).await?;
        Ok(topics.into_iter().find(|t| t.name == topic).map(|t| t.partitions.len() as i32).filter(|n| *n > 0))
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn partitions(&self) -> i32 {
        self.partitions.len() as i32
    }

    /// A cheap handle for producing to `partition` from a spawned task.
    pub fn producer(&self, partition: i32) -> PartitionProducer {
        PartitionProducer {
            client: Arc::clone(&self.partitions[partition as usize]),
            compression: self.compression,
            timeout: self.timeout,
        }
    }

    /// Records from `offset` on, and the partition's high watermark.
    pub async fn fetch(&self, partition: i32, offset: i64) -> Result<(Vec<RecordAndOffset>, i64), RelayError> {
        let client = &self.partitions[partition as usize];
        call("fetch", self.timeout, client.fetch_records(offset, 1..4 * 1024 * 1024, 100)).await
    }

    /// The earliest offset the broker still holds.
    pub async fn earliest_offset(&self, partition: i32) -> Result<i64, RelayError> {
        let client = &self.partitions[partition as usize];
        call("list_offsets", self.timeout, client.get_offset(OffsetAt::Earliest)).await
    }
}

/// Produces to one partition; at most one of its batches is in flight at a time
/// because the relay awaits each step's produce calls before reading more rows.
#[derive(Clone)]
pub struct PartitionProducer {
    client: Arc<PartitionClient>,
    compression: Compression,
    timeout: Duration,
}

impl PartitionProducer {
    pub fn partition(&self) -> i32 {
        self.client.partition()
    }

    /// Publishes `records` as one batch; returns their offsets once the broker acknowledged.
    pub async fn produce(&self, records: Vec<Record>) -> Result<Vec<i64>, RelayError> {
        call("produce", self.timeout, self.client.produce(records, self.compression)).await
    }
}
