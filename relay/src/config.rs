//! Settings from flags and environment, validated at start-up.

use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};
use rsvp_contract::runtime::{
    backoff::Backoff,
    settings::{self, CommonSettings, KafkaSettings},
};
use uuid::Uuid;

/// Default of `RELAY_MAX_BATCH_BYTES`: 48 KB under Kafka's default `message.max.bytes`
/// (1048588), which leaves room for the produce request around the batch.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 1_000_000;

/// Smallest `RELAY_MAX_BATCH_BYTES`: twice the api's 16 KiB body cap, far above the
/// largest row the api can write (a test checks that), so a row never exceeds it.
pub const MIN_MAX_BATCH_BYTES: usize = 32 * 1024;

/// The relay's command line.
pub type Cli = settings::Cli<Command, Settings>;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run migrations, then publish the outbox while this instance holds the leader lock (the default).
    Run,
    /// Publish already-published rows again, in commit order, with their original ids and headers.
    Replay(ReplayArgs),
    /// Check that every published row has a receipt and that Kafka holds its record there.
    Audit(AuditArgs),
    /// Delete rows published longer ago than the retention window, in small batches, and exit.
    Prune,
}

/// `ADMIN_ADDR` of the relay, beside the api's and the consumers'.
const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9465";

#[derive(Debug, Clone, Parser)]
#[command(
    display_name = "rsvp-relay",
    version,
    about = "Publishes every committed outbox row to Kafka, gap-safe and ordered per key",
    mut_arg("admin_addr", |arg| arg.default_value(DEFAULT_ADMIN_ADDR))
)]
pub struct Settings {
    #[command(flatten)]
    pub common: CommonSettings,

    #[command(flatten)]
    pub kafka: KafkaSettings,

    /// Partitions of the topic when the relay creates it. An existing topic keeps its
    /// own count, and records are partitioned by that count.
    #[arg(long, env = "RELAY_PARTITIONS", default_value_t = 6)]
    pub partitions: i32,

    /// Largest number of rows read and published in one step.
    #[arg(long, env = "RELAY_BATCH_ROWS", default_value_t = 1000)]
    pub batch_rows: u32,

    /// Largest number of bytes published in one step: the encoded record batches of all
    /// partitions together (bounds the memory of a step; a single larger row still goes
    /// alone).
    #[arg(long, env = "RELAY_BATCH_BYTES", default_value_t = 1024 * 1024)]
    pub batch_bytes: usize,

    /// Largest encoded size of one partition's record batch (uncompressed, with its
    /// header): keep it below the broker's `message.max.bytes` (Kafka's default is
    /// 1048588) and the topic's `max.message.bytes`. A batch the broker still refuses
    /// is split. At least 32 KiB, so that any row the api writes fits.
    #[arg(long, env = "RELAY_MAX_BATCH_BYTES", default_value_t = DEFAULT_MAX_BATCH_BYTES)]
    pub max_batch_bytes: usize,

    /// How soon the relay looks for rows again when no commit notification arrives
    /// after one did (or without a LISTEN connection): rows committed behind a longer
    /// transaction notify nobody when it ends, and wait this long for the relay.
    #[arg(long, env = "RELAY_POLL_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,

    /// After a step that published everything there was (a short batch), how long the
    /// leader lets rows gather before the next step, as a Kafka producer's
    /// `linger.ms` does. Each step costs a produce per partition, a read and a commit
    /// whatever its size, so at a steady rate this trades latency for fewer, larger
    /// batches (docs/BENCHMARKS.md: 5ms cut the pipeline's CPU per event by about a
    /// sixth at 1,000 writes/s and added about 4 ms to commit-to-ack). A full batch
    /// (a backlog) is followed at once. Off by default: latency comes first.
    #[arg(long, env = "RELAY_LINGER", default_value = "0ms", value_parser = humantime::parse_duration)]
    pub linger: Duration,

    /// The longest wait for a notification while nothing happens. For this long after
    /// the last notification or published row the relay looks every
    /// RELAY_POLL_INTERVAL; then each wait that ends without a notification doubles
    /// the next, up to this. Every look costs a Postgres transaction, so this is what
    /// an idle leader costs; a row held back longer than this by another transaction
    /// is published up to about as late again after that transaction ended.
    #[arg(long, env = "RELAY_IDLE_POLL_MAX", default_value = "10s", value_parser = humantime::parse_duration)]
    pub idle_poll_max: Duration,

    /// How often every relay (leader or standby) measures the backlog, the oldest
    /// unpublished row's age and the watermark stall for its gauges and the stall
    /// log: one Postgres transaction each time, idle or not.
    #[arg(long, env = "RELAY_OBSERVE_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub observe_interval: Duration,

    /// How often a standby tries to take the leader lock; failover takes about this long
    /// after the leader's database session ends.
    #[arg(long, env = "RELAY_LEADER_POLL_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub leader_poll_interval: Duration,

    /// How long the leader may go without using its database session before Postgres
    /// ends the session and its lock, so that a standby takes over: bounds failover
    /// from a paused, frozen or cut-off leader (plus up to RELAY_LEADER_POLL_INTERVAL).
    /// A leader pings its session every third of this while it waits, and checks it
    /// before producing after any longer gap.
    #[arg(long, env = "ROLE_LOSS_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub role_loss_timeout: Duration,

    /// How long one Kafka request may take before it counts as failed and is retried.
    #[arg(long, env = "RELAY_KAFKA_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub kafka_timeout: Duration,

    /// Longest wait between retries after a failure (exponential from 100ms, with jitter).
    #[arg(long, env = "RELAY_MAX_BACKOFF", default_value = "5s", value_parser = humantime::parse_duration)]
    pub max_backoff: Duration,

    /// Compression of published record batches.
    #[arg(long, env = "RELAY_COMPRESSION", value_enum, default_value_t = CompressionSetting::None)]
    pub compression: CompressionSetting,

    /// Rows published longer ago than this are deleted from the outbox, with their receipts.
    #[arg(long, env = "RELAY_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub retention: Duration,

    /// How often the leader prunes rows published longer ago than the retention window.
    #[arg(long, env = "RELAY_PRUNE_INTERVAL", default_value = "1m", value_parser = humantime::parse_duration)]
    pub prune_interval: Duration,

    /// About this many rows deleted per prune statement (whole receipts, at least one):
    /// small, so pruning never holds long locks.
    #[arg(long, env = "RELAY_PRUNE_BATCH", default_value_t = 1000)]
    pub prune_batch: u32,

    /// Log the transaction holding the watermark once committed rows wait this long behind it.
    #[arg(long, env = "RELAY_STALL_WARNING", default_value = "5s", value_parser = humantime::parse_duration)]
    pub stall_warning: Duration,
}

/// Compression codecs the relay can publish with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompressionSetting {
    None,
    Gzip,
    Lz4,
    Snappy,
    Zstd,
}

impl CompressionSetting {
    pub fn to_rskafka(self) -> rskafka::client::partition::Compression {
        use rskafka::client::partition::Compression;
        match self {
            CompressionSetting::None => Compression::NoCompression,
            CompressionSetting::Gzip => Compression::Gzip,
            CompressionSetting::Lz4 => Compression::Lz4,
            CompressionSetting::Snappy => Compression::Snappy,
            CompressionSetting::Zstd => Compression::Zstd,
        }
    }
}

/// The first wait after a failure; they double up to `RELAY_MAX_BACKOFF`.
pub const FIRST_RETRY: Duration = Duration::from_millis(100);

impl Settings {
    /// The backoff between retries: from [`FIRST_RETRY`] up to `RELAY_MAX_BACKOFF`.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(FIRST_RETRY, self.max_backoff)
    }

    /// Settings with every default, for tests and tools that override a few fields.
    pub fn defaults(database_url: &str, kafka_brokers: &str) -> Self {
        let mut settings = Settings::parse_from(["rsvp-relay"]);
        settings.common.database_url = database_url.into();
        settings.kafka.brokers = kafka_brokers.split(',').map(str::to_owned).collect();
        settings
    }

    /// Rejects settings the process cannot run with, before anything is started.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.kafka.validate()?;
        anyhow::ensure!(self.partitions >= 1, "RELAY_PARTITIONS must be at least 1");
        anyhow::ensure!(self.batch_rows >= 1, "RELAY_BATCH_ROWS must be at least 1");
        anyhow::ensure!(self.batch_bytes >= 1024, "RELAY_BATCH_BYTES must be at least 1024");
        anyhow::ensure!(
            (MIN_MAX_BATCH_BYTES..=i32::MAX as usize).contains(&self.max_batch_bytes),
            "RELAY_MAX_BATCH_BYTES must be at least {MIN_MAX_BATCH_BYTES} (and fit a Kafka int32)"
        );
        anyhow::ensure!(self.prune_batch >= 1, "RELAY_PRUNE_BATCH must be at least 1");
        anyhow::ensure!(!self.poll_interval.is_zero(), "RELAY_POLL_INTERVAL must be positive");
        anyhow::ensure!(self.idle_poll_max <= Duration::from_secs(300), "RELAY_IDLE_POLL_MAX must be at most 5m");
        anyhow::ensure!(self.linger <= Duration::from_secs(1), "RELAY_LINGER must be at most 1s");
        anyhow::ensure!(
            (Duration::from_millis(100)..=Duration::from_secs(300)).contains(&self.observe_interval),
            "RELAY_OBSERVE_INTERVAL must be between 100ms and 5m"
        );
        anyhow::ensure!(!self.kafka_timeout.is_zero(), "RELAY_KAFKA_TIMEOUT must be positive");
        anyhow::ensure!(
            self.role_loss_timeout >= rsvp_contract::role_lock::MIN_TIMEOUT,
            "ROLE_LOSS_TIMEOUT must be at least {:?}",
            rsvp_contract::role_lock::MIN_TIMEOUT
        );
        Ok(())
    }
}

#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("selection").required(true).args(["from_id", "since", "event"])))]
pub struct ReplayArgs {
    /// First outbox id to replay (inclusive).
    #[arg(long)]
    pub from_id: Option<i64>,
    /// Last outbox id to replay (inclusive); default: the last published row.
    #[arg(long, requires = "from_id")]
    pub to_id: Option<i64>,
    /// Replay rows created at or after this time: RFC 3339 (`2026-11-28T10:00:00Z`) or an
    /// age such as `2h` (two hours ago).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<DateTime<Utc>>,
    /// Replay rows created before this time (same formats as --since); default: now.
    #[arg(long, requires = "since", value_parser = parse_time)]
    pub until: Option<DateTime<Utc>>,
    /// Replay the rows of one event (their Kafka key) or the one row with this CloudEvent id.
    #[arg(long)]
    pub event: Option<Uuid>,
    /// Largest number of rows per second to publish; default: as fast as the broker takes them.
    #[arg(long)]
    pub rate: Option<u32>,
    /// Count and describe the selected rows, publish nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    /// Check rows created at or after this time: RFC 3339 or an age such as `24h`;
    /// default: every row in the outbox.
    #[arg(long, value_parser = parse_time)]
    pub since: Option<DateTime<Utc>>,
    /// A row the relay has not reached yet is pending, not missing, while younger than this.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub pending_grace: Duration,
}

/// Parses an RFC 3339 time, or an age (`90s`, `2h`) counted back from now.
pub fn parse_time(value: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(age) = humantime::parse_duration(value) {
        let age = chrono::Duration::from_std(age).map_err(|e| e.to_string())?;
        return Ok(Utc::now() - age);
    }
    if let Ok(time) = DateTime::parse_from_rfc3339(value) {
        return Ok(time.with_timezone(&Utc));
    }
    humantime::parse_rfc3339_weak(value)
        .map(DateTime::<Utc>::from)
        .map_err(|_| format!("`{value}` is neither an RFC 3339 time nor an age like `2h`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_documented_values() {
        let settings = Settings::defaults("postgres://x/y", "a:1,b:2");
        settings.validate().unwrap();
        assert_eq!(settings.kafka.brokers, ["a:1", "b:2"]);
        assert_eq!(settings.kafka.topic, "rsvp-events");
        assert_eq!(settings.partitions, 6);
        assert_eq!(settings.poll_interval, Duration::from_secs(1));
        assert_eq!(settings.idle_poll_max, Duration::from_secs(10));
        assert_eq!(settings.linger, Duration::ZERO, "no linger unless asked for");
        assert_eq!(settings.observe_interval, Duration::from_secs(5));
        assert_eq!(settings.role_loss_timeout, Duration::from_secs(10));
        assert_eq!(settings.retention, Duration::from_secs(7 * 86_400));
        assert_eq!(settings.common.admin_addr.to_string(), "127.0.0.1:9465");
        assert_eq!(settings.max_batch_bytes, 1_000_000);
        assert!(settings.max_batch_bytes + 48 * 1000 <= 1_048_588, "room for the produce request around the batch");
    }

    #[test]
    fn the_batch_limit_is_validated() {
        let mut settings = Settings::defaults("postgres://x/y", "a:1");
        settings.max_batch_bytes = MIN_MAX_BATCH_BYTES - 1;
        assert!(settings.validate().is_err());
        settings.max_batch_bytes = MIN_MAX_BATCH_BYTES;
        settings.validate().unwrap();
        let parsed = Cli::try_parse_from(["rsvp-relay"]).unwrap();
        assert_eq!(parsed.settings.max_batch_bytes, DEFAULT_MAX_BATCH_BYTES);
    }

    #[test]
    fn times_parse_as_rfc3339_or_as_an_age() {
        let exact = parse_time("2026-11-28T10:00:00Z").unwrap();
        assert_eq!(exact.to_rfc3339(), "2026-11-28T10:00:00+00:00");
        let age = parse_time("2h").unwrap();
        let expected = Utc::now() - chrono::Duration::hours(2);
        assert!((age - expected).num_seconds().abs() < 5);
        assert!(parse_time("yesterday-ish").is_err());
    }

    #[test]
    fn replay_needs_exactly_one_selection() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["rsvp-relay", "replay"], args].concat());
        assert!(parse(&[]).is_err());
        assert!(parse(&["--from-id", "1", "--event", &Uuid::nil().to_string()]).is_err());
        assert!(parse(&["--to-id", "5"]).is_err());
        assert!(parse(&["--from-id", "1", "--to-id", "5", "--rate", "10", "--dry-run"]).is_ok());
        assert!(parse(&["--since", "1h", "--until", "10m"]).is_ok());
    }
}
