//! Starting what a benchmark measures: databases and the real release binaries.

use std::{path::PathBuf, process::Stdio, time::Duration};

use anyhow::Context;
use sqlx::{Connection, PgConnection};
use tokio::process::{Child, Command};

pub(crate) const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";

/// The server databases are created on; `BENCH_DATABASE_URL`, else local trust auth.
pub(crate) fn server_url() -> String {
    std::env::var("BENCH_DATABASE_URL").unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/postgres".into())
}

/// Drops database `name`, so that what one measurement left (autovacuum of its tables,
/// its pages in the buffer cache) does not weigh on the next one.
pub(crate) async fn drop_database(name: &str) -> anyhow::Result<()> {
    let mut admin = PgConnection::connect(&server_url()).await.context("connecting to postgres")?;
    sqlx::query(&format!(r#"drop database if exists "{name}" with (force)"#)).execute(&mut admin).await?;
    Ok(())
}

/// Drops and creates database `name`; returns its URL.
pub(crate) async fn fresh_database(name: &str) -> anyhow::Result<String> {
    let server = server_url();
    let mut admin = PgConnection::connect(&server).await.context("connecting to postgres")?;
    sqlx::query(&format!(r#"drop database if exists "{name}" with (force)"#)).execute(&mut admin).await?;
    sqlx::query(&format!(r#"create database "{name}""#)).execute(&mut admin).await?;
    let (base, _) = server.rsplit_once('/').context("BENCH_DATABASE_URL has no database name")?;
    Ok(format!("{base}/{name}"))
}

/// Has the server write a checkpoint, so that the measurement that follows starts
/// right after one, as every other does. Without it each starts wherever the WAL of
/// the runs before left off, and a checkpoint that falls inside a run makes it write
/// a full image of every page it touches next: a cost of its own for each run. A
/// role that may not checkpoint gets a warning, and the runs go on without.
pub(crate) async fn checkpoint() -> anyhow::Result<()> {
    let mut admin = PgConnection::connect(&server_url()).await.context("connecting to postgres")?;
    if let Err(error) = sqlx::query("checkpoint").execute(&mut admin).await {
        eprintln!("warning: no checkpoint before the measurement: {error}");
    }
    Ok(())
}

/// Applies the migrations with `rsvp-api migrate`.
pub(crate) async fn migrate(database_url: &str) -> anyhow::Result<()> {
    let status = Command::new(sibling_binary("rsvp-api")?)
        .arg("migrate")
        .env("DATABASE_URL", database_url)
        .env("ADMIN_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "warn")
        .status()
        .await?;
    anyhow::ensure!(status.success(), "rsvp-api migrate failed");
    Ok(())
}

/// A binary built beside this one (`cargo build --release` builds them all).
pub(crate) fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name(name);
    anyhow::ensure!(path.is_file(), "{} is missing: run `cargo build --release --bins`", path.display());
    Ok(path)
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts a release binary with `env` and warnings-only logs; killed on drop.
pub(crate) fn spawn_service(binary: &str, env: &[(&str, String)]) -> anyhow::Result<Child> {
    let mut command = Command::new(sibling_binary(binary)?);
    command.env("RUST_LOG", "warn").kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    command.spawn().with_context(|| format!("starting {binary}"))
}

/// A running `rsvp-api`, killed on drop.
pub(crate) struct Api {
    _child: Child,
    pub(crate) base: String,
}

impl Api {
    pub(crate) fn pid(&self) -> anyhow::Result<u32> {
        self._child.id().context("rsvp-api exited")
    }
}

pub(crate) async fn start_api(database_url: &str, extra_env: &[(&str, String)]) -> anyhow::Result<Api> {
    let port = free_port()?;
    let mut command = Command::new(sibling_binary("rsvp-api")?);
    command
        .env("DATABASE_URL", database_url)
        .env("API_ADDR", format!("127.0.0.1:{port}"))
        .env("ADMIN_ADDR", format!("127.0.0.1:{}", free_port()?))
        .env("ADMIN_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "warn")
        .env("DATABASE_MAX_CONNECTIONS", "64")
        .stdout(Stdio::null())
        .kill_on_drop(true);
    for (name, value) in extra_env {
        command.env(name, value);
    }
    let child = command.spawn().context("starting rsvp-api")?;
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&format!("{base}/healthz")).await?;
    Ok(Api { _child: child, base })
}

pub(crate) async fn wait_healthy(url: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    for _ in 0..300 {
        if client.get(url).send().await.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("{url} did not answer within 30 s")
}

/// Creates `n` events without capacity through the api; returns their ids.
pub(crate) async fn create_events(base: &str, n: usize, title: &str) -> anyhow::Result<Vec<uuid::Uuid>> {
    let client = reqwest::Client::new();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let event: serde_json::Value = client
            .post(format!("{base}/events"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&serde_json::json!({"title": format!("{title} {i}"), "starts_at": "2099-01-01T00:00:00Z"}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        ids.push(event["id"].as_str().unwrap_or_default().parse()?);
    }
    Ok(ids)
}

/// Facts about the machine for the report.
pub(crate) fn machine() -> String {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned()))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or("unknown".to_owned(), |kb| format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0));
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    format!("{cores} cores (nproc), {memory} memory, {cpu}")
}

/// CPU time of a process so far (user + system), from `/proc/PID/stat`.
pub(crate) fn cpu_time(pid: u32, ticks_per_second: f64) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: count fields after it.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let (utime, stime): (u64, u64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
    Some(Duration::from_secs_f64((utime + stime) as f64 / ticks_per_second))
}

/// The machine's CPU time so far, all cores together, from the first line of
/// `/proc/stat`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MachineCpu {
    /// Running anything: user, nice, system, irq and softirq time.
    pub(crate) busy: Duration,
    /// Time the hypervisor gave to other guests while this one had work to run.
    pub(crate) steal: Duration,
    /// Busy, steal, idle and iowait together.
    pub(crate) total: Duration,
}

impl MachineCpu {
    pub(crate) fn now(ticks_per_second: f64) -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/stat").ok()?, ticks_per_second)
    }

    fn parse(stat: &str, ticks_per_second: f64) -> Option<Self> {
        let totals = stat.lines().next()?.strip_prefix("cpu ")?;
        let fields: Vec<u64> = totals.split_whitespace().map(|f| f.parse().ok()).collect::<Option<_>>()?;
        let field = |i: usize| fields.get(i).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal (guest time is in user already)
        let busy = field(0) + field(1) + field(2) + field(5) + field(6);
        let (idle, steal) = (field(3) + field(4), field(7));
        let time = |ticks: u64| Duration::from_secs_f64(ticks as f64 / ticks_per_second);
        Some(Self { busy: time(busy), steal: time(steal), total: time(busy + steal + idle) })
    }

    /// What was spent between `before` and `self`.
    pub(crate) fn since(self, before: Self) -> Self {
        Self {
            busy: self.busy.saturating_sub(before.busy),
            steal: self.steal.saturating_sub(before.steal),
            total: self.total.saturating_sub(before.total),
        }
    }
}

pub(crate) fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The samples of a Prometheus text page at `url`: each series (name and labels as
/// written) with its value.
pub(crate) async fn scrape(http: &reqwest::Client, url: &str) -> anyhow::Result<Vec<(String, f64)>> {
    let text = http.get(url).send().await?.error_for_status()?.text().await?;
    Ok(text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter_map(|(series, value)| Some((series.to_owned(), value.parse().ok()?)))
        .collect())
}

/// The sum of the series of `samples` that start with `prefix` (a name, or a name and
/// the start of its labels); none when there is no such series.
pub(crate) fn sum_of(samples: &[(String, f64)], prefix: &str) -> Option<f64> {
    let mut matching = samples.iter().filter(|(series, _)| series.starts_with(prefix)).peekable();
    matching.peek()?;
    Some(matching.map(|(_, value)| value).sum())
}

/// Of the observations a histogram made between two scrapes, the share that took longer
/// than `le` seconds (one of its bucket bounds, as the exporter writes it): over every
/// series of `prefix` (`NAME_bucket{` and the start of its labels). None without
/// observations.
pub(crate) fn share_above(before: &[(String, f64)], after: &[(String, f64)], prefix: &str, le: &str) -> Option<f64> {
    let bucket = |samples: &[(String, f64)], le: &str| -> f64 {
        let bound = format!("le=\"{le}\"}}");
        samples
            .iter()
            .filter(|(series, _)| series.starts_with(prefix) && series.ends_with(&bound))
            .map(|(_, v)| v)
            .sum()
    };
    let total = bucket(after, "+Inf") - bucket(before, "+Inf");
    (total > 0.0).then(|| (total - (bucket(after, le) - bucket(before, le))) / total)
}

/// The real rsvp-relay and rsvp-consumers (every group, their defaults) on one
/// database and broker, killed on drop.
pub(crate) struct RelayAndConsumers {
    pub(crate) relay: Child,
    pub(crate) consumers: Child,
    /// `/metrics` of each, on its admin port.
    pub(crate) relay_metrics: String,
    pub(crate) consumers_metrics: String,
}

impl RelayAndConsumers {
    pub(crate) fn spawn(database_url: &str, brokers: &str) -> anyhow::Result<Self> {
        let (relay_admin, consumers_admin) =
            (format!("127.0.0.1:{}", free_port()?), format!("127.0.0.1:{}", free_port()?));
        let env = |admin: &str| {
            [
                ("DATABASE_URL", database_url.to_owned()),
                ("KAFKA_BROKERS", brokers.to_owned()),
                ("ADMIN_ADDR", admin.to_owned()),
            ]
        };
        Ok(Self {
            relay: spawn_service("rsvp-relay", &env(&relay_admin))?,
            consumers: spawn_service("rsvp-consumers", &env(&consumers_admin))?,
            relay_metrics: format!("http://{relay_admin}/metrics"),
            consumers_metrics: format!("http://{consumers_admin}/metrics"),
        })
    }

    /// The process ids of the relay and the consumers.
    pub(crate) fn pids(&self) -> anyhow::Result<[u32; 2]> {
        Ok([self.relay.id().context("rsvp-relay exited")?, self.consumers.id().context("rsvp-consumers exited")?])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machine_cpu_counts_steal_apart_from_busy_and_iowait_as_idle() {
        // user nice system idle iowait irq softirq steal guest guest_nice
        let stat = "cpu  700 100 200 900 50 20 30 40 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        let cpu = MachineCpu::parse(stat, 100.0).unwrap();
        assert_eq!(cpu.busy, Duration::from_secs_f64(10.5));
        assert_eq!(cpu.steal, Duration::from_secs_f64(0.4));
        assert_eq!(cpu.total, Duration::from_secs_f64(20.4));
        let later = MachineCpu::parse("cpu  800 100 200 1000 50 20 30 40 0 0\n", 100.0).unwrap();
        let spent = later.since(cpu);
        assert_eq!(
            (spent.busy, spent.steal, spent.total),
            (Duration::from_secs(1), Duration::ZERO, Duration::from_secs(2))
        );
        assert!(MachineCpu::parse("intr 1 2 3\n", 100.0).is_none());
        assert!(MachineCpu::parse("", 100.0).is_none());
    }
}
