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
//! is the traffic the server is given and how much is the client. The three run in rounds
//! (`TALLY_BENCH_ROUNDS`, default 2), and each row shows the cores the client and the server used
//! in the middle of it and their CPU time per donation; the target is judged on the median.
//!
//! Run: `cargo bench --bench e2e [FILTER]`: FILTER (optional) keeps the groups whose name
//! (cells, limit) contains it. `TALLY_BENCH_SECONDS` sets each cell's duration (default 10).

/// The allocator `tally-loadgen` (and `tally serve`) runs with: the load generator's engine runs
/// in this process, so its CPU per request is the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        let rounds = std::env::var("TALLY_BENCH_ROUNDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|&rounds: &usize| rounds > 0)
            .unwrap_or(2);
        print_limit_header(rounds, duration);
        let mut results = Vec::with_capacity(rounds);
        for round in 1..=rounds {
            let result = runtime.block_on(limit_round(round, duration))?;
            print_limit_round(round, &result);
            results.push(result);
        }
        print_limit_summary(&results);
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

/// One client's run in a round of the limit group, with the CPU the client (this process) and
/// the server used in the middle of it.
struct LimitRow {
    donations_per_s: f64,
    client_cores: Option<f64>,
    server_cores: Option<f64>,
}

impl LimitRow {
    /// CPU microseconds per donation of `cores`.
    fn us_per_donation(&self, cores: Option<f64>) -> Option<f64> {
        cores
            .filter(|_| self.donations_per_s > 0.0)
            .map(|cores| cores / self.donations_per_s * 1e6)
    }
}

/// One round of the limit group: the three clients, each on a fresh server.
struct LimitRound {
    lean: LimitRow,
    lean_over_mix: LimitRow,
    offered: f64,
    loadgen: LimitRow,
    report: Report,
}

/// How much of a phase of `duration` the CPU window leaves out at each end: a second, or a
/// quarter of a short phase.
fn cpu_window_margin(duration: Duration) -> Duration {
    Duration::from_secs(1).min(duration / 4)
}

/// Samples this process and the server `server_pid` over the middle of a phase of `duration`:
/// from [`cpu_window_margin`] in to as long before its end.
fn cpu_window(server_pid: u32, duration: Duration) -> machine::CpuWindow {
    let skip = cpu_window_margin(duration);
    let window = duration
        .saturating_sub(skip * 2)
        .max(Duration::from_millis(100));
    machine::CpuWindow::start(vec![std::process::id(), server_pid], skip, window)
}

/// The row of a phase that achieved `donations_per_s`, with the cores `window` saw.
fn limit_row(donations_per_s: f64, window: machine::CpuWindow) -> LimitRow {
    let cores = window.cores();
    LimitRow {
        donations_per_s,
        client_cores: cores[0],
        server_cores: cores[1],
    }
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

async fn limit_round(round: usize, duration: Duration) -> anyhow::Result<LimitRound> {
    let lean = {
        let data_dir = tempfile::tempdir()?;
        let process = server::start_server(data_dir.path())?;
        server::create_campaigns(&process.base, &["bench"]).await?;
        let window = cpu_window(process.pid(), duration);
        let phase = closed_loop::closed_loop(
            &process.base,
            LIMIT_CONNECTIONS,
            1,
            duration,
            70 + round as u64,
        )
        .await;
        limit_row(phase.donations_per_s, window)
    };
    let lean_over_mix = {
        let wanted = (lean.donations_per_s * duration.as_secs_f64() * LIMIT_OVERLOAD) as usize;
        let (campaigns, bodies) = mix_bodies(wanted, &format!("e2emix{round}"));
        let data_dir = tempfile::tempdir()?;
        let process = server::start_server(data_dir.path())?;
        server::create_campaigns(&process.base, &campaigns).await?;
        let window = cpu_window(process.pid(), duration);
        let phase = closed_loop::closed_loop_over(
            &process.base,
            LIMIT_CONNECTIONS,
            duration,
            std::sync::Arc::new(bodies),
        )
        .await;
        limit_row(phase.donations_per_s, window)
    };
    // A checkout is about 1.13 donations (resends and bursts): offer checkouts accordingly.
    let offered = lean.donations_per_s * LIMIT_OVERLOAD / 1.13;
    let data_dir = tempfile::tempdir()?;
    let process = server::start_server(data_dir.path())?;
    let window = cpu_window(process.pid(), duration);
    let report = run_cell(
        std::slice::from_ref(&process.base),
        1,
        offered,
        duration,
        format!("e2e-limit{round}"),
    )
    .await?;
    drop(process);
    Ok(LimitRound {
        lean,
        lean_over_mix,
        offered,
        loadgen: limit_row(report.achieved_donations_per_s, window),
        report,
    })
}

fn print_limit_header(rounds: usize, duration: Duration) {
    println!();
    println!(
        "limit: single donations at {LIMIT_CONNECTIONS} connections, each client on a fresh tally serve; {rounds} rounds of the three clients"
    );
    println!(
        "cores: CPU seconds per second from {margin:.1} s into a phase to {margin:.1} s before its end (client: this process, the load generator's engine runs in it)",
        margin = cpu_window_margin(duration).as_secs_f64()
    );
    println!(
        "{:<5} {:<52} {:>11} {:>7} {:>8} {:>8} {:>9} {:>9} {:>9}",
        "round",
        "client",
        "achieved/s",
        "x lean",
        "client c",
        "server c",
        "client us",
        "server us",
        "verified"
    );
}

fn print_limit_row(round: usize, name: &str, row: &LimitRow, lean: f64, verified: &str) {
    let cores = |c: Option<f64>| c.map_or("-".to_owned(), |c| format!("{c:.2}"));
    let micros = |m: Option<f64>| m.map_or("-".to_owned(), |m| format!("{m:.1}"));
    println!(
        "{:<5} {:<52} {:>11.0} {:>7.2} {:>8} {:>8} {:>9} {:>9} {:>9}",
        round,
        name,
        row.donations_per_s,
        row.donations_per_s / lean.max(1e-9),
        cores(row.client_cores),
        cores(row.server_cores),
        micros(row.us_per_donation(row.client_cores)),
        micros(row.us_per_donation(row.server_cores)),
        verified
    );
}

fn print_limit_round(round: usize, limit: &LimitRound) {
    let lean = limit.lean.donations_per_s;
    print_limit_row(
        round,
        "serve bench's lean client, closed loop",
        &limit.lean,
        lean,
        "-",
    );
    print_limit_row(
        round,
        "lean client, the load generator's mix, closed loop",
        &limit.lean_over_mix,
        lean,
        "-",
    );
    print_limit_row(
        round,
        &format!(
            "tally-loadgen, realistic mix, offered {:.0}/s",
            limit.offered
        ),
        &limit.loadgen,
        lean,
        verified(&limit.report),
    );
    print_mismatches(&limit.report);
}

/// The median of `values` (the mean of the middle two when there is an even number).
fn median(mut values: Vec<f64>) -> f64 {
    assert!(!values.is_empty(), "a median of no values");
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[middle - 1] + values[middle]) / 2.0
    } else {
        values[middle]
    }
}

fn print_limit_summary(rounds: &[LimitRound]) {
    let ratio = |of: fn(&LimitRound) -> &LimitRow, to: fn(&LimitRound) -> &LimitRow| {
        median(
            rounds
                .iter()
                .map(|r| of(r).donations_per_s / to(r).donations_per_s.max(1e-9))
                .collect(),
        )
    };
    let share = ratio(|r| &r.loadgen, |r| &r.lean);
    let share_of_mix = ratio(|r| &r.loadgen, |r| &r.lean_over_mix);
    let mix = ratio(|r| &r.lean_over_mix, |r| &r.lean);
    let all_passed = rounds
        .iter()
        .all(|r| r.report.verification.as_ref().is_some_and(|v| v.passed));
    println!(
        "medians over {} rounds: the mix against the lean client {mix:.2}x; the load generator against the lean client {share:.2}x, against the lean client on the same mix {share_of_mix:.2}x (how much of the gap is the client, not the traffic)",
        rounds.len()
    );
    println!(
        "target: the load generator within 10% of the lean client (median): {share:.2}x, {}; verification {}",
        if share >= 0.9 { "met" } else { "NOT met" },
        if all_passed {
            "passed in every round"
        } else {
            "FAILED in a round"
        }
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
