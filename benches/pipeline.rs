//! Throughput, start-up and rebuild time, and memory of the exactly-once pipeline.
//!
//! Builds an embedded log of dinner-rush donations over 8 partitions — 10% duplicates (retries
//! of recent payments), one hot campaign with 80% of the traffic, amounts of $1, $2, round-up
//! cents and occasional custom amounts, `paid_at` mostly in order with some late — then measures:
//!
//! - **process**: events/s through dedupe, totals and windows with checkpoints on (defaults:
//!   every 50 ms or 50,000 records), from an empty state to the end of the log;
//! - **ready**: time for a fresh process to open the log and state and load every partition's
//!   checkpoint (the state of all events above), and its resident memory then;
//! - **rebuild**: the state deleted, time to rebuild it from the log;
//! - **memory**: resident memory of a fresh process loading the state of many distinct
//!   donations (30 million by default), and the peak while processing them.
//!
//! Each phase that measures memory runs in a child process (this binary, re-run), so that the
//! generator's memory is not counted. Run: `cargo bench --bench pipeline`. Sizes:
//! `TALLY_BENCH_EVENTS` (default 10,000,000), `TALLY_BENCH_MEMORY_DONATIONS` (default
//! 30,000,000; 0 skips the memory phase), `TALLY_BENCH_PARTITIONS` (default 8).

#[path = "support/machine.rs"]
mod machine;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tally_pipeline::checkpoint::CheckpointStore;
use tally_pipeline::clock::SystemClock;
use tally_pipeline::event::{DonationEvent, EventTime, envelope};
use tally_pipeline::log::{EmbeddedLog, EmbeddedLogOptions, KeyedRecord, Log, Partitioner};
use tally_pipeline::read_model::ReadModel;
use tally_pipeline::runner::{Pipeline, PipelineConfig, RunMode};

/// Partitions of the log: `TALLY_BENCH_PARTITIONS`, 8 by default.
fn partitions() -> u32 {
    std::env::var("TALLY_BENCH_PARTITIONS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(8)
}
const DUPLICATE_PERCENT: u64 = 10;
const HOT_CAMPAIGN_PERCENT: u64 = 80;
const APPEND_BATCH: usize = 8192;
/// Dinner rush: 17:00 to 20:00 UTC on one day.
const RUSH_START_MS: i64 = 1_795_539_600_000;
const RUSH_MS: i64 = 3 * 3_600_000;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--child") {
        return child(&args[at + 1], Path::new(&args[at + 2]));
    }
    let events = env_count("TALLY_BENCH_EVENTS", 10_000_000)?;
    let memory_donations = env_count("TALLY_BENCH_MEMORY_DONATIONS", 30_000_000)?;
    print_machine();
    let mut rows = Vec::new();

    let dir = tempfile::tempdir()?;
    let append = timed(|| generate(dir.path(), events, DUPLICATE_PERCENT))?;
    println!(
        "log: {events} events appended durably in {:.1} s ({:.0} events/s)",
        append.as_secs_f64(),
        events as f64 / append.as_secs_f64()
    );
    let process = run_child("process", dir.path())?;
    rows.push(Row::rate(
        "process (dedupe + totals + windows, checkpoints on)",
        events,
        process.seconds,
        process.peak_rss_kb,
        ">= 1,000,000 events/s",
    ));
    let ready = run_child("load", dir.path())?;
    rows.push(Row::time(
        &format!("ready with {events} events processed"),
        ready.seconds,
        ready.rss_kb,
        "<= 2 s",
    ));
    std::fs::remove_dir_all(dir.path().join("state"))?;
    let rebuild = run_child("process", dir.path())?;
    rows.push(Row::time(
        &format!("rebuild {events} events from the log"),
        rebuild.seconds,
        rebuild.peak_rss_kb,
        "<= 20 s",
    ));
    drop(dir);

    if memory_donations > 0 {
        let dir = tempfile::tempdir()?;
        timed(|| generate(dir.path(), memory_donations, 0))?;
        let process = run_child("process", dir.path())?;
        rows.push(Row::rate(
            &format!("process {memory_donations} distinct donations"),
            memory_donations,
            process.seconds,
            process.peak_rss_kb,
            "(peak memory)",
        ));
        let loaded = run_child("load", dir.path())?;
        rows.push(Row::time(
            &format!("resident after loading {memory_donations} donations"),
            loaded.seconds,
            loaded.rss_kb,
            "<= 1 GiB resident",
        ));
    }
    print_table(&rows);
    Ok(())
}

fn env_count(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(text) => text
            .replace('_', "")
            .parse()
            .with_context(|| format!("{name} must be a count")),
        Err(_) => Ok(default),
    }
}

fn timed(work: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<Duration> {
    let start = Instant::now();
    work()?;
    Ok(start.elapsed())
}

/// Appends `count` events: new payments, and `duplicate_percent` retries of recent ones.
fn generate(root: &Path, count: u64, duplicate_percent: u64) -> anyhow::Result<()> {
    let log = Arc::new(open_log(root)?);
    let partitioner = Partitioner::new(partitions());
    let mut rng = StdRng::seed_from_u64(42);
    let mut recent: Vec<DonationEvent> = Vec::with_capacity(4096);
    let mut batch: Vec<Vec<KeyedRecord>> = vec![Vec::new(); partitions() as usize];
    let mut issued = 0u64;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    for i in 0..count {
        let event = if rng.gen_range(0..100) < duplicate_percent && !recent.is_empty() {
            recent[rng.gen_range(0..recent.len())].clone()
        } else {
            issued += 1;
            let event = new_donation(&mut rng, issued, i, count);
            if recent.len() < 4096 {
                recent.push(event.clone());
            } else {
                let slot = rng.gen_range(0..recent.len());
                recent[slot] = event.clone();
            }
            event
        };
        let record = envelope::keyed_record(&event);
        let partition = partitioner.partition_for_key(&record.key);
        batch[partition as usize].push(record);
        if batch[partition as usize].len() >= APPEND_BATCH {
            let records = std::mem::take(&mut batch[partition as usize]);
            runtime.block_on(log.append(partition, records))?;
        }
    }
    for (partition, records) in batch.into_iter().enumerate() {
        if !records.is_empty() {
            runtime.block_on(log.append(partition as u32, records))?;
        }
    }
    Ok(())
}

fn new_donation(rng: &mut StdRng, id: u64, position: u64, count: u64) -> DonationEvent {
    let campaign = if rng.gen_range(0..100) < HOT_CAMPAIGN_PERCENT {
        "meals-for-kids".to_owned()
    } else {
        format!("campaign-{}", rng.gen_range(1..10))
    };
    let amount_cents = match rng.gen_range(0..100) {
        0..40 => 100,
        40..60 => 200,
        60..95 => rng.gen_range(1..100),
        _ => rng.gen_range(300..10_000),
    };
    // Mostly in order through the rush; one in twenty arrives up to 10 minutes late.
    let on_time =
        RUSH_START_MS + (position as i128 * RUSH_MS as i128 / count.max(1) as i128) as i64;
    let paid_at = if rng.gen_range(0..20) == 0 {
        on_time - rng.gen_range(0..600_000)
    } else {
        on_time
    };
    DonationEvent {
        payment_ref: format!("pay_{id:012}"),
        order_id: format!("ord_{id:012}"),
        user_id: format!("usr_{:07}", rng.gen_range(0..1_000_000)),
        campaign_id: campaign,
        amount_cents,
        currency: "USD".to_owned(),
        paid_at: EventTime(paid_at),
    }
}

fn open_log(root: &Path) -> anyhow::Result<EmbeddedLog> {
    let options = EmbeddedLogOptions {
        partition_count: partitions(),
        ..Default::default()
    };
    Ok(EmbeddedLog::open(&root.join("log"), options)?)
}

fn open_pipeline(root: &Path) -> anyhow::Result<Pipeline> {
    let log: Arc<dyn Log> = Arc::new(open_log(root)?);
    let (store, _notes) = CheckpointStore::open(&root.join("state"), partitions())?;
    Ok(Pipeline::new(
        log,
        Arc::new(store),
        Arc::new(ReadModel::new(partitions())),
        Arc::new(SystemClock),
        PipelineConfig::default(),
    )?)
}

/// One measurement in a fresh process: `process` runs the pipeline to the end of the log;
/// `load` opens everything and loads every checkpoint.
fn child(phase: &str, root: &Path) -> anyhow::Result<()> {
    let start = Instant::now();
    let pipeline = open_pipeline(root)?;
    let loaded = match phase {
        "process" => {
            pipeline.run(RunMode::CatchUp)?;
            Vec::new()
        }
        "load" => {
            let states = pipeline.load()?;
            assert!(
                states.iter().all(|(_, rebuilt)| !rebuilt),
                "a checkpoint failed to load"
            );
            states
        }
        other => bail!("unknown phase {other}"),
    };
    let seconds = start.elapsed().as_secs_f64();
    let (rss_kb, peak_rss_kb) = memory_kb();
    println!("RESULT {seconds} {rss_kb} {peak_rss_kb}");
    // Only now may the loaded state go: the memory above is with it in place.
    drop(loaded);
    Ok(())
}

#[derive(Debug)]
struct ChildResult {
    seconds: f64,
    rss_kb: u64,
    peak_rss_kb: u64,
}

fn run_child(phase: &str, root: &Path) -> anyhow::Result<ChildResult> {
    let output = Command::new(std::env::current_exe()?)
        .args(["--child", phase])
        .arg(root)
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .with_context(|| {
            format!(
                "phase {phase} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    Ok(ChildResult {
        seconds: fields[1].parse()?,
        rss_kb: fields[2].parse()?,
        peak_rss_kb: fields[3].parse()?,
    })
}

/// (VmRSS, VmHWM) of this process, in KiB.
fn memory_kb() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

struct Row {
    what: String,
    figure: String,
    memory_mib: f64,
    target: String,
}

impl Row {
    fn rate(what: &str, events: u64, seconds: f64, memory_kb: u64, target: &str) -> Self {
        Self {
            what: what.to_owned(),
            figure: format!("{:.0} events/s ({seconds:.1} s)", events as f64 / seconds),
            memory_mib: memory_kb as f64 / 1024.0,
            target: target.to_owned(),
        }
    }

    fn time(what: &str, seconds: f64, memory_kb: u64, target: &str) -> Self {
        Self {
            what: what.to_owned(),
            figure: format!("{seconds:.2} s"),
            memory_mib: memory_kb as f64 / 1024.0,
            target: target.to_owned(),
        }
    }
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "{:<58} {:>30} {:>12}  target",
        "measurement", "figure", "memory MiB"
    );
    for row in rows {
        println!(
            "{:<58} {:>30} {:>12.0}  {}",
            row.what, row.figure, row.memory_mib, row.target
        );
    }
    println!("(memory: peak resident for processing rows, resident after loading for the others)");
}

fn print_machine() {
    println!("machine: {}", machine::describe());
    println!(
        "pipeline: {} partitions, {DUPLICATE_PERCENT}% duplicates, one campaign with {HOT_CAMPAIGN_PERCENT}% of traffic, default checkpoint cadence",
        partitions()
    );
}
