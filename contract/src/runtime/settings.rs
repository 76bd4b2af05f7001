//! The settings every process reads, flattened into each binary's `Settings`, so
//! that one environment configures all three alike.
//!
//! Each binary gives `ADMIN_ADDR` its own default port with
//! `#[command(mut_arg("admin_addr", ...))]`, so that the three can share a host.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};

use super::secret::Secret;

// A binary's command line: a subcommand (none runs the process) and its settings.
// The binary's display name, version and description are `#[command]` attributes of its
// settings, which apply to the command they are flattened into; a doc comment here
// would replace the description.
#[derive(Debug, Parser)]
pub struct Cli<C: Subcommand, S: Args> {
    #[command(subcommand)]
    pub command: Option<C>,

    #[command(flatten)]
    pub settings: S,
}

/// The topic the relay publishes to and the consumers read.
pub const DEFAULT_TOPIC: &str = "rsvp-events";

/// What every process needs: its database and its admin port.
#[derive(Debug, Clone, Args)]
pub struct CommonSettings {
    /// PostgreSQL connection string of the api's database: the outbox, and the relay's
    /// and the consumers' state unless configured apart.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://root@127.0.0.1:5432/rsvp",
        hide_default_value = true,
        hide_env_values = true,
        global = true
    )]
    pub database_url: Secret<String>,

    /// Address of the admin port: /metrics, /healthz, /readyz.
    #[arg(long, env = "ADMIN_ADDR", default_value = "127.0.0.1:9464", global = true)]
    pub admin_addr: SocketAddr,
}

/// Where the events are: for the relay, which publishes them, and the consumers.
#[derive(Debug, Clone, Args)]
pub struct KafkaSettings {
    /// Kafka bootstrap brokers, comma-separated `host:port`.
    #[arg(
        long = "kafka-brokers",
        env = "KAFKA_BROKERS",
        default_value = "127.0.0.1:9092",
        value_delimiter = ',',
        global = true
    )]
    pub brokers: Vec<String>,

    /// The topic of the events: the relay publishes to it (and names its cursor and
    /// leader lock after it), the consumers read it.
    #[arg(long = "topic", env = "KAFKA_TOPIC", default_value = DEFAULT_TOPIC, global = true)]
    pub topic: String,

    /// The relay's old name of KAFKA_TOPIC, still read (with a warning) when
    /// KAFKA_TOPIC is unset.
    #[arg(long = "relay-topic", env = "RELAY_TOPIC", hide = true, global = true)]
    pub deprecated_relay_topic: Option<String>,
}

impl KafkaSettings {
    /// Applies `RELAY_TOPIC` when `KAFKA_TOPIC` is not set, and warns either way that
    /// it is deprecated. Call once logging is set up.
    pub fn apply_deprecated_names(&mut self) {
        let Some(relay_topic) = self.deprecated_relay_topic.take() else { return };
        if std::env::var_os("KAFKA_TOPIC").is_none() && self.topic == DEFAULT_TOPIC {
            tracing::warn!(topic = %relay_topic, "RELAY_TOPIC is deprecated: set KAFKA_TOPIC instead");
            self.topic = relay_topic;
        } else {
            tracing::warn!(topic = %self.topic, ignored = %relay_topic, "RELAY_TOPIC is deprecated and ignored: KAFKA_TOPIC is set");
        }
    }

    /// Rejects an empty broker list or topic.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.brokers.iter().any(|b| !b.trim().is_empty()),
            "KAFKA_BROKERS must name at least one broker"
        );
        anyhow::ensure!(!self.topic.is_empty(), "KAFKA_TOPIC must not be empty");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    #[command(mut_arg("admin_addr", |arg| arg.default_value("127.0.0.1:9999")))]
    struct Settings {
        #[command(flatten)]
        common: CommonSettings,
        #[command(flatten)]
        kafka: KafkaSettings,
    }

    #[test]
    fn brokers_are_a_comma_separated_list_and_each_binary_picks_its_admin_port() {
        let settings = Settings::parse_from(["test", "--kafka-brokers", "a:1,b:2"]);
        assert_eq!(settings.kafka.brokers, ["a:1", "b:2"]);
        assert_eq!(settings.kafka.topic, DEFAULT_TOPIC);
        assert_eq!(settings.common.admin_addr.to_string(), "127.0.0.1:9999");
        assert_eq!(format!("{:?}", settings.common.database_url), "[redacted]");
    }

    #[test]
    fn the_deprecated_relay_topic_is_used_only_without_a_topic() {
        let mut settings = Settings::parse_from(["test", "--relay-topic", "old"]);
        settings.kafka.apply_deprecated_names();
        assert_eq!(settings.kafka.topic, "old");
        let mut settings = Settings::parse_from(["test", "--relay-topic", "old", "--topic", "new"]);
        settings.kafka.apply_deprecated_names();
        assert_eq!(settings.kafka.topic, "new");
        assert_eq!(settings.kafka.deprecated_relay_topic, None);
    }
}
