//! The rskafka client every process builds the same way: brokers trimmed, a client
//! id naming the process, and a deadline on the connect.

use std::time::Duration;

use rskafka::client::{Client, ClientBuilder};
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;

/// A builder for `brokers` (surrounding spaces dropped) announcing itself as `client_id`.
pub fn client_builder(brokers: &[String], client_id: &str) -> ClientBuilder {
    let brokers = brokers.iter().map(|b| b.trim()).filter(|b| !b.is_empty()).map(str::to_owned).collect();
    ClientBuilder::new(brokers).client_id(client_id)
}

/// A client, or why none: the broker refused or did not answer within `timeout`.
pub async fn connect(brokers: &[String], client_id: &str, timeout: Duration) -> anyhow::Result<Client> {
    match tokio::time::timeout(timeout, client_builder(brokers, client_id).build()).await {
        Ok(client) => Ok(client?),
        Err(_) => anyhow::bail!("the broker did not answer within {timeout:?}"),
    }
}

/// A client, retried with backoff until the broker answers; `None` once `shutdown`
/// is cancelled.
pub async fn connect_until_shutdown(
    brokers: &[String],
    client_id: &str,
    backoff: &mut Backoff,
    shutdown: &CancellationToken,
) -> Option<Client> {
    loop {
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return None,
            attempt = connect(brokers, client_id, Duration::from_secs(10)) => attempt,
        };
        match attempt {
            Ok(client) => return Some(client),
            Err(error) => tracing::warn!(error = format!("{error:#}"), "cannot reach the broker yet"),
        }
        if super::shutdown::sleep_or_shutdown(backoff.next_delay(), shutdown).await {
            return None;
        }
    }
}

/// Whether a broker answers a metadata request within 2 s. A fresh client each time,
/// so that a frozen broker (accepting connections, answering nothing) shows as down.
pub async fn answers(brokers: &[String], client_id: &str) -> bool {
    let check = async {
        let client = connect(brokers, client_id, Duration::from_secs(2)).await?;
        anyhow::Ok(client.list_topics().await?)
    };
    matches!(tokio::time::timeout(Duration::from_secs(2), check).await, Ok(Ok(_)))
}
