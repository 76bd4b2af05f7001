use clap::Parser;
use rsvp_contract::runtime::{logging, shutdown};
use rsvp_relay::config::{Cli, Command};

/// Every request and record allocates; with mimalloc instead of glibc's allocator the
/// api alone took about 8% more creates/s (docs/NOTES.md, "Where the CPU goes").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    logging::init_logging();
    let cli = Cli::parse();
    let mut settings = cli.settings;
    settings.kafka.apply_deprecated_names();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            let app = rsvp_relay::startup::Application::build(settings).await?;
            tracing::info!(admin_port = app.admin_port(), "started");
            app.run_until(shutdown::signal()).await
        }
        Command::Replay(args) => rsvp_relay::replay::command(settings, args).await,
        Command::Audit(args) => {
            let clean = rsvp_relay::audit::command(settings, args).await?;
            std::process::exit(if clean { 0 } else { 1 })
        }
        Command::Prune => rsvp_relay::prune::command(settings).await,
    }
}
