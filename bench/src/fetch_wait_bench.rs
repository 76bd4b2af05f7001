//! What the broker does with a fetch's `max_wait` (min_bytes 1): how long an empty
//! fetch takes, whether a record produced while a fetch waits ends the wait, and how
//! long a fetch takes when a record is already there. The consumers' pacing of idle
//! partitions (`IDLE_POLL_MAX`, `FETCH_MAX_WAIT` 0) rests on these figures.

use std::time::{Duration, Instant};

use rskafka::{
    client::{
        partition::{Compression, UnknownTopicHandling},
        ClientBuilder,
    },
    record::Record,
};
use rsvp_contract::testing::Broker;

use crate::report::Report;

const TOPIC: &str = "fetch-wait";

pub(crate) struct FetchWaitBench;

fn record() -> Record {
    Record {
        key: Some(b"k".to_vec()),
        value: Some(b"v".to_vec()),
        headers: Default::default(),
        timestamp: chrono::Utc::now(),
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

impl FetchWaitBench {
    pub(crate) async fn run(&self, report: &mut Report) -> anyhow::Result<()> {
        let broker = Broker::start().await;
        let client = ClientBuilder::new(vec![broker.address()]).build().await?;
        client.controller_client()?.create_topic(TOPIC, 1, 1, 5_000).await?;
        let partition = std::sync::Arc::new(client.partition_client(TOPIC, 0, UnknownTopicHandling::Retry).await?);
        let mut table = String::from(
            "| max_wait | empty fetch took | record produced 50 ms into the fetch: fetch took, records it returned | \
             record already there: fetch took |\n|---:|---:|---:|---:|\n",
        );
        let mut next = partition.produce(vec![record()], Compression::NoCompression).await?[0] + 1;
        for max_wait in [0, 10, 100, 250, 500, 1000] {
            // Empty: nothing after `next`.
            let started = Instant::now();
            let (records, _) = partition.fetch_records(next, 1..1_000_000, max_wait).await?;
            anyhow::ensure!(records.is_empty(), "nothing was produced after offset {next}");
            let empty = started.elapsed();
            // A record produced while the fetch waits.
            let producer = partition.clone();
            let produce = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                producer.produce(vec![record()], Compression::NoCompression).await
            });
            let started = Instant::now();
            let (during, _) = partition.fetch_records(next, 1..1_000_000, max_wait).await?;
            let arriving = started.elapsed();
            produce.await??;
            // The record is there now.
            let started = Instant::now();
            let (there, _) = partition.fetch_records(next, 1..1_000_000, max_wait).await?;
            let present = started.elapsed();
            anyhow::ensure!(!there.is_empty(), "the produced record is not fetched");
            next = there.last().map_or(next, |r| r.offset + 1);
            table.push_str(&format!(
                "| {max_wait} ms | {:.1} ms | {:.1} ms, {} | {:.1} ms |\n",
                ms(empty),
                ms(arriving),
                during.len(),
                ms(present)
            ));
        }
        report.section(
            "Broker: what a fetch's max_wait does (Tansu)",
            &format!(
                "{table}\nOne partition, fetches of at least 1 byte (rskafka's `fetch_records`), Tansu in memory. \
                 A broker that long-polls answers an empty fetch after `max_wait` and a fetch as soon as a \
                 record arrives; one that ignores `max_wait` answers at once.\n"
            ),
        );
        Ok(())
    }
}
