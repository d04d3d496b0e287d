//! Soak: the pipeline through a simulated 30-day campaign, fed like production.
//!
//! A producer (this bench's main thread) appends the campaign's donations in batches of 1,000
//! records to the embedded log, keyed by payment_ref, while the pipeline follows the log with
//! the default configuration (default partition count and checkpoint cadence). The stream
//! (`soak/stream.rs`) has 10% resends a little later, one hot campaign with 90% of the
//! donations, many distinct amounts and `paid_at` over 30 days in a daily shape.
//!
//! At 10%, 50% and 100% of the donations the bench waits until everything appended is applied
//! and published, then records the state and log bytes on disk and resident memory, checks the
//! read model's totals against what was sent, restarts — everything dropped, the log and state
//! reopened and every partition loaded (what `tally serve` does before it answers), timed as
//! "ready" — measures statistics queries over 1 hour, 1 day, 7 days and 30 days on the
//! reloaded read model, and goes on with the reopened pipeline.
//!
//! Run: `cargo bench --bench soak`. Environment: `TALLY_SOAK_DONATIONS` (distinct donations,
//! default 30,000,000), `TALLY_SOAK_QUERIES` (per range and point, default 2,000),
//! `TALLY_SOAK_RECORDS_PER_SECOND` (appends paced to this rate; default 0, as fast as the log
//! takes them), `TALLY_SOAK_DIR` (where the temporary data directory goes; default the
//! system's), `TALLY_SOAK_KEEP=1` (keeps the data directory at the end, to look into or load
//! again), `TALLY_SOAK_REOPEN=<kept directory>` (only restarts on a kept directory, three
//! times, printing how long each took to be ready and the memory after it: for profiling a
//! restart).

/// The allocator `tally serve` runs with, so that resident memory is what the server's would be.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "support/machine.rs"]
mod machine;
#[path = "soak/measure.rs"]
mod measure;
#[path = "soak/stream.rs"]
mod stream;

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use tally_pipeline::checkpoint::CheckpointStore;
use tally_pipeline::clock::SystemClock;
use tally_pipeline::event::envelope;
use tally_pipeline::log::{EmbeddedLog, EmbeddedLogOptions, KeyedRecord, Log};
use tally_pipeline::processor::PartitionState;
use tally_pipeline::read_model::ReadModel;
use tally_pipeline::runner::{
    PartitionRunSummary, Pipeline, PipelineConfig, PipelineError, RunMode,
};
use tally_pipeline::storage::OsStorage;
use tokio::sync::watch;

use measure::{Point, QueryLatency};
use stream::CampaignStream;

const DONATIONS_DEFAULT: u64 = 30_000_000;
const QUERIES_DEFAULT: u64 = 2_000;
/// Records per append: a full `POST /v1/donations/batch`.
const APPEND_BATCH_RECORDS: usize = 1_000;
/// Appends waiting for their acknowledgement at once, as from a few concurrent batch requests;
/// the log's group commit syncs them together.
const APPENDS_IN_FLIGHT: usize = 4;
/// Where the measurements are taken, in percent of the donations.
const POINTS_PERCENT: [u64; 3] = [10, 50, 100];
/// Bytes of log per donation, resends included: 155 measured at 1,000,000 donations (1.1
/// records of about 141 bytes each, frames included), rounded up for longer names.
const LOG_BYTES_PER_DONATION_ESTIMATE: u64 = 220;
/// Free space asked for before starting, in multiples of the log's estimate: the log, state up
/// to as large again (50–95% of the log measured with today's checkpoint journals), and room
/// for everything else on the disk.
const FREE_SPACE_FACTOR: u64 = 3;
/// The producer stops the run when free space falls below this: the state can outgrow its
/// target, and a full disk would take the machine's other work down with it.
const FREE_BYTES_MIN: u64 = 2 << 30;
/// How often (in appends) the producer checks free space: every ~100,000 records.
const FREE_SPACE_CHECK_APPENDS: u64 = 100;
/// Waiting for the pipeline to apply what was appended gives up after this long without progress.
const APPLY_STALL_MAX: Duration = Duration::from_secs(120);

fn main() -> anyhow::Result<()> {
    if let Some(kept) = std::env::var_os("TALLY_SOAK_REOPEN") {
        return reopen(Path::new(&kept));
    }
    let donations = env_count("TALLY_SOAK_DONATIONS", DONATIONS_DEFAULT)?;
    let queries = env_count("TALLY_SOAK_QUERIES", QUERIES_DEFAULT)?;
    let pace = Some(env_count("TALLY_SOAK_RECORDS_PER_SECOND", 0)?).filter(|&rate| rate > 0);
    ensure!(donations >= 10, "TALLY_SOAK_DONATIONS must be at least 10");
    let parent = match std::env::var_os("TALLY_SOAK_DIR") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => std::env::temp_dir(),
    };
    std::fs::create_dir_all(&parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let dir = tempfile::Builder::new()
        .prefix("tally-soak-")
        .tempdir_in(&parent)?;
    print_header(dir.path(), donations, queries, pace);
    check_free_space(dir.path(), donations)?;
    let started = Instant::now();
    let soak = Soak::run(dir.path(), donations, queries, pace)?;
    let elapsed = started.elapsed();
    measure::print_report(&soak.points, &soak.phases, donations);
    println!(
        "elapsed: {:.1} s wall time; load average at the end: {}",
        elapsed.as_secs_f64(),
        measure::load_average()
    );
    let verdict = final_check(&soak);
    if std::env::var_os("TALLY_SOAK_KEEP").is_some_and(|keep| keep == "1") {
        println!("data directory kept: {}", dir.keep().display());
    }
    verdict
}

/// Restarts on a kept data directory, three times: ready and resident memory each time.
fn reopen(root: &Path) -> anyhow::Result<()> {
    println!("machine: {}", machine::describe());
    println!("reopening {}", root.display());
    for attempt in 1..=3 {
        let started = Instant::now();
        let opened = open(root)?;
        let ready = started.elapsed();
        let memory = measure::memory();
        println!(
            "restart {attempt}: ready in {:.3} s, {} partitions rebuilt; RSS {} MiB, peak {} MiB",
            ready.as_secs_f64(),
            opened.rebuilt,
            memory.rss_kb / 1024,
            memory.peak_kb / 1024
        );
        drop(opened);
    }
    Ok(())
}

fn env_count(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(text) => text
            .replace('_', "")
            .parse()
            .with_context(|| format!("{name} must be a count, not {text:?}")),
        Err(_) => Ok(default),
    }
}

fn print_header(dir: &Path, donations: u64, queries: u64, pace: Option<u64>) {
    println!("soak: a 30-day campaign through the embedded log and the pipeline, in process");
    println!("machine: {}", machine::describe());
    println!("load average at start: {}", measure::load_average());
    println!(
        "data directory: {} ({})",
        dir.display(),
        measure::file_system_of(dir)
    );
    let config = PipelineConfig::default();
    println!(
        "parameters: {donations} donations (+{}% resends), {} partitions, checkpoint every {} ms or {} records",
        stream::RESEND_PERCENT,
        EmbeddedLogOptions::default().partition_count,
        config.checkpoint_interval.as_millis(),
        config.checkpoint_records_max,
    );
    println!(
        "producer: appends of {APPEND_BATCH_RECORDS} records, {APPENDS_IN_FLIGHT} in flight, {}",
        pace.map_or("as fast as the log takes them".to_owned(), |rate| format!(
            "paced at {rate} records/s"
        )),
    );
    println!(
        "stream: {}% to {}, the rest to {}; paid_at over {} days from 2026-11-02, dinner rush 17-20 h",
        stream::HOT_CAMPAIGN_PERCENT,
        stream::HOT_CAMPAIGN,
        stream::SMALL_CAMPAIGNS.join(", "),
        stream::CAMPAIGN_DAYS,
    );
    println!(
        "queries: {queries} per range at each point, 90% on {}, random starts within the donations so far, no series",
        stream::HOT_CAMPAIGN
    );
}

fn check_free_space(dir: &Path, donations: u64) -> anyhow::Result<()> {
    let estimate = donations * LOG_BYTES_PER_DONATION_ESTIMATE;
    let free = measure::free_bytes(dir)?;
    println!(
        "disk: {:.1} GiB free; log estimated at {:.1} GiB",
        gib(free),
        gib(estimate)
    );
    if free < FREE_SPACE_FACTOR * estimate {
        bail!(
            "not starting: {:.1} GiB free in {} but {donations} donations need about {:.1} GiB ({FREE_SPACE_FACTOR}x a log of {:.1} GiB); lower TALLY_SOAK_DONATIONS or point TALLY_SOAK_DIR elsewhere",
            gib(free),
            dir.display(),
            gib(FREE_SPACE_FACTOR * estimate),
            gib(estimate),
        );
    }
    Ok(())
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// What one stretch between two points did.
#[derive(Debug)]
pub struct Phase {
    pub donations: u64,
    pub records: u64,
    /// From the first append to the last one's acknowledgement.
    pub append: Duration,
    /// From the first append until the pipeline had published everything appended.
    pub applied: Duration,
}

struct Soak {
    /// Records per second to append at most; `None`: as fast as the log takes them.
    pace: Option<u64>,
    points: Vec<Point>,
    phases: Vec<Phase>,
    stream: CampaignStream,
    exact: bool,
}

/// The pipeline following the log on its partition threads.
struct Running {
    log: Arc<EmbeddedLog>,
    pipeline: Pipeline,
    stop: watch::Sender<bool>,
    partitions: Vec<JoinHandle<Result<PartitionRunSummary, PipelineError>>>,
}

impl Soak {
    fn run(root: &Path, donations: u64, queries: u64, pace: Option<u64>) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mut soak = Soak {
            pace,
            points: Vec::new(),
            phases: Vec::new(),
            stream: CampaignStream::new(donations),
            exact: true,
        };
        let mut running = follow(open(root)?)?;
        for percent in POINTS_PERCENT {
            let until = donations * percent / 100;
            let phase = soak.produce(&runtime, &running, root, until, percent == 100)?;
            soak.phases.push(phase);
            let (point, reopened) = soak.measure(&runtime, running, root, queries)?;
            soak.points.push(point);
            running = reopened;
        }
        stop(running)?;
        Ok(soak)
    }

    /// Appends the donations up to `until` (and, with `drain`, every pending resend), then
    /// waits until the pipeline has published all of it.
    fn produce(
        &mut self,
        runtime: &tokio::runtime::Runtime,
        running: &Running,
        root: &Path,
        until: u64,
        drain: bool,
    ) -> anyhow::Result<Phase> {
        let started = Instant::now();
        let (donations_before, records_before) = (self.stream.issued(), self.stream.records);
        let log = Arc::clone(&running.log);
        let stream = &mut self.stream;
        let pace = self.pace;
        runtime.block_on(async move {
            let mut in_flight = tokio::task::JoinSet::new();
            for appends in 1u64.. {
                if let Some(per_second) = pace {
                    let sent = stream.records - records_before;
                    let due = started + Duration::from_secs_f64(sent as f64 / per_second as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                let batch: Vec<KeyedRecord> =
                    std::iter::from_fn(|| stream.next_record(until, drain))
                        .take(APPEND_BATCH_RECORDS)
                        .map(|event| envelope::keyed_record(&event))
                        .collect();
                if batch.is_empty() {
                    break;
                }
                while in_flight.len() >= APPENDS_IN_FLIGHT {
                    join_append(&mut in_flight).await?;
                }
                let log = Arc::clone(&log);
                in_flight.spawn(async move {
                    tally_pipeline::log::append_keyed(log.as_ref(), batch).await
                });
                if appends.is_multiple_of(FREE_SPACE_CHECK_APPENDS) {
                    check_still_free(root)?;
                }
            }
            while !in_flight.is_empty() {
                join_append(&mut in_flight).await?;
            }
            anyhow::Ok(())
        })?;
        let append = started.elapsed();
        wait_applied(runtime, running)?;
        Ok(Phase {
            donations: self.stream.issued() - donations_before,
            records: self.stream.records - records_before,
            append,
            applied: started.elapsed(),
        })
    }

    /// Records a point, restarts, measures queries on the reloaded read model, and returns the
    /// reopened pipeline following the log again.
    fn measure(
        &mut self,
        runtime: &tokio::runtime::Runtime,
        running: Running,
        root: &Path,
        queries: u64,
    ) -> anyhow::Result<(Point, Running)> {
        let mut exact = measure::totals_match(running.pipeline.read_model(), &self.stream);
        let state_bytes = measure::dir_bytes(&root.join("state"));
        let log_bytes = measure::dir_bytes(&root.join("log"));
        let memory = measure::memory();
        stop(running)?;
        let memory_dropped = measure::memory();
        // The kernel writes back what the producer appended at full speed while the restart
        // runs: said beside the figure, as it competes for the same two cores.
        println!(
            "restart at {} donations: {} MiB of the page cache waiting to be written back",
            self.stream.issued(),
            measure::dirty_kb() / 1024
        );
        let started = Instant::now();
        let opened = open(root)?;
        let ready = started.elapsed();
        let memory_reloaded = measure::memory();
        ensure!(
            opened.rebuilt == 0,
            "{} partitions were rebuilt from the log on restart",
            opened.rebuilt
        );
        let read_model = opened.pipeline.read_model();
        exact &= measure::totals_match(read_model, &self.stream);
        self.exact &= exact;
        let latency = QueryLatency::measure(read_model, &self.stream, queries);
        let point = Point {
            donations: self.stream.issued(),
            records: self.stream.records,
            state_bytes,
            log_bytes,
            memory,
            memory_dropped,
            memory_reloaded,
            ready,
            latency,
            exact,
        };
        let running = follow(opened)?;
        // Nothing was appended during the restart, so this only checks that it is still whole.
        wait_applied(runtime, &running)?;
        Ok((point, running))
    }
}

type Appends = tokio::task::JoinSet<
    Result<Vec<(tally_pipeline::log::PartitionId, u64)>, tally_pipeline::log::LogError>,
>;

async fn join_append(in_flight: &mut Appends) -> anyhow::Result<()> {
    if let Some(appended) = in_flight.join_next().await {
        appended??;
    }
    Ok(())
}

fn check_still_free(root: &Path) -> anyhow::Result<()> {
    let free = measure::free_bytes(root)?;
    ensure!(
        free >= FREE_BYTES_MIN,
        "stopped: only {:.1} GiB left free on the data directory's disk (state {:.1} GiB, log {:.1} GiB)",
        gib(free),
        gib(measure::dir_bytes(&root.join("state"))),
        gib(measure::dir_bytes(&root.join("log"))),
    );
    Ok(())
}

/// A pipeline over a reopened log and state, every partition loaded.
struct Opened {
    log: Arc<EmbeddedLog>,
    pipeline: Pipeline,
    states: Vec<(PartitionState, bool)>,
    /// Partitions whose checkpoint could not be loaded (rebuilt from the log).
    rebuilt: usize,
}

/// Opens the log and the state and loads every partition into a fresh read model, as
/// `tally serve` does before it answers.
fn open(root: &Path) -> anyhow::Result<Opened> {
    let state_dir = root.join("state");
    let options = EmbeddedLogOptions {
        witnesses: CheckpointStore::witnesses(&OsStorage, &state_dir)?,
        ..Default::default()
    };
    let log = Arc::new(EmbeddedLog::open(&root.join("log"), options)?);
    let partition_count = log.partition_count();
    let (store, notes) = CheckpointStore::open(&state_dir, partition_count)?;
    for note in notes {
        println!("state: {note}");
    }
    let pipeline = Pipeline::new(
        Arc::clone(&log) as Arc<dyn Log>,
        Arc::new(store),
        Arc::new(ReadModel::new(partition_count)),
        Arc::new(SystemClock),
        PipelineConfig::default(),
    )?;
    let states = pipeline.load()?;
    let rebuilt = states.iter().filter(|(_, rebuilt)| *rebuilt).count();
    Ok(Opened {
        log,
        pipeline,
        states,
        rebuilt,
    })
}

/// Runs every loaded partition on a thread of its own, following the log.
fn follow(opened: Opened) -> anyhow::Result<Running> {
    let Opened {
        log,
        pipeline,
        states,
        ..
    } = opened;
    let (stop, shutdown) = watch::channel(false);
    let partitions = states
        .into_iter()
        .map(|(state, rebuilt)| {
            let pipeline = pipeline.clone();
            let mode = RunMode::Follow {
                shutdown: shutdown.clone(),
            };
            std::thread::Builder::new()
                .name(format!("soak-p{}", state.partition()))
                .spawn(move || pipeline.run_partition(state, rebuilt, mode))
        })
        .collect::<Result<_, _>>()?;
    Ok(Running {
        log,
        pipeline,
        stop,
        partitions,
    })
}

/// Stops the partitions at a checkpoint and drops the pipeline, its log and its state.
fn stop(running: Running) -> anyhow::Result<()> {
    let _ = running.stop.send(true);
    for handle in running.partitions {
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("a partition thread panicked"))??;
    }
    drop(running.pipeline);
    drop(running.log);
    Ok(())
}

/// Waits until every partition's published offset is its log end offset.
fn wait_applied(runtime: &tokio::runtime::Runtime, running: &Running) -> anyhow::Result<()> {
    let ends = runtime.block_on(tally_pipeline::log::end_offsets(running.log.as_ref()))?;
    let read_model = running.pipeline.read_model();
    let mut progress_at = Instant::now();
    let mut applied_before = 0;
    loop {
        let applied: Vec<u64> = read_model
            .progress()
            .iter()
            .map(|p| p.applied_offset)
            .collect();
        if applied == ends {
            return Ok(());
        }
        if running.partitions.iter().any(JoinHandle::is_finished) {
            bail!("a partition stopped before applying the log: offsets {applied:?} of {ends:?}");
        }
        let total: u64 = applied.iter().sum();
        if total > applied_before {
            (applied_before, progress_at) = (total, Instant::now());
        }
        ensure!(
            progress_at.elapsed() < APPLY_STALL_MAX,
            "the pipeline made no progress for {APPLY_STALL_MAX:?}: offsets {applied:?} of {ends:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn final_check(soak: &Soak) -> anyhow::Result<()> {
    let hot = soak.stream.sent[0];
    let last = soak.points.last().context("no point was measured")?;
    println!(
        "sent: {} distinct donations in {} records ({} resends); {}: {} donations, {} cents",
        soak.stream.distinct_donations(),
        soak.stream.records,
        soak.stream.resends,
        stream::HOT_CAMPAIGN,
        hot.donations,
        hot.total_cents,
    );
    if soak.exact && last.donations == soak.stream.distinct_donations() {
        println!("exactness: PASS (every point's totals equal what was sent, every campaign)");
        Ok(())
    } else {
        println!("exactness: FAIL");
        bail!("the read model's totals differ from what was sent")
    }
}
