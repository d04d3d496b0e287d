//! End to end: `tally serve` (release, fresh data directory) driven by the load generator's own
//! engine (`tally_loadgen::run`), open loop at several offered rates, single callbacks and
//! batches. Every cell is a whole run — the realistic traffic mix with resends, conflicts, bursts
//! and invalid requests — and ends with the load generator's verification of totals and stats.
//!
//! Per cell: offered and achieved donations/s, request latency from the due time (no coordinated
//! omission) p50/p99/p99.9, freshness (202 → counted in `GET /v1/campaigns/{id}`) p50/p99, and
//! whether verification passed. Client and server share the machine's cores.
//!
//! **limit**: can the load generator drive the server to its limit? Single donations at 64
//! connections on a fresh server from the `serve` bench's lean closed-loop client, then on
//! another fresh server from the load generator offered half as much again as the lean client
//! achieved (so the server, not the schedule, sets the pace); its achieved rate as a share of
//! the lean client's. Between them, the lean client again on a fresh server, sending the load
//! generator's traffic mix (its bodies, in the order it plans them, closed loop, every 2xx
//! counted as the load generator counts them), so the table shows how much of the difference
//! is the traffic the server is given and how much is the client.
//!
//! Run: `cargo bench --bench e2e [FILTER]`: FILTER (optional) keeps the groups whose name
//! (cells, limit) contains it. `TALLY_BENCH_SECONDS` sets each cell's duration (default 10).

#[path = "support/closed_loop.rs"]
#[allow(dead_code)]
mod closed_loop;
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
    // Cargo passes `--bench` (and maybe other flags); the first other argument is a filter.
    let filter = std::env::args().skip(1).find(|arg| !arg.starts_with('-'));
    let runs = |group: &str| filter.as_ref().is_none_or(|f| group.contains(f.as_str()));
    // One thread, as `tally-loadgen` runs its sender (its planner has a thread of its own).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let duration = Duration::from_secs_f64(seconds);
    if runs("cells") {
        print_cells(&runtime, duration)?;
    }
    if runs("limit") {
        let limit = runtime.block_on(limit(duration))?;
        print_limit(&limit);
    }
    Ok(())
}

fn print_cells(runtime: &tokio::runtime::Runtime, duration: Duration) -> anyhow::Result<()> {
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
    for (batch, rate) in CELLS {
        let report = runtime.block_on(cell(batch, rate, duration))?;
        print_row(batch, rate, &report);
    }
    Ok(())
}

/// Connections of the limit group, as in the `serve` bench's partitions table.
const LIMIT_CONNECTIONS: usize = 64;
/// The load generator is offered this much more than the lean client achieved.
const LIMIT_OVERLOAD: f64 = 1.5;

/// The limit group's rows.
struct Limit {
    lean: closed_loop::Phase,
    lean_over_mix: closed_loop::Phase,
    offered: f64,
    loadgen: Report,
}

/// The bodies of the load generator's traffic mix (donations, resends, conflicting resends,
/// invalid requests, bursts), in the order it plans them, for about `donations` requests.
fn mix_bodies(donations: usize, run_id: &str) -> (Vec<String>, Vec<Vec<u8>>) {
    use tally_loadgen::traffic::{Traffic, TrafficConfig};
    let config = TrafficConfig {
        seed: 7,
        run_id: run_id.to_owned(),
        ..TrafficConfig::default()
    };
    let campaigns = config.campaigns.clone();
    let mut traffic = Traffic::new(config);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut bodies = Vec::with_capacity(donations);
    while bodies.len() < donations {
        for planned in traffic.checkout(now_ms) {
            bodies.push(planned.body().as_bytes().to_vec());
        }
    }
    (campaigns, bodies)
}

async fn limit(duration: Duration) -> anyhow::Result<Limit> {
    let lean = {
        let data_dir = tempfile::tempdir()?;
        let process = server::start_server(data_dir.path())?;
        server::create_campaigns(&process.base, &["bench"]).await?;
        closed_loop::closed_loop(&process.base, LIMIT_CONNECTIONS, 1, duration, 70).await
    };
    let lean_over_mix = {
        let wanted = (lean.donations_per_s * duration.as_secs_f64() * LIMIT_OVERLOAD) as usize;
        let (campaigns, bodies) = mix_bodies(wanted, "e2emix");
        let data_dir = tempfile::tempdir()?;
        let process = server::start_server(data_dir.path())?;
        server::create_campaigns(&process.base, &campaigns).await?;
        closed_loop::closed_loop_over(
            &process.base,
            LIMIT_CONNECTIONS,
            duration,
            std::sync::Arc::new(bodies),
        )
        .await
    };
    // A checkout is about 1.13 donations (resends and bursts): offer checkouts accordingly.
    let offered = lean.donations_per_s * LIMIT_OVERLOAD / 1.13;
    let data_dir = tempfile::tempdir()?;
    let process = server::start_server(data_dir.path())?;
    let loadgen = run_cell(
        std::slice::from_ref(&process.base),
        1,
        offered,
        duration,
        "e2e-limit".to_owned(),
    )
    .await?;
    drop(process);
    Ok(Limit {
        lean,
        lean_over_mix,
        offered,
        loadgen,
    })
}

fn print_limit(limit: &Limit) {
    println!();
    println!(
        "limit: single donations at {LIMIT_CONNECTIONS} connections, each client on a fresh tally serve"
    );
    println!(
        "{:<58} {:>12} {:>9} {:>9}",
        "client", "achieved/s", "x lean", "verified"
    );
    println!(
        "{:<58} {:>12.0} {:>9} {:>9}",
        "serve bench's lean client, closed loop", limit.lean.donations_per_s, "1.00", "-"
    );
    println!(
        "{:<58} {:>12.0} {:>9.2} {:>9}",
        "lean client, the load generator's mix, closed loop",
        limit.lean_over_mix.donations_per_s,
        limit.lean_over_mix.donations_per_s / limit.lean.donations_per_s.max(1e-9),
        "-"
    );
    let share = limit.loadgen.achieved_donations_per_s / limit.lean.donations_per_s.max(1e-9);
    let share_of_mix =
        limit.loadgen.achieved_donations_per_s / limit.lean_over_mix.donations_per_s.max(1e-9);
    println!(
        "{:<58} {:>12.0} {:>9.2} {:>9}",
        format!(
            "tally-loadgen, realistic mix, offered {:.0} checkouts/s",
            limit.offered
        ),
        limit.loadgen.achieved_donations_per_s,
        share,
        verified(&limit.loadgen)
    );
    print_mismatches(&limit.loadgen);
    println!(
        "target: the load generator within 10% of the lean client: {:.2}x, {}",
        share,
        if share >= 0.9 { "met" } else { "NOT met" }
    );
    println!(
        "the load generator against the lean client on the same mix: {share_of_mix:.2}x (how much of the gap is the client, not the traffic)"
    );
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
