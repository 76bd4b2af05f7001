use clap::Parser;
use rsvp_api::{
    config::{Cli, Command},
    startup::Application,
};
use rsvp_contract::runtime::{database, logging, shutdown};

/// Every request and record allocates; with mimalloc instead of glibc's allocator the
/// api alone took about 8% more creates/s (docs/NOTES.md, "Where the CPU goes").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    logging::init_logging();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Migrate => {
            database::connect_and_migrate(cli.settings.common.database_url.expose(), 1, "DATABASE_URL").await?;
            tracing::info!("migrations applied");
        }
        Command::Serve => {
            let app = Application::build(&cli.settings).await?;
            tracing::info!(api_port = app.api_port(), admin_port = app.admin_port(), "started");
            app.run_until(shutdown::signal()).await?;
        }
    }
    Ok(())
}
