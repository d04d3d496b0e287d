//! End-to-end throughput, latency and freshness of `tally serve` over loopback HTTP.
//!
//! Starts the release `tally serve` binary on 127.0.0.1 with a fresh data directory, then, from
//! this process (on the same machine — client and server share its cores):
//!
//! - **single**: closed-loop `POST /v1/donations` at several concurrencies: accepted donations/s
//!   (each one durable in the log before its 202) and request latency p50/p99/p99.9/max;
//! - **batch**: `POST /v1/donations/batch` of 1,000 donations: donations/s and request latency;
//! - **freshness**: during a background load, time from a 202 to the donation being visible in
//!   `GET /v1/campaigns/{id}` (polled every millisecond), p50/p99;
//! - **contention**: closed-loop single donations at 16 connections, alone and then with 32
//!   more clients looping on the widest statistics query of the campaign being donated to
//!   (no `bucket`, year 0 to year 9999, each client sending the next as soon as it has an
//!   answer, `Retry-After` ignored): donations/s and p99 of both, and their ratio;
//! - **partitions**: single donations at 64 connections and batches of 1,000 at 8, each on a
//!   fresh server with a log of 1, 8 and 64 partitions, and against a **ceiling**: the same
//!   client against a server that only parses the same JSON with axum and answers 202 (this
//!   bench's own executable, started again as that server), so each row says what share of
//!   the HTTP and JSON work alone tally reaches. The servers run in interleaved rounds (every
//!   server once a round, `TALLY_BENCH_ROUNDS`, default 3) and the table gives medians, so a
//!   machine whose speed drifts between minutes moves every row alike.
//!
//! Run: `cargo bench --bench serve [FILTER]`: FILTER (optional) keeps the groups whose name
//! (single, batch, freshness, contention, partitions) contains it. `TALLY_BENCH_SECONDS` sets each phase's
//! duration (default 8).

#[path = "support/closed_loop.rs"]
#[allow(dead_code)]
mod closed_loop;
#[path = "support/machine.rs"]
mod machine;
#[path = "support/server.rs"]
mod server;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tally_api::signature::{SigningSecret, sign};

use closed_loop::{Phase, closed_loop, donation, now_s};
use server::{Connection, SIGNING_SECRET, start_server, start_server_with};

const SINGLE_CONCURRENCY: [usize; 3] = [16, 64, 256];
const BATCH_ITEMS: usize = 1000;
const BATCH_CONCURRENCY: [usize; 2] = [2, 8];
const FRESHNESS_PROBES: usize = 200;
/// Donation connections of the contention phases: the lowest single concurrency, where latency
/// shows added queueing most.
const CONTENTION_CONCURRENCY: usize = 16;
/// Clients looping on the widest statistics query during the contended phase.
const STATS_LOOPERS: usize = 32;
/// The widest range RFC 3339 can name, without a series.
const WIDEST_STATS_PATH: &str =
    "/v1/campaigns/bench/stats?from=0000-01-01T00:00:00Z&to=9999-12-31T23:59:00Z";

fn signed(
    client: &reqwest::Client,
    secret: &SigningSecret,
    url: &str,
    body: String,
) -> reqwest::RequestBuilder {
    let signature = sign(secret, now_s(), body.as_bytes());
    client
        .post(url)
        .header("Content-Type", "application/json")
        .header("Tally-Signature", signature)
        .body(body)
}

/// Time from a 202 to the donation showing in GET /v1/campaigns/probe, under background load.
async fn freshness(base: &str, duration: Duration) -> Histogram<u64> {
    let client = reqwest::Client::new();
    let secret = SigningSecret::from_text(SIGNING_SECRET);
    let busy = Arc::new(AtomicBool::new(true));
    let background = {
        let (base, busy) = (base.to_owned(), Arc::clone(&busy));
        tokio::spawn(async move {
            while busy.load(Ordering::Relaxed) {
                closed_loop(&base, 16, 1, Duration::from_millis(500), 99).await;
            }
        })
    };
    let mut freshness_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let deadline = Instant::now() + duration.max(Duration::from_secs(5));
    let mut seen = 0u64;
    for probe in 0..FRESHNESS_PROBES {
        if Instant::now() > deadline {
            break;
        }
        let body = donation(&format!("probe-{probe}"), "probe", 100);
        let response = signed(&client, &secret, &format!("{base}/v1/donations"), body)
            .send()
            .await;
        let accepted_at = Instant::now();
        if !response.is_ok_and(|r| r.status().is_success()) {
            continue;
        }
        loop {
            let view: serde_json::Value = match client
                .get(format!("{base}/v1/campaigns/probe"))
                .send()
                .await
            {
                Ok(response) => response.json().await.unwrap_or_default(),
                Err(_) => serde_json::Value::Null,
            };
            if view["donations"].as_u64().unwrap_or(0) > seen {
                seen += 1;
                let _ = freshness_us.record(accepted_at.elapsed().as_micros() as u64);
                break;
            }
            // Not visible after this long means the pipeline is stuck: report it, stop probing.
            if accepted_at.elapsed() > Duration::from_secs(10) {
                eprintln!("a probe donation was not visible after 10 s: {view}");
                busy.store(false, Ordering::Relaxed);
                let _ = background.await;
                return freshness_us;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    busy.store(false, Ordering::Relaxed);
    let _ = background.await;
    freshness_us
}

/// What the statistics loopers were answered.
#[derive(Debug, Default, Clone, Copy)]
struct LooperAnswers {
    ok: u64,
    busy: u64,
    other: u64,
}

/// Clients sending the widest statistics query back to back, each the next as soon as it has
/// an answer (`Retry-After` ignored), until stopped.
struct StatsLoopers {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<LooperAnswers>>,
}

impl StatsLoopers {
    fn start(base: &str, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|_| tokio::spawn(loop_on_widest_stats(base.to_owned(), Arc::clone(&stop))))
            .collect();
        Self { stop, tasks }
    }

    async fn stop(self) -> LooperAnswers {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = LooperAnswers::default();
        for task in self.tasks {
            if let Ok(answers) = task.await {
                total.ok += answers.ok;
                total.busy += answers.busy;
                total.other += answers.other;
            }
        }
        total
    }
}

async fn loop_on_widest_stats(base: String, stop: Arc<AtomicBool>) -> LooperAnswers {
    let mut answers = LooperAnswers::default();
    let Ok(mut connection) = Connection::open(&base).await else {
        answers.other += 1;
        return answers;
    };
    while !stop.load(Ordering::Relaxed) {
        match connection.get(WIDEST_STATS_PATH).await {
            Ok((200, _)) => answers.ok += 1,
            Ok((503, _)) => answers.busy += 1,
            Ok(_) => answers.other += 1,
            Err(_) => {
                answers.other += 1;
                match Connection::open(&base).await {
                    Ok(fresh) => connection = fresh,
                    Err(_) => return answers,
                }
            }
        }
    }
    answers
}

/// One row of the contention table.
struct ContentionRow {
    name: &'static str,
    donations: Option<Phase>,
    stats: Option<LooperAnswers>,
    seconds: f64,
    /// CPU seconds the server used per second of the phase, when /proc tells.
    server_cores: Option<f64>,
}

/// Single donations alone, the statistics loopers alone, then both at once.
async fn contention(base: &str, server_pid: u32, duration: Duration) -> Vec<ContentionRow> {
    let mut rows = Vec::new();
    for (name, donate, query) in [
        ("single donations alone", true, false),
        ("widest stats loopers alone", false, true),
        ("single donations + widest stats loopers", true, true),
    ] {
        let cpu_before = machine::process_cpu_seconds(server_pid);
        let started = Instant::now();
        let loopers = query.then(|| StatsLoopers::start(base, STATS_LOOPERS));
        let donations = if donate {
            Some(
                closed_loop(
                    base,
                    CONTENTION_CONCURRENCY,
                    1,
                    duration,
                    20 + rows.len() as u64,
                )
                .await,
            )
        } else {
            tokio::time::sleep(duration).await;
            None
        };
        let stats = match loopers {
            Some(loopers) => Some(loopers.stop().await),
            None => None,
        };
        let seconds = started.elapsed().as_secs_f64();
        let server_cores = cpu_before
            .zip(machine::process_cpu_seconds(server_pid))
            .map(|(before, after)| (after - before) / seconds);
        rows.push(ContentionRow {
            name,
            donations,
            stats,
            seconds,
            server_cores,
        });
    }
    rows
}

fn print_contention(rows: &[ContentionRow]) {
    println!();
    println!(
        "contention: single donations ({CONTENTION_CONCURRENCY} connections) alone and with {STATS_LOOPERS} clients looping on"
    );
    println!("  GET {WIDEST_STATS_PATH}");
    println!(
        "{:<42} {:>11} {:>9} {:>9} {:>9} {:>9} {:>12}",
        "phase", "donations/s", "p50 ms", "p99 ms", "stats/s", "503/s", "server cores"
    );
    let dash = || "-".to_owned();
    for row in rows {
        let donations = row.donations.as_ref();
        println!(
            "{:<42} {:>11} {:>9} {:>9} {:>9} {:>9} {:>12}",
            row.name,
            donations.map_or_else(dash, |d| format!("{:.0}", d.donations_per_s)),
            donations.map_or_else(dash, |d| format!("{:.2}", ms(&d.latency_us, 0.5))),
            donations.map_or_else(dash, |d| format!("{:.2}", ms(&d.latency_us, 0.99))),
            row.stats
                .map_or_else(dash, |s| format!("{:.0}", s.ok as f64 / row.seconds)),
            row.stats
                .map_or_else(dash, |s| format!("{:.0}", s.busy as f64 / row.seconds)),
            row.server_cores.map_or_else(dash, |c| format!("{c:.2}")),
        );
        let errors = donations.map_or(0, |d| d.errors) + row.stats.map_or(0, |s| s.other);
        if errors > 0 {
            println!("       {errors} errors (donations not accepted, stats neither 200 nor 503)");
        }
    }
    let [Some(alone), _, Some(contended)] =
        [0, 1, 2].map(|i| rows.get(i).and_then(|r| r.donations.as_ref()))
    else {
        return;
    };
    let p99_ratio = ms(&contended.latency_us, 0.99) / ms(&alone.latency_us, 0.99).max(1e-9);
    println!(
        "{:<42} {:>10.2}x {:>8.2}x {:>8.2}x",
        "with loopers / alone",
        contended.donations_per_s / alone.donations_per_s.max(1e-9),
        ms(&contended.latency_us, 0.5) / ms(&alone.latency_us, 0.5).max(1e-9),
        p99_ratio
    );
    if let Some(row) = rows.get(1)
        && let (Some(stats), Some(cores)) = (row.stats, row.server_cores)
        && stats.ok > 0
    {
        println!(
            "server CPU per stats answer with the loopers alone: {:.0} us",
            cores * row.seconds * 1e6 / stats.ok as f64
        );
    }
    println!(
        "target: single-donation p99 with the loopers <= 2x alone: {}",
        if p99_ratio <= 2.0 { "met" } else { "NOT met" }
    );
}

fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

/// The campaigns every phase donates to.
const CAMPAIGNS: [&str; 2] = ["bench", "probe"];
/// Set in the environment of this executable started again as the ceiling server.
const CEILING_SERVER_ENV: &str = "TALLY_BENCH_CEILING_SERVER";
const PARTITION_COUNTS: [u32; 3] = [1, 8, 64];
const PARTITION_SINGLE_CONCURRENCY: usize = 64;
const PARTITION_BATCH_CONCURRENCY: usize = 8;

/// One donation as the ceiling server parses it: the fields of the callback.
#[derive(Debug, serde::Deserialize)]
#[allow(dead_code)]
struct CeilingDonation {
    payment_ref: String,
    order_id: String,
    user_id: String,
    campaign_id: String,
    amount_cents: u64,
    paid_at: String,
}

/// The ceiling: parses each donation (or batch) with axum's JSON extractor and answers 202,
/// nothing else; on the runtime `tally serve` uses.
fn run_ceiling_server() -> anyhow::Result<()> {
    use axum::http::StatusCode;
    use axum::routing::post;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let app = axum::Router::new()
            .route(
                "/v1/donations",
                post(|axum::Json(_): axum::Json<CeilingDonation>| async { StatusCode::ACCEPTED }),
            )
            .route(
                "/v1/donations/batch",
                post(|axum::Json(_): axum::Json<Vec<CeilingDonation>>| async {
                    StatusCode::ACCEPTED
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("listening on {}", listener.local_addr()?);
        axum::serve(listener, app).await?;
        anyhow::Ok(())
    })
}

/// This executable, started again as the ceiling server; stopped on drop.
struct CeilingServer {
    child: std::process::Child,
    base: String,
}

impl CeilingServer {
    fn start() -> anyhow::Result<Self> {
        use std::io::BufRead;
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .env(CEILING_SERVER_ENV, "1")
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let mut server = Self {
            child,
            base: String::new(),
        };
        let mut lines = std::io::BufReader::new(stdout).lines();
        let line = lines
            .next()
            .ok_or_else(|| anyhow::anyhow!("the ceiling server exited before listening"))??;
        let address = line
            .strip_prefix("listening on ")
            .ok_or_else(|| anyhow::anyhow!("the ceiling server said {line:?}"))?;
        server.base = format!("http://{address}");
        Ok(server)
    }
}

impl Drop for CeilingServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The servers of the partitions table: tally at each partition count, then the ceiling (`None`).
fn partition_servers() -> impl Iterator<Item = Option<u32>> {
    PARTITION_COUNTS
        .into_iter()
        .map(Some)
        .chain(std::iter::once(None))
}

/// One server's single and batch phases in one round of the partitions table.
struct RoundResult {
    single: Phase,
    batch: Phase,
    /// The server's CPU time per donation accepted in each phase, in microseconds.
    single_cpu_us: Option<f64>,
    batch_cpu_us: Option<f64>,
}

/// One round: every server of the table, one after the other, each on a fresh start. Rounds are
/// interleaved so that a ratio compares servers measured minutes apart at most, not a whole
/// table apart.
type Round = Vec<(Option<u32>, RoundResult)>;

/// Runs `phase` and says how much CPU the process `pid` spent per donation it accepted.
async fn with_cpu_per_donation(
    pid: u32,
    duration: Duration,
    phase: impl std::future::Future<Output = Phase>,
) -> (Phase, Option<f64>) {
    let before = machine::process_cpu_seconds(pid);
    let phase = phase.await;
    let after = machine::process_cpu_seconds(pid);
    let donations = phase.donations_per_s * duration.as_secs_f64();
    let per_donation = before
        .zip(after)
        .filter(|_| donations > 0.0)
        .map(|(before, after)| (after - before) / donations * 1e6);
    (phase, per_donation)
}

/// The single and batch phases against the server at `base` (process `pid`).
async fn measure_server(base: &str, pid: u32, duration: Duration, seed: u64) -> RoundResult {
    let (single, single_cpu_us) = with_cpu_per_donation(
        pid,
        duration,
        closed_loop(base, PARTITION_SINGLE_CONCURRENCY, 1, duration, seed),
    )
    .await;
    let (batch, batch_cpu_us) = with_cpu_per_donation(
        pid,
        duration,
        closed_loop(
            base,
            PARTITION_BATCH_CONCURRENCY,
            BATCH_ITEMS,
            duration,
            seed + 1,
        ),
    )
    .await;
    RoundResult {
        single,
        batch,
        single_cpu_us,
        batch_cpu_us,
    }
}

/// The partitions table's rounds: in each, every partition count on a fresh server, then the
/// ceiling.
async fn partition_rounds(duration: Duration, rounds: usize) -> anyhow::Result<Vec<Round>> {
    let mut all = Vec::new();
    for round in 0..rounds {
        let mut results = Vec::new();
        let servers = partition_servers().count();
        for (index, server) in partition_servers().enumerate() {
            let seed = 40 + 10 * (round * servers + index) as u64;
            let result = match server {
                Some(partitions) => {
                    let dir = tempfile::tempdir()?;
                    let tally =
                        start_server_with(dir.path(), &["--partitions", &partitions.to_string()])?;
                    server::create_campaigns(&tally.base, &CAMPAIGNS).await?;
                    measure_server(&tally.base, tally.pid(), duration, seed).await
                }
                None => {
                    let ceiling = CeilingServer::start()?;
                    measure_server(&ceiling.base, ceiling.child.id(), duration, seed).await
                }
            };
            results.push((server, result));
        }
        all.push(results);
    }
    Ok(all)
}

/// The middle value of `values` (the upper middle of an even count); 0 when there are none.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Which phase of a round a column reads.
#[derive(Clone, Copy)]
enum PhaseKind {
    Single,
    Batch,
}

impl RoundResult {
    fn phase(&self, kind: PhaseKind) -> &Phase {
        match kind {
            PhaseKind::Single => &self.single,
            PhaseKind::Batch => &self.batch,
        }
    }

    fn cpu_us(&self, kind: PhaseKind) -> Option<f64> {
        match kind {
            PhaseKind::Single => self.single_cpu_us,
            PhaseKind::Batch => self.batch_cpu_us,
        }
    }
}

/// The partitions table read across rounds: each figure is the median over the rounds, and each
/// ratio is the median of the ratios measured within one round.
struct PartitionSummary<'a> {
    rounds: &'a [Round],
}

impl PartitionSummary<'_> {
    fn result(round: &Round, server: Option<u32>) -> Option<&RoundResult> {
        round
            .iter()
            .find(|(s, _)| *s == server)
            .map(|(_, result)| result)
    }

    fn per_round(
        &self,
        server: Option<u32>,
        value: impl Fn(&Round, &RoundResult) -> Option<f64>,
    ) -> Option<f64> {
        let values: Vec<f64> = self
            .rounds
            .iter()
            .filter_map(|round| Self::result(round, server).and_then(|r| value(round, r)))
            .collect();
        (!values.is_empty()).then(|| median(values))
    }

    fn rate(&self, server: Option<u32>, kind: PhaseKind) -> Option<f64> {
        self.per_round(server, |_, r| Some(r.phase(kind).donations_per_s))
    }

    fn range(&self, server: Option<u32>, kind: PhaseKind) -> (f64, f64) {
        let rates = self
            .rounds
            .iter()
            .filter_map(|round| Self::result(round, server).map(|r| r.phase(kind).donations_per_s));
        rates.fold((f64::INFINITY, 0.0), |(low, high), rate| {
            (low.min(rate), high.max(rate))
        })
    }

    fn p99_ms(&self, server: Option<u32>, kind: PhaseKind) -> Option<f64> {
        self.per_round(server, |_, r| Some(ms(&r.phase(kind).latency_us, 0.99)))
    }

    fn cpu_us(&self, server: Option<u32>, kind: PhaseKind) -> Option<f64> {
        self.per_round(server, |_, r| r.cpu_us(kind))
    }

    /// The median over rounds of `server`'s rate over `base`'s rate in the same round.
    fn ratio(&self, server: Option<u32>, base: Option<u32>, kind: PhaseKind) -> Option<f64> {
        self.per_round(server, |round, r| {
            let base = Self::result(round, base)?.phase(kind).donations_per_s;
            Some(r.phase(kind).donations_per_s / base.max(1e-9))
        })
    }

    fn errors(&self, server: Option<u32>) -> u64 {
        self.rounds
            .iter()
            .filter_map(|round| Self::result(round, server))
            .map(|r| r.single.errors + r.batch.errors)
            .sum()
    }
}

fn server_name(server: Option<u32>) -> String {
    match server {
        Some(partitions) => format!("tally, {partitions} partitions"),
        None => "ceiling: axum parses the JSON, answers 202".to_owned(),
    }
}

fn print_partition_rows(rounds: &[Round]) {
    let summary = PartitionSummary { rounds };
    println!();
    println!(
        "partitions: single donations at {PARTITION_SINGLE_CONCURRENCY} connections, batches of {BATCH_ITEMS} at {PARTITION_BATCH_CONCURRENCY}, each on a fresh server"
    );
    println!(
        "{} interleaved rounds (every server once per round); each figure is the median over the rounds, each ratio the median of the ratios within a round",
        rounds.len()
    );
    println!(
        "cpu us/d: the server's CPU time (all threads, user and system) per donation it accepted"
    );
    println!(
        "{:<44} {:>9} {:>15} {:>7} {:>7} {:>9} {:>8} {:>9} {:>17} {:>7} {:>7} {:>9} {:>8}",
        "server",
        "single/s",
        "rounds min-max",
        "p99 ms",
        "x ceil",
        "vs 1 part",
        "cpu us/d",
        "batch d/s",
        "rounds min-max",
        "p99 ms",
        "x ceil",
        "vs 1 part",
        "cpu us/d"
    );
    let figure = |value: Option<f64>, decimals: usize| {
        value.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
    };
    for server in partition_servers() {
        let mut line = format!("{:<44}", server_name(server));
        for kind in [PhaseKind::Single, PhaseKind::Batch] {
            let (low, high) = summary.range(server, kind);
            let against_one = server.and_then(|_| summary.ratio(server, Some(1), kind));
            line.push_str(&format!(
                " {:>9} {:>15} {:>7} {:>7} {:>9} {:>8}",
                figure(summary.rate(server, kind), 0),
                format!("{low:.0}-{high:.0}"),
                figure(summary.p99_ms(server, kind), 2),
                figure(summary.ratio(server, None, kind), 2),
                figure(against_one, 2),
                figure(summary.cpu_us(server, kind), 1),
            ));
        }
        println!("{line}");
        let errors = summary.errors(server);
        if errors > 0 {
            println!("       {errors} requests not accepted");
        }
    }
    print_partition_targets(&summary);
}

fn print_partition_targets(summary: &PartitionSummary<'_>) {
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let of_one = |partitions: u32| {
        let single = summary.ratio(Some(partitions), Some(1), PhaseKind::Single);
        let batch = summary.ratio(Some(partitions), Some(1), PhaseKind::Batch);
        single.zip(batch).map(|(s, b)| s.min(b))
    };
    if let Some(eight) = of_one(8) {
        println!(
            "target: 8 partitions within 10% of 1 (single and batch): {eight:.2}x, {}",
            verdict(eight >= 0.9)
        );
    }
    if let Some(many) = of_one(64) {
        println!(
            "target: 64 partitions within 20% of 1: {many:.2}x, {}",
            verdict(many >= 0.8)
        );
    }
    let share = summary.ratio(Some(8), None, PhaseKind::Single);
    let p99 = summary.p99_ms(Some(8), PhaseKind::Single);
    if let Some((share, p99)) = share.zip(p99) {
        println!(
            "target: single donations at 8 partitions >= 70% of the ceiling with p99 <= 20 ms: {:.0}%, p99 {p99:.2} ms, {}",
            share * 100.0,
            verdict(share >= 0.7 && p99 <= 20.0)
        );
    }
    if let Some(batch) = summary.rate(Some(8), PhaseKind::Batch) {
        println!(
            "target: batches of {BATCH_ITEMS} >= 1,000,000 donations/s (8 partitions): {batch:.0}/s, {}",
            verdict(batch >= 1_000_000.0)
        );
    }
}

fn main() -> anyhow::Result<()> {
    if std::env::var_os(CEILING_SERVER_ENV).is_some() {
        return run_ceiling_server();
    }
    let seconds: f64 = std::env::var("TALLY_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8.0);
    let duration = Duration::from_secs_f64(seconds);
    // Cargo passes `--bench` (and maybe other flags); the first other argument is a filter.
    let filter = std::env::args().skip(1).find(|arg| !arg.starts_with('-'));
    let runs = |group: &str| filter.as_ref().is_none_or(|f| group.contains(f.as_str()));
    print_machine();
    let dir = tempfile::tempdir()?;
    let server = start_server(dir.path())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let phases = runtime.block_on(async {
        server::create_campaigns(&server.base, &CAMPAIGNS).await?;
        let mut phases = Vec::new();
        if runs("single") {
            for (run, concurrency) in SINGLE_CONCURRENCY.into_iter().enumerate() {
                phases.push(closed_loop(&server.base, concurrency, 1, duration, run as u64).await);
            }
        }
        if runs("batch") {
            for (run, concurrency) in BATCH_CONCURRENCY.into_iter().enumerate() {
                phases.push(
                    closed_loop(
                        &server.base,
                        concurrency,
                        BATCH_ITEMS,
                        duration,
                        10 + run as u64,
                    )
                    .await,
                );
            }
        }
        let freshness = if runs("freshness") {
            Some(freshness(&server.base, duration).await)
        } else {
            None
        };
        let contention = if runs("contention") {
            Some(contention(&server.base, server.pid(), duration).await)
        } else {
            None
        };
        anyhow::Ok((phases, freshness, contention))
    })?;
    drop(server);
    let partitions = if runs("partitions") {
        Some(runtime.block_on(partition_rounds(duration, partition_round_count()))?)
    } else {
        None
    };
    let (phases, freshness_us, contention) = phases;
    if !phases.is_empty() || freshness_us.is_some() {
        print_phases(&phases, freshness_us.as_ref());
    }
    if let Some(contention) = &contention {
        print_contention(contention);
    }
    if let Some(partitions) = &partitions {
        print_partition_rows(partitions);
    }
    Ok(())
}

/// `TALLY_BENCH_ROUNDS`: the rounds of the partitions table (default 3).
fn partition_round_count() -> usize {
    std::env::var("TALLY_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&rounds| rounds > 0)
        .unwrap_or(3)
}

/// The single, batch and freshness rows.
fn print_phases(phases: &[Phase], freshness_us: Option<&Histogram<u64>>) {
    println!();
    println!(
        "{:<34} {:>14} {:>12} {:>8} {:>9} {:>9} {:>9} {:>9}",
        "phase", "donations/s", "requests/s", "errors", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    for phase in phases {
        println!(
            "{:<34} {:>14.0} {:>12.0} {:>8} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            phase.name,
            phase.donations_per_s,
            phase.requests_per_s,
            phase.errors,
            ms(&phase.latency_us, 0.5),
            ms(&phase.latency_us, 0.99),
            ms(&phase.latency_us, 0.999),
            phase.latency_us.max() as f64 / 1000.0
        );
    }
    if let Some(freshness_us) = freshness_us {
        println!(
            "freshness (202 -> visible in GET /v1/campaigns/{{id}}, {} probes under load): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            freshness_us.len(),
            ms(freshness_us, 0.5),
            ms(freshness_us, 0.99),
            freshness_us.max() as f64 / 1000.0
        );
    }
    println!(
        "targets: >= 50,000 single donations/s with p99 <= 20 ms; >= 500,000 donations/s in batches; freshness p99 <= 25 ms"
    );
}

fn print_machine() {
    println!(
        "machine: {}; client and server share the machine, over loopback",
        machine::describe()
    );
}
