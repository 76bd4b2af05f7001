use clap::Parser;
use rsvp_consumers::{
    config::{Cli, Command, DlqCommand, StatusArgs},
    dlq::Redriven,
    metric_names,
    startup::Application,
    status::Thresholds,
};
use rsvp_contract::runtime::{logging, shutdown};

/// Every request and record allocates; with mimalloc instead of glibc's allocator the
/// api alone took about 8% more creates/s (docs/NOTES.md, "Where the CPU goes").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    logging::init_logging();
    let mut cli = Cli::parse();
    cli.settings.kafka.apply_deprecated_names();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            let app = Application::build(&cli.settings, true).await?;
            metric_names::start_role_counters_at_zero();
            tracing::info!(admin_port = app.admin_port(), "started");
            app.run_until(shutdown::signal()).await?;
        }
        Command::Status(args) => std::process::exit(status(&cli.settings, &args).await),
        Command::Dlq(DlqCommand::List { all }) => {
            let app = Application::build(&cli.settings, false).await?;
            let letters = app.dead_letters(all).await?;
            for letter in &letters {
                println!("{}", letter.summary());
            }
            println!("{} dead letter(s)", letters.len());
        }
        Command::Dlq(DlqCommand::Redrive { id }) => {
            let app = Application::build(&cli.settings, false).await?;
            let results = app.redrive(id).await?;
            let mut failed = 0;
            for result in &results {
                match result {
                    Redriven::Applied { id, outcome } => println!("#{id} redriven: {outcome}"),
                    Redriven::Failed { id, error } => {
                        failed += 1;
                        println!("#{id} not redriven: {error}");
                    }
                }
            }
            println!("{} redriven, {failed} failed", results.len() - failed);
            anyhow::ensure!(failed == 0, "{failed} dead letter(s) could not be redriven");
            anyhow::ensure!(!results.is_empty() || id.is_none(), "no pending dead letter with that id");
        }
    }
    Ok(())
}

/// `status`: 0 healthy, 1 a partition unowned or lagging over a threshold, 2 when
/// Postgres or the broker cannot be read.
async fn status(settings: &rsvp_consumers::config::Settings, args: &StatusArgs) -> i32 {
    let groups = match Application::build(settings, false).await {
        Ok(app) => app.status().await,
        Err(error) => Err(error),
    };
    let groups = match groups {
        Ok(groups) => groups,
        Err(error) => {
            eprintln!("error: {error:#}");
            return 2;
        }
    };
    let thresholds = Thresholds { max_lag: args.max_lag, max_lag_seconds: args.max_lag_seconds };
    let problems: Vec<String> = groups.iter().flat_map(|g| g.problems(thresholds)).collect();
    if args.json {
        let document = serde_json::json!({ "healthy": problems.is_empty(), "problems": problems, "groups": groups });
        println!("{}", serde_json::to_string_pretty(&document).expect("status serializes"));
    } else {
        for group in &groups {
            println!("{}", group.table());
        }
        for problem in &problems {
            println!("PROBLEM {problem}");
        }
    }
    i32::from(!problems.is_empty())
}
