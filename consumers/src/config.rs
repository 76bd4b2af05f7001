//! Settings from flags and environment, validated at start-up.

use std::time::Duration;

use clap::{Parser, Subcommand};
use rsvp_contract::runtime::{
    backoff::Backoff,
    secret::Secret,
    settings::{self, CommonSettings, KafkaSettings},
};

/// The `--group` values, one per group of `crate::registry::GROUPS` in its order (a
/// test there keeps the two lists equal). Listed here rather than read from the
/// registry, whose groups are built from these settings.
pub const GROUP_FLAGS: &[&str] = &["cache", "analytics", "notifications"];

/// The consumers' command line.
pub type Cli = settings::Cli<Command, Settings>;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run migrations, then consume until SIGINT/SIGTERM (the default).
    Run,
    /// Inspect and redrive dead letters.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Per group (`--group`, or every one) and partition: owner, committed offset, high
    /// watermark, lag in records and seconds, pending dead letters. Exits 1 when a
    /// partition has no owner or lag is over a threshold, 2 when Postgres or the
    /// broker cannot be read.
    Status(StatusArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Print one JSON document instead of the tables.
    #[arg(long)]
    pub json: bool,
    /// Exit 1 when a partition lags by more than this many records.
    #[arg(long)]
    pub max_lag: Option<i64>,
    /// Exit 1 when a partition's oldest unapplied record is older than this many seconds.
    #[arg(long)]
    pub max_lag_seconds: Option<f64>,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Print the dead letters not yet redriven (of `--group`, or of every group).
    List {
        /// Also print the ones already redriven.
        #[arg(long)]
        all: bool,
    },
    /// Apply dead letters again, each at most once; fix a record's `record_value` in
    /// the `consumer_dead_letters` table first. Without `--id`, every pending one.
    Redrive {
        /// The dead letter to redrive, as `dlq list` shows it.
        #[arg(long)]
        id: Option<i64>,
    },
}

/// `ADMIN_ADDR` of the consumers, beside the api's and the relay's.
const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9466";

/// The first wait after a failure; they double up to `RETRY_MAX_BACKOFF`.
pub const FIRST_RETRY: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Parser)]
#[command(
    display_name = "rsvp-consumers",
    version,
    about = "Consumes rsvp-events: invalidates the api's cache, keeps exact per-event statistics and records what organisers should hear of",
    mut_arg("admin_addr", |arg| arg.default_value(DEFAULT_ADMIN_ADDR))
)]
pub struct Settings {
    /// Run one group only: `cache` (invalidates the api's Redis cache), `analytics`
    /// (per-event statistics in Postgres) or `notifications` (a row per change the
    /// event's organiser should hear of). Every group runs when absent.
    #[arg(long, env = "CONSUMER_GROUP", global = true, value_parser = clap::builder::PossibleValuesParser::new(GROUP_FLAGS))]
    pub group: Option<String>,

    #[command(flatten)]
    pub common: CommonSettings,

    #[command(flatten)]
    pub kafka: KafkaSettings,

    /// Database of the statistics and of the analytics group's offsets and dead letters;
    /// defaults to DATABASE_URL (which holds the cache and notifications groups'
    /// offsets and dead letters, and the notifications).
    #[arg(long, env = "ANALYTICS_DATABASE_URL", hide_env_values = true, global = true)]
    pub analytics_database_url: Option<Secret<String>>,

    /// Redis connection string of the api's cache.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379", hide_env_values = true, global = true)]
    pub redis_url: Secret<String>,

    /// Most bytes one fetch returns per partition (a larger batch is still returned
    /// whole). A fetch is applied in one transaction, and every open transaction holds
    /// back the relay's xmin watermark, so keep batches small enough to commit quickly.
    #[arg(long, env = "FETCH_MAX_BYTES", default_value_t = 262_144, global = true)]
    pub fetch_max_bytes: i32,

    /// How long the broker may hold a fetch while a partition has nothing new (the
    /// fetch asks for at least one byte). Tansu 0.6.0 does not answer when a record
    /// arrives: it holds every fetch, empty or not, for this long (half of it from
    /// 250ms up) and then answers with what it had when the fetch came in, so any
    /// wait there is pure latency and the default is 0; idle partitions back off on
    /// this side instead (IDLE_POLL_MAX). Against a broker that answers as soon as
    /// data arrives (Kafka), 500ms makes an idle partition cost one fetch per 500ms.
    #[arg(long, env = "FETCH_MAX_WAIT", default_value = "0ms", value_parser = humantime::parse_duration, global = true)]
    pub fetch_max_wait: Duration,

    /// How soon a partition of the cache group fetches again after a batch that left
    /// nothing behind it, and the first pause after a fetch that found nothing; it
    /// adds up to this much to commit-to-cache-invalidated under load.
    #[arg(long, env = "CACHE_POLL_INTERVAL", default_value = "10ms", value_parser = humantime::parse_duration, global = true)]
    pub cache_poll_interval: Duration,

    /// Longest pause between the fetches of a partition that keeps finding nothing:
    /// after each empty fetch the pause doubles, from the group's poll interval up to
    /// this, and the first record resets it. It bounds how late a record arriving at
    /// an idle partition is picked up (up to this plus one fetch) and sets the idle
    /// cost: every partition of every group fetches about once per this interval.
    #[arg(long, env = "IDLE_POLL_MAX", default_value = "500ms", value_parser = humantime::parse_duration, global = true)]
    pub idle_poll_max: Duration,

    /// How often at most the cache group stores a partition's offset while records keep
    /// coming. Invalidating is idempotent, so a crash invalidates at most this much
    /// again; a fetch that finds nothing new, a released partition and a batch with
    /// dead letters store it at once. The analytics group stores it with every batch.
    #[arg(long, env = "CACHE_COMMIT_INTERVAL", default_value = "100ms", value_parser = humantime::parse_duration, global = true)]
    pub cache_commit_interval: Duration,

    /// How often a caught-up partition of the analytics group (and of the
    /// notifications group) fetches again. Longer than the cache group's: statistics
    /// may lag a little, and larger batches cost Postgres and the broker far less per
    /// event.
    #[arg(long, env = "ANALYTICS_POLL_INTERVAL", default_value = "100ms", value_parser = humantime::parse_duration, global = true)]
    pub analytics_poll_interval: Duration,

    /// Failed attempts at applying one record before it is dead-lettered. Outages of
    /// Postgres or Redis are retried forever and never count.
    #[arg(long, env = "MAX_ATTEMPTS", default_value_t = 5, global = true)]
    pub max_attempts: u32,

    /// How long a partition owner or a member may go without using its database
    /// session before Postgres ends the session, and with it the partition's lock or
    /// the membership, so that another instance takes over: bounds failover from a
    /// paused, frozen or cut-off instance (plus up to REBALANCE_INTERVAL). Sessions
    /// are pinged every third of this while idle, and checked before effects and
    /// offsets are committed after any longer gap.
    #[arg(long, env = "ROLE_LOSS_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub role_loss_timeout: Duration,

    /// How often each group counts its live instances and takes or gives up
    /// partitions; a dead instance's partitions are taken over within about this long.
    /// Each count is a Postgres transaction per group, idle or not: at 2s the two
    /// groups cost one transaction a second, most of what an idle system costs.
    #[arg(long, env = "REBALANCE_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration, global = true)]
    pub rebalance_interval: Duration,

    /// Longest pause between retries while Redis, Postgres or the broker fails.
    #[arg(long, env = "RETRY_MAX_BACKOFF", default_value = "1s", value_parser = humantime::parse_duration, global = true)]
    pub retry_max_backoff: Duration,

    /// How often the analytics group prunes `analytics.applied_events`, the ce_ids it
    /// keeps to apply each change once: a pass deletes the rows of every rsvp whose
    /// versions up to theirs were all applied (the rsvp's `applied_through` then
    /// recognises a redelivery of them), so the table holds about the changes of one
    /// interval plus those above a gap in an rsvp's versions. Pruning never lets a
    /// change count twice. `0s` turns it off.
    #[arg(long, env = "APPLIED_EVENTS_PRUNE_INTERVAL", default_value = "1m", value_parser = humantime::parse_duration, global = true)]
    pub applied_events_prune_interval: Duration,

    /// How long one Redis command may take before it counts as failed.
    #[arg(long, env = "REDIS_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration, global = true)]
    pub redis_timeout: Duration,
}

impl Settings {
    /// Rejects settings the process cannot run with, before anything is started.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.fetch_max_bytes >= 1024, "FETCH_MAX_BYTES must be at least 1024");
        anyhow::ensure!(self.max_attempts >= 1, "MAX_ATTEMPTS must be at least 1");
        self.kafka.validate()?;
        anyhow::ensure!(
            self.rebalance_interval >= Duration::from_millis(50),
            "REBALANCE_INTERVAL must be at least 50ms"
        );
        anyhow::ensure!(self.fetch_max_wait <= Duration::from_secs(30), "FETCH_MAX_WAIT must be at most 30s");
        anyhow::ensure!(
            self.role_loss_timeout >= rsvp_contract::role_lock::MIN_TIMEOUT,
            "ROLE_LOSS_TIMEOUT must be at least {:?}",
            rsvp_contract::role_lock::MIN_TIMEOUT
        );
        for (name, interval) in [
            ("CACHE_POLL_INTERVAL", self.cache_poll_interval),
            ("ANALYTICS_POLL_INTERVAL", self.analytics_poll_interval),
            ("CACHE_COMMIT_INTERVAL", self.cache_commit_interval),
            ("IDLE_POLL_MAX", self.idle_poll_max),
        ] {
            anyhow::ensure!(interval <= Duration::from_secs(60), "{name} must be at most 60s");
        }
        Ok(())
    }

    pub fn analytics_url(&self) -> &str {
        self.analytics_database_url.as_ref().unwrap_or(&self.common.database_url).expose()
    }

    /// Whether the statistics live in a database of their own.
    pub fn separate_analytics_database(&self) -> bool {
        self.analytics_url() != self.common.database_url.expose()
    }

    /// The backoff between retries: from [`FIRST_RETRY`] up to `RETRY_MAX_BACKOFF`.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(FIRST_RETRY, self.retry_max_backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("rsvp-consumers").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn analytics_database_defaults_to_the_main_one() {
        let cli = parse(&["--database-url", "postgres://a/main"]);
        assert_eq!(cli.settings.analytics_url(), "postgres://a/main");
        assert!(!cli.settings.separate_analytics_database());
        let cli = parse(&["--database-url", "postgres://a/main", "--analytics-database-url", "postgres://a/stats"]);
        assert!(cli.settings.separate_analytics_database());
    }

    #[test]
    fn dlq_redrive_takes_an_optional_id() {
        assert!(matches!(
            parse(&["dlq", "redrive", "--id", "7"]).command,
            Some(Command::Dlq(DlqCommand::Redrive { id: Some(7) }))
        ));
        assert!(matches!(parse(&["dlq", "list"]).command, Some(Command::Dlq(DlqCommand::List { all: false }))));
    }

    #[test]
    fn status_takes_json_and_both_thresholds() {
        let Some(Command::Status(args)) =
            parse(&["status", "--json", "--max-lag", "10", "--max-lag-seconds", "2.5"]).command
        else {
            panic!("not the status command");
        };
        assert!(args.json);
        assert_eq!((args.max_lag, args.max_lag_seconds), (Some(10), Some(2.5)));
        assert!(parse(&["status", "--group", "cache"]).settings.group.is_some());
    }

    #[test]
    fn applied_events_are_pruned_every_minute_by_default_and_zero_turns_it_off() {
        assert_eq!(parse(&[]).settings.applied_events_prune_interval, Duration::from_secs(60));
        let cli = parse(&["--applied-events-prune-interval", "0s"]);
        assert!(cli.settings.applied_events_prune_interval.is_zero());
        cli.settings.validate().unwrap();
    }

    #[test]
    fn durations_are_humantime() {
        let cli = parse(&["--fetch-max-wait", "250ms", "--rebalance-interval", "2s"]);
        assert_eq!(cli.settings.fetch_max_wait, Duration::from_millis(250));
        cli.settings.validate().unwrap();
    }

    #[test]
    fn the_analytics_group_polls_less_often_than_the_cache_group_and_both_are_bounded() {
        let cli = parse(&[]);
        assert_eq!(cli.settings.cache_poll_interval, Duration::from_millis(10));
        assert_eq!(cli.settings.analytics_poll_interval, Duration::from_millis(100));
        let cli = parse(&["--analytics-poll-interval", "2m"]);
        assert!(cli.settings.validate().is_err());
    }

    #[test]
    fn groups_rebalance_every_2s_by_default() {
        assert_eq!(parse(&[]).settings.rebalance_interval, Duration::from_secs(2));
    }

    #[test]
    fn fetches_do_not_wait_at_the_broker_and_idle_partitions_back_off_to_half_a_second_by_default() {
        let cli = parse(&[]);
        assert_eq!(cli.settings.fetch_max_wait, Duration::ZERO);
        assert_eq!(cli.settings.idle_poll_max, Duration::from_millis(500));
        assert!(parse(&["--idle-poll-max", "2m"]).settings.validate().is_err());
    }

    #[test]
    fn the_cache_group_stores_its_offsets_at_most_every_100ms_by_default_and_the_interval_is_bounded() {
        assert_eq!(parse(&[]).settings.cache_commit_interval, Duration::from_millis(100));
        assert!(parse(&["--cache-commit-interval", "0s"]).settings.validate().is_ok());
        assert!(parse(&["--cache-commit-interval", "2m"]).settings.validate().is_err());
    }
}
