//! `tally`: the operator's entry point.
//!
//! Every command works on a data directory (`--data-dir`, default `./tally-data`) whose `log/`
//! subdirectory is the embedded donation log. Failures are reported as one line on standard
//! error with a non-zero exit status. `serve` is the library's [`tally::run`]; this binary parses
//! its flags ([`cli`]) and runs the other commands ([`commands`]).

mod cli;
mod commands;

/// mimalloc: the server allocates many small, short-lived buffers per request across threads,
/// which glibc's allocator serves markedly slower (malloc/free took ~8% of a profile under load).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// tally records checkout donations exactly once and serves live campaign totals.
#[derive(Debug, Parser)]
#[command(name = "tally", version, about)]
struct Cli {
    /// Directory holding tally's log and state.
    #[arg(
        long,
        global = true,
        env = "TALLY_DATA_DIR",
        default_value = "./tally-data"
    )]
    data_dir: PathBuf,

    #[command(flatten)]
    state: commands::StateArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run tally: take payment callbacks, process them exactly once, serve totals and statistics.
    Serve(cli::ServeArgs),
    /// Append donations from an NDJSON file (one JSON event a line) to the log.
    Import(commands::import::ImportArgs),
    /// Inspect the donation log.
    #[command(subcommand)]
    Log(commands::log::LogCommand),
    /// Run the pipeline over the log: catch up and exit, or keep following.
    Process(commands::process::ProcessArgs),
    /// List, save, restore and verify checkpoints.
    #[command(subcommand)]
    Checkpoint(commands::checkpoint::CheckpointCommand),
    /// Campaign totals and statistics from the committed state.
    #[command(subcommand)]
    Campaign(commands::campaign::CampaignCommand),
    /// Audit records.
    #[command(subcommand)]
    Audit(commands::audit::AuditCommand),
    /// Write a campaign's ledger (donations, refunds, chargebacks) as CSV.
    Export(commands::export::ExportArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    if let Err(error) = commands::use_state_settings(&cli.state) {
        eprintln!("tally: {}", one_line(&error));
        return ExitCode::FAILURE;
    }
    let outcome = match cli.command {
        Command::Serve(args) => serve(cli.data_dir, args),
        Command::Import(args) => commands::import::run(&cli.data_dir, args),
        Command::Log(command) => commands::log::run(&cli.data_dir, command),
        Command::Process(args) => commands::process::run(&cli.data_dir, args),
        Command::Checkpoint(command) => commands::checkpoint::run(&cli.data_dir, command),
        Command::Campaign(command) => commands::campaign::run(&cli.data_dir, command),
        Command::Audit(command) => commands::audit::run(&cli.data_dir, command),
        Command::Export(args) => commands::export::run(&cli.data_dir, args),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("tally: {}", one_line(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, joined on one line.
fn one_line(error: &anyhow::Error) -> String {
    error
        .chain()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TALLY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn serve(data_dir: PathBuf, args: cli::ServeArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tally::bind(args.listen)
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
        let config = args.into_config(data_dir, commands::state_settings())?;
        let clock = std::sync::Arc::new(tally_pipeline::clock::SystemClock);
        tally::run(listener, config, clock, shutdown_signal()).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
