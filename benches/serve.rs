//! End-to-end throughput, latency and freshness of `tally serve` over loopback HTTP.
//!
//! Starts the release `tally serve` binary on 127.0.0.1 with a fresh data directory, then, from
//! this process (on the same machine — client and server share its cores):
//!
//! - **single**: closed-loop `POST /v1/donations` at several concurrencies: accepted donations/s
//!   (each one durable in the log before its 202) and request latency p50/p99/p99.9/max;
//! - **batch**: `POST /v1/donations/batch` of 1,000 donations: donations/s and request latency;
//! - **freshness**: during a background load, time from a 202 to the donation being visible in
//!   `GET /v1/campaigns/{id}` (polled every millisecond), p50/p99.
//!
//! Run: `cargo bench --bench serve`. `TALLY_BENCH_SECONDS` sets each phase's duration (default 8).

#[path = "support/machine.rs"]
mod machine;
#[path = "support/server.rs"]
mod server;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use tally_ingest::signature::{SigningSecret, sign};

use server::{ADMIN_TOKEN, Connection, SIGNING_SECRET, start_server};

const SINGLE_CONCURRENCY: [usize; 3] = [16, 64, 256];
const BATCH_ITEMS: usize = 1000;
const BATCH_CONCURRENCY: [usize; 2] = [2, 8];
const FRESHNESS_PROBES: usize = 200;

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn donation(payment_ref: &str, campaign_id: &str, amount_cents: u64) -> String {
    format!(
        r#"{{"payment_ref":"{payment_ref}","order_id":"o-{payment_ref}","user_id":"u-{}","campaign_id":"{campaign_id}","amount_cents":{amount_cents},"paid_at":"2026-11-24T18:30:00Z"}}"#,
        amount_cents % 1000
    )
}

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

#[derive(Debug)]
struct Phase {
    name: String,
    donations_per_s: f64,
    requests_per_s: f64,
    errors: u64,
    latency_us: Histogram<u64>,
}

/// Closed loop: `concurrency` connections each sending requests back to back for `duration`.
async fn closed_loop(
    base: &str,
    concurrency: usize,
    items: usize,
    duration: Duration,
    run: u64,
) -> Phase {
    let secret = Arc::new(SigningSecret::from_text(SIGNING_SECRET));
    let accepted = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop_at = Instant::now() + duration;
    let path = if items == 1 {
        "/v1/donations"
    } else {
        "/v1/donations/batch"
    };
    let tasks: Vec<_> = (0..concurrency)
        .map(|task| {
            let (secret, base) = (Arc::clone(&secret), base.to_owned());
            let (accepted, requests, errors) = (
                Arc::clone(&accepted),
                Arc::clone(&requests),
                Arc::clone(&errors),
            );
            tokio::spawn(async move {
                let mut latency =
                    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
                let Ok(mut connection) = Connection::open(&base).await else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    return latency;
                };
                let mut sequence = 0u64;
                while Instant::now() < stop_at {
                    let bodies: Vec<String> = (0..items)
                        .map(|_| {
                            sequence += 1;
                            donation(
                                &format!("r{run}-t{task}-{sequence}"),
                                "bench",
                                1 + sequence % 500,
                            )
                        })
                        .collect();
                    let body = if items == 1 {
                        bodies.into_iter().next().unwrap_or_default()
                    } else {
                        format!("[{}]", bodies.join(","))
                    };
                    let signature = sign(&secret, now_s(), body.as_bytes());
                    let started = Instant::now();
                    let status = connection.post(path, &body, &signature).await;
                    let _ = latency.record(started.elapsed().as_micros() as u64);
                    requests.fetch_add(1, Ordering::Relaxed);
                    match status {
                        Ok(status) if (200..300).contains(&status) => {
                            accepted.fetch_add(items as u64, Ordering::Relaxed);
                        }
                        Ok(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            match Connection::open(&base).await {
                                Ok(fresh) => connection = fresh,
                                Err(_) => return latency,
                            }
                        }
                    }
                }
                latency
            })
        })
        .collect();
    let started = Instant::now();
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    for task in tasks {
        if let Ok(histogram) = task.await {
            let _ = latency_us.add(histogram);
        }
    }
    let seconds = started.elapsed().as_secs_f64().max(duration.as_secs_f64());
    Phase {
        name: if items == 1 {
            format!("single, {concurrency} connections")
        } else {
            format!("batch of {items}, {concurrency} connections")
        },
        donations_per_s: accepted.load(Ordering::Relaxed) as f64 / seconds,
        requests_per_s: requests.load(Ordering::Relaxed) as f64 / seconds,
        errors: errors.load(Ordering::Relaxed),
        latency_us,
    }
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

fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

fn main() -> anyhow::Result<()> {
    let seconds: f64 = std::env::var("TALLY_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8.0);
    let duration = Duration::from_secs_f64(seconds);
    print_machine();
    let dir = tempfile::tempdir()?;
    let server = start_server(dir.path())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let phases = runtime.block_on(async {
        let client = reqwest::Client::new();
        for campaign in ["bench", "probe"] {
            client
                .post(format!("{}/v1/campaigns", server.base))
                .bearer_auth(ADMIN_TOKEN)
                .json(&serde_json::json!({"campaign_id": campaign, "name": campaign, "currency": "USD"}))
                .send()
                .await?
                .error_for_status()?;
        }
        let mut phases = Vec::new();
        for (run, concurrency) in SINGLE_CONCURRENCY.into_iter().enumerate() {
            phases.push(closed_loop(&server.base, concurrency, 1, duration, run as u64).await);
        }
        for (run, concurrency) in BATCH_CONCURRENCY.into_iter().enumerate() {
            phases.push(closed_loop(&server.base, concurrency, BATCH_ITEMS, duration, 10 + run as u64).await);
        }
        let freshness = freshness(&server.base, duration).await;
        anyhow::Ok((phases, freshness))
    })?;
    let (phases, freshness_us) = phases;
    println!();
    println!(
        "{:<34} {:>14} {:>12} {:>8} {:>9} {:>9} {:>9} {:>9}",
        "phase", "donations/s", "requests/s", "errors", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    for phase in &phases {
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
    println!(
        "freshness (202 -> visible in GET /v1/campaigns/{{id}}, {} probes under load): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        freshness_us.len(),
        ms(&freshness_us, 0.5),
        ms(&freshness_us, 0.99),
        freshness_us.max() as f64 / 1000.0
    );
    println!(
        "targets: >= 50,000 single donations/s with p99 <= 20 ms; >= 500,000 donations/s in batches; freshness p99 <= 100 ms"
    );
    drop(server);
    Ok(())
}

fn print_machine() {
    println!(
        "machine: {}; client and server share the machine, over loopback",
        machine::describe()
    );
}
