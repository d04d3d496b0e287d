//! The soak's measurements — bytes on disk, resident memory, query latency, exactness — and
//! its report.

use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tally_pipeline::read_model::ReadModel;

use super::Phase;
use super::stream::{self, CampaignStream};

/// The state may take at most this share of the log's bytes.
const STATE_TO_LOG_PERCENT_MAX: f64 = 25.0;
const RSS_MIB_MAX: f64 = 1024.0;
/// The resident-memory target is stated for this many donations.
const RSS_TARGET_DONATIONS: u64 = 30_000_000;
const READY_SECONDS_MAX: f64 = 2.0;
const QUERY_P99_US_MAX: f64 = 5_000.0;
const HOUR_MS: i64 = 3_600_000;
/// The statistics ranges measured, as a dashboard asks for them.
pub const RANGES: [(&str, i64); 4] = [
    ("1h", HOUR_MS),
    ("1d", 24 * HOUR_MS),
    ("7d", 7 * 24 * HOUR_MS),
    ("30d", 30 * 24 * HOUR_MS),
];

/// VmRSS and VmHWM of this process, in KiB.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub rss_kb: u64,
    pub peak_kb: u64,
}

pub fn memory() -> Memory {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Memory {
        rss_kb: field("VmRSS:"),
        peak_kb: field("VmHWM:"),
    }
}

/// The system's dirty page cache (`Dirty:` of `/proc/meminfo`), in KiB; 0 if unknown.
pub fn dirty_kb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|line| line.starts_with("Dirty:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kb| kb.parse().ok())
        .unwrap_or(0)
}

/// The 1, 5 and 15 minute load averages: the machine is shared, and its load moves the figures.
pub fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Sum of the sizes of the files under `dir`, recursively.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Bytes free for this user on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> anyhow::Result<u64> {
    let stat = rustix::fs::statvfs(dir)?;
    Ok(stat.f_bavail * stat.f_frsize)
}

/// "ext4 on /dev/vda": the mount holding `dir`, from /proc/self/mounts.
pub fn file_system_of(dir: &Path) -> String {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() >= 3 && dir.starts_with(fields[1])).then(|| (fields[1].len(), fields))
        })
        .max_by_key(|(length, _)| *length)
        .map_or("unknown file system".to_owned(), |(_, fields)| {
            format!("{} on {}", fields[2], fields[0])
        })
}

/// Whether every campaign's total in the read model is what the stream sent; prints any that
/// is not.
pub fn totals_match(read_model: &ReadModel, stream: &CampaignStream) -> bool {
    let totals = read_model.campaign_totals();
    let mut exact = true;
    for (index, sent) in stream.sent.iter().enumerate() {
        let name = stream::campaign_name(index);
        let recorded = totals.get(name).copied().unwrap_or_default();
        if (recorded.donations, recorded.total_cents) != (sent.donations, sent.total_cents) {
            println!(
                "MISMATCH {name}: recorded {} donations / {} cents, sent {} / {}",
                recorded.donations, recorded.total_cents, sent.donations, sent.total_cents
            );
            exact = false;
        }
    }
    let known = stream.sent.iter().filter(|s| s.donations > 0).count();
    if totals.len() != known {
        println!(
            "MISMATCH: the read model has {} campaigns, the stream sent {known}",
            totals.len()
        );
        exact = false;
    }
    exact
}

/// Latency of statistics queries per range, in nanoseconds: wall time, and this thread's CPU
/// time — the query's own cost, without the time spent waiting for a core on a shared machine.
#[derive(Debug)]
pub struct QueryLatency {
    pub ranges: Vec<Histogram<u64>>,
    pub ranges_cpu: Vec<Histogram<u64>>,
}

fn thread_cpu_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

fn latency_histogram() -> Histogram<u64> {
    // 1 ns to a minute, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

impl QueryLatency {
    /// `queries` statistics queries per range, 90% on the hot campaign, each starting at a
    /// random minute from the campaign's start to where the donations reach less the range
    /// (the start itself when the range is longer than the donations so far).
    pub fn measure(read_model: &ReadModel, stream: &CampaignStream, queries: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(stream.records);
        let mut latency = Self {
            ranges: Vec::new(),
            ranges_cpu: Vec::new(),
        };
        for (_, width_ms) in RANGES {
            let (mut wall, mut cpu) = (latency_histogram(), latency_histogram());
            {
                let latest_start = (stream.reached_ms - width_ms).max(stream::CAMPAIGN_START_MS);
                for _ in 0..queries {
                    let campaign = if rng.gen_range(0..100) < stream::HOT_CAMPAIGN_PERCENT {
                        stream::HOT_CAMPAIGN
                    } else {
                        stream::SMALL_CAMPAIGNS[rng.gen_range(0..stream::SMALL_CAMPAIGNS.len())]
                    };
                    let from_ms = rng.gen_range(stream::CAMPAIGN_START_MS..=latest_start);
                    let cpu_started = thread_cpu_ns();
                    let started = Instant::now();
                    let stats = read_model.stats(campaign, from_ms, from_ms + width_ms, None);
                    let elapsed = started.elapsed();
                    let cpu_ns = thread_cpu_ns().saturating_sub(cpu_started);
                    std::hint::black_box(stats).expect("a range of a minute or more is valid");
                    wall.saturating_record(elapsed.as_nanos().max(1) as u64);
                    cpu.saturating_record(cpu_ns.max(1));
                }
            }
            latency.ranges.push(wall);
            latency.ranges_cpu.push(cpu);
        }
        latency
    }

    fn us(&self, range: usize, quantile: f64) -> f64 {
        self.ranges[range].value_at_quantile(quantile) as f64 / 1000.0
    }

    fn cpu_us(&self, range: usize, quantile: f64) -> f64 {
        self.ranges_cpu[range].value_at_quantile(quantile) as f64 / 1000.0
    }

    fn max_us(&self) -> f64 {
        self.ranges.iter().map(|h| h.max()).max().unwrap_or(0) as f64 / 1000.0
    }

    fn worst_p99_us(&self) -> f64 {
        (0..self.ranges.len())
            .map(|range| self.us(range, 0.99))
            .fold(0.0, f64::max)
    }

    fn worst_cpu_p99_us(&self) -> f64 {
        (0..self.ranges_cpu.len())
            .map(|range| self.cpu_us(range, 0.99))
            .fold(0.0, f64::max)
    }
}

/// One measurement point: everything appended so far applied and published.
#[derive(Debug)]
pub struct Point {
    pub donations: u64,
    pub records: u64,
    pub state_bytes: u64,
    pub log_bytes: u64,
    /// While following, before the restart.
    pub memory: Memory,
    /// With the pipeline, log, state and read model dropped.
    pub memory_dropped: Memory,
    /// After reopening and loading every partition.
    pub memory_reloaded: Memory,
    pub ready: Duration,
    pub latency: QueryLatency,
    /// The read model's totals equal what was sent, before and after the restart.
    pub exact: bool,
}

impl Point {
    fn state_percent(&self) -> f64 {
        self.state_bytes as f64 * 100.0 / self.log_bytes.max(1) as f64
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

fn mark(met: bool) -> &'static str {
    if met { "✓" } else { "✗" }
}

pub fn print_report(points: &[Point], phases: &[Phase], donations: u64) {
    print_phases(phases);
    print_disk_and_memory(points);
    print_restart_and_queries(points);
    print_query_cpu(points);
    print_targets(points, donations);
}

fn print_phases(phases: &[Phase]) {
    println!();
    println!(
        "throughput (producer appending while the pipeline follows; \"applied\" = appended and published)"
    );
    println!(
        "{:<12} {:>11} {:>11} {:>9} {:>10} {:>12} {:>12}",
        "phase", "donations", "records", "append s", "applied s", "records/s", "donations/s"
    );
    let mut from = 0;
    for (phase, to) in phases.iter().zip(super::POINTS_PERCENT) {
        let seconds = phase.applied.as_secs_f64();
        println!(
            "{:<12} {:>11} {:>11} {:>9.1} {:>10.1} {:>12.0} {:>12.0}",
            format!("{from}% -> {to}%"),
            phase.donations,
            phase.records,
            phase.append.as_secs_f64(),
            seconds,
            phase.records as f64 / seconds,
            phase.donations as f64 / seconds,
        );
        from = to;
    }
}

fn print_disk_and_memory(points: &[Point]) {
    println!();
    println!("disk and memory (resident: following / everything dropped / reloaded; peak = VmHWM)");
    println!(
        "{:>11} {:>11} {:>10} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>6}",
        "donations",
        "records",
        "state MiB",
        "log MiB",
        "state/log",
        "RSS MiB",
        "dropped",
        "reloaded",
        "peak MiB",
        "exact"
    );
    for point in points {
        println!(
            "{:>11} {:>11} {:>10.1} {:>9.1} {:>9.1}% {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>6}",
            point.donations,
            point.records,
            mib(point.state_bytes),
            mib(point.log_bytes),
            point.state_percent(),
            point.memory.rss_kb as f64 / 1024.0,
            point.memory_dropped.rss_kb as f64 / 1024.0,
            point.memory_reloaded.rss_kb as f64 / 1024.0,
            point.memory_reloaded.peak_kb as f64 / 1024.0,
            if point.exact { "yes" } else { "NO" },
        );
    }
}

fn print_restart_and_queries(points: &[Point]) {
    println!();
    println!("restart, and statistics queries on the reloaded read model (µs of wall time)");
    let mut header = format!("{:>11} {:>8}", "donations", "ready s");
    for quantile in ["p50", "p99"] {
        for (name, _) in RANGES {
            header.push_str(&format!(" {:>8}", format!("{quantile} {name}")));
        }
    }
    println!("{header} {:>9}", "max");
    for point in points {
        let mut row = format!("{:>11} {:>8.3}", point.donations, point.ready.as_secs_f64());
        for quantile in [0.5, 0.99] {
            for range in 0..RANGES.len() {
                row.push_str(&format!(" {:>8.1}", point.latency.us(range, quantile)));
            }
        }
        println!("{row} {:>9.1}", point.latency.max_us());
    }
}

fn print_query_cpu(points: &[Point]) {
    println!();
    println!(
        "CPU per statistics query (µs of the querying thread's CPU time: without waiting for a core)"
    );
    let mut header = format!("{:>11}", "donations");
    for quantile in ["p50", "p99"] {
        for (name, _) in RANGES {
            header.push_str(&format!(" {:>8}", format!("{quantile} {name}")));
        }
    }
    println!("{header}");
    for point in points {
        let mut row = format!("{:>11}", point.donations);
        for quantile in [0.5, 0.99] {
            for range in 0..RANGES.len() {
                row.push_str(&format!(" {:>8.1}", point.latency.cpu_us(range, quantile)));
            }
        }
        println!("{row}");
    }
}

fn print_targets(points: &[Point], donations: u64) {
    println!();
    let mut header = format!("{:<34}", "target");
    for point in points {
        header.push_str(&format!(" {:>14}", point.donations));
    }
    println!("{header}  verdict");
    let state: Vec<(bool, String)> = points
        .iter()
        .map(|p| {
            let percent = p.state_percent();
            (
                percent <= STATE_TO_LOG_PERCENT_MAX,
                format!("{percent:.1}%"),
            )
        })
        .collect();
    print_target("state <= 25% of log, every point", &state);
    let ready: Vec<(bool, String)> = points
        .iter()
        .map(|p| {
            let seconds = p.ready.as_secs_f64();
            (seconds <= READY_SECONDS_MAX, format!("{seconds:.3} s"))
        })
        .collect();
    print_target("ready after restart <= 2 s", &ready);
    let queries: Vec<(bool, String)> = points
        .iter()
        .map(|p| {
            let us = p.latency.worst_p99_us();
            (us <= QUERY_P99_US_MAX, format!("{:.3} ms", us / 1000.0))
        })
        .collect();
    print_target("stats p99 <= 5 ms, widest of 4", &queries);
    let cpu: Vec<(bool, String)> = points
        .iter()
        .map(|p| {
            let us = p.latency.worst_cpu_p99_us();
            (us <= QUERY_P99_US_MAX, format!("{:.3} ms", us / 1000.0))
        })
        .collect();
    let mut row = format!("{:<34}", "  the same in CPU time");
    for (met, figure) in &cpu {
        row.push_str(&format!(" {:>14}", format!("{} {figure}", mark(*met))));
    }
    println!("{row}  (the query's own cost, for reference)");
    let last = points.last();
    let rss_mib = last.map_or(0.0, |p| p.memory.rss_kb as f64 / 1024.0);
    let mut rss_row = format!("{:<34}", "RSS <= 1 GiB at 30M donations");
    for _ in 1..points.len() {
        rss_row.push_str(&format!(" {:>14}", "-"));
    }
    if donations >= RSS_TARGET_DONATIONS {
        let met = rss_mib <= RSS_MIB_MAX;
        rss_row.push_str(&format!(
            " {:>14}  {}",
            format!("{} {rss_mib:.0} MiB", mark(met)),
            if met { "met" } else { "not met" }
        ));
    } else {
        rss_row.push_str(&format!(
            " {:>14}  not judged: {donations} donations, the target is for 30M",
            format!("{rss_mib:.0} MiB")
        ));
    }
    println!("{rss_row}");
}

fn print_target(name: &str, cells: &[(bool, String)]) {
    let mut row = format!("{name:<34}");
    for (met, figure) in cells {
        row.push_str(&format!(" {:>14}", format!("{} {figure}", mark(*met))));
    }
    let all = cells.iter().all(|(met, _)| *met);
    println!("{row}  {}", if all { "met" } else { "not met" });
}
