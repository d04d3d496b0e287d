//! tally against the seed design: same machine, same run, same event stream, same concurrency.
//!
//! The seed document's reference architecture takes each payment callback with
//! - **Postgres**: a `donations` table keyed by `payment_ref`, one autocommitted
//!   `INSERT … ON CONFLICT (payment_ref) DO NOTHING` per callback (a durable commit each);
//! - **Redis**: `SISMEMBER processed <ref>`, and if absent `INCRBY total:<campaign>`,
//!   `INCR count:<campaign>` and `SADD processed <ref>`, with every write synced to the
//!   append-only file before its reply (`appendfsync always`).
//!
//! One event stream comes from the load generator's traffic model (seeded: donations with
//! immediate, concurrent and later resends and conflicting resends; invalid requests left out).
//! Each system gets all of it from the same number of closed-loop workers pulling the next unit
//! of work from one shared queue, and then its per-campaign totals are compared with the ground
//! truth of what it acknowledged: every acknowledged payment counted once, at its first amount.
//! tally is also run with the stream in `POST /v1/donations/batch` arrays, as a separate row. The
//! seed design runs three ways: each store alone, and whole — the INSERT, then the Redis counter,
//! per callback — which is the figure the comparison is judged against.
//!
//! Run `benches/seed-design.sh`: it installs PostgreSQL and Redis (Debian packages), starts both
//! on loopback with durable settings, runs this bench and tears them down. Alone,
//! `cargo bench --bench seed_design` runs the tally rows only. Environment:
//! `TALLY_SEED_POSTGRES` (a connection string; the bench drops and recreates table `donations`
//! there, so point it at a scratch database), `TALLY_SEED_REDIS` (a URL; the bench deletes the
//! keys it uses), `TALLY_BENCH_EVENTS` (checkouts in the stream, default 150,000),
//! `TALLY_BENCH_CONCURRENCY` (workers, default 64), `TALLY_BENCH_BATCH_ITEMS` (default 100),
//! `TALLY_BENCH_SEED` (default 1).

#[path = "../support/machine.rs"]
mod machine;
#[path = "../support/server.rs"]
#[allow(dead_code)]
mod server;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use hdrhistogram::Histogram;
use tally_api::signature::{SigningSecret, sign};
use tally_loadgen::ground_truth::{ExpectedTotal, GroundTruth};

use stream::{EventIndex, Kind, Stream};

/// Checkouts in the stream by default (about 175,000 callbacks): some 15 s for the slowest
/// system on the 2-core machine of `benches/README.md`.
const CHECKOUTS_DEFAULT: usize = 150_000;
/// Closed-loop workers (connections) per system by default: a busy payment provider's callback
/// fan-out, and what `benches/serve.rs` found tally's single-request throughput to peak at.
const CONCURRENCY_DEFAULT: usize = 64;
/// Donations per `POST /v1/donations/batch` by default; the API takes at most 1,000.
const BATCH_ITEMS_DEFAULT: usize = 100;
const BATCH_ITEMS_MAX: usize = 1000;
/// One callback that takes longer than this is counted as an error, and its connection reopened.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Each system gets at most this long to take the stream; what is left is reported as unsent.
const SYSTEM_TIME_MAX: Duration = Duration::from_secs(300);
/// How long tally may take to apply everything it acknowledged before its totals are read.
const CATCH_UP_WAIT: Duration = Duration::from_secs(120);
/// Histogram range: 1 µs to one minute, 3 significant digits.
const LATENCY_US_MAX: u64 = 60_000_000;
const _: () = assert!(REQUEST_TIMEOUT.as_micros() < LATENCY_US_MAX as u128);

/// Per campaign: total cents and donations.
type Totals = BTreeMap<String, ExpectedTotal>;

/// The run's knobs, from the environment.
#[derive(Debug)]
struct Settings {
    checkouts: usize,
    concurrency: usize,
    batch_items: usize,
    seed: u64,
    postgres: Option<String>,
    redis: Option<String>,
}

impl Settings {
    fn from_env() -> anyhow::Result<Self> {
        let settings = Self {
            checkouts: env_number("TALLY_BENCH_EVENTS", CHECKOUTS_DEFAULT)?,
            concurrency: env_number("TALLY_BENCH_CONCURRENCY", CONCURRENCY_DEFAULT)?,
            batch_items: env_number("TALLY_BENCH_BATCH_ITEMS", BATCH_ITEMS_DEFAULT)?,
            seed: env_number("TALLY_BENCH_SEED", 1)?,
            postgres: std::env::var("TALLY_SEED_POSTGRES").ok(),
            redis: std::env::var("TALLY_SEED_REDIS").ok(),
        };
        anyhow::ensure!(settings.checkouts > 0, "TALLY_BENCH_EVENTS must be above 0");
        anyhow::ensure!(
            settings.concurrency > 0,
            "TALLY_BENCH_CONCURRENCY must be above 0"
        );
        anyhow::ensure!(
            (1..=BATCH_ITEMS_MAX).contains(&settings.batch_items),
            "TALLY_BENCH_BATCH_ITEMS must be from 1 to {BATCH_ITEMS_MAX}"
        );
        Ok(settings)
    }
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .map_err(|error| anyhow::anyhow!("{name}={text:?}: {error}")),
        Err(_) => Ok(default),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

mod stream;

/// What one system did with the stream.
#[derive(Debug)]
struct Outcome {
    /// Callbacks (or, for batches, items) acknowledged.
    acknowledged: u64,
    /// Acknowledged donations and resends: the ground truth is built from these.
    acknowledged_donations: Vec<EventIndex>,
    errors: u64,
    first_error: Option<String>,
    /// Conflicts not sent because their donation was not acknowledged.
    conflicts_held_back: u64,
    /// Units (or batches) left when the time limit was up.
    unsent: usize,
    elapsed: Duration,
    latency_us: Histogram<u64>,
}

impl Outcome {
    fn new() -> Self {
        Self {
            acknowledged: 0,
            acknowledged_donations: Vec::new(),
            errors: 0,
            first_error: None,
            conflicts_held_back: 0,
            unsent: 0,
            elapsed: Duration::ZERO,
            latency_us: latency_histogram(),
        }
    }

    fn note_error(&mut self, error: &anyhow::Error) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{error:#}"));
        }
    }

    fn record_latency(&mut self, latency: Duration) {
        let _ = self
            .latency_us
            .record((latency.as_micros() as u64).clamp(1, LATENCY_US_MAX));
    }

    fn merge(&mut self, other: Outcome) {
        self.acknowledged += other.acknowledged;
        self.acknowledged_donations
            .extend(other.acknowledged_donations);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.conflicts_held_back += other.conflicts_held_back;
        let _ = self.latency_us.add(other.latency_us);
    }

    fn donations_per_s(&self) -> f64 {
        self.acknowledged as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// What the system must report: each acknowledged payment once, at its first amount.
    fn ground_truth(&self, stream: &Stream) -> Totals {
        let mut truth = GroundTruth::default();
        for index in &self.acknowledged_donations {
            truth.acknowledged(&stream.event(*index).donation());
        }
        truth.totals().clone()
    }
}

fn latency_histogram() -> Histogram<u64> {
    // Bounds and precision are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds")
}

/// How one system takes one callback, on one worker's connection.
trait Callbacks: Send + 'static {
    /// Sends one callback; `Ok` once the system acknowledged it durably.
    fn take(&mut self, event: &stream::Event) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Makes the connection usable again after a failed callback.
    fn reconnect(&mut self) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Closed loop: each worker takes the next unit from the shared queue and sends its callbacks in
/// order, until the queue is empty or the time limit is up.
async fn drive_units<C: Callbacks>(stream: &Arc<Stream>, workers: Vec<C>) -> Outcome {
    let next_unit = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + SYSTEM_TIME_MAX;
    let started = Instant::now();
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|callbacks| {
            let (stream, next_unit) = (Arc::clone(stream), Arc::clone(&next_unit));
            tokio::spawn(work_units(callbacks, stream, next_unit, deadline))
        })
        .collect();
    let mut outcome = merge_workers(tasks).await;
    outcome.elapsed = started.elapsed();
    let taken = next_unit.load(Ordering::Relaxed).min(stream.units.len());
    outcome.unsent = stream.units.len() - taken;
    outcome
}

/// The workers' outcomes as one; a worker that panicked is an error.
async fn merge_workers(tasks: Vec<tokio::task::JoinHandle<Outcome>>) -> Outcome {
    let mut outcome = Outcome::new();
    for task in tasks {
        match task.await {
            Ok(worker) => outcome.merge(worker),
            Err(error) => outcome.note_error(&anyhow::anyhow!("a worker panicked: {error}")),
        }
    }
    outcome
}

async fn work_units<C: Callbacks>(
    mut callbacks: C,
    stream: Arc<Stream>,
    next_unit: Arc<AtomicUsize>,
    deadline: Instant,
) -> Outcome {
    let mut outcome = Outcome::new();
    while Instant::now() < deadline {
        let unit_index = next_unit.fetch_add(1, Ordering::Relaxed);
        let Some(unit) = stream.units.get(unit_index) else {
            break;
        };
        let mut donation_acknowledged = false;
        for (position, event) in unit.events.iter().enumerate() {
            if event.kind == Kind::Conflict && !donation_acknowledged {
                outcome.conflicts_held_back += 1;
                continue;
            }
            let started = Instant::now();
            let answer = tokio::time::timeout(REQUEST_TIMEOUT, callbacks.take(event)).await;
            outcome.record_latency(started.elapsed());
            let error = match answer {
                Ok(Ok(())) => {
                    outcome.acknowledged += 1;
                    donation_acknowledged |= event.kind == Kind::Original;
                    if event.kind != Kind::Conflict {
                        let index = EventIndex {
                            unit: unit_index,
                            position,
                        };
                        outcome.acknowledged_donations.push(index);
                    }
                    continue;
                }
                Ok(Err(error)) => error,
                Err(_) => anyhow::anyhow!("no answer within {REQUEST_TIMEOUT:?}"),
            };
            outcome.note_error(&error);
            if let Err(error) = callbacks.reconnect().await {
                outcome.note_error(&error.context("reconnecting"));
                return outcome;
            }
        }
    }
    outcome
}

mod tally;

mod postgres;

mod redis_counter;

/// The seed design whole: per callback, the durable INSERT (the record of donations), then the
/// Redis counter (the live total a campaign page reads), as the seed's reference architecture
/// does both.
struct SeedDesignCallbacks {
    record: postgres::InsertCallbacks,
    counter: redis_counter::CounterCallbacks,
}

impl Callbacks for SeedDesignCallbacks {
    async fn take(&mut self, event: &stream::Event) -> anyhow::Result<()> {
        self.record.take(event).await?;
        self.counter.take(event).await
    }

    async fn reconnect(&mut self) -> anyhow::Result<()> {
        self.record.reconnect().await?;
        self.counter.reconnect().await
    }
}

/// One line of the report.
#[derive(Debug)]
enum Row {
    Measured {
        system: String,
        outcome: Box<Outcome>,
        totals: Totals,
        truth: Totals,
    },
    NotRun {
        system: String,
        reason: String,
    },
}

impl Row {
    fn measured(system: &str, stream: &Stream, outcome: Outcome, totals: Totals) -> Self {
        let truth = outcome.ground_truth(stream);
        Row::Measured {
            system: system.to_owned(),
            outcome: Box::new(outcome),
            totals,
            truth,
        }
    }

    fn not_run(system: &str, reason: impl std::fmt::Display) -> Self {
        Row::NotRun {
            system: system.to_owned(),
            reason: reason.to_string(),
        }
    }

    fn donations_per_s(&self) -> Option<f64> {
        match self {
            Row::Measured { outcome, .. } => Some(outcome.donations_per_s()),
            Row::NotRun { .. } => None,
        }
    }

    /// Measured, with totals equal to the ground truth.
    fn is_exact(&self) -> bool {
        matches!(self, Row::Measured { totals, truth, .. } if compare(totals, truth).is_ok())
    }
}

const TALLY_SINGLE: &str = "tally, POST /v1/donations";
const POSTGRES: &str = "Postgres, INSERT ON CONFLICT DO NOTHING";
const REDIS: &str = "Redis, SISMEMBER then INCRBY/INCR/SADD";
const SEED_DESIGN: &str = "seed design: the INSERT, then the Redis counter";

async fn run_tally_single(stream: &Arc<Stream>, concurrency: usize) -> anyhow::Result<Row> {
    let data_dir = tempfile::tempdir().context("creating tally's data directory")?;
    let server = server::start_server(data_dir.path())?;
    server::create_campaigns(&server.base, &stream.campaigns).await?;
    let secret = tally::signing_secret();
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        workers.push(tally::SingleCallbacks::open(&server.base, &secret).await?);
    }
    let outcome = drive_units(stream, workers).await;
    let totals = tally::totals(&server.base, &stream.campaigns).await?;
    Ok(Row::measured(TALLY_SINGLE, stream, outcome, totals))
}

async fn run_tally_batches(
    stream: &Arc<Stream>,
    concurrency: usize,
    batch_items: usize,
) -> anyhow::Result<Row> {
    let data_dir = tempfile::tempdir().context("creating tally's data directory")?;
    let server = server::start_server(data_dir.path())?;
    server::create_campaigns(&server.base, &stream.campaigns).await?;
    let outcome = tally::drive_batches(stream, &server.base, concurrency, batch_items).await;
    let totals = tally::totals(&server.base, &stream.campaigns).await?;
    let system = format!("tally, POST /v1/donations/batch of {batch_items}");
    Ok(Row::measured(&system, stream, outcome, totals))
}

async fn run_postgres(stream: &Arc<Stream>, url: &str, concurrency: usize) -> anyhow::Result<Row> {
    let workers = postgres::prepare(url, concurrency).await?;
    let outcome = drive_units(stream, workers).await;
    let totals = postgres::totals(url).await?;
    Ok(Row::measured(POSTGRES, stream, outcome, totals))
}

async fn run_redis(stream: &Arc<Stream>, url: &str, concurrency: usize) -> anyhow::Result<Row> {
    let workers = redis_counter::prepare(url, &stream.campaigns, concurrency).await?;
    let outcome = drive_units(stream, workers).await;
    let totals = redis_counter::totals(url, &stream.campaigns).await?;
    Ok(Row::measured(REDIS, stream, outcome, totals))
}

/// Totals are the Redis counters: what the seed design shows on a campaign page.
async fn run_seed_design(
    stream: &Arc<Stream>,
    postgres_url: &str,
    redis_url: &str,
    concurrency: usize,
) -> anyhow::Result<Row> {
    let records = postgres::prepare(postgres_url, concurrency).await?;
    let counters = redis_counter::prepare(redis_url, &stream.campaigns, concurrency).await?;
    let workers = records
        .into_iter()
        .zip(counters)
        .map(|(record, counter)| SeedDesignCallbacks { record, counter })
        .collect();
    let outcome = drive_units(stream, workers).await;
    let totals = redis_counter::totals(redis_url, &stream.campaigns).await?;
    Ok(Row::measured(SEED_DESIGN, stream, outcome, totals))
}

/// Runs a row; a system that failed as a whole becomes a row saying why.
fn row_or_failure(system: &str, result: anyhow::Result<Row>) -> Row {
    result.unwrap_or_else(|error| Row::not_run(system, format!("failed: {error:#}")))
}

/// Why a seed-design row did not run, and how to run it.
fn not_configured(variable: &str, server: &str) -> String {
    format!("not run: {variable} is unset (benches/seed-design.sh starts {server} and sets it)")
}

async fn run_all(settings: &Settings, stream: &Arc<Stream>) -> Vec<Row> {
    let concurrency = settings.concurrency;
    let mut rows = vec![row_or_failure(
        TALLY_SINGLE,
        run_tally_single(stream, concurrency).await,
    )];
    let batches = run_tally_batches(stream, concurrency, settings.batch_items).await;
    rows.push(row_or_failure("tally, POST /v1/donations/batch", batches));
    rows.push(match &settings.postgres {
        Some(url) => row_or_failure(POSTGRES, run_postgres(stream, url, concurrency).await),
        None => Row::not_run(
            POSTGRES,
            not_configured("TALLY_SEED_POSTGRES", "PostgreSQL"),
        ),
    });
    rows.push(match &settings.redis {
        Some(url) => row_or_failure(REDIS, run_redis(stream, url, concurrency).await),
        None => Row::not_run(REDIS, not_configured("TALLY_SEED_REDIS", "Redis")),
    });
    rows.push(match (&settings.postgres, &settings.redis) {
        (Some(postgres_url), Some(redis_url)) => row_or_failure(
            SEED_DESIGN,
            run_seed_design(stream, postgres_url, redis_url, concurrency).await,
        ),
        _ => Row::not_run(
            SEED_DESIGN,
            not_configured("TALLY_SEED_POSTGRES or TALLY_SEED_REDIS", "both"),
        ),
    });
    rows
}

/// "yes", or what the system reported beyond (or short of) the ground truth, per campaign.
fn compare(totals: &Totals, truth: &Totals) -> Result<(), String> {
    let campaigns: std::collections::BTreeSet<&String> =
        totals.keys().chain(truth.keys()).collect();
    let mut differences = Vec::new();
    for campaign in campaigns {
        let got = totals.get(campaign).copied().unwrap_or_default();
        let expected = truth.get(campaign).copied().unwrap_or_default();
        if got != expected {
            differences.push(format!(
                "{campaign} {:+} cents, {:+} donations",
                got.total_cents as i128 - expected.total_cents as i128,
                got.donations as i128 - expected.donations as i128
            ));
        }
    }
    if differences.is_empty() {
        Ok(())
    } else {
        Err(differences.join("; "))
    }
}

fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

fn print_header(settings: &Settings, stream: &Stream) {
    let counts = &stream.counts;
    println!(
        "machine: {}; each system's server and this client share the machine, over loopback",
        machine::describe()
    );
    println!(
        "stream: {} checkouts (seed {}) -> {} callbacks: {} donations, resends {} immediate + {} concurrent + {} later, {} conflicting resends ({} invalid requests left out)",
        counts.checkouts,
        stream.seed,
        counts.callbacks(),
        counts.donations,
        counts.resends_immediate,
        counts.resends_concurrent,
        counts.resends_later,
        counts.conflicts,
        counts.invalid_left_out
    );
    println!(
        "each system: {} closed-loop workers on one queue; acknowledged = durable (tally: 2xx after fdatasync; Postgres: committed with synchronous_commit=on; Redis: replied with appendfsync always)",
        settings.concurrency
    );
}

fn print_rows(rows: &[Row]) {
    println!();
    println!(
        "{:<48} {:>8} {:>6} {:>8} {:>12} {:>8} {:>8}  totals match ground truth",
        "system", "acked", "errors", "seconds", "donations/s", "p50 ms", "p99 ms"
    );
    for row in rows {
        match row {
            Row::Measured {
                system,
                outcome,
                totals,
                truth,
            } => {
                let verdict = match compare(totals, truth) {
                    Ok(()) => "yes".to_owned(),
                    Err(difference) => format!("NO: {difference}"),
                };
                println!(
                    "{:<48} {:>8} {:>6} {:>8.2} {:>12.0} {:>8.2} {:>8.2}  {verdict}",
                    system,
                    outcome.acknowledged,
                    outcome.errors,
                    outcome.elapsed.as_secs_f64(),
                    outcome.donations_per_s(),
                    ms(&outcome.latency_us, 0.5),
                    ms(&outcome.latency_us, 0.99),
                );
            }
            Row::NotRun { system, reason } => println!("{system:<48} {reason}"),
        }
    }
}

fn print_notes(rows: &[Row]) {
    for row in rows {
        let Row::Measured {
            system, outcome, ..
        } = row
        else {
            continue;
        };
        if let Some(error) = &outcome.first_error {
            println!("{system}: first error: {error}");
        }
        if outcome.unsent > 0 {
            println!(
                "{system}: stopped at the {SYSTEM_TIME_MAX:?} limit with {} units unsent",
                outcome.unsent
            );
        }
        if outcome.conflicts_held_back > 0 {
            println!(
                "{system}: {} conflicting resends held back (their donation was not acknowledged)",
                outcome.conflicts_held_back
            );
        }
    }
    if let Some(Row::Measured { truth, .. }) = rows.first() {
        let campaigns: Vec<String> = truth
            .iter()
            .map(|(campaign, total)| {
                format!(
                    "{campaign} {} cents / {} donations",
                    total.total_cents, total.donations
                )
            })
            .collect();
        println!(
            "ground truth (tally's acknowledged): {}",
            campaigns.join(", ")
        );
    }
}

/// tally's rate over the seed design's, and over each of its stores alone. The goal's verdict is
/// against the whole seed design when it ran, else against the faster store (the seed design
/// does both per callback, so it cannot beat either).
fn print_ratios(rows: &[Row]) {
    let rate = |index: usize| rows.get(index).and_then(Row::donations_per_s);
    let seed_systems = [
        ("the seed design", rate(4)),
        ("Postgres alone", rate(2)),
        ("Redis alone", rate(3)),
    ];
    let faster_store_per_s = [rate(2), rate(3)].into_iter().flatten().reduce(f64::max);
    let (baseline_name, baseline_per_s) = match rate(4) {
        Some(per_s) => ("the seed design", Some(per_s)),
        None => ("the faster store", faster_store_per_s),
    };
    for (mode, tally_per_s) in [("single callbacks", rate(0)), ("batches", rate(1))] {
        let Some(tally_per_s) = tally_per_s else {
            continue;
        };
        let ratios: Vec<String> = seed_systems
            .iter()
            .map(|(name, per_s)| match per_s {
                Some(per_s) => format!("÷ {name} {:.1}x", tally_per_s / per_s),
                None => format!("÷ {name} not measured"),
            })
            .collect();
        let verdict = match baseline_per_s {
            Some(per_s) if tally_per_s >= GOAL_RATIO * per_s => "met",
            Some(_) => "NOT met",
            None => "not measured",
        };
        println!(
            "tally {mode:<17} {}; goal (>= {GOAL_RATIO}x {baseline_name}): {verdict}",
            ratios.join(", ")
        );
    }
    print_scaling_targets(rows);
}

/// The targets of a shared commit path: single callbacks at least [`SINGLE_OVER_POSTGRES`]
/// times Postgres alone, batches at least [`BATCHES_OVER_SEED_DESIGN`] times the seed design,
/// tally's totals exact in both.
fn print_scaling_targets(rows: &[Row]) {
    let targets = [
        (
            "single callbacks",
            0,
            "Postgres alone",
            2,
            SINGLE_OVER_POSTGRES,
        ),
        ("batches", 1, "the seed design", 4, BATCHES_OVER_SEED_DESIGN),
    ];
    for (mode, tally_row, baseline, baseline_row, ratio) in targets {
        let (Some(tally), Some(base)) = (rows.get(tally_row), rows.get(baseline_row)) else {
            continue;
        };
        let (Some(tally_per_s), Some(base_per_s)) =
            (tally.donations_per_s(), base.donations_per_s())
        else {
            println!("target: tally {mode} >= {ratio}x {baseline}: not measured");
            continue;
        };
        let achieved = tally_per_s / base_per_s.max(1e-9);
        let met = achieved >= ratio && tally.is_exact();
        println!(
            "target: tally {mode} >= {ratio}x {baseline}, totals exact: {achieved:.1}x, totals {}, {}",
            if tally.is_exact() {
                "exact"
            } else {
                "NOT exact"
            },
            if met { "met" } else { "NOT met" }
        );
    }
}

/// Single callbacks over Postgres alone, at least.
const SINGLE_OVER_POSTGRES: f64 = 3.0;
/// Batches over the seed design, at least.
const BATCHES_OVER_SEED_DESIGN: f64 = 50.0;

/// The goal: tally takes at least this many times the seed design's donations per second, at
/// equal guarantees (durable acknowledgement, no double count).
const GOAL_RATIO: f64 = 10.0;

fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let stream = Arc::new(stream::generate(settings.checkouts, settings.seed)?);
    print_header(&settings, &stream);
    // Two client threads, as in `benches/serve.rs`: the client shares the machine's two cores
    // with the server under test.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let rows = runtime.block_on(run_all(&settings, &stream));
    print_rows(&rows);
    println!();
    print_notes(&rows);
    print_ratios(&rows);
    Ok(())
}
