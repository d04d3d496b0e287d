//! `tally audit conflicts`: resends of a recorded payment with different money facts.
//! `tally audit refunds`: refunds and chargebacks that are not counted, and why — resends of a
//! recorded `refund_ref` with other fields (conflicts), ones more than their donation had left
//! (excess), ones whose donation is not recorded (pending).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use serde::Serialize;
use tally_pipeline::checkpoint::LoadedPartition;
use tally_pipeline::log::{Log, Offset, PartitionId};
use tally_pipeline::operators::dedupe::FieldDifference;
use tally_pipeline::operators::retractions::RetractionStatus;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List every conflicting resend, by partition and offset.
    Conflicts {
        #[arg(long)]
        json: bool,
    },
    /// List every refund or chargeback not counted (conflicting resends, excess, pending).
    Refunds {
        #[arg(long)]
        json: bool,
    },
}

pub fn run(data_dir: &Path, command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Conflicts { json } => conflicts(data_dir, json),
        AuditCommand::Refunds { json } => refunds(data_dir, json),
    }
}

fn conflicts(data_dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
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
        writeln!(
            out,
            "{}  partition {} offset {} (recorded at {}): {}",
            conflict.payment_ref,
            conflict.partition,
            conflict.conflicting_offset,
            conflict.recorded_offset,
            described(&conflict.differences)
        )?;
    }
    writeln!(out, "{} conflicts", conflicts.len())?;
    Ok(ExitCode::SUCCESS)
}

/// A refund or chargeback that does not count, as the audit lists it.
#[derive(Debug, Serialize)]
struct UncountedRefund {
    refund_ref: String,
    payment_ref: String,
    partition: PartitionId,
    /// Where the record that does not count sits.
    offset: Offset,
    /// `conflict`, `excess` or `pending`.
    reason: &'static str,
    amount_cents: u64,
    /// For a conflict, the recorded refund's offset and how the resend differs from it.
    #[serde(skip_serializing_if = "Option::is_none")]
    recorded_offset: Option<Offset>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    differences: Vec<FieldDifference>,
    /// For an excess, what its donation had left when it came.
    #[serde(skip_serializing_if = "Option::is_none")]
    remaining_cents: Option<u64>,
}

fn refunds(data_dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let log = super::open_existing_log(data_dir)?;
    let store = super::open_store(data_dir, log.partition_count())?;
    let mut uncounted = Vec::new();
    for partition in 0..store.partition_count() {
        let loaded = store.load(partition).with_context(|| {
            format!(
                "the state of partition {partition} cannot be read (`tally process` rebuilds it)"
            )
        })?;
        let LoadedPartition::Restored { state, .. } = loaded else {
            continue;
        };
        let ledger = state.retractions();
        for conflict in ledger.conflicts() {
            let recorded = ledger.get(&conflict.refund_ref);
            uncounted.push(UncountedRefund {
                refund_ref: conflict.refund_ref.clone(),
                payment_ref: recorded.map_or_else(String::new, |r| r.event.payment_ref.clone()),
                partition,
                offset: conflict.conflicting_offset,
                reason: "conflict",
                amount_cents: recorded.map_or(0, |r| r.event.amount_cents),
                recorded_offset: Some(conflict.recorded_offset),
                differences: conflict.differences.clone(),
                remaining_cents: None,
            });
        }
        for retraction in ledger.iter() {
            let (reason, remaining_cents) = match retraction.status {
                RetractionStatus::Applied { .. } => continue,
                RetractionStatus::Pending => ("pending", None),
                RetractionStatus::Excess {
                    remaining_cents, ..
                } => ("excess", Some(remaining_cents)),
            };
            uncounted.push(UncountedRefund {
                refund_ref: retraction.event.refund_ref.clone(),
                payment_ref: retraction.event.payment_ref.clone(),
                partition,
                offset: retraction.offset,
                reason,
                amount_cents: retraction.event.amount_cents,
                recorded_offset: None,
                differences: Vec::new(),
                remaining_cents,
            });
        }
    }
    uncounted.sort_by_key(|u| (u.partition, u.offset));
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &uncounted)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    for refund in &uncounted {
        let why = match refund.reason {
            "conflict" => format!(
                "a resend that differs from the one recorded at {}: {}",
                refund.recorded_offset.unwrap_or_default(),
                described(&refund.differences)
            ),
            "excess" => format!(
                "{} cents, more than the {} its donation had left",
                refund.amount_cents,
                refund.remaining_cents.unwrap_or_default()
            ),
            _ => format!(
                "{} cents, its donation is not recorded",
                refund.amount_cents
            ),
        };
        writeln!(
            out,
            "{} of {}  partition {} offset {}: {} ({why})",
            refund.refund_ref, refund.payment_ref, refund.partition, refund.offset, refund.reason
        )?;
    }
    writeln!(out, "{} refunds not counted", uncounted.len())?;
    Ok(ExitCode::SUCCESS)
}

fn described(differences: &[FieldDifference]) -> String {
    differences
        .iter()
        .map(|d| format!("{}: {} -> {}", d.field, d.recorded, d.received))
        .collect::<Vec<_>>()
        .join("; ")
}
