//! Durable append throughput and latency of the embedded log (`tally_pipeline::log`).
//!
//! For 100-byte records (16-byte key + 84-byte value) on a fresh 8-partition log per cell, it
//! runs every combination of batch size (1, 64, 1024 records per `append` call) and concurrency
//! (1, 16, 64 appender tasks), and prints records/s, MB/s, calls/s and the latency of one call
//! from `append` to its durable (fdatasync'd) ack. It ends with a verdict on two targets:
//! >= 1,000,000 durable appends/s with batching, and p99 <= 5 ms for 64 single-record appenders.
//!
//! A second table runs the cells that matter for partitioning (64 single-record appenders, and
//! 16 appenders of 64 records) on logs of 1, 8 and 64 partitions, each row with its ratio to the
//! 1-partition row: more partitions must not cost appends (target: 8 and 64 within 20% of 1).
//!
//! Run: `cargo bench --bench log [FILTER]`. FILTER (optional) keeps cells whose name, such as
//! `b64/c16`, contains it. `TALLY_BENCH_SECONDS` sets the measured seconds per cell (default 3);
//! each cell also has 0.5 s of warm-up that is not counted.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use tally_pipeline::log::{EmbeddedLog, EmbeddedLogOptions, KeyedRecord, Log};

const KEY_BYTES: usize = 16;
const VALUE_BYTES: usize = 84;
const RECORD_BYTES: usize = KEY_BYTES + VALUE_BYTES;
const BATCH_SIZES: [usize; 3] = [1, 64, 1024];
const CONCURRENCIES: [usize; 3] = [1, 16, 64];
const WARMUP: Duration = Duration::from_millis(500);
const TARGET_RECORDS_PER_SEC: f64 = 1_000_000.0;
const TARGET_P99_MS: f64 = 5.0;
/// The partition counts of the second table, and the cells it runs at each.
const PARTITION_COUNTS: [u32; 3] = [1, 8, 64];
const PARTITION_CELLS: [(usize, usize); 2] = [(1, 64), (64, 16)];
const MATRIX_PARTITIONS: u32 = 8;
/// 8 and 64 partitions within this fraction of 1 partition's appends/s.
const PARTITION_RATIO_MIN: f64 = 0.8;

/// What one cell of the matrix measured.
#[derive(Debug)]
struct CellResult {
    partitions: u32,
    batch: usize,
    appenders: usize,
    records_per_sec: f64,
    calls_per_sec: f64,
    /// Latency of one append call, in microseconds.
    latency_us: Histogram<u64>,
}

impl CellResult {
    fn ms(&self, quantile: f64) -> f64 {
        self.latency_us.value_at_quantile(quantile) as f64 / 1000.0
    }
}

fn main() -> anyhow::Result<()> {
    // Cargo passes `--bench` (and maybe other flags); the first other argument is a filter.
    let filter = std::env::args().skip(1).find(|arg| !arg.starts_with('-'));
    let seconds: f64 = match std::env::var("TALLY_BENCH_SECONDS") {
        Ok(text) => text
            .parse()
            .context("TALLY_BENCH_SECONDS must be a number of seconds")?,
        Err(_) => 3.0,
    };
    let measured = Duration::from_secs_f64(seconds);

    print_machine()?;
    println!(
        "records: {RECORD_BYTES} bytes ({KEY_BYTES}-byte key + {VALUE_BYTES}-byte value); \
         {MATRIX_PARTITIONS} partitions; {seconds} s per cell after {} s warm-up",
        WARMUP.as_secs_f64()
    );
    println!(
        "latency = one append call, from before cloning the batch (the caller's copy, included) \
         to the durable ack"
    );
    println!();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut results = Vec::new();
    println!(
        "{:>6} {:>9} {:>14} {:>9} {:>11} {:>9} {:>9} {:>9} {:>9}",
        "batch",
        "appenders",
        "records/s",
        "MB/s",
        "calls/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms"
    );
    for batch in BATCH_SIZES {
        for appenders in CONCURRENCIES {
            let name = format!("b{batch}/c{appenders}");
            if filter.as_ref().is_some_and(|f| !name.contains(f.as_str())) {
                continue;
            }
            let result = run_cell(&runtime, MATRIX_PARTITIONS, batch, appenders, measured)
                .with_context(|| format!("cell {name}"))?;
            println!(
                "{:>6} {:>9} {:>14.0} {:>9.1} {:>11.0} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                result.batch,
                result.appenders,
                result.records_per_sec,
                result.records_per_sec * RECORD_BYTES as f64 / 1e6,
                result.calls_per_sec,
                result.ms(0.50),
                result.ms(0.99),
                result.ms(0.999),
                result.latency_us.max() as f64 / 1000.0,
            );
            results.push(result);
        }
    }
    println!();
    let by_partitions = run_partition_table(&runtime, filter.as_deref(), measured)?;
    println!();
    print_verdict(&results, &by_partitions);
    Ok(())
}

/// The partitioning cells at each partition count, printed as they finish, with each row's
/// ratio to the same cell at 1 partition.
fn run_partition_table(
    runtime: &tokio::runtime::Runtime,
    filter: Option<&str>,
    measured: Duration,
) -> anyhow::Result<Vec<CellResult>> {
    println!(
        "by partition count ({} s per cell): appends/s and ack latency, and appends/s as a \
         share of the same cell at 1 partition",
        measured.as_secs_f64()
    );
    println!(
        "{:>10} {:>6} {:>9} {:>14} {:>9} {:>9} {:>9} {:>10}",
        "partitions", "batch", "appenders", "records/s", "p50 ms", "p99 ms", "max ms", "vs 1 part."
    );
    let mut results: Vec<CellResult> = Vec::new();
    for (batch, appenders) in PARTITION_CELLS {
        for partitions in PARTITION_COUNTS {
            let name = format!("p{partitions}/b{batch}/c{appenders}");
            if filter.is_some_and(|f| !name.contains(f)) {
                continue;
            }
            let result = run_cell(runtime, partitions, batch, appenders, measured)
                .with_context(|| format!("cell {name}"))?;
            let ratio = results
                .iter()
                .find(|r| r.partitions == 1 && r.batch == batch && r.appenders == appenders)
                .map_or_else(
                    || "-".to_owned(),
                    |one| {
                        format!(
                            "{:.2}",
                            result.records_per_sec / one.records_per_sec.max(1e-9)
                        )
                    },
                );
            println!(
                "{:>10} {:>6} {:>9} {:>14.0} {:>9.3} {:>9.3} {:>9.3} {:>10}",
                partitions,
                batch,
                appenders,
                result.records_per_sec,
                result.ms(0.50),
                result.ms(0.99),
                result.latency_us.max() as f64 / 1000.0,
                ratio
            );
            results.push(result);
        }
    }
    Ok(results)
}

/// Runs one cell on a fresh log in a temporary directory, removed before returning.
fn run_cell(
    runtime: &tokio::runtime::Runtime,
    partition_count: u32,
    batch: usize,
    appenders: usize,
    measured: Duration,
) -> anyhow::Result<CellResult> {
    let dir = tempfile::TempDir::new()?;
    let log = Arc::new(EmbeddedLog::open(
        dir.path(),
        EmbeddedLogOptions {
            partition_count,
            ..EmbeddedLogOptions::default()
        },
    )?);
    let partitions = log.partition_count();
    let start = Instant::now();
    let window_start = start + WARMUP;
    let window_end = window_start + measured;

    let outcomes = runtime.block_on(async {
        let tasks: Vec<_> = (0..appenders)
            .map(|task| {
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let records = make_batch(task, batch);
                    let mut latency_us = Histogram::<u64>::new(3)?;
                    let (mut calls, mut call) = (0_u64, 0_usize);
                    loop {
                        let began = Instant::now();
                        if began >= window_end {
                            break;
                        }
                        let partition = ((task + call) % partitions as usize) as u32;
                        call += 1;
                        log.append(partition, records.clone()).await?;
                        let ended = Instant::now();
                        // Count calls that completed inside the measured window.
                        if ended >= window_start && ended <= window_end {
                            latency_us.record((ended - began).as_micros().max(1) as u64)?;
                            calls += 1;
                        }
                    }
                    anyhow::Ok((calls, latency_us))
                })
            })
            .collect();
        let mut outcomes = Vec::with_capacity(tasks.len());
        for task in tasks {
            outcomes.push(task.await??);
        }
        anyhow::Ok(outcomes)
    })?;
    // Dropping the log joins its writer threads: do it here, outside the runtime.
    drop(log);
    drop(dir);

    let mut latency_us = Histogram::<u64>::new(3)?;
    let mut calls = 0;
    for (task_calls, histogram) in outcomes {
        calls += task_calls;
        latency_us.add(histogram)?;
    }
    let secs = measured.as_secs_f64();
    Ok(CellResult {
        partitions: partition_count,
        batch,
        appenders,
        records_per_sec: (calls * batch as u64) as f64 / secs,
        calls_per_sec: calls as f64 / secs,
        latency_us,
    })
}

/// `batch` records of exactly `RECORD_BYTES`, with keys unique to the task.
fn make_batch(task: usize, batch: usize) -> Vec<KeyedRecord> {
    (0..batch)
        .map(|i| {
            let key = format!("t{task:05}-r{i:08}").into_bytes();
            debug_assert_eq!(key.len(), KEY_BYTES);
            let value = (0..VALUE_BYTES)
                .map(|j| b'a' + ((i + j) % 26) as u8)
                .collect();
            KeyedRecord { key, value }
        })
        .collect()
}

fn print_verdict(results: &[CellResult], by_partitions: &[CellResult]) {
    let best = results
        .iter()
        .filter(|r| r.batch > 1)
        .max_by(|a, b| a.records_per_sec.total_cmp(&b.records_per_sec));
    match best {
        Some(best) => println!(
            "(a) throughput: best {:.0} durable records/s (batch {}, {} appenders) vs target \
             >= {:.0}: {}",
            best.records_per_sec,
            best.batch,
            best.appenders,
            TARGET_RECORDS_PER_SEC,
            met(best.records_per_sec >= TARGET_RECORDS_PER_SEC)
        ),
        None => println!("(a) throughput: not measured (no batched cell ran)"),
    }
    match results.iter().find(|r| r.batch == 1 && r.appenders == 64) {
        Some(cell) => println!(
            "(b) latency: p99 ack {:.3} ms for 64 concurrent single-record appenders vs target \
             <= {TARGET_P99_MS} ms: {}",
            cell.ms(0.99),
            met(cell.ms(0.99) <= TARGET_P99_MS)
        ),
        None => println!("(b) latency: not measured (cell b1/c64 did not run)"),
    }
    for many in by_partitions
        .iter()
        .filter(|r| r.partitions > 1 && r.batch == 1)
    {
        let Some(one) = by_partitions
            .iter()
            .find(|r| r.partitions == 1 && r.batch == many.batch && r.appenders == many.appenders)
        else {
            continue;
        };
        let ratio = many.records_per_sec / one.records_per_sec.max(1e-9);
        println!(
            "(c) {} partitions, {} single-record appenders: {:.2}x the appends/s of 1 partition \
             (target >= {PARTITION_RATIO_MIN}), p99 {:.3} ms (target <= {TARGET_P99_MS}): {}",
            many.partitions,
            many.appenders,
            ratio,
            many.ms(0.99),
            met(ratio >= PARTITION_RATIO_MIN && many.ms(0.99) <= TARGET_P99_MS)
        );
    }
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

fn print_machine() -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = field(&meminfo, "MemTotal")
        .and_then(|kb| kb.trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or("unknown".to_owned(), |kb| {
            format!("{:.1} GiB", kb / 1024.0 / 1024.0)
        });
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = field(&cpuinfo, "model name").unwrap_or("unknown");
    let temp = std::env::temp_dir();
    println!("machine: {cores} cores, {memory} memory, CPU {cpu}");
    println!("temp dir: {} on {}", temp.display(), filesystem_of(&temp));
    let (p50, p99) = sync_write_latency(&temp)?;
    println!(
        "reference: single 4 KiB pwrite + fdatasync: median {:.3} ms, p99 {:.3} ms (200 samples)",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    Ok(())
}

/// The value of the first `name: value` line of a /proc file.
fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then(|| value.trim())
    })
}

/// Filesystem type of the mount holding `path` (longest matching mount point in /proc/mounts).
fn filesystem_of(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (device, mount, fs) = (fields.next()?, fields.next()?, fields.next()?);
            path.starts_with(mount)
                .then(|| (mount.len(), format!("{fs} ({device} at {mount})")))
        })
        .max_by_key(|(len, _)| *len)
        .map_or("unknown filesystem".to_owned(), |(_, fs)| fs)
}

/// Median and p99 of 200 sequential 4 KiB `pwrite` + `fdatasync` calls on a temporary file.
fn sync_write_latency(dir: &Path) -> anyhow::Result<(Duration, Duration)> {
    let path = tempfile::NamedTempFile::new_in(dir)?.into_temp_path();
    let file = OpenOptions::new().write(true).open(&path)?;
    let block = vec![0x5a_u8; 4096];
    let mut samples: Vec<Duration> = (0..200_u64)
        .map(|i| {
            let began = Instant::now();
            file.write_all_at(&block, i * 4096)?;
            file.sync_data()?;
            Ok(began.elapsed())
        })
        .collect::<std::io::Result<_>>()?;
    samples.sort_unstable();
    Ok((
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
    ))
}
