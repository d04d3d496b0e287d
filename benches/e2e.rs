//! End to end: `tally serve` (release, fresh data directory) driven by the load generator's own
//! engine (`tally_loadgen::run`), open loop at several offered rates, single callbacks and
//! batches. Every cell is a whole run — the realistic traffic mix with resends, conflicts, bursts
//! and invalid requests — and ends with the load generator's verification of totals and stats.
//!
//! Per cell: offered and achieved donations/s, request latency from the due time (no coordinated
//! omission) p50/p99/p99.9, freshness (202 → counted in `GET /v1/campaigns/{id}`) p50/p99, and
//! whether verification passed. Client and server share the machine's cores.
//!
//! Run: `cargo bench --bench e2e`. `TALLY_BENCH_SECONDS` sets each cell's duration (default 10).

#[path = "support/loadgen_cell.rs"]
mod loadgen_cell;
#[path = "support/machine.rs"]
mod machine;
#[path = "support/server.rs"]
#[allow(dead_code)]
mod server;

use std::time::Duration;

use loadgen_cell::{CONNECTIONS, print_mismatches, run_cell, verified};
use tally_loadgen::report::Report;

/// (donations per request, offered checkouts per second).
const CELLS: [(usize, f64); 7] = [
    (1, 2_000.0),
    (1, 5_000.0),
    (1, 10_000.0),
    (1, 20_000.0),
    (100, 20_000.0),
    (100, 100_000.0),
    (100, 200_000.0),
];

fn main() -> anyhow::Result<()> {
    let seconds: f64 = std::env::var("TALLY_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10.0);
    println!(
        "e2e: tally serve + tally-loadgen over loopback, steady profile, {CONNECTIONS} connections, {seconds} s per cell"
    );
    println!("machine: {}", machine::describe());
    println!();
    println!(
        "{:>6} {:>10} {:>11} {:>9} {:>9} {:>9} {:>11} {:>11} {:>8}",
        "batch",
        "offered/s",
        "achieved/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "fresh p50",
        "fresh p99",
        "verified"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    for (batch, rate) in CELLS {
        let report = runtime.block_on(cell(batch, rate, Duration::from_secs_f64(seconds)))?;
        print_row(batch, rate, &report);
    }
    Ok(())
}

async fn cell(batch: usize, rate: f64, duration: Duration) -> anyhow::Result<Report> {
    let data_dir = tempfile::tempdir()?;
    let process = server::start_server(data_dir.path())?;
    let report = run_cell(
        std::slice::from_ref(&process.base),
        batch,
        rate,
        duration,
        format!("e2e{batch}x{rate}"),
    )
    .await;
    drop(process);
    report
}

fn print_row(batch: usize, rate: f64, report: &Report) {
    println!(
        "{:>6} {:>10.0} {:>11.0} {:>9.2} {:>9.2} {:>9.2} {:>11.1} {:>11.1} {:>8}",
        batch,
        // Offered donations/s: a checkout is about one donation (resends and bursts add ~13%).
        rate,
        report.achieved_donations_per_s,
        report.latency.p50_ms,
        report.latency.p99_ms,
        report.latency.p999_ms,
        report.freshness.p50_ms,
        report.freshness.p99_ms,
        verified(report)
    );
    print_mismatches(report);
}
