//! `tally checkpoint …`: inspect, save, restore and verify checkpoints.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use tally_pipeline::checkpoint::savepoint;
use tally_pipeline::checkpoint::verify::{Verdict, verify_partition};
use tally_pipeline::clock::{Clock, SystemClock};
use tally_pipeline::log::Log;
use tally_pipeline::runner::PipelineConfig;

use super::{Target, server_request};

#[derive(Debug, Subcommand)]
pub enum CheckpointCommand {
    /// Per partition: committed offset, records applied, commit time, state digest.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Write a savepoint: one consistent file with every partition's state and offsets. It never
    /// replaces an existing file.
    #[command(group(clap::ArgGroup::new("destination").required(true).args(["out", "name"])))]
    Create {
        /// The file to write (not with --server).
        #[arg(long)]
        out: Option<PathBuf>,
        /// A name ([A-Za-z0-9._-], no leading dot): written to <data-dir>/savepoints/NAME, on the
        /// server's machine with --server.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Replace the state with a savepoint; processing continues from its offsets. Needs the
    /// server stopped.
    #[command(group(clap::ArgGroup::new("source").required(true).args(["path", "name"])))]
    Restore {
        /// The savepoint file.
        path: Option<PathBuf>,
        /// A savepoint in <data-dir>/savepoints/, by name.
        #[arg(long)]
        name: Option<String>,
    },
    /// Rebuild the state from the log up to the committed offsets and compare digests.
    Verify {
        #[command(flatten)]
        target: Target,
    },
}

pub fn run(data_dir: &Path, command: CheckpointCommand) -> anyhow::Result<ExitCode> {
    match command {
        CheckpointCommand::List { target, .. } if target.server.is_some() => {
            let answer = server_request(
                data_dir,
                &target,
                reqwest::Method::GET,
                "/v1/checkpoints",
                None,
            )?;
            println!("{}", serde_json::to_string_pretty(&answer)?);
            Ok(ExitCode::SUCCESS)
        }
        CheckpointCommand::Create { out, name, target } if target.server.is_some() => {
            let Some(name) = name else {
                anyhow::bail!(
                    "with --server, give --name: the server writes savepoints only into its \
                     data directory's savepoints/ (not to {})",
                    out.unwrap_or_default().display()
                );
            };
            let body = serde_json::json!({"name": name});
            let answer = server_request(
                data_dir,
                &target,
                reqwest::Method::POST,
                "/v1/checkpoints/savepoint",
                Some(body),
            )?;
            println!(
                "savepoint {} written by the server at offsets {}",
                answer["path"], answer["offsets"]
            );
            Ok(ExitCode::SUCCESS)
        }
        CheckpointCommand::Verify { target } if target.server.is_some() => {
            let answer = server_request(
                data_dir,
                &target,
                reqwest::Method::POST,
                "/v1/checkpoints/verify",
                None,
            )?;
            for partition in answer["partitions"].as_array().into_iter().flatten() {
                println!("{partition}");
            }
            if answer["ok"] == true {
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("tally: some partitions do not match the log");
                Ok(ExitCode::FAILURE)
            }
        }
        CheckpointCommand::List { json, .. } => list(data_dir, json),
        CheckpointCommand::Create { out, name, .. } => {
            let destination = match (out, name) {
                (Some(out), _) => Destination::File(out),
                (None, Some(name)) => {
                    let path = savepoint::named_path(data_dir, &name)?;
                    Destination::Named { name, path }
                }
                (None, None) => unreachable!("clap requires --out or --name"),
            };
            create(data_dir, destination)
        }
        CheckpointCommand::Restore { path, name } => {
            let path = match (path, name) {
                (Some(path), _) => path,
                (None, Some(name)) => savepoint::named_path(data_dir, &name)?,
                (None, None) => unreachable!("clap requires a path or --name"),
            };
            restore(data_dir, &path)
        }
        CheckpointCommand::Verify { .. } => verify(data_dir),
    }
}

fn list(data_dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let log = super::open_existing_log(data_dir)?;
    let store = super::open_store(data_dir, log.partition_count())?;
    let checkpoints = store.list()?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &checkpoints)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:>9}  {:>12}  {:>15}  {:>24}  {:>16}",
        "partition", "offset", "records_applied", "committed_at", "digest"
    )?;
    for (partition, checkpoint) in checkpoints.iter().enumerate() {
        match checkpoint {
            Some(c) => writeln!(
                out,
                "{:>9}  {:>12}  {:>15}  {:>24}  {:016x}",
                partition,
                c.next_offset,
                c.records_applied,
                super::rfc3339(c.committed_at_ms),
                c.state_digest
            )?,
            None => writeln!(
                out,
                "{partition:>9}  {:>12}  {:>15}  {:>24}  {:>16}",
                "-", "-", "none", "-"
            )?,
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Where `checkpoint create` writes.
enum Destination {
    File(PathBuf),
    /// Into the data directory's savepoints/, as the server does.
    Named {
        name: String,
        path: PathBuf,
    },
}

fn create(data_dir: &Path, destination: Destination) -> anyhow::Result<ExitCode> {
    let log = super::open_existing_log(data_dir)?;
    let store = super::open_store(data_dir, log.partition_count())?;
    let now_ms = SystemClock.now_ms();
    let (written, out) = match destination {
        Destination::File(out) => (savepoint::create(&store, &out, now_ms), out),
        Destination::Named { name, path } => (
            savepoint::create_named(&store, data_dir, &name, now_ms).map(|(written, _)| written),
            path,
        ),
    };
    let savepoint =
        written.with_context(|| format!("cannot write the savepoint {}", out.display()))?;
    println!(
        "savepoint {} written at offsets {:?}",
        out.display(),
        savepoint.offsets()
    );
    Ok(ExitCode::SUCCESS)
}

fn restore(data_dir: &Path, path: &Path) -> anyhow::Result<ExitCode> {
    let savepoint = savepoint::read(path)?;
    let log = super::open_existing_log(data_dir)?;
    anyhow::ensure!(
        savepoint.partition_count == log.partition_count(),
        "the savepoint has {} partitions, the log has {}",
        savepoint.partition_count,
        log.partition_count()
    );
    for (partition, offset) in savepoint.offsets().into_iter().enumerate() {
        let end = log.partition(partition as u32)?.end_offset();
        anyhow::ensure!(
            offset <= end,
            "the savepoint is at offset {offset} of partition {partition} but the log ends at {end}: it belongs to another log"
        );
    }
    let store = super::open_store(data_dir, log.partition_count())?;
    savepoint::restore(&store, &savepoint)?;
    println!(
        "restored {} at offsets {:?}; `tally process` continues from there",
        path.display(),
        savepoint.offsets()
    );
    Ok(ExitCode::SUCCESS)
}

fn verify(data_dir: &Path) -> anyhow::Result<ExitCode> {
    let pipeline = super::open_pipeline(data_dir, PipelineConfig::default())?;
    let mut mismatches = 0;
    for partition in 0..pipeline.store().partition_count() {
        let verdict = verify_partition(&pipeline, partition);
        if !verdict.ok() {
            mismatches += 1;
        }
        match verdict {
            Verdict::NoCheckpoint => println!("partition {partition}: no checkpoint"),
            Verdict::Unreadable(error) => println!("partition {partition}: MISMATCH: {error}"),
            Verdict::RebuildFailed(error) => return Err(error.into()),
            Verdict::Compared {
                offset,
                checkpoint_digest,
                rebuilt_digest,
            } if checkpoint_digest == rebuilt_digest => println!(
                "partition {partition}: ok at offset {offset} (digest {checkpoint_digest:016x})"
            ),
            Verdict::Compared {
                offset,
                checkpoint_digest,
                rebuilt_digest,
            } => println!(
                "partition {partition}: MISMATCH at offset {offset}: checkpoint digest {checkpoint_digest:016x}, rebuilt from the log {rebuilt_digest:016x}"
            ),
        }
    }
    if mismatches > 0 {
        eprintln!("tally: {mismatches} partition(s) do not match the log");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
