use clap::Parser;
use rsvp_api::{
    config::{Cli, Command},
    startup::{Application, MIGRATOR},
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    rsvp_contract::telemetry::init_logging();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Migrate => {
            let db = sqlx::PgPool::connect(&cli.settings.database_url).await?;
            MIGRATOR.run(&db).await?;
            tracing::info!("migrations applied");
        }
        Command::Serve => {
            let app = Application::build(&cli.settings).await?;
            tracing::info!(api_port = app.api_port(), admin_port = app.admin_port(), "started");
            app.run_until(rsvp_contract::telemetry::shutdown_signal()).await?;
        }
    }
    Ok(())
}
