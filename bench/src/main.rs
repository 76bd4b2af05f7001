//! `rsvp-bench`: measures the api, the relay and the pipeline next to their limits and
//! writes docs/BENCHMARKS.md. Run it through `scripts/bench.sh`, which builds the
//! release binaries and starts the services first.

mod api_bench;
mod fetch_wait_bench;
mod idle_bench;
mod keepup_bench;
mod latency_bench;
mod load;
mod pgbench;
mod pipeline_bench;
mod relay_bench;
mod report;
mod system;

use std::{path::PathBuf, time::Duration};

use clap::Parser;

#[derive(Parser)]
#[command(about = "Benchmarks of the rsvp pipeline against their limits")]
struct Cli {
    /// How long each measurement runs.
    #[arg(long, env = "BENCH_DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Client counts of the api measurement.
    #[arg(long, value_delimiter = ',', default_value = "16,64,256,512")]
    concurrency: Vec<usize>,
    /// Cycles of the api's interleaved keyed comparison at the largest client count:
    /// the api without and with an Idempotency-Key and pgbench take turns (0: none).
    #[arg(long, default_value_t = 15)]
    keyed_cycles: usize,
    /// How long each turn of the keyed comparison lasts (whole seconds: pgbench's `-T`).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    keyed_slice: Duration,
    /// Outbox backlogs the relay drains.
    #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
    backlogs: Vec<i64>,
    /// Clients of the measurement of the relay keeping up with the api at full rate.
    #[arg(long, default_value_t = 256)]
    keepup_clients: usize,
    /// Clients of the whole pipeline's highest sustained rate, and of the api alone it is compared to.
    #[arg(long, default_value_t = 256)]
    pipeline_clients: usize,
    /// Steady write rates of the latency measurement.
    #[arg(long, value_delimiter = ',', default_value = "500,1000")]
    rates: Vec<u64>,
    /// How long the idle measurement lets the system settle before its window, and
    /// between its writes to the idle system.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    idle_settle: Duration,
    /// The idle measurement's window.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    idle_window: Duration,
    /// Writes to the idle system whose latency the idle measurement reports.
    #[arg(long, default_value_t = 10)]
    idle_probes: usize,
    /// Which parts to run: api, relay, keepup, pipeline, latency, idle, fetch-wait.
    #[arg(long, value_delimiter = ',', default_value = "api,relay,keepup,pipeline,latency,idle,fetch-wait")]
    only: Vec<String>,
    /// Where the report goes.
    #[arg(long, default_value = "docs/BENCHMARKS.md")]
    out: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let command = std::env::var("BENCH_COMMAND").unwrap_or_else(|_| "scripts/bench.sh".into());
    let mut report = report::Report::new(&command);
    let wants = |part: &str| cli.only.iter().any(|p| p == part);
    if wants("api") {
        api_bench::ApiBench {
            duration: cli.duration,
            concurrency: cli.concurrency.clone(),
            keyed_cycles: cli.keyed_cycles,
            keyed_slice: cli.keyed_slice,
        }
        .run(&mut report)
        .await?;
    }
    if wants("relay") {
        relay_bench::RelayBench { backlogs: cli.backlogs.clone() }.run(&mut report).await?;
    }
    if wants("keepup") {
        keepup_bench::KeepUpBench { clients: cli.keepup_clients, duration: cli.duration }.run(&mut report).await?;
    }
    if wants("pipeline") {
        pipeline_bench::PipelineBench { clients: cli.pipeline_clients, duration: cli.duration }
            .run(&mut report)
            .await?;
    }
    if wants("latency") {
        latency_bench::LatencyBench { rates: cli.rates.clone(), duration: cli.duration }.run(&mut report).await?;
    }
    if wants("fetch-wait") {
        fetch_wait_bench::FetchWaitBench.run(&mut report).await?;
    }
    if wants("idle") {
        idle_bench::IdleBench { settle: cli.idle_settle, window: cli.idle_window, probes: cli.idle_probes }
            .run(&mut report)
            .await?;
    }
    report.write(&cli.out)?;
    eprintln!("wrote {}", cli.out.display());
    Ok(())
}
