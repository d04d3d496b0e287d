//! `tally-loadgen`: replays checkout traffic against a running tally server, open loop, then
//! checks every campaign's total against the ground truth of what the server acknowledged.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::Value;
use tally_ingest::signature::{SIGNATURE_HEADER, SigningSecret, sign};
use tally_loadgen::ground_truth::{GroundTruth, SentDonation};
use tally_loadgen::schedule::{Profile, Schedule};
use tally_loadgen::traffic::{Planned, ResendTiming, Traffic, TrafficConfig};

/// Requests in flight at most; past it, due requests wait (and their lateness shows in latency).
const IN_FLIGHT_MAX: usize = 4096;
/// A request refused with 429/503, or cut by a lost connection, is retried this long at most.
const RETRY_WINDOW: Duration = Duration::from_secs(120);
/// How long verification waits for the server to apply everything.
const CATCH_UP_WAIT: Duration = Duration::from_secs(120);

#[derive(Debug, Parser)]
#[command(
    name = "tally-loadgen",
    version,
    about = "Replays checkout donation traffic against a tally server and verifies its totals"
)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    target: String,
    /// The server's callback signing secret (as text); default: from --data-dir.
    #[arg(long, env = "TALLY_SIGNING_SECRET", hide_env_values = true)]
    signing_secret: Option<String>,
    /// The server's admin token; default: from --data-dir.
    #[arg(long, env = "TALLY_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// A local server's data directory, to read its generated secret and token from.
    #[arg(long, default_value = "./tally-data")]
    data_dir: PathBuf,
    #[arg(long, default_value = "dinner-rush")]
    profile: Profile,
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Average checkouts per second over the run.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Skip the final comparison with the server's totals.
    #[arg(long)]
    no_verify: bool,
}

/// What the run saw, shared by the sending tasks.
#[derive(Debug, Default)]
struct Tally {
    truth: GroundTruth,
    sent: u64,
    acknowledged: u64,
    refused_by_code: BTreeMap<String, u64>,
    resends_sent: u64,
    conflicts_sent: u64,
    invalid_sent: u64,
    /// From the moment each request was due (corrected for coordinated omission), microseconds.
    latency_us: Option<Histogram<u64>>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tally-loadgen: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            let chain: Vec<String> = error.chain().map(ToString::to_string).collect();
            eprintln!("tally-loadgen: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn secret_and_token(args: &Args) -> anyhow::Result<(SigningSecret, String)> {
    let secret = match &args.signing_secret {
        Some(text) => SigningSecret::from_text(text),
        None => {
            let path = args.data_dir.join("signing-secret");
            let hex = std::fs::read_to_string(&path).with_context(|| {
                format!("no --signing-secret and cannot read {}", path.display())
            })?;
            SigningSecret::from_hex(hex.trim())
                .map_err(|e| anyhow::anyhow!("{}: {e:?}", path.display()))?
        }
    };
    let token = match &args.admin_token {
        Some(token) => token.clone(),
        None => {
            let path = args.data_dir.join("admin-token");
            std::fs::read_to_string(&path)
                .with_context(|| format!("no --admin-token and cannot read {}", path.display()))?
                .trim()
                .to_owned()
        }
    };
    Ok((secret, token))
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let (secret, token) = secret_and_token(&args)?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let config = TrafficConfig {
        seed: args.seed,
        // "Minutes later" in a day compressed into the run: at most a quarter of the run.
        later_resend_ms_max: (args.duration.as_millis() as u64 / 4).clamp(1_000, 30_000),
        ..TrafficConfig::default()
    };
    for campaign in &config.campaigns {
        let response = client
            .post(format!("{}/v1/campaigns", args.target))
            .bearer_auth(&token)
            .json(
                &serde_json::json!({"campaign_id": campaign, "name": campaign, "currency": "USD"}),
            )
            .send()
            .await
            .with_context(|| format!("cannot reach {}", args.target))?;
        anyhow::ensure!(
            response.status().is_success() || response.status() == 409,
            "creating campaign {campaign}: {}",
            response.status()
        );
    }
    let schedule = Schedule::new(args.profile, args.duration, args.rate);
    let tally = Arc::new(Mutex::new(Tally {
        latency_us: Some(Histogram::new_with_bounds(1, 600_000_000, 3)?),
        ..Tally::default()
    }));
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT_MAX));
    let secret = Arc::new(secret);
    let mut traffic = Traffic::new(config.clone());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut last_progress = Instant::now();
    for due in schedule.due_times() {
        tokio::time::sleep_until((started + due).into()).await;
        let plan = traffic.checkout(now_ms());
        let permit = Arc::clone(&slots).acquire_owned().await?;
        let (client, secret, shared, target) = (
            client.clone(),
            Arc::clone(&secret),
            Arc::clone(&tally),
            args.target.clone(),
        );
        tasks.spawn(async move {
            let _permit = permit;
            let sender = Sender {
                client: &client,
                target: &target,
                secret: &secret,
                tally: &shared,
            };
            send_checkout(&sender, plan, started + due).await;
        });
        while tasks.try_join_next().is_some() {}
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            progress(&tally, started.elapsed());
        }
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    let tally = Arc::try_unwrap(tally)
        .map_err(|_| anyhow::anyhow!("tasks still hold the tally"))?
        .into_inner()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    report(&tally, elapsed);
    if args.no_verify {
        return Ok(true);
    }
    verify(&client, &args.target, &config.campaigns, &tally.truth).await
}

async fn send_checkout(sender: &Sender<'_>, plan: Vec<Planned>, due: Instant) {
    let tally = sender.tally;
    let mut concurrent = Vec::new();
    for planned in plan {
        match planned {
            Planned::Donation(donation, body) => {
                if sender.send(&body, Some(&donation), due).await {
                    lock(tally).truth.acknowledged(&donation);
                }
            }
            Planned::Resend { of, body, timing } => {
                lock(tally).resends_sent += 1;
                match timing {
                    ResendTiming::Immediate => {
                        sender.send(&body, Some(&of), Instant::now()).await;
                    }
                    ResendTiming::Concurrent => concurrent.push((of, body)),
                    ResendTiming::Later { delay_ms } => {
                        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                        sender.send(&body, Some(&of), Instant::now()).await;
                    }
                }
            }
            Planned::Conflict { body, .. } => {
                lock(tally).conflicts_sent += 1;
                sender.send(&body, None, Instant::now()).await;
            }
            Planned::Invalid { body } => {
                lock(tally).invalid_sent += 1;
                sender.send(&body, None, Instant::now()).await;
            }
        }
    }
    for (of, body) in concurrent {
        sender.send(&body, Some(&of), Instant::now()).await;
    }
}

/// Where and how requests go.
struct Sender<'a> {
    client: &'a reqwest::Client,
    target: &'a str,
    secret: &'a SigningSecret,
    tally: &'a Mutex<Tally>,
}

impl Sender<'_> {
    /// Sends one donation body, retrying 429/503 and lost connections within the retry window.
    /// Returns whether it was acknowledged (2xx).
    async fn send(&self, body: &Value, donation: Option<&SentDonation>, due: Instant) -> bool {
        let Sender {
            client,
            target,
            secret,
            tally,
        } = *self;
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        let give_up = Instant::now() + RETRY_WINDOW;
        lock(tally).sent += 1;
        loop {
            let signature = sign(secret, now_ms().div_euclid(1000), &bytes);
            let response = client
                .post(format!("{target}/v1/donations"))
                .header("Content-Type", "application/json")
                .header(SIGNATURE_HEADER, signature)
                .body(bytes.clone())
                .send()
                .await;
            let retry_after = match response {
                Ok(response) if response.status().is_success() => {
                    let mut tally = lock(tally);
                    tally.acknowledged += 1;
                    if let Some(histogram) = tally.latency_us.as_mut() {
                        let _ = histogram.record(due.elapsed().as_micros().max(1) as u64);
                    }
                    return true;
                }
                Ok(response) if matches!(response.status().as_u16(), 429 | 503) => {
                    let seconds = response
                        .headers()
                        .get("Retry-After")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(1);
                    Duration::from_secs(seconds)
                }
                Ok(response) => {
                    let status = response.status();
                    let answer: Value = response.json().await.unwrap_or_default();
                    let code = answer["error"]["code"]
                        .as_str()
                        .unwrap_or("unknown")
                        .to_owned();
                    *lock(tally)
                        .refused_by_code
                        .entry(format!("{} {code}", status.as_u16()))
                        .or_default() += 1;
                    if donation.is_some() {
                        eprintln!("tally-loadgen: a valid donation was refused: {status} {answer}");
                    }
                    return false;
                }
                Err(_) => Duration::from_millis(200),
            };
            if Instant::now() + retry_after > give_up {
                *lock(tally)
                    .refused_by_code
                    .entry("gave up retrying".into())
                    .or_default() += 1;
                return false;
            }
            tokio::time::sleep(retry_after).await;
        }
    }
}

fn lock(tally: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    tally
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn progress(tally: &Mutex<Tally>, elapsed: Duration) {
    let tally = lock(tally);
    let p99_ms = tally
        .latency_us
        .as_ref()
        .map_or(0.0, |h| h.value_at_quantile(0.99) as f64 / 1000.0);
    let refused: u64 = tally.refused_by_code.values().sum();
    eprintln!(
        "[{:>5.1}s] sent {} acknowledged {} refused {} ({:.0}/s) p99 {:.1} ms",
        elapsed.as_secs_f64(),
        tally.sent,
        tally.acknowledged,
        refused,
        tally.sent as f64 / elapsed.as_secs_f64().max(0.001),
        p99_ms
    );
}

fn report(tally: &Tally, elapsed: Duration) {
    let ms = |q: f64| {
        tally
            .latency_us
            .as_ref()
            .map_or(0.0, |h| h.value_at_quantile(q) as f64 / 1000.0)
    };
    println!("requests sent                {}", tally.sent);
    println!("acknowledged (2xx)           {}", tally.acknowledged);
    println!(
        "distinct donations recorded  {}",
        tally.truth.recorded_count()
    );
    println!("resends sent                 {}", tally.resends_sent);
    println!("conflicting resends sent     {}", tally.conflicts_sent);
    println!("invalid requests sent        {}", tally.invalid_sent);
    for (code, count) in &tally.refused_by_code {
        println!("refused {code:<21}{count}");
    }
    println!(
        "achieved rate                {:.0} requests/s over {:.1} s (the schedule, then the last late resends)",
        tally.sent as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    println!(
        "latency from due time        p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        tally
            .latency_us
            .as_ref()
            .map_or(0.0, |h| h.max() as f64 / 1000.0)
    );
}

/// Waits until the server reports no lag, then compares every campaign's total and count.
async fn verify(
    client: &reqwest::Client,
    target: &str,
    campaigns: &[String],
    truth: &GroundTruth,
) -> anyhow::Result<bool> {
    let deadline = Instant::now() + CATCH_UP_WAIT;
    let mut mismatches = 0;
    for campaign in campaigns {
        let view = loop {
            let view: Value = client
                .get(format!("{target}/v1/campaigns/{campaign}"))
                .send()
                .await?
                .json()
                .await?;
            if view["freshness"]["lag_records"] == 0 {
                break view;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the server did not catch up within {CATCH_UP_WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let expected = truth.totals().get(campaign).copied().unwrap_or_default();
        let got = (
            view["total_cents"].as_u64().unwrap_or(u64::MAX),
            view["donations"].as_u64().unwrap_or(u64::MAX),
        );
        if got != (expected.total_cents, expected.donations) {
            mismatches += 1;
            println!(
                "MISMATCH {campaign}: server {} cents / {} donations, expected {} / {}",
                got.0, got.1, expected.total_cents, expected.donations
            );
        } else {
            println!("verified {campaign}: {} cents, {} donations", got.0, got.1);
        }
    }
    println!(
        "verification {}",
        if mismatches == 0 { "passed" } else { "FAILED" }
    );
    Ok(mismatches == 0)
}
