//! Failover on a Fluvio cluster: how long after a node's death all of its partitions are
//! applied again by the others, with a recent state snapshot and without one.
//!
//! Each round starts three `tally serve` nodes (`--owns auto`, 16 partitions) on a new topic,
//! appends `PRELOAD` donations to the topic (the records ingest appends, written straight to
//! the log so that a long one is quick to make), waits until the nodes applied them and a few
//! seconds more (so that with a 1 s snapshot
//! interval every partition's snapshot covers the load), then SIGKILLs one node and measures,
//! from the kill, (1) until a survivor's view shows every partition held by a live node, and
//! (2) until a survivor's totals show a batch of donations to every partition posted just after
//! the kill, with no lag: the killed node's partitions restored (from the snapshot, or from
//! offset 0 without one), caught up and applying again. The lease is 5 s,
//! so (1) is at least that. Five rounds per case; p50 and max.
//!
//! `TALLY_BENCH_PRELOAD` and `TALLY_BENCH_ROUNDS` set the load and the rounds;
//! `TALLY_BENCH_CASES=snapshot` or `=no-snapshot` runs one case only.
//!
//! Needs `TALLY_FLUVIO_ENDPOINT=HOST:PORT` (the SC on loopback); without it the bench says so
//! and does nothing. Run: `cargo bench --bench failover`. The three nodes, the cluster and this
//! client share the machine's cores.

#[path = "support/machine.rs"]
mod machine;
#[path = "support/server.rs"]
#[allow(dead_code)]
mod server;

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tally_api::signature::{SIGNATURE_HEADER, SigningSecret, sign};
use tally_pipeline::event::{DonationEvent, EventTime, envelope};
use tally_pipeline::log::{FluvioLog, FluvioLogOptions, append_keyed};

use server::{ADMIN_TOKEN, SIGNING_SECRET, Server, start_server_with};

const PARTITIONS: &str = "16";
const NODES: usize = 3;
/// Rounds per case (`TALLY_BENCH_ROUNDS` sets another count).
const ROUNDS: usize = 5;
/// Donations loaded before each kill (`TALLY_BENCH_PRELOAD` sets another count, a multiple of
/// the batch).
const PRELOAD: usize = 60_000;
const BATCH: usize = 1000;
const CAMPAIGN: &str = "failover";
/// 2026-11-24T18:30:00Z, every donation's `paid_at`.
const PAID_AT_MS: i64 = 1_795_545_000_000;
/// Bound on any one wait.
const WAIT_MAX: Duration = Duration::from_secs(120);

fn main() -> anyhow::Result<()> {
    let Some(endpoint) = std::env::var("TALLY_FLUVIO_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
    else {
        println!(
            "TALLY_FLUVIO_ENDPOINT is not set: the failover bench did not run (set it to a cluster's SC, e.g. 127.0.0.1:9003)"
        );
        return Ok(());
    };
    let rounds = env_count("TALLY_BENCH_ROUNDS", ROUNDS);
    let preload = env_count("TALLY_BENCH_PRELOAD", PRELOAD).div_ceil(BATCH) * BATCH;
    println!(
        "failover: {NODES} nodes (--owns auto), {PARTITIONS} partitions, {preload} donations loaded, one node SIGKILLed, {rounds} rounds per case"
    );
    println!("machine: {}", machine::describe());
    println!("fluvio: {endpoint} (each round on a new topic)");
    println!();
    println!(
        "{:<34} {:>14} {:>14} {:>16} {:>16}",
        "case", "held p50 s", "held max s", "applied p50 s", "applied max s"
    );
    let cases = std::env::var("TALLY_BENCH_CASES").unwrap_or_default();
    for (name, case, interval) in [
        ("snapshot", "recent snapshot (every 1 s)", "1s"),
        ("no-snapshot", "no recent snapshot (every 1 h)", "1h"),
    ] {
        if !cases.is_empty() && !cases.split(',').any(|c| c.trim() == name) {
            continue;
        }
        let mut held = Vec::new();
        let mut applied = Vec::new();
        for round in 0..rounds {
            let (to_held, to_applied) = round_once(&endpoint, interval, round, preload)
                .with_context(|| format!("{case}, round {round}"))?;
            held.push(to_held.as_secs_f64());
            applied.push(to_applied.as_secs_f64());
        }
        println!(
            "{case:<34} {:>14.2} {:>14.2} {:>16.2} {:>16.2}",
            median(&mut held),
            max(&held),
            median(&mut applied),
            max(&applied)
        );
    }
    println!();
    println!(
        "held: from the kill until every partition is held by a live node (the lease, 5 s, plus the hand-over); applied: until a survivor's totals show every donation with no lag"
    );
    Ok(())
}

/// One round: returns (kill → every partition held, kill → every donation applied).
fn round_once(
    endpoint: &str,
    interval: &str,
    round: usize,
    preload: usize,
) -> anyhow::Result<(Duration, Duration)> {
    let log = format!("fluvio://{endpoint}/{}", new_topic(round));
    let dirs: Vec<tempfile::TempDir> = (0..NODES)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let args = [
        "--log",
        &log,
        "--partitions",
        PARTITIONS,
        "--state-snapshot-interval",
        interval,
    ];
    let nodes: Vec<Server> = dirs
        .iter()
        .map(|dir| start_server_with(dir.path(), &args))
        .collect::<Result<_, _>>()?;
    let http = reqwest::blocking::Client::new();
    let ids: Vec<String> = nodes
        .iter()
        .map(|node| cluster(&http, node).map(|v| v["node_id"].as_str().unwrap_or("").to_owned()))
        .collect::<Result<_, _>>()?;
    wait_for(|| {
        Ok(settled(
            &cluster(&http, &nodes[0])?,
            &ids.iter().cloned().collect(),
        ))
    })?;
    create_campaign(&http, &nodes[0])?;
    let expected_cents = load(endpoint, &log, round, preload)?;
    wait_for(|| applied(&http, &nodes[0], expected_cents))?;
    // Timing only: with a 1 s interval, the snapshots now cover the load.
    std::thread::sleep(Duration::from_secs(3));

    let victim = &nodes[NODES - 1];
    let killed_at = Instant::now();
    std::process::Command::new("kill")
        .args(["-KILL", &victim.pid().to_string()])
        .status()?;
    // Donations to every partition after the kill: the killed node's are applied only once
    // its partitions run again elsewhere.
    let expected_cents = expected_cents + post_batch(&http, &nodes[0], round, preload)?;
    let survivors: BTreeSet<String> = ids[..NODES - 1].iter().cloned().collect();
    wait_for(|| Ok(settled(&cluster(&http, &nodes[0])?, &survivors)))?;
    let to_held = killed_at.elapsed();
    wait_for(|| applied(&http, &nodes[0], expected_cents))?;
    let to_applied = killed_at.elapsed();
    Ok((to_held, to_applied))
}

fn new_topic(round: usize) -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!(
        "tally-bench-failover-{}-{millis}-{round}",
        std::process::id()
    )
}

fn cluster(http: &reqwest::blocking::Client, node: &Server) -> anyhow::Result<serde_json::Value> {
    Ok(http
        .get(format!("{}/v1/cluster", node.base))
        .timeout(Duration::from_secs(2))
        .send()?
        .json()?)
}

/// Every partition held by its owner, the members exactly `members`.
fn settled(view: &serde_json::Value, members: &BTreeSet<String>) -> bool {
    let assignment = &view["assignment"];
    let seen: BTreeSet<String> = assignment["members"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter_map(|m| m["node_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    seen == *members
        && assignment["partitions"].as_array().is_some_and(|ps| {
            ps.iter()
                .all(|p| p["owner"].is_string() && p["holder"]["node_id"] == p["owner"])
        })
}

fn create_campaign(http: &reqwest::blocking::Client, node: &Server) -> anyhow::Result<()> {
    http.post(format!("{}/v1/campaigns", node.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"campaign_id": CAMPAIGN, "name": CAMPAIGN, "currency": "USD"}))
        .send()?
        .error_for_status()?;
    Ok(())
}

/// Appends `count` donations to the topic of `location` as ingest appends them (keyed by
/// `payment_ref`), several chunks in flight; returns their sum in cents.
fn load(endpoint: &str, location: &str, round: usize, count: usize) -> anyhow::Result<u64> {
    const CHUNK: usize = 20_000;
    const IN_FLIGHT: usize = 4;
    let topic = location.rsplit('/').next().unwrap_or_default();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let partitions: u32 = PARTITIONS.parse()?;
        let log = FluvioLog::connect(endpoint, topic, partitions, FluvioLogOptions::default())
            .await
            .context("cannot reach the donation topic")?;
        let mut cents = 0;
        let chunks: Vec<usize> = (0..count).step_by(CHUNK).collect();
        for wave in chunks.chunks(IN_FLIGHT) {
            let appends = wave.iter().map(|&first| {
                let records: Vec<_> = (first..(first + CHUNK).min(count))
                    .map(|i| {
                        let (event, amount) = donation(round, i);
                        cents += amount;
                        envelope::keyed_record(&event)
                    })
                    .collect();
                append_keyed(&log, records)
            });
            for appended in futures_util::future::join_all(appends).await {
                appended.context("cannot append the load")?;
            }
        }
        Ok(cents)
    })
}

/// Donation `i` of `round`, as the batch route would record it, and its amount.
fn donation(round: usize, i: usize) -> (DonationEvent, u64) {
    let amount = 100 + (i as u64 % 9) * 25;
    let event = DonationEvent {
        payment_ref: format!("r{round}-{i}"),
        order_id: format!("o{i}"),
        user_id: format!("u{}", i % 5000),
        campaign_id: CAMPAIGN.to_owned(),
        amount_cents: amount,
        currency: "USD".to_owned(),
        paid_at: EventTime(PAID_AT_MS),
    };
    (event, amount)
}

/// Posts donations `first..first + BATCH` of `round` as one signed batch; their sum in cents.
fn post_batch(
    http: &reqwest::blocking::Client,
    node: &Server,
    round: usize,
    first: usize,
) -> anyhow::Result<u64> {
    let secret = SigningSecret::from_text(SIGNING_SECRET);
    let mut cents = 0;
    let items: Vec<String> = (first..first + BATCH)
        .map(|i| {
            let amount = 100 + (i as u64 % 9) * 25;
            cents += amount;
            format!(
                r#"{{"payment_ref":"r{round}-{i}","order_id":"o{i}","user_id":"u{}","campaign_id":"{CAMPAIGN}","amount_cents":{amount},"paid_at":"2026-11-24T18:30:00Z"}}"#,
                i % 5000
            )
        })
        .collect();
    let body = format!("[{}]", items.join(","));
    let now_s = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
    http.post(format!("{}/v1/donations/batch", node.base))
        .header("Content-Type", "application/json")
        .header(SIGNATURE_HEADER, sign(&secret, now_s, body.as_bytes()))
        .body(body)
        .send()?
        .error_for_status()
        .context("a batch was refused")?;
    Ok(cents)
}

/// Whether `node`'s totals show `cents` with no lag.
fn applied(http: &reqwest::blocking::Client, node: &Server, cents: u64) -> anyhow::Result<bool> {
    let view: serde_json::Value = http
        .get(format!("{}/v1/campaigns/{CAMPAIGN}", node.base))
        .timeout(Duration::from_secs(2))
        .send()?
        .json()?;
    Ok(view["total_cents"] == cents && view["freshness"]["lag_records"] == 0)
}

/// Polls `done` every 10 ms until it says true; an error after [`WAIT_MAX`].
fn wait_for(mut done: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if done().unwrap_or(false) {
            return Ok(());
        }
        anyhow::ensure!(started.elapsed() < WAIT_MAX, "waited {WAIT_MAX:?} in vain");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(0.0, f64::max)
}
