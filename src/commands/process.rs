//! `tally process [--follow]`: run the pipeline over the log.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use tally_pipeline::runner::{PipelineConfig, RunMode};

#[derive(Debug, Args)]
pub struct ProcessArgs {
    /// Keep following the log until interrupted (SIGINT or SIGTERM) instead of stopping at its end.
    #[arg(long)]
    follow: bool,
    /// Commit a checkpoint at least this often while records are applied.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    checkpoint_interval: Duration,
    /// …or after this many records.
    #[arg(long, default_value_t = PipelineConfig::default().checkpoint_records_max)]
    checkpoint_records: u64,
}

pub fn run(data_dir: &Path, args: ProcessArgs) -> anyhow::Result<ExitCode> {
    let config = PipelineConfig {
        checkpoint_interval: args.checkpoint_interval,
        checkpoint_records_max: args.checkpoint_records.max(1),
        ..PipelineConfig::default()
    };
    let pipeline = super::open_pipeline(data_dir, config)?;
    let mode = if args.follow {
        let (shutdown_tx, shutdown) = tokio::sync::watch::channel(false);
        std::thread::Builder::new()
            .name("tally-signals".into())
            .spawn(move || wait_for_signal(shutdown_tx))?;
        RunMode::Follow { shutdown }
    } else {
        RunMode::CatchUp
    };
    let summaries = pipeline.run(mode)?;
    let applied: u64 = summaries
        .iter()
        .map(|s| s.next_offset - s.started_at_offset)
        .sum();
    for summary in summaries.iter().filter(|s| s.rebuilt) {
        println!("partition {} was rebuilt from the log", summary.partition);
    }
    let offsets: Vec<String> = summaries
        .iter()
        .map(|s| s.next_offset.to_string())
        .collect();
    println!(
        "applied {applied} records; partitions now at offsets [{}]",
        offsets.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

/// Turns SIGINT or SIGTERM into a shutdown request.
fn wait_for_signal(shutdown: tokio::sync::watch::Sender<bool>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!("cannot listen for signals: {error}");
            return;
        }
    };
    runtime.block_on(async {
        let Ok(mut terminate) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    });
    tracing::info!("shutting down: finishing the current batch and committing a checkpoint");
    let _ = shutdown.send(true);
}
