//! `tally audit conflicts`: resends of a recorded payment with different money facts.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use tally_pipeline::log::Log;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List every conflicting resend, by partition and offset.
    Conflicts {
        #[arg(long)]
        json: bool,
    },
}

pub fn run(data_dir: &Path, command: AuditCommand) -> anyhow::Result<ExitCode> {
    let AuditCommand::Conflicts { json } = command;
    let log = super::open_existing_log(data_dir)?;
    let store = super::open_store(data_dir, log.partition_count())?;
    let mut conflicts = Vec::new();
    for partition in 0..store.partition_count() {
        conflicts.extend(store.conflicts(partition)?);
    }
    conflicts.sort_by_key(|c| (c.partition, c.conflicting_offset));
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &conflicts)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    for conflict in &conflicts {
        let differences: Vec<String> = conflict
            .differences
            .iter()
            .map(|d| format!("{}: {} -> {}", d.field, d.recorded, d.received))
            .collect();
        writeln!(
            out,
            "{}  partition {} offset {} (recorded at {}): {}",
            conflict.payment_ref,
            conflict.partition,
            conflict.conflicting_offset,
            conflict.recorded_offset,
            differences.join("; ")
        )?;
    }
    writeln!(out, "{} conflicts", conflicts.len())?;
    Ok(ExitCode::SUCCESS)
}
