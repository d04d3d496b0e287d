//! One node, two or three: donations/s through `tally serve` on the embedded log, and on one,
//! two and three nodes over a Fluvio cluster splitting the partitions among themselves
//! (`--owns auto`) — same machine, same traffic, in one run. On one machine the nodes share its
//! cores, so more nodes cannot be faster here; the rows are what someone with a machine per
//! node would run. Each cell is a whole load generator run (the realistic
//! mix with resends, conflicts and invalid requests) ending in its verification; with two
//! nodes, requests alternate between them and verification also requires both nodes to give
//! identical totals and statistics.
//!
//! The Fluvio rows need a cluster: `TALLY_FLUVIO_ENDPOINT=HOST:PORT` (its SC on loopback); each
//! cell uses a new topic. Without it they are skipped, and the output says so.
//!
//! Run: `cargo bench --bench nodes`. `TALLY_BENCH_SECONDS` sets each cell's duration (default
//! 10). Client and servers share the machine's cores.

#[path = "support/loadgen_cell.rs"]
mod loadgen_cell;
#[path = "support/machine.rs"]
mod machine;
#[path = "support/server.rs"]
#[allow(dead_code)]
mod server;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use loadgen_cell::{CONNECTIONS, print_mismatches, run_cell, verified};
use tally_loadgen::report::Report;

const PARTITIONS: &str = "8";
/// (donations per request, offered checkouts per second): both above what one node takes here.
const LOADS: [(usize, f64); 2] = [(1, 20_000.0), (100, 100_000.0)];

/// Where the nodes of a cell keep their log.
#[derive(Debug, Clone, Copy)]
enum Deployment {
    Embedded,
    FluvioOneNode,
    FluvioTwoNodes,
    FluvioThreeNodes,
}

impl Deployment {
    fn name(self) -> &'static str {
        match self {
            Deployment::Embedded => "embedded, 1 node",
            Deployment::FluvioOneNode => "fluvio, 1 node",
            Deployment::FluvioTwoNodes => "fluvio, 2 nodes",
            Deployment::FluvioThreeNodes => "fluvio, 3 nodes",
        }
    }

    /// How many nodes split the partitions.
    fn nodes(self) -> usize {
        match self {
            Deployment::Embedded | Deployment::FluvioOneNode => 1,
            Deployment::FluvioTwoNodes => 2,
            Deployment::FluvioThreeNodes => 3,
        }
    }
}

fn main() -> anyhow::Result<()> {
    let seconds: f64 = std::env::var("TALLY_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10.0);
    let endpoint = std::env::var("TALLY_FLUVIO_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty());
    println!(
        "nodes: tally serve on the embedded log vs 1, 2 and 3 nodes (--owns auto) on a Fluvio cluster, steady profile, {CONNECTIONS} connections, {seconds} s per cell, {PARTITIONS} partitions"
    );
    println!("machine: {}", machine::describe());
    let mut deployments = vec![Deployment::Embedded];
    match &endpoint {
        Some(endpoint) => {
            println!("fluvio: {endpoint} (each cell on a new topic)");
            deployments.extend([
                Deployment::FluvioOneNode,
                Deployment::FluvioTwoNodes,
                Deployment::FluvioThreeNodes,
            ]);
        }
        None => println!(
            "TALLY_FLUVIO_ENDPOINT is not set: the Fluvio rows did not run (set it to a cluster's SC, e.g. 127.0.0.1:9003)"
        ),
    }
    println!();
    println!(
        "{:<18} {:>6} {:>10} {:>11} {:>9} {:>9} {:>11} {:>11} {:>8}",
        "deployment",
        "batch",
        "offered/s",
        "achieved/s",
        "p50 ms",
        "p99 ms",
        "fresh p50",
        "fresh p99",
        "verified"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let duration = Duration::from_secs_f64(seconds);
    for (batch, rate) in LOADS {
        for &deployment in &deployments {
            let report =
                runtime.block_on(cell(deployment, endpoint.as_deref(), batch, rate, duration))?;
            print_row(deployment, batch, rate, &report);
        }
    }
    Ok(())
}

async fn cell(
    deployment: Deployment,
    endpoint: Option<&str>,
    batch: usize,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<Report> {
    let log = match (deployment, endpoint) {
        (Deployment::Embedded, _) => "embedded".to_owned(),
        (_, Some(endpoint)) => format!("fluvio://{endpoint}/{}", new_topic()),
        (_, None) => anyhow::bail!("a Fluvio cell needs TALLY_FLUVIO_ENDPOINT"),
    };
    let mut data_dirs = Vec::new();
    let mut nodes = Vec::new();
    for _ in 0..deployment.nodes() {
        let data_dir = tempfile::tempdir()?;
        let args = ["--log", &log, "--partitions", PARTITIONS];
        nodes.push(server::start_server_with(data_dir.path(), &args)?);
        data_dirs.push(data_dir);
    }
    let targets: Vec<String> = nodes.iter().map(|node| node.base.clone()).collect();
    let report = run_cell(&targets, batch, rate, duration, format!("nodes{batch}")).await;
    drop(nodes);
    report
}

fn new_topic() -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("tally-bench-nodes-{}-{millis}", std::process::id())
}

fn print_row(deployment: Deployment, batch: usize, rate: f64, report: &Report) {
    println!(
        "{:<18} {:>6} {:>10.0} {:>11.0} {:>9.2} {:>9.2} {:>11.1} {:>11.1} {:>8}",
        deployment.name(),
        batch,
        rate,
        report.achieved_donations_per_s,
        report.latency.p50_ms,
        report.latency.p99_ms,
        report.freshness.p50_ms,
        report.freshness.p99_ms,
        verified(report)
    );
    print_mismatches(report);
}
